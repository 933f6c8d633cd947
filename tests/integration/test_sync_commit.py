"""Sync commit end to end: the native plugin in Dovecot, the daemon, a peer, and failover.

The promise under test: a UID a client was told (APPENDUID), a flag a client was told is set,
an expunge a client was told happened, is on the peer before the client hears it. So the
instant the tagged OK arrives, node a is killed (or cut off), b promotes its copy, and b must
show exactly that. Without the plugin the same loop loses changes, which shows the test can
fail.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.testing.failover import Failover, UserNotReplicated, body_bytes
from replicator.testing.imap import parse_appenduid, sha256
from replicator.testing.netns import HostPair
from replicator.testing.scenario import two_nodes

pytestmark = pytest.mark.integration
USERS = tuple(f"s{i}" for i in range(1, 121))
CUT_EVERY = 10  # every tenth APPEND iteration cuts the link instead of killing node a


@pytest.fixture
def hosts() -> Iterator[HostPair]:
    pair = HostPair.create()
    try:
        yield pair
    finally:
        pair.close()


def append_then_lose_a(failover: Failover, user: str, index: int, *,
                       cut: HostPair | None = None) -> tuple[int, str]:
    """APPEND; the instant the OK arrives, kill node a (or cut its link); promote on b.
    Returns (UID the client was told, body digest)."""
    nodes = failover.nodes
    client = nodes.dovecot_a.imap(user)
    message = body_bytes(user, index)
    _validity, uids = parse_appenduid(client.append("INBOX", message))
    if cut is not None:
        cut.cut()
        failover.promote(user, wrap=cut.b.exec())
        client.logout()
        failover.crash_a()
        cut.heal()
    else:
        failover.crash_a()
        failover.promote(user)
    return uids[0], sha256(message)


def test_no_acknowledged_append_is_lost(tmp_path: Path, hosts: HostPair) -> None:
    """≥ 200 APPENDs (maildir and mdbox), each followed at once by the loss of node a."""
    losses: list[str] = []
    iterations = 0
    for mail_format, count in (("maildir", 100), ("mdbox", 100)):
        with two_nodes(mail_format, USERS, base=tmp_path / mail_format, sync_commit="fail",
                       hosts=hosts) as nodes:  # type: ignore[arg-type]
            failover = Failover(nodes)
            for index in range(count):
                user = USERS[index]
                cut = hosts if index % CUT_EVERY == CUT_EVERY - 1 else None
                uid, digest = append_then_lose_a(failover, user, index, cut=cut)
                if failover.bodies_on_b(user).get(uid) != digest:
                    losses.append(f"{mail_format} {user} UID {uid}")
                iterations += 1
                failover.rejoin_a()
            assert not nodes.dovecot_b.error_lines(), nodes.dovecot_b.error_lines()[:5]
    assert iterations >= 200
    assert losses == []


def test_without_the_plugin_the_same_loop_loses_appends(tmp_path: Path) -> None:
    """The control experiment: asynchronous replication alone cannot keep the promise.

    Without the plugin Dovecot acknowledges an APPEND whatever a's daemon has shipped. Half
    the iterations stop a's daemon (SIGSTOP) the moment before the APPEND, as a daemon that is
    behind (busy, starved of CPU, its link slow) is: every one of those acknowledged UIDs must
    be missing on b, or the loop could not see a loss. (The plugin would hold the APPEND
    there until its timeout and answer NO.) The other half race the kill as they come; how
    many of them were lost is printed. Once capture got faster that race was lost 0 times
    in 40, so it cannot be what the control rests on."""
    lost = {"stopped": 0, "racing": 0}
    with two_nodes("mdbox", USERS, base=tmp_path / "nodes") as nodes:
        failover = Failover(nodes)
        for index in range(40):
            behind = index % 2 == 0
            if behind:
                assert nodes.repl_a.process is not None
                os.kill(nodes.repl_a.process.pid, signal.SIGSTOP)
            try:
                uid, digest = append_then_lose_a(failover, USERS[index], index)
                missing = failover.bodies_on_b(USERS[index]).get(uid) != digest
            except UserNotReplicated:
                missing = True  # not even the user's directories had reached b
            lost["stopped" if behind else "racing"] += missing
            failover.rejoin_a()
    print(f"without sync commit, acknowledged APPENDs missing after failover: "
          f"{lost['stopped']} of 20 with a's daemon stopped, {lost['racing']} of 20 racing it")
    assert lost["stopped"] == 20


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_acknowledged_store_and_expunge_survive(tmp_path: Path, mail_format: str) -> None:
    rng = random.Random(5)
    with two_nodes(mail_format, USERS, base=tmp_path / "nodes",  # type: ignore[arg-type]
                   sync_commit="fail") as nodes:
        failover = Failover(nodes)
        for index in range(30):
            user = USERS[index]
            client = nodes.dovecot_a.imap(user)
            uids = [parse_appenduid(client.append("INBOX", body_bytes(user, n)))[1][0]
                    for n in range(3)]
            client.select_folder("INBOX")
            target = rng.choice(uids)
            if index % 2 == 0:
                client.add_flags([target], ["\\Flagged", "Work"], silent=True)
            else:
                client.add_flags([target], ["\\Deleted"], silent=True)
                client.expunge([target])  # UID EXPUNGE
            failover.crash_a()
            failover.promote(user)
            seen = failover.flags_on_b(user)
            where = f"iteration {index}, {user}, UIDs {uids}, target {target}, b has {seen}"
            if index % 2 == 0:
                assert {"\\Flagged", "Work"} <= seen.get(target, frozenset()), where
            else:
                assert sorted(seen) == sorted(set(uids) - {target}), where
            failover.rejoin_a()


def test_no_peer_fail_policy_refuses_and_loses_nothing(tmp_path: Path) -> None:
    with two_nodes("mdbox", USERS[:2], base=tmp_path / "nodes", sync_commit="fail",
                   sync_timeout_ms=500) as nodes:
        client = nodes.dovecot_a.imap(USERS[0])
        told = [parse_appenduid(client.append("INBOX", body_bytes(USERS[0], n)))[1][0]
                for n in range(3)]
        nodes.repl_b.kill9()
        with pytest.raises(Exception, match="not yet replicated") as refused:
            client.append("INBOX", body_bytes(USERS[0], 99))
        assert "UNAVAILABLE" in str(refused.value)
        counters = nodes.repl_a.status()["counters"]
        assert counters["sync_failed"] >= 1
        client.logout()
        nodes.repl_b.start()
        nodes.quiesce()
        failover = Failover(nodes)
        failover.crash_a()
        failover.promote(USERS[0])
        bodies = failover.bodies_on_b(USERS[0])
        for n, uid in enumerate(told):
            assert bodies.get(uid) == sha256(body_bytes(USERS[0], n))


def test_no_peer_degrade_policy_answers_ok_warns_and_counts(tmp_path: Path) -> None:
    with two_nodes("maildir", USERS[:1], base=tmp_path / "nodes", sync_commit="degrade",
                   sync_timeout_ms=300) as nodes:
        nodes.repl_b.kill9()
        client = nodes.dovecot_a.imap(USERS[0])
        response = client.append("INBOX", body_bytes(USERS[0], 1))
        assert parse_appenduid(response)[1]
        client.logout()
        nodes.dovecot_a.wait_idle()
        assert nodes.repl_a.status()["counters"]["sync_degraded"] >= 1
        assert "replicator_sync" in nodes.dovecot_a.log_text()
        assert "Warning" in nodes.dovecot_a.log_text()


def test_sync_flush_names_the_directories_dovecot_changed(tmp_path: Path) -> None:
    """The daemon really waits for the peer: with the peer's daemon stopped mid-way the next
    commit cannot be confirmed, and once it is back the same commit path confirms again."""
    with two_nodes("maildir", USERS[:1], base=tmp_path / "nodes", sync_commit="fail",
                   sync_timeout_ms=400) as nodes:
        client = nodes.dovecot_a.imap(USERS[0])
        client.append("INBOX", body_bytes(USERS[0], 1))
        before = nodes.repl_a.status()["counters"]["sync_ok"]
        nodes.repl_b.kill9()
        with pytest.raises(Exception, match="not yet replicated"):
            client.append("INBOX", body_bytes(USERS[0], 2))
        nodes.repl_b.start()
        nodes.repl_a.barrier()
        client.append("INBOX", body_bytes(USERS[0], 3))
        status = nodes.repl_a.status()
        assert status["counters"]["sync_ok"] >= before + 1
        phases = status["sync_commit"]  # only confirmed flushes are timed
        assert phases["capture"]["p50_ms"] is not None
        assert phases["replicate"]["p50_ms"] > 0
        shown = subprocess.run([sys.executable, "-m", "replicator", "status", "--socket",
                                str(nodes.repl_a.control_socket)], capture_output=True,
                               text=True, timeout=60, check=True).stdout
        assert "sync commit (fail policy, quorum 1): capture p50" in shown
        client.logout()


def test_the_plugin_reconnects_after_the_daemon_closed_its_idle_connection(
        tmp_path: Path) -> None:
    """The daemon closes a control connection that stayed silent (a bound any local user's
    connections must have); the plugin notices before its next request and reconnects, so the
    same IMAP session's next commit is confirmed, not failed."""
    with two_nodes("maildir", USERS[:1], base=tmp_path / "nodes", sync_commit="fail",
                   replication={"control_idle_timeout": 1.0}) as nodes:
        client = nodes.dovecot_a.imap(USERS[0])
        client.append("INBOX", body_bytes(USERS[0], 1))
        assert nodes.repl_a.status()["control"]["connections"] == 1  # the plugin's, kept
        deadline = time.monotonic() + 60
        while nodes.repl_a.status()["control"]["connections"] > 0:  # the plugin's, closed
            assert time.monotonic() < deadline, "the idle connection was never closed"
            time.sleep(0.05)
        client.append("INBOX", body_bytes(USERS[0], 2))
        counters = nodes.repl_a.status()["counters"]
        assert counters["sync_ok"] >= 2 and counters["sync_failed"] == 0, counters
        client.logout()
