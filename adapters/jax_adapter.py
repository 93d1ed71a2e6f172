"""JAX adapters: torch's cross_entropy semantics written in jax.numpy and jitted
(:class:`JaxAdapter`, builtins "jax-cpu" and "jax-gpu"), and a generic wrapper for any JAX
function with F.cross_entropy's keywords (:class:`JaxCallableAdapter`).

Jitted code cannot raise on data, so everything the error contract decides from shapes,
dtypes and options is validated eagerly in Python (ValueError, as the NumPy reference), and
an out-of-range class index becomes NaN at its position: the spec's ``invalid_target_nan``
variant. jax is imported lazily.

Compilation is what JAX costs here, so the jitted core is shaped to compile rarely: one
function per (positions bucket, classes bucket, compute dtype, target path, gradient flag).
Positions are padded to a power of two, classes to a power of two with masked columns
(``-inf`` logits, zero weights: exact zeros in every sum), half-precision inputs are widened
to float32 in NumPy before the call and the result rounded back once in NumPy (what
``astype`` under jit did), and reduction, ``ignore_index``, ``label_smoothing`` and the real
P and C are runtime values: all three reductions come out of one call. ``cache_hits`` and
``cache_misses`` count calls served by an already compiled function.

The persistent compilation cache (what makes a second run start warm) is a documented,
bounded folder: ``$CE_CONFORMANCE_JAX_CACHE`` (default ``$XDG_CACHE_HOME/ce-conformance/jax``,
i.e. ``~/.cache/ce-conformance/jax-lru``), at most ``$CE_CONFORMANCE_JAX_CACHE_MB`` MiB (default
256; JAX deletes the least recently used entries past it); ``CE_CONFORMANCE_JAX_CACHE=off``
turns it off; without the ``filelock`` package (which JAX needs to bound it) it is off. A
cache folder set by the user's own JAX configuration is left alone.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from conformance.adapters.base import Adapter, Capabilities, Result
from conformance.adapters.numpy_ref import check_arguments, effective_reduction, legacy_warning
from conformance.case import Case

_EXTRAS = frozenset({"log_softmax", "nll_loss"})


#: Default bound of the persistent compilation cache, in MiB (``$CE_CONFORMANCE_JAX_CACHE_MB``).
CACHE_MB = 256


def _cache_dir() -> str | None:
    """The persistent compilation cache folder, or None when turned off."""
    env = os.environ.get("CE_CONFORMANCE_JAX_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    # not ".../jax": an unbounded cache of an earlier version there has no access-time files,
    # which the bounded (least recently used) cache needs to evict
    return env or os.path.join(base, "ce-conformance", "jax-lru")


def _cache_bytes() -> int:
    try:
        return max(0, int(float(os.environ.get("CE_CONFORMANCE_JAX_CACHE_MB", CACHE_MB)) * 2**20))
    except ValueError:
        return CACHE_MB * 2**20


def configure_jax() -> bool:
    """float64 on; the persistent compilation cache in its documented, bounded folder (unless
    the user configured one or turned it off: module docstring); False without jax."""
    try:
        import jax
    except ImportError:
        return False
    jax.config.update("jax_enable_x64", True)
    try:  # the disk cache only saves time: any failure here is harmless
        if not jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]  # a config flag
            path = _cache_dir()
            if path is None or importlib.util.find_spec("filelock") is None:
                return True
            os.makedirs(path, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", path)
            jax.config.update("jax_compilation_cache_max_size", _cache_bytes())
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


def _pad(a: np.ndarray, rows: int, value) -> np.ndarray:
    """``a`` with its first axis padded to ``rows`` with ``value``."""
    out = np.full((rows,) + a.shape[1:], value, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


def _none_shape(shape) -> tuple[int, ...]:
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def _bucket(P: int) -> int:
    """Positions are padded up to an odd power of two (8, 32, 128, 512, ...), so that the
    many shapes a property-based run draws share a few compiled functions (padding costs far
    less than a compilation at the sizes a run draws)."""
    b = max(3, int(P - 1).bit_length())
    return 1 << (b + 1 - (b & 1))


def _class_bucket(C: int) -> int:
    """Classes are padded up to a power of two (at least 8) too; the padded columns are masked."""
    return max(8, 1 << max(0, int(C - 1).bit_length()))


def _pad2(a: np.ndarray, rows: int, cols: int, value) -> np.ndarray:
    out = np.full((rows, cols), value, dtype=a.dtype)
    out[:a.shape[0], :a.shape[1]] = a
    return out


def _masked_log_softmax(x, col_ok):
    """log_softmax over the real columns of padded rows; 0 (not -inf) in the padded columns,
    so that no product with a zero weight or probability becomes NaN (value and gradient)."""
    import jax
    import jax.numpy as jnp

    lp = jax.nn.log_softmax(jnp.where(col_ok[None, :], x, -jnp.inf), axis=1)
    return jnp.where(col_ok[None, :], lp, 0)


def _padded_losses(x, target, w, ignore_index, eps, p_real, c_real, row_ok, col_ok, *, path: str):
    """Per-row losses of canonical padded rows (Pb, Cb) in the compute dtype, padded rows and
    columns masked out, and the mean's denominator; traced under jit. The sum and the mean
    are taken by the caller of this function (one compiled function serves all reductions)."""
    import jax.numpy as jnp

    ct = x.dtype
    eps = eps.astype(ct)
    C = c_real.astype(ct)
    lp = _masked_log_softmax(x, col_ok)
    if path == "index":
        t = target.astype(jnp.int64)
        valid = (t != ignore_index) & row_ok
        bad = valid & ((t < 0) | (t >= c_real))
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
        q = jnp.where(eps > 0, (1 - eps) * target + jnp.where(col_ok, eps / C, 0), target)
        l = jnp.where(row_ok, -jnp.sum(w * q * lp, axis=1), 0)
        den = p_real.astype(ct)
    return l, den


def _reduce(l, den):
    """(sum, mean) of per-row losses; den = 0 gives NaN as in torch, which divides each term
    by den (not inf)."""
    import jax.numpy as jnp

    s = jnp.sum(l)
    return s, s / den + jnp.where(den == 0, jnp.nan, 0)


def _padded_loss(xr, target, w, ignore_index, eps, p_real, row_ok, *, path: str, reduction: str):
    """The loss of unpadded canonical rows (P, C) in their own dtype (the plain function
    :func:`cross_entropy` below); 'none' returns every row's loss."""
    import jax.numpy as jnp

    out_dtype = xr.dtype
    ct = _compute_dtype(xr.dtype)
    C = xr.shape[1]
    tgt = target if path == "index" else target.astype(ct)
    l, den = _padded_losses(xr.astype(ct), tgt, w.astype(ct), ignore_index, eps, p_real, jnp.int64(C), row_ok,
                            jnp.ones(C, bool), path=path)
    s, m = _reduce(l, den)
    return {"none": l, "sum": s, "mean": m}[reduction].astype(out_dtype)


