"""The parts of one batch, buffered until its last one arrives, within the batch's bounds.

One batch may hold at most BUDGET_FRAMES x max_frame_bytes in memory (its buffered parts and
its files' working copies, see delta.apply.Budget) and come in at most MAX_PARTS parts; beyond,
it is refused (NACK) before anything more is kept for it. A legitimate batch is far below: the
origin splits batches into parts of max_frame_bytes / 2, and no file exceeds max_frame_bytes.
"""

from __future__ import annotations

from replicator.delta.ops import Op, decode_ops
from replicator.errors import ProtocolError
from replicator.wire.messages import Batch

BUDGET_FRAMES = 4
MAX_PARTS = 64


class Parts:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.clear()

    def clear(self) -> None:
        self.ops: list[Op] = []
        self.expected = 0  # the next part number
        self.bytes = 0  # payload bytes of the parts so far
        self.refused = ""  # why the batch being buffered will be refused

    def add(self, batch: Batch) -> None:
        """Decode and keep one part, unless the batch already went over its bounds (then
        its parts are only counted, and it is refused when its last one arrives)."""
        if batch.part != self.expected:
            raise ProtocolError(f"batch {batch.seq} part {batch.part}, expected {self.expected}")
        self.expected += 1
        self.bytes += len(batch.payload)
        if self.refused:
            return
        if self.expected > MAX_PARTS or self.bytes > self.budget:
            self.refused = (f"batch {batch.seq} has over {MAX_PARTS} parts or {self.budget} "
                            "bytes of them (the receiver's budget)")
            self.ops = []
            return
        try:
            self.ops += decode_ops(batch.payload)
        except MemoryError:
            self.refused, self.ops = f"out of memory decoding batch {batch.seq}", []

    def take(self) -> tuple[list[Op], str, int]:
        """The whole batch's ops, why it is refused ('' if it is not), and its parts' size."""
        taken = self.ops, self.refused, self.bytes
        self.clear()
        return taken
