"""Error mutations: the vocabulary of an error clause's ``make:`` in the spec.

A mutation turns a valid drawn case into one the implementation MUST reject (a class index
>= C, a weight of the wrong length, smoothing outside [0, 1], ...). ``fn(case, draw)`` returns
the mutated case, or None when the mutation does not apply to that case (the engine draws
again). Registered in ``MUTATIONS`` (a conformance/registry.py registry); ``needs`` declares
what a case must have, and ``data_validation`` the mutations only a check of the data values
can see (an adapter that declares it cannot raise on data values is not asked them).
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from .case import Case
from .registry import Entry, Needs, Registry


def _replace_target_value(value_of_C):
    def mutate(case: Case, draw) -> Case | None:
        if case.target_kind != "index" or case.positions == 0:
            return None
        t = np.array(case.target, dtype=np.int64, copy=True)
        flat = t.reshape(-1)
        pos = draw(st.integers(0, flat.size - 1), label="bad_position")
        bad = value_of_C(case.num_classes, case.ignore_index)
        flat[pos] = bad
        return case.copy(target=t.reshape(case.target.shape), purpose=f"target {bad} at position {pos}")
    return mutate


def _set(**changes):
    def mutate(case: Case, draw) -> Case | None:
        return case.copy(**changes, purpose=", ".join(f"{k}={v!r}" for k, v in changes.items()))
    return mutate


def _weight_wrong_length(case: Case, draw):
    C = case.num_classes
    n = draw(st.sampled_from([C + 1, max(C - 1, 0) if C > 1 else C + 2]), label="weight_length")
    return case.copy(weight=np.ones(n, dtype=case.x.dtype), purpose=f"weight of length {n} for C={C}")


def _weight_wrong_rank(case: Case, draw):
    C = case.num_classes
    return case.copy(weight=np.ones((C, 2), dtype=case.x.dtype), purpose=f"weight of shape ({C}, 2)")


def _batch_size_mismatch(case: Case, draw):
    if case.rank < 2 or case.target_kind != "index":
        return None
    t = np.asarray(case.target)
    t2 = np.concatenate([t, t[:1] if t.shape[0] else np.zeros((1,) + t.shape[1:], dtype=t.dtype)], axis=0)
    return case.copy(target=t2, upstream=None, purpose=f"target batch {t2.shape[0]} for input batch {t.shape[0]}")


def _spatial_size_mismatch(case: Case, draw):
    if case.rank < 3 or case.target_kind != "index":
        return None
    t = np.asarray(case.target)
    t2 = np.concatenate([t, np.zeros(t.shape[:1] + (1,) + t.shape[2:], dtype=t.dtype)], axis=1)
    return case.copy(target=t2, upstream=None, purpose=f"target shape {t2.shape} for input {case.x.shape}")


def _prob_with_ignore(case: Case, draw):
    if case.target_kind != "probability":
        return None
    ii = draw(st.integers(0, case.num_classes - 1), label="ignore_index")
    return case.copy(ignore_index=ii, purpose=f"probability target with ignore_index={ii}")


def _index_float(case: Case, draw):
    if case.target_kind != "index" or case.rank < 2:
        return None
    return case.copy(target=np.asarray(case.target).astype(np.float32), purpose="class indices as float32")


def _softcap_nonpositive(case: Case, draw):
    if case.target_kind != "index":
        return None
    cap = draw(st.sampled_from([0.0, -1.0, -30.0]), label="softcap")
    return case.copy(extensions={**case.extensions, "softcap": cap}, purpose=f"softcap={cap!r}")


# linear form (specs/linear_cross_entropy.yaml)
def _classifier_hidden_mismatch(case: Case, draw):
    if case.linear is None:
        return None
    W = np.asarray(case.linear["classifier"])
    extra = np.ones((W.shape[0], 1), dtype=W.dtype)
    return case.copy(linear={**case.linear, "classifier": np.concatenate([W, extra], axis=1)},
                     purpose=f"classifier of shape {(W.shape[0], W.shape[1] + 1)} for hidden size {W.shape[1]}")


def _bias_wrong_length(case: Case, draw):
    if case.linear is None:
        return None
    C = case.num_classes
    n = draw(st.sampled_from([C + 1] + ([C - 1] if C > 1 else [])), label="bias_length")
    return case.copy(linear={**case.linear, "bias": np.ones(n, dtype=case.x.dtype)},
                     purpose=f"bias of length {n} for C={C}")


#: ``fn(case, draw)`` -> the mutated case, or None when the mutation does not apply to it.
MUTATIONS: Registry[Entry] = Registry("error mutation", "MUTATIONS in conformance/mutations.py")
_INDEX = ("index",)
for _name, _doc, _fn, _needs in (
    ("target_at_least_C", "a class index >= C", _replace_target_value(lambda C, ii: C if C != ii else C + 1),
     Needs(target_kinds=_INDEX, data_validation=True)),
    ("target_negative_not_ignored", "a negative class index other than ignore_index",
     _replace_target_value(lambda C, ii: -2 if ii != -2 else -3), Needs(target_kinds=_INDEX, data_validation=True)),
    ("label_smoothing_above_one", "label_smoothing = 1.5", _set(label_smoothing=1.5),
     Needs(features=("label_smoothing",))),
    ("label_smoothing_negative", "label_smoothing = -0.1", _set(label_smoothing=-0.1),
     Needs(features=("label_smoothing",))),
    ("label_smoothing_nan", "label_smoothing = NaN", _set(label_smoothing=math.nan),
     Needs(features=("label_smoothing",))),
    ("weight_wrong_length", "a weight whose length is not C", _weight_wrong_length, Needs(features=("weight",))),
    ("weight_wrong_rank", "a 2-D weight", _weight_wrong_rank, Needs(features=("weight",))),
    ("batch_size_mismatch", "target batch size differs from the input's", _batch_size_mismatch,
     Needs(target_kinds=_INDEX, ranks=(2, 3, 4, 5))),
    ("spatial_size_mismatch", "target spatial size differs from the input's", _spatial_size_mismatch,
     Needs(target_kinds=_INDEX, ranks=(3, 4, 5))),
    ("probability_target_with_ignore_index", "ignore_index >= 0 with probability targets", _prob_with_ignore,
     Needs(target_kinds=("probability",), features=("ignore_index", "probability_target"))),
    ("index_target_float_dtype", "class indices given as float32", _index_float,
     Needs(target_kinds=_INDEX, ranks=(2, 3, 4, 5))),
    ("reduction_unknown", "reduction='average'", _set(reduction="average"), Needs()),
    ("softcap_nonpositive", "softcap <= 0 (extension softcap)", _softcap_nonpositive,
     Needs(target_kinds=_INDEX, extensions=("softcap",))),
    ("classifier_hidden_mismatch", "a classifier whose hidden size differs from the hidden states'",
     _classifier_hidden_mismatch, Needs(target_kinds=_INDEX)),
    ("bias_wrong_length", "a bias whose length is not C", _bias_wrong_length,
     Needs(target_kinds=_INDEX, features=("linear_bias",))),
):
    MUTATIONS.add(Entry(_name, _doc, _fn, _needs))
