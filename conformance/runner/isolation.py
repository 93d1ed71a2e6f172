"""One check in a worker process of its own, for adapters that may end their process on
invalid input.

On CUDA an out-of-range class index trips a device-side assert that leaves the CUDA context
unusable for the rest of the process (every later call raises). Adapters list the check
kinds that must run this way in ``isolate_kinds`` (``torch-cuda``: the error contract); each
such check gets a fresh :class:`conformance.runner.worker.AdapterWorker` that serves it alone, so
a poisoned context never reaches another check. Seed, ``derandomize`` (``--ci``), the example
database and the gate travel with it, as for every worker. An error check whose worker dies
without reporting has rejected its invalid input by ending the process: that is recorded as
passed, with the exit code; any other check's death is an error.
"""
from __future__ import annotations

from typing import Any

from ..engine import run_check as run_here
from .worker import DEFAULT_TIMEOUT, AdapterWorker, WorkerDied, error_result


def run_check(ctx, check, *, seed: int | None = None, derandomize: bool = False, database: str | None = None,
              database_dir: str | None = None, gate=None):
    """:func:`conformance.engine.run_check` for an adapter in this process, except that the check
    kinds it lists in ``isolate_kinds`` run in a fresh worker process (:func:`run_isolated`)."""
    if check.kind not in ctx.adapter.isolate_kinds:
        return run_here(ctx, check, seed=seed, derandomize=derandomize, database=database or database_dir, gate=gate)
    return run_isolated(ctx.adapter.source or ctx.adapter.name, check, profile=ctx.profile, seed=seed,
                        spec_file=ctx.spec.file, name=ctx.adapter.name, derandomize=derandomize,
                        database=database or database_dir, gate_json=gate.to_json() if gate is not None else None)


def run_isolated(adapter_source: str, check, *, profile: str, seed: int | None, spec_file: str,
                 timeout: float = DEFAULT_TIMEOUT, name: str | None = None, derandomize: bool = False,
                 database_dir: str | None = None, gate_json: dict[str, Any] | None = None,
                 database: str | None = None):
    """Run ``check`` in a fresh worker process for ``adapter_source`` and return its CheckResult."""
    name = name or adapter_source
    w = AdapterWorker(adapter_source, name=name, spec_file=spec_file, profile=profile, timeout=timeout)
    try:
        out = w.run(check, seed=seed, derandomize=derandomize, database_dir=database or database_dir,
                    gate_json=gate_json,
                    one_shot=True)
    except WorkerDied as exc:
        if check.kind == "error" and not exc.timed_out:
            res = error_result(name, check, "")
            res.status = "passed"
            res.message = (f"the invalid input was rejected by ending the process (exit code {exc.returncode}); "
                           f"isolated, so the run went on. stderr: {w.stderr_tail()}")
            return res
        return error_result(name, check, f"{exc.reason} (run in an isolated process)")
    finally:
        w.close()
    out.message = (out.message + " " if out.message else "") + "(run in an isolated process)"
    return out
