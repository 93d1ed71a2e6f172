"""``ce-conformance spec validate|show``: check spec files and print them for a reader.

Both commands go through :func:`conformance.spec.load`, the loader the suite itself uses, so
a file that validates here is exactly a file the suite can run. Output is written with rich:
coloured in a terminal, plain text (no escape codes, 160 columns unless ``COLUMNS`` says
otherwise) when piped. Error messages are never wrapped, so ``file:line:col`` stays on one
line for editors and grep.
"""
from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import spec_consistency
from ..formula import CONSTANTS, FUNCTIONS
from ..spec import INPUT_NAMES, Formula, Spec, SpecError, load

#: Exit status for a spec that cannot be used (the CLI's usage-error code).
EXIT_BAD_SPEC = 2

#: Width used when the output is not a terminal: tables stay intact in files and pipes.
PIPE_WIDTH = 160


# --------------------------------------------------------------------------- consoles
def _out(console: Console | None) -> Console:
    if console is not None:
        return console
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = PIPE_WIDTH
    return out


def _err(err_console: Console | None) -> Console:
    return err_console if err_console is not None else Console(stderr=True, highlight=False)


def _report(err: Console, exc: SpecError) -> None:
    err.print(Text(str(exc), style="red"), soft_wrap=True)


# --------------------------------------------------------------------------- validate
def _shipped() -> list[str]:
    folder = Path(str(resources.files("conformance.specs")))
    out = []
    for p in sorted(folder.glob("*.yaml")):
        try:
            out.append(str(p.relative_to(Path.cwd())))
        except ValueError:
            out.append(str(p))
    return out


def _expand(paths: Iterable[str]) -> list[tuple[str, SpecError | None]]:
    """The files to check, each with the error that stops it being read, if already known.

    The shell normally expands globs; a pattern that reaches us unexpanded (quoted, or a
    shell that does not glob) is expanded here. A folder stands for its ``*.yaml`` files.
    """
    out: list[tuple[str, SpecError | None]] = []
    for p in paths:
        if Path(p).is_dir():
            found = sorted(str(f) for f in Path(p).iterdir() if f.suffix in (".yaml", ".yml"))
            out += [(f, None) for f in found] or [(p, SpecError(p, None, None, "the folder holds no .yaml spec",
                                                                "pass spec files, e.g. specs/*.yaml"))]
        elif not Path(p).exists() and glob.has_magic(p):
            found = sorted(glob.glob(p))
            out += [(f, None) for f in found] or [(p, SpecError(p, None, None, "no file matches this pattern",
                                                                "pass spec files, e.g. specs/*.yaml"))]
        else:
            out.append((p, None))
    unique: dict[str, SpecError | None] = {}
    for f, e in out:
        unique.setdefault(f, e)  # first mention wins, order kept
    return list(unique.items())


def validate(paths: list[str], console: Console | None = None, *, err_console: Console | None = None) -> int:
    """Load every spec file; print an ``OK`` line per good file, the error per bad one.

    Returns 0 when every file is a usable spec, 2 when any is not (unreadable, invalid YAML,
    schema or formula errors, unknown references). With no paths, the shipped specs are
    checked. Errors go to ``err_console`` (stderr by default) in red.
    """
    out, err = _out(console), _err(err_console)
    files = _expand(paths) if paths else [(p, None) for p in _shipped()]
    failed = 0
    for file, problem in files:
        try:
            if problem is not None:
                raise problem
            spec = load(file)
            spec_consistency.check(spec)  # special cases against the formulas (about a second)
        except SpecError as exc:
            _report(err, exc)
            failed += 1
            continue
        out.print(Text.assemble(("OK", "bold green"), "  ", file, "  ", (f"{spec.operation} {spec.version}", "bold"),
                                "  ", (f"sha256 {spec.sha256[:12]}", "dim")), soft_wrap=True)
    if failed:
        err.print(Text(f"{failed} of {len(files)} spec file(s) failed", style="bold red"), soft_wrap=True)
        return EXIT_BAD_SPEC
    return 0


# --------------------------------------------------------------------------- show
_TOKEN = re.compile(r"(?P<num>\d+\.?\d*(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<other>\s+|.)")


