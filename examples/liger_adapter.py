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
