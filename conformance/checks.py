"""What is asked of every adapter, one check per spec clause: stages 2 to 5 (draw, oracle,
adapter call, judgement) put together for each clause.

Check ids come from the spec's own names (``forward.index``, ``special.all_ignored``,
``error.label_smoothing_above_one``, ``metamorphic.class_permutation``...), never from
formatted text, so that known-divergence and baseline files stay valid across versions.

Each check has an ``example`` function: given the adapter, the context and a Hypothesis
``draw``, it draws one case, calls the adapter and returns the verdicts (or raises
:class:`CheckFailure` with everything a report and a reproduction need).
"""
from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import assume, reject

from conformance.adapters.base import Adapter, InputsMutated

from . import linear_strategies
from . import metamorphic as mm
from . import strategies as strat
from .case import Case, as_float64, np_dtype
from .compare import Judge, Verdict
from .modifiers import MODIFIERS
from .mutations import MUTATIONS
from .oracle import Oracle
from .spec import Spec


class CheckFailure(AssertionError):
    """A failed example: the verdict plus the case that produced it."""

    def __init__(self, check_id: str, verdict: Verdict, case: Case, *, severity: str = "MUST",
                 exception: str | None = None, related: Case | None = None):
        self.check_id = check_id
        self.verdict = verdict
        self.case = case
        self.severity = severity
        self.exception = exception
        self.related = related
        super().__init__(f"[{check_id}] {verdict.message}")


@dataclass
class Context:
    """Per-run state shared by every check of one adapter."""

    spec: Spec
    adapter: Adapter
    profile: str = "default"
    extra_specs: dict[str, Spec] = field(default_factory=dict)
    #: Option classes the engine pins for the examples being drawn now (conformance.gate.OPTION_CLASSES).
    pins: dict[str, str] = field(default_factory=dict)

    def twin(self) -> Adapter:
        """The CPU twin of a device adapter (``adapter.cpu_twin`` names a built-in)."""
        if not hasattr(self, "_twin"):
            from conformance.adapters import resolve
            if self.adapter.cpu_twin is None:
                raise ValueError(f"adapter {self.adapter.name} has no cpu_twin to compare with")
            self._twin = resolve(self.adapter.cpu_twin)
        return self._twin

    def __post_init__(self):
        self.vspec = self.spec.with_variants(self.adapter.capabilities.variants)
        self.oracle = Oracle(self.vspec)
        self.plain_oracle = Oracle(self.spec)
        self.judge = Judge(self.vspec)


@dataclass
class Outcome:
    """What one passing example contributes to the results (coverage, accuracy, variant use)."""

    case: Case
    verdicts: list[Verdict]
    variant_used: str | None = None
    note: str = ""
    #: The oracle's evaluation the verdicts came from, for checks that judge further.
    evaluation: Any = None


@dataclass
class Check:
    id: str
    kind: str
    clause: str
    description: str
    example: Callable[[Context, Callable], Outcome]
    max_examples: dict[str, int]
    need_gradient: bool = False
    severity: str = "MUST"
    #: An extra operation the adapter must expose ("log_softmax", "nll_loss").
    requires: tuple[str, ...] = ()
    formula: str = ""
    #: Adapter features (adapters/base.py ALL_FEATURES) without which the check means nothing.
    features: frozenset[str] = frozenset()
    #: Spec extensions the adapter must declare (Capabilities.extensions) for the check to apply.
    extensions: frozenset[str] = frozenset()


PROFILES = {
    # examples per check kind; "thorough" also unlocks the large-C sizes
    "quick": {"forward": 25, "gradient": 15, "special": 4, "error": 3, "metamorphic": 5, "decomposition": 8},
    # forward/gradient also run their covering-array rows first (about 90 in default)
    "default": {"forward": 60, "gradient": 35, "special": 8, "error": 5, "metamorphic": 12, "decomposition": 20},
    "thorough": {"forward": 600, "gradient": 300, "special": 40, "error": 20, "metamorphic": 80, "decomposition": 100},
}


