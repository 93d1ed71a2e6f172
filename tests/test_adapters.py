"""Tests of the adapters: golden values, dtypes, the error contract, gradients against torch
float64 autograd, mutation detection and ``resolve``."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from conformance.spec import load_default

from conformance.adapters import BUILTINS, AdapterError, resolve
from conformance.adapters.base import InputsMutated
from conformance.adapters.numpy_ref import effective_reduction
from conformance.adapters.torch_adapter import TorchFunctionAdapter
from conformance.case import Case

CPU_ADAPTERS = ["numpy", "torch-cpu", "torch-module-cpu", "jax-cpu"]
DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}
_made: dict[str, object] = {}


def adapter(name: str):
    """One instance per builtin for the whole module (JAX keeps its compiled functions)."""
    if name not in _made:
        _made[name] = resolve(name)
    a = _made[name]
    reason = a.unavailable()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return a


def f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def out_shape(case: Case) -> tuple[int, ...]:
    """The output's shape, which the upstream gradient takes, after the legacy mapping."""
    legacy = case.legacy or {}
    red = effective_reduction(case.reduction, legacy.get("size_average"), legacy.get("reduce"))
    return case.none_shape if red == "none" else ()


# --------------------------------------------------------------------------- golden values
GOLDEN_F32 = [
    ([[2.0, 0.5], [0.5, 2.0]], [0, 1], {}, 0.2014133334159851),
    ([[2.0, 0.5], [0.5, 2.0]] * 2, [0, 1, 0, 1], {}, 0.2014133334159851),
    ([[1.5, 2.0, 0.5], [1.0, 0.5, 2.5]], [1, 2], {}, 0.45524317026138306),
    ([[1.5, 2.0, 0.5], [1.0, 0.5, 2.5]], [1, 2], {"weight": [0.7, 0.2, 0.1]}, 0.5048722624778748),
    ([[1.5, 2.0, 0.5], [1.0, 0.5, 2.5]], [1, 2], {"label_smoothing": 0.1}, 0.5469098091125488),
]


@pytest.mark.parametrize("name", CPU_ADAPTERS)
@pytest.mark.parametrize("x, t, opts, expected", GOLDEN_F32)
def test_golden_float32(name, x, t, opts, expected):
    opts = dict(opts)
    if "weight" in opts:
        opts["weight"] = np.array(opts["weight"], np.float32)
    case = Case(x=np.array(x, np.float32), target=np.array(t, np.int64), **opts)
    out = adapter(name).call(case).value
    assert out.dtype == np.float32 and out.shape == ()
    assert float(out) == pytest.approx(expected, rel=1e-6)


X64 = np.array([[1, 2, .5], [.1, -1, 3], [0, 0, 0]])
W64 = np.array([.2, 1, 3])
T64, T64_IGNORE = np.array([1, 2, 0]), np.array([1, -100, 0])
Y64 = np.array([[0, 1, 0], [.2, .3, .5], [1 / 3, 1 / 3, 1 / 3]])
TABLE = {  # semantics.md, "Worked float64 table": none, sum, mean
    "index": (T64, None, 0.0, [.464369, .070774, 1.098612], 1.633755, .544585),
    "+w": (T64, W64, 0.0, [.464369, .212323, .219722], .896414, .213432),
    "+ignore": (T64_IGNORE, None, 0.0, [.464369, 0, 1.098612], 1.562981, .781491),
    "+w+ignore": (T64_IGNORE, W64, 0.0, [.464369, 0, .219722], .684091, .570076),
    "+eps": (T64, None, 0.1, [.547702, .300774, 1.098612], 1.947089, .649030),
    "+w+eps": (T64, W64, 0.1, [.639610, .353665, .351556], 1.344832, .320198),
    "+w+eps+ignore": (T64_IGNORE, W64, 0.1, [.639610, 0, .351556], .991166, .825972),
    "prob": (Y64, None, 0.0, [.464369, 1.850774, 1.098612], 3.413755, 1.137918),
    "prob+w": (Y64, W64, 0.0, [.464369, 1.446225, 1.538057], 3.448651, 1.149550),
    "prob+w+eps": (Y64, W64, 0.1, [.639610, 1.464177, 1.538057], 3.641845, 1.213948),
}


