"""Hard timeouts for sympy: a pool of worker processes that the parent kills and replaces past a deadline.

Why processes and not ``signal.alarm``: alarms only work in the main thread of the main interpreter, and a sympy call
stuck in C code (a huge power, a big integer) never looks at a flag. Killing the process always works.

Workers are plain subprocesses (``python -c "...serve()"``) talking JSON lines over stdin/stdout, not
``multiprocessing`` children, so a pool can be started from any thread, from a forked or spawned child, and even from
a daemonic ``multiprocessing`` worker (which may not have ``multiprocessing`` children of its own). A worker whose
parent dies sees EOF on stdin and exits. Each worker has an address-space limit, so a runaway big integer ends in
MemoryError (-> False) instead of swapping the machine.

Where forking is safe, a worker is a fork of the caller instead of a new interpreter (same pipes, same ``serve``): when
the calling process has exactly one thread (none of Python's, none of C libraries': ``/proc/self/task``) and a small
address space (``FORK_MAX_VM_MB``). The fork shares the modules the caller already imported (the standard library,
mathloop's verifier) instead of loading them again, which saves about an eighth of a worker's start-up CPU; it closes
every file it inherited, resets the caller's signal handlers, never returns into the caller's code (``os._exit``), and
its memory limit counts from the size it was forked with. A process with threads (a trainer, a server, the pool's own
spawner thread) gets new interpreters as before: forking it could copy a lock another thread holds.

Deadlines are CPU seconds of the worker, not wall seconds: a comparison gets the same verdict from one thread, eight
threads or a multiprocessing pool on a busy CPU, because time spent waiting for a free worker or for a CPU is never
charged to it (a wall-clock backstop of ``WALL_BACKSTOP_FACTOR`` times the deadline still ends a stopped worker).
A worker imports sympy and math-verify and runs one comparison before it reports ready, so start-up is not charged
either.

Workers die with their parent: each asks the kernel for SIGKILL when the thread that started it ends
(``PR_SET_PDEATHSIG``; every new interpreter is started from one long-lived spawner thread per process, and a fork only
from a process whose one thread is its main thread, so that thread is the process), and a watcher thread exits when
the parent pid changes (a parent killed before ``prctl`` ran, or a platform without ``prctl``).

Start-up cost: a worker imports and warms up with the cyclic garbage collector off, then freezes what start-up made
(``gc.freeze``), so the collector never walks sympy's modules; the caller imports only mathloop's verifier, never sympy.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TYPE_CHECKING = False  # typing is only needed by type checkers: not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Any

WORKER_MEMORY_LIMIT_MB = 2048
STARTUP_TIMEOUT_S = 120.0
WALL_BACKSTOP_FACTOR = 10.0  # a task also ends after this many times its deadline in wall seconds (stopped worker)
WALL_BACKSTOP_MIN_S = 30.0
FORK_MAX_VM_MB = 1024  # a caller larger than this (virtual size) never forks workers: page tables, memory limit
START_BY_FORK = True  # False: always start workers as new interpreters
_WARM_UP = (r"\sqrt{12}", r"2\sqrt{3}", "math")  # exercises parse, simplify and evalf once before "ready"
# A batch starts one more worker per this many sympy comparisons (up to the pool's size): a worker's start-up (Python,
# sympy, math-verify: about half a CPU second) costs as much as dozens of comparisons, so a small batch is not spread.
TASKS_PER_WORKER = 64

Task = dict[str, object]  # {"gold": str, "pred": str, "answer_type": str, "rounding": bool}


# ----------------------------------------------------------------------------------------------------------------
# Worker side


def serve(memory_limit_mb: int = WORKER_MEMORY_LIMIT_MB, parent_pid: int | None = None, forked: bool = False) -> None:
    """Worker main loop: read one task per line on stdin, write ``{"ok": bool}`` per line on stdout.

    ``forked``: this process is a fork of the caller (``_fork_worker``): its memory limit counts from its size now.
    """
    _die_with_parent(parent_pid if parent_pid is not None else os.getppid())
    protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    _limit_memory(memory_limit_mb + ((_vm_size_mb() or 0) if forked else 0))
    # Start-up makes hundreds of thousands of objects that live as long as the worker (sympy's modules, caches): the
    # cyclic collector would walk them again and again for nothing (about 0.05 s of 0.43 s). It is off
    # while importing and warming up (``_Worker`` turns it off on the command line, before this module's imports), and
    # what start-up made is then frozen out of every later collection.
    gc.disable()
    import logging

    # Nothing a worker logs is read (its stderr is /dev/null; math-verify warns about the disabled timeouts, which the
    # parent enforces), and a fork must not write to the caller's log handlers.
    logging.disable(logging.CRITICAL)
    from mathloop.verify.equivalence import symbolic_equivalent

    symbolic_equivalent(*_WARM_UP)  # imports sympy/math-verify and fills their caches before the first deadline
    gc.freeze()
    gc.enable()  # comparisons run with the collector on: the memory limit still bounds a runaway one
    protocol_out.write("ready\n")
    for line in sys.stdin:
        try:
            task = json.loads(line)
            ok = symbolic_equivalent(task["gold"], task["pred"], task.get("answer_type", "math"),
                                     bool(task.get("rounding", False)))
        except (MemoryError, RecursionError, Exception):  # noqa: BLE001 - any failure is "not equivalent"
            ok = False
        protocol_out.write(json.dumps({"ok": bool(ok)}) + "\n")


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when its parent dies (kernel-side, works while a C call holds the GIL), plus a watcher."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watcher below still applies
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent died before prctl took effect

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _vm_size_mb() -> int | None:
    """This process's virtual size in MiB (Linux ``/proc``), or None where that cannot be read."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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


