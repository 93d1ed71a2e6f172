"""Run-level plumbing shared by the pytest plugin and the CLI: which adapters, which known
divergences and baseline apply, and what is written when a run ends (or is interrupted)."""
from __future__ import annotations

import base64
import fnmatch
import sys
from pathlib import Path
from typing import Any

import yaml

from . import results as resultsmod


class ConfigError(ValueError):
    """A usage or configuration fault: the CLI prints it and exits 2."""


def load_adapters(names: list[str]) -> dict[str, Any]:
    from conformance.adapters import DEFAULT_ADAPTERS, resolve

    chosen = names or list(DEFAULT_ADAPTERS)
    out: dict[str, Any] = {}
    for n in chosen:
        try:
            a = resolve(n)
        except Exception as exc:  # noqa: BLE001 - AdapterError and import failures alike
            raise ConfigError(f"--adapter {n}: {exc}") from None
        out[a.name] = a
    return out


# --------------------------------------------------------------------------- known divergences
def load_known(paths: list[str]) -> list[dict[str, Any]]:
    """Entries of known-divergence files: ``{adapter, check, when, reason, link}``."""
    entries: list[dict[str, Any]] = []
    for p in paths:
        try:
            doc = yaml.safe_load(Path(p).read_text())
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read known-divergence file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(f"{p}:{mark.line + 1 if mark else '?'}: not valid YAML") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("known"), list):
            raise ConfigError(f"{p}: expected a mapping with 'adapter' and a 'known' list "
                              "(see docs/gating.md)")
        for i, e in enumerate(doc["known"]):
            if not isinstance(e, dict) or "check" not in e or "reason" not in e:
                raise ConfigError(f"{p}: known[{i}] needs 'check' and 'reason'")
            entries.append({"adapter": e.get("adapter", doc.get("adapter", "*")), "check": e["check"],
                            "when": e.get("when") or {}, "reason": e["reason"], "link": e.get("link", ""),
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
            r["failure"]["repro"] = str(write_repro(out, r, base64.b64decode(blob), spec_file=state["spec"].file))
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
        "known_files": config.getoption("--ce-known"),
        "strict": config.getoption("--ce-strict"),
        "unmatched_known": [f"{e['file']} entry {e['index']} ({e['check']}) matched nothing"
                            for e in state.get("known", []) if not e["matched"]],
    }
    path = resultsmod.write(out, spec=state["spec"], run=run, results=results)
    s = resultsmod.summary(results)
    lines = [f"ce-conformance: {len(results)} checks -> " + ", ".join(f"{v} {k}" for k, v in s.items() if v),
             f"ce-conformance: results written to {path}" + (" (interrupted: partial)" if interrupted else "")]
    lines += [f"ce-conformance: warning: {w}" for w in run["unmatched_known"]]
    state["summary_lines"] = lines
    return path


def _info(adapter) -> dict[str, Any]:
    try:
        d = adapter.info()
    except Exception as exc:  # noqa: BLE001
        d = {"name": adapter.name, "info_error": str(exc)}
    d["unavailable"] = adapter.unavailable()
    return d
