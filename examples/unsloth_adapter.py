"""unsloth's Triton cross entropy (``unsloth/kernels/cross_entropy_loss.py``:
``fast_cross_entropy_loss(logits, labels, logit_softcapping=0, logit_scaling=0, n_items=None)``,
logits (batch, seq, V), labels (batch, seq), -100 hard-coded as the ignored label; it returns
``losses.sum() / n_items``, n_items being the count of labels != -100 when None, and 1 where
that count is 0). Config unsloth_ce.yaml.

``import unsloth`` needs a GPU (unsloth/device_type.py raises "You need a GPU" unless
UNSLOTH_ALLOW_CPU=1), huggingface_hub, bitsandbytes, transformers, ... So the one file is read,
unchanged, from an installed ``unsloth`` if there is one, else from the file ``UNSLOTH_CE_FILE``
names, e.g.::

    pip download --no-deps unsloth==2026.10.9 -d /tmp/unsl
    unzip -q /tmp/unsl/unsloth-2026.10.9-py3-none-any.whl -d /tmp/unsl/t
    export UNSLOTH_CE_FILE=/tmp/unsl/t/unsloth/kernels/cross_entropy_loss.py

and its module-level ``from ... import`` lines are replaced by what they give on a machine with
at most one GPU and no ROCm: ``MAX_FUSED_SIZE``, ``calculate_settings`` (read from the sibling
utils.py) and ``_eviction_hints_ok`` (from rope_embedding.py), unchanged; ``triton_tanh =
libdevice.tanh`` and ``triton_cast = tl.cast`` (utils.py for triton >= 3), ``torch_gpu_device``
a null context (utils.py with one device), ``is_cdna`` False (no HIP); a logger, packaging's
``Version``, and stubs for unsloth_zoo's loss patching (never called here). Any other import the
file gains is an ImportError naming it, so a changed file is not run with stale shims.

Without a GPU it runs under Triton's interpreter (TRITON_INTERPRET=1 before Python starts),
where two of those aliases cannot run as they are (docs/findings.md U1, U2): ``triton_cast``
then looks ``tl.cast`` up at each call and ``triton_tanh`` is NumPy's tanh.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import logging
import os
from pathlib import Path

import torch
import triton
import triton.language as tl

ENV = "UNSLOTH_CE_FILE"

#: The module-level imports the file has, and the names each gives (the shims below).
SHIMMED = {
    ".utils": {"calculate_settings", "MAX_FUSED_SIZE", "triton_tanh", "triton_cast", "torch_gpu_device", "is_cdna"},
    ".rope_embedding": {"_eviction_hints_ok"},
    "transformers.models.llama.modeling_llama": {"logger"},
    "unsloth_zoo.utils": {"Version"},
    "unsloth_zoo.loss_utils": {"patch_loss_functions", "post_patch_loss_function"},
}


def ce_file() -> Path | None:
    """The cross_entropy_loss.py to load, or None when neither unsloth nor UNSLOTH_CE_FILE has it."""
    spec = importlib.util.find_spec("unsloth")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "kernels" / "cross_entropy_loss.py"
        if p.is_file():
            return p
    p = os.environ.get(ENV)
    return Path(p) if p and Path(p).is_file() else None


def _top_level(path: Path, names: set[str]) -> list[ast.stmt]:
    """The top-level assignments and functions of ``path`` that define ``names``, unchanged."""
    tree = ast.parse(path.read_text(), str(path))
    out, found = [], set()
    for n in tree.body:
        if isinstance(n, ast.FunctionDef) and n.name in names:
            out.append(n)
            found.add(n.name)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            hit = {t.id for t in targets if isinstance(t, ast.Name)} & names
            if hit:
                out.append(n)
                found |= hit
    if found != names:
        raise ImportError(f"{path} no longer defines {', '.join(sorted(names - found))}")
    return out


def _exec(nodes: list[ast.stmt], filename: str, ns: dict) -> dict:
    exec(compile(ast.Module(body=nodes, type_ignores=[]), filename, "exec"), ns)
    return ns


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _interpreted_tanh(x):
    """tanh under Triton's interpreter, where libdevice.tanh (utils.py ``triton_tanh``) cannot
    run: the generic stub returns None and the CUDA one is an extern call the interpreter does
    not support (docs/findings.md U2). NumPy's float32 tanh, as the interpreter computes tl.exp
    (np.exp); on a GPU the kernel gets libdevice's."""
    import numpy as np
    from triton.runtime.interpreter import TensorHandle

    return tl.core.tensor(TensorHandle(np.tanh(x.handle.data), x.handle.dtype.scalar), x.type)


