"""The spec's own consistency test: every special case's declared outcome (``expect``) must
follow from the spec's formulas.

A spec that declares ``all_ignored: {mean: zero}`` while its mean formula gives NaN would fail
every correct implementation and blame the adapters; this finds the contradiction first and
reports it as a spec error (file:line of the ``expect``). It draws a handful of small inputs per
special case with the suite's own strategies (derandomised, no example database), so it costs
about a second; :func:`check` runs at ``ce-conformance run`` start and in ``spec validate``,
once per spec text in a process, not on every :func:`conformance.spec.load`.
"""
from __future__ import annotations

from .spec import Spec, SpecError

#: Inputs drawn per special case.
EXAMPLES = 4
_CHECKED: set[str] = set()


def check(spec: Spec) -> None:
    """Raise :class:`SpecError` at the first special case whose outcome the formulas contradict."""
    if spec.sha256 in _CHECKED or "elementwise" in spec.paths:
        return
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from . import linear_strategies
    from . import strategies as strat
    from .adapters.base import Capabilities
    from .checks import spec_outcome_errors
    from .oracle import Oracle

    oracle = Oracle(spec)
    for sid, sc in spec.special_cases.items():
        reds = tuple(r for r in sc.expect if r in ("none", "sum", "mean")) or None
        caps = Capabilities(extensions=frozenset(spec.extensions) | {"return_z_loss"})  # every extension may be drawn
        req = strat.request_for(spec, caps, target_kinds=(sc.path,) if sc.path else None,
                                reductions=reds, modifiers=sc.make)
        if not (req.dtypes and req.ranks and req.target_kinds and req.reductions):
            continue  # outside the spec's domains: the suite never draws it either
        found: list[str] = []

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.data())
        def draw(data):  # called at once below, within this iteration: the loop variables are current
            if found:  # noqa: B023
                return
            case = data.draw(linear_strategies.cases_of(spec, req))  # noqa: B023
            errors = spec_outcome_errors(sc, case, oracle.evaluate(case, gradients="gradient" in sc.expect))  # noqa: B023
            if errors:
                found.append(f"{'; '.join(errors)} for {case.describe()}")  # noqa: B023

        try:
            draw()
        except Exception as exc:  # noqa: BLE001 - a case the spec's own formulas cannot evaluate
            found.append(f"its inputs cannot be drawn or evaluated ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")
        if found:
            line, col = spec.marks.at(("special_cases", sid, "expect")) if spec.marks else (None, None)
            raise SpecError(spec.file, line, col,
                            f"special_cases.{sid}.expect does not follow from the spec's formulas: {found[0][:400]}",
                            "correct the declared outcome or the formula it contradicts")
    _CHECKED.add(spec.sha256)
