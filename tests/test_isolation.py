"""Crash isolation: error checks of an adapter that ends its process on invalid input run in
a child process; the verdict is recorded and the parent run goes on."""
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conformance.adapters import resolve  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check as run_here  # noqa: E402
from conformance.runner.isolation import run_check  # noqa: E402
from conformance.spec import load_default  # noqa: E402

TESTS = str(Path(__file__).parent)


@pytest.fixture
def ctx(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    adapter = resolve("aborting:AbortingAdapter")
    adapter.source = "aborting:AbortingAdapter"
    spec = load_default()
    return Context(spec, adapter, profile="quick", extra_specs={op: load_default(op) for op in ("log_softmax", "nll_loss")})


def test_an_abort_on_invalid_input_is_isolated_and_recorded(ctx):
    checks = {c.id: c for c in catalogue(ctx.spec)}
    r = run_check(ctx, checks["error.target_out_of_range_high"], seed=0)
    assert r.status == "passed"
    assert "rejected by ending the process" in r.message and "-6" in r.message
    # the parent is alive and goes on: a forward check in this process still runs
    r2 = run_check(ctx, checks["forward.index"], seed=0)
    # ... and judges exactly as the same torch function without the abort does (valid inputs
    # never abort), example for example
    import torch.nn.functional as F

    from conformance.adapters.torch_adapter import TorchFunctionAdapter
    twin = Context(ctx.spec, TorchFunctionAdapter(F.cross_entropy, "aborting"), profile="quick",
                   extra_specs=ctx.extra_specs)
    r3 = run_check(twin, checks["forward.index"], seed=0)
    assert r2.examples > 0 and (r2.status, r2.examples, r2.message) == (r3.status, r3.examples, r3.message)


def test_a_child_that_reports_comes_back_with_its_verdict(ctx):
    checks = {c.id: c for c in catalogue(ctx.spec)}
    r = run_check(ctx, checks["error.label_smoothing_negative"], seed=0)
    # torch underneath accepts it (a SHOULD clause): the child reports that verdict, with the
    # counterexample and its inputs
    assert r.status == "permissive" and "isolated process" in r.message
    assert r.failure["counterexample"]["label_smoothing"] == -0.1
    assert r.failure_inputs


def test_derandomize_reaches_the_isolated_child(ctx):
    """--ci in an isolated child: the same examples as in-process, every time (the example
    database reaching a worker is tested in tests/faults/test_containment.py)."""
    from conformance.runner.isolation import run_isolated

    check = {c.id: c for c in catalogue(ctx.spec)}["error.label_smoothing_negative"]
    kw = dict(profile="quick", seed=None, spec_file=ctx.spec.file, name="aborting")
    a = run_isolated("aborting:AbortingAdapter", check, derandomize=True, **kw)
    b = run_isolated("aborting:AbortingAdapter", check, derandomize=True, **kw)
    here = run_here(ctx, check, derandomize=True)
    assert a.examples == b.examples == here.examples > 0
    assert a.coverage == b.coverage == here.coverage


def test_a_cuda_adapter_config_runs_its_error_checks_in_a_child_process(tmp_path):
    """As torch-cuda does: an out-of-range class index trips a device-side assert that poisons
    the CUDA context, so a config that puts an implementation on CUDA isolates its error checks;
    the same config on the CPU does not."""

    cuda = tmp_path / "cuda.yaml"
    cuda.write_text("import: torch.nn.functional:cross_entropy\ndevice: cuda\n")
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text("import: torch.nn.functional:cross_entropy\ndevice: cpu\n")
    assert resolve(str(cuda)).isolate_kinds == ("error",)
    assert resolve(str(cpu)).isolate_kinds == ()
