"""Meta-tests of the spec's LLM extensions: every planted kernel bug in tests/planted_llm.py is
caught by the default profile; the correct compositions are never flagged on the checks that
force the extensions on; a plain F.cross_entropy adapter draws exactly what it drew before."""
import pytest

pytest.importorskip("torch")

import planted_llm  # noqa: E402
from conformance.adapters.llm import CallForm, LlmTorchAdapter  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.spec import load_default  # noqa: E402

SPEC = load_default()
CHECKS = {c.id: c for c in catalogue(SPEC)}
EXTENSION_CHECKS = [cid for cid, c in CHECKS.items() if c.extensions]


def _ctx(name, profile="default"):
    return Context(SPEC, LlmTorchAdapter(getattr(planted_llm, name), f"planted-{name}", planted_llm.FORM),
                   profile=profile)


@pytest.mark.parametrize("name", sorted(planted_llm.BUGGY))
def test_planted_llm_bug_is_caught(name):
    ctx = _ctx(name)
    results = [run_check(ctx, CHECKS[cid], seed=1) for cid in planted_llm.BUGGY[name]]
    failed = [r for r in results if r.status == "failed"]
    assert failed, f"{name}: " + "; ".join(f"{r.check}={r.status} {r.message}" for r in results)
    assert all(r.failure["counterexample"]["target_kind"] == "index" for r in failed)


@pytest.mark.parametrize("name", planted_llm.CORRECT)
def test_correct_llm_composition_is_never_flagged(name):
    ctx = _ctx(name, "quick")  # CI budget; scripts/meta_seeds.py-style long runs use "default"
    bad = [f"{cid}: {r.message}" for cid in EXTENSION_CHECKS
           for r in [run_check(ctx, CHECKS[cid], seed=0)] if r.status != "passed"]
    assert not bad, "\n".join(bad)


def test_form_declares_only_what_the_api_takes():
    form = CallForm(options={"ignore_index": "ignore_index", "softcap": "softcap", "shift": "shift"},
                    returns={"loss": None}, layout="sequence")
    caps = form.capabilities()
    assert caps.extensions == {"softcap", "shift"}
    assert "weight" not in caps.features and "reduction_none" not in caps.features and caps.ranks == {3}
    with pytest.raises(ValueError, match="unknown argument or option 'temperature'"):
        CallForm(options={"temperature": "t"})


def test_plain_adapters_never_get_an_extension():
    from conformance.adapters import resolve

    ctx = Context(SPEC, resolve("torch-cpu"))
    for cid in EXTENSION_CHECKS:
        r = run_check(ctx, CHECKS[cid], seed=0)
        assert r.status == "not_supported" and "extension" in r.message, (cid, r.status, r.message)
    seen = []
    orig = ctx.adapter.call
    ctx.adapter.call = lambda case, **kw: (seen.append(dict(case.extensions)), orig(case, **kw))[1]
    run_check(ctx, CHECKS["forward.index"], seed=0)
    assert seen and not any(seen)
