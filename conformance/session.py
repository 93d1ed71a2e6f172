"""Run-level plumbing shared by the pytest plugin and the CLI: which adapters, which known
divergences and baseline apply, and what is written when a run ends (or is interrupted)."""
from __future__ import annotations

import base64
import fnmatch
import sys
from pathlib import Path
from typing import Any

from . import results as resultsmod


class ConfigError(ValueError):
    """A usage or configuration fault: the CLI prints it and exits 2."""


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
        for k in getattr(a, "known_files", None) or []:
            _ADAPTER_KNOWN.append((k, a.name))
    return out


#: Known-divergence files named by adapter configs (``known:``) of the adapters loaded last,
#: with the adapter's name: load_known() adds them to the files given on the command line.
_ADAPTER_KNOWN: list[tuple[str, str]] = []


# --------------------------------------------------------------------------- known divergences
_FILE_KEYS = ("adapter", "known")
_ENTRY_KEYS = ("check", "when", "reason", "link", "adapter")
#: ``when`` keys: fields of the failure's counterexample (Case.describe) plus two tests.
_WHEN_KEYS = ("dtype", "reduction", "target_kind", "regime", "ignore_index", "label_smoothing", "purpose",
              "modifiers", "legacy", "message_contains", "label_smoothing_positive")
_WHEN_VALUES = {"dtype": ("float16", "bfloat16", "float32", "float64"), "reduction": ("none", "sum", "mean"),
                "target_kind": ("index", "probability")}


def load_known(paths: list[str]) -> list[dict[str, Any]]:
    """Entries of known-divergence files: ``{adapter, check, when, reason, link}``; the files
    named by the loaded adapters' configs are added (their entries default to that adapter)."""
    entries: list[dict[str, Any]] = []
    seen = {str(Path(p).resolve()) for p in paths}
    sources = [(p, None) for p in paths]
    sources += [(p, name) for p, name in _ADAPTER_KNOWN if str(Path(p).resolve()) not in seen]
    for p, default_adapter in sources:
        entries += _load_known_file(p, default_adapter)
    return entries


def _load_known_file(p: str, default_adapter: str | None) -> list[dict[str, Any]]:
    from conformance.adapter_config import AdapterConfigError, did_you_mean, load_with_lines

    try:
        doc, lines = load_with_lines(p, what="known-divergence file")
    except AdapterConfigError as exc:
        raise ConfigError(str(exc)) from None

    def bad(at: tuple, message: str, fix: str) -> ConfigError:
        line = lines.get(at) or lines.get(at[:2]) or lines.get(at[:1])
        return ConfigError(f"{p}{f':{line}' if line else ''}: {message}; fix: {fix}")

    if not isinstance(doc, dict) or not isinstance(doc.get("known"), list):
        raise ConfigError(f"{p}: expected a mapping with 'adapter' and a 'known' list; fix: see docs/gating.md "
                          "('adapter: NAME-GLOB' and 'known: [{check: GLOB, reason: ...}]')")
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
            if k in _WHEN_VALUES and v not in _WHEN_VALUES[k]:
                raise bad(("known", i, "when", k),
                          f"known[{i}].when.{k}: unknown value {v!r}{did_you_mean(v, _WHEN_VALUES[k])}",
                          f"use one of {', '.join(_WHEN_VALUES[k])}")
        entries.append({"adapter": str(e.get("adapter", file_adapter)), "check": str(e["check"]),
                        "when": when, "reason": e["reason"], "link": e.get("link", ""),
                        "file": p, "index": i, "matched": 0})
    return entries


def _when_matches(when: dict[str, Any], result: dict[str, Any]) -> bool:
    failure = result.get("failure") or {}
    ce = failure.get("counterexample") or {}
    for key, want in when.items():
        if key == "message_contains":
            if str(want) not in (failure.get("message") or ""):
                return False
        elif key == "label_smoothing_positive":
            if bool(want) != (isinstance(ce.get("label_smoothing"), (int, float)) and ce["label_smoothing"] > 0):
                return False
        elif ce.get(key) != want:
            return False
    return True


def apply_known(result: dict[str, Any], entries: list[dict[str, Any]], *, strict: bool) -> None:
    for e in entries:
        if not fnmatch.fnmatchcase(result["adapter"], e["adapter"]) or not fnmatch.fnmatchcase(result["check"], e["check"]):
            continue
        if result["status"] == "failed" and _when_matches(e["when"], result):
            e["matched"] += 1
            result["known"] = {k: e[k] for k in ("reason", "link", "file", "index")}
            if not strict:
                result["status"] = "known"
            return
        if result["status"] == "passed" and not e["when"]:
            result["known"] = {k: e[k] for k in ("reason", "link", "file", "index")}
            result["status"] = "fixed"
            result["message"] = (f"listed as a known divergence ({e['file']} entry {e['index']}) but passed: "
                                 "remove the entry if it is fixed")
            e["matched"] += 1
            return


