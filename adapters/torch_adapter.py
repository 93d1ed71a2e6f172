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
from dataclasses import replace
from typing import Any, Callable

import ml_dtypes
import numpy as np

from conformance.adapters.base import Adapter, Capabilities, InputsMutated, Result
from conformance.case import Case

_BF16 = np.dtype(ml_dtypes.bfloat16)


def to_tensor(a, device: str = "cpu"):
    """A NumPy array as a new tensor (never sharing memory with ``a``), exactly."""
    import torch

    a = np.asarray(a)
    if a.dtype == _BF16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16).to(device)
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


TORCH_EXTRAS = {"log_softmax": _log_softmax, "nll_loss": _nll_loss}


class TorchFunctionAdapter(Adapter):
    """A callable ``fn(input, target, weight=, ignore_index=, reduction=, label_smoothing=
    [, size_average=, reduce=])`` on torch tensors. ``extras`` maps "log_softmax" and
    "nll_loss" to ``fn(x, dim)`` and ``fn(lp, target, weight=, ignore_index=, reduction=)``."""

    framework = "torch"
    #: Check kinds the engine runs in a child process (conformance.runner.isolation): on CUDA an
    #: out-of-range class index trips a device-side assert that poisons the context.
    isolate_kinds: tuple[str, ...] = ()

    def __init__(self, fn: Callable, name: str, device: str = "cpu",
                 capabilities: Capabilities = Capabilities(), extras: dict[str, Callable] | None = None):
        self.fn, self.name, self.device = fn, name, device
        self.extras = dict(extras or {})
        self.capabilities = replace(capabilities, extras=capabilities.extras | frozenset(self.extras))
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
        import torch

        inputs = {"input": to_tensor(case.x, self.device), "target": to_tensor(case.target, self.device)}
        if case.weight is not None:
            inputs["weight"] = to_tensor(case.weight, self.device)
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
        grads = {}
        if gradient:
            if case.upstream is not None:
                g = to_tensor(case.upstream, self.device).to(out.dtype).reshape(out.shape)
            else:
                g = torch.ones_like(out)
            got = torch.autograd.grad(out, list(wrt.values()), g, allow_unused=True)
            grads = {k: to_numpy(torch.zeros_like(v) if d is None else d) for (k, v), d in zip(wrt.items(), got)}
        changed = [k for k, v in inputs.items() if not _same_bits(v.detach(), pristine[k])]
        if changed:
            raise InputsMutated(changed)
        return Result(to_numpy(out), grads, [f"{w.category.__name__}: {w.message}" for w in caught])

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
