"""Run-level plumbing shared by the pytest plugin and the CLI: the run's two state objects,
which adapters, which known divergences and baseline apply, and what is written when a run
ends (or is interrupted).

:class:`RunSetup` is what every pytest process (xdist workers too) needs to run items: the
spec, adapters, checks, the gate. :class:`RunSession` is the record of the run, kept on the
controlling process only: the results as they arrive, the output folder, progress, SIGTERM.
The pytest plugin keeps both in ``config.stash`` (conformance/runner/pytest_plugin.py).

Results are :class:`~conformance.engine.CheckResult` objects until they are written: the rules
of the run (:func:`apply_known`, :func:`apply_baseline`) return a new result and never change
the one they are given; :func:`finish_run` turns them into the dicts results.json holds.
"""
from __future__ import annotations

import fnmatch
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..diagnostics import UserError, did_you_mean
from ..gate import WHEN_KEYS, WHEN_VALUES
from . import results as resultsmod

if TYPE_CHECKING:  # the engine (and its frameworks) is loaded when a check runs, not with the plugin
    from ..engine import CheckResult


class ConfigError(UserError, ValueError):
    """A usage or configuration fault: the CLI prints it and exits 2."""


@dataclass
class RunSetup:
    """What the items of a run need, built once per pytest process (:func:`build_setup`)."""

    spec: Any
    extra_specs: dict[str, Any]
    adapters: dict[str, Any]
    checks: list[Any]
    known: list[dict[str, Any]]
    baseline: dict[str, Any]
    gate: Any
    database: str | None
    #: In-process check contexts and worker processes, by adapter name.
    contexts: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)
    #: Adapters already warned about (no ``source``: run in-process).
    warned: set[str] = field(default_factory=set)

    def close(self) -> None:
        """End the worker processes."""
        for w in self.workers.values():
            w.close()
        self.workers.clear()


@dataclass
class RunSession:
    """The record of one run on its controlling process."""

    #: The command line recorded in results.json (the CLI's own when run through it).
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    #: Where results go (absolute: an in-process adapter may change the current folder); None
    #: until the suite's items were collected.
    out: Path | None = None
    total: int | None = None
    started: str | None = None
    t0: float = field(default_factory=time.monotonic)
    #: Results as they arrive; written as results.json entries by :func:`finish_run`.
    results: list[CheckResult] = field(default_factory=list)
    console: Any = None
    #: Writing the reports: a SIGTERM from now on is recorded, not raised.
    finishing: bool = False
    sigterm: bool = False
    sigterm_previous: Any = None
    summary_lines: list[str] = field(default_factory=list)

    def on_sigterm(self, signum, frame) -> None:
        """SIGTERM (what CI sends) ends the run as SIGINT does: full reports, exit code 2. Once."""
        self.sigterm = True
        if not self.finishing:
            self.finishing = True
            raise KeyboardInterrupt

    def install_sigterm(self) -> Any:
        """Make SIGTERM raise KeyboardInterrupt in the main thread; return the previous handler
        (None when nothing was installed: not the main thread, this session's handler already
        there, or someone else's)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGTERM)
        if previous == self.on_sigterm or previous not in (signal.SIG_DFL, None):
            return None
        signal.signal(signal.SIGTERM, self.on_sigterm)
        return previous


def build_setup(options) -> RunSetup:
    """Spec, adapters, checks, known entries, baseline and database from the run's options
    (an object with the attributes of conformance/runner/options.py)."""
    from .. import spec as specmod
    from ..checks import catalogue
    from .database import DEFAULT_DIR, compose

    spec = specmod.load(options.spec or str(specmod.default_spec_path()))
    adapters = load_adapters(options.adapter)
    prefixes = options.check
    known = load_known(shipped_known_files() if options.known is None else options.known)
    baseline = load_baseline(options.baseline)
    database = None
    if not (options.derandomize and options.seed is None) or options.database or options.database_readonly:
        database = compose(options.database, options.database_readonly, default=DEFAULT_DIR)
    return RunSetup(spec=spec, extra_specs={op: specmod.load_default(op) for op in ("log_softmax", "nll_loss")},
                    adapters=adapters,
                    checks=[c for c in catalogue(spec) if not prefixes or any(c.id.startswith(p) for p in prefixes)],
                    known=known, baseline=baseline, gate=make_filter(known, baseline), database=database)


def shipped_known_files() -> list[str]:
    """The known-divergence files shipped for the built-in adapters (conformance/known/)."""
    folder = Path(__file__).parents[1] / "known"
    return sorted(str(p) for p in folder.glob("*.yaml")) if folder.exists() else []


def load_adapters(names: list[str]) -> dict[str, Any]:
    from conformance.adapters import DEFAULT_ADAPTERS, resolve

    chosen = names or list(DEFAULT_ADAPTERS)
    out: dict[str, Any] = {}
    _ADAPTER_KNOWN.clear()
    for n in chosen:
        try:
            a = resolve(n)
        except Exception as exc:  # noqa: BLE001 - AdapterError and import failures alike
            raise ConfigError(f"--adapter {n}: {exc}") from None
        if a.name in out:
            raise ConfigError(f"--adapter {n}: a second adapter named {a.name!r}; fix: give each adapter "
                              "a distinct name (the 'name:' key of an adapter config)")
        out[a.name] = a
        for k in a.known_files:
            _ADAPTER_KNOWN.append((k, a.name))
    return out


#: Known-divergence files named by adapter configs (``known:``) of the adapters loaded last,
#: with the adapter's name: load_known() adds them to the files given on the command line.
_ADAPTER_KNOWN: list[tuple[str, str]] = []


# --------------------------------------------------------------------------- known divergences
_FILE_KEYS = ("adapter", "known")
_ENTRY_KEYS = ("check", "when", "reason", "link", "adapter")
#: ``when`` keys: fields of the failure's counterexample (Case.describe) plus two tests.
#: ``when`` keys and their allowed values: conformance/gate.py.
_WHEN_KEYS, _WHEN_VALUES = WHEN_KEYS, WHEN_VALUES


def load_known(paths: list[str]) -> list[dict[str, Any]]:
    """Entries of known-divergence files: ``{adapter, check, when, reason, link}``; the files
    named by the loaded adapters' configs are added (their entries default to that adapter)."""
    entries: list[dict[str, Any]] = []
    seen = {str(Path(p).resolve()) for p in paths}
    sources: list[tuple[str, str | None]] = [(p, None) for p in paths]
    sources += [(p, name) for p, name in _ADAPTER_KNOWN if str(Path(p).resolve()) not in seen]
    for p, default_adapter in sources:
        entries += _load_known_file(p, default_adapter)
    return entries


