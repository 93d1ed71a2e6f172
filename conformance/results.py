"""Stage 6: the results file (``results.json``), its schema, and the files beside it.

Schema ``ce-conformance/results/1`` (documented in docs/results.md)::

    {"schema": "ce-conformance/results/1",
     "spec":  {"operation", "version", "sha256", "file"},
     "run":   {"profile", "seed", "command", "started", "finished", "versions": {...},
               "adapters": [{"name", "framework", "device", ...}], "interrupted": bool},
     "summary": {"passed": n, "failed": n, "known": n, "variant": n, "not_supported": n,
                 "error": n, "skipped": n, "fixed": n},
     "results": [CheckResult.to_json(), ...]}

Every result is also appended to ``results.partial.jsonl`` as soon as it is known, so an
interrupted run loses nothing; failing inputs are saved as ``failures/<id>.npz``.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

SCHEMA = "ce-conformance/results/1"
STATUSES = ("passed", "failed", "known", "variant", "not_supported", "error", "skipped", "fixed")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("numpy", "hypothesis", "torch", "jax", "jaxlib", "ml_dtypes"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:  # noqa: BLE001 - optional frameworks
                continue
        out[mod] = getattr(m, "__version__", "?")
    return out


def safe_name(result_id: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in result_id)


def summary(results: Iterable[dict[str, Any]]) -> dict[str, int]:
    c = Counter(r["status"] for r in results)
    return {s: c.get(s, 0) for s in STATUSES}


def write(out_dir: Path, *, spec, run: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": SCHEMA,
        "spec": {"operation": spec.operation, "version": spec.version, "sha256": spec.sha256, "file": spec.file},
        "run": run,
        "summary": summary(results),
        "results": sorted(results, key=lambda r: (r["adapter"], r["check"])),
    }
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_default))
    tmp.replace(path)
    return path


def _default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load(path: str | Path) -> dict[str, Any]:
    """Read a results file; raise ValueError with the path when it is not one."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise ValueError(f"{p}: cannot read results: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{p}: not a ce-conformance results file (expected schema {SCHEMA!r})")
    return doc


def append_partial(out_dir: Path, result: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.partial.jsonl", "a") as f:
        f.write(json.dumps(result, default=_default) + "\n")
