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

from ..diagnostics import UserError
from .options import PROFILES, add_to_argparse, plugin_args

ERR = Console(stderr=True, highlight=False, soft_wrap=True)  # no wrapping: messages are grepped in CI logs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ce-conformance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the conformance suite and write reports")
    add_to_argparse(r)  # one table with the pytest plugin's options: conformance/runner/options.py

    s = sub.add_parser("spec", help="validate or show spec files")
    ssub = s.add_subparsers(dest="spec_command", required=True)
    v = ssub.add_parser("validate", help="validate spec files (exit 2 on the first problem in each)")
    v.add_argument("files", nargs="+")
    sh = ssub.add_parser("show", help="print a spec's formulas and clauses")
    sh.add_argument("file", nargs="?", default=None)

    rep = sub.add_parser("report", help="render the HTML report from results files; several results.json "
                                        "(shards of one run) are merged into --out's results.json and junit.xml")
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

    b = sub.add_parser("bench", help="benchmark: wall time, harness share, JAX compile hits, time to first "
                                     "failure of the planted bugs, oracle throughput (JSON and a table)")
    b.add_argument("--profile", action="append", default=None, choices=list(PROFILES),
                   help="profile(s) to time (repeatable; default: quick and default)")
    b.add_argument("--adapter", action="append", default=None,
                   help="adapters to time (default numpy, torch-cpu, jax-cpu)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--seeds", type=int, default=3, help="seeds per planted bug (median and worst over them)")
    b.add_argument("--skip", action="append", default=[], choices=["runs", "planted", "oracle"],
                   help="leave a part out (repeatable)")
    b.add_argument("--oracle-max", type=int, default=24, metavar="LOG2", help="largest P*C of the oracle part, 2^LOG2")
    b.add_argument("--json", default=None, metavar="FILE", help="also write the JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "spec": cmd_spec, "report": cmd_report, "diff": cmd_diff,
                "repro": cmd_repro, "adapters": cmd_adapters, "bench": cmd_bench}[args.command](args)
    except UserError as exc:  # a spec, config, known file, shard, database...: one message, exit 2
        return _error(str(exc))
    except KeyboardInterrupt:
        ERR.print("[red]interrupted[/]")
        return 2


def _error(message: str) -> int:
    """Print ``error: message`` as one line (never read as rich markup: paths and adapter names
    may hold brackets) and return the usage-error exit code, 2."""
    from rich.text import Text

    ERR.print(Text.assemble(("error:", "red"), " ", str(message)))
    return 2


def _path_problem(path: str, *, folder: bool, option: str) -> str | None:
    """Why ``path`` cannot be written (a folder to create and fill, or one file), else None.

    Checked before any work starts, so that a bad --out is one line and exit 2 rather than a
    traceback after the run."""
    import os
    import tempfile

    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        return f"{option} {path}: is a file, not a folder; fix: give a folder (it is created if missing)"
    if not folder and p.is_dir():
        return f"{option} {path}: is a folder; fix: give a file name"
    parent = p if folder else p.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{option} {path}: {probe} is a file, so nothing can be created under it; fix: choose another path"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".ce-write-check-"):
            pass
    except OSError as exc:
        return f"{option} {path}: cannot write there ({exc.strerror or exc}); fix: choose a writable path"
    if not folder and p.exists() and not os.access(p, os.W_OK):
        return f"{option} {path}: the file is read-only; fix: choose a writable path"
    return None


