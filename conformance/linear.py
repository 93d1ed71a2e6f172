"""The linear form of cross-entropy (specs/linear_cross_entropy.yaml): logits computed from
hidden states (P, H), a classifier (C, H) and an optional bias (C,), then the base spec's loss.

A composed spec names its ``base`` (cross_entropy): the loss, its index path, extensions,
variants and tolerances are the base's, never copied. This module builds the composed
:class:`~conformance.spec.Spec` and holds its ``linear:`` section, which the pipeline calls at
three places only:

- the oracle (:meth:`LinearSection.prepare`, :meth:`LinearSection.chain`): the spec's
  ``logits`` formula replaces ``x`` before the base formulas, and the gradients with respect to
  hidden, classifier and bias are the spec's formulas of ``G``, the base's input gradient;
- the judge (:meth:`LinearSection.forward_bound`, :meth:`LinearSection.gradient_bound`,
  :meth:`LinearSection.output_bound`): the spec's ``linear.tolerance`` terms, evaluated in
  the dtype's units (specs/README.md, "The linear form");
- the strategies live in conformance/linear_strategies.py, the error mutations and transforms
  with the others (conformance/mutations.py MUTATIONS, conformance/metamorphic.py TRANSFORMS),
  and the composed spec is built by conformance/spec.py (``_build_composed``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .case import Case
from .formula import Formula, _softmax

#: Names the linear section's formulas may read besides the base path's.
LINEAR_INPUTS = frozenset({"hidden", "classifier", "bias", "H", "P", "C"})
#: What the tolerance formulas see on top: the dtype's units, the raw logits, the logits'
#: gradient G, the extension options (at their identity when off) and the gradient's names.
TOLERANCE_INPUTS = frozenset({"u", "gamma", "x_raw", "G", "dl", "dl_logits", "dlogits", "p",
                              "logit_scale", "softcap", "z_loss"})
WRTS = ("hidden", "classifier", "bias")


@dataclass(frozen=True)
class LinearSection:
    logits: Formula
    gradients: dict[str, Formula]
    bindings: dict[str, Formula]
    forward: Formula
    sensitivity: Formula
    tolerance_gradients: dict[str, Formula]
    outputs: dict[str, Formula]
    domain: dict[str, Any] = field(default_factory=dict)
    #: Per gradient: the sum of |terms| of each element (``linear.tolerance.magnitudes``); where
    #: it passes the accumulation dtype's range, a non-finite answer is accepted (compare.py).
    magnitudes: dict[str, Formula] = field(default_factory=dict)

    # ------------------------------------------------------------------ oracle
    def prepare(self, case: Case, env: dict) -> None:
        """Put the linear inputs into the oracle's environment and compute the logits ``x``."""
        lin = case.linear
        if lin is None:
            raise ValueError("a linear_cross_entropy case needs hidden and classifier (case.linear)")
        h = np.asarray(lin["hidden"]).astype(np.float64)
        W = np.asarray(lin["classifier"], dtype=np.float64)   # no copy when a row chunk passes float64
        b = lin.get("bias")
        env["hidden"], env["classifier"] = h, W
        env["bias"] = np.zeros(W.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
        env["H"] = np.float64(h.shape[-1])
        env["x"] = np.asarray(self.logits.evaluate(env), dtype=np.float64).reshape(env["x"].shape)

    def chain(self, case: Case, grads: dict, unspec: dict, genvs: dict,
              magnitudes: dict | None = None, values: bool = True) -> tuple[dict, dict, dict]:
        """Gradients w.r.t. hidden, classifier and bias from G = d output / d logits (and, into
        ``magnitudes``, the sums of |terms| of their elements). ``values=False``: only their
        environments (G), for the judge's bounds of a row chunk (conformance/chunked.py)."""
        lin = case.linear
        if lin is None:
            raise ValueError("a linear_cross_entropy case needs hidden and classifier (case.linear)")
        G = np.asarray(grads.pop("input"), dtype=np.float64).reshape(genvs["input"]["x"].shape)
        unspec.pop("input", None)
        genv = dict(genvs["input"], G=G)
        out, masks = {}, {}
        for wrt in WRTS:
            if wrt == "bias" and lin.get("bias") is None:
                continue
            genvs[wrt] = genv
            if not values:
                continue
            out[wrt] = np.asarray(self.gradients[wrt].evaluate(genv), dtype=np.float64)
            if magnitudes is not None and wrt in self.magnitudes:
                magnitudes[wrt] = np.asarray(self.magnitudes[wrt].evaluate(genv), dtype=np.float64)
            masks[wrt] = np.zeros(out[wrt].shape, dtype=bool)
        return out, masks, genvs

    # ------------------------------------------------------------------ judge
    def _env(self, env: dict, t, judge) -> dict:
        """The tolerance environment: units of the dtype row, the options at their identity
        when off, and the bindings of ``linear.tolerance`` evaluated in order."""
        P, C, H = float(env["P"]), float(env["C"]), float(env["H"])
        out = dict(env)
        out.setdefault("x_raw", env["x"])
        out.setdefault("dlogits", np.ones_like(env["x"]))
        if "p" not in out:   # the forward pass's environment has no gradient bindings
            out["p"] = _softmax(env["x"])
        if "dl" in out:
            out.setdefault("dl_logits", out["dl"])
        out["u"] = np.float64(t.u)
        out["gamma"] = np.float64(judge.gamma_unit(t, max(P, C, H)))
        for k, identity in (("logit_scale", 1.0), ("softcap", np.inf), ("z_loss", 0.0)):
            out.setdefault(k, np.float64(identity))
        with np.errstate(all="ignore"):
            for name, f in self.bindings.items():
                out[name] = f.evaluate(out)
        return out

    def forward_bound(self, env: dict, t, judge) -> np.ndarray:
        """Per position: what the logits' error can move the loss (added to the base bound)."""
        with np.errstate(all="ignore"):
            return judge._finite(self.forward.evaluate(self._env(env, t, judge)))

    def output_bound(self, name: str, env: dict, t, judge) -> np.ndarray:
        """Per position: what the logits' error can move an extra output (lse, z_loss)."""
        if name not in self.outputs:
            return np.zeros(())
        with np.errstate(all="ignore"):
            return judge._finite(self.outputs[name].evaluate(self._env(env, t, judge)))

    def gradient_bound(self, judge, ev, wrt: str, dtype: str, case: Case) -> np.ndarray:
        """d hidden, d classifier, d bias: the bound of G (the base rule at the exact logits, the
        logits' error through the softmax's sensitivity, a rounding of G to the dtype) pushed
        through the spec's tolerance formula of ``wrt``, which adds the matmul's own sum."""
        with np.errstate(all="ignore"):
            b = np.asarray(self.tolerance_gradients[wrt].evaluate(self.gradient_bound_env(judge, ev, dtype, case)),
                           dtype=np.float64)
        return np.where(np.isfinite(b), b, 0.0)

    def gradient_bound_env(self, judge, ev, dtype: str, case: Case) -> dict:
        """What the tolerance formulas of the gradients read: the tolerance environment and dG,
        G's bound (the same for hidden, classifier and bias)."""
        t = judge.tol.dtypes[dtype]
        genv = ev.gradient_envs["input"]
        base = np.asarray(judge.gradient_bound(ev, "input", dtype, case), dtype=np.float64).reshape(genv["x"].shape)
        env = self._env(dict(genv, G=ev.gradient_envs["hidden"]["G"]), t, judge)
        formula = ev.formulas["input"]
        with np.errstate(all="ignore"):
            sens = np.broadcast_to(judge._finite(self.sensitivity.evaluate(env)), genv["x"].shape)
            pushed = np.abs(np.asarray(formula.evaluate(dict(genv, dl=sens, g=np.abs(genv["g"]))), dtype=np.float64))
            dG = base + judge._finite(pushed) + t.u * np.abs(judge._finite(env["G"]))
        return dict(env, dG=dG)