class _Spawner:
    """One long-lived daemon thread per process that starts every worker: ``PR_SET_PDEATHSIG`` fires when the thread
    that forked a worker ends, so workers started from a short-lived caller thread would die with that thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.requests: queue.Queue[tuple[list[str], queue.Queue[Any]]] = queue.Queue()
        threading.Thread(target=self._loop, name="mathloop-verify-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            argv, reply = self.requests.get()
            try:
                reply.put(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, env=_worker_env(), close_fds=True))
            except Exception as error:  # noqa: BLE001 - handed to the caller
                reply.put(error)

    def popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        reply: queue.Queue[Any] = queue.Queue()
        self.requests.put((argv, reply))
        result = reply.get()
        if isinstance(result, Exception):
            raise result
        return result


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():  # a forked child has no spawner thread
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.popen(argv)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of a process (Linux ``/proc``), or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def _may_fork() -> bool:
    """Whether a worker may be a fork of this process: Linux, one thread in all, a small address space."""
    if not START_BY_FORK or not hasattr(os, "fork"):
        return False
    try:
        if len(os.listdir("/proc/self/task")) != 1:
            return False
    except OSError:
        return False
    size = _vm_size_mb()
    return size is not None and size <= FORK_MAX_VM_MB


class _ForkedProcess:
    """The part of ``subprocess.Popen``'s interface a ``_Worker`` uses, for a worker started by ``os.fork``."""

    def __init__(self, pid: int, stdin: Any, stdout: Any) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return  # already reaped
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.01)


def _fork_worker(memory_limit_mb: int) -> _ForkedProcess:
    """A worker forked from this (single-threaded) process, wired like a spawned one: tasks on its stdin, verdicts on
    its stdout, stderr to /dev/null. The child never returns from here."""
    task_read, task_write = os.pipe()
    result_read, result_write = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # else the child could write the caller's buffered output a second time
        except (AttributeError, OSError, ValueError):
            pass
    parent_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        for fd in (task_read, task_write, result_read, result_write):
            os.close(fd)
        raise
    if pid == 0:
        try:
            for number in signal.valid_signals():  # the caller's handlers (cleanup, checkpoints) are not the worker's
                try:
                    if callable(signal.getsignal(number)):
                        signal.signal(number, signal.SIG_DFL)
                except (OSError, ValueError, RuntimeError):
                    pass
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(task_read, 0)
            os.dup2(result_write, 1)
            os.dup2(devnull, 2)
            for fd in os.listdir("/proc/self/fd"):  # the caller's files, sockets, other workers' pipes
                if int(fd) > 2:
                    try:
                        os.close(int(fd))
                    except OSError:
                        pass  # the listing's own descriptor, already closed
            sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - fd 0 is now the task pipe
            serve(memory_limit_mb, parent_pid, forked=True)
        finally:
            os._exit(0)
    os.close(task_read)
    os.close(result_write)
    return _ForkedProcess(pid, os.fdopen(task_write, "wb"), os.fdopen(result_read, "rb"))


