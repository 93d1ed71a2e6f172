"""Stage 5: judge an implementation's output against the oracle's exact value.

The allowed error comes from the spec's ``tolerances`` section: per-position error scales
(formulas) times the dtype's unit roundoff and multipliers, plus what sums over classes and
over positions may lose in ANY order (gamma(n) of the accumulation dtype, so that a
left-to-right loop is as welcome as a pairwise tree), pushed through the same reduction
formula as the value itself, so that a tiny loss from a confident row and a large mean are
both judged fairly. The derivation is in specs/README.md. Where the exact value overflows
the output dtype, inf is the right answer. Every verdict carries the error in ULPs of the
output dtype and the bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from . import chunked
from .case import Case, as_float64, dtype_name, np_dtype
from .oracle import Evaluation
from .spec import Spec, roundoff_dtypes

#: (mantissa bits, smallest normal exponent) per dtype, for ULP arithmetic.
_FORMAT = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126), "float64": (52, -1022)}


def max_finite(dtype: str) -> float:
    return float(ml_dtypes.finfo(np_dtype(dtype)).max)


def ulp(value: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing of ``dtype`` at |value| (the subnormal spacing below the normal range)."""
    mant, emin = _FORMAT[dtype]
    v = np.abs(np.asarray(value, dtype=np.float64))
    with np.errstate(all="ignore"):
        e = np.floor(np.log2(np.where(v > 0, v, 1.0)))
    e = np.maximum(np.where(np.isfinite(e), e, emin), emin)
    return np.ldexp(1.0, (e - mant).astype(np.int64))


@dataclass
class Verdict:
    """The judgement of one compared array."""

    ok: bool
    what: str                      # "value", "gradient[input]", ...
    clause: str                    # spec clause the comparison enforces
    message: str = ""
    expected: Any = None
    actual: Any = None
    max_error_ulps: float = 0.0
    bound_ulps: float = 0.0
    worst_index: tuple | None = None
    #: error/bound per compared element (a sample), for the accuracy plots.
    ratios: list[float] = field(default_factory=list)
    ulps: list[float] = field(default_factory=list)
    #: (lower neighbour of the exact value, signed error in half-ulps) of the elements the
    #: rounding-bias rule counts (tolerances.unbiased, conformance/bias.py): loss values
    #: compared with an ``internal`` bound, one per ulp interval.
    signed: list[tuple[float, float]] = field(default_factory=list)


def _scalar(a) -> Any:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        v = float(a)
        return v if math.isfinite(v) else repr(v)
    return None


