"""Links between real daemon processes on loopback: unreachable and unknown peers, mutual TLS,
and the status command when no daemon runs. No Dovecot needed: the roots are plain
directories written by the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.dovecot.instance import free_port
from replicator.testing.certs import TestCA
from replicator.testing.cluster import PeerSpec, ReplicatorNode, pair
from replicator.verify.trees import compare_trees
from tests.integration.daemon_support import poll, roots

pytestmark = pytest.mark.integration


def test_unreachable_peer_is_reported_clearly(tmp_path: Path,
                                              nodes: list[ReplicatorNode]) -> None:
    a = ReplicatorNode(tmp_path / "a", "a", roots(tmp_path / "a-roots"),
                       peers=[PeerSpec("b", free_port())])
    nodes.append(a)
    a.start()
    poll(lambda: bool(a.status()["peers"]["b"]["last_error"]), "a link error")
    peer = a.status()["peers"]["b"]
    assert peer["state"] == "disconnected"
    assert "connection refused" in peer["last_error"]
    log = a.log_text()
    assert "link to b at 127.0.0.1" in log and "Traceback" not in log
    assert log.count("connection refused") == 1, "a repeated failure is logged once"


def test_unknown_peer_is_refused_with_the_reason(tmp_path: Path,
                                                 nodes: list[ReplicatorNode]) -> None:
    b = ReplicatorNode(tmp_path / "b", "b", roots(tmp_path / "b-roots"))
    a = ReplicatorNode(tmp_path / "a", "a", roots(tmp_path / "a-roots"),
                       peers=[PeerSpec("b", b.port)])
    nodes += [a, b]
    b.start()
    a.start()
    poll(lambda: "not a configured peer" in a.status()["peers"]["b"]["last_error"],
         "the refusal")
    assert "refusing replication connection" in b.log_text()
    assert "Traceback" not in a.log_text() + b.log_text()


def make_pki(base: Path, names: list[str], ca_name: str = "ca",
             **ca_options: Any) -> dict[str, dict[str, Path]]:
    """A CA and one certificate per node (replicator.testing.certs: real openssl)."""
    ca = TestCA(base, ca_name, **ca_options)
    return {name: ca.issue(name) for name in names}


def holds(replica: Path, log: bytes, index: bytes) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return ((replica / "dovecot.index.log").read_bytes() == log
                    and (replica / "dovecot.index").read_bytes() == index)
        except FileNotFoundError:
            return False
    return check


@pytest.mark.parametrize("watcher", ["inotify", "watchdog"])
def test_both_watchers_see_appends_renames_and_new_directories(
        tmp_path: Path, nodes: list[ReplicatorNode], watcher: str) -> None:
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"),
                replication={"watcher": watcher, "rescan_interval": 3600})
    nodes += [a, b]
    b.start()
    a.start()
    index = a.roots["index"]
    (index / "u1" / "box").mkdir(parents=True)
    log = index / "u1" / "box" / "dovecot.index.log"
    log.write_bytes(b"header")
    expected = b"header"
    for round_ in range(20):
        with open(log, "ab") as f:
            f.write(b"record %d" % round_)
        expected += b"record %d" % round_
        (index / "u1" / "box" / "dovecot.index.tmp").write_bytes(b"index %d" % round_)
        (index / "u1" / "box" / "dovecot.index.tmp").rename(index / "u1" / "box" /
                                                            "dovecot.index")
        poll(holds(b.replica_of("a", "index") / "u1" / "box", expected, b"index %d" % round_),
             f"round {round_} on the replica (no rescan: only events)")
    (index / "u1" / "box").rename(index / "u1" / "renamed")
    poll(lambda: (b.replica_of("a", "index") / "u1" / "renamed" / "dovecot.index").exists()
         and not (b.replica_of("a", "index") / "u1" / "box").exists(), "the renamed mailbox")
    assert compare_trees(index, b.replica_of("a", "index")).consistent


def test_mutual_tls_replicates(tmp_path: Path, nodes: list[ReplicatorNode]) -> None:
    pki = make_pki(tmp_path / "pki", ["a", "b"])
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"))
    a.tls, b.tls = pki["a"], pki["b"]
    nodes += [a, b]
    b.start()
    a.start()
    (a.roots["index"] / "u1").mkdir()
    (a.roots["index"] / "u1" / "dovecot.index.log").write_bytes(b"record" * 100)
    a.barrier()
    assert compare_trees(a.roots["index"], b.replica_of("a", "index")).consistent
    assert a.status()["peers"]["b"]["transport"]["tls"] is True


def test_peer_with_a_foreign_ca_is_refused(tmp_path: Path, nodes: list[ReplicatorNode]) -> None:
    good = make_pki(tmp_path / "pki", ["b"])
    rogue = make_pki(tmp_path / "rogue", ["a"], ca_name="rogue-ca")
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"))
    a.tls, b.tls = rogue["a"], good["b"]
    nodes += [a, b]
    b.start()
    a.start()
    poll(lambda: "TLS failed" in a.status()["peers"]["b"]["last_error"], "a TLS refusal")
    assert not (b.replica_dir / "a").exists()


def test_a_ca_without_key_usage_is_refused_with_the_verifiers_reason(
        tmp_path: Path, nodes: list[ReplicatorNode]) -> None:
    """Strict RFC 5280 checks on every Python (3.13 has them by default, 3.11 gets them from
    us): a CA made with openssl's defaults (no keyUsage) is refused, and the log says why."""
    pki = make_pki(tmp_path / "pki", ["a", "b"], extensions=())
    a, b = pair(tmp_path, roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots"))
    a.tls, b.tls = pki["a"], pki["b"]
    nodes += [a, b]
    b.start()
    a.start()
    poll(lambda: "key usage" in a.status()["peers"]["b"]["last_error"], "a strict refusal")
    assert "CERTIFICATE_VERIFY_FAILED (CA cert does not include key usage extension)" in \
        a.status()["peers"]["b"]["last_error"]
    assert not (b.replica_dir / "a").exists()


def test_status_without_a_daemon_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "replicator", "status", "--socket",
                           str(tmp_path / "none.sock")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "cannot reach the daemon" in proc.stderr and "Traceback" not in proc.stderr


def test_control_socket_serves_mail_users_flush_and_status_but_not_admin_verbs(
        tmp_path: Path, nodes: list[ReplicatorNode]) -> None:
    """The socket is world-writable so Dovecot's mail processes reach it; a user who is not
    root may ask STATUS and FLUSH, never REPAIR, FENCE or BARRIER."""
    reachable = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))  # pytest's tmp is 0700
    reachable.chmod(0o755)
    a = ReplicatorNode(reachable / "a", "a", roots(tmp_path / "a-roots"), peers=[])
    nodes.append(a)
    a.start()
    script = (
        "import asyncio, json, os, sys\n"
        "from replicator.control.server import request\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "for line in sys.argv[2:]:\n"
        "    print(json.dumps(asyncio.run(request(sys.argv[1], line)).split(chr(9))[:3]))\n")
    lines = ["STATUS\t1", "REPAIR\t2\tb", "FENCE\t3\tb", "BARRIER\t4\t1000",
             f"FLUSH\t5\t1000\tfail\tu1\t{tmp_path / 'a-roots' / 'index'}"]
    proc = subprocess.run([sys.executable, "-c", script, str(a.control_socket), *lines],
                          capture_output=True, text=True, timeout=60, cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert replies[0][:2] == ["STATUS", "1"]
    for reply, verb in zip(replies[1:4], ("REPAIR", "FENCE", "BARRIER"), strict=True):
        assert reply[0] == "FAIL" and f"{verb} is for root" in reply[2]
    assert replies[4][:2] == ["OK", "5"]  # no peers: nothing to wait for
    assert a.ask("REPAIR\t6\tb").startswith("FAIL\t6\tno replica of 'b'")  # root may
    a.stop()
    shutil.rmtree(reachable)
