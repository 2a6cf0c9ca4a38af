"""Sandboxed Python executor for tool-integrated reasoning (TIR): model-written code is hostile input.

    with Sandbox(workers=2, timeout=5.0, memory_mb=1024) as sandbox:
        sandbox.run("import sympy as sp\\nx = sp.Symbol('x')", session="traj-0")
        result = sandbox.run("print(sp.solve(x**2 - 4, x))", session="traj-0")
        format_output(result)  # '[-2, 2]'  (the text appended to the response inside ```output ... ```)

Design. One zygote process (started from `sandbox_worker.py` with an empty environment) sets up the shared isolation
once, preloads math, numpy and sympy (and warms sympy's solver), then forks one confined *session process* per
session, or per call when `session` is None. A session process keeps one notebook-like namespace: call 3 sees the
variables of calls 1 and 2 without re-running them. At most `workers` calls execute at a time; `run_many` spreads a
batch over them. The caller always gets an `ExecResult`: a cell that runs past `timeout` (wall clock) has its process
SIGKILLed (status "timeout"); a process that dies (memory, CPU budget, crash, os._exit) gives status "killed"; a
protocol error (the code scribbled on its socket) also kills the process and says so. A dead zygote is restarted.

Sessions after a kill. When the process holding a session is killed (timeout, crash), its state is gone. The next call
in that session transparently gets a fresh process which first replays, silently and with the same per-cell timeout,
every earlier cell of the session that finished (status ok or error; the killed cell is not replayed), then runs the
new cell: the model sees the notebook it expects, as if the killed cell had been interrupted. If a replayed cell
itself times out or dies, that call returns status "error" with error "SessionLost: ..." and the session starts empty.
The same replay restores sessions evicted when more than `max_sessions` session processes would be alive.
`close_session(id)` kills the process and forgets the history.

Output, as the official Qwen2.5-Math harness shows it: stdout only (stderr is discarded), stripped, and when longer
than 400 characters the first 200 + "..." + the last 200. `format_output`: the stdout when the cell succeeded and
printed something, "Done" when it succeeded silently, the last traceback line (e.g. "NameError: name 'x' is not
defined") on error (like the official harness, output printed before the error is not shown), "Timeout Error" on
timeout, and the reason on a killed process. The session process keeps only the first and last 4096 characters of
stdout, so 100 MB of output costs no memory (exact unless more than ~3800 characters of whitespace end or start it).

Modes (`Sandbox.mode`; docs/sandbox.md has the table and measured figures). The zygote confines cells with the
strongest mechanism the host offers: "root" (namespaces as root), "userns" (the same namespaces inside an
unprivileged user namespace that maps the caller's uid to itself; cells run as that uid with every capability
dropped), "landlock" (no namespaces: Landlock rules in each session process, read and execute everywhere except the
home folders, the temporary folders and other processes' /proc, write only in the session's scratch folder), else
"refused": the constructor raises `SandboxUnavailable` with one line naming the opt-in, `unsafe_file_access=True`
(mode "unsafe": cells can read and write whatever the caller can). MATHLOOP_SANDBOX_WITHOUT=namespaces,landlock turns
layers off to force a weaker mode. `Sandbox.isolation` reports each layer: True or the reason it is missing.

Isolation in the namespace modes (tests/test_sandbox.py attacks each; tests/test_sandbox_modes.py attacks every mode):
  - network: the zygote is in a new network namespace with no interface up: no network at all, not even
    127.0.0.1; seccomp additionally refuses socket(), connect(), bind().
  - files: a new mount namespace in which every mount is remounted read-only; /root, /home and the caller's home
    are covered by an empty tmpfs, re-exposing only the Python installation beneath them. Each session gets its own
    mount namespace with a private tmpfs on /tmp (size `disk_mb`, mode 0700, owned by its uid) as working
    directory, HOME and TMPDIR; it hides the host's /tmp and vanishes with the session. A Python installation under
    /tmp is moved (bind-mounted read-only) onto a tmpfs over /mnt before preloading, so the session's /tmp shows
    only its own files. RLIMIT_FSIZE caps any file at `disk_mb`.
  - processes: each session is a new PID namespace whose init (pid 1, runs no model code) waits for the session
    process (pid 2); /proc is that namespace's, mounted read-only with hidepid=invisible, so the cell sees only its
    own process: no command line (argv), environment or status of any host process. The parent's SIGKILL to the
    init ends the whole namespace.
  - IPC: each session has its own IPC namespace (SysV shared memory, semaphores, message queues and POSIX message
    queues are invisible to other sessions and the host and are freed with the session), and seccomp refuses all
    of them anyway; RLIMIT_MSGQUEUE = 0. POSIX shm_open needs /dev/shm, which is read-only.
  - identity: as root, the session process runs under its own unprivileged uid/gid (a random block of otherwise
    unused uids), no supplementary groups, so it can neither signal nor read the parent, the zygote or other
    sessions; in userns mode it keeps the caller's uid without capabilities, in a PID namespace of its own.
In every mode:
  - memory: RLIMIT_AS = the preloaded image + `memory_mb` (big allocations raise MemoryError); seccomp refuses
    memfd_create and memfd_secret, the anonymous files that would hold memory outside RLIMIT_AS and the tmpfs.
  - environment: emptied (HOME, TMPDIR, PATH, LANG only): parent secrets are not visible.
  - process creation: RLIMIT_NPROC = 0 (fork, threads and subprocesses fail with EAGAIN for a non-root uid);
    seccomp refuses fork/vfork/execve/execveat, clone without CLONE_THREAD, ptrace, mount/unshare/setns, bpf, and
    kill/tkill/tgkill to any pid other than its own; PR_SET_NO_NEW_PRIVS.
  - time: a wall-clock `timeout` per cell enforced by SIGKILL from the parent; RLIMIT_CPU = `cpu_budget_s` CPU
    seconds per session process (protects against an orphaned busy loop if the parent dies); core dumps off; 64
    open files.
  - channel: each request carries a random id that its reply must echo. Anything else on the session's socket
    (garbage, a reply that does not decode or names another request, bytes left over from an earlier cell) is a
    protocol error: the process is killed and the cell's result is status "killed" with "protocol error" and what
    was received, so no later cell can be answered with a stale reply. Text that comes back is valid Unicode (lone
    surrogates become U+FFFD) and an exception message is cut to its ends, like stdout, whatever its size.
  - no seccomp (non-x86_64, a kernel without it, or `seccomp=False`): processes are stopped only by RLIMIT_NPROC,
    sockets only by the network namespace (none in landlock mode before Landlock ABI 4, which refuses TCP), IPC
    only by the IPC namespace, and memfd_create is NOT bounded.
Not guaranteed anywhere: isolation from kernel exploits (this is not a VM); CPU time of a cell is bounded by the wall
timeout, not throttled; the tmpfs counts against host memory (bounded by `disk_mb` per live session); a cell can read
world-readable files outside /root, /home and /tmp (e.g. the repository) and system-wide /proc files (meminfo, ...);
cells of one session can corrupt that session, including forging its own reply: a cell that digs its request's id out
of the worker's frame is believed for that cell (the real reply it leaves behind is then caught as a protocol error
before the session's next cell, which is killed instead of answered).
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mathloop.tools.errors import SandboxUnavailable
from mathloop.tools import sandbox_worker as _wire

OUTPUT_LIMIT = 400
_KEEP_CHARS = 4096
_WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
_MAX_REPLY = 1 << 20


MODES = _wire.MODES
UNSAFE_OPT_IN = "--unsafe-sandbox-file-access (YAML: unsafe_sandbox_file_access: true)"
_WITHOUT_ENV = "MATHLOOP_SANDBOX_WITHOUT"
_SURROGATES = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` as valid Unicode: each lone surrogate (which no UTF-8 writer accepts) becomes U+FFFD.

    >>> valid_text("a\\udcffb")
    'a\ufffdb'
    """
    return _SURROGATES.sub("\ufffd", text)


