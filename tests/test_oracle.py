"""Specific values of the exact oracle (conformance/oracle.py) for the three specs.

Ground truth is the semantics page of the project (the worked float64 table, the golden
float32 values, the special outcomes), torch float64 autograd, and an independent mpmath
implementation of the formulas at 50 digits. The spec and torch agree on every value here;
where torch diverges from the spec the divergence is a known entry (conformance/known/), not
a test of the oracle.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import conformance.spec as spec_mod
from conformance.case import Case
from conformance.oracle import Oracle

torch = pytest.importorskip("torch")
F = torch.nn.functional
mpmath = pytest.importorskip("mpmath")

INF = np.inf


# --------------------------------------------------------------------------- fixtures
def _load(operation: str):
    return spec_mod.load_default(operation)


@pytest.fixture(scope="module")
def ce() -> Oracle:
    return Oracle(_load("cross_entropy"))


@pytest.fixture(scope="module")
def nll() -> Oracle:
    return Oracle(_load("nll_loss"))


@pytest.fixture(scope="module")
def lsm() -> Oracle:
    return Oracle(_load("log_softmax"))


def case(x, target, weight=None, reduction="mean", ignore_index=-100, label_smoothing=0.0, upstream=None, **kw):
    return Case(x=np.asarray(x), target=np.asarray(target), weight=None if weight is None else np.asarray(weight),
                reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                upstream=None if upstream is None else np.asarray(upstream), **kw)


def torch_ce(c: Case, reduction: str | None = None):
    """torch float64 forward and gradients (input, and target on the probability path)."""
    red = reduction or c.reduction
    xt = torch.tensor(np.asarray(c.x, dtype=np.float64), requires_grad=True)
    prob = c.target_kind == "probability"
    tt = torch.tensor(np.asarray(c.target, dtype=np.float64 if prob else np.int64), requires_grad=prob)
    wt = None if c.weight is None else torch.tensor(np.asarray(c.weight, dtype=np.float64))
    out = F.cross_entropy(xt, tt, weight=wt, ignore_index=c.ignore_index, reduction=red,
                          label_smoothing=c.label_smoothing)
    # Case.upstream has the output's shape: (none_shape) for 'none', a scalar for 'sum'/'mean'.
    g = torch.ones_like(out) if c.upstream is None else torch.tensor(np.asarray(c.upstream, dtype=np.float64)).reshape(out.shape)
    out.backward(g)
    return (out.detach().numpy(), xt.grad.numpy(), tt.grad.numpy() if prob else None)


def assert_grad_close(got, want, rtol=1e-12):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    if want.size == 0:
        return
    assert np.array_equal(np.isnan(got), np.isnan(want))
    fin = ~np.isnan(want)
    diff = np.max(np.abs(got[fin] - want[fin]), initial=0.0)
    scale = np.max(np.abs(want[fin]), initial=0.0)
    assert diff <= rtol * scale or diff == 0.0, (diff, scale)


# --------------------------------------------------------------------------- 1. worked table
X = [[1, 2, .5], [.1, -1, 3], [0, 0, 0]]
T = [1, 2, 0]
T_IGN = [1, -100, 0]
W = [.2, 1, 3]
Y = [[0, 1, 0], [.2, .3, .5], [1 / 3, 1 / 3, 1 / 3]]

# case: (target, weight, eps, none, sum, mean), copied from the semantics page (6 decimals)
TABLE = {
    "index": (T, None, 0.0, [.464369, .070774, 1.098612], 1.633755, .544585),
    "+w": (T, W, 0.0, [.464369, .212323, .219722], .896414, .213432),
    "+ignore": (T_IGN, None, 0.0, [.464369, 0, 1.098612], 1.562981, .781491),
    "+w+ignore": (T_IGN, W, 0.0, [.464369, 0, .219722], .684091, .570076),
    "+eps": (T, None, 0.1, [.547702, .300774, 1.098612], 1.947089, .649030),
    "+w+eps": (T, W, 0.1, [.639610, .353665, .351556], 1.344832, .320198),
    "+w+eps+ignore": (T_IGN, W, 0.1, [.639610, 0, .351556], .991166, .825972),
    "prob": (Y, None, 0.0, [.464369, 1.850774, 1.098612], 3.413755, 1.137918),
    "prob+w": (Y, W, 0.0, [.464369, 1.446225, 1.538057], 3.448651, 1.149550),
    "prob+w+eps": (Y, W, 0.1, [.639610, 1.464177, 1.538057], 3.641845, 1.213948),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_worked_float64_table(ce, name):
    target, weight, eps, none, total, mean = TABLE[name]
    for reduction, expected in (("none", none), ("sum", total), ("mean", mean)):
        ev = ce.evaluate(case(np.array(X, dtype=np.float64), np.array(target), weight, reduction,
                              label_smoothing=eps), gradients=False)
        assert ev.value.shape == ((3,) if reduction == "none" else ())
        np.testing.assert_allclose(np.round(ev.value, 6), expected, rtol=0, atol=5e-7, err_msg=f"{name} {reduction}")


# --------------------------------------------------------------------------- 2. golden float32
# (x, t, weight, eps, golden, ulps): the golden values are torch's float32 results, which are
# not always the correctly rounded float32 of the exact value: `ulps` is golden's distance, in
# float32 ulps, from the oracle's value rounded to float32 (which is the correctly rounded one).
GOLDEN = [
    ([[2.0, 0.5], [0.5, 2.0]], [0, 1], None, 0.0, 0.2014133334159851, 4),
    ([[1.5, 2.0, 0.5], [1.0, 0.5, 2.5]], [1, 2], None, 0.0, 0.45524317026138306, 0),
    ([[1.5, 2.0, 0.5], [1.0, 0.5, 2.5]], [1, 2], [0.7, 0.2, 0.1], 0.0, 0.5048722624778748, -1),
    ([[1.5, 2.0, 0.5], [1.0, 0.5, 2.5]], [1, 2], None, 0.1, 0.5469098091125488, 0),
]


def _golden_case(x, t, w, eps):
    return case(np.array(x, dtype=np.float32), np.array(t, dtype=np.int64),
                None if w is None else np.array(w, dtype=np.float32), "mean", label_smoothing=eps)


@pytest.mark.parametrize("x,t,w,eps,golden,ulps", GOLDEN)
def test_golden_float32(ce, x, t, w, eps, golden, ulps):
    c = _golden_case(x, t, w, eps)
    ev = ce.evaluate(c)
    assert ev.value.dtype == np.float64
    # the oracle's value is the exact value of the float32-quantised inputs
    x64 = np.asarray(c.x, dtype=np.float64)
    losses, _ = _mp_ce_rows(x64, c.target, None if c.weight is None else c.weight.astype(np.float64),
                            eps, False)
    with mpmath.workdps(50):
        wv = [1.0] * x64.shape[1] if c.weight is None else [float(v) for v in c.weight]
        exact = mpmath.fsum(losses) / mpmath.fsum(mpmath.mpf(wv[k]) for k in c.target)
    assert _rel(ev.value, exact) <= 1e-15
    assert np.float32(ev.value) == np.float32(float(exact))
    # and it agrees with the golden value: exactly where torch's float32 result is correctly rounded
    got, gold = np.float32(ev.value), np.float32(golden)
    assert int(gold.view(np.int32)) - int(got.view(np.int32)) == ulps
    if ulps == 0:
        assert got == gold
    assert abs(float(gold) - float(ev.value)) <= 8 * 2.0 ** -24 * abs(float(ev.value))


def test_golden_batch_duplication(ce):
    x, t, w, eps, golden, _ = GOLDEN[0]
    base = ce.evaluate(_golden_case(x, t, w, eps))
    for k in (2, 3, 7):
        ev = ce.evaluate(_golden_case(x * k, t * k, w, eps))
        assert abs(ev.value - base.value) <= 2.0 ** -52 * base.value
        assert np.float32(ev.value) == np.float32(base.value)
    assert abs(float(golden) - float(base.value)) <= 8 * 2.0 ** -24 * base.value


# --------------------------------------------------------------------------- 3. special outcomes
def test_all_ignored(ce):
    x = np.random.default_rng(0).normal(size=(3, 4))
    t = np.full(3, -100)
    for eps in (0.0, 0.2):
        for w in (None, np.array([1.0, 0.5, 2.0, 0.0])):
            ev = ce.evaluate(case(x, t, w, "mean", label_smoothing=eps), gradients=False)
            assert np.isnan(ev.value)
            ev = ce.evaluate(case(x, t, w, "sum", label_smoothing=eps))
            assert ev.value == 0.0 and np.all(ev.gradients["input"] == 0)
            ev = ce.evaluate(case(x, t, w, "none", label_smoothing=eps, upstream=np.ones(3)))
            assert ev.value.shape == (3,) and np.all(ev.value == 0) and np.all(ev.gradients["input"] == 0)
    # ignore_index inside [0, C) ignoring everything
    ev = ce.evaluate(case(x, np.full(3, 2), None, "sum", ignore_index=2))
    assert ev.value == 0.0 and np.all(ev.gradients["input"] == 0)


def test_all_ignored_mean_gradient_is_zero(ce):
    x = np.random.default_rng(0).normal(size=(3, 4))
    for eps in (0.0, 0.2):
        c = case(x, np.full(3, -100), None, "mean", label_smoothing=eps)
        ev = ce.evaluate(c)
        _, gx, _ = torch_ce(c)
        assert np.all(gx == 0)
        assert np.all(ev.gradients["input"] == 0)


def test_zero_total_weight_with_smoothing_matches_torch(ce):
    x = np.random.default_rng(1).normal(size=(3, 4))
    c = case(x, np.array([0, 0, -100]), np.array([0.0, 1, 2, 3]), "mean", label_smoothing=0.2)
    ev = ce.evaluate(c)
    val, gx, _ = torch_ce(c)
    assert np.isnan(ev.value) and np.isnan(val)
    assert np.array_equal(np.isnan(ev.gradients["input"]), np.isnan(gx))


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_empty_batch(ce, prob, eps):
    x = np.zeros((0, 5))
    t = np.zeros((0, 5)) if prob else np.zeros((0,), dtype=np.int64)
    ev = ce.evaluate(case(x, t, None, "none", label_smoothing=eps, upstream=np.zeros(0)))
    assert ev.value.shape == (0,) and ev.gradients["input"].shape == (0, 5)
    ev = ce.evaluate(case(x, t, None, "sum", label_smoothing=eps))
    assert ev.value == 0.0 and ev.gradients["input"].shape == (0, 5)
    ev = ce.evaluate(case(x, t, None, "mean", label_smoothing=eps))
    assert np.isnan(ev.value) and ev.gradients["input"].shape == (0, 5)
    # a zero spatial size behaves the same
    xs = np.zeros((2, 5, 0))
    ts = np.zeros((2, 5, 0)) if prob else np.zeros((2, 0), dtype=np.int64)
    assert ce.evaluate(case(xs, ts, None, "none", label_smoothing=eps)).value.shape == (2, 0)
    assert ce.evaluate(case(xs, ts, None, "sum", label_smoothing=eps)).value == 0.0
    assert np.isnan(ce.evaluate(case(xs, ts, None, "mean", label_smoothing=eps)).value)


@pytest.mark.parametrize("eps", [0.0, 0.4, 1.0])
def test_single_class(ce, eps):
    x = np.random.default_rng(2).normal(0, 5, size=(4, 1))
    for t in (np.zeros(4, dtype=np.int64), np.ones((4, 1)) * 0.7):
        for w in (None, np.array([2.5])):
            for red in ("none", "sum", "mean"):
                ev = ce.evaluate(case(x, t, w, red, label_smoothing=eps, upstream=np.ones(4) if red == "none" else None))
                assert np.all(ev.value == 0), (red, ev.value)
                assert np.all(ev.gradients["input"] == 0)


def test_unbatched_weighted_mean_is_unweighted(ce):
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.normal(0, 3, size=7)
        t = np.array(int(rng.integers(0, 7)))
        w = rng.uniform(0.1, 4, size=7)
        for eps in (0.0, 0.25):
            plain = ce.evaluate(case(x, t, None, "mean", label_smoothing=eps))
            weighted = ce.evaluate(case(x, t, w, "mean", label_smoothing=eps))
            assert plain.value.shape == () and weighted.value.shape == ()
            if eps == 0:
                assert weighted.value == pytest.approx(float(plain.value), rel=1e-15)
                assert weighted.value == pytest.approx(-(x[t] - np.log(np.sum(np.exp(x)))), rel=1e-14)
            # with smoothing the smoothing term is weighted per class: w_t cancels only in the nll part
            val, gx, _ = torch_ce(case(x, t, w, "mean", label_smoothing=eps))
            assert weighted.value == pytest.approx(float(val), rel=1e-13)
            assert_grad_close(weighted.gradients["input"], gx)


def test_neg_inf_off_target_finite(ce):
    x = np.array([[1.0, -INF, 0.5], [0.1, -1.0, 3.0]])
    t = np.array([0, 2])
    for red in ("none", "sum", "mean"):
        c = case(x, t, None, red, upstream=np.ones(2) if red == "none" else None)
        ev = ce.evaluate(c)
        val, gx, _ = torch_ce(c)
        assert np.all(np.isfinite(ev.value)) and np.all(np.isfinite(ev.gradients["input"]))
        np.testing.assert_allclose(ev.value, val, rtol=1e-14)
        assert_grad_close(ev.gradients["input"], gx)


def test_neg_inf_off_target_gradient_finite(ce):
    # The part of the special case the current spec does get right.
    x = np.array([[1.0, -INF, 0.5], [0.1, -1.0, 3.0]])
    c = case(x, np.array([0, 2]), None, "sum")
    ev = ce.evaluate(c)
    _, gx, _ = torch_ce(c)
    assert np.all(np.isfinite(ev.gradients["input"])) and ev.gradients["input"][0, 1] == 0
    assert_grad_close(ev.gradients["input"], gx)


def test_neg_inf_at_target_posinf(ce):
    x = np.array([[1.0, -INF, 0.5], [0.1, -1.0, 3.0]])
    t = np.array([1, 2])
    assert ce.evaluate(case(x, t, None, "sum")).value == INF
    assert ce.evaluate(case(x, t, None, "mean")).value == INF
    none = ce.evaluate(case(x, t, None, "none")).value
    assert none[0] == INF and np.isfinite(none[1])


@pytest.mark.parametrize("target", [0, 1])
def test_neg_inf_with_smoothing(ce, target):
    x = np.array([[1.0, -INF, 0.5], [0.1, -1.0, 3.0]])
    t = np.array([target, 2])
    for w in (None, np.array([0.5, 2.0, 1.0])):
        c = case(x, t, w, "sum", label_smoothing=0.2)
        ev = ce.evaluate(c)
        val, gx, _ = torch_ce(c)
        assert ev.value == INF and val == INF
        assert np.all(np.isfinite(ev.gradients["input"]))
        assert_grad_close(ev.gradients["input"], gx)
    # weight 0 at the -inf class: 0 * -inf in the smoothing term -> NaN loss (torch agrees), gradient finite
    c = case(x, np.array([0, 2]), np.array([1.0, 0.0, 2.0]), "sum", label_smoothing=0.2)
    ev = ce.evaluate(c)
    val, gx, _ = torch_ce(c)
    assert np.isnan(ev.value) and np.isnan(val)
    assert np.all(np.isfinite(ev.gradients["input"])) and np.all(np.isfinite(gx))
    assert_grad_close(ev.gradients["input"], gx)


def test_zero_weight_neg_inf_with_smoothing_gradient_is_specified(ce):
    x = np.array([[1.0, -INF, 0.5], [0.1, -1.0, 3.0]])
    c = case(x, np.array([0, 2]), np.array([1.0, 0.0, 2.0]), "sum", label_smoothing=0.2)
    _, gx, _ = torch_ce(c)
    assert np.all(np.isfinite(gx))
    assert not np.any(ce.evaluate(c).unspecified["input"])


def test_probability_zero_at_neg_inf(ce):
    x = np.array([[1.0, -INF, 0.5], [0.1, -1.0, 3.0]])
    y = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    c = case(x, y, None, "sum")
    ev = ce.evaluate(c)
    val, gx, gy = torch_ce(c)
    assert np.isnan(ev.value) and np.isnan(val)
    assert np.all(np.isfinite(ev.gradients["input"]))
    assert_grad_close(ev.gradients["input"], gx)
    # d/dy = -w * lp is +inf at the -inf logit, in torch too
    assert ev.gradients["target"][0, 1] == INF and gy[0, 1] == INF
    np.testing.assert_allclose(ev.gradients["target"], gy, rtol=1e-14)


@pytest.mark.parametrize("row", [[1.0, INF, 0.5], [1.0, np.nan, 0.5], [-INF, -INF, -INF], [INF, INF, 0.0]])
@pytest.mark.parametrize("prob", [False, True])
def test_nan_rows(ce, row, prob):
    x = np.array([row, [0.1, -1.0, 3.0]])
    t = np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]]) if prob else np.array([0, 2])
    for red in ("none", "sum", "mean"):
        c = case(x, t, None, red, upstream=np.ones(2) if red == "none" else None)
        ev = ce.evaluate(c)
        val, gx, _ = torch_ce(c)
        if red == "none":
            assert np.isnan(ev.value[0]) and np.isfinite(ev.value[1])
        else:
            assert np.isnan(ev.value)
        assert np.array_equal(np.isnan(val), np.isnan(ev.value))
        assert np.all(np.isnan(ev.gradients["input"][0])) and np.all(np.isfinite(ev.gradients["input"][1]))
        assert np.array_equal(np.isnan(gx), np.isnan(ev.gradients["input"]))
        if red != "mean":  # for mean the NaN row does not contaminate the other rows' gradient
            assert_grad_close(ev.gradients["input"][1], gx[1])


def _mp_ce_rows(x, target, weight, eps, prob):
    """Per-position loss and gradient (exact, mpmath at 50 digits) of the semantics page's formulas."""
    with mpmath.workdps(50):
        C = len(x[0])
        w = [mpmath.mpf(1)] * C if weight is None else [mpmath.mpf(float(v)) for v in weight]
        e = mpmath.mpf(float(eps))
        losses, grads = [], []
        for n, row in enumerate(x):
            r = [mpmath.mpf(float(v)) for v in row]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in r))
            lp = [v - lse for v in r]
            p = [mpmath.exp(v) for v in lp]
            if prob:
                q = [(1 - e) * mpmath.mpf(float(v)) + e / C for v in target[n]]
                losses.append(-mpmath.fsum(w[c] * q[c] * lp[c] for c in range(C)))
                sq = mpmath.fsum(w[c] * q[c] for c in range(C))
                grads.append([p[j] * sq - w[j] * q[j] for j in range(C)])
            else:
                tn = int(target[n])
                wt = w[tn]
                losses.append((1 - e) * wt * -lp[tn] + e / C * mpmath.fsum(w[c] * -lp[c] for c in range(C)))
                a = (1 - e) * wt + e / C * mpmath.fsum(w)
                grads.append([a * p[j] - ((1 - e) * wt if j == tn else 0) - e / C * w[j] for j in range(C)])
        return losses, grads


