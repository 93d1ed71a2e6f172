"""flash-attn's Triton cross entropy (``flash_attn/ops/triton/cross_entropy.py``:
``cross_entropy_loss(logits, labels, precomputed_lse, label_smoothing, logit_scale,
lse_square_scale, ignore_index, inplace_backward, process_group)`` -> (losses, z_losses), both
per row in float32, the z-loss already added into the losses). Config flash_attn_ce.yaml.

flash-attn 2.8.3.post2 is published as a source tarball whose build compiles CUDA: it cannot be
installed without nvcc (even with FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE the wheel build fails).
That one file imports only torch and triton, so it is loaded alone, unchanged: from an installed
``flash_attn`` if there is one, else from the file ``FLASH_ATTN_CE_FILE`` names, e.g.::

    FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: \\
        --no-build-isolation flash-attn==2.8.3.post2 -d /tmp/fa
    tar xzf /tmp/fa/flash_attn-2.8.3.post2.tar.gz -C /tmp/fa
    export FLASH_ATTN_CE_FILE=/tmp/fa/flash_attn-2.8.3.post2/flash_attn/ops/triton/cross_entropy.py

Without a GPU it runs under Triton's interpreter (TRITON_INTERPRET=1 before Python starts).
Its forward and backward both launch inside ``with torch.cuda.device(logits.device.index)``,
which raises TypeError for a CPU tensor (index None; docs/findings.md F1): this shim makes
``torch.cuda.device(None)`` a no-op (any other index is passed through), once, at import.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import torch

ENV = "FLASH_ATTN_CE_FILE"


def ce_file() -> Path | None:
    """The cross_entropy.py to load, or None when neither flash_attn nor FLASH_ATTN_CE_FILE has it."""
    spec = importlib.util.find_spec("flash_attn")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "ops" / "triton" / "cross_entropy.py"
        if p.is_file():
            return p
    p = os.environ.get(ENV)
    return Path(p) if p and Path(p).is_file() else None


def _load():
    path = ce_file()
    if path is None:
        raise ImportError(f"flash-attn's cross_entropy.py not found: install flash_attn or set {ENV} "
                          "(see examples/flash_attn_adapter.py)")
    spec = importlib.util.spec_from_file_location("_flash_attn_triton_cross_entropy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cross_entropy_loss


def _allow_cpu_tensors():
    real = torch.cuda.device
    if getattr(real, "_ce_conformance_none_ok", False):
        return

    def device(idx):
        return contextlib.nullcontext() if idx is None else real(idx)

    device._ce_conformance_none_ok = True
    torch.cuda.device = device


cross_entropy_loss = _load()
_allow_cpu_tensors()


def flash_ce(logits, labels, reduction="none", return_z_loss=False, **kw):
    """(losses, z_losses) per row: flash-attn has no reduction argument, so only 'none' is
    taken here. The logits are handed over as they are (inplace_backward stays False)."""
    if reduction != "none":
        raise ValueError(f"flash-attn's cross_entropy_loss returns per-row losses, not {reduction!r}")
    losses, z_losses = cross_entropy_loss(logits, labels, **kw)
    return losses, (z_losses if return_z_loss else None)
