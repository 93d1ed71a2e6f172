"""Nothing lost when the run is stopped from outside: SIGTERM (what CI sends) writes the full
reports and exits 2, like SIGINT; after kill -9, ``ce-conformance report
results.partial.jsonl`` rebuilds results.json, junit.xml, index.html, the failing inputs and
the reproduction scripts. Each run: numpy, an adapter with a plain wrong answer (so there is
a failure to keep) and one that hangs, so the run is caught mid-way."""
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).parent
CLI = str(Path(sys.executable).with_name("ce-conformance"))
ARGS = ["run", "--adapter", "numpy", "--adapter", "misbehaving:AcceptsInvalid", "--adapter", "misbehaving:Sleeps",
        "--profile", "quick", "--check", "forward.index", "--check", "error.reduction_unknown", "--ci",
        "--out", "out"]


def _env():
    return dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                CE_CONFORMANCE_PROGRESS="0")


def _start_and_wait_for_the_hang(tmp: Path) -> subprocess.Popen:
    """Start the run; return once the four results before the hanging adapter are in the
    partial file (the hanging adapter's worker is then stuck in its first check)."""
    proc = subprocess.Popen([CLI, *ARGS], cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    partial = tmp / "out" / "results.partial.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if partial.exists():
            lines = [ln for ln in partial.read_text().splitlines() if '"status"' in ln]
            if len(lines) >= 4:
                time.sleep(1.0)  # the hanging adapter's worker starts and blocks
                return proc
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the run never reached the hanging adapter")


def _workers_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"conformance.runner.worker" in cmd:
            out.append(int(d.name))
    return out


def _gone(pids: list[int], within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                   for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_writes_full_reports_and_exits_2(tmp_path):
    proc = _start_and_wait_for_the_hang(tmp_path)
    workers = _workers_of(proc.pid)
    assert workers, "no adapter worker process found"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-3000:]
    assert "interrupted (SIGTERM)" in err
    out = tmp_path / "out"
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["interrupted"] is True
    got = {r["id"]: r["status"] for r in doc["results"]}
    assert got == {"numpy::forward.index": "passed", "numpy::error.reduction_unknown": "passed",
                   "accepts-invalid::forward.index": "passed", "accepts-invalid::error.reduction_unknown": "failed"}
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) >= 1
    assert (out / "index.html").exists()
    assert (out / "failures" / "accepts-invalid__error.reduction_unknown.npz").exists()
    assert _gone(workers), "an adapter worker outlived the run"


def test_kill_9_then_report_rebuilds_everything(tmp_path):
    proc = _start_and_wait_for_the_hang(tmp_path)
    workers = _workers_of(proc.pid)
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone(workers), "an adapter worker outlived the killed run"
    out = tmp_path / "out"
    assert not (out / "results.json").exists()
    partial = out / "results.partial.jsonl"
    # the kill may also cut the last line short: the reader drops it and says so
    with open(partial, "a") as f:
        f.write('{"id": "sleeps::forward.index", "adapter": "sle')
    rebuilt = tmp_path / "rebuilt"
    r = subprocess.run([CLI, "report", str(partial), "--out", str(rebuilt)], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "last line was cut short" in r.stderr
    doc = json.loads((rebuilt / "results.json").read_text())
    assert doc["run"]["interrupted"] is True and doc["run"]["profile"] == "quick"
    assert doc["spec"]["operation"] == "cross_entropy"
    got = {r["id"]: r["status"] for r in doc["results"]}
    assert got == {"numpy::forward.index": "passed", "numpy::error.reduction_unknown": "passed",
                   "accepts-invalid::forward.index": "passed", "accepts-invalid::error.reduction_unknown": "failed"}
    failed = next(r for r in doc["results"] if r["status"] == "failed")
    assert "failure_inputs_b64" not in failed
    npz = rebuilt / failed["failure"]["inputs"]
    repro = rebuilt / failed["failure"]["repro"]
    assert npz.stat().st_size > 0 and repro.stat().st_size > 0
    suite = ET.parse(rebuilt / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == 4 and int(suite.get("failures")) == 1
    assert (rebuilt / "index.html").stat().st_size > 0
    # the rebuilt repro script reproduces the failure (exit 1: still reproduces)
    rr = subprocess.run([sys.executable, str(repro)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                        timeout=120)
    assert rr.returncode == 1, (rr.stdout[-1000:], rr.stderr[-1000:])


def test_report_refuses_a_file_that_is_not_a_partial_file(tmp_path):
    bad = tmp_path / "results.partial.jsonl"
    bad.write_text('{"id": "a::b", "adapter": "a", "check": "b", "status": "passed"}\nnot json\n{"x": 1}\n')
    r = subprocess.run([CLI, "report", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert f"{bad}:2: not a line of a partial results file" in r.stderr
    assert "Traceback" not in r.stderr
