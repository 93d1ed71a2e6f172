"""Standalone reproduction scripts for failures.

A reproduction is three files with one stem in ``repro/``: a fixed script (:data:`SCRIPT`, the
same text for every failure), a JSON sidecar with the failure's data (adapter, check, spec
file, case options, message) and the failing case's exact inputs (``.npz``). The data is
never pasted into Python source, so an adapter name, message or path holding quotes,
backslashes, ``\\N`` or newlines cannot change what the script does. The script rebuilds
the case, calls the adapter by the name it was run under, evaluates the spec's oracle and
prints expected versus actual. It exits 1 while the failure reproduces, 0 once it is fixed
and 2 when it cannot tell (files missing, adapter or spec that cannot be loaded), so it can
be dropped into a bug report or a CI job as is (copy all three files).
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

#: Format of the JSON sidecar.
FORMAT = "ce-conformance/repro/1"

SCRIPT = '''#!/usr/bin/env python3
"""Reproduce one failure found by ce-conformance.

The failure's data lives beside this script, never in it: the .json file with the same name
(adapter, check, spec file, options, message) and the .npz file with the same name (the exact
inputs). Run: python THIS_SCRIPT (needs ce-conformance installed, the adapter's framework,
and the adapter's module importable: set PYTHONPATH as for the run).
Exit 1 while the failure reproduces, 0 once it is gone, 2 when it cannot be checked.
"""
import sys
from pathlib import Path

try:
    from conformance.runner.repro import main
except ImportError as exc:
    print(f"cannot import ce-conformance ({exc}): pip install ce-conformance", file=sys.stderr)
    sys.exit(2)

sys.exit(main(Path(__file__).resolve().with_suffix(".json")))
'''


def safe_name(result_id: str) -> str:
    """A result id (``adapter::check``) as a file name: what ``failures/`` and ``repro/`` use."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in result_id)

def write_repro(out_dir: Path, result: dict[str, Any], npz: bytes, *, spec_file: str,
                adapter_spec: str | None = None) -> Path:
    """Write ``repro/repro_<id>.py`` (with its ``.json`` and ``.npz``) under ``out_dir`` and
    return the script's path relative to ``out_dir``; ``adapter_spec`` is what resolve() takes
    to rebuild the adapter (default: the result's adapter name)."""
    ce = (result.get("failure") or {}).get("counterexample") or {}
    options = {k: ce.get(k) for k in ("reduction", "ignore_index", "label_smoothing", "legacy", "purpose")}
    data = {"format": FORMAT, "id": result["id"], "adapter": adapter_spec or result["adapter"],
            "check": result["check"], "spec": str(spec_file), "options": options,
            "message": str(result.get("message") or "")[:2000]}
    folder = out_dir / "repro"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"repro_{safe_name(result['id'])}.py"
    script.with_suffix(".npz").write_bytes(npz)
    script.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    script.write_text(SCRIPT)
    return script.relative_to(out_dir)


def copy_repro(script: Path, dest: Path) -> None:
    """Copy a reproduction (script, sidecar, inputs) to ``dest`` (a .py path)."""
    for suffix in (".json", ".npz", ".py"):
        dest.with_suffix(suffix).write_bytes(script.with_suffix(suffix).read_bytes())


def main(sidecar: Path) -> int:
    """What a reproduction script runs: 1 reproduces, 0 fixed, 2 cannot be checked."""
    try:
        data = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a ce-conformance reproduction (format {FORMAT!r})")
        adapter, check, spec = (str(data[k]) for k in ("adapter", "check", "spec"))
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError("'options' is not an object")
        with open(Path(sidecar).with_suffix(".npz"), "rb") as f:
            case = rebuild_case(f, options)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot read the reproduction data next to the script ({sidecar}): {exc}", file=sys.stderr)
        return 2
    print(f"reproducing {data.get('id', '')!s}")
    if data.get("message"):
        print(f"recorded failure: {data['message']}")
    try:
        return recheck(adapter, check, case, spec_file=spec)
    except Exception:  # noqa: BLE001 - the suite, not the adapter, failed: not "still reproduces"
        traceback.print_exc()
        print("the reproduction could not be checked (see the traceback above)", file=sys.stderr)
        return 2


def rebuild_case(fileobj, options: dict[str, Any]):
    import ml_dtypes
    import numpy as np

    from ..case import Case

    data = np.load(fileobj)
    arrays = {}
    for key in data.files:
        if key.endswith("__bfloat16"):
            arrays[key[:-10]] = data[key].view(ml_dtypes.bfloat16)
        else:
            arrays[key] = data[key]

    def fix(v):
        return float(v) if v in ("nan", "inf", "-inf") else v

    return Case(x=arrays["input"], target=arrays["target"], weight=arrays.get("weight"),
                upstream=arrays.get("upstream"), reduction=options.get("reduction") or "mean",
                ignore_index=int(options["ignore_index"]) if options.get("ignore_index") is not None else -100,
                label_smoothing=float(fix(options.get("label_smoothing") or 0.0)), legacy=options.get("legacy"),
                purpose=options.get("purpose") or "")


def recheck(adapter_name: str, check_id: str, case, *, spec_file: str) -> int:
    """Call the adapter on the case, judge it like the suite does, print the verdict."""
    import numpy as np

    from conformance.adapters import resolve

    from ..checks import Context
    from ..spec import load, load_default

    spec = load(spec_file) if Path(spec_file).exists() else load_default()
    adapter = resolve(adapter_name)
    ctx = Context(spec, adapter)
    print(f"adapter: {adapter_name}   check: {check_id}")
    print(f"input: shape={case.x.shape} dtype={case.dtype}  target: shape={np.shape(case.target)} "
          f"kind={case.target_kind}  reduction={case.reduction} ignore_index={case.ignore_index} "
          f"label_smoothing={case.label_smoothing} weight={'yes' if case.weight is not None else 'no'}")
    kind = check_id.split(".")[0]
    if kind == "error":
        try:
            res = adapter.call(case)
        except Exception as exc:  # noqa: BLE001
            print(f"raised {type(exc).__name__}: {exc}\nthe invalid input is rejected now: fixed")
            return 0
        print(f"accepted the invalid input ({case.purpose}) and returned {np.asarray(res.value)!r}")
        return 1
    gradient = kind == "gradient" or check_id.startswith("special.")
    try:
        res = adapter.call(case, gradient=gradient and "gradient" in adapter.capabilities.features)
    except Exception as exc:  # noqa: BLE001
        print(f"raised on a valid input: {type(exc).__name__}: {exc}")
        return 1
    ev = ctx.oracle.evaluate(case, gradients=bool(res.gradients))
    v = ctx.judge.compare(res.value, ev.value, ctx.judge.value_bound(ev, case.dtype), case.dtype, what="loss",
                          clause="loss")
    print(f"expected (exact): {np.asarray(ev.value)!r}")
    print(f"actual:           {np.asarray(res.value)!r}")
    bad = not v.ok
    print(("FAIL: " + v.message) if bad else "loss within tolerance")
    for wrt, g in res.gradients.items():
        if wrt in ev.gradients:
            bound = ctx.judge.gradient_bound(ev, wrt, case.dtype, case)
            gv = ctx.judge.compare(g, ev.gradients[wrt], bound, case.dtype,
                                   what=f"gradient[{wrt}]", clause="gradient", unspecified=ev.unspecified.get(wrt))
            print(("FAIL: " + gv.message) if not gv.ok else f"gradient[{wrt}] within tolerance")
            bad = bad or not gv.ok
    if kind == "metamorphic" and not bad:
        print("(metamorphic failures compare two calls; the first call alone is within tolerance)")
    return 1 if bad else 0