def disabled_layers() -> list[str]:
    """The layers MATHLOOP_SANDBOX_WITHOUT turns off (comma-separated: namespaces, landlock), to force a weaker mode;
    a ValueError naming the variable for anything else."""
    names = [part.strip() for part in os.environ.get(_WITHOUT_ENV, "").split(",") if part.strip()]
    unknown = sorted(set(names) - {"namespaces", "landlock"})
    if unknown:
        raise ValueError(f"{_WITHOUT_ENV}: unknown layer(s) {', '.join(unknown)}; use namespaces and/or landlock")
    return names


@dataclass
class ExecResult:
    """The outcome of one cell. `stdout` is stripped and truncated as the model will see it."""

    status: str  # "ok" | "error" | "timeout" | "killed"
    stdout: str = ""
    error: str = ""  # last traceback line, or the reason for timeout / killed
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """First and last limit/2 characters joined by "..." when longer than `limit` (the official harness's rule).

    >>> truncate("a" * 300 + "b" * 300) == "a" * 200 + "..." + "b" * 200
    True
    >>> truncate("short")
    'short'
    """
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "..." + text[-half:]


def format_output(result: ExecResult) -> str:
    """The text the model sees inside ```output ... ``` (official harness format).

    >>> format_output(ExecResult("ok", stdout="45"))
    '45'
    >>> format_output(ExecResult("ok"))
    'Done'
    >>> format_output(ExecResult("error", stdout="1", error="NameError: name 'x' is not defined"))
    "NameError: name 'x' is not defined"
    >>> format_output(ExecResult("timeout", error="timed out after 5 s"))
    'Timeout Error'
    """
    if result.status == "ok":
        return result.stdout if result.stdout else "Done"
    if result.status == "timeout":
        return "Timeout Error"
    return result.error


