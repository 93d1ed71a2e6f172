"""Reproduction scripts for the LLM call forms: a failure found with the spec's extensions
(softcap, z-loss, ...) or on the linear form (hidden x classifier) is reproduced with those
options and inputs, not as a plain cross-entropy call on the logits.

Each test gates a planted bug through an adapter config (tests/planted_llm.py,
tests/planted_linear.py), asks the CLI for the reproduction, runs the script in a child
process and checks its exit code (1: still reproduces) and what it prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conformance.runner import cli  # noqa: E402

TESTS = Path(__file__).parent
ROOT = TESTS.parent
OPTIONS = ("weight", "ignore_index", "reduction", "label_smoothing", "logit_scale", "softcap", "z_loss",
           "return_z_loss", "return_lse", "normalizer", "shift")


def _config(tmp_path: Path, name: str, target: str, args: str, max_classes: int) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    opts = ", ".join(f"{o}: null" for o in OPTIONS)
    cfg.write_text(f"name: {name}\nimport: {target}\nmax_classes: {max_classes}\n"
                   f"form:\n  args: {args}\n  layout: flat\n  options: {{{opts}}}\n"
                   f"  returns: {{loss: 0, z_loss: 1, lse: 2}}\n")
    return cfg


def _gate_and_reproduce(tmp_path, capsys, monkeypatch, cfg: Path, check: str,
                        *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    monkeypatch.setenv("CE_CONFORMANCE_PROGRESS", "0")
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "out"
    code = cli.main(["run", "--adapter", str(cfg), "--check", check, "--profile", "quick", "--seed", "1", "--ci",
                     "--no-report", "--no-isolation", "--out", str(out), *extra])
    doc = json.loads((out / "results.json").read_text())
    result = next(r for r in doc["results"] if r["check"] == check)
    assert code == 1 and result["status"] == "failed", result["message"]
    capsys.readouterr()
    assert cli.main(["repro", result["id"], "--results", str(out / "results.json")]) == 0
    script = Path(capsys.readouterr().out.strip())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    return result, proc


def test_an_extension_failure_is_reproduced_with_its_extension(tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path, "softcap-x-tanh", "planted_llm:softcap_x_tanh", "[logits, target]", 64)
    result, proc = _gate_and_reproduce(tmp_path, capsys, monkeypatch, cfg, "extension.softcap")
    cap = result["failure"]["counterexample"]["extensions"]["softcap"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"'softcap': {float(cap)!r}" in proc.stdout
    assert "FAIL: " in proc.stdout and "expected (exact):" in proc.stdout


def test_a_linear_form_failure_is_reproduced_from_hidden_and_classifier(tmp_path, capsys, monkeypatch):
    """The reproduction rebuilds hidden, classifier and bias; pointed at the correct kernel, the
    same inputs pass and the script exits 0."""
    cfg = _config(tmp_path, "bias-grad-missing", "planted_linear:bias_grad_missing",
                  "[hidden, classifier, target, bias]", 64)
    spec = str(ROOT / "specs" / "linear_cross_entropy.yaml")
    result, proc = _gate_and_reproduce(tmp_path, capsys, monkeypatch, cfg, "gradient.index", "--spec", spec)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "linear: hidden (" in proc.stdout and "bias yes" in proc.stdout
    assert "FAIL: paths.index.gradients.bias" in proc.stdout
    side = json.loads(Path(proc.args[1]).with_suffix(".json").read_text())
    assert side["options"]["gradient"] is True and side["spec"] == spec
    cfg.write_text(cfg.read_text().replace("planted_linear:bias_grad_missing", "planted_linear:reference"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    again = subprocess.run([sys.executable, proc.args[1]], capture_output=True, text=True, env=env, timeout=300,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "within tolerance" in again.stdout
