"""An adapter that kills its own process on invalid class indices, like a CUDA device-side
assert does to a CUDA context: the isolation meta-test runs its error checks in a child."""
import os

import torch.nn.functional as F

from conformance.adapters.torch_adapter import TorchFunctionAdapter


def _aborting_cross_entropy(input, target, ignore_index=-100, **kw):
    if not target.is_floating_point():
        C = input.shape[1 if input.dim() > 1 else 0]
        bad = (target != ignore_index) & ((target < 0) | (target >= C))
        if bool(bad.any()):
            os.abort()
    return F.cross_entropy(input, target, ignore_index=ignore_index, **kw)


class AbortingAdapter(TorchFunctionAdapter):
    isolate_kinds = ("error",)

    def __init__(self):
        super().__init__(_aborting_cross_entropy, "aborting")
