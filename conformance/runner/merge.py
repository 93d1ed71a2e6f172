"""``ce-conformance report a.json b.json ... --out DIR``: shard results merged into one run.

Shards of one run (``--shard i/n`` on several machines or CI jobs) each write a results.json;
merged, they must read as if one machine had run everything: one results.json, one
junit.xml and one report, with every failure's inputs and reproduction script copied beside
them. Results of different runs do not mix: files whose spec (sha256), seed, profile,
derandomisation or suite version differ are refused, as are two files holding the same
result (a shard given twice) - one line naming the two files and what differs, exit 2.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..diagnostics import UserError
from . import results as resultsmod

#: What must be equal in every merged file: (where, label).
_SAME = ((("spec", "sha256"), "spec (sha256)"), (("run", "seed"), "seed"), (("run", "profile"), "profile"),
         (("run", "derandomize"), "--ci"), (("run", "versions", "ce-conformance"), "suite version"))


class MergeError(UserError, ValueError):
    """Files that cannot be merged into one run (exit 2 in the CLI)."""


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = doc
    for k in path:
        value = value.get(k) if isinstance(value, dict) else None
    return value


def compatible(docs: list[tuple[str, dict[str, Any]]]) -> None:
    """MergeError unless every file belongs to the same run."""
    first_file, first = docs[0]
    for f, doc in docs[1:]:
        for path, label in _SAME:
            a, b = _get(first, path), _get(doc, path)
            if a != b:
                raise MergeError(f"{f}: cannot merge with {first_file}: different {label} ({_show(b)} vs {_show(a)}); "
                                 "fix: merge only the shards of one run (same spec, seed, profile and suite version)")
    totals = {str(_get(d, ("run", "shard")) or "").partition("/")[2] for _, d in docs}
    if len(totals) > 1:
        raise MergeError(f"the files were split into different numbers of shards ({', '.join(sorted(totals))}); "
                         "fix: merge the shards of one run")


def _show(v: Any) -> str:
    return "none" if v is None else (v[:12] if isinstance(v, str) and len(v) == 64 else repr(v))


def merge(files: list[str], out_dir: Path) -> tuple[Path, list[str]]:
    """Write the merged results.json and junit.xml (and failures/, repro/) in ``out_dir``;
    return the results.json path and warnings (shards missing)."""
    docs = []
    for f in files:
        try:
            docs.append((f, resultsmod.load(f)))
        except ValueError as exc:
            raise MergeError(str(exc)) from None
    compatible(docs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged: list[dict[str, Any]] = []
    owner: dict[str, str] = {}
    for f, doc in docs:
        base = Path(f).resolve().parent
        for r in doc["results"]:
            if r["id"] in owner:
                raise MergeError(f"{f}: result {r['id']} is also in {owner[r['id']]}: the files overlap (one shard "
                                 "given twice?); fix: give each shard's results.json once")
            owner[r["id"]] = f
            _copy_failure_files(r, base, out_dir)
            merged.append(r)
    run = _merged_run([d for _, d in docs], files)
    path = resultsmod.write(out_dir, spec=docs[0][1].get("spec") or {}, run=run, results=merged)
    resultsmod.write_junit(out_dir / "junit.xml", merged)
    return path, _missing_shards(run["shards"])


def _copy_failure_files(r: dict[str, Any], base: Path, out_dir: Path) -> None:
    f = r.get("failure") or {}
    if base == out_dir.resolve():
        return
    for key in ("inputs", "repro"):
        rel = f.get(key)
        if not rel:
            continue
        src = base / rel
        targets = [src] if key == "inputs" else [src.with_suffix(s) for s in (".py", ".json", ".npz")]
        for s in targets:
            if s.is_file():
                dest = out_dir / s.relative_to(base)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(s, dest)


def _merged_run(docs: list[dict[str, Any]], files: list[str]) -> dict[str, Any]:
    run = dict(docs[0].get("run") or {})
    adapters: dict[str, Any] = {}
    for d in docs:
        for a in (d.get("run") or {}).get("adapters") or []:
            if isinstance(a, dict) and a.get("name") is not None:
                adapters.setdefault(str(a["name"]), a)
    runs = [d.get("run") or {} for d in docs]
    started: list[str] = [r["started"] for r in runs if r.get("started")]
    finished: list[str] = [r["finished"] for r in runs if r.get("finished")]
    run.update({
        "adapters": list(adapters.values()),
        "started": min(started) if started else None,
        "finished": max(finished) if finished and len(finished) == len(runs) else None,
        "interrupted": any(r.get("interrupted") for r in runs),
        "shard": None,
        "shards": [{"file": str(f), "shard": r.get("shard"), "command": r.get("command")} for f, r in zip(files, runs)],
        # a known entry matched nothing in the merged run only if it matched nothing in any shard
        "unmatched_known": sorted(set.intersection(*[set(r.get("unmatched_known") or []) for r in runs])),
    })
    return run


def _missing_shards(shards: list[dict[str, Any]]) -> list[str]:
    given = [s.get("shard") for s in shards if s.get("shard")]
    if not given:
        return []
    n = int(str(given[0]).partition("/")[2] or 0)
    have = {int(str(g).partition("/")[0]) for g in given}
    missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in have]
    return [f"shard(s) {', '.join(missing)} not given: the merged results lack their checks"] if missing else []
