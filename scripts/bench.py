#!/usr/bin/env python3
"""Benchmark of the suite (not a timed test): ``ce-conformance bench`` (conformance/runner/bench.py)
with the same options. Prints JSON and a table: wall time per profile and adapter, the share
of it outside adapter calls, JAX compile hits, time and examples to the first failure of each
planted bug, the oracle's throughput and peak memory.

Usage: python scripts/bench.py [--profile quick --profile default] [--seeds 3] [--skip oracle]
"""
import sys

from conformance.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
