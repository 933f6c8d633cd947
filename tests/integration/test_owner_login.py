"""A client that reaches the wrong node is not served at all: after a switchover of u1 from a
to b, a login to u1 on a's Dovecot fails when the user is created (the sync plugin asks its
daemon OWNER, real etcd behind it), before a's Dovecot opens anything: mdbox would rebuild the
shared storage's index, maildir would rename shared message files. On b the login works and the
message appended on a before the switchover is there. The control at the end: with the check
off, a's Dovecot does write u1's index again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicator.dovecot.instance import DovecotInstance
from replicator.dovecot.instance_conf import plugin_setting_override
from replicator.testing.etcd import EtcdCluster
from replicator.testing.failover import body_bytes
from replicator.testing.imap import parse_appenduid
from replicator.testing.scenario import two_nodes
from tests.integration.daemon_support import coordination, wait_serving

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]




def wait_gone(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} is still there"
        time.sleep(0.05)


def raw_login(inst: DovecotInstance, user: str) -> bytes:
    """LOGIN on a plain socket; what the server sent until its BYE, or until it closed."""
    with socket.create_connection(("127.0.0.1", inst.imap_port), timeout=10) as sock:
        sock.recv(4096)  # the greeting
        sock.sendall(f"a LOGIN {user} {inst.password(user)}\r\n".encode())
        received = b""
        while b"* BYE " not in received and (data := sock.recv(4096)):
            received += data
        return received


def files(top: Path) -> dict[str, tuple[int, int]]:
    """Every file below top with its size and mtime (nothing when top does not exist)."""
    return {str(p.relative_to(top)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in top.rglob("*") if p.is_file()}


def log_line(inst: DovecotInstance, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not (lines := [ln for ln in inst.log_text().splitlines() if needle in ln]):
        assert time.monotonic() < deadline, inst.log_text()[-3000:]
        time.sleep(0.05)
    return lines[0]


def test_login_on_the_old_owner_is_refused_after_a_switchover(
        tmp_path: Path, etcd: EtcdCluster) -> None:
    with two_nodes("mdbox", ("u1",), base=tmp_path / "n", sync_commit="fail",
                   coordination=coordination(etcd.endpoints)) as nodes:
        client = nodes.dovecot_a.imap("u1")
        _, uids = parse_appenduid(client.append("INBOX", body_bytes("u1", 1)))
        client.logout()
        wait_serving(nodes.repl_a, "u1")
        switchover = subprocess.run(
            [sys.executable, "-m", "replicator", "switchover",
             "--config", str(nodes.repl_a.config_path), "--to", "b"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert switchover.returncode == 0, switchover.stdout + switchover.stderr
        wait_serving(nodes.repl_b, "u1")

        a_index = nodes.dovecot_a.layout.index_root / "u1"
        wait_gone(a_index)  # a set its copy aside when it gave u1 up
        shared = files(nodes.dovecot_a.layout.mail_root / "u1")
        assert shared  # the mdbox storage both nodes see
        assert raw_login(nodes.dovecot_a, "u1") == (
            b"a OK Logged in, but initialization failed.\r\n"
            b"* BYE Internal error occurred. Refer to server log for more information.\r\n")
        line = log_line(nodes.dovecot_a, "replicator_sync: User u1 refused")
        assert "Error: " in line and "another node serves it" in line
        assert "u1 is served by b (token " in line and "not by a" in line
        assert not a_index.exists()  # nothing of u1 reappeared on a
        assert not (nodes.dovecot_a.layout.control_root / "u1").exists()
        assert files(nodes.dovecot_a.layout.mail_root / "u1") == shared

        client = nodes.dovecot_b.imap("u1")
        client.select_folder("INBOX")
        fetched = client.fetch(uids, ["BODY.PEEK[]"])
        assert [msg[b"BODY[]"] for msg in fetched.values()] == [body_bytes("u1", 1)]
        client.logout()

        # the control: an admin's doveadm with the check off does open u1 on a, and writes
        nodes.dovecot_a.doveadm("-o", plugin_setting_override("replicator_sync_owner_check", "no"),
                                "mailbox", "status", "-u", "u1", "messages", "INBOX")
        assert a_index.exists()