class _Process:
    """The parent's handle on one confined session process: a socket and a pidfd."""

    def __init__(self, sock: socket.socket, pidfd: int, pid: int) -> None:
        self.sock, self.pidfd, self.pid = sock, pidfd, pid
        self.alive = True

    def kill(self) -> None:
        if self.alive:
            self.alive = False
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass
            self.sock.close()
            os.close(self.pidfd)

    def execute(self, code: str, timeout: float) -> ExecResult:
        """Send one cell and read its reply. Anything but exactly one well-formed reply carrying this request's id
        (garbage, a forged or left-over reply, bytes written between cells) is a protocol error: the process is
        killed, so its channel can never answer a later cell."""
        start = time.monotonic()
        deadline = start + timeout
        request_id = os.urandom(8).hex()
        try:
            if self._pending():
                raise _wire.ProtocolError("bytes on the channel before the cell was sent (an extra reply from an "
                                          "earlier cell)")
            self.sock.settimeout(timeout)
            _wire.send_msg(self.sock, {"id": request_id, "code": code})
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            reply = _wire.recv_msg(self.sock, _MAX_REPLY)
            if reply is not None:
                _check_reply(reply, request_id)
        except (socket.timeout, TimeoutError):
            self.kill()
            return ExecResult("timeout", error=f"timed out after {timeout:g} s", seconds=time.monotonic() - start)
        except _wire.ProtocolError as e:  # the code wrote on its channel
            self.kill()
            return ExecResult("killed", error=f"Killed: protocol error, the program's process sent {e}; it was "
                                              "killed", seconds=time.monotonic() - start)
        except OSError:  # the channel broke: the process died or closed it
            reply = None
        seconds = time.monotonic() - start
        if reply is None:
            self.kill()
            return ExecResult("killed", error="Killed: the program's process died (memory limit, CPU budget, "
                                              "crash or exit) or closed its channel", seconds=seconds)
        return ExecResult(reply["status"], stdout=valid_text(truncate(reply["stdout"].strip())),
                          error=valid_text(truncate(reply["error"].strip())), seconds=seconds)

    def _pending(self) -> bool:
        """Whether bytes wait on the channel (an end of file is not a protocol error: send or recv report it)."""
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False


def _check_reply(reply: dict, request_id: str) -> None:
    """Raise ProtocolError unless `reply` is the session process's answer to request `request_id`."""
    if reply.get("id") != request_id:
        raise _wire.ProtocolError("a reply to another request (forged, or left over from an earlier cell)")
    if reply.get("status") not in ("ok", "error"):
        raise _wire.ProtocolError(f"a reply with status {str(reply.get('status'))[:40]!r}")
    if not isinstance(reply.get("stdout"), str) or not isinstance(reply.get("error"), str):
        raise _wire.ProtocolError("a reply whose stdout or error is not text")


