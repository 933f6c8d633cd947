"""A batch's working set is bounded before anything is allocated for it (finding 3 of issue
13, receiving side): growing files, copies, decompressions and buffered parts count against a
budget of BUDGET_FRAMES x max_frame_bytes; beyond it the batch is refused (NACK), and the peak
memory of applying it stays below a bound derived from the configuration. A real MemoryError
refuses the batch too, and the receiver carries on."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replicator.delta.codec import compress
from replicator.delta.ops import Codec, Op, OpCode, Result, encode_ops
from replicator.hashing import digest
from replicator.replica.parts import BUDGET_FRAMES, MAX_PARTS
from replicator.replica.store import OriginReplica, Outcome, ReplicaStore
from replicator.wire.messages import Batch

MAX_FRAME = 1 << 20
BUDGET = BUDGET_FRAMES * MAX_FRAME
PEAK_BOUND = 2 * BUDGET  # the budget, plus transient copies and bookkeeping


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[OriginReplica]:
    store = ReplicaStore(tmp_path / "replica", tmp_path / "state", frozenset({"index"}),
                         MAX_FRAME)
    origin = store.origin("a")
    origin.resync("s", 1, 1)
    yield origin


def send(replica: OriginReplica, ops: list[Op], *, part: int = 0, final: bool = True,
         seq: int | None = None) -> Outcome | None:
    seq = replica.state.seq + 1 if seq is None else seq
    return replica.receive(Batch(1, "s", seq, "index", "u1", part=part, final=final,
                                 payload=encode_ops(ops)))


def peak_of(action: Callable[[], object]) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_refused_within_bound(outcome: object, peak: int) -> None:
    assert peak < PEAK_BOUND, f"peak {peak} bytes, bound {PEAK_BOUND}"
    assert isinstance(outcome, Outcome) and not outcome.ok, outcome
    assert "budget" in outcome.reason


def test_truncates_that_grow_files_past_the_budget(replica: OriginReplica) -> None:
    ops = [Op(OpCode.TRUNCATE, f"u1/f{i}", MAX_FRAME) for i in range(64)]  # 64 MiB, 2 KiB sent
    assert len(encode_ops(ops)) < 4096
    assert_refused_within_bound(*peak_of(lambda: send(replica, ops)))


def test_copies_of_a_large_file_past_the_budget(replica: OriginReplica) -> None:
    big = bytes(range(256)) * (MAX_FRAME // 256)
    held = send(replica, [Op(OpCode.REPLACE, "u1/big", 0, big, raw_size=len(big),
                             result=Result(len(big), digest(big)))])
    assert held is not None and held.ok
    ops = [Op(OpCode.COPY, f"u1/copy{i}", source="u1/big") for i in range(16)]
    assert_refused_within_bound(*peak_of(lambda: send(replica, ops)))


def test_decompressions_past_the_budget(replica: OriginReplica) -> None:
    zeros = compress(bytes(MAX_FRAME))  # a few dozen bytes that expand to 1 MiB
    ops = [Op(OpCode.REPLACE, f"u1/z{i}", 0, zeros, Codec.ZSTD, MAX_FRAME) for i in range(16)]
    assert_refused_within_bound(*peak_of(lambda: send(replica, ops)))


def test_parts_buffered_past_the_budget(replica: OriginReplica) -> None:
    chunk = 100 << 10

    def stream() -> Outcome | None:
        for part in range(2 * BUDGET // chunk):
            op = Op(OpCode.WRITE, f"u1/log{part}", 0, bytes(chunk), raw_size=chunk)
            assert send(replica, [op], part=part, final=False, seq=1) is None
        return send(replica, [], part=2 * BUDGET // chunk, seq=1)
    assert_refused_within_bound(*peak_of(stream))


def test_too_many_parts(replica: OriginReplica) -> None:
    for part in range(MAX_PARTS + 5):
        assert send(replica, [], part=part, final=False, seq=1) is None
    outcome = send(replica, [], part=MAX_PARTS + 5, seq=1)
    assert outcome is not None and not outcome.ok and "parts" in outcome.reason
    follow = Op(OpCode.REPLACE, "u1/f", 0, b"x", raw_size=1, result=Result(1, digest(b"x")))
    resend = replica.receive(Batch(1, "s", 2, "index", "u1", resync=True,
                                   payload=encode_ops([follow])))
    assert resend is not None and resend.ok, "the directory's resend repairs it"


MEMORY_ERROR = r"""
import json, resource, sys
from pathlib import Path
from replicator.delta.ops import Op, OpCode, Result, encode_ops
from replicator.hashing import digest
from replicator.replica.store import ReplicaStore
from replicator.wire.messages import Batch

tmp = Path(sys.argv[1])
store = ReplicaStore(tmp / "replica", tmp / "state", frozenset({"index"}), 512 << 20)
replica = store.origin("a")
replica.resync("s", 1, 1)
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) << 10
resource.setrlimit(resource.RLIMIT_AS, (size + (300 << 20), resource.RLIM_INFINITY))
huge = [Op(OpCode.TRUNCATE, f"u1/f{i}", 200 << 20) for i in range(4)]  # within the budget
first = replica.receive(Batch(1, "s", 1, "index", "u1", payload=encode_ops(huge)))
ok = Op(OpCode.REPLACE, "u1/g", 0, b"y", raw_size=1, result=Result(1, digest(b"y")))
second = replica.receive(Batch(1, "s", 2, "index", "u1", resync=True, payload=encode_ops([ok])))
print(json.dumps([first.ok, first.reason, second.ok]))
"""


def test_memory_error_refuses_the_batch_and_the_receiver_carries_on(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", MEMORY_ERROR, str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    first_ok, reason, second_ok = json.loads(run.stdout)
    assert not first_ok and "MemoryError" in reason
    assert second_ok
