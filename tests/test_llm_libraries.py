"""Real LLM cross-entropy kernels gated through ``form:`` configs (examples/liger_llm.yaml,
examples/hf_causal_lm.yaml) on a few checks each; docs/findings.md has the full runs.

Each test skips, saying why, when its library is missing. Liger runs under Triton's CPU
interpreter (TRITON_INTERPRET=1, set here for the worker processes) when there is no GPU.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conformance.runner import cli  # noqa: E402
from conformance.adapters import resolve  # noqa: E402
from conformance.adapters.llm import LlmTorchAdapter  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _need(module: str, why: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {why}")


def gate(tmp_path, config: str, *checks: str, profile: str = "quick"):
    args = ["run", "--adapter", str(EXAMPLES / config), "--profile", profile, "--ci", "--no-report",
            "--out", str(tmp_path / "out")]
    for c in checks:
        args += ["--check", c]
    code = cli.main(args)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    return code, {r["check"]: r for r in doc["results"]}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CE_CONFORMANCE_PROGRESS", "0")


# --------------------------------------------------------------------------- transformers
def test_hf_causal_lm_form_and_extensions(tmp_path):
    """ForCausalLMLoss's shift and sum / num_items_in_batch agree with the spec in float32."""
    _need("transformers", "pip install --no-deps transformers (the hf extra)")
    a = resolve(str(EXAMPLES / "hf_causal_lm.yaml"))
    assert isinstance(a, LlmTorchAdapter) and a.form.layout == "sequence"
    assert a.capabilities.extensions == {"shift", "normalizer"} and a.capabilities.ranks == {3}
    code, res = gate(tmp_path, "hf_causal_lm.yaml", "extension.shift", "extension.normalizer", profile="default")
    assert {c: r["status"] for c, r in res.items()} == {"extension.shift": "passed",
                                                        "extension.normalizer": "passed"}
    assert code == 0


def test_hf_causal_lm_accepts_mismatched_label_shapes(tmp_path):
    """docs/findings.md H2: labels are flattened with view(-1), so a (0, 2) target for (0, 1, 1)
    logits is accepted (torch raises on the size mismatch)."""
    _need("transformers", "pip install --no-deps transformers (the hf extra)")
    code, res = gate(tmp_path, "hf_causal_lm.yaml", "error.spatial_size_mismatch")
    r = res["error.spatial_size_mismatch"]
    assert r["status"] == "failed" and code == 1
    assert "accepted invalid input" in r["failure"]["message"]


# --------------------------------------------------------------------------- Liger-Kernel
def _liger(monkeypatch):
    _need("liger_kernel", "pip install --no-deps liger-kernel triton (the liger extra)")
    _need("triton", "Liger-Kernel's kernels are Triton kernels (pip install --no-deps triton)")
    import torch
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_liger_llm_form(monkeypatch):
    _liger(monkeypatch)
    a = resolve(str(EXAMPLES / "liger_llm.yaml"))
    assert isinstance(a, LlmTorchAdapter)
    assert a.form.options["z_loss"] == "lse_square_scale" and a.form.returns == {"loss": 0, "z_loss": 1}
    assert a.capabilities.extensions == {"softcap", "z_loss", "return_z_loss"}


def test_liger_llm_z_loss_of_an_all_ignored_batch(tmp_path, monkeypatch):
    """lse_square_scale adds nothing for ignored positions (sum 0; the mean is the declared
    all_ignored_mean_zero variant)."""
    _liger(monkeypatch)
    code, res = gate(tmp_path, "liger_llm.yaml", "special.z_loss_all_ignored")
    assert res["special.z_loss_all_ignored"]["status"] == "passed", res["special.z_loss_all_ignored"].get("message")
    assert code == 0