# --------------------------------------------------------------------------- helpers
def _call(ctx: Context, check_id: str, case: Case, *, gradient: bool):
    """Call the adapter on a valid case; any exception is a failure of the check."""
    before = {"input": case.x.copy(), "target": np.asarray(case.target).copy()}
    if case.weight is not None:
        before["weight"] = case.weight.copy()
    try:
        res = ctx.adapter.call(case, gradient=gradient)
    except InputsMutated as exc:
        raise CheckFailure(check_id, Verdict(False, "inputs", "inputs.unmodified", str(exc)), case) from None
    except Exception as exc:  # noqa: BLE001 - an implementation may raise anything
        msg = f"{type(exc).__name__}: {exc}".strip()
        raise CheckFailure(check_id, Verdict(False, "call", "valid_input.accepted",
                                             f"raised on a valid input: {msg[:400]}"), case,
                           exception="".join(traceback.format_exception_only(type(exc), exc)).strip()) from None
    after = {"input": case.x, "target": case.target}
    if case.weight is not None:
        after["weight"] = case.weight
    changed = [k for k, v in before.items() if v.tobytes() != np.asarray(after[k]).tobytes()]
    if changed:
        raise CheckFailure(check_id, Verdict(False, "inputs", "inputs.unmodified",
                                             f"the implementation modified its input(s): {', '.join(changed)}"), case)
    return res


def call_adapter(ctx: Context, check_id: str, case: Case, *, gradient: bool):
    """One call of a valid case, as every value check makes it (the reproduction scripts use
    it too): an exception or a modified input raises :class:`CheckFailure`."""
    return _call(ctx, check_id, case, gradient=gradient)


def judge_result(ctx: Context, check_id: str, case: Case, res, *, gradient: bool, ev=None) -> Outcome:
    """Judge one call's result against the oracle as the value checks do: loss, gradients,
    the extensions' extra outputs, the deprecation warning; :class:`CheckFailure` if wrong."""
    return _judge_call(ctx, check_id, case, res, gradient=gradient, ev=ev)


def _variant_note(ctx: Context, case: Case, ev) -> str | None:
    """Name of the declared variant that changed this case's expected value, if any."""
    if not ctx.vspec.applied_variants:
        return None
    plain = ctx.plain_oracle.evaluate(case, gradients=False)
    if np.array_equal(np.asarray(plain.value), np.asarray(ev.value), equal_nan=True):
        return None
    return ",".join(ctx.vspec.applied_variants)


def _judge_call(ctx: Context, check_id: str, case: Case, res, *, gradient: bool, ev=None) -> Outcome:
    """``ev``: the case's evaluation when the caller already has it (with gradients if asked)."""
    ev = ev if ev is not None else ctx.oracle.evaluate(case, gradients=gradient)
    dtype = case.dtype
    verdicts = [ctx.judge.compare(res.value, ev.value, ctx.judge.value_bound(ev, dtype), dtype,
                                  what="loss", clause=f"paths.{ev.path}.reductions.{ev.reduction}",
                                  internal=ctx.judge.internal_bound(ev, case))]
    if gradient:
        for wrt, g in ev.gradients.items():
            if wrt not in res.gradients:
                if wrt == "target" and "gradient_target" not in ctx.adapter.capabilities.features:
                    continue
                verdicts.append(Verdict(False, f"gradient[{wrt}]", f"paths.{ev.path}.gradients.{wrt}",
                                        f"no gradient w.r.t. {wrt} was returned"))
                continue
            gbound = ctx.judge.gradient_bound(ev, wrt, dtype, case)
            verdicts.append(ctx.judge.compare(res.gradients[wrt], g, gbound, dtype, what=f"gradient[{wrt}]",
                                              clause=f"paths.{ev.path}.gradients.{wrt}.reductions.{ev.reduction}",
                                              unspecified=ev.unspecified.get(wrt),
                                              magnitude=ev.magnitudes.get(wrt)))
    for name, (expected, _ext, _f) in ev.outputs.items():   # extensions' extra outputs (z_loss, lse)
        clause = f"extensions.{_ext.id}.output"
        got = getattr(res, "outputs", {}).get(name)
        if got is None:
            verdicts.append(Verdict(False, name, clause, f"no {name} was returned, but the case asks for it"))
            continue
        verdicts.append(ctx.judge.compare(got, expected, ctx.judge.output_bound(ev, name, dtype), dtype,
                                          what=name, clause=clause))
    warned = _deprecation_warned(ctx, case, res)
    if warned is not None:
        verdicts.append(warned)
    for v in verdicts:
        if not v.ok:
            raise CheckFailure(check_id, v, case)
    return Outcome(case, verdicts, _variant_note(ctx, case, ev), evaluation=ev)


