"""The row-chunked oracle and bounds of the linear form (conformance/chunked.py): the same values,
gradients, extra outputs, magnitudes and bounds as the dense evaluation on drawn cases; memory
for a few rows of logits; the dense fallback where a spec's formulas cannot be chunked; and the
overflow rule of ``linear.tolerance.magnitudes`` (a correct float32 kernel's classifier gradient
overflows where z-loss meets huge logits)."""
import dataclasses
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conformance import chunked, linear_strategies
from conformance import strategies as strat
from conformance.adapters import resolve
from conformance.case import Case
from conformance.compare import Judge
from conformance.formula import parse
from conformance.oracle import Oracle
from conformance.spec import load_default

SPEC = load_default("linear_cross_entropy")
ORACLE = Oracle(SPEC)
JUDGE = Judge(SPEC)
CAPS = resolve("torch-linear").capabilities


def _close(a, b, what, scale=0.0, rtol=1e-12):
    """Equal up to the rounding of differently ordered sums: within rtol of the value, or within
    a hundredth of the admitted error (the cancelling sums of the classifier gradient: float64
    inputs are summed in long double, 2**-11 of the float64 bound whatever the order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, what
    ok = (a == b) | (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= rtol * np.abs(b) + 1e-2 * np.asarray(scale))
    assert ok.all(), f"{what}: chunked {a[~ok][:3]} vs dense {b[~ok][:3]}"


def _case(P, C, H, dtype="float32", reduction="mean", regime="ordinary", extensions=None, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, C, P)
    h, W, b, t = linear_strategies.build(rng, regime, dtype, P, C, H, True, t, -100)
    x = linear_strategies._q(h.astype(np.float64) @ W.astype(np.float64).T + b.astype(np.float64), dtype)
    return Case(x=x, target=np.asarray(t, dtype=np.int64), reduction=reduction,
                linear={"hidden": h, "classifier": W, "bias": b}, extensions=extensions or {})


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])   # no shrinking of vocabulary-sized cases
@given(linear_strategies.cases_of(SPEC, dataclasses.replace(strat.request_for(SPEC, CAPS), max_classes=4097)),
       st.integers(1, 3))
def test_chunks_give_the_dense_evaluation_and_bounds(case, rows):
    if case.positions < 2:
        return
    rows = max(rows, -(-case.positions // 6))   # at most 6 chunks (long batches have 4096 rows)
    ce = chunked.evaluate(ORACLE, case, gradients=True, reduction=None, rows=rows)
    de = ORACLE._dense(case)
    d = case.dtype
    assert ce.chunks is not None and de.chunks is None
    _close(ce.value, de.value, "value", JUDGE.value_bound(de, d))
    assert set(ce.gradients) == set(de.gradients) and set(ce.outputs) == set(de.outputs)
    for k in de.gradients:
        _close(ce.gradients[k], de.gradients[k], k, JUDGE.gradient_bound(de, k, d, case))
        _close(ce.magnitudes[k], de.magnitudes[k], f"magnitude {k}", rtol=1e-9)
        _close(JUDGE.gradient_bound(ce, k, d, case), JUDGE.gradient_bound(de, k, d, case), f"bound {k}", rtol=1e-9)
    for k in de.outputs:
        _close(ce.outputs[k][0], de.outputs[k][0], k, JUDGE.output_bound(de, k, d))
        _close(JUDGE.output_bound(ce, k, d), JUDGE.output_bound(de, k, d), f"bound {k}", rtol=1e-9)
    _close(JUDGE.value_bound(ce, d), JUDGE.value_bound(de, d), "value bound", rtol=1e-9)


def test_large_cases_are_chunked_in_memory_below_the_logits():
    """2**22 logits (16 MiB in float32): the oracle, the value bound and the three gradient
    bounds together need less than the logits' own size (the dense oracle needed ~35 times it)."""
    case = _case(512, 8192, 8, reduction="mean", extensions={"z_loss": 1e-4, "return_lse": True, "return_z_loss": True})
    assert chunked.applies(SPEC, case)
    tracemalloc.start()
    try:
        ev = ORACLE.evaluate(case)
        bounds = [JUDGE.value_bound(ev, "float32")]
        bounds += [JUDGE.gradient_bound(ev, k, "float32", case) for k in ev.gradients]
        bounds += [JUDGE.output_bound(ev, k, "float32") for k in ev.outputs]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ev.chunks is not None
    assert set(ev.gradients) == {"hidden", "classifier", "bias"} and set(ev.outputs) == {"lse", "z_loss"}
    assert ev.gradients["classifier"].shape == (8192, 8) and ev.outputs["lse"][0].shape == (512,)
    assert all(np.isfinite(b).all() for b in bounds)
    assert peak < case.x.nbytes, f"peak {peak / 2**20:.1f} MiB >= logits {case.x.nbytes / 2**20:.1f} MiB"


