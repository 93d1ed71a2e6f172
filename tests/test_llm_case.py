"""The chunked device oracle of conformance/llm_case.py restates the spec's index-path
formulas for speed; here it must agree with the spec oracle on small inputs, on the CPU."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conformance import llm_case  # noqa: E402
from conformance.case import Case  # noqa: E402
from conformance.oracle import Oracle  # noqa: E402
from conformance.spec import load_default  # noqa: E402


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_oracle_agrees_with_the_spec_oracle(dtype):
    r = llm_case.run(dtype=dtype, rows=96, classes=300, device="cpu", chunk=32, seed=3)
    assert r.ok, r.message
    # rebuild the same inputs and evaluate the spec
    g = torch.Generator(device="cpu").manual_seed(3)
    x = (torch.randn(96, 300, generator=g, dtype=torch.float32) * 2).to(getattr(torch, dtype))
    t = torch.randint(0, 300, (96,), generator=g)
    t[torch.rand(96, generator=g) < 0.1] = -100
    xn = x.float().numpy().astype(np.float64)
    ev = Oracle(load_default()).evaluate(Case(x=xn, target=t.numpy(), reduction="mean"))
    assert abs(r.exact - float(ev.value)) <= 1e-13 * abs(float(ev.value))


def test_a_wrong_implementation_fails_the_llm_case():
    def drifting(x, t):
        return torch.nn.functional.cross_entropy(x, t) * 1.01

    r = llm_case.run(drifting, dtype="float32", rows=64, classes=500, device="cpu", chunk=16)
    assert not r.ok and "loss" in r.message