class Judge:
    """Tolerance rules of one spec, applied to oracle evaluations."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.tol = spec.tolerances

    # ------------------------------------------------------------------ bounds
    @staticmethod
    def gamma_unit(t, n_max: float) -> float:
        """gamma per term: gamma(n) = n * u_acc / (1 - n * u_acc) <= n * this for every n <= n_max.

        ``u_acc`` is the unit roundoff of the accumulation dtype the spec allows (a row's
        ``u_acc``; its own ``u`` when it gives none)."""
        ua = float(getattr(t, "extra", {}).get("u_acc", t.u))
        return ua / (1.0 - n_max * ua) if n_max * ua < 1.0 else math.inf

    @staticmethod
    def _finite(a) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return np.where(np.isfinite(a), a, 0.0)

    def value_bound(self, ev: Evaluation, dtype: str) -> np.ndarray:
        """Per output element: the per-position error pushed through the reduction formula,
        plus what summing the positions in any order may lose (specs/README.md)."""
        t = self.tol.dtypes[dtype]
        env = ev.env
        path = self.spec.paths[ev.path]
        formula = ev.formulas.get("value") or path.reductions[ev.reduction]
        P, C = float(env["P"]), float(env["C"])
        gam = self.gamma_unit(t, max(P, C))
        if ev.chunks is not None:   # row chunks (conformance/chunked.py): per position, chunk by chunk
            per = self._chunk_bounds(ev, dtype)["value"]
        else:
            per = self._position_bound(env, t, gam)
        with np.errstate(all="ignore"):
            bound = np.abs(np.asarray(formula.evaluate(dict(env, l=per)), dtype=np.float64))
            if ev.reduction != "none" and ev.path != "elementwise" and P > 1:
                # any order of the P-term sum: gamma(P - 1) * sum|l| (Higham, Thm 4.1 / recursive sum)
                l_abs = np.abs(self._finite(env["l"]))
                red = np.abs(np.asarray(formula.evaluate(dict(env, l=l_abs)), dtype=np.float64))
                bound = bound + t.k_reduce * gam * (P - 1) * red
                if "den" in formula.names:
                    # the denominator is itself a P-term sum (of positive weights): relative error gamma(P - 1)
                    bound = bound + t.k_reduce * gam * (P - 1) * np.abs(self._finite(ev.value))
        bound = np.where(np.isfinite(bound), bound, 0.0)
        return self._shape_like(bound, ev.value, ev)

    def _position_bound(self, env: dict, t, gam: float) -> np.ndarray:
        """A position's loss error: the spec's scale and accumulate terms, the extensions' and
        the linear form's logits error (before the reduction formula)."""
        with np.errstate(all="ignore"):
            per = t.k_forward * t.u * self._finite(self.tol.scale.evaluate(env))
            acc = getattr(self.tol, "accumulate", None)
            if acc is not None:
                per = per + gam * self._finite(acc.evaluate(env))
            if "ext_scale" in env:  # the spec's extensions: their own terms (conformance/oracle.py)
                per = (per + t.k_forward * t.u * self._finite(env["ext_scale"])
                       + gam * self._finite(env["ext_accumulate"]))
            if self.spec.linear is not None:  # the logits' own error (conformance/linear.py)
                per = per + self.spec.linear.forward_bound(env, t, self)
        return per

    def internal_bound(self, ev: Evaluation, case: Case) -> np.ndarray | None:
        """What float32 internal math may err on the loss (the float32 row of the bound), for
        the rounding-bias rule (tolerances.unbiased); None where the rule does not apply:
        another dtype or path, label smoothing, extensions (a loss of several rounded terms:
        torch forms them from half-precision log-probabilities, so one rounding does not
        decide the side)."""
        rule = self.tol.unbiased
        if (not rule or case.dtype not in rule["dtypes"] or ev.path not in rule.get("paths", (ev.path,))
                or case.label_smoothing != 0 or case.extensions or "float32" not in self.tol.dtypes):
            return None
        return self.value_bound(ev, "float32")

    def gradient_bound(self, ev: Evaluation, wrt: str, dtype: str, case: Case) -> np.ndarray:
        if self.spec.linear is not None and wrt != "input":  # hidden, classifier, bias (conformance/linear.py)
            if ev.chunks is not None:   # row chunks: per-row bounds concatenated, sums over positions summed
                return self._chunk_bounds(ev, dtype)["gradients"][wrt]
            return self.spec.linear.gradient_bound(self, ev, wrt, dtype, case)
        t = self.tol.dtypes[dtype]
        genv = ev.gradient_envs[wrt]
        grad = self.spec.paths[ev.path].gradients[wrt]
        formula = ev.formulas.get(wrt) or grad.reductions[ev.reduction]
        target = wrt == "target"
        rule = self.tol.gscale_target if (target and self.tol.gscale_target is not None) else self.tol.gscale
        acc = getattr(self.tol, "gaccumulate_target" if target else "gaccumulate", None)
        P, C = float(genv["P"]), float(genv["C"])
        gam = self.gamma_unit(t, max(P, C))
        shape = genv["x"].shape
        with np.errstate(all="ignore"):
            gs = t.k_gradient * t.u * self._finite(rule.evaluate(genv))
            if acc is not None:
                gs = gs + gam * self._finite(acc.evaluate(genv))
            if "ext_gscale" in genv:  # extensions: chain through the logit transforms, add their terms
                gs = (gs * np.abs(self._finite(genv["dlogits"])) + t.k_gradient * t.u * self._finite(genv["ext_gscale"])
                      + gam * self._finite(genv["ext_gaccumulate"]))
            gs = np.broadcast_to(gs, shape)
            env = dict(genv, dl=gs, g=np.abs(genv["g"]))
            b = np.abs(np.asarray(formula.evaluate(env), dtype=np.float64))
            if "den" in formula.names and P > 1:
                # a mean's denominator: a P-term sum, relative error gamma(P - 1) on every element
                exact = np.abs(self._finite(formula.evaluate(genv)))
                b = b + t.k_reduce * gam * (P - 1) * exact
        b = np.where(np.isfinite(b), b, 0.0)
        return case.from_canonical(np.broadcast_to(b, shape), "elementwise")

    def output_bound(self, ev: Evaluation, name: str, dtype: str) -> np.ndarray:
        """Bound of an extension's extra output (z_loss reduced like the loss; lse per position)."""
        t = self.tol.dtypes[dtype]
        value, ext, formula = ev.outputs[name]
        env = ev.env
        gam = self.gamma_unit(t, max(float(env["P"]), float(env["C"])))
        chunks = self._chunk_bounds(ev, dtype) if ev.chunks is not None else None
        per = chunks["outputs"][name] if chunks is not None else self._output_position(ext, name, env, t, gam)
        with np.errstate(all="ignore"):
            if formula is not None:
                per = np.abs(np.asarray(formula.evaluate(dict(env, l=per)), dtype=np.float64))
                if ev.reduction != "none" and float(env["P"]) > 1:
                    term = self._finite(ext.formulas["loss"].evaluate(env) if chunks is None
                                        else chunks["terms"][name])
                    per = per + t.k_reduce * gam * (float(env["P"]) - 1) * np.abs(
                        np.asarray(formula.evaluate(dict(env, l=np.abs(term))), dtype=np.float64))
        per = np.where(np.isfinite(per), per, 0.0)
        v = np.asarray(value)
        if v.ndim == 0:
            return np.asarray(per, dtype=np.float64).reshape(())
        head = np.asarray(per, dtype=np.float64).reshape(-1)[:v.size] if np.size(per) >= v.size else per
        return np.broadcast_to(head, v.shape).reshape(v.shape)

    def _output_position(self, ext, name: str, env: dict, t, gam: float) -> np.ndarray:
        """An extra output's error per position, before its reduction."""
        sc, acc = (ext.tolerance.get(k) for k in ("scale", "accumulate"))
        with np.errstate(all="ignore"):
            p = (t.k_forward * t.u * (self._finite(sc.evaluate(env)) if sc else 0.0)
                 + gam * (self._finite(acc.evaluate(env)) if acc else 0.0))
            if self.spec.linear is not None:  # the logits' own error (conformance/linear.py)
                p = p + self.spec.linear.output_bound(name, env, t, self)
        return np.asarray(p, dtype=np.float64)

    def _chunk_bounds(self, ev: Evaluation, dtype: str) -> dict[str, Any]:
        """Every bound of a row-chunked evaluation (conformance/chunked.py) in ONE pass over its
        chunks, kept on the evaluation per dtype: the per-position parts of the loss's and the
        extra outputs' bounds (reduced by the callers on the whole batch's vectors), the z-loss
        terms, and the gradient bounds combined like the gradients (concatenated per row,
        summed over positions)."""
        if dtype in ev.bound_cache:
            return ev.bound_cache[dtype]
        assert ev.chunks is not None
        t = self.tol.dtypes[dtype]
        gam = self.gamma_unit(t, max(float(ev.env["P"]), float(ev.env["C"])))
        linear = self.spec.linear
        value: list[np.ndarray] = []
        outputs: dict[str, list[np.ndarray]] = {n: [] for n in ev.outputs}
        terms: dict[str, list[np.ndarray]] = {n: [] for n, (_, _, f) in ev.outputs.items() if f is not None}
        grads = {w: chunked.Combiner(linear.tolerance_gradients[w]) for w in ev.gradients} if linear else {}
        # (the chunks come with G and its environments only: the chunk's own gradients are not needed)

        def rows(a, n: int) -> np.ndarray:
            return np.broadcast_to(np.asarray(a, dtype=np.float64), (n, 1))

        for sub, cev in ev.chunks(bool(grads)):
            n = sub.positions
            value.append(rows(self._position_bound(cev.env, t, gam), n))
            for name in outputs:
                outputs[name].append(rows(self._output_position(ev.outputs[name][1], name, cev.env, t, gam), n))
            for name in terms:
                terms[name].append(rows(ev.outputs[name][1].formulas["loss"].evaluate(cev.env), n))
            if grads:
                genv = linear.gradient_bound_env(self, cev, dtype, sub)
                for c in grads.values():
                    c.add_formula(genv)
                del genv
            del cev
        out = {"value": np.concatenate(value, axis=0),
               "outputs": {k: np.concatenate(v, axis=0) for k, v in outputs.items()},
               "terms": {k: np.concatenate(v, axis=0) for k, v in terms.items()},
               "gradients": {k: self._finite(c.result()) for k, c in grads.items()}}
        ev.bound_cache[dtype] = out
        return out

    @staticmethod
    def _shape_like(bound, value, ev):
        if np.asarray(value).ndim == 0:
            return np.asarray(bound, dtype=np.float64).reshape(())
        shape = np.asarray(value).shape
        if np.size(bound) == np.size(value):
            return np.asarray(bound, dtype=np.float64).reshape(shape)
        return np.broadcast_to(bound, shape)

    # ------------------------------------------------------------------ comparison
    def compare(self, actual, expected: np.ndarray, bound: np.ndarray, dtype: str, *, what: str, clause: str,
                unspecified: np.ndarray | None = None, expected_dtype: str | None = None,
                internal: np.ndarray | None = None, magnitude: np.ndarray | None = None) -> Verdict:
        """Elementwise comparison with NaN/inf/overflow rules; dtype and shape first.

        ``magnitude``: each element's sum of |terms| (a matmul's, ``linear.tolerance.magnitudes``);
        past the largest finite number of the accumulation dtype a term or partial sum of any
        finite-precision evaluation may overflow, so inf of either sign or NaN is accepted there.

        ``internal``: what a correct implementation's float32 internal math may err
        (:meth:`internal_bound`); given, the verdict keeps the rounding-bias samples."""
        expected = np.asarray(expected, dtype=np.float64)
        actual_arr = np.asarray(actual)
        want_dtype = expected_dtype or dtype
        if actual_arr.dtype.kind not in "fV" or dtype_name(actual_arr.dtype) != want_dtype:
            got = dtype_name(actual_arr.dtype) if actual_arr.dtype.kind in "fV" else actual_arr.dtype
            return Verdict(False, what, clause + ".dtype", f"{what}.dtype={got}, but should be {want_dtype}",
                           expected=want_dtype, actual=str(actual_arr.dtype))
        if tuple(actual_arr.shape) != tuple(expected.shape):
            return Verdict(False, what, clause + ".shape",
                           f"{what}.shape={tuple(actual_arr.shape)}, but should be {tuple(expected.shape)}",
                           expected=list(expected.shape), actual=list(actual_arr.shape))
        a = as_float64(actual_arr)
        e = expected
        b = np.broadcast_to(np.asarray(bound, dtype=np.float64), e.shape)
        allowed = self.allowed(e, b, dtype)
        with np.errstate(all="ignore"):
            diff = np.abs(a - e)
        ok = elementwise_ok(a, e, allowed, dtype, diff=diff)
        if unspecified is not None:
            ok = ok | np.broadcast_to(unspecified, e.shape)
        if magnitude is not None:
            with np.errstate(all="ignore"):
                past = np.broadcast_to(np.asarray(magnitude, dtype=np.float64), e.shape) > self.accumulation_max(dtype)
            ok = ok | (past & ~np.isfinite(a))
        with np.errstate(all="ignore"):
            finite_e = np.isfinite(e)
            step = ulp(e, dtype)
            ulps_each = np.where(finite_e & np.isfinite(a), diff / step, np.where(ok, 0.0, np.inf))
            bound_ulps = allowed / step
        v = Verdict(bool(np.all(ok)), what, clause)
        finite_both = finite_e & np.isfinite(a)
        if np.any(finite_both):
            with np.errstate(all="ignore"):
                ratios = (diff / np.maximum(allowed, np.finfo(np.float64).tiny))[finite_both]
            v.ratios = _sample(ratios)
            v.ulps = _sample(ulps_each[finite_both])
        rule = self.tol.unbiased
        if internal is not None and rule is not None and v.ok and np.any(finite_both):
            v.signed = rounding_samples(a, e, np.broadcast_to(np.asarray(internal, dtype=np.float64), e.shape), dtype,
                                        float(rule["max_internal"]))
        idx = reported_index(ok, ulps_each, finite_both)
        if idx is not None:
            v.worst_index = idx
            v.max_error_ulps = float(ulps_each[idx]) if np.isfinite(ulps_each[idx]) else math.inf
            v.bound_ulps = float(bound_ulps[idx])
            v.expected = _scalar(e[idx])
            v.actual = _scalar(a[idx])
        if not v.ok:
            v.message = failure_message(v, what, dtype, e.ndim, int(np.count_nonzero(~ok)), e.size)
        return v


    def accumulation_max(self, dtype: str) -> float:
        """The largest finite number of the accumulation dtype the spec allows for ``dtype`` (the
        widest of the formats whose unit roundoff is the row's ``u_acc``, and ``dtype`` itself)."""
        t = self.tol.dtypes[dtype]
        ua = float(getattr(t, "extra", {}).get("u_acc", t.u))
        return max([max_finite(dtype)] + [max_finite(d) for d in roundoff_dtypes(ua)])

    def allowed(self, e: np.ndarray, bound: np.ndarray, dtype: str) -> np.ndarray:
        """Each element's admitted |error|: the derived bound, plus the final rounding to
        ``dtype`` (``u|e|`` and half an ulp), plus the smallest normal number (results below
        the normal range may be flushed to zero: XLA on CPU, most GPU kernels)."""
        u = self.tol.dtypes[dtype].u
        tiny = float(ml_dtypes.finfo(np_dtype(dtype)).smallest_normal)
        with np.errstate(all="ignore"):
            return bound + u * np.abs(e) + ulp(e, dtype) * 0.5 + tiny


