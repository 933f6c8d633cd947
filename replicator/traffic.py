"""What the batches cost against what a whole-file copier would send (DESIGN §7 wire ratio).

For every file a batch changes, a whole-file copier would send the file's new size; we send the
op data (plus framing). Kept per file kind so the benchmark can say where bytes go.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from replicator.delta.ops import OpCode
from replicator.dovecot.filekinds import classify
from replicator.sender.batcher import Draft


class Traffic:
    def __init__(self) -> None:
        self.op_bytes: Counter[str] = Counter()
        self.whole_file_bytes: Counter[str] = Counter()
        self.changes: Counter[str] = Counter()

    def count(self, draft: Draft) -> None:
        for op in draft.ops:
            kind = classify(op.path.rpartition("/")[2]).value
            self.op_bytes[kind] += len(op.data)
            if op.result is not None and op.code != OpCode.META:
                self.whole_file_bytes[kind] += op.result.size
                self.changes[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        op, whole = sum(self.op_bytes.values()), sum(self.whole_file_bytes.values())
        return {"op_bytes": op, "whole_file_bytes": whole,
                "ratio": round(op / whole, 4) if whole else None,
                "by_kind": {k: {"op_bytes": self.op_bytes[k], "whole": self.whole_file_bytes[k],
                                "changes": self.changes[k]} for k in sorted(self.op_bytes)}}