def _rel(got, exact):
    with mpmath.workdps(50):
        if exact == 0:
            return abs(float(got))
        return float(abs(mpmath.mpf(float(got)) - exact) / abs(exact))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_huge_logits_exact(ce, eps):
    big = 1e30
    ulp = np.spacing(big)
    x = np.array([[big, big, -big], [big, big + ulp, big - 2 * ulp], [-big, 5.0, big], [big, big - 3 * ulp, 0.0]])
    t = np.array([0, 0, 1, 1])
    with np.errstate(all="ignore"):
        naive = -np.log(np.exp(x[:, 0]) / np.exp(x).sum(1))
    assert not np.all(np.isfinite(naive))  # the naive formula overflows here
    losses, grads = _mp_ce_rows(x, t, None, eps, False)
    ev = ce.evaluate(case(x, t, None, "none", label_smoothing=eps, upstream=np.ones(4)))
    assert np.all(np.isfinite(ev.value)) and np.all(np.isfinite(ev.gradients["input"]))
    for n in range(4):
        assert _rel(ev.value[n], losses[n]) <= 1e-15, (n, ev.value[n], losses[n])
        gmax = max(abs(float(v)) for v in grads[n])
        for j in range(3):
            assert abs(ev.gradients["input"][n, j] - float(grads[n][j])) <= 1e-15 * gmax
    total = ce.evaluate(case(x, t, None, "sum", label_smoothing=eps), gradients=False).value
    with mpmath.workdps(50):
        assert _rel(total, mpmath.fsum(losses)) <= 1e-15


