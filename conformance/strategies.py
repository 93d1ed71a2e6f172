"""Stage 2: Hypothesis strategies for cases, derived from the spec's domains.

Everything drawn comes from ``spec.domains``: dtypes, ranks, target kinds, reductions, the
bounded size menu (compiled frameworks pay per new shape), the option domains and the value
regimes. Small arrays are drawn element by element so that Hypothesis shrinks failing
values; large arrays come from a drawn seed plus injected edge values so that generation
stays cheap.

The case strategy :func:`cases` is composed of small pieces, each a function of ``draw`` and
of two frozen objects: the :class:`Request` (what the check asks, intersected with what the
adapter declares) and the :class:`~conformance.modifiers.Constraints` its modifiers force:

    allowed_menus -> draw_shape -> draw_options -> draw_logits
        -> draw_index_targets | draw_probability_targets -> draw_weight -> modifiers -> extensions

Each piece is also a strategy of its own (``shapes``, ``options``, ``logits``, ...) for tests
and for other operations' strategies (conformance/linear_strategies.py builds on ``cases``).

The registries the spec names live beside this module: ``MODIFIERS`` (special cases' ``make``,
conformance/modifiers.py) and ``MUTATIONS`` (error clauses' ``make``, conformance/mutations.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from . import layouts
from .case import Case, np_dtype
from .modifiers import MODIFIERS, Constraints, NothingToDraw, constraints_of
from .mutations import MUTATIONS

__all__ = ["MODIFIERS", "MUTATIONS", "Constraints", "NothingToDraw", "Request", "Shape", "Options", "Logits",
           "request_for", "cases", "shapes", "options", "logits", "index_targets", "probability_targets", "weights",
           "rank_class"]

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
    kinds = tuple(k for k in (target_kinds or d["target_kinds"])
                  if k in d["target_kinds"] and f"{k}_target" in caps.features)
    reds = tuple(r for r in (reductions or d["reductions"]) if f"reduction_{r}" in caps.features)
    return Request(dtypes=dtypes, ranks=ranks, target_kinds=kinds, reductions=reds, modifiers=tuple(modifiers),
                   features=frozenset(caps.features), regimes=tuple(regimes) if regimes else None,
                   allow_legacy="legacy_arguments" in caps.features, allow_long=allow_long,
                   allow_empty="empty" in caps.features, large_classes=(profile == "thorough"),
                   max_classes=caps.max_classes, extensions=frozenset(getattr(caps, "extensions", ())))


# --------------------------------------------------------------------------- extensions
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
            menu_text = ", ".join(map(str, menu))
            raise NothingToDraw(f"{name}={pins[name]} is outside what this check may draw ({menu_text})")
        return pins[name]
    return draw(st.sampled_from(menu), label=name)


def _one_hot(idx: np.ndarray, C: int) -> np.ndarray:
    """(P, C) one-hot rows without a (C, C) identity (C reaches 131072 in the thorough profile)."""
    y = np.zeros((len(idx), C))
    y[np.arange(len(idx)), idx] = 1.0
    return y


def _quantise(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(np_dtype(dtype))


# --------------------------------------------------------------------------- the pieces
@dataclass(frozen=True)
class Shape:
    """A drawn shape: the input's rank, class count and batch shape (N, d1, ...) or () when
    unbatched, and its kind (one of :data:`SHAPE_KINDS`)."""

    rank: int
    C: int
    batch_shape: tuple[int, ...]
    kind: str

    @property
    def P(self) -> int:
        """Positions: the product of the batch shape (1 when unbatched)."""
        return int(np.prod(self.batch_shape, dtype=np.int64)) if self.batch_shape else 1


#: small: the size menus; long: thousands of rows; vocab: C at block or vocabulary sizes, 1-2
#: rows; rows: domains.sizes.rounding_rows rows; chunk: rows around chunk sizes at small C;
#: spatial_equals_classes: the last spatial size equals C.
SHAPE_KINDS = ("small", "long", "vocab", "rows", "chunk", "spatial_equals_classes")


@dataclass(frozen=True)
class Options:
    """The drawn options of a call: weight kind, reduction, smoothing, ignore_index, and the
    deprecated ``size_average``/``reduce`` pair when drawn (None otherwise)."""

    weight_kind: str
    reduction: str
    label_smoothing: float
    ignore_kind: str
    ignore_index: int
    legacy: dict | None


@dataclass
class Logits:
    """float64 (P, C) logits in a value regime (exactly representable in the case's dtype once
    quantised), and the memory layout the case will be handed over in."""

    x: np.ndarray
    regime: str
    layout: str
    seeded: bool


def allowed_menus(req: Request, con: Constraints) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """The dtypes, target kinds and ranks left by the request, its constraints and its pins."""
    pins = dict(req.pins)
    dtypes = tuple(d for d in req.dtypes if d in (con.dtypes or req.dtypes) and _pin_ok(pins, "dtype", d))
    kinds = tuple(k for k in req.target_kinds if k in (con.target_kinds or req.target_kinds)
                  and _pin_ok(pins, "target", k))
    ranks = tuple(r for r in req.ranks if r in (con.ranks or req.ranks) and _pin_ok(pins, "rank", rank_class(r)))
    if not dtypes or not kinds or not ranks:
        what = "dtype" if not dtypes else "target kind" if not kinds else "rank"
        raise NothingToDraw(f"the declared capabilities leave no {what} for {', '.join(req.modifiers) or 'this check'}")
    return dtypes, kinds, ranks


def draw_shape(draw, spec, req: Request, con: Constraints, ranks: tuple[int, ...]) -> Shape:
    """Rank, C and batch shape: mostly the small menus; sometimes a long reduction, a class
    count at a kernel block boundary, rows around chunk sizes (``domains.sizes.shape_kinds``
    weights) or, in the thorough profile, C up to ``domains.sizes.large_classes``."""
    sizes = spec.domains["sizes"]
    pins = dict(req.pins)
    if con.empty:
        ranks = tuple(r for r in ranks if r >= 2) or ranks
    if con.min_positions > 1:  # an unbatched input has one position
        ranks = tuple(r for r in ranks if r >= 2)
        if not ranks:
            raise NothingToDraw(f"min_positions={con.min_positions} leaves no rank "
                                "(unbatched inputs have one position)")
    rank = draw(st.sampled_from(ranks), label="rank")
    if con.classes is not None:
        C = con.classes
    else:
        menu = [c for c in sizes["classes"]
                if (req.max_classes is None or c <= req.max_classes) and c >= con.min_classes]
        if req.large_classes and rank == 2:
            menu += [c for c in sizes.get("large_classes", []) if req.max_classes is None or c <= req.max_classes]
        C = draw(st.sampled_from(menu), label="classes")
    kind = _shape_kind(draw, sizes, con, req, rank, C)
    if kind == "vocab":
        # C around block sizes (2^k +- 1) and real vocabulary sizes, at small P
        menu = [c for c in sizes.get("vocab_classes", []) + sizes.get("boundary_classes", [])
                if req.max_classes is None or c <= req.max_classes]
        C = draw(st.sampled_from(menu), label="vocab_classes")
    batch_shape: tuple[int, ...]
    if rank == 1:
        batch_shape = ()
    elif con.empty:
        batch_shape = (0,) + tuple(draw(st.sampled_from(sizes["spatial"]), label="spatial") for _ in range(rank - 2))
    elif kind == "long":
        # keep N*C at a few hundred thousand elements: long reductions, cheap generation
        C = C if C <= 64 else 50
        batch_shape = (draw(st.sampled_from(_at_least(sizes["large_batch"], con)), label="batch"),)
    elif kind == "vocab":
        batch_shape = (draw(st.sampled_from(_at_least(sizes.get("boundary_batch", [1]), con)), label="batch"),)
    elif kind == "rows":
        batch_shape = (draw(st.sampled_from(_at_least(sizes.get("rounding_rows", [64]), con)), label="batch"),)
    elif kind == "chunk":
        # rows around chunk sizes (a mean of per-chunk means, a partial last chunk), small C
        if C > 64:
            small = [c for c in sizes["classes"] if con.min_classes <= c <= 64] or [max(2, con.min_classes)]
            C = draw(st.sampled_from(small), label="chunk_classes")
        batch_shape = (draw(st.sampled_from(_at_least(sizes["chunk_rows"], con)), label="batch"),)
    else:
        n_menu = [n for n in sizes["batch"] if (n > 0 or req.allow_empty) and n >= con.min_positions]
        if con.empty_spatial:
            n_menu = [n for n in n_menu if n > 0] or [1]
        if pins.get("layout") == "expanded":
            n_menu = [n for n in n_menu if n >= 2] or [3]
        if (C >= 257 or rank >= 4) and not sizes.get("batch_at_any_classes"):
            n_menu = [n for n in n_menu if n <= 16] or n_menu[:1] or [1]
        N = draw(st.sampled_from(n_menu), label="batch")
        spatial = tuple(draw(st.sampled_from(sizes["spatial"]), label=f"d{i + 1}") for i in range(rank - 2))
        if kind == "spatial_equals_classes":
            # the last spatial size equals C: a class axis guessed as the last one goes unseen by shapes
            C = C if C <= 64 else 5
            spatial = spatial[:-1] + (C,)
        if con.empty_spatial:
            spatial = spatial[:-1] + (0,)  # a zero-size spatial axis with N > 0
        batch_shape = (N,) + spatial
    return Shape(rank, C, batch_shape, kind)


def _at_least(menu: list[int], con: Constraints) -> list[int]:
    """The row counts of a menu that give at least ``con.min_positions`` positions."""
    out = [n for n in menu if n >= con.min_positions]
    if not out:
        raise NothingToDraw(f"min_positions={con.min_positions} is above every size in {menu}")
    return out


def draw_options(draw, spec, req: Request, con: Constraints, kind: str, C: int) -> Options:
    """Weight kind, reduction, label smoothing, ignore_index and (rarely) the deprecated
    arguments, from the spec's option domains, the adapter's features and the pins."""
    pins = dict(req.pins)
    weight_menu = [k for k in spec.domains.get("weight", ["absent"]) if k == "absent" or "weight" in req.features]
    weight_kind = con.weight or _draw_pinned(draw, pins, "weight", weight_menu)
    if con.weight_positive_or_absent and weight_kind == "with_zeros":
        weight_kind = "positive"
    reduction = _draw_pinned(draw, pins, "reduction", list(req.reductions))
    eps = _draw_smoothing(draw, req, con, pins)
    ignore_kind = "default"
    if kind == "index" and "ignore_index" in req.features:
        ignore_kind = _draw_pinned(draw, pins, "ignore", list(spec.domains.get("ignore_index", ["default"])))
    if ignore_kind == "inside" and con.no_ignored:
        ignore_kind = "default"
    ignore_index = -100
    if ignore_kind == "inside":
        ignore_index = draw(st.integers(0, C - 1), label="ignore_inside")
    elif ignore_kind == "outside_high":
        ignore_index = C + draw(st.integers(0, 3), label="ignore_high")
    legacy = _draw_legacy(draw, spec, req, pins, reduction)
    return Options(weight_kind, reduction, eps, ignore_kind, int(ignore_index), legacy)


def _draw_smoothing(draw, req: Request, con: Constraints, pins: dict) -> float:
    if "smoothing" in pins and not con.no_smoothing:
        eps = {"0": st.just(0.0), "1": st.just(1.0),
               "(0,1)": st.one_of(st.sampled_from([0.1, 0.25]), st.floats(0.001, 0.999))}[pins["smoothing"]]
        if "label_smoothing" in req.features or pins["smoothing"] == "0":
            return draw(eps, label="label_smoothing")
        return 0.0
    if "label_smoothing" not in req.features or con.no_smoothing:
        return 0.0
    if con.smoothing:
        return draw(st.one_of(st.just(1.0), st.floats(0.01, 1.0)), label="label_smoothing")
    if con.no_smoothing_unless and con.no_smoothing_unless not in req.modifiers:
        return 0.0
    return draw(st.one_of(st.just(0.0), st.just(0.0), st.just(1.0), st.floats(0.0, 1.0),
                          st.sampled_from([0.1, 0.25])), label="label_smoothing")


def _draw_legacy(draw, spec, req: Request, pins: dict, reduction: str) -> dict | None:
    """The deprecated ``size_average``/``reduce`` pair, one draw in ten, where the adapter takes
    it and it selects a reduction the adapter has (never with modifiers or pins)."""
    if not (req.allow_legacy and not req.modifiers and not pins):
        return None
    if draw(st.sampled_from(["absent"] * 9 + ["legacy"]), label="legacy") != "legacy":
        return None
    legacy = {"size_average": draw(st.sampled_from([None, True, False]), label="size_average"),
              "reduce": draw(st.sampled_from([None, True, False]), label="reduce")}
    if legacy["size_average"] is None and legacy["reduce"] is None:
        legacy["reduce"] = False
    probe = Case(x=np.zeros((1,)), target=np.zeros((), dtype=np.int64), reduction=reduction, legacy=legacy)
    if probe.effective_reduction(spec.deprecated) not in req.reductions:
        return None  # the legacy arguments would select a reduction the adapter lacks
    return legacy


def draw_logits(draw, spec, req: Request, con: Constraints, dtype: str, shape: Shape) -> Logits:
    """float64 (P, C) logits in a drawn value regime (``domains.value_regimes``), the memory
    layout (``domains.layouts``), and for vocabulary sizes the maximum in the last block."""
    pins = dict(req.pins)
    P, C = shape.P, shape.C
    regimes = list(spec.domains.get("value_regimes", {"ordinary": ""}))
    regimes = [r for r in regimes if r != "nonfinite" and (r != "huge" or dtype in ("float32", "float64"))]
    if req.regimes:
        regimes = [r for r in regimes if r in req.regimes] or ["ordinary"]
    if con.finite_regime:
        regimes = [r for r in regimes if r in ("ordinary", "ties", "confident")]
    regime = con.regime or _draw_pinned(draw, pins, "regime", regimes)
    seeded = P * C > SMALL
    x = _regime_values(draw, regime, dtype, (P, C), seeded, "logits")
    if shape.kind == "vocab" and P and C > 1:
        _late_maximum(draw, x)
    first = shape.batch_shape[0] if shape.batch_shape else None
    layout_menu = [lay for lay in spec.domains.get("layouts", ["contiguous"])
                   if layouts.valid(lay, shape.rank, first) and not (con.distinct_rows and lay == "expanded")]
    layout = _draw_pinned(draw, pins, "layout", layout_menu)
    if layout == "expanded" and P:
        xb = x.reshape(shape.batch_shape[0], -1, C)
        xb[1:] = xb[0]  # one batch entry broadcast with stride 0 (the view is built by Case)
    return Logits(x, regime, layout, seeded)


def draw_index_targets(draw, req: Request, con: Constraints, shape: Shape, opts: Options, logits: Logits) -> np.ndarray:
    """Class indices (P,): shrinkable for small cases, seeded for large ones (class ids in the
    late blocks, >= 32768 where C allows, for vocabulary sizes); some positions ignored; for
    the confident regime the target's logit raised above the row's maximum by a drawn margin."""
    P, C, x = shape.P, shape.C, logits.x
    if logits.seeded:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="target_seed"))
        # vocabulary sizes: class ids in the late blocks, >= 32768 when C allows (int16 wraps)
        t = rng.integers(min(32768, C // 2) if shape.kind == "vocab" else 0, C, size=P)
    else:
        t = np.asarray(draw(st.lists(st.integers(0, C - 1), min_size=P, max_size=P), label="target"), dtype=np.int64)
    if P and (opts.ignore_index != -100 or (opts.ignore_kind == "default" and "ignore_index" in req.features)):
        # Ignore some positions: with the default -100 too, which every adapter must honour.
        if con.all_ignored:
            t[:] = opts.ignore_index
        elif not con.no_ignored and draw(st.booleans(), label="some_ignored"):
            k = draw(st.integers(1, P), label="ignored_count") if P <= SMALL else max(1, P // 7)
            idx = np.random.default_rng(int(t.sum()) + P).choice(P, size=k, replace=False)
            t[idx] = opts.ignore_index
    if logits.layout == "expanded" and P:
        tb = t.reshape(shape.batch_shape[0], -1)
        tb[1:] = tb[0]  # every batch entry alike, so that confident logits stay one broadcast entry
    if logits.regime == "confident":
        rows = np.arange(P)
        ok = (t >= 0) & (t < C)
        margin = draw(st.floats(15, 40), label="margin")
        if ok.any():
            x[rows[ok], t[ok]] = np.max(x[ok], axis=1) + margin
    return t


#: How probability targets are made: softmax of Gaussian scores (twice as often), one-hot,
#: unnormalised non-negative rows, and rows with negative entries (the formula is defined there).
PROBABILITY_TARGETS = ("softmax", "softmax", "one_hot", "unnormalised", "negative")


def draw_probability_targets(draw, shape: Shape, logits: Logits) -> np.ndarray:
    """Probability rows (P, C) of a drawn kind (:data:`PROBABILITY_TARGETS`); for the confident
    regime one-hot at each row's largest logit, raised by a drawn margin."""
    P, C, x = shape.P, shape.C, logits.x
    kind = draw(st.sampled_from(PROBABILITY_TARGETS), label="prob_target")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="prob_seed"))
    z = rng.normal(0, 2, size=(P, C))
    y = np.exp(z - z.max(axis=1, keepdims=True)) if C else z
    y = y / y.sum(axis=1, keepdims=True) if C else y
    if kind == "one_hot":
        y = _one_hot(rng.integers(0, C, size=P), C) if C else y
    elif kind == "unnormalised":
        y = rng.uniform(0, 2, size=(P, C))
    elif kind == "negative":
        y = rng.uniform(-0.5, 1.0, size=(P, C))
    if logits.regime == "confident" and C:
        y = _one_hot(np.argmax(x, axis=1), C)
        x[np.arange(P), np.argmax(x, axis=1)] += draw(st.floats(15, 40), label="margin")
    return y


