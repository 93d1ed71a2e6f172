"""Reproduction scripts carry their data as data: the script is one fixed text and the
failure's fields (adapter, check id, message, spec path) live in a JSON sidecar, so quotes,
backslashes, ``\\N``, ``$`` and newlines in any of them can neither inject code nor break the
script. A reproducing failure exits 1; a script that cannot check exits 2, never 1.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conformance.runner import cli, repro  # noqa: E402
from conformance.spec import default_spec_path  # noqa: E402

TESTS = Path(__file__).parents[1]
HOSTILE = 'q"""\'\'\'\\N{BOOM}\\x$1$ `$(id)`\n"""; import os; os._exit(0) #\\'


@pytest.fixture(scope="module")
def failure(tmp_path_factory):
    """A real failing result (planted:wrong_dtype on forward.probability) and its inputs."""
    tmp = tmp_path_factory.mktemp("run")
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    os.environ["CE_CONFORMANCE_PROGRESS"] = "0"
    code = cli.main(["run", "--profile", "quick", "--ci", "--no-report", "--out", str(tmp / "out"),
                     "--adapter", "planted:wrong_dtype", "--check", "forward.probability"])
    assert code == 1
    doc = json.loads((tmp / "out" / "results.json").read_text())
    result = doc["results"][0]
    npz = (tmp / "out" / result["failure"]["inputs"]).read_bytes()
    return result, npz


def _hostile_world(tmp_path: Path) -> tuple[str, str]:
    """An adapter config and a spec copy, both under a folder whose name is hostile."""
    folder = tmp_path / HOSTILE.replace("/", "_")
    folder.mkdir()
    cfg = folder / "adapter.yaml"
    cfg.write_text("name: hostile\nimport: planted:wrong_dtype\n")
    spec = folder / "spec.yaml"
    shutil.copy(default_spec_path(), spec)
    return str(cfg), str(spec)


def _run(script: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)


def test_hostile_text_in_every_field_still_reproduces(tmp_path, failure):
    result, npz = failure
    cfg, spec = _hostile_world(tmp_path)
    hostile = dict(result, id=f"planted:{HOSTILE}::forward.probability{HOSTILE}",
                   adapter=f"planted:{HOSTILE}", check=f"forward.probability{HOSTILE}", message=HOSTILE * 3)
    rel = repro.write_repro(tmp_path / "out", hostile, npz, spec_file=spec, adapter_spec=cfg)
    script = tmp_path / "out" / rel
    assert script.read_text() == repro.SCRIPT           # nothing of the failure is in the source
    compile(script.read_text(), str(script), "exec")
    data = json.loads(script.with_suffix(".json").read_text())
    assert (data["adapter"], data["spec"], data["check"]) == (cfg, spec, hostile["check"])
    assert data["message"] == hostile["message"]
    proc = _run(script, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "expected (exact):" in proc.stdout and "FAIL:" in proc.stdout
    assert HOSTILE in proc.stdout                        # the message is shown, as text


def test_an_injected_adapter_name_cannot_run_code(tmp_path, failure):
    """The adapter field itself hostile (nothing resolves it): the script cannot check, exit 2
    — the injected os._exit(0) never runs, and 2 is never read as "still reproduces"."""
    result, npz = failure
    hostile = dict(result, adapter=HOSTILE, id=f"{HOSTILE}::forward.probability")
    script = tmp_path / "out" / repro.write_repro(tmp_path / "out", hostile, npz, spec_file=str(default_spec_path()))
    proc = _run(script, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "could not be checked" in proc.stderr


@pytest.mark.parametrize("broken", ["json", "npz"])
def test_missing_data_exits_2_not_1(tmp_path, failure, broken):
    result, npz = failure
    script = tmp_path / "out" / repro.write_repro(tmp_path / "out", result, npz, spec_file=str(default_spec_path()),
                                                  adapter_spec="planted:wrong_dtype")
    script.with_suffix(f".{broken}").unlink()
    proc = _run(script, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot read the reproduction data" in proc.stderr


def test_repro_out_copies_script_and_data(tmp_path, failure, capsys):
    result, npz = failure
    out = tmp_path / "out"
    result = dict(result, failure=dict(result["failure"]))
    result["failure"]["repro"] = str(repro.write_repro(out, result, npz, spec_file=str(default_spec_path()),
                                                       adapter_spec="planted:wrong_dtype"))
    (out / "results.json").write_text(json.dumps({"schema": "ce-conformance/results/1", "results": [result]}))
    dest = tmp_path / "elsewhere" / "bug.py"
    assert cli.main(["repro", result["id"], "--results", str(out / "results.json"), "--out", str(dest)]) == 0
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bug.json", "bug.npz", "bug.py"]
    assert _run(dest, tmp_path).returncode == 1
