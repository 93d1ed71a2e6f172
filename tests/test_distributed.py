"""Vocabulary-parallel cross-entropy judged across real ranks (gloo on CPU).

- The reference (conformance.adapters.vocab_parallel) passes every check of the default
  profile at world sizes 1, 2 and 4: 0 failures, the forward and gradient checks run.
- Every planted bug of tests/planted_distributed.py is caught at world size 2 by the checks
  named for it, and the local-V smoothing bug as a disagreement between ranks.
- A rank that raises, hangs or dies fails that call with the reason; the group is rebuilt
  and the next call is right again.
- Megatron's label smoothing is judged by the spec variant and reported as "variant".

One process group per world size is started for the whole module (the adapter's ``fn`` is
swapped between implementations, the group stays), so the module runs in about a minute.
"""
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import planted_distributed as pd  # noqa: E402  (tests/ is on sys.path under pytest)
from conformance.adapter_config import AdapterConfigError  # noqa: E402
from conformance.adapters import resolve  # noqa: E402
from conformance.adapters.vocab_parallel import (RankError, RanksDisagree, ReferenceVocabParallel,  # noqa: E402
                                                 ReferenceVocabParallelMegatron, shard_bounds,
                                                 vocab_parallel_cross_entropy,
                                                 vocab_parallel_cross_entropy_megatron)
from conformance.case import Case  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.distributed import RankFailure  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.oracle import Oracle  # noqa: E402
from conformance.spec import load_default  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEC = load_default()
CHECKS = {c.id: c for c in catalogue(SPEC)}
ORACLE = Oracle(SPEC)


@pytest.fixture(scope="module")
def adapters():
    made: dict[int, ReferenceVocabParallel] = {}
    caps = ReferenceVocabParallel(world_size=1).capabilities

    def get(ws: int) -> ReferenceVocabParallel:
        if ws not in made:
            made[ws] = ReferenceVocabParallel(world_size=ws)
        a = made[ws]
        a.fn, a.capabilities = vocab_parallel_cross_entropy, replace(caps, world_size=ws)
        a.timeout = 60.0
        return a

    yield get
    for a in made.values():
        a.close()


def _case(C=7, label_smoothing=0.0, reduction="mean", target=(0, 6, 3, -100)):
    x = np.random.default_rng(C).normal(size=(len(target), C)).astype(np.float32)
    return Case(x=x, target=np.array(target), reduction=reduction, label_smoothing=label_smoothing)


