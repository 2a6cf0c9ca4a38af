"""The TIR sandbox contains hostile code: every attack is a test, and after each the pool still answers correctly.

Attacks are bounded where escaping would hurt the host: the fork bomb, the 8 GB allocation and the output flood run
only after a bounded probe showed the limit holds in this very sandbox (see `_probe_*`).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from mathloop.cli import main
from mathloop.tools.sandbox import ExecResult, Sandbox, format_output, truncate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

SECRET = "s3cr3t-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox():
    os.environ["MATHLOOP_TEST_SECRET"] = SECRET  # must never reach the sandboxed code
    with Sandbox(workers=2, timeout=1.5, memory_mb=512) as sb:
        yield sb
    os.environ.pop("MATHLOOP_TEST_SECRET", None)


def assert_still_works(sb: Sandbox) -> None:
    result = sb.run("print(sum(range(10)))")
    assert (result.status, result.stdout) == ("ok", "45"), result


def needs(sb: Sandbox, *layers: str) -> None:
    """Skip a test whose layers this machine cannot give; fail it where the sandbox runs with namespaces (as root or
    in a user namespace), which give every layer. (test_sandbox_modes.py asserts the mode is the strongest offered.)"""
    sb.run("pass")  # the per-process layers are reported by the first process
    missing = {k: v for k, v in sb.isolation.items() if k in layers and v is not True}
    if missing and sb.mode in ("root", "userns"):
        pytest.fail(f"isolation layer missing in {sb.mode} mode: {missing}")
    if missing:
        pytest.skip(f"isolation layer missing on this host ({sb.mode} mode): {missing}")


# ------------------------------------------------------------------------------------------------ plain behaviour

def test_runs_code_with_preloaded_libraries(sandbox):
    result = sandbox.run("import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**2 - 4, x))\n"
                         "import numpy as np\nprint(np.arange(4).sum())")
    assert result.status == "ok" and result.stdout == "[-2, 2]\n6"  # its speed: bench/sandbox.py


def test_error_gives_last_traceback_line(sandbox):
    result = sandbox.run("print('before')\nprint(x)")
    assert result.status == "error" and result.error == "NameError: name 'x' is not defined"
    assert format_output(result) == "NameError: name 'x' is not defined"
    assert sandbox.run("def f(:\n  pass").error.startswith("SyntaxError")


@pytest.mark.parametrize("result, text", [
    (ExecResult("ok", stdout="45"), "45"),
    (ExecResult("ok"), "Done"),
    (ExecResult("error", error="ZeroDivisionError: division by zero"), "ZeroDivisionError: division by zero"),
    (ExecResult("timeout", error="timed out after 5 s"), "Timeout Error"),
])
def test_format_output_official_format(result, text):
    assert format_output(result) == text


def test_output_is_stripped_and_truncated_like_the_official_harness(sandbox):
    result = sandbox.run("print('  ' + 'a' * 300 + 'b' * 300 + '\\n\\n')")
    assert result.stdout == "a" * 200 + "..." + "b" * 200
    assert truncate("x" * 400) == "x" * 400 and len(truncate("x" * 401)) == 403


# ------------------------------------------------------------------------------------------------ attacks

def test_infinite_loop_times_out(sandbox):
    start = time.monotonic()
    result = sandbox.run("while True:\n    pass")
    assert result.status == "timeout" and format_output(result) == "Timeout Error"
    assert 1.4 < time.monotonic() - start < 30  # not before the limit; the upper bound only catches a hang
    assert_still_works(sandbox)


def test_fork_bomb_is_contained(sandbox):
    # bounded probe first: five forks, each child exits at once
    probe = sandbox.run("import os\nn = 0\nfor _ in range(5):\n    try:\n        pid = os.fork()\n"
                        "    except OSError as e:\n        print(type(e).__name__); break\n"
                        "    if pid == 0:\n        os._exit(0)\n    n += 1\nprint(n)")
    assert probe.status == "ok" and probe.stdout.endswith("\n0"), probe
    bomb = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert bomb.status == "error" and ("PermissionError" in bomb.error or "BlockingIOError" in bomb.error)
    for attack in ("import subprocess\nsubprocess.run(['true'])", "import os\nos.system('true')\nprint(os.system('true'))",
                   "import threading\nthreading.Thread(target=print).start()",
                   "import multiprocessing\nmultiprocessing.Process(target=print).start()"):
        result = sandbox.run(attack)
        assert result.status == "error" or result.stdout not in ("", "0"), (attack, result)
    assert_still_works(sandbox)


def test_allocating_8_gb_fails_cleanly(sandbox):
    probe = sandbox.run("x = bytearray(600 * 2**20)")  # just above memory_mb=512
    assert probe.status == "error" and probe.error == "MemoryError"
    result = sandbox.run("x = bytearray(8 * 2**30)")
    assert result.status == "error" and result.error == "MemoryError"
    result = sandbox.run("import numpy as np\nx = np.ones(2**30)")
    assert result.status == "error" and "Unable to allocate" in result.error
    result = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 2**20))")  # creeping growth
    assert result.status in ("error", "killed", "timeout")  # zero-filling 512 MB can outlast 1.5 s on a busy host
    assert_still_works(sandbox)


def test_writes_outside_the_working_directory_fail(sandbox):
    needs(sandbox, "readonly_fs", "private_tmpfs")
    targets = [f"/tmp/pwned-{uuid.uuid4().hex}", str(REPO / f"pwned-{uuid.uuid4().hex}"), "/var/tmp/pwned",
               "/dev/shm/pwned", os.path.expanduser("~/pwned")]
    for target in targets:
        result = sandbox.run(f"open({target!r}, 'w').write('x')\nprint('wrote')")
        if not target.startswith("/tmp/"):  # the sandbox's /tmp is its own private tmpfs: writing there is fine
            assert result.status == "error", (target, result)
        assert not os.path.exists(target)
    inside = sandbox.run("import os\nopen('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read(), os.getcwd())")
    assert inside.status == "ok" and inside.stdout.startswith("ok")
    big = sandbox.run("open('big', 'wb').write(b'0' * (200 * 2**20))")  # over disk_mb=64
    assert big.status in ("error", "killed")
    assert_still_works(sandbox)


def test_sessions_cannot_see_each_others_files(sandbox):
    needs(sandbox, "private_tmpfs")
    assert sandbox.run("open('mine.txt', 'w').write('a')", session="files-a").status == "ok"
    result = sandbox.run("import os\nprint(os.listdir('.'), os.path.exists('mine.txt'))", session="files-b")
    assert result.stdout == "[] False"
    sandbox.close_session("files-a")
    sandbox.close_session("files-b")


def test_parent_environment_secrets_are_invisible(sandbox):
    code = (f"import os\nprint(os.environ.get('MATHLOOP_TEST_SECRET'))\n"
            f"for pid in (os.getppid(), {os.getpid()}):\n"
            f"    try:\n        print(open(f'/proc/{{pid}}/environ').read())\n"
            f"    except OSError as e:\n        print(type(e).__name__)")
    result = sandbox.run(code)
    assert SECRET not in result.stdout and result.stdout.startswith("None")
    assert os.environ["MATHLOOP_TEST_SECRET"] == SECRET
    assert_still_works(sandbox)


def test_no_network_even_to_localhost(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        result = sandbox.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                             "s.sendall(b'leak')\nprint('connected')")
        assert result.status == "error" and "connected" not in result.stdout
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert_still_works(sandbox)


def test_cannot_kill_the_parent_or_the_test(sandbox):
    me = os.getpid()
    for target in ("os.getppid()", str(me), "-1", "0"):
        result = sandbox.run(f"import os, signal\nos.kill({target}, signal.SIGKILL)\nprint('sent')")
        assert result.status in ("error", "killed") and "sent" not in result.stdout, (target, result)
    assert os.getpid() == me  # still here
    assert_still_works(sandbox)


def test_100_mb_of_output_is_truncated(sandbox):
    result = sandbox.run("for i in range(100_000):\n    print('x' * 999)\nprint('end')")
    assert result.status == "ok" and result.stdout.startswith("x" * 200) and result.stdout.endswith("x\nend")
    assert len(result.stdout) == 403
    result = sandbox.run("print('y' * 100_000_000)")  # one 100 MB write
    assert result.status == "ok" and len(result.stdout) == 403
    assert_still_works(sandbox)


def test_deep_recursion(sandbox):
    result = sandbox.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert result.status == "error" and result.error.startswith("RecursionError")
    result = sandbox.run("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1) + 1\nf(0)")
    assert result.status in ("error", "killed", "timeout")  # heap frames until memory or time runs out, or a crash
    assert_still_works(sandbox)


def test_input_gets_eof(sandbox):
    result = sandbox.run("x = input('number? ')")
    assert result.status == "error" and result.error.startswith("EOFError")
    assert_still_works(sandbox)


def test_garbage_on_the_result_channel_kills_only_that_process(sandbox):
    result = sandbox.run("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\xff' * 64)\n"
                         "    except OSError:\n        pass\nimport time\ntime.sleep(0.2)")
    assert result.status == "killed"
    assert_still_works(sandbox)


# SysV IPC and POSIX message queues, by key / name; prints one word per object: ok (made or found) or the errno name.
_IPC_CELL = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
def word(ret):
    return "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
key, flags = {key}, {flags}
mq = libc.mq_open(b"/mathloop-%d" % key, {mq_flags}, 0o666, None)
print(word(libc.shmget(key, 4096, flags | 0o666)), word(libc.msgget(key, flags | 0o666)),
      word(libc.semget(key, 1, flags | 0o666)), word(mq))
if mq >= 0:
    libc.mq_close(mq)
"""


