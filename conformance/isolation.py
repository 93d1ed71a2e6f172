"""Run one check in a child process, so that a crash cannot take the run down with it.

On CUDA an out-of-range class index trips a device-side assert that leaves the CUDA context
unusable for the rest of the process (every later call raises). Adapters list the check
kinds that must run isolated in ``isolate_kinds`` (``torch-cuda``: the error contract); the
engine then calls :func:`run_isolated`, which starts ``python -m conformance.isolation``,
and reads the child's result from its last line of output. A child that dies (an abort, a
segfault, a hard device fault) without reporting is recorded, and the run goes on.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys

from .engine import CheckResult

_MARK = "CE-CONFORMANCE-RESULT "


def run_isolated(adapter_source: str, check, *, profile: str, seed: int | None, spec_file: str,
                 timeout: float = 600, name: str | None = None) -> CheckResult:
    cmd = [sys.executable, "-m", "conformance.isolation", adapter_source, check.id, profile,
           "none" if seed is None else str(seed), spec_file]
    res = CheckResult(name or adapter_source, check.id, check.kind, check.clause, check.description, "error",
                      severity=check.severity)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        res.message = f"the isolated child process ran past {timeout:.0f} s and was killed"
        return res
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            d = json.loads(line[len(_MARK):])
            d.pop("id", None)
            blob = d.pop("failure_inputs_b64", None)
            out = CheckResult(**d)
            out.failure_inputs = base64.b64decode(blob) if blob else None
            out.message = (out.message + " " if out.message else "") + "(run in an isolated process)"
            return out
    # The child died without a verdict. Error checks only ever feed invalid inputs, so the
    # implementation rejected one of them, by taking its process down.
    tail = (proc.stderr or "")[-600:].strip()
    if check.kind == "error":
        res.status = "passed"
        res.message = (f"the invalid input was rejected by ending the process (exit code {proc.returncode}); "
                       f"isolated, so the run went on. stderr: {tail}")
    else:
        res.message = f"the isolated child process died (exit code {proc.returncode}) without a result: {tail}"
    return res


def _child(argv: list[str]) -> int:
    adapter_source, check_id, profile, seed, spec_file = argv
    from conformance.adapters import resolve

    from .checks import Context, catalogue
    from .engine import run_check
    from .spec import load, load_default

    spec = load(spec_file)
    extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
    adapter = resolve(adapter_source)
    check = next(c for c in catalogue(spec) if c.id == check_id)
    ctx = Context(spec, adapter, profile=profile, extra_specs=extra)
    r = run_check(ctx, check, seed=None if seed == "none" else int(seed), isolate=False)
    d = r.to_json()
    if r.failure_inputs:
        d["failure_inputs_b64"] = base64.b64encode(r.failure_inputs).decode()
    sys.stdout.write("\n" + _MARK + json.dumps(d, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