def _interpretable(builtin):
    """``builtin`` as a kernel may call it. Triton's interpreter swaps the builtins of ``tl``
    for its own while a kernel runs, so a builtin aliased at import (utils.py ``triton_cast =
    tl.cast``) is the unpatched one and raises "Did you forget to add @triton.jit ?" (docs/
    findings.md U1): under TRITON_INTERPRET=1 the alias looks the builtin up at each call."""
    if not _interpreting():
        return builtin
    name = builtin.__name__
    return lambda *args, **kwargs: getattr(tl, name)(*args, **kwargs)


def _shims(kernels: Path) -> dict:
    """What the shimmed imports give (see the module docstring)."""
    from packaging.version import Version
    from triton.language.extra import libdevice

    ns = {"triton": triton, "torch": torch, "functools": functools}
    _exec(_top_level(kernels / "utils.py", {"MAX_FUSED_SIZE", "next_power_of_2", "calculate_settings"}),
          str(kernels / "utils.py"), ns)
    _exec(_top_level(kernels / "rope_embedding.py", {"_eviction_hints_ok_at", "_eviction_hints_ok"}),
          str(kernels / "rope_embedding.py"), ns)

    def unavailable(*args, **kwargs):
        raise NotImplementedError("unsloth_zoo's loss patching is not loaded (examples/unsloth_adapter.py)")

    return {"calculate_settings": ns["calculate_settings"], "MAX_FUSED_SIZE": ns["MAX_FUSED_SIZE"],
            "triton_tanh": _interpreted_tanh if _interpreting() else libdevice.tanh,
            "triton_cast": _interpretable(tl.cast),
            "torch_gpu_device": lambda device: contextlib.nullcontext(), "is_cdna": lambda: False,
            "_eviction_hints_ok": ns["_eviction_hints_ok"], "logger": logging.getLogger("unsloth"),
            "Version": Version, "patch_loss_functions": unavailable, "post_patch_loss_function": unavailable}


def _load():
    path = ce_file()
    if path is None:
        raise ImportError(f"unsloth's cross_entropy_loss.py not found: install unsloth or set {ENV} "
                          "(see examples/unsloth_adapter.py)")
    tree = ast.parse(path.read_text(), str(path))
    shims, ns = _shims(path.parent), {"__name__": "_unsloth_cross_entropy_loss", "__file__": str(path)}
    body = []
    for n in tree.body:
        if isinstance(n, ast.ImportFrom) and n.level in (0, 1):
            mod = "." * n.level + (n.module or "")
            if mod not in SHIMMED or {a.name for a in n.names} - SHIMMED[mod]:
                raise ImportError(f"{path}:{n.lineno}: an import the adapter has no shim for "
                                  f"(from {mod} import {', '.join(a.name for a in n.names)}): "
                                  "update examples/unsloth_adapter.py SHIMMED")
            for a in n.names:
                ns[a.asname or a.name] = shims[a.name]
        else:
            body.append(n)
    _exec(body, str(path), ns)
    return ns["fast_cross_entropy_loss"]


fast_cross_entropy_loss = _load()


def unsloth_ce(logits, labels, reduction="mean", ignore_index=-100, n_items=None, logit_softcapping=0,
               logit_scaling=0):
    """fast_cross_entropy_loss through the suite's reductions: 'mean' is its default (n_items
    None: the count of labels != -100), 'sum' is sum / n_items with n_items 1 unless a
    normaliser is given; it has no per-position output ('none').

    Its ignored label is -100, fixed. Another ``ignore_index`` is mapped to -100 here (a label
    equal to it becomes -100), so every ignored position the suite draws reaches unsloth's own
    -100 path; without this the suite would draw no ignored position at all for an API with no
    ignore_index argument (docs/findings.md U9)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"fast_cross_entropy_loss returns sum / n_items, not {reduction!r}")
    if reduction == "sum" and n_items is None:
        n_items = 1
    if ignore_index != -100:
        labels = labels.masked_fill(labels == ignore_index, -100)
    return fast_cross_entropy_loss(logits, labels, logit_softcapping=logit_softcapping,
                                   logit_scaling=logit_scaling, n_items=None if reduction == "mean" else n_items)
