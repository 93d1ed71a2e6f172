"""The pytest plugin: every adapter x check is one test item of ``conformance/suite.py``.

Registered through the ``pytest11`` entry point, it stays inert unless the suite module is
collected (``ce-conformance run`` does that, or ``pytest --pyargs conformance.suite``). It
adds the ``--ce-*`` options, parametrises the suite, runs each item through
:func:`conformance.engine.run_check` in the adapter's worker process (conformance/worker.py:
one per adapter and pytest process, so an adapter that crashes, hangs or changes global state
only costs its own checks; ``--ce-no-isolation`` runs them here instead), and on the
controlling process (xdist included) gathers the results into ``results.json``, failure
inputs, repro scripts and a summary. SIGTERM ends the run as SIGINT does: reports written.
"""
from __future__ import annotations

import base64
import json
import os
import warnings
from pathlib import Path

import pytest

_STATE: dict = {}


def pytest_addoption(parser):
    g = parser.getgroup("ce-conformance", "cross-entropy conformance")
    g.addoption("--ce-adapter", action="append", default=[], metavar="NAME|IMPORT.PATH:ATTR",
                help="adapter under test (repeatable); default: every built-in whose framework is importable")
    g.addoption("--ce-profile", default="default", choices=["quick", "default", "thorough"], help="examples per check")
    g.addoption("--ce-seed", type=int, default=None, help="Hypothesis seed (default: random, printed in results)")
    g.addoption("--ce-derandomize", action="store_true", help="derandomised CI mode: the same examples every run")
    g.addoption("--ce-out", default="reports", help="folder for results.json, failures/ and repro scripts")
    g.addoption("--ce-spec", default=None, help="spec file (default: the packaged specs/cross_entropy.yaml)")
    g.addoption("--ce-known", action="append", default=[], help="known-divergence file(s) (YAML)")
    g.addoption("--ce-strict", action="store_true", help="known divergences fail too")
    g.addoption("--ce-baseline", default=None, help="a results.json: fail only on checks that passed there")
    g.addoption("--ce-check", action="append", default=[], help="only checks whose id starts with this (repeatable)")
    g.addoption("--ce-timeout", type=float, default=600.0, metavar="SECONDS",
                help="per-check timeout of an adapter's worker process (a hung adapter: one timeout, then error)")
    g.addoption("--ce-no-isolation", action="store_true",
                help="run adapters in this process (no worker processes: no crash containment, no timeout)")
    g.addoption("--ce-database", action="append", default=[], metavar="DIR|redis://...|github:OWNER/REPO",
                help="example database read and written (repeatable; default .hypothesis/ce-conformance)")
    g.addoption("--ce-database-readonly", action="append", default=[], metavar="DIR|redis://...|github:OWNER/REPO",
                help="example database only read (repeatable): replay what CI found, write nothing there")
    g.addoption("--ce-shard", default=None, metavar="I/N",
                help="run only shard I of N (items split by expected cost: conformance/shard.py)")


def _session_setup(config):
    """Spec, adapters and catalogue, built once per process."""
    if "spec" in _STATE:
        return _STATE
    from . import spec as specmod
    from .checks import catalogue
    from .session import load_adapters, load_baseline, load_known

    spec_path = config.getoption("--ce-spec") or str(specmod.default_spec_path())
    spec = specmod.load(spec_path)
    _STATE["spec"] = spec
    _STATE["extra_specs"] = {op: specmod.load_default(op) for op in ("log_softmax", "nll_loss")}
    _STATE["adapters"] = load_adapters(config.getoption("--ce-adapter"))
    prefixes = config.getoption("--ce-check")
    _STATE["checks"] = [c for c in catalogue(spec) if not prefixes or any(c.id.startswith(p) for p in prefixes)]
    _STATE["known"] = load_known(config.getoption("--ce-known"))
    _STATE["baseline"] = load_baseline(config.getoption("--ce-baseline"))
    from .session import make_filter
    _STATE["gate"] = make_filter(_STATE["known"], _STATE["baseline"])
    _STATE["database"] = _database(config)
    return _STATE


def _database(config) -> str | None:
    """The run's database spec (conformance/database.py): the --ce-database entries (the local
    folder when none, unless derandomised) and the --ce-database-readonly ones."""
    from .database import DEFAULT_DIR, compose

    writable, readonly = config.getoption("--ce-database"), config.getoption("--ce-database-readonly")
    derandomized = config.getoption("--ce-derandomize") and config.getoption("--ce-seed") is None
    if derandomized and not (writable or readonly):
        return None
    return compose(writable, readonly, default=DEFAULT_DIR)