def test_spatial_matches_torch(ce):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 3, size=(2, 4, 3, 5))
    t = rng.integers(0, 4, size=(2, 3, 5))
    t[0, 1, 2] = -100
    w = rng.uniform(0.1, 2, size=4)
    y = rng.uniform(0, 1, size=x.shape)
    for target in (t, y):
        for weight in (None, w):
            for eps in (0.0, 0.3):
                for red in ("none", "sum", "mean"):
                    up = rng.normal(size=(2, 3, 5) if red == "none" else ())
                    c = case(x, target, weight, red, label_smoothing=eps, upstream=up)
                    ev = ce.evaluate(c)
                    val, gx, gy = torch_ce(c)
                    assert ev.value.shape == val.shape
                    np.testing.assert_allclose(ev.value, val, rtol=1e-13, atol=0)
                    assert_grad_close(ev.gradients["input"], gx)
                    if gy is not None:
                        assert_grad_close(ev.gradients["target"], gy)


def test_probability_targets_applied_literally(ce):
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, size=(4, 5))
    y = rng.normal(0, 2, size=(4, 5))  # unnormalised, with negative entries
    y[0] = [3.0, 0.0, 0.0, 0.0, 0.0]
    y[1] = [-1.0, 0.5, 0.5, 0.5, 0.5]
    w = rng.uniform(0.1, 2, size=5)
    lp = x - np.log(np.exp(x).sum(1, keepdims=True))
    for weight in (None, w):
        wv = np.ones(5) if weight is None else w
        for eps in (0.0, 0.2):
            q = (1 - eps) * y + eps / 5
            literal = -(wv * q * lp).sum(1)
            for red in ("none", "sum", "mean"):
                c = case(x, y, weight, red, label_smoothing=eps, upstream=rng.normal(size=4) if red == "none" else None)
                ev = ce.evaluate(c)
                want = {"none": literal, "sum": literal.sum(), "mean": literal.sum() / 4}[red]
                np.testing.assert_allclose(ev.value, want, rtol=1e-12)
                val, gx, gy = torch_ce(c)
                np.testing.assert_allclose(ev.value, val, rtol=1e-12)
                assert_grad_close(ev.gradients["input"], gx)
                assert_grad_close(ev.gradients["target"], gy)


