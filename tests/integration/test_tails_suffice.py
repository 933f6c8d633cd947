"""The premise of a sync commit that waits for log tails alone: Dovecot opens a replica whose
`dovecot.index` and cache trail its logs, because it replays the log from the offset the index
names. Index and cache rewrites are held back here ([replication] trailing_delay of an hour),
node a is killed the instant the OK arrives, and b's copy is promoted: Dovecot on b opens it
without a corruption report and shows the message under the UID the client was told."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.hashing import digest
from replicator.testing.failover import Failover, body_bytes
from replicator.testing.imap import parse_appenduid, sha256
from replicator.testing.scenario import TwoNodes, two_nodes

pytestmark = pytest.mark.integration
TRAILING = ("dovecot.index", "dovecot.index.cache")


def _trailing_on_b(nodes: TwoNodes) -> list[str]:
    """The index and cache files of a's INBOX that b holds in an older version (or not)."""
    box = nodes.mailbox_index_dir("u1")
    found = []
    for name in TRAILING:
        if (box / name).is_file():
            copy = nodes.replica_path(box / name)
            if not copy.is_file() or digest(copy.read_bytes()) != digest((box / name).read_bytes()):
                found.append(name)
    return found


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_log_tails_alone_make_a_commit_durable(tmp_path: Path, mail_format: str) -> None:
    with two_nodes(mail_format, ("u1",), base=tmp_path / "n",  # type: ignore[arg-type]
                   sync_commit="fail", replication={"trailing_delay": 3600.0}) as nodes:
        failover = Failover(nodes)
        client = nodes.dovecot_a.imap("u1")
        for index in range(3):  # the mailbox's files appear: those commits ship them whole
            client.append("INBOX", body_bytes("u1", index))
        nodes.repl_a.barrier()
        assert _trailing_on_b(nodes) == []
        commit_flushes = nodes.repl_a.status()["counters"]["commit_flushes"]
        message = body_bytes("u1", 99)
        _, (uid,) = parse_appenduid(client.append("INBOX", message))
        assert nodes.repl_a.status()["counters"]["commit_flushes"] > commit_flushes
        trailing = _trailing_on_b(nodes)
        failover.crash_a()
        assert trailing, "b's index and cache were current: nothing trailed its logs"
        failover.promote("u1")
        assert failover.bodies_on_b("u1").get(uid) == sha256(message)
        assert nodes.dovecot_b.error_lines() == []