def pytest_generate_tests(metafunc):
    if "ce_item" not in metafunc.fixturenames:
        return
    state = _session_setup(metafunc.config)
    from .shard import select

    params, ids = [], []
    for name, check in select(state["adapters"], state["checks"], metafunc.config.getoption("--ce-profile"),
                              metafunc.config.getoption("--ce-shard")):
        params.append((name, check.id))
        ids.append(f"{name}::{check.id}")
    metafunc.parametrize("ce_item", params, ids=ids)


def run_item(config, adapter_name: str, check_id: str):
    """Run one item and return its result dict (used by suite.py)."""
    from .checks import Context
    from .engine import CheckResult, run_check
    from .session import apply_baseline, apply_known

    state = _session_setup(config)
    adapter = state["adapters"][adapter_name]
    check = next(c for c in state["checks"] if c.id == check_id)
    why = adapter.unavailable()
    if why:
        res = CheckResult(adapter_name, check_id, check.kind, check.clause, check.description, "skipped", message=why)
    else:
        seed = config.getoption("--ce-seed")
        derandomize = config.getoption("--ce-derandomize")
        db = state["database"]
        source = getattr(adapter, "source", None)
        if config.getoption("--ce-no-isolation") or not source:
            if not source and not config.getoption("--ce-no-isolation") and adapter_name not in state.setdefault(
                    "warned", set()):
                state["warned"].add(adapter_name)
                warnings.warn(f"ce-conformance: adapter {adapter_name} has no 'source' to rebuild it from in a "
                              "worker process: its checks run in-process, unisolated", UserWarning, stacklevel=1)
            ctx = state.setdefault("contexts", {}).get(adapter_name)
            if ctx is None:
                ctx = Context(state["spec"], adapter, profile=config.getoption("--ce-profile"),
                              extra_specs=state["extra_specs"])
                state["contexts"][adapter_name] = ctx
            res = run_check(ctx, check, seed=seed, derandomize=derandomize, database_dir=db, gate=state["gate"])
        else:
            res = _run_in_worker(config, state, adapter_name, source, check, seed=seed, derandomize=derandomize,
                                 database_dir=db)
    d = res.to_json()
    if res.failure_inputs:
        d["failure_inputs_b64"] = base64.b64encode(res.failure_inputs).decode()
    apply_known(d, state["known"], strict=config.getoption("--ce-strict"))
    apply_baseline(d, state["baseline"])
    return d


def _run_in_worker(config, state, name: str, source: str, check, **kw):
    """The check in the adapter's worker process (conformance/worker.py); kinds the adapter
    lists in ``isolate_kinds`` get a fresh process each (conformance/isolation.py)."""
    from .isolation import run_isolated
    from .worker import AdapterWorker

    adapter = state["adapters"][name]
    gate = state.get("gate")
    gate_json = gate.to_json() if gate is not None else None
    timeout = config.getoption("--ce-timeout")
    profile = config.getoption("--ce-profile")
    if check.kind in getattr(adapter, "isolate_kinds", ()):
        return run_isolated(source, check, profile=profile, spec_file=state["spec"].file, timeout=timeout,
                            name=name, gate_json=gate_json, **kw)
    workers = state.setdefault("workers", {})
    if name not in workers:
        workers[name] = AdapterWorker(source, name=name, spec_file=state["spec"].file, profile=profile,
                                      timeout=timeout)
    return workers[name].run(check, gate_json=gate_json, **kw)


def _close_workers() -> None:
    for w in _STATE.pop("workers", {}).values():
        w.close()


def _on_sigterm(signum, frame):
    """SIGTERM (what CI sends) ends the run as SIGINT does: full reports, exit code 2. Once."""
    _STATE["sigterm"] = True
    if not _STATE.get("finishing"):
        _STATE["finishing"] = True
        raise KeyboardInterrupt


