"""Planted implementations for the inputs real kernels break on (issue 12): memory layouts,
vocabulary blocks, wide label ids, row chunks, degenerate shapes, state across calls and
one-sided rounding. Each buggy one carries one deviation of the kind hand-written
CUDA/Triton kernels ship; the correct ones (an online softmax over class blocks of 16 and of
4096 done right, and one that calls ``.contiguous()`` first) must never be flagged.

All take F.cross_entropy's signature on torch tensors. The ones that compute the loss
themselves still call F.cross_entropy once (without gradient) so that invalid arguments
raise as the error contract asks; its value is discarded.
"""
import torch
import torch.nn.functional as F

HALF = (torch.float16, torch.bfloat16)
BLOCK = 4096


def _compute_dtype(dt):
    return torch.float64 if dt == torch.float64 else torch.float32


def _reduction(reduction, size_average, reduce):
    if size_average is None and reduce is None:
        return reduction
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def _validate(input, target, weight, ignore_index, reduction, label_smoothing, size_average=None, reduce=None):
    """Raise for invalid arguments exactly as torch does (the value is not used)."""
    with torch.no_grad():
        F.cross_entropy(input.detach(), target.detach(), weight=weight, ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing, size_average=size_average, reduce=reduce)


def _class_axis(x):
    return 0 if x.dim() == 1 else 1


def _blocked_lse(x, B, mode="right"):
    """logsumexp over the last axis of (P, C) rows by an online softmax over class blocks of
    ``B``: a running maximum and a running sum rescaled when the maximum grows. ``mode``
    plants a deviation that only shows when C > B: "drop_partial" skips a partial last
    block, "pad_zero" loads 0 (not -inf) into its padded lanes, "no_rescale" never rescales
    the running sum."""
    P, C = x.shape
    m = torch.full((P, 1), -torch.inf, dtype=x.dtype)
    s = torch.zeros((P, 1), dtype=x.dtype)
    m_safe = torch.zeros((P, 1), dtype=x.dtype)
    bug = mode if C > B else "right"
    for start in range(0, C, B):
        blk = x[:, start:start + B]
        if blk.shape[1] < B and bug == "drop_partial":
            break
        if blk.shape[1] < B and bug == "pad_zero":
            blk = torch.cat([blk, torch.zeros((P, B - blk.shape[1]), dtype=x.dtype)], dim=1)
        m_new = torch.maximum(m, blk.max(dim=1, keepdim=True).values)
        # rows all -inf so far: 0 instead (exp(-inf - 0) = 0); +inf and NaN propagate as NaN
        m_safe = torch.where(m_new == -torch.inf, torch.zeros_like(m_new), m_new)
        part = torch.exp(blk - m_safe).sum(dim=1, keepdim=True)
        if bug == "no_rescale":
            s = s + part
        else:
            s = s * torch.exp(m - m_safe) + part
        m = m_new
    return m_safe + torch.log(s)


def _ce_from_log_probs(lp, target, weight, ignore_index, reduction, eps):
    """The spec's loss (specs/cross_entropy.yaml paths) from log-probabilities ``lp``
    (input-shaped, compute dtype)."""
    ax = _class_axis(lp)
    C = lp.shape[ax]
    none_shape = tuple(s for i, s in enumerate(lp.shape) if i != ax)
    rows = lp.movedim(ax, -1).reshape(-1, C)
    w = weight.to(lp.dtype) if weight is not None else torch.ones(C, dtype=lp.dtype)
    if target.is_floating_point() and target.shape == lp.shape:
        y = target.to(lp.dtype).movedim(ax, -1).reshape(-1, C)
        q = (1 - eps) * y + eps / C
        loss = -(w * q * rows).sum(dim=1)
        if reduction == "none":
            return loss.reshape(none_shape)
        return loss.sum() if reduction == "sum" else loss.sum() / rows.shape[0]
    t = target.reshape(-1)
    valid = t != ignore_index
    tc = torch.where(valid, t, torch.zeros_like(t))
    wt = torch.where(valid, w[tc], torch.zeros((), dtype=lp.dtype))
    nll = -rows.gather(1, tc[:, None])[:, 0]
    loss = (1 - eps) * wt * nll
    if eps > 0:
        loss = loss + eps * (-(w * rows).sum(dim=1) / C)
    loss = torch.where(valid, loss, torch.zeros((), dtype=lp.dtype))
    if reduction == "none":
        return loss.reshape(none_shape)
    if reduction == "sum":
        return loss.sum()
    den = wt.sum()
    return loss.sum() / torch.where(den == 0, torch.full_like(den, torch.nan), den)  # 0 weight in all: NaN