def _deprecation_warned(ctx: Context, case: Case, res) -> Verdict | None:
    """A call given a deprecated argument must emit the spec's ``deprecated_warning``."""
    category = ctx.spec.deprecated_warning
    warnings = getattr(res, "warnings", None)
    if not category or warnings is None or not case.legacy or all(v is None for v in case.legacy.values()):
        return None
    ok = any(str(w).startswith(category + ":") for w in warnings)
    return Verdict(ok, "warning", "signature.deprecated_warning",
                   "" if ok else f"no {category} for the deprecated argument(s) {case.legacy}; the call emitted "
                   + (", ".join(repr(str(w)[:80]) for w in warnings[:3]) or "no warning"))


def _request(ctx: Context, **kw):
    req = strat.request_for(ctx.spec, ctx.adapter.capabilities, profile=ctx.profile, **kw)
    if ctx.pins:
        # option classes fixed by the engine (a covering-array row, a signature's shrink search)
        req = strat.Request(**{**req.__dict__, "pins": tuple(sorted(ctx.pins.items()))})
    return req


def _draw_case(ctx: Context, draw, check_id: str, *, legacy: bool = True, extensions: bool = True, **kw) -> Case:
    req = _request(ctx, **kw)
    if not legacy:
        req = strat.Request(**{**req.__dict__, "allow_legacy": False})
    if not extensions:  # relations and decompositions of plain cross-entropy: no extension drawn
        req = strat.Request(**{**req.__dict__, "extensions": frozenset()})
    if not req.dtypes or not req.ranks or not req.target_kinds or not req.reductions:
        raise NotSupported("the adapter declares no support for what this check needs")
    case = draw(linear_strategies.cases_of(ctx.spec, req), label="case")
    why = ctx.adapter.capabilities.unsupported(case, need_gradient=kw.get("gradient", False))
    assume(why is None)
    return case


@dataclass
class _Value:
    value: Any
    gradients: dict = field(default_factory=dict)


class NotSupported(Exception):
    """The adapter's declared capabilities exclude everything this check needs."""


# --------------------------------------------------------------------------- check kinds
def _forward(path: str, gradient: bool):
    def example(ctx: Context, draw) -> Outcome:
        cid = f"{'gradient' if gradient else 'forward'}.{path}"
        case = _draw_case(ctx, draw, cid, target_kinds=(path,), gradient=gradient)
        res = _call(ctx, cid, case, gradient=gradient)
        return _judge_call(ctx, cid, case, res, gradient=gradient)
    return example


_OUTCOME_TESTS: dict[str, Callable[[np.ndarray], bool]] = {
    "nan": lambda a: a.size > 0 and bool(np.all(np.isnan(a))),
    "zero": lambda a: a.size > 0 and bool(np.all(a == 0)),
    "zeros": lambda a: bool(np.all(a == 0)),
    "empty": lambda a: a.size == 0,
    "finite": lambda a: bool(np.all(np.isfinite(a))),
    "posinf": lambda a: a.size > 0 and bool(np.all(np.isposinf(a))),
    "has_posinf": lambda a: bool(np.any(np.isposinf(a))),
    "has_nan": lambda a: bool(np.any(np.isnan(a))),
}


def spec_outcome_errors(spec_case, case: Case, ev) -> list[str]:
    """Where the oracle's result contradicts a special case's declared outcome (a spec bug)."""
    errs = []
    for key, outcome in spec_case.expect.items():
        if key == "gradient":
            g = ev.gradients.get("input")
            if g is not None and not _OUTCOME_TESTS[outcome](np.asarray(g)):
                errs.append(f"gradient is not {outcome}")
        elif key == ev.reduction and not _OUTCOME_TESTS[outcome](np.asarray(ev.value)):
            errs.append(f"{key} is not {outcome}: {ev.value!r}")
    return errs


