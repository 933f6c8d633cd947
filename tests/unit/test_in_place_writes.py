"""Writes into the replica's visible files, and what a crash in the middle of one leaves.

Files a batch changes in a few places (a cache Dovecot updates in place) are patched in place,
not rewritten whole: only the changed extents are written, a full filesystem part way undoes
the patch, and a hard link is replaced whole, never written through. A receiver killed in the
middle of an append or a patch puts the file back into its old state when it starts again,
for every replica it holds.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.delta.apply import Budget, WorkingFile
from replicator.delta.ops import Op, OpCode, Result, encode_ops
from replicator.errors import ApplyError
from replicator.hashing import CHUNK_SIZE, StreamingDigest, digest
from replicator.replica.store import OriginReplica, Outcome, ReplicaStore
from replicator.testing.tmpfs import fill, small_tmpfs
from replicator.verify.runner import verify_replica
from replicator.wire.messages import Batch

MAX_FRAME = 1 << 20


def _working(base: bytes) -> WorkingFile:
    return WorkingFile("f", True, lambda: bytearray(base), lambda: StreamingDigest(base))


def _write(offset: int, data: bytes) -> Op:
    return Op(OpCode.WRITE, "f", offset, data, raw_size=len(data))


def test_a_patch_rebuilds_the_new_content_and_its_before_images_the_old() -> None:
    """Random writes (inside, across the end, past it) and growths: the extents written
    over the old file give the new content; the before-images written back in reverse,
    then a cut to the old size, give the old one."""
    rng, checked = random.Random(2026), 0
    for _ in range(300):
        base = rng.randbytes(rng.randrange(0, 4000))
        wf = _working(base)
        for _ in range(rng.randrange(1, 8)):
            if rng.random() < 0.15:
                wf.apply(Op(OpCode.TRUNCATE, "f", wf.size + rng.randrange(0, 300)), 1 << 20)
            else:
                offset = rng.randrange(0, wf.size + 200)
                wf.apply(_write(offset, rng.randbytes(rng.randrange(1, 600))), 1 << 20)
        patch, content = wf.patch(), wf.content()
        if patch is None:  # the writes covered more than the file: it is written whole
            continue
        checked += 1
        assert patch.old_size == len(base)
        patched = bytearray(base)
        for start, end in patch.extents:
            patched[start:end] = bytes(max(0, start - len(patched))) + content[start:end] \
                if start > len(patched) else content[start:end]
        assert patched == content
        for offset, data in reversed(patch.before):
            patched[offset:offset + len(data)] = data
        del patched[patch.old_size:]
        assert patched == base
    assert checked > 150, checked


def _chunked(base: bytes, budget: Budget | None = None) -> tuple[WorkingFile, list[int]]:
    """A working copy that reads the visible file in pieces; and the bytes each read asked."""
    reads: list[int] = []

    def read_range(offset: int, length: int) -> bytes:
        reads.append(length)
        return base[offset : offset + length]

    return WorkingFile("f", True, lambda: bytearray(base), lambda: StreamingDigest(base),
                       budget, read_range), reads


def test_writes_into_a_big_file_read_and_hash_only_the_chunks_they_touch() -> None:
    """Random appends, writes (inside, across chunk borders, across the end, past it) and
    growths into files of up to five 64 KiB chunks, kept as changed chunks: the digest,
    the patch and the content are those of the same ops applied to the whole file, and
    what was read of the visible file is the chunks touched (and, when the size changed,
    those from the old end on)."""
    rng, patched_files = random.Random(1611), 0
    for _ in range(200):
        base = rng.randbytes(rng.choice([0, 100, CHUNK_SIZE, rng.randrange(0, 5 * CHUNK_SIZE)]))
        chunked, reads = _chunked(base)
        whole = _working(base)
        for _ in range(rng.randrange(1, 8)):
            roll = rng.random()
            if roll < 0.15:
                op = Op(OpCode.TRUNCATE, "f", whole.size + rng.randrange(0, 2 * CHUNK_SIZE))
            elif roll < 0.3:
                op = _write(whole.size, rng.randbytes(rng.randrange(1, 3000)))
            else:
                offset = rng.randrange(0, whole.size + CHUNK_SIZE)
                op = _write(offset, rng.randbytes(rng.randrange(1, CHUNK_SIZE + 5000)))
            for wf in (chunked, whole):
                wf.apply(op, 1 << 30)
        assert chunked.size == whole.size
        assert chunked.digest().digest() == digest(whole.content())
        patch = chunked.patch()
        if patch is not None:
            patched_files += 1
            assert sum(reads) <= len(base)
            rebuilt = bytearray(base)
            for start, end in patch.extents:
                rebuilt[len(rebuilt):] = bytes(max(0, start - len(rebuilt)))
                rebuilt[start:end] = chunked.extent(start, end)
            assert rebuilt == whole.content()
        assert chunked.content() == whole.content()
    assert patched_files > 100, patched_files


def test_a_header_write_into_a_big_cache_reads_one_chunk() -> None:
    base = os.urandom(20 * CHUNK_SIZE + 123)
    wf, reads = _chunked(base)
    wf.apply(_write(8, b"new header"), 1 << 30)
    wf.apply(_write(len(base), b"an appended record"), 1 << 30)
    new = base[:8] + b"new header" + base[18:] + b"an appended record"
    wf.check(Result(len(new), digest(new)))
    assert reads == [CHUNK_SIZE, 123]  # the header's chunk, the last one (it grew)


def test_hostile_writes_across_many_chunks_stop_at_the_batch_budget() -> None:
    """One byte written into each chunk of a big file makes the receiver read each chunk:
    every read counts in the batch's budget, so the batch is refused once they pass it,
    whatever the file's size."""
    base = bytes(40 * CHUNK_SIZE)
    budget = Budget(10 * CHUNK_SIZE)
    wf, reads = _chunked(base, budget)
    with pytest.raises(ApplyError, match="over its budget"):
        for index in range(40):
            wf.apply(_write(index * CHUNK_SIZE, b"x"), 1 << 30)
    assert len(reads) <= 10 and budget.used <= budget.limit