class _Zygote:
    """The forking server process; restarted when it dies."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.start()

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = dict(self.config, ctl_fd=theirs.fileno())
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", str(_WORKER_SCRIPT), json.dumps(cfg)],
                                     pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(120)
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"sandbox zygote failed to start: {err.strip() or 'no message'}")
        self.info = json.loads(data)
        self.proc.stderr.close()

    def spawn(self) -> tuple[socket.socket, int, int, dict]:
        with self.lock:
            for attempt in (0, 1):
                try:
                    self.sock.send(b'{"op": "spawn"}')
                    msg, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 2)
                    if not msg or len(fds) != 2:
                        raise OSError("zygote closed")
                    break
                except OSError:
                    if attempt:
                        raise
                    self.stop()
                    self.start()
        sock, pidfd = socket.socket(fileno=fds[0]), fds[1]
        info = json.loads(msg)
        sock.settimeout(30)
        ready = _wire.recv_msg(sock, _MAX_REPLY)
        if not ready or not ready.get("ready"):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            sock.close()
            os.close(pidfd)
            raise RuntimeError(f"sandbox process failed to start: {(ready or {}).get('error', 'died')}")
        return sock, pidfd, info["pid"], ready["layers"]

    def stop(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=3)  # it kills its children when the control socket closes
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class _Session:
    process: _Process | None = None
    history: list | None = None
    lock: threading.Lock | None = None

    def __post_init__(self) -> None:
        self.history, self.lock = [], threading.Lock()


class Sandbox:
    """A pool of confined Python processes; thread-safe. See the module docstring for the guarantees.

    workers: calls executing at once. timeout: wall-clock seconds per cell. memory_mb: address space a cell may add
    to the preloaded interpreter. cpu_budget_s: CPU seconds a session process may use over its life. disk_mb: size
    of each session's private tmpfs and the largest file. max_sessions: live session processes kept (older ones are
    evicted and replayed on their next call). seccomp: install the seccomp filter (x86_64). unsafe_file_access:
    where the host can confine files neither with namespaces nor with Landlock, run anyway (mode "unsafe": a cell
    can read and write what the caller can) instead of raising `SandboxUnavailable`.
    """

    def __init__(self, workers: int = 2, timeout: float = 5.0, memory_mb: int = 1024, cpu_budget_s: int = 120,
                 disk_mb: int = 64, max_sessions: int = 64, preload: Sequence[str] = ("math", "numpy", "sympy"),
                 seccomp: bool = True, unsafe_file_access: bool = False) -> None:
        if workers < 1 or timeout <= 0 or memory_mb < 16:
            raise ValueError("Sandbox needs workers >= 1, timeout > 0 and memory_mb >= 16")
        self.workers, self.timeout, self.max_sessions = workers, timeout, max_sessions
        config = {"memory_mb": memory_mb, "cpu_budget_s": int(cpu_budget_s), "disk_mb": disk_mb,
                  "keep_chars": _KEEP_CHARS, "preload": list(preload), "seccomp": seccomp,
                  "uid_base": random.randrange(1 << 20, 1 << 30, 1 << 16), "uid_span": 1 << 16,
                  "scratch": os.path.realpath(os.environ.get("TMPDIR", "/tmp")), "home": os.path.expanduser("~"),
                  "without": disabled_layers(), "unsafe": bool(unsafe_file_access)}
        self._zygote = _Zygote(config)
        if self._zygote.info.get("mode") == "retry":  # namespaces failed half-way: a fresh zygote without them
            self._zygote.stop()
            config["namespaces_failed"] = str(self._zygote.info["layers"].get("namespaces"))
            self._zygote = _Zygote(config)
        self.mode: str = self._zygote.info.get("mode", "refused")
        if self.mode == "refused":
            layers = self._zygote.info.get("layers", {})
            self._zygote.stop()
            self._closed = True
            if layers.get("python") not in (None, True):  # no mode, not even the opt-in, could run a cell
                raise SandboxUnavailable(f"the TIR sandbox cannot run code on this host: {layers['python']}")
            raise SandboxUnavailable(
                "the TIR sandbox cannot confine file access on this host (" + "; ".join(
                    f"{k}: {layers.get(k)}" for k in ("namespaces", "landlock") if layers.get(k) not in (None, True))
                + "), so model-written code could read and write your files; to run it anyway, accepting that risk, "
                f"pass {UNSAFE_OPT_IN}")
        self._slots = threading.BoundedSemaphore(workers)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._isolation: dict = dict(self._zygote.info.get("layers", {}))

    @property
    def isolation(self) -> dict:
        """{layer: True, or the reason it is missing}: userns, landlock, netns, pidns, mountns, hidden_home,
        readonly_fs (the zygote), then after the first call ipcns, private_tmpfs, private_proc, rlimits, uid,
        no_new_privs, seccomp (and landlock, in that mode). `mode` says which confines the files."""
        return dict(self._isolation)

    # ------------------------------------------------------------------------------------------------ processes

    def _new_process(self) -> _Process:
        sock, pidfd, pid, layers = self._zygote.spawn()
        self._isolation.update(layers)
        return _Process(sock, pidfd, pid)

    def _evict_if_full(self, keep: _Session) -> None:
        with self._lock:
            live = [s for s in self._sessions.values() if s.process is not None and s.process.alive]
            for s in live[: max(0, len(live) - self.max_sessions + 1)]:
                if s is not keep and s.lock.acquire(blocking=False):
                    try:
                        if s.process is not None:
                            s.process.kill()
                            s.process = None
                    finally:
                        s.lock.release()

    # ------------------------------------------------------------------------------------------------ running

    def run(self, code: str, session: str | None = None) -> ExecResult:
        """Run one cell; in `session`'s namespace when given, else in a fresh process. Never raises for bad code;
        if no process can be started at all, the result has status "killed" and the reason."""
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        try:
            return self._run(code, session)
        except (OSError, RuntimeError, ValueError) as e:
            return ExecResult("killed", error=f"Killed: the sandbox could not start a process ({e})")

    def _run(self, code: str, session: str | None) -> ExecResult:
        with self._slots:
            if session is None:
                start = time.monotonic()
                process = self._new_process()
                try:
                    result = process.execute(code, self.timeout)
                finally:
                    process.kill()
                result.seconds = time.monotonic() - start
                return result
            with self._lock:
                state = self._sessions.setdefault(session, _Session())
                self._sessions.move_to_end(session)
            with state.lock:
                return self._run_in_session(state, code)

    def _run_in_session(self, state: _Session, code: str) -> ExecResult:
        start = time.monotonic()
        if state.process is None or not state.process.alive:
            self._evict_if_full(state)
            state.process = self._new_process()
            for i, cell in enumerate(state.history):
                replay = state.process.execute(cell, self.timeout)
                if replay.status not in ("ok", "error"):
                    state.process.kill()
                    state.process, state.history = None, []
                    return ExecResult("error", error=f"SessionLost: the session's state was lost and re-running its "
                                                     f"cell {i + 1} failed ({replay.status}); it starts empty now",
                                      seconds=time.monotonic() - start)
        result = state.process.execute(code, self.timeout)
        if result.status in ("ok", "error"):
            state.history.append(code)
        result.seconds = time.monotonic() - start
        return result

    def run_many(self, cells: Sequence[tuple[str, str | None]]) -> list[ExecResult]:
        """Run (code, session) pairs concurrently over the workers; cells of one session run in list order."""
        groups: dict = defaultdict(list)
        for i, (code, session) in enumerate(cells):
            groups[session if session is not None else ("__one__", i)].append((i, code, session))
        results: list = [None] * len(cells)

        def run_group(items: list) -> None:
            for i, code, session in items:
                results[i] = self.run(code, session)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            list(pool.map(run_group, groups.values()))
        return results

    def run_cells(self, cells: Sequence[tuple[str, str]]) -> list[str]:
        """`run_many`, formatted for the model (the TIR loop's Executor interface)."""
        return [format_output(r) for r in self.run_many(cells)]

    def close_session(self, session: str) -> None:
        """Kill the session's process and forget its history; unknown ids are ignored."""
        with self._lock:
            state = self._sessions.pop(session, None)
        if state is not None:
            with state.lock:
                if state.process is not None:
                    state.process.kill()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for session in list(self._sessions):
            self.close_session(session)
        self._zygote.stop()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
