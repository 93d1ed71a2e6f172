"""Torch adapters: any callable with F.cross_entropy's signature, or any nn.Module class with
nn.CrossEntropyLoss's constructor, on a chosen device.

The adapter converts a case's NumPy arrays into tensors exactly (bfloat16 through float32),
keeps pristine clones to catch in-place writes, records warnings, differentiates with
``torch.autograd.grad`` and hands back NumPy arrays in the dtypes the implementation
returned. torch is imported lazily, so this module imports without it.
"""
from __future__ import annotations

import platform
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ml_dtypes
import numpy as np

from conformance import layouts
from conformance.adapters.base import Adapter, Capabilities, InputsMutated, Result
from conformance.case import Case
from conformance.layouts import strided_parts

_BF16 = np.dtype(ml_dtypes.bfloat16)


def to_tensor(a, device: str = "cpu"):
    """A NumPy array as a new tensor (never sharing memory with ``a``), exactly, with ``a``'s
    memory layout: a strided view of a bigger buffer (conformance/layouts.py: transposed,
    sliced with a storage offset, channels-last, expanded with stride 0) becomes the same view
    (strides and storage offset) of a tensor copy of that buffer, so that the implementation
    receives the layout, not a contiguous copy."""
    import torch

    a = np.asarray(a)
    parts = None if a.flags.c_contiguous and a.base is None else strided_parts(a)
    if parts is not None:
        root, offset, strides = parts
        return torch.as_strided(_plain_tensor(root, device), tuple(a.shape), strides, offset)
    return _plain_tensor(a, device)


def _plain_tensor(a: np.ndarray, device: str):
    import torch

    if a.dtype == _BF16:
        return torch.from_numpy(np.asarray(a, dtype=np.float32, order="C").copy()).to(torch.bfloat16).to(device)
    return torch.from_numpy(np.array(a, copy=True, order="C")).to(device)


def to_numpy(t) -> np.ndarray:
    """A tensor as a NumPy array in the tensor's own dtype (bfloat16 -> ml_dtypes, exactly)."""
    import torch

    if not isinstance(t, torch.Tensor):
        return np.asarray(t)
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(_BF16)
    return np.array(t.numpy(), copy=True)


def _shared_storage(tensors: dict) -> list[str]:
    """Pairs of returned tensors (output, gradients) that share storage with an argument or
    with each other: "output and argument input"."""
    import torch

    def span(t):
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return None
        st = t.untyped_storage()
        return st.data_ptr(), st.nbytes()

    names = list(tensors)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a.startswith("argument") and b.startswith("argument"):
                continue
            sa, sb = span(tensors[a]), span(tensors[b])
            if sa and sb and sa[0] < sb[0] + sb[1] and sb[0] < sa[0] + sa[1]:
                out.append(f"{a} and {b}" if not b.startswith("argument") else f"{b} and {a}")
    return out


def _same_bits(a, b) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.is_floating_point():
        as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))
    return torch.equal(a, b)


# Lazy stand-ins for torch's functions, so the factories work without torch installed.
def _cross_entropy(*args, **kwargs):
    import torch.nn.functional as F
    return F.cross_entropy(*args, **kwargs)


def _cross_entropy_loss(**kwargs):
    import torch
    return torch.nn.CrossEntropyLoss(**kwargs)


def _log_softmax(x, dim):
    import torch.nn.functional as F
    return F.log_softmax(x, dim=dim)


def _nll_loss(lp, target, **kwargs):
    import torch.nn.functional as F
    return F.nll_loss(lp, target, **kwargs)


TORCH_EXTRAS: dict[str, Callable[..., Any]] = {"log_softmax": _log_softmax, "nll_loss": _nll_loss}


