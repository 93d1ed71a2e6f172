"""transformers' ``ForCausalLMLoss`` (transformers/loss/loss_utils.py), the loss every causal LM
in transformers uses: labels shifted one step, a 'sum' divided by ``num_items_in_batch``.

Importing ``transformers`` pulls in huggingface-hub, tokenizers, regex, safetensors, ... for a
loss that needs only torch. So the two functions (``fixed_cross_entropy`` and
``ForCausalLMLoss``) are read, unchanged, from the installed package's loss_utils.py and
defined alone; ``transformers`` itself is never imported.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import torch
import torch.nn as nn

FUNCTIONS = ("fixed_cross_entropy", "ForCausalLMLoss")


def _load():
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("transformers is not installed (pip install --no-deps transformers)")
    path = Path(list(spec.submodule_search_locations)[0]) / "loss" / "loss_utils.py"
    tree = ast.parse(path.read_text(), str(path))
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS]
    if len(body) != len(FUNCTIONS):
        raise ImportError(f"{path} no longer defines {', '.join(FUNCTIONS)}")
    ns = {"torch": torch, "nn": nn}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), ns)
    return ns["ForCausalLMLoss"]


ForCausalLMLoss = _load()


def causal_lm_loss(logits, labels, reduction="mean", ignore_index=-100, num_items_in_batch=None, shift=False):
    """ForCausalLMLoss on (N, T, C) logits: ``shift`` takes its own shifting path, otherwise the
    labels go in as ``shift_labels`` (its path for labels already shifted). It averages without
    ``num_items_in_batch`` and divides the sum by it otherwise, so 'sum' alone is sum / 1."""
    if reduction not in ("mean", "sum"):  # its own choice is mean or sum / num_items_in_batch
        raise ValueError(f"ForCausalLMLoss offers 'mean' and 'sum' / num_items_in_batch, not {reduction!r}")
    if reduction == "sum" and num_items_in_batch is None:
        num_items_in_batch = 1
    kw = {} if shift else {"shift_labels": labels}
    return ForCausalLMLoss(logits, labels, logits.shape[-1], num_items_in_batch=num_items_in_batch,
                           ignore_index=ignore_index, **kw)