def test_a_visible_file_shorter_than_its_digest_says_is_refused() -> None:
    """The stored digest says what the file holds; a file cut behind the receiver's back
    (damage) is refused when a write needs its bytes, not patched as if it were whole."""
    base = os.urandom(3 * CHUNK_SIZE)
    wf = WorkingFile("f", True, lambda: bytearray(base), lambda: StreamingDigest(base), None,
                     lambda offset, length: base[offset : min(offset + length, CHUNK_SIZE)])
    with pytest.raises(ApplyError, match="fewer bytes than its digest says"):
        wf.apply(_write(2 * CHUNK_SIZE + 5, b"x"), 1 << 30)


def test_a_replaced_cut_or_new_file_has_no_patch() -> None:
    replaced = _working(b"old content")
    replaced.apply(Op(OpCode.REPLACE, "f", 0, b"new", raw_size=3), 1 << 20)
    cut = _working(b"old content")
    cut.apply(Op(OpCode.TRUNCATE, "f", 3), 1 << 20)
    new = WorkingFile("f", False, bytearray, lambda: StreamingDigest(b""))
    new.apply(_write(0, b"fresh"), 1 << 20)
    assert [w.patch() for w in (replaced, cut, new)] == [None, None, None]


def test_rewriting_one_region_over_and_over_gives_the_patch_up_within_the_budget() -> None:
    """The bytes a patch covers count in the batch's memory budget, and once they would pass
    the file's size the patch is given up (the copy is written whole, as before)."""
    base = os.urandom(1000)
    budget = Budget(10_000)
    wf = WorkingFile("f", True, lambda: bytearray(base), lambda: StreamingDigest(base), budget)
    wf.apply(_write(0, b"a" * 400), 1 << 20)
    wf.apply(_write(0, b"b" * 400), 1 << 20)
    assert wf.patch() is not None and budget.used == 1000 + 800  # the copy, two images
    wf.apply(_write(0, b"c" * 400), 1 << 20)
    assert wf.patch() is None and budget.used == 1000
    assert wf.content() == b"c" * 400 + base[400:]


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[OriginReplica]:
    with small_tmpfs(tmp_path / "mnt", "1m") as mount:
        store = ReplicaStore(mount / "replica", tmp_path / "state", frozenset({"index"}),
                             MAX_FRAME)
        origin = store.origin("a")
        origin.resync("s", 1, 1)
        yield origin


def _send(replica: OriginReplica, ops: list[Op], *, resync: bool = False) -> Outcome | None:
    return replica.receive(Batch(1, "s", replica.state.seq + 1, "index", "u1", resync=resync,
                                 payload=encode_ops(ops)))


def _cache_ops(writes: list[tuple[int, bytes]], new: bytes) -> list[Op]:
    """WRITEs of u1/cache; the last one announces the result, `new`."""
    return [Op(OpCode.WRITE, "u1/cache", offset, data, raw_size=len(data),
               result=Result(len(new), digest(new)) if last else None)
            for last, (offset, data) in ((i == len(writes) - 1, w) for i, w in enumerate(writes))]


def _create(replica: OriginReplica, content: bytes) -> Path:
    outcome = _send(replica, [Op(OpCode.REPLACE, "u1/cache", 0, content,
                                 raw_size=len(content),
                                 result=Result(len(content), digest(content)))])
    assert outcome is not None and outcome.ok, outcome
    return replica.base / "index" / "u1" / "cache"