def _online(B, mode="right"):
    def fn(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
           label_smoothing=0.0):
        _validate(input, target, weight, ignore_index, reduction, label_smoothing, size_average, reduce)
        red = _reduction(reduction, size_average, reduce)
        ax = _class_axis(input)
        x = input.to(_compute_dtype(input.dtype))
        C = x.shape[ax]
        rows = x.movedim(ax, -1).reshape(-1, C)
        lse = _blocked_lse(rows, B, mode)
        lp = (rows - lse).reshape(x.movedim(ax, -1).shape).movedim(-1, ax)
        return _ce_from_log_probs(lp, target, weight, ignore_index, red, float(label_smoothing)).to(input.dtype)
    fn.__name__ = f"online_softmax_{B}" if mode == "right" else f"online_softmax_{mode}"
    fn.__doc__ = (f"Correct: an online softmax over class blocks of {B}." if mode == "right"
                  else f"Bug: an online softmax over class blocks of {B} that {mode.replace('_', ' ')}s.")
    return fn


# --------------------------------------------------------------------------- correct
online_softmax_16 = _online(16)
online_softmax_4096 = _online(4096)


def contiguous_first(input, target, weight=None, **kw):
    """Correct: copies every argument to contiguous memory first, then torch's loss."""
    return F.cross_entropy(input.contiguous(), target.contiguous(),
                           weight=None if weight is None else weight.contiguous(), **kw)


# --------------------------------------------------------------------------- memory layout
def assumes_contiguous(input, target, **kw):
    """Bug: reads the logits as if they were row-major contiguous from their storage offset."""
    n, strides = 1, []
    for s in reversed(input.shape):
        strides.insert(0, n)
        n *= s
    x = torch.as_strided(input, input.shape, strides, input.storage_offset())
    return F.cross_entropy(x, target, **kw)


def labels_from_storage_base(input, target, **kw):
    """Bug: reads the class indices from their storage base (offset 0), not their data pointer."""
    if not target.is_floating_point() and target.numel():
        target = torch.as_strided(target, target.shape, target.stride(), 0)
    return F.cross_entropy(input, target, **kw)


# --------------------------------------------------------------------------- vocabulary blocks, wide ids, chunks
blocks_drop_partial = _online(BLOCK, "drop_partial")
blocks_pad_zero = _online(BLOCK, "pad_zero")
blocks_no_rescale = _online(BLOCK, "no_rescale")


def int16_labels(input, target, ignore_index=-100, **kw):
    """Bug: class indices narrowed to int16 (ids >= 32768 wrap, then taken modulo C)."""
    if not target.is_floating_point() and target.numel():
        C = input.shape[_class_axis(input)]
        wrapped = target.to(torch.int16).to(torch.int64) % C
        target = torch.where(target == ignore_index, target, wrapped)
    return F.cross_entropy(input, target, ignore_index=ignore_index, **kw)


def mean_of_chunk_means(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **kw):
    """Bug: a 'mean' computed as the average of per-chunk weighted means over 4096-row chunks."""
    if reduction != "mean" or kw or input.dim() != 2 or target.is_floating_point() or input.shape[0] <= BLOCK:
        return F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing, **kw)
    means = []
    for start in range(0, input.shape[0], BLOCK):
        means.append(F.cross_entropy(input[start:start + BLOCK].float(), target[start:start + BLOCK],
                                     weight=None if weight is None else weight.float(), ignore_index=ignore_index,
                                     reduction="mean", label_smoothing=label_smoothing))
    return torch.stack(means).mean().to(input.dtype)


