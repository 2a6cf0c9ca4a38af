"""Hard timeouts for sympy: a pool of worker processes that the parent kills and replaces past a deadline.

Why processes and not ``signal.alarm``: alarms only work in the main thread of the main interpreter, and a sympy call
stuck in C code (a huge power, a big integer) never looks at a flag. Killing the process always works.

Workers are plain subprocesses (``python -c "...serve()"``) talking JSON lines over stdin/stdout, not
``multiprocessing`` children, so a pool can be started from any thread, from a forked or spawned child, and even from
a daemonic ``multiprocessing`` worker (which may not have ``multiprocessing`` children of its own). A worker whose
parent dies sees EOF on stdin and exits. Each worker has an address-space limit, so a runaway big integer ends in
MemoryError (-> False) instead of swapping the machine.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

WORKER_MEMORY_LIMIT_MB = 2048
STARTUP_TIMEOUT_S = 120.0

Task = dict[str, Any]  # {"gold": str, "pred": str, "answer_type": str}


# ----------------------------------------------------------------------------------------------------------------
# Worker side


def serve(memory_limit_mb: int = WORKER_MEMORY_LIMIT_MB) -> None:
    """Worker main loop: read one task per line on stdin, write ``{"ok": bool}`` per line on stdout."""
    protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    _limit_memory(memory_limit_mb)
    import logging

    logging.disable(logging.WARNING)  # math-verify warns about disabled timeouts: we enforce them from the parent
    from mathloop.verify.equivalence import symbolic_equivalent

    protocol_out.write("ready\n")
    for line in sys.stdin:
        try:
            task = json.loads(line)
            ok = symbolic_equivalent(task["gold"], task["pred"], task.get("answer_type", "math"))
        except (MemoryError, RecursionError, Exception):  # noqa: BLE001 - any failure is "not equivalent"
            ok = False
        protocol_out.write(json.dumps({"ok": bool(ok)}) + "\n")


def _limit_memory(limit_mb: int) -> None:
    try:
        import resource

        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass  # not available on this platform: the timeout still applies


# ----------------------------------------------------------------------------------------------------------------
# Parent side


def _worker_env() -> dict[str, str]:
    """The parent's environment, with the directory holding ``mathloop`` on PYTHONPATH (works uninstalled too)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


class _Worker:
    """One worker subprocess and a line buffer for its output."""

    def __init__(self, memory_limit_mb: int) -> None:
        code = f"from mathloop.verify.pool import serve; serve({memory_limit_mb})"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_worker_env(),
            close_fds=True,
        )
        self.fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        self._buffer = b""
        self.ready = False

    def read_line(self, deadline: float) -> str | None:
        """The next output line, or None when the deadline passes or the worker died."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None  # worker died (e.g. killed by the OS)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def wait_ready(self) -> bool:
        if not self.ready:
            self.ready = self.read_line(time.monotonic() + STARTUP_TIMEOUT_S) == "ready"
        return self.ready

    def send(self, task: Task) -> bool:
        try:
            self.process.stdin.write((json.dumps(task) + "\n").encode())  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]
            return True
        except (BrokenPipeError, OSError):
            return False

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass


def _parse_result(line: str | None) -> bool | None:
    if line is None:
        return None
    try:
        return bool(json.loads(line)["ok"])
    except (ValueError, KeyError, TypeError):
        return None


class WorkerPool:
    """Up to ``size`` worker processes, started lazily; thread-safe.

    ``run(task, timeout)`` checks out one worker (waiting if all are busy); ``run_many`` keeps all of them busy.
    A worker that misses its deadline is killed and replaced; its task answers False.
    """

    def __init__(self, size: int | None = None, memory_limit_mb: int = WORKER_MEMORY_LIMIT_MB) -> None:
        self.size = max(1, size or os.cpu_count() or 1)
        self.memory_limit_mb = memory_limit_mb
        self._idle: list[_Worker] = []
        self._count = 0
        self._condition = threading.Condition()
        self._closed = False
        self._owner_pid = os.getpid()

    def prestart(self) -> None:
        """Start every worker now, without waiting: their imports overlap the caller's own work."""
        with self._condition:
            while self._count < self.size and not self._closed:
                self._idle.append(_Worker(self.memory_limit_mb))
                self._count += 1

    def _acquire(self, block: bool = True) -> _Worker | None:
        with self._condition:
            while not self._idle and self._count >= self.size:
                if not block or self._closed:
                    return None
                self._condition.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        return _Worker(self.memory_limit_mb)

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._condition:
            if healthy and not self._closed:
                self._idle.append(worker)
            else:
                self._count -= 1
                if healthy:
                    worker.kill()
            self._condition.notify()

    def _start(self, worker: _Worker, task: Task) -> bool:
        return worker.wait_ready() and worker.send(task)

    def run(self, task: Task, timeout: float) -> bool:
        """One task under a hard timeout; False on timeout or any failure."""
        worker = self._acquire()
        if worker is None:
            return False
        result = None
        if self._start(worker, task):
            result = _parse_result(worker.read_line(time.monotonic() + timeout))
        self._release(worker, healthy=result is not None)
        return bool(result)

    def run_many(self, tasks: list[Task], timeout: float) -> list[bool]:
        """All tasks, each under its own hard timeout, spread over the workers; results in input order."""
        results = [False] * len(tasks)
        pending = list(range(len(tasks)))[::-1]
        busy: dict[int, tuple[_Worker, int, float]] = {}  # fd -> (worker, task index, deadline)
        try:
            while pending or busy:
                self._fill(tasks, pending, busy, timeout)
                if not busy:
                    break  # pool closed
                now = time.monotonic()
                wait = max(0.0, min(deadline for _, _, deadline in busy.values()) - now)
                readable, _, _ = select.select(list(busy), [], [], wait)
                for fd in list(busy):
                    worker, index, deadline = busy[fd]
                    if fd in readable:
                        result = _parse_result(worker.read_line(deadline))
                    elif time.monotonic() >= deadline:
                        result = None  # too slow: killed below, counted as not equivalent
                    else:
                        continue
                    del busy[fd]
                    results[index] = bool(result)
                    self._release(worker, healthy=result is not None)
        finally:
            for worker, _, _ in busy.values():
                self._release(worker, healthy=False)
        return results

    def _fill(self, tasks: list[Task], pending: list[int], busy: dict, timeout: float) -> None:
        """Give pending tasks to free workers (blocking for one only when nothing is running)."""
        fresh: list[_Worker] = []
        while len(fresh) < len(pending):
            worker = self._acquire(block=not busy and not fresh)
            if worker is None:
                break
            fresh.append(worker)
        for worker in fresh:  # start-up (imports) is waited for together, and not counted against the task
            index = pending.pop()
            if self._start(worker, tasks[index]):
                busy[worker.fd] = (worker, index, time.monotonic() + timeout)
            else:
                self._release(worker, healthy=False)

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their task ends). A forked copy of the pool does nothing."""
        if os.getpid() != self._owner_pid:
            return
        with self._condition:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._condition.notify_all()
        for worker in idle:
            worker.kill()


_default_pool: WorkerPool | None = None
_default_pool_pid = -1
_default_lock = threading.Lock()


def default_pool() -> WorkerPool:
    """The process-wide pool used by ``is_equivalent``; a forked child gets its own."""
    global _default_pool, _default_pool_pid
    with _default_lock:
        if _default_pool is None or _default_pool_pid != os.getpid():
            _default_pool = WorkerPool()
            _default_pool_pid = os.getpid()
            import atexit

            atexit.register(_default_pool.close)
        return _default_pool
