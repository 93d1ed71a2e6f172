"""cut-cross-entropy's ``linear_cross_entropy`` (Apple, ``pip install --no-deps cut-cross-entropy``)
on CPU, through its own ``impl="torch_compile"`` path (config cce_linear.yaml).

That path is ``torch.compile(fullgraph=True, dynamic=True)``: every new dtype, reduction,
softcap-or-not and requires_grad combination compiles again, and past torch's recompile limit
(8) ``fullgraph=True`` makes the call raise ``FailOnRecompileLimitHit``. A user has one
configuration per process; the suite calls hundreds, so the limit is raised here (the run
itself does not judge the compiler's cache). The Triton kernel (``impl="cce"``) needs a GPU
(docs/findings.md, "cut-cross-entropy").
"""
from __future__ import annotations

import torch._dynamo

from cut_cross_entropy import linear_cross_entropy

torch._dynamo.config.recompile_limit = 1024
torch._dynamo.config.accumulated_recompile_limit = 4096


def cce_torch_compile(e, c, targets, **kw):
    """``linear_cross_entropy(e, c, targets, impl="torch_compile", **kw)``."""
    return linear_cross_entropy(e, c, targets, impl="torch_compile", **kw)


def cce_kernel(e, c, targets, **kw):
    """The Triton kernel path (``impl="cce"``, the library's default off macOS)."""
    return linear_cross_entropy(e, c, targets, impl="cce", **kw)
