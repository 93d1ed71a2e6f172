"""The spec's LLM extensions (logit_scale, softcap, z_loss, return_lse, normalizer, shift):
the oracle against values by hand, mpmath at 50 digits and torch float64 autograd of the
reference composition; planted kernels (tests/planted_llm.py) caught or never flagged; and
plain F.cross_entropy adapters untouched (no extension ever drawn for them)."""
import math

import numpy as np
import pytest

from conformance.case import Case, shift_labels
from conformance.oracle import Oracle
from conformance.spec import load_default

SPEC = load_default()
ORACLE = Oracle(SPEC)


def _case(x, t, **kw):
    return Case(x=np.asarray(x, dtype=np.float64), target=np.asarray(t, dtype=np.int64), **kw)


# --------------------------------------------------------------------------- by hand
def test_softcap_and_scale_by_hand():
    # logits (0, ln 3) scaled by 2 -> (0, 2 ln 3) = (0, ln 9); target 0: loss = ln(1 + 9) = ln 10
    ev = ORACLE.evaluate(_case([[0.0, math.log(3.0)]], [0], reduction="sum", extensions={"logit_scale": 2.0}))
    assert float(ev.value) == pytest.approx(math.log(10.0), rel=1e-15)
    # softcap 1 on (0, atanh(0.5)): capped logits (0, 0.5); loss = log(1 + e^0.5)
    ev = ORACLE.evaluate(_case([[0.0, math.atanh(0.5)]], [0], reduction="sum", extensions={"softcap": 1.0}))
    assert float(ev.value) == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-15)
    # gradient w.r.t. the raw logit 1: (p1) * (1 - tanh^2) = sigmoid(0.5) * 0.75
    p1 = 1 / (1 + math.exp(-0.5))
    assert ev.gradients["input"][0, 1] == pytest.approx(p1 * 0.75, rel=1e-14)


def test_z_loss_lse_and_ignored_positions_by_hand():
    # two equal logits: lse = ln 2 + 0; z = 0.5: z-term = 0.5 ln^2 2; second position ignored
    ev = ORACLE.evaluate(_case([[0.0, 0.0], [5.0, 1.0]], [1, -100], reduction="none",
                               extensions={"z_loss": 0.5, "return_z_loss": True, "return_lse": True}))
    ln2 = math.log(2.0)
    assert ev.value.tolist() == pytest.approx([ln2 + 0.5 * ln2 ** 2, 0.0], rel=1e-15)
    assert ev.outputs["z_loss"][0].tolist() == pytest.approx([0.5 * ln2 ** 2, 0.0], rel=1e-15)
    lse2 = 5.0 + math.log1p(math.exp(-4.0))
    assert ev.outputs["lse"][0].tolist() == pytest.approx([ln2, lse2], rel=1e-15)
    # d/dx_c of z lse^2 = 2 z lse p_c; ignored row: 0
    assert ev.gradients["input"][0].tolist() == pytest.approx([0.5 + ln2 * 0.5, -0.5 + ln2 * 0.5], rel=1e-14)
    assert ev.gradients["input"][1].tolist() == [0.0, 0.0]


def test_normalizer_and_shift_by_hand():
    x = np.zeros((3, 4))
    # shift: labels (9 -> dropped), positions take t[1], t[2], last ignored -> 2 valid rows of ln 4
    ev = ORACLE.evaluate(_case(x, [0, 1, 2], reduction="sum", extensions={"shift": True, "normalizer": 8.0}))
    assert float(ev.value) == pytest.approx(2 * math.log(4.0) / 8.0, rel=1e-15)
    assert shift_labels(np.array([[5], [6], [7], [8]]), (2, 2), -100).ravel().tolist() == [6, -100, 8, -100]
    g = ev.gradients["input"]
    assert g[2].tolist() == [0.0] * 4 and g[0, 1] == pytest.approx((0.25 - 1) / 8.0, rel=1e-15)


def test_extension_identities_leave_cross_entropy_unchanged():
    rng = np.random.default_rng(0)
    c = _case(rng.normal(size=(5, 7)), rng.integers(0, 7, size=5), reduction="mean", label_smoothing=0.1)
    a = ORACLE.evaluate(c)
    b = ORACLE.evaluate(c.copy(extensions={"logit_scale": 1.0, "z_loss": 0.0}))
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(a.gradients["input"], b.gradients["input"])


# --------------------------------------------------------------------------- mpmath
def test_composition_against_mpmath_50_digits():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    rng = np.random.default_rng(3)
    x = rng.normal(0, 20, size=(4, 6))
    t = [1, -100, 5, 0]
    s, cap, z = 0.5, 5.0, 0.01
    ev = ORACLE.evaluate(_case(x, t, reduction="mean", extensions={"logit_scale": s, "softcap": cap, "z_loss": z}))
    total, n = mp.mpf(0), 0
    for row, ti in zip(x, t):
        if ti == -100:
            continue
        xs = [cap * mp.tanh(mp.mpf(float(v)) * s / cap) for v in row]
        lse = mp.log(sum(mp.exp(v) for v in xs))
        total += lse - xs[ti] + z * lse ** 2
        n += 1
    assert float(ev.value) == pytest.approx(float(total / n), rel=1e-14)


# --------------------------------------------------------------------------- torch float64 autograd
def test_composition_against_torch_float64_autograd():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.normal(0, 10, size=(6, 9))
    t = np.array([0, 3, -100, 8, 2, 2])
    w = rng.uniform(0.1, 2, size=9)
    up = rng.normal(size=6)
    s, cap, z = 2.0, 7.0, 0.1
    for red in ("none", "sum", "mean"):
        c = _case(x, t, weight=w, reduction=red, label_smoothing=0.2,
                  extensions={"logit_scale": s, "softcap": cap, "z_loss": z})
        c.upstream = up if red == "none" else np.float64(1.5)
        ev = ORACLE.evaluate(c)
        xt = torch.tensor(x, requires_grad=True)
        xc = cap * torch.tanh(xt * s / cap)
        tt = torch.tensor(t)
        valid = tt != -100
        ce = F.cross_entropy(xc, tt, weight=torch.tensor(w), reduction="none", label_smoothing=0.2)
        per = ce + torch.where(valid, z * torch.logsumexp(xc, 1) ** 2, 0.0)
        den = torch.tensor(w)[tt.clamp(min=0)][valid].sum()
        out = {"none": per, "sum": per.sum(), "mean": per.sum() / den}[red]
        (gx,) = torch.autograd.grad(out, xt, torch.tensor(c.upstream).reshape(out.shape))
        np.testing.assert_allclose(ev.value, out.detach().numpy(), rtol=1e-13)
        np.testing.assert_allclose(ev.gradients["input"], gx.numpy(), rtol=1e-11, atol=1e-15)


# --------------------------------------------------------------------------- spec errors
def test_extension_without_its_formula_is_a_spec_error():
    from conformance.spec import SpecError, loads

    text = open(SPEC.file).read().replace("    logits: x * logit_scale\n", "", 1)
    with pytest.raises(SpecError, match=r"cross_entropy.yaml:\d+.*'logits' extension needs a 'logits' formula"):
        loads(text, file="cross_entropy.yaml")