def _load_known_file(p: str, default_adapter: str | None) -> list[dict[str, Any]]:
    from conformance.adapter_config import AdapterConfigError, load_with_lines

    try:
        doc, where = load_with_lines(p, what="known-divergence file")
    except AdapterConfigError as exc:
        raise ConfigError(exc.message, exc.file, exc.line, exc.column, exc.fix) from None

    def bad(at: tuple, message: str, fix: str) -> ConfigError:
        return ConfigError(message, p, where.line(at), None, fix)

    if not isinstance(doc, dict) or not isinstance(doc.get("known"), list):
        raise ConfigError("expected a mapping with 'adapter' and a 'known' list", p,
                          fix="see docs/gating.md ('adapter: NAME-GLOB' and 'known: [{check: GLOB, reason: ...}]')")
    for k in doc:
        if k not in _FILE_KEYS:
            raise bad((k,), f"unknown key {k!r}{did_you_mean(k, _FILE_KEYS)}", f"use {', '.join(_FILE_KEYS)}")
    file_adapter = doc.get("adapter", default_adapter or "*")
    entries = []
    for i, e in enumerate(doc["known"]):
        if not isinstance(e, dict) or "check" not in e or "reason" not in e:
            raise bad(("known", i), f"known[{i}] needs 'check' and 'reason'",
                      "write '- check: forward.index' and 'reason: why it diverges'")
        for k in e:
            if k not in _ENTRY_KEYS:
                raise bad(("known", i, k), f"known[{i}]: unknown key {k!r}{did_you_mean(k, _ENTRY_KEYS)}",
                          f"use {', '.join(_ENTRY_KEYS)}")
        when = e.get("when") or {}
        if not isinstance(when, dict):
            raise bad(("known", i, "when"), f"known[{i}].when must be a mapping", "write e.g. 'when: {dtype: float16}'")
        for k, v in when.items():
            if k not in _WHEN_KEYS:
                raise bad(("known", i, "when", k), f"known[{i}].when: unknown key {k!r}{did_you_mean(k, _WHEN_KEYS)}",
                          f"use {', '.join(_WHEN_KEYS)}")
            for one in (v if isinstance(v, list) else [v]):
                if k in _WHEN_VALUES and str(one) not in _WHEN_VALUES[k]:
                    raise bad(("known", i, "when", k),
                              f"known[{i}].when.{k}: unknown value {one!r}{did_you_mean(str(one), _WHEN_VALUES[k])}",
                              f"use one of {', '.join(_WHEN_VALUES[k])}")
        entries.append({"adapter": str(e.get("adapter", file_adapter)), "check": str(e["check"]),
                        "when": when, "reason": e["reason"], "link": e.get("link", ""),
                        "file": p, "index": i, "matched": 0})
    return entries