# --------------------------------------------------------------------------- 4. gradients vs torch
def _random_case(rng, i):
    rank = 1 + i % 4
    prob = i % 5 in (1, 3)
    C = int(rng.choice([1, 2, 3, 5, 10])) if i % 7 else 1
    C = max(C, 2) if i % 11 else C
    shape = (C,) if rank == 1 else (int(rng.integers(1, 5)), C) + tuple(int(rng.integers(1, 4)) for _ in range(rank - 2))
    x = rng.normal(0, 3, size=shape)
    none_shape = tuple(s for k, s in enumerate(shape) if k != (0 if rank == 1 else 1))
    eps = [0.0, 0.3, 1.0][i % 3]
    reduction = ["none", "sum", "mean"][(i // 3) % 3]
    wkind = i % 4
    weight = None if wkind == 0 else rng.uniform(0.1, 3, size=C)
    if wkind == 3 and C > 1:
        weight[rng.integers(0, C)] = 0.0
    ignore_index = -100
    if prob:
        target = rng.dirichlet(np.ones(C), size=none_shape) if none_shape else rng.dirichlet(np.ones(C))
        target = np.moveaxis(target, -1, 0 if rank == 1 else 1)
        if i % 6 == 1:
            target = target * 1.5 - 0.1  # not normalised, some negative entries
    else:
        target = rng.integers(0, C, size=none_shape)
        if i % 2 and C > 1:
            ignore_index = int(rng.integers(0, C))
        flat = target.reshape(-1)
        # at least one position counts, with a non-zero weight, so that a mean is finite
        good = [c for c in range(C) if c != ignore_index]
        if weight is not None and weight[good[0]] == 0:
            weight[good[0]] = 1.5
        flat[0] = good[0]
        if rank > 1 and flat.size > 1:
            flat[-1] = ignore_index if ignore_index >= 0 else -100
    upstream = rng.normal(size=none_shape) if reduction == "none" else (np.array(rng.normal()) if i % 2 else None)
    return case(x, target, weight, reduction, ignore_index, eps, upstream)


@pytest.mark.parametrize("i", range(50))
def test_gradients_match_torch(ce, i):
    c = _random_case(np.random.default_rng(1000 + i), i)
    ev = ce.evaluate(c)
    val, gx, gy = torch_ce(c)
    assert ev.value.shape == val.shape
    # torch's float64 is only absolutely accurate for tiny losses; the oracle is relatively so
    np.testing.assert_allclose(ev.value, val, rtol=1e-13, atol=1e-15)
    assert_grad_close(ev.gradients["input"], gx)
    assert not np.any(ev.unspecified["input"])
    if c.target_kind == "probability":
        assert_grad_close(ev.gradients["target"], gy)
    else:
        assert "target" not in ev.gradients


def test_random_cases_cover_the_options():
    cases = [_random_case(np.random.default_rng(1000 + i), i) for i in range(50)]
    feats = [c.features() for c in cases]
    for key, values in {"rank": {"1", "2", "3", "4"}, "target": {"index", "probability"},
                        "weight": {"none", "positive", "with_zeros"}, "ignore_index": {"default", "inside"},
                        "label_smoothing": {"0", "(0,1)", "1"}, "reduction": {"none", "sum", "mean"}}.items():
        assert {f[key] for f in feats} >= values, key
    assert any(c.target_kind == "probability" and np.any(c.target < 0) for c in cases)
    assert any(c.num_classes == 1 for c in cases)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_ignored_row_with_pos_inf_is_unspecified(ce, reduction):
    x = np.random.default_rng(6).normal(size=(4, 3))
    x[1, 2] = INF
    c = case(x, np.array([0, -100, 2, 1]), None, reduction, upstream=np.ones(4) if reduction == "none" else None)
    ev = ce.evaluate(c)
    val, gx, _ = torch_ce(c)
    np.testing.assert_allclose(ev.value, val, rtol=1e-14)  # the forward value stays finite
    assert np.all(np.isfinite(ev.value))
    torch_nan_rows = np.isnan(gx).any(axis=1)
    assert torch_nan_rows.tolist() == [False, True, False, False]
    expected = np.zeros((4, 3), dtype=bool)
    expected[1] = True
    assert np.array_equal(ev.unspecified["input"], expected)
    ok = ~ev.unspecified["input"]
    assert_grad_close(ev.gradients["input"][ok], gx[ok])


# --------------------------------------------------------------------------- 5. mpmath cross-check
def _mp_reference(c: Case):
    x = np.moveaxis(np.asarray(c.x, dtype=np.float64), c.class_axis, -1).reshape(-1, c.num_classes)
    prob = c.target_kind == "probability"
    if prob:
        t = np.moveaxis(np.asarray(c.target, dtype=np.float64), c.class_axis, -1).reshape(-1, c.num_classes)
    else:
        t = np.asarray(c.target).reshape(-1)
    P, C = x.shape
    with mpmath.workdps(50):
        keep = [prob or int(t[n]) != c.ignore_index for n in range(P)]
        losses, grads = _mp_ce_rows(x, t, c.weight, c.label_smoothing, prob)
        losses = [l if k else mpmath.mpf(0) for l, k in zip(losses, keep)]
        grads = [g if k else [mpmath.mpf(0)] * C for g, k in zip(grads, keep)]
        w = [mpmath.mpf(1)] * C if c.weight is None else [mpmath.mpf(float(v)) for v in c.weight]
        e = mpmath.mpf(float(c.label_smoothing))
        gy = [[-(1 - e) * w[j] * (mpmath.mpf(float(x[n][j])) - mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in x[n])))
               for j in range(C)] for n in range(P)] if prob else None
        if c.reduction == "none":
            g = [mpmath.mpf(float(v)) for v in np.ravel(c.upstream)]
            scale = g
            value = losses
        else:
            den = mpmath.mpf(P) if prob else mpmath.fsum(w[int(t[n])] for n in range(P) if keep[n])
            k = mpmath.mpf(1) if c.reduction == "sum" else 1 / den
            value = [mpmath.fsum(losses) * k]
            if c.upstream is not None:  # a scalar upstream scales the gradient only
                k = k * mpmath.mpf(float(np.asarray(c.upstream)))
            scale = [k] * P
        grads = [[scale[n] * v for v in grads[n]] for n in range(P)]
        gy = [[scale[n] * v for v in gy[n]] for n in range(P)] if prob else None
    return value, grads, gy