@pytest.mark.parametrize("name", CPU_ADAPTERS)
@pytest.mark.parametrize("row", list(TABLE))
def test_worked_float64_table(name, row):
    t, w, eps, none, total, mean = TABLE[row]
    for reduction, expected in (("none", none), ("sum", total), ("mean", mean)):
        case = Case(x=X64.copy(), target=t.copy(), weight=None if w is None else w.copy(),
                    reduction=reduction, label_smoothing=eps)
        out = adapter(name).call(case).value
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0, err_msg=f"{name} {row} {reduction}")


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("name", CPU_ADAPTERS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_output_dtype_is_input_dtype(name, dtype, kind, reduction):
    rng = np.random.default_rng(1)
    dt = DTYPES[dtype]
    x = rng.normal(size=(3, 4, 2)).astype(dt)
    target = rng.random((3, 4, 2)).astype(dt) if kind == "probability" else rng.integers(0, 4, (3, 2))
    case = Case(x=x, target=target, weight=rng.random(4).astype(dt), reduction=reduction,
                label_smoothing=0.1, upstream=rng.normal(size=(3, 2) if reduction == "none" else ()).astype(dt))
    res = adapter(name).call(case, gradient=True)
    assert res.value.dtype == np.dtype(dt)
    assert res.value.shape == ((3, 2) if reduction == "none" else ())
    assert res.gradients["input"].dtype == np.dtype(dt) and res.gradients["input"].shape == x.shape
    if kind == "probability":
        assert res.gradients["target"].dtype == np.dtype(dt)


# --------------------------------------------------------------------------- error contract
def _valid(**changes) -> Case:
    base = dict(x=np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]], np.float32), target=np.array([1, 2]))
    base.update(changes)
    return Case(**base)


X4 = np.zeros((2, 3, 4, 5), np.float32)
ERRORS = {  # clause -> (case, torch raises, jax raises)
    "target_out_of_range_high": (_valid(target=np.array([1, 3])), True, False),
    "target_out_of_range_negative": (_valid(target=np.array([1, -2])), True, False),
    "label_smoothing_above_one": (_valid(label_smoothing=1.5), True, True),
    "label_smoothing_negative": (_valid(label_smoothing=-0.1), False, True),
    "label_smoothing_nan": (_valid(label_smoothing=float("nan")), False, True),
    "weight_wrong_length": (_valid(weight=np.ones(2, np.float32)), True, True),
    "weight_wrong_rank": (_valid(weight=np.ones((1, 3), np.float32)), True, True),
    "batch_size_mismatch": (_valid(target=np.array([1, 2, 0])), True, True),
    "spatial_size_mismatch": (_valid(x=X4, target=np.zeros((2, 4, 4), np.int64)), True, True),
    "probability_target_with_ignore_index": (
        _valid(target=np.full((2, 3), 1 / 3, np.float32), ignore_index=0), True, True),
    "index_target_float_dtype": (_valid(target=np.array([1.0, 2.0], np.float32)), True, True),
    "reduction_unknown": (_valid(reduction="average"), True, True),
}


@pytest.mark.parametrize("clause", list(ERRORS))
def test_numpy_raises_value_error(clause):
    with pytest.raises(ValueError):
        adapter("numpy").call(ERRORS[clause][0])


@pytest.mark.parametrize("name", ["torch-cpu", "torch-module-cpu"])
@pytest.mark.parametrize("clause", list(ERRORS))
def test_torch_error_contract(name, clause):
    case, raises, _ = ERRORS[clause]
    if raises:
        # the exception type the spec records for torch (errors.<clause>.torch: "IndexError: ...")
        want = load_default().errors[clause].torch.split(":")[0]
        with pytest.raises(Exception) as info:
            adapter(name).call(case)
        assert type(info.value).__name__ == want, f"{type(info.value).__name__}: {info.value}"
    else:  # torch issue 134767: negative or NaN label_smoothing is silently treated as 0
        out = adapter(name).call(case).value
        plain = adapter(name).call(case.copy(label_smoothing=0.0)).value
        assert out == plain


