"""The shared harness against real Dovecot: instances, the doveadm oracle, the seeded workload."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

from replicator.dovecot import doveadm
from replicator.dovecot.doveadm_update import update_min_next_uid
from replicator.dovecot.instance import DovecotInstance
from replicator.dovecot.procs import session_pids
from replicator.dovecot.snapshot import snapshot
from replicator.testing.workload import Workload, run_workload
from tests.integration.conftest import DovecotFactory

pytestmark = pytest.mark.integration

USERS = ("u1", "u2", "u3")


def test_workload_state_matches_doveadm(dovecot_factory: DovecotFactory) -> None:
    node = dovecot_factory("a")
    report = run_workload(node, USERS, ops=150, seed=11)
    assert report.counts["APPEND"] > 0 and report.counts["COPY"] + report.counts["MOVE"] > 0
    for user in USERS:
        status = doveadm.mailbox_status(node.config_path, user)
        assert {b: s.messages for b, s in status.items()} == report.expected_counts(user)
        assert {b: s.uidvalidity for b, s in status.items() if b in report.uidvalidity[user]} \
            == report.uidvalidity[user]
        flags = doveadm.fetch_all_flags(node.config_path, user)
        assert flags == {b: f for b, f in report.expected_flags(user).items() if f}
    told = [t for t in report.told if t.user == "u1" and t.mailbox == "INBOX"]
    hashes = doveadm.fetch_body_hashes(node.config_path, "u1", "INBOX")
    alive = report.expected["u1"]["INBOX"]
    assert all(hashes[t.uid] == t.sha256 for t in told if t.uid in alive)
    assert node.error_lines() == []


def test_kill9_leaves_no_process(dovecot_factory: DovecotFactory) -> None:
    node = dovecot_factory("a")
    client = node.imap("u1")
    client.select_folder("INBOX")  # an imap process with open index files
    master = node.pids()
    assert len(master) >= 4  # master, log, config, anvil, auth, imap-login, imap...
    node.kill9()
    assert node.pids() == [] and not node.running
    assert all(session_pids(pid) == [] for pid in master)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", node.imap_port), 1):
        pass


def test_only_loopback_imap_listens(dovecot_factory: DovecotFactory) -> None:
    node = dovecot_factory("a")
    inodes = _open_sockets(node.pids())
    listening = _listening_tcp()
    ours = {addr for addr, inode in listening if f"socket:[{inode}]" in inodes}
    assert ours == {("127.0.0.1", node.imap_port)}


def _open_sockets(pids: list[int]) -> set[str]:
    out = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):  # a login process may exit meanwhile
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def _listening_tcp() -> list[tuple[tuple[str, int], str]]:
    """(address, socket inode) of every listening TCP socket (IPv4 and IPv6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                ip_hex, port_hex = f[1].split(":")
                ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0)) \
                    if len(ip_hex) == 8 else ip_hex
                out.append(((ip, int(port_hex, 16)), f[9]))
    return out


def test_two_instances_side_by_side(dovecot_factory: DovecotFactory) -> None:
    a = dovecot_factory("a", users=("u1",))
    b = dovecot_factory("b", users=("v1",))
    assert a.base_dir != b.base_dir and a.imap_port != b.imap_port
    a.imap("u1").append("INBOX", b"Subject: a\r\n\r\nx\r\n")
    assert doveadm.mailbox_status(a.config_path, "u1")["INBOX"].messages == 1
    assert doveadm.mailbox_status(b.config_path, "v1", ("INBOX",))["INBOX"].messages == 0
    with pytest.raises(doveadm.DoveadmError, match="User doesn't exist"):
        b.doveadm("mailbox", "status", "-u", "u1", "messages", "INBOX")
    a.stop()
    assert b.running and b.imap("v1").noop()


def _inbox_index_dir(node: DovecotInstance, user: str) -> Path:
    sub = ".INBOX" if node.layout.mail_format == "maildir" else "mailboxes/INBOX"
    return node.layout.index_root / user / sub


@pytest.mark.parametrize("churn", [False, True])
def test_churn_rotates_log_and_rewrites_index_and_cache(
        dovecot_factory: DovecotFactory, churn: bool) -> None:
    node = dovecot_factory("a", users=("u1",), churn=churn)
    inbox = _inbox_index_dir(node, "u1")
    names = ("dovecot.index", "dovecot.index.cache", "dovecot.index.log")
    seen: dict[str, set[int]] = {n: set() for n in names}
    weights = {"APPEND": 10, "STORE": 10, "FETCH": 6, "EXPUNGE": 4}
    for _ in Workload(node, ["u1"], 120, seed=3, weights=weights).steps():
        for n in names:
            if (inbox / n).exists():
                seen[n].add((inbox / n).stat().st_ino)
    replaced = {n: len(inodes) > 1 for n, inodes in seen.items()}
    # 2.4 also rewrites the cache through a temporary file with the default settings, 2.3
    # does not: the churn settings are what this test is about
    assert {n: replaced[n] for n in names if not n.endswith(".cache")} == {
        n: churn for n in names if not n.endswith(".cache")}
    assert replaced["dovecot.index.cache"] or not churn
    assert (inbox / "dovecot.index.log.2").exists() == churn
    assert node.error_lines() == []


def test_workload_is_deterministic(dovecot_factory: DovecotFactory, tmp_path: Path) -> None:
    def fresh(name: str) -> DovecotInstance:  # own bodies too: maildir would share messages
        layout = dovecot_factory.layout(name)
        return dovecot_factory(name, layout=type(layout)(
            tmp_path / f"{name}-mail", layout.index_root, layout.control_root,
            layout.mail_format))

    first = run_workload(fresh("a"), USERS, ops=60, seed=5)
    second = run_workload(fresh("b"), USERS, ops=60, seed=5)
    other = run_workload(fresh("c"), USERS, ops=60, seed=6)
    assert first.ops == second.ops and first.counts == second.counts
    assert all(first.expected_flags(u) == second.expected_flags(u) for u in USERS)
    assert first.ops != other.ops


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_doveadm_oracle_names_and_min_next_uid(dovecot_factory: DovecotFactory) -> None:
    node = dovecot_factory("a", users=("u1",))
    client = node.imap("u1")
    names = ["With Space", "Émigré/naïve", "Never Opened"]
    for name in names:
        client.create_folder(name)
    client.append("With Space", b"Subject: s\r\n\r\nbody\r\n", flags=["\\Seen", "kw"])
    client.subscribe_folder("Émigré/naïve")
    assert set(names) <= set(doveadm.list_mailboxes(node.config_path, "u1"))
    assert doveadm.fetch_flags(node.config_path, "u1", "With Space") == \
        {1: frozenset({"\\Seen", "kw"})}
    assert doveadm.fetch_flags(node.config_path, "u1", "Never Opened") == {}
    before = snapshot(node.config_path, ["u1"])
    update_min_next_uid(node.config_path, "u1", names, 5000)
    status = doveadm.mailbox_status(node.config_path, "u1")
    assert [status[n].uidnext for n in names] == [5000] * 3
    after = snapshot(node.config_path, ["u1"])
    assert before != after and before.users["u1"].subscriptions == {"Émigré/naïve"}
    assert any("uidnext=5000" in d for d in after.differences(before))
    assert node.error_lines() == []
    with pytest.raises(doveadm.DoveadmError, match="doesn't exist"):
        doveadm.fetch_flags(node.config_path, "u1", "Missing")