def draw_weight(draw, req: Request, opts: Options, shape: Shape) -> np.ndarray | None:
    """A class weight (C,) in [0.05, 4] (shrinkable when C is small), one class at 0 for
    ``with_zeros``; None when absent or the adapter takes no weight."""
    if opts.weight_kind == "absent" or "weight" not in req.features:
        return None
    C = shape.C
    if C <= SMALL:
        w = np.asarray(draw(st.lists(st.floats(0.05, 4.0), min_size=C, max_size=C), label="weight"))
    else:
        w = np.random.default_rng(C * 7919 + shape.P).uniform(0.05, 4.0, size=C)
    if opts.weight_kind == "with_zeros":
        w[draw(st.integers(0, C - 1), label="zero_weight_class")] = 0.0
    return w


# --------------------------------------------------------------------------- the case strategy
@st.composite
def cases(draw, spec, req: Request) -> Case:
    """One valid case within ``req`` (mutations for the error contract come later): the pieces
    above in a fixed order (the order is the draw order Hypothesis shrinks along)."""
    con, applies = constraints_of(req.modifiers, req.features)
    return draw_case(draw, spec, req, con, applies)


def draw_case(draw, spec, req: Request, con: Constraints, applies: Sequence[Callable] = ()) -> Case:
    """The body of :func:`cases` for given constraints and modifier functions (tests draw
    with any :class:`Constraints` through ``st.composite(draw_case)``)."""
    dtypes, kinds, ranks = allowed_menus(req, con)
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    kind = draw(st.sampled_from(kinds), label="target_kind")
    shape = draw_shape(draw, spec, req, con, ranks)
    opts = draw_options(draw, spec, req, con, kind, shape.C)
    logits = draw_logits(draw, spec, req, con, dtype, shape)
    env: dict = {"x": logits.x, "P": shape.P, "C": shape.C}
    if kind == "index":
        env["t"] = draw_index_targets(draw, req, con, shape, opts, logits)
    else:
        env["y"] = draw_probability_targets(draw, shape, logits)
    if logits.regime == "ties" and shape.C >= 2 and shape.P:
        logits.x[:, 1] = logits.x[:, 0]
    w = draw_weight(draw, req, opts, shape)
    for apply in applies:
        apply(draw, env)
    extensions: dict = {}
    if kind == "index" and (req.extensions or con.extensions):
        missing = [e for e in con.extensions if e not in req.extensions]
        if missing:
            raise NothingToDraw(f"extension {', '.join(missing)} is not declared by the adapter")
        extensions = _draw_extensions(draw, spec, req, con.extensions, opts.reduction)
    return _assemble(spec, req, dtype, kind, shape, opts, logits, env, w, extensions)