def load_baseline(path: str | None) -> dict[str, str]:
    """Statuses by result id from an earlier results.json (empty without one)."""
    if not path:
        return {}
    try:
        doc = resultsmod.load(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {r["id"]: r["status"] for r in doc["results"]}


def apply_baseline(result: dict[str, Any], baseline: dict[str, str]) -> None:
    """With a baseline, only checks that passed there can fail now."""
    if not baseline or result["status"] not in ("failed", "error"):
        return
    before = baseline.get(result["id"])
    if before not in ("passed", "variant", "fixed"):
        result["baseline"] = before or "absent"
        result["status"] = "known"
        result["known"] = {"reason": f"not passing in the baseline either ({before or 'absent there'})",
                           "link": "", "file": "baseline", "index": 0}


# --------------------------------------------------------------------------- end of run
def finish_run(config, state: dict[str, Any], *, interrupted: bool) -> Path | None:
    from .repro import write_repro

    out: Path = state["out"]
    results = state.get("results", [])
    out.mkdir(parents=True, exist_ok=True)
    (out / "failures").mkdir(exist_ok=True)
    for r in results:
        blob = r.pop("failure_inputs_b64", None)
        if blob and r.get("failure"):
            name = resultsmod.safe_name(r["id"])
            (out / "failures" / f"{name}.npz").write_bytes(base64.b64decode(blob))
            r["failure"]["inputs"] = f"failures/{name}.npz"
            a = state["adapters"].get(r["adapter"])
            r["failure"]["repro"] = str(write_repro(out, r, base64.b64decode(blob), spec_file=state["spec"].file,
                                                    adapter_spec=_adapter_spec(a, r["adapter"])))
    run = {
        "profile": config.getoption("--ce-profile"),
        "seed": config.getoption("--ce-seed"),
        "derandomize": config.getoption("--ce-derandomize"),
        "command": " ".join(state.get("argv") or sys.argv),
        "started": state.get("started"),
        "finished": resultsmod.now(),
        "interrupted": interrupted,
        "versions": resultsmod.versions(),
        "adapters": [_info(a) for a in state["adapters"].values()],
        "known_files": list(dict.fromkeys(list(config.getoption("--ce-known"))
                                          + [e["file"] for e in state.get("known", [])])),
        "strict": config.getoption("--ce-strict"),
        "unmatched_known": [f"{e['file']} entry {e['index']} ({e['check']}) matched nothing"
                            for e in state.get("known", []) if not e["matched"] and _relevant(e, state)],
    }
    path = resultsmod.write(out, spec=state["spec"], run=run, results=results)
    s = resultsmod.summary(results)
    lines = [f"ce-conformance: {len(results)} checks -> " + ", ".join(f"{v} {k}" for k, v in s.items() if v),
             f"ce-conformance: results written to {path}" + (" (interrupted: partial)" if interrupted else "")]
    lines += [f"ce-conformance: warning: {w}" for w in run["unmatched_known"]]
    lines += [f"ce-conformance: fixed: {r['id']} passed but is listed as a known divergence "
              f"({r['known']['file']} entry {r['known']['index']}): remove the entry"
              for r in results if r["status"] == "fixed"]
    state["summary_lines"] = lines
    return path


def _adapter_spec(adapter, name: str) -> str:
    """How a reproduction script names the adapter: its config file (absolute), the string it
    was resolved from, or its name."""
    if adapter is None:
        return name
    return getattr(adapter, "config_file", None) or getattr(adapter, "source", None) or name


def _relevant(entry: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether an entry that matched nothing deserves a warning in this run: it names an
    adapter of the run, and its check glob either names a check that ran or names no check of
    the spec at all (a typo). Entries for other adapters or for checks left out by --check stay
    quiet."""
    # adapters that could not run here (no GPU, framework missing) cannot match anything
    adapters = [name for name, a in state.get("adapters", {}).items() if not a.unavailable()]
    if not any(fnmatch.fnmatchcase(a, entry["adapter"]) for a in adapters):
        return False
    ran = [c.id for c in state.get("checks", [])]
    if any(fnmatch.fnmatchcase(c, entry["check"]) for c in ran):
        return True
    try:
        from .checks import catalogue
        every = [c.id for c in catalogue(state["spec"])]
    except Exception:  # noqa: BLE001 - warn rather than hide
        return True
    return not any(fnmatch.fnmatchcase(c, entry["check"]) for c in every)


def _info(adapter) -> dict[str, Any]:
    try:
        d = adapter.info()
    except Exception as exc:  # noqa: BLE001
        d = {"name": adapter.name, "info_error": str(exc)}
    d["unavailable"] = adapter.unavailable()
    if getattr(adapter, "config_file", None):
        from conformance.adapters.base import ALL_FEATURES
        caps = adapter.capabilities
        d["config"] = adapter.config_file
        d["capabilities"] = {"dtypes": sorted(caps.dtypes), "ranks": sorted(caps.ranks),
                             "unsupported": sorted(ALL_FEATURES - set(caps.features)),
                             "variants": sorted(caps.variants), "raises_on_invalid": caps.raises_on_invalid,
                             "max_classes": caps.max_classes}
    return d