def apply_known(result: CheckResult, entries: list[dict[str, Any]], *, strict: bool) -> CheckResult:
    """The result after the run's known-divergence rules: under ``--strict`` an accepted known
    divergence or a permissive SHOULD clause is ``failed``; a passing check that an entry
    (without ``when``) lists is ``fixed``. A new result when a rule applies, else ``result``
    itself; ``result`` is never changed. Bookkeeping on ``entries``: each entry's ``matched``
    counts the failing examples it accepted (the engine applied them per example,
    conformance/gate.py) and the fixed checks it lists."""
    by_entry = {(e["file"], e["index"]): e for e in entries}
    accepted_by_known = False
    for rec in result.failures or []:
        acc = rec.get("accepted_by") or {}
        if acc.get("by") == "known":
            accepted_by_known = True
            e = by_entry.get((acc.get("file"), acc.get("index")))
            if e is not None:
                e["matched"] += 1
    if strict and result.status == "known" and accepted_by_known:
        return replace(result, status="failed",
                       message="--strict: a known divergence fails the run: " + (result.message or ""))
    if strict and result.status == "permissive":
        return replace(result, status="failed", message=("--strict: a SHOULD clause that is not enforced fails "
                                                         "the run: " + (result.message or "")))
    if result.status != "passed":
        return result
    for e in entries:
        if (not e["when"] and fnmatch.fnmatchcase(result.adapter, e["adapter"])
                and fnmatch.fnmatchcase(result.check, e["check"])):
            e["matched"] += 1
            return replace(result, status="fixed", known={k: e[k] for k in ("reason", "link", "file", "index")},
                           message=(f"listed as a known divergence ({e['file']} entry {e['index']}) but passed: "
                                    "remove the entry if it is fixed"))
    return result


