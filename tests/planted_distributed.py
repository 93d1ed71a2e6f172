"""Vocabulary-parallel implementations with planted bugs, and ranks that fail on purpose.

Each bug is one step of the reference (conformance.adapters.vocab_parallel) done the way a
shipped implementation got it wrong. ``BUGGY`` maps each to the checks that must catch it
at world size 2 (tests/test_distributed.py); at world size 1 the first three are invisible,
which is why the gate runs real ranks. The fault functions make one rank raise, hang or die,
for the containment tests. Everything here is module-level so that it pickles to the workers.
"""
from __future__ import annotations

import math
import os
import time

from conformance.adapters.vocab_parallel import VocabParallelCrossEntropy


class LocalVocabSmoothing(VocabParallelCrossEntropy):
    """The smoothing term averages this shard's log-probabilities over the local V
    (Megatron-core's vocab_size = exp_logits.size(-1)): ranks disagree when eps > 0."""

    def smoothing_term(self, lse, total, local, V, Vr):
        return lse - local / Vr if Vr else None


class NoMaxAllReduce(VocabParallelCrossEntropy):
    """Each rank shifts by its own maximum: the sums of exponentials it adds up are on
    different scales."""

    def global_max(self, local_max, reduced_max):
        return local_max


class PlusLogR(VocabParallelCrossEntropy):
    """The loss is off by log(R): the sum of exponentials counted R times, as when the
    output is gathered instead of kept parallel."""

    def adjust(self, loss, world_size):
        return loss + math.log(world_size)


class OutOfRangeGivesZero(VocabParallelCrossEntropy):
    """No range check: a label < 0 or >= V is owned by no rank and its position silently
    gets loss 0, as an ignored one would."""

    def check_targets(self, target, valid, V):
        return valid & (target >= 0) & (target < V)


local_vocab_smoothing = LocalVocabSmoothing()
no_max_allreduce = NoMaxAllReduce()
plus_log_r = PlusLogR()
out_of_range_gives_zero = OutOfRangeGivesZero()

#: planted bug -> checks that must catch it (world size 2)
BUGGY = {
    "local_vocab_smoothing": ["forward.index", "gradient.index"],
    "no_max_allreduce": ["forward.index"],
    "plus_log_r": ["forward.index"],
    "out_of_range_gives_zero": ["error.target_out_of_range_high", "error.target_out_of_range_negative"],
}


# --------------------------------------------------------------------------- faulty ranks
# Rank implementations (the adapter's signature) whose rank 1 fails; rank 0 returns at once,
# without a collective, so that only rank 1 is at fault.
def raise_on_rank_1(logits, target, **kw):
    import torch.distributed as dist
    if dist.get_rank() == 1:
        raise RuntimeError("planted failure on rank 1")
    return logits.sum()


def hang_on_rank_1(logits, target, **kw):
    import torch.distributed as dist
    if dist.get_rank() == 1:
        time.sleep(3600)
    return logits.sum()


def die_on_rank_1(logits, target, **kw):
    import torch.distributed as dist
    if dist.get_rank() == 1:
        os._exit(7)
    return logits.sum()
