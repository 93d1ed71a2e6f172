"""One long-lived worker process per adapter, so that the adapter cannot take the run down.

The gate runs code that is under suspicion by definition: an adapter may call ``os._exit``,
abort, segfault, hang, raise ``SystemExit``/``KeyboardInterrupt``, leave threads running or
change process-wide state (NumPy's error state, torch's grad mode, the current folder). So
every check of an adapter runs in that adapter's own process (``python -m
conformance.runner.worker``), started on its first check and reused for the others:

- the parent talks to it over pipes (one JSON line per request and per answer, on file
  descriptors the adapter cannot reach: the child's fd 1 is pointed at its stderr and fd 0 at
  /dev/null before the adapter is imported);
- every call has a timeout; a worker that runs past it is killed and marked dead, so a hung
  adapter costs one timeout and its remaining checks are ``error`` at once, with the reason;
- a worker that dies (exit, abort, signal) turns the check into ``error`` with the exit code or
  signal and the last lines of its stderr; it is restarted for the next check, until it has
  died :data:`MAX_CRASHES` times in a row;
- inside the worker, any BaseException out of the check is that check's ``error``; global
  state is reset before each check and restored after every adapter call, and an adapter
  that changed it, or left a non-daemon thread running, gets ``error`` with what it changed.

:func:`result_from_json` rebuilds the parent's :class:`~conformance.engine.CheckResult`.
"""
from __future__ import annotations

import atexit
import base64
import collections
import faulthandler
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

#: A worker that died this many times in a row (without a check finishing in between) is
#: not restarted: the adapter's remaining checks are errors at once.
MAX_CRASHES = 3
DEFAULT_TIMEOUT = 600.0

_LIVE: set[AdapterWorker] = set()


class WorkerDied(Exception):
    """The worker ended (or was stopped) without answering."""

    def __init__(self, reason: str, returncode: int | None, *, timed_out: bool = False):
        super().__init__(reason)
        self.reason, self.returncode, self.timed_out = reason, returncode, timed_out


def result_from_json(d: dict[str, Any]):
    """A CheckResult from ``to_json()`` output plus ``failure_inputs_b64``."""
    from ..engine import CheckResult

    return CheckResult.from_json(d)


def error_result(name: str, check, message: str):
    from ..engine import CheckResult

    return CheckResult(name, check.id, check.kind, check.clause, check.description, "error",
                       severity=check.severity, message=message)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"killed by signal {-code} (exit code {code})"
    return f"exit code {code}"


