"""JAX adapters: torch's cross_entropy semantics written in jax.numpy and jitted
(:class:`JaxAdapter`, builtins "jax-cpu" and "jax-gpu"), and a generic wrapper for any JAX
function with F.cross_entropy's keywords (:class:`JaxCallableAdapter`).

Jitted code cannot raise on data, so everything the error contract decides from shapes,
dtypes and options is validated eagerly in Python (ValueError, as the NumPy reference), and
an out-of-range class index becomes NaN at its position: the spec's ``invalid_target_nan``
variant. Compiled functions are cached per (shapes, dtypes, static options, gradient flag)
in memory and, where JAX allows, on disk. jax is imported lazily.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import numpy as np

from conformance.adapters.base import Adapter, Capabilities, Result
from conformance.adapters.numpy_ref import (check_arguments, effective_reduction,
                                            legacy_warning)
from conformance.case import Case

_EXTRAS = frozenset({"log_softmax", "nll_loss"})


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("CE_CONFORMANCE_JAX_CACHE", os.path.join(base, "ce-conformance", "jax"))


def configure_jax() -> bool:
    """float64 on, persistent compilation cache on (unless the user set one); False without jax."""
    try:
        import jax
    except ImportError:
        return False
    jax.config.update("jax_enable_x64", True)
    try:  # the disk cache only saves time: any failure here is harmless
        if not jax.config.jax_compilation_cache_dir:
            path = _cache_dir()
            os.makedirs(path, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    except Exception:  # noqa: BLE001
        pass
    return True


def _jax_unavailable(device: str) -> str | None:
    try:
        import jax
    except ImportError:
        return "jax is not installed"
    if device != "cpu":
        try:
            if not jax.devices(device):
                raise RuntimeError
        except RuntimeError:
            return f"no JAX {device.upper()} device visible"
    return None


def _compute_dtype(dtype):
    import jax.numpy as jnp
    return jnp.float64 if np.dtype(dtype) == np.float64 else jnp.float32


def _rows(a, ct):
    """(C,) or (N, C, d...) -> (P, C) in dtype ``ct`` (shapes are static under jit)."""
    import jax.numpy as jnp
    a = a.astype(ct)
    return a.reshape(1, -1) if a.ndim == 1 else jnp.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _pad(a: np.ndarray, rows: int, value) -> np.ndarray:
    """``a`` with its first axis padded to ``rows`` with ``value``."""
    out = np.full((rows,) + a.shape[1:], value, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


def _none_shape(shape) -> tuple[int, ...]:
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def _bucket(P: int) -> int:
    """Positions are padded up to a power of two (at least 8), so that the many shapes a
    property-based run draws share a few compiled functions."""
    return max(8, 1 << max(0, int(P - 1).bit_length()))


def _padded_loss(xr, target, w, ignore_index, eps, p_real, row_ok, *, path: str, reduction: str):
    """The loss on canonical rows (Pb, C), padded rows masked out by ``row_ok``; traced under
    jit. 'none' returns every row's loss (the caller slices and reshapes)."""
    import jax
    import jax.numpy as jnp

    out_dtype = xr.dtype
    ct = _compute_dtype(xr.dtype)
    x = xr.astype(ct)
    C = x.shape[1]
    w = w.astype(ct)
    eps = eps.astype(ct)
    lp = jax.nn.log_softmax(x, axis=1)
    if path == "index":
        t = target.astype(jnp.int64)
        valid = (t != ignore_index) & row_ok
        bad = valid & ((t < 0) | (t >= C))
        tc = jnp.where(valid & ~bad, t, 0)
        wt = jnp.where(valid, w[tc], 0)
        raw = wt * -jnp.take_along_axis(lp, tc[:, None], axis=1)[:, 0]
        # eps is a runtime value: the smoothing term is selected, not multiplied by 0, so that
        # eps = 0 with a -inf logit stays finite (no 0 * inf)
        raw = jnp.where(eps > 0, (1 - eps) * raw + eps / C * -jnp.sum(w * lp, axis=1), raw)
        # An out-of-range index cannot raise under jit: its position (and so sum and mean)
        # becomes NaN, gradient included.
        l = jnp.where(valid, raw * jnp.where(bad, jnp.nan, 1), 0)
        den = jnp.sum(jnp.where(bad, jnp.nan, wt))
    else:
        y = target.astype(ct)
        q = jnp.where(eps > 0, (1 - eps) * y + eps / C, y)
        l = jnp.where(row_ok, -jnp.sum(w * q * lp, axis=1), 0)
        den = p_real.astype(ct)
    if reduction == "none":
        out = l
    elif reduction == "sum":
        out = jnp.sum(l)
    else:  # den = 0 gives NaN as in torch, which divides each term by den (not inf)
        out = jnp.sum(l) / den + jnp.where(den == 0, jnp.nan, 0)
    return out.astype(out_dtype)