def ipc_cell(key: int, create: bool) -> str:
    return _IPC_CELL.format(key=key, flags=0o1000 if create else 0,  # IPC_CREAT, or a plain lookup
                            mq_flags=0o100 | 2 if create else 2)  # O_CREAT | O_RDWR, or O_RDWR


def host_ipc(key: int, create: bool) -> str:
    """The same probe run on the host (this test process), outside any sandbox; objects are made world-usable."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(ipc_cell(key, create), {})  # noqa: S102 - our own probe
    return buf.getvalue().strip()


def remove_host_ipc(key: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for get, ctl, size in ((libc.shmget, libc.shmctl, 0), (libc.msgget, libc.msgctl, None),
                           (libc.semget, libc.semctl, 1)):
        ident = get(key, 0) if size is None else get(key, size, 0)
        if ident >= 0:
            ctl(ident, 0, 0)  # IPC_RMID
    libc.mq_unlink(b"/mathloop-%d" % key)


def shmem_kb() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


def test_sysv_ipc_and_message_queues_are_refused(sandbox):
    needs(sandbox, "seccomp")
    host_key, cell_key = random.sample(range(1 << 20, 1 << 30), 2)
    assert host_ipc(host_key, create=True) == "ok ok ok ok"  # the host's objects exist, usable by anyone...
    try:  # ...yet a cell can neither find them nor make its own
        for key, create in ((host_key, False), (cell_key, True)):
            result = sandbox.run(ipc_cell(key, create))
            assert (result.status, result.stdout) == ("ok", "EPERM EPERM EPERM EPERM"), result
        assert host_ipc(cell_key, create=False) == "ENOENT ENOENT ENOENT ENOENT"
    finally:
        remove_host_ipc(host_key)
        remove_host_ipc(cell_key)
    assert_still_works(sandbox)


def test_ipc_namespace_isolates_sessions_and_dies_with_them():
    """Without the seccomp filter, the IPC namespace alone: a session makes SysV objects, another session and the
    host see none of them, the host's are invisible to it, and its memory is freed when it ends. (Making a POSIX
    queue fails on RLIMIT_MSGQUEUE = 0: EMFILE.)"""
    with Sandbox(workers=1, timeout=5, memory_mb=512, seccomp=False) as sb:
        needs(sb, "ipcns")
        key, host_key = random.sample(range(1 << 20, 1 << 30), 2)
        assert host_ipc(host_key, create=True) == "ok ok ok ok"
        try:
            assert sb.run(ipc_cell(key, create=True), session="a").stdout == "ok ok ok EMFILE"
            assert sb.run(ipc_cell(key, create=False), session="a").stdout == "ok ok ok ENOENT"
            assert sb.run(ipc_cell(key, create=False), session="b").stdout == "ENOENT ENOENT ENOENT ENOENT"
            assert sb.run(ipc_cell(host_key, create=False), session="a").stdout == "ENOENT ENOENT ENOENT ENOENT"
            assert host_ipc(key, create=False) == "ENOENT ENOENT ENOENT ENOENT"
            # 128 MB of shared memory, touched and detached: it lives in the session's namespace only...
            before = shmem_kb()
            hold = ("import ctypes\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\n"
                    f"i = libc.shmget({key + 1}, 128 << 20, 0o1600)\naddr = libc.shmat(i, None, 0)\n"
                    "ctypes.memset(addr, 1, 128 << 20)\nprint(libc.shmdt(ctypes.c_void_p(addr)))")
            assert sb.run(hold, session="a").stdout == "0"
            assert shmem_kb() - before > 100 << 10
            sb.close_session("a")  # ...and is freed with it
            deadline = time.monotonic() + 30
            while shmem_kb() - before > 50 << 10 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert shmem_kb() - before < 50 << 10
            assert host_ipc(key + 1, create=False).startswith("ENOENT")
        finally:
            for k in (key, key + 1, host_key):
                remove_host_ipc(k)
        assert_still_works(sb)


def test_memfd_cannot_hold_memory_beyond_the_limits(sandbox):
    needs(sandbox, "seccomp")
    # 3 x 48 MB in anonymous files: over the 64 MB tmpfs, and invisible to RLIMIT_AS as long as nothing maps them
    attack = ("import os\nfds = []\nfor _ in range(3):\n    fd = os.memfd_create('hold')\n"
              "    for _ in range(48):\n        os.write(fd, b'x' * 2**20)\n    fds.append(fd)\n"
              "print('held', len(fds) * 48)")
    result = sandbox.run(attack)
    assert result.status == "error" and result.error.startswith("PermissionError"), result
    raw = sandbox.run("import ctypes\nprint(ctypes.CDLL(None).syscall(319, b'x', 0))")  # the syscall itself
    assert raw.stdout == "-1"
    # the other ways to a file in memory are bounded by the 64 MB tmpfs or read-only
    tmpfile = sandbox.run("import os, tempfile\nf = tempfile.TemporaryFile()\nfor _ in range(96):\n"
                          "    f.write(b'x' * 2**20)\nf.flush()\nprint('held 96')")
    assert tmpfile.status == "error" and "held" not in tmpfile.stdout, tmpfile
    shm = sandbox.run("from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=2**20)")
    assert shm.status == "error", shm
    callback = sandbox.run("import ctypes\nprint(ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 45)())")
    assert callback.stdout == "45", callback  # ctypes callbacks (libffi trampolines) still work without memfd
    assert_still_works(sandbox)


def test_host_command_lines_are_invisible(sandbox):
    needs(sandbox, "pidns", "private_proc")
    marker = "argv-secret-" + uuid.uuid4().hex
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        code = (f"import os\nseen = []\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()] + "
                f"['{host.pid}', '{os.getpid()}', str(os.getppid())]:\n"
                "    try:\n        seen.append(open(f'/proc/{pid}/cmdline', 'rb').read().decode(errors='replace'))\n"
                "    except OSError:\n        pass\n"
                "print(len([p for p in os.listdir('/proc') if p.isdigit()]), os.getpid())\nprint(seen)")
        result = sandbox.run(code)
        assert result.status == "ok" and marker not in result.stdout, result
        assert result.stdout.splitlines()[0] == "1 2"  # only itself, pid 2 under its namespace's init
        own = sandbox.run("import os\nprint(open('/proc/self/status').read().count('Pid:') > 0, os.getpid())")
        assert own.stdout == "True 2"  # its own /proc still works
        killed = sandbox.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\nprint('alive')")
        assert killed.status == "killed"  # not init of its namespace, so a signal to itself still works
    finally:
        host.kill()
        host.wait()
    assert_still_works(sandbox)


_UNDER_TMP_SCRIPT = """
import json, os, sys
from mathloop.tools.sandbox import Sandbox, SandboxUnavailable

