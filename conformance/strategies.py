"""Stage 2: Hypothesis strategies for cases, derived from the spec's domains.

Everything drawn comes from ``spec.domains``: dtypes, ranks, target kinds, reductions, the
bounded size menu (compiled frameworks pay per new shape), the option domains and the value
regimes. Small arrays are drawn element by element so that Hypothesis shrinks failing
values; large arrays come from a drawn seed plus injected edge values so that generation
stays cheap.

Two registries are referenced by name from the spec:
``MODIFIERS`` force a special case's shape of input (``special_cases.*.make``), and
``MUTATIONS`` turn a valid case into an invalid one (``errors.*.make``); both are
conformance/registry.py registries (name, doc, function, declared needs).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from . import layouts
from .case import Case, np_dtype
from .registry import Entry, Modifier, Needs, Registry

#: Arrays up to this many elements are drawn element by element (shrinkable).
SMALL = 24

#: Largest finite magnitude a regime may use per dtype (float16 tops out at 65504).
_HUGE = float(np.float32(1e30))
_LARGE = {"float16": 3.0e4, "bfloat16": 1.0e4, "float32": 1.0e4, "float64": 1.0e4}


@dataclass(frozen=True)
class Request:
    """What a check asks of the strategy; None means "anything the spec allows"."""

    dtypes: tuple[str, ...]
    ranks: tuple[int, ...]
    target_kinds: tuple[str, ...]
    reductions: tuple[str, ...]
    modifiers: tuple[str, ...] = ()
    features: frozenset[str] = frozenset()
    regimes: tuple[str, ...] | None = None
    allow_legacy: bool = True
    allow_long: bool = True
    allow_empty: bool = True
    large_classes: bool = False
    max_classes: int | None = None
    #: Option classes fixed by the caller (conformance.gate.OPTION_CLASSES names: dtype,
    #: target, reduction, weight, ignore, smoothing, rank, regime), as sorted (name, value)
    #: pairs: the covering-array rows and the per-signature shrink searches use them.
    pins: tuple[tuple[str, str], ...] = ()
    #: The spec extensions the adapter declares (adapters/base.py Capabilities.extensions):
    #: only these are ever drawn, so an adapter declaring none gets exactly the plain draws.
    extensions: frozenset[str] = frozenset()


def request_for(spec, caps, *, target_kinds=None, reductions=None, modifiers=(), regimes=None,
                profile: str = "default", allow_long=True, gradient=False) -> Request:
    """Intersect the spec's domains with an adapter's declared capabilities."""
    d = spec.domains
    dtypes = tuple(x for x in d["dtypes"] if x in caps.dtypes)
    ranks = tuple(r for r in d["ranks"] if r in caps.ranks)
    kinds = [k for k in (target_kinds or d["target_kinds"]) if k in d["target_kinds"]]
    kinds = tuple(k for k in kinds if f"{k}_target" in caps.features)
    reds = tuple(r for r in (reductions or d["reductions"]) if f"reduction_{r}" in caps.features)
    return Request(dtypes=dtypes, ranks=ranks, target_kinds=kinds, reductions=reds, modifiers=tuple(modifiers),
                   features=frozenset(caps.features), regimes=tuple(regimes) if regimes else None,
                   allow_legacy="legacy_arguments" in caps.features, allow_long=allow_long,
                   allow_empty="empty" in caps.features, large_classes=(profile == "thorough"),
                   max_classes=caps.max_classes, extensions=frozenset(getattr(caps, "extensions", ())))


# --------------------------------------------------------------------------- modifiers
# A modifier is a set of constraints on the draw plus a function applied to the finished
# arrays. They are the vocabulary of `special_cases.*.make` in the spec (conformance/registry.py).


class NothingToDraw(Exception):
    """The adapter's declared capabilities leave nothing this request could draw."""


def _rows(draw, P, label):
    """Positions to edit: at least one, drawn so that Hypothesis can shrink them."""
    k = draw(st.integers(1, max(1, min(P, 3))), label=f"{label}_count")
    return sorted(set(draw(st.lists(st.integers(0, P - 1), min_size=k, max_size=k), label=f"{label}_rows")))


def _off_target_class(t, C, row):
    return (int(t[row]) + 1) % C if t is not None else 0


def _mod_neg_inf_off_target(draw, env):
    x, t, C, P = env["x"], env.get("t"), env["C"], env["P"]
    for r in _rows(draw, P, "neg_inf"):
        x[r, _off_target_class(t, C, r)] = -np.inf


def _mod_neg_inf_at_target(draw, env):
    x, t, P = env["x"], env["t"], env["P"]
    for r in _rows(draw, P, "neg_inf_target"):
        x[r, int(t[r])] = -np.inf


def _mod_zero_probability_there(draw, env):
    x, y = env["x"], env["y"]
    y[np.isneginf(x)] = 0.0


