"""Failover: node a dies (kill -9 of Dovecot and daemon), node b promotes its RAM copy and its
own Dovecot serves a's users with the same UIDs, flags, keywords and UIDVALIDITY, reading the
bodies from the shared mail directory."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.dovecot.doveadm import MailboxStatus, fetch_body_hashes, mailbox_status
from replicator.dovecot.snapshot import MailboxState, StateSnapshot, UserState, snapshot
from replicator.testing.imap import parse_appenduid
from replicator.testing.scenario import TwoNodes, two_nodes
from replicator.testing.workload import Workload

pytestmark = pytest.mark.integration
GAP = 1000


def cli(nodes: TwoNodes, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replicator", *args, "--config",
                           str(nodes.repl_b.config_path), "--origin", "a"],
                          capture_output=True, text=True, timeout=300)


def kill_node_a(nodes: TwoNodes) -> None:
    nodes.dovecot_a.kill9()
    nodes.repl_a.kill9()


def raised(before: StateSnapshot, gap: int) -> StateSnapshot:
    """What b must show after a promote with `gap`: a's state, every UIDNEXT `gap` higher."""
    return StateSnapshot({user: UserState({name: MailboxState(MailboxStatus(
        m.status.messages, m.status.uidnext + gap, m.status.uidvalidity, m.status.highestmodseq),
        m.flags) for name, m in state.mailboxes.items()}, state.subscriptions)
        for user, state in before.users.items()})


@pytest.fixture
def nodes(tmp_path: Path, mail_format: str) -> Iterator[TwoNodes]:
    with two_nodes(mail_format, base=tmp_path / "nodes") as made:  # type: ignore[arg-type]
        yield made


@pytest.mark.parametrize("gap", [GAP, 0])
def test_promote_after_quiescence_keeps_every_uid(nodes: TwoNodes, gap: int) -> None:
    Workload(nodes.dovecot_a, nodes.users, ops=300, seed=21).run()
    nodes.quiesce()
    before = snapshot(nodes.dovecot_a.config_path, nodes.users)
    kill_node_a(nodes)
    promoted = cli(nodes, "promote", "--uid-gap", str(gap))
    assert promoted.returncode == 0, promoted.stderr
    assert "fenced a at epoch 2" in promoted.stdout
    nodes.dovecot_b.start()
    after = snapshot(nodes.dovecot_b.config_path, nodes.users)
    assert after == raised(before, gap), "\n".join(raised(before, gap).differences(after)[:20])
    assert not nodes.dovecot_b.error_lines()
    for user in nodes.users:
        client = nodes.dovecot_b.imap(user)
        for name, box in before.users[user].mailboxes.items():
            info = client.select_folder(name)
            assert int(info[b"UIDVALIDITY"]) == box.status.uidvalidity
            assert sorted(client.search("ALL")) == sorted(box.flags)  # imapclient: UID SEARCH
        appended = client.append("INBOX", b"Subject: after failover\r\n\r\nnew\r\n")
        validity, uids = parse_appenduid(appended)
        inbox = before.users[user].mailboxes["INBOX"].status
        assert validity == inbox.uidvalidity
        assert uids[0] >= inbox.uidnext + gap
        client.logout()


def test_promote_is_idempotent_and_refuses_a_live_origin(nodes: TwoNodes) -> None:
    Workload(nodes.dovecot_a, nodes.users, ops=60, seed=4).run()
    nodes.quiesce()
    alive = cli(nodes, "promote")
    assert alive.returncode == 3
    assert "refusing to promote a: node a" in alive.stderr and "answers at" in alive.stderr
    assert not any((nodes.dovecot_b.layout.index_root).iterdir()), "nothing may be touched"
    kill_node_a(nodes)
    first = cli(nodes, "promote")
    assert first.returncode == 0, first.stderr
    users_dir = nodes.dovecot_b.layout.index_root / nodes.users[0]
    stamp = sorted((p, p.stat().st_mtime_ns) for p in users_dir.rglob("*"))
    again = cli(nodes, "promote")
    assert again.returncode == 0 and "already promoted" in again.stdout
    assert sorted((p, p.stat().st_mtime_ns) for p in users_dir.rglob("*")) == stamp


