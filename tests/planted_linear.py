"""Planted fused linear cross-entropy kernels (specs/linear_cross_entropy.yaml), for
tests/test_linear_ce.py.

Every function takes ``(hidden, classifier, target, bias=None, **options)`` and returns
``(loss, z_loss, lse)``, called through adapters/llm.py with :data:`FORM` (the torch-linear
form). ``CORRECT`` ones must never be flagged; each ``BUGGY`` one carries a bug fused kernels
have shipped, which the quick profile (vocabularies up to 4097 classes, seed 1) must catch on
the checks listed.
"""
import torch
import torch.nn.functional as F

from conformance.adapters.linear import FORM, linear_cross_entropy  # noqa: F401  (FORM is used by the tests)

HALF = (torch.float16, torch.bfloat16)


class _Linear(torch.autograd.Function):
    """h @ W.T + b with a hand-written backward, one bug at a time."""

    @staticmethod
    def forward(ctx, h, W, b, chain, bug):
        ctx.save_for_backward(h, W, chain)
        ctx.bug, ctx.has_bias = bug, b is not None
        out = h @ W.T
        return out + b if b is not None else out

    @staticmethod
    def backward(ctx, G):
        h, W, chain = ctx.saved_tensors
        dh = (G / chain if ctx.bug == "hidden_grad_uncapped" else G) @ W
        if ctx.bug == "classifier_grad_transposed":   # h.T @ G is (H, C): its data read as (C, H)
            dW = (h.T @ G).reshape(W.shape)
        else:
            dW = G.T @ h
        db = None if (not ctx.has_bias or ctx.bug == "bias_grad_missing") else G.sum(0)
        return dh, dW, db, None, None


def _impl(bug, hidden, classifier, target, bias=None, *, logit_scale=None, softcap=None, **kw):
    if bug == "bias_ignored_forward":
        bias = None
    with torch.no_grad():   # the chain factor of the scale and softcap, for the planted hidden-gradient bug
        y = (hidden @ classifier.T).to(torch.float32) * (logit_scale or 1.0)
        chain = (1 - torch.tanh(y / softcap) ** 2).to(hidden.dtype) if softcap else torch.ones_like(y, dtype=hidden.dtype)

    def lin(h, W, b):
        return _Linear.apply(h, W, b, chain, bug)

    return _compose(lin, hidden, classifier, target, bias, logit_scale=logit_scale, softcap=softcap, **kw)


def _compose(lin, hidden, classifier, target, bias, **kw):
    """torch-linear's composition with ``lin`` in place of F.linear."""
    orig = F.linear
    try:
        F.linear = lambda h, W, b=None: lin(h, W, b)
        return linear_cross_entropy(hidden, classifier, target, bias, **kw)
    finally:
        F.linear = orig


def reference(*a, **k):
    """Correct: the torch-linear composition with a hand-written backward."""
    return _impl(None, *a, **k)


def chunked_fp32(hidden, classifier, target, bias=None, *, reduction="mean", shift=False, ignore_index=-100,
                 normalizer=None, weight=None, chunk_rows=3, chunk_vocab=1000, **kw):
    """Correct: logits in float32 (half inputs accumulate in float32, never rounded to half),
    by vocabulary chunks, and the loss over row chunks reduced at the end with the batch's
    own denominator."""
    dt = hidden.dtype
    cdt = torch.float32 if dt in HALF else dt
    h, W = hidden.to(cdt), classifier.to(cdt)
    b = None if bias is None else bias.to(cdt)
    w = None if weight is None else weight.to(cdt)
    t = target
    if shift:
        t = torch.full_like(target, ignore_index)
        if target.numel():
            t[:-1] = target[1:]

    def lin(hh, WW, bb=None):   # vocabulary chunks
        parts = [hh @ WW[c:c + chunk_vocab].T + (0 if bb is None else bb[c:c + chunk_vocab])
                 for c in range(0, WW.shape[0], chunk_vocab)]
        return torch.cat(parts, dim=-1) if parts else hh @ WW.T

    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    losses, zs, lses = [], [], []
    for r in range(0, max(h.shape[0], 1), chunk_rows):
        lo, z, lse = _compose(lin, h[r:r + chunk_rows], W, t[r:r + chunk_rows], b, reduction="none",
                              ignore_index=ignore_index, weight=w, **kw)
        losses.append(lo)
        zs.append(torch.zeros_like(lo) if z is None else z)       # the plain path returns no z-loss / lse
        lses.append(torch.zeros_like(lo) if lse is None else lse)
    per, z, lse = torch.cat(losses), torch.cat(zs), torch.cat(lses)
    valid = t != ignore_index
    wt = torch.ones_like(per) if w is None else w[torch.where(valid, t, 0)]
    den = torch.where(valid, wt, torch.zeros_like(wt)).sum()

    def red(a):
        if reduction == "none":
            return a
        if reduction == "sum":
            return a.sum() / normalizer if normalizer is not None else a.sum()
        return torch.where(den == 0, torch.full_like(den, float("nan")), a.sum() / den)

    return red(per).to(dt), red(z).to(dt).detach(), lse.to(dt).detach()


def _bug(name):
    def f(*a, **k):
        return _impl(name, *a, **k)
    f.__name__ = name
    return f


bias_grad_missing = _bug("bias_grad_missing")
classifier_grad_transposed = _bug("classifier_grad_transposed")
hidden_grad_uncapped = _bug("hidden_grad_uncapped")
bias_ignored_forward = _bug("bias_ignored_forward")

CORRECT = ("reference", "chunked_fp32")
#: bug -> the checks that must catch it (at least one fails under the quick profile, seed 1)
BUGGY = {
    "bias_grad_missing": ("gradient.index",),
    "classifier_grad_transposed": ("gradient.index",),
    "hidden_grad_uncapped": ("extension.softcap",),
    "bias_ignored_forward": ("forward.index",),
}
