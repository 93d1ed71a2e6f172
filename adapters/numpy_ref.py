"""The NumPy adapter: an independent implementation of torch's cross_entropy in NumPy.

It is written from torch's documentation of ``F.cross_entropy`` (the spec's ``reference``)
and shares no code with the oracle, so that agreement between the two means something. It
computes in float32 for the half types and float32, in float64 for float64, with a
max-subtracted log_softmax, and returns results (and analytic gradients) in the input dtype.

It also owns the pieces of argument handling the other adapters reuse: the deprecated
``size_average``/``reduce`` mapping (:func:`effective_reduction`) and the static part of the
error contract (:func:`check_arguments`, which needs only shapes, dtypes and options).
:class:`NumpyCallableAdapter` wraps any NumPy function with F.cross_entropy's keywords.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from conformance import layouts
from conformance.adapters.base import ALL_FEATURES, Adapter, Capabilities, Result, check_unmodified, shared_memory
from conformance.case import Case

REDUCTIONS = ("none", "sum", "mean")
_BF16 = np.dtype(ml_dtypes.bfloat16)


def legacy_warning(reduction: str) -> str:
    """The UserWarning torch emits for the deprecated arguments."""
    return f"size_average and reduce args will be deprecated, please use reduction='{reduction}' instead."


def effective_reduction(reduction: str, size_average=None, reduce=None) -> str:
    """torch's mapping: either legacy argument given (not None) overrides ``reduction``."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt == _BF16


def compute_dtype(dt) -> np.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return np.dtype(np.float64) if np.dtype(dt) == np.float64 else np.dtype(np.float32)


def check_arguments(x_shape, x_dtype, target_shape, target_dtype, weight_shape, *,
                    reduction: str, ignore_index: int, label_smoothing) -> str:
    """Raise ValueError for every clause of the error contract that shapes, dtypes and options
    decide; return the path ("index" or "probability"). Target values are not looked at."""
    x_shape, target_shape = tuple(x_shape), tuple(target_shape)
    x_dtype, target_dtype = np.dtype(x_dtype), np.dtype(target_dtype)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise ValueError(f"label_smoothing must be a number, got {label_smoothing!r}") from None
    if math.isnan(eps) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {eps}")
    if len(x_shape) == 0:
        raise ValueError("input must have at least one dimension (the class axis)")
    if not _is_float(x_dtype):
        raise ValueError(f"input must be floating point, got {x_dtype}")
    C = x_shape[0 if len(x_shape) == 1 else 1]
    if weight_shape is not None and tuple(weight_shape) != (C,):
        raise ValueError(f"weight tensor should be defined either for all {C} classes or no classes "
                         f"but got weight tensor of shape: {list(weight_shape)}")
    if target_shape == x_shape:
        if not _is_float(target_dtype):
            raise ValueError(f"Expected floating point type for target with class probabilities, got {target_dtype}")
        if ignore_index >= 0:
            raise ValueError("ignore_index is not supported for floating point target")
        return "probability"
    if target_dtype.kind not in "iu":
        raise ValueError(f"expected an integer class-index target, got {target_dtype}")
    if len(x_shape) == 1:
        if target_shape not in ((), (1,)):
            raise ValueError(f"For 1D input, the target must be 0-d or have size 1, got shape {list(target_shape)}")
        return "index"
    if len(target_shape) != len(x_shape) - 1:
        raise ValueError(f"target of shape {list(target_shape)} does not fit input of shape {list(x_shape)}")
    if target_shape[0] != x_shape[0]:
        raise ValueError(f"Expected input batch_size ({x_shape[0]}) to match target batch_size ({target_shape[0]}).")
    if target_shape[1:] != x_shape[2:]:
        raise ValueError(f"size mismatch (got input: {list(x_shape)}, target: {list(target_shape)})")
    return "index"


def check_targets(target: np.ndarray, num_classes: int, ignore_index: int) -> None:
    """The data-dependent clause: every class index not ignored lies in [0, C)."""
    t = np.asarray(target).astype(np.int64).reshape(-1)
    bad = (t != ignore_index) & ((t < 0) | (t >= num_classes))
    if bad.any():
        raise ValueError(f"Target {int(t[bad][0])} is out of bounds.")


# ---------------------------------------------------------------------- layout helpers
def _to_rows(a: np.ndarray, ct) -> np.ndarray:
    """(C,) or (N, C, d...) -> (P, C) in dtype ``ct``."""
    a = np.asarray(a).astype(ct)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 1:
        return rows.reshape(shape)
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return np.moveaxis(rows.reshape(moved), -1, 1)


