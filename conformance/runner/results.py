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

Inside a run results are :class:`~conformance.engine.CheckResult` objects; :func:`record` makes
the dict that is written (here, in the partial file, between processes). Files read back
(:func:`load`, :func:`read_partial`, merge, report) stay dicts: they are documents.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..status import STATUSES  # every status a result can have, defined once there

if TYPE_CHECKING:
    from ..engine import CheckResult

SCHEMA = "ce-conformance/results/1"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    from .. import __version__

    out = {"ce-conformance": __version__, "python": platform.python_version(), "platform": platform.platform()}
    from importlib import metadata

    for mod in ("numpy", "hypothesis", "torch", "jax", "jaxlib", "ml_dtypes"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
            continue
        try:  # the installed version, without paying for importing the framework
            out[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            continue
    return out


def summary(results: Iterable[CheckResult] | Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many results have each status (every status listed): of a run's results, or of the
    ``results`` of a file read back."""
    c = Counter(r["status"] if isinstance(r, dict) else r.status for r in results)
    return {s: c.get(s, 0) for s in STATUSES}


def record(result: CheckResult) -> dict[str, Any]:
    """A result as it is written: :meth:`~conformance.engine.CheckResult.to_json` plus its
    failing inputs as ``failure_inputs_b64`` (:func:`write_failures` turns those into files;
    ``CheckResult.from_json`` reads them back)."""
    import base64

    d = result.to_json()
    if result.failure_inputs:
        d["failure_inputs_b64"] = base64.b64encode(result.failure_inputs).decode()
    return d


def spec_info(spec) -> dict[str, Any]:
    """The ``spec`` block of results.json (a dict passes through)."""
    if isinstance(spec, dict):
        return spec
    return {"operation": spec.operation, "version": spec.version, "sha256": spec.sha256, "file": spec.file}


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``path`` through a temporary file and a rename: a reader (or a run killed
    half-way) sees the old file or the new one, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write(out_dir: Path, *, spec, run: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": SCHEMA,
        "spec": spec_info(spec),
        "run": run,
        "summary": summary(results),
        "results": sorted(results, key=lambda r: (r["adapter"], r["check"])),
    }
    return atomic_write(out_dir / "results.json", json.dumps(doc, indent=1, default=_default))


def _default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


#: Bounds on a results file read back (``load``): its size and its nesting depth.
MAX_RESULTS_BYTES = 256 * 2 ** 20
MAX_RESULTS_DEPTH = 64


def load(path: str | Path) -> dict[str, Any]:
    """Read a results file; raise ValueError (one line, naming the path and the fault) when it
    is not one: unreadable, too large, not JSON, too deeply nested, or a body whose structure
    diff, repro, report and --baseline could not rely on (see :func:`_check_body`)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_RESULTS_BYTES:
            raise ValueError(f"{p}: larger than {MAX_RESULTS_BYTES >> 20} MiB: not a results file of this suite")
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{p}: cannot read results: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError(f"{p}: nested more than {MAX_RESULTS_DEPTH} levels deep: not a results file") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{p}: not a ce-conformance results file (expected schema {SCHEMA!r})")
    _check_body(doc, p)
    return doc


def _check_body(doc: dict[str, Any], p: Path) -> None:
    """The structure every reader of a results file relies on, checked once here."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_RESULTS_DEPTH:
            raise ValueError(f"{p}: nested more than {MAX_RESULTS_DEPTH} levels deep: not a results file")
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values() if isinstance(v, (dict, list))]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value if isinstance(v, (dict, list))]

    def bad(where: str, what: str) -> ValueError:
        return ValueError(f"{p}: {where} {what}; fix: pass a results.json written by ce-conformance run")

    for key in ("spec", "run", "summary"):
        if key in doc and not isinstance(doc[key], dict):
            raise bad(f"'{key}'", "is not an object")
    if not isinstance(doc.get("results"), list):
        raise bad("'results'", "is missing or not a list")
    for i, r in enumerate(doc["results"]):
        if not isinstance(r, dict):
            raise bad(f"results[{i}]", "is not an object")
        for key in ("adapter", "check", "status"):
            if not isinstance(r.get(key), str):
                raise bad(f"results[{i}].{key}", "is missing or not a string")
        r.setdefault("id", f"{r['adapter']}::{r['check']}")
        if not isinstance(r["id"], str):
            raise bad(f"results[{i}].id", "is not a string")
        if r["status"] not in STATUSES:
            raise bad(f"results[{i}].status", f"{r['status'][:40]!r} is not one of {', '.join(STATUSES)}")
        if r.get("message") is not None and not isinstance(r["message"], str):
            raise bad(f"results[{i}].message", "is not a string")
        for key in ("failure", "known", "coverage", "ratios", "accuracy", "tway"):
            if r.get(key) is not None and not isinstance(r[key], dict):
                raise bad(f"results[{i}].{key}", "is not an object")
        for key in ("worst", "failures", "variants"):
            if r.get(key) is not None and not isinstance(r[key], list):
                raise bad(f"results[{i}].{key}", "is not a list")
        for key in ("repro", "inputs"):  # files beside the results file, never elsewhere
            rel = (r.get("failure") or {}).get(key)
            if rel is not None and (not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts):
                raise bad(f"results[{i}].failure.{key}", "is not a relative path inside the results folder")


def append_partial(out_dir: Path, result: CheckResult) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.partial.jsonl", "a") as f:
        f.write(json.dumps(record(result), default=_default) + "\n")


# --------------------------------------------------------------------------- partial results
PARTIAL = "results.partial.jsonl"
#: The key of the partial file's first line: what a rebuilt report needs besides the results.
HEADER_KEY = "ce_partial_header"


def write_partial_header(out_dir: Path, header: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / PARTIAL, "a") as f:
        f.write(json.dumps({HEADER_KEY: header}, default=_default) + "\n")


def read_partial(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """The header and the results of a ``results.partial.jsonl``, and whether its last line
    was cut short (a run killed while writing it: that line is dropped). ValueError, with
    file:line, for anything else that is not a line this suite writes."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"{p}: cannot read partial results: {exc.strerror}") from None
    lines = text.split("\n")
    header: dict[str, Any] = {}
    by_id: dict[str, dict[str, Any]] = {}
    truncated = False
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last and not text.endswith("\n"):
                truncated = True
                continue
            raise ValueError(f"{p}:{i + 1}: not a line of a partial results file ({exc.msg}); fix: give the "
                             f"{PARTIAL} a run wrote") from None
        if isinstance(d, dict) and HEADER_KEY in d and isinstance(d[HEADER_KEY], dict):
            header = d[HEADER_KEY]
            continue
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("id", "adapter", "check", "status")):
            raise ValueError(f"{p}:{i + 1}: not a check result (needs id, adapter, check and status); fix: give the "
                             f"{PARTIAL} a run wrote")
        by_id[d["id"]] = d
    if not header and not by_id:
        raise ValueError(f"{p}: no results in it; fix: give the {PARTIAL} a run wrote")
    return header, list(by_id.values()), truncated


def write_failures(out_dir: Path, results: list[dict[str, Any]], *, spec_file: str,
                   adapter_specs: dict[str, str]) -> None:
    """``failures/<id>.npz`` and ``repro/`` scripts for results that carry
    ``failure_inputs_b64`` (removed from them; their ``failure`` gains ``inputs`` and ``repro``)."""
    import base64

    from .repro import safe_name, write_repro

    for r in results:
        blob = r.pop("failure_inputs_b64", None)
        if not (blob and isinstance(r.get("failure"), dict)):
            continue
        npz = base64.b64decode(blob)
        name = safe_name(r["id"])
        (out_dir / "failures").mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "failures" / f"{name}.npz", npz)
        r["failure"]["inputs"] = f"failures/{name}.npz"
        r["failure"]["repro"] = str(write_repro(out_dir, r, npz, spec_file=spec_file,
                                                adapter_spec=adapter_specs.get(r["adapter"], r["adapter"])))


def recover(partial: str | Path, out_dir: Path) -> tuple[Path, bool]:
    """Rebuild results.json, junit.xml, failures/ and repro/ in ``out_dir`` from the partial
    file of a run that never finished (killed with -9, out of memory...). Returns the
    results.json path and whether the partial file's last line was cut short."""
    header, results, truncated = read_partial(partial)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = header.get("spec") or {"operation": None, "version": None, "sha256": None, "file": None}
    spec_file = spec.get("file")
    if not spec_file:
        from ..spec import default_spec_path
        spec_file = str(default_spec_path())
    write_failures(out_dir, results, spec_file=spec_file, adapter_specs=header.get("adapter_sources") or {})
    run = dict(header.get("run") or {})
    run.update({"finished": None, "interrupted": True, "recovered_from": str(Path(partial).resolve()),
                "versions": run.get("versions") or versions()})
    path = write(out_dir, spec=spec, run=run, results=results)
    write_junit(out_dir / "junit.xml", results)
    return path, truncated


# --------------------------------------------------------------------------- junit
_JUNIT_FAIL = ("failed", "error", "flaky")
_JUNIT_SKIP = ("not_supported", "skipped", "known", "permissive")


def write_junit(path: Path, results: list[dict[str, Any]]) -> Path:
    """A JUnit XML file (xunit2) with one test case per result, as the live run's junit.xml
    has: failed, error and flaky fail; not supported, skipped, known and permissive skip."""
    import xml.etree.ElementTree as ET

    fails = sum(r["status"] in _JUNIT_FAIL for r in results)
    skips = sum(r["status"] in _JUNIT_SKIP for r in results)
    total_time = sum(float(r.get("duration_s") or 0) for r in results)
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name="ce-conformance", errors="0", failures=str(fails),
                          skipped=str(skips), tests=str(len(results)), time=f"{total_time:.3f}", timestamp=now())
    for r in sorted(results, key=lambda r: (r["adapter"], r["check"])):
        case = ET.SubElement(suite, "testcase", classname="conformance.suite",
                             name=f"test_conformance[{r['id']}]", time=f"{float(r.get('duration_s') or 0):.3f}")
        msg = _xml_text(r.get("message") or r["status"])
        if r["status"] in _JUNIT_FAIL:
            ET.SubElement(case, "failure", message=msg[:2000]).text = msg
        elif r["status"] in _JUNIT_SKIP:
            ET.SubElement(case, "skipped", type="pytest.skip", message=_xml_text(f"{r['status']}: {msg}")[:2000])
    return atomic_write(Path(path), ET.tostring(suites, encoding="utf-8", xml_declaration=True))


