"""The sandbox in each of its modes, forced on one machine with MATHLOOP_SANDBOX_WITHOUT: namespaces (as root, or in
an unprivileged user namespace), Landlock, refused. Each confining mode is attacked the same way: read a mode-600 file
in the caller's home, create files outside the scratch folder, open a TCP connection, start a subprocess; then the
next cell must still compute. Run as root and, in CI (and `test_attacks_as_a_normal_user`), as a normal user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from contextlib import nullcontext
from pathlib import Path

import pytest

from mathloop.backends.fake import FakeBackend
from mathloop.cli import main
from mathloop.generate import code_executor
from mathloop.pipeline.evaluate import EvalConfig, run_eval
from mathloop.pipeline.generate import generation_resources
from mathloop.tools.sandbox import Sandbox, SandboxUnavailable
from mathloop.tools.sandbox_worker import landlock_abi, python_paths, unreachable_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

REPO = Path(__file__).resolve().parents[1]
CI_USER = "mathloop-ci"
NAMESPACE_LAYERS = ("netns", "pidns", "mountns", "readonly_fs", "hidden_home", "ipcns", "private_tmpfs",
                    "private_proc", "no_new_privs", "seccomp")


def user_namespaces_work() -> bool:
    """Whether this user may create the namespaces the sandbox uses (what `unshare -Ur` needs)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Ur", "--mount", "--net", "--pid", "--ipc", "--fork", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def python_closed_to_cells() -> str | None:
    """As root without namespaces, cells run as an unprivileged uid: the folder that keeps it from this Python, if
    any (a Python under /root; .ci/run opens the folders above the interpreter, as a user would with chmod o+x)."""
    return unreachable_folder(python_paths()) if os.geteuid() == 0 else None


def expected_mode(without: str) -> str:
    """The mode this machine must give with `without` turned off: the strongest it offers."""
    if "namespaces" not in without:
        if os.geteuid() == 0:
            return "root"
        if user_namespaces_work():
            return "userns"
    if "landlock" not in without and landlock_abi() >= 1 and not python_closed_to_cells():
        return "landlock"
    return "refused"


@pytest.fixture
def home_secret():
    """A mode-600 file in the caller's home, as ~/.ssh keys are."""
    secret = "home-secret-" + uuid.uuid4().hex
    path = Path.home() / f".mathloop-test-secret-{uuid.uuid4().hex[:8]}"
    path.write_text(secret)
    path.chmod(0o600)
    yield path, secret
    path.unlink()


def attack(sb: Sandbox, secret_path: Path, secret: str) -> dict[str, str]:
    """Run the four attacks; returns {attack: what happened} and asserts the host saw nothing."""
    seen = {}
    read = sb.run(f"print(open({str(secret_path)!r}).read())")
    seen["read home file"] = "read" if secret in read.stdout else "refused"
    targets = [Path.home() / f"pwned-{uuid.uuid4().hex}", REPO / f"pwned-{uuid.uuid4().hex}",
               Path("/var/tmp") / f"pwned-{uuid.uuid4().hex}", Path("/tmp") / f"pwned-{uuid.uuid4().hex}"]
    written = []
    for target in targets:
        sb.run(f"open({str(target)!r}, 'w').write('x')")
        if target.exists():
            written.append(str(target))
            target.unlink()
    seen["write outside scratch"] = f"written: {written}" if written else "refused"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    try:
        sb.run(f"import socket\nsocket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=1)")
        try:
            listener.accept()[0].close()
            seen["tcp connect"] = "connected"
        except TimeoutError:
            seen["tcp connect"] = "refused"
    finally:
        listener.close()
    proc = sb.run("import subprocess\nprint(subprocess.run(['echo', 'spawned'], capture_output=True).stdout)")
    seen["subprocess"] = "started" if "spawned" in proc.stdout else "refused"
    after = sb.run("print(sum(range(10)))")
    seen["next cell"] = after.stdout if after.ok else after.error
    return seen