def load_baseline(path: str | None) -> dict[str, Any]:
    """What an earlier results.json says: ``statuses`` by result id, the failure
    ``signatures`` (signature keys) by result id, and ``whole``: ids not passing there whose
    failures carry no signature (an ``error``, or a file written before signatures)."""
    out: dict[str, Any] = {"statuses": {}, "signatures": {}, "whole": []}
    if not path:
        return out
    from ..gate import result_records

    try:
        doc = resultsmod.load(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for r in doc["results"]:
        rid = r.get("id") or f"{r.get('adapter')}::{r.get('check')}"
        out["statuses"][rid] = r.get("status")
        if r.get("status") in ("passed", "variant", "fixed", "not_supported", "skipped"):
            continue
        keys: list[Any] = [{"key": f["key"], "signature": f.get("signature") or {}, "pattern": f.get("pattern")}
                           for f in result_records(r)]
        if keys:
            out["signatures"][rid] = keys
        else:
            out["whole"].append(rid)
    return out


def make_filter(known: list[dict[str, Any]], baseline: dict[str, Any]):
    """The per-example filter the engine applies (conformance.gate.FailureFilter)."""
    from ..gate import FailureFilter

    return FailureFilter(known=known, baseline=dict(baseline.get("signatures", {})),
                         baseline_whole=list(baseline.get("whole", [])))


def apply_baseline(result: CheckResult, baseline: dict[str, Any]) -> CheckResult:
    """The result after the baseline (:func:`load_baseline`): a suite ``error`` that the
    baseline had too is not new, so it becomes ``known``, as a new result; anything else is
    ``result`` itself, unchanged. (Failures were already judged per example, by signature,
    inside the search.)"""
    if not baseline or result.status != "error":
        return result
    before = baseline.get("statuses", {}).get(result.id)
    if before not in ("error", "failed"):
        return result
    return replace(result, status="known", baseline=before,
                   known={"reason": f"not passing in the baseline either ({before})",
                          "link": "", "file": "baseline", "index": 0})


# --------------------------------------------------------------------------- end of run
def finish_run(options, setup: RunSetup, run: RunSession, *, interrupted: bool) -> Path:
    """Write results.json, failures/ and repro/ for what ``run`` holds; keep the summary lines
    in ``run.summary_lines``."""
    assert run.out is not None
    out, results = run.out, run.results
    records = [resultsmod.record(r) for r in results]  # what is written; write_failures completes them
    resultsmod.write_failures(out, records, spec_file=setup.spec.file,
                              adapter_specs={name: _adapter_spec(a, name) for name, a in setup.adapters.items()})
    used = _entries_used(results)
    info = {
        "profile": options.profile,
        "seed": options.seed,
        "derandomize": options.derandomize,
        "command": " ".join(run.argv),
        "started": run.started,
        "finished": resultsmod.now(),
        "interrupted": interrupted,
        "versions": resultsmod.versions(),
        "adapters": [_info(a) for a in setup.adapters.values()],
        "known_files": list(dict.fromkeys(list(options.known or []) + [e["file"] for e in setup.known])),
        "strict": options.strict,
        "shard": options.shard,
        "unmatched_known": [f"{e['file']} entry {e['index']} ({e['check']}) matched nothing"
                            for e in setup.known
                            if (e["file"], e["index"]) not in used and _relevant(e, setup)],
    }
    path = resultsmod.write(out, spec=setup.spec, run=info, results=records)
    s = resultsmod.summary(results)
    lines = [f"ce-conformance: {len(results)} checks -> " + ", ".join(f"{v} {k}" for k, v in s.items() if v),
             f"ce-conformance: results written to {path}" + (" (interrupted: partial)" if interrupted else "")]
    lines += [f"ce-conformance: warning: {w}" for w in info["unmatched_known"]]
    lines += [f"ce-conformance: fixed: {r.id} passed but is listed as a known divergence "
              f"({r.known['file']} entry {r.known['index']}): remove the entry"
              for r in results if r.status == "fixed" and r.known is not None]
    run.summary_lines = lines
    return path


def _entries_used(results: list[CheckResult]) -> set[tuple[Any, Any]]:
    """(file, index) of every known entry that accepted a failure or was reported fixed, read
    from the results themselves (under xdist the entries were applied in other processes)."""
    used: set[tuple[Any, Any]] = set()
    for r in results:
        for f in r.failures or []:
            acc = f.get("accepted_by") or {}
            if acc.get("by") == "known":
                used.add((acc.get("file"), acc.get("index")))
        if r.status in ("fixed", "known") and isinstance(r.known, dict):
            used.add((r.known.get("file"), r.known.get("index")))
    return used


def _adapter_spec(adapter, name: str) -> str:
    """How a reproduction script names the adapter: its config file (absolute), the string it
    was resolved from, or its name."""
    if adapter is None:
        return name
    return adapter.config_file or adapter.source or name


def _relevant(entry: dict[str, Any], setup: RunSetup) -> bool:
    """Whether an entry that matched nothing deserves a warning in this run: it names an
    adapter of the run, and its check glob either names a check that ran or names no check of
    the spec at all (a typo). Entries for other adapters or for checks left out by --check stay
    quiet."""
    # adapters that could not run here (no GPU, framework missing) cannot match anything
    adapters = [name for name, a in setup.adapters.items() if not a.unavailable()]
    if not any(fnmatch.fnmatchcase(a, entry["adapter"]) for a in adapters):
        return False
    ran = [c.id for c in setup.checks]
    if any(fnmatch.fnmatchcase(c, entry["check"]) for c in ran):
        return True
    try:
        from ..checks import catalogue
        every = [c.id for c in catalogue(setup.spec)]
    except Exception:  # noqa: BLE001 - warn rather than hide
        return True
    return not any(fnmatch.fnmatchcase(c, entry["check"]) for c in every)


def _info(adapter) -> dict[str, Any]:
    try:
        d = adapter.info()
    except Exception as exc:  # noqa: BLE001
        d = {"name": adapter.name, "info_error": str(exc)}
    d["unavailable"] = adapter.unavailable()
    if adapter.config_file:
        from conformance.adapters.base import ALL_FEATURES
        caps = adapter.capabilities
        d["config"] = adapter.config_file
        d["capabilities"] = {"dtypes": sorted(caps.dtypes), "ranks": sorted(caps.ranks),
                             "unsupported": sorted(ALL_FEATURES - set(caps.features)),
                             "variants": sorted(caps.variants), "raises_on_invalid": caps.raises_on_invalid,
                             "max_classes": caps.max_classes}
    return d