def _special(sid: str):
    def example(ctx: Context, draw) -> Outcome:
        sc = ctx.spec.special_cases[sid]
        cid = f"special.{sid}"
        reds = tuple(r for r in sc.expect if r in ("none", "sum", "mean")) or None
        gradient = "gradient" in sc.expect and "gradient" in ctx.adapter.capabilities.features
        kinds = (sc.path,) if sc.path else None
        case = _draw_case(ctx, draw, cid, target_kinds=kinds, reductions=reds, modifiers=sc.make, gradient=gradient)
        res = _call(ctx, cid, case, gradient=gradient)
        out = _judge_call(ctx, cid, case, res, gradient=gradient)
        # the declared outcome (`expect`) must be what the spec's formulas give: a spec whose
        # special case contradicts its own formulas is the spec's fault, reported as an error
        errs = spec_outcome_errors(sc, case, out.evaluation) if not ctx.vspec.applied_variants else []
        if errs:
            raise SpecContradiction(f"{ctx.spec.file}: special_cases.{sid}.expect: {'; '.join(errs)} on "
                                    f"{case.describe(small=8)}; fix the declared outcome or the formulas")
        return out
    return example


def _extension(eid: str):
    def example(ctx: Context, draw) -> Outcome:
        cid = f"extension.{eid}"
        gradient = "gradient" in ctx.adapter.capabilities.features
        reds = ("sum",) if eid == "normalizer" else None
        case = _draw_case(ctx, draw, cid, target_kinds=("index",), reductions=reds, modifiers=(f"with_{eid}",),
                          gradient=gradient, legacy=False)
        res = _call(ctx, cid, case, gradient=gradient)
        return _judge_call(ctx, cid, case, res, gradient=gradient)
    return example


def _error(eid: str):
    def example(ctx: Context, draw) -> Outcome:
        clause = ctx.spec.errors[eid]
        cid = f"error.{eid}"
        mutation = MUTATIONS[clause.make]
        needs = mutation.needs
        req = _request(ctx, target_kinds=needs.target_kinds or None)
        if needs.ranks:
            req = strat.Request(**{**req.__dict__, "ranks": tuple(r for r in req.ranks if r in needs.ranks)})
        if not req.ranks or not req.target_kinds:
            raise NotSupported("no supported input shape for this mutation")
        req = strat.Request(**{**req.__dict__, "allow_long": False, "allow_legacy": False,
                               "extensions": frozenset()})  # the mutation adds what it needs
        valid = draw(linear_strategies.cases_of(ctx.spec, req), label="valid_case")
        assume(ctx.adapter.capabilities.unsupported(valid) is None)
        assert mutation.fn is not None
        case = mutation.fn(valid, draw)
        assume(case is not None)
        try:
            res = ctx.adapter.call(case, gradient=False)
        except InputsMutated as exc:
            raise CheckFailure(cid, Verdict(False, "inputs", "inputs.unmodified", str(exc)), case) from None
        except Exception as exc:  # noqa: BLE001 - any exception satisfies the clause
            return Outcome(case, [Verdict(True, "error", f"errors.{eid}", f"{type(exc).__name__}: {exc}"[:300])])
        variant = next((v for v in ctx.spec.variants.values()
                        if eid in v.replaces_errors and v.id in ctx.adapter.capabilities.variants), None)
        value = as_float64(res.value)
        if variant is not None:
            if variant.expect == "nan" and np.any(np.isnan(value)):
                return Outcome(case, [Verdict(True, "value", f"variants.{variant.id}", "NaN as the variant says")],
                               variant_used=variant.id)
            raise CheckFailure(cid, Verdict(False, "value", f"variants.{variant.id}",
                                            f"accepted {case.purpose} and returned {_short(value)}; "
                                            f"the declared variant '{variant.id}' requires NaN"), case)
        sev = clause.severity
        raise CheckFailure(cid, Verdict(False, "error", f"errors.{eid}",
                                        f"accepted invalid input ({case.purpose}) and returned {_short(value)}; "
                                        f"the spec says it {sev} be rejected"
                                        + (f" (torch: {clause.torch})" if clause.torch else "")),
                           case, severity=sev)
    return example


