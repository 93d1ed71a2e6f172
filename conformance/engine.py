"""Runs one check of one adapter under Hypothesis and condenses what happened.

This is the seam between the checks (which judge single examples) and the runners (the
pytest plugin, the meta-tests and the CLI): one call, one :class:`CheckResult`, whatever the
outcome, with the shrunk counterexample, its inputs and the Hypothesis reproduction blob on
failure.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import random
import signal
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure, FlakyStrategyDefinition, Unsatisfiable

from . import bias, covering
from . import strategies as strat
from .checks import Check, CheckFailure, Context, NotSupported, Outcome
from .gate import OPTION_CLASSES, FailureFilter, option_classes, signature, signature_key
from .mutations import MUTATIONS
from .status import Status


@dataclass
class CheckResult:
    adapter: str
    check: str
    kind: str
    clause: str
    description: str
    status: Status
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
    #: Every distinct failure (by signature) the search met, new ones first: signature, count,
    #: which known entry or baseline accepted it (None: new), shrunk counterexample.
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: Distinct failures beyond those kept in ``failures``.
    failures_omitted: int = 0
    #: t-way coverage of the option classes: {"t", "covered", "total", "rows", "rows_run"}.
    tway: dict[str, Any] = field(default_factory=dict)
    #: The Hypothesis seed the searches used (drawn when the run gave none).
    seed: int | None = None
    #: When the first failing example no known entry or baseline accepted was met:
    #: {"examples": examples tried so far, "seconds": since the check started}; None if none.
    first_failure: dict[str, Any] | None = None
    #: Inputs of the failing case (npz bytes), written next to results.json by the runner.
    failure_inputs: bytes | None = field(default=None, repr=False)
    #: The status in the ``--baseline`` run when that excused a suite error (the runner's
    #: ``apply_baseline``); written only when set.
    baseline: str | None = None

    @property
    def id(self) -> str:
        return f"{self.adapter}::{self.check}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("failure_inputs")
        baseline = d.pop("baseline")
        d["id"] = self.id
        if baseline is not None:
            d["baseline"] = baseline
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckResult:
        """The inverse of :meth:`to_json` (unknown keys ignored; failure inputs from
        ``failure_inputs_b64`` when present)."""
        import base64

        names = {f.name for f in fields(cls)} - {"failure_inputs"}
        out = cls(**{k: v for k, v in d.items() if k in names})
        blob = d.get("failure_inputs_b64")
        out.failure_inputs = base64.b64decode(blob) if blob else None
        return out


def case_inputs_npz(case) -> bytes:
    """The exact inputs of a case as an .npz (bfloat16 stored as uint16 bits)."""
    arrays = {}
    lin = case.linear or {}
    named = [("input", case.x), ("target", case.target), ("weight", case.weight), ("upstream", case.upstream)]
    named += [(f"linear_{k}", lin.get(k)) for k in ("hidden", "classifier", "bias")]  # the linear form's inputs
    for name, a in named:
        if a is None:
            continue
        a = np.asarray(a).copy()  # C order, whatever the case's memory layout
        if a.dtype.kind == "V" or a.dtype.name == "bfloat16":
            arrays[f"{name}__bfloat16"] = a.view(np.uint16)
        else:
            arrays[name] = a
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # names -> arrays, as documented
    return buf.getvalue()


def run_check(ctx: Context, check: Check, *, seed: int | None = None, derandomize: bool = False,
              database: str | None = None, database_dir: str | None = None,
              gate: FailureFilter | None = None) -> CheckResult:
    """Run ``check`` for ``ctx.adapter`` and return its result; never raises for adapter faults.

    ``database`` is a database spec (conformance/runner/database.py: a folder, ``redis://...``,
    ``github:OWNER/REPO``, entries joined by ``;``); ``database_dir`` is its older name.

    ``gate`` holds the known divergences and the baseline: a failing example they accept is
    recorded and the search goes on, so that it cannot hide a new failure (conformance/gate.py).
    Here, in this process: ``conformance.runner.isolation.run_check`` sends the kinds an adapter
    lists in ``isolate_kinds`` to a child process first."""
    res = CheckResult(ctx.adapter.name, check.id, check.kind, check.clause, check.description, "passed",
                      severity=check.severity)
    why = _not_supported(ctx, check)
    if why:
        res.status, res.message = "not_supported", why
        return res
    search = Search(ctx, check, gate or FailureFilter(), seed=seed, derandomize=derandomize,
                    database_dir=database or database_dir)
    t0 = time.perf_counter()
    search.run(res)
    res.duration_s = round(time.perf_counter() - t0, 3)
    _summarise(res, search.outcomes)
    # one-sided rounding within bounds (tolerances.unbiased)
    bias.apply(res, search.outcomes, ctx.spec, case_inputs_npz)
    res.examples = search.tried
    res.first_failure = search.first_failure
    res.tway = search.tway()
    if res.status == "passed" and res.variants:
        res.status = "variant"
    return res


def _not_supported(ctx: Context, check: Check) -> str | None:
    """Why the adapter's declared capabilities leave this check nothing to test, or None."""
    caps = ctx.adapter.capabilities
    needed = sorted(check.features - set(caps.features))
    if needed:
        return f"the adapter declares no support for {', '.join(needed)}"
    ext = sorted(check.extensions - set(getattr(caps, "extensions", ())))
    if ext:
        return f"the adapter declares no extension {', '.join(ext)}"
    missing = [r for r in check.requires
               if r not in caps.extras and not (r == "cpu_twin" and getattr(ctx.adapter, "cpu_twin", None))]
    if missing:
        return f"the adapter exposes no {', '.join(missing)}"
    if check.need_gradient and "gradient" not in caps.features:
        return "the adapter declares no gradient support"
    if check.kind == "error" and not caps.raises_on_invalid:
        clause = ctx.spec.errors[check.id.split(".", 1)[1]]
        if not any(clause.id in v.replaces_errors and v.id in caps.variants for v in ctx.spec.variants.values()):
            if MUTATIONS[clause.make].needs.data_validation:
                return "the adapter declares that it cannot raise on data values"
    return None


