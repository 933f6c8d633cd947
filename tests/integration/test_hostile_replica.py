"""The receiving side under a bad day and a hostile peer, end to end with real daemons.

* a full replica tmpfs (a real 300 KiB tmpfs): nothing is acknowledged that b does not hold,
  `verify --local` never calls a half-applied copy consistent, and a `fail` FLUSH gets FAIL;
* the receiver killed (SIGKILL) inside a batch: the copy verifies and can be promoted; killed
  in the middle of an in-place patch: the file is put back on restart;
* a mail user (a real unprivileged uid) swapping its directory in the replica for a symlink:
  nothing outside replica_dir is ever touched, and the copy is repaired;
* batches whose working set is far beyond the configured bounds: refused, the daemon lives.

These tests mount filesystems and switch uids: they need root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.control import protocol
from replicator.delta.codec import compress
from replicator.delta.ops import Codec, Op, OpCode, Result, encode_ops
from replicator.dovecot.instance import free_port
from replicator.hashing import digest
from replicator.testing.cluster import TEST_PSK, PeerSpec, ReplicatorNode, pair
from replicator.testing.tmpfs import small_tmpfs as mounted_tmpfs
from replicator.verify.trees import compare_trees
from replicator.wire.auth import ClientAuth
from replicator.wire.messages import Ack, Auth, Batch, Hello, Message, Nack, Resync
from replicator.wire.session import Session
from tests.integration.daemon_support import roots

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")]

FILE_BYTES = 24 << 10
NOBODY = 65534


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "ram", "300k", mode="0700") as mount:
        yield mount


def flush(node: ReplicatorNode, directory: Path, timeout_ms: int = 3000) -> str:
    line = f"FLUSH\t1\t{timeout_ms}\tfail\tu1\t{directory}"
    return protocol.unescape(node.ask(line, timeout=timeout_ms / 1000 + 5))


def verify_local(node: ReplicatorNode, origin: str) -> dict[str, object]:
    run = subprocess.run([sys.executable, "-m", "replicator", "verify", "--config",
                          str(node.config_path), "--origin", origin, "--local", "--json"],
                         capture_output=True, text=True, check=False)
    report: dict[str, object] = json.loads(run.stdout)
    assert report["exit_code"] == run.returncode
    return report


def test_full_replica_tmpfs_is_never_acknowledged(tmp_path: Path, small_tmpfs: Path,
                                                  nodes: list[ReplicatorNode]) -> None:
    roots_a = roots(tmp_path / "a-roots")
    a, b = pair(tmp_path, roots_a, roots(tmp_path / "b-roots"))
    b.ram = small_tmpfs
    nodes += [a, b]
    b.start()
    a.start()
    log = roots_a["index"] / "u1" / "appended.bin"  # not a Dovecot file: no format checks
    log.parent.mkdir(parents=True)
    log.write_bytes(b"log head\n")
    assert flush(a, log.parent).startswith("OK")
    answers: dict[Path, str] = {}
    for number in range(40):
        box = roots_a["index"] / "u1" / f"box{number}"
        box.mkdir()
        (box / "cache.bin").write_bytes(os.urandom(FILE_BYTES))
        with log.open("ab") as f:  # a log every batch of u1 appends to (a torn log is the bug)
            f.write(os.urandom(2048))
        answers[box] = flush(a, box)
        if not answers[box].startswith("OK"):
            break
    failed = [box for box, answer in answers.items() if not answer.startswith("OK")]
    assert failed, "the 300 KiB tmpfs never filled up"
    # Every directory a FLUSH was told is held is held, byte for byte.
    for box, answer in answers.items():
        if answer.startswith("OK"):
            held = b.replica_of("a", "index") / "u1" / box.name / "cache.bin"
            assert held.read_bytes() == (box / "cache.bin").read_bytes(), box
    barrier = a.ask("BARRIER\t1\t1500", timeout=10)
    assert barrier.startswith("FAIL"), "a barrier must not pass while b's tmpfs is full"
    # The replica never looks consistent while it differs from a.
    report = verify_local(b, "a")
    differences = compare_trees(roots_a["index"], b.replica_of("a", "index")).differences
    assert report["exit_code"] == 1 or not differences, (report, differences)
    assert report["exit_code"] == 1, "a directory refused for ENOSPC must be reported"
    assert "u1" in json.dumps(report["differences"])
    status = b.status()
    assert status["replicas"]["a"]["replica_enospc"] >= 1
    b_log = b.log_text()
    assert b_log.count("is full") == 1, "one clear error per episode"
    assert str(small_tmpfs) in b_log and "Traceback" not in b_log
    applied = json.loads((b.replica_dir / "a" / ".applied.json").read_text())
    assert status["replicas"]["a"]["seq"] == applied["seq"], "only persisted positions count"
    # Room again: the origin's resends repair the copy, nothing was lost.
    for box in answers:
        (box / "cache.bin").unlink()
    a.barrier(timeout=90)
    assert not compare_trees(roots_a["index"], b.replica_of("a", "index")).differences
    final = verify_local(b, "a")
    assert final["exit_code"] == 0, json.dumps(final)


@pytest.mark.parametrize("point", ["before-renames", "before-commit-mark"])
def test_receiver_killed_mid_batch_leaves_a_promotable_copy(
        tmp_path: Path, nodes: list[ReplicatorNode], monkeypatch: pytest.MonkeyPatch,
        point: str) -> None:
    roots_a, roots_b = roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots")
    a, b = pair(tmp_path, roots_a, roots_b)
    nodes += [a, b]
    box = roots_a["index"] / "u1" / "box"
    box.mkdir(parents=True)
    (box / "log.bin").write_bytes(b"first record\n")
    (box / "cache.bin").write_bytes(os.urandom(3000))
    monkeypatch.setenv("REPLICATOR_TEST_CRASH_AT", f"{point}:crash-me")  # b only
    b.start()
    monkeypatch.delenv("REPLICATOR_TEST_CRASH_AT")
    a.start()
    a.barrier()
    # One batch: an append, a rewrite, a new file. b is killed (SIGKILL) inside it.
    with (box / "log.bin").open("ab") as f:
        f.write(b"second record\n")
    (box / "cache.bin").write_bytes(os.urandom(3000))
    (box / "crash-me.bin").write_bytes(b"new file")
    assert not flush(a, box).startswith("OK")
    assert b.process is not None and b.process.wait(10) == -9
    report = verify_local(b, "a")
    assert report["exit_code"] == 0, json.dumps(report)
    a.kill9()
    promoted = subprocess.run([sys.executable, "-m", "replicator", "promote", "--config",
                               str(b.config_path), "--origin", "a"],
                              capture_output=True, text=True, check=False)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    log = (roots_b["index"] / "u1" / "box" / "log.bin").read_bytes()
    assert log in (b"first record\n", b"first record\nsecond record\n")


def test_receiver_killed_mid_patch_puts_the_file_back_on_restart(
        tmp_path: Path, nodes: list[ReplicatorNode], monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache changed in a few places is patched in place on b. b killed between two of the
    patch's writes holds it torn; a dies too. b restarted puts the file back as a last had it
    acknowledged, by itself (a never connects again), and its copy of a is promoted."""
    roots_a, roots_b = roots(tmp_path / "a-roots"), roots(tmp_path / "b-roots")
    a, b = pair(tmp_path, roots_a, roots_b)
    nodes += [a, b]
    box = roots_a["index"] / "u1" / "box"
    box.mkdir(parents=True)
    cache = box / "crash-me.cache"
    cache.write_bytes(os.urandom(64 << 10))
    monkeypatch.setenv("REPLICATOR_TEST_CRASH_AT", "mid-patch:crash-me")  # b only
    b.start()
    monkeypatch.delenv("REPLICATOR_TEST_CRASH_AT")
    a.start()
    assert flush(a, box).startswith("OK")  # b holds the cache whole
    held = b.replica_of("a", "index") / "u1" / "box" / "crash-me.cache"
    acknowledged = held.read_bytes()
    with cache.open("r+b") as f:  # a header field rewritten, a record appended
        f.write(b"header!!")
        f.seek(0, os.SEEK_END)
        f.write(os.urandom(4096))
    assert not flush(a, box).startswith("OK")
    assert b.process is not None and b.process.wait(10) == -9
    assert held.read_bytes() not in (acknowledged, cache.read_bytes()), "killed, not torn"
    assert verify_local(b, "a")["exit_code"] == 1, "a torn file is damage until the restart"
    a.kill9()
    b.start()
    assert "put back as it was before it" in b.log_text()
    assert held.read_bytes() == acknowledged
    assert verify_local(b, "a")["exit_code"] == 0
    promoted = subprocess.run([sys.executable, "-m", "replicator", "promote", "--config",
                               str(b.config_path), "--origin", "a"],
                              capture_output=True, text=True, check=False)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert (roots_b["index"] / "u1" / "box" / "crash-me.cache").read_bytes() == acknowledged


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory an unprivileged uid can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="replicator-hostile-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "sh", "-c", script], capture_output=True, text=True, check=False)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_symlink_swapped_in_by_a_mail_user_is_never_followed(
        tmp_path: Path, open_dir: Path, nodes: list[ReplicatorNode]) -> None:
    roots_a = roots(tmp_path / "a-roots")
    a, b = pair(tmp_path, roots_a, roots(tmp_path / "b-roots"))
    b.ram = open_dir / "replica"
    nodes += [a, b]
    box = roots_a["index"] / "u1" / "box"
    box.mkdir(parents=True)
    for name in ("log.bin", "cache.bin", "old.bin"):
        (box / name).write_bytes(f"{name} on a\n".encode() * 50)
    for path in (box.parent, box, *box.iterdir()):  # the mail user owns its files on a,
        os.chown(path, NOBODY, NOBODY)              # and so on b
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("log.bin", "cache.bin", "old.bin", "stray.bin"):
        (outside / name).write_bytes(b"precious, not part of any replica\n")
    before = snapshot(outside)
    b.start()
    a.start()
    a.barrier()
    replica_box = b.replica_of("a", "index") / "u1" / "box"
    swap = f"mv {replica_box} {replica_box}.moved && ln -s {outside} {replica_box}"
    private = stat.S_IMODE(os.stat(b.replica_dir / "a").st_mode) == 0o700
    kept_out = as_nobody(swap).returncode != 0
    os.chmod(b.replica_dir / "a", 0o755)  # as if misconfigured: the next layer must hold
    assert as_nobody(swap).returncode == 0 and replica_box.is_symlink()
    # The next batches: an append, a rewrite, a delete, a copy (a hard link), a new file; then
    # the resync of the directory (KEEP_ONLY) that repairs it.
    with (box / "log.bin").open("ab") as f:
        f.write(b"appended\n")
    (box / "cache.bin").write_bytes(b"rewritten\n" * 40)
    (box / "old.bin").unlink()
    os.link(box / "log.bin", box / "log.bin.2")
    (box / "new.bin").write_bytes(b"new\n")
    a.barrier(timeout=90)
    assert snapshot(outside) == before, "nothing outside replica_dir may change"
    assert not replica_box.is_symlink()
    assert not compare_trees(box, replica_box).differences
    assert "Traceback" not in b.log_text()
    assert private and kept_out, "replica_dir/<origin> must keep other users out"
    b.stop()
    b.start()
    assert stat.S_IMODE(os.stat(b.replica_dir / "a").st_mode) == 0o700, "fixed at startup"
    assert "made it 0700" in b.log_text()