def _mod_value(value):
    def apply(draw, env):
        x, P, C = env["x"], env["P"], env["C"]
        for r in _rows(draw, P, "nonfinite"):
            x[r, draw(st.integers(0, C - 1), label="nonfinite_class")] = value
    return apply


def _mod_all_neg_inf_row(draw, env):
    x, P = env["x"], env["P"]
    for r in _rows(draw, P, "all_neg_inf"):
        x[r, :] = -np.inf


MODIFIERS: Registry[Modifier] = Registry("strategy modifier", "MODIFIERS in conformance/strategies.py")


def _modifier(name: str, doc: str, force: dict, fn: Callable | None = None, features: tuple[str, ...] = ()) -> None:
    MODIFIERS.add(Modifier(name, doc, fn, Needs(features=features, extensions=tuple(force.get("extensions", ()))),
                           force=force))


_modifier("all_ignored", "every position's target is ignore_index",
          {"target_kinds": ("index",), "all_ignored": True, "min_positions": 1}, features=("ignore_index",))
_modifier("empty_batch", "N = 0 (an empty batch)", {"empty": True}, features=("empty",))
_modifier("single_class", "C = 1, no ignored position, a positive weight if any",
          {"classes": 1, "no_ignored": True, "min_positions": 1, "weight_positive_or_absent": True})
_modifier("unbatched", "an unbatched (C,) input", {"ranks": (1,), "no_ignored": True})
_modifier("weighted", "a positive weight", {"weight": "positive"}, features=("weight",))
_modifier("smoothing", "label smoothing in (0, 1], positive weights",
          {"smoothing": True, "weight_positive_or_absent": True}, features=("label_smoothing",))
_modifier("neg_inf_off_target", "-inf at a non-target class of some positions",
          {"min_classes": 2, "no_smoothing_unless": "smoothing", "min_positions": 1,
           "weight_positive_or_absent": True, "no_ignored": True, "finite_regime": True},
          _mod_neg_inf_off_target, features=("nonfinite",))
_modifier("neg_inf_at_target", "-inf at the target class of some positions",
          {"target_kinds": ("index",), "min_classes": 2, "no_smoothing": True, "min_positions": 1,
           "weight_positive_or_absent": True, "no_ignored": True, "finite_regime": True},
          _mod_neg_inf_at_target, features=("nonfinite",))
_modifier("zero_probability_there", "probability 0 where the logit is -inf",
          {"target_kinds": ("probability",), "no_smoothing": True}, _mod_zero_probability_there)
_modifier("pos_inf", "+inf at some logits", {"min_positions": 1, "no_ignored": True, "finite_regime": True},
          _mod_value(np.inf), features=("nonfinite",))
_modifier("nan_logit", "NaN at some logits", {"min_positions": 1, "no_ignored": True, "finite_regime": True},
          _mod_value(np.nan), features=("nonfinite",))
_modifier("all_neg_inf_row", "a position whose logits are all -inf",
          {"min_positions": 1, "no_ignored": True, "finite_regime": True}, _mod_all_neg_inf_row,
          features=("nonfinite",))
_modifier("long_reduction", "a long batch (thousands of positions) in rank 2, none of them ignored",
          {"ranks": (2,), "long": True, "no_ignored": True, "min_classes": 2})
_modifier("half_precision", "float16 or bfloat16", {"dtypes": ("float16", "bfloat16")})
_modifier("huge_logits", "logits near 1e30 (float32/float64)", {"dtypes": ("float32", "float64"), "regime": "huge"})
_modifier("vocab_blocks", "C at a block boundary (2^k +- 1) or a real vocabulary size, 1-2 rows, the maximum logit "
          "in the last block, class ids >= 32768 where C allows (domains.sizes)",
          {"ranks": (2,), "shape_kind": "vocab", "no_ignored": True, "weight_positive_or_absent": True,
           "finite_regime": True})
_modifier("chunk_rows", "rows around chunk sizes (domains.sizes.chunk_rows) at small C",
          {"ranks": (2,), "shape_kind": "chunk", "no_ignored": True, "weight_positive_or_absent": True,
           "min_classes": 2})
_modifier("spatial_equals_classes", "an (N, C, d) input whose spatial size d equals C",
          {"ranks": (3,), "shape_kind": "spatial_equals_classes", "no_ignored": True,
           "weight_positive_or_absent": True, "min_classes": 2, "min_positions": 1})
_modifier("empty_spatial", "a zero-size spatial axis with N > 0", {"ranks": (3, 4, 5), "empty_spatial": True},
          features=("empty",))
# many rounding decisions per example for tolerances.unbiased (conformance/bias.py): one
# loss per row, each a log-probability of its own (no smoothing, weight or ignored rows),
# rows distinct (no broadcast batch entry), so one example gives dozens of samples
_modifier("distinct_rows", "64 or more rows (domains.sizes.rounding_rows) of ordinary logits, index targets, "
          "no weight, no smoothing, nothing ignored, no broadcast batch entries",
          {"ranks": (2,), "target_kinds": ("index",), "shape_kind": "rows", "no_ignored": True,
           "weight": "absent", "no_smoothing": True, "regime": "ordinary", "min_classes": 2,
           "distinct_rows": True})