def _short(a) -> str:
    a = np.asarray(a)
    return repr(float(a)) if a.ndim == 0 else f"an array of shape {a.shape}"


def _metamorphic(mid: str):
    def example(ctx: Context, draw) -> Outcome:
        rel = ctx.spec.metamorphic[mid]
        cid = f"metamorphic.{mid}"
        gradient = rel.relation in GRADIENT_RELATIONS or (
            rel.relation == "not_aliased" and "gradient" in ctx.adapter.capabilities.features)
        regimes = ("ordinary", "ties", "confident")
        case = _draw_case(ctx, draw, cid, target_kinds=rel.paths or None, reductions=rel.reductions or None,
                          regimes=regimes, allow_long=False, gradient=gradient, legacy=False, extensions=False)
        relation = rel.relation_for(case.reduction)
        if relation is None:
            reject()
        if relation == "gradient_rows_sum_to_zero":
            return _rows_sum_to_zero(ctx, cid, case)
        if relation == "not_aliased":
            return _not_aliased(ctx, cid, case, gradient)
        transform = mm.TRANSFORMS[rel.transform].fn
        assert transform is not None
        out = transform(case, draw)
        assume(out is not None)
        case2, permutation = out
        # The spec's relation says how the two outputs correspond: "permuted" maps the first
        # output through the transform's permutation, "equal" compares them as they are.
        mapping = permutation if relation == "permuted" else mm.same
        assume(ctx.adapter.capabilities.unsupported(case2) is None)
        if relation == "own_gradient":
            return _interleaved(ctx, cid, case, case2)
        # Both calls are first judged against the oracle like any forward call, so that a
        # wrong value is reported as what it is; the relation then binds the two together.
        r1 = _call(ctx, cid, case, gradient=False)
        ev1 = _judge_call(ctx, cid, case, r1, gradient=False).evaluation
        if rel.transform == "nll_loss_of_log_softmax":
            v2 = _decomposed(ctx, cid, case)
            ev2 = ev1  # the same inputs, another route
        else:
            v2 = _call(ctx, cid, case2, gradient=False).value
            ev2 = _judge_call(ctx, cid, case2, _Value(v2), gradient=False).evaluation
        dtype = case.dtype
        e1 = mapping(np.asarray(ev1.value, dtype=np.float64))
        _relation_holds_exactly(ctx, mid, relation, e1, np.asarray(ev2.value, dtype=np.float64), case2)
        bound = (mapping(ctx.judge.value_bound(ev1, dtype)) + ctx.judge.value_bound(ev2, dtype)
                 + np.nan_to_num(np.abs(ev2.value - e1), nan=0.0, posinf=0.0)
                 + ctx.judge.tol.dtypes[dtype].u * np.abs(np.nan_to_num(e1, nan=0.0, posinf=0.0, neginf=0.0)))
        a1 = mapping(as_float64(r1.value)) if np.ndim(r1.value) else as_float64(r1.value)
        v = ctx.judge.compare(v2, a1, bound, dtype, what=f"loss after {case2.purpose}", clause=f"metamorphic.{mid}",
                              expected_dtype=dtype)
        if not v.ok:
            v.message = f"{rel.description or mid}: {v.message} (first call's value is the expectation)"
            raise CheckFailure(cid, v, case2, related=case)
        return Outcome(case, [v])
    return example


class SpecContradiction(Exception):
    """The spec's own formulas contradict a relation it declares: a fault of the spec, reported
    as the check's ``error``, never as the implementation's failure."""