@pytest.mark.parametrize("mail_format", ["maildir"])
def test_users_promoted_in_steps_all_get_the_gap(nodes: TwoNodes) -> None:
    """An operator moving users over a few at a time: each step promotes the users not yet
    done, each with the UID gap, and leaves the earlier ones alone."""
    Workload(nodes.dovecot_a, nodes.users, ops=120, seed=12).run()
    nodes.quiesce()
    before = snapshot(nodes.dovecot_a.config_path, nodes.users)
    kill_node_a(nodes)
    first_user, *others = nodes.users
    first = cli(nodes, "promote", "--uid-gap", str(GAP), "--users", first_user, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["users"] == [first_user]
    done = nodes.dovecot_b.layout.index_root / first_user
    stamp = sorted((p, p.stat().st_mtime_ns) for p in done.rglob("*"))
    rest = cli(nodes, "promote", "--uid-gap", str(GAP), "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["users"] == others
    assert sorted((p, p.stat().st_mtime_ns) for p in done.rglob("*")) == stamp
    again = cli(nodes, "promote", "--users", others[0])
    assert again.returncode == 0 and "already promoted" in again.stdout
    aside = []
    for _ in range(2):  # --force promotes again, moving the current copy aside each time
        forced = cli(nodes, "promote", "--force", "--users", first_user, "--json")
        assert forced.returncode == 0, forced.stderr
        aside += json.loads(forced.stdout)["moved_aside"]
    assert len(set(aside)) == len(aside) == 2 * len(nodes.repl_b.roots)
    nodes.dovecot_b.start()
    after = snapshot(nodes.dovecot_b.config_path, nodes.users)
    assert after == raised(before, GAP), "\n".join(raised(before, GAP).differences(after)[:20])


@pytest.mark.parametrize("mail_format", ["maildir"])
def test_old_epoch_is_refused_after_promote(nodes: TwoNodes) -> None:
    Workload(nodes.dovecot_a, nodes.users, ops=60, seed=8).run()
    nodes.quiesce()
    kill_node_a(nodes)
    assert cli(nodes, "promote").returncode == 0
    replica = nodes.repl_b.replica_dir / "a"
    before = {p: p.read_bytes() for p in replica.rglob("*") if p.is_file()}
    promoted = {p: p.read_bytes() for p in nodes.dovecot_b.layout.index_root.rglob("*")
                if p.is_file()}
    nodes.dovecot_a.start()  # a comes back with its old epoch and writes more
    nodes.repl_a.start()
    Workload(nodes.dovecot_a, nodes.users, ops=20, seed=9).run()
    from tests.integration.test_links import poll

    poll(lambda: "fenced" in nodes.repl_a.status()["peers"]["b"]["last_error"],
         "a's link to be refused as fenced")
    assert "fenced" in nodes.repl_b.log_text()
    assert {p: p.read_bytes() for p in replica.rglob("*") if p.is_file()} == before
    assert {p: p.read_bytes() for p in nodes.dovecot_b.layout.index_root.rglob("*")
            if p.is_file()} == promoted


@pytest.mark.parametrize("mail_format", ["mdbox"])
def test_damaged_replica_is_named_refused_and_repaired(nodes: TwoNodes) -> None:
    Workload(nodes.dovecot_a, nodes.users, ops=120, seed=6).run()
    nodes.quiesce()
    logs = sorted((nodes.repl_b.replica_dir / "a" / "index").rglob("dovecot.index.log"))
    victim = logs[len(logs) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    name = victim.relative_to(nodes.repl_b.replica_dir / "a").as_posix()

    online = cli(nodes, "verify", "--json")
    assert online.returncode == 1
    report = json.loads(online.stdout)
    assert report["consistent"] is False and report["mode"] == "online"
    assert {d["file"] for d in report["differences"]} == {name}  # one row per field that differs
    assert cli(nodes, "verify", "--local").returncode == 1

    refused = cli(nodes, "promote", "--force")
    assert refused.returncode == 3 and "fails verification" in refused.stderr
    assert name in refused.stderr

    repaired = cli(nodes, "verify", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout
    assert json.loads(repaired.stdout)["differences"] == []
    assert cli(nodes, "verify", "--local").returncode == 0


@pytest.mark.parametrize("mail_format", ["maildir"])
def test_directory_replaced_by_a_file_in_the_replica_is_put_back(nodes: TwoNodes) -> None:
    """A file where a mailbox directory belongs (a cut-short write, a stray tool) must not
    make the replica refuse that mailbox's batches for ever: repair puts the directory back
    and later changes apply again."""
    Workload(nodes.dovecot_a, nodes.users, ops=60, seed=4).run()
    nodes.quiesce()
    inboxes = sorted((nodes.repl_b.replica_dir / "a" / "index").glob("*/.INBOX"))
    victim = inboxes[0]
    shutil.rmtree(victim)
    victim.write_bytes(b"not a directory")

    assert cli(nodes, "verify", "--local").returncode == 1
    repaired = cli(nodes, "verify", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout
    assert victim.is_dir()
    Workload(nodes.dovecot_a, nodes.users, ops=60, seed=5).run()
    nodes.quiesce()
    final = cli(nodes, "verify", "--json")
    assert final.returncode == 0, final.stdout


@pytest.mark.parametrize("mail_format", ["maildir"])
def test_verify_json_is_what_the_readme_documents(nodes: TwoNodes) -> None:
    Workload(nodes.dovecot_a, nodes.users, ops=60, seed=2).run()
    nodes.quiesce()
    out = cli(nodes, "verify", "--json", "--doveadm",
              f"maildir:{nodes.dovecot_a.layout.mail_root}/%u/Maildir")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"consistent", "exit_code", "mode", "origin", "source", "replica",
                           "files", "bytes_read", "seconds", "differences", "warnings",
                           "errors", "mailboxes"}
    assert report["consistent"] is True and report["exit_code"] == 0
    assert report["files"] > 0 and report["bytes_read"] > 0
    statuses = {(m["user"], m["mailbox"]): m for m in report["mailboxes"]}
    truth = mailbox_status(nodes.dovecot_a.config_path, nodes.users[0])
    for name, st in truth.items():
        got = statuses[(nodes.users[0], name)]
        assert (got["messages"], got["uidnext"], got["uidvalidity"]) == (
            st.messages, st.uidnext, st.uidvalidity)


# -- promote in the middle of a running workload ------------------------------------------------
INSTANTS = [("maildir", 1), ("maildir", 2), ("maildir", 3), ("maildir", 4), ("maildir", 5),
            ("maildir", 6), ("maildir", 7), ("mdbox", 1), ("mdbox", 2), ("mdbox", 3),
            ("mdbox", 4), ("mdbox", 5), ("mdbox", 6), ("mdbox", 7), ("sdbox", 1), ("sdbox", 2),
            ("sdbox", 3), ("sdbox", 4), ("sdbox", 5), ("sdbox", 6)]


@pytest.mark.parametrize(("mail_format", "run"), INSTANTS)
def test_promote_at_a_random_instant(nodes: TwoNodes, run: int) -> None:
    """No quiescence: kill a at a random step, promote, and check that b's Dovecot opens
    every mailbox cleanly, no UIDVALIDITY changed, no UID names two different bodies, and a
    new message never gets a UID any client was told for another one."""
    instant = random.Random(run * 7919).randrange(20, 160)
    workload = Workload(nodes.dovecot_a, nodes.users, ops=200, seed=100 + run)
    for step in workload.steps():
        if step.index == instant:
            kill_node_a(nodes)
            break
    workload.close()
    promoted = cli(nodes, "promote")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    nodes.dovecot_b.start()
    told = {(t.user, t.uidvalidity, t.uid): t.sha256 for t in workload.report.told}
    validities = {(t.user, t.uidvalidity) for t in workload.report.told}
    validities |= {(u, v) for u, boxes in workload.report.uidvalidity.items()
                   for v in boxes.values()}
    conf = nodes.dovecot_b.config_path
    for user in nodes.users:
        client = nodes.dovecot_b.imap(user)
        for name, status in mailbox_status(conf, user).items():
            if any(key[:2] == (user, status.uidvalidity) for key in told):
                assert (user, status.uidvalidity) in validities
            for uid, digest in fetch_body_hashes(conf, user, name).items():
                expected = told.get((user, status.uidvalidity, uid))
                assert expected in (None, digest), f"{user}/{name} UID {uid} has another body"
            validity, uids = parse_appenduid(client.append(name, b"Subject: b\r\n\r\nnew\r\n"))
            highest = max((k[2] for k in told if k[:2] == (user, validity)), default=0)
            assert uids[0] > highest, f"{user}/{name}: new UID {uids[0]} was already told"
        client.logout()
    assert not nodes.dovecot_b.error_lines(), nodes.dovecot_b.error_lines()[:5]
