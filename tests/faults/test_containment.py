"""Containment: a misbehaving adapter, run beside ``--adapter numpy``, gets ``error`` verdicts
that say what it did, numpy's verdicts are the same as in a run without it, the reports are
written and consistent, and the run exits 1 (never 0). One adapter per fault, from
misbehaving.py; each run is two checks in the quick profile."""
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CLI = str(Path(sys.executable).with_name("ce-conformance"))
CHECKS = ["--profile", "quick", "--check", "forward.index", "--check", "error.reduction_unknown", "--ci"]

#: adapter -> (extra options, {check: what its error message must say})
FAULTS = {
    "misbehaving:Exit0": ([], {"forward.index": "exit code 0, without a result",
                               "error.reduction_unknown": "exit code 0, without a result"}),
    "misbehaving:Exit3": ([], {"forward.index": "exit code 3, without a result",
                               "error.reduction_unknown": "exit code 3, without a result"}),
    "misbehaving:Abort": ([], {c: "killed by signal SIGABRT (exit code -6), without a result; last stderr: "
                                  "Fatal Python error: Aborted" for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:Segfault": ([], {c: "killed by signal SIGSEGV (exit code -11), without a result; last stderr: "
                                     "Fatal Python error: Segmentation fault"
                                  for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:RaisesSystemExit": ([], {c: "the adapter raised SystemExit(0) (a BaseException"
                                          for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:RaisesKeyboardInterrupt": ([], {c: "the adapter raised KeyboardInterrupt (a BaseException"
                                                 for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:RaisesGeneratorExit": ([], {c: "the adapter raised GeneratorExit (a BaseException"
                                             for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:RaisesCustomBaseException": ([], {
        c: "the adapter raised AdapterMeltdown(core temperature exceeded) (a BaseException"
        for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:Sleeps": (["--timeout", "5"], {
        "forward.index": "the adapter ran past the 5 s timeout while running forward.index",
        "error.reduction_unknown": "not run: the adapter ran past the 5 s timeout while running forward.index"}),
    "misbehaving:LeavesThread": ([], {c: "non-daemon thread(s) running (lingering"
                                      for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:SetsNumpyRaise": ([], {c: "NumPy error state (np.seterr): {'divide': 'warn'"
                                        for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:DisablesGrad": ([], {c: "torch grad mode (torch.set_grad_enabled): True -> False"
                                      for c in ("forward.index", "error.reduction_unknown")}),
    "misbehaving:Chdir": ([], {c: "current folder (os.chdir): " for c in ("forward.index", "error.reduction_unknown")}),
}


def _run(tmp: Path, *args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CE_CONFORMANCE_PROGRESS="0")
    t0 = time.monotonic()
    proc = subprocess.run([CLI, "run", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def _numpy_verdicts(doc: dict) -> dict:
    return {r["check"]: (r["status"], r["examples"], r["message"], r["coverage"])
            for r in doc["results"] if r["adapter"] == "numpy"}


@pytest.fixture(scope="module")
def numpy_alone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alone")
    proc, _ = _run(tmp, "--adapter", "numpy", *CHECKS, "--out", "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp / "out" / "results.json").read_text())
    verdicts = _numpy_verdicts(doc)
    assert {v[0] for v in verdicts.values()} == {"passed"} and len(verdicts) == 2
    return verdicts


@pytest.mark.parametrize("adapter", list(FAULTS), ids=[a.split(":")[1] for a in FAULTS])
def test_a_misbehaving_adapter_is_contained(adapter, numpy_alone, tmp_path):
    extra, reasons = FAULTS[adapter]
    proc, wall = _run(tmp_path, "--adapter", "numpy", "--adapter", adapter, *CHECKS, *extra, "--out", "out")
    out = tmp_path / "out"
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["interrupted"] is False
    assert len(doc["results"]) == 4
    bad = {r["check"]: r for r in doc["results"] if r["adapter"] != "numpy"}
    assert set(bad) == set(reasons)
    for check, reason in reasons.items():
        assert bad[check]["status"] == "error", (check, bad[check]["status"], bad[check]["message"])
        assert reason in bad[check]["message"], (check, bad[check]["message"])
        if "Fatal Python error" in reason:  # where it crashed: the adapter's own frame
            assert 'misbehaving.py", line' in bad[check]["message"] and "in misbehave" in bad[check]["message"]
    # the other adapter's verdicts are exactly those of a run without the misbehaving one
    assert _numpy_verdicts(doc) == numpy_alone
    assert doc["summary"]["error"] == 2 and doc["summary"]["passed"] == 2
    # junit.xml and index.html are there and agree with results.json
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == 4
    assert int(suite.get("failures")) + int(suite.get("errors")) == 2
    failed = {tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None}
    assert failed == {f"test_conformance[{r['id']}]" for r in bad.values()}
    assert (out / "index.html").stat().st_size > 0
    assert not (out / ".junit.xml.tmp").exists()
    if adapter == "misbehaving:Sleeps":
        assert wall < 5 * 2 + 60, f"a hung adapter cost more than one timeout: {wall:.0f} s"
    if adapter == "misbehaving:Chdir":
        assert not Path("/out").exists() or not (Path("/out") / "results.partial.jsonl").exists()


def test_misbehaving_adapter_count():
    """The README's figure ("N misbehaving adapters contained") is this list's length."""
    assert len(FAULTS) == 13


# ---------------------------------------------------------------- the worker, directly
@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def _checks():
    from conformance.checks import catalogue
    from conformance.spec import load_default

    spec = load_default()
    return spec, {c.id: c for c in catalogue(spec)}


def test_a_worker_gets_the_same_examples_as_in_process(on_path):
    """Determinism across processes: with --ci, and with a seed, a check run in a worker
    process draws the same examples and finds the same counterexample as in-process."""
    from conformance.adapters import resolve
    from conformance.checks import Context
    from conformance.engine import run_check
    from conformance.spec import load_default
    from conformance.runner.worker import AdapterWorker

    spec, checks = _checks()
    extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
    for source, check_id, kw in (("misbehaving:Doubled", "forward.index", {"derandomize": True}),
                                 ("misbehaving:AcceptsInvalid", "error.reduction_unknown", {"seed": 5})):
        w = AdapterWorker(source, name=source, spec_file=spec.file, profile="quick", timeout=120)
        try:
            there = w.run(checks[check_id], **kw)
        finally:
            w.close()
        here = run_check(Context(spec, resolve(source), profile="quick", extra_specs=extra), checks[check_id], **kw)
        assert there.status == here.status == "failed", (source, there.status, there.message)
        assert there.failure["counterexample"] == here.failure["counterexample"]
        assert there.examples == here.examples and there.coverage == here.coverage
        assert there.failure_inputs and there.failure_inputs == here.failure_inputs


def test_a_crashing_worker_is_restarted_then_given_up(on_path):
    from conformance.runner.worker import AdapterWorker

    spec, checks = _checks()
    w = AdapterWorker("misbehaving:Exit3", name="exit3", spec_file=spec.file, profile="quick", max_crashes=2)
    try:
        first = w.run(checks["error.reduction_unknown"])
        second = w.run(checks["forward.index"])
        t0 = time.monotonic()
        third = w.run(checks["error.reduction_unknown"])
    finally:
        w.close()
    assert "exit code 3" in first.message and "exit code 3" in second.message
    assert third.status == "error" and third.message.startswith("not run: the adapter's worker process died 2 times")
    assert time.monotonic() - t0 < 1


def test_an_adapter_that_cannot_be_built_in_its_worker(on_path):
    from conformance.runner.worker import AdapterWorker

    spec, checks = _checks()
    w = AdapterWorker("misbehaving:NoSuchAdapter", name="nope", spec_file=spec.file, profile="quick")
    try:
        r = w.run(checks["forward.index"])
        r2 = w.run(checks["error.reduction_unknown"])
    finally:
        w.close()
    assert r.status == r2.status == "error"
    assert "could not be built in its worker process" in r.message and "NoSuchAdapter" in r.message
    assert r2.message.startswith("not run: the adapter could not be built")


def test_no_isolation_runs_in_process(tmp_path):
    """--no-isolation: the old in-process path (same verdicts for a well-behaved adapter)."""
    proc, _ = _run(tmp_path, "--adapter", "numpy", *CHECKS, "--no-isolation", "--out", "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["status"] for r in doc["results"]] == ["passed", "passed"]


def test_stale_reports_are_moved_aside_and_the_baseline_follows(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<html>stale</html>")
    (out / "failures").mkdir()
    (out / "failures" / "old.npz").write_bytes(b"x")
    proc, _ = _run(tmp_path, "--adapter", "numpy", *CHECKS, "--out", "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "previous-run" / "index.html").read_text() == "<html>stale</html>"
    assert not (out / "failures" / "old.npz").exists()
    assert "stale" not in (out / "index.html").read_text()
    # a second run with --baseline pointing at the first run's results.json (moved aside)
    proc, _ = _run(tmp_path, "--adapter", "numpy", *CHECKS, "--out", "out", "--baseline", "out/results.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "moved to" in proc.stderr and (out / "results.json").exists()


def test_an_adapter_without_source_runs_in_process_with_a_warning(monkeypatch):
    """An adapter object that cannot be rebuilt from a string in a worker (no ``source``)
    still runs: in-process, with one warning."""
    from conformance.adapters.numpy_ref import NumpyAdapter
    from conformance.runner import pytest_plugin
    from conformance.runner.session import RunSetup
    from conformance.spec import load_default

    spec, checks = _checks()
    adapter = NumpyAdapter()
    assert adapter.source is None
    options = {"seed": 1, "derandomize": True, "no_isolation": False, "profile": "quick", "strict": False,
               "timeout": 600.0}

    class Config:
        stash = pytest.Stash()

        def getoption(self, name):
            return options.get(name.removeprefix("ce_"))

    setup = RunSetup(spec=spec, extra_specs={op: load_default(op) for op in ("log_softmax", "nll_loss")},
                     adapters={"numpy": adapter}, checks=list(checks.values()), known=[], baseline={}, gate=None,
                     database=None)
    config = Config()
    config.stash[pytest_plugin.SETUP_KEY] = setup
    with pytest.warns(UserWarning, match="adapter numpy has no 'source'.*run in-process") as rec:
        r = pytest_plugin.run_item(config, "numpy", "error.reduction_unknown")
        pytest_plugin.run_item(config, "numpy", "error.reduction_unknown")
    assert len(rec) == 1
    assert r.status == "passed" and r.examples > 0
    assert not setup.workers and list(setup.contexts) == ["numpy"]


def test_the_exit_code_follows_results_json_not_pytest(tmp_path):
    """0 only when results.json exists, holds every check and says all passed."""
    from conformance.runner.cli import _run_exit_code
    from conformance.runner.results import write
    from conformance.runner.session import RunSession

    spec = {"operation": "cross_entropy", "version": "1", "sha256": "x", "file": "f"}
    ok = pytest.ExitCode.OK
    assert _run_exit_code(ok, tmp_path, RunSession(total=1)) == 2  # no results.json at all
    write(tmp_path, spec=spec, run={}, results=[{"id": "a::c", "adapter": "a", "check": "c", "status": "passed"}])
    assert _run_exit_code(ok, tmp_path, RunSession(total=1)) == 0
    assert _run_exit_code(ok, tmp_path, RunSession(total=2)) == 2  # a result went missing
    assert _run_exit_code(ok, tmp_path, RunSession(total=1, sigterm=True)) == 2
    write(tmp_path, spec=spec, run={}, results=[{"id": "a::c", "adapter": "a", "check": "c", "status": "error"}])
    assert _run_exit_code(ok, tmp_path, RunSession(total=1)) == 1  # pytest said OK, results.json says error
