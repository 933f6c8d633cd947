"""Micro-benchmarks of the hot path (pytest-benchmark): what one flag change costs in CPU on
each side, piece by piece."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from replicator.capture.snapshot import scan_dir
from replicator.delta.apply import apply_in_memory
from replicator.delta.encode import describe, encode_file
from replicator.delta.ops import Meta, decode_ops, encode_ops
from replicator.wire.frames import Frame, FrameDecoder, FrameType, encode_frame

META = Meta(0o600, 8, 8, 1)
LOG = os.urandom(64 * 1024)
RECORD = os.urandom(48)


def test_frame_encode_256b(benchmark: BenchmarkFixture) -> None:
    frame = Frame(FrameType.BATCH, {"seq": 1, "root": "index", "dir": "u1/.INBOX"},
                  os.urandom(256))
    benchmark(encode_frame, frame)


def test_frame_decode_256b(benchmark: BenchmarkFixture) -> None:
    data = encode_frame(Frame(FrameType.BATCH, {"seq": 1}, os.urandom(256)))
    decoder = FrameDecoder()
    benchmark(decoder.feed, data)


def test_encode_log_append(benchmark: BenchmarkFixture) -> None:
    old, new = describe(LOG, META, blocks=False), LOG + RECORD
    shipped = describe(new, META, blocks=False)
    ops = benchmark(encode_file, "u1/.INBOX/dovecot.index.log", old, None, new, shipped)
    assert len(ops) == 1


def test_encode_index_rewrite_zstd_delta(benchmark: BenchmarkFixture) -> None:
    index = os.urandom(32 * 1024)
    new = index[:500] + os.urandom(40) + index[540:]
    benchmark(encode_file, "u1/.INBOX/dovecot.index", describe(index, META), index, new,
              describe(new, META))


def test_ops_wire_roundtrip(benchmark: BenchmarkFixture) -> None:
    ops = encode_file("f", describe(LOG, META, blocks=False), None, LOG + RECORD,
                      describe(LOG + RECORD, META, blocks=False))
    benchmark(lambda: decode_ops(encode_ops(ops)))


def test_apply_log_append_in_memory(benchmark: BenchmarkFixture) -> None:
    ops = encode_file("f", describe(LOG, META, blocks=False), None, LOG + RECORD,
                      describe(LOG + RECORD, META, blocks=False))
    benchmark(apply_in_memory, {"f": LOG}, ops)


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    box = tmp_path / "u1" / ".INBOX"
    box.mkdir(parents=True)
    for name, size in (("dovecot.index", 4096), ("dovecot.index.cache", 30000),
                       ("dovecot.index.log", 60000), ("dovecot.index.log.2", 3000)):
        (box / name).write_bytes(os.urandom(size))
    return tmp_path


def test_scan_mailbox_directory(benchmark: BenchmarkFixture, mailbox: Path) -> None:
    benchmark(scan_dir, mailbox, "u1/.INBOX", None, {"dovecot.index.log"})
