"""quorum_counts = "live": the survivor of a failover commits with no peer to hold its changes,
and says so in etcd first. While it does, nobody takes its users over by itself (their copies
lack what it acknowledged alone); once its peer holds everything again, it says so too."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from replicator.dovecot.doveadm import fetch_body_hashes
from replicator.testing.etcd import EtcdCluster
from replicator.testing.failover import body_bytes
from replicator.testing.imap import parse_appenduid, sha256
from replicator.testing.scenario import two_nodes
from tests.integration.daemon_support import coordination

pytestmark = pytest.mark.integration



def until(condition: Callable[[], bool], why: Callable[[], str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, why()
        time.sleep(0.05)


def test_a_node_that_committed_alone_is_not_taken_over(tmp_path: Path,
                                                        etcd: EtcdCluster) -> None:
    with two_nodes("mdbox", ("u1",), base=tmp_path / "n", sync_commit="fail",
                   coordination=coordination(etcd.endpoints)) as nodes:
        a, b = nodes.repl_a, nodes.repl_b
        client = nodes.dovecot_a.imap("u1")
        parse_appenduid(client.append("INBOX", body_bytes("u1", 1)))
        client.logout()
        nodes.quiesce()
        nodes.dovecot_a.kill9()
        a.kill9()
        until(lambda: "u1" in b.status()["ownership"]["serving"], lambda: b.log_text()[-3000:])
        assert not b.status()["ownership"]["committing_alone"]
        message = body_bytes("u1", 2)
        client = nodes.dovecot_b.imap("u1")  # a is down: b commits with no peer's ack
        _, (uid,) = parse_appenduid(client.append("INBOX", message))
        client.logout()
        assert b.status()["ownership"]["committing_alone"]  # recorded before that OK
        nodes.dovecot_b.kill9()
        b.kill9()
        a.start()  # a's copy of b lacks what b acknowledged alone
        until(lambda: "lease expired, but it acknowledged commits" in a.log_text(),
              lambda: a.log_text()[-3000:])
        assert "u1" not in a.status()["ownership"]["serving"]
        assert a.status()["ownership"]["owners"]["u1"]["node"] == "b"
        b.start()  # b comes back: it still owns u1, and a catches up with it
        nodes.dovecot_b.start()
        until(lambda: "u1" in b.status()["ownership"]["serving"], lambda: b.log_text()[-3000:])
        until(lambda: not b.status()["ownership"]["committing_alone"],
              lambda: b.log_text()[-3000:])
        assert fetch_body_hashes(nodes.dovecot_b.config_path, "u1", "INBOX")[uid] == \
            sha256(message)