REFUSED_ALL = {"read home file": "refused", "write outside scratch": "refused", "tcp connect": "refused",
               "subprocess": "refused", "next cell": "45"}


@pytest.mark.parametrize("without", ["", "namespaces"])
def test_confining_modes_refuse_every_attack(without, home_secret, monkeypatch):
    monkeypatch.setenv("MATHLOOP_SANDBOX_WITHOUT", without)
    mode, closed = expected_mode(without), python_closed_to_cells()
    if mode == "refused" and closed and landlock_abi() >= 1:
        with pytest.raises(SandboxUnavailable, match=f"cannot run code on this host: .*{re.escape(closed)} "
                                                     "is closed to others"):
            Sandbox(workers=1, preload=("math",))
        pytest.skip(f"as root, {closed} keeps the cells' uid from Python, so Landlock is refused (checked); chmod "
                    "o+x the folders above the interpreter to run the attacks")
    if mode == "refused":
        pytest.skip("this kernel offers no Landlock and no namespaces (the refused mode is tested below)")
    with Sandbox(workers=1, timeout=5, memory_mb=512, preload=("math",)) as sb:
        assert sb.mode == mode, sb.isolation  # the strongest mode this machine offers, never a weaker one
        assert attack(sb, *home_secret) == REFUSED_ALL
        layers = sb.isolation
        needed = NAMESPACE_LAYERS if mode in ("root", "userns") else ("landlock", "readonly_fs", "hidden_home",
                                                                      "no_new_privs", "seccomp")
        assert {k: layers.get(k) for k in needed} == dict.fromkeys(needed, True)
        assert (layers["uid"] is True) == (os.geteuid() == 0)


def test_no_confinement_is_refused_unless_the_caller_opts_in(home_secret, monkeypatch):
    monkeypatch.setenv("MATHLOOP_SANDBOX_WITHOUT", "namespaces,landlock")
    with pytest.raises(SandboxUnavailable) as refused:
        Sandbox(workers=1, preload=("math",))
    message = str(refused.value)
    if closed := python_closed_to_cells():  # even the opt-in could not run a cell: one line naming the folder instead
        assert "\n" not in message and f"{closed} is closed to others" in message
        with pytest.raises(SandboxUnavailable, match="cannot run code on this host"):
            Sandbox(workers=1, preload=("math",), unsafe_file_access=True)
        pytest.skip(f"as root, {closed} keeps the cells' uid from Python (the refusal is checked)")
    assert "\n" not in message and "--unsafe-sandbox-file-access" in message and "unsafe_sandbox_file_access" in message
    assert "MATHLOOP_SANDBOX_WITHOUT" in message  # says why
    with Sandbox(workers=1, timeout=5, memory_mb=512, preload=("math",), unsafe_file_access=True) as sb:
        assert sb.mode == "unsafe" and sb.isolation["hidden_home"] is not True
        seen = attack(sb, *home_secret)
        assert seen["tcp connect"] == seen["subprocess"] == "refused" and seen["next cell"] == "45"  # seccomp
        if os.geteuid() != 0:  # what the opt-in accepts: a cell reads the caller's files
            assert seen["read home file"] == "read"


def test_a_bad_layer_name_is_one_line(monkeypatch):
    monkeypatch.setenv("MATHLOOP_SANDBOX_WITHOUT", "namespace")
    with pytest.raises(ValueError, match="MATHLOOP_SANDBOX_WITHOUT: unknown layer"):
        Sandbox(workers=1, preload=())


