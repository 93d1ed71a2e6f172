"""A pool of long-lived worker processes that form one torch.distributed group.

Vocabulary-parallel implementations only mean something across real ranks: their bugs live
in the all-reduces. Starting a process group costs seconds (a Python interpreter and torch per
rank), so a :class:`RankPool` starts its R workers once and sends them every example; each
worker runs ``fn(payload)`` for the payload meant for its rank and answers over a pipe.

Faults stay inside the pool. A rank that raises while the others answer, a rank that does not
answer within ``timeout`` seconds (hung), and a rank whose process ends (died) each raise
:class:`RankFailure` naming the rank and the reason; the whole group is then killed and the
next :meth:`RankPool.run` starts a fresh one. When every rank raises (an input every rank
rejects before any collective, such as an out-of-range label), the group is probed with a
barrier and kept if it answers, so the error-contract checks do not pay a restart each.

Workers are ``python -m conformance.distributed`` subprocesses (never a re-import of the
caller's ``__main__``); they get the caller's ``sys.path`` and talk over inherited pipes with
:class:`multiprocessing.connection.Connection` framing. Their stdout goes to stderr so that
a library's prints cannot corrupt the protocol. Rendezvous is a fresh ``file://`` store per
group: no port to collide on.
"""
from __future__ import annotations

import atexit
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

#: Seconds a rank may take for one call before it is declared hung (configurable per pool).
DEFAULT_TIMEOUT = 60.0
#: Seconds the workers may take to start and join the group (interpreter + torch import).
START_TIMEOUT = 180.0
_LIVE: set[RankPool] = set()


class RankFailure(RuntimeError):
    """A rank raised while others did not, hung past the timeout, or died; the group was
    torn down and the next call starts a fresh one."""


