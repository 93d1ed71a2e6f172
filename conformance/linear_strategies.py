"""Drawing cases of the linear form (specs/linear_cross_entropy.yaml), its error mutations and
its metamorphic transforms.

A case is first drawn exactly as for cross_entropy.yaml (options, targets, extensions, the
logit regime, sizes; a share of the draws at real vocabulary sizes), then given hidden states,
a classifier and a bias whose logits land in the drawn regime:

- ordinary / large_magnitude / huge: Gaussian hidden states and classifier rows scaled so that
  the logits have the regime's magnitude (about 3, 1e3 to 1e4, 1e30);
- ties: small integers and halves (every partial sum exact in every dtype, so the logits are
  exact whatever the summation order) with classifier row 1 equal to row 0 (tied logits);
- confident: one hidden column per position (when H > P) carries the target's margin of 15 to
  40 over the other logits; with fewer columns the targets become each row's largest logit.

Its error mutations live with the others in conformance/mutations.py (MUTATIONS) and its
metamorphic transforms in conformance/metamorphic.py (TRANSFORMS).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from . import strategies as strat
from .case import Case, as_float64, np_dtype

#: Logit magnitude per regime and dtype (float16 stays well below 65504 after any rounding).
_LARGE = {"float16": 2.0e3, "bfloat16": 1.0e3, "float32": 1.0e3, "float64": 1.0e3}


def _q(a, dtype):
    return np.asarray(a, dtype=np.float64).astype(np_dtype(dtype))


def build(rng, regime: str, dtype: str, P: int, C: int, H: int, bias: bool, target: np.ndarray, ignore_index: int,
          margin: float = 20.0):
    """(hidden, classifier, bias) in ``dtype`` whose logits follow ``regime``."""
    if regime == "ties":
        h = rng.integers(-2, 3, size=(P, H)).astype(np.float64)
        W = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(C, H))
        b = rng.choice([-1.0, 0.0, 1.0], size=C) if bias else None
        if C >= 2:
            W[1] = W[0]
            if b is not None:
                b[1] = b[0]
        return _q(h, dtype), _q(W, dtype), None if b is None else _q(b, dtype), target
    scale = {"large_magnitude": _LARGE[dtype] / 3.0, "huge": 1e30 / 3.0}.get(regime, 3.0)
    h = rng.normal(0.0, 1.0, size=(P, H))
    W = rng.normal(0.0, 1.0 / np.sqrt(H), size=(C, H))
    if regime == "huge":            # 1e15 each: products near 1e30, inside float32's range
        h, W = h * 1e15, W * (scale / 1e15)
    else:
        W = W * scale
    b = rng.normal(0.0, 1.0 if regime != "large_magnitude" else scale / 4, size=C) if bias else None
    h, W = _q(h, dtype).astype(np.float64), _q(W, dtype).astype(np.float64)
    b = None if b is None else _q(b, dtype).astype(np.float64)
    if regime == "confident" and P and C >= 2:
        t = np.asarray(target, dtype=np.int64).reshape(-1)
        ok = (t >= 0) & (t < C) & (t != ignore_index)
        if H > P:   # position p owns hidden column H-1-p; its classifier column is one-hot at t_p
            cols = H - 1 - np.arange(P)
            W[:, cols] = 0.0
            h[:, cols] = 0.0
            z = h @ W.T + (0 if b is None else b)
            for p in np.nonzero(ok)[0]:
                W[t[p], cols[p]] = 1.0
                h[p, cols[p]] = np.max(np.delete(z[p], t[p])) - z[p, t[p]] + margin
        else:       # not enough columns: each position's target becomes its largest logit
            z = h @ W.T + (0 if b is None else b)
            target = np.where(ok, np.argmax(z, axis=1), t)
    return _q(h, dtype), _q(W, dtype), None if b is None else _q(b, dtype), target


@st.composite
def linear_cases(draw, spec, req) -> Case:
    dom = spec.linear.domain
    vocab = dom.get("vocab") or {}
    plain = replace(spec, linear=None)
    hidden_menu = list(dom["hidden"])
    vmenu = [c for c in vocab.get("classes", ()) if req.max_classes is None or c <= req.max_classes]
    if vmenu and not req.modifiers and not req.pins and req.allow_long \
            and draw(st.integers(0, 999), label="vocab_draw") >= 1000 * (1 - float(vocab.get("share", 0.0))):
        # (at the top of the range, so that a shrinking failure leaves the large vocabulary if it can)
        C = draw(st.sampled_from(vmenu), label="vocab_classes")
        batch = list(vocab.get("batch", [1])) + (list(vocab.get("thorough_batch", [])) if req.large_classes else [])
        cap = int(vocab.get("max_cells", 2 ** 24))
        batch = sorted({n for n in batch if n * C <= cap}) or [1]
        # (the menu is bounded by max_cells already: draw_shape keeps every row count of it)
        sizes = {**spec.domains["sizes"], "classes": [C], "batch": batch, "batch_at_any_classes": True}
        sizes.pop("large_batch", None)
        plain = replace(plain, raw={**plain.raw, "domains": {**plain.domains, "sizes": sizes}})
        hidden_menu = list(vocab.get("hidden", hidden_menu))
    case = draw(strat.cases(plain, req))
    H = int(draw(st.sampled_from(hidden_menu), label="hidden_size"))
    bias_menu = [k for k in dom["bias"] if k == "absent" or "linear_bias" in req.features]
    bias = draw(st.sampled_from(bias_menu), label="bias") == "present"
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="linear_seed"))
    P, C, dtype = case.positions, case.num_classes, case.dtype
    target = np.asarray(case.target)
    out = build(rng, case.regime, dtype, P, C, H, bias, target.reshape(-1), case.ignore_index,
                margin=float(draw(st.floats(15, 40), label="margin")) if case.regime == "confident" else 20.0)
    h, W, b, t = out
    target = np.asarray(t, dtype=np.int64).reshape(target.shape)
    logits = as_float64(h) @ as_float64(W).T + (0.0 if b is None else as_float64(b))
    with np.errstate(all="ignore"):
        x = _q(logits, dtype)
    return case.copy(x=x, target=target, linear={"hidden": h, "classifier": W, "bias": b})


def cases_of(spec, req):
    """The case strategy of ``spec``: the linear form's for a spec with a ``linear:`` section,
    cross_entropy's otherwise (every caller draws through this, so neither module needs the other's)."""
    return linear_cases(spec, req) if getattr(spec, "linear", None) is not None else strat.cases(spec, req)
