"""Stage 1 meta-tests: the spec loader's errors and the ``spec validate|show`` commands.

Each bad spec is the shipped text with one edit, written to a temporary file; the tests
assert on the exit status, on ``file:line:col`` (computed from the edited text, so the
tests follow the shipped specs as they change) and on the fix the user is offered.
"""
from __future__ import annotations

import builtins
import hashlib
import re
from io import StringIO
from pathlib import Path

import jsonschema
import pytest
import yaml
from rich.console import Console

from conformance import metamorphic as mm
from conformance import spec as sp
from conformance.runner import spec_cli as cli
from conformance import modifiers, mutations

SPECS = sp.default_spec_path().parent
SHIPPED = sorted(SPECS.glob("*.yaml"))
CE = SPECS / "cross_entropy.yaml"


# --------------------------------------------------------------------------- helpers
def _referenced_names() -> dict[str, set[str]]:
    """Registry names the shipped specs use, read from the YAML itself."""
    names = {"MODIFIERS": set(), "MUTATIONS": set(), "TRANSFORMS": set()}
    for f in SHIPPED:
        raw = yaml.safe_load(f.read_text())
        for case in (raw.get("special_cases") or {}).values():
            names["MODIFIERS"].update(case["make"])
        names["MUTATIONS"].update(c["make"] for c in (raw.get("errors") or {}).values())
        names["TRANSFORMS"].update(m["transform"] for m in (raw.get("metamorphic") or {}).values())
    return names


@pytest.fixture
def registries(monkeypatch):
    """Registries holding every name the shipped specs use, whatever state the modules are in."""
    names = _referenced_names()
    for module, attr in ((modifiers, "MODIFIERS"), (mutations, "MUTATIONS"), (mm, "TRANSFORMS")):
        merged = dict(getattr(module, attr))
        merged.update({n: merged.get(n) for n in names[attr]})
        monkeypatch.setattr(module, attr, merged)


def _nodes(text: str, path: tuple) -> tuple[yaml.Node | None, yaml.Node]:
    """(key node, value node) at ``path``, found with yaml.compose (independent of the loader)."""
    key, node = None, yaml.compose(text, Loader=yaml.SafeLoader)
    for part in path:
        if isinstance(node, yaml.SequenceNode):
            key, node = None, node.value[part]
        else:
            key, node = next((k, v) for k, v in node.value if k.value == part)
    return key, node


def _write(tmp_path: Path, text: str, start: int, end: int, new: str, at: str | None,
           name: str) -> tuple[str, int, int]:
    """Write ``text`` with ``text[start:end]`` replaced by ``new``.

    Returns the file and the 1-based line and column of ``at`` (a piece of ``new``; by
    default all of it) in the written text.
    """
    out = text[:start] + new + text[end:]
    pos = out.find(new if at is None else at, start)
    assert start <= pos <= start + len(new), f"{at!r} is not part of the edit"
    line = out.count("\n", 0, pos) + 1
    col = pos - (out.rfind("\n", 0, pos) + 1) + 1
    path = tmp_path / name
    path.write_text(out)
    return str(path), line, col


def edit_key(tmp_path, path: tuple, new: str, *, source: Path = CE) -> tuple[str, int, int]:
    """The shipped spec with the key at ``path`` renamed to ``new``."""
    text = source.read_text()
    key, _ = _nodes(text, path)
    return _write(tmp_path, text, key.start_mark.index, key.end_mark.index, new, None, source.name)


def edit_value(tmp_path, path: tuple, new: str, *, at: str | None = None, source: Path = CE) -> tuple[str, int, int]:
    """The shipped spec with the (scalar or flow) value at ``path`` replaced by the YAML ``new``."""
    text = source.read_text()
    _, node = _nodes(text, path)
    # A block node's end mark lies past its trailing line breaks; keep those.
    end = node.start_mark.index + len(text[node.start_mark.index:node.end_mark.index].rstrip())
    return _write(tmp_path, text, node.start_mark.index, end, new, at, source.name)


def line_start(text: str, node: yaml.Node) -> int:
    return node.start_mark.index - node.start_mark.column


