"""The adapter protocol: how the suite calls an implementation under test.

An adapter converts a :class:`~conformance.case.Case` (NumPy arrays in the dtype under
test) into its framework's arrays, calls the implementation, and converts the results back
to NumPy arrays *in the dtype the implementation returned*, so that a wrong output dtype is
seen. It also declares what it supports; anything it leaves out is reported as
"not supported", never counted as passed.

Adapters must not hide exceptions from invalid inputs: the error-contract checks rely on
them propagating.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformance.case import Case
from conformance.diagnostics import UserError

ALL_FEATURES = frozenset({
    "index_target", "probability_target", "weight", "ignore_index", "label_smoothing",
    "reduction_none", "reduction_sum", "reduction_mean", "legacy_arguments", "gradient",
    "gradient_target", "nonfinite", "empty", "linear_bias",
})
#: The linear form (specs/linear_cross_entropy.yaml): an adapter that takes hidden states and a
#: classifier declares "linear" (adapters/llm.py CallForm with hidden/classifier arguments);
#: "linear_bias" (in ALL_FEATURES) says it takes a bias too.
LINEAR = "linear"


@dataclass(frozen=True)
class Capabilities:
    """What an adapter supports; the defaults are full torch semantics."""

    dtypes: frozenset[str] = frozenset({"float16", "bfloat16", "float32", "float64"})
    ranks: frozenset[int] = frozenset({1, 2, 3, 4, 5})
    features: frozenset[str] = ALL_FEATURES
    #: Whether invalid inputs raise (False: jitted code that cannot raise on data).
    raises_on_invalid: bool = True
    #: Named semantic variants of the spec this implementation follows on purpose.
    variants: frozenset[str] = frozenset()
    #: Extra operations exposed for the decomposition checks: "log_softmax", "nll_loss".
    extras: frozenset[str] = frozenset()
    #: Largest number of classes worth sending (memory/time), None for no limit.
    max_classes: int | None = None
    #: LLM-kernel options of the spec's ``extensions:`` the implementation takes (logit_scale,
    #: softcap, z_loss, return_z_loss, return_lse, normalizer, shift); none for F.cross_entropy.
    extensions: frozenset[str] = frozenset()

    def unsupported(self, case: Case, *, need_gradient: bool = False) -> str | None:
        """Why this adapter cannot run ``case``, or None when it can."""
        if case.dtype not in self.dtypes:
            return f"dtype {case.dtype}"
        if case.rank not in self.ranks:
            return f"input rank {case.rank}"
        wanted = set()
        wanted.add("probability_target" if case.target_kind == "probability" else "index_target")
        if case.weight is not None:
            wanted.add("weight")
        if case.ignore_index != -100:
            wanted.add("ignore_index")
        if case.label_smoothing != 0:
            wanted.add("label_smoothing")
        wanted.add(f"reduction_{case.reduction}" if case.reduction in ("none", "sum", "mean") else "reduction_mean")
        if case.legacy:
            wanted.add("legacy_arguments")
        if need_gradient:
            wanted.add("gradient")
        if case.positions == 0:
            wanted.add("empty")
        lin = getattr(case, "linear", None)
        if (lin is not None) != (LINEAR in self.features):
            return ("the linear form (hidden states and a classifier)" if lin is not None
                    else "the logits form (this adapter takes hidden states and a classifier)")
        if lin is not None and lin.get("bias") is not None:
            wanted.add("linear_bias")
        missing = sorted(wanted - set(self.features))
        if missing:
            return ", ".join(missing)
        ext = sorted(k for k in case.extensions if k not in self.extensions)
        if ext:
            return "extension " + ", ".join(ext)
        if self.max_classes is not None and case.num_classes > self.max_classes:
            return f"{case.num_classes} classes > {self.max_classes}"
        return None


class AdapterError(UserError, ValueError):
    """An adapter spec that cannot be resolved; the message says how to fix it."""


class InputsMutated(AssertionError):
    """The implementation wrote into one of its inputs."""

    def __init__(self, names):
        self.names = list(names)
        super().__init__(f"the implementation modified its input(s): {', '.join(self.names)}")


@dataclass
class Result:
    """What one call returned, as NumPy arrays in the implementation's own dtypes."""

    value: np.ndarray
    #: Gradients keyed by input name ("input", "target"), when asked for.
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    #: Warnings the call emitted, as "Category: message" (the spec's
    #: ``signature.deprecated_warning`` says which category a deprecated argument must raise).
    warnings: list[str] = field(default_factory=list)
    #: Extra outputs asked for by the case's extensions ("z_loss", "lse"), NumPy arrays.
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    #: Returned arrays that share memory with an argument or with each other ("output and
    #: argument input"), for adapters that can tell; None when the adapter cannot.
    shared: list[str] | None = None