def elementwise_ok(a: np.ndarray, e: np.ndarray, allowed: np.ndarray, dtype: str, *,
                   diff: np.ndarray | None = None) -> np.ndarray:
    """The verdict rules, element by element (a: actual, e: exact, both float64):

    - finite exact: a finite answer within ``allowed``; or inf of the same sign where the
      exact value's neighbourhood reaches past the dtype's largest finite number (overflow);
    - NaN exact: NaN only;
    - inf exact: the same inf only (rounding down to the largest finite is never produced).

    ``diff``: ``|a - e|`` when the caller has it already.
    """
    big = max_finite(dtype)
    with np.errstate(all="ignore"):
        diff = np.abs(a - e) if diff is None else diff
        finite_e = np.isfinite(e)
        may_overflow = finite_e & (np.abs(e) + allowed > big)
        ok_finite = finite_e & np.isfinite(a) & (diff <= allowed)
        ok_overflow = may_overflow & np.isinf(a) & (np.sign(a) == np.sign(e))
        ok_nan = np.isnan(e) & np.isnan(a)
        ok_inf = np.isinf(e) & (a == e)
    return ok_finite | ok_overflow | ok_nan | ok_inf


def reported_index(ok: np.ndarray, ulps_each: np.ndarray, finite_both: np.ndarray) -> tuple[int, ...] | None:
    """The element a verdict reports: the first wrong one (C order) when any is wrong, else the
    one with the largest error in ulps among those finite in both; None when there is none."""
    if not ok.size:
        return None
    if not np.all(ok):
        return tuple(int(i) for i in np.argwhere(~ok)[0])
    if not np.any(finite_both):
        return None
    flat = int(np.argmax(np.where(finite_both, ulps_each, -1.0)))
    return tuple(int(i) for i in np.unravel_index(flat, ok.shape))