_modifier("bfloat16", "bfloat16 only", {"dtypes": ("bfloat16",)})
_modifier("float16", "float16 only", {"dtypes": ("float16",)})
for _eid in ("shift", "logit_scale", "softcap", "z_loss", "normalizer", "return_lse"):
    _modifier(f"with_{_eid}", f"extension {_eid} on", {"target_kinds": ("index",), "extensions": (_eid,)})

#: Extensions a modifier forces on (checked against the adapter's declared extensions).
def _forced_extensions(req: Request) -> tuple[str, ...]:
    return tuple(e for m in req.modifiers for e in MODIFIERS[m].force.get("extensions", ()))


def _draw_extensions(draw, spec, req: Request, forced: tuple[str, ...], reduction: str, label: str = "ext") -> dict:
    """Which declared extensions are on, and their values, from ``spec.extensions.*.domain``.

    Each declared extension is on with probability 1/2 (always when forced; with modifiers, only
    the forced ones); ``return_z_loss``
    (asking for the z-loss on its own) is drawn with z_loss. The normaliser is a 'sum' option;
    its count is set once the targets are known (:func:`_set_normalizer`)."""
    out: dict = {}
    for eid, ext in spec.extensions.items():
        if eid not in req.extensions:
            continue
        if eid == "normalizer" and reduction != "sum":
            continue
        if req.modifiers and eid not in forced:
            continue  # a special case's input stays what it names; only the extensions it forces
        on = eid in forced or draw(st.booleans(), label=f"{label}_{eid}")
        if not on:
            continue
        values = list(ext.domain["values"])
        if eid == "normalizer":
            kinds = list(ext.domain.get("kinds", ["other"]))
            kind = draw(st.sampled_from(kinds), label=f"{label}_normalizer_kind")
            out[eid] = ("valid_count", None) if kind == "valid_count" else \
                ("other", draw(st.sampled_from(values), label=f"{label}_normalizer"))
        else:
            out[eid] = draw(st.sampled_from(values), label=f"{label}_{eid}")
        if eid == "z_loss" and "return_z_loss" in req.extensions:
            out["return_z_loss"] = draw(st.booleans(), label=f"{label}_return_z_loss")
    return out


def _set_normalizer(case: Case) -> None:
    """Resolve a drawn normaliser: this batch's valid count (after any shift), or the drawn one."""
    kind, value = case.extensions["normalizer"]
    if kind == "valid_count":
        env = case.copy(extensions={k: v for k, v in case.extensions.items() if k != "normalizer"}).canonical()
        value = float(np.count_nonzero(env["t"] != case.ignore_index))
        value = value or 1.0
    case.extensions["normalizer"] = float(value)


# --------------------------------------------------------------------------- value drawing
def _regime_values(draw, regime: str, dtype: str, shape, seeded: bool, label: str) -> np.ndarray:
    """float64 logits for a regime, exactly representable after quantising to dtype."""
    n = int(np.prod(shape, dtype=np.int64))
    big = _LARGE[dtype]
    if not seeded:
        if regime == "ordinary":
            el = st.floats(-8, 8, allow_nan=False, width=32)
        elif regime == "large_magnitude":
            el = st.one_of(st.floats(-big, big, allow_nan=False, width=32), st.sampled_from([-big, big, big / 2]))
        elif regime == "huge":
            el = st.floats(-_HUGE, _HUGE, allow_nan=False, width=32)
        elif regime == "ties":
            el = st.sampled_from([-2.0, 0.0, 0.5, 3.0])
        else:  # confident / nonfinite start from ordinary values
            el = st.floats(-4, 4, allow_nan=False, width=32)
        vals = draw(st.lists(el, min_size=n, max_size=n), label=label)
        return np.asarray(vals, dtype=np.float64).reshape(shape)
    seed = draw(st.integers(0, 2**32 - 1), label=f"{label}_seed")
    rng = np.random.default_rng(seed)
    if regime == "large_magnitude":
        v = rng.uniform(-big, big, size=shape)
    elif regime == "huge":
        v = rng.uniform(-_HUGE, _HUGE, size=shape)
    elif regime == "ties":
        v = rng.choice([-2.0, 0.0, 0.5, 3.0], size=shape)
    else:
        v = rng.normal(0.0, 3.0, size=shape)
    return v


def rank_class(rank: int) -> str:
    """The option class of an input rank: 'unbatched' (C,), 'batched' (N, C), 'spatial' (N, C, d...)."""
    return "unbatched" if rank == 1 else "batched" if rank == 2 else "spatial"


