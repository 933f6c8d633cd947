"""The etcd harness against real etcd members: a 3-member cluster keeps serving with one member
killed, refuses writes with two killed, and comes back with its data when they restart. The
ownership code will rely on exactly this, so the harness has to show it before anything else
is built on it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd3gw.exceptions import Etcd3Exception

from replicator.testing.etcd import EtcdCluster, etcd_cluster, have_etcd

pytestmark = pytest.mark.integration


def _need_etcd() -> None:
    reason = have_etcd()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    _need_etcd()
    with etcd_cluster(tmp_path / "etcd", size=3) as started:
        yield started


def test_endpoints_are_distinct_loopback_urls(cluster: EtcdCluster) -> None:
    assert len(set(cluster.endpoints)) == 3
    assert all(url.startswith("http://127.0.0.1:") for url in cluster.endpoints)


def test_quorum_kept_lost_and_regained(cluster: EtcdCluster) -> None:
    cluster.client(0).put("owner/INBOX", "a")
    assert cluster.client(1).get("owner/INBOX") == [b"a"]

    cluster.kill9(0)
    assert not cluster.members[0].running()
    cluster.wait_healthy(timeout=20)  # a new election if member 0 led
    cluster.client(1).put("after-one-kill", "b")
    assert cluster.client(2).get("after-one-kill") == [b"b"]
    assert cluster.client(2).get("owner/INBOX") == [b"a"]

    cluster.kill9(1)
    # One member of three: no quorum, so the put cannot commit. Its outcome is unknown rather
    # than failed (a survivor that still led has it in its log and may commit it once the
    # others are back), so nothing is asserted about this key afterwards.
    with pytest.raises(Etcd3Exception):
        cluster.client(2, timeout=1.0).put("without-quorum", "c")

    cluster.restart(0)
    cluster.restart(1)
    cluster.wait_healthy(timeout=20)
    for index in range(3):
        assert cluster.client(index).get("owner/INBOX") == [b"a"]
        assert cluster.client(index).get("after-one-kill") == [b"b"]
    cluster.client(0).put("after-restart", "d")
    assert cluster.client(1).get("after-restart") == [b"d"]


def test_restarted_member_catches_up_on_what_it_missed(cluster: EtcdCluster) -> None:
    cluster.kill9(2)
    cluster.wait_healthy(timeout=20)  # if 2 led, the other two have elected a leader again
    for index in range(50):
        cluster.client(0).put(f"missed/{index}", str(index))
    cluster.restart(2)
    cluster.wait_healthy(timeout=20)  # a put through member 2 applied there, after the 50
    local = cluster.client(2).get("missed/", range_end="missed0", serializable=True)
    assert sorted(local, key=int) == [str(i).encode() for i in range(50)]


def test_member_that_cannot_start_fails_start_with_its_log(tmp_path: Path) -> None:
    _need_etcd()
    cluster = EtcdCluster.create(tmp_path / "etcd")
    port = cluster.members[2].port
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        try:
            with pytest.raises(RuntimeError, match="address already in use"):
                cluster.start(timeout=20)
        finally:
            cluster.stop()