class _Aborted(Exception):
    """The adapter raised a BaseException that is not an Exception (SystemExit, GeneratorExit,
    a KeyboardInterrupt that no signal caused, ...): its check ends as an ``error``."""


@dataclass
class FailureRecord:
    """Every failing example with one signature: how many, the first, the simplest."""

    key: str
    signature: dict[str, str]
    matched: dict[str, Any] | None
    count: int = 0
    first: CheckFailure | None = None
    shrunk: CheckFailure | None = None
    #: Option classes the failure depends on ({field: values that fail}); fields left out
    #: fail with every value. None until probed (conformance.engine.Search._probe_patterns).
    pattern: dict[str, list[str]] | None = None


#: Failure records kept in a result (new ones first), and how many of them keep their example.
MAX_RECORDS, MAX_EXAMPLES = 24, 6
#: Failure regions probed per check (conformance.engine.Search._probe_patterns).
MAX_PROBES = 3
#: How many known entries (or the baseline) get a shrink search of their own in one check.
SHRINK_ACCEPTED = 1
#: Examples a shrink search of an accepted failure may try after it found the failure: a
#: known divergence's counterexample only illustrates its entry, and an unbounded shrink of
#: it was a fifth of the default run. New failures are shrunk without a bound.
SHRINK_BUDGET_ACCEPTED = 60


class _ShrinkBudget(BaseException):
    """Ends a bounded shrink search: a BaseException, so Hypothesis lets it through (it
    would take an Exception for a failure of its own); the smallest failure so far stands.
    Hypothesis may report the cut-short example as inconsistent data generation on its way
    out (FlakyStrategyDefinition, with this exception as its context): that is this stop too."""