def _relation_holds_exactly(ctx: Context, mid: str, relation: str, e1: np.ndarray, e2: np.ndarray, case2: Case) -> None:
    """A declared relation must hold between the oracle's exact values (up to float64
    rounding); otherwise the relation in the spec is wrong, whatever the implementation does."""
    with np.errstate(all="ignore"):
        same_shape = np.shape(e1) == np.shape(e2)
        gap = np.abs(e2 - e1) if same_shape else np.inf
        scale = np.abs(np.nan_to_num(e1, posinf=0, neginf=0)) + np.abs(np.nan_to_num(e2, posinf=0, neginf=0))
        ok = same_shape and bool(np.all((gap <= 1e-11 * scale + 1e-300) | (np.isnan(e1) & np.isnan(e2))
                                        | (np.isinf(e1) & (e1 == e2))))
    if not ok:
        raise SpecContradiction(
            f"{ctx.spec.file}: metamorphic.{mid}: relation {relation!r} does not hold for the spec's own "
            f"formulas on {case2.purpose or 'the transformed input'} (exact values {np.ravel(e1)[:4].tolist()} "
            f"vs {np.ravel(e2)[:4].tolist()}); fix the relation in the spec")


def _decomposed(ctx: Context, cid: str, case: Case):
    try:
        lp = ctx.adapter.log_softmax(case.x, case.class_axis)
        return ctx.adapter.nll_loss(lp, case.target, weight=case.weight, ignore_index=case.ignore_index,
                                    reduction=case.reduction)
    except Exception as exc:  # noqa: BLE001
        msg = f"log_softmax/nll_loss raised on a valid input: {type(exc).__name__}: {exc}"[:400]
        raise CheckFailure(cid, Verdict(False, "call", "valid_input.accepted", msg), case) from None


#: Relations judged on gradients (the check needs the adapter's gradient support).
GRADIENT_RELATIONS = ("gradient_rows_sum_to_zero", "own_gradient")


def _interleaved(ctx: Context, cid: str, case: Case, case2: Case) -> Outcome:
    """forward(a), forward(b) of the same shape, then backward(a), backward(b): each result
    is judged against its own call's exact value and gradient (a backward that reads a
    workspace shared per shape returns the other call's gradient)."""
    assume(case.positions > 0 and case.num_classes > 1)
    # only a pair whose exact gradients differ tells one call's gradient from the other's
    # (negating tied or all-zero rows gives the same logits back)
    ev1, ev2 = ctx.oracle.evaluate(case), ctx.oracle.evaluate(case2)
    g1, g2 = ev1.gradients, ev2.gradients
    assume(any(not np.allclose(g1[k], g2[k], equal_nan=True) for k in g1 if k in g2))
    adapter = ctx.adapter
    try:
        h1 = adapter.forward(case, gradient=True)
        h2 = adapter.forward(case2, gradient=True)
        r1 = adapter.backward(h1)
        r2 = adapter.backward(h2)
    except InputsMutated as exc:
        raise CheckFailure(cid, Verdict(False, "inputs", "inputs.unmodified", str(exc)), case) from None
    except Exception as exc:  # noqa: BLE001
        msg = f"interleaved forward/backward raised on a valid input: {type(exc).__name__}: {exc}"[:400]
        raise CheckFailure(cid, Verdict(False, "call", "valid_input.accepted", msg), case) from None
    outs = []
    for c, r, ev, other, order in ((case, r1, ev1, case2, "first"), (case2, r2, ev2, case, "second")):
        try:
            outs.append(_judge_call(ctx, cid, c, r, gradient=True, ev=ev))
        except CheckFailure as f:
            f.verdict.message = (f"the {order} of two interleaved calls (forward, forward, backward, backward): "
                                 f"{f.verdict.message}")
            raise CheckFailure(cid, f.verdict, c, related=other) from None
    return outs[0]


def _not_aliased(ctx: Context, cid: str, case: Case, gradient: bool) -> Outcome:
    """The returned loss and gradients are fresh memory: no view of an argument, none of
    another returned array (the adapter reports what shares memory)."""
    res = _call(ctx, cid, case, gradient=gradient)
    if res.shared is None:
        raise NotSupported(f"{ctx.adapter.name} cannot tell which returned arrays share memory")
    out = _judge_call(ctx, cid, case, res, gradient=gradient)
    if res.shared:
        raise CheckFailure(cid, Verdict(False, "relation", f"metamorphic.{cid.split('.', 1)[1]}",
                                        f"returned arrays share memory: {'; '.join(res.shared)}",
                                        expected="fresh memory", actual="; ".join(res.shared)), case)
    return out