def _xml_text(s: str) -> str:
    """Characters XML 1.0 cannot hold (control characters from an adapter's message) as escapes."""
    return "".join(c if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd")
                   or c > "\uffff" else f"\\x{ord(c):02x}" for c in str(s))


# --------------------------------------------------------------------------- stale reports
#: What a run writes in its --out folder; an earlier run's copies are moved aside first, so
#: that nothing in --out can pass for the current run's outcome.
REPORT_FILES = ("results.json", "junit.xml", "index.html", PARTIAL, "failures", "repro", ".junit.xml.tmp")
PREVIOUS = "previous-run"


def move_aside_stale(out_dir: Path) -> Path | None:
    """Move an earlier run's reports in ``out_dir`` to ``out_dir/previous-run/`` (replacing
    what was there); return that folder, or None when there was nothing to move."""
    import shutil

    out_dir = Path(out_dir)
    present = [n for n in REPORT_FILES if (out_dir / n).exists() or (out_dir / n).is_symlink()]
    if not present:
        return None
    prev = out_dir / PREVIOUS
    if prev.exists() or prev.is_symlink():
        if prev.is_dir() and not prev.is_symlink():
            shutil.rmtree(prev)
        else:
            prev.unlink()
    prev.mkdir(parents=True)
    for n in present:
        os.replace(out_dir / n, prev / n)
    return prev
