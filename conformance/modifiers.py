"""Strategy modifiers: the vocabulary of a special case's ``make:`` list in the spec.

A modifier is a set of :class:`Constraints` on the draw (which dtypes, ranks, shapes, options
and value regimes conformance/strategies.py may pick) plus, optionally, ``fn(draw, env)``
applied to the finished float64 arrays (``env``: ``x`` (P, C) logits, ``t`` index targets or
``y`` probability targets, ``P``, ``C``). The constraints of a request's modifiers are merged
into one frozen :class:`Constraints` object, which every piece of the case strategy reads.

Registered in ``MODIFIERS`` (a conformance/registry.py registry: name, doc, function, needs);
a modifier that needs a capability (``needs.features``) is never drawn for an adapter that
declares it unsupported.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .registry import Modifier, Needs, Registry


class NothingToDraw(Exception):
    """The adapter's declared capabilities leave nothing this request could draw."""


@dataclass(frozen=True)
class Constraints:
    """What the modifiers of one request force on the draw; the defaults constrain nothing.

    Menus (``dtypes``, ``target_kinds``, ``ranks``) narrow the request's; a ``None`` leaves it.
    Every field is read by conformance/strategies.py (tests/test_strategies.py checks each)."""

    #: menus the draw is restricted to
    dtypes: tuple[str, ...] | None = None
    target_kinds: tuple[str, ...] | None = None
    ranks: tuple[int, ...] | None = None
    #: shape: an exact class count, lower bounds, or a shape kind (see strategies.SHAPE_KINDS)
    classes: int | None = None
    min_classes: int = 1
    min_positions: int = 0
    shape_kind: str | None = None
    long: bool = False
    empty: bool = False
    empty_spatial: bool = False
    #: options
    weight: str | None = None
    weight_positive_or_absent: bool = False
    smoothing: bool = False
    no_smoothing: bool = False
    #: no smoothing unless this modifier is also in the request
    no_smoothing_unless: str | None = None
    all_ignored: bool = False
    no_ignored: bool = False
    #: values: a fixed regime, or only the finite ordinary regimes
    regime: str | None = None
    finite_regime: bool = False
    #: no stride-0 (expanded) layout: every row distinct
    distinct_rows: bool = False
    #: spec extensions switched on (the adapter must declare them)
    extensions: tuple[str, ...] = ()

    @classmethod
    def merge(cls, forces: Iterable[Mapping[str, Any]]) -> Constraints:
        """One object from several modifiers' constraints; a later modifier's value wins."""
        merged: dict[str, Any] = {}
        for force in forces:
            merged.update(force)
        return cls(**merged)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _rows(draw, P, label):
    """Positions to edit: at least one, drawn so that Hypothesis can shrink them."""
    k = draw(st.integers(1, max(1, min(P, 3))), label=f"{label}_count")
    return sorted(set(draw(st.lists(st.integers(0, P - 1), min_size=k, max_size=k), label=f"{label}_rows")))


def _off_target_class(t, C, row):
    return (int(t[row]) + 1) % C if t is not None else 0


def _mod_neg_inf_off_target(draw, env):
    x, t, C, P = env["x"], env.get("t"), env["C"], env["P"]
    for r in _rows(draw, P, "neg_inf"):
        x[r, _off_target_class(t, C, r)] = -np.inf


def _mod_neg_inf_at_target(draw, env):
    x, t, P = env["x"], env["t"], env["P"]
    for r in _rows(draw, P, "neg_inf_target"):
        x[r, int(t[r])] = -np.inf


def _mod_zero_probability_there(draw, env):
    x, y = env["x"], env["y"]
    y[np.isneginf(x)] = 0.0


def _mod_value(value):
    def apply(draw, env):
        x, P, C = env["x"], env["P"], env["C"]
        for r in _rows(draw, P, "nonfinite"):
            x[r, draw(st.integers(0, C - 1), label="nonfinite_class")] = value
    return apply


def _mod_all_neg_inf_row(draw, env):
    x, P = env["x"], env["P"]
    for r in _rows(draw, P, "all_neg_inf"):
        x[r, :] = -np.inf


MODIFIERS: Registry[Modifier] = Registry("strategy modifier", "MODIFIERS in conformance/modifiers.py")


def _modifier(name: str, doc: str, force: dict, fn: Callable | None = None, features: tuple[str, ...] = ()) -> None:
    Constraints(**force)  # an unknown constraint name fails at import, not at draw time
    MODIFIERS.add(Modifier(name, doc, fn, Needs(features=features, extensions=tuple(force.get("extensions", ()))),
                           force=force))


def constraints_of(modifiers: Iterable[str], features: Iterable[str]) -> tuple[Constraints, list[Callable]]:
    """The merged constraints and the array functions of a request's modifiers.

    Raises :class:`NothingToDraw` naming the capability when a modifier needs one the adapter
    declares unsupported: it is never drawn."""
    have = set(features)
    forces, applies = [], []
    for m in modifiers:
        mod = MODIFIERS[m]
        missing = [f for f in mod.needs.features if f not in have]
        if missing:
            raise NothingToDraw(f"{m} needs {', '.join(missing)}, which the adapter declares unsupported")
        forces.append(mod.force)
        if mod.fn:
            applies.append(mod.fn)
    return Constraints.merge(forces), applies