probe = "try:\\n    open({!r}, 'w')\\n    print('ok')\\nexcept OSError:\\n    print('OSError')"
listing = ("import os\\ntry:\\n    t = os.listdir('/tmp')\\nexcept OSError as e:\\n    t = type(e).__name__\\n"
           "print(os.listdir('.'), t, os.path.exists('mine.txt'))")
from mathloop.tools.sandbox_worker import python_paths, unreachable_folder

report, refused = {}, {}
for without in ("", "namespaces"):
    os.environ["MATHLOOP_SANDBOX_WITHOUT"] = without
    try:
        sb = Sandbox(workers=1, timeout=20)
    except SandboxUnavailable as e:
        refused[without] = str(e)
        continue
    with sb:
        imports = sb.run("import sys, numpy, numpy.random, sympy.stats\\nprint(sys.prefix, numpy.__file__)\\n"
                         "print(numpy.random.default_rng(0).integers(10, 11), sympy.stats.E(sympy.stats.Die('X', 6)))")
        writes = [sb.run(probe.format(path)).stdout for path in (sys.argv[1], "/tmp/scratch")]
        sb.run("open('mine.txt', 'w').write('a')", session="a")
        seen = sb.run(listing, session="b").stdout
        normal = sb.run("print(sum(range(10)))")
        report[sb.mode] = [imports.status, imports.stdout, imports.error, writes, seen, normal.stdout]
