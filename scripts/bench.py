#!/usr/bin/env python3
"""Benchmark of a default-profile run (numpy + torch-cpu + jax-cpu), not a timed test.

Prints the wall time, the share of it spent outside adapter calls (strategies, oracle,
comparison, bookkeeping) and the share of JAX calls served by an already compiled function.
Usage: python scripts/bench.py [--profile default] [--seed 0]
"""
import argparse
import time

from conformance.adapters import resolve
from conformance.checks import Context, catalogue
from conformance.engine import run_check
from conformance.spec import load_default


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter", action="append", default=None)
    args = ap.parse_args()
    spec = load_default()
    extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
    inside = {"t": 0.0, "n": 0}
    total0 = time.perf_counter()
    per = {}
    for name in args.adapter or ["numpy", "torch-cpu", "jax-cpu"]:
        adapter = resolve(name)
        for meth in ("call", "log_softmax", "nll_loss"):
            orig = getattr(adapter, meth)

            def timed(*a, _orig=orig, **k):
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    inside["t"] += time.perf_counter() - t0
                    inside["n"] += 1
            setattr(adapter, meth, timed)
        ctx = Context(spec, adapter, profile=args.profile, extra_specs=extra)
        t0 = time.perf_counter()
        statuses = {}
        for check in catalogue(spec):
            r = run_check(ctx, check, seed=args.seed)
            statuses[r.status] = statuses.get(r.status, 0) + 1
        per[name] = (time.perf_counter() - t0, statuses, adapter)
    wall = time.perf_counter() - total0
    for name, (t, statuses, adapter) in per.items():
        print(f"{name:10s} {t:7.1f} s  {statuses}")
        hits, misses = getattr(adapter, "cache_hits", None), getattr(adapter, "cache_misses", None)
        if hits is not None:
            print(f"{'':10s} JAX compiled-function hits {hits}, compilations {misses}: "
                  f"{100 * hits / max(1, hits + misses):.1f} % served compiled")
    print(f"wall {wall:.1f} s; adapter calls {inside['n']} taking {inside['t']:.1f} s; "
          f"outside adapter calls {100 * (wall - inside['t']) / wall:.1f} %")


if __name__ == "__main__":
    main()