class Search:
    """The Hypothesis searches of one check: covering-array rows (forward and gradient
    checks), the random phase, and shrink searches pinned to a failure's option classes."""

    def __init__(self, ctx: Context, check: Check, gate: FailureFilter, *, seed: int | None, derandomize: bool,
                 database_dir: str | None):
        self.ctx, self.check, self.gate = ctx, check, gate
        self.derandomize = derandomize
        # An explicit seed for every search of this check: the pinned searches replay it.
        self.seed = seed if seed is not None or derandomize else random.SystemRandom().randrange(2**32)
        self.database_dir = database_dir  # a database spec (conformance/runner/database.py)
        self.first_failure: dict[str, Any] | None = None
        self.t0 = time.perf_counter()
        self.outcomes: list[Outcome] = []
        self.records: dict[str, FailureRecord] = {}
        self.tried = 0
        self.counting = True
        self.aborted: BaseException | None = None
        self.last_raised: CheckFailure | None = None
        self.rows: list[dict[str, str]] = []
        self.domains: dict[str, list[str]] = {}
        self.strength = covering.STRENGTH.get(ctx.profile, 3)
        #: Examples left to a bounded shrink search once it has found its failure (None: no bound).
        self.shrink_left: int | None = None
        self.shrink_budget: int | None = None

    # ------------------------------------------------------------------ one example
    def _example(self, draw, raise_for) -> None:
        if self.aborted is not None:
            raise _Aborted()
        if self.shrink_left is not None:
            if self.shrink_left <= 0:
                raise _ShrinkBudget()
            self.shrink_left -= 1
        self.tried += 1
        try:
            with _adapter_interrupts() as interrupted:
                out = self.check.example(self.ctx, draw)
        except CheckFailure as f:
            rec = self._record(f)
            if self.first_failure is None and rec.matched is None:
                self.first_failure = {"examples": self.tried, "seconds": round(time.perf_counter() - self.t0, 3)}
            self.outcomes.append(Outcome(f.case, []))
            if raise_for(rec):
                self.last_raised = f
                if self.shrink_budget is not None and self.shrink_left is None:
                    self.shrink_left = self.shrink_budget
                raise
            return
        except (KeyboardInterrupt, SystemExit, GeneratorExit) as exc:
            if isinstance(exc, KeyboardInterrupt) and interrupted():
                raise  # a real Ctrl-C: the run stops
            self.aborted = exc
            raise _Aborted() from None
        except Exception:
            raise
        except BaseException as exc:  # noqa: BLE001 - any other BaseException an adapter raises
            if type(exc).__module__.startswith("hypothesis"):
                raise  # Hypothesis's own control flow (StopTest)
            self.aborted = exc
            raise _Aborted() from None
        self.outcomes.append(out)

    def _record(self, f: CheckFailure) -> FailureRecord:
        sig = signature(self.check.kind, f.verdict, f.case)
        key = signature_key(self.check.id, sig)
        # Matched per example: an entry may test the example itself (message_contains,
        # ignore_index...), so one signature can hold accepted and new examples, kept apart.
        matched = self.gate.match(self.ctx.adapter.name, self.check.id, sig, f.case.describe(small=0), str(f))
        slot = key if matched is None else f"{key}|accepted_by={matched.get('file')}#{matched.get('index')}"
        rec = self.records.get(slot)
        if rec is None:
            rec = self.records[slot] = FailureRecord(key, sig, matched, first=f)
        if self.counting:
            rec.count += 1
        return rec

    # ------------------------------------------------------------------ searches
    def _settings(self, max_examples: int, *, phases, database) -> settings:
        return settings(max_examples=max_examples, deadline=None, derandomize=self.derandomize and self.seed is None,
                        database=database, print_blob=True, report_multiple_bugs=False,
                        suppress_health_check=list(HealthCheck), phases=phases)

    def _hypothesis(self, body, *, max_examples: int, phases, database=None, salt: str = "") -> None:
        """Run ``body(draw)`` under Hypothesis; its database key and seed are the check's own."""
        def inner(data):
            body(data.draw)
        # Hypothesis keys its example database by the test function; one function serves every
        # search here, so each gets its own key through Hypothesis's internal digest hook
        inner.__dict__["_hypothesis_internal_add_digest"] = f"{self.ctx.adapter.name}::{self.check.id}::{salt}".encode()
        test = given(st.data())(inner)
        if self.seed is not None:
            test = hyp_seed(_mix(self.seed, self.check.id, salt))(test)
        # settings after @seed: @seed alone turns the example database off
        test = self._settings(max_examples, phases=phases, database=database)(test)
        with _no_local_constants():
            test()

    def run(self, res: CheckResult) -> None:
        try:
            self._run(res)
        except _Aborted:
            exc = self.aborted
            res.status = "error"
            res.message = (f"the adapter raised {type(exc).__name__}({', '.join(map(repr, getattr(exc, 'args', ())))})"
                           f", a BaseException that ends a program: recorded as this adapter's error")
        except FlakyFailure as exc:
            self._flaky(res, exc)
        except (NotSupported, strat.NothingToDraw) as exc:
            res.status, res.message = "not_supported", str(exc)
        except Unsatisfiable:
            res.status, res.message = "not_supported", "no supported input could be drawn for this check"
        except Exception as exc:  # noqa: BLE001 - a fault of the suite itself, reported as such
            res.status = "error"
            res.message = f"{type(exc).__name__}: {exc}"
            res.failure = {"traceback": traceback.format_exc()[-4000:]}
        res.seed = self.seed

    def _run(self, res: CheckResult) -> None:
        unmatched = lambda rec: rec.matched is None  # noqa: E731
        if self.check.kind in ("forward", "gradient"):
            self._covering()
        # the random phase: accepted failures are recorded and the search goes on
        # Hypothesis forbids a database in a derandomised search (--ci without --seed)
        database = None if self.derandomize and self.seed is None else _database(self.database_dir)
        self.counting = True
        main_failure: CheckFailure | None = None
        try:
            self._hypothesis(lambda draw: self._main_example(draw, unmatched),
                             max_examples=self.check.max_examples[self.ctx.profile], database=database,
                             phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
        except CheckFailure as f:
            main_failure = f
        self.counting = False
        if main_failure is None:
            # a new failure seen only on a covering row: shrink it within its option classes
            rec = next((r for r in self.records.values() if r.matched is None), None)
            if rec is not None:
                main_failure = self._shrink(rec, lambda r: r.matched is None) or rec.first
        if main_failure is not None:
            self._record(main_failure).shrunk = main_failure
        # each known entry (and the baseline) gets one shrunk counterexample: for the signature
        # it accepted most often; its other signatures keep their first example
        by_acceptor: dict[tuple, FailureRecord] = {}
        for rec in sorted(self.records.values(), key=lambda r: -r.count):
            if rec.matched is not None and rec.count:
                by_acceptor.setdefault((rec.matched.get("file"), rec.matched.get("index")), rec)
        for rec in list(by_acceptor.values())[:SHRINK_ACCEPTED]:
            if rec.shrunk is None:
                rec.shrunk = self._shrink(rec, lambda r, target=rec: r is target, budget=SHRINK_BUDGET_ACCEPTED)
        self._probe_patterns()
        self._conclude(res, main_failure)

    def _probe_patterns(self) -> None:
        """Which option classes a shrunk failure depends on: each field is changed to each of
        its other values (a few pinned examples each); a field whose every value fails too is
        free, the others keep the values that fail. A baseline accepts a later failure of the
        same kind inside this region, not only the exact signature it happened to meet."""
        if not self.domains:
            return
        self.counting = False
        order = sorted(self.records.values(), key=lambda r: (r.shrunk is None, -r.count))
        probed: list[FailureRecord] = []
        for rec in order:
            if len(probed) >= MAX_PROBES:
                break
            if (rec.count == 0 and rec.shrunk is None) or rec.matched is not None:
                continue  # accepted failures need no region: their entry or baseline already says it
            if any(_pattern_accepts(p, rec.signature) for p in probed):
                continue  # already inside a probed region
            rec.pattern = self._probe(rec)
            probed.append(rec)

    def _probe(self, rec: FailureRecord) -> dict[str, list[str]]:
        group = {k: rec.signature[k] for k in ("clause", "what", "deviation")}
        same = lambda r, g=group: all(r.signature[k] == v for k, v in g.items())  # noqa: E731
        pattern: dict[str, list[str]] = {}
        base = {k: v for k, v in rec.signature.items() if k in self.domains}
        for name, values in self.domains.items():
            if name not in base:
                continue
            allowed = [v for v in values if covering.option_valid({**base, name: v})]
            failing = [base[name]] + [v for v in allowed
                                      if v != base[name] and self._fails_pinned({**base, name: v}, same)]
            if len(failing) < len(allowed):
                pattern[name] = sorted(failing)
        return pattern

    def _fails_pinned(self, pins: dict[str, str], raise_for, examples: int = 8) -> bool:
        self.ctx.pins = dict(pins)
        try:
            self._hypothesis(lambda draw: self._example(draw, raise_for), max_examples=examples,
                             phases=[Phase.generate], salt="probe:" + repr(sorted(pins.items())))
        except CheckFailure:
            return True
        except (Unsatisfiable, strat.NothingToDraw, NotSupported, FlakyFailure):
            return False
        finally:
            self.ctx.pins = {}
        return False

    def _main_example(self, draw, raise_for) -> None:
        try:
            self._example(draw, raise_for)
        except CheckFailure:
            self.counting = False  # what follows is shrinking
            raise

    def _covering(self) -> None:
        """Every covering-array row once, as a pinned example; failures are only recorded."""
        try:
            req = checks_request(self.ctx, self.check)
        except (NotSupported, strat.NothingToDraw):
            return
        if req is None:
            return
        self.domains = covering.option_domains(self.ctx.spec, req)
        self.rows = covering.covering_array(self.domains, self.strength, covering.option_valid)
        self.rows_run: list[dict[str, str]] = []
        for i, row in enumerate(self.rows):
            self.ctx.pins = dict(row)
            calls = [0]

            def body(draw, calls=calls):
                # Hypothesis starts with its simplest example (C = 1, an empty batch, zero
                # logits), where most deviations vanish: a row gets a random example instead.
                calls[0] += 1
                draw(st.integers(0, 2**16), label="row_salt")  # something to reject (an empty tree cannot be)
                if calls[0] == 1:
                    reject()
                self._example(draw, lambda rec: False)
            try:
                self._hypothesis(body, max_examples=1, phases=[Phase.generate], salt=f"row{i}")
                self.rows_run.append(row)
            except (Unsatisfiable, strat.NothingToDraw, NotSupported):
                pass
            finally:
                self.ctx.pins = {}

    def _shrink(self, rec: FailureRecord, raise_for, budget: int | None = None) -> CheckFailure | None:
        """A search pinned to the record's option classes that raises only for ``raise_for``:
        Hypothesis finds the failure again and shrinks it without leaving its signature; with
        a ``budget``, for at most that many examples after finding it."""
        pins = {k: v for k, v in rec.signature.items() if k in OPTION_CLASSES and v in OPTION_CLASSES[k]}
        if self.check.kind == "error":
            pins = {k: v for k, v in pins.items() if k in ("dtype", "target", "rank")}
        pins.pop("regime", None) if pins.get("regime") == "nonfinite" else None
        for attempt in (pins, {}):
            self.ctx.pins = dict(attempt)
            self.shrink_budget, self.shrink_left, self.last_raised = budget, None, None
            try:
                self._hypothesis(lambda draw: self._example(draw, raise_for),
                                 max_examples=self.check.max_examples[self.ctx.profile],
                                 phases=[Phase.generate, Phase.shrink], salt="shrink:" + rec.key)
            except CheckFailure as f:
                return f
            except (_ShrinkBudget, FlakyStrategyDefinition):
                if self.shrink_left != 0:
                    raise  # a real inconsistency, not this search's stop
                return self.last_raised  # the smallest failing example the shrinker reached
            except (Unsatisfiable, strat.NothingToDraw, NotSupported, FlakyFailure):
                pass
            finally:
                self.ctx.pins = {}
                self.shrink_budget = self.shrink_left = None
        return None

    def _conclude(self, res: CheckResult, failure: CheckFailure | None) -> None:
        # failures met only while shrinking are not findings of their own
        records = sorted((r for r in self.records.values() if r.count or r.shrunk is not None or r.first is failure),
                         key=lambda r: (r.matched is not None, -r.count))
        res.failures = [_record_json(r, with_example=i < MAX_EXAMPLES or r.shrunk is not None)
                        for i, r in enumerate(records[:MAX_RECORDS])]
        res.failures_omitted = max(0, len(records) - MAX_RECORDS)
        primary = failure if failure is not None else next(
            ((r.shrunk or r.first) for r in records if r.matched is not None), None)
        if primary is None:
            return
        _fill_failure(res, primary)
        if failure is not None:
            res.status = "failed"
            res.severity = failure.severity
            res.message = str(failure)
            if failure.severity != "MUST" and self.check.kind == "error":
                res.status = "permissive"
        else:
            rec = records[0]
            res.status = "known"
            res.message = str(primary)
            res.known = dict(rec.matched or {})

    def _flaky(self, res: CheckResult, exc: Exception) -> None:
        """The same input answered differently: a verdict on the implementation."""
        f = self.last_raised
        res.status = "flaky"
        if f is None:
            res.message = f"the implementation answered the same input differently: {exc}"[:600]
            return
        _fill_failure(res, f)
        again = _answer_again(self.ctx, self.check, f.case)
        res.message = (f"the same input gave two different answers: first {f.verdict.actual!r} "
                       f"({f.verdict.message}); again: {again}")
        assert res.failure is not None  # _fill_failure set it
        res.failure["answers"] = [f.verdict.actual, again]

    # ------------------------------------------------------------------ coverage
    def tway(self) -> dict[str, Any]:
        """t-way coverage of the option classes by every example this check ran."""
        if not self.domains:
            return {}
        seen = [option_classes(o.case) for o in self.outcomes]
        covered, total = covering.coverage(seen, self.domains, self.strength, covering.option_valid)
        return {"t": self.strength, "covered": covered, "total": total, "rows": len(self.rows),
                "rows_run": len(getattr(self, "rows_run", []))}


def _database(spec: str | None):
    from .runner import database

    return database.build(spec)


def _pattern_accepts(rec: FailureRecord, sig: dict[str, str]) -> bool:
    if rec.pattern is None or any(rec.signature[k] != sig.get(k) for k in ("clause", "what", "deviation")):
        return False
    return all(sig.get(k) in v for k, v in rec.pattern.items())


def checks_request(ctx: Context, check: Check):
    """The Request a forward/gradient check draws from (for its covering array)."""
    from .checks import _request

    path = check.id.split(".", 1)[1]
    req = _request(ctx, target_kinds=(path,), gradient=check.need_gradient)
    if not req.dtypes or not req.ranks or not req.target_kinds or not req.reductions:
        return None
    return req


def _mix(seed: int, check_id: str, salt: str) -> int:
    h = hashlib.sha256(f"{seed}:{check_id}:{salt}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def _record_json(r: FailureRecord, *, with_example: bool = True) -> dict[str, Any]:
    f = r.shrunk or r.first
    d = {"signature": r.signature, "key": r.key, "count": r.count, "shrunk": r.shrunk is not None,
         "pattern": r.pattern,
         "accepted_by": r.matched, "message": f.verdict.message if f else "",
         "expected": f.verdict.expected if f else None, "actual": f.verdict.actual if f else None,
         "counterexample": f.case.describe() if f and with_example else None}
    return d


def _fill_failure(res: CheckResult, f: CheckFailure) -> None:
    v = f.verdict
    res.failure = {
        "clause": v.clause, "what": v.what, "message": v.message,
        "expected": v.expected, "actual": v.actual,
        "error_ulps": v.max_error_ulps, "bound_ulps": v.bound_ulps,
        "index": list(v.worst_index) if v.worst_index else None,
        "counterexample": f.case.describe(),
        "related": f.related.describe() if f.related is not None else None,
        "exception": f.exception,
        "reproduce": [n for n in getattr(f, "__notes__", []) if "reproduce_failure" in n or "seed" in n],
        "notes": [n for n in getattr(f, "__notes__", [])][:6],
        "seed": res.seed,
        "signature": signature(res.kind, v, f.case),
    }
    res.failure_inputs = case_inputs_npz(f.case)


def _answer_again(ctx: Context, check: Check, case) -> str:
    try:
        r = ctx.adapter.call(case, gradient=check.need_gradient or check.kind == "gradient")
    except Exception as exc:  # noqa: BLE001
        return f"raised {type(exc).__name__}: {exc}"[:300]
    v = np.asarray(r.value)
    return repr(float(v)) if v.ndim == 0 else f"an array of shape {v.shape}, first values {v.ravel()[:4].tolist()}"


@contextlib.contextmanager
def _adapter_interrupts():
    """Tell a real Ctrl-C (a SIGINT) from a KeyboardInterrupt the adapter raises itself."""
    got = [False]
    previous = None
    try:
        current = signal.getsignal(signal.SIGINT)
        if current not in (signal.SIG_IGN, None):
            def handler(signum, frame):
                got[0] = True
                if callable(current):
                    current(signum, frame)
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, handler)
            previous = current
    except ValueError:  # not the main thread: every KeyboardInterrupt counts as a real one
        got[0] = True
    try:
        yield lambda: got[0]
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _no_local_constants():
    """Hypothesis mixes literals from every locally imported module into its draws, so the
    examples of one adapter would depend on which other modules are loaded. The suite's
    examples must depend only on the seed, the spec, the profile and the suite's version."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - another Hypothesis layout: nothing to switch off
        yield
        return
    original = getattr(providers, "_get_local_constants", None)
    if original is None:  # pragma: no cover
        yield
        return
    empty = type(providers._local_constants)()
    providers._get_local_constants = lambda: empty
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = original
        providers.CONSTANTS_CACHE.cache.clear()


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
        for verdict in o.verdicts:
            if verdict.ulps:
                acc.setdefault(dt, []).extend(verdict.ulps[:16])
                rat.setdefault(dt, []).extend(verdict.ratios[:16])
                r = max(verdict.ratios) if verdict.ratios else 0.0
                worst.append((r, {"dtype": dt, "what": verdict.what, "error_ulps": verdict.max_error_ulps,
                                  "bound_ulps": verdict.bound_ulps, "ratio": r, "case": o.case.describe(small=8)}))
        if o.variant_used:
            variants.add(o.variant_used)
    res.coverage = {k: dict(c) for k, c in cov.items()}
    res.accuracy = {k: v[:400] for k, v in acc.items()}
    res.ratios = {k: v[:400] for k, v in rat.items()}
    res.worst = [w for _, w in sorted(worst, key=lambda t: -t[0])[:3]]
    res.variants = sorted(variants)
