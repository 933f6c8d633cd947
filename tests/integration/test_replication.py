"""Core replication against real Dovecot 2.3 driven over IMAP, with two real daemons on loopback.

Node a runs Dovecot (bodies in the shared mail root, INDEX and CONTROL in a's own roots) and a
replicator; node b runs a replicator that keeps a's roots in its replica_dir. After the
workload and a BARRIER (every change on a's disk acknowledged by b), b's copy must equal a's
roots byte for byte.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.dovecot.filekinds import is_transient
from replicator.dovecot.instance import DovecotInstance
from replicator.testing.cluster import ReplicatorNode, pair, stop_all
from replicator.testing.imap import make_message
from replicator.testing.workload import Workload
from replicator.verify.trees import compare_trees

from .conftest import DovecotFactory

pytestmark = pytest.mark.integration
USERS = ("u1", "u2", "u3")


def roots_of(instance: DovecotInstance) -> dict[str, Path]:
    return {"index": instance.layout.index_root, "control": instance.layout.control_root}


@pytest.fixture
def nodes(tmp_path: Path, dovecot_factory: DovecotFactory) -> Iterator[
        tuple[DovecotInstance, ReplicatorNode, ReplicatorNode]]:
    dovecot = dovecot_factory("a", USERS, churn=True)
    b_roots = {name: tmp_path / "b-roots" / name for name in ("index", "control")}
    for path in b_roots.values():
        path.mkdir(parents=True)
    a, b = pair(tmp_path, roots_of(dovecot), b_roots)
    try:
        b.start()
        a.start()
        yield dovecot, a, b
    finally:
        stop_all([a, b])


def assert_replicated(dovecot: DovecotInstance, a: ReplicatorNode, b: ReplicatorNode) -> None:
    dovecot.wait_idle()
    a.barrier()
    for name, root in roots_of(dovecot).items():
        report = compare_trees(root, b.replica_of("a", name))
        assert report.consistent, report.differences[:10]
        assert report.files > 0
        cli = subprocess.run([sys.executable, "-m", "replicator", "verify", "--source",
                              str(root), "--replica", str(b.replica_of("a", name))],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stdout + cli.stderr


def assert_same_metadata(origin: Path, replica: Path) -> None:
    """Mode, owner and mtime of every shipped file are the origin's."""
    for path in origin.rglob("*"):
        if path.is_file() and not is_transient(path.name):
            copy = replica / path.relative_to(origin)
            a, b = path.stat(), copy.stat()
            assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == (
                b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns), path


def file_inodes(root: Path, name: str) -> dict[Path, int]:
    return {p.relative_to(root): p.stat().st_ino for p in root.rglob(name) if p.is_file()}


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_workload_replicates_byte_for_byte(nodes: tuple[DovecotInstance, ReplicatorNode,
                                                        ReplicatorNode]) -> None:
    dovecot, a, b = nodes
    workload = Workload(dovecot, USERS, ops=520, seed=3)
    index_root = dovecot.layout.index_root
    early: dict[str, dict[Path, int]] = {}
    scrubs = []
    for step in workload.steps():
        if step.index == 120:
            early = {n: file_inodes(index_root, n) for n in ("dovecot.index",
                                                              "dovecot.index.cache")}
        if step.index % 40 == 0:  # b's scrub, while a's batches keep landing
            scrubs.append(b.ask("REPAIR\t1\ta"))
    workload.close()
    # a scrub that reads files as the applier replaces them must not call them damaged
    assert scrubs and set(scrubs) == {"OK\t1\t0"}, scrubs
    report = workload.report
    assert sum(report.counts.values()) >= 500
    assert {"APPEND", "STORE", "EXPUNGE", "COPY", "MOVE", "CREATE", "RENAME", "DELETE",
            "SUBSCRIBE"} <= set(report.counts)
    assert_replicated(dovecot, a, b)
    link = a.status()["peers"]["b"]  # by default batches travel compressed (wire.packed)
    assert link["link_compression"] is True
    assert 0 < link["bytes_sent"] < link["bytes_framed"] / 2, link

    for name, root in roots_of(dovecot).items():
        assert_same_metadata(root, b.replica_of("a", name))

    # the workload really rotated logs and rewrote indexes and caches, and b has the results
    assert list(index_root.rglob("dovecot.index.log.2")), "no log was rotated"
    for name, inodes in early.items():
        later = file_inodes(index_root, name)
        assert any(later.get(p) not in (None, ino) for p, ino in inodes.items()), \
            f"no {name} was rewritten"

    # the receiver wrote nothing outside replica_dir/<origin>/<root>
    assert sorted(p.name for p in b.replica_dir.iterdir()) == [".staging", "a"]
    assert not any(b.replica_dir.joinpath(".staging").iterdir())
    assert sorted(p.name for p in (b.replica_dir / "a").iterdir()) == [
        ".applied.json", ".digests", ".undo", "control", "index"]  # .undo: caches patched
    for root in b.roots.values():
        assert not any(root.iterdir()), f"b's own root {root} was written"


