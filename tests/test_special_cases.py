"""The spec's special cases state exact outcomes (`expect`); the spec's own formulas must give
them for every input the case's modifiers can draw. A failure here is a bug in the spec (or
in a modifier), not in an adapter."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance import strategies as strat
from conformance.adapters.base import Capabilities
from conformance.checks import spec_outcome_errors
from conformance.oracle import Oracle
from conformance.spec import load_default

SPEC = load_default()
ORACLE = Oracle(SPEC)


@pytest.mark.parametrize("sid", sorted(SPEC.special_cases))
def test_special_case_outcome_follows_from_the_formulas(sid):
    sc = SPEC.special_cases[sid]
    reds = tuple(r for r in sc.expect if r in ("none", "sum", "mean")) or None
    caps = Capabilities(extensions=frozenset(SPEC.extensions) | {"return_z_loss"})  # extension cases too
    req = strat.request_for(SPEC, caps, target_kinds=(sc.path,) if sc.path else None,
                            reductions=reds, modifiers=sc.make)

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        case = data.draw(strat.cases(SPEC, req), label="case")
        ev = ORACLE.evaluate(case, gradients="gradient" in sc.expect)
        errors = spec_outcome_errors(sc, case, ev)
        assert not errors, f"{sid}: {errors} for {case.describe()}"

    check()


def test_an_outcome_that_does_not_hold_is_reported():
    sc = SPEC.special_cases["all_ignored"]
    wrong = type(sc)(sc.id, sc.make, sc.path, {"mean": "zero"})
    req = strat.request_for(SPEC, Capabilities(), target_kinds=("index",), reductions=("mean",), modifiers=sc.make)

    @settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        case = data.draw(strat.cases(SPEC, req))
        errs = spec_outcome_errors(wrong, case, ORACLE.evaluate(case, gradients=False))
        assert len(errs) == 1 and errs[0].startswith("mean is not zero: ")
        assert np.isnan(ORACLE.evaluate(case, gradients=False).value)

    check()
