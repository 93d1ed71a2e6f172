"""The linear form (specs/linear_cross_entropy.yaml): the oracle against values by hand, mpmath
at 50 digits and torch float64 autograd of linear -> scale -> softcap -> CE + z-loss; the
composed spec's loading; planted fused kernels (tests/planted_linear.py) caught by the quick
profile or never flagged; and the CLI on the torch-linear reference."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conformance.case import Case
from conformance.oracle import Oracle
from conformance.spec import SpecError, load, loads

SPEC_FILE = Path(__file__).resolve().parent.parent / "specs" / "linear_cross_entropy.yaml"
SPEC = load(SPEC_FILE)
ORACLE = Oracle(SPEC)


def _case(h, W, t, b=None, **kw):
    h, W = np.asarray(h, dtype=np.float64), np.asarray(W, dtype=np.float64)
    x = h @ W.T + (0 if b is None else np.asarray(b, dtype=np.float64))
    return Case(x=x, target=np.asarray(t, dtype=np.int64),
                linear={"hidden": h, "classifier": W, "bias": None if b is None else np.asarray(b, dtype=np.float64)},
                **kw)


# --------------------------------------------------------------------------- the composed spec
def test_composed_spec_reuses_cross_entropy():
    base = load(SPEC_FILE.parent / "cross_entropy.yaml")
    assert SPEC.operation == "linear_cross_entropy" and list(SPEC.paths) == ["index"]
    assert SPEC.paths["index"] is not None and SPEC.paths["index"].bindings.keys() == base.paths["index"].bindings.keys()
    assert set(SPEC.extensions) == set(base.extensions) and SPEC.tolerances.scale.source == base.tolerances.scale.source
    assert {"hidden_size_mismatch", "bias_wrong_length", "softcap_nonpositive"} <= set(SPEC.errors)
    assert "pos_inf_logit" not in SPEC.special_cases and "all_ignored" in SPEC.special_cases


def test_unknown_inherited_clause_is_a_spec_error():
    text = SPEC_FILE.read_text().replace("single_class, huge_logits", "single_klass, huge_logits", 1)
    with pytest.raises(SpecError, match=r"linear_cross_entropy.yaml:\d+:\d+: .*no special case 'single_klass'"):
        loads(text, file=str(SPEC_FILE))


def test_linear_formula_names_are_checked():
    text = SPEC_FILE.read_text().replace("hidden: matmul(G, classifier)", "hidden: matmul(G, clasifier)", 1)
    with pytest.raises(SpecError, match=r"linear.gradients.hidden.*clasifier"):
        loads(text, file=str(SPEC_FILE))


# --------------------------------------------------------------------------- by hand
def test_logits_and_gradients_by_hand():
    # hidden (1, 2) = (1, 2); classifier rows (1, 0), (0, 1), (1, 1); bias (0, 0, -3):
    # logits (1, 2, 0); target 1
    h, W, b = [[1.0, 2.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, -3.0]
    ev = ORACLE.evaluate(_case(h, W, [1], b, reduction="sum"))
    e = np.exp([1.0, 2.0, 0.0])
    p = e / e.sum()
    assert float(ev.value) == pytest.approx(math.log(e.sum()) - 2.0, rel=1e-15)
    G = p - np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(ev.gradients["bias"], G, rtol=1e-15)
    np.testing.assert_allclose(ev.gradients["hidden"], [G @ np.asarray(W)], rtol=1e-15)
    np.testing.assert_allclose(ev.gradients["classifier"], np.outer(G, h[0]), rtol=1e-15, atol=1e-17)
    # no bias: no bias gradient asked for
    ev = ORACLE.evaluate(_case(h, W, [1], reduction="sum"))
    assert set(ev.gradients) == {"hidden", "classifier"}


def test_float64_logits_are_summed_beyond_float64():
    # (1 + 2^-30)^2 - 1 = 2^-29 + 2^-60: float64 products lose the 2^-60, long double keeps it
    a = 1.0 + 2.0 ** -30   # not a float32 value: the float64 inputs' path
    ev = ORACLE.evaluate(_case([[a, -1.0]], [[a, 1.0]], [0], reduction="none"))
    assert ev.env["x"][0, 0] == 2.0 ** -29 + 2.0 ** -60
    assert (np.array([[a, -1.0]]) @ np.array([[a, 1.0]]).T)[0, 0] == 2.0 ** -29   # what plain float64 gives


# --------------------------------------------------------------------------- mpmath
def test_composition_against_mpmath_50_digits():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    rng = np.random.default_rng(7)
    P, C, H = 4, 6, 5
    h, W, b = rng.normal(size=(P, H)), rng.normal(0, 3, size=(C, H)), rng.normal(size=C)
    t = [1, -100, 5, 0]
    s, cap, z = 0.5, 5.0, 0.01
    ev = ORACLE.evaluate(_case(h, W, t, b, reduction="mean", extensions={"logit_scale": s, "softcap": cap, "z_loss": z}))
    total, n = mp.mpf(0), 0
    for p, ti in enumerate(t):
        if ti == -100:
            continue
        logits = [sum(mp.mpf(float(h[p, k])) * mp.mpf(float(W[c, k])) for k in range(H)) + mp.mpf(float(b[c]))
                  for c in range(C)]
        xs = [cap * mp.tanh(v * s / cap) for v in logits]
        lse = mp.log(sum(mp.exp(v) for v in xs))
        total += lse - xs[ti] + z * lse ** 2
        n += 1
    assert float(ev.value) == pytest.approx(float(total / n), rel=1e-14)


# --------------------------------------------------------------------------- torch float64 autograd
def test_composition_against_torch_float64_autograd():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    P, C, H = 6, 9, 4
    h, W, b = rng.normal(size=(P, H)), rng.normal(0, 4, size=(C, H)), rng.normal(size=C)
    t = np.array([0, 3, -100, 8, 2, 2])
    w = rng.uniform(0.1, 2, size=C)
    up = rng.normal(size=P)
    s, cap, z = 2.0, 7.0, 0.1
    for red in ("none", "sum", "mean"):
        c = _case(h, W, t, b, weight=w, reduction=red, label_smoothing=0.2,
                  extensions={"logit_scale": s, "softcap": cap, "z_loss": z})
        c.upstream = up if red == "none" else np.float64(1.5)
        ev = ORACLE.evaluate(c)
        ht, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (h, W, b))
        xc = cap * torch.tanh(F.linear(ht, Wt, bt) * s / cap)
        tt = torch.tensor(t)
        valid = tt != -100
        ce = F.cross_entropy(xc, tt, weight=torch.tensor(w), reduction="none", label_smoothing=0.2)
        per = ce + torch.where(valid, z * torch.logsumexp(xc, 1) ** 2, 0.0)
        den = torch.tensor(w)[tt.clamp(min=0)][valid].sum()
        out = {"none": per, "sum": per.sum(), "mean": per.sum() / den}[red]
        gh, gW, gb = torch.autograd.grad(out, (ht, Wt, bt), torch.tensor(c.upstream).reshape(out.shape))
        np.testing.assert_allclose(ev.value, out.detach().numpy(), rtol=1e-13)
        for name, g in (("hidden", gh), ("classifier", gW), ("bias", gb)):
            np.testing.assert_allclose(ev.gradients[name], g.numpy(), rtol=1e-11, atol=1e-14, err_msg=f"{red} {name}")


# --------------------------------------------------------------------------- strategies
def test_drawn_cases_realise_their_regime():
    from hypothesis import given, settings

    from conformance import linear_strategies
    from conformance import strategies as strat
    from conformance.adapters import resolve

    caps = resolve("torch-linear").capabilities
    req = strat.request_for(SPEC, caps, regimes=("ties",))
    seen = []

    @settings(max_examples=15, deadline=None, database=None)
    @given(linear_strategies.cases_of(SPEC, req))
    def draw(case):
        lin = case.linear
        x = ORACLE.evaluate(case, gradients=False).env["x"]
        assert lin["hidden"].shape == (case.positions, lin["classifier"].shape[1])
        if case.num_classes >= 2 and case.positions:
            np.testing.assert_array_equal(x[:, 0], x[:, 1])   # tied logits, exactly
        seen.append(lin["classifier"].shape[1])

    draw()
    assert seen and set(seen) <= set(SPEC.linear.domain["hidden"]) | set(SPEC.linear.domain["vocab"]["hidden"])


# --------------------------------------------------------------------------- planted kernels
@pytest.fixture(scope="module")
def planted():
    pytest.importorskip("torch")
    import planted_linear
    return planted_linear


#: Keyword arguments the correct kernels run with here: chunk_rows=3 over the 1000- and
#: 4096-position batches cost minutes on CPU; 16-row chunks still end ragged (1000 = 62 * 16 + 8)
#: and 4096-class vocabulary chunks still split the 4097- to 262144-class vocabularies.
FAST = {"chunked_fp32": {"chunk_rows": 16, "chunk_vocab": 4096}}


def _ctx(planted, name, profile, max_classes=None):
    import dataclasses
    import functools

    from conformance.adapters.llm import LlmTorchAdapter
    from conformance.checks import Context
    fn = functools.partial(getattr(planted, name), **FAST.get(name, {}))
    caps = dataclasses.replace(planted.FORM.capabilities(), max_classes=max_classes)
    return Context(SPEC, LlmTorchAdapter(fn, f"planted-{name}", planted.FORM, capabilities=caps), profile=profile)


@pytest.mark.parametrize("name", ["bias_grad_missing", "classifier_grad_transposed", "hidden_grad_uncapped",
                                  "bias_ignored_forward"])
def test_planted_linear_bug_is_caught(planted, name):
    from conformance.checks import catalogue
    from conformance.engine import run_check
    checks = {c.id: c for c in catalogue(SPEC)}
    # quick, and vocabularies up to 4097 classes: each bug is caught there at seed 1 in about
    # 4-35 s (the default profile over real vocabularies took up to 104 s); docs/findings.md
    # has the default-profile runs
    ctx = _ctx(planted, name, "quick", max_classes=4097)
    results = [run_check(ctx, checks[cid], seed=1) for cid in planted.BUGGY[name]]
    assert any(r.status == "failed" for r in results), "; ".join(f"{r.check}={r.status}" for r in results)


@pytest.mark.parametrize("name", ["reference", "chunked_fp32"])
def test_correct_linear_kernels_are_never_flagged(planted, name):
    from conformance.checks import catalogue
    from conformance.engine import run_check
    checks = {c.id: c for c in catalogue(SPEC)}
    ctx = _ctx(planted, name, "quick")   # CI budget; the >= 10-seed runs are in docs/findings.md
    bad = [f"{cid}: {r.status} {r.message}" for cid in ("gradient.index", "extension.softcap", "extension.z_loss")
           for r in [run_check(ctx, checks[cid], seed=0)] if r.status != "passed"]
    assert not bad, "\n".join(bad)


def test_cli_runs_the_linear_spec_on_torch_linear(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from conformance.runner import cli
    monkeypatch.setenv("CE_CONFORMANCE_PROGRESS", "0")
    code = cli.main(["run", "--spec", str(SPEC_FILE), "--adapter", "torch-linear", "--profile", "quick", "--ci",
                     "--no-report", "--out", str(tmp_path), "--check", "forward.index", "--check", "error.",
                     "--check", "extension.return_lse"])
    doc = json.loads((tmp_path / "results.json").read_text())
    status = {r["check"]: r["status"] for r in doc["results"]}
    assert status["forward.index"] == "passed" and status["error.hidden_size_mismatch"] == "passed"
    assert status["extension.return_lse"] == "passed" and status["error.bias_wrong_length"] == "passed"
    assert code == 0, status