def _none_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def _log_softmax_rows(x: np.ndarray) -> np.ndarray:
    # A row holding +inf, NaN or only -inf gives NaN through (x - max), as torch does.
    with np.errstate(all="ignore"):
        shifted = x - np.max(x, axis=1, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """log_softmax along ``axis``, computed in float32/float64, returned in x's dtype."""
    x = np.asarray(x)
    rows = np.moveaxis(x.astype(compute_dtype(x.dtype)), axis, -1)
    flat = rows.reshape(-1, rows.shape[-1])
    out = _log_softmax_rows(flat).reshape(rows.shape)
    return np.moveaxis(out, -1, axis).astype(x.dtype)


# ---------------------------------------------------------------------- the loss
def _loss_and_gradients(x, target, weight, ignore_index, reduction, eps, upstream, want_grad):
    """Everything in the (P, C) layout: value (float, compute dtype) and gradients."""
    ct = compute_dtype(x.dtype)
    path = "probability" if tuple(target.shape) == tuple(x.shape) else "index"
    xr = _to_rows(x, ct)
    P, C = xr.shape
    w = np.ones(C, ct) if weight is None else np.asarray(weight).astype(ct).reshape(C)
    eps = ct.type(eps)
    lp = _log_softmax_rows(xr)
    grads: dict[str, np.ndarray] = {}
    if path == "index":
        t = np.asarray(target).astype(np.int64).reshape(-1)
        valid = t != ignore_index
        tc = np.where(valid, t, 0)
        wt = np.where(valid, w[tc], 0).astype(ct)
        nll = -lp[np.arange(P), tc]
        l = wt * nll
        if eps > 0:
            l = (1 - eps) * l + eps / C * -np.sum(w * lp, axis=1)
        l = np.where(valid, l, 0).astype(ct)
        den = np.sum(wt)
        if want_grad:
            p = np.exp(lp)
            a = (1 - eps) * wt + eps / C * np.sum(w)
            dl = a[:, None] * p
            dl[np.arange(P), tc] -= (1 - eps) * wt
            if eps > 0:
                dl -= eps / C * w[None, :]
            grads["input"] = dl
    else:
        y = _to_rows(target, ct)
        q = (1 - eps) * y + eps / C if eps > 0 else y
        l = -np.sum(w * q * lp, axis=1)
        den = ct.type(P)
        if want_grad:
            wq = w * q
            grads["input"] = np.exp(lp) * np.sum(wq, axis=1, keepdims=True) - wq
            grads["target"] = -(1 - eps) * w * lp
    if reduction == "none":
        value = l
        g = (np.ones(P, ct) if upstream is None else np.asarray(upstream).astype(ct).reshape(-1))[:, None]
    elif reduction == "sum":
        value, g = np.sum(l), ct.type(1)
    elif den == 0:
        # torch divides each term by den, so den = 0 gives NaN (not sum/0 = inf) and a NaN
        # gradient at every position not ignored; ignored positions keep an exact 0.
        value, g = ct.type(np.nan), ct.type(np.nan)
    else:
        value, g = np.sum(l) / den, 1 / den
    if reduction != "none" and upstream is not None:
        g = g * np.asarray(upstream).astype(ct).reshape(())
    grads = {k: (v * g).astype(ct) for k, v in grads.items()}
    if path == "index" and want_grad:
        grads["input"] = np.where(valid[:, None], grads["input"], 0).astype(ct)
    return value, grads


def cross_entropy_with_gradients(x, target, weight=None, size_average=None, ignore_index=-100,
                                 reduce=None, reduction="mean", label_smoothing=0.0, *,
                                 upstream=None, gradient=False):
    """F.cross_entropy on NumPy arrays; returns (value, {"input": ..., "target": ...})."""
    x, target = np.asarray(x), np.asarray(target)
    reduction = effective_reduction(reduction, size_average, reduce)
    path = check_arguments(x.shape, x.dtype, target.shape, target.dtype,
                           None if weight is None else np.shape(weight), reduction=reduction,
                           ignore_index=ignore_index, label_smoothing=label_smoothing)
    C = x.shape[0 if x.ndim == 1 else 1]
    if path == "index":
        check_targets(target, C, ignore_index)
    with np.errstate(all="ignore"):
        value, grads = _loss_and_gradients(x, target, weight, ignore_index, reduction,
                                           float(label_smoothing), upstream, gradient)
    value = np.asarray(value)
    value = (value.reshape(_none_shape(x.shape)) if reduction == "none" else value.reshape(())).astype(x.dtype)
    out = {"input": _from_rows(grads["input"], x.shape).astype(x.dtype)} if gradient else {}
    if gradient and "target" in grads:
        out["target"] = _from_rows(grads["target"], x.shape).astype(target.dtype)
    return value, out


def cross_entropy(x, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """F.cross_entropy on NumPy arrays (same signature, same semantics, ValueError on errors)."""
    return cross_entropy_with_gradients(x, target, weight, size_average, ignore_index, reduce,
                                        reduction, label_smoothing)[0]


def nll_loss(lp, target, weight=None, ignore_index=-100, reduction="mean"):
    """F.nll_loss on NumPy arrays: -w_t * lp_t per position, mean divided by the sum of w_t."""
    lp, target = np.asarray(lp), np.asarray(target)
    if tuple(target.shape) == tuple(lp.shape) and lp.ndim > 1:
        raise ValueError("nll_loss takes class-index targets only")
    check_arguments(lp.shape, lp.dtype, target.shape, target.dtype,
                    None if weight is None else np.shape(weight), reduction=reduction,
                    ignore_index=ignore_index, label_smoothing=0.0)
    ct = compute_dtype(lp.dtype)
    rows = _to_rows(lp, ct)
    P, C = rows.shape
    check_targets(target, C, ignore_index)
    w = np.ones(C, ct) if weight is None else np.asarray(weight).astype(ct)
    t = target.astype(np.int64).reshape(-1)
    valid = t != ignore_index
    tc = np.where(valid, t, 0)
    wt = np.where(valid, w[tc], 0).astype(ct)
    with np.errstate(all="ignore"):
        l = np.where(valid, -wt * rows[np.arange(P), tc], 0).astype(ct)
        if reduction == "none":
            return l.reshape(_none_shape(lp.shape)).astype(lp.dtype)
        value = np.sum(l) if reduction == "sum" else np.sum(l) / np.sum(wt)
    return np.asarray(value).reshape(()).astype(lp.dtype)


# ---------------------------------------------------------------------- adapters
def _inputs(case: Case) -> dict[str, np.ndarray]:
    """The arguments as views with the case's memory layout (conformance/layouts.py)."""
    return layouts.arrays(case)


def _legacy_warnings(case: Case) -> list[str]:
    kw = case.legacy or {}
    if kw.get("size_average") is None and kw.get("reduce") is None:
        return []
    effective = effective_reduction(case.reduction, kw.get("size_average"), kw.get("reduce"))
    return ["UserWarning: " + legacy_warning(effective)]


class NumpyAdapter(Adapter):
    """This module's implementation, as an adapter."""

    name = "numpy"
    framework = "numpy"
    capabilities = Capabilities(extras=frozenset({"log_softmax", "nll_loss", "forward_backward"}))

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        given = _inputs(case)
        before = {k: v.copy() for k, v in given.items()}
        kw = case.kwargs()
        kw["weight"] = given.get("weight")
        value, grads = cross_entropy_with_gradients(given["input"], given["target"], upstream=case.upstream,
                                                    gradient=gradient, **kw)
        check_unmodified(before, given)
        res = Result(value, grads, _legacy_warnings(case))
        res.shared = shared_memory(given, {"output": value, **{f"gradient[{k}]": v for k, v in grads.items()}})
        return res

    # Analytic gradients are computed with the value, so a forward's handle is its result:
    # nothing is shared between calls.
    def forward(self, case: Case, *, gradient: bool = True) -> Result:
        return self.call(case, gradient=gradient)

    def backward(self, handle: Result) -> Result:
        return handle

    def log_softmax(self, x: np.ndarray, axis: int) -> np.ndarray:
        return log_softmax(x, axis)

    def nll_loss(self, lp, target, *, weight=None, ignore_index=-100, reduction="mean"):
        return nll_loss(lp, target, weight, ignore_index, reduction)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "numpy": np.__version__}


class NumpyCallableAdapter(Adapter):
    """Any NumPy function with F.cross_entropy's keywords: ``fn(x, target, weight=...,
    ignore_index=..., reduction=..., label_smoothing=...)``. No gradients."""

    framework = "numpy"

    def __init__(self, fn: Callable, name: str, capabilities: Capabilities | None = None):
        self.fn, self.name = fn, name
        self.capabilities = capabilities or Capabilities(
            features=ALL_FEATURES - {"gradient", "gradient_target"})

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        if gradient:
            raise NotImplementedError(f"{self.name}: a plain NumPy callable has no gradients")
        # the function receives the case's own arrays (views with the case's memory layout)
        before = {k: v.copy() for k, v in _inputs(case).items()}
        given = _inputs(case)
        kw = case.kwargs()
        kw["weight"] = given.get("weight")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.fn(given["input"], given["target"], **kw)
        check_unmodified(before, given)
        res = Result(np.asarray(out), {}, [f"{w.category.__name__}: {w.message}" for w in caught])
        res.shared = shared_memory(given, {"output": out})
        return res