def _assert_exact(adapter, case):
    """The call agrees with the oracle to float32 rounding (7 classes, 4 positions)."""
    res = adapter.call(case, gradient=True)
    ev = ORACLE.evaluate(case)
    assert res.value.dtype == np.float32
    np.testing.assert_allclose(res.value, ev.value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.gradients["input"], ev.gradients["input"], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("ws", [1, 2, 4])
def test_reference_passes_the_default_profile(adapters, ws):
    ctx = Context(SPEC, adapters(ws), profile="default")
    results = {cid: run_check(ctx, check, seed=0, derandomize=True) for cid, check in CHECKS.items()}
    bad = [f"{cid}: {r.status} {r.message}" for cid, r in results.items() if r.status not in ("passed", "not_supported")]
    assert not bad, "\n".join(bad)
    ran = {cid for cid, r in results.items() if r.status == "passed"}
    assert {"forward.index", "gradient.index", "special.single_class", "special.neg_inf_with_smoothing",
            "error.target_out_of_range_high", "metamorphic.class_permutation"} <= ran
    # what vocabulary-parallel APIs do not take is reported as such, never passed
    for cid in ("forward.probability", "special.unbatched_weighted_mean", "error.weight_wrong_length"):
        assert results[cid].status == "not_supported", cid


def test_uneven_and_empty_shards():
    assert shard_bounds(5, 4) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert shard_bounds(1000, 4)[3] == (750, 1000)


@pytest.mark.parametrize("C", [1, 2, 5])
def test_fewer_classes_than_ranks(adapters, C):
    """V < R leaves some ranks an empty shard; they still take part in every collective."""
    _assert_exact(adapters(4), _case(C=C, label_smoothing=0.3, target=(0, C - 1, -100)))


# --------------------------------------------------------------------------- planted bugs
@pytest.mark.parametrize("name", sorted(pd.BUGGY))
def test_planted_bug_is_caught_across_ranks(adapters, name):
    a = adapters(2)
    a.fn = getattr(pd, name)
    ctx = Context(SPEC, a, profile="quick")
    results = [run_check(ctx, CHECKS[cid], seed=1) for cid in pd.BUGGY[name]]
    failed = [r for r in results if r.status == "failed"]
    assert failed, f"{name}: " + "; ".join(f"{r.check}={r.status} {r.message}" for r in results)
    for r in failed:
        assert r.failure["message"] and r.failure_inputs


@pytest.mark.parametrize("name", ["local_vocab_smoothing", "no_max_allreduce", "plus_log_r"])
def test_planted_bugs_hide_on_one_rank(adapters, name):
    """The reason for real ranks: with one rank these bugs compute the right loss."""
    a = adapters(1)
    a.fn = getattr(pd, name)
    _assert_exact(a, _case(label_smoothing=0.2, reduction="sum"))


def test_ranks_that_disagree_are_a_failure_of_their_own(adapters):
    a = adapters(2)
    a.fn = pd.local_vocab_smoothing
    with pytest.raises(RanksDisagree, match=r"^ranks disagree: rank 0 loss=\S.*, rank 1 loss=\S"):
        a.call(_case(label_smoothing=0.2, reduction="sum"))
    r = run_check(Context(SPEC, a, profile="quick"), CHECKS["forward.index"], seed=3)
    assert r.status == "failed"
    assert "ranks disagree" in r.failure["message"]


# --------------------------------------------------------------------------- faults
@pytest.mark.parametrize("fn, timeout, reason", [
    (pd.raise_on_rank_1, 60.0, r"rank 1 raised RuntimeError: planted failure on rank 1"),
    (pd.hang_on_rank_1, 2.0, r"rank 1 did not answer within 2 s \(hung\)"),
    (pd.die_on_rank_1, 60.0, r"rank 1 died \(exit code 7\)"),
])
def test_a_failing_rank_is_contained_and_the_group_rebuilt(adapters, fn, timeout, reason):
    a = adapters(2)
    _assert_exact(a, _case())
    generation = a.pool.generation
    a.fn, a.timeout = fn, timeout
    with pytest.raises(RankFailure, match=reason + r".*the process group was torn down"):
        a.call(_case())
    assert not a.pool.alive
    a.fn, a.timeout = vocab_parallel_cross_entropy, 60.0
    _assert_exact(a, _case(label_smoothing=0.1))
    assert a.pool.generation == generation + 1


def test_an_input_every_rank_rejects_keeps_the_group(adapters):
    a = adapters(2)
    _assert_exact(a, _case())
    generation = a.pool.generation
    with pytest.raises(RankError, match=r"IndexError: Target 9 is out of bounds for 7 classes"):
        a.call(_case(target=(0, 9, 1, 2)))
    assert a.pool.alive and a.pool.generation == generation
    _assert_exact(a, _case())


# --------------------------------------------------------------------------- Megatron smoothing
def _megatron(adapters):
    """The world-size-2 group running the reference in Megatron's convention, declared."""
    a = adapters(2)
    a.fn = vocab_parallel_cross_entropy_megatron
    a.capabilities = replace(a.capabilities, variants=frozenset({"label_smoothing_megatron"}))
    return a


def test_megatron_label_smoothing_is_reported_as_the_variant(adapters):
    ctx = Context(SPEC, _megatron(adapters), profile="quick")
    for cid in ("forward.index", "gradient.index"):
        r = run_check(ctx, CHECKS[cid], seed=0, derandomize=True)
        assert r.status == "variant", f"{cid}: {r.status} {r.message}"
    # judged by torch's convention instead, the same implementation fails
    a = _megatron(adapters)
    a.capabilities = replace(a.capabilities, variants=frozenset())
    r = run_check(Context(SPEC, a, profile="quick"), CHECKS["forward.index"], seed=0)
    assert r.status == "failed"


def test_megatron_convention_values(adapters):
    """1 - eps on the target and eps / (C - 1) elsewhere, straight from the definition."""
    case = _case(C=5, label_smoothing=0.3, reduction="none", target=(0, 4, 2))
    got = _megatron(adapters).call(case).value.astype(np.float64)
    x = case.x.astype(np.float64)
    lp = x - np.log(np.exp(x).sum(1, keepdims=True))
    q = np.full_like(lp, 0.3 / 4)
    q[np.arange(3), [0, 4, 2]] = 0.7
    np.testing.assert_allclose(got, -(q * lp).sum(1), rtol=1e-6)


def test_the_megatron_adapter_declares_the_variant():
    a = ReferenceVocabParallelMegatron(world_size=2)
    assert a.capabilities.variants == {"label_smoothing_megatron"} and a._pool is None


# --------------------------------------------------------------------------- megatron-core
def _megatron_core(adapters, monkeypatch, ws):
    """The ws group running megatron-core (examples/megatron_vocab_adapter.py), on a copy."""
    if importlib.util.find_spec("megatron") is None:
        pytest.skip("megatron-core is not installed (pip install --no-deps megatron-core)")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import megatron_vocab_adapter as m

    a = adapters(ws)
    a.fn = m.megatron_on_a_copy
    a.capabilities = replace(m.MegatronVocabParallel(world_size=ws).capabilities, dtypes=frozenset({"float32"}))
    return a


def test_megatron_core_smoothing_is_right_on_one_rank_and_splits_ranks_on_two(adapters, monkeypatch):
    case = _case(C=8, label_smoothing=0.3, reduction="none", target=(0, 5, 7))
    one = _megatron_core(adapters, monkeypatch, 1).call(case)
    exact = Oracle(SPEC.with_variants(["label_smoothing_megatron"])).evaluate(case, gradients=False)
    np.testing.assert_allclose(one.value, exact.value, rtol=1e-6)
    # its smoothing term uses the local vocabulary size and mean: every rank computes its own loss
    with pytest.raises(RanksDisagree, match=r"^ranks disagree: rank 0 loss=.*, rank 1 loss="):
        _megatron_core(adapters, monkeypatch, 2).call(case)


def test_megatron_core_accepts_out_of_range_labels(adapters, monkeypatch):
    a = _megatron_core(adapters, monkeypatch, 2)
    for cid in ("error.target_out_of_range_high", "error.target_out_of_range_negative"):
        r = run_check(Context(SPEC, a, profile="quick"), CHECKS[cid], seed=0)
        assert r.status == "failed" and "accepted invalid input" in r.failure["message"], cid


def test_a_rank_implementation_the_workers_cannot_import_is_named(adapters):
    a = adapters(2)
    a.fn = lambda logits, target, **kw: logits.sum()
    with pytest.raises(TypeError, match=r"cannot send .* to the ranks .*fix: make the rank implementation a "
                                        r"module-level function"):
        a.call(_case())


# --------------------------------------------------------------------------- configs
def test_world_size_in_an_adapter_config(tmp_path):
    cfg = tmp_path / "vp.yaml"
    cfg.write_text("name: vp4\nimport: conformance.adapters.vocab_parallel:ReferenceVocabParallel\nworld_size: 4\n")
    a = resolve(str(cfg))
    assert a.world_size == 4 and a.capabilities.world_size == 4 and a.name == "vp4"
    cfg.write_text("import: conformance.adapters.vocab_parallel:ReferenceVocabParallel\n\nworld_size: 0\n")
    with pytest.raises(AdapterConfigError, match=r"vp\.yaml:3: 'world_size' must be an integer from 1 to 64 "
                                                 r"\(got 0\)\n  fix: write e\.g\. 'world_size: 2'"):
        resolve(str(cfg))
    cfg.write_text("import: torch-cpu\nworld_size: 2\n")
    with pytest.raises(AdapterConfigError, match=r"vp\.yaml:2: 'world_size' is for distributed adapters"):
        resolve(str(cfg))


def test_even_shards_leave_out_what_the_library_cannot_split():
    a = ReferenceVocabParallel(world_size=4)
    a.capabilities = replace(a.capabilities, even_shards=True)
    assert a.capabilities.unsupported(_case(C=6)) == "6 classes is not a multiple of world size 4"
    assert a.capabilities.unsupported(_case(C=8)) is None


def test_the_example_config_from_the_command_line(tmp_path):
    """End to end: the Megatron-smoothing reference config, its variant reported as such."""
    import json

    from conformance import distributed
    from conformance.runner import cli

    try:
        code = cli.main(["run", "--adapter", str(EXAMPLES / "vocab_parallel_megatron_smoothing.yaml"), "--profile",
                         "quick", "--ci", "--no-report", "--check", "forward.index", "--check",
                         "error.target_out_of_range_high", "--out", str(tmp_path / "o")])
    finally:
        distributed._close_all()
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    st = {r["check"]: r["status"] for r in doc["results"]}
    assert code == 0 and st == {"forward.index": "variant", "error.target_out_of_range_high": "passed"}
    assert next(r for r in doc["results"] if r["check"] == "forward.index")["variants"] == ["label_smoothing_megatron"]
