"""Gate precision: a known divergence or a failing baseline never hides a new failure, SHOULD
clauses are `permissive`, and every valid 3-way combination of option classes is exercised.

The planted implementations are in tests/planted_gate.py: a float16 divergence listed as
known, plus a regression on one 3-way combination (float32 x weight x 'sum').
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import planted_gate  # noqa: E402
from conformance.runner import cli  # noqa: E402
from conformance.adapters.base import Capabilities  # noqa: E402
from conformance.adapters.torch_adapter import TorchFunctionAdapter  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.gate import FailureFilter  # noqa: E402
from conformance.runner.session import load_known  # noqa: E402
from conformance.spec import load_default  # noqa: E402

TESTS = Path(__file__).parent
SPEC = load_default()
CHECKS = {c.id: c for c in catalogue(SPEC)}
SEEDS = int(os.environ.get("CE_GATE_SEEDS", "3"))  # scripts/gate_seeds: 10
KNOWN_F16 = """
adapter: "*"
known:
  - check: "*"
    when: {dtype: float16}
    reason: every float16 result is off by +1
"""


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CE_CONFORMANCE_PROGRESS", "0")
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def _ctx(name: str) -> Context:
    fn = getattr(planted_gate, name)
    return Context(SPEC, TorchFunctionAdapter(fn, f"planted_gate:{name}", capabilities=Capabilities()), profile="default")


def _known(tmp_path: Path) -> list[dict]:
    p = tmp_path / "known.yaml"
    p.write_text(KNOWN_F16)
    return load_known([str(p)])


@pytest.mark.parametrize("seed", range(SEEDS))
def test_known_divergence_does_not_hide_a_three_way_regression(tmp_path, seed):
    gate = FailureFilter(known=_known(tmp_path))
    r = run_check(_ctx("known_plus_regression"), CHECKS["forward.index"], seed=seed, gate=gate)
    assert r.status == "failed", r.message
    new = [f for f in r.failures if f["accepted_by"] is None]
    known = [f for f in r.failures if f["accepted_by"] is not None]
    # the reported (shrunk) failure is the new regression, in its own option classes
    sig = r.failure["signature"]
    assert (sig["dtype"], sig["reduction"]) == ("float32", "sum") and sig["weight"] != "absent"
    assert new and all(f["signature"]["dtype"] == "float32" for f in new)
    # the known divergence was met too, counted, with a shrunk counterexample
    assert known and all(f["signature"]["dtype"] == "float16" for f in known)
    assert sum(f["count"] for f in known) >= 1
    assert any(f["shrunk"] and f["counterexample"]["dtype"] == "float16" for f in known)
    assert all(f["accepted_by"]["reason"] == "every float16 result is off by +1" for f in known)


def test_only_known_divergences_give_known(tmp_path):
    gate = FailureFilter(known=_known(tmp_path))
    r = run_check(_ctx("float16_plus_one"), CHECKS["forward.index"], seed=0, gate=gate)
    assert r.status == "known", r.message
    assert r.known["reason"] == "every float16 result is off by +1"
    assert r.failures and all(f["accepted_by"] for f in r.failures)
    assert r.failure["counterexample"]["dtype"] == "float16"


def test_shrunk_new_failure_never_matches_a_known_entry(tmp_path):
    """Shrinking must not walk the new failure into the known one's option classes."""
    gate = FailureFilter(known=_known(tmp_path))
    r = run_check(_ctx("known_plus_regression"), CHECKS["gradient.index"], seed=3, gate=gate)
    assert r.status == "failed"
    assert r.failure["counterexample"]["dtype"] == "float32"


@pytest.mark.parametrize("name", sorted(planted_gate.THREE_WAY))
def test_every_three_way_deviation_is_caught_by_the_forward_check(name):
    caught = [run_check(_ctx(name), CHECKS["forward.index"], seed=s).status for s in range(2)]
    assert caught == ["failed", "failed"], caught


def test_forward_checks_cover_every_valid_triple():
    for cid in ("forward.index", "forward.probability", "gradient.index", "gradient.probability"):
        r = run_check(Context(SPEC, TorchFunctionAdapter(planted_gate._exact, "exact", capabilities=Capabilities()),
                              profile="default"), CHECKS[cid], seed=1)
        assert r.status == "passed", (cid, r.message)
        assert r.tway["t"] == 3 and r.tway["covered"] == r.tway["total"] > 100, (cid, r.tway)
        assert r.tway["rows_run"] == r.tway["rows"]


# --------------------------------------------------------------------------- through the CLI
def _run(tmp_path: Path, *args: str, out: str = "out", check: str | None = "forward.index") -> tuple[int, dict]:
    o = tmp_path / out
    code = cli.main(["run", "--no-report", "--out", str(o), *(["--check", check] if check else []), *args])
    return code, json.loads((o / "results.json").read_text())


