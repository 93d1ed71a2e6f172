"""Liger-Kernel's Triton cross entropy (``liger_kernel.transformers.functional.liger_cross_entropy``).

Without a GPU it runs under Triton's interpreter: set ``TRITON_INTERPRET=1`` before Python
starts (slow: use ``--profile quick``). Liger stores the gradient in the input's memory during
the forward pass (to save memory), so the caller's logits are overwritten:

- ``liger_adapter:liger_cross_entropy`` (config liger_raw.yaml) is Liger as users call it; the
  suite reports the in-place write on every call.
- ``liger_adapter:liger_on_a_copy`` (config liger.yaml) hands Liger a copy, so that the values
  and gradients can be judged too.
"""
from __future__ import annotations

from liger_kernel.transformers.functional import liger_cross_entropy  # noqa: F401


def liger_on_a_copy(input, target, **kw):
    return liger_cross_entropy(input.clone(), target, **kw)


def liger_llm(input, target, return_z_loss=False, **kw):
    """Liger's LLM options (softcap, lse_square_scale = z-loss, return_z_loss) on a copy of the
    logits, with the result as a (loss, z_loss) pair whatever return_z_loss says: Liger returns
    a bare tensor without it and a CrossEntropyOutput with it (config liger_llm.yaml)."""
    out = liger_cross_entropy(input.clone(), target, return_z_loss=return_z_loss, **kw)
    return (out.loss, out.z_loss) if return_z_loss else (out, None)


def liger_fused_linear(input, weight, target, bias=None, return_z_loss=False, **kw):
    """Liger's fused linear cross entropy (the logits never materialised) with the result as a
    (loss, z_loss) pair (config liger_fused_linear.yaml)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(input, weight, target, bias, return_z_loss=return_z_loss, **kw)
    if isinstance(out, tuple):
        return out[0], out[1] if return_z_loss else None
    return (out.loss, out.z_loss) if hasattr(out, "loss") else (out, None)


def liger_fused_linear_module(lin_weight, _input, target, bias=None, **kw):
    """``LigerFusedLinearCrossEntropyLoss(**options).forward(lin_weight, _input, target, bias)``:
    the module takes the classifier FIRST (config liger_fused_linear_module.yaml)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(**kw)(lin_weight, _input, target, bias)
