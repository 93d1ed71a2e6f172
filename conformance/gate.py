"""What makes a failure "the same failure" across runs, and which failures a gate accepts.

A regression gate must never let a known divergence hide a new one. So known-divergence
entries and baselines act per failing *example*, not per check: the engine asks
:meth:`FailureFilter.match` about every failing example, records the matched ones and keeps
searching for failures that match nothing (conformance/engine.py).

"The same failure" is a :func:`signature`: the spec clause, what went wrong (value,
gradient, dtype, shape, error accepted, exception...), how it went wrong (out of bound,
inf or NaN where the exact value is finite...), and the class of every option of the
failing input (dtype, target path, reduction, weight kind, ignore kind, smoothing class,
rank class, value regime). It never depends on message text or on drawn numbers, so a
baseline's signatures stay valid when the examples change.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The option classes of an input, in signature order, with every value they take. The
#: covering arrays (conformance/covering.py) and the strategies' pins use the same names.
OPTION_CLASSES: dict[str, tuple[str, ...]] = {
    "dtype": ("float16", "bfloat16", "float32", "float64"),
    "target": ("index", "probability"),
    "reduction": ("none", "sum", "mean"),
    "weight": ("absent", "positive", "with_zeros"),
    "ignore": ("default", "inside", "outside_high"),
    "smoothing": ("0", "(0,1)", "1"),
    "rank": ("unbatched", "batched", "spatial"),
    "regime": ("ordinary", "large_magnitude", "huge", "ties", "confident", "nonfinite"),
    # memory layout of the arrays (conformance/layouts.py); left out of signature keys when
    # contiguous, so that keys written before layouts existed stay valid
    "layout": ("contiguous", "transposed", "sliced", "channels_last", "expanded"),
}

#: What went wrong, by the verdict that failed.
WHAT = ("value", "gradient", "dtype", "shape", "error_accepted", "exception", "inputs_modified", "relation", "warning")
#: How a value went wrong.
DEVIATION = ("out_of_bound", "inf_for_finite", "nan_for_finite", "finite_for_nonfinite", "wrong_nonfinite",
             "not_applicable")

SIGNATURE_FIELDS = ("clause", "what", "deviation") + tuple(OPTION_CLASSES) + ("legacy",)


def option_classes(case) -> dict[str, str]:
    """The option class of every option of ``case`` (a conformance.case.Case)."""
    from .strategies import rank_class

    C = case.num_classes
    w = None if case.weight is None else np.asarray(case.weight).astype(np.float64)
    eps = case.label_smoothing
    ii = case.ignore_index
    regime = case.regime if case.regime in OPTION_CLASSES["regime"] else "ordinary"
    if not np.all(np.isfinite(np.asarray(case.x).astype(np.float64))):
        regime = "nonfinite"
    return {
        "dtype": case.dtype,
        "target": case.target_kind,
        "reduction": str(case.reduction),
        "weight": "absent" if w is None else ("with_zeros" if np.any(w == 0) else "positive"),
        "ignore": "default" if ii == -100 or case.target_kind == "probability" else (
            "inside" if 0 <= ii < C else "outside_high"),
        "smoothing": "0" if eps == 0 else ("1" if eps == 1 else "(0,1)" if 0 < eps < 1 else "invalid"),
        "rank": rank_class(case.rank),
        "regime": regime,
        "layout": getattr(case, "layout", "contiguous"),
    }


def _what(verdict, kind: str) -> str:
    clause = verdict.clause or ""
    if clause.endswith(".dtype"):
        return "dtype"
    if clause.endswith(".shape"):
        return "shape"
    if clause == "inputs.unmodified":
        return "inputs_modified"
    if clause == "valid_input.accepted":
        return "exception"
    if clause == "signature.deprecated_warning":
        return "warning"
    if kind == "error":
        return "error_accepted"
    if clause.startswith("metamorphic.") or clause.startswith("crossdevice."):
        return "relation"
    return "gradient" if str(verdict.what).startswith("gradient") else "value"


def _deviation(verdict) -> str:
    e, a = verdict.expected, verdict.actual
    try:
        e, a = float(e), float(a)
    except (TypeError, ValueError):
        return "not_applicable"
    if math.isfinite(e):
        if math.isinf(a):
            return "inf_for_finite"
        if math.isnan(a):
            return "nan_for_finite"
        return "out_of_bound"
    if math.isfinite(a):
        return "finite_for_nonfinite"
    return "wrong_nonfinite"


def _clause_class(clause: str) -> str:
    """The clause without the reduction (which is a field of its own)."""
    parts = (clause or "").split(".")
    if "reductions" in parts:
        i = parts.index("reductions")
        parts = parts[:i] + parts[i + 2:]
    return ".".join(parts)


def signature(kind: str, verdict, case) -> dict[str, str]:
    """The signature of a failing example: its verdict (clause, what, deviation) plus the
    option classes of its input."""
    sig = {"clause": _clause_class(verdict.clause), "what": _what(verdict, kind), "deviation": _deviation(verdict)}
    sig.update(option_classes(case))
    sig["legacy"] = "given" if case.legacy else "absent"
    return sig


def signature_key(check_id: str, sig: dict[str, str]) -> str:
    """A stable one-line form, ``check|field=value|...``: what baselines and ``diff`` compare."""
    return check_id + "|" + "|".join(f"{k}={sig.get(k, '')}" for k in SIGNATURE_FIELDS
                                     if not (k == "layout" and sig.get(k, "contiguous") == "contiguous"))


def signature_from_failure(check_id: str, kind: str, failure: dict[str, Any]) -> dict[str, str] | None:
    """Best-effort signature of a results file's ``failure`` record that predates signatures
    (results written before this module existed): from its counterexample description."""
    ce = failure.get("counterexample") or {}
    if not ce:
        return None
    from types import SimpleNamespace

    v = SimpleNamespace(clause=failure.get("clause") or "", what=failure.get("what") or "",
                        expected=failure.get("expected"), actual=failure.get("actual"))
    sig = {"clause": _clause_class(v.clause), "what": _what(v, kind), "deviation": _deviation(v)}
    w = (ce.get("weight") or {}).get("values")
    ls = ce.get("label_smoothing")
    ls = float(ls) if isinstance(ls, (int, float)) else math.nan
    inp = ce.get("input") or {}
    rank = len(inp.get("shape") or [0, 0])
    sig.update({
        "dtype": str(ce.get("dtype")), "target": str(ce.get("target_kind")), "reduction": str(ce.get("reduction")),
        "weight": "absent" if ce.get("weight") is None else ("with_zeros" if w and 0.0 in w else "positive"),
        "ignore": "default" if ce.get("ignore_index", -100) == -100 or ce.get("target_kind") == "probability" else (
            "inside" if ce.get("ignore_index", -1) >= 0 and len(inp.get("shape") or []) and
            ce["ignore_index"] < (inp["shape"][0] if rank == 1 else inp["shape"][1]) else "outside_high"),
        "smoothing": "0" if ls == 0 else "1" if ls == 1 else "(0,1)" if 0 < ls < 1 else "invalid",
        "rank": "unbatched" if rank == 1 else "batched" if rank == 2 else "spatial",
        "regime": str(ce.get("regime") or "ordinary"),
        "legacy": "given" if ce.get("legacy") else "absent",
        "layout": str((ce.get("layout") or {}).get("name", "contiguous")),
    })
    return sig


# --------------------------------------------------------------------------- known entries
#: ``when`` keys of a known-divergence entry: the signature's fields, plus tests on the
#: counterexample that predate signatures (values, not classes) and, as a last resort, text.
WHEN_SIGNATURE_KEYS = SIGNATURE_FIELDS + ("target_kind",)
WHEN_CASE_KEYS = ("ignore_index", "label_smoothing", "purpose", "modifiers", "label_smoothing_positive")
WHEN_TEXT_KEYS = ("message_contains",)
WHEN_KEYS = WHEN_SIGNATURE_KEYS + WHEN_CASE_KEYS + WHEN_TEXT_KEYS
WHEN_VALUES: dict[str, tuple[str, ...]] = {**OPTION_CLASSES, "target_kind": OPTION_CLASSES["target"],
                                           "what": WHAT, "deviation": DEVIATION, "legacy": ("absent", "given")}


def _baseline_accepts(b: Any, key: str, sig: dict[str, str]) -> bool:
    if isinstance(b, str):
        return b == key
    if b.get("key") == key:
        return True
    bsig, pattern = b.get("signature") or {}, b.get("pattern")
    if pattern is None or any(bsig.get(k) != sig.get(k) for k in ("clause", "what", "deviation")):
        return False
    return all(sig.get(k) in values for k, values in pattern.items())


def when_matches(when: dict[str, Any], sig: dict[str, str], described: dict[str, Any], message: str) -> bool:
    """Whether a known entry's ``when`` holds for one failing example. A value may be a list
    (any of them); signature fields compare as strings."""
    for key, want in when.items():
        wants = want if isinstance(want, list) else [want]
        if key == "message_contains":
            if not any(str(w) in (message or "") for w in wants):
                return False
        elif key == "label_smoothing_positive":
            ls = described.get("label_smoothing")
            if bool(want) != (isinstance(ls, (int, float)) and ls > 0):
                return False
        elif key in WHEN_CASE_KEYS:
            if described.get(key) not in wants:
                return False
        else:
            got = sig.get("target" if key == "target_kind" else key)
            if got not in [str(w) for w in wants]:
                return False
    return True


@dataclass
class FailureFilter:
    """Known-divergence entries and a baseline's signatures: what a gate accepts.

    Plain data (``to_json``/``from_json``), so that a worker process can apply it inside
    its Hypothesis search."""

    #: Entries as loaded by conformance.runner.session.load_known: {adapter, check, when, reason, link, file, index}.
    known: list[dict[str, Any]] = field(default_factory=list)
    #: Failures present in the baseline, by result id: a signature key, or a record
    #: ``{"key", "signature", "pattern"}`` whose pattern (the option classes the failure
    #: depends on) accepts every failure of the same kind inside it.
    baseline: dict[str, list[Any]] = field(default_factory=dict)
    #: Result ids that were not passing in the baseline but have no signature there (an
    #: ``error``, or a results file written before signatures): every failure in them is accepted.
    baseline_whole: list[str] = field(default_factory=list)

    def match(self, adapter: str, check_id: str, sig: dict[str, str], described: dict[str, Any],
              message: str) -> dict[str, Any] | None:
        """The known entry or baseline record that accepts this failing example, or None."""
        for e in self.known:
            if not fnmatch.fnmatchcase(adapter, e["adapter"]) or not fnmatch.fnmatchcase(check_id, e["check"]):
                continue
            if when_matches(e.get("when") or {}, sig, described, message):
                return {"by": "known", "reason": e["reason"], "link": e.get("link", ""), "file": e["file"],
                        "index": e["index"]}
        rid = f"{adapter}::{check_id}"
        key = signature_key(check_id, sig)
        for b in self.baseline.get(rid, ()):
            if _baseline_accepts(b, key, sig):
                return {"by": "baseline", "reason": "the same failure (signature) is in the baseline", "link": "",
                        "file": "baseline", "index": 0}
        if rid in self.baseline_whole:
            return {"by": "baseline", "reason": "the check was not passing in the baseline either", "link": "",
                    "file": "baseline", "index": 0}
        return None

    def to_json(self) -> dict[str, Any]:
        return {"known": self.known, "baseline": self.baseline, "baseline_whole": self.baseline_whole}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> FailureFilter:
        d = d or {}
        return cls(list(d.get("known", [])), dict(d.get("baseline", {})), list(d.get("baseline_whole", [])))


def explained(record: dict[str, Any], by: list[dict[str, Any]]) -> bool:
    """Whether a failure record of a results file lies inside one of ``by`` (the same
    signature, or inside a probed pattern of the same kind)."""
    return any(_baseline_accepts(b, record["key"], record.get("signature") or {}) for b in by)


def result_records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A results-file entry's failure records (derived from ``failure`` for files that
    predate signatures)."""
    recs = [f for f in result.get("failures") or [] if isinstance(f, dict) and isinstance(f.get("key"), str)]
    if not recs and result.get("failure") and result.get("status") in ("failed", "known", "permissive", "flaky"):
        sig = signature_from_failure(result.get("check", ""), result.get("kind", ""), result["failure"])
        if sig:
            recs = [{"key": signature_key(result.get("check", ""), sig), "signature": sig, "pattern": None,
                     "accepted_by": {"by": "known"} if result.get("status") == "known" else None, "count": 1}]
    return recs