# --------------------------------------------------------------------------- degenerate shapes
def empty_spatial_mean_zero(input, target, reduction="mean", **kw):
    """Bug: 'mean' over a zero-size spatial axis (N > 0) returns 0 instead of NaN."""
    if reduction == "mean" and not kw.get("size_average") and input.dim() >= 3 and input.shape[0] > 0 \
            and input.numel() == 0:
        return input.sum() * 0
    return F.cross_entropy(input, target, reduction=reduction, **kw)


def class_axis_guessed_last(input, target, **kw):
    """Bug: when the class indices match input.shape[:-1], the class axis is taken to be the last."""
    if input.dim() == 3 and not target.is_floating_point() and tuple(target.shape) == tuple(input.shape[:-1]):
        return F.cross_entropy(input.movedim(-1, 1), target, **kw)
    return F.cross_entropy(input, target, **kw)


# --------------------------------------------------------------------------- state across calls
_WORKSPACE = {}


class _SharedWorkspaceCE(torch.autograd.Function):
    """Forward keeps its logits in a workspace shared per shape; backward reads them back."""

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction, label_smoothing):
        _WORKSPACE[tuple(x.shape)] = x.detach().clone()
        ctx.shape = tuple(x.shape)
        ctx.args = (target, weight, ignore_index, reduction, label_smoothing)
        return F.cross_entropy(x.detach(), target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)

    @staticmethod
    def backward(ctx, g):
        target, weight, ignore_index, reduction, label_smoothing = ctx.args
        xs = _WORKSPACE[ctx.shape].detach().requires_grad_(True)
        with torch.enable_grad():
            out = F.cross_entropy(xs, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                                  label_smoothing=label_smoothing)
            (gx,) = torch.autograd.grad(out, xs, g)
        return gx, None, None, None, None, None


def shared_workspace(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **kw):
    """Bug: backward reads the logits from a workspace shared by every call of the same shape."""
    if target.is_floating_point() or kw.get("size_average") is not None or kw.get("reduce") is not None:
        return F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing, **kw)
    return _SharedWorkspaceCE.apply(input, target, weight, ignore_index, reduction, label_smoothing)


# --------------------------------------------------------------------------- one-sided rounding
def _truncate_to_bf16(v):
    """float32 -> bfloat16 by dropping the low 16 bits (round toward zero), kept in float32."""
    bits = v.detach().contiguous().view(torch.int32) & -65536
    return v + (bits.view(torch.float32) - v).detach()  # straight-through: the gradient is untouched


def bf16_truncated_rows(input, target, reduction="mean", **kw):
    """Bug: bfloat16 row losses stored by truncation instead of round-to-nearest."""
    if input.dtype != torch.bfloat16 or reduction != "none" or kw.get("size_average") is not None \
            or kw.get("reduce") is not None:
        return F.cross_entropy(input, target, reduction=reduction, **kw)
    t = target.float() if target.is_floating_point() else target
    w = kw.pop("weight", None)
    rows = F.cross_entropy(input.float(), t, reduction="none", weight=None if w is None else w.float(), **kw)
    return _truncate_to_bf16(rows).to(torch.bfloat16)


CORRECT = ["online_softmax_16", "online_softmax_4096", "contiguous_first"]

#: bug -> the checks (default profile) any of which must catch it
BUGGY = {
    "assumes_contiguous": ["forward.index", "forward.probability", "gradient.index"],
    "labels_from_storage_base": ["forward.index", "gradient.index"],
    "blocks_drop_partial": ["special.vocabulary_blocks", "forward.index"],
    "blocks_pad_zero": ["special.vocabulary_blocks", "forward.index"],
    "blocks_no_rescale": ["special.vocabulary_blocks", "forward.index"],
    "int16_labels": ["special.vocabulary_blocks", "forward.index"],
    "mean_of_chunk_means": ["special.chunked_rows", "forward.index"],
    "empty_spatial_mean_zero": ["special.empty_spatial"],
    "class_axis_guessed_last": ["special.spatial_size_equals_classes", "forward.index"],
    "shared_workspace": ["metamorphic.interleaved_calls"],
    # the bias rule counts index losses only; the rounding special case gives it samples enough
    "bf16_truncated_rows": ["special.rounding_bfloat16", "forward.index", "gradient.index"],
}