@pytest.mark.parametrize("clause", list(ERRORS))
def test_jax_error_contract(clause):
    case, _, raises = ERRORS[clause]
    jax = adapter("jax-cpu")
    assert "invalid_target_nan" in jax.capabilities.variants and not jax.capabilities.raises_on_invalid
    if raises:
        with pytest.raises(ValueError):
            jax.call(case)
        return
    for reduction in ("none", "sum", "mean"):
        res = jax.call(case.copy(reduction=reduction), gradient=True)
        expected_nan = (case.target >= 3) | (case.target < 0) if reduction == "none" else True
        assert np.array_equal(np.isnan(res.value), expected_nan)
        assert np.isnan(res.gradients["input"]).any()


# --------------------------------------------------------------------------- gradients
def _gradient_cases():
    rng = np.random.default_rng(7)
    cases = []
    for i in range(4):
        C = int(rng.integers(2, 7))
        x = rng.normal(0, 3, (5, C, 2))
        t = rng.integers(0, C, (5, 2))
        t[rng.random((5, 2)) < 0.3] = 0
        for reduction in ("none", "sum", "mean"):
            up = rng.normal(size=(5, 2) if reduction == "none" else ())
            cases.append(Case(x=x, target=t, weight=rng.random(C) + 0.1, ignore_index=0,
                              label_smoothing=0.15, reduction=reduction, upstream=up))
            y = rng.random((5, C, 2))
            cases.append(Case(x=x, target=y, weight=rng.random(C), label_smoothing=0.2 * i,
                              reduction=reduction, upstream=-up))
    cases.append(Case(x=rng.normal(size=5), target=np.array(3), weight=rng.random(5), label_smoothing=0.3))
    cases.append(Case(x=rng.normal(size=(4, 3)), target=np.array([1, 2, 0, 1]), ignore_index=7))
    cases.append(Case(x=rng.normal(size=(3, 4)), target=np.full(3, -100), label_smoothing=0.1))
    return cases


GRADIENT_CASES = _gradient_cases()


@pytest.mark.parametrize("name", ["numpy", "jax-cpu", "torch-module-cpu"])
@pytest.mark.parametrize("i", range(len(GRADIENT_CASES)))
def test_gradients_match_torch_float64(name, i):
    case = GRADIENT_CASES[i]
    want = adapter("torch-cpu").call(case, gradient=True)
    got = adapter(name).call(case, gradient=True)
    np.testing.assert_allclose(got.value, want.value, rtol=0, atol=1e-10)
    assert set(got.gradients) == set(want.gradients)
    for k in want.gradients:
        np.testing.assert_allclose(got.gradients[k], want.gradients[k], rtol=0, atol=1e-10, err_msg=k)


# --------------------------------------------------------------------------- special inputs
SPECIAL = {
    "empty_batch": Case(x=np.zeros((0, 3)), target=np.zeros(0, np.int64)),
    "empty_prob": Case(x=np.zeros((0, 3)), target=np.zeros((0, 3))),
    "single_class": Case(x=np.array([[0.3], [5.0]]), target=np.array([0, 0]), label_smoothing=0.2),
    "all_ignored": Case(x=np.ones((2, 3)), target=np.array([1, 1]), ignore_index=1),
    "unbatched_weighted": Case(x=np.array([0.5, 1.0, -1.0]), target=np.array(2), weight=np.array([1.0, 4.0, 2.0])),
    "unbatched_size1_target": Case(x=np.array([0.5, 1.0, -1.0]), target=np.array([2])),
    "neg_inf_off_target": Case(x=np.array([[0.0, -np.inf, 1.0]]), target=np.array([0])),
    "neg_inf_at_target": Case(x=np.array([[0.0, -np.inf, 1.0]]), target=np.array([1])),
    "neg_inf_smoothing": Case(x=np.array([[0.0, -np.inf, 1.0]]), target=np.array([0]), label_smoothing=0.1),
    "prob_zero_at_neg_inf": Case(x=np.array([[0.0, -np.inf, 1.0]]), target=np.array([[0.5, 0.0, 0.5]])),
    "pos_inf": Case(x=np.array([[0.0, np.inf, 1.0], [1.0, 2.0, 3.0]]), target=np.array([0, 1])),
    "nan_logit": Case(x=np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]]), target=np.array([0, 1])),
    "all_neg_inf_row": Case(x=np.array([[-np.inf] * 3, [1.0, 2.0, 3.0]]), target=np.array([0, 1])),
    "huge": Case(x=np.array([[1e30, 0.0, -1e30]], np.float32), target=np.array([1])),
    "ignore_high": Case(x=np.ones((2, 3)), target=np.array([1, 5]), ignore_index=5),
    "legacy_reduce_false": Case(x=np.ones((2, 3)), target=np.array([1, 2]), legacy={"reduce": False}),
    "legacy_size_average_false": Case(x=np.ones((2, 3)), target=np.array([1, 2]), legacy={"size_average": False}),
}


