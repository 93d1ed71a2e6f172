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
    failure = result.get("failure") or {}
    ce = failure.get("counterexample") or {}
    options = {k: ce.get(k) for k in ("reduction", "ignore_index", "label_smoothing", "legacy", "purpose")}
    # the spec's extensions (softcap, z_loss, ...) and the memory layout the adapter was handed
    options["extensions"] = ce.get("extensions") or {}
    options["layout"] = (ce.get("layout") or {}).get("name", "contiguous")
    # whether the recorded failure was in a gradient: the reproduction asks for gradients then
    options["gradient"] = ".gradients." in str(failure.get("clause") or "") or result["check"].startswith("gradient.")
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
        return recheck(adapter, check, case, spec_file=spec, gradient=options.get("gradient"))
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

    extensions = options.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise ValueError("'options.extensions' is not an object")
    linear = None
    if "linear_hidden" in arrays:
        linear = {k: arrays.get(f"linear_{k}") for k in ("hidden", "classifier", "bias")}
    return Case(x=arrays["input"], target=arrays["target"], weight=arrays.get("weight"),
                upstream=arrays.get("upstream"), reduction=options.get("reduction") or "mean",
                ignore_index=int(options["ignore_index"]) if options.get("ignore_index") is not None else -100,
                label_smoothing=float(fix(options.get("label_smoothing") or 0.0)), legacy=options.get("legacy"),
                purpose=options.get("purpose") or "", extensions={k: fix(v) for k, v in extensions.items()},
                layout=str(options.get("layout") or "contiguous"), linear=linear)


def recheck(adapter_name: str, check_id: str, case, *, spec_file: str, gradient: bool | None = None) -> int:
    """Call the adapter on the case, judge it as the suite's value checks do (the same
    function: conformance/checks.py ``judge_result``), print the verdict."""
    import numpy as np

    from conformance.adapters import resolve

    from ..checks import CheckFailure, Context, call_adapter, judge_result
    from ..spec import load, load_default

    spec = load(spec_file) if Path(spec_file).exists() else load_default()
    adapter = resolve(adapter_name)
    ctx = Context(spec, adapter)
    print(f"adapter: {adapter_name}   check: {check_id}")
    print(f"input: shape={case.x.shape} dtype={case.dtype}  target: shape={np.shape(case.target)} "
          f"kind={case.target_kind}  reduction={case.reduction} ignore_index={case.ignore_index} "
          f"label_smoothing={case.label_smoothing} weight={'yes' if case.weight is not None else 'no'}"
          + (f"  layout={case.layout}" if case.layout != "contiguous" else "")
          + (f"  extensions={case.extensions}" if case.extensions else "")
          + (f"  linear: hidden {np.shape(case.linear['hidden'])}, classifier {np.shape(case.linear['classifier'])}, "
             f"bias {'yes' if case.linear.get('bias') is not None else 'no'}" if case.linear else ""))
    kind = check_id.split(".")[0]
    if kind == "error":
        try:
            res = adapter.call(case)
        except Exception as exc:  # noqa: BLE001
            print(f"raised {type(exc).__name__}: {exc}\nthe invalid input is rejected now: fixed")
            return 0
        print(f"accepted the invalid input ({case.purpose}) and returned {np.asarray(res.value)!r}")
        return 1
    if gradient is None:
        gradient = kind == "gradient" or check_id.startswith("special.")
    gradient = bool(gradient) and "gradient" in adapter.capabilities.features
    try:
        res = call_adapter(ctx, check_id, case, gradient=gradient)
        ev = ctx.oracle.evaluate(case, gradients=gradient)
        print(f"expected (exact): {np.asarray(ev.value)!r}")
        print(f"actual:           {np.asarray(res.value)!r}")
        judge_result(ctx, check_id, case, res, gradient=gradient, ev=ev)
    except CheckFailure as f:
        print(f"FAIL: {f.verdict.clause}: {f.verdict.message}")
        return 1
    print("loss" + (", gradients" if gradient else "") + (", extra outputs" if case.extensions else "")
          + " within tolerance")
    if kind == "metamorphic":
        print("(metamorphic failures compare two calls; the first call alone is within tolerance)")
    return 0
