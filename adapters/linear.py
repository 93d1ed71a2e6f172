"""The torch reference of the linear form (specs/linear_cross_entropy.yaml), built-in adapter
``torch-linear``: ``F.linear`` then ``F.cross_entropy``, with the spec's LLM extensions composed
in torch around it (scale -> softcap -> cross-entropy + z-loss; labels shifted; a 'sum' over a
normaliser; the per-position log-sum-exp). Half-precision logits are computed by F.linear in
their dtype (as an unfused model does) and the extensions in float32.

Called through adapters/llm.py with :data:`FORM`: hidden, classifier, target and bias
positionally, every option under our own name, and a (loss, z_loss, lse) tuple back.
"""
from __future__ import annotations

from conformance.adapters.llm import OPTIONS, CallForm, LlmTorchAdapter

FORM = CallForm(args=("hidden", "classifier", "target", "bias"), options={o: o for o in OPTIONS},
                returns={"loss": 0, "z_loss": 1, "lse": 2})


def linear_cross_entropy(hidden, classifier, target, bias=None, *, weight=None, ignore_index=-100, reduction="mean",
                         label_smoothing=0.0, logit_scale=None, softcap=None, z_loss=None, return_z_loss=False,
                         return_lse=False, normalizer=None, shift=False):
    """(loss, z_loss or None, lse or None) of ``F.cross_entropy(F.linear(hidden, classifier, bias), target)``."""
    import torch
    import torch.nn.functional as F

    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0, got {softcap}")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    logits = F.linear(hidden, classifier, bias)
    dt = logits.dtype
    plain = logit_scale is None and softcap is None and not z_loss and not return_lse and normalizer is None \
        and not shift
    if plain:
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing), None, None
    cdt = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt
    x = logits.to(cdt)
    if logit_scale is not None:
        x = x * logit_scale
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    t = target
    if shift:
        t = torch.full_like(target, ignore_index)
        if target.numel():
            t[:-1] = target[1:]
    w = None if weight is None else weight.to(cdt)
    ce = F.cross_entropy(x, t, weight=w, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    valid = t != ignore_index
    lse = torch.logsumexp(x, dim=-1)
    z = torch.where(valid, z_loss * lse ** 2, torch.zeros_like(lse)) if z_loss else torch.zeros_like(lse)
    wt = torch.ones_like(ce) if w is None else w[torch.where(valid, t, 0)]
    den = torch.where(valid, wt, torch.zeros_like(wt)).sum()

    def red(a):
        if reduction == "none":
            return a
        if reduction == "sum":
            return a.sum() / normalizer if normalizer is not None else a.sum()
        return torch.where(den == 0, torch.full_like(den, float("nan")), a.sum() / den)  # den 0: NaN, as the spec says

    per = ce + z
    return red(per).to(dt), red(z).to(dt).detach(), lse.to(dt).detach()


def torch_linear() -> LlmTorchAdapter:
    """Built-in ``torch-linear``: the reference composition on the CPU."""
    a = LlmTorchAdapter(linear_cross_entropy, "torch-linear", FORM)
    a.known_files, a.config_file = (), None   # as resolve() gives built-ins (known/torch.yaml matches torch-*)
    return a
