"""Vocabulary-parallel cross-entropy: the project's reference implementation in plain
torch.distributed, and the adapter that judges any such implementation across real ranks.

Large models shard the logits over the vocabulary across tensor-parallel ranks; the loss then
needs all-reduces of the row maximum, of the sum of exponentials and of the target logit,
and that is where the bugs live. :class:`VocabParallelAdapter` runs an implementation in R
worker processes of one process group (:mod:`conformance.distributed`, gloo on CPU, nccl on
CUDA), started once and kept for every example. Per call it moves the class axis last,
splits the logits into R contiguous shards (sizes differ by at most one, so V need not be a
multiple of R unless the implementation says so), calls the implementation on every rank,
checks that every rank returned the same loss (:class:`RanksDisagree` otherwise), and
concatenates the gradient shards. The unchanged oracle judges the result.

A rank implementation is ``fn(logits_shard, target, *, ignore_index, reduction,
label_smoothing, group)`` on torch tensors: ``logits_shard`` is this rank's ``[..., V_r]``
slice in the dtype under test, ``target`` the full ``[...]`` class indices, and ``group``
the process group. :data:`vocab_parallel_cross_entropy` is the reference (torch's label
smoothing); ``VocabParallelCrossEntropy(smoothing="megatron")`` follows the spec variant
``label_smoothing_megatron``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from conformance.adapters.base import Adapter, Capabilities, InputsMutated, Result
from conformance.case import Case

#: What vocabulary-parallel APIs take: index targets over [..., V]; no weight, no
#: probabilities, no deprecated arguments.
VOCAB_PARALLEL_FEATURES = frozenset({
    "index_target", "ignore_index", "label_smoothing", "reduction_none", "reduction_sum",
    "reduction_mean", "gradient", "nonfinite", "empty",
})


class RanksDisagree(AssertionError):
    """The ranks returned different losses for the same call: a failure of its own."""


class RankError(Exception):
    """Every rank raised (the message is rank 0's ``Type: message``): the implementation
    rejected the input, as the error-contract checks want."""


@dataclass(frozen=True)
class VocabParallelCapabilities(Capabilities):
    """Capabilities plus the sharding constraint of the library: with ``even_shards`` a
    case whose V is not a multiple of the world size is not sent (the library assumes
    equal partitions)."""

    world_size: int = 1
    even_shards: bool = False

    def unsupported(self, case: Case, *, need_gradient: bool = False) -> str | None:
        why = super().unsupported(case, need_gradient=need_gradient)
        if why is None and self.even_shards and case.num_classes % self.world_size:
            return f"{case.num_classes} classes is not a multiple of world size {self.world_size}"
        return why


# --------------------------------------------------------------------------- the reference
def _compute_dtype(dtype):
    import torch
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class VocabParallelCrossEntropy:
    """The reference: correct by construction, so that the gate can be trusted.

    Per position: the global maximum (all-reduce MAX), then one all-reduce SUM of three
    partial sums: ``exp(x - max)`` over the shard, the shifted target logit (from the rank
    that owns the target, 0 elsewhere) and, for label smoothing, the shifted logits over the
    smoothed classes: all V of them (``smoothing="torch"``: eps / V on every class) or the
    non-target ones (``"megatron"``: 1 - eps on the target, eps / (V - 1) elsewhere). The MAX
    all-reduce also carries every rank's shard size, so V and this rank's offset are known and
    uneven shards are fine. Half precision is computed in float32 and returned in the input
    dtype; the mean divides by the number of non-ignored positions. Out-of-range labels raise
    IndexError on every rank alike. The backward pass is local (softmax minus the smoothed
    target), as in Megatron-core. Subclasses (tests/planted_distributed.py) override one
    step to plant a bug.
    """

    def __init__(self, smoothing: str = "torch"):
        if smoothing not in ("torch", "megatron"):
            raise ValueError(f"smoothing must be 'torch' or 'megatron', got {smoothing!r}")
        self.smoothing = smoothing

    # ---- the steps a planted bug may replace
    def global_max(self, local_max, reduced_max):
        """The maximum the logits are shifted by: the all-reduced one."""
        return reduced_max

    def smoothing_term(self, lse, total, local, V: int, Vr: int):
        """Mean of -log p over the smoothed classes, from the all-reduced sum of their shifted
        logits ``total`` (``local``: this shard's part, ``Vr``: this shard's size)."""
        n = V - 1 if self.smoothing == "megatron" else V
        return lse - total / n if n > 0 else None

    def check_targets(self, target, valid, V: int):
        """The positions that count (``valid``); an out-of-range label raises IndexError."""
        bad = valid & ((target < 0) | (target >= V))
        if bool(bad.any()):
            raise IndexError(f"Target {int(target[bad][0])} is out of bounds for {V} classes")
        return valid

    def adjust(self, loss, world_size: int):
        """The per-position loss as returned (a hook for planted bugs)."""
        return loss

    # ---- the computation
    def __call__(self, logits, target, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, group=None):
        import torch
        import torch.distributed as dist

        if reduction not in ("none", "sum", "mean"):
            raise ValueError(f"{reduction!r} is not a valid value for reduction")
        eps = float(label_smoothing)
        if not (0.0 <= eps <= 1.0):
            raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"expected integer class indices, got target dtype {target.dtype}")
        if tuple(target.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits shape "
                             f"{tuple(logits.shape)} without the vocabulary axis")
        rank, R = dist.get_rank(group), dist.get_world_size(group)
        x = logits.detach().to(_compute_dtype(logits.dtype))
        rows, Vr = x.shape[:-1], x.shape[-1]
        local_max = x.amax(-1) if Vr else torch.full(rows, -math.inf, dtype=x.dtype, device=x.device)
        sizes = torch.zeros(R, dtype=x.dtype, device=x.device)
        sizes[rank] = Vr
        packed = torch.cat([local_max.reshape(-1), sizes])
        dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=group)
        widths = [int(s) for s in packed[-R:].tolist()]
        V, start = sum(widths), sum(widths[:rank])
        target = target.to(torch.int64)
        valid = target != ignore_index
        valid = self.check_targets(target, valid, V)
        gmax = self.global_max(local_max, packed[:-R].reshape(rows))
        return _Function.apply(logits, x, target, valid, gmax, eps, V, start, reduction, group, R, self)


def _forward(impl, x, gmax, target, valid, eps, V, start, group, R):
    """(per-position loss, local softmax, owned-target mask) in the compute dtype."""
    import torch
    import torch.distributed as dist

    Vr = x.shape[-1]
    shifted = x - gmax.unsqueeze(-1)
    ex = shifted.exp()
    local_t = target - start
    owned_pos = valid & (local_t >= 0) & (local_t < Vr)
    idx = local_t.clamp(0, max(Vr - 1, 0)).unsqueeze(-1)
    owned = torch.zeros_like(x, dtype=torch.bool)
    zeros = torch.zeros_like(gmax)
    if Vr:
        owned.scatter_(-1, idx, owned_pos.unsqueeze(-1))
        t_local = torch.where(owned_pos, shifted.gather(-1, idx).squeeze(-1), zeros)
    else:
        t_local = zeros
    parts = [ex.sum(-1), t_local]
    if eps > 0:
        smoothed = shifted.masked_fill(owned, 0.0) if impl.smoothing == "megatron" else shifted
        parts.append(smoothed.sum(-1))
    local = torch.stack(parts)
    total = local.clone()
    dist.all_reduce(total, group=group)
    lse = total[0].log()
    nll = lse - total[1]
    loss = (1.0 - eps) * nll if eps else nll
    if eps > 0:
        smooth = impl.smoothing_term(lse, total[2], local[2], V, Vr)
        if smooth is not None:
            loss = loss + eps * smooth
    loss = torch.where(valid, loss, zeros)
    return impl.adjust(loss, R), ex / total[0].unsqueeze(-1), owned


def _make_function():
    import torch

    class VocabParallelCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, x, target, valid, gmax, eps, V, start, reduction, group, R, impl):
            if valid.numel() == 0:  # no position: nothing to reduce, on any rank
                loss, p, owned = x.sum(-1), torch.zeros_like(x), torch.zeros_like(x, dtype=torch.bool)
            else:
                loss, p, owned = _forward(impl, x, gmax, target, valid, eps, V, start, group, R)
            count = valid.sum().to(x.dtype)
            out = loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.sum() / count
            ctx.save_for_backward(p, owned, valid)
            ctx.eps, ctx.V, ctx.reduction, ctx.count, ctx.smoothing = eps, V, reduction, count, impl.smoothing
            return out.to(logits.dtype)

        @staticmethod
        def backward(ctx, grad_out):
            p, owned, valid = ctx.saved_tensors
            eps, V = ctx.eps, ctx.V
            oh = owned.to(p.dtype)
            d = (1.0 - eps) * (p - oh) if eps else p - oh
            if eps > 0:
                if ctx.smoothing == "megatron":
                    if V > 1:
                        d = d + (eps * p - eps / (V - 1) * (1.0 - oh))
                else:
                    d = d + eps * (p - 1.0 / V)
            g = grad_out.to(p.dtype)
            if ctx.reduction == "none":
                g = g.unsqueeze(-1)
            elif ctx.reduction == "mean":
                g = g / ctx.count
            d = torch.where(valid.unsqueeze(-1), g * d, torch.zeros_like(d))
            return (d.to(grad_out.dtype),) + (None,) * 11

    return VocabParallelCE


class _Lazy:
    """The autograd Function, built on first use so that this module imports without torch."""

    fn = None

    def apply(self, *args):
        if self.fn is None:
            type(self).fn = _make_function()
        return self.fn.apply(*args)


_Function = _Lazy()

#: The reference rank implementation (torch's label smoothing convention).
vocab_parallel_cross_entropy = VocabParallelCrossEntropy()
#: The reference in Megatron's label smoothing convention (spec variant label_smoothing_megatron).
vocab_parallel_cross_entropy_megatron = VocabParallelCrossEntropy(smoothing="megatron")


# --------------------------------------------------------------------------- one rank's call
def run_rank(task: dict[str, Any]) -> dict[str, Any]:
    """Runs in a worker: ``task`` carries this rank's shard; returns NumPy arrays."""
    import torch
    import torch.distributed as dist

    from conformance.adapters.torch_adapter import _same_bits, to_numpy, to_tensor

    device = task["device"]
    if device.startswith("cuda"):
        device = f"cuda:{torch.cuda.current_device()}"
    x = to_tensor(task["x"], device)
    target = to_tensor(task["target"], device)
    pristine = (x.clone(), target.clone())
    if task["gradient"]:
        x.requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = task["fn"](x, target, ignore_index=task["ignore_index"], reduction=task["reduction"],
                         label_smoothing=task["label_smoothing"], group=dist.group.WORLD)
        grad = None
        if task["gradient"]:
            up = task["upstream"]
            g = torch.ones_like(out) if up is None else to_tensor(up, device).to(out.dtype).reshape(out.shape)
            (grad,) = torch.autograd.grad(out, [x], g, allow_unused=True)
            grad = torch.zeros_like(x) if grad is None else grad
    mutated = [n for n, a, b in (("input", x, pristine[0]), ("target", target, pristine[1]))
               if not _same_bits(a.detach(), b)]
    return {"value": to_numpy(out), "grad": None if grad is None else to_numpy(grad),
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught], "mutated": mutated}


