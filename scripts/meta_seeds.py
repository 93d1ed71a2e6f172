#!/usr/bin/env python3
"""Run the planted meta-tests over many seeds, as the issues' "done when" ask, and print the
figures: a flag of a correct implementation as it happens, each bug missed on a seed, and a
summary per implementation. Exit 1 if a correct one was flagged or a bug was missed.

Families (the planted modules under tests/):

- ``fairness`` (issue 16): tests/planted.py CORRECT (the six summation orders included) and
  torch-cpu with its shipped known divergences; every check of the profile must pass.
- ``inputs`` (issue 12): tests/planted_inputs.py; the CORRECT ones (online softmax over blocks,
  ``.contiguous()`` first) pass every value check, each BUGGY one fails one of its checks.
- ``llm`` (issue 13, extensions): tests/planted_llm.py on the extension checks.
- ``linear`` (issue 13, linear form): tests/planted_linear.py on specs/linear_cross_entropy.yaml.

    python scripts/meta_seeds.py [--family fairness|inputs|llm|linear] [--seeds 20]
        [--first-seed S] [--profile default|thorough] [--only NAME] [--bugs-only|--correct-only]
        [--checks ID,ID,...]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conformance.adapters import resolve  # noqa: E402
from conformance.adapters.base import Capabilities  # noqa: E402
from conformance.adapters.llm import LlmTorchAdapter  # noqa: E402
from conformance.adapters.torch_adapter import TorchFunctionAdapter  # noqa: E402
from conformance.checks import Context, catalogue  # noqa: E402
from conformance.engine import run_check  # noqa: E402
from conformance.gate import FailureFilter  # noqa: E402
from conformance.runner.session import apply_known, load_known  # noqa: E402
from conformance.spec import load, load_default  # noqa: E402

#: torch underneath the planted code accepts these: torch's divergence, not the planted code's
TORCH_PERMISSIVE = ("error.label_smoothing_negative", "error.label_smoothing_nan")
#: the correct linear kernels' fast settings (tests/test_linear_ce.py FAST)
LINEAR_FAST = {"chunked_fp32": {"chunk_rows": 16, "chunk_vocab": 4096}}


@dataclasses.dataclass
class Subject:
    """One implementation of a family: how to build its context, which checks it runs, and
    whether it must pass them all (correct) or fail one of them (a planted bug)."""

    name: str
    ctx: Context
    checks: list
    correct: bool
    known: list


def _known(pattern: str | None = None) -> list:
    entries = load_known([str(ROOT / "conformance" / "known" / "torch.yaml")])
    return [dict(e, adapter=pattern) for e in entries] if pattern else entries


def _value_checks(spec) -> list:
    return [c for c in catalogue(spec) if c.id.startswith(("forward.", "gradient.", "special.", "metamorphic."))]


def subjects(family: str, profile: str) -> list[Subject]:
    spec = load_default()
    extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
    by_id = {c.id: c for c in catalogue(spec)}
    out: list[Subject] = []
    if family == "fairness":
        planted = importlib.import_module("planted")
        checks = list(catalogue(spec))
        for n in planted.CORRECT:
            a = TorchFunctionAdapter(getattr(planted, n), f"planted-{n}")
            out.append(Subject(a.name, Context(spec, a, profile=profile, extra_specs=extra),
                               [c for c in checks if c.id not in TORCH_PERMISSIVE], True, []))
        a = resolve("torch-cpu")
        out.append(Subject(a.name, Context(spec, a, profile=profile, extra_specs=extra), checks, True, _known()))
    elif family == "inputs":
        planted = importlib.import_module("planted_inputs")
        for n in planted.CORRECT + sorted(planted.BUGGY):
            a = TorchFunctionAdapter(getattr(planted, n), f"planted-{n}", capabilities=Capabilities())
            ctx = Context(spec, a, profile=profile, extra_specs=extra)
            checks = _value_checks(spec) if n in planted.CORRECT else [by_id[c] for c in planted.BUGGY[n]]
            out.append(Subject(a.name, ctx, checks, n in planted.CORRECT, _known("planted-*")))
    elif family == "llm":
        planted = importlib.import_module("planted_llm")
        ext = [c for c in catalogue(spec) if c.extensions]
        for n in list(planted.CORRECT) + sorted(planted.BUGGY):
            a = LlmTorchAdapter(getattr(planted, n), f"planted-{n}", planted.FORM)
            checks = ext if n in planted.CORRECT else [by_id[c] for c in planted.BUGGY[n]]
            out.append(Subject(a.name, Context(spec, a, profile=profile), checks, n in planted.CORRECT, []))
    elif family == "linear":
        planted = importlib.import_module("planted_linear")
        lspec = load(ROOT / "specs" / "linear_cross_entropy.yaml")
        lby_id = {c.id: c for c in catalogue(lspec)}
        for n in list(planted.CORRECT) + sorted(planted.BUGGY):
            fn = functools.partial(getattr(planted, n), **LINEAR_FAST.get(n, {}))
            a = LlmTorchAdapter(fn, f"planted-{n}", planted.FORM)
            checks = _value_checks(lspec) if n in planted.CORRECT else [lby_id[c] for c in planted.BUGGY[n]]
            # the reference composes torch's own float16 F.cross_entropy: torch's known divergences apply
            out.append(Subject(a.name, Context(lspec, a, profile=profile), checks, n in planted.CORRECT,
                               _known("planted-*")))
    else:
        raise SystemExit(f"meta_seeds.py: unknown family {family!r} (fairness, inputs, llm, linear)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="fairness", choices=("fairness", "inputs", "llm", "linear"))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--only", default=None, help="run only the implementations whose name contains this")
    ap.add_argument("--first-seed", type=int, default=0, help="start the sweep at this seed")
    ap.add_argument("--checks", default=None,
                    help="comma-separated check ids (or prefixes ending in '.') to keep")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--bugs-only", action="store_true")
    group.add_argument("--correct-only", action="store_true")
    args = ap.parse_args()
    subs = [s for s in subjects(args.family, args.profile) if not args.only or args.only in s.name]
    subs = [s for s in subs if not (args.bugs_only and s.correct) and not (args.correct_only and not s.correct)]
    if args.checks:
        keep = [k.strip() for k in args.checks.split(",") if k.strip()]
        for s in subs:
            s.checks = [c for c in s.checks if any(c.id == k or (k.endswith(".") and c.id.startswith(k)) for k in keep)]
        subs = [s for s in subs if s.checks]
    stats = {s.name: {"runs": 0, "known": 0, "flagged": [], "missed": [], "caught": 0} for s in subs}
    t0 = time.monotonic()
    # seeds outside, implementations inside: a sweep cut short still covers every implementation
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for s in subs:
            st = stats[s.name]
            statuses = []
            for check in s.checks:
                # torch's known divergences are applied per example inside the search (conformance/gate.py)
                gate = FailureFilter(known=s.known) if s.known else None
                res = run_check(s.ctx, check, seed=seed, gate=gate)
                if s.known and s.name == "torch-cpu":
                    res = apply_known(res, s.known, strict=False)
                d = res.to_json()
                st["runs"] += 1
                st["known"] += d["status"] == "known"
                statuses.append((check.id, d["status"], d["message"]))
                if s.correct and d["status"] in ("failed", "error"):
                    st["flagged"].append(f"seed {seed} {check.id}: {d['status']}: {d['message'][:200]}")
                    print(f"  FLAG {s.name} seed {seed} {check.id}: {d['status']}: {d['message'][:300]}", flush=True)
                if not s.correct and d["status"] == "failed":
                    break  # caught: the first check that fails is the verdict a gate would give
            if not s.correct:
                if any(status == "failed" for _, status, _ in statuses):
                    st["caught"] += 1
                else:
                    st["missed"].append(f"seed {seed}: " + "; ".join(f"{c}={x}" for c, x, _ in statuses))
                    print(f"  MISSED {s.name} seed {seed}: {st['missed'][-1]}", flush=True)
            print(f"  {s.name} seed {seed} done ({time.monotonic() - t0:.0f} s)", flush=True)
    bad = 0
    last = args.first_seed + args.seeds - 1
    print(f"\nfamily {args.family}, profile {args.profile}, seeds {args.first_seed}..{last}")
    for s in subs:
        st = stats[s.name]
        if s.correct:
            bad += len(st["flagged"])
            print(f"{s.name} (correct): {st['runs']} check runs, {len(st['flagged'])} flagged, {st['known']} known")
            for b in st["flagged"]:
                print("   ", b)
        else:
            bad += len(st["missed"])
            print(f"{s.name} (bug): caught on {st['caught']} of {args.seeds} seeds")
            for b in st["missed"]:
                print("   ", b)
    print(f"total {time.monotonic() - t0:.0f} s")
    sys.stdout.flush()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
