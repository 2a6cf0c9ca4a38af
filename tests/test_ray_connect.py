"""How `--ray` connects (issue 28 item 4), without starting a cluster: `local` never joins the cluster a stale
/tmp/ray/ray_current_cluster names, `auto` refuses such a file in one line, and a cluster that refuses the token gets
one line saying where Ray reads it from."""

from __future__ import annotations

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
    with pytest.raises(ConnectionError):  # other failures are Ray's own
        connect_ray(other, "10.0.0.1:6379")
