"""Runs one check of one adapter under Hypothesis and condenses what happened.

This is the seam between the checks (which judge single examples) and the runners (the
pytest plugin, the meta-tests and the CLI): one call, one :class:`CheckResult`, whatever the
outcome, with the shrunk counterexample, its inputs and the Hypothesis reproduction blob on
failure.
"""
from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Unsatisfiable

from . import strategies as strat
from .checks import Check, CheckFailure, Context, NotSupported, Outcome

@dataclass
class CheckResult:
    adapter: str
    check: str
    kind: str
    clause: str
    description: str
    status: str
    severity: str = "MUST"
    examples: int = 0
    duration_s: float = 0.0
    message: str = ""
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    accuracy: dict[str, list[float]] = field(default_factory=dict)   # dtype -> error ulps sample
    ratios: dict[str, list[float]] = field(default_factory=dict)     # dtype -> error/bound sample
    worst: list[dict[str, Any]] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    variants: list[str] = field(default_factory=list)
    known: dict[str, Any] | None = None
    #: Inputs of the failing case (npz bytes), written next to results.json by the runner.
    failure_inputs: bytes | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return f"{self.adapter}::{self.check}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("failure_inputs")
        d["id"] = self.id
        return d


def _settings(check: Check, profile: str, *, derandomize: bool, database) -> settings:
    return settings(
        max_examples=check.max_examples[profile],
        deadline=None,
        derandomize=derandomize,
        database=database,
        print_blob=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )


def case_inputs_npz(case) -> bytes:
    """The exact inputs of a case as an .npz (bfloat16 stored as uint16 bits)."""
    arrays = {}
    for name, a in (("input", case.x), ("target", case.target), ("weight", case.weight), ("upstream", case.upstream)):
        if a is None:
            continue
        a = np.asarray(a)
        if a.dtype.kind == "V" or a.dtype.name == "bfloat16":
            arrays[f"{name}__bfloat16"] = a.view(np.uint16)
        else:
            arrays[name] = a
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def run_check(ctx: Context, check: Check, *, seed: int | None = None, derandomize: bool = False,
              database_dir: str | None = None, isolate: bool = True) -> CheckResult:
    """Run ``check`` for ``ctx.adapter`` and return its result; never raises for adapter faults.

    Check kinds the adapter lists in ``isolate_kinds`` run in a child process
    (:mod:`conformance.isolation`), so that a crash or a poisoned CUDA context stays there."""
    if isolate and check.kind in getattr(ctx.adapter, "isolate_kinds", ()):
        from .isolation import run_isolated
        return run_isolated(getattr(ctx.adapter, "source", ctx.adapter.name), check, profile=ctx.profile,
                            seed=seed, spec_file=ctx.spec.file, name=ctx.adapter.name)
    caps = ctx.adapter.capabilities
    needed = sorted(check.features - set(caps.features))
    if needed:
        return CheckResult(ctx.adapter.name, check.id, check.kind, check.clause, check.description, "not_supported",
                           severity=check.severity,
                           message=f"the adapter declares no support for {', '.join(needed)}")
    res = CheckResult(ctx.adapter.name, check.id, check.kind, check.clause, check.description, "passed",
                      severity=check.severity)
    missing = [r for r in check.requires
               if r not in caps.extras and not (r == "cpu_twin" and getattr(ctx.adapter, "cpu_twin", None))]
    if missing:
        res.status, res.message = "not_supported", f"the adapter exposes no {', '.join(missing)}"
        return res
    if check.need_gradient and "gradient" not in caps.features:
        res.status, res.message = "not_supported", "the adapter declares no gradient support"
        return res
    if check.kind == "error" and not caps.raises_on_invalid:
        clause = ctx.spec.errors[check.id.split(".", 1)[1]]
        if not any(clause.id in v.replaces_errors and v.id in caps.variants for v in ctx.spec.variants.values()):
            if clause.make in ("target_at_least_C", "target_negative_not_ignored"):
                res.status, res.message = "not_supported", "the adapter declares that it cannot raise on data values"
                return res
    outcomes: list[Outcome] = []
    tried = [0]

    def body(data):
        tried[0] += 1
        outcomes.append(check.example(ctx, data.draw))

    database = DirectoryBasedExampleDatabase(database_dir) if database_dir else None
    test = given(st.data())(body)
    test = _settings(check, ctx.profile, derandomize=derandomize, database=database)(test)
    if seed is not None and not derandomize:
        test = hyp_seed(seed)(test)
    # Hypothesis keys its example database on the test function: make it the check's id.
    test.hypothesis.inner_test.__qualname__ = f"{ctx.adapter.name}::{check.id}"
    t0 = time.perf_counter()
    try:
        test()
    except CheckFailure as f:
        res.status = "failed"
        res.severity = f.severity
        res.message = str(f)
        v = f.verdict
        res.failure = {
            "clause": v.clause, "what": v.what, "message": v.message,
            "expected": v.expected, "actual": v.actual,
            "error_ulps": v.max_error_ulps, "bound_ulps": v.bound_ulps, "index": list(v.worst_index) if v.worst_index else None,
            "counterexample": f.case.describe(),
            "related": f.related.describe() if f.related is not None else None,
            "exception": f.exception,
            "reproduce": [n for n in getattr(f, "__notes__", []) if "reproduce_failure" in n or "seed" in n],
            "notes": [n for n in getattr(f, "__notes__", [])][:6],
            "seed": seed,
        }
        res.failure_inputs = case_inputs_npz(f.case)
    except (NotSupported, strat.NothingToDraw) as exc:
        res.status, res.message = "not_supported", str(exc)
    except Unsatisfiable:
        res.status, res.message = "not_supported", "no supported input could be drawn for this check"
    except Exception as exc:  # noqa: BLE001 - a fault of the suite itself, reported as such
        import traceback
        res.status = "error"
        res.message = f"{type(exc).__name__}: {exc}"
        res.failure = {"traceback": traceback.format_exc()[-4000:]}
    res.duration_s = round(time.perf_counter() - t0, 3)
    _summarise(res, outcomes)
    # every example Hypothesis ran (shrinking included), not only those that passed
    res.examples = tried[0]
    if res.status == "passed" and res.variants:
        res.status = "variant"
    return res


def _summarise(res: CheckResult, outcomes: list[Outcome]) -> None:
    cov: dict[str, Counter] = {}
    acc: dict[str, list[float]] = {}
    rat: dict[str, list[float]] = {}
    worst: list[tuple[float, dict]] = []
    variants = set()
    for o in outcomes:
        for k, v in o.case.features().items():
            cov.setdefault(k, Counter())[v] += 1
        dt = o.case.dtype
        for v in o.verdicts:
            if v.ulps:
                acc.setdefault(dt, []).extend(v.ulps[:16])
                rat.setdefault(dt, []).extend(v.ratios[:16])
                r = max(v.ratios) if v.ratios else 0.0
                worst.append((r, {"dtype": dt, "what": v.what, "error_ulps": v.max_error_ulps,
                                  "bound_ulps": v.bound_ulps, "ratio": r, "case": o.case.describe(small=8)}))
        if o.variant_used:
            variants.add(o.variant_used)
    res.coverage = {k: dict(c) for k, c in cov.items()}
    res.accuracy = {k: v[:400] for k, v in acc.items()}
    res.ratios = {k: v[:400] for k, v in rat.items()}
    res.worst = [w for _, w in sorted(worst, key=lambda t: -t[0])[:3]]
    res.variants = sorted(variants)
