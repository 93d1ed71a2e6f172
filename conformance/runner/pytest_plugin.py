"""The pytest plugin: every adapter x check is one test item of ``conformance/suite.py``.

Registered through the ``pytest11`` entry point, it stays inert unless the suite module is
collected (``ce-conformance run`` does that, or ``pytest --pyargs conformance.suite``). It
adds the ``--ce-*`` options (conformance/runner/options.py, shared with the CLI), parametrises
the suite, runs each item through :func:`conformance.engine.run_check` in the adapter's worker
process (conformance/runner/worker.py: one per adapter and pytest process, so an adapter that
crashes, hangs or changes global state only costs its own checks; ``--ce-no-isolation`` runs
them here instead), and on the controlling process (xdist included) gathers the results into
``results.json``, failure inputs, repro scripts and a summary. SIGTERM ends the run as SIGINT
does: reports written.

State lives in ``config.stash``, as pytest's own junitxml plugin keeps it: a
:class:`~conformance.runner.session.RunSetup` per process (built on first use) and, on the
controlling process only, the :class:`~conformance.runner.session.RunSession` that records
the run (created in ``pytest_configure`` unless this is an xdist worker, dropped in
``pytest_unconfigure``; the CLI hands in its own through :class:`HandOff` to read it after).
"""
from __future__ import annotations

import json
import os
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .options import SHARED, add_to_pytest, plugin_dest
from .session import RunSession, RunSetup, build_setup

if TYPE_CHECKING:  # the engine is imported when an item runs: the plugin stays light until then
    from ..engine import CheckResult

SESSION_KEY = pytest.StashKey[RunSession]()
SETUP_KEY = pytest.StashKey[RunSetup]()


def pytest_addoption(parser):
    add_to_pytest(parser)


def options(config) -> types.SimpleNamespace:
    """The run's options (conformance/runner/options.py) by their plain names."""
    return types.SimpleNamespace(**{dest: config.getoption(plugin_dest(dest)) for dest in SHARED})


class HandOff:
    """A plugin object that puts an existing RunSession in the stash before this plugin's
    ``pytest_configure`` would create one: the CLI keeps a reference and reads the summary,
    the total and SIGTERM from it after ``pytest.main`` returns."""

    def __init__(self, session: RunSession):
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config):
        if not hasattr(config, "workerinput"):
            config.stash[SESSION_KEY] = self.session


class _Recorder:
    """Registered on the controlling process only: takes each item's result as its report
    arrives (from this process or, under xdist, from the workers)."""

    def __init__(self, config):
        self.config = config

    def pytest_runtest_logreport(self, report):
        run = _session(self.config)
        if run is None or report.when != "call":
            return
        from ..engine import CheckResult
        from .results import append_partial

        for key, value in getattr(report, "user_properties", []):
            if key == "ce_result":  # results.record() of the item's result (suite.py), maybe from a worker
                res = CheckResult.from_json(json.loads(value))
                run.results.append(res)
                append_partial(run.out, res)
                _progress(run, res)


_RECORDER = "ce-conformance-recorder"


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return
    if SESSION_KEY not in config.stash:
        config.stash[SESSION_KEY] = RunSession()
    config.pluginmanager.register(_Recorder(config), _RECORDER)


def pytest_unconfigure(config):
    setup = config.stash.get(SETUP_KEY, None)
    if setup is not None:
        setup.close()
        del config.stash[SETUP_KEY]
    if SESSION_KEY in config.stash:
        del config.stash[SESSION_KEY]
        recorder = config.pluginmanager.get_plugin(_RECORDER)
        if recorder is not None:
            config.pluginmanager.unregister(recorder, _RECORDER)


def _setup(config) -> RunSetup:
    """Spec, adapters and catalogue, built once per process."""
    setup = config.stash.get(SETUP_KEY, None)
    if setup is None:
        setup = config.stash[SETUP_KEY] = build_setup(options(config))
    return setup


def _session(config) -> RunSession | None:
    """The run's record: on the controlling process once the suite's items were collected."""
    run = config.stash.get(SESSION_KEY, None)
    return run if run is not None and run.out is not None else None


def pytest_generate_tests(metafunc):
    if "ce_item" not in metafunc.fixturenames:
        return
    setup = _setup(metafunc.config)
    from .shard import select

    opts = options(metafunc.config)
    params, ids = [], []
    for name, check in select(setup.adapters, setup.checks, opts.profile, opts.shard):
        params.append((name, check.id))
        ids.append(f"{name}::{check.id}")
    metafunc.parametrize("ce_item", params, ids=ids)


def run_item(config, adapter_name: str, check_id: str) -> CheckResult:
    """Run one item and return its result, the run's known divergences and baseline applied
    (used by suite.py)."""
    from ..checks import Context
    from ..engine import CheckResult
    from .isolation import run_check
    from .session import apply_baseline, apply_known

    setup, opts = _setup(config), options(config)
    adapter = setup.adapters[adapter_name]
    check = next(c for c in setup.checks if c.id == check_id)
    why = adapter.unavailable()
    if why:
        res = CheckResult(adapter_name, check_id, check.kind, check.clause, check.description, "skipped", message=why)
    else:
        kw = dict(seed=opts.seed, derandomize=opts.derandomize, database=setup.database)
        if opts.no_isolation or not adapter.source:
            if not adapter.source and not opts.no_isolation and adapter_name not in setup.warned:
                setup.warned.add(adapter_name)
                warnings.warn(f"ce-conformance: adapter {adapter_name} has no 'source' to rebuild it from in a "
                              "worker process: its checks run in-process, unisolated", UserWarning, stacklevel=1)
            ctx = setup.contexts.get(adapter_name)
            if ctx is None:
                ctx = setup.contexts[adapter_name] = Context(setup.spec, adapter, profile=opts.profile,
                                                             extra_specs=setup.extra_specs)
            res = run_check(ctx, check, gate=setup.gate, **kw)
        else:
            res = _run_in_worker(opts, setup, adapter_name, adapter.source, check, **kw)
    res = apply_known(res, setup.known, strict=opts.strict)
    return apply_baseline(res, setup.baseline)


