"""torchtune 0.6.1's chunked-output cross entropy (``CEWithChunkedOutputLoss``, the loss of its
fine-tuning recipes) in the linear form (config torchtune_chunked.yaml).

torchtune 0.6.1 has no ``LinearCrossEntropyLoss`` (a later release adds it): in 0.6.1 the model
itself projects the hidden states chunk by chunk (``TransformerDecoder`` with
``num_output_chunks``: ``[model.output(h) for h in hidden.chunk(n, dim=1)]``) and the loss takes
that list of logit chunks. This shim does the model's half with the (C, H) classifier as a
bias-free ``nn.Linear`` (torchtune's ``output`` layer) and hands the chunks to the loss.

``import torchtune`` needs torchao (and more) for a loss that needs only torch, so the loss file
(torchtune/modules/loss/ce_chunked_output_loss.py, which imports only torch) is loaded alone,
unchanged; ``torchtune`` itself is never imported.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.func import functional_call


def _load():
    spec = importlib.util.find_spec("torchtune")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchtune is not installed (pip install --no-deps torchtune, the torchtune extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "modules" / "loss" / "ce_chunked_output_loss.py"
    if not path.is_file():
        raise ImportError(f"{path} is missing: this shim reads torchtune 0.6's CEWithChunkedOutputLoss")
    mod_spec = importlib.util.spec_from_file_location("_torchtune_ce_chunked_output_loss", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.CEWithChunkedOutputLoss


CEWithChunkedOutputLoss = _load()


def chunked_output_loss(hidden, classifier, target, ignore_index=-100, reduction="mean", num_output_chunks=8):
    """The recipe's loss on hidden (P, H) as one sequence (1, P, H) and labels (1, P): the mean
    over non-ignored tokens, its only reduction (so another ``reduction`` is refused here, as
    the loss has no such argument)."""
    if reduction != "mean":
        raise ValueError(f"CEWithChunkedOutputLoss is a mean over non-ignored tokens, not {reduction!r}")
    C, H = classifier.shape
    output = torch.nn.Linear(H, C, bias=False, device="meta")   # torchtune's output layer
    weights = {"weight": classifier}                             # ... holding the caller's classifier
    h = hidden.unsqueeze(0)
    chunks = [functional_call(output, weights, (c,)) for c in h.chunk(num_output_chunks, dim=1)]
    loss = CEWithChunkedOutputLoss(num_output_chunks=num_output_chunks, ignore_index=ignore_index)
    return loss(chunks, target.unsqueeze(0))
