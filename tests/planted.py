"""Planted implementations with F.cross_entropy's signature, for the meta-tests.

Three are correct in different ways (the suite must never flag them); the rest each carry
one realistic bug (the suite must catch every one with the default profile). They are
named by the gate like any third-party function: ``tests.planted:NAME``.
"""
import torch
import torch.nn.functional as F

HALF = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- correct
def half_in_float32(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                    reduction="mean", label_smoothing=0.0):
    """Correct: half-precision inputs computed in float32, the result rounded once."""
    dt = input.dtype
    if dt in HALF:
        x = input.float()
        t = target.float() if target.is_floating_point() else target
        w = weight.float() if weight is not None else None
        return F.cross_entropy(x, t, weight=w, size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                               reduction=reduction, label_smoothing=label_smoothing).to(dt)
    return F.cross_entropy(input, target, weight=weight, size_average=size_average, ignore_index=ignore_index,
                           reduce=reduce, reduction=reduction, label_smoothing=label_smoothing)


def float64_round_once(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                       reduction="mean", label_smoothing=0.0):
    """Correct and more accurate than torch: everything in float64, rounded once."""
    dt = input.dtype
    t = target.double() if target.is_floating_point() else target
    w = weight.double() if weight is not None else None
    return F.cross_entropy(input.double(), t, weight=w, size_average=size_average, ignore_index=ignore_index,
                           reduce=reduce, reduction=reduction, label_smoothing=label_smoothing).to(dt)


# --------------------------------------------------------------------------- buggy
def float64_in_float32(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **kw):
    """Bug: float64 inputs computed in float32 internally."""
    dt = input.dtype
    t = target.float() if target.is_floating_point() else target
    return float64_round_once(input.float(), t, weight=None if weight is None else weight.float(),
                              ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                              **kw).to(dt)


def off_by_3e4(input, target, **kw):
    """Bug: every result 3e-4 relative too large."""
    return float64_round_once(input, target, **kw) * (1 + 3e-4)


def mean_over_count(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **kw):
    """Bug: the weighted mean divides by the number of non-ignored positions, not sum(w_t)."""
    if reduction != "mean" or target.is_floating_point():
        return float64_round_once(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                                  label_smoothing=label_smoothing, **kw)
    s = float64_round_once(input, target, weight=weight, ignore_index=ignore_index, reduction="sum",
                           label_smoothing=label_smoothing)
    return (s.double() / (target != ignore_index).sum()).to(input.dtype)


def smoothing_weighted_by_target(input, target, weight=None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.0, **kw):
    """Bug: the smoothing term weighted by w[target] instead of per class."""
    if weight is None or label_smoothing == 0 or target.is_floating_point():
        return float64_round_once(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                                  label_smoothing=label_smoothing, **kw)
    x = input.double()
    lp = F.log_softmax(x, dim=1 if x.dim() > 1 else 0)
    valid = target != ignore_index
    tc = torch.where(valid, target, torch.zeros_like(target))
    w = weight.double()
    nll = -lp.gather(1 if x.dim() > 1 else 0, tc.unsqueeze(1 if x.dim() > 1 else 0)).squeeze(1 if x.dim() > 1 else 0)
    smooth = -lp.sum(1 if x.dim() > 1 else 0) / x.shape[1 if x.dim() > 1 else 0]
    l = w[tc] * ((1 - label_smoothing) * nll + label_smoothing * smooth)
    l = torch.where(valid, l, torch.zeros_like(l))
    if reduction == "none":
        return l.to(input.dtype)
    if reduction == "sum":
        return l.sum().to(input.dtype)
    return (l.sum() / torch.where(valid, w[tc], torch.zeros_like(l)).sum()).to(input.dtype)


def ignored_rows_leak(input, target, ignore_index=-100, **kw):
    """Bug: ignored positions are scored as class 0 instead of dropped."""
    if target.is_floating_point():
        return float64_round_once(input, target, ignore_index=ignore_index, **kw)
    t = torch.where(target == ignore_index, torch.zeros_like(target), target)
    return float64_round_once(input, t, ignore_index=-100, **kw)