def cmd_run(args) -> int:
    import pytest

    from .. import spec_consistency
    from ..spec import load, load_default
    from .session import load_adapters, load_baseline, load_known, shipped_known_files

    problem = _path_problem(args.out, folder=True, option="--out")
    if problem:
        return _error(problem)
    # every input checked before pytest starts: a fault is one message and exit 2 (main())
    spec = load(args.spec) if args.spec else load_default()
    adapters = load_adapters(args.adapter)
    if args.known is None:
        args.known = shipped_known_files()
    load_known(args.known)
    load_baseline(args.baseline)
    _check_scale(args)
    spec_consistency.check(spec)  # last: it costs about a second, the checks above far less
    for a in adapters.values():
        why = a.unavailable()
        ERR.print(f"adapter {a.name}: " + (f"[yellow]skipped ({why})[/]" if why else "[green]ready[/]"))
    out = Path(args.out)
    from .results import move_aside_stale
    moved = move_aside_stale(out)
    if moved is not None:
        ERR.print(f"reports of an earlier run in {out} moved to {moved}")
        if args.baseline:
            b = Path(args.baseline).resolve()
            if b.parent == out.resolve() and (moved / b.name).exists():
                args.baseline = str(moved / b.name)
    suite = Path(__file__).parents[1] / "suite.py"
    junit_tmp = out / ".junit.xml.tmp"  # renamed to junit.xml once pytest has written it whole
    pargs = [str(suite), "-p", "no:cacheprovider",
             f"--junitxml={junit_tmp}", "-o", "junit_family=xunit2", "-o", "console_output_style=count",
             "-W", "ignore:record_property is incompatible:pytest.PytestWarning",
             "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    pargs += plugin_args(args)
    if args.workers:
        if importlib.util.find_spec("xdist") is None:
            return _error("-n needs pytest-xdist; fix: pip install pytest-xdist")
        pargs += ["-n", str(args.workers)]
    # One summary, ce-conformance's: pytest's terminal output only with -v.
    pargs += ["-v", "--no-header", "-rN", "--tb=no"] if args.verbose else ["-p", "no:terminal"]
    _forget_hypothesis_side_effects()
    import signal

    from .pytest_plugin import HandOff
    from .session import RunSession

    # a fresh record for each run: main() may be called more than once in a process
    run = RunSession(argv=["ce-conformance"] + (sys.argv[1:] if argv_is_cli() else []))
    previous = run.install_sigterm()  # SIGTERM = SIGINT: reports written, exit 2
    try:
        code = pytest.main(pargs, plugins=[HandOff(run)])
        run.finishing = True  # a late SIGTERM is recorded, the reports still written
        if not args.verbose:
            for line in run.summary_lines:
                print(line)
        if junit_tmp.exists():
            junit_tmp.replace(out / "junit.xml")
        results_file = out / "results.json"
        if results_file.exists() and not args.no_report:
            _render_report([str(results_file)], out)
        return _run_exit_code(code, out, run)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _forget_hypothesis_side_effects() -> None:
    """The spec's consistency check above runs Hypothesis before pytest loads Hypothesis's
    plugin, which would then warn about "slow code in plugin": that run is over and harmless."""
    try:
        from hypothesis.configuration import notice_initialization_restarted
    except ImportError:  # pragma: no cover - another Hypothesis layout
        return
    notice_initialization_restarted(warn=False)


def _check_scale(args) -> None:
    """Raise a UserError when --shard, --database or --database-readonly cannot be used."""
    from .database import check, compose
    from .session import ConfigError
    from .shard import parse

    if args.shard:
        parse(args.shard)
    if args.database or args.database_readonly:
        if args.derandomize and args.seed is None:
            raise ConfigError("--database/--database-readonly with --ci: a derandomised search cannot use an "
                              "example database (Hypothesis forbids it); fix: give --seed S instead of --ci, or both")
        check(compose(args.database, args.database_readonly, default=None))


def _run_exit_code(code, out: Path, run) -> int:
    """0 only when results.json exists and says every check passed (whatever pytest says)."""
    import pytest

    from .results import load

    if code == pytest.ExitCode.INTERRUPTED or run.sigterm:
        ERR.print(f"[yellow]interrupted{' (SIGTERM)' if run.sigterm else ''}: "
                  f"the reports in {out} hold the checks that finished[/]")
        return 2
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return _error(f"the run ended with pytest exit code {int(code)}")
    try:
        doc = load(out / "results.json")
    except ValueError as exc:
        return _error(f"the run wrote no usable results.json ({exc})")
    results = doc.get("results") or []
    if run.total and len(results) != run.total:
        return _error(f"results.json holds {len(results)} results for {run.total} checks run")
    if code == pytest.ExitCode.TESTS_FAILED or any(r.get("status") in ("failed", "error", "flaky") for r in results):
        return 1
    return 0


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name.startswith("ce-conformance")


def _render_report(files: list[str], out: Path) -> int:
    try:
        from .report import render
    except ImportError as exc:
        ERR.print(f"[yellow]HTML report skipped: {exc} (pip install 'ce-conformance[report]')[/]")
        return 0
    problem = _path_problem(str(out), folder=True, option="--out")
    if problem:
        return _error(problem)
    try:
        path = render(files, out)
    except ValueError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write the report to {out}: {exc.strerror or exc}")
    ERR.print(f"report: {path}")
    return 0


def cmd_report(args) -> int:
    """Render results files; a ``results.partial.jsonl`` (a run killed before it finished)
    first becomes a full report in --out: results.json, junit.xml, failures/ and repro/."""
    from .results import recover

    out = Path(args.out)
    partial = [f for f in args.results if f.endswith(".jsonl")]
    if len(partial) > 1:
        return _error(f"{len(partial)} partial results files given; fix: rebuild one at a time, each with its "
                      "own --out")
    files = []
    for f in args.results:
        if f not in partial:
            files.append(f)
            continue
        problem = _path_problem(str(out), folder=True, option="--out")
        if problem:
            return _error(problem)
        try:
            path, truncated = recover(f, out)
        except ValueError as exc:
            return _error(str(exc))
        ERR.print(f"rebuilt {path} and {out / 'junit.xml'} from {f}"
                  + (" (its last line was cut short and is left out)" if truncated else ""))
        files.append(str(path))
    if len(files) > 1:
        from .merge import merge

        problem = _path_problem(str(out), folder=True, option="--out")
        if problem:
            return _error(problem)
        try:
            path, warnings = merge(files, out)
        except OSError as exc:
            return _error(f"cannot write the merged results to {out}: {exc.strerror or exc}")
        ERR.print(f"merged {len(files)} results files into {path} and {out / 'junit.xml'}")
        for w in warnings:
            ERR.print(f"[yellow]warning: {w}[/]")
        files = [str(path)]
    return _render_report(files, out)


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_spec(args) -> int:
    from . import spec_cli

    if args.spec_command == "validate":
        return spec_cli.validate(args.files)
    from ..spec import default_spec_path
    return spec_cli.show(args.file or str(default_spec_path()))


def cmd_diff(args) -> int:
    from .results import load

    try:
        old, new = load(args.old), load(args.new)
    except ValueError as exc:
        return _error(str(exc))
    from ..gate import explained, result_records

    o = {r["id"]: r for r in old["results"]}
    n = {r["id"]: r for r in new["results"]}
    good = ("passed", "variant", "known", "fixed", "permissive")
    bad = ("failed", "error", "flaky")
    broke = sorted(i for i in n if n[i]["status"] in bad and o.get(i, {}).get("status") in good)
    fixed = sorted(i for i in n if n[i]["status"] in good and o.get(i, {}).get("status") in bad)
    added = sorted(set(n) - set(o))
    removed = sorted(set(o) - set(n))
    # failure signatures (conformance/gate.py): what failed, on which option classes; a record
    # inside a probed failure region of the other run counts as the same failure
    def unexplained(a: dict, b: dict) -> list[tuple[str, dict]]:
        return [(i, rec) for i, r in sorted(a.items()) for rec in result_records(r)
                if rec.get("count", 1) and not explained(rec, result_records(b.get(i, {})))]
    sig_new = unexplained(n, o)
    sig_fixed = [(i, rec) for i, rec in unexplained(o, n) if i in n]
    con = Console(highlight=False, soft_wrap=True)
    for title, ids, style in (("broke", broke, "red"), ("fixed", fixed, "green"), ("new checks", added, "cyan"),
                              ("checks gone", removed, "yellow")):
        con.print(f"[{style}]{title}: {len(ids)}[/]")
        for i in ids:
            con.print(f"  {i}" + (f"  {n[i]['message'][:200]}" if i in n and n[i].get("message") else ""), markup=False)
    for title, recs, style in (("new failure signatures", sig_new, "red"),
                               ("fixed failure signatures", sig_fixed, "green")):
        con.print(f"[{style}]{title}: {len(recs)}[/]")
        for rid, rec in recs:
            note = " (accepted: known or baseline)" if rec.get("accepted_by") else ""
            con.print(f"  {rid.split('::')[0]}::{rec['key']}{note}", markup=False)
    new_unaccepted = [rec for i, rec in sig_new if not rec.get("accepted_by") and n[i]["status"] in bad]
    return 1 if broke or new_unaccepted else 0


def cmd_repro(args) -> int:
    from .results import load

    try:
        doc = load(args.results)
    except ValueError as exc:
        return _error(str(exc))
    match = [r for r in doc["results"] if r["id"] == args.id]
    if not match:
        ids = [r["id"] for r in doc["results"] if r["status"] in ("failed", "known")]
        return _error(f"no result {args.id!r} in {args.results}; failures there: {', '.join(ids) or 'none'}")
    f = match[0].get("failure") or {}
    if not f.get("repro"):
        return _error(f"{args.id} has no failure to reproduce (status {match[0]['status']})")
    src = Path(args.results).parent / f["repro"]
    if not src.is_file():
        return _error(f"{args.id}: the reproduction script {src} is missing; fix: keep the folder that "
                      "results.json was written to intact, or rerun")
    if args.out:
        from .repro import copy_repro

        if Path(args.out).suffix != ".py":
            return _error(f"--out {args.out}: give a .py file name (its .json and .npz are written beside it)")
        problem = _path_problem(args.out, folder=False, option="--out")
        if problem:
            return _error(problem)
        try:
            copy_repro(src, Path(args.out))
        except OSError as exc:
            return _error(f"cannot copy the reproduction {src} to {args.out}: {exc.strerror or exc}")
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