class _Worker:
    """One worker process (a new interpreter, or a fork of a single-threaded caller) and a line buffer for its output."""

    def __init__(self, memory_limit_mb: int) -> None:
        self.process: Any = None
        if _may_fork():
            try:
                self.process = _fork_worker(memory_limit_mb)
            except OSError:  # no fork now (process limit, memory): a new interpreter instead
                self.process = None
        if self.process is None:
            # The collector is off from the first line: the worker's imports are its start-up cost (see ``serve``).
            code = f"import gc; gc.disable(); from mathloop.verify.pool import serve; serve({memory_limit_mb}, {os.getpid()})"
            self.process = _spawn([sys.executable, "-c", code])
        self.fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        self._buffer = b""
        self.ready = False
        self.eof = False
        self.budget = 0.0  # CPU seconds the current task may use
        self.cpu_start: float | None = None
        self.wall_limit = 0.0  # monotonic time at which the current task ends regardless of CPU

    def begin(self, timeout: float) -> None:
        """Start the clocks of a task just sent: ``timeout`` CPU seconds, a wall backstop."""
        self.budget = timeout
        self.cpu_start = _cpu_seconds(self.process.pid)
        self.wall_limit = time.monotonic() + max(WALL_BACKSTOP_FACTOR * timeout, timeout + WALL_BACKSTOP_MIN_S)
        self._wall_start = time.monotonic()

    def next_check(self) -> float | None:
        """Monotonic time at which the task may have used its budget; None when it has (or the backstop passed).

        A single-threaded worker cannot use more CPU than wall time, so the budget cannot run out before
        ``now + (budget - used)``; without ``/proc`` the deadline is wall time.
        """
        now = time.monotonic()
        if now >= self.wall_limit:
            return None
        if self.cpu_start is None:
            used = now - self._wall_start
        else:
            current = _cpu_seconds(self.process.pid)
            used = now - self._wall_start if current is None else current - self.cpu_start
        left = self.budget - used
        if left <= 0:
            return None
        return min(now + max(left, 0.02), self.wall_limit)

    def read_result(self) -> str | None:
        """The task's output line, waiting while its CPU budget lasts; None on timeout or death."""
        while True:
            check = self.next_check()
            if check is None:
                return None
            line = self.read_line(check)
            if line is not None or self.eof:
                return line

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
                self.eof = True
                return None  # worker died (e.g. killed by the OS)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def read_available(self) -> str | None:
        """After ``select`` said readable: read once, return a complete line if there is one now."""
        if b"\n" not in self._buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                return None
            self._buffer += chunk
            if b"\n" not in self._buffer:
                return None
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
    """Up to ``size`` worker processes, started lazily (when a comparison needs sympy); thread-safe.

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

    def _acquire(self, block: bool = True, limit: int | None = None) -> _Worker | None:
        """An idle worker, else a new one while fewer than ``limit`` (default: the pool's size) run, else wait."""
        limit = self.size if limit is None else min(limit, self.size)
        with self._condition:
            while not self._idle and self._count >= limit:
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

    def _start(self, worker: _Worker, task: Task, timeout: float) -> bool:
        if not (worker.wait_ready() and worker.send(task)):
            return False
        worker.begin(timeout)
        return True

    def run(self, task: Task, timeout: float) -> bool:
        """One task under a hard timeout; False on timeout or any failure."""
        worker = self._acquire()
        if worker is None:
            return False
        result = None
        if self._start(worker, task, timeout):
            result = _parse_result(worker.read_result())
        self._release(worker, healthy=result is not None)
        return bool(result)

    def run_many(self, tasks: list[Task], timeout: float) -> list[bool]:
        """All tasks, each under its own CPU deadline, spread over the workers; results in input order."""
        results = [False] * len(tasks)
        pending = list(range(len(tasks)))[::-1]
        busy: dict[int, tuple[_Worker, int, float]] = {}  # fd -> (worker, task index, next check time)
        try:
            while pending or busy:
                self._fill(tasks, pending, busy, timeout)
                if not busy:
                    break  # pool closed
                wait = max(0.0, min(check for _, _, check in busy.values()) - time.monotonic())
                readable, _, _ = select.select(list(busy), [], [], wait)
                for fd in list(busy):
                    worker, index, check = busy[fd]
                    if fd in readable:
                        line = worker.read_available()
                        if line is None and not worker.eof:
                            continue  # a partial line: wait for the rest
                        result = _parse_result(line)
                    elif time.monotonic() >= check:
                        following = worker.next_check()
                        if following is not None:
                            busy[fd] = (worker, index, following)  # waited for a CPU: not charged
                            continue
                        result = None  # used its CPU budget: killed below, counted as not equivalent
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
        limit = 1 + len(tasks) // TASKS_PER_WORKER
        while len(fresh) < len(pending):
            worker = self._acquire(block=not busy and not fresh, limit=limit)
            if worker is None:
                break
            fresh.append(worker)
        for worker in fresh:  # start-up (imports) is waited for together, and not counted against the task
            index = pending.pop()
            if self._start(worker, tasks[index], timeout):
                check = worker.next_check()
                busy[worker.fd] = (worker, index, check if check is not None else time.monotonic())
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
