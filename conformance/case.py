"""The unit of work that flows through the pipeline: one call's inputs and options.

A :class:`Case` holds arrays already quantised to the dtype under test (bfloat16 through
``ml_dtypes``), so the oracle sees exactly the values the implementation sees. It also knows
how to map itself onto the specs' canonical ``(P, C)`` layout and back, and how to describe
itself for reports and reproduction scripts.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy)
import numpy as np

DTYPES = ("float16", "bfloat16", "float32", "float64")


def np_dtype(name: str) -> np.dtype:
    """NumPy dtype for a spec dtype name (bfloat16 comes from ml_dtypes)."""
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dt) -> str:
    dt = np.dtype(dt)
    return "bfloat16" if dt == np.dtype(ml_dtypes.bfloat16) else dt.name


def as_float64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


_UNSET = "unset"


@dataclass
class Case:
    """Inputs and options of one cross-entropy call, in the dtype under test."""

    x: np.ndarray
    target: np.ndarray
    weight: np.ndarray | None = None
    reduction: str = "mean"
    ignore_index: int = -100
    label_smoothing: float = 0.0
    #: Deprecated arguments as given ({"size_average": bool|None, "reduce": bool|None}), or None.
    legacy: dict[str, Any] | None = None
    #: Upstream gradient for the backward pass: shape of the output (after the deprecated
    #: argument mapping), dtype of x; None means 1.
    upstream: np.ndarray | None = None
    regime: str = "ordinary"
    modifiers: tuple[str, ...] = ()
    #: Why the case exists beyond the draw (special case id, error clause, relation).
    purpose: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: LLM-kernel options of the spec's ``extensions:`` that are on ({"softcap": 30.0,
    #: "z_loss": 1e-4, "shift": True, ...}); empty for plain F.cross_entropy.
    extensions: dict[str, Any] = field(default_factory=dict)
    #: Memory layout of the arrays the adapter receives (conformance/layouts.py). The arrays
    #: above stay plain logical values: the adapter builds the views with this layout when it
    #: converts the case (layouts.arrays), once, after every mutation and transform.
    layout: str = "contiguous"
    #: The linear form (specs/linear_cross_entropy.yaml): {"hidden": (P, H), "classifier": (C, H),
    #: "bias": (C,) or None} in the dtype under test; ``x`` then holds the logits rounded to it.
    linear: dict[str, Any] | None = None

    # ------------------------------------------------------------------ derived facts
    @property
    def dtype(self) -> str:
        return dtype_name(self.x.dtype)

    @property
    def target_kind(self) -> str:
        return "probability" if tuple(self.target.shape) == tuple(self.x.shape) else "index"

    @property
    def unbatched(self) -> bool:
        return self.x.ndim == 1

    @property
    def class_axis(self) -> int:
        return 0 if self.x.ndim == 1 else 1

    @property
    def num_classes(self) -> int:
        return int(self.x.shape[self.class_axis])

    @property
    def rank(self) -> int:
        return self.x.ndim

    @property
    def none_shape(self) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(self.x.shape) if i != self.class_axis)

    @property
    def positions(self) -> int:
        return int(np.prod(self.none_shape, dtype=np.int64)) if self.none_shape else 1

    def effective_reduction(self, deprecated_rules) -> str:
        """The reduction after the deprecated size_average/reduce mapping of the spec."""
        # torch only lets the legacy arguments override when one of them is given (not None)
        if not self.legacy or all(v is None for v in self.legacy.values()):
            return self.reduction
        given = {k: (True if v is None else bool(v)) for k, v in self.legacy.items()}
        for rule in deprecated_rules:
            if all(given.get(k, True) == v for k, v in rule["when"].items()):
                return rule["reduction"]
        return self.reduction

    @property
    def output_shape_for(self):
        return lambda reduction: self.none_shape if reduction == "none" else ()

    # ------------------------------------------------------------------ canonical layout
    def canonical(self) -> dict[str, Any]:
        """float64 arrays in the specs' (P, C) layout: the oracle's inputs."""
        C = self.num_classes
        x = np.moveaxis(as_float64(self.x), self.class_axis, -1).reshape(-1, C)
        P = x.shape[0]
        env: dict[str, Any] = {"x": x, "C": np.float64(C), "P": np.float64(P),
                               "eps": np.float64(self.label_smoothing),
                               "ignore_index": np.float64(self.ignore_index)}
        env["w"] = as_float64(self.weight).reshape(-1) if self.weight is not None else np.ones(C)
        if self.target_kind == "probability":
            env["y"] = np.moveaxis(as_float64(self.target), self.class_axis, -1).reshape(-1, C)
        else:
            env["t"] = np.asarray(self.target).astype(np.int64).reshape(-1, 1)
            if self.extensions.get("shift"):
                env["t"] = shift_labels(env["t"], self.none_shape, self.ignore_index)
        for name, value in self.extensions.items():
            if name != "shift" and not isinstance(value, bool):
                env[name] = np.float64(value)
        return env

    def to_rows(self, a: np.ndarray) -> np.ndarray:
        """An input-shaped array (logits, probabilities) as (P, C) rows, keeping its dtype."""
        return np.ascontiguousarray(np.moveaxis(np.asarray(a), self.class_axis, -1).reshape(-1, self.num_classes))

    def from_canonical(self, a: np.ndarray, what: str) -> np.ndarray:
        """Inverse of :meth:`canonical` for a per-position ('none') or per-element array."""
        a = np.asarray(a)
        if what == "none":
            return a.reshape(self.none_shape)
        moved = [s for i, s in enumerate(self.x.shape) if i != self.class_axis] + [self.num_classes]
        return np.moveaxis(a.reshape(moved), -1, self.class_axis)

    def upstream_canonical(self, reduction: str) -> Any:
        """The upstream gradient ``g`` of the formulas: (P, 1) for 'none', else a scalar."""
        if self.upstream is None:
            return np.float64(1.0)
        if reduction != "none":
            up = as_float64(self.upstream).reshape(-1)
            return np.float64(up[0]) if up.size == 1 else np.float64(1.0)
        return as_float64(self.upstream).reshape(-1, 1)

    # ------------------------------------------------------------------ presentation
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments in F.cross_entropy's convention (arrays stay NumPy)."""
        kw: dict[str, Any] = {"weight": self.weight, "ignore_index": self.ignore_index,
                              "reduction": self.reduction, "label_smoothing": self.label_smoothing}
        if self.legacy:
            kw.update(self.legacy)
        return kw

    def copy(self, **changes) -> Case:
        return replace(self, **changes)

    def describe(self, small: int = 64) -> dict[str, Any]:
        """A JSON-able summary; arrays with at most ``small`` elements are listed in full."""

        def arr(a):
            if a is None:
                return None
            out = {"shape": list(a.shape),
                   "dtype": dtype_name(a.dtype) if a.dtype.kind == "f" or a.dtype.kind == "V" else str(a.dtype)}
            if a.size <= small:
                vals = as_float64(a).tolist() if a.dtype.kind in "fV" else np.asarray(a).tolist()
                out["values"] = _jsonable(vals)
            else:
                f = as_float64(a)
                fin = f[np.isfinite(f)]
                out["summary"] = {"min": float(fin.min()) if fin.size else None,
                                  "max": float(fin.max()) if fin.size else None,
                                  "nonfinite": int(f.size - fin.size)}
            return out

        d = {"dtype": self.dtype, "input": arr(self.x), "target": arr(self.target),
             "target_kind": self.target_kind, "weight": arr(self.weight), "reduction": self.reduction,
             "ignore_index": self.ignore_index, "label_smoothing": _jsonable(self.label_smoothing),
             "regime": self.regime}
        if self.layout != "contiguous":
            from . import layouts
            views = layouts.arrays(self)
            d["layout"] = {"name": self.layout, "input": layouts.describe(views["input"]),
                           "target": layouts.describe(views["target"])}
        if self.legacy:
            d["legacy"] = dict(self.legacy)
        if self.extensions:
            d["extensions"] = {k: _jsonable(v) for k, v in self.extensions.items()}
        if self.linear is not None:
            d["linear"] = {k: arr(v) if v is not None else None for k, v in self.linear.items()}
        if self.modifiers:
            d["modifiers"] = list(self.modifiers)
        if self.purpose:
            d["purpose"] = self.purpose
        return d

    def features(self) -> dict[str, str]:
        """Coverage coordinates of this case (dtype × rank × target kind × options × regime)."""
        out = {
            "dtype": self.dtype,
            "rank": str(self.rank),
            "target": self.target_kind,
            "weight": ("none" if self.weight is None else
                       "with_zeros" if np.any(as_float64(self.weight) == 0) else "positive"),
            "ignore_index": ("default" if self.ignore_index == -100 else
                             "inside" if 0 <= self.ignore_index < self.num_classes else "outside"),
            "label_smoothing": "0" if self.label_smoothing == 0 else ("1" if self.label_smoothing == 1 else "(0,1)"),
            "reduction": self.reduction,
            "regime": self.regime,
            "layout": self.layout,
        }
        if self.extensions:
            out["extensions"] = "+".join(sorted(self.extensions))
        return out


def shift_labels(t: np.ndarray, none_shape: tuple[int, ...], ignore_index: int) -> np.ndarray:
    """Class indices (P, 1) shifted one step along the sequence (the last batch axis):
    position i takes the label of i + 1, and the last position of each sequence is ignored."""
    if not none_shape or t.size == 0:
        return np.full_like(t, ignore_index)
    a = t.reshape(none_shape)
    out = np.full_like(a, ignore_index)
    out[..., :-1] = a[..., 1:]
    return out.reshape(-1, 1)


#: The label transforms a spec's ``extensions.*.transform`` may name.
SHIFTS = {"shift_labels": shift_labels}


def _jsonable(v):
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, list):
        return [_jsonable(i) for i in v]
    return v
