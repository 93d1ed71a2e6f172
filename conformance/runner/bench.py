"""``ce-conformance bench``: how fast the suite is, and how fast it finds bugs.

A gate is used only if it is fast, so its speed is tracked like its verdicts. Four parts,
printed as a table and as JSON (``--json FILE`` keeps it):

- ``runs``: every check of each adapter in this process (no worker processes, so adapter
  calls can be timed), per profile: wall time, the share of it inside adapter calls (the rest
  is the harness: strategies, oracle, comparison, bookkeeping), JAX calls served by an already
  compiled function. The JAX persistent compilation cache is off here: cold figures.
- ``planted``: each planted bug of ``tests/planted.py`` (a source checkout only) in the
  default profile, its checks run in order until one fails: seconds and examples to the first
  failing example, median and worst over ``--seeds`` seeds.
- ``oracle``: the float64 oracle on one float32 case of P*C = 2^20 and 2^24 (C = 1024):
  elements per second and peak extra memory (tracemalloc: NumPy reports its buffers to it),
  also as a multiple of the logits' size.

``scripts/bench.py`` is the same with the CLI's options.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_ADAPTERS = ["numpy", "torch-cpu", "jax-cpu"]


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "load_1min_at_start": load}


# --------------------------------------------------------------------------- runs
def bench_runs(profiles: list[str], adapters: list[str], seed: int) -> list[dict[str, Any]]:
    from conformance.adapters import resolve

    from ..checks import Context, catalogue
    from ..engine import run_check
    from ..spec import load_default

    spec = load_default()
    extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
    out: list[dict[str, Any]] = []
    for profile in profiles:
        for name in adapters:
            adapter = resolve(name)
            why = adapter.unavailable()
            if why:
                out.append({"profile": profile, "adapter": name, "skipped": why})
                continue
            inside = _time_calls(adapter)
            ctx = Context(spec, adapter, profile=profile, extra_specs=extra)
            statuses: dict[str, int] = {}
            examples = 0
            t0 = time.perf_counter()
            for check in catalogue(spec):
                r = run_check(ctx, check, seed=seed)
                statuses[r.status] = statuses.get(r.status, 0) + 1
                examples += r.examples
            wall = time.perf_counter() - t0
            row = {"profile": profile, "adapter": name, "wall_s": round(wall, 2), "examples": examples,
                   "adapter_calls": inside["n"], "adapter_s": round(inside["t"], 2),
                   "harness_share": round(max(0.0, wall - inside["t"]) / wall, 3) if wall else None,
                   "statuses": statuses}
            hits, misses = getattr(adapter, "cache_hits", None), getattr(adapter, "cache_misses", None)
            if hits is not None:
                row["jax_compiled_hits"] = hits
                row["jax_compilations"] = misses
                row["jax_hit_share"] = round(hits / max(1, hits + misses), 3)
            out.append(row)
    return out


def _time_calls(adapter) -> dict[str, float]:
    inside = {"t": 0.0, "n": 0}
    for meth in ("call", "log_softmax", "nll_loss"):
        orig = getattr(adapter, meth, None)
        if orig is None:
            continue

        def timed(*a, _orig=orig, **k):
            t0 = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                inside["t"] += time.perf_counter() - t0
                inside["n"] += 1
        setattr(adapter, meth, timed)
    return inside


# --------------------------------------------------------------------------- planted bugs
def _planted():
    tests = Path(__file__).resolve().parents[2] / "tests"
    if not (tests / "planted.py").is_file():
        return None
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    import planted

    return planted


def bench_planted(seeds: int, profile: str = "default") -> dict[str, Any]:
    planted = _planted()
    if planted is None:
        return {"skipped": "tests/planted.py is not here (a source checkout has it)"}
    from conformance.adapters.base import Capabilities
    from conformance.adapters.torch_adapter import TorchFunctionAdapter

    from ..checks import Context, catalogue
    from ..engine import run_check
    from ..spec import load_default

    spec = load_default()
    extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
    checks = {c.id: c for c in catalogue(spec)}
    bugs: dict[str, Any] = {}
    for name in sorted(planted.BUGGY):
        adapter = TorchFunctionAdapter(getattr(planted, name), f"planted-{name}", capabilities=Capabilities())
        ctx = Context(spec, adapter, profile=profile, extra_specs=extra)
        per_seed = []
        for seed in range(seeds):
            spent_s, spent_n, found = 0.0, 0, None
            for cid in planted.BUGGY[name]:
                r = run_check(ctx, checks[cid], seed=seed)
                if r.status == "failed" and r.first_failure:
                    found = {"check": cid, "seconds": round(spent_s + r.first_failure["seconds"], 3),
                             "examples": spent_n + r.first_failure["examples"]}
                    break
                spent_s += r.duration_s
                spent_n += r.examples
            per_seed.append(found or {"check": None, "seconds": round(spent_s, 3), "examples": spent_n})
        caught = [p for p in per_seed if p["check"]]
        secs = [p["seconds"] for p in caught] or [float("nan")]
        exs = [p["examples"] for p in caught] or [0]
        bugs[name] = {"caught": f"{len(caught)}/{seeds}", "median_s": round(statistics.median(secs), 3),
                      "worst_s": round(max(secs), 3), "median_examples": statistics.median(exs),
                      "worst_examples": max(exs), "seeds": per_seed}
    medians = [b["median_s"] for b in bugs.values()]
    return {"profile": profile, "seeds": seeds, "bugs": bugs,
            "all_caught": all(b["caught"] == f"{seeds}/{seeds}" for b in bugs.values()),
            "median_of_medians_s": round(statistics.median(medians), 3),
            "worst_s": round(max(b["worst_s"] for b in bugs.values()), 3)}


# --------------------------------------------------------------------------- oracle
def bench_oracle(max_log2: int = 24, classes: int = 1024) -> list[dict[str, Any]]:
    import tracemalloc

    import numpy as np

    from ..case import Case
    from ..oracle import Oracle
    from ..spec import load_default

    oracle = Oracle(load_default())
    out = []
    for log2 in (20, 24):
        if log2 > max_log2:
            continue
        P = (1 << log2) // classes
        rng = np.random.default_rng(0)
        case = Case(x=rng.standard_normal((P, classes), dtype=np.float32), target=rng.integers(0, classes, P))
        logits = case.x.nbytes
        t0 = time.perf_counter()
        oracle.evaluate(case, gradients=True)
        seconds = time.perf_counter() - t0
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        oracle.evaluate(case, gradients=True)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        out.append({"P*C": f"2^{log2}", "P": P, "C": classes, "dtype": "float32", "gradients": True,
                    "seconds": round(seconds, 3), "elements_per_s": round((P * classes) / seconds),
                    "peak_extra_MiB": round(peak / 2**20, 1), "peak_extra_x_logits": round(peak / logits, 2)})
    return out


# --------------------------------------------------------------------------- entry point
def run(profiles: list[str], adapters: list[str], *, seed: int = 0, seeds: int = 3, skip: tuple[str, ...] = (),
        oracle_max: int = 24) -> dict[str, Any]:
    os.environ.setdefault("CE_CONFORMANCE_JAX_CACHE", "off")  # cold compilation figures
    doc: dict[str, Any] = {"machine": machine(), "seed": seed}
    if "runs" not in skip:
        doc["runs"] = bench_runs(profiles, adapters, seed)
    if "planted" not in skip:
        doc["planted"] = bench_planted(seeds)
    if "oracle" not in skip:
        doc["oracle"] = bench_oracle(oracle_max)
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = [f"machine: {doc['machine']['cpus']} CPUs, {doc['machine']['processor']}, load "
             f"{doc['machine']['load_1min_at_start']}"]
    if doc.get("runs"):
        lines.append(f"{'profile':9s} {'adapter':10s} {'wall s':>7s} {'examples':>8s} {'harness':>8s} {'JAX hits':>9s}")
        for r in doc["runs"]:
            if "skipped" in r:
                lines.append(f"{r['profile']:9s} {r['adapter']:10s} skipped: {r['skipped']}")
                continue
            hits = f"{100 * r['jax_hit_share']:.1f} %" if "jax_hit_share" in r else "-"
            lines.append(f"{r['profile']:9s} {r['adapter']:10s} {r['wall_s']:7.1f} {r['examples']:8d} "
                         f"{100 * r['harness_share']:7.1f}% {hits:>9s}")
        for profile in dict.fromkeys(r["profile"] for r in doc["runs"]):
            rows = [r for r in doc["runs"] if r["profile"] == profile and "wall_s" in r]
            wall = sum(r["wall_s"] for r in rows)
            inside = sum(r["adapter_s"] for r in rows)
            if wall:
                lines.append(f"{profile:9s} {'all':10s} {wall:7.1f} {sum(r['examples'] for r in rows):8d} "
                             f"{100 * (wall - inside) / wall:7.1f}%")
    p = doc.get("planted")
    if p and "bugs" in p:
        lines.append(f"planted bugs ({p['profile']} profile, {p['seeds']} seeds): time and examples to the "
                     "first failure")
        for name, b in p["bugs"].items():
            lines.append(f"  {name:30s} caught {b['caught']:>5s}  median {b['median_s']:6.2f} s "
                         f"({b['median_examples']:g} ex.)  worst {b['worst_s']:6.2f} s ({b['worst_examples']} ex.)")
        lines.append(f"  median over bugs {p['median_of_medians_s']:.2f} s, worst {p['worst_s']:.2f} s, "
                     f"all caught: {p['all_caught']}")
    elif p:
        lines.append(f"planted bugs: skipped ({p['skipped']})")
    for o in doc.get("oracle") or []:
        lines.append(f"oracle P*C={o['P*C']:5s} (P={o['P']}, C={o['C']}, float32, with gradients): "
                     f"{o['seconds']:.2f} s, "
                     f"{o['elements_per_s'] / 1e6:.1f} M elements/s, peak extra {o['peak_extra_MiB']} MiB "
                     f"({o['peak_extra_x_logits']}x the logits)")
    return "\n".join(lines)


def main(args) -> int:
    doc = run(args.profile or ["quick", "default"], args.adapter or DEFAULT_ADAPTERS, seed=args.seed,
              seeds=args.seeds, skip=tuple(args.skip), oracle_max=args.oracle_max)
    text = json.dumps(doc, indent=1, default=str)
    print(text)
    print(table(doc))
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