def naive_softmax(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **kw):
    """Bug: log(softmax) without subtracting the maximum: overflows on large logits."""
    dim = 1 if input.dim() > 1 else 0
    x = input.float() if input.dtype in HALF else input
    e = torch.exp(x)
    lp = torch.log(e / e.sum(dim, keepdim=True))
    if target.is_floating_point():
        t = target.to(lp.dtype)
        q = (1 - label_smoothing) * t + label_smoothing / x.shape[dim]
        w = torch.ones(x.shape[dim], dtype=lp.dtype) if weight is None else weight.to(lp.dtype)
        shape = [1] * x.dim()
        shape[dim] = -1
        l = -(w.view(shape) * q * lp).sum(dim)
        out = l if reduction == "none" else (l.sum() if reduction == "sum" else l.mean())
        return out.to(input.dtype)
    return F.nll_loss(lp, target, weight=None if weight is None else weight.to(lp.dtype), ignore_index=ignore_index,
                      reduction=reduction).to(input.dtype) if label_smoothing == 0 else \
        float64_round_once(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


class _ScaledGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1.05


def wrong_gradient(input, target, **kw):
    """Bug: the forward value is right, the gradient 5 % too large."""
    return float64_round_once(_ScaledGrad.apply(input), target, **kw)


def wrong_dtype(input, target, **kw):
    """Bug: half-precision inputs return a float32 result."""
    if input.dtype in HALF:
        t = target.float() if target.is_floating_point() else target
        w = kw.pop("weight", None)
        return F.cross_entropy(input.float(), t, weight=None if w is None else w.float(), **kw)
    return F.cross_entropy(input, target, **kw)


def mutates_input(input, target, **kw):
    """Bug: subtracts the row maximum in place (the loss is unchanged, the caller's logits are not)."""
    dim = 1 if input.dim() > 1 else 0
    with torch.no_grad():
        if input.numel() and torch.isfinite(input).all():
            input.sub_(input.amax(dim, keepdim=True))
    return F.cross_entropy(input, target, **kw)


def clamps_targets(input, target, ignore_index=-100, **kw):
    """Bug: silently clamps out-of-range class indices instead of raising."""
    if not target.is_floating_point():
        C = input.shape[1 if input.dim() > 1 else 0]
        bad = (target != ignore_index) & ((target < 0) | (target >= C))
        target = torch.where(bad, target.clamp(0, C - 1), target)
    return F.cross_entropy(input, target, ignore_index=ignore_index, **kw)


def all_ignored_mean_zero(input, target, ignore_index=-100, reduction="mean", **kw):
    """Bug (an undeclared variant): an all-ignored mean returns 0 instead of NaN."""
    out = float64_round_once(input, target, ignore_index=ignore_index, reduction=reduction, **kw)
    if reduction == "mean" and not target.is_floating_point() and bool((target == ignore_index).all()):
        return torch.zeros_like(out)
    return out


def probability_mean_by_weight(input, target, weight=None, reduction="mean", **kw):
    """Bug: the probability-target mean divided by sum(w) like the index path."""
    if reduction == "mean" and target.is_floating_point() and weight is not None:
        s = float64_round_once(input, target, weight=weight, reduction="sum", **kw)
        P = target.numel() // target.shape[1 if target.dim() > 1 else 0]
        return (s.double() * P / (P * weight.double().sum() / weight.numel())).to(input.dtype) / P
    return float64_round_once(input, target, weight=weight, reduction=reduction, **kw)


def flat_none(input, target, reduction="mean", **kw):
    """Bug: reduction='none' returns a flattened loss for spatial inputs."""
    out = float64_round_once(input, target, reduction=reduction, **kw)
    return out.reshape(-1) if reduction == "none" and out.dim() > 1 else out


CORRECT = ["half_in_float32", "float64_round_once"]
#: name -> check ids of which at least one must fail
BUGGY = {
    "float64_in_float32": ["forward.index", "forward.probability", "gradient.index", "gradient.probability"],
    "off_by_3e4": ["forward.index", "forward.probability", "gradient.index", "gradient.probability"],
    "mean_over_count": ["forward.index", "gradient.index", "metamorphic.weight_scaling_mean"],
    "smoothing_weighted_by_target": ["forward.index", "gradient.index"],
    "ignored_rows_leak": ["forward.index", "gradient.index", "special.all_ignored", "metamorphic.ignore_equals_remove"],
    "naive_softmax": ["forward.index", "forward.probability", "special.huge_logits", "gradient.index"],
    "wrong_gradient": ["gradient.index", "gradient.probability"],
    "wrong_dtype": ["forward.index", "forward.probability"],
    "mutates_input": ["forward.index", "forward.probability", "gradient.index"],
    "clamps_targets": ["error.target_out_of_range_high", "error.target_out_of_range_negative"],
    "all_ignored_mean_zero": ["special.all_ignored", "forward.index"],
    "probability_mean_by_weight": ["forward.probability", "gradient.probability"],
    "flat_none": ["forward.index", "forward.probability"],
}