def original(path: tuple, source: Path = CE) -> str:
    return _nodes(source.read_text(), path)[1].value


def run_validate(capsys, *paths: str) -> tuple[int, str, str]:
    rc = cli.validate(list(paths))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_reported(capsys, file: str, line: int, col: int | None, *fragments: str) -> str:
    rc, out, err = run_validate(capsys, file)
    loc = f"{file}:{line}:" + (f"{col}:" if col is not None else "")
    assert rc == 2, f"expected exit 2, got {rc}; stdout={out!r}"
    assert "OK" not in out
    assert loc in err, f"{loc!r} not in:\n{err}"
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    return err


def fix_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("  fix: "))


# --------------------------------------------------------------------------- shipped specs
def test_shipped_specs_validate_with_the_real_registries(capsys):
    rc, out, err = run_validate(capsys, *map(str, SHIPPED))
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == len(SHIPPED) == 4   # cross_entropy, linear_cross_entropy, log_softmax, nll_loss
    for f, line in zip(SHIPPED, lines):
        m = re.fullmatch(r"OK  (\S+)  (\w+) (\d+\.\d+\.\d+)  sha256 ([0-9a-f]{12})", line)
        assert m, line
        raw = yaml.safe_load(f.read_text())
        assert m.groups() == (str(f), raw["operation"], raw["spec_version"],
                              hashlib.sha256(f.read_text().encode()).hexdigest()[:12])


def test_validate_without_paths_checks_the_shipped_specs(capsys, registries):
    rc, out, _ = run_validate(capsys)
    assert rc == 0
    assert sorted(re.findall(r"^OK  \S+  (\w+) ", out, re.M)) == ["cross_entropy", "linear_cross_entropy", "log_softmax", "nll_loss"]


def test_unexpanded_glob_and_folder_are_expanded(capsys, registries):
    for arg in (str(SPECS / "*.yaml"), str(SPECS)):
        rc, out, _ = run_validate(capsys, arg)
        assert rc == 0 and out.count("OK  ") == 4, out
    rc, _, err = run_validate(capsys, str(SPECS / "nothing_*.yaml"))
    assert rc == 2 and "no file matches this pattern" in err


