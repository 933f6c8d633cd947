"""Applying ops to working copies of files, in memory, before anything becomes visible.

A `WorkingFile` starts as the replica's visible version and collects a batch's changes. Appends
to an untouched file stay a list of tails (the common case for logs: nothing is re-read, and
the digest is extended from the stored streaming state); any other change materialises the
content. `check` compares size and digest with what the origin announced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from replicator.delta.codec import decompress
from replicator.delta.ops import Codec, Meta, Op, OpCode, Result
from replicator.errors import ApplyError
from replicator.hashing import StreamingDigest


class Budget:
    """The bytes one batch may hold in memory at once: its buffered parts and the working
    copies of its files. Every op asks before it allocates (a TRUNCATE or WRITE that grows a
    file, a COPY, a decompression of `raw_size` bytes), so a small hostile batch cannot
    make the receiver allocate more than the limit, whatever its ops announce."""

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit, self.used = limit, used

    def take(self, nbytes: int, what: str) -> None:
        """Count `nbytes` more; ApplyError (the batch is refused) beyond the limit."""
        if nbytes <= 0:
            return
        if self.used + nbytes > self.limit:
            raise ApplyError(f"{what}: the batch would hold {self.used + nbytes} bytes in "
                             f"memory, over its budget of {self.limit}")
        self.used += nbytes


UNBOUNDED = 1 << 62


@dataclass(frozen=True)
class Patch:
    """How a working copy differs from the visible file it was loaded from, when it can be
    written in place: `extents` (offset, end) of the new content to write, sorted and merged,
    and `before`, the visible bytes each write covered, in the order written (written back in
    reverse order, they restore the file, cut back to `old_size`)."""

    old_size: int
    extents: list[tuple[int, int]]
    before: list[tuple[int, bytes]]


class WorkingFile:
    """One file's state during a batch."""

    def __init__(self, path: str, exists: bool, load: Callable[[], bytes | bytearray],
                 visible_digest: Callable[[], StreamingDigest],
                 budget: Budget | None = None) -> None:
        self.budget = budget if budget is not None else Budget(UNBOUNDED)
        self._charged = 0  # bytes of this working copy counted in the budget
        self.path = path
        self.exists = exists
        self.existed = exists
        self.meta: Meta | None = None
        self.tails: list[bytes] = []
        self._content: bytearray | None = None if exists else bytearray()
        self._load = load
        self._visible_digest = visible_digest
        self._digest: StreamingDigest | None = None
        # while the copy is the visible file plus writes (no replace, copy, delete or cut):
        # the visible file's size, what the writes changed, and what they covered
        self._base_size: int | None = None
        self._extents: list[tuple[int, int]] = []
        self._before: list[tuple[int, bytes]] = []
        self._covered = 0  # bytes in _before

    @property
    def materialized(self) -> bool:
        return self._content is not None

    @property
    def size(self) -> int:
        if self._content is not None:
            return len(self._content)
        return self._visible_digest().size + sum(len(t) for t in self.tails)

    def content(self) -> bytes:
        """The whole current content (materialising it)."""
        return bytes(self._materialize())

    def view(self) -> memoryview:
        """The whole current content without a copy, valid until the next op."""
        return memoryview(self._materialize())

    def apply(self, op: Op, max_size: int, source: WorkingFile | None = None) -> None:
        """Apply one file op; ApplyError if it cannot be (too big, missing file, bad data)."""
        self._digest = None
        if op.code == OpCode.COPY:
            if source is None or not source.exists:
                raise ApplyError(f"{self.path}: copy source {op.source!r} is missing")
            self._charge(source.size, 0)
            self._replace(source.content())
        elif op.code == OpCode.DELETE:
            self.exists, self._content, self.tails = False, bytearray(), []
            self._no_patch()
        elif op.code == OpCode.META:
            self._require_exists(op)
        else:
            self._apply_data(op, max_size)
        if op.meta is not None:
            self.meta = op.meta

    def _apply_data(self, op: Op, max_size: int) -> None:
        end = op.offset + op.raw_size if op.code == OpCode.WRITE else op.offset
        if op.raw_size > max_size or end > max_size:
            raise ApplyError(f"{self.path}: op of {op.raw_size} bytes at {op.offset} exceeds "
                             f"the limit of {max_size} bytes")
        if op.code == OpCode.REPLACE:
            delta = op.codec == Codec.ZSTD_DELTA
            self._charge(op.raw_size + (self.size if delta else 0), op.raw_size)
            base = self.content() if delta else None
            self._replace(decompress(op.data, op.codec, op.raw_size, base=base))
        elif op.code == OpCode.WRITE:
            if self._content is None and op.offset == self.size:  # kept as a tail
                self._charge(self._charged + op.raw_size, 0)
            else:
                self._charge(max(self.size, end), op.raw_size)
            self._write(op.offset, decompress(op.data, op.codec, op.raw_size, base=None))
        elif op.code == OpCode.TRUNCATE:
            self._charge(max(self.size, op.offset), 0)
            content = self._materialize()
            if op.offset < len(content):
                del content[op.offset :]
                self._no_patch()  # a file cut shorter is written whole
            else:
                self._extents.append((len(content), op.offset))
                content.extend(bytes(op.offset - len(content)))
        else:
            raise ApplyError(f"{self.path}: {op.code.name} is not a file operation")
        self.exists = True

    def _charge(self, size: int, scratch: int) -> None:
        """Ask the budget for this copy to hold `size` bytes in memory, plus `scratch` bytes
        alive while the op runs (a decompressed chunk), before allocating either."""
        grow = max(0, size - self._charged)
        self.budget.take(grow + scratch, f"{self.path}: {size} bytes")
        self.budget.used -= scratch
        self._charged += grow

    def _write(self, offset: int, data: bytes) -> None:
        if self._content is None and offset == self.size:
            self.tails.append(data)
            return
        content = self._materialize()
        if self._base_size is not None:
            self._note_write(content, offset, len(data))
        if offset > len(content):
            content.extend(bytes(offset - len(content)))
        content[offset : offset + len(data)] = data

    def _note_write(self, content: bytearray, offset: int, length: int) -> None:
        """Record a write for the patch: its extent, and the bytes of the visible file it
        covers (counted in the budget: a hostile batch rewriting one region over and over
        must not pile up copies of it). Once they would exceed the file's size, patching is
        given up: the copy is written whole."""
        assert self._base_size is not None
        end = min(offset + length, self._base_size)
        if offset < end:
            if self._covered + end - offset > self._base_size:
                self._no_patch()
                return
            self.budget.take(end - offset, f"{self.path}: bytes a patch covers")
            self._before.append((offset, bytes(content[offset:end])))
            self._covered += end - offset
        self._extents.append((min(offset, len(content)), offset + length))

    def _no_patch(self) -> None:
        """The copy will be written whole: what a patch needed is dropped."""
        self.budget.used -= self._covered
        self._base_size, self._extents, self._before, self._covered = None, [], [], 0

    def _replace(self, data: bytes) -> None:
        self._content, self.tails, self.exists = bytearray(data), [], True
        self._no_patch()

    def _materialize(self) -> bytearray:
        if self._content is None:
            loaded = self._load()  # a loader that hands over a buffer of its own saves a copy
            self._content = loaded if isinstance(loaded, bytearray) else bytearray(loaded)
            self._base_size = len(self._content)
            for tail in self.tails:
                self._extents.append((len(self._content), len(self._content) + len(tail)))
                self._content += tail
            self.tails = []
        return self._content

    def patch(self) -> Patch | None:
        """The in-place form of this copy's changes (None: it must be written whole). Only a
        copy loaded from the visible file and changed by writes and growth has one."""
        if self._content is None or self._base_size is None or not self.exists:
            return None
        merged: list[tuple[int, int]] = []
        for start, end in sorted(self._extents):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            elif start < end:
                merged.append((start, end))
        return Patch(self._base_size, merged, list(self._before))

    def _require_exists(self, op: Op) -> None:
        if not self.exists:
            raise ApplyError(f"{self.path}: {op.code.name} on a file the replica does not have")

    def digest(self) -> StreamingDigest:
        """Streaming digest of the current content (cached until the next op)."""
        if self._digest is None:
            if self._content is not None:
                self._digest = StreamingDigest(self._content)
            else:
                self._digest = self._visible_digest().extended(b"".join(self.tails))
        return self._digest

    def check(self, expected: Result) -> None:
        """ApplyError unless the working copy is exactly what the origin has."""
        if not self.exists:
            raise ApplyError(f"{self.path}: origin has it ({expected.size} bytes), replica not")
        state = self.digest()
        if state.size != expected.size or state.digest() != expected.digest:
            raise ApplyError(f"{self.path}: after the batch the replica copy has {state.size} "
                             f"bytes, digest {state.digest().hex()[:16]}; origin has "
                             f"{expected.size} bytes, digest {expected.digest.hex()[:16]}")


def apply_in_memory(files: Mapping[str, bytes], ops: list[Op],
                    max_size: int = 1 << 40) -> dict[str, bytes]:
    """The file set after `ops`, computed purely in memory (tests and tools)."""
    work: dict[str, WorkingFile] = {}

    def visible(path: str) -> WorkingFile:
        data = files.get(path)
        return WorkingFile(path, data is not None, lambda: data or b"",
                           lambda: StreamingDigest(data or b""))

    def working(path: str) -> WorkingFile:
        if path not in work:
            work[path] = visible(path)
        return work[path]

    for op in ops:
        if op.code in (OpCode.ENSURE_DIR, OpCode.KEEP_ONLY):
            continue
        source = visible(op.source) if op.code == OpCode.COPY else None
        target = working(op.path)
        target.apply(op, max_size, source)
        if op.result is not None:
            target.check(op.result)
    result = dict(files)
    for path, wf in work.items():
        if wf.exists:
            result[path] = wf.content()
        else:
            result.pop(path, None)
    return result
