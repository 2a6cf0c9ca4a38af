"""The TIR sandbox contains hostile code: every attack is a test, and after each the pool still answers correctly.

Attacks are bounded where escaping would hurt the host: the fork bomb, the 8 GB allocation and the output flood run
only after a bounded probe showed the limit holds in this very sandbox (see `_probe_*`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
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
    sb.run("pass")  # the per-process layers are reported by the first process
    missing = {k: v for k, v in sb.isolation.items() if k in layers and v is not True}
    if missing:
        pytest.skip(f"isolation layer missing on this host: {missing}")


# ------------------------------------------------------------------------------------------------ plain behaviour

def test_runs_code_with_preloaded_libraries(sandbox):
    result = sandbox.run("import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**2 - 4, x))\n"
                         "import numpy as np\nprint(np.arange(4).sum())")
    assert result.status == "ok" and result.stdout == "[-2, 2]\n6"
    assert result.seconds < 1.5


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
    assert 1.4 < time.monotonic() - start < 5
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
    assert result.status in ("error", "killed")
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
