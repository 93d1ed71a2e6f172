"""One-sided rounding: a failure no per-element bound can see.

An implementation that stores a bfloat16 intermediate (the log-sum-exp, the row losses) by
truncation instead of round-to-nearest stays inside every element's tolerance, but its
errors all lie on one side. The rule (the spec's ``tolerances.unbiased``) looks only at the
elements where rounding once decides the error (:func:`conformance.compare.rounding_samples`):

- the exact value ``e`` is not representable in the output dtype, so it lies strictly
  between two neighbours ``lo < e < hi``, and the output is one of them;
- what a correct implementation's float32 internal math may err there (the float32 row of
  the per-element bound, :meth:`~conformance.compare.Judge.internal_bound`) is at most
  ``max_internal`` (eta) half-ulps of the output dtype: a larger internal error may move
  the result across the midpoint legitimately (half-precision inputs computed in float32
  whose loss cancels to a tiny value err by many output ulps, on one side);
- one element per ulp interval, so that equal or nearly equal exact values count once.

Each such element gives ``z = (output - e) / half-ulp``: in [-1, 1] for round-to-nearest,
in (-2, 0] for truncation of a positive value (mean -1).

Why the false-positive rate is bounded. Round-to-nearest of an internal value within
``eta`` half-ulps of ``e`` returns RN(e) unless ``e`` lies within ``eta`` half-ulps of the
midpoint of (lo, hi); for an exact value placed anywhere in its interval (density even on
the scale of one ulp), that happens with probability at most eta / 2, so each sign is
positive with probability at most p0 = (1 + eta) / 2, and negative likewise. The rule fails
a check when, over ``n >= min_samples`` elements,

- the exact two-sided binomial tail of the majority sign under p0 is below ``alpha``
  (1e-6 in the spec; so at most alpha per check and dtype for a correct implementation),
- and the mean of z reaches ``min_mean`` half-ulps in that direction (truncation gives
  about -1; exact values that sit just above a representable number, as confident rows'
  losses do, round down with z near 0 and are not a bias).

With eta = 1/8, 30 elements of one sign give p = 2 * 0.5625**30 = 6.4e-8 < 1e-6.
Gradients are left out: half-precision softmax gradients carry legitimate skews.
"""
from __future__ import annotations

import math


def sign_test_p(n_major: int, n: int, p0: float = 0.5) -> float:
    """Two-sided tail: 2 * P(Binomial(n, p0) >= n_major), n_major the count of the majority
    sign (a count under n / 2 is taken from the other side), capped at 1."""
    if n == 0:
        return 1.0
    k = max(n_major, n - n_major)
    if p0 >= 1:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p0)
            + (n - i) * math.log1p(-p0) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))


def judge(outcomes, rule: dict | None, skip_dtypes=frozenset()):
    """None, or (message, case, figures) when the loss rounding errors of ``outcomes``
    (passing examples of one check), per output dtype (but ``skip_dtypes``), are one-sided."""
    if not rule:
        return None
    groups: dict[str, dict[float, float]] = {}
    cases: dict[str, object] = {}
    for o in outcomes:
        if o.case.dtype in skip_dtypes:
            continue
        for v in o.verdicts:
            if not getattr(v, "signed", None):
                continue
            g = groups.setdefault(o.case.dtype, {})
            for lo, z in v.signed:
                g.setdefault(lo, z)
            cases.setdefault(o.case.dtype, o.case)
    p0 = (1 + float(rule["max_internal"])) / 2
    worst = None
    for dtype, g in sorted(groups.items()):
        n = len(g)
        if n < int(rule["min_samples"]):
            continue
        n_neg = sum(1 for z in g.values() if z < 0)
        mean = sum(g.values()) / n
        major_neg = n_neg > n - n_neg
        if (mean if major_neg else -mean) > -float(rule["min_mean"]):
            continue  # the mean does not lean the way the signs do, far enough
        p = sign_test_p(max(n_neg, n - n_neg), n, p0)
        if p < float(rule["alpha"]) and (worst is None or p < worst[0]):
            worst = (p, dtype, n, n_neg, mean)
    if worst is None:
        return None
    p, dtype, n, n_neg, mean = worst
    side = "below" if n_neg > n - n_neg else "above"
    msg = (f"loss in {dtype}: {max(n_neg, n - n_neg)} of {n} roundings lie {side} the exact value "
           f"(mean {mean:+.3g} half-ulp; sign test p = {p:.2g} < {rule['alpha']}): one-sided rounding "
           f"(truncation?) that each element's bound allows, but round-to-nearest does not")
    return msg, cases[dtype], {"n": n, "negative": n_neg, "p": p, "mean_half_ulps": mean, "dtype": dtype,
                               "what": "loss"}


def apply(res, outcomes, spec, inputs_npz) -> None:
    """Turn a passing :class:`~conformance.engine.CheckResult` into a failure of
    ``tolerances.unbiased`` when its examples' rounding is one-sided. A check that already
    failed keeps its verdict; where known divergences were accepted ("known"), their dtypes
    are left out (a known float16 error is not a float16 rounding bias, but it does not hide
    a bfloat16 one). ``inputs_npz`` (the engine's ``case_inputs_npz``, passed in so that this
    module does not import the engine) stores the example's inputs."""
    if res.status not in ("passed", "variant", "known"):
        return
    skip: frozenset[str | None] = frozenset()
    if res.status == "known":
        skip = frozenset((f.get("signature") or {}).get("dtype") for f in (res.failures or []) if f.get("accepted_by"))
        if not skip or None in skip:
            return  # accepted failures whose dtype is not recorded: judge nothing
    found = judge(outcomes, getattr(spec.tolerances, "unbiased", None), skip)
    if found is None:
        return
    from .compare import Verdict
    from .gate import signature

    msg, case, figures = found
    verdict = Verdict(False, "loss", "tolerances.unbiased", msg, expected="either side with probability 1/2",
                      actual=f"{figures['negative']} below of {figures['n']}")
    res.status, res.severity = "failed", "MUST"
    res.message = f"[{res.check}] {msg}"
    res.failure = {"clause": "tolerances.unbiased", "what": "loss", "message": msg, "expected": verdict.expected,
                   "actual": verdict.actual, "bias": figures, "counterexample": case.describe(),
                   "signature": signature(res.kind, verdict, case), "seed": res.seed}
    res.failure_inputs = inputs_npz(case)
