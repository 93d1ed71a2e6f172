"""Results stay CheckResult objects inside a run: the run's rules (known divergences,
--strict, the baseline) return a new result and leave the one they are given as it was;
the dict that is written (results.record) reads back as the same object."""
import copy
import json

import pytest

from conformance.engine import CheckResult
from conformance.runner import results as resultsmod
from conformance.runner.session import apply_baseline, apply_known
from conformance.status import STATUSES

ADAPTER, CHECK = "torch-cpu", "forward.index"


def _result(status, **kw) -> CheckResult:
    return CheckResult(ADAPTER, CHECK, "forward", "paths.index", "loss value", status, **kw)


def _entry(index=0, *, check=CHECK, when=None, file="known/torch.yaml") -> dict:
    """One known-divergence entry as session.load_known builds it."""
    return {"adapter": "torch-*", "check": check, "when": when or {}, "reason": f"reason of entry {index}",
            "link": f"https://example.org/{index}", "file": file, "index": index, "matched": 0}


def _accepted_by(entry: dict) -> dict:
    """A failure record the engine's gate accepted with ``entry`` (conformance/gate.py)."""
    return {"key": "dtype=float16", "count": 3, "accepted_by": {"by": "known", "reason": entry["reason"],
                                                                "link": entry["link"], "file": entry["file"],
                                                                "index": entry["index"]}}


def test_statuses_are_defined_once():
    assert resultsmod.STATUSES is STATUSES
    assert STATUSES == ("passed", "failed", "known", "variant", "permissive", "flaky", "not_supported", "error",
                        "skipped", "fixed")


def test_a_known_result_keeps_its_entry_and_counts_it():
    entries = [_entry(0), _entry(1)]
    known = {k: entries[1][k] for k in ("reason", "link", "file", "index")}
    res = _result("known", message="accepted: float16", known=known, failures=[_accepted_by(entries[1])])
    before = copy.deepcopy(res)
    out = apply_known(res, entries, strict=False)
    assert out.status == "known"
    assert out.known == {"reason": "reason of entry 1", "link": "https://example.org/1",
                         "file": "known/torch.yaml", "index": 1}
    assert res == before
    assert [e["matched"] for e in entries] == [0, 1]


def test_a_passing_check_an_entry_lists_is_fixed_in_a_new_result():
    entries = [_entry(0, check="gradient.*"), _entry(3, check="forward.*")]
    res = _result("passed", examples=40)
    before = copy.deepcopy(res)
    out = apply_known(res, entries, strict=False)
    assert out is not res
    assert out.status == "fixed"
    assert out.known == {"reason": "reason of entry 3", "link": "https://example.org/3",
                         "file": "known/torch.yaml", "index": 3}
    assert out.message == ("listed as a known divergence (known/torch.yaml entry 3) but passed: "
                           "remove the entry if it is fixed")
    assert out.examples == 40
    assert res == before and res.status == "passed" and res.known is None
    assert [e["matched"] for e in entries] == [0, 1]


def test_an_entry_with_when_does_not_make_a_pass_fixed():
    res = _result("passed")
    out = apply_known(res, [_entry(0, when={"dtype": "float16"})], strict=False)
    assert out.status == "passed" and out.known is None and out.message == ""


@pytest.mark.parametrize("status, prefix", [
    ("known", "--strict: a known divergence fails the run: "),
    ("permissive", "--strict: a SHOULD clause that is not enforced fails the run: "),
])
def test_strict_turns_known_and_permissive_into_failed(status, prefix):
    entries = [_entry(2)]
    res = _result(status, message="the original message", failures=[_accepted_by(entries[0])])
    before = copy.deepcopy(res)
    out = apply_known(res, entries, strict=True)
    assert out is not res
    assert out.status == "failed"
    assert out.message == prefix + "the original message"
    assert res == before
    # without --strict the same result is left as it is
    again = apply_known(res, [_entry(2)], strict=False)
    assert again.status == status and again.message == "the original message"


def test_strict_keeps_known_when_only_the_baseline_accepted():
    failure = {"key": "k", "count": 1, "accepted_by": {"by": "baseline", "reason": "r", "link": "",
                                                       "file": "baseline", "index": 0}}
    out = apply_known(_result("known", failures=[failure]), [_entry(0)], strict=True)
    assert out.status == "known"


def test_the_baseline_turns_an_error_it_had_into_known():
    baseline = {"statuses": {f"{ADAPTER}::{CHECK}": "error"}, "signatures": {}, "whole": []}
    res = _result("error", message="worker died")
    before = copy.deepcopy(res)
    out = apply_baseline(res, baseline)
    assert out is not res
    assert out.status == "known"
    assert out.baseline == "error"
    assert out.known == {"reason": "not passing in the baseline either (error)", "link": "",
                         "file": "baseline", "index": 0}
    assert out.message == "worker died"
    assert res == before and res.status == "error" and res.baseline is None


@pytest.mark.parametrize("before_status", ["passed", None])
def test_the_baseline_leaves_an_error_that_is_new(before_status):
    statuses = {} if before_status is None else {f"{ADAPTER}::{CHECK}": before_status}
    res = _result("error", message="worker died")
    out = apply_baseline(res, {"statuses": statuses, "signatures": {}, "whole": []})
    assert out.status == "error" and out.known is None and out.baseline is None


def test_the_written_record_has_the_results_json_keys_and_reads_back():
    res = _result("error", message="m", failure_inputs=b"npz bytes", seed=7)
    d = resultsmod.record(res)
    assert "baseline" not in d  # only written when the baseline excused the result
    assert list(d)[-2:] == ["id", "failure_inputs_b64"]
    assert d["id"] == f"{ADAPTER}::{CHECK}"
    back = CheckResult.from_json(json.loads(json.dumps(d)))
    assert back == res and back.failure_inputs == b"npz bytes"
    excused = apply_baseline(res, {"statuses": {res.id: "failed"}})
    d2 = resultsmod.record(excused)
    assert list(d2)[-3:] == ["id", "baseline", "failure_inputs_b64"]
    assert d2["baseline"] == "failed" and d2["status"] == "known"
    assert CheckResult.from_json(d2) == excused


def test_summary_counts_objects_and_documents_alike():
    results = [_result("passed"), _result("known"), _result("passed"), _result("fixed")]
    s = resultsmod.summary(results)
    assert s == resultsmod.summary([r.to_json() for r in results])
    assert (s["passed"], s["known"], s["fixed"], s["failed"]) == (2, 1, 1, 0)
    assert list(s) == list(STATUSES)
