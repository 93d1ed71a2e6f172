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
- the strategies and mutations live in conformance/linear_strategies.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
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

    # ------------------------------------------------------------------ oracle
    def prepare(self, case: Case, env: dict) -> None:
        """Put the linear inputs into the oracle's environment and compute the logits ``x``."""
        lin = case.linear
        if lin is None:
            raise ValueError("a linear_cross_entropy case needs hidden and classifier (case.linear)")
        h = np.asarray(lin["hidden"]).astype(np.float64)
        W = np.asarray(lin["classifier"]).astype(np.float64)
        b = lin.get("bias")
        env["hidden"], env["classifier"] = h, W
        env["bias"] = np.zeros(W.shape[0]) if b is None else np.asarray(b).astype(np.float64)
        env["H"] = np.float64(h.shape[-1])
        env["x"] = np.asarray(self.logits.evaluate(env), dtype=np.float64).reshape(env["x"].shape)

    def chain(self, case: Case, grads: dict, unspec: dict, genvs: dict) -> tuple[dict, dict, dict]:
        """Gradients w.r.t. hidden, classifier and bias from G = d output / d logits."""
        G = np.asarray(grads.pop("input"), dtype=np.float64).reshape(genvs["input"]["x"].shape)
        unspec.pop("input", None)
        genv = dict(genvs["input"], G=G)
        out, masks = {}, {}
        for wrt in WRTS:
            if wrt == "bias" and case.linear.get("bias") is None:
                continue
            out[wrt] = np.asarray(self.gradients[wrt].evaluate(genv), dtype=np.float64)
            masks[wrt] = np.zeros(out[wrt].shape, dtype=bool)
            genvs[wrt] = genv
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
        t = judge.tol.dtypes[dtype]
        genv = ev.gradient_envs["input"]
        base = np.asarray(judge.gradient_bound(ev, "input", dtype, case), dtype=np.float64).reshape(genv["x"].shape)
        env = self._env(dict(genv, G=ev.gradient_envs[wrt]["G"]), t, judge)
        formula = ev.formulas["input"]
        with np.errstate(all="ignore"):
            sens = np.broadcast_to(judge._finite(self.sensitivity.evaluate(env)), genv["x"].shape)
            pushed = np.abs(np.asarray(formula.evaluate(dict(genv, dl=sens, g=np.abs(genv["g"]))), dtype=np.float64))
            dG = base + judge._finite(pushed) + t.u * np.abs(judge._finite(env["G"]))
            b = np.asarray(self.tolerance_gradients[wrt].evaluate(dict(env, dG=dG)), dtype=np.float64)
        return np.where(np.isfinite(b), b, 0.0)


# --------------------------------------------------------------------------- building
def build_composed(raw: dict, text: str, file: str):
    """The composed Spec: the base spec's index path, extensions, variants and tolerances, the
    inherited special cases and error clauses, and this file's own clauses and linear section."""
    import hashlib

    from . import linear_strategies  # noqa: F401  (registers the mutations and transforms named below)
    from . import spec as S

    base_file = Path(file).parent / f"{raw['base']}.yaml"
    base = S.load(base_file if base_file.is_file() else S.default_spec_path(raw["base"]))
    if "index" not in base.paths:
        raise S._Fault(("base",), f"{raw['base']} has no index path", "compose a spec with an index path")
    domains = {**base.raw["domains"], **raw["domains"]}
    for i, kind in enumerate(domains["target_kinds"]):
        if kind != "index":
            raise S._Fault(("domains", "target_kinds", i), f"the linear form takes class indices only, not '{kind}'",
                           "write target_kinds: [index]")
    inherit = raw.get("inherit") or {}
    special = {}
    for i, sid in enumerate(inherit.get("special_cases") or ()):
        if sid not in base.special_cases:
            raise S._Fault(("inherit", "special_cases", i), f"{raw['base']} has no special case '{sid}'",
                           S._did_you_mean(sid, base.special_cases) + f"known: {', '.join(base.special_cases)}")
        special[sid] = base.special_cases[sid]
    errors = {}
    for i, eid in enumerate(inherit.get("errors") or ()):
        if eid not in base.errors:
            raise S._Fault(("inherit", "errors", i), f"{raw['base']} has no error clause '{eid}'",
                           S._did_you_mean(eid, base.errors) + f"known: {', '.join(base.errors)}")
        errors[eid] = base.errors[eid]
    # this file's own clauses, built by the ordinary loader on a skeleton around them
    own = S._build({**base.raw, **{k: raw.get(k) or {} for k in ("special_cases", "errors", "metamorphic")},
                    "variants": {}, "extensions": {}, "paths": {"index": base.raw["paths"]["index"]},
                    "domains": domains}, text, file)
    special.update(own.special_cases)
    errors.update(own.errors)

    idx = base.paths["index"]
    path_names = set(S.PATH_INPUTS["index"]) | set(idx.bindings)
    for g in idx.gradients.values():
        path_names |= set(g.bindings)
    lin = raw["linear"]
    logits = S._parse(lin["logits"], LINEAR_INPUTS, ("linear", "logits"))
    gradients = {w: S._parse(lin["gradients"][w], LINEAR_INPUTS | {"G"}, ("linear", "gradients", w)) for w in WRTS}
    tol = lin["tolerance"]
    known = set(path_names | LINEAR_INPUTS | TOLERANCE_INPUTS)
    bindings = S._bindings(tol["bindings"], known, ("linear", "tolerance", "bindings"))
    forward = S._parse(tol["forward"], known, ("linear", "tolerance", "forward"))
    sensitivity = S._parse(tol["sensitivity"], known, ("linear", "tolerance", "sensitivity"))
    tgrads = {w: S._parse(tol["gradients"][w], known | {"dG"}, ("linear", "tolerance", "gradients", w)) for w in WRTS}
    outputs = {k: S._parse(v, known, ("linear", "tolerance", "outputs", k)) for k, v in (tol.get("outputs") or {}).items()}
    section = LinearSection(logits, gradients, bindings, forward, sensitivity, tgrads, outputs, dict(lin["domain"]))
    merged = {**base.raw, **raw, "domains": domains, "paths": {"index": base.raw["paths"]["index"]},
              "tolerances": base.raw["tolerances"], "variants": base.raw.get("variants") or {},
              "extensions": base.raw.get("extensions") or {}}
    return replace(base, file=file, version=raw["spec_version"], operation=raw["operation"], reference=raw["reference"],
                   summary=raw["summary"], sha256=hashlib.sha256(text.encode()).hexdigest(), raw=merged,
                   paths={"index": idx}, special_cases=special, errors=errors, metamorphic=own.metamorphic,
                   linear=section, marks=None)
