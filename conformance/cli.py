"""``ce-conformance``: the command line.

Exit codes (stable): 0 every check passed (known divergences and declared variants
included); 1 some check failed; 2 usage or configuration error, with a message.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from rich.console import Console

ERR = Console(stderr=True, highlight=False, soft_wrap=True)  # no wrapping: messages are grepped in CI logs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ce-conformance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the conformance suite and write reports")
    r.add_argument("--adapter", action="append", default=[], metavar="NAME|IMPORT.PATH:ATTR|CONFIG.yaml",
                   help="adapter under test (repeatable): a builtin, pkg.module:attr, jax:/numpy:pkg.module:attr "
                        "or an adapter config file (docs/gating.md); default: every built-in")
    r.add_argument("--profile", default="default", choices=["quick", "default", "thorough"])
    r.add_argument("--seed", type=int, default=None, help="Hypothesis seed")
    r.add_argument("--ci", action="store_true", help="derandomised: the same examples on every run")
    r.add_argument("--out", default="reports", help="output folder (default: reports)")
    r.add_argument("--spec", default=None, help="spec file (default: the packaged cross_entropy.yaml)")
    r.add_argument("--known", action="append", default=None,
                   help="known-divergence file (repeatable; default: the shipped files for the built-ins)")
    r.add_argument("--strict", action="store_true", help="known divergences fail the run too")
    r.add_argument("--baseline", default=None, help="results.json of an earlier run")
    r.add_argument("--check", action="append", default=[], help="only checks whose id starts with this")
    r.add_argument("-n", "--workers", default=None, help="pytest-xdist workers (e.g. auto)")
    r.add_argument("--no-report", action="store_true", help="skip the HTML report")

    s = sub.add_parser("spec", help="validate or show spec files")
    ssub = s.add_subparsers(dest="spec_command", required=True)
    v = ssub.add_parser("validate", help="validate spec files (exit 2 on the first problem in each)")
    v.add_argument("files", nargs="+")
    sh = ssub.add_parser("show", help="print a spec's formulas and clauses")
    sh.add_argument("file", nargs="?", default=None)

    rep = sub.add_parser("report", help="render the HTML report from results files")
    rep.add_argument("results", nargs="+")
    rep.add_argument("--out", default="reports")

    d = sub.add_parser("diff", help="what broke and what was fixed between two results files")
    d.add_argument("old")
    d.add_argument("new")

    rp = sub.add_parser("repro", help="write the reproduction script of a failure")
    rp.add_argument("id", help="ADAPTER::CHECK as in results.json")
    rp.add_argument("--results", default="reports/results.json")
    rp.add_argument("--out", default=None, help="file to write (default: print the path of the stored script)")

    sub.add_parser("adapters", help="list the built-in adapters and whether they can run here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "spec": cmd_spec, "report": cmd_report, "diff": cmd_diff,
                "repro": cmd_repro, "adapters": cmd_adapters}[args.command](args)
    except KeyboardInterrupt:
        ERR.print("[red]interrupted[/]")
        return 2


def _known_default(adapters: list[str]) -> list[str]:
    folder = Path(__file__).parent / "known"
    return sorted(str(p) for p in folder.glob("*.yaml")) if folder.exists() else []


def cmd_run(args) -> int:
    import pytest

    from .session import ConfigError, load_adapters, load_known
    from .spec import SpecError, load

    try:
        if args.spec:
            load(args.spec)
        adapters = load_adapters(args.adapter)
        known = args.known if args.known is not None else _known_default(list(adapters))
        load_known(known)
        if args.baseline:
            from .session import load_baseline
            load_baseline(args.baseline)
    except (SpecError, ConfigError) as exc:
        ERR.print(f"[red]error:[/] {exc}")
        return 2
    for a in adapters.values():
        why = a.unavailable()
        ERR.print(f"adapter {a.name}: " + (f"[yellow]skipped ({why})[/]" if why else "[green]ready[/]"))
    out = Path(args.out)
    suite = Path(__file__).with_name("suite.py")
    pargs = [str(suite), "-p", "no:cacheprovider", "-q", "--no-header", "-rN", "--tb=no",
             f"--junitxml={out / 'junit.xml'}", "-o", "junit_family=xunit2", "-o", "console_output_style=count",
             "-W", "ignore:record_property is incompatible:pytest.PytestWarning",
             "-W", "ignore::pytest.PytestAssertRewriteWarning",
             f"--ce-profile={args.profile}", f"--ce-out={out}"]
    for a in args.adapter:
        pargs.append(f"--ce-adapter={a}")
    for k in known:
        pargs.append(f"--ce-known={k}")
    for c in args.check:
        pargs.append(f"--ce-check={c}")
    if args.seed is not None:
        pargs.append(f"--ce-seed={args.seed}")
    if args.ci:
        pargs.append("--ce-derandomize")
    if args.strict:
        pargs.append("--ce-strict")
    if args.spec:
        pargs.append(f"--ce-spec={args.spec}")
    if args.baseline:
        pargs.append(f"--ce-baseline={args.baseline}")
    if args.workers:
        if importlib.util.find_spec("xdist") is None:
            ERR.print("[red]error:[/] -n needs pytest-xdist: pip install pytest-xdist")
            return 2
        pargs += ["-n", str(args.workers)]
    from . import pytest_plugin
    pytest_plugin._STATE.clear()  # a fresh run: main() may be called more than once in a process
    pytest_plugin._STATE["argv"] = ["ce-conformance"] + (sys.argv[1:] if argv_is_cli() else [])
    code = pytest.main(pargs)
    results_file = out / "results.json"
    if results_file.exists() and not args.no_report:
        _render_report([str(results_file)], out)
    if code == pytest.ExitCode.OK:
        return 0
    if code == pytest.ExitCode.TESTS_FAILED:
        return 1
    if code == pytest.ExitCode.INTERRUPTED:
        ERR.print(f"[yellow]interrupted: partial results in {out}[/]")
        return 2
    ERR.print(f"[red]error:[/] the run ended with pytest exit code {int(code)}")
    return 2


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name.startswith("ce-conformance")


def _render_report(files: list[str], out: Path) -> int:
    try:
        from .report import render
    except ImportError as exc:
        ERR.print(f"[yellow]HTML report skipped: {exc} (pip install 'ce-conformance[report]')[/]")
        return 0
    try:
        path = render(files, out)
    except ValueError as exc:
        ERR.print(f"[red]error:[/] {exc}")
        return 2
    ERR.print(f"report: {path}")
    return 0


def cmd_report(args) -> int:
    return _render_report(args.results, Path(args.out))


def cmd_spec(args) -> int:
    from . import spec_cli

    if args.spec_command == "validate":
        return spec_cli.validate(args.files)
    from .spec import default_spec_path
    return spec_cli.show(args.file or str(default_spec_path()))


def cmd_diff(args) -> int:
    from .results import load

    try:
        old, new = load(args.old), load(args.new)
    except ValueError as exc:
        ERR.print(f"[red]error:[/] {exc}")
        return 2
    o = {r["id"]: r for r in old["results"]}
    n = {r["id"]: r for r in new["results"]}
    good = ("passed", "variant", "known", "fixed")
    broke = sorted(i for i in n if n[i]["status"] in ("failed", "error") and o.get(i, {}).get("status") in good)
    fixed = sorted(i for i in n if n[i]["status"] in good and o.get(i, {}).get("status") in ("failed", "error"))
    added = sorted(set(n) - set(o))
    removed = sorted(set(o) - set(n))
    con = Console(highlight=False, soft_wrap=True)
    for title, ids, style in (("broke", broke, "red"), ("fixed", fixed, "green"), ("new checks", added, "cyan"),
                              ("checks gone", removed, "yellow")):
        con.print(f"[{style}]{title}: {len(ids)}[/]")
        for i in ids:
            con.print(f"  {i}" + (f"  {n[i]['message'][:200]}" if i in n and n[i].get("message") else ""))
    return 1 if broke else 0


def cmd_repro(args) -> int:
    from .results import load

    try:
        doc = load(args.results)
    except ValueError as exc:
        ERR.print(f"[red]error:[/] {exc}")
        return 2
    match = [r for r in doc["results"] if r["id"] == args.id]
    if not match:
        ids = [r["id"] for r in doc["results"] if r["status"] in ("failed", "known")]
        ERR.print(f"[red]error:[/] no result {args.id!r} in {args.results}; failures there: {', '.join(ids) or 'none'}")
        return 2
    f = match[0].get("failure") or {}
    if not f.get("repro"):
        ERR.print(f"[red]error:[/] {args.id} has no failure to reproduce (status {match[0]['status']})")
        return 2
    src = Path(args.results).parent / f["repro"]
    if args.out:
        Path(args.out).write_text(src.read_text())
        print(args.out)
    else:
        print(src)
    return 0


def cmd_adapters(args) -> int:
    from conformance.adapters import BUILTINS

    con = Console(highlight=False)
    for name, factory in BUILTINS.items():
        try:
            why = factory().unavailable()
        except Exception as exc:  # noqa: BLE001
            why = str(exc)
        con.print(f"{name:18s} " + (f"[yellow]unavailable: {why}[/]" if why else "[green]available[/]"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
