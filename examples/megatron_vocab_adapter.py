"""Megatron-core's ``vocab_parallel_cross_entropy`` across real ranks (gloo on CPU).

``megatron.core.tensor_parallel.vocab_parallel_cross_entropy(vocab_parallel_logits [s, b,
V/tp], target [s, b], label_smoothing=0.0)`` uses the tensor-parallel group of
``megatron.core.parallel_state``; each worker initialises it once, with the whole group as
the tensor-parallel group. It returns the per-token loss (no reduction, no ignore_index, no
weight), takes Megatron's label smoothing (spec variant ``label_smoothing_megatron``) and
assumes equal shards (``vocab_start = rank * V_local``), so V must be a multiple of the world
size. Install it without letting pip touch torch: ``pip install --no-deps megatron-core``.

- ``MegatronVocabParallel`` (vocab_parallel_megatron_core.yaml) hands Megatron a copy of the
  shard: in float32 Megatron overwrites its input with the softmax (in-place subtraction and
  ``exp(out=)``), which the suite would otherwise report on every call.
- ``MegatronVocabParallelRaw`` (vocab_parallel_megatron_core_raw.yaml) is Megatron as users
  call it.
"""
from __future__ import annotations

from conformance.adapters.base import Capabilities
from conformance.adapters.vocab_parallel import VocabParallelAdapter

FEATURES = frozenset({"index_target", "label_smoothing", "reduction_none", "gradient", "nonfinite", "empty"})


def _megatron(logits, target, label_smoothing):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=dist.get_world_size())
    return vocab_parallel_cross_entropy(logits, target, label_smoothing)


def megatron_cross_entropy(logits, target, *, ignore_index=-100, reduction="none", label_smoothing=0.0,
                           group=None):
    """Megatron as called in training: the shard itself."""
    if reduction != "none":
        raise ValueError(f"megatron-core returns per-token losses only (reduction {reduction!r})")
    return _megatron(logits, target, label_smoothing)


def megatron_on_a_copy(logits, target, *, ignore_index=-100, reduction="none", label_smoothing=0.0,
                       group=None):
    """Megatron on a copy of the shard, so that its values and gradients can be judged."""
    if reduction != "none":
        raise ValueError(f"megatron-core returns per-token losses only (reduction {reduction!r})")
    return _megatron(logits.clone(), target, label_smoothing)


class MegatronVocabParallel(VocabParallelAdapter):
    def __init__(self, world_size: int = 2, timeout: float = 60.0):
        super().__init__(megatron_on_a_copy, "megatron-core-vocab-parallel", world_size=world_size, timeout=timeout,
                         even_shards=True, capabilities=Capabilities(features=FEATURES),
                         variants=frozenset({"label_smoothing_megatron"}))

    def unavailable(self):
        import importlib.util
        if importlib.util.find_spec("megatron") is None:
            return "megatron-core is not installed (pip install --no-deps megatron-core)"
        return super().unavailable()

    def info(self):
        d = super().info()
        try:
            from importlib.metadata import version
            d["megatron-core"] = version("megatron-core")
        except Exception:  # noqa: BLE001 - installed without metadata (PYTHONPATH)
            pass
        return d


class MegatronVocabParallelRaw(MegatronVocabParallel):
    def __init__(self, world_size: int = 2, timeout: float = 60.0):
        super().__init__(world_size=world_size, timeout=timeout)
        self.fn, self.name = megatron_cross_entropy, "megatron-core-vocab-parallel-raw"