@pytest.mark.parametrize("name", ["numpy", "jax-cpu", "torch-module-cpu"])
@pytest.mark.parametrize("special", list(SPECIAL))
def test_special_inputs_agree_with_torch(name, special):
    case = SPECIAL[special]
    for reduction in ("none", "sum", "mean"):
        c = case.copy(reduction=reduction)
        c.upstream = np.full(out_shape(c), 0.75, c.x.dtype)
        if special == "unbatched_size1_target":
            # torch 2.13: the forward accepts a (1,) target for a (C,) input, the backward
            # raises "size mismatch (got input: [3], target: [1])"; compare with a 0-d target.
            with pytest.raises(RuntimeError, match="size mismatch"):
                adapter("torch-cpu").call(c, gradient=True)
            want = adapter("torch-cpu").call(c.copy(target=c.target.reshape(())), gradient=True)
            if name.startswith("torch"):
                c = c.copy(target=c.target.reshape(()))
        else:
            want = adapter("torch-cpu").call(c, gradient=True)
        got = adapter(name).call(c, gradient=True)
        assert got.value.shape == want.value.shape and got.value.dtype == want.value.dtype
        np.testing.assert_allclose(f64(got.value), f64(want.value), rtol=1e-6, atol=1e-12)
        g, wg = got.gradients["input"], want.gradients["input"]
        assert np.array_equal(np.isfinite(g), np.isfinite(wg))
        np.testing.assert_allclose(f64(g), f64(wg), rtol=1e-6, atol=1e-12)
        assert bool(got.warnings) == bool(want.warnings)


def test_decomposition_extras_agree():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5, 2))
    t = rng.integers(0, 5, (4, 2))
    w = rng.random(5)
    want_lp = adapter("torch-cpu").log_softmax(x, 1)
    for name in ("numpy", "jax-cpu"):
        a = adapter(name)
        assert {"log_softmax", "nll_loss"} <= a.capabilities.extras
        np.testing.assert_allclose(a.log_softmax(x, 1), want_lp, atol=1e-12)
        for reduction in ("none", "sum", "mean"):
            want = adapter("torch-cpu").nll_loss(want_lp, t, weight=w, ignore_index=2, reduction=reduction)
            np.testing.assert_allclose(a.nll_loss(want_lp, t, weight=w, ignore_index=2, reduction=reduction),
                                       want, atol=1e-12)


def test_jax_compiled_cache_counts():
    jax = adapter("jax-cpu")
    case = Case(x=np.ones((11, 7), np.float32), target=np.arange(11) % 7)
    misses, hits = jax.cache_misses, jax.cache_hits
    jax.call(case)
    jax.call(case.copy(ignore_index=3, target=np.arange(11) % 5))  # same shapes, options dynamic
    assert (jax.cache_misses, jax.cache_hits) == (misses + 1, hits + 1)