def test_a_cache_changed_in_a_few_places_is_patched_in_place(replica: OriginReplica) -> None:
    old = os.urandom(200_000)
    path = _create(replica, old)
    inode = path.stat().st_ino
    new = old[:1000] + b"header!" + old[1007:] + b"appended record"
    outcome = _send(replica, _cache_ops([(1000, b"header!"), (len(old), b"appended record")],
                                        new))
    assert outcome is not None and outcome.ok, outcome
    assert path.read_bytes() == new
    assert path.stat().st_ino == inode, "written in place, not renamed over"


def test_a_hard_link_is_replaced_whole_and_the_other_name_keeps_its_bytes(
        replica: OriginReplica, tmp_path: Path) -> None:
    old = os.urandom(5000)
    path = _create(replica, old)
    other = path.with_name("planted-link")
    os.link(path, other)
    new = b"X" + old[1:]
    outcome = _send(replica, _cache_ops([(0, b"X")], new))
    assert outcome is not None and outcome.ok, outcome
    assert path.read_bytes() == new and other.read_bytes() == old


def test_a_full_filesystem_part_way_undoes_the_patch(replica: OriginReplica) -> None:
    old = os.urandom(100_000)
    path = _create(replica, old)
    filler = fill(replica.base)
    grown = os.urandom(400_000)  # more than is left: the growth fails part way
    new = b"Y" * 10 + old[10:] + grown
    ops = _cache_ops([(0, b"Y" * 10), (len(old), grown)], new)
    outcome = _send(replica, ops)
    assert outcome is not None and not outcome.ok and outcome.full, outcome
    assert path.read_bytes() == old, "the patch must be undone, the file never torn"
    filler.unlink()
    outcome = _send(replica, ops, resync=True)  # what the origin resends, once there is room
    assert outcome is not None and outcome.ok, outcome
    assert path.read_bytes() == new


CHILD = """
import sys
from pathlib import Path
from replicator.replica.store import ReplicaStore
from replicator.wire.messages import Batch
replica_dir, state_dir, seq, payload = sys.argv[1:5]
origin = ReplicaStore(Path(replica_dir), Path(state_dir), frozenset({"index"}),
                      1 << 20).origin("a")
origin.resync("s", int(seq), 1)
origin.receive(Batch(1, "s", int(seq), "index", "u1", payload=Path(payload).read_bytes()))
"""


def _killed_in(replica: OriginReplica, point: str, ops: list[Op]) -> None:
    """Apply `ops` in a receiver process of its own, killed (SIGKILL) at crash point
    `point` (a process, not a fork: this one may have threads)."""
    payload = replica.base.parent.parent / "batch.ops"
    payload.write_bytes(encode_ops(ops))
    env = {**os.environ, "REPLICATOR_TEST_CRASH_AT": f"{point}:cache",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.run([sys.executable, "-c", CHILD, str(replica.base.parent),
                            str(replica.base.parent.parent / "state-child"),
                            str(replica.state.seq + 1), str(payload)],
                           env=env, capture_output=True, text=True, check=False)
    assert child.returncode == -9, f"not killed at the point: {child.stderr[-2000:]}"


def _restarted(replica: OriginReplica) -> OriginReplica:
    store = ReplicaStore(replica.base.parent, replica.base.parent.parent / "state-2",
                         frozenset({"index"}), MAX_FRAME)
    return store.origin("a")


def test_a_receiver_killed_mid_patch_puts_the_file_back_on_restart(
        replica: OriginReplica) -> None:
    old = os.urandom(50_000)
    path = _create(replica, old)
    new = b"Z" * 8 + old[8:] + os.urandom(20_000)
    _killed_in(replica, "mid-patch", _cache_ops([(0, b"Z" * 8), (len(old), new[len(old):])],
                                                new))
    assert path.read_bytes() not in (old, new), "the kill must leave the patch half written"
    _restarted(replica)
    assert path.read_bytes() == old
    assert verify_replica(replica.base, ["index"]).exit_code == 0


def test_a_receiver_killed_mid_append_cuts_it_back_on_restart(replica: OriginReplica) -> None:
    old = os.urandom(3000)
    path = _create(replica, old)
    tail = os.urandom(5000)
    _killed_in(replica, "before-commit-mark", _cache_ops([(len(old), tail)], old + tail))
    os.truncate(path, len(old) + 1234)  # as a kill in the middle of the append's write leaves it
    _restarted(replica)
    assert path.read_bytes() == old
    assert verify_replica(replica.base, ["index"]).exit_code == 0


def test_a_replica_that_cannot_be_opened_at_start_does_not_stop_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for origin, state in (("a", '{"stream": "s", "seq": 3, "epoch": 1}'), ("c", "{torn")):
        (tmp_path / "replica" / origin).mkdir(parents=True)
        (tmp_path / "replica" / origin / ".applied.json").write_text(state)
    store = ReplicaStore(tmp_path / "replica", tmp_path / "state", frozenset({"index"}),
                         MAX_FRAME)
    assert set(store.origins()) == {"a"} and store.origins()["a"].state.seq == 3
    assert "replica of c in" in caplog.text and "cannot be opened" in caplog.text