def _assemble(spec, req: Request, dtype: str, kind: str, shape: Shape, opts: Options, logits: Logits, env: dict,
              w: np.ndarray | None, extensions: dict) -> Case:
    """Quantise to the dtype and lay the arrays out as the framework takes them (class axis 1)."""
    batch_shape, C, rank = shape.batch_shape, shape.C, shape.rank
    xq = _quantise(env["x"], dtype)
    if logits.regime != "huge" and not np.all(np.isfinite(xq[np.isfinite(env["x"])])):
        xq = _quantise(np.clip(env["x"], -_LARGE[dtype], _LARGE[dtype]), dtype)
    x_out = _from_pc(xq, batch_shape, C, rank)
    if kind == "index":
        t = env["t"].astype(np.int64)
        target = t.reshape(batch_shape) if rank > 1 else np.asarray(t[0], dtype=np.int64).reshape(())
    else:
        target = _from_pc(_quantise(env["y"], dtype), batch_shape, C, rank)
    weight = _quantise(w, dtype) if w is not None else None
    case = Case(x=x_out, target=target, weight=weight, reduction=opts.reduction, ignore_index=opts.ignore_index,
                label_smoothing=float(opts.label_smoothing), legacy=opts.legacy, regime=logits.regime,
                modifiers=req.modifiers, extensions=extensions, layout=logits.layout)
    if "normalizer" in extensions:
        _set_normalizer(case)
    if logits.layout == "expanded" and not layouts.expandable(np.asarray(case.x)):
        case.layout = "contiguous"  # batch entries differ: no stride-0 view of them exists
    assert case.x.shape == _full_shape(batch_shape, C, rank)
    case.extra["shape_kind"] = shape.kind
    # A random upstream gradient, shaped like the output, so that 'none' is not only
    # differentiated through a sum.
    out_shape = (batch_shape if rank > 1 else ()) if case.effective_reduction(spec.deprecated) == "none" else ()
    rng = np.random.default_rng(shape.P + 13)
    case.upstream = _quantise(rng.choice([-1.5, -0.5, 0.75, 1.0, 2.0], size=out_shape), dtype)
    return case