class AdapterWorker:
    """The parent's handle on one adapter's worker process."""

    def __init__(self, source: str, *, name: str, spec_file: str, profile: str,
                 timeout: float = DEFAULT_TIMEOUT, max_crashes: int = MAX_CRASHES):
        self.source, self.name, self.spec_file, self.profile = source, name, spec_file, profile
        self.timeout, self.max_crashes = float(timeout), max_crashes
        self.proc: subprocess.Popen | None = None
        self.dead: str | None = None          # why the adapter's checks no longer run
        self.crashes = 0
        self.last_returncode: int | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=400)
        self._buf = b""
        self._drainer: threading.Thread | None = None

    # ------------------------------------------------------------------ process
    def _start(self) -> dict[str, Any]:
        self._buf = b""
        self._stderr.clear()
        self.proc = subprocess.Popen([sys.executable, "-m", "conformance.runner.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     close_fds=True)
        _LIVE.add(self)
        self._drainer = threading.Thread(target=self._drain, args=(self.proc.stderr, self._stderr), daemon=True,
                                         name=f"ce-worker-stderr-{self.name}")
        self._drainer.start()
        # importing a framework can take a while on a loaded machine: never less than a minute
        return self._call({"op": "init", "source": self.source, "spec_file": self.spec_file, "profile": self.profile,
                    "sys_path": list(sys.path), "cwd": os.getcwd(), "parent": os.getpid()}, what="starting",
                          timeout=max(self.timeout, 60.0))

    @staticmethod
    def _drain(stream, tail: collections.deque) -> None:
        try:
            for raw in iter(stream.readline, b""):
                tail.append(raw.decode("utf-8", "replace").rstrip()[:500])
        except (OSError, ValueError):
            pass

    def stderr_tail(self, n: int = 8) -> str:
        """The end of the worker's stderr; after a fatal signal, faulthandler's first lines
        (the signal and the innermost frames: where the adapter crashed) instead."""
        lines = [ln for ln in list(self._stderr) if ln.strip()]
        fatal = [i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")]
        if fatal:
            head = lines[fatal[-1]:]
            lines = [head[0]] + [ln.strip() for ln in head[1:] if ln.strip().startswith("File ")][:4]
        else:
            lines = lines[-n:]
        return " | ".join(lines)[-1500:]

    def _kill(self) -> None:
        p, self.proc = self.proc, None
        _LIVE.discard(self)
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.last_returncode = p.returncode
        for s in (p.stdin, p.stdout):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass

    def close(self) -> None:
        """Ask the worker to exit, then make sure it has."""
        p = self.proc
        if p is not None and p.poll() is None and p.stdin is not None:
            try:
                p.stdin.write(b'{"op": "exit"}\n')
                p.stdin.flush()
                p.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self._kill()

    # ------------------------------------------------------------------ protocol
    def _call(self, request: dict[str, Any], *, what: str, timeout: float | None = None) -> dict[str, Any]:
        p = self.proc
        assert p is not None and p.stdin is not None and p.stdout is not None  # started with both pipes
        try:
            p.stdin.write((json.dumps(request) + "\n").encode())
            p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: reading says how
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        fd = p.stdout.fileno()
        try:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill()
                    raise WorkerDied(f"the adapter ran past the {timeout:g} s timeout while {what} "
                                     f"and its worker process was stopped", self.last_returncode, timed_out=True)
                ready, _, _ = select.select([fd], [], [], min(left, 1.0))
                if ready:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    self._buf += chunk
        except WorkerDied:
            raise
        except BaseException:
            # interrupted (SIGINT/SIGTERM in the parent): the worker is mid-check, stop it
            self._kill()
            raise
        if b"\n" not in self._buf:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._kill()
            if self._drainer is not None:
                self._drainer.join(2.0)  # the last lines of stderr (faulthandler's traceback)
            tail = self.stderr_tail()
            raise WorkerDied(f"the adapter's worker process ended while {what}, "
                             f"{_describe_exit(self.last_returncode)}, without a result"
                             + (f"; last stderr: {tail}" if tail else ""), self.last_returncode)
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            answer = json.loads(line)
            if not isinstance(answer, dict) or not ({"result", "ready", "fatal"} & set(answer)):
                raise ValueError("not an answer")
        except ValueError:
            self._kill()
            raise WorkerDied(f"the adapter's worker process sent a garbled answer while {what} "
                             f"(something wrote into its protocol pipe): {line[:200]!r}",
                             self.last_returncode) from None
        return answer

    def run(self, check, *, seed: int | None = None, derandomize: bool = False, database_dir: str | None = None,
            gate_json: dict[str, Any] | None = None, one_shot: bool = False, database: str | None = None):
        """Run ``check`` in the worker and return its CheckResult; never raises for adapter faults
        (:class:`WorkerDied` only with ``one_shot``, for the caller to judge the death)."""
        if self.dead:
            return error_result(self.name, check, f"not run: {self.dead}")
        request = {"op": "check", "check": check.id, "seed": seed, "derandomize": bool(derandomize),
                   "database": _database_spec(database or database_dir), "gate": gate_json}
        t0 = time.perf_counter()
        try:
            answer = self._start() if self.proc is None else {}
            if "fatal" not in answer:
                answer = self._call(request, what=f"running {check.id}")
        except WorkerDied as exc:
            if one_shot:
                raise
            if exc.timed_out:
                self.dead = f"{exc.reason} (during {check.id})"
            else:
                self.crashes += 1
                if self.crashes >= self.max_crashes:
                    self.dead = (f"the adapter's worker process died {self.crashes} times in a row "
                                 f"(last during {check.id}: {exc.reason})")
            r = error_result(self.name, check, exc.reason)
            r.duration_s = round(time.perf_counter() - t0, 3)
            return r
        if "fatal" in answer:
            self._kill()
            self.dead = answer["fatal"]
            return error_result(self.name, check, answer["fatal"])
        self.crashes = 0
        return result_from_json(answer["result"])


def _database_spec(spec: str | None) -> str | None:
    """A database spec (conformance/runner/database.py) with its folders made absolute: the worker
    builds the database itself, from the same string."""
    if not spec:
        return None
    from .database import compose, entries

    return compose([t for ro, _, t in entries(spec) if not ro], [t for ro, _, t in entries(spec) if ro], default=None)


@atexit.register
def close_all() -> None:
    """Stop every worker this process started (end of session, or interpreter exit)."""
    for w in list(_LIVE):
        w.close()


# ====================================================================== the worker side
_NP_DEFAULTS = {"divide": "warn", "over": "warn", "under": "ignore", "invalid": "warn"}


class _StateGuard:
    """Process-wide state the suite relies on: reset before each check, restored after every
    adapter call, and every change an adapter made recorded."""

    def __init__(self, cwd: str):
        import numpy as np

        self.np, self.cwd = np, cwd
        self.changes: list[str] = []
        self.base_exception: tuple[BaseException, str] | None = None
        self.torch_threads: int | None = None

    def snapshot(self) -> dict[str, Any]:
        s: dict[str, Any] = {"NumPy error state (np.seterr)": self.np.geterr()}
        try:
            s["current folder (os.chdir)"] = os.getcwd()
        except OSError:  # the folder was removed under us
            s["current folder (os.chdir)"] = None
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "is_grad_enabled"):
            s["torch grad mode (torch.set_grad_enabled)"] = torch.is_grad_enabled()
            s["torch default dtype (torch.set_default_dtype)"] = str(torch.get_default_dtype())
            s["torch threads (torch.set_num_threads)"] = torch.get_num_threads()
        else:  # not imported yet: torch's defaults, which an adapter importing it may change
            s["torch grad mode (torch.set_grad_enabled)"] = True
            s["torch default dtype (torch.set_default_dtype)"] = "torch.float32"
        return s

    def restore(self, s: dict[str, Any]) -> None:
        self.np.seterr(**s["NumPy error state (np.seterr)"])
        if s.get("current folder (os.chdir)"):
            os.chdir(s["current folder (os.chdir)"])
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "set_grad_enabled"):
            torch.set_grad_enabled(s["torch grad mode (torch.set_grad_enabled)"])
            torch.set_default_dtype(getattr(torch, s["torch default dtype (torch.set_default_dtype)"].split(".")[-1]))
            threads = s.get("torch threads (torch.set_num_threads)")
            if threads is not None and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def reset(self) -> None:
        """The defaults, before each check."""
        self.np.seterr(**_NP_DEFAULTS)  # type: ignore[arg-type]  # the values np.geterr() gave
        self.np.seterrcall(None)
        os.chdir(self.cwd)
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "set_grad_enabled"):
            if self.torch_threads is None:
                self.torch_threads = torch.get_num_threads()
            torch.set_grad_enabled(True)
            torch.set_default_dtype(torch.float32)
            if torch.get_num_threads() != self.torch_threads:
                torch.set_num_threads(self.torch_threads)

    def wrap(self, fn):
        def guarded(*args, **kwargs):
            before = self.snapshot()
            try:
                return fn(*args, **kwargs)
            except Exception:
                raise
            except BaseException as exc:
                # Hypothesis may turn it into something else (FlakyStrategyDefinition...):
                # remember what the adapter really raised, for the check's verdict
                if self.base_exception is None:
                    self.base_exception = (exc, traceback.format_exc()[-4000:])
                raise
            finally:
                after = self.snapshot()
                for key, old in before.items():
                    new = after.get(key, old)
                    if new != old:
                        change = f"{key}: {old!r} -> {new!r}"
                        if change not in self.changes:
                            self.changes.append(change)
                self.restore(before)
        guarded.__wrapped__ = fn
        return guarded