def _run_in_worker(opts, setup: RunSetup, name: str, source: str, check, *, database, **kw):
    """The check in the adapter's worker process (conformance/runner/worker.py); kinds the adapter
    lists in ``isolate_kinds`` get a fresh process each (conformance/runner/isolation.py)."""
    from .isolation import run_isolated
    from .worker import AdapterWorker

    adapter = setup.adapters[name]
    gate_json = setup.gate.to_json() if setup.gate is not None else None
    if check.kind in adapter.isolate_kinds:
        return run_isolated(source, check, profile=opts.profile, spec_file=setup.spec.file, timeout=opts.timeout,
                            name=name, gate_json=gate_json, database=database, **kw)
    if name not in setup.workers:
        setup.workers[name] = AdapterWorker(source, name=name, spec_file=setup.spec.file, profile=opts.profile,
                                            timeout=opts.timeout)
    return setup.workers[name].run(check, gate_json=gate_json, database_dir=database, **kw)


_MARKS = {"passed": "[green]PASS", "failed": "[red]FAIL", "known": "[yellow]KNOWN", "variant": "[cyan]VARIANT",
          "not_supported": "[dim]N/S", "error": "[magenta]ERROR", "skipped": "[dim]SKIP", "fixed": "[blue]FIXED",
          "permissive": "[yellow]PERMISSIVE", "flaky": "[red]FLAKY"}


def _progress(run: RunSession, r: CheckResult) -> None:
    con = run.console
    if con is None:
        return
    import time

    from rich.markup import escape

    n = len(run.results)
    total = run.total or "?"
    eta = ""
    if isinstance(total, int) and n and n < total:
        left = (time.monotonic() - run.t0) / n * (total - n)  # the mean so far, for the items left
        eta = f", about {int(left) // 60}m{int(left) % 60:02d}s left"
    con.print(f"[{n}/{total}] {_MARKS.get(r.status, r.status)}[/] {escape(r.adapter)} "
              f"{escape(r.check)} [dim]({r.examples} examples, {r.duration_s:.1f}s{eta})[/]"
              + (f"\n      {escape(r.message[:300])}" if r.status in ("failed", "error", "flaky") else ""),
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
    if n and _session(node.config) is None:
        _start(node.config, n)


def _start(config, total: int) -> None:
    """The start of a run on the controlling process: where results go, the partial file's
    header, the SIGTERM handler and the progress console (nothing on an xdist worker)."""
    import time

    from .results import now, write_partial_header

    run = config.stash.get(SESSION_KEY, None)
    if run is None:  # an xdist worker: its results travel to the controlling process
        return
    run.total = total
    run.t0 = time.monotonic()
    # absolute: an adapter run in-process (--ce-no-isolation) may change the current folder
    run.out = Path(os.path.abspath(config.getoption(plugin_dest("out"))))
    run.started = now()
    run.finishing = False
    partial = run.out / "results.partial.jsonl"
    if partial.exists():
        partial.unlink()
    write_partial_header(run.out, _partial_header(config, _setup(config), run))
    run.sigterm_previous = run.install_sigterm()
    if os.environ.get("CE_CONFORMANCE_PROGRESS", "1") != "0":
        from rich.console import Console
        run.console = Console(stderr=True, highlight=False)


def _partial_header(config, setup: RunSetup, run: RunSession) -> dict:
    """What ``ce-conformance report results.partial.jsonl`` needs to rebuild a full report
    after the run was killed: the spec, the run's options and how to rebuild each adapter."""
    from .results import spec_info

    opts = options(config)
    return {
        "spec": spec_info(setup.spec),
        "run": {"profile": opts.profile, "seed": opts.seed, "derandomize": opts.derandomize, "strict": opts.strict,
                "shard": opts.shard, "command": " ".join(run.argv), "started": run.started,
                "known_files": list(opts.known or []),
                "adapters": [{"name": n, "framework": a.framework, "device": a.device}
                             for n, a in setup.adapters.items()]},
        "adapter_sources": {n: a.config_file or a.source or n for n, a in setup.adapters.items()},
    }


def pytest_sessionfinish(session, exitstatus):
    setup = session.config.stash.get(SETUP_KEY, None)
    if setup is not None:
        setup.close()
    run = _session(session.config)
    if run is None or setup is None:
        return
    run.finishing = True  # a SIGTERM from now on must not cut the reports short
    from .session import finish_run
    try:
        finish_run(options(session.config), setup, run,
                   interrupted=exitstatus == pytest.ExitCode.INTERRUPTED or run.sigterm)
    finally:
        previous, run.sigterm_previous = run.sigterm_previous, None
        if previous is not None:
            import signal
            signal.signal(signal.SIGTERM, previous)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    run = _session(config)
    for line in run.summary_lines if run is not None else ():
        terminalreporter.write_line(line)