class JaxAdapter(Adapter):
    """This module's jitted implementation, on JAX's "cpu" or "gpu" platform."""

    framework = "jax"
    capabilities = Capabilities(raises_on_invalid=False, variants=frozenset({"invalid_target_nan"}),
                                extras=_EXTRAS)

    def __init__(self, name: str = "jax-cpu", device: str = "cpu"):
        self.name, self.device = name, device
        self.cache_hits = 0
        self.cache_misses = 0
        self._compiled: dict[tuple, Callable] = {}
        configure_jax()

    def unavailable(self) -> str | None:
        return _jax_unavailable(self.device)

    def _put(self, a):
        import jax
        return None if a is None else jax.device_put(np.asarray(a), jax.devices(self.device)[0])

    def _compiled_for(self, key: tuple, path: str, reduction: str, gradient: bool):
        fn = self._compiled.get(key)
        if fn is not None:
            self.cache_hits += 1
            return fn
        self.cache_misses += 1
        import jax

        def forward(x, target, weight, ignore_index, eps, p_real, row_ok):
            return _padded_loss(x, target, weight, ignore_index, eps, p_real, row_ok, path=path,
                                reduction=reduction)

        def with_gradient(x, target, weight, ignore_index, eps, p_real, row_ok, g):
            rest = (weight, ignore_index, eps, p_real, row_ok)
            if path == "probability":
                out, vjp = jax.vjp(lambda a, b: forward(a, b, *rest), x, target)
                gx, gy = vjp(g)
                return out, {"input": gx, "target": gy}
            out, vjp = jax.vjp(lambda a: forward(a, target, *rest), x)
            return out, {"input": vjp(g)[0]}

        fn = jax.jit(with_gradient if gradient else forward)
        self._compiled[key] = fn
        return fn

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        legacy = case.legacy or {}
        reduction = effective_reduction(case.reduction, legacy.get("size_average"), legacy.get("reduce"))
        path = check_arguments(case.x.shape, case.x.dtype, case.target.shape, case.target.dtype,
                               None if case.weight is None else case.weight.shape, reduction=reduction,
                               ignore_index=case.ignore_index, label_smoothing=case.label_smoothing)
        C, P = case.num_classes, case.positions
        Pb = _bucket(P)
        xr = _pad(case.to_rows(case.x), Pb, 0)
        if path == "index":
            tr = _pad(np.asarray(case.target).astype(np.int64).reshape(-1), Pb, case.ignore_index)
        else:
            tr = _pad(case.to_rows(case.target), Pb, 0)
        w = case.weight if case.weight is not None else np.ones(C, dtype=case.x.dtype)
        row_ok = np.arange(Pb) < P
        key = (self.device, Pb, C, str(case.x.dtype), str(tr.dtype), str(w.dtype), path, reduction, gradient)
        fn = self._compiled_for(key, path, reduction, gradient)
        args = [self._put(xr), self._put(tr), self._put(w), np.int64(case.ignore_index),
                np.float64(case.label_smoothing), np.float64(P), self._put(row_ok)]
        warned = ["UserWarning: " + legacy_warning(reduction)] if any(v is not None for v in legacy.values()) else []

        def value(out):
            out = np.asarray(out)
            return out[:P].reshape(case.none_shape) if reduction == "none" else out

        if not gradient:
            return Result(value(fn(*args)), {}, warned)
        if reduction == "none":
            g = np.zeros(Pb, dtype=case.x.dtype)
            g[:P] = (np.asarray(case.upstream).reshape(-1) if case.upstream is not None else 1)
        else:
            g = (np.asarray(case.upstream).reshape(()) if case.upstream is not None else np.ones(())).astype(case.x.dtype)
        out, grads = fn(*args, self._put(g))
        back = {k: case.from_canonical(np.asarray(v)[:P], "elementwise") for k, v in grads.items()}
        return Result(value(out), back, warned)

    # ------------------------------------------------------------------ decomposition extras
    def log_softmax(self, x: np.ndarray, axis: int) -> np.ndarray:
        import jax
        x = np.asarray(x)
        xs = self._put(x)
        return np.asarray(jax.nn.log_softmax(xs.astype(_compute_dtype(x.dtype)), axis=axis).astype(x.dtype))

    def nll_loss(self, lp, target, *, weight=None, ignore_index=-100, reduction="mean"):
        import jax.numpy as jnp
        lp, target = np.asarray(lp), np.asarray(target)
        if target.shape == lp.shape and lp.ndim > 1:
            raise ValueError("nll_loss takes class-index targets only")
        check_arguments(lp.shape, lp.dtype, target.shape, target.dtype,
                        None if weight is None else np.shape(weight), reduction=reduction,
                        ignore_index=ignore_index, label_smoothing=0.0)
        ct = _compute_dtype(lp.dtype)
        rows = _rows(self._put(lp), ct)
        P, C = rows.shape
        w = jnp.ones(C, ct) if weight is None else self._put(weight).astype(ct)
        t = self._put(target).reshape(-1).astype(jnp.int64)
        valid = t != ignore_index
        bad = valid & ((t < 0) | (t >= C))
        tc = jnp.where(valid & ~bad, t, 0)
        wt = jnp.where(bad, jnp.nan, jnp.where(valid, w[tc], 0))
        l = jnp.where(valid, -wt * jnp.take_along_axis(rows, tc[:, None], axis=1)[:, 0], 0)
        if reduction == "none":
            return np.asarray(l.reshape(_none_shape(lp.shape)).astype(lp.dtype))
        out = jnp.sum(l) if reduction == "sum" else jnp.sum(l) / jnp.sum(wt)
        return np.asarray(out.astype(lp.dtype))

    def info(self) -> dict[str, Any]:
        d = super().info()
        try:
            import jax
            d["jax"] = jax.__version__
            d["device_name"] = str(jax.devices(self.device)[0].device_kind)
        except Exception:  # noqa: BLE001  (info must never fail)
            pass
        return d


