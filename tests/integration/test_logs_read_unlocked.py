"""Logs are read without Dovecot's lock (dovecot.filekinds.FCNTL_LOCKED). With
`mail_fsync = always` Dovecot holds a log's lock through the flush after every append, so here
nearly every read of a log meets it held. A keyword set on every other message of a big
mailbox is a log transaction of several pages, which a read may catch between two pages.

Whatever the reads caught: once a is quiet, b's copy is a's file for file (verify); and with
a's daemon and Dovecot killed while such changes stream, b's copy is one Dovecot opens
without a complaint, holding every message, each change of the stream either whole or not
at all (a transaction cut in two would leave some messages with a keyword and some without)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from replicator.dovecot.doveadm import mailbox_status
from replicator.testing.failover import Failover, body_bytes
from replicator.testing.scenario import TwoNodes, two_nodes

pytestmark = pytest.mark.integration
MESSAGES = 1200  # every other one changed at once: a keyword record of about 5 KiB
ROUNDS = 10  # keywords per phase (maildir names at most 26 in its file names)


def _stream(nodes: TwoNodes, keywords: list[str]) -> list[int]:
    """Set each keyword, one STORE each, on every other message; the UIDs changed."""
    client = nodes.dovecot_a.imap("u1")
    client.select_folder("INBOX")
    changed = sorted(client.search("ALL"))[::2]
    for keyword in keywords:
        client.add_flags(changed, [keyword], silent=True)
    client.logout()
    return changed


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_logs_read_while_dovecot_flushes_replicate_whole_changes(
        tmp_path: Path, mail_format: str) -> None:
    with two_nodes(mail_format, ("u1",), base=tmp_path / "n",  # type: ignore[arg-type]
                   mail_fsync="always") as nodes:
        failover = Failover(nodes)
        client = nodes.dovecot_a.imap("u1")
        client.multiappend("INBOX", [body_bytes("u1", index) for index in range(MESSAGES)])
        client.logout()
        _stream(nodes, [f"quiet{k}" for k in range(ROUNDS)])
        nodes.quiesce()
        verified = subprocess.run(
            [sys.executable, "-m", "replicator", "verify", "--config",
             str(nodes.repl_b.config_path), "--origin", "a"],
            capture_output=True, text=True, timeout=300)
        assert verified.returncode == 0, verified.stdout + verified.stderr

        streamed = [f"crash{k}" for k in range(ROUNDS)]
        changed = set(_stream(nodes, streamed))
        failover.crash_a()  # right after the last OK: no barrier, b may trail
        failover.promote("u1")
        assert mailbox_status(nodes.dovecot_b.config_path, "u1", ("INBOX",))[
            "INBOX"].messages == MESSAGES
        flags = failover.flags_on_b("u1")
        got = {uid: {f for f in found if f.startswith("crash")} for uid, found in flags.items()}
        assert {frozenset(got[uid]) for uid in changed} in (
            {frozenset(streamed[:n])} for n in range(ROUNDS + 1))
        assert not any(got[uid] for uid in set(got) - changed)
        assert nodes.dovecot_b.error_lines() == []