def test_missing_file_is_an_error_but_the_others_are_still_checked(capsys, registries, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    rc, out, err = run_validate(capsys, str(CE), missing)
    assert rc == 2
    assert out.startswith(f"OK  {CE}  cross_entropy ")
    assert f"{missing}: cannot read the spec" in err and "fix: pass an existing spec file" in err
    assert "1 of 2 spec file(s) failed" in err


# --------------------------------------------------------------------------- typo'd keys
TYPOS = [
    # (key path, typo, the place in the message, the fix)
    (("tolerances",), "toleranses", "'toleranses' is not a known key in <top level>", "did you mean 'tolerances'?"),
    (("paths", "index", "bindings"), "bindngs", "'bindngs' is not a known key in paths.index",
     "did you mean 'bindings'?"),
    (("paths", "index", "reductions"), "reductons", "'reductons' is not a known key in paths.index",
     "did you mean 'reductions'?"),
    (("paths", "index", "reductions", "mean"), "mea", "'mea' is not an allowed key in paths.index.reductions",
     "did you mean 'mean'?"),
    (("paths", "index", "gradients", "input", "reductions"), "reducton",
     "'reducton' is not a known key in paths.index.gradients.input", "did you mean 'reductions'?"),
    (("metamorphic", "shift_invariance", "transform"), "transfrom",
     "'transfrom' is not a known key in metamorphic.shift_invariance", "did you mean 'transform'?"),
    (("tolerances", "dtypes", "float16", "k_forward"), "k_froward",
     "'k_froward' is not a known key in tolerances.dtypes.float16", "did you mean 'k_forward'?"),
    (("variants", "all_ignored_mean_zero", "overrides", "paths.index.reductions.mean"), "paths.index.reductions.mena",
     "'paths.index.reductions.mena' is not an allowed key in variants.all_ignored_mean_zero.overrides",
     "did you mean 'paths.index.reductions.mean'?"),
    (("special_cases", "all_ignored"), "All_ignored", "'All_ignored' is not an allowed key in special_cases",
     "lower_snake_case"),
]


@pytest.mark.parametrize("path,typo,message,fix", TYPOS, ids=[t[1] for t in TYPOS])
def test_typo_in_a_key_names_its_line_column_and_the_nearest_key(capsys, registries, tmp_path, path, typo, message,
                                                                 fix):
    file, line, col = edit_key(tmp_path, path, typo)
    err = assert_reported(capsys, file, line, col, message)
    assert fix in fix_line(err)
    assert err.count("\n") == 3, "the error, its fix and the summary line"


def test_typo_in_an_enum_value_suggests_the_nearest_value(capsys, registries, tmp_path):
    file, line, col = edit_value(tmp_path, ("errors", "label_smoothing_negative", "severity"), "SHUOLD")
    assert_reported(capsys, file, line, col, "errors.label_smoothing_negative.severity: 'SHUOLD' is not allowed",
                    "did you mean 'SHOULD'?", "allowed: MUST, SHOULD")


# --------------------------------------------------------------------------- bad formulas
DEN = ("paths", "index", "bindings", "den")
FORMULAS = [
    # (the formula of paths.index.bindings.den, where the caret points, reason, fix)
    ("summ(wt)", "summ", "unknown function 'summ'", "did you mean 'sum'?"),
    ("sum(wtt)", "wtt", "unknown name 'wtt'", "did you mean 'wt'?"),
    ("sum(softmx)", "softmx", "unknown name 'softmx'", "did you mean the function 'softmax(...)'?"),
    ("sum(wt", "(wt", "not a valid expression: '(' was never closed", "balanced brackets"),
    ("np.sum(wt)", "np.sum", "only plain function calls",
     "did you mean 'sum'? call the language's functions directly: sum(...), not np.sum(...)"),
    ('"lambda w: sum(w)"', "lambda", "Lambda is not allowed", "without lambda"),
    ("sum(x[0])", "x[0]", "Subscript is not allowed", "take_along(a, t, axis=classes)"),
    ("sum(wt) if C > 1 else 0", "sum(wt) if", "IfExp is not allowed", "where(condition, a, b)"),
    ("sum(wt) and valid", "sum(wt) and", "BoolOp is not allowed", "write & for and"),
    ("sum(wt, axis=1)", "1)", "sum(axis=...) must be axis=classes", "only axis=classes is accepted"),
    ("sum('wt')", "'wt'", "only numbers are allowed as constants", "names are written bare"),
]


@pytest.mark.parametrize("formula,at,reason,fix", FORMULAS, ids=[f[0] for f in FORMULAS])
def test_bad_formula_points_into_the_formula(capsys, registries, tmp_path, formula, at, reason, fix):
    file, line, col = edit_value(tmp_path, DEN, formula, at=at)
    err = assert_reported(capsys, file, line, col, f"paths.index.bindings.den: {reason}")
    assert fix in fix_line(err)
    source, caret = err.splitlines()[1:3]
    assert source.strip() == formula.strip('"') and caret.index("^") == source.index(at), err


def test_formula_error_in_a_folded_block_points_at_the_line_of_the_fault(capsys, registries, tmp_path):
    file, line, col = edit_value(tmp_path, ("paths", "index", "reductions", "mean"),
                                 ">-\n        sum(l) /\n        denn", at="denn")
    assert_reported(capsys, file, line, col, "paths.index.reductions.mean: unknown name 'denn'", "did you mean 'den'?")


def test_formula_error_in_quotes_and_in_a_flow_mapping(capsys, registries, tmp_path):
    nll = SPECS / "nll_loss.yaml"
    file, line, col = edit_value(tmp_path, ("paths", "index", "reductions", "mean"), '"sum(l) / dne"', at="dne",
                                 source=nll)
    assert_reported(capsys, file, line, col, "unknown name 'dne'", "did you mean 'den'?")
    text = nll.read_text()
    key, _ = _nodes(text, ("paths", "index", "reductions"))
    after, _ = _nodes(text, ("paths", "index", "gradients"))
    file, line, col = _write(tmp_path, text, key.start_mark.index, after.start_mark.index,
                             "reductions: {none: l, sum: sum(l), mean: sum(l) / dne}\n    ", "dne", nll.name)
    assert_reported(capsys, file, line, col, "paths.index.reductions.mean: unknown name 'dne'")


def test_formula_errors_in_variants_and_tolerances_point_at_their_own_line(capsys, registries, tmp_path):
    override = ("variants", "all_ignored_mean_zero", "overrides", "paths.index.reductions.mean")
    file, line, col = edit_value(tmp_path, override, "where(den == 0, 0, summ(l) / den)", at="summ")
    assert_reported(capsys, file, line, col,
                    "variants.all_ignored_mean_zero.overrides.paths.index.reductions.mean: unknown function 'summ'")
    file, line, col = edit_value(tmp_path, ("tolerances", "scale"), "sum(abss(alpha), axis=classes)", at="abss")
    assert_reported(capsys, file, line, col, "tolerances.scale: unknown function 'abss'", "did you mean 'abs'?")


def test_an_override_of_a_formula_that_does_not_exist(capsys, registries, tmp_path):
    override = ("variants", "all_ignored_mean_zero", "overrides", "paths.index.gradients.input.reductions.mean")
    file, line, col = edit_key(tmp_path, override, "paths.index.gradients.target.reductions.mean")
    assert_reported(capsys, file, line, col, "paths.index has no gradient with respect to 'target'",
                    "paths.index.gradients.input.reductions.mean")


def test_a_binding_may_not_hide_an_input(capsys, registries, tmp_path):
    file, line, col = edit_key(tmp_path, DEN, "x")
    assert_reported(capsys, file, line, col, "the binding 'x' would hide an input")


# --------------------------------------------------------------------------- wrong types
TYPES = [
    (("tolerances", "dtypes", "float16", "k_forward"), '"eight"',
     "tolerances.dtypes.float16.k_forward: expected a number, got a string 'eight'", "bare number"),
    (("special_cases", "all_ignored", "make"), "3", "special_cases.all_ignored.make: expected a list, got an integer 3",
     "fix: write a list, e.g. [3]"),
    (("errors", "target_out_of_range_high", "make"), "3", "errors.target_out_of_range_high.make: expected a string",
     'quote it: "3"'),
    (("paths", "index", "reductions", "none"), "0", "paths.index.reductions.none: expected a string", 'quote it: "0"'),
    (("spec_version",), "1.0", "spec_version: expected a string, got a number 1.0", 'quote it: "1.0"'),
    (("paths", "index", "bindings"), "[lp]", "paths.index.bindings: expected a mapping, got a list", "write a mapping"),
]


@pytest.mark.parametrize("path,value,message,fix", TYPES, ids=[t[2].split(":")[0] for t in TYPES])
def test_wrong_type_names_the_expected_type(capsys, registries, tmp_path, path, value, message, fix):
    file, line, col = edit_value(tmp_path, path, value)
    assert_reported(capsys, file, line, col, message, fix)


def test_missing_required_key_points_at_its_parent(capsys, registries, tmp_path):
    text = CE.read_text()
    key, value = _nodes(text, ("paths", "index", "when"))
    file, _, _ = _write(tmp_path, text, line_start(text, key), value.end_mark.index + 1, "", "", CE.name)
    parent, _ = _nodes(text, ("paths", "index"))
    assert_reported(capsys, file, parent.start_mark.line + 1, parent.start_mark.column + 1,
                    "paths.index: the required key 'when' is missing", "fix: add 'when:' under paths.index")


# --------------------------------------------------------------------------- YAML itself
def test_invalid_yaml_tab(capsys, registries, tmp_path):
    text = CE.read_text()
    key, _ = _nodes(text, DEN)
    file, line, col = _write(tmp_path, text, line_start(text, key), key.start_mark.index, "\t", "\t", CE.name)
    assert_reported(capsys, file, line, col, "not valid YAML", "fix: indent with spaces, never tabs")


def test_invalid_yaml_unclosed_bracket(capsys, registries, tmp_path):
    file, line, _ = edit_value(tmp_path, ("special_cases", "all_ignored", "make"), "[all_ignored")
    with pytest.raises(yaml.YAMLError) as info:
        yaml.safe_load(Path(file).read_text())
    mark = info.value.problem_mark
    assert mark.line + 1 > line
    assert_reported(capsys, file, mark.line + 1, mark.column + 1, "not valid YAML: expected ',' or ']'",
                    "fix: fix the YAML syntax")


def test_duplicate_keys_are_rejected(capsys, registries, tmp_path):
    text = CE.read_text()
    first, _ = _nodes(text, ("paths", "index", "reductions", "sum"))
    mean, _ = _nodes(text, ("paths", "index", "reductions", "mean"))
    start = line_start(text, mean)
    file, line, col = _write(tmp_path, text, start, start, " " * mean.start_mark.column + "sum: sum(l) / 2\n",
                             "sum: sum(l) / 2", CE.name)
    assert_reported(capsys, file, line, col,
                    f"duplicate key 'sum' in paths.index.reductions (first at line {first.start_mark.line + 1})",
                    "YAML would silently use the last one")


def test_top_level_must_be_a_mapping(capsys, tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    assert_reported(capsys, str(f), 1, 1, "a spec must be a mapping at the top level")


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize("path,typo,what", [
    (("special_cases", "all_ignored", "make", 0), "all_ignord", "unknown strategy modifier 'all_ignord'"),
    (("errors", "target_out_of_range_high", "make"), "target_at_least_c", "unknown error mutation 'target_at_least_c'"),
    (("metamorphic", "batch_permutation", "transform"), "permute_btach",
     "unknown metamorphic transform 'permute_btach'"),
], ids=["modifier", "mutation", "transform"])
def test_unknown_reference_name(capsys, registries, tmp_path, path, typo, what):
    file, line, col = edit_value(tmp_path, path, typo)
    assert_reported(capsys, file, line, col, f"{'.'.join(map(str, path))}: {what}",
                    f"did you mean '{original(path)}'?")


def test_unknown_reference_against_a_small_registry(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(modifiers, "MODIFIERS", {"all_ignored": None, "empty_batch": None})
    monkeypatch.setattr(mutations, "MUTATIONS", {})
    monkeypatch.setattr(mm, "TRANSFORMS", {})
    f = tmp_path / CE.name
    f.write_text(CE.read_text())
    first_other = next((cid, i) for cid, case in yaml.safe_load(CE.read_text())["special_cases"].items()
                       for i, m in enumerate(case["make"]) if m not in modifiers.MODIFIERS)
    _, node = _nodes(CE.read_text(), ("special_cases", first_other[0], "make", first_other[1]))
    assert_reported(capsys, str(f), node.start_mark.line + 1, node.start_mark.column + 1,
                    f"special_cases.{first_other[0]}.make.{first_other[1]}: unknown strategy modifier '{node.value}'",
                    "known: all_ignored, empty_batch")


def test_unknown_error_clause_in_a_variant(capsys, registries, tmp_path):
    path = ("variants", "invalid_target_nan", "replaces_errors", 0)
    file, line, col = edit_value(tmp_path, path, original(path) + "x")
    assert_reported(capsys, file, line, col, f"unknown error clause '{original(path)}x'",
                    f"did you mean '{original(path)}'?")


# --------------------------------------------------------------------------- schema, safety, API
def test_schema_rejects_unknown_top_level_keys(tmp_path):
    raw = yaml.safe_load(CE.read_text())
    errors = list(jsonschema.Draft202012Validator(sp._schema()).iter_errors({**raw, "extras": {}}))
    assert [e.validator for e in errors] == ["additionalProperties"]
    with pytest.raises(sp.SpecError) as info:
        sp.loads(CE.read_text() + "extras: {}\n", file="x.yaml")
    assert (info.value.line, info.value.col) == (len(CE.read_text().splitlines()) + 1, 1)
    assert "'extras' is not a known key in <top level>" in str(info.value)


def test_loader_never_executes_code(capsys, registries, monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    def no_eval(*a, **k):
        raise AssertionError("eval/exec called while loading a spec")
    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(builtins, "exec", no_eval)
    file, line, col = edit_value(tmp_path, DEN, f"__import__('os').system('touch {marker}')", at="__import__")
    assert_reported(capsys, file, line, col, "only plain function calls", "a formula is data and is never executed")
    file, line, col = edit_value(tmp_path, ("summary",), f"!!python/object/apply:os.system ['touch {marker}']")
    assert_reported(capsys, file, line, col, "not valid YAML: could not determine a constructor",
                    "is plain data (safe YAML)")
    assert not marker.exists()


def test_spec_error_renders_location_message_and_fix():
    e = sp.SpecError("a.yaml", 3, 7, "bad thing", "do this")
    assert str(e) == "a.yaml:3:7: bad thing\n  fix: do this"
    assert (e.file, e.line, e.col, e.message, e.fix) == ("a.yaml", 3, 7, "bad thing", "do this")
    assert str(sp.SpecError("a.yaml", None, None, "unreadable")) == "a.yaml: unreadable"


def test_load_default_and_variants(registries):
    spec = sp.load_default()
    assert spec.operation == "cross_entropy" and spec.file == str(sp.default_spec_path())
    v = spec.with_variants(["all_ignored_mean_zero"])
    assert v.paths["index"].reductions["mean"].source == spec.variants["all_ignored_mean_zero"].overrides[
        "paths.index.reductions.mean"]
    assert spec.paths["index"].reductions["mean"].source != v.paths["index"].reductions["mean"].source


# --------------------------------------------------------------------------- show
def _show(capsys, path) -> tuple[int, str, str]:
    rc = cli.show(str(path))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_show_prints_every_clause_and_formula(capsys, registries, monkeypatch, path):
    monkeypatch.delenv("COLUMNS", raising=False)
    spec = sp.load(path)
    rc, out, err = _show(capsys, path)
    assert (rc, err) == (0, "")
    assert "\x1b[" not in out, "no colour codes when piped"
    for needle in (spec.operation, spec.version, spec.sha256, spec.reference):
        assert needle in out
    for path_ in spec.paths.values():
        formulas = {**path_.bindings, **path_.reductions}
        for grad in path_.gradients.values():
            formulas.update({**grad.bindings, **grad.reductions})
            if grad.unspecified is not None:
                formulas["unspecified"] = grad.unspecified
        for name, f in formulas.items():
            assert re.search(rf"^ +{re.escape(name)} *= {re.escape(f.source)}$", out, re.M), (name, f.source)
    for clause in spec.errors.values():
        assert re.search(rf"^ *{clause.id} +{clause.severity} +{clause.make} ", out, re.M), clause.id
    for ident in [*spec.special_cases, *spec.metamorphic, *spec.variants, *spec.tolerances.dtypes]:
        assert ident in out
    for v in spec.variants.values():
        for dotted, source in v.overrides.items():
            assert re.search(rf"{re.escape(dotted)} *= {re.escape(source)}$", out, re.M)
    assert spec.tolerances.scale.source in out and spec.tolerances.gscale.source in out


def test_show_in_a_narrow_terminal_keeps_ids_whole(capsys, registries, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    spec = sp.load(CE)
    rc, out, _ = _show(capsys, CE)
    assert rc == 0
    lines = [line.strip() for line in out.splitlines()]
    for ident in [*spec.errors, *spec.special_cases, *spec.metamorphic]:
        assert ident in lines, ident
    assert re.search(r"^ +severity +MUST$", out, re.M)
    assert re.search(r"^ +torch's message +IndexError: Target 3 is out of bounds", out, re.M)


def test_show_highlights_in_a_terminal(registries):
    buf = StringIO()
    assert cli.show(str(CE), Console(file=buf, force_terminal=True, color_system="standard", width=200)) == 0
    assert "\x1b[" in buf.getvalue()
    assert "log_softmax" in buf.getvalue()


def test_show_bad_spec_returns_2_with_the_error(capsys, registries, tmp_path):
    file, line, col = edit_key(tmp_path, ("tolerances",), "toleranses")
    rc, out, err = _show(capsys, file)
    assert (rc, out) == (2, "")
    assert f"{file}:{line}:{col}: 'toleranses' is not a known key" in err and "did you mean 'tolerances'?" in err