def test_cli_known_file_and_baseline_both_keep_the_new_failure(tmp_path):
    k = tmp_path / "known.yaml"
    k.write_text(KNOWN_F16)
    code, doc = _run(tmp_path, "--adapter", "planted_gate:known_plus_regression", "--known", str(k), "--seed", "5")
    assert code == 1
    r = doc["results"][0]
    assert r["status"] == "failed" and r["failure"]["signature"]["dtype"] == "float32"
    assert {f["signature"]["dtype"] for f in r["failures"]} >= {"float16", "float32"}
    # signatures round-trip through results.json
    assert all(f["key"].startswith("forward.index|clause=") for f in r["failures"])

    # the release before had only the float16 divergence: its results are the baseline. Both
    # releases are gated under one adapter name (an adapter config), as a project's CI does.
    before, after = _release(tmp_path, "float16_plus_one", "before"), _release(tmp_path, "known_plus_regression", "after")
    code0, base = _run(tmp_path, "--adapter", before, "--seed", "5", out="base")
    assert code0 == 1 and base["results"][0]["status"] == "failed"
    baseline = str(tmp_path / "base" / "results.json")
    code1, doc1 = _run(tmp_path, "--adapter", before, "--seed", "6", "--baseline", baseline, out="same")
    assert code1 == 0 and doc1["results"][0]["status"] == "known"
    code2, doc2 = _run(tmp_path, "--adapter", after, "--seed", "6", "--baseline", baseline, out="new")
    assert code2 == 1
    r2 = doc2["results"][0]
    assert r2["status"] == "failed" and r2["failure"]["signature"]["dtype"] == "float32"
    assert any(f["accepted_by"] and f["accepted_by"]["by"] == "baseline" for f in r2["failures"])


def _release(tmp_path: Path, attr: str, folder: str) -> str:
    """An adapter config naming the planted function ``attr`` as the library "mylib"."""
    d = tmp_path / folder
    d.mkdir()
    (d / "mylib.yaml").write_text(f"name: mylib\nimport: planted_gate:{attr}\n")
    return str(d / "mylib.yaml")


@pytest.mark.parametrize("seed", range(SEEDS))
def test_baseline_keeps_a_new_regression_and_accepts_the_old_divergence(tmp_path, seed):
    """The engine-level version of the CLI test above, over many seeds."""
    from conformance.runner.session import load_baseline, make_filter

    base = tmp_path / "base"
    code = cli.main(["run", "--no-report", "--out", str(base), "--check", "forward.index", "--seed", str(seed + 100),
                     "--adapter", _release(tmp_path, "float16_plus_one", "before")])
    assert code == 1
    gate = make_filter([], load_baseline(str(base / "results.json")))
    before = Context(SPEC, TorchFunctionAdapter(planted_gate.float16_plus_one, "mylib", capabilities=Capabilities()))
    after = Context(SPEC, TorchFunctionAdapter(planted_gate.known_plus_regression, "mylib", capabilities=Capabilities()))
    r0 = run_check(before, CHECKS["forward.index"], seed=seed, gate=gate)
    assert r0.status == "known", r0.message
    r1 = run_check(after, CHECKS["forward.index"], seed=seed, gate=gate)
    assert r1.status == "failed" and r1.failure["signature"]["dtype"] == "float32", r1.message


def test_diff_lists_new_and_fixed_signatures(tmp_path, capsys):
    _run(tmp_path, "--adapter", _release(tmp_path, "float16_plus_one", "a"), "--seed", "2", out="old")
    _run(tmp_path, "--adapter", _release(tmp_path, "known_plus_regression", "b"), "--seed", "2", out="new")
    capsys.readouterr()
    code = cli.main(["diff", str(tmp_path / "old" / "results.json"), str(tmp_path / "new" / "results.json")])
    out = capsys.readouterr().out
    assert code == 1
    assert "new failure signatures:" in out and "dtype=float32" in out.split("new failure signatures:")[1]
    code = cli.main(["diff", str(tmp_path / "new" / "results.json"), str(tmp_path / "old" / "results.json")])
    out = capsys.readouterr().out
    assert code == 0 and "fixed failure signatures:" in out
    assert "dtype=float32" in out.split("fixed failure signatures:")[1]


def test_should_clause_is_permissive_and_strict_fails_it(tmp_path):
    """torch underneath accepts label_smoothing = -0.1, which the spec says SHOULD be rejected."""
    assert CHECKS["error.label_smoothing_negative"].severity == "SHOULD"
    (tmp_path / "none.yaml").write_text("known: []\n")
    args = ("--adapter", "planted:float64_round_once", "--check", "error.label_smoothing_negative", "--seed", "1",
            "--profile", "quick", "--known", str(tmp_path / "none.yaml"))
    code, doc = _run(tmp_path, *args, check=None)
    r = doc["results"][0]
    assert (code, r["status"], r["severity"]) == (0, "permissive", "SHOULD")
    assert "accepted invalid input (label_smoothing=-0.1)" in r["message"]
    assert doc["summary"]["permissive"] == 1
    code, doc = _run(tmp_path, *args, "--strict", out="strict", check=None)
    assert (code, doc["results"][0]["status"]) == (1, "failed")