def _mp_case(rng, i):
    C = int(rng.integers(2, 7))
    rank = 1 + i % 3
    shape = (C,) if rank == 1 else (int(rng.integers(1, 4)), C) + ((int(rng.integers(1, 3)),) if rank == 3 else ())
    none_shape = tuple(s for k, s in enumerate(shape) if k != (0 if rank == 1 else 1))
    x = rng.normal(0, 3, size=shape)
    prob = i % 3 == 1
    reduction = ["none", "sum", "mean"][(i // 3) % 3]
    eps = [0.0, 0.3, 1.0, float(rng.uniform(0, 1))][i % 4]
    weight = rng.uniform(0.1, 2, size=C) if i % 2 else None
    ignore_index = -100
    if prob:
        y = rng.dirichlet(np.ones(C), size=none_shape) if none_shape else rng.dirichlet(np.ones(C))
        target = np.moveaxis(y, -1, 0 if rank == 1 else 1)
    else:
        target = rng.integers(0, C, size=none_shape)
        if i % 5 in (0, 2):
            ignore_index = int(rng.integers(0, C))
            if np.all(target == ignore_index):
                target.reshape(-1)[0] = (ignore_index + 1) % C
    upstream = rng.normal(size=none_shape) if reduction == "none" else (np.array(rng.normal()) if i % 2 else None)
    return case(x, target, weight, reduction, ignore_index, eps, upstream)


@pytest.mark.parametrize("i", range(30))
def test_mpmath_cross_check(ce, i):
    c = _mp_case(np.random.default_rng(2000 + i), i)
    ev = ce.evaluate(c)
    value, grads, gy = _mp_reference(c)
    for got, exact in zip(np.ravel(ev.value), value):
        assert _rel(got, exact) <= 1e-13, (got, exact)
    C = c.num_classes
    gx = np.moveaxis(ev.gradients["input"], c.class_axis, -1).reshape(-1, C)
    # Gradient elements such as p_t - 1 cancel, so their error is relative to the row's largest element.
    for n, row in enumerate(grads):
        rmax = max(abs(float(v)) for v in row)
        for j in range(C):
            with mpmath.workdps(50):
                err = float(abs(mpmath.mpf(float(gx[n, j])) - row[j]))
            assert err <= 1e-13 * rmax, (n, j, gx[n, j], row[j])
    if gy is not None:
        # -w * lp: the log-probability of a dominant class is near 0 and computed as -log(1 + s)
        # with an absolute (not relative) error of about 2**-53 (see test_confident_loss_error).
        gt = np.moveaxis(ev.gradients["target"], c.class_axis, -1).reshape(-1, C)
        for n, row in enumerate(gy):
            rmax = max(abs(float(v)) for v in row)
            for j in range(C):
                with mpmath.workdps(50):
                    err = float(abs(mpmath.mpf(float(gt[n, j])) - row[j]))
                assert err <= 1e-13 * rmax, (n, j, gt[n, j], row[j])


@pytest.mark.parametrize("margin", [5.0, 10.0, 20.0, 30.0])
def test_confident_loss_error(ce, margin):
    """A confident, correct position has a tiny loss -lp_t = log(1 + s), s << 1. The oracle uses
    log1p(s), so the tiny loss keeps its relative accuracy (torch's float64 is only absolutely close)."""
    x = np.array([[margin, 0.3, 0.1]])
    ev = ce.evaluate(case(x, np.array([0]), None, "sum"))
    with mpmath.workdps(50):
        exact = mpmath.log(1 + mpmath.exp(mpmath.mpf(0.3) - margin) + mpmath.exp(mpmath.mpf(0.1) - margin))
        err = float(abs(mpmath.mpf(float(ev.value)) - exact) / exact)
    assert err <= 1e-13
    val, _, _ = torch_ce(case(x, np.array([0]), None, "sum"))
    assert abs(float(val) - float(ev.value)) <= 2.0 ** -52


# --------------------------------------------------------------------------- 6. long reductions
def test_large_reduction_exactly_rounded(ce):
    rng = np.random.default_rng(7)
    N, C = 20000, 50
    x = rng.normal(0, 3, size=(N, C))
    t = rng.integers(0, C, size=N)
    w = rng.uniform(0.1, 2, size=C)
    m = x.max(1, keepdims=True)
    lp = (x - m) - np.log(np.exp(x - m).sum(1, keepdims=True))
    nll = -lp[np.arange(N), t]
    exact_sum = math.fsum(nll.tolist())
    for red, want in (("sum", exact_sum), ("mean", exact_sum / N)):
        got = ce.evaluate(case(x, t, None, red), gradients=False).value
        assert abs(got - want) <= 1e-13 * abs(want)
        assert abs(got - want) <= 2 * np.spacing(abs(want))  # it is the correctly rounded sum
    wl = w[t] * nll
    wsum, wden = math.fsum(wl.tolist()), math.fsum(w[t].tolist())
    got = ce.evaluate(case(x, t, w, "sum"), gradients=False).value
    assert abs(got - wsum) <= 1e-13 * wsum
    got = ce.evaluate(case(x, t, w, "mean"), gradients=False).value
    assert abs(got - wsum / wden) <= 1e-13 * (wsum / wden)


# --------------------------------------------------------------------------- 7. legacy arguments
LEGACY = [
    ({"size_average": False, "reduce": None}, "sum"),
    ({"size_average": None, "reduce": False}, "none"),
    ({"size_average": False, "reduce": False}, "none"),
    ({"size_average": True, "reduce": False}, "none"),
    ({"size_average": True, "reduce": True}, "mean"),
    ({"size_average": True, "reduce": None}, "mean"),
    ({"size_average": None, "reduce": True}, "mean"),
    ({"size_average": False, "reduce": True}, "sum"),
    ({"size_average": False}, "sum"),
    ({"reduce": False}, "none"),
    ({"size_average": True}, "mean"),
]


@pytest.mark.parametrize("legacy,expected", LEGACY)
@pytest.mark.parametrize("given", ["none", "sum", "mean"])
def test_legacy_arguments(ce, legacy, expected, given):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 3))
    t = np.array([0, 2, 1, -100])
    c = case(x, t, np.array([0.5, 1.0, 2.0]), given, legacy=legacy)
    assert c.effective_reduction(ce.spec.deprecated) == expected
    ev = ce.evaluate(c, gradients=False)
    assert ev.reduction == expected
    direct = ce.evaluate(c.copy(legacy=None, reduction=expected), gradients=False)
    np.testing.assert_array_equal(ev.value, direct.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = F.cross_entropy(torch.tensor(x), torch.tensor(t), weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
                              reduction=given, **legacy).numpy()
    np.testing.assert_allclose(ev.value, out, rtol=1e-14)


def test_legacy_both_none_keeps_reduction(ce):
    x = np.random.default_rng(9).normal(size=(4, 3))
    c = case(x, np.array([0, 2, 1, 0]), None, "sum", legacy={"size_average": None, "reduce": None})
    assert c.effective_reduction(ce.spec.deprecated) == "sum"


# --------------------------------------------------------------------------- 8. log_softmax, nll_loss
def _lsm_case(x, upstream=None):
    none_shape = tuple(s for k, s in enumerate(x.shape) if k != (0 if x.ndim == 1 else 1))
    return Case(x=x, target=np.zeros(none_shape, dtype=np.int64), reduction="none", upstream=upstream)


@pytest.mark.parametrize("shape", [(7,), (4, 5), (3, 6, 4), (2, 5, 3, 2), (3, 1)])
def test_log_softmax_matches_torch(lsm, shape):
    rng = np.random.default_rng(10)
    x = rng.normal(0, 5, size=shape)
    x.reshape(-1)[0] = 1e30 if x.size > 2 else x.reshape(-1)[0]
    g = rng.normal(size=shape)
    dim = 0 if x.ndim == 1 else 1
    xt = torch.tensor(x, requires_grad=True)
    out = F.log_softmax(xt, dim=dim)
    out.backward(torch.tensor(g))
    ev = lsm.evaluate(_lsm_case(x, g))
    assert ev.value.shape == shape
    want = out.detach().numpy()
    assert np.all(np.abs(ev.value - want) <= 1e-14 * np.maximum(1.0, np.abs(want)))
    assert_grad_close(ev.gradients["input"], xt.grad.numpy(), rtol=1e-14)
    # without an upstream the gradient is that of sum(log_softmax(x))
    xt.grad = None
    F.log_softmax(xt, dim=dim).sum().backward()
    assert_grad_close(lsm.evaluate(_lsm_case(x)).gradients["input"], xt.grad.numpy(), rtol=1e-14)


@pytest.mark.parametrize("i", [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19])  # i % 5 not in (1, 3): index path
def test_nll_of_log_softmax_equals_cross_entropy(ce, nll, lsm, i):
    c = _random_case(np.random.default_rng(3000 + i), i)
    c = c.copy(label_smoothing=0.0)
    assert c.target_kind == "index"
    lp = lsm.evaluate(_lsm_case(c.x), gradients=False).value
    a = nll.evaluate(c.copy(x=lp))
    b = ce.evaluate(c)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-15, atol=0)
    # and the nll spec itself agrees with torch
    # np.ascontiguousarray: torch 2.13's 4-D nll_loss backward raises "grad_input must be
    # contiguous" for a non-contiguous input (the oracle's output is a moveaxis view).
    xt = torch.tensor(np.ascontiguousarray(lp), requires_grad=True)
    out = F.nll_loss(xt, torch.tensor(c.target), weight=None if c.weight is None else torch.tensor(c.weight),
                     ignore_index=c.ignore_index, reduction=c.reduction)
    out.backward(torch.ones_like(out) if c.upstream is None else torch.tensor(c.upstream).reshape(out.shape))
    np.testing.assert_allclose(a.value, out.detach().numpy(), rtol=1e-14)
    assert_grad_close(a.gradients["input"], xt.grad.numpy())