def _rows_sum_to_zero(ctx: Context, cid: str, case: Case) -> Outcome:
    res = _call(ctx, cid, case, gradient=True)
    ev = ctx.oracle.evaluate(case, gradients=True)
    g = res.gradients.get("input")
    if g is None:
        raise CheckFailure(cid, Verdict(False, "gradient[input]", "paths.gradients.input", "no gradient returned"),
                           case)
    ax = case.class_axis
    s = np.sum(as_float64(g), axis=ax)
    bound = (np.sum(np.abs(ctx.judge.gradient_bound(ev, "input", case.dtype, case)), axis=ax)
             + np.sum(np.abs(as_float64(g)), axis=ax) * ctx.judge.tol.dtypes[case.dtype].u * 2)
    expected = np.sum(ev.gradients["input"], axis=ax)  # 0 up to float64 rounding; NaN where the gradient is
    v = ctx.judge.compare(s.astype(np.float64).astype(np_dtype(case.dtype)), expected, bound, case.dtype,
                          what="sum of each gradient row", clause=f"metamorphic.{cid.split('.', 1)[1]}")
    if not v.ok:
        raise CheckFailure(cid, v, case)
    return Outcome(case, [v])


def _decomposition(op: str):
    def example(ctx: Context, draw) -> Outcome:
        cid = f"decomposition.{op}"
        spec = ctx.extra_specs[op]
        case = _draw_case(ctx, draw, cid, target_kinds=("index",),
                          regimes=("ordinary", "large_magnitude", "ties", "confident"),
                          allow_long=False, legacy=False, extensions=False)
        case = case.copy(label_smoothing=0.0)
        oracle, judge = Oracle(spec), Judge(spec)
        c2 = case
        if op == "nll_loss":
            # exact log-probabilities, rounded to the dtype: nll_loss's input
            lp = as_float64(ctx.oracle.evaluate(case, gradients=False).env["lp"])
            c2 = case.copy(x=case.from_canonical(lp, "elementwise").astype(case.x.dtype), purpose="log-probabilities")
        try:
            if op == "log_softmax":
                actual = ctx.adapter.log_softmax(case.x, case.class_axis)
            else:
                actual = ctx.adapter.nll_loss(c2.x, case.target, weight=case.weight, ignore_index=case.ignore_index,
                                              reduction=case.reduction)
        except Exception as exc:  # noqa: BLE001
            msg = f"{op} raised on a valid input: {type(exc).__name__}: {exc}"[:400]
            raise CheckFailure(cid, Verdict(False, "call", "valid_input.accepted", msg), case) from None
        ev = oracle.evaluate(c2, gradients=False, reduction=None if op == "nll_loss" else "none")
        v = judge.compare(actual, ev.value, judge.value_bound(ev, case.dtype), case.dtype, what=op,
                          clause=f"{op}.paths.{ev.path}.reductions.{ev.reduction}")
        if not v.ok:
            raise CheckFailure(cid, v, c2)
        return Outcome(c2, [v])
    return example


def _crossdevice(ctx: Context, draw) -> Outcome:
    """The same inputs on the device and on the CPU twin: both within the spec's tolerance of
    the oracle, and within the sum of their bounds of each other."""
    cid = "crossdevice.cpu_agreement"
    twin = ctx.twin()
    case = _draw_case(ctx, draw, cid, legacy=False, gradient=True)
    assume(twin.capabilities.unsupported(case, need_gradient=True) is None)
    r1 = _call(ctx, cid, case, gradient=True)
    out = _judge_call(ctx, cid, case, r1, gradient=True)
    r2 = twin.call(case, gradient=True)
    ev = out.evaluation
    b = 2 * ctx.judge.value_bound(ev, case.dtype)
    v = ctx.judge.compare(r1.value, as_float64(r2.value), b, case.dtype, what=f"loss vs {twin.name}",
                          clause="crossdevice.value")
    if not v.ok:
        raise CheckFailure(cid, v, case)
    for wrt, g in r1.gradients.items():
        if wrt in r2.gradients and wrt in ev.gradients:
            gb = 2 * ctx.judge.gradient_bound(ev, wrt, case.dtype, case)
            gv = ctx.judge.compare(g, as_float64(r2.gradients[wrt]), gb, case.dtype,
                                   what=f"gradient[{wrt}] vs {twin.name}", clause="crossdevice.gradient",
                                   unspecified=ev.unspecified.get(wrt))
            if not gv.ok:
                raise CheckFailure(cid, gv, case)
    return out