def _pin_ok(pins: dict, name: str, value: str) -> bool:
    return name not in pins or pins[name] == value


def _draw_pinned(draw, pins: dict, name: str, menu: list):
    """Draw ``name`` from ``menu``, or take its pinned value (nothing to draw if the menu lacks it)."""
    if name in pins:
        if pins[name] not in menu:
            raise NothingToDraw(f"{name}={pins[name]} is outside what this check may draw ({', '.join(map(str, menu))})")
        return pins[name]
    return draw(st.sampled_from(menu), label=name)


def _one_hot(idx: np.ndarray, C: int) -> np.ndarray:
    """(P, C) one-hot rows without a (C, C) identity (C reaches 131072 in the thorough profile)."""
    y = np.zeros((len(idx), C))
    y[np.arange(len(idx)), idx] = 1.0
    return y


def _quantise(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(np_dtype(dtype))


# --------------------------------------------------------------------------- the case strategy
@st.composite
def cases(draw, spec, req: Request) -> Case:
    """One valid case within ``req`` (mutations for the error contract come later)."""
    force: dict = {}
    applies = []
    for m in req.modifiers:
        mod = MODIFIERS[m]
        missing = [f for f in mod.needs.features if f not in req.features]
        if missing:  # a declared capability is honoured: never draw what the adapter lacks
            raise NothingToDraw(f"{m} needs {', '.join(missing)}, which the adapter declares unsupported")
        force.update(mod.force)
        if mod.fn:
            applies.append(mod.fn)

    pins = dict(req.pins)
    dtypes = tuple(d for d in req.dtypes if d in force.get("dtypes", req.dtypes) and _pin_ok(pins, "dtype", d))
    kinds = tuple(k for k in req.target_kinds if k in force.get("target_kinds", req.target_kinds)
                  and _pin_ok(pins, "target", k))
    ranks = tuple(r for r in req.ranks if r in force.get("ranks", req.ranks) and _pin_ok(pins, "rank", rank_class(r)))
    if not dtypes or not kinds or not ranks:
        raise NothingToDraw(f"the declared capabilities leave no {'dtype' if not dtypes else 'target kind' if not kinds else 'rank'} "
                            f"for {', '.join(req.modifiers) or 'this check'}")
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    kind = draw(st.sampled_from(kinds), label="target_kind")
    sizes = spec.domains["sizes"]

    # ---- shape: mostly the small menu; sometimes a long reduction or (thorough) huge C
    if force.get("empty"):
        ranks = tuple(r for r in ranks if r >= 2) or ranks
    rank = draw(st.sampled_from(ranks), label="rank")
    classes_menu = [c for c in sizes["classes"] if req.max_classes is None or c <= req.max_classes]
    if "classes" in force:
        C = force["classes"]
    else:
        menu = [c for c in classes_menu if c >= force.get("min_classes", 1)]
        if req.large_classes and rank == 2:
            menu += [c for c in sizes.get("large_classes", []) if req.max_classes is None or c <= req.max_classes]
        C = draw(st.sampled_from(menu), label="classes")
    shape_kind = _shape_kind(draw, sizes, force, req, rank, C)
    if shape_kind == "vocab":
        # C around block sizes (2^k +- 1) and real vocabulary sizes, at small P
        menu = [c for c in sizes.get("vocab_classes", []) + sizes.get("boundary_classes", [])
                if req.max_classes is None or c <= req.max_classes]
        C = draw(st.sampled_from(menu), label="vocab_classes")
    if rank == 1:
        batch_shape: tuple[int, ...] = ()
    elif force.get("empty"):
        batch_shape = (0,) + tuple(draw(st.sampled_from(sizes["spatial"]), label="spatial") for _ in range(rank - 2))
    elif shape_kind == "long":
        # keep N*C at a few hundred thousand elements: long reductions, cheap generation
        C = C if C <= 64 else 50
        batch_shape = (draw(st.sampled_from(sizes["large_batch"]), label="batch"),)
    elif shape_kind == "vocab":
        batch_shape = (draw(st.sampled_from(sizes.get("boundary_batch", [1])), label="batch"),)
    elif shape_kind == "rows":
        batch_shape = (draw(st.sampled_from(sizes.get("rounding_rows", [64])), label="batch"),)
    elif shape_kind == "chunk":
        # rows around chunk sizes (a mean of per-chunk means, a partial last chunk), small C
        C = C if C <= 64 else draw(st.sampled_from([c for c in sizes["classes"] if c <= 64] or [2]), label="chunk_classes")
        batch_shape = (draw(st.sampled_from(sizes["chunk_rows"]), label="batch"),)
    else:
        n_menu = [n for n in sizes["batch"] if (n > 0 or req.allow_empty) and n >= force.get("min_positions", 0)]
        if force.get("empty_spatial"):
            n_menu = [n for n in n_menu if n > 0] or [1]
        if pins.get("layout") == "expanded":
            n_menu = [n for n in n_menu if n >= 2] or [3]
        if C >= 257 or rank >= 4:
            n_menu = [n for n in n_menu if n <= 16] or n_menu[:1] or [1]
        N = draw(st.sampled_from(n_menu), label="batch")
        spatial = tuple(draw(st.sampled_from(sizes["spatial"]), label=f"d{i + 1}") for i in range(rank - 2))
        if shape_kind == "spatial_equals_classes":
            # the last spatial size equals C: a class axis guessed as the last one goes unseen by shapes
            C = C if C <= 64 else 5
            spatial = spatial[:-1] + (C,)
        if force.get("empty_spatial"):
            spatial = spatial[:-1] + (0,)  # a zero-size spatial axis with N > 0
        batch_shape = (N,) + spatial
    P = int(np.prod(batch_shape, dtype=np.int64)) if batch_shape else 1

    # ---- options
    weight_menu = [k for k in spec.domains.get("weight", ["absent"]) if k == "absent" or "weight" in req.features]
    weight_kind = force.get("weight") or _draw_pinned(draw, pins, "weight", weight_menu)
    if force.get("weight_positive_or_absent") and weight_kind == "with_zeros":
        weight_kind = "positive"
    reduction = _draw_pinned(draw, pins, "reduction", list(req.reductions))
    eps = 0.0
    if "smoothing" in pins and not force.get("no_smoothing"):
        eps = {"0": st.just(0.0), "1": st.just(1.0),
               "(0,1)": st.one_of(st.sampled_from([0.1, 0.25]), st.floats(0.001, 0.999))}[pins["smoothing"]]
        eps = draw(eps, label="label_smoothing") if "label_smoothing" in req.features or pins["smoothing"] == "0" else 0.0
    elif "label_smoothing" in req.features and not force.get("no_smoothing"):
        if force.get("smoothing"):
            eps = draw(st.one_of(st.just(1.0), st.floats(0.01, 1.0)), label="label_smoothing")
        elif force.get("no_smoothing_unless") and "smoothing" not in req.modifiers:
            eps = 0.0
        else:
            eps = draw(st.one_of(st.just(0.0), st.just(0.0), st.just(1.0), st.floats(0.0, 1.0),
                                 st.sampled_from([0.1, 0.25])), label="label_smoothing")
    ignore_kind = "default"
    if kind == "index" and "ignore_index" in req.features:
        ignore_kind = _draw_pinned(draw, pins, "ignore", list(spec.domains.get("ignore_index", ["default"])))
    if force.get("all_ignored") and ignore_kind == "default" and "ignore_index" not in req.features:
        ignore_kind = "default"
    if ignore_kind == "inside" and force.get("no_ignored"):
        ignore_kind = "default"
    ignore_index = {"default": -100, "inside": draw(st.integers(0, C - 1), label="ignore_inside") if ignore_kind == "inside" else -100,
                    "outside_high": C + draw(st.integers(0, 3), label="ignore_high") if ignore_kind == "outside_high" else -100}[ignore_kind]
    legacy = None
    if req.allow_legacy and not req.modifiers and not pins:
        legacy_kind = draw(st.sampled_from(["absent"] * 9 + ["legacy"]), label="legacy")
        if legacy_kind == "legacy":
            legacy = {"size_average": draw(st.sampled_from([None, True, False]), label="size_average"),
                      "reduce": draw(st.sampled_from([None, True, False]), label="reduce")}
            if legacy["size_average"] is None and legacy["reduce"] is None:
                legacy["reduce"] = False
            probe = Case(x=np.zeros((1,)), target=np.zeros((), dtype=np.int64), reduction=reduction, legacy=legacy)
            if probe.effective_reduction(spec.deprecated) not in req.reductions:
                legacy = None  # the legacy arguments would select a reduction the adapter lacks

    # ---- values
    regimes = list(spec.domains.get("value_regimes", {"ordinary": ""}))
    regimes = [r for r in regimes if r != "nonfinite" and (r != "huge" or dtype in ("float32", "float64"))]
    if req.regimes:
        regimes = [r for r in regimes if r in req.regimes] or ["ordinary"]
    if force.get("finite_regime"):
        regimes = [r for r in regimes if r in ("ordinary", "ties", "confident")]
    regime = force.get("regime") or _draw_pinned(draw, pins, "regime", regimes)
    seeded = P * C > SMALL
    x = _regime_values(draw, regime, dtype, (P, C), seeded, "logits")
    if shape_kind == "vocab" and P and C > 1:
        _late_maximum(draw, x)
    layout_menu = [lay for lay in spec.domains.get("layouts", ["contiguous"])
                   if layouts.valid(lay, rank, batch_shape[0] if batch_shape else None)
                   and not (force.get("distinct_rows") and lay == "expanded")]
    layout = _draw_pinned(draw, pins, "layout", layout_menu)
    if layout == "expanded" and P:
        xb = x.reshape(batch_shape[0], -1, C)
        xb[1:] = xb[0]  # one batch entry broadcast with stride 0 (the view is built by Case)

    env = {"x": x, "P": P, "C": C}
    if kind == "index":
        if seeded:
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="target_seed"))
            # vocabulary sizes: class ids in the late blocks, >= 32768 when C allows (int16 wraps)
            t = rng.integers(min(32768, C // 2) if shape_kind == "vocab" else 0, C, size=P)
        else:
            t = np.asarray(draw(st.lists(st.integers(0, C - 1), min_size=P, max_size=P), label="target"), dtype=np.int64)
        if P and ignore_index != -100 or (P and ignore_kind == "default" and "ignore_index" in req.features):
            # Ignore some positions: with the default -100 too, which every adapter must honour.
            if force.get("all_ignored"):
                t[:] = ignore_index
            elif not force.get("no_ignored") and draw(st.booleans(), label="some_ignored"):
                k = draw(st.integers(1, P), label="ignored_count") if P <= SMALL else max(1, P // 7)
                idx = np.random.default_rng(int(t.sum()) + P).choice(P, size=k, replace=False)
                t[idx] = ignore_index
        if layout == "expanded" and P:
            tb = t.reshape(batch_shape[0], -1)
            tb[1:] = tb[0]  # every batch entry alike, so that confident logits stay one broadcast entry
        if regime == "confident":
            rows = np.arange(P)
            ok = (t >= 0) & (t < C)
            margin = draw(st.floats(15, 40), label="margin")
            x[rows[ok], t[ok]] = np.max(x[ok], axis=1) + margin if ok.any() else x[rows[ok], t[ok]]
        env["t"] = t
    else:
        target_regime = draw(st.sampled_from(["softmax", "softmax", "one_hot", "unnormalised", "negative"]), label="prob_target")
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="prob_seed"))
        z = rng.normal(0, 2, size=(P, C))
        y = np.exp(z - z.max(axis=1, keepdims=True)) if C else z
        y = y / y.sum(axis=1, keepdims=True) if C else y
        if target_regime == "one_hot":
            y = _one_hot(rng.integers(0, C, size=P), C) if C else y
        elif target_regime == "unnormalised":
            y = rng.uniform(0, 2, size=(P, C))
        elif target_regime == "negative":
            y = rng.uniform(-0.5, 1.0, size=(P, C))
        if regime == "confident" and C:
            y = _one_hot(np.argmax(x, axis=1), C)
            x[np.arange(P), np.argmax(x, axis=1)] += draw(st.floats(15, 40), label="margin")
        env["y"] = y

    if regime == "ties" and C >= 2 and P:
        x[:, 1] = x[:, 0]
    w = None
    if weight_kind != "absent" and "weight" in req.features:
        rng = np.random.default_rng(C * 7919 + P)
        if C <= SMALL:
            w = np.asarray(draw(st.lists(st.floats(0.05, 4.0), min_size=C, max_size=C), label="weight"))
        else:
            w = rng.uniform(0.05, 4.0, size=C)
        if weight_kind == "with_zeros":
            w[draw(st.integers(0, C - 1), label="zero_weight_class")] = 0.0
        if kind == "index" and "t" in env:
            pass
    for apply in applies:
        apply(draw, env)
    extensions = {}
    if kind == "index" and (req.extensions or force.get("extensions")):
        missing = [e for e in force.get("extensions", ()) if e not in req.extensions]
        if missing:
            raise NothingToDraw(f"extension {', '.join(missing)} is not declared by the adapter")
        extensions = _draw_extensions(draw, spec, req, tuple(force.get("extensions", ())), reduction)

    # ---- quantise and assemble in the framework layout
    xq = _quantise(env["x"], dtype)
    if regime != "huge" and not np.all(np.isfinite(xq[np.isfinite(env["x"])])):
        xq = _quantise(np.clip(env["x"], -_LARGE[dtype], _LARGE[dtype]), dtype)
    shape_full = _full_shape(batch_shape, C, rank)
    x_out = _from_pc(xq, batch_shape, C, rank)
    if kind == "index":
        t = env["t"].astype(np.int64)
        target = t.reshape(batch_shape) if rank > 1 else np.asarray(t[0], dtype=np.int64).reshape(())
    else:
        target = _from_pc(_quantise(env["y"], dtype), batch_shape, C, rank)
    weight = _quantise(w, dtype) if w is not None else None
    none_shape = batch_shape if rank > 1 else ()
    case = Case(x=x_out, target=target, weight=weight, reduction=reduction, ignore_index=int(ignore_index),
                label_smoothing=float(eps), legacy=legacy, regime=regime, modifiers=req.modifiers,
                extensions=extensions, layout=layout)
    if "normalizer" in extensions:
        _set_normalizer(case)
    if layout == "expanded" and not layouts.expandable(np.asarray(case.x)):
        case.layout = "contiguous"  # batch entries differ: no stride-0 view of them exists
    assert case.x.shape == shape_full
    case.extra["shape_kind"] = shape_kind
    # A random upstream gradient, shaped like the output, so that 'none' is not only
    # differentiated through a sum.
    out_shape = none_shape if case.effective_reduction(spec.deprecated) == "none" else ()
    rng = np.random.default_rng(P + 13)
    case.upstream = _quantise(rng.choice([-1.5, -0.5, 0.75, 1.0, 2.0], size=out_shape), dtype)
    return case


def _shape_kind(draw, sizes, force, req, rank, C) -> str:
    """small, long, vocab (C at block/vocabulary sizes), chunk (rows around chunk sizes) or
    spatial_equals_classes, drawn with the weights of the spec's ``domains.sizes.shape_kinds``."""
    if force.get("long"):
        return "long"
    if force.get("shape_kind"):
        return force["shape_kind"]
    if "classes" in force or force.get("empty") or force.get("empty_spatial") or not req.allow_long:
        return "small"
    weights = sizes.get("shape_kinds") or {"small": 4, "long": 1}
    if rank == 2 and C <= 1000 and sizes.get("large_batch"):
        allowed = ("small", "long", "vocab", "chunk")
    elif rank >= 3:
        allowed = ("small", "spatial_equals_classes")
    else:
        return "small"
    if not sizes.get("chunk_rows"):
        allowed = tuple(k for k in allowed if k != "chunk")
    if not (sizes.get("boundary_classes") or sizes.get("vocab_classes")):
        allowed = tuple(k for k in allowed if k != "vocab")
    menu = [k for k in allowed for _ in range(int(weights.get(k, 0)))]
    return draw(st.sampled_from(menu), label="shape_kind") if len(set(menu)) > 1 else (menu[0] if menu else "small")


def _late_maximum(draw, x: np.ndarray) -> None:
    """Each row's largest logit in its last (partial) block: at C - 1 or in the last eighth,
    above the rest by a drawn margin (online-softmax kernels must rescale their running sum
    there, and a dropped partial block loses it)."""
    P, C = x.shape
    margin = draw(st.sampled_from([0.5, 2.0, 6.0]), label="late_margin")
    shift = draw(st.sampled_from([0.0, -8.0]), label="late_shift")
    rng = np.random.default_rng(P * 1_000_003 + C)
    x += shift
    for r in range(P):
        pos = C - 1 if r % 2 == 0 else int(rng.integers(C - max(1, C // 8), C))
        x[r, pos] = np.max(x[r]) + margin


def _full_shape(batch_shape, C, rank):
    if rank == 1:
        return (C,)
    return (batch_shape[0], C) + tuple(batch_shape[1:])


def _from_pc(a: np.ndarray, batch_shape, C, rank) -> np.ndarray:
    """(P, C) -> the framework layout with the class axis at 1 (or the only axis)."""
    if rank == 1:
        return np.ascontiguousarray(a.reshape(C))
    return np.ascontiguousarray(np.moveaxis(a.reshape(tuple(batch_shape) + (C,)), -1, 1))


# --------------------------------------------------------------------------- mutations
def _replace_target_value(value_of_C):
    def mutate(case: Case, draw) -> Case | None:
        if case.target_kind != "index" or case.positions == 0:
            return None
        t = np.array(case.target, dtype=np.int64, copy=True)
        flat = t.reshape(-1)
        pos = draw(st.integers(0, flat.size - 1), label="bad_position")
        bad = value_of_C(case.num_classes, case.ignore_index)
        flat[pos] = bad
        return case.copy(target=t.reshape(case.target.shape), purpose=f"target {bad} at position {pos}")
    return mutate


def _set(**changes):
    def mutate(case: Case, draw) -> Case | None:
        return case.copy(**changes, purpose=", ".join(f"{k}={v!r}" for k, v in changes.items()))
    return mutate


def _weight_wrong_length(case: Case, draw):
    C = case.num_classes
    n = draw(st.sampled_from([C + 1, max(C - 1, 0) if C > 1 else C + 2]), label="weight_length")
    return case.copy(weight=np.ones(n, dtype=case.x.dtype), purpose=f"weight of length {n} for C={C}")


def _weight_wrong_rank(case: Case, draw):
    C = case.num_classes
    return case.copy(weight=np.ones((C, 2), dtype=case.x.dtype), purpose=f"weight of shape ({C}, 2)")


def _batch_size_mismatch(case: Case, draw):
    if case.rank < 2 or case.target_kind != "index":
        return None
    t = np.asarray(case.target)
    t2 = np.concatenate([t, t[:1] if t.shape[0] else np.zeros((1,) + t.shape[1:], dtype=t.dtype)], axis=0)
    return case.copy(target=t2, upstream=None, purpose=f"target batch {t2.shape[0]} for input batch {t.shape[0]}")


def _spatial_size_mismatch(case: Case, draw):
    if case.rank < 3 or case.target_kind != "index":
        return None
    t = np.asarray(case.target)
    t2 = np.concatenate([t, np.zeros(t.shape[:1] + (1,) + t.shape[2:], dtype=t.dtype)], axis=1)
    return case.copy(target=t2, upstream=None, purpose=f"target shape {t2.shape} for input {case.x.shape}")


def _prob_with_ignore(case: Case, draw):
    if case.target_kind != "probability":
        return None
    ii = draw(st.integers(0, case.num_classes - 1), label="ignore_index")
    return case.copy(ignore_index=ii, purpose=f"probability target with ignore_index={ii}")


def _index_float(case: Case, draw):
    if case.target_kind != "index" or case.rank < 2:
        return None
    return case.copy(target=np.asarray(case.target).astype(np.float32), purpose="class indices as float32")


def _softcap_nonpositive(case: Case, draw):
    if case.target_kind != "index":
        return None
    cap = draw(st.sampled_from([0.0, -1.0, -30.0]), label="softcap")
    return case.copy(extensions={**case.extensions, "softcap": cap}, purpose=f"softcap={cap!r}")


# linear form (specs/linear_cross_entropy.yaml)
def _classifier_hidden_mismatch(case: Case, draw):
    if case.linear is None:
        return None
    W = np.asarray(case.linear["classifier"])
    extra = np.ones((W.shape[0], 1), dtype=W.dtype)
    return case.copy(linear={**case.linear, "classifier": np.concatenate([W, extra], axis=1)},
                     purpose=f"classifier of shape {(W.shape[0], W.shape[1] + 1)} for hidden size {W.shape[1]}")


def _bias_wrong_length(case: Case, draw):
    if case.linear is None:
        return None
    C = case.num_classes
    n = draw(st.sampled_from([C + 1] + ([C - 1] if C > 1 else [])), label="bias_length")
    return case.copy(linear={**case.linear, "bias": np.ones(n, dtype=case.x.dtype)},
                     purpose=f"bias of length {n} for C={C}")


#: ``fn(case, draw)`` -> the mutated case, or None when the mutation does not apply to it.
MUTATIONS: Registry[Entry] = Registry("error mutation", "MUTATIONS in conformance/strategies.py")
_INDEX = ("index",)
for _name, _doc, _fn, _needs in (
    ("target_at_least_C", "a class index >= C", _replace_target_value(lambda C, ii: C if C != ii else C + 1),
     Needs(target_kinds=_INDEX, data_validation=True)),
    ("target_negative_not_ignored", "a negative class index other than ignore_index",
     _replace_target_value(lambda C, ii: -2 if ii != -2 else -3), Needs(target_kinds=_INDEX, data_validation=True)),
    ("label_smoothing_above_one", "label_smoothing = 1.5", _set(label_smoothing=1.5),
     Needs(features=("label_smoothing",))),
    ("label_smoothing_negative", "label_smoothing = -0.1", _set(label_smoothing=-0.1),
     Needs(features=("label_smoothing",))),
    ("label_smoothing_nan", "label_smoothing = NaN", _set(label_smoothing=math.nan), Needs(features=("label_smoothing",))),
    ("weight_wrong_length", "a weight whose length is not C", _weight_wrong_length, Needs(features=("weight",))),
    ("weight_wrong_rank", "a 2-D weight", _weight_wrong_rank, Needs(features=("weight",))),
    ("batch_size_mismatch", "target batch size differs from the input's", _batch_size_mismatch,
     Needs(target_kinds=_INDEX, ranks=(2, 3, 4, 5))),
    ("spatial_size_mismatch", "target spatial size differs from the input's", _spatial_size_mismatch,
     Needs(target_kinds=_INDEX, ranks=(3, 4, 5))),
    ("probability_target_with_ignore_index", "ignore_index >= 0 with probability targets", _prob_with_ignore,
     Needs(target_kinds=("probability",), features=("ignore_index", "probability_target"))),
    ("index_target_float_dtype", "class indices given as float32", _index_float,
     Needs(target_kinds=_INDEX, ranks=(2, 3, 4, 5))),
    ("reduction_unknown", "reduction='average'", _set(reduction="average"), Needs()),
    ("softcap_nonpositive", "softcap <= 0 (extension softcap)", _softcap_nonpositive,
     Needs(target_kinds=_INDEX, extensions=("softcap",))),
    ("classifier_hidden_mismatch", "a classifier whose hidden size differs from the hidden states'",
     _classifier_hidden_mismatch, Needs(target_kinds=_INDEX)),
    ("bias_wrong_length", "a bias whose length is not C", _bias_wrong_length,
     Needs(target_kinds=_INDEX, features=("linear_bias",))),
):
    MUTATIONS.add(Entry(_name, _doc, _fn, _needs))
