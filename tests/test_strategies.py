"""Meta-tests of the case strategy (conformance/strategies.py), in the style of array-api-tests'
meta_tests/: every field of the frozen :class:`~conformance.modifiers.Constraints` object holds
on every drawn case, each piece of the strategy keeps to its request, and every registered
modifier's constraints hold on what it draws.

A field added to ``Constraints`` without a predicate here fails
``test_every_constraint_field_has_a_predicate``; a field no modifier sets is dead
(``test_every_constraint_field_is_used_by_a_modifier``)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance import strategies as strat
from conformance.adapters.base import Capabilities
from conformance.case import Case
from conformance.modifiers import MODIFIERS, Constraints, NothingToDraw
from conformance.spec import load_default

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

SPEC = load_default()
SIZES = SPEC.domains["sizes"]
CAPS = Capabilities()  # every feature
SETTINGS = settings(max_examples=12, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
case_with = st.composite(strat.draw_case)


def _t(case: Case) -> np.ndarray:
    return np.asarray(case.target).reshape(-1)


def _spatial(case: Case) -> tuple[int, ...]:
    return tuple(case.x.shape[2:])


#: field -> (a non-default value, the predicate every drawn case must satisfy with it)
PREDICATES = {
    "dtypes": (("bfloat16",), lambda c: c.dtype == "bfloat16"),
    "target_kinds": (("probability",), lambda c: c.target_kind == "probability"),
    "ranks": ((3,), lambda c: c.rank == 3),
    "classes": (1, lambda c: c.num_classes == 1),
    "min_classes": (5, lambda c: c.num_classes >= 5),
    "min_positions": (3, lambda c: c.positions >= 3 and c.rank >= 2),
    "shape_kind": ("chunk", lambda c: c.extra["shape_kind"] == "chunk" and c.positions in SIZES["chunk_rows"]
                   and c.num_classes <= 64),
    "long": (True, lambda c: c.extra["shape_kind"] == "long" and c.positions in SIZES["large_batch"]),
    "empty": (True, lambda c: c.positions == 0 and c.x.shape[0] == 0),
    "empty_spatial": (True, lambda c: c.x.shape[0] > 0 and 0 in _spatial(c)),
    "weight": ("positive", lambda c: c.weight is not None and bool(np.all(np.asarray(c.weight, np.float64) > 0))),
    "weight_positive_or_absent": (True, lambda c: c.weight is None
                                  or bool(np.all(np.asarray(c.weight, np.float64) > 0))),
    "smoothing": (True, lambda c: 0.0 < c.label_smoothing <= 1.0),
    "no_smoothing": (True, lambda c: c.label_smoothing == 0.0),
    "no_smoothing_unless": ("smoothing", lambda c: c.label_smoothing == 0.0),
    "all_ignored": (True, lambda c: c.target_kind == "index" and bool(np.all(_t(c) == c.ignore_index))),
    "no_ignored": (True, lambda c: c.target_kind != "index" or not bool(np.any(_t(c) == c.ignore_index))),
    "regime": ("ties", lambda c: c.regime == "ties"),
    "finite_regime": (True, lambda c: c.regime in ("ordinary", "ties", "confident")),
    "distinct_rows": (True, lambda c: c.layout != "expanded"),
    "extensions": (("softcap",), lambda c: "softcap" in c.extensions and c.target_kind == "index"),
}
#: what some fields need besides themselves to be drawable at all
COMPANIONS = {
    "all_ignored": {"target_kinds": ("index",), "min_positions": 1},
    "empty_spatial": {"ranks": (3, 4, 5)},
    "extensions": {"target_kinds": ("index",)},
    "shape_kind": {"ranks": (2,)},
    "long": {"ranks": (2,), "min_classes": 2},
}


def test_every_constraint_field_has_a_predicate():
    assert set(PREDICATES) == set(Constraints.field_names())


def test_every_constraint_field_is_used_by_a_modifier():
    used = {k for m in MODIFIERS.values() for k in m.force}
    assert used == set(Constraints.field_names())


def test_constraints_are_frozen_and_reject_unknown_names():
    con = Constraints(no_ignored=True)
    with pytest.raises(AttributeError):
        con.no_ignored = False  # type: ignore[misc]
    with pytest.raises(TypeError, match="no_ignore"):
        Constraints(no_ignore=True)  # type: ignore[call-arg]


def test_merge_lets_a_later_modifier_win():
    con = Constraints.merge([{"ranks": (2,), "no_ignored": True}, {"ranks": (3,)}])
    assert con.ranks == (3,) and con.no_ignored


@pytest.mark.parametrize("field", sorted(PREDICATES))
def test_each_constraint_holds_on_every_drawn_case(field):
    value, holds = PREDICATES[field]
    con = Constraints(**{field: value, **COMPANIONS.get(field, {})})
    caps = Capabilities(extensions=frozenset({"softcap"})) if field == "extensions" else CAPS
    req = strat.request_for(SPEC, caps, profile="default")
    seen = []

    @SETTINGS
    @given(st.data())
    def run(data):
        case = data.draw(case_with(SPEC, req, con))
        seen.append(case)
        assert holds(case), f"{field}={value!r} broken by {case.describe()}"

    run()
    assert seen


@pytest.mark.parametrize("name", list(MODIFIERS))
def test_every_modifier_constraint_holds(name):
    """What each registered modifier forces is true of what it draws (all fields it sets)."""
    mod = MODIFIERS[name]
    caps = Capabilities(extensions=frozenset(mod.needs.extensions)) if mod.needs.extensions else CAPS
    req = strat.request_for(SPEC, caps, modifiers=(name,), profile="default")
    checks = [(k, PREDICATES[k][1]) for k, v in mod.force.items() if v == PREDICATES[k][0]]
    menus = {k: v for k, v in mod.force.items() if k in ("dtypes", "target_kinds", "ranks")}

    @SETTINGS
    @given(st.data())
    def run(data):
        case = data.draw(strat.cases(SPEC, req))
        assert case.modifiers == (name,)
        for k, holds in checks:
            assert holds(case), f"{name}: {k} broken"
        assert "dtypes" not in menus or case.dtype in menus["dtypes"]
        assert "target_kinds" not in menus or case.target_kind in menus["target_kinds"]
        assert "ranks" not in menus or case.rank in menus["ranks"]
        if "classes" in mod.force:
            assert case.num_classes == mod.force["classes"]
        if "min_classes" in mod.force:
            assert case.num_classes >= mod.force["min_classes"]
        if "min_positions" in mod.force:
            assert case.positions >= mod.force["min_positions"]
        if mod.force.get("regime"):
            assert case.regime == mod.force["regime"]

    run()


def test_a_modifier_needing_an_unsupported_capability_is_never_drawn():
    req = strat.request_for(SPEC, Capabilities(features=CAPS.features - {"nonfinite"}), modifiers=("nan_logit",))
    with pytest.raises(NothingToDraw, match="nan_logit needs nonfinite"):
        strat.cases(SPEC, req).example()


def test_conflicting_constraints_leave_nothing_to_draw():
    req = strat.request_for(SPEC, CAPS)
    with pytest.raises(NothingToDraw, match="no dtype"):
        strat.allowed_menus(req, Constraints(dtypes=("float8",)))


@SETTINGS
@given(st.data())
def test_shapes_keep_to_the_menus(data):
    req = strat.request_for(SPEC, CAPS)
    shape = data.draw(strat.shapes(SPEC, req, Constraints(), req.ranks))
    assert shape.rank in req.ranks
    assert shape.P == (int(np.prod(shape.batch_shape)) if shape.batch_shape else 1)
    assert shape.kind in strat.SHAPE_KINDS
    if shape.kind == "small" and shape.rank >= 2:
        assert shape.batch_shape[0] in SIZES["batch"] and shape.C in SIZES["classes"]


@SETTINGS
@given(st.data())
def test_options_keep_to_the_spec_domains(data):
    req = strat.request_for(SPEC, CAPS, reductions=("sum",))
    opts = data.draw(strat.options(SPEC, req, Constraints(), "index", 7))
    assert opts.reduction == "sum"
    assert 0.0 <= opts.label_smoothing <= 1.0
    assert opts.weight_kind in SPEC.domains["weight"]
    assert opts.ignore_kind in SPEC.domains["ignore_index"]
    want = {"default": [-100], "inside": range(7), "outside_high": range(7, 11)}[opts.ignore_kind]
    assert opts.ignore_index in want


@SETTINGS
@given(st.data())
def test_logits_by_regime_are_what_the_regime_names(data):
    req = strat.request_for(SPEC, CAPS)
    shape = strat.Shape(rank=2, C=6, batch_shape=(3,), kind="small")
    regime = data.draw(st.sampled_from(["ordinary", "ties", "huge", "large_magnitude"]))
    lg = data.draw(strat.logits(SPEC, req, Constraints(regime=regime), "float32", shape))
    assert lg.regime == regime and lg.x.shape == (3, 6) and np.all(np.isfinite(lg.x))
    if regime == "ties":
        assert set(np.unique(lg.x)) <= {-2.0, 0.0, 0.5, 3.0}
    if regime == "ordinary":
        assert np.all(np.abs(lg.x) <= 8)


@SETTINGS
@given(st.data())
def test_probability_targets_are_rows_of_their_kind(data):
    shape = strat.Shape(rank=2, C=5, batch_shape=(4,), kind="small")
    lg = strat.Logits(np.zeros((4, 5)), "ordinary", "contiguous", False)
    y = data.draw(strat.probability_targets(shape, lg))
    assert y.shape == (4, 5)
    assert np.all(y >= -0.5) and np.all(y <= 2.0)


@SETTINGS
@given(st.data())
def test_weights_are_positive_with_at_most_one_zero(data):
    req = strat.request_for(SPEC, CAPS)
    shape = strat.Shape(rank=2, C=9, batch_shape=(2,), kind="small")
    kind = data.draw(st.sampled_from(["positive", "with_zeros"]))
    opts = strat.Options(kind, "mean", 0.0, "default", -100, None)
    w = data.draw(strat.weights(req, opts, shape))
    assert w.shape == (9,) and np.all(w <= 4.0)
    assert np.count_nonzero(w == 0) == (1 if kind == "with_zeros" else 0)
    assert np.all(w[w != 0] >= 0.05)
    assert strat.draw_weight(None, strat.request_for(SPEC, Capabilities(features=CAPS.features - {"weight"})),
                             opts, shape) is None
