"""``--shard i/n``: which adapter x check items one of n machines (or CI jobs) runs.

The split must be the same on every shard without talking to the others, and even in time,
not in count: a forward check of JAX costs a hundred times an error check of NumPy. So every
item gets an expected cost from a small model, and the items are dealt out largest first,
each to the shard with the least expected cost so far (ties: the lower shard), in a fixed
order (cost, then id): every shard computes the same assignment from the same item list.

The cost model (seconds, measured on a 2-core machine, default profile; see README
"Performance"): ``examples x per-example cost of the check kind x the adapter's factor``,
plus a fixed cost per item. ``examples`` is the check's examples for the profile plus, for
forward and gradient checks, the covering-array rows and the pattern probes of the profile.
Only ratios matter for the split; the figures are rough and only need to rank items.
"""
from __future__ import annotations

import re

from ..diagnostics import UserError

#: Seconds per example by check kind on the NumPy reference (the adapter factor scales it).
PER_EXAMPLE_S = {"forward": 0.018, "gradient": 0.036, "special": 0.013, "error": 0.008,
                 "metamorphic": 0.011, "decomposition": 0.012, "crossdevice": 0.02}
#: Extra examples of forward/gradient checks per profile: covering rows, shrinking, probes.
EXTRA_EXAMPLES = {"quick": 24, "default": 90, "thorough": 300}
#: Relative cost of one example by adapter framework (JAX pays for compilations).
FRAMEWORK_FACTOR = {"numpy": 1.0, "torch": 1.6, "jax": 2.5}
#: Fixed seconds per item (worker round trip, Hypothesis set-up, bookkeeping).
PER_ITEM_S = 0.05


class ShardError(UserError, ValueError):
    """A malformed --shard (exit 2 in the CLI)."""


def parse(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ShardError(f"--shard {text}: expected I/N, e.g. 1/4 (the first of four shards)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ShardError(f"--shard {text}: I must be between 1 and N (N >= 1); fix: e.g. --shard 1/{max(n, 1)}")
    return i, n


def cost(check, profile: str, framework: str = "numpy", *, available: bool = True) -> float:
    """Expected seconds of one item (an adapter that cannot run here costs only the item)."""
    if not available:
        return PER_ITEM_S
    examples = check.max_examples.get(profile, 0)
    if check.kind in ("forward", "gradient"):
        examples += EXTRA_EXAMPLES.get(profile, 90)
    per = PER_EXAMPLE_S.get(check.kind, 0.01) * FRAMEWORK_FACTOR.get(framework, 1.5)
    return PER_ITEM_S + examples * per


def assign(items: list[tuple[str, float]], n: int) -> dict[str, int]:
    """Item id -> shard (1..n): longest expected cost first, each to the least loaded shard."""
    load = [0.0] * n
    out: dict[str, int] = {}
    for item_id, c in sorted(items, key=lambda t: (-t[1], t[0])):
        k = min(range(n), key=lambda j: (load[j], j))
        load[k] += c
        out[item_id] = k + 1
    return out


def select(adapters: dict, checks: list, profile: str, shard: str | None) -> list[tuple[str, object]]:
    """The (adapter name, check) pairs of this shard, in the usual order (all without a shard)."""
    pairs = [(name, c) for name, a in adapters.items() for c in checks]
    if not shard:
        return pairs
    i, n = parse(shard)
    available = {name: _available(a) for name, a in adapters.items()}
    costs = [(f"{name}::{c.id}", cost(c, profile, getattr(adapters[name], "framework", "?"),
                                      available=available[name])) for name, c in pairs]
    where = assign(costs, n)
    return [(name, c) for name, c in pairs if where[f"{name}::{c.id}"] == i]


def _available(adapter) -> bool:
    try:
        return not adapter.unavailable()
    except Exception:  # noqa: BLE001 - judged again when the item runs
        return True