def test_small_cases_stay_dense():
    case = _case(3, 1000, 8)
    assert not chunked.applies(SPEC, case)
    assert ORACLE.evaluate(case).chunks is None


def test_position_reductions_are_told_apart():
    def f(src):
        return parse(src, known={"wt", "w", "l", "den", "G", "hidden", "gamma", "P", "dG"}).tree.body

    assert chunked.reduces_positions(f("sum(wt)"), frozenset({"wt"}))
    assert not chunked.reduces_positions(f("sum(w) * 2"), frozenset({"wt"}))   # over the classes' weights
    assert not chunked.reduces_positions(f("sum(l, axis=classes)"), frozenset({"l"}))
    assert chunked.reduces_positions(f("matmul_tn(G, hidden)"))
    add = parse("sum_positions(dG) + gamma * P * sum_positions(abs(G))", known={"dG", "G", "gamma", "P"})
    assert chunked.additive_over_positions(add)
    not_add = parse("sum_positions(dG) * sum_positions(G)", known={"dG", "G"})
    assert not chunked.additive_over_positions(not_add)
    with pytest.raises(chunked.NotChunkable, match="not additive"):
        chunked.Combiner(not_add)


def test_a_per_row_binding_reading_a_position_global_falls_back_to_dense():
    path = SPEC.paths["index"]
    known = set(path.bindings) | {"x", "t", "w", "g", "eps", "ignore_index", "C", "P"}
    bindings = dict(path.bindings, share=parse("wt / den", known=known))   # after den, per row
    spec = dataclasses.replace(SPEC, paths={"index": dataclasses.replace(path, bindings=bindings)})
    oracle = Oracle(spec)
    case = _case(256, 4096, 2)
    assert chunked.applies(spec, case)
    with pytest.raises(chunked.NotChunkable, match="share reads the position-global"):
        chunked.evaluate(oracle, case, gradients=False, reduction=None)
    ev = oracle.evaluate(case, gradients=False)
    assert ev.chunks is None   # the dense oracle answered
    np.testing.assert_allclose(ev.env["share"].sum(), 1.0, rtol=1e-12)


def test_overflowing_classifier_gradient_accepts_non_finite_only_there():
    """z-loss on huge logits: G near 2 * lse ~ 1e30 times hidden states near 1e15 overflows
    float32 in any evaluation order. torch's own float32 result is non-finite where the exact
    value is (a wrong-signed inf or NaN on some elements); the magnitudes rule admits those
    (tests/test_verdict_rules.py: only non-finite answers, only there)."""
    torch = pytest.importorskip("torch")
    from conformance.adapters.linear import linear_cross_entropy

    case = _case(16, 5, 3, regime="huge", reduction="sum", extensions={"z_loss": 1.0})
    ev = ORACLE.evaluate(case)
    big = JUDGE.accumulation_max("float32")
    assert (ev.magnitudes["classifier"] > big).any()
    h = torch.tensor(case.linear["hidden"], requires_grad=True)
    W = torch.tensor(case.linear["classifier"], requires_grad=True)
    b = torch.tensor(case.linear["bias"], requires_grad=True)
    loss, _, _ = linear_cross_entropy(h, W, torch.tensor(case.target), b, reduction="sum", z_loss=1.0)
    loss.backward()
    got = W.grad.numpy()
    bound = JUDGE.gradient_bound(ev, "classifier", "float32", case)
    kw = dict(what="gradient[classifier]", clause="c")
    mag = ev.magnitudes["classifier"]
    with_rule = JUDGE.compare(got, ev.gradients["classifier"], bound, "float32", magnitude=mag, **kw)
    assert with_rule.ok, with_rule.message
    without = JUDGE.compare(got, ev.gradients["classifier"], bound, "float32", **kw)
    assert not without.ok and "is finite in float32" in without.message   # what the 10-seed sweep flagged


def test_thorough_profile_draws_up_to_max_cells_at_real_vocabularies():
    """linear.domain.vocab.thorough_batch and max_cells: the thorough profile reaches cases the
    chunked oracle takes (>= 2**20 logits, at most 2**24); the default profile keeps P <= 3."""
    from hypothesis import find

    caps = CAPS
    vocab = SPEC.linear.domain["vocab"]
    big = find(linear_strategies.cases_of(SPEC, strat.request_for(SPEC, caps, profile="thorough")),
               lambda c: c.num_classes in vocab["classes"] and c.positions in vocab["thorough_batch"],
               settings=settings(max_examples=2000, database=None, deadline=None, derandomize=True,
                                 suppress_health_check=list(HealthCheck)))
    assert big.positions * big.num_classes <= vocab["max_cells"]
    seen = []

    @settings(max_examples=60, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(linear_strategies.cases_of(SPEC, strat.request_for(SPEC, caps, profile="default")))
    def default(case):
        if case.num_classes in vocab["classes"]:
            seen.append(case.positions)

    default()
    assert seen and set(seen) <= set(vocab["batch"])
