"""Real LLM cross-entropy kernels gated through ``form:`` configs (examples/liger_llm.yaml,
examples/hf_causal_lm.yaml, examples/cce_linear.yaml, examples/torchtune_chunked.yaml,
examples/flash_attn_ce.yaml, examples/unsloth_ce.yaml) on a few checks each; docs/findings.md has the full runs.

Each test skips, saying why, when its library is missing. Liger runs under Triton's CPU
interpreter (TRITON_INTERPRET=1, set here for the worker processes) when there is no GPU.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conformance.adapters import resolve  # noqa: E402
from conformance.adapters.llm import LlmTorchAdapter  # noqa: E402
from conformance.runner import cli  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _need(module: str, why: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {why}")


LINEAR_SPEC = Path(__file__).resolve().parent.parent / "specs" / "linear_cross_entropy.yaml"


def gate(tmp_path, config: str, *checks: str, profile: str = "quick", spec: Path | None = None):
    args = ["run", "--adapter", str(EXAMPLES / config), "--profile", profile, "--ci", "--no-report",
            "--out", str(tmp_path / "out")] + (["--spec", str(spec)] if spec else [])
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
def _liger_interpret(monkeypatch):
    import torch
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


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


# --------------------------------------------------------------------------- cut-cross-entropy
def test_cce_linear_form():
    """cut-cross-entropy 25.1.1: hidden and classifier, no bias; softcap and shift are its only
    extensions (no z-loss, logit scale or lse output), and no weight or label smoothing."""
    _need("cut_cross_entropy", "pip install --no-deps cut-cross-entropy (the cce extra)")
    _need("triton", "cut_cross_entropy imports triton at import (pip install --no-deps triton)")
    a = resolve(str(EXAMPLES / "cce_linear.yaml"))
    assert isinstance(a, LlmTorchAdapter) and a.form.args == ("hidden", "classifier", "target")
    assert a.capabilities.extensions == {"softcap", "shift"}
    assert "linear" in a.capabilities.features and "linear_bias" not in a.capabilities.features
    assert not {"weight", "label_smoothing"} & a.capabilities.features


def test_cce_accepts_a_nonpositive_softcap(tmp_path):
    """docs/findings.md C3: softcap=0 is accepted (each logit becomes 0 * tanh(+-inf) = 0, or NaN
    where it is 0; the spec says reject)."""
    _need("cut_cross_entropy", "pip install --no-deps cut-cross-entropy (the cce extra)")
    _need("triton", "cut_cross_entropy imports triton at import (pip install --no-deps triton)")
    code, res = gate(tmp_path, "cce_linear.yaml", "error.softcap_nonpositive", "error.hidden_size_mismatch",
                     spec=LINEAR_SPEC)
    assert res["error.hidden_size_mismatch"]["status"] == "passed"
    r = res["error.softcap_nonpositive"]
    assert r["status"] == "failed" and code == 1
    assert "accepted invalid input (softcap=0.0)" in r["failure"]["message"]


# --------------------------------------------------------------------------- torchtune
def test_torchtune_chunked_output_loss(tmp_path):
    """torchtune 0.6.1's CEWithChunkedOutputLoss behind its chunked output projection: the mean
    over non-ignored tokens agrees with the spec, and an all-ignored batch is NaN as the spec's
    mean says; but labels longer than the hidden states are accepted (findings TT2: zip() drops
    the extra label chunks and the sum is divided by every label's count)."""
    _need("torchtune", "pip install --no-deps torchtune (the torchtune extra)")
    a = resolve(str(EXAMPLES / "torchtune_chunked.yaml"))
    assert isinstance(a, LlmTorchAdapter) and a.capabilities.extensions == frozenset()
    assert {"reduction_mean"} == {f for f in a.capabilities.features if f.startswith("reduction_")}
    code, res = gate(tmp_path, "torchtune_chunked.yaml", "forward.index", "special.all_ignored",
                     "error.batch_size_mismatch", spec=LINEAR_SPEC)
    assert res["forward.index"]["status"] == "passed", res["forward.index"].get("message")
    assert res["special.all_ignored"]["status"] == "passed"
    r = res["error.batch_size_mismatch"]
    assert r["status"] == "failed" and code == 1
    assert "accepted invalid input (target batch 2 for input batch 1)" in r["failure"]["message"]


# --------------------------------------------------------------------------- flash-attn
def test_flash_attn_triton_cross_entropy(tmp_path, monkeypatch):
    """flash-attn's Triton cross entropy file, loaded alone (examples/flash_attn_adapter.py;
    flash-attn itself cannot be installed without nvcc): its z-loss adds nothing at ignored rows."""
    _need("triton", "flash-attn's cross entropy is a Triton kernel (pip install --no-deps triton)")
    import sys
    sys.path.insert(0, str(EXAMPLES))
    try:
        import flash_attn_adapter  # noqa: F401  (loads the file at import: ImportError when absent)
    except ImportError as exc:
        pytest.skip(f"flash-attn's cross_entropy.py cannot be loaded: {exc}")
    finally:
        sys.path.remove(str(EXAMPLES))
    _liger_interpret(monkeypatch)
    a = resolve(str(EXAMPLES / "flash_attn_ce.yaml"))
    assert a.capabilities.extensions == {"logit_scale", "z_loss", "return_z_loss"}
    code, res = gate(tmp_path, "flash_attn_ce.yaml", "special.z_loss_all_ignored")
    assert res["special.z_loss_all_ignored"]["status"] == "passed", res["special.z_loss_all_ignored"].get("message")
    assert code == 0


# --------------------------------------------------------------------------- unsloth
def _unsloth(monkeypatch):
    """The loaded adapter module, or a skip saying why (examples/unsloth_adapter.py; unsloth
    itself needs a GPU to import). TRITON_INTERPRET is set first: the shims depend on it."""
    _need("triton", "unsloth's cross entropy is a Triton kernel (pip install --no-deps triton)")
    _liger_interpret(monkeypatch)
    import sys
    sys.path.insert(0, str(EXAMPLES))
    try:
        sys.modules.pop("unsloth_adapter", None)
        import unsloth_adapter
    except ImportError as exc:
        pytest.skip(f"unsloth's cross_entropy_loss.py cannot be loaded: {exc}")
    finally:
        sys.path.remove(str(EXAMPLES))
    return unsloth_adapter


def test_unsloth_fast_cross_entropy_loss(tmp_path, monkeypatch):
    """unsloth's fast_cross_entropy_loss, loaded alone: -100 positions are left out of the mean
    (an all-ignored batch is the declared all_ignored_mean_zero variant), and a softcap of 0,
    its "off" value, is accepted where the spec says cap <= 0 MUST be rejected (findings U5)."""
    _unsloth(monkeypatch)
    a = resolve(str(EXAMPLES / "unsloth_ce.yaml"))
    assert isinstance(a, LlmTorchAdapter) and a.form.layout == "sequence"
    assert a.capabilities.extensions == {"softcap", "logit_scale", "normalizer"} and a.capabilities.ranks == {3}
    code, res = gate(tmp_path, "unsloth_ce.yaml", "special.all_ignored", "error.softcap_nonpositive")
    r = res["special.all_ignored"]
    assert r["status"] == "variant" and r["variants"] == ["all_ignored_mean_zero"], r.get("message")
    r = res["error.softcap_nonpositive"]
    assert r["status"] == "failed" and code == 1
    assert "accepted invalid input (softcap=0.0)" in r["failure"]["message"]


def test_unsloth_reads_past_the_row_for_an_out_of_range_label(monkeypatch):
    """Findings U3: no bounds check on the label, so label == V loads the next row's first logit."""
    import math

    import torch
    u = _unsloth(monkeypatch)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]], device=dev)
    loss = u.fast_cross_entropy_loss(x, torch.tensor([[2, -100]], device=dev))
    assert loss.item() == pytest.approx(math.log1p(math.exp(math.log(2) - 5)), rel=1e-6)
