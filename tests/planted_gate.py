"""Planted implementations for the gate-precision meta-tests (tests/test_gate_precision.py).

Each is correct (float64, rounded once) except for deviations that appear on one
combination of option classes only: the kind of regression a known divergence elsewhere
or a random sample of options lets through.
"""
import torch
import torch.nn.functional as F

from planted import float64_round_once


def _exact(input, target, **kw):
    return float64_round_once(input, target, **kw)


def float16_plus_one(input, target, **kw):
    """Known divergence: every float16 result is off by +1 (listed in a known file)."""
    out = _exact(input, target, **kw)
    return out + 1 if input.dtype == torch.float16 else out


def known_plus_regression(input, target, weight=None, reduction="mean", **kw):
    """The float16 divergence above, plus a new regression that needs three options at once:
    float32 x a class weight x reduction='sum' is 1 % too large."""
    out = float16_plus_one(input, target, weight=weight, reduction=reduction, **kw)
    if input.dtype == torch.float32 and weight is not None and reduction == "sum":
        out = out * 1.01
    return out


def _three_way(cond):
    def fn(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **kw):
        out = _exact(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                     label_smoothing=label_smoothing, **kw)
        if cond(input, target, weight, ignore_index, reduction, label_smoothing):
            out = out * 1.01 + 0.01
        return out
    return fn


def _c(input):
    return input.shape[1] if input.dim() > 1 else input.shape[0]


#: One deviation per 3-way combination of option classes (dtype, weight kind, reduction,
#: ignore kind, smoothing class, rank class), each invisible outside its combination.
THREE_WAY = {
    "f16_zero_weight_none": _three_way(lambda x, t, w, ii, r, ls: x.dtype == torch.float16 and w is not None
                                       and bool((w == 0).any()) and r == "none"),
    "f64_ignore_inside_smoothing": _three_way(lambda x, t, w, ii, r, ls: x.dtype == torch.float64
                                              and 0 <= ii < _c(x) and 0 < ls < 1),
    "bf16_unbatched_sum": _three_way(lambda x, t, w, ii, r, ls: x.dtype == torch.bfloat16 and x.dim() == 1
                                     and r == "sum"),
    "f32_spatial_smoothing_one": _three_way(lambda x, t, w, ii, r, ls: x.dtype == torch.float32 and x.dim() >= 3
                                            and ls == 1.0),
    "f64_outside_ignore_weight": _three_way(lambda x, t, w, ii, r, ls: x.dtype == torch.float64
                                            and ii >= _c(x) and w is not None and not bool((w == 0).any())),
}
globals().update(THREE_WAY)