def formula_text(source: str, bound: Iterable[str] = ()) -> Text:
    """``source`` with the formula language's words coloured (functions, inputs, bindings)."""
    bound = set(bound)
    text = Text()
    for m in _TOKEN.finditer(source):
        word = m.group()
        if m.lastgroup == "num":
            text.append(word, "magenta")
        elif m.lastgroup == "name":
            style = ("bold cyan" if word in FUNCTIONS else "yellow" if word in INPUT_NAMES else
                     "magenta" if word in CONSTANTS else "green" if word in bound else "")
            text.append(word, style)
        else:
            text.append(word, "dim" if word in "()," else "")
    return text


def _formulas(out: Console, title: str, formulas: Mapping[str, Formula | str], bound: Iterable[str],
              indent: int) -> None:
    """Aligned ``name = formula`` lines; never wrapped, so each formula stays on one line."""
    if not formulas:
        return
    pad = " " * indent
    out.print(Text(pad + title, style="bold"), soft_wrap=True)
    width = max(len(n) for n in formulas)
    for name, f in formulas.items():
        source = f.source if isinstance(f, Formula) else str(f)
        out.print(Text(pad + "  ") + Text(name.ljust(width), style="bold green") + Text(" = ", style="dim")
                  + formula_text(source.replace("\n", " "), bound), soft_wrap=True)


#: Below this width a table of records is printed as stacked records instead.
TABLE_MIN_WIDTH = 120