class TorchFunctionAdapter(Adapter):
    """A callable ``fn(input, target, weight=, ignore_index=, reduction=, label_smoothing=
    [, size_average=, reduce=])`` on torch tensors. ``extras`` maps "log_softmax" and
    "nll_loss" to ``fn(x, dim)`` and ``fn(lp, target, weight=, ignore_index=, reduction=)``."""

    framework = "torch"
    #: Check kinds the engine runs in a child process (conformance.runner.isolation): on CUDA an
    #: out-of-range class index trips a device-side assert that poisons the context.
    isolate_kinds: tuple[str, ...] = ()

    def __init__(self, fn: Callable, name: str, device: str = "cpu",
                 capabilities: Capabilities = Capabilities(),  # noqa: B008 (frozen: sharing is safe)
                 extras: dict[str, Callable] | None = None):
        self.fn, self.name, self.device = fn, name, device
        self.extras = dict(extras or {})
        self.capabilities = replace(capabilities, extras=capabilities.extras | frozenset(self.extras)
                                    | {"forward_backward"})
        if device.startswith("cuda"):
            self.isolate_kinds = ("error",)
            self.cpu_twin = "torch-cpu"  # for the cross-device agreement check

    def unavailable(self) -> str | None:
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return "no CUDA device visible"
        return None

    def _invoke(self, x, target, kwargs: dict[str, Any]):
        return self.fn(x, target, **kwargs)

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        handle = self.forward(case, gradient=gradient)
        return self.backward(handle) if gradient else self._finish(handle, {})

    def forward(self, case: Case, *, gradient: bool = True) -> dict:
        """Run the implementation's forward pass and keep its autograd graph: the handle
        :meth:`backward` differentiates later (two forwards may precede either backward)."""
        # the case's memory layout, built here once (conformance/layouts.py), reaches the
        # implementation as the same strided view of a tensor buffer
        inputs = {k: to_tensor(v, self.device) for k, v in layouts.arrays(case).items()}
        pristine = {k: v.clone() for k, v in inputs.items()}
        x, target = inputs["input"], inputs["target"]
        wrt = {"input": x}
        if gradient:
            x.requires_grad_(True)
            if case.target_kind == "probability" and target.is_floating_point():
                target.requires_grad_(True)
                wrt["target"] = target
        kwargs = {"weight": inputs.get("weight"), "ignore_index": case.ignore_index,
                  "reduction": case.reduction, "label_smoothing": case.label_smoothing}
        if case.legacy:
            kwargs.update(case.legacy)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self._invoke(x, target, kwargs)
        return {"case": case, "inputs": inputs, "pristine": pristine, "wrt": wrt, "out": out,
                "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}

    def backward(self, handle: dict) -> Result:
        """Differentiate a :meth:`forward` handle with the case's upstream gradient."""
        import torch

        case, out, wrt = handle["case"], handle["out"], handle["wrt"]
        if case.upstream is not None:
            g = to_tensor(case.upstream, self.device).to(out.dtype).reshape(out.shape)
        else:
            g = torch.ones_like(out)
        got = torch.autograd.grad(out, list(wrt.values()), g, allow_unused=True)
        grads = {k: (torch.zeros_like(v) if d is None else d) for (k, v), d in zip(wrt.items(), got)}
        return self._finish(handle, grads)

    def _finish(self, handle: dict, grads: dict) -> Result:
        inputs, pristine, out = handle["inputs"], handle["pristine"], handle["out"]
        changed = [k for k, v in inputs.items() if not _same_bits(v.detach(), pristine[k])]
        if changed:
            raise InputsMutated(changed)
        res = Result(to_numpy(out), {k: to_numpy(v) for k, v in grads.items()}, handle["warnings"])
        res.shared = _shared_storage({**{f"argument {k}": v for k, v in inputs.items()},
                                      "output": out, **{f"gradient[{k}]": v for k, v in grads.items()}})
        return res

    # ------------------------------------------------------------------ decomposition extras
    def _extra(self, name: str) -> Callable:
        if name not in self.extras:
            raise NotImplementedError(f"{self.name} does not provide {name}")
        return self.extras[name]

    def log_softmax(self, x: np.ndarray, axis: int) -> np.ndarray:
        return to_numpy(self._extra("log_softmax")(to_tensor(x, self.device), axis))

    def nll_loss(self, lp, target, *, weight=None, ignore_index=-100, reduction="mean"):
        w = None if weight is None else to_tensor(weight, self.device)
        out = self._extra("nll_loss")(to_tensor(lp, self.device), to_tensor(target, self.device),
                                      weight=w, ignore_index=ignore_index, reduction=reduction)
        return to_numpy(out)

    def info(self) -> dict[str, Any]:
        d = super().info()
        try:
            import torch
        except ImportError:
            return d
        d["torch"] = torch.__version__
        if self.device.startswith("cuda"):
            d["device_name"] = torch.cuda.get_device_name(self.device) if torch.cuda.is_available() else "unavailable"
        else:
            d["device_name"] = platform.processor() or platform.machine() or "cpu"
        return d


class ModuleClassAdapter(TorchFunctionAdapter):
    """An nn.Module class built per call as ``cls(weight=, ignore_index=, reduction=,
    label_smoothing=[, size_average=, reduce=])`` and called as ``module(input, target)``."""

    def _invoke(self, x, target, kwargs: dict[str, Any]):
        module = self.fn(**kwargs)
        if hasattr(module, "to"):
            module = module.to(self.device)
        return module(x, target)


def torch_cpu() -> TorchFunctionAdapter:
    return TorchFunctionAdapter(_cross_entropy, "torch-cpu", "cpu", extras=TORCH_EXTRAS)


def torch_cuda() -> TorchFunctionAdapter:
    return TorchFunctionAdapter(_cross_entropy, "torch-cuda", "cuda", extras=TORCH_EXTRAS)


def torch_module_cpu() -> ModuleClassAdapter:
    return ModuleClassAdapter(_cross_entropy_loss, "torch-module-cpu", "cpu")