def shard_bounds(V: int, R: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) per rank; sizes differ by at most one (the first V % R ranks
    get one more), so some shards are empty when V < R."""
    base, extra = divmod(V, R)
    out, at = [], 0
    for r in range(R):
        n = base + (1 if r < extra else 0)
        out.append((at, at + n))
        at += n
    return out


def _show(a: np.ndarray) -> str:
    a = np.asarray(a)
    if a.size <= 4:
        return np.array2string(a.astype(np.float64).reshape(-1) if a.ndim else a.astype(np.float64),
                               precision=17, separator=", ") if a.size else "[]"
    return f"array{tuple(a.shape)} (sum {float(np.nansum(a.astype(np.float64))):.17g})"


# --------------------------------------------------------------------------- the adapter
class VocabParallelAdapter(Adapter):
    """A rank implementation (see the module docstring) run across ``world_size`` ranks.

    ``timeout`` bounds one call on every rank (hung ranks are killed); ``even_shards``
    declares that the library needs V to be a multiple of the world size."""

    framework = "torch.distributed"
    capabilities: VocabParallelCapabilities

    def __init__(self, fn: Callable, name: str, *, world_size: int = 2, device: str = "cpu",
                 backend: str | None = None, timeout: float = 60.0, even_shards: bool = False,
                 capabilities: Capabilities | None = None, variants: frozenset[str] = frozenset()):
        self.fn, self.name, self.device, self.timeout = fn, name, device, timeout
        self.backend = backend
        caps = capabilities or Capabilities(features=VOCAB_PARALLEL_FEATURES)
        self.capabilities = VocabParallelCapabilities(**{**caps.__dict__, "variants": caps.variants | variants,
                                                         "even_shards": even_shards})
        self._world_size = 1
        self.world_size = world_size
        self._pool = None

    @property
    def world_size(self) -> int:
        return self._world_size

    @world_size.setter
    def world_size(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"world_size must be a positive integer, got {value!r}")
        self._world_size = value
        self.capabilities = replace(self.capabilities, world_size=value)
        pool = getattr(self, "_pool", None)
        if pool is not None and pool.world_size != value:
            pool.close()
            self._pool = None

    def __copy__(self):
        # adapter configs copy the adapter: the copy gets its own (not yet started) group
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._pool = None
        return new

    def unavailable(self) -> str | None:
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            return "torch is not installed"
        if not dist.is_available():
            return "this torch build has no torch.distributed"
        if self.device.startswith("cuda") and torch.cuda.device_count() < 1:
            return "no CUDA device visible"
        return None

    @property
    def pool(self):
        from conformance.distributed import RankPool

        if self._pool is None:
            backend = self.backend or ("nccl" if self.device.startswith("cuda") else "gloo")
            self._pool = RankPool(self.world_size, backend=backend, timeout=self.timeout, device=self.device)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        from conformance.distributed import AllRanksRaised

        x = np.moveaxis(case.x, case.class_axis, -1)
        bounds = shard_bounds(case.num_classes, self.world_size)
        upstream = case.upstream
        tasks = [{"fn": self.fn, "x": np.ascontiguousarray(x[..., a:b]), "target": np.asarray(case.target),
                  "ignore_index": case.ignore_index, "reduction": case.reduction,
                  "label_smoothing": case.label_smoothing, "gradient": gradient, "upstream": upstream,
                  "device": self.device} for a, b in bounds]
        pool = self.pool
        pool.timeout = self.timeout  # settable between calls
        try:
            outs = pool.run(run_rank, tasks)
        except AllRanksRaised as exc:
            raise RankError(str(exc)) from None
        mutated = sorted({n for o in outs for n in o["mutated"]})
        if mutated:
            raise InputsMutated(mutated)
        first = outs[0]["value"]
        for o in outs[1:]:
            v = o["value"]
            if v.dtype != first.dtype or v.shape != first.shape or not np.array_equal(
                    v.astype(np.float64), first.astype(np.float64), equal_nan=True):
                raise RanksDisagree("ranks disagree: " + ", ".join(
                    f"rank {i} loss={_show(p['value'])}" for i, p in enumerate(outs)))
        grads = {}
        if gradient:
            g = np.concatenate([o["grad"] for o in outs], axis=-1)
            grads["input"] = np.moveaxis(g, -1, case.class_axis)
        return Result(first, grads, outs[0]["warnings"])

    def info(self) -> dict[str, Any]:
        d = super().info()
        d["world_size"] = self.world_size
        d["backend"] = self.backend or ("nccl" if self.device.startswith("cuda") else "gloo")
        try:
            import torch
            d["torch"] = torch.__version__
        except ImportError:
            pass
        return d


class ReferenceVocabParallel(VocabParallelAdapter):
    """The reference across 2 ranks (``world_size:`` in an adapter config changes it)."""

    def __init__(self, world_size: int = 2, timeout: float = 60.0):
        super().__init__(vocab_parallel_cross_entropy, "vocab-parallel-reference", world_size=world_size,
                         timeout=timeout)


class ReferenceVocabParallelMegatron(VocabParallelAdapter):
    """The reference with Megatron's label smoothing, declaring that variant."""

    def __init__(self, world_size: int = 2, timeout: float = 60.0):
        super().__init__(vocab_parallel_cross_entropy_megatron, "vocab-parallel-reference-megatron",
                         world_size=world_size, timeout=timeout,
                         variants=frozenset({"label_smoothing_megatron"}))