# --------------------------------------------------------------------------- mutation
def test_mutating_callable_is_caught():
    F = pytest.importorskip("torch.nn.functional")

    def sloppy(input, target, **kw):
        input.add_(1.0)
        return F.cross_entropy(input, target, **kw)

    case = _valid()
    before = case.x.copy()
    with pytest.raises(InputsMutated) as info:
        TorchFunctionAdapter(sloppy, "sloppy").call(case)
    assert info.value.names == ["input"]
    assert np.array_equal(case.x, before)  # the case itself is untouched


@pytest.mark.parametrize("name", CPU_ADAPTERS)
def test_adapters_leave_inputs_alone(name):
    case = Case(x=np.array([[1.0, 2.0], [3.0, 4.0]]), target=np.array([[0.2, 0.8], [0.5, 0.5]]),
                weight=np.array([1.0, 2.0]), label_smoothing=0.1)
    copies = (case.x.copy(), case.target.copy(), case.weight.copy())
    adapter(name).call(case, gradient=True)
    for a, b in zip((case.x, case.target, case.weight), copies):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------- resolve
def test_resolve_builtins_and_paths():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    from conformance.adapters import DEFAULT_ADAPTERS, JaxCallableAdapter, ModuleClassAdapter, NumpyCallableAdapter

    assert set(DEFAULT_ADAPTERS) <= set(BUILTINS)
    assert {n: resolve(n).name for n in BUILTINS} == {n: n for n in BUILTINS}
    fn = resolve("torch.nn.functional:cross_entropy")
    assert type(fn) is TorchFunctionAdapter and fn.name == "torch.nn.functional:cross_entropy"
    assert isinstance(resolve("torch.nn:CrossEntropyLoss"), ModuleClassAdapter)
    assert resolve("conformance.adapters.numpy_ref:NumpyAdapter").name == "numpy"
    case = Case(x=np.array([[2.0, 0.5], [0.5, 2.0]], np.float32), target=np.array([0, 1]))
    for spec, cls in (("jax:conformance.adapters.jax_adapter:cross_entropy", JaxCallableAdapter),
                      ("numpy:conformance.adapters.numpy_ref:cross_entropy", NumpyCallableAdapter),
                      ("torch.nn:CrossEntropyLoss", ModuleClassAdapter)):
        a = resolve(spec)
        assert isinstance(a, cls)
        assert float(a.call(case).value) == pytest.approx(0.2014133334159851, rel=1e-6)
    assert "gradient" not in resolve("numpy:conformance.adapters.numpy_ref:cross_entropy").capabilities.features
    g = resolve("jax:conformance.adapters.jax_adapter:cross_entropy").call(case, gradient=True)
    np.testing.assert_allclose(g.gradients["input"], adapter("torch-cpu").call(case, gradient=True).gradients["input"],
                               atol=1e-7)


@pytest.mark.parametrize("spec, words", [
    ("numpi", ["unknown adapter", "did you mean 'numpy'", "torch-cpu", "pkg.module:attr"]),
    ("no_such_module_xyz:fn", ["cannot import module 'no_such_module_xyz'", "fix:", "PYTHONPATH"]),
    ("torch.nn.functional:cross_entrpy", ["no attribute 'cross_entrpy'", "cross_entropy", "fix:"]),
    ("jax:conformance.adapters.jax_adapter", ["expected 'pkg.module:attr'", "fix:"]),
    ("conformance.adapters:BUILTINS", ["neither an Adapter nor callable", "fix:"]),
])
def test_resolve_errors_name_the_fix(spec, words):
    with pytest.raises(AdapterError) as info:
        resolve(spec)
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("name, reason", [("torch-cuda", "no CUDA device visible"),
                                          ("jax-gpu", "no JAX GPU device visible")])
def test_gpu_adapters_say_why_they_are_unavailable(name, reason):
    jax, torch = pytest.importorskip("jax"), pytest.importorskip("torch")
    if torch.cuda.is_available() or any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is visible here")
    assert resolve(name).unavailable() == reason


def test_info_names_versions():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    assert "torch" in resolve("torch-cpu").info()
    assert "jax" in resolve("jax-cpu").info()
