"""on_quorum_loss: what an owner does when etcd loses its quorum. "stop" (the default) is in
test_ownership.py; here "keep": an owner that reaches a member answering "no leader" keeps
committing (no lease can expire without a leader), and one that reaches no member stops."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from replicator.testing.etcd import EtcdCluster
from replicator.testing.failover import body_bytes
from replicator.testing.imap import parse_appenduid
from replicator.testing.scenario import TwoNodes, two_nodes
from tests.integration.daemon_support import coordination

pytestmark = pytest.mark.integration



def wait_state(nodes: TwoNodes, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while nodes.repl_a.status()["ownership"]["state"] != state:
        assert time.monotonic() < deadline, nodes.repl_a.log_text()[-3000:]
        time.sleep(0.05)


def append(nodes: TwoNodes, index: int) -> tuple[bool, str]:
    client = nodes.dovecot_a.imap("u1")
    try:
        parse_appenduid(client.append("INBOX", body_bytes("u1", index)))
        return True, ""
    except Exception as exc:  # imaplib's error for a tagged NO
        return False, str(exc)
    finally:
        client.logout()


def test_keep_commits_through_a_quorum_loss_while_a_member_answers(
        tmp_path: Path, etcd: EtcdCluster) -> None:
    with two_nodes("mdbox", ("u1",), base=tmp_path / "n", sync_commit="fail",
                   coordination=coordination(etcd.endpoints, on_quorum_loss="keep")) as nodes:
        assert append(nodes, 0)[0]
        etcd.kill9(1)
        etcd.kill9(2)
        wait_state(nodes, "no-leader")
        # commits for more than two TTLs without a leader: under "stop" the lease would have
        # run out after one
        started, index = time.monotonic(), 1
        while time.monotonic() - started < 2 * 2 + 1:
            ok, why = append(nodes, index)
            assert ok, why
            index += 1
        etcd.kill9(0)  # now no member answers at all: the lease runs out, commits stop
        wait_state(nodes, "unreachable")
        deadline = time.monotonic() + 30
        while append(nodes, 10)[0]:
            assert time.monotonic() < deadline
        ok, why = append(nodes, 11)
        assert not ok and "no valid ownership lease" in why
        for index in range(3):
            etcd.restart(index)
        etcd.wait_healthy()
        wait_state(nodes, "ok")
        deadline = time.monotonic() + 30
        while not append(nodes, 12)[0]:
            assert time.monotonic() < deadline, nodes.repl_a.log_text()[-3000:]
