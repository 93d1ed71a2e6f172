"""Transforms for the spec's metamorphic relations (``metamorphic.*.transform``).

Relations compare forward values only, so transformed cases carry no upstream gradient.

A transform takes a case and a Hypothesis ``draw`` and returns a second case plus the
permutation it applied to the positions (a function on the first call's output; the identity
when it permutes nothing), or None when the relation does not apply to that case. Which of
the two the comparison uses is the spec's ``relation``: "permuted" maps the first output
through the permutation, "equal" compares as is (conformance/checks.py).
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .case import Case, as_float64, np_dtype
from .registry import Registry, Transform


def same(a):
    """The identity mapping: what the relation "equal" uses."""
    return a


_same = same


def _identity(case: Case, draw):
    return case, _same


def _shift(case: Case, draw):
    """Add a constant to every logit of a position, a different constant per position."""
    # Powers of two keep the shift exact for every logit of moderate size.
    menu = np.array([-4.0, -1.0, 2.0, 8.0])
    P = case.positions
    if P <= 8:
        picks = draw(st.lists(st.integers(0, 3), min_size=P, max_size=P), label="shift")
    else:
        picks = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="shift_seed")).integers(0, 4, size=P)
    shifts = menu[np.asarray(picks, dtype=np.int64)].reshape(case.none_shape)
    if case.rank > 1:
        shifts = np.expand_dims(shifts, case.class_axis)
    x = as_float64(case.x) + shifts
    xq = x.astype(case.x.dtype)
    if not np.array_equal(as_float64(xq), x, equal_nan=True):
        return None  # a shift would round; the relation is then not exact
    shown = np.ravel(shifts)[:8].tolist()
    return case.copy(x=xq, purpose=f"logits + a constant per position ({shown}{' ...' if P > 8 else ''})"), _same


def _permutation(draw, n: int, label: str) -> np.ndarray:
    """A drawn permutation of range(n): element by element (shrinkable) for small n, from a
    drawn seed for large n (C reaches 131072; Hypothesis would overrun its buffer)."""
    if n <= 64:
        return np.array(draw(st.permutations(list(range(n))), label=label))
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1), label=f"{label}_seed")).permutation(n)


def _batch_perm(case: Case, draw):
    if case.rank < 2 or case.x.shape[0] < 2:
        return None
    n = case.x.shape[0]
    perm = _permutation(draw, n, "batch_permutation")
    new = case.copy(x=case.x[perm], target=np.asarray(case.target)[perm], upstream=None,
                    purpose=f"batch permuted by {perm.tolist()}")
    return new, lambda out: np.asarray(out)[perm] if np.ndim(out) else out


def _duplicate(case: Case, draw):
    if case.rank < 2:
        return None
    cat = lambda a: np.concatenate([a, a], axis=0)  # noqa: E731
    return case.copy(x=cat(case.x), target=cat(np.asarray(case.target)), upstream=None,
                     purpose="batch duplicated"), _same


def _class_perm(case: Case, draw):
    C = case.num_classes
    if C < 2:
        return None
    perm = _permutation(draw, C, "class_permutation")
    inv = np.argsort(perm)
    ax = case.class_axis
    x = np.take(case.x, perm, axis=ax)
    w = None if case.weight is None else case.weight[perm]
    ii = case.ignore_index
    if case.target_kind == "index":
        t = np.asarray(case.target).copy()
        inside = (t >= 0) & (t < C)
        t[inside] = inv[t[inside]]
        if 0 <= ii < C:
            ii = int(inv[ii])
    else:
        t = np.take(case.target, perm, axis=ax)
    return case.copy(x=x, target=t, weight=w, ignore_index=ii, purpose=f"classes permuted by {perm.tolist()}"), _same


def _scale_weights(case: Case, draw):
    if case.weight is None:
        return None
    k = draw(st.sampled_from([0.25, 2.0, 4.0]), label="weight_scale")
    w = (as_float64(case.weight) * k).astype(case.weight.dtype)
    return case.copy(weight=w, purpose=f"weight * {k}"), _same


def _remove_ignored(case: Case, draw):
    if case.rank != 2 or case.target_kind != "index":
        return None
    t = np.asarray(case.target)
    keep = t != case.ignore_index
    if keep.all() or not keep.any():
        return None
    return case.copy(x=case.x[keep], target=t[keep], upstream=None, purpose="ignored positions removed"), _same


def _one_hot(case: Case, draw):
    if case.target_kind != "index":
        return None
    t = np.asarray(case.target).reshape(-1)
    C = case.num_classes
    if np.any((t < 0) | (t >= C)) or np.any(t == case.ignore_index):
        return None
    y: np.ndarray = np.zeros((t.size, C))  # no (C, C) identity: C reaches 131072
    y[np.arange(t.size), t] = 1.0
    y = y.reshape(case.none_shape + (C,))
    y = np.moveaxis(y, -1, case.class_axis) if case.rank > 1 else y.reshape(C)
    return case.copy(target=np.ascontiguousarray(y.astype(np_dtype(case.dtype))), ignore_index=-100,
                     purpose="one-hot probability target"), _same


def _negate(case: Case, draw):
    # another call of the same shape whose gradient differs (negation is exact in every dtype)
    return case.copy(x=(-as_float64(case.x)).astype(case.x.dtype),
                     purpose="logits negated (a second call of the same shape)"), _same


def _decompose(case: Case, draw):
    if case.target_kind != "index" or case.label_smoothing != 0:
        return None
    return case.copy(purpose="nll_loss(log_softmax(x))"), _same



# linear form (specs/linear_cross_entropy.yaml): hidden states, classifier and bias move too
def _permute_hidden_rows(case: Case, draw):
    if case.linear is None or case.positions < 2:
        return None
    perm = np.array(draw(st.permutations(list(range(case.positions))), label="position_permutation"))
    lin = {**case.linear, "hidden": np.asarray(case.linear["hidden"])[perm]}
    new = case.copy(x=case.x[perm], target=np.asarray(case.target)[perm], upstream=None, linear=lin,
                    purpose=f"positions permuted by {perm.tolist()[:16]}")
    return new, lambda out: np.asarray(out)[perm] if np.ndim(out) else out


def _permute_classifier_rows(case: Case, draw):
    C = case.num_classes
    if case.linear is None or C < 2:
        return None
    perm = np.array(draw(st.permutations(list(range(C))), label="class_permutation"))
    inv = np.argsort(perm)
    t = np.asarray(case.target).copy()
    ok = (t >= 0) & (t < C)
    t[ok] = inv[t[ok]]
    ii = case.ignore_index
    if 0 <= ii < C:   # an ignored class index moves with the labels (already relabelled above)
        ii = int(inv[ii])
    b = case.linear.get("bias")
    lin = {**case.linear, "classifier": np.asarray(case.linear["classifier"])[perm],
           "bias": None if b is None else np.asarray(b)[perm]}
    return case.copy(x=case.x[:, perm], target=t, ignore_index=ii, upstream=None, linear=lin,
                     weight=None if case.weight is None else case.weight[perm],
                     purpose="classifier rows, bias, weight and labels permuted"), _same


#: ``fn(case, draw)`` -> (the transformed case, how outputs correspond), or None when the
#: transform does not apply to the case.
TRANSFORMS: Registry[Transform] = Registry("metamorphic transform", "TRANSFORMS in conformance/metamorphic.py")
TRANSFORMS.add(Transform("permute_batch", "permute the batch axis", _batch_perm, permutes_positions=True))
for _name, _doc, _fn in (
    ("identity", "the case itself", _identity),
    ("shift_logits_per_position", "add a power of two to every logit of a position, one per position", _shift),
    ("duplicate_batch", "concatenate the batch with itself", _duplicate),
    ("permute_classes", "permute classes of logits, weight and targets together", _class_perm),
    ("scale_weights", "multiply every weight by a power of two", _scale_weights),
    ("remove_ignored", "drop the ignored positions", _remove_ignored),
    ("index_to_one_hot", "replace class indices with one-hot probabilities", _one_hot),
    ("nll_loss_of_log_softmax", "call nll_loss on log_softmax instead", _decompose),
    ("negate_logits", "the same shape with every logit negated", _negate),
):
    TRANSFORMS.add(Transform(_name, _doc, _fn))
TRANSFORMS.add(Transform("permute_hidden_rows", "hidden rows and targets permuted together", _permute_hidden_rows,
                         permutes_positions=True))
TRANSFORMS.add(Transform("permute_classifier_rows", "classifier rows, bias, weight and labels permuted together",
                         _permute_classifier_rows))