def failure_message(v: Verdict, what: str, dtype: str, ndim: int, n_bad: int, size: int) -> str:
    """One line: the reported element's value and what the spec wants there, its error against
    its bound in ulps of ``dtype`` when both are finite, and how many elements are wrong."""
    ev_, av_ = float(v.expected), float(v.actual)
    where = f" at index {list(v.worst_index or ())}" if ndim else ""
    count = f"({n_bad} of {size} elements wrong)"
    if np.isnan(ev_) or np.isinf(ev_):
        return f"{what}{where} = {av_!r}, but the spec says {ev_!r} {count}"
    if not np.isfinite(av_):
        return f"{what}{where} = {av_!r}, but the exact value {ev_!r} is finite in {dtype} {count}"
    return (f"{what}{where} = {av_!r}, expected {ev_!r}: error {v.max_error_ulps:.3g} ulp "
            f"> bound {v.bound_ulps:.3g} ulp of {dtype} {count}")


def rounding_samples(a: np.ndarray, e: np.ndarray, internal: np.ndarray, dtype: str, eta: float,
                     k: int = 512) -> list[tuple[float, float]]:
    """``(lo, z)`` for the elements whose error can only be the rounding of the result: the
    exact value ``e`` is not representable in ``dtype`` (it lies strictly between the
    neighbours lo < e < hi), the output ``a`` is one of them, and the internal error allowance
    is at most ``eta`` half-ulps (else rounding once to nearest does not decide the side).
    ``z = (a - e) / half-ulp`` lies in [-1, 1] for round-to-nearest, in (-2, 0] for
    truncation of a positive value. One element per ulp interval (lo), at most ``k``."""
    with np.errstate(all="ignore"):
        sp = ulp(e, dtype)
        lo = np.floor(e / sp) * sp
        hi = lo + sp
        half = sp / 2
        pick = (np.isfinite(e) & np.isfinite(a) & (np.abs(e) <= max_finite(dtype)) & (e != lo)
                & ((a == lo) | (a == hi)) & (internal <= eta * half))
        z = (a - e) / half
    los, idx = np.unique(lo[pick], return_index=True)
    return [(float(x), float(y)) for x, y in zip(los[:k], z[pick][idx][:k])]


def _sample(a: np.ndarray, k: int = 64) -> list[float]:
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size > k:
        # keep the largest few and a spread of the rest, so plots show the tail
        top = np.sort(a)[-8:]
        rest = a[np.linspace(0, a.size - 1, k - 8).astype(int)]
        a = np.concatenate([rest, top])
    return [float(x) for x in a]
