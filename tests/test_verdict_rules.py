"""Meta-tests of the verdict rules (conformance/compare.py), in the style of array-api-tests'
meta_tests/: each rule is exercised on hand-built arrays whose verdict is known, at the edge
where it flips, so that a change to a rule fails here and not only somewhere downstream.

Rules: dtype and shape first; a finite exact value admits a finite answer within the bound
plus the final rounding and the smallest normal (flush to zero); overflow to inf of the same
sign where the neighbourhood passes the largest finite; NaN only for NaN; inf only for the
same inf; the reported element and the one-line message."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from conformance.compare import Judge, elementwise_ok, failure_message, max_finite, reported_index, ulp
from conformance.spec import load_default

SPEC = load_default()
JUDGE = Judge(SPEC)
U32 = SPEC.tolerances.dtypes["float32"].u
TINY32 = float(np.finfo(np.float32).smallest_normal)


def _compare(actual, expected, bound=0.0, dtype="float32", **kw):
    a = np.asarray(actual, dtype=np.float32 if dtype == "float32" else ml_dtypes.bfloat16 if dtype == "bfloat16"
                   else np.float16 if dtype == "float16" else np.float64)
    return JUDGE.compare(a, np.asarray(expected, dtype=np.float64), np.asarray(bound), dtype, what="loss",
                         clause="forward.value", **kw)


def test_allowed_is_bound_plus_final_rounding_plus_smallest_normal():
    e = np.array([1.0, -3.0, 0.0])
    got = JUDGE.allowed(e, np.array([0.5, 0.0, 0.0]), "float32")
    want = np.array([0.5, 0.0, 0.0]) + U32 * np.abs(e) + 0.5 * ulp(e, "float32") + TINY32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("inside", [True, False])
def test_finite_values_flip_exactly_at_the_allowed_error(inside):
    e = np.array([1.0])
    allowed = JUDGE.allowed(e, np.array([1e-3]), "float32")
    a = e + allowed * (0.999 if inside else 1.001)
    assert elementwise_ok(a, e, allowed, "float32")[0] == inside


def test_flush_to_zero_of_a_subnormal_result_is_admitted():
    e = np.array([TINY32 / 4])  # subnormal in float32
    assert bool(elementwise_ok(np.array([0.0]), e, JUDGE.allowed(e, np.zeros(1), "float32"), "float32")[0])
    # but not a normal result read as zero
    e = np.array([TINY32 * 4])
    assert not bool(elementwise_ok(np.array([0.0]), e, JUDGE.allowed(e, np.zeros(1), "float32"), "float32")[0])


def test_overflow_to_same_signed_inf_only_near_the_largest_finite():
    big = max_finite("float16")
    near = np.array([big - 1.0, -(big - 1.0)])
    allowed = JUDGE.allowed(near, np.zeros(2), "float16")
    assert elementwise_ok(np.array([math.inf, -math.inf]), near, allowed, "float16").tolist() == [True, True]
    assert elementwise_ok(np.array([-math.inf, math.inf]), near, allowed, "float16").tolist() == [False, False]
    far = np.array([100.0])
    assert not bool(elementwise_ok(np.array([math.inf]), far, JUDGE.allowed(far, np.zeros(1), "float16"), "float16")[0])


def test_nan_exact_wants_nan_and_nothing_else():
    e = np.array([math.nan, math.nan, math.nan])
    ok = elementwise_ok(np.array([math.nan, 0.0, math.inf]), e, np.full(3, np.inf), "float32")
    assert ok.tolist() == [True, False, False]


def test_inf_exact_wants_the_same_inf_not_the_largest_finite():
    e = np.array([math.inf, -math.inf, math.inf])
    a = np.array([math.inf, math.inf, max_finite("float32")])
    assert elementwise_ok(a, e, np.full(3, np.inf), "float32").tolist() == [True, False, False]


def test_a_nan_answer_never_passes_a_finite_exact_value():
    e = np.array([2.0])
    assert not bool(elementwise_ok(np.array([math.nan]), e, np.array([np.inf]), "float32")[0])


def test_dtype_then_shape_are_judged_before_values():
    v = JUDGE.compare(np.zeros(3, np.float64), np.zeros(3), np.zeros(3), "float32", what="loss", clause="c")
    assert not v.ok and v.clause == "c.dtype" and v.message == "loss.dtype=float64, but should be float32"
    v = JUDGE.compare(np.zeros(3, np.int64), np.zeros(3), np.zeros(3), "float32", what="loss", clause="c")
    assert not v.ok and v.clause == "c.dtype" and "loss.dtype=int64" in v.message
    v = _compare(np.zeros((3, 1)), np.zeros(3))
    assert not v.ok and v.clause == "forward.value.shape" and v.message == "loss.shape=(3, 1), but should be (3,)"


def test_the_first_wrong_element_is_reported_in_c_order():
    ok = np.array([[True, True], [False, False]])
    assert reported_index(ok, np.zeros((2, 2)), np.ones((2, 2), bool)) == (1, 0)


def test_a_passing_verdict_reports_the_largest_error_among_finite_elements():
    ok = np.ones(4, bool)
    ulps = np.array([1.0, 7.0, np.inf, 3.0])
    finite = np.array([True, True, False, True])
    assert reported_index(ok, ulps, finite) == (1,)
    assert reported_index(ok, ulps, np.zeros(4, bool)) is None
    assert reported_index(np.ones(0, bool), np.zeros(0), np.zeros(0, bool)) is None


def test_value_message_names_index_values_ulps_and_count():
    e = np.array([1.0, 2.0, 3.0])
    a = e.copy()
    a[1] += 1e-3
    v = _compare(a, e)
    assert not v.ok and v.worst_index == (1,)
    step = float(ulp(np.array([2.0]), "float32")[0])
    assert v.max_error_ulps == pytest.approx(abs(float(np.float32(2.001)) - 2.0) / step)
    assert v.message.startswith(f"loss at index [1] = {float(np.float32(2.001))!r}, expected 2.0: error ")
    assert v.message.endswith(f"> bound {v.bound_ulps:.3g} ulp of float32 (1 of 3 elements wrong)")


def test_nonfinite_messages_say_what_the_spec_says():
    v = _compare([0.0], [math.nan])
    assert v.message == "loss at index [0] = 0.0, but the spec says nan (1 of 1 elements wrong)"
    v = _compare(math.inf, 5.0)
    assert v.message == "loss = inf, but the exact value 5.0 is finite in float32 (1 of 1 elements wrong)"


def test_unspecified_elements_are_not_judged():
    v = _compare([9.0, 1.0], [1.0, 1.0], unspecified=np.array([True, False]))
    assert v.ok
    v = _compare([9.0, 1.0], [1.0, 1.0], unspecified=np.array([False, True]))
    assert not v.ok and v.worst_index == (0,)


def test_overflowing_magnitude_admits_a_non_finite_answer_there_only():
    """linear.tolerance.magnitudes: where a matmul's sum of |terms| passes the accumulation
    dtype's largest finite number, inf of either sign or NaN is admitted; a finite answer is
    still held to its bound, and elsewhere nothing changes."""
    big = max_finite("float32")
    exact = [-2.2e41, 5.0]
    mag = [1e42, 10.0]
    assert JUDGE.accumulation_max("float32") == big
    assert JUDGE.accumulation_max("float16") == big       # float16 may accumulate in float32
    assert JUDGE.accumulation_max("float64") == max_finite("float64")
    for answer in ([math.inf, 5.0], [-math.inf, 5.0], [math.nan, 5.0]):
        assert _compare(answer, exact, magnitude=mag).ok, answer
    # without the magnitudes only the ordinary overflow rule applies: the same-signed inf
    assert _compare([-math.inf, 5.0], exact).ok
    assert not _compare([math.inf, 5.0], exact).ok
    assert not _compare([math.nan, 5.0], exact).ok
    assert not _compare([1.0, 5.0], exact, magnitude=mag).ok           # finite and wrong
    assert not _compare([-math.inf, math.nan], exact, magnitude=mag).ok  # NaN where the sum fits
    assert not _compare([math.inf, 5.0], exact, magnitude=[big * 0.5, 10.0]).ok   # below the range


def test_failure_message_is_one_line_for_every_rule():
    from conformance.compare import Verdict
    v = Verdict(False, "loss", "c", worst_index=(2,), expected="nan", actual=1.0)
    assert failure_message(v, "loss", "float32", 1, 1, 4) == \
        "loss at index [2] = 1.0, but the spec says nan (1 of 4 elements wrong)"
