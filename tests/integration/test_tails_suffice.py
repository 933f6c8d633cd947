"""The premise of a sync commit that does not wait for index rewrites: Dovecot opens a replica
whose `dovecot.index` trails its log, because it replays the log from the offset the index
names. Index rewrites are held back here ([replication] trailing_delay of an hour), node a is
killed the instant the OK arrives with b's index older than a's, and b's copy is promoted:
Dovecot on b shows every message under the UID the client was told, takes new messages (which
write new cache records: a cache that lacked records the log points to would hand their offsets
to other messages), and reports no corruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.hashing import digest
from replicator.testing.failover import Failover, body_bytes
from replicator.testing.imap import parse_appenduid, sha256
from replicator.testing.scenario import TwoNodes, two_nodes

pytestmark = pytest.mark.integration
# Dovecot rewrites an index once its log has grown enough since; a commit that finds a file
# locked goes the whole way and ships the index too, so it may take a few rewrites to catch one
# in flight.
MAX_APPENDS = 2000


def _index_trails_on_b(nodes: TwoNodes) -> bool:
    """Whether b holds an older index of a's INBOX (or, mdbox, of its map) than a has."""
    box = nodes.mailbox_index_dir("u1")
    indexes = [box / "dovecot.index", box.parent.parent / "storage" / "dovecot.map.index"]
    return any(index.is_file() and (not (copy := nodes.replica_path(index)).is_file()
                                    or digest(copy.read_bytes()) != digest(index.read_bytes()))
               for index in indexes)


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_a_promoted_copy_whose_index_trails_its_log_serves_every_acknowledged_message(
        tmp_path: Path, mail_format: str) -> None:
    with two_nodes(mail_format, ("u1",), base=tmp_path / "n",  # type: ignore[arg-type]
                   sync_commit="fail", replication={"trailing_delay": 3600.0}) as nodes:
        failover = Failover(nodes)
        client = nodes.dovecot_a.imap("u1")
        for index in range(3):  # the mailbox's files appear: those commits ship them whole
            client.append("INBOX", body_bytes("u1", index))
        nodes.repl_a.barrier()
        assert not _index_trails_on_b(nodes)  # the barrier shipped everything
        commit_flushes = nodes.repl_a.status()["counters"]["commit_flushes"]
        told: dict[int, str] = {}
        for index in range(3, MAX_APPENDS):
            message = body_bytes("u1", index)
            _, (uid,) = parse_appenduid(client.append("INBOX", message))
            told[uid] = sha256(message)
            if _index_trails_on_b(nodes):
                break
        trailing = _index_trails_on_b(nodes)
        flushed = nodes.repl_a.status()["counters"]["commit_flushes"] - commit_flushes
        failover.crash_a()
        assert trailing, f"no index rewrite was in flight after any of {len(told)} APPENDs"
        assert flushed > 0  # the APPENDs were answered after commit flushes
        failover.promote("u1")
        on_b = nodes.dovecot_b.imap("u1")
        for index in range(3):
            _, (uid,) = parse_appenduid(on_b.append("INBOX", body_bytes("u1", 1000 + index)))
            assert uid not in told, f"b handed out UID {uid} again"
        on_b.logout()
        bodies = failover.bodies_on_b("u1")
        assert {uid: bodies.get(uid) for uid in told} == told
        assert nodes.dovecot_b.error_lines() == []
