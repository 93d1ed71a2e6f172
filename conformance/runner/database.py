"""The Hypothesis example database a run reads and writes, from one spec string.

A counterexample found on one machine should be replayed first everywhere: Hypothesis stores
every failing example under the test's key and tries stored examples before generating new
ones (``Phase.reuse``). The suite's database keys depend only on the adapter's name, the
check and the engine's code (conformance/engine.py ``_hypothesis``), never on the folder, so
any machine that shares the database replays them.

A *database spec* is one string, so that it crosses the worker protocol as JSON and the
database is built where the search runs (conformance/runner/worker.py): entries joined by ``;``,
each ``[ro:]TARGET`` with TARGET one of

- a directory (``.hypothesis/ce-conformance``): :class:`DirectoryBasedExampleDatabase`;
- ``redis://HOST[:PORT][/DB]`` or ``rediss://...``:
  :class:`hypothesis.extra.redis.RedisExampleDatabase` (needs the ``redis`` package);
- ``github:OWNER/REPO[/ARTIFACT]``: :class:`GitHubArtifactDatabase`, the database a GitHub
  Actions workflow uploaded as an artifact (default name ``hypothesis-example-db``; reads
  need ``GITHUB_TOKEN``); read-only by nature.

``ro:`` wraps an entry in :class:`ReadOnlyDatabase`; several entries make a
:class:`MultiplexedDatabase` (reads from all, writes to the writable ones). The documented
pattern (docs/gating.md): CI writes (``--database redis://ci-host``), developers read
through ``--database-readonly redis://ci-host`` next to their own local folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..diagnostics import UserError

#: The local folder used when no --database is given (and the run is not derandomised).
DEFAULT_DIR = os.path.join(".hypothesis", "ce-conformance")
#: Redis keys of the suite start with this (several projects may share one server).
REDIS_PREFIX = b"ce-conformance:"
_GITHUB = re.compile(r"^github:([A-Za-z0-9][A-Za-z0-9-]*)/([A-Za-z0-9._-]+)(?:/([A-Za-z0-9._-]+))?$")


class DatabaseError(UserError, ValueError):
    """A database spec that cannot be used: one line with the fix (exit 2 in the CLI)."""


def compose(writable: list[str], readonly: list[str], *, default: str | None = DEFAULT_DIR) -> str | None:
    """The spec string of a run: its ``--database`` entries (``default`` when none) and its
    ``--database-readonly`` entries (prefixed ``ro:``); directories made absolute (the worker
    and the shards may start elsewhere). None: no database."""
    entries = [e for e in (writable or ([default] if default else []))]
    entries += ["ro:" + e for e in readonly]
    out = []
    for e in entries:
        ro, target = (True, e[3:]) if e.startswith("ro:") else (False, e)
        if ";" in target:
            raise DatabaseError(f"database {target!r}: ';' separates database entries; fix: give one database "
                                "per option")
        if _kind(target) == "directory":
            target = os.path.abspath(target)
        out.append(("ro:" if ro else "") + target)
    return ";".join(out) or None


def _kind(target: str) -> str:
    if target.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    if target.startswith("github:"):
        return "github"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", target):
        return "unknown"
    return "directory"


def entries(spec: str | None) -> list[tuple[bool, str, str]]:
    """(read-only, kind, target) of every entry of ``spec``."""
    out = []
    for e in (spec or "").split(";"):
        if not e:
            continue
        ro, target = (True, e[3:]) if e.startswith("ro:") else (False, e)
        out.append((ro, _kind(target), target))
    return out


def build(spec: str | None):
    """The Hypothesis database for ``spec`` (None for no database); DatabaseError otherwise."""
    from hypothesis.database import MultiplexedDatabase, ReadOnlyDatabase

    dbs = []
    for ro, kind, target in entries(spec):
        db = _one(kind, target)
        dbs.append(ReadOnlyDatabase(db) if ro and kind != "github" else db)
    if not dbs:
        return None
    return dbs[0] if len(dbs) == 1 else MultiplexedDatabase(*dbs)


def _one(kind: str, target: str):
    if kind == "directory":
        from hypothesis.database import DirectoryBasedExampleDatabase

        p = Path(target)
        if p.exists() and not p.is_dir():
            raise DatabaseError(f"--database {target}: is a file, not a folder; fix: give a folder (created if "
                                "missing)")
        return DirectoryBasedExampleDatabase(str(p))
    if kind == "redis":
        try:
            import redis
            from hypothesis.extra.redis import RedisExampleDatabase
        except ImportError:
            raise DatabaseError(f"--database {target}: the redis package is not installed; fix: pip install redis "
                                "(or pip install 'ce-conformance[test]')") from None
        try:
            client = redis.Redis.from_url(target, socket_connect_timeout=5, socket_timeout=30)
        except ValueError as exc:
            raise DatabaseError(f"--database {target}: not a Redis URL ({exc}); fix: write "
                                "redis://HOST:PORT/DB") from None
        return RedisExampleDatabase(client, key_prefix=REDIS_PREFIX)
    if kind == "github":
        m = _GITHUB.match(target)
        if not m:
            raise DatabaseError(f"--database {target}: expected github:OWNER/REPO or github:OWNER/REPO/ARTIFACT; "
                                "fix: e.g. github:my-org/my-repo")
        from hypothesis.database import GitHubArtifactDatabase

        owner, repo, artifact = m.groups()
        return GitHubArtifactDatabase(owner, repo, artifact_name=artifact or "hypothesis-example-db")
    raise DatabaseError(f"--database {target}: unknown kind of database; fix: give a folder, redis://HOST:PORT/DB "
                        "or github:OWNER/REPO")


def check(spec: str | None) -> None:
    """Fail early (DatabaseError) for a spec that cannot be built or a Redis server that does
    not answer, before any check runs."""
    build(spec)
    for _, kind, target in entries(spec):
        if kind != "redis":
            continue
        import redis

        try:
            redis.Redis.from_url(target, socket_connect_timeout=5, socket_timeout=5).ping()
        except redis.RedisError as exc:
            raise DatabaseError(f"--database {target}: the Redis server does not answer ({exc}); "
                                "fix: start it, or check host, port and password") from None