# --------------------------------------------------------------------------- catalogue
def catalogue(spec: Spec) -> list[Check]:
    """Every check the spec implies, in a stable order."""
    P = PROFILES
    out: list[Check] = []
    for path in spec.paths:
        f = spec.paths[path]
        out.append(Check(f"forward.{path}", "forward", f"paths.{path}",
                         f"loss value, dtype and shape on {path} targets for every option set", _forward(path, False),
                         {k: v["forward"] for k, v in P.items()},
                         formula="\n".join(f"{k} = {b.source}" for k, b in f.bindings.items())))
        if f.gradients:
            out.append(Check(f"gradient.{path}", "gradient", f"paths.{path}.gradients",
                             f"gradients w.r.t. {', '.join(f.gradients)} on {path} targets", _forward(path, True),
                             {k: v["gradient"] for k, v in P.items()}, need_gradient=True,
                             formula="\n".join(f"{k} = {b.source}" for g in f.gradients.values()
                                                for k, b in g.bindings.items())))
    for sid, sc in spec.special_cases.items():
        out.append(Check(f"special.{sid}", "special", f"special_cases.{sid}",
                         (sc.note or "") + f" (make: {', '.join(sc.make)}; expect: {sc.expect})", _special(sid),
                         {k: v["special"] for k, v in P.items()},
                         features=frozenset(f for m in sc.make for f in MODIFIERS[m].needs.features),
                         extensions=frozenset(e for m in sc.make for e in MODIFIERS[m].needs.extensions)))
    for eid, clause in spec.errors.items():
        mutation = MUTATIONS[clause.make]
        out.append(Check(f"error.{eid}", "error", f"errors.{eid}",
                         f"{mutation.doc} {clause.severity} be rejected", _error(eid),
                         {k: v["error"] for k, v in P.items()}, severity=clause.severity,
                         features=frozenset(mutation.needs.features),
                         extensions=frozenset(mutation.needs.extensions)))
    for eid, ext in spec.extensions.items():
        out.append(Check(f"extension.{eid}", "forward", f"extensions.{eid}",
                         f"{ext.description} (value, extra outputs and gradient with {eid} on)", _extension(eid),
                         {k: v["gradient"] for k, v in P.items()}, extensions=frozenset({eid}),
                         formula="\n".join(f"{k} = {f.source}" for k, f in {**ext.formulas, **ext.reductions}.items())))
    for mid, rel in spec.metamorphic.items():
        out.append(Check(f"metamorphic.{mid}", "metamorphic", f"metamorphic.{mid}", rel.description or mid,
                         _metamorphic(mid), {k: v["metamorphic"] for k, v in P.items()},
                         need_gradient=rel.relation in GRADIENT_RELATIONS, requires=rel.requires))
    if spec.operation == "cross_entropy":
        out.append(Check("crossdevice.cpu_agreement", "crossdevice", "crossdevice",
                         "a GPU adapter agrees with its CPU twin on the same inputs (both judged by the oracle)",
                         _crossdevice, {k: v["gradient"] // 2 for k, v in P.items()}, requires=("cpu_twin",)))
        for op in ("log_softmax", "nll_loss"):
            out.append(Check(f"decomposition.{op}", "decomposition", f"{op}.yaml",
                             f"the adapter's {op} against specs/{op}.yaml", _decomposition(op),
                             {k: v["decomposition"] for k, v in P.items()}, requires=(op,)))
    return out
