"""The sync plugin's second flush point: maildir's dovecot-keywords, written by a mailbox sync.

A STORE that gives a message a keyword the mailbox never used is committed to the index log
(flushed by the commit wrapper), and only then does the sync that ends the command rename the body
file to carry the keyword's letter and write the letter -> name mapping to dovecot-keywords in the
CONTROL directory. A peer promoted with the renamed body but without that mapping shows
`unknown-0`. The fake daemon here looks at dovecot-keywords at the moment each FLUSH arrives
(the plugin is blocked waiting for the answer, so Dovecot cannot move on meanwhile), which shows
what each FLUSH really covered. Every other command must cost exactly what it cost before.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imapclient
import pytest

from replicator.dovecot.instance import DovecotInstance, DovecotLayout, MailFormat
from tests.integration.fake_control import FakeControl, Flush, tab_unescape
from tests.integration.plugin_support import CRASH_MARKERS, METRICS, MSG, stats_count

pytestmark = pytest.mark.integration

# REPLICATOR_SYNC_VALGRIND=<dir>: imap runs under memcheck, logs in <dir>/<test>/vg.<pid>; a test
# fails if they report an error or a definite/indirect leak
VALGRIND_DIR = os.environ.get("REPLICATOR_SYNC_VALGRIND")
SYNC_ERROR = "Keyword names (dovecot-keywords) written by a mailbox sync not replicated"


class KeywordsProbe(FakeControl):
    """The fake daemon, plus what dovecot-keywords in the FLUSH's CONTROL directory held (None:
    no such file) when the request arrived, before it is answered."""

    def __init__(self, path: Path, fail_reason: str) -> None:
        self.keywords_at_flush: list[str | None] = []
        super().__init__(path, fail_reason=fail_reason)

    def _handle(self, conn: socket.socket, number: int, line: str) -> bool:
        if line.startswith("FLUSH\t"):
            control = Path(tab_unescape(line.split("\t")[-1]))  # the last dir is CONTROL
            keywords = control / "dovecot-keywords"
            self.keywords_at_flush.append(keywords.read_text() if keywords.exists() else None)
        return super()._handle(conn, number, line)


@dataclass
class Rig:
    inst: DovecotInstance
    control: KeywordsProbe
    expect_errors: bool = False
    clients: list[imapclient.IMAPClient] = field(default_factory=list)

    def imap(self) -> imapclient.IMAPClient:
        client = self.inst.imap("u1")
        self.clients.append(client)
        return client

    def flushes_during(self, action: Callable[[], object]) -> list[Flush]:
        """The FLUSH requests one command sent (the plugin waits for each answer before the
        command's tagged reply, so they are all recorded once the action returns)."""
        before = len(self.control.flushes)
        action()
        return list(self.control.flushes)[before:]

    def log_lines(self, needle: str) -> list[str]:
        """Log lines containing needle, polled for (Dovecot's log process writes later)."""
        deadline = time.monotonic() + 10.0
        while not (lines := [ln for ln in self.inst.log_text().splitlines() if needle in ln]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return lines

    def metric(self, name: str, expected: int) -> int:
        return stats_count(self.inst, name, expected)


@pytest.fixture
def rig_factory(tmp_path: Path, plugin_dir: Path) -> Iterator[Callable[..., Rig]]:
    """One Dovecot with the plugin against a KeywordsProbe; afterwards: no crash, no Error
    line unless the test expects one, and every session still answers."""
    made: list[Rig] = []
    vg_dir = Path(VALGRIND_DIR) / tmp_path.name if VALGRIND_DIR else None
    sock_dir = Path(tempfile.mkdtemp(prefix="rsync-kw-", dir="/tmp"))  # sun_path is short
    sock_dir.chmod(0o755)

    def make(fmt: MailFormat = "maildir", policy: str = "fail", *, expect_errors: bool = False,
             fail_reason: str = "no peer connected") -> Rig:
        sock = sock_dir / f"control{len(made)}.sock"
        layout = DovecotLayout(tmp_path / "mail", tmp_path / "index", tmp_path / "control", fmt)
        inst = DovecotInstance(
            tmp_path / f"dovecot{len(made)}", "kw", layout, ["u1"],
            mail_plugins=("replicator_sync",), mail_plugin_dir=plugin_dir,
            plugin_settings={"replicator_sync_socket": str(sock),
                             "replicator_sync_timeout": "2000",
                             "replicator_sync_policy": policy},
            extra_config=METRICS + valgrind_config(vg_dir))
        rig = Rig(inst, KeywordsProbe(sock, fail_reason), expect_errors)
        made.append(rig)
        inst.start()
        return rig

    yield make
    try:
        for rig in made:
            for client in rig.clients:
                assert client.noop()
                client.logout()
    finally:
        for rig in made:
            rig.inst.stop()  # drains the log process too
            rig.control.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    for rig in made:
        log = rig.inst.log_text().splitlines()
        assert [ln for ln in log if any(m in ln for m in CRASH_MARKERS)] == []
        assert rig.expect_errors or rig.inst.error_lines() == []
    assert valgrind_findings(vg_dir) == []


def valgrind_config(log_dir: Path | None) -> str:
    """Opt-in memcheck of the imap processes (the plugin runs inside them)."""
    if log_dir is None:
        return ""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_dir.chmod(0o777)  # the imap process runs as the mail user
    return ("service imap {\n  executable = /usr/bin/valgrind --vgdb=no --leak-check=full "
            f"--num-callers=30 --log-file={log_dir}/vg.%p /usr/lib/dovecot/imap\n}}\n")


def valgrind_findings(log_dir: Path | None) -> list[str]:
    """Memcheck errors and definite/indirect leaks reported in log_dir."""
    if log_dir is None:
        return []
    bad = re.compile(r"ERROR SUMMARY: [1-9]|(definitely|indirectly) lost: [1-9]")
    return [f"{p.name}: {ln}" for p in sorted(log_dir.iterdir())
            for ln in p.read_text(errors="replace").splitlines() if bad.search(ln)]


def selected_with_messages(rig: Rig, count: int = 2) -> imapclient.IMAPClient:
    client = rig.imap()
    for _ in range(count):
        client.append("INBOX", MSG)
    client.select_folder("INBOX")
    return client


def body_names(rig: Rig) -> list[str]:
    return sorted(p.name for p in (rig.inst.layout.mail_root / "u1" / "Maildir" / "cur").iterdir())


# --- maildir: the keyword mapping is flushed after the sync that wrote it ----------------------

def test_store_of_a_new_keyword_flushes_again_once_dovecot_keywords_names_it(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    client = selected_with_messages(rig)
    flushes = rig.flushes_during(
        lambda: client.add_flags([1], [b"\\Flagged", b"Work"], silent=True))
    assert len(flushes) == 2
    assert flushes[0].req_id < flushes[1].req_id and flushes[0].dirs == flushes[1].dirs
    commit_view, sync_view = rig.control.keywords_at_flush[-2:]
    # the commit's FLUSH alone would have shipped a body file name without its mapping
    assert commit_view is None or "Work" not in commit_view
    assert sync_view is not None and "0 Work" in sync_view.splitlines()
    assert any(name.endswith(":2,Fa") for name in body_names(rig))  # the letter on shared FS
    assert {b"\\Flagged", b"Work"} <= set(client.get_flags([1])[1])


def test_append_with_a_new_keyword_ships_the_mapping_with_its_commit_flush(
        rig_factory: Callable[..., Rig]) -> None:
    """A saved message gets its letter while the commit runs: one FLUSH covers both."""
    rig = rig_factory()
    client = rig.imap()
    client.select_folder("INBOX")
    (flush,) = rig.flushes_during(lambda: client.append("INBOX", MSG, flags=[b"Project"]))
    assert flush is rig.control.flushes[-1]
    assert "0 Project" in (rig.control.keywords_at_flush[-1] or "").splitlines()


def test_commands_that_write_no_keyword_mapping_cost_what_they_did(
        rig_factory: Callable[..., Rig]) -> None:
    """FLUSH count per command: the sync-time FLUSH only when dovecot-keywords changed."""
    rig = rig_factory()
    client = selected_with_messages(rig, 3)
    client.add_flags([1], [b"Work"], silent=True)  # Work now has its letter
    commands: list[tuple[str, Callable[[], object], int]] = [
        ("STORE system flag", lambda: client.add_flags([2], [b"\\Seen"], silent=True), 1),
        ("STORE FLAGS replace", lambda: client.set_flags([2], [b"\\Answered"]), 1),
        ("STORE known keyword", lambda: client.add_flags([2, 3], [b"Work"], silent=True), 1),
        ("STORE -keyword", lambda: client.remove_flags([3], [b"Work"]), 1),
        ("FETCH", lambda: client.fetch([1, 2, 3], ["FLAGS", "BODY.PEEK[]"]), 0),
        ("FETCH BODY[] (sets \\Seen)", lambda: client.fetch([3], ["BODY[]"]), 1),
        ("SELECT", lambda: client.select_folder("INBOX"), 0),
        ("NOOP", client.noop, 0),
        ("STORE second new keyword", lambda: client.add_flags([3], [b"Home"]), 2),
    ]
    counts = {name: len(rig.flushes_during(action)) for name, action, _ in commands}
    assert counts == {name: expected for name, _, expected in commands}
    lines = (rig.control.keywords_at_flush[-1] or "").splitlines()
    assert lines == ["0 Work", "1 Home"]


@pytest.mark.parametrize("fmt", ["mdbox", "sdbox"])
def test_dbox_keeps_keywords_in_the_index_and_gets_no_sync_flush(
        rig_factory: Callable[..., Rig], fmt: MailFormat) -> None:
    rig = rig_factory(fmt)
    client = selected_with_messages(rig)
    assert len(rig.flushes_during(lambda: client.add_flags([1], [b"Work"], silent=True))) == 1
    assert len(rig.flushes_during(lambda: client.add_flags([2], [b"\\Seen"]))) == 1
    assert not (rig.inst.layout.control_root / "u1" / "mailboxes" / "INBOX"
                / "dovecot-keywords").exists()


# --- the daemon says FAIL to the sync-time FLUSH ------------------------------------------------

def raw_store_new_keyword(rig: Rig) -> tuple[str, list[bytes]]:
    """UID STORE +FLAGS.SILENT (\\Flagged Work) with imaplib, which keeps untagged NO lines:
    (tagged status, untagged NO texts)."""
    with imaplib.IMAP4("127.0.0.1", rig.inst.imap_port) as conn:  # logs out on exit
        conn.login("u1", rig.inst.password("u1"))
        conn.append("INBOX", None, None, MSG)
        conn.select("INBOX")
        conn.untagged_responses.pop("NO", None)
        status, _ = conn.uid("STORE", "1", "+FLAGS.SILENT", "(\\Flagged Work)")
        untagged = [d for d in conn.untagged_responses.pop("NO", []) if isinstance(d, bytes)]
        assert conn.noop()[0] == "OK"  # the session carries on
    return status, untagged


def test_fail_policy_turns_a_failed_sync_flush_into_an_untagged_no_and_an_error(
        rig_factory: Callable[..., Rig]) -> None:
    """IMAP decides a STORE's tagged reply before the closing sync; a failed sync only makes
    imap send `* NO <storage error>` ahead of the tagged OK (imap-sync.c cmd_sync_continue)."""
    rig = rig_factory(policy="fail", expect_errors=True, fail_reason="quorum 1 not reached")
    rig.control.script("ok", "ok", "fail")  # APPEND, STORE's commit, STORE's sync
    status, untagged = raw_store_new_keyword(rig)
    assert status == "OK"
    assert untagged == [b"[UNAVAILABLE] Keyword change not yet replicated to a peer "
                        b"(replicator: quorum 1 not reached)"]
    (line,) = rig.log_lines(SYNC_ERROR)
    assert " Error: " in line and "(policy=fail): user=u1 mailbox=INBOX" in line
    assert line.endswith("; the client gets an untagged NO, its tagged reply was decided "
                         "before the sync")
    assert rig.metric("replicator_sync_failed", 1) == 1
    assert len(rig.control.flushes) == 3
    client = rig.imap()
    client.select_folder("INBOX", readonly=True)
    assert {b"\\Flagged", b"Work"} <= set(client.get_flags([1])[1])  # committed locally anyway


def test_degrade_policy_answers_ok_and_counts_a_warning_for_a_failed_sync_flush(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(policy="degrade", fail_reason="quorum 1 not reached")
    rig.control.script("ok", "ok", "fail")
    assert raw_store_new_keyword(rig) == ("OK", [])
    (line,) = rig.log_lines("(policy=degrade): user=u1 mailbox=INBOX")
    assert "quorum 1 not reached" in line
    assert rig.metric("replicator_sync_degraded", 1) == 1


@pytest.mark.parametrize(("answer", "exit_code"), [("ok", 0), ("fail", 75)])
def test_doveadm_flags_add_waits_for_the_mapping_and_tempfails_on_fail(
        rig_factory: Callable[..., Rig], answer: str, exit_code: int) -> None:
    """doveadm checks its own mailbox_sync(): there a failed sync-time FLUSH fails the command
    (EX_TEMPFAIL), with the same storage error IMAP shows untagged."""
    rig = rig_factory(expect_errors=answer == "fail")
    selected_with_messages(rig)
    rig.control.script("ok", answer)  # the commit's FLUSH, then the sync's
    run = subprocess.run(["doveadm", "-c", str(rig.inst.config_path), "flags", "add", "-u", "u1",
                          "Work", "mailbox", "INBOX", "uid", "1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == exit_code, run.stderr
    assert rig.control.keywords_at_flush[-2:] == [None, "0 Work\n"]
    if answer == "fail":
        assert "Mailbox sync failed: Keyword change not yet replicated to a peer" in run.stderr