@pytest.mark.parametrize("mail_format", ["maildir"])
def test_receiver_killed_mid_workload_converges_without_full_resync(
        nodes: tuple[DovecotInstance, ReplicatorNode, ReplicatorNode]) -> None:
    dovecot, a, b = nodes
    workload = Workload(dovecot, USERS, ops=300, seed=11)
    before: dict[str, int] = {}
    for step in workload.steps():
        if step.index == 100:
            a.barrier()
            before = {"resyncs": a.status()["peers"]["b"]["manifest_resyncs"],
                      "resync_batches": a.status()["counters"]["resync_batches"]}
            b.kill9()
        if step.index == 160:
            b.start()
    workload.close()
    assert_replicated(dovecot, a, b)
    peer = a.status()["peers"]["b"]
    counters = a.status()["counters"]
    assert a.running(), "the sender must keep running"
    assert peer["connects"] >= 2
    assert peer["manifest_resyncs"] == before["resyncs"], \
        "a short outage must resume from the retained window, not a manifest resync"
    # at most the batch that was being applied when b died is resent whole
    assert counters["resync_batches"] - before["resync_batches"] <= 1, counters


@pytest.mark.parametrize("mail_format", ["maildir", "mdbox"])
def test_message_bodies_never_cross_the_wire(
        nodes: tuple[DovecotInstance, ReplicatorNode, ReplicatorNode]) -> None:
    dovecot, a, b = nodes
    rng = random.Random(7)
    bodies = [make_message(rng, i, 200_000) for i in range(40)]
    client = dovecot.imap("u1")
    for body in bodies:
        client.append("INBOX", body)
    client.select_folder("INBOX")
    client.fetch(client.search("ALL"), ["BODY.PEEK[]", "FLAGS"])  # Dovecot caches what it will
    client.logout()
    dovecot.wait_idle()
    a.barrier()
    sent = a.status()["peers"]["b"]["bytes_sent"]
    written = sum(len(body) for body in bodies)
    assert sent < written / 20, (sent, written)
    replica = b"".join(p.read_bytes() for p in b.replica_dir.rglob("*") if p.is_file())
    for body in bodies:
        middle = body[len(body) // 2 : len(body) // 2 + 64]
        assert middle not in replica


def test_no_transient_file_is_replicated(
        nodes: tuple[DovecotInstance, ReplicatorNode, ReplicatorNode]) -> None:
    dovecot, a, b = nodes
    Workload(dovecot, USERS, ops=80, seed=5).run()
    dovecot.wait_idle()
    a.barrier()
    replicated = [p.name for p in b.replica_dir.rglob("*") if p.is_file()]
    assert replicated and not [n for n in replicated if is_transient(n)]


@pytest.mark.parametrize("mail_format", ["maildir"])
@pytest.mark.parametrize("off", ["a", "b"])
def test_link_compression_needs_both_ends(tmp_path: Path, dovecot_factory: DovecotFactory,
                                          off: str) -> None:
    """Either end saying link_compression = "off" keeps the link plain; nothing else changes."""
    dovecot = dovecot_factory("a", USERS)
    b_roots = {name: tmp_path / "b-roots" / name for name in ("index", "control")}
    for path in b_roots.values():
        path.mkdir(parents=True)
    a, b = pair(tmp_path, roots_of(dovecot), b_roots)
    {"a": a, "b": b}[off].replication = {"link_compression": "off"}
    try:
        b.start()
        a.start()
        workload = Workload(dovecot, USERS, ops=60, seed=5)
        for _ in workload.steps():
            pass
        workload.close()
        assert_replicated(dovecot, a, b)
        link = a.status()["peers"]["b"]
        assert link["link_compression"] is False
        assert link["bytes_sent"] == link["bytes_framed"] > 0
    finally:
        stop_all([a, b])
