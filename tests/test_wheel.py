"""A plain install works: build the wheel, install it WITHOUT extras into a fresh virtual
environment, and run a quick gate from another folder. The main job of a plain install
must not need an extra (no matplotlib: the report says how to get its plots)."""
from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sh(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_installs_without_extras_and_runs_a_quick_gate(tmp_path):
    wheels = tmp_path / "wheels"
    built = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                 str(ROOT)], cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("ce_conformance-*.whl"))
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    inst = _sh([str(py), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)
    if inst.returncode != 0 and ("No matching distribution" in inst.stderr or "connection" in inst.stderr.lower()):
        pytest.skip(f"the package index is not reachable: {inst.stderr.strip().splitlines()[-1]}")
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert _sh([str(py), "-c", "import matplotlib"], cwd=tmp_path).returncode != 0, "a plain install pulled matplotlib"
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = _sh([str(env / "bin" / "ce-conformance"), "run", "--adapter", "numpy", "--profile", "quick", "--seed", "1",
               "--out", "out"], cwd=work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    doc = json.loads((work / "out" / "results.json").read_text())
    assert doc["summary"]["failed"] == 0 and doc["summary"]["passed"] >= 30
    html = (work / "out" / "index.html").read_text()
    assert "matplotlib is not installed" in html and "numpy" in html
