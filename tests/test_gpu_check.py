"""scripts/gpu-check runs end to end on the CPU (--device cpu), so its logic is tested here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CE_CONFORMANCE_PROGRESS="0")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), str(tmp_path), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # torch's float16 overflow is a known entry
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    adapters = {r["adapter"] for r in doc["results"]}
    assert adapters == {"torch-cpu", "jax-cpu"}
    llm = json.loads((tmp_path / "llm_case.json").read_text())
    assert [r["dtype"] for r in llm] == ["bfloat16", "float32"] and all(r["ok"] for r in llm)
    assert "llm case bfloat16" in proc.stdout
