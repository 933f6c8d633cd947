"""Per-batch cost on the receiver's latency path: `OriginReplica.receive` + `save_state` for
one batch per chunk of input (what a sync commit waits for), each batch a log append and a
2 KiB index rewrite in one directory, on tmpfs (/dev/shm).

    .venv/bin/python -m bench.receiver_apply [batches] [rounds]

prints the median over `rounds` of each round's median per batch, in µs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from replicator.delta.ops import Meta, Op, OpCode, Result, encode_ops
from replicator.hashing import digest
from replicator.replica.store import ReplicaStore
from replicator.wire.messages import Batch

LOG, INDEX = "u1/box/dovecot.index.log", "u1/box/dovecot.index"


def batch_ops(seq: int, log: bytes, record: bytes, index: bytes) -> list[Op]:
    meta = Meta(0o600, 0, 0, 1)
    first = [Op(OpCode.ENSURE_DIR, "u1/box", meta=Meta(0o700, 0, 0, 0))] if seq == 1 else []
    return [*first,
            Op(OpCode.WRITE, LOG, len(log) - len(record), record, raw_size=len(record),
               result=Result(len(log), digest(log)), meta=meta),
            Op(OpCode.REPLACE, INDEX, 0, index, raw_size=len(index),
               result=Result(len(index), digest(index)), meta=meta)]


def one_round(batches: int) -> float:
    """Median seconds per batch over `batches` batches into a fresh replica."""
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        store = ReplicaStore(scratch / "replica", scratch / "state", frozenset({"index"}),
                             1 << 26)
        replica = store.origin("a")
        replica.resync("s", 1, 1)
        log, times = b"", []
        for seq in range(1, batches + 1):
            record, index = os.urandom(80), os.urandom(2048)
            log += record
            batch = Batch(1, "s", seq, "index", "u1/box",
                          payload=encode_ops(batch_ops(seq, log, record, index)))
            started = time.perf_counter()
            outcome = replica.receive(batch)
            replica.save_state()
            times.append(time.perf_counter() - started)
            assert outcome is not None and outcome.ok, outcome
        return statistics.median(times)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    median = statistics.median(one_round(batches) for _ in range(rounds))
    print(f"receiver: median per batch {median * 1e6:.1f} µs ({rounds} x {batches} batches)")


if __name__ == "__main__":
    main()
