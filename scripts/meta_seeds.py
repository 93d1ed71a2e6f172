#!/usr/bin/env python3
"""Run every check of the default profile over many seeds for the implementations that must
never be flagged: the planted correct ones (tests/planted.py) and torch-cpu with its shipped
known divergences. Prints what was flagged per seed; exit 1 if anything was.

    python scripts/meta_seeds.py [--seeds 20] [--profile default]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import planted  # noqa: E402
from conformance.adapters import resolve  # noqa: E402
from conformance.adapters.torch_adapter import TorchFunctionAdapter  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.session import apply_known, load_known  # noqa: E402
from conformance.spec import load_default  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--only", default=None, help="run only the adapters whose name contains this")
    args = ap.parse_args()
    spec = load_default()
    extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
    known = load_known([str(Path(__file__).resolve().parents[1] / "conformance" / "known" / "torch.yaml")])
    adapters = [TorchFunctionAdapter(getattr(planted, n), f"planted-{n}") for n in planted.CORRECT]
    adapters.append(resolve("torch-cpu"))
    adapters = [a for a in adapters if not args.only or args.only in a.name]
    flagged = 0
    for adapter in adapters:
        ctx = Context(spec, adapter, profile=args.profile, extra_specs=extra)
        total, bad, known_n = 0, [], 0
        for seed in range(args.seeds):
            for check in catalogue(spec):
                if adapter.name.startswith("planted") and check.id in ("error.label_smoothing_negative",
                                                                      "error.label_smoothing_nan"):
                    continue  # torch underneath accepts these: torch's divergence, not the planted code's
                d = run_check(ctx, check, seed=seed).to_json()
                if adapter.name == "torch-cpu":
                    apply_known(d, known, strict=False)
                total += 1
                known_n += d["status"] == "known"
                if d["status"] in ("failed", "error"):
                    bad.append(f"seed {seed} {check.id}: {d['message'][:200]}")
        flagged += len(bad)
        print(f"{adapter.name}: {total} check runs over {args.seeds} seeds, {len(bad)} flagged, {known_n} known")
        for b in bad:
            print("   ", b)
        sys.stdout.flush()
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
