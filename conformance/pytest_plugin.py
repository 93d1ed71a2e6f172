"""The pytest plugin: every adapter x check is one test item of ``conformance/suite.py``.

Registered through the ``pytest11`` entry point, it stays inert unless the suite module is
collected (``ce-conformance run`` does that, or ``pytest --pyargs conformance.suite``). It
adds the ``--ce-*`` options, parametrises the suite, runs each item through
:func:`conformance.engine.run_check`, and on the controlling process (xdist included)
gathers the results into ``results.json``, failure inputs, repro scripts and a summary.
"""
from __future__ import annotations

import base64
import json
import os
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
    return _STATE


def pytest_generate_tests(metafunc):
    if "ce_item" not in metafunc.fixturenames:
        return
    state = _session_setup(metafunc.config)
    params, ids = [], []
    for name, adapter in state["adapters"].items():
        for check in state["checks"]:
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
        ctx = state.setdefault("contexts", {}).get(adapter_name)
        if ctx is None:
            ctx = Context(state["spec"], adapter, profile=config.getoption("--ce-profile"),
                          extra_specs=state["extra_specs"])
            state["contexts"][adapter_name] = ctx
        seed = config.getoption("--ce-seed")
        db = None if config.getoption("--ce-derandomize") else str(Path(".hypothesis") / "ce-conformance")
        res = run_check(ctx, check, seed=seed, derandomize=config.getoption("--ce-derandomize"), database_dir=db)
    d = res.to_json()
    if res.failure_inputs:
        d["failure_inputs_b64"] = base64.b64encode(res.failure_inputs).decode()
    apply_known(d, state["known"], strict=config.getoption("--ce-strict"))
    apply_baseline(d, state["baseline"])
    return d


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
             "not_supported": "[dim]N/S", "error": "[magenta]ERROR", "skipped": "[dim]SKIP", "fixed": "[blue]FIXED"}
    con = _STATE.get("console")
    if con is None:
        return
    n = len(_STATE.get("results", []))
    total = _STATE.get("total") or "?"
    con.print(f"[{n}/{total}] {marks.get(d['status'], d['status'])}[/] {d['adapter']} {d['check']} "
              f"[dim]({d['examples']} examples, {d['duration_s']:.1f}s)[/]"
              + (f"\n      {d['message'][:300]}" if d["status"] in ("failed", "error") else ""),
              highlight=False)


def pytest_collection_finish(session):
    items = [i for i in session.items if "ce_item" in getattr(i, "fixturenames", ())]
    if not items:
        return
    _STATE["total"] = len(items)
    _STATE["is_worker"] = hasattr(session.config, "workerinput")
    _STATE["out"] = Path(session.config.getoption("--ce-out"))
    _STATE["started"] = __import__("conformance.results", fromlist=["now"]).now()
    partial = _STATE["out"] / "results.partial.jsonl"
    if partial.exists() and not hasattr(session.config, "workerinput"):
        partial.unlink()
    if os.environ.get("CE_CONFORMANCE_PROGRESS", "1") != "0" and not hasattr(session.config, "workerinput"):
        from rich.console import Console
        _STATE["console"] = Console(stderr=True, highlight=False)


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput") or "out" not in _STATE:
        return
    from .session import finish_run
    finish_run(session.config, _STATE, interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if "summary_lines" in _STATE:
        for line in _STATE["summary_lines"]:
            terminalreporter.write_line(line)

