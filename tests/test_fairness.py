"""Fairness: the suite never asks an adapter for what it declares unsupported, and it never
flags a correct implementation for the order in which it adds things up.

* Capabilities: for every feature of ``adapters/base.py: ALL_FEATURES``, an adapter that
  declares it unsupported never receives a case that uses it, for plain draws and for every
  special case's modifiers (which is where -inf/NaN logits come from).
* Summation order: the planted correct implementations of tests/planted.py (``ORDERED``) sum
  positions and classes left to right, right to left, pairwise, in blocks of 4096, with
  Kahan's compensation and in float64; on the inputs where the pairwise-only bound flagged a
  left-to-right sum they pass, while the planted 3e-4 bug is still caught there.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import planted
from conformance import strategies as strat
from conformance.adapters.base import ALL_FEATURES, Capabilities
from conformance.case import Case
from conformance.compare import Judge, ulp
from conformance.oracle import Oracle
from conformance.spec import load_default

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # large reprs of specs

SPEC = load_default()
ORACLE, JUDGE = Oracle(SPEC), Judge(SPEC)
#: The modifier sets a check may ask for: a plain draw, and every special case's `make`.
MODIFIER_SETS = [()] + [tuple(sc.make) for sc in SPEC.special_cases.values()]


def _uses(feature: str, case: Case) -> bool:
    """Whether ``case`` needs ``feature`` of the adapter (the generator's side of each capability)."""
    eff = case.effective_reduction(SPEC.deprecated)
    t = np.asarray(case.target)
    if feature == "index_target":
        return case.target_kind == "index"
    if feature == "probability_target":
        return case.target_kind == "probability"
    if feature == "weight":
        return case.weight is not None
    if feature == "ignore_index":
        return case.ignore_index != -100 or (case.target_kind == "index" and bool(np.any(t == case.ignore_index)))
    if feature == "label_smoothing":
        return case.label_smoothing != 0
    if feature.startswith("reduction_"):
        return feature in (f"reduction_{case.reduction}", f"reduction_{eff}")
    if feature == "legacy_arguments":
        return case.legacy is not None
    if feature == "nonfinite":
        return not (np.all(np.isfinite(case.x.astype(np.float64)))
                    and (case.weight is None or np.all(np.isfinite(case.weight.astype(np.float64)))))
    if feature == "empty":
        return case.positions == 0
    raise AssertionError(f"no generator-side test for {feature}")


GENERATOR_FEATURES = sorted(ALL_FEATURES - {"gradient", "gradient_target", "linear_bias"})


def test_every_feature_has_a_generator_or_engine_test():
    assert set(GENERATOR_FEATURES) | {"gradient", "gradient_target", "linear_bias"} == set(ALL_FEATURES)


def test_linear_generator_never_draws_a_bias_for_an_adapter_without_one():
    """linear_bias belongs to the linear form (specs/linear_cross_entropy.yaml): without it no
    drawn case carries a bias; with it, some do (the property is exercised, not vacuous)."""
    from conformance import linear_strategies

    linear = load_default("linear_cross_entropy")

    def biases(features):
        out = []

        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def run(data):
            req = strat.request_for(linear, Capabilities(features=features), profile="quick")
            case = data.draw(linear_strategies.cases_of(linear, req), label="case")
            out.append(case.linear["bias"] is not None)

        run()
        return out

    seen = {"without": biases(ALL_FEATURES - {"linear_bias"}), "with": biases(ALL_FEATURES)}
    assert seen["without"] and not any(seen["without"])
    assert any(seen["with"])


@pytest.mark.parametrize("feature", GENERATOR_FEATURES)
def test_generator_never_draws_an_unsupported_feature(feature):
    caps = Capabilities(features=ALL_FEATURES - {feature})
    drawn = {"cases": 0, "refused": 0}

    @settings(max_examples=80, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        mods = data.draw(st.sampled_from(MODIFIER_SETS), label="modifiers")
        req = strat.request_for(SPEC, caps, modifiers=mods, profile="thorough")
        if not (req.dtypes and req.ranks and req.target_kinds and req.reductions):
            drawn["refused"] += 1
            return
        try:
            case = data.draw(strat.cases(SPEC, req), label="case")
        except strat.NothingToDraw:
            drawn["refused"] += 1
            return
        drawn["cases"] += 1
        assert not _uses(feature, case), f"{feature} drawn for an adapter without it: {case.describe(small=4)}"

    run()
    assert drawn["cases"] > 30  # the property was exercised, not refused wholesale


def test_nonfinite_special_cases_are_refused_not_drawn():
    """Without `nonfinite`, the special cases that need -inf/NaN logits are not drawn at all."""
    caps = Capabilities(features=ALL_FEATURES - {"nonfinite"})
    from hypothesis import find
    nonfinite = [m for m, mod in strat.MODIFIERS.items() if "nonfinite" in mod.needs.features]
    assert set(nonfinite) == {"neg_inf_off_target", "neg_inf_at_target", "pos_inf", "nan_logit", "all_neg_inf_row"}
    for m in nonfinite:
        req = strat.request_for(SPEC, caps, modifiers=(m,))
        with pytest.raises(strat.NothingToDraw, match="nonfinite"):
            find(strat.cases(SPEC, req), lambda c: True)
    # and with the feature they are: -inf/NaN present
    req = strat.request_for(SPEC, Capabilities(), modifiers=("nan_logit",))
    case = find(strat.cases(SPEC, req), lambda c: True)
    assert np.isnan(case.x.astype(np.float64)).any()


def test_engine_honours_gradient_capabilities():
    from conformance.adapters.torch_adapter import TorchFunctionAdapter
    from conformance.checks import Context, catalogue
    from conformance.engine import run_check

    checks = {c.id: c for c in catalogue(SPEC)}
    caps = Capabilities(features=ALL_FEATURES - {"gradient"})
    ctx = Context(SPEC, TorchFunctionAdapter(planted.float64_round_once, "no-grad", capabilities=caps), profile="quick")
    for cid in ("gradient.index", "gradient.probability", "metamorphic.gradient_rows_sum_to_zero"):
        r = run_check(ctx, checks[cid], seed=0)
        assert r.status == "not_supported" and "gradient" in r.message, (cid, r.status, r.message)

    class NoTargetGradient(TorchFunctionAdapter):
        def call(self, case, *, gradient=False):
            res = super().call(case, gradient=gradient)
            res.gradients.pop("target", None)
            return res

    caps = Capabilities(features=ALL_FEATURES - {"gradient_target"})
    ctx = Context(SPEC, NoTargetGradient(planted.float64_round_once, "no-target-grad", capabilities=caps),
                  profile="quick")
    r = run_check(ctx, checks["gradient.probability"], seed=0)
    assert r.status == "passed", r.message


# --------------------------------------------------------------------------- summation order
def _tied_sum_case(dtype: str, seed: int = 7) -> Case:
    """(4096, 2) 'sum' with tied logits: every position's loss is log 2, summed 4096 times."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-2.0, 0.0, 0.5, 3.0], size=(4096, 2))
    x[:, 1] = x[:, 0]
    return Case(x=x.astype(dtype), target=rng.integers(0, 2, size=4096), reduction="sum")


def _verdict(fn, case: Case, *, gradient=False):
    from conformance.adapters.torch_adapter import TorchFunctionAdapter
    res = TorchFunctionAdapter(fn, "f").call(case, gradient=gradient)
    ev = ORACLE.evaluate(case, gradients=gradient)
    out = [JUDGE.compare(res.value, ev.value, JUDGE.value_bound(ev, case.dtype), case.dtype, what="loss", clause="c")]
    if gradient:
        g = JUDGE.gradient_bound(ev, "input", case.dtype, case)
        out.append(JUDGE.compare(res.gradients["input"], ev.gradients["input"], g, case.dtype,
                                 what="gradient[input]", clause="c"))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", planted.ORDERED)
def test_any_summation_order_passes_the_long_tied_sum(name, dtype):
    case = _tied_sum_case(dtype)
    (v,) = _verdict(getattr(planted, name), case)
    assert v.ok, f"{name}: {v.message}"
    # the bound is what any order may lose, not more: a 3e-4 relative error stays outside it
    bug_ulps = 3e-4 * abs(v.expected) / float(ulp(np.asarray(v.expected), dtype))
    assert v.bound_ulps < bug_ulps, (v.bound_ulps, bug_ulps)


def test_left_to_right_error_needs_the_any_order_term_and_the_3e4_bug_is_still_caught():
    case = _tied_sum_case("float32")
    (good,) = _verdict(planted.sum_left_to_right, case)
    (bad,) = _verdict(planted.off_by_3e4, case)
    assert good.ok and good.max_error_ulps > 150  # far past what a pairwise bound (~123 ulp) allows
    assert not bad.ok and bad.max_error_ulps > bad.bound_ulps


def test_large_class_gradient_admits_every_order():
    """C = 32768 with label smoothing in float64: the class sums' gamma(C - 1) in the gradient."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 3.0, size=(2, 32768))
    case = Case(x=x, target=np.array([5, 32000]), reduction="sum", label_smoothing=0.05,
                upstream=np.asarray(2.0))
    import torch.nn.functional as F
    for fn in [F.cross_entropy] + [getattr(planted, n) for n in ("sum_left_to_right", "sum_float64_accumulate")]:
        for v in _verdict(fn, case, gradient=True):
            assert v.ok, f"{getattr(fn, '__name__', fn)}: {v.message}"
    bad = _verdict(planted.off_by_3e4, case, gradient=True)
    assert not all(v.ok for v in bad)