class AllRanksRaised(Exception):
    """Every rank raised: the implementation rejected the input (the group is kept).
    ``messages[r]`` is rank r's ``Type: message``; ``str()`` is rank 0's."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        same = all(m == messages[0] for m in messages)
        super().__init__(messages[0] if same else "; ".join(f"rank {r}: {m}" for r, m in enumerate(messages)))


def _barrier(_payload=None):
    import torch.distributed as dist
    dist.barrier()
    return True


class RankPool:
    """R workers in one process group (``backend`` gloo on CPU, nccl for CUDA devices)."""

    def __init__(self, world_size: int, *, backend: str = "gloo", timeout: float = DEFAULT_TIMEOUT,
                 start_timeout: float = START_TIMEOUT, device: str = "cpu"):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size, self.backend, self.timeout = world_size, backend, timeout
        self.start_timeout, self.device = start_timeout, device
        self.generation = 0  # how many groups this pool has started
        self._procs: list[subprocess.Popen] = []
        self._conns: list[_Duplex] = []
        self._dir: str | None = None
        self._sent_path: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def start(self) -> None:
        self.close()
        self.generation += 1
        self._dir = tempfile.mkdtemp(prefix="ce-dist-")
        self._sent_path = list(sys.path)
        store = os.path.join(self._dir, "store")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        for rank in range(self.world_size):
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            cmd = [sys.executable, "-m", "conformance.distributed", str(to_child_r), str(from_child_w)]
            proc = subprocess.Popen(cmd, pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
            os.close(to_child_r)
            os.close(from_child_w)
            conn_out, conn_in = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
            self._procs.append(proc)
            self._conns.append(_Duplex(conn_in, conn_out))
            conn_out.send({"sys_path": list(sys.path), "rank": rank, "world_size": self.world_size,
                           "backend": self.backend, "store": store, "timeout": self.timeout,
                           "device": self.device})
        _LIVE.add(self)
        answers = self._collect(self.start_timeout, what="start the process group")
        bad = [(r, a) for r, a in enumerate(answers) if a[0] != "ok"]
        if bad:
            self.close()
            raise RankFailure("; ".join(f"rank {r} could not join the {self.backend} group: {a[1]}" for r, a in bad))

    def close(self) -> None:
        """Kill every worker (they may be stuck in a collective) and remove the store."""
        for c in self._conns:
            try:
                c.out.send(None)
            except (OSError, ValueError):
                pass
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for c in self._conns:
            c.close()
        self._procs, self._conns = [], []
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _LIVE.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ calls
    def run(self, fn: Callable[[Any], Any], payloads: Sequence[Any]) -> list[Any]:
        """``fn(payloads[r])`` on rank r, for every rank; the list of their return values.

        Raises :class:`AllRanksRaised` when every rank raised, :class:`RankFailure` for any
        other fault (after tearing the group down)."""
        if len(payloads) != self.world_size:
            raise ValueError(f"{len(payloads)} payloads for {self.world_size} ranks")
        if not self.alive:
            self.start()
        try:
            blobs = [pickle.dumps((fn, p), protocol=pickle.HIGHEST_PROTOCOL) for p in payloads]
        except Exception as exc:  # noqa: BLE001 - pickle raises several types
            raise TypeError(f"cannot send {fn!r} to the ranks ({exc}); fix: make the rank implementation a "
                            "module-level function or object that the workers can import") from None
        path = list(sys.path) if sys.path != self._sent_path else None  # workers import what we can
        self._sent_path = list(sys.path)
        for c, blob in zip(self._conns, blobs):
            try:
                c.out.send((path, blob))
            except (OSError, ValueError) as exc:
                self._fail(f"cannot send to a rank ({exc})")
        answers = self._collect(self.timeout, what="answer")
        errors = [a[1] for a in answers if a[0] == "error"]
        if not errors:
            return [a[1] for a in answers]
        if len(errors) < self.world_size:
            detail = "; ".join(f"rank {r} raised {a[1]}" for r, a in enumerate(answers) if a[0] == "error")
            self._fail(f"{detail} while the other ranks returned")
        # Every rank raised. Keep the group only if it still completes a barrier.
        try:
            for c in self._conns:
                c.out.send((None, pickle.dumps((_barrier, None))))
            probe = self._collect(min(self.timeout, 20.0), what="complete a barrier after raising")
            if any(a[0] != "ok" for a in probe):
                self._fail("the group did not complete a barrier after every rank raised")
        except RankFailure:
            pass  # torn down; the next call starts a fresh group
        raise AllRanksRaised(errors)

    def _fail(self, reason: str):
        self.close()
        raise RankFailure(f"{reason}; the process group was torn down and will be rebuilt")

    def _collect(self, timeout: float, *, what: str) -> list[tuple]:
        """One answer per rank within ``timeout`` seconds, or :class:`RankFailure`."""
        deadline = time.monotonic() + timeout
        answers: dict[int, tuple] = {}
        pending: dict[Any, int] = {c.inp: r for r, c in enumerate(self._conns)}
        while pending:
            left = deadline - time.monotonic()
            ready = wait(list(pending), timeout=max(0.0, left)) if left > 0 else []
            if not ready:
                late = sorted(pending.values())
                self._fail(f"rank{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} did not {what} "
                           f"within {timeout:g} s (hung)")
            for conn in ready:
                assert isinstance(conn, Connection)  # wait() hands back what it was given
                r = pending.pop(conn)
                try:
                    answers[r] = conn.recv()
                except (EOFError, OSError):
                    proc = self._procs[r]
                    code = proc.wait(timeout=5) if proc.poll() is None else proc.returncode
                    self._fail(f"rank {r} died (exit code {code}) before it could {what}")
        return [answers[r] for r in range(self.world_size)]


class _Duplex:
    def __init__(self, inp: Connection, out: Connection):
        self.inp, self.out = inp, out

    def close(self):
        for c in (self.inp, self.out):
            try:
                c.close()
            except OSError:
                pass


@atexit.register
def _close_all():
    for pool in list(_LIVE):
        pool.close()


# --------------------------------------------------------------------------- the worker
def _worker(inp: Connection, out: Connection) -> int:
    cfg = inp.recv()
    sys.path[:] = cfg["sys_path"]
    try:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        if cfg["device"].startswith("cuda"):
            torch.cuda.set_device(cfg["rank"] % torch.cuda.device_count())
        dist.init_process_group(cfg["backend"], init_method="file://" + cfg["store"], rank=cfg["rank"],
                                world_size=cfg["world_size"], timeout=timedelta(seconds=max(cfg["timeout"], 1.0)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    out.send(("ok", os.getpid()))
    while True:
        try:
            msg = inp.recv()
        except EOFError:
            break
        if msg is None:
            break
        path, blob = msg
        if path is not None:
            sys.path[:] = path
        try:
            fn, payload = pickle.loads(blob)  # here: a function this worker cannot import is an error
            answer = ("ok", fn(payload))
        except Exception as exc:  # noqa: BLE001 - an implementation may raise anything
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
            answer = ("error", f"{type(exc).__name__}: {exc}{where}")
        try:
            out.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            out.send(("error", f"the rank's result cannot be sent back ({type(exc).__name__}: {exc})"))
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the parent is gone or closing
        pass
    if cfg["rank"] == 0:  # a parent that ended without close() (os._exit) leaves the store to us
        shutil.rmtree(os.path.dirname(cfg["store"]), ignore_errors=True)
    return 0


if __name__ == "__main__":
    # stdout belongs to the user's code: point it at stderr, the protocol uses its own pipes.
    os.dup2(2, 1)
    sys.exit(_worker(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)))
