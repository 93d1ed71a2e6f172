"""The exact oracle: evaluates a spec's formulas for one case in float64.

Nothing here knows what cross-entropy is: the loss, its reductions and its gradients are
the spec's formulas, interpreted by :mod:`conformance.formula` on the case's quantised
inputs in the canonical (P, C) layout. Sums over positions are exactly rounded and sums over
classes pairwise, which keeps the oracle's relative error near 1e-15 (see the mpmath
cross-check in tests/test_oracle.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .case import Case
from .spec import Spec


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


class Oracle:
    """Interprets one spec; build it once per spec and call :meth:`evaluate` per case."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def path_for(self, case: Case) -> str:
        if "elementwise" in self.spec.paths:
            return "elementwise"
        return case.target_kind

    def evaluate(self, case: Case, *, gradients: bool = True, reduction: str | None = None) -> Evaluation:
        spec = self.spec
        pname = self.path_for(case)
        path = spec.paths[pname]
        red = reduction or case.effective_reduction(spec.deprecated)
        env = case.canonical()
        env["g"] = (case.upstream_canonical(red) if pname != "elementwise" else np.ones_like(env["x"])
                    if case.upstream is None or np.shape(case.upstream) != case.x.shape
                    else np.moveaxis(np.asarray(case.upstream).astype(np.float64), case.class_axis, -1).reshape(env["x"].shape))
        with np.errstate(all="ignore"):
            for name, f in path.bindings.items():
                env[name] = f.evaluate(env)
            formula = path.reductions[red]
            raw = np.asarray(formula.evaluate(env), dtype=np.float64)
        value = self._shape_output(case, raw, red, pname)
        grads: dict[str, np.ndarray] = {}
        unspec: dict[str, np.ndarray] = {}
        genvs: dict[str, dict[str, Any]] = {}
        if gradients:
            for wrt, grad in path.gradients.items():
                genv = dict(env)
                with np.errstate(all="ignore"):
                    for name, f in grad.bindings.items():
                        genv[name] = f.evaluate(genv)
                    graw = np.broadcast_to(np.asarray(grad.reductions[red].evaluate(genv), dtype=np.float64),
                                           env["x"].shape)
                    mask = (np.broadcast_to(np.asarray(grad.unspecified.evaluate(genv), dtype=bool), env["x"].shape)
                            if grad.unspecified is not None else np.zeros(env["x"].shape, dtype=bool))
                grads[wrt] = case.from_canonical(graw, "elementwise")
                unspec[wrt] = case.from_canonical(mask, "elementwise")
                genvs[wrt] = genv
        return Evaluation(pname, red, value, grads, unspec, env, genvs)

    @staticmethod
    def _shape_output(case: Case, raw: np.ndarray, reduction: str, pname: str) -> np.ndarray:
        if pname == "elementwise":
            return case.from_canonical(np.broadcast_to(raw, (case.positions, case.num_classes)), "elementwise")
        if reduction == "none":
            return case.from_canonical(np.broadcast_to(raw, (case.positions, 1)), "none")
        return raw.reshape(())
