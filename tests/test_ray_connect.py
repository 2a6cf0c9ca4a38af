"""How `--ray` connects (issue 28 item 4), without starting a cluster: `local` never joins the cluster a stale
/tmp/ray/ray_current_cluster names, `auto` refuses such a file in one line, and a cluster that refuses the token gets
one line saying where Ray reads it from."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from mathloop.replicas import connect_ray

pytest.importorskip("ray", reason="pip install 'mathloop[ray]'")


class FakeRay:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls, self.error = [], error

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)
        if self.error:
            raise self.error


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
def stale_cluster_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    address = f"127.0.0.1:{dead_port()}"
    (tmp_path / "ray" / "ray_current_cluster").write_text(address)
    return address


def test_local_starts_a_cluster_of_its_own(stale_cluster_file):
    ray = FakeRay()
    connect_ray(ray, "local")
    assert ray.calls[0]["address"] == "local"  # Ray's "start a new one", not "join the one the file names"


def test_auto_refuses_a_cluster_file_whose_cluster_stopped(stale_cluster_file):
    ray = FakeRay()
    with pytest.raises(ValueError, match=f"names the cluster at {stale_cluster_file}, which no longer answers"):
        connect_ray(ray, "auto")
    assert ray.calls == []


def test_auto_joins_a_cluster_that_answers(stale_cluster_file, tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        (tmp_path / "ray" / "ray_current_cluster").write_text(address)
        ray = FakeRay()
        connect_ray(ray, "auto")
    assert ray.calls[0]["address"] == "auto"


def test_a_refused_token_says_where_ray_reads_it():
    from ray.exceptions import AuthenticationError

    ray = FakeRay(AuthenticationError("InvalidAuthToken: the token does not match"))
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN") as refused:
        connect_ray(ray, "ray://head:10001")
    assert "ray_address ray://head:10001" in str(refused.value) and "ray get-auth-token" in str(refused.value)
    other = FakeRay(ConnectionError("no cluster"))
    with pytest.raises(ConnectionError):  # nothing listens there: Ray's own error
        connect_ray(other, f"127.0.0.1:{dead_port()}")


@pytest.fixture
def token_cluster(tmp_path):
    """`ray start --head` with token authentication, in a temporary home and Ray folder (no other cluster on the
    machine is touched: its processes are ended by id, not with `ray stop`)."""
    import subprocess
    import sys

    import psutil

    import shutil
    import tempfile

    short = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    env = {**os.environ, "HOME": str(tmp_path / "head"), "RAY_TMPDIR": short, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": "the-right-token-0123456789abcdef"}
    port = dead_port()
    from pathlib import Path

    ray_cli = [str(Path(sys.executable).with_name("ray"))]  # the `ray` command installed with the package
    if not Path(ray_cli[0]).exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    subprocess.run(ray_cli + ["start", "--head", f"--port={port}", f"--ray-client-server-port={dead_port()}",
                              "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        for process in psutil.process_iter(["pid", "cmdline"]):
            if short in " ".join(process.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    process.kill()
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.integration
def test_a_token_cluster_started_with_ray_start_is_joined_with_its_token_only(token_cluster, tmp_path):
    import subprocess
    import sys

    address, head_env = token_cluster
    script = ("import ray, sys\nfrom mathloop.replicas import connect_ray\ntry:\n    connect_ray(ray, sys.argv[1])\n"
              "except ValueError as e:\n    print('REFUSED', e)\nelse:\n    print('JOINED', ray.cluster_resources()['CPU'])\n"
              "    ray.shutdown()\n")
    for token, expected in (("a-wrong-token-0123456789abcdef", "REFUSED"), (head_env["RAY_AUTH_TOKEN"], "JOINED")):
        env = {**head_env, "HOME": str(tmp_path / "driver"), "RAY_AUTH_TOKEN": token}
        done = subprocess.run([sys.executable, "-c", script, address], env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.stdout.startswith(expected), done.stdout + done.stderr[-2000:]
        if expected == "REFUSED":
            assert "InvalidAuthToken" in done.stdout and "RAY_AUTH_TOKEN=<token>" in done.stdout