class Adapter:
    """Base class of every adapter. Subclasses set the class attributes and implement
    :meth:`call`; the optional :meth:`log_softmax` and :meth:`nll_loss` serve the
    decomposition check."""

    name: str = "unnamed"
    framework: str = "unknown"
    device: str = "cpu"
    capabilities: Capabilities = Capabilities()
    #: How to build this adapter again in another process (worker processes, isolated checks,
    #: reproduction scripts): what ``resolve()`` was given, a config file's absolute path.
    #: None: it cannot be rebuilt, so its checks run in the calling process.
    source: str | None = None
    #: The adapter config file it came from (conformance/adapter_config.py), else None.
    config_file: str | None = None
    #: Known-divergence files its config names (``known:``), added to the run's own.
    known_files: tuple[str, ...] = ()
    #: Check kinds that must each run in a fresh process (conformance/runner/isolation.py):
    #: ``("error",)`` where invalid input can end the process (a CUDA device-side assert).
    isolate_kinds: tuple[str, ...] = ()
    #: The built-in adapter that runs the same implementation on the CPU, for the
    #: cross-device agreement check; None for a CPU adapter.
    cpu_twin: str | None = None

    def unavailable(self) -> str | None:
        """A reason this adapter cannot run here (framework missing, no GPU), or None."""
        return None

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        """Run the implementation on ``case``; with ``gradient`` also differentiate
        (the upstream gradient is ``case.upstream``, shaped like the output, whatever the
        reduction; 1 when it is None)."""
        raise NotImplementedError

    # Optional: forward and backward as two steps (Capabilities.extras holds
    # "forward_backward" when implemented), so that two forwards can precede either backward;
    # adapters without them report the interleaved-calls check as not supported.
    def forward(self, case: Case, *, gradient: bool = True) -> Any:
        """Run the forward pass of ``case`` and return a handle for :meth:`backward`."""
        raise NotImplementedError

    def backward(self, handle: Any) -> Result:
        """The :class:`Result` (value and gradients) of a :meth:`forward` handle."""
        raise NotImplementedError

    def log_softmax(self, x: np.ndarray, axis: int) -> np.ndarray:
        raise NotImplementedError

    def nll_loss(self, lp: np.ndarray, target: np.ndarray, *, weight=None, ignore_index=-100,
                 reduction="mean") -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Versions and devices, for the report header."""
        return {"name": self.name, "framework": self.framework, "device": self.device}

    def __repr__(self) -> str:
        return f"<adapter {self.name} ({self.framework}, {self.device})>"


def check_unmodified(before: dict[str, np.ndarray], after: dict[str, Any]) -> None:
    """Raise :class:`InputsMutated` when any array in ``after`` differs from ``before``."""
    changed = []
    for name, a in before.items():
        a, b = np.asarray(a).copy(), np.asarray(after[name]).copy()  # C order: views of any layout
        if a.shape != b.shape or not np.array_equal(a.view(np.uint8) if a.dtype.kind == "V" else a,
                                                    b.view(np.uint8) if b.dtype.kind == "V" else b,
                                                    equal_nan=a.dtype.kind == "f"):
            changed.append(name)
    if changed:
        raise InputsMutated(changed)


def shared_memory(inputs: dict[str, Any], outputs: dict[str, Any]) -> list[str]:
    """Returned NumPy arrays that share memory with an argument or with each other."""
    out = []
    names = list(outputs)
    for i, a in enumerate(names):
        va = outputs[a]
        if not isinstance(va, np.ndarray) or va.size == 0:
            continue
        for k, v in inputs.items():
            if isinstance(v, np.ndarray) and v.size and np.may_share_memory(va, v):
                out.append(f"argument {k} and {a}")
        for b in names[i + 1:]:
            vb = outputs[b]
            if isinstance(vb, np.ndarray) and vb.size and np.may_share_memory(va, vb):
                out.append(f"{a} and {b}")
    return out
