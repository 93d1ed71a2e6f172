"""GPU adapters without a GPU: they import, skip with a reason, and the cross-device check's
logic runs on the CPU with a CPU adapter standing in for the device one."""
from pathlib import Path

import pytest

import conformance
from conformance.gate import FailureFilter
from conformance.runner.session import load_known

pytest.importorskip("torch")

from conformance.adapters import resolve  # noqa: E402
from conformance.adapters.torch_adapter import TorchFunctionAdapter  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.spec import load_default  # noqa: E402

SPEC = load_default()
CHECK = next(c for c in catalogue(SPEC) if c.id == "crossdevice.cpu_agreement")


def test_gpu_adapters_skip_with_a_reason_here():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: this test is for machines without one")
    assert "CUDA" in resolve("torch-cuda").unavailable()
    assert resolve("torch-cuda").isolate_kinds == ("error",)
    assert resolve("jax-gpu").unavailable()


def test_crossdevice_agreement_passes_for_a_correct_twin():
    a = resolve("torch-module-cpu")
    a.cpu_twin = "torch-cpu"
    # torch's known float16 overflow may show up: the shipped known file accepts it, nothing else
    gate = FailureFilter(known=load_known([str(Path(conformance.__file__).parent / "known" / "torch.yaml")]))
    r = run_check(Context(SPEC, a, profile="quick"), CHECK, seed=0, gate=gate)
    assert r.status != "failed", r.message
    assert all(f["accepted_by"] and f["accepted_by"]["file"].endswith("torch.yaml") for f in r.failures)


def test_crossdevice_agreement_fails_for_a_device_that_drifts():
    import planted

    a = TorchFunctionAdapter(planted.off_by_3e4, "drifting-device")
    a.cpu_twin = "torch-cpu"
    # 3e-4 relative is below half precision's resolution and inside a long float32 sum's
    # bound: the default profile's examples include enough small float32/float64 cases
    # pinned to float32: in half precision the planted code also drops NaN gradients, a
    # deviation of its own that the search would stop at first
    ctx = Context(SPEC, a, profile="default")
    ctx.pins = {"dtype": "float32"}
    r = run_check(ctx, CHECK, seed=0)
    assert r.status == "failed" and r.failure["signature"]["dtype"] == "float32", r.message
    assert r.failure["signature"]["deviation"] not in ("finite_for_nonfinite", "nonfinite_for_finite"), r.message


def test_crossdevice_is_not_supported_without_a_twin():
    r = run_check(Context(SPEC, resolve("numpy"), profile="quick"), CHECK, seed=0)
    assert r.status == "not_supported" and "cpu_twin" in r.message
