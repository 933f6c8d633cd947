"""Logs and uidlists read from their old end (capture.tailstate), and a sync commit's flush
that leaves index rewrites to trail (Batcher.build_for_commit): what they read, what
they ship, and when they leave it to a whole read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replicator.capture import snapshot
from replicator.capture.basecache import BaseCache
from replicator.capture.manifest import Manifest
from replicator.capture.tailstate import HEAD_BYTES, WHOLE_READ_EVERY
from replicator.delta.ops import Op, OpCode
from replicator.hashing import digest
from replicator.sender.batcher import Batcher, BuildResult
from tests.unit.lock_holder import held_lock

KEY = ("index", "u1")


def _setup(tmp_path: Path, log_size: int = HEAD_BYTES + 1000) -> tuple[Batcher, Path]:
    box = tmp_path / "u1"
    box.mkdir()
    (box / "dovecot.index.log").write_bytes(bytes(i % 251 for i in range(log_size)))
    (box / "dovecot.index").write_bytes(b"index v1")
    batcher = Batcher({"index": tmp_path}, Manifest(), BaseCache(1 << 20))
    batcher.build({("index", ""): None, KEY: None})
    return batcher, box


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _ops(result: BuildResult | None) -> list[Op]:
    assert result is not None
    return [op for draft in result.drafts for op in draft.ops]


def test_a_grown_log_is_read_from_its_old_end(tmp_path: Path) -> None:
    batcher, box = _setup(tmp_path)
    log = box / "dovecot.index.log"
    old_size = log.stat().st_size
    _append(log, b"one more record")
    result = batcher.build({KEY: {"dovecot.index.log"}})
    (op,) = _ops(result)
    assert (op.code, op.offset) == (OpCode.WRITE, old_size)
    assert result.bytes_read < 100  # the tail (and the small index, if still racy)
    assert op.result is not None
    assert (op.result.size, op.result.digest) == (log.stat().st_size, digest(log.read_bytes()))


def test_a_log_header_rewritten_in_place_is_read_whole(tmp_path: Path) -> None:
    """Dovecot marks a corrupted log by writing its header in place."""
    batcher, box = _setup(tmp_path)
    log = box / "dovecot.index.log"
    with open(log, "r+b") as f:
        f.write(b"\0\0\0\0")
    _append(log, b"tail")
    result = batcher.build({KEY: {"dovecot.index.log"}})
    (op,) = _ops(result)
    assert op.code == OpCode.REPLACE and result.bytes_read >= log.stat().st_size
    assert op.result is not None and op.result.digest == digest(log.read_bytes())


def test_a_short_log_is_read_whole(tmp_path: Path) -> None:
    batcher, box = _setup(tmp_path, log_size=100)
    _append(box / "dovecot.index.log", b"tail")
    result = batcher.build({KEY: {"dovecot.index.log"}})
    assert result.bytes_read >= 104
    assert [op.code for op in _ops(result)] == [OpCode.WRITE]  # still shipped as an append


def test_a_change_behind_the_head_is_repaired_by_the_periodic_whole_read(
        tmp_path: Path) -> None:
    """Not what Dovecot does, but the net under the head check: within WHOLE_READ_EVERY reads
    the file is read whole and shipped whole once its prefix no longer matches."""
    batcher, box = _setup(tmp_path)
    log = box / "dovecot.index.log"
    with open(log, "r+b") as f:
        f.seek(HEAD_BYTES + 10)
        f.write(b"changed behind the head")
    codes = []
    for index in range(WHOLE_READ_EVERY + 2):
        _append(log, b"record %d" % index)
        codes.append([op.code for op in _ops(batcher.build({KEY: {"dovecot.index.log"}}))])
    assert codes.count([OpCode.REPLACE]) == 1 and codes[-1] == [OpCode.WRITE]
    entry = batcher.manifest.file("index", "u1/dovecot.index.log")
    assert entry is not None and entry.shipped.digest == digest(log.read_bytes())


def test_a_rotated_log_is_read_whole(tmp_path: Path) -> None:
    """Also when the new log gets the old one's inode number (tmpfs reuses them at once):
    its head differs."""
    batcher, box = _setup(tmp_path)
    log = box / "dovecot.index.log"
    content = b"new log header" + log.read_bytes()
    log.unlink()
    log.write_bytes(content)
    result = batcher.build({KEY: {"dovecot.index.log"}})
    assert result.bytes_read >= len(content)
    assert [op.code for op in _ops(result)] == [OpCode.REPLACE]


def test_a_commit_flush_ships_the_log_and_leaves_the_index_for_the_next_flush(
        tmp_path: Path) -> None:
    batcher, box = _setup(tmp_path)
    _append(box / "dovecot.index.log", b"commit")
    (box / "dovecot.index.tmp").write_bytes(b"index v2")
    os.rename(box / "dovecot.index.tmp", box / "dovecot.index")
    (box / "dovecot-uidlist").write_bytes(b"3 V1 N2\n1 a\n")  # maildir's: not trailing
    commit = batcher.build_for_commit({KEY})
    ops = _ops(commit)
    assert {op.path for op in ops} == {"u1/dovecot.index.log", "u1/dovecot-uidlist"}
    assert [op.code for op in ops if op.path.endswith(".log")] == [OpCode.WRITE]
    rest = batcher.build({KEY: set()})
    assert [op.path for op in _ops(rest)] == ["u1/dovecot.index"]


def test_a_commit_flush_leaves_new_and_busy_directories_to_a_whole_flush(
        tmp_path: Path) -> None:
    """None, with nothing recorded: the whole flush that follows ships everything."""
    batcher, box = _setup(tmp_path)
    _append(box / "dovecot.index.log", b"commit")
    (tmp_path / "u2").mkdir()
    assert batcher.build_for_commit({KEY, ("index", "u2")}) is None  # new: found whole
    assert _ops(batcher.build_for_commit({("index", "u3")})) == []  # absent: nothing to wait
    assert [op.path for op in _ops(batcher.build({KEY: set()}))] == ["u1/dovecot.index.log"]


def test_a_racy_log_read_again_unchanged_costs_its_head_only(tmp_path: Path) -> None:
    """Just written (racy) or named by an event, a log is read again though its stat did not
    change (a same-size rewrite in the same mtime tick would not show); if it did not grow, its
    head decides."""
    batcher, box = _setup(tmp_path)
    _append(box / "dovecot.index.log", b"commit")
    batcher.build({KEY: set()})
    result = batcher.build({KEY: {"dovecot.index.log"}})
    assert [op for op in _ops(result) if op.path.endswith(".log")] == []
    assert result.bytes_read < 100  # not the log's 5000 bytes (the small index may be read)


def test_a_log_held_locked_past_the_patience_is_read_a_cache_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dovecot holds a log's lock through its disk flush: once it has held it for
    LOCK_PATIENCE (0 here), what it appended is shipped without waiting for the flush. A
    cache is rewritten in place under its lock: it waits (busy) however long that takes."""
    monkeypatch.setattr(snapshot, "LOCK_PATIENCE", 0.0)
    batcher, box = _setup(tmp_path)
    log, cache = box / "dovecot.index.log", box / "dovecot.index.cache"
    cache.write_bytes(b"cache v1")
    batcher.build({KEY: {"dovecot.index.cache"}})
    old_size = log.stat().st_size
    with held_lock(log):
        _append(log, b"appended while locked")
        result = batcher.build({KEY: {"dovecot.index.log"}})
    (op,) = _ops(result)
    assert (op.path, op.offset, result.busy) == ("u1/dovecot.index.log", old_size, {})
    with held_lock(cache):
        cache.write_bytes(b"cache v2")
        result = batcher.build({KEY: {"dovecot.index.cache"}})
    assert _ops(result) == [] and KEY in result.busy
    assert [op.path for op in _ops(batcher.build(result.busy))] == ["u1/dovecot.index.cache"]


def test_a_log_locked_for_less_than_the_patience_waits_for_dovecot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a flush (RAM mode) Dovecot holds the lock for its write alone: that is waited
    out, so a commit's appends are shipped together."""
    monkeypatch.setattr(snapshot, "LOCK_PATIENCE", 3600.0)
    batcher, box = _setup(tmp_path)
    log = box / "dovecot.index.log"
    with held_lock(log):
        _append(log, b"appended while locked")
        result = batcher.build({KEY: {"dovecot.index.log"}})
    assert _ops(result) == [] and KEY in result.busy
    (op,) = _ops(batcher.build(result.busy))
    assert op.path == "u1/dovecot.index.log"