def _guard_adapter(adapter, guard: _StateGuard) -> None:
    for method in ("call", "forward", "backward", "log_softmax", "nll_loss"):
        fn = getattr(adapter, method, None)
        if fn is None:
            continue
        try:
            setattr(adapter, method, guard.wrap(fn))
        except (AttributeError, TypeError):  # __slots__ or a frozen adapter: unguarded
            pass


def _non_daemon_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread() and t.is_alive()}


def _serve(proto_in, proto_out) -> int:
    def send(d: dict[str, Any]) -> None:
        proto_out.write((json.dumps(d, default=str) + "\n").encode())
        proto_out.flush()

    def read() -> dict[str, Any] | None:
        line = proto_in.readline()
        return json.loads(line) if line.strip() else None

    init = read()
    if not init or init.get("op") != "init":
        return 0
    _die_with_parent(init.get("parent"))
    for p in reversed(init.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.chdir(init["cwd"])
    try:
        from conformance.adapters import resolve

        from ..checks import Context, catalogue
        from ..engine import run_check
        from ..gate import FailureFilter
        from ..spec import load, load_default

        guard = _StateGuard(init["cwd"])
        spec = load(init["spec_file"])
        extra = {op: load_default(op) for op in ("log_softmax", "nll_loss")}
        adapter = resolve(init["source"])
        _guard_adapter(adapter, guard)
        ctx = Context(spec, adapter, profile=init["profile"], extra_specs=extra)
        checks = {c.id: c for c in catalogue(spec)}
    except BaseException as exc:  # noqa: BLE001 - the adapter's import or constructor, whatever it raises
        send({"fatal": f"the adapter could not be built in its worker process: {type(exc).__name__}: {exc}"})
        return 0
    send({"ready": True})
    while True:
        req = read()
        if req is None or req.get("op") != "check":
            return 0
        check = checks[req["check"]]
        guard.reset()
        guard.changes, guard.base_exception = [], None
        threads_before = _non_daemon_threads()
        kw: dict[str, Any] = {"seed": req["seed"], "derandomize": req["derandomize"],
                              "database_dir": req.get("database") or req.get("database_dir")}
        kw["gate"] = FailureFilter.from_json(req.get("gate"))
        t0 = time.perf_counter()
        try:
            r = run_check(ctx, check, **kw)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, GeneratorExit, ...
            if guard.base_exception is None:
                guard.base_exception = (exc, traceback.format_exc()[-4000:])
            r = error_result(adapter.name, check, "")
            r.duration_s = round(time.perf_counter() - t0, 3)
        if guard.base_exception is not None:
            raised, tb = guard.base_exception
            verdict = "" if r.status == "error" and not r.message else (
                f" (the check's own verdict was {r.status}" + (f": {r.message[:300]})" if r.message else ")"))
            r.status = "error"
            r.message = (f"the adapter raised {type(raised).__name__}" + (f"({raised})" if str(raised) else "")
                         + " (a BaseException, not an Exception) during the check" + verdict)
            r.failure = {"traceback": tb}
        left = sorted(t.name for t in _non_daemon_threads() - threads_before)
        problems = []
        if guard.changes:
            problems.append("the adapter changed process-wide state and did not restore it: "
                            + "; ".join(guard.changes))
        if left:
            problems.append(f"the adapter left {len(left)} non-daemon thread(s) running ({', '.join(left[:5])})")
        guard.reset()
        if problems and r.status != "error":
            r.message = "; ".join(problems) + f" (the check's own verdict was {r.status}" + (
                f": {r.message})" if r.message else ")")
            r.status = "error"
        d = r.to_json()
        if r.failure_inputs:
            d["failure_inputs_b64"] = base64.b64encode(r.failure_inputs).decode()
        send({"result": d})


def _die_with_parent(parent: int | None) -> None:
    """On Linux, the kernel kills this worker when the run is killed (kill -9 included)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:
        os._exit(0)


def main() -> int:
    # The protocol gets private copies of fd 0/1; the adapter's prints and reads go elsewhere.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides about interrupts
    faulthandler.enable(file=sys.stderr)  # a segfault or abort leaves its Python traceback in the reason
    try:
        code = _serve(proto_in, proto_out)
    except BaseException:  # noqa: BLE001 - an unexpected fault of the worker itself
        traceback.print_exc()
        code = 70
    sys.stderr.flush()
    os._exit(code)  # never wait for threads an adapter left behind


if __name__ == "__main__":
    main()