def _shape_kind(draw, sizes, con: Constraints, req: Request, rank: int, C: int) -> str:
    """small, long, vocab, chunk or spatial_equals_classes (:data:`SHAPE_KINDS`), drawn with the
    weights of the spec's ``domains.sizes.shape_kinds``; a constraint fixes it."""
    if con.long:
        return "long"
    if con.shape_kind:
        return con.shape_kind
    if con.classes is not None or con.empty or con.empty_spatial or not req.allow_long:
        return "small"
    weights = sizes.get("shape_kinds") or {"small": 4, "long": 1}
    if rank == 2 and C <= 1000 and sizes.get("large_batch"):
        allowed: tuple[str, ...] = ("small", "long", "vocab", "chunk")
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
    there, and a dropped partial block loses it).

    The rows are shifted by 0 or -8, or so that every logit is negative ("below_zero"); odd
    rows are always below zero. A kernel that loads 0 instead of -inf into the padded lanes
    of its last block is exact to within rounding when the row's maximum is far above 0
    (exp(0 - max) vanishes), and makes a padded lane the row's maximum when every logit is
    negative."""
    P, C = x.shape
    margin = draw(st.sampled_from([0.5, 2.0, 6.0]), label="late_margin")
    shift = draw(st.sampled_from([0.0, -8.0, "below_zero"]), label="late_shift")
    rng = np.random.default_rng(P * 1_000_003 + C)
    if shift != "below_zero":
        x += shift
    for r in range(P):
        pos = C - 1 if r % 2 == 0 else int(rng.integers(C - max(1, C // 8), C))
        x[r, pos] = np.max(x[r]) + margin
        if shift == "below_zero" or r % 2 == 1:
            x[r] -= x[r, pos] + 1.0  # the maximum at -1, every other logit below it


def _full_shape(batch_shape, C, rank):
    if rank == 1:
        return (C,)
    return (batch_shape[0], C) + tuple(batch_shape[1:])


def _from_pc(a: np.ndarray, batch_shape, C, rank) -> np.ndarray:
    """(P, C) -> the framework layout with the class axis at 1 (or the only axis)."""
    if rank == 1:
        return np.ascontiguousarray(a.reshape(C))
    return np.ascontiguousarray(np.moveaxis(a.reshape(tuple(batch_shape) + (C,)), -1, 1))


# --------------------------------------------------------------------------- the pieces as strategies
#: Each piece on its own, as a Hypothesis strategy (the arguments after ``draw``).
shapes = st.composite(draw_shape)
options = st.composite(draw_options)
logits = st.composite(draw_logits)
index_targets = st.composite(draw_index_targets)
probability_targets = st.composite(draw_probability_targets)
weights = st.composite(draw_weight)