def _records(out: Console, title: str, headers: list[str], rows: list[list], *, right: int = 0) -> None:
    """A table in a wide console; in a narrow one, one block per record (nothing cut or folded).

    The first column is the record's id; ``right`` trailing columns are right-justified numbers.
    """
    out.print()
    if out.width >= TABLE_MIN_WIDTH or right:
        table = Table(title=title or None, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                      pad_edge=False)
        for i, h in enumerate(headers):
            numeric = i >= len(headers) - right
            table.add_column(h, style="bold" if i == 0 else None, no_wrap=i == 0 or numeric,
                             justify="right" if numeric else "left", overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    if title:
        out.print(Text(title, style="bold"), soft_wrap=True)
    width = max(len(h) for h in headers[1:])
    for row in rows:
        out.print(Text("  ") + (row[0] if isinstance(row[0], Text) else Text(row[0], style="bold")), soft_wrap=True)
        for h, cell in zip(headers[1:], row[1:]):
            if str(cell):
                value = cell if isinstance(cell, Text) else Text(cell)
                out.print(Text(f"      {h.ljust(width)}  ", style="dim") + value, soft_wrap=True)


def _header(out: Console, spec: Spec) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("operation", spec.operation)
    grid.add_row("version", spec.version)
    grid.add_row("sha256", spec.sha256)
    grid.add_row("reference", spec.reference)
    grid.add_row("file", spec.file)
    grid.add_row("summary", " ".join(spec.summary.split()))
    sig = spec.raw["signature"]
    grid.add_row("call", sig["call"])
    d = spec.domains
    grid.add_row("domains", f"dtypes {', '.join(d['dtypes'])}; ranks {', '.join(map(str, d['ranks']))}; "
                            f"targets {', '.join(d['target_kinds'])}; reductions {', '.join(d['reductions'])}")
    for rule in spec.deprecated:
        when = ", ".join(f"{k}={v}" for k, v in rule["when"].items()) or "otherwise"
        grid.add_row("deprecated", f"{when} -> reduction={rule['reduction']}")
    out.print(grid)


def _paths(out: Console, spec: Spec) -> None:
    for name, path in spec.paths.items():
        out.print()
        out.rule(Text(f"path {name}", style="bold"), align="left")
        when = spec.raw["paths"][name].get("when", "")
        if when:
            out.print(Text("  when  ", style="bold") + Text(when), soft_wrap=True)
        bound = set(path.bindings)
        _formulas(out, "bindings", path.bindings, bound, 2)
        _formulas(out, "reductions", path.reductions, bound, 2)
        for wrt, grad in path.gradients.items():
            gbound = bound | set(grad.bindings)
            out.print(Text(f"  gradient with respect to {wrt}", style="bold"), soft_wrap=True)
            _formulas(out, "bindings", grad.bindings, gbound, 4)
            _formulas(out, "reductions", grad.reductions, gbound, 4)
            if grad.unspecified is not None:
                _formulas(out, "any value accepted where", {"unspecified": grad.unspecified}, gbound, 4)


def _special_cases(out: Console, spec: Spec) -> None:
    if spec.special_cases:
        _records(out, "Special cases", ["id", "make", "path", "expect", "note"],
                 [[c.id, ", ".join(c.make), c.path or "any", "  ".join(f"{k}={v}" for k, v in c.expect.items()), c.note]
                  for c in spec.special_cases.values()])


def _variants(out: Console, spec: Spec) -> None:
    if not spec.variants:
        return
    out.print()
    out.rule(Text("Variants", style="bold"), align="left")
    for v in spec.variants.values():
        out.print(Text("  ") + Text(v.id, style="bold") + Text(f"  {v.description}"), soft_wrap=True)
        _formulas(out, "overrides", v.overrides, set(), 4)
        if v.replaces_errors:
            out.print(Text("    replaces errors  ", style="bold") + Text(", ".join(v.replaces_errors)), soft_wrap=True)
        if v.expect:
            out.print(Text("    expect  ", style="bold") + Text(v.expect), soft_wrap=True)


def _errors(out: Console, spec: Spec) -> None:
    if spec.errors:
        _records(out, "Error contract (MUST: accepting the input fails; "
                      "SHOULD: accepting it is reported as permissive)",
                 ["clause", "severity", "mutation", "torch's message"],
                 [[c.id, Text(c.severity, style="bold red" if c.severity == "MUST" else "yellow"), c.make, c.torch]
                  for c in spec.errors.values()])


def _metamorphic(out: Console, spec: Spec) -> None:
    rows = []
    for m in spec.metamorphic.values():
        relation = m.relation if isinstance(m.relation, str) else ", ".join(f"{k}: {v}" for k, v in m.relation.items())
        scope = "; ".join(f"{label} {', '.join(vals)}" for label, vals in
                          (("paths", m.paths), ("reductions", m.reductions), ("requires", m.requires)) if vals) or "all"
        rows.append([m.id, m.transform, relation, scope, " ".join(m.description.split())])
    if rows:
        _records(out, "Metamorphic relations", ["id", "transform", "relation", "scope", "description"], rows)


def _tolerances(out: Console, spec: Spec) -> None:
    tol = spec.tolerances
    out.print()
    out.rule(Text("Tolerances", style="bold"), align="left")
    rules = {"scale": tol.scale, "gscale": tol.gscale}
    if tol.gscale_target is not None:
        rules["gscale_target"] = tol.gscale_target
    bound = {b for p in spec.paths.values() for b in p.bindings}
    _formulas(out, "error scales (per position)", rules, bound, 2)
    _records(out, "", ["dtype", "u", "k_forward", "k_reduce", "k_gradient"],
             [[name, str(d.u), f"{d.k_forward:g}", f"{d.k_reduce:g}", f"{d.k_gradient:g}"]
              for name, d in tol.dtypes.items()],
             right=4)
    overflow = spec.raw["tolerances"].get("overflow")
    if overflow:
        out.print(Text("  overflow  ", style="bold") + Text(overflow), soft_wrap=True)


def show(path: str, console: Console | None = None, *, err_console: Console | None = None) -> int:
    """Print one spec for a reader; 0, or 2 with the error when the spec cannot be loaded."""
    out, err = _out(console), _err(err_console)
    try:
        spec = load(path)
    except SpecError as exc:
        _report(err, exc)
        return EXIT_BAD_SPEC
    out.rule(Text(f"{spec.operation} {spec.version}", style="bold"), align="left")
    _header(out, spec)
    _paths(out, spec)
    _special_cases(out, spec)
    _variants(out, spec)
    _errors(out, spec)
    _metamorphic(out, spec)
    _tolerances(out, spec)
    return 0