_modifier("all_ignored", "every position's target is ignore_index",
          {"target_kinds": ("index",), "all_ignored": True, "min_positions": 1}, features=("ignore_index",))
_modifier("empty_batch", "N = 0 (an empty batch)", {"empty": True}, features=("empty",))
_modifier("single_class", "C = 1, no ignored position, a positive weight if any",
          {"classes": 1, "no_ignored": True, "min_positions": 1, "weight_positive_or_absent": True})
_modifier("unbatched", "an unbatched (C,) input", {"ranks": (1,), "no_ignored": True})
_modifier("weighted", "a positive weight", {"weight": "positive"}, features=("weight",))
_modifier("smoothing", "label smoothing in (0, 1], positive weights",
          {"smoothing": True, "weight_positive_or_absent": True}, features=("label_smoothing",))
_modifier("neg_inf_off_target", "-inf at a non-target class of some positions",
          {"min_classes": 2, "no_smoothing_unless": "smoothing", "min_positions": 1,
           "weight_positive_or_absent": True, "no_ignored": True, "finite_regime": True},
          _mod_neg_inf_off_target, features=("nonfinite",))
_modifier("neg_inf_at_target", "-inf at the target class of some positions",
          {"target_kinds": ("index",), "min_classes": 2, "no_smoothing": True, "min_positions": 1,
           "weight_positive_or_absent": True, "no_ignored": True, "finite_regime": True},
          _mod_neg_inf_at_target, features=("nonfinite",))
_modifier("zero_probability_there", "probability 0 where the logit is -inf",
          {"target_kinds": ("probability",), "no_smoothing": True}, _mod_zero_probability_there)
_modifier("pos_inf", "+inf at some logits", {"min_positions": 1, "no_ignored": True, "finite_regime": True},
          _mod_value(np.inf), features=("nonfinite",))
_modifier("nan_logit", "NaN at some logits", {"min_positions": 1, "no_ignored": True, "finite_regime": True},
          _mod_value(np.nan), features=("nonfinite",))
_modifier("all_neg_inf_row", "a position whose logits are all -inf",
          {"min_positions": 1, "no_ignored": True, "finite_regime": True}, _mod_all_neg_inf_row,
          features=("nonfinite",))
# positive weights: an expanded (stride-0) batch has every target alike, and a zero weight
# there would make the mean 0/0 (special_cases.half_precision_long_mean expects it finite)
_modifier("long_reduction", "a long batch (thousands of positions) in rank 2, none of them ignored, "
          "a positive weight if any",
          {"ranks": (2,), "long": True, "no_ignored": True, "min_classes": 2, "weight_positive_or_absent": True})
_modifier("half_precision", "float16 or bfloat16", {"dtypes": ("float16", "bfloat16")})
_modifier("huge_logits", "logits near 1e30 (float32/float64)", {"dtypes": ("float32", "float64"), "regime": "huge"})
_modifier("vocab_blocks", "C at a block boundary (2^k +- 1) or a real vocabulary size, 1-2 rows, the maximum logit "
          "in the last block, class ids >= 32768 where C allows (domains.sizes)",
          {"ranks": (2,), "shape_kind": "vocab", "no_ignored": True, "weight_positive_or_absent": True,
           "finite_regime": True})
# rows distinct (no stride-0 batch): a mean of per-chunk means equals the mean when every
# row's loss is the same
_modifier("chunk_rows", "rows around chunk sizes (domains.sizes.chunk_rows) at small C, rows distinct",
          {"ranks": (2,), "shape_kind": "chunk", "no_ignored": True, "weight_positive_or_absent": True,
           "min_classes": 2, "distinct_rows": True})
_modifier("spatial_equals_classes", "an (N, C, d) input whose spatial size d equals C",
          {"ranks": (3,), "shape_kind": "spatial_equals_classes", "no_ignored": True,
           "weight_positive_or_absent": True, "min_classes": 2, "min_positions": 1})
_modifier("empty_spatial", "a zero-size spatial axis with N > 0", {"ranks": (3, 4, 5), "empty_spatial": True},
          features=("empty",))
# many rounding decisions per example for tolerances.unbiased (conformance/bias.py): one
# loss per row, each a log-probability of its own (no smoothing, weight or ignored rows),
# rows distinct (no broadcast batch entry), so one example gives dozens of samples
_modifier("distinct_rows", "64 or more rows (domains.sizes.rounding_rows) of ordinary logits, index targets, "
          "no weight, no smoothing, nothing ignored, no broadcast batch entries",
          {"ranks": (2,), "target_kinds": ("index",), "shape_kind": "rows", "no_ignored": True,
           "weight": "absent", "no_smoothing": True, "regime": "ordinary", "min_classes": 2,
           "distinct_rows": True})
_modifier("bfloat16", "bfloat16 only", {"dtypes": ("bfloat16",)})
_modifier("float16", "float16 only", {"dtypes": ("float16",)})
for _eid in ("shift", "logit_scale", "softcap", "z_loss", "normalizer", "return_lse"):
    _modifier(f"with_{_eid}", f"extension {_eid} on", {"target_kinds": ("index",), "extensions": (_eid,)})
