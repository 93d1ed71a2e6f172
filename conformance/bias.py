"""One-sided rounding: a failure no per-element bound can see.

An implementation that stores a bfloat16 intermediate (the log-sum-exp, the row losses) by
truncation instead of round-to-nearest stays inside every element's tolerance, but its
errors all lie on one side. Round-to-nearest gives an error of either sign with probability
1/2 (the exact value sits anywhere between two neighbours), so over a check's passing
examples the signs of the small loss errors (at most ``max_ulps`` ulp, one per distinct exact
value, outputs in the rule's dtypes) follow Binomial(n, 1/2). A two-sided sign test below
``alpha`` (1e-6 in the spec) whose mean error reaches ``min_mean_ulps`` is a failure of the
clause ``tolerances.unbiased``: a correct implementation is flagged with probability below
alpha per check and run.

The rule and its constants are the spec's ``tolerances.unbiased``; the samples come from
:meth:`conformance.compare.Judge.compare` (``Verdict.signed``).
"""
from __future__ import annotations

import math
from fractions import Fraction


def sign_test_p(n_neg: int, n: int) -> float:
    """Two-sided exact binomial p-value of ``n_neg`` negatives among ``n`` signs under p = 1/2."""
    if n == 0:
        return 1.0
    k = min(n_neg, n - n_neg)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def judge(outcomes, rule: dict | None):
    """None, or (message, case, figures) when the signs of the errors of ``outcomes`` (passing
    examples of one check) fail the sign test, per kind of output (loss, gradients)."""
    if not rule:
        return None
    groups: dict[tuple[str, str], dict[float, float]] = {}
    cases: dict[tuple[str, str], object] = {}
    for o in outcomes:
        for v in o.verdicts:
            if not v.signed or str(v.what).startswith("gradient"):
                continue  # loss values only (the spec's rule says why)
            key = (o.case.dtype, "loss")
            g = groups.setdefault(key, {})
            for exact, err in v.signed:
                g.setdefault(exact, err)
            cases.setdefault(key, o.case)
    worst = None
    for key, g in sorted(groups.items()):
        n = len(g)
        if n < int(rule["min_samples"]):
            continue
        n_neg = sum(1 for err in g.values() if err < 0)
        p = sign_test_p(n_neg, n)
        mean = sum(g.values()) / n
        if p < float(rule["alpha"]) and abs(mean) >= float(rule.get("min_mean_ulps", 0)) and (worst is None or p < worst[0]):
            worst = (p, key, n, n_neg, mean)
    if worst is None:
        return None
    p, (dtype, what), n, n_neg, mean = worst
    side = "below" if n_neg > n - n_neg else "above"
    msg = (f"{what} in {dtype}: {max(n_neg, n - n_neg)} of {n} rounding errors lie {side} the exact value "
           f"(mean {mean:+.3g} ulp; sign test p = {p:.2g} < {rule['alpha']}): one-sided rounding "
           f"(truncation?) that each element's bound allows, but round-to-nearest does not")
    return msg, cases[(dtype, what)], {"n": n, "negative": n_neg, "p": p, "mean_ulps": mean, "dtype": dtype,
                                        "what": what}


def apply(res, outcomes, spec) -> None:
    """Turn a passing :class:`~conformance.engine.CheckResult` into a failure of
    ``tolerances.unbiased`` when its examples' rounding is one-sided."""
    if res.status not in ("passed", "variant", "known"):
        return
    found = judge(outcomes, getattr(spec.tolerances, "unbiased", None))
    if found is None:
        return
    from .compare import Verdict
    from .engine import case_inputs_npz
    from .gate import signature

    msg, case, figures = found
    what = "gradient[input]" if figures["what"] == "gradient" else "loss"
    verdict = Verdict(False, what, "tolerances.unbiased", msg, expected="either sign with probability 1/2",
                      actual=f"{figures['negative']} negative of {figures['n']}")
    res.status, res.severity = "failed", "MUST"
    res.message = f"[{res.check}] {msg}"
    res.failure = {"clause": "tolerances.unbiased", "what": what, "message": msg, "expected": verdict.expected,
                   "actual": verdict.actual, "bias": figures, "counterexample": case.describe(),
                   "signature": signature(res.kind, verdict, case), "seed": res.seed}
    res.failure_inputs = case_inputs_npz(case)
