"""A mailbox cache of several 64 KiB chunks, which Dovecot writes in place on every commit: the
receiver patches its copy in place, checked from the chunks the writes touch (replicator.hashing
names a file over one chunk by its chunks' digests), and the copy stays byte-identical; after
node a is killed, promote checks every file against the digest journal and Dovecot on b serves
every message the client was told about, with no error."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.hashing import CHUNK_SIZE
from replicator.testing.failover import Failover
from replicator.testing.imap import parse_appenduid, sha256
from replicator.testing.scenario import two_nodes

pytestmark = pytest.mark.integration
CHUNKS = 3  # the cache must span more than this many chunks before the commits under test


def _message(index: int) -> bytes:
    return (f"From: sender{index}@example.org\r\nTo: u1@example.org\r\nSubject: message "
            f"{index} of a mailbox whose cache spans chunks\r\nMessage-ID: <{index}@big.example>"
            f"\r\n\r\nbody {index}\r\n").encode()


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_a_cache_over_several_chunks_is_patched_in_place_and_promotes(
        tmp_path: Path, mail_format: str) -> None:
    with two_nodes(mail_format, ("u1",), base=tmp_path / "n",  # type: ignore[arg-type]
                   sync_commit="fail") as nodes:
        failover = Failover(nodes)
        client = nodes.dovecot_a.imap("u1")
        client.select_folder("INBOX")
        cache = nodes.mailbox_index_dir("u1") / "dovecot.index.cache"
        told: dict[int, str] = {}
        while not cache.is_file() or cache.stat().st_size <= CHUNKS * CHUNK_SIZE:
            for _ in range(50):
                message = _message(len(told))
                _, (uid,) = parse_appenduid(client.append("INBOX", message))
                told[uid] = sha256(message)
            client.fetch(client.search("ALL"), ["ENVELOPE", "BODYSTRUCTURE"])  # cached
            assert len(told) < 5000, f"the cache stays at {cache.stat().st_size} bytes"
        nodes.repl_a.barrier()
        copy = nodes.replica_path(cache)
        assert copy.read_bytes() == cache.read_bytes()
        inode, size = copy.stat().st_ino, copy.stat().st_size
        for _ in range(5):  # each commit writes the cache's header and appends records
            message = _message(len(told))
            _, (uid,) = parse_appenduid(client.append("INBOX", message))
            told[uid] = sha256(message)
            client.fetch([uid], ["ENVELOPE", "BODYSTRUCTURE"])
        nodes.repl_a.barrier()
        assert copy.stat().st_size > size, "the commits under test did not grow the cache"
        assert copy.stat().st_ino == inode, "the cache was replaced, not patched in place"
        assert copy.read_bytes() == cache.read_bytes()
        failover.crash_a()
        failover.promote("u1")  # checks every file against the digest journal first
        assert failover.bodies_on_b("u1") == told
        assert nodes.dovecot_b.error_lines() == []