_MODES = {"none": 0, "sum": 1, "mean": 2}


def _np_compute_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


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

    def _jit(self, key: tuple, build: Callable[[], Callable]) -> Callable:
        """The compiled function for ``key`` (built on a miss); counts hits and misses."""
        fn = self._compiled.get(key)
        if fn is not None:
            self.cache_hits += 1
            return fn
        self.cache_misses += 1
        import jax

        fn = self._compiled[key] = jax.jit(build())
        return fn

    def _compiled_for(self, key: tuple, path: str):
        """One function for the value (all three reductions) and the gradients: a forward-only
        call passes a zero cotangent, so value and gradient calls share one compilation."""
        def build():
            import jax

            def with_gradient(x, target, weight, ignore_index, eps, p_real, c_real, row_ok, col_ok, g, mode):
                def rows(a, b):
                    return _padded_losses(a, b, weight, ignore_index, eps, p_real, c_real, row_ok, col_ok,
                                          path=path)
                # the mean's denominator does not depend on the logits (nor on probability
                # targets): its gradient is the per-row one scaled by 1/den
                if path == "probability":
                    l, vjp, den = jax.vjp(rows, x, target, has_aux=True)
                else:
                    l, vjp, den = jax.vjp(lambda a: rows(a, target), x, has_aux=True)
                grads = vjp(jax.numpy.where(mode == 2, g / den, g))
                s, m = _reduce(l, den)
                return (l, s, m), dict(zip(("input", "target"), grads))

            return with_gradient

        return self._jit(key, build)

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        legacy = case.legacy or {}
        reduction = effective_reduction(case.reduction, legacy.get("size_average"), legacy.get("reduce"))
        path = check_arguments(case.x.shape, case.x.dtype, case.target.shape, case.target.dtype,
                               None if case.weight is None else case.weight.shape, reduction=reduction,
                               ignore_index=case.ignore_index, label_smoothing=case.label_smoothing)
        C, P = case.num_classes, case.positions
        Pb, Cb = _bucket(P), _class_bucket(C)
        out_dtype = case.x.dtype
        ct = _np_compute_dtype(out_dtype)  # half precision widened exactly; rounded back once below
        xr = _pad2(case.to_rows(case.x).astype(ct), Pb, Cb, 0)
        if path == "index":
            tr = _pad(np.asarray(case.target).astype(np.int64).reshape(-1), Pb, case.ignore_index)
        else:
            tr = _pad2(case.to_rows(case.target).astype(ct), Pb, Cb, 0)
        w = np.zeros(Cb, ct)
        w[:C] = case.weight if case.weight is not None else 1
        row_ok, col_ok = np.arange(Pb) < P, np.arange(Cb) < C
        fn = self._compiled_for((self.device, Pb, Cb, ct.name, path), path)
        args = [self._put(xr), self._put(tr), self._put(w), np.int64(case.ignore_index),
                np.float64(case.label_smoothing), np.float64(P), np.int64(C), self._put(row_ok), self._put(col_ok)]
        warned = ["UserWarning: " + legacy_warning(reduction)] if any(v is not None for v in legacy.values()) else []

        def value(outs):
            with np.errstate(over="ignore"):  # rounding to half precision may overflow to inf
                out = np.asarray(outs[_MODES[reduction]]).astype(out_dtype)
            return out[:P].reshape(case.none_shape) if reduction == "none" else out

        g = np.zeros(Pb, dtype=ct)
        if not gradient:
            return Result(value(fn(*args, self._put(g), np.int64(0))[0]), {}, warned)
        if reduction == "none":
            g[:P] = (np.asarray(case.upstream).reshape(-1) if case.upstream is not None else 1)
        else:
            g[:P] = np.asarray(case.upstream).reshape(()) if case.upstream is not None else 1
        outs, grads = fn(*args, self._put(g), np.int64(_MODES[reduction]))
        with np.errstate(over="ignore"):
            back = {k: case.from_canonical(np.asarray(v)[:P, :C].astype(out_dtype), "elementwise")
                    for k, v in grads.items()}
        return Result(value(outs), back, warned)

    # ------------------------------------------------------------------ decomposition extras
    def log_softmax(self, x: np.ndarray, axis: int) -> np.ndarray:
        x = np.asarray(x)
        ct = _np_compute_dtype(x.dtype)
        moved = np.moveaxis(x, axis, -1)
        C = moved.shape[-1] if moved.ndim else 1
        rows = moved.reshape(-1, C).astype(ct)
        P = rows.shape[0]
        Pb, Cb = _bucket(P), _class_bucket(C)

        def build():
            return _masked_log_softmax

        fn = self._jit((self.device, "log_softmax", Pb, Cb, ct.name), build)
        out = np.asarray(fn(self._put(_pad2(rows, Pb, Cb, 0)), self._put(np.arange(Cb) < C)))
        with np.errstate(over="ignore"):
            out = out[:P, :C].astype(x.dtype)
        return np.moveaxis(out.reshape(moved.shape), -1, axis)

    def nll_loss(self, lp, target, *, weight=None, ignore_index=-100, reduction="mean"):
        lp, target = np.asarray(lp), np.asarray(target)
        if target.shape == lp.shape and lp.ndim > 1:
            raise ValueError("nll_loss takes class-index targets only")
        check_arguments(lp.shape, lp.dtype, target.shape, target.dtype,
                        None if weight is None else np.shape(weight), reduction=reduction,
                        ignore_index=ignore_index, label_smoothing=0.0)
        ct = _np_compute_dtype(lp.dtype)
        rows = (lp.reshape(1, -1) if lp.ndim == 1 else np.moveaxis(lp, 1, -1).reshape(-1, lp.shape[1])).astype(ct)
        P, C = rows.shape
        Pb, Cb = _bucket(P), _class_bucket(C)
        w = np.zeros(Cb, ct)
        w[:C] = 1 if weight is None else np.asarray(weight).astype(ct)
        t = _pad(target.reshape(-1).astype(np.int64), Pb, ignore_index)

        def build():
            import jax.numpy as jnp

            def nll(rows, t, w, ignore_index, c_real, row_ok):
                valid = (t != ignore_index) & row_ok
                bad = valid & ((t < 0) | (t >= c_real))
                tc = jnp.where(valid & ~bad, t, 0)
                wt = jnp.where(bad, jnp.nan, jnp.where(valid, w[tc], 0))
                l = jnp.where(valid, -wt * jnp.take_along_axis(rows, tc[:, None], axis=1)[:, 0], 0)
                return l, jnp.sum(l), jnp.sum(l) / jnp.sum(wt)
            return nll

        fn = self._jit((self.device, "nll_loss", Pb, Cb, ct.name), build)
        outs = fn(self._put(_pad2(rows, Pb, Cb, 0)), self._put(t), self._put(w), np.int64(ignore_index),
                  np.int64(C), self._put(np.arange(Pb) < P))
        with np.errstate(over="ignore"):
            out = np.asarray(outs[_MODES[reduction]]).astype(lp.dtype)
        return out[:P].reshape(_none_shape(lp.shape)) if reduction == "none" else out

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
                g = (jax.device_put(np.asarray(case.upstream).reshape(out.shape), dev).astype(out.dtype)
                     if case.upstream is not None else jax.numpy.ones_like(out))
                got = vjp(g)
                grads = dict(zip(("input", "target"), (np.asarray(v) for v in got)))
        return Result(np.asarray(out), grads, [f"{w.category.__name__}: {w.message}" for w in caught])
