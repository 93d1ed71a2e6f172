"""Planted implementations with F.cross_entropy's signature, for the meta-tests.

The correct ones (CORRECT; six of them add up in different orders) must never be flagged; the rest each carry
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


# --------------------------------------------------------------------------- correct, any order
# A kernel author may add up positions and classes in any order: IEEE arithmetic and torch's
# documentation promise none. These compute log_softmax and the loss from scratch (the
# formulas of specs/cross_entropy.yaml `paths:`), with every sum over classes and over
# positions done in one stated order, in the accumulation dtype the spec allows (float32 for
# half-precision inputs, the input's own dtype otherwise; float64 for `float64_accumulate`).
# The gradient of a sum is exactly 1 per term whatever the order, so autograd supplies it.
import numpy as np  # noqa: E402

BLOCK = 4096


def _sum_last(a: np.ndarray, order: str) -> np.ndarray:
    """Sum over the last axis of a 2-D array in ``order``, in a's dtype; shape (rows, 1)."""
    rows, n = a.shape
    if n == 0:
        return np.zeros((rows, 1), dtype=a.dtype)
    if order in ("left_to_right", "float64_accumulate"):
        return np.cumsum(a, axis=1, dtype=a.dtype)[:, -1:]          # sequential, one term at a time
    if order == "right_to_left":
        return np.cumsum(a[:, ::-1], axis=1, dtype=a.dtype)[:, -1:]
    if order == "pairwise":
        while a.shape[1] > 1:
            if a.shape[1] % 2:
                a = np.concatenate([a, np.zeros((rows, 1), dtype=a.dtype)], axis=1)  # + 0 is exact
            a = a[:, 0::2] + a[:, 1::2]
        return a
    if order == "blocked":
        parts = [np.cumsum(a[:, i:i + BLOCK], axis=1, dtype=a.dtype)[:, -1:] for i in range(0, n, BLOCK)]
        return np.cumsum(np.concatenate(parts, axis=1), axis=1, dtype=a.dtype)[:, -1:]
    if order == "kahan":
        s = np.zeros(rows, dtype=a.dtype)
        c = np.zeros(rows, dtype=a.dtype)
        with np.errstate(invalid="ignore"):
            for j in range(n):
                yv = a[:, j] - c
                tv = s + yv
                c = (tv - s) - yv
                s = tv
            # Kahan's compensation turns an infinite total into NaN (inf - inf): there the plain sum is right
            plain = np.cumsum(a, axis=1, dtype=a.dtype)[:, -1]
            s = np.where(np.isfinite(plain), s, plain)
        return s.reshape(rows, 1)
    raise ValueError(order)


class _OrderedSum(torch.autograd.Function):
    """Sum over the last axis (keeping it) in a stated order; exact gradient (ones)."""

    @staticmethod
    def forward(ctx, a, order):
        ctx.shape = a.shape
        acc = np.float64 if order == "float64_accumulate" else None
        arr = a.detach().cpu().numpy()
        arr2 = arr.reshape(-1, a.shape[-1]) if a.shape[-1] else arr.reshape(int(np.prod(a.shape[:-1])), 0)
        out = _sum_last(arr2.astype(acc) if acc else arr2, order)
        return torch.from_numpy(np.ascontiguousarray(out.astype(arr.dtype))).reshape(a.shape[:-1] + (1,))

    @staticmethod
    def backward(ctx, g):
        return g.expand(ctx.shape), None


def _osum(a, order):
    return _OrderedSum.apply(a, order)


def _ordered_cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing,
                           order):
    """cross_entropy per specs/cross_entropy.yaml with every sum in ``order``."""
    if size_average is not None or reduce is not None:
        from torch.nn import _reduction
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    dt = input.dtype
    cdt = torch.float32 if dt in HALF else dt
    unbatched = input.dim() == 1
    C = input.shape[0 if unbatched else 1]
    x = input.unsqueeze(0) if unbatched else input.movedim(1, -1)
    none_shape = () if unbatched else x.shape[:-1]
    x = x.reshape(-1, C).to(cdt)
    P = x.shape[0]
    if weight is not None and tuple(weight.shape) != (C,):
        raise RuntimeError(f"weight tensor should be defined either for all {C} classes or no classes")
    w = torch.ones(C, dtype=cdt) if weight is None else weight.to(cdt)
    m = x.detach().amax(-1, keepdim=True) if P else torch.zeros((0, 1), dtype=cdt)
    z = x - m
    lp = z - torch.log(_osum(torch.exp(z), order))
    if target.shape == input.shape:                                   # probability targets
        if not target.is_floating_point():
            raise RuntimeError("probability targets must be floating point")
        if ignore_index != -100:
            raise RuntimeError("ignore_index is not supported for floating point target")
        y = (target.unsqueeze(0) if unbatched else target.movedim(1, -1)).reshape(-1, C).to(cdt)
        q = (1 - eps) * y + eps / C
        l = -_osum(w * q * lp, order)
        den = None
    else:                                                             # class indices
        if target.is_floating_point() or target.dtype == torch.bool:
            raise RuntimeError(f"expected scalar type Long but found {target.dtype}")
        if tuple(target.shape) != tuple(none_shape):
            raise ValueError(f"Expected target of shape {tuple(none_shape)}, got {tuple(target.shape)}")
        t = target.reshape(-1, 1).long()
        valid = t != ignore_index
        if bool((valid & ((t < 0) | (t >= C))).any()):
            raise IndexError("Target is out of bounds.")
        tc = torch.where(valid, t, torch.zeros_like(t))
        zero = torch.zeros((), dtype=cdt)
        wt = torch.where(valid, w[tc], zero)
        l = (1 - eps) * wt * -lp.gather(1, tc)
        if eps > 0:
            l = l + eps * (-_osum(w * lp, order) / C)
        l = torch.where(valid, l, zero)
        den = _osum(wt.reshape(1, -1), order).reshape(())
    if reduction == "none":
        return l.reshape(none_shape).to(dt)
    total = _osum(l.reshape(1, -1), order).reshape(())
    if reduction == "sum":
        return total.to(dt)
    if den is None:
        return (total / P).to(dt)
    # den = 0 (all ignored, or every target weighted 0) is NaN, even where smoothing made the sum nonzero
    return torch.where(den == 0, torch.full_like(total, float("nan")), total / den).to(dt)


def _ordered(order):
    def fn(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
           label_smoothing=0.0):
        return _ordered_cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
                                      label_smoothing, order)
    fn.__name__ = f"sum_{order}"
    fn.__doc__ = f"Correct: log_softmax and the loss from the formulas, every sum {order.replace('_', ' ')}."
    return fn


sum_left_to_right = _ordered("left_to_right")
sum_right_to_left = _ordered("right_to_left")
sum_pairwise = _ordered("pairwise")
sum_blocked = _ordered("blocked")
sum_kahan = _ordered("kahan")
sum_float64_accumulate = _ordered("float64_accumulate")
ORDERED = ["sum_left_to_right", "sum_right_to_left", "sum_pairwise", "sum_blocked", "sum_kahan",
           "sum_float64_accumulate"]


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


CORRECT = ["half_in_float32", "float64_round_once"] + ORDERED
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
