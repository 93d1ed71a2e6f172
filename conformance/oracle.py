"""The exact oracle: evaluates a spec's formulas for one case in float64.

Nothing here knows what cross-entropy is: the loss, its reductions and its gradients are
the spec's formulas, interpreted by :mod:`conformance.formula` on the case's quantised
inputs in the canonical (P, C) layout. Sums over positions are exactly rounded and sums over
classes pairwise, which keeps the oracle's relative error near 1e-15 (see the mpmath
cross-check in tests/test_oracle.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import chunked
from .case import Case
from .formula import Formula
from .spec import Extension, Spec


@dataclass
class Evaluation:
    """What the spec says a case must return, plus the environment the tolerance rules read."""

    path: str
    reduction: str
    value: np.ndarray                      # float64, output shape
    gradients: dict[str, np.ndarray]       # float64, shaped like the input (or target)
    unspecified: dict[str, np.ndarray]     # bool masks where any gradient value is accepted
    env: dict[str, Any] = field(repr=False)
    gradient_envs: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)
    #: The formulas actually used: "value" and each gradient (an extension may replace them).
    formulas: dict[str, Any] = field(repr=False, default_factory=dict)
    #: Extra outputs the case asks for (extensions: "z_loss", "lse"), float64, and their bounds
    #: in units: {"name": (value, per-position scale, per-position accumulate, formula or None)}.
    outputs: dict[str, Any] = field(repr=False, default_factory=dict)
    #: Per gradient, the sum of |terms| of each element where the spec gives one (the linear
    #: form): past the accumulation dtype's range a non-finite answer is accepted (compare.py).
    magnitudes: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    #: The judge's bounds of a chunked evaluation, per dtype (compare.py Judge._chunk_bounds).
    bound_cache: dict[str, Any] = field(repr=False, default_factory=dict)
    #: A case evaluated in row chunks (conformance/chunked.py): ``env`` then holds the whole
    #: batch's scalars and per-position vectors only, ``gradient_envs`` nothing, and
    #: ``chunks(with_gradients)`` yields each chunk's (case, dense evaluation) again, with the
    #: whole batch's position-global values and G's environments (not the chunk's gradients).
    chunks: Callable[[bool], Iterator[tuple[Case, Evaluation]]] | None = field(repr=False, default=None)


class Oracle:
    """Interprets one spec; build it once per spec and call :meth:`evaluate` per case."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def path_for(self, case: Case) -> str:
        if "elementwise" in self.spec.paths:
            return "elementwise"
        return case.target_kind

    def evaluate(self, case: Case, *, gradients: bool = True, reduction: str | None = None) -> Evaluation:
        """What the spec says ``case`` must return. A linear-form case of many logits is
        evaluated in row chunks (conformance/chunked.py), in memory for a few rows of logits."""
        if chunked.applies(self.spec, case):
            try:
                return chunked.evaluate(self, case, gradients=gradients, reduction=reduction)
            except chunked.NotChunkable:
                pass
        return self._dense(case, gradients=gradients, reduction=reduction)

    def _dense(self, case: Case, *, gradients: bool = True, reduction: str | None = None,
               overrides: Mapping[str, Any] | None = None, chain: bool = True) -> Evaluation:
        """The evaluation with every array whole. ``overrides``: values that replace the inputs
        and bindings of those names (a row chunk's P and position-global bindings, from the
        whole batch). ``chain=False``: the linear form's gradient environments without the
        gradients (a row chunk for the judge's bounds)."""
        over = dict(overrides or {})
        spec = self.spec
        pname = self.path_for(case)
        path = spec.paths[pname]
        red = reduction or case.effective_reduction(spec.deprecated)
        env = case.canonical()
        env.update({k: v for k, v in over.items() if k in env})
        if spec.linear is not None:   # the linear form: x = the spec's logits of hidden, classifier, bias
            spec.linear.prepare(case, env)
        exts = [spec.extensions[e] for e in spec.extensions if e in case.extensions]
        if exts and pname != "index":
            raise ValueError(f"extensions ({', '.join(case.extensions)}) apply to class-index targets only")
        env["g"] = (case.upstream_canonical(red) if pname != "elementwise" else np.ones_like(env["x"])
                    if case.upstream is None or np.shape(case.upstream) != case.x.shape
                    else np.moveaxis(np.asarray(case.upstream).astype(np.float64), case.class_axis, -1)
                    .reshape(env["x"].shape))
        with np.errstate(all="ignore"):
            env["x_raw"] = env["x"]
            env["dlogits"] = np.ones_like(env["x"])
            for e in exts:   # logit transforms, in the spec's order; chain rule on the way
                if e.stage == "logits":
                    env["dlogits"] = env["dlogits"] * e.formulas["dlogits"].evaluate(env)
                    env["x"] = np.asarray(e.formulas["logits"].evaluate(env), dtype=np.float64)
            for name, f in path.bindings.items():
                env[name] = over[name] if name in over else f.evaluate(env)
            formula = path.reductions[red]
            outputs: dict[str, Any] = {}
            for e in exts:
                if e.stage == "loss":
                    term = np.asarray(e.formulas["loss"].evaluate(env), dtype=np.float64)
                    env["l"] = env["l"] + term
                    if e.output and case.extensions.get(f"return_{e.output}"):
                        outputs[e.output] = (term, e)
                elif e.stage == "reduction" and red in e.reductions:
                    formula = e.reductions[red]
                elif e.stage == "output":
                    outputs[e.output or e.id] = (np.asarray(e.formulas["value"].evaluate(env), dtype=np.float64), e)
            raw = np.asarray(formula.evaluate(env), dtype=np.float64)
            env["ext_scale"], env["ext_accumulate"] = self._ext_terms(exts, env, ("scale", "accumulate"), "loss")
            shaped: dict[str, tuple[np.ndarray, Extension, Formula | None]] = {}
            for name, (term, e) in outputs.items():
                if e.stage == "loss":   # reduced like the loss
                    val = np.asarray(formula.evaluate(dict(env, l=term)), dtype=np.float64)
                    shaped[name] = (self._shape_output(case, val, red, pname), e, formula)
                else:                   # per position, every position
                    shaped[name] = (case.from_canonical(np.broadcast_to(term, (case.positions, 1)), "none"), e, None)
        value = self._shape_output(case, raw, red, pname)
        grads: dict[str, np.ndarray] = {}
        unspec: dict[str, np.ndarray] = {}
        genvs: dict[str, dict[str, Any]] = {}
        formulas = {"value": formula}
        if gradients:
            for wrt, grad in path.gradients.items():
                genv = dict(env)
                with np.errstate(all="ignore"):
                    for name, f in grad.bindings.items():
                        genv[name] = over[name] if name in over else f.evaluate(genv)
                    gformula = grad.reductions[red]
                    if wrt == "input" and exts:
                        for e in exts:
                            if e.stage == "loss":
                                genv["dl"] = genv["dl"] + e.formulas["dloss"].evaluate(genv)
                            elif e.stage == "reduction" and red in e.gradients:
                                gformula = e.gradients[red]
                        genv["ext_gscale"], genv["ext_gaccumulate"] = self._ext_terms(
                            exts, genv, ("gscale", "gaccumulate"), "gradient")
                        # w.r.t. the raw logits: chained through the logit transforms
                        genv["dl_logits"] = genv["dl"]
                        genv["dl"] = genv["dl"] * genv["dlogits"]
                    formulas[wrt] = gformula
                    graw = np.broadcast_to(np.asarray(gformula.evaluate(genv), dtype=np.float64),
                                           env["x"].shape)
                    mask = (np.broadcast_to(np.asarray(grad.unspecified.evaluate(genv), dtype=bool), env["x"].shape)
                            if grad.unspecified is not None else np.zeros(env["x"].shape, dtype=bool))
                grads[wrt] = case.from_canonical(graw, "elementwise")
                unspec[wrt] = case.from_canonical(mask, "elementwise")
                genvs[wrt] = genv
        mags: dict[str, np.ndarray] = {}
        if spec.linear is not None and gradients:   # w.r.t. hidden, classifier and bias, from G
            grads, unspec, genvs = spec.linear.chain(case, grads, unspec, genvs, mags, values=chain)
        return Evaluation(pname, red, value, grads, unspec, env, genvs, formulas, shaped, magnitudes=mags)

    @staticmethod
    def _ext_terms(exts, env, keys, what):
        """The extensions' tolerance terms (summed per key; 0 when none gives one)."""
        out = []
        for key in keys:
            total = np.zeros(())
            for e in exts:
                if key in e.tolerance and (e.stage != "output" or key in ("gscale", "gaccumulate")):
                    total = total + np.asarray(e.tolerance[key].evaluate(env), dtype=np.float64)
            out.append(total)
        return out

    @staticmethod
    def _shape_output(case: Case, raw: np.ndarray, reduction: str, pname: str) -> np.ndarray:
        if pname == "elementwise":
            return case.from_canonical(np.broadcast_to(raw, (case.positions, case.num_classes)), "elementwise")
        if reduction == "none":
            return case.from_canonical(np.broadcast_to(raw, (case.positions, 1)), "none")
        return raw.reshape(())