def peak_rss_kib(node: ReplicatorNode) -> int:
    assert node.process is not None
    status = Path(f"/proc/{node.process.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


async def hostile_origin(port: int, batches: list[Batch], max_frame: int) -> list[Message]:
    """Speak as origin `a` (a configured peer that holds the cluster key, turned hostile or
    buggy): the authenticated handshake, RESYNC, the crafted batches; the replica's answers
    until the last batch is answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    session = Session("client", max_frame_bytes=max_frame)
    auth = ClientAuth(TEST_PSK, "a", "b", "origin")
    writer.write(session.send(auth.hello(Hello("a", "origin", "hostile", 1, "s1"))))
    answers: list[Message] = []
    last = batches[-1].seq
    async with asyncio.timeout(30):
        for expected in (Auth, Hello):
            while not answers:
                answers = session.receive_data(await reader.read(1 << 16))
            reply = answers.pop(0)
            assert isinstance(reply, expected), reply
            if isinstance(reply, Auth):
                writer.write(session.send(auth.answer(reply)))
            else:
                auth.check_server(reply)
        writer.write(session.send(Resync("s1", 1)))
        for batch in batches:
            writer.write(session.send(batch))
        await writer.drain()
        while not any(isinstance(m, (Ack, Nack)) and m.seq == last for m in answers):
            data = await reader.read(1 << 16)
            assert data, f"the replica closed the connection: {answers}"
            answers += session.receive_data(data)
    writer.close()
    return answers


def test_batches_beyond_the_memory_budget_are_refused(tmp_path: Path,
                                                       nodes: list[ReplicatorNode]) -> None:
    max_frame = 1 << 20
    b = ReplicatorNode(tmp_path / "b", "b", roots(tmp_path / "b-roots"),
                       peers=[PeerSpec("a", free_port())],
                       replication={"max_frame_bytes": max_frame})
    nodes.append(b)
    b.start()
    before = peak_rss_kib(b)
    truncates = [Op(OpCode.TRUNCATE, f"u1/f{i}", max_frame) for i in range(64)]  # 64 MiB
    zeros = compress(bytes(max_frame))
    bombs = [Op(OpCode.REPLACE, f"u2/z{i}", 0, zeros, Codec.ZSTD, max_frame) for i in range(64)]
    parts = [Batch(1, "s1", 3, "index", "u3", part=i, final=i == 99,
                   payload=encode_ops([Op(OpCode.WRITE, f"u3/p{i}", 0, bytes(100 << 10),
                                          raw_size=100 << 10)]))
             for i in range(100)]  # 10 MiB of parts for one batch
    good = Op(OpCode.REPLACE, "u1/ok", 0, b"fine", raw_size=4, result=Result(4, digest(b"fine")))
    batches = [Batch(1, "s1", 1, "index", "u1", payload=encode_ops(truncates)),
               Batch(1, "s1", 2, "index", "u2", payload=encode_ops(bombs)), *parts,
               Batch(1, "s1", 4, "index", "u1", resync=True, payload=encode_ops([good]))]
    answers = asyncio.run(hostile_origin(b.port, batches, max_frame))
    refused = {m.seq: m.reason for m in answers if isinstance(m, Nack)}
    assert sorted(refused) == [1, 2, 3], answers
    assert all("budget" in reason for reason in refused.values()), refused
    assert any(isinstance(m, Ack) and m.seq == 4 for m in answers), "it carries on"
    # the batch budget (4 x max_frame_bytes) plus what the transport and session hold (a read
    # chunk, a frame being assembled, decoded messages) and the allocator's slack; today's
    # main grows by more than the 64 MiB the first batch announces
    grown = peak_rss_kib(b) - before
    assert grown < 3 * 4 * max_frame >> 10, f"peak RSS grew by {grown} KiB"
    assert (b.replica_of("a", "index") / "u1" / "ok").read_bytes() == b"fine"
    assert "Traceback" not in b.log_text()