def test_commands_refuse_with_one_line_and_run_with_the_opt_in(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("MATHLOOP_SANDBOX_WITHOUT", "namespaces,landlock")
    program = tmp_path / "cell.py"
    program.write_text("print(6 * 7)\n")
    assert main(["exec", str(program)]) == 2
    err = capsys.readouterr().err.strip()
    if closed := python_closed_to_cells():
        assert len(err.splitlines()) == 1 and f"{closed} is closed to others" in err, err
        pytest.skip(f"as root, {closed} keeps the cells' uid from Python (the refusal is checked)")
    assert len(err.splitlines()) == 1 and "--unsafe-sandbox-file-access" in err, err
    config = EvalConfig(out=str(tmp_path / "run"), model="fake", backend="fake", mode="tir", benchmarks=["gsm8k"],
                        limit=1, data_dir=str(data_dir))
    with pytest.raises(SandboxUnavailable):  # before any row is written
        run_eval(config, backend=FakeBackend(), progress=False)
    assert not (tmp_path / "run" / "samples" / "gsm8k.jsonl").exists()
    config.unsafe_sandbox_file_access = True  # the YAML key / flag of eval, sample and grpo, down to the sandbox
    seen = []
    monkeypatch.setattr("mathloop.generate.code_executor", lambda *args: seen.append(args) or nullcontext())
    monkeypatch.setattr("mathloop.pipeline.generate.code_executor", lambda *args: seen.append(args) or nullcontext())
    with generation_resources(config):
        pass
    assert seen == [("tir", 5.0, True)]
    with code_executor("tir", 5.0, True) as sandbox:  # (the real one, unpatched in its module's namespace)
        assert sandbox.mode == "unsafe" and sandbox.run("print(6 * 7)").stdout == "42"


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user the tests above already run as one")
def test_attacks_as_a_normal_user():
    """As root: the attack tests above and the sandbox's own, again as the unprivileged user mathloop-ci (created
    here when missing), where the sandbox must confine through a user namespace or Landlock."""
    if subprocess.run(["id", CI_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", CI_USER], check=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("MATHLOOP_SANDBOX_WITHOUT", None)
    can_run = subprocess.run(["runuser", "-u", CI_USER, "--", sys.executable, "-c", "import mathloop"],
                             capture_output=True, text=True, cwd="/", env=env)
    if can_run.returncode != 0:
        message = (f"{CI_USER} cannot run {sys.executable} with this checkout ({can_run.stderr.strip()[-200:]}); make "
                   "the interpreter's and the checkout's folders searchable by others (.ci/run does)")
        if os.environ.get("MATHLOOP_CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run(["runuser", "-u", CI_USER, "--", sys.executable, "-m", "pytest", "-q", "-p",
                           "no:cacheprovider", "-m", "not integration", str(REPO / "tests" / "test_sandbox_modes.py"),
                           str(REPO / "tests" / "test_sandbox.py")],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


_HALF_SET_UP = """
import json, sys
from mathloop.tools import sandbox_worker as w

def failing_setup(cfg):  # a mount namespace entered, then a mount that cannot be made read-only
    w._check(w._libc.unshare(w.CLONE_NEWNS), "unshare")
    return {"mountns": True, "readonly_fs": "could not remount read-only: /x (mocked)", "hidden_home": True}

w.setup_namespaces = failing_setup
cfg = {"python_paths": w.python_paths(), "scratch": "/tmp", "home": "", "without": [], **json.loads(sys.argv[1])}
print(json.dumps(w.choose_mode(cfg)))
"""


def test_namespaces_failing_half_way_restart_the_zygote_without_them():
    """A zygote left in a half-made mount namespace must not go on in it: it asks for a fresh one ("retry"), which
    then confines with Landlock and reports why the namespaces were not used."""
    def run(cfg: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _HALF_SET_UP, json.dumps(cfg)], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO / "src")))

    first = run({})
    assert first.returncode == 0, first.stderr[-2000:]
    mode, layers = json.loads(first.stdout)
    if expected_mode("") not in ("root", "userns"):
        pytest.skip("no namespaces on this machine")
    assert mode == "retry" and "/x (mocked)" in layers["namespaces"]
    second = run({"namespaces_failed": layers["namespaces"]})
    mode, layers = json.loads(second.stdout)
    landlock = landlock_abi() >= 1 and not python_closed_to_cells()
    assert mode == ("landlock" if landlock else "refused") and "/x (mocked)" in layers["namespaces"]
