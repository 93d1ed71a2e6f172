"""The conformance suite as a pytest module: one test, parametrised by the plugin with every
adapter x check (ids such as ``torch-cpu::forward.index``). Run it through
``ce-conformance run`` or ``pytest --pyargs conformance.suite --ce-adapter NAME``."""
import json

import pytest

from conformance.runner.pytest_plugin import run_item
from conformance.runner.results import record


def test_conformance(ce_item, request, record_property):
    adapter, check = ce_item
    result = run_item(request.config, adapter, check)
    # to the controlling process (an xdist worker's properties travel with its report)
    record_property("ce_result", json.dumps(record(result)))
    status = result.status
    if status in ("not_supported", "skipped"):
        pytest.skip(f"{status.replace('_', ' ')}: {result.message}")
    if status == "known":
        pytest.xfail(f"known divergence: {(result.known or {}).get('reason', '')}")
    if status == "permissive":
        pytest.xfail(f"permissive (a SHOULD clause not enforced; --strict fails it): {result.message}")
    if status in ("failed", "error", "flaky"):
        f = result.failure or {}
        lines = [result.message]
        if f.get("counterexample"):
            lines.append("counterexample: " + json.dumps(f["counterexample"])[:2000])
        lines += f.get("reproduce") or []
        pytest.fail("\n".join(lines), pytrace=False)