def jax_cpu() -> JaxAdapter:
    return JaxAdapter("jax-cpu", "cpu")


def jax_gpu() -> JaxAdapter:
    adapter = JaxAdapter("jax-gpu", "gpu")
    adapter.cpu_twin = "jax-cpu"  # for the cross-device agreement check
    return adapter


def cross_entropy(x, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """This module's implementation as a plain JAX function with F.cross_entropy's signature
    (eager validation, NaN for out-of-range indices); differentiable with jax.vjp."""
    import jax.numpy as jnp
    x, target = jnp.asarray(x), jnp.asarray(target)
    reduction = effective_reduction(reduction, size_average, reduce)
    path = check_arguments(x.shape, x.dtype, target.shape, target.dtype,
                           None if weight is None else jnp.shape(weight), reduction=reduction,
                           ignore_index=ignore_index, label_smoothing=label_smoothing)
    C = x.shape[0 if x.ndim == 1 else 1]
    xr = x.reshape(1, -1) if x.ndim == 1 else jnp.moveaxis(x, 1, -1).reshape(-1, C)
    P = xr.shape[0]
    tr = (target.reshape(-1) if path == "index" else
          target.reshape(1, -1) if x.ndim == 1 else jnp.moveaxis(target, 1, -1).reshape(-1, C))
    w = jnp.ones(C, x.dtype) if weight is None else jnp.asarray(weight)
    out = _padded_loss(xr, tr, w, jnp.int64(ignore_index), jnp.float64(label_smoothing), jnp.float64(P),
                       jnp.ones(P, bool), path=path, reduction=reduction)
    return out.reshape(_none_shape(x.shape)) if reduction == "none" else out


class JaxCallableAdapter(Adapter):
    """Any JAX function ``fn(x, target, weight=, ignore_index=, reduction=, label_smoothing=
    [, size_average=, reduce=])`` on jax arrays; gradients through jax.vjp."""

    framework = "jax"

    def __init__(self, fn: Callable, name: str, device: str = "cpu",
                 capabilities: Capabilities | None = None):
        self.fn, self.name, self.device = fn, name, device
        self.capabilities = capabilities or Capabilities(raises_on_invalid=False)
        configure_jax()

    def unavailable(self) -> str | None:
        return _jax_unavailable(self.device)

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        import jax
        dev = jax.devices(self.device)[0]
        put = lambda a: None if a is None else jax.device_put(np.asarray(a), dev)  # noqa: E731
        x, target = put(case.x), put(case.target)
        kw = case.kwargs()
        kw["weight"] = put(case.weight)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if not gradient:
                out, grads = self.fn(x, target, **kw), {}
            else:
                prob = case.target_kind == "probability"
                primals = (x, target) if prob else (x,)
                f = (lambda a, b: self.fn(a, b, **kw)) if prob else (lambda a: self.fn(a, target, **kw))
                out, vjp = jax.vjp(f, *primals)
                g = (put(np.asarray(case.upstream).reshape(out.shape)).astype(out.dtype)
                     if case.upstream is not None else jax.numpy.ones_like(out))
                got = vjp(g)
                grads = dict(zip(("input", "target"), (np.asarray(v) for v in got)))
        return Result(np.asarray(out), grads, [f"{w.category.__name__}: {w.message}" for w in caught])
