"""Standalone reproduction scripts for failures.

Each script embeds the failing case's exact inputs (an .npz, base64), rebuilds the case,
calls the adapter by the name it was run under, evaluates the spec's oracle and prints
expected versus actual. It exits 1 while the failure reproduces and 0 once it is fixed, so
it can be dropped into a bug report or a CI job as is.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from .results import safe_name

_TEMPLATE = '''#!/usr/bin/env python3
"""Reproduce {rid}: {message}

Run: python {filename}   (needs ce-conformance installed, the adapter's framework, and the
adapter's module importable: set PYTHONPATH as for the run)
Exit 1 while the failure reproduces, 0 once it is gone.
"""
import base64, io, json, sys

import numpy as np

from conformance.repro import rebuild_case, recheck

ADAPTER = {adapter!r}
CHECK = {check!r}
SPEC = {spec!r}
OPTIONS = json.loads({options!r})
INPUTS = base64.b64decode(
{blob}
)

case = rebuild_case(io.BytesIO(INPUTS), OPTIONS)
sys.exit(recheck(ADAPTER, CHECK, case, spec_file=SPEC))
'''


def write_repro(out_dir: Path, result: dict[str, Any], npz: bytes, *, spec_file: str,
                adapter_spec: str | None = None) -> Path:
    """Write ``repro/repro_<id>.py`` under ``out_dir``; ``adapter_spec`` is what resolve()
    takes to rebuild the adapter (default: the result's adapter name)."""
    ce = (result.get("failure") or {}).get("counterexample") or {}
    options = {k: ce.get(k) for k in ("reduction", "ignore_index", "label_smoothing", "legacy", "purpose")}
    b64 = base64.b64encode(npz).decode()
    blob = "\n".join(f"    {b64[i:i + 96]!r}" for i in range(0, len(b64), 96)) or "    ''"
    name = f"repro_{safe_name(result['id'])}.py"
    text = _TEMPLATE.format(rid=result["id"], message=(result.get("message") or "").replace('"""', "'''")[:300],
                            filename=name, adapter=adapter_spec or result["adapter"], check=result["check"], spec=spec_file,
                            options=json.dumps(options), blob=blob)
    folder = out_dir / "repro"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path.relative_to(out_dir)


def rebuild_case(fileobj, options: dict[str, Any]):
    import ml_dtypes
    import numpy as np

    from .case import Case

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
                ignore_index=int(options.get("ignore_index") if options.get("ignore_index") is not None else -100),
                label_smoothing=float(fix(options.get("label_smoothing") or 0.0)), legacy=options.get("legacy"),
                purpose=options.get("purpose") or "")


def recheck(adapter_name: str, check_id: str, case, *, spec_file: str) -> int:
    """Call the adapter on the case, judge it like the suite does, print the verdict."""
    import numpy as np

    from conformance.adapters import resolve
    from .checks import Context
    from .spec import load

    spec = load(spec_file) if Path(spec_file).exists() else __import__("conformance.spec", fromlist=["load_default"]).load_default()
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
            gv = ctx.judge.compare(g, ev.gradients[wrt], ctx.judge.gradient_bound(ev, wrt, case.dtype, case), case.dtype,
                                   what=f"gradient[{wrt}]", clause="gradient", unspecified=ev.unspecified.get(wrt))
            print(("FAIL: " + gv.message) if not gv.ok else f"gradient[{wrt}] within tolerance")
            bad = bad or not gv.ok
    if kind == "metamorphic" and not bad:
        print("(metamorphic failures compare two calls; the first call alone is within tolerance)")
    return 1 if bad else 0