print(json.dumps({"modes": report, "refused": refused, "closed": unreachable_folder(python_paths())}))
"""


def test_interpreter_under_tmp_keeps_its_site_packages_and_its_name_stays_out_of_sessions(tmp_path):
    """A venv under /tmp whose numpy and sympy live in its own site-packages (hard links as root, else a copy): it
    still imports in every mode, read-only, and a session's /tmp and working folder show only the session's own
    files: no folder of the host's /tmp, not even the one above the venv (as with a checkout under /tmp)."""
    venv = Path("/tmp") / f"mathloop-venv-{uuid.uuid4().hex[:8]}"
    purelib = Path(sysconfig.get_paths()["purelib"])
    script = tmp_path / "under_tmp.py"
    script.write_text(_UNDER_TMP_SCRIPT)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        for name in ("numpy", "numpy.libs", "sympy", "mpmath"):
            if (purelib / name).exists():  # a normal user may not hard-link root's files: a copy then
                subprocess.run(["cp", "-al" if os.geteuid() == 0 else "-a", str(purelib / name), str(site / name)],
                               check=True)
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run([str(venv / "bin" / "python"), str(script), str(site / "pwned")], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        report = result["modes"]
        for mode, (status, stdout, error, writes, seen, normal) in report.items():
            assert (status, error) == ("ok", ""), (mode, stdout, error)
            prefix, numpy_file = stdout.splitlines()[0].split()
            assert numpy_file == f"{prefix}/{site.relative_to(venv)}/numpy/__init__.py", (mode, stdout)
            assert stdout.splitlines()[1] == "10 7/2"
            assert normal == "45"
            if mode in ("root", "userns"):  # moved out of /tmp, read-only; the session's /tmp is its own
                assert venv.name not in stdout and writes == ["OSError", "ok"], (mode, stdout, writes)
                assert seen == "[] [] False", mode
            elif mode == "landlock":  # in place, read-only; the scratch folder is the session's own, /tmp unlisted
                assert writes == ["OSError", "OSError"] and seen == "[] PermissionError False", (mode, writes, seen)
        assert not (site / "pwned").exists()
        from mathloop.tools.sandbox_worker import landlock_abi

        # both confining modes where offered; as root, Landlock is refused, naming the folder, where the cells' uid
        # cannot reach the interpreter (a Python under /root, closed to others), rather than failing every import
        closed = result["closed"]
        assert landlock_abi() < 1 or "landlock" in report or (
            os.geteuid() == 0 and closed and f"cannot reach the Python installation: {closed} is closed to others"
            in result["refused"]["namespaces"]), result
        assert report, "no confining mode on this machine"
    finally:
        shutil.rmtree(venv, ignore_errors=True)


# The protocol: every message is a 4-byte big-endian length, then JSON. The cell finds its session's socket (the only
# socket among its descriptors) and writes to it directly.
_PROTOCOL_CELL = """
import os, stat, struct
def is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
fd = [fd for fd in range(3, 64) if is_socket(fd)][0]
{action}
print('previous')
"""


@pytest.mark.parametrize("action", [
    "os.write(fd, struct.pack('>I', 30) + b'{\"status\": \"ok\", \"stdout\": \"\"}')",  # well framed, no request id
    "os.write(fd, struct.pack('>I', 200000) + b'[' * 200000)",  # nested past the decoder's recursion limit
    "os.write(fd, struct.pack('>I', 4) + b'\\xff\\xfe\\x00\\x01')",  # not UTF-8
    "os.write(fd, struct.pack('>I', 1 << 30))",  # a length over the limit
    "os.close(fd)",  # the channel closed
])
def test_protocol_errors_kill_the_session_process(sandbox, action):
    session = "proto-" + uuid.uuid4().hex[:6]
    assert sandbox.run("state = 1", session=session).status == "ok"
    result = sandbox.run(_PROTOCOL_CELL.format(action=action), session=session)
    assert result.status == "killed" and "previous" not in result.stdout, result
    assert "could not start" not in result.error and result.error.startswith("Killed:"), result
    if not action.startswith("os.close"):
        assert "protocol" in result.error, result
    nxt = sandbox.run("print(sum(range(10)) + state - 1)", session=session)  # a fresh process, replayed: no stale reply
    assert (nxt.status, nxt.stdout) == ("ok", "45"), nxt
    sandbox.close_session(session)
    assert_still_works(sandbox)


def test_a_forged_reply_with_the_right_id_cannot_answer_the_next_cell(sandbox):
    """The documented limit: a cell that reads its request's id from the worker's frame can forge its own reply (it is
    believed), but the real reply left on the channel is caught before the next cell, which never sees it."""
    forge = ("import json, struct, sys\nrid = sys._getframe(0).f_back.f_locals['request']['id']\n"
             "body = json.dumps({'id': rid, 'status': 'ok', 'stdout': 'forged', 'error': ''}).encode()\n"
             "os.write(fd, struct.pack('>I', len(body)) + body)")
    session = "forge-" + uuid.uuid4().hex[:6]
    result = sandbox.run(_PROTOCOL_CELL.format(action=forge), session=session)
    assert (result.status, result.stdout) == ("ok", "forged"), result
    nxt = sandbox.run("print(sum(range(10)))", session=session)
    assert nxt.status == "killed" and "protocol" in nxt.error and "previous" not in nxt.stdout, nxt
    sandbox.close_session(session)
    assert_still_works(sandbox)


# ------------------------------------------------------------------------------------------------ text that crosses

def test_lone_surrogates_and_huge_messages_come_back_as_valid_text(sandbox):
    printed = sandbox.run("print('a\\udcffb')")
    assert (printed.status, printed.stdout) == ("ok", "a\ufffdb")
    raised = sandbox.run("raise ValueError('\\ud800' + 'x' * 5_000_000 + 'end')")  # 5 MB: over the reply limit
    assert raised.status == "error" and raised.error.startswith("ValueError: \ufffdxxx"), raised.error[:80]
    assert raised.error.endswith("xxxend") and len(raised.error) == 403
    for text in (printed.stdout, raised.error):
        text.encode("utf-8")  # strict: no lone surrogate left
    assert_still_works(sandbox)


def test_tir_eval_with_a_surrogate_cell_writes_its_rows_and_resumes(tmp_path, data_dir):
    """A model whose cell prints a lone surrogate and whose answer holds one: every row is written, as valid UTF-8,
    and the run resumes to more problems."""
    from mathloop.backends.fake import FakeBackend
    from mathloop.pipeline.evaluate import EvalConfig, run_eval
    from mathloop.records import Sample, read_records

    def model(prompt: str, index: int) -> str:
        if "```output" not in prompt:
            return "Let me look.\n```python\nprint('\\udcff', 18)\n```\n```output\n"
        return "It printed \udcff, so $\\boxed{18}$."

    def config(limit: int) -> EvalConfig:
        return EvalConfig(out=str(tmp_path / "run"), model="fake", backend="fake", mode="tir", benchmarks=["gsm8k"],
                          limit=limit, data_dir=str(data_dir))

    run_eval(config(1), backend=FakeBackend(model), progress=False)
    run_eval(config(2), backend=FakeBackend(model), progress=False)  # resumes: one more problem
    path = tmp_path / "run" / "samples" / "gsm8k.jsonl"
    path.read_bytes().decode("utf-8")  # strict
    samples = read_records(Sample, path)
    assert [s.problem_id for s in samples] == ["gsm8k/0", "gsm8k/1"]
    for sample in samples:
        (start, end), = sample.tool_output_spans
        assert sample.response[start:end] == "\n\ufffd 18\n```\n" and "It printed \ufffd" in sample.response
        assert sample.pred == "18"


# ------------------------------------------------------------------------------------------------ pool behaviour

def test_crashed_worker_is_replaced(sandbox):
    for crash in ("import os\nos._exit(3)", "import ctypes\nctypes.string_at(0)",
                  "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"):
        result = sandbox.run(crash)
        assert result.status == "killed" and format_output(result).startswith("Killed"), (crash, result)
        assert_still_works(sandbox)


def test_dead_zygote_is_restarted():
    with Sandbox(workers=1, timeout=1.5) as sb:
        assert_still_works(sb)
        sb._zygote.proc.kill()
        sb._zygote.proc.wait()
        assert_still_works(sb)


def test_session_state_is_shared_across_calls(sandbox):
    assert sandbox.run("import sympy as sp\nx = sp.Symbol('x')\na = 2", session="nb").status == "ok"
    assert sandbox.run("b = a * 3", session="nb").status == "ok"
    result = sandbox.run("print(a + b, sp.expand((x + a) ** 2))", session="nb")
    assert result.stdout == "8 x**2 + 4*x + 4"
    assert sandbox.run("print(a)", session="other").error == "NameError: name 'a' is not defined"
    assert sandbox.run("print(a)").status == "error"  # stateless calls see no session
    sandbox.close_session("nb")
    assert sandbox.run("print(a)", session="nb").error == "NameError: name 'a' is not defined"


def test_session_survives_a_timeout_by_replaying_finished_cells(sandbox):
    sandbox.run("total = 1\nprint('replayed output is not shown')", session="replay")
    sandbox.run("total += 10\nundefined_name", session="replay")  # an error cell is replayed too (total += 10 ran)
    assert sandbox.run("while True:\n    total += 1", session="replay").status == "timeout"
    result = sandbox.run("print(total)", session="replay")
    assert (result.status, result.stdout) == ("ok", "11")
    sandbox.close_session("replay")


def test_session_lost_when_replay_fails():
    with Sandbox(workers=1, timeout=1.5) as sb:
        assert sb.run("import time\ntime.sleep(0.5)\nv = 1", session="s").status == "ok"
        sb.timeout = 0.3  # the first cell cannot be replayed within this
        assert sb.run("while True:\n    pass", session="s").status == "timeout"
        lost = sb.run("print(v)", session="s")
        assert lost.status == "error" and lost.error.startswith("SessionLost")
        sb.timeout = 1.5
        assert sb.run("print(v)", session="s").error == "NameError: name 'v' is not defined"


def test_evicted_sessions_are_replayed():
    with Sandbox(workers=1, timeout=1.5, max_sessions=2) as sb:
        for i in range(4):
            sb.run(f"v = {i}", session=f"s{i}")
        assert [sb.run("print(v)", session=f"s{i}").stdout for i in range(4)] == ["0", "1", "2", "3"]


def test_run_many_is_concurrent_and_ordered(sandbox):
    timed = "import time\nstart = time.time()\ntime.sleep(0.4)\nprint(start, time.time())"
    cells = [(timed, None), ("k = 5", "m1"), ("print(k * 2)", "m1"), (timed, None), ("print(undefined)", "m2")]
    results = [format_output(r) for r in sandbox.run_many(cells)]
    assert results[1:3] == ["Done", "10"] and results[4] == "NameError: name 'undefined' is not defined"
    (start_a, end_a), (start_b, end_b) = ([float(x) for x in results[i].split()] for i in (0, 3))
    assert max(start_a, start_b) < min(end_a, end_b)  # the two sleeps ran side by side on the two workers
    assert sandbox.run_cells([("print(1)", "m1")]) == ["1"]
    sandbox.close_session("m1")
    sandbox.close_session("m2")


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_exec(tmp_path, capsys):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("print(sum(range(10)))\n")
    bad.write_text("while True:\n    pass\n")
    assert main(["exec", str(good)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and out["stdout"] == "45" and set(out) == {"status", "stdout", "error", "seconds"}
    assert main(["exec", "--timeout", "0.5", "--memory-mb", "256", str(bad)]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "timeout"


def test_unreachable_folder_names_the_first_folder_closed_to_other_users():
    """Root's cells run as an unprivileged uid: every folder above the Python installation needs search permission
    for others, and the installation's own folders read and search permission."""
    from mathloop.tools.sandbox_worker import unreachable_folder

    modes = {"/": 0o755, "/root": 0o700, "/root/.pyenv": 0o755, "/root/.pyenv/py": 0o755, "/usr": 0o755,
             "/usr/lib": 0o755, "/usr/lib/python3": 0o751, "/opt": 0o711, "/opt/py": 0o755}

    def mode_of(path):
        if path not in modes:
            raise FileNotFoundError(path)
        return modes[path]

    assert unreachable_folder(["/opt/py", "/usr/lib"], mode_of) is None  # search-only /opt is enough above
    assert unreachable_folder(["/usr/lib", "/root/.pyenv/py"], mode_of) == "/root"
    assert unreachable_folder(["/usr/lib/python3"], mode_of) == "/usr/lib/python3"  # not listable by others
    assert unreachable_folder(["/opt/gone"], mode_of) == "/opt/gone"
    assert unreachable_folder([], mode_of) is None