def install_sigterm() -> object | None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread; return the previous handler
    (None when nothing was installed: not the main thread, or someone else's handler)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is _on_sigterm:
        return None
    if previous not in (signal.SIG_DFL, None):
        return None
    signal.signal(signal.SIGTERM, _on_sigterm)
    return previous


def pytest_runtest_logreport(report):
    if _STATE.get("is_worker"):
        return
    for key, value in getattr(report, "user_properties", []):
        if key == "ce_result" and report.when == "call":
            _STATE.setdefault("results", []).append(json.loads(value))
            out = _STATE.get("out")
            if out is not None:
                from .results import append_partial
                append_partial(out, json.loads(value))
            _progress(json.loads(value))


def _progress(d):
    marks = {"passed": "[green]PASS", "failed": "[red]FAIL", "known": "[yellow]KNOWN", "variant": "[cyan]VARIANT",
             "not_supported": "[dim]N/S", "error": "[magenta]ERROR", "skipped": "[dim]SKIP", "fixed": "[blue]FIXED",
             "permissive": "[yellow]PERMISSIVE", "flaky": "[red]FLAKY"}
    con = _STATE.get("console")
    if con is None:
        return
    import time

    from rich.markup import escape

    n = len(_STATE.get("results", []))
    total = _STATE.get("total") or "?"
    t0 = _STATE.setdefault("progress_t0", time.monotonic())
    eta = ""
    if isinstance(total, int) and n and n < total:
        left = (time.monotonic() - t0) / n * (total - n)  # the mean so far, for the items left
        eta = f", about {int(left) // 60}m{int(left) % 60:02d}s left"
    con.print(f"[{n}/{total}] {marks.get(d['status'], d['status'])}[/] {escape(d['adapter'])} {escape(d['check'])} "
              f"[dim]({d['examples']} examples, {d['duration_s']:.1f}s{eta})[/]"
              + (f"\n      {escape(d['message'][:300])}" if d["status"] in ("failed", "error", "flaky") else ""),
              highlight=False)


def pytest_collection_finish(session):
    items = [i for i in session.items if "ce_item" in getattr(i, "fixturenames", ())]
    if items:
        _start(session.config, len(items))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Under pytest-xdist the controlling process collects nothing: it starts here, when the
    first worker reports its collection."""
    n = sum("test_conformance[" in i for i in ids)
    if n and "out" not in _STATE:
        _start(node.config, n)


def _start(config, total: int) -> None:
    """Per-process start of a run: where results go; on the controlling process also the
    partial file's header, the SIGTERM handler and the progress console."""
    worker = hasattr(config, "workerinput")
    _STATE["total"] = total
    _STATE["progress_t0"] = __import__("time").monotonic()
    _STATE["is_worker"] = worker
    # absolute: an adapter run in-process (--ce-no-isolation) may change the current folder
    _STATE["out"] = Path(os.path.abspath(config.getoption("--ce-out")))
    _STATE["started"] = __import__("conformance.results", fromlist=["now"]).now()
    _STATE["finishing"] = False
    if worker:
        return
    partial = _STATE["out"] / "results.partial.jsonl"
    if partial.exists():
        partial.unlink()
    from .results import write_partial_header
    write_partial_header(_STATE["out"], _partial_header(config, _session_setup(config)))
    _STATE["sigterm_previous"] = install_sigterm()
    if os.environ.get("CE_CONFORMANCE_PROGRESS", "1") != "0":
        from rich.console import Console
        _STATE["console"] = Console(stderr=True, highlight=False)


def _partial_header(config, state) -> dict:
    """What ``ce-conformance report results.partial.jsonl`` needs to rebuild a full report
    after the run was killed: the spec, the run's options and how to rebuild each adapter."""
    import sys

    from .results import now, spec_info

    adapters = state["adapters"]
    return {
        "spec": spec_info(state["spec"]),
        "run": {"profile": config.getoption("--ce-profile"), "seed": config.getoption("--ce-seed"),
                "derandomize": config.getoption("--ce-derandomize"), "strict": config.getoption("--ce-strict"),
                "shard": config.getoption("--ce-shard"),
                "command": " ".join(state.get("argv") or sys.argv), "started": state.get("started") or now(),
                "known_files": list(config.getoption("--ce-known")),
                "adapters": [{"name": n, "framework": getattr(a, "framework", "?"), "device": getattr(a, "device", "?")}
                             for n, a in adapters.items()]},
        "adapter_sources": {n: getattr(a, "config_file", None) or getattr(a, "source", None) or n
                            for n, a in adapters.items()},
    }


def pytest_sessionfinish(session, exitstatus):
    _close_workers()
    if hasattr(session.config, "workerinput") or "out" not in _STATE:
        return
    _STATE["finishing"] = True  # a SIGTERM from now on must not cut the reports short
    from .session import finish_run
    try:
        finish_run(session.config, _STATE, interrupted=exitstatus == pytest.ExitCode.INTERRUPTED
                   or bool(_STATE.get("sigterm")))
    finally:
        previous = _STATE.pop("sigterm_previous", None)
        if previous is not None:
            import signal
            signal.signal(signal.SIGTERM, previous)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if "summary_lines" in _STATE:
        for line in _STATE["summary_lines"]:
            terminalreporter.write_line(line)

