"""Applying ops to working copies of files, in memory, before anything becomes visible.

A `WorkingFile` starts as the replica's visible version and collects a batch's changes. Appends
to an untouched file stay a list of tails (the common case for logs: nothing is re-read, and
the digest is extended from the stored streaming state). Writes into the file and growth keep
only the 64 KiB chunks they touch, read from the visible file (the common case for caches,
which Dovecot changes in a few places and which reach megabytes): the digest is patched from
the stored chunk digests (replicator.hashing), and the file is patched in place. Any other
change (a replace, a copy, a cut) materialises the whole content. `check` compares size and
digest with what the origin announced.

Both shortcuts trust that the visible file is what its stored digest says, as the receiver
is its only writer; `verify` reads every byte and compares it with the digest journal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from replicator.delta.codec import decompress
from replicator.delta.ops import Codec, Meta, Op, OpCode, Result
from replicator.errors import ApplyError
from replicator.hashing import CHUNK_SIZE, StreamingDigest


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


ReadRange = Callable[[int, int], bytes]  # (offset, length) -> the visible file's bytes there


class WorkingFile:
    """One file's state during a batch: the visible file plus tails (appends), or plus
    changed chunks (`_chunks`, when `read_range` can read the visible file in pieces), or a
    whole content in memory (`_content`)."""

    def __init__(self, path: str, exists: bool, load: Callable[[], bytes | bytearray],
                 visible_digest: Callable[[], StreamingDigest],
                 budget: Budget | None = None, read_range: ReadRange | None = None) -> None:
        self.budget = budget if budget is not None else Budget(UNBOUNDED)
        self._charged = 0  # bytes of this working copy counted in the budget
        self.path = path
        self.exists = exists
        self.existed = exists
        self.meta: Meta | None = None
        self.tails: list[bytes] = []
        self._content: bytearray | None = None if exists else bytearray()
        self._load, self._read_range = load, read_range
        self._visible_digest = visible_digest
        # chunk index -> its current content, for every chunk changed (or read to be)
        self._chunks: dict[int, bytearray] | None = None
        self._size = 0  # the content's size while _chunks is used
        self._digest: StreamingDigest | None = None
        # while the copy is the visible file plus writes (no replace, copy, delete or cut):
        # the visible file's size, what the writes changed, and what they covered
        self._base_size: int | None = None
        self._extents: list[tuple[int, int]] = []
        self._before: list[tuple[int, bytes]] = []
        self._covered = 0  # bytes in _before

    @property
    def materialized(self) -> bool:
        """Whether the file changed beyond appends (it has a patch, or is written whole)."""
        return self._content is not None or self._chunks is not None

    @property
    def size(self) -> int:
        if self._content is not None:
            return len(self._content)
        if self._chunks is not None:
            return self._size
        return self._visible_digest().size + sum(len(t) for t in self.tails)

    def content(self) -> bytes:
        """The whole current content (materialising it)."""
        return bytes(self._materialize())

    def view(self) -> memoryview:
        """The whole current content without a copy, valid until the next op."""
        return memoryview(self._materialize())

    def extent(self, start: int, end: int) -> bytes | memoryview:
        """The current content of [start, end) (a patch's extent), without materialising
        the rest."""
        if self._content is not None or self._chunks is None:
            return self.view()[start:end]
        first, last = start // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        joined = b"".join(self._chunk(i) for i in range(first, last + 1))
        return memoryview(joined)[start - first * CHUNK_SIZE : end - first * CHUNK_SIZE]

    def apply(self, op: Op, max_size: int, source: WorkingFile | None = None) -> None:
        """Apply one file op; ApplyError if it cannot be (too big, missing file, bad data)."""
        self._digest = None
        if op.code == OpCode.COPY:
            if source is None or not source.exists:
                raise ApplyError(f"{self.path}: copy source {op.source!r} is missing")
            self._charge(source.size, 0)
            self._replace(source.content())
        elif op.code == OpCode.DELETE:
            self.exists, self._content, self._chunks, self.tails = False, bytearray(), None, []
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
            if self._content is None and self._chunks is None and op.offset == self.size:
                self._charge(self._charged + op.raw_size, 0)  # kept as a tail
            elif self._in_chunks():
                self._charge(self._charged, op.raw_size)
            else:
                self._charge(max(self.size, end), op.raw_size)
            self._write(op.offset, decompress(op.data, op.codec, op.raw_size, base=None))
        elif op.code == OpCode.TRUNCATE:
            if op.offset >= self.size and self._in_chunks():
                self._grow(op.offset)
            else:
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

    def _in_chunks(self) -> bool:
        """Whether changes are kept as changed chunks: switch to that from the visible file
        (and its tails) when the visible file can be read in pieces."""
        if self._chunks is not None:
            return True
        if self._content is not None or self._read_range is None or not self.exists:
            return False
        self._size = self._base_size = self._visible_digest().size
        self._chunks = {}
        tails, self.tails = self.tails, []
        for tail in tails:
            self._write(self._size, tail)
        return True

    def _chunk(self, index: int) -> bytearray:
        """Chunk `index` as it is now: read from the visible file the first time (zeros
        where the file grew), counted in the budget."""
        assert self._chunks is not None and self._base_size is not None
        chunk = self._chunks.get(index)
        if chunk is None:
            start = index * CHUNK_SIZE
            length = max(0, min(CHUNK_SIZE, self._size - start))
            self._charge(self._charged + CHUNK_SIZE, 0)
            seen = max(0, min(length, self._base_size - start))
            assert self._read_range is not None
            chunk = bytearray(self._read_range(start, seen) if seen else b"")
            if len(chunk) != seen:
                raise ApplyError(f"{self.path}: has fewer bytes than its digest says")
            chunk.extend(bytes(length - seen))
            self._chunks[index] = chunk
        return chunk

    def _grow(self, size: int) -> None:
        """Changed chunks: the content becomes `size` bytes, the new ones zeros."""
        assert self._chunks is not None
        if size <= self._size:
            return
        self._extents.append((self._size, size))
        last = (self._size - 1) // CHUNK_SIZE if self._size else -1
        if last in self._chunks:  # it holds what was the end: zeros after it now
            chunk = self._chunks[last]
            chunk.extend(bytes(min(CHUNK_SIZE, size - last * CHUNK_SIZE) - len(chunk)))
        self._size = size

    def _write_chunks(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset > self._size:
            self._grow(offset)
        for index in range(offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1 if data else 0):
            start = index * CHUNK_SIZE
            chunk = self._chunk(index)
            low, high = max(offset, start), min(end, start + CHUNK_SIZE)
            if len(chunk) < high - start:
                chunk.extend(bytes(high - start - len(chunk)))
            if self._base_size is not None:
                self._note_write(chunk, low - start, high - low, start)
            chunk[low - start : high - start] = data[low - offset : high - offset]
        self._size = max(self._size, end)

    def _write(self, offset: int, data: bytes) -> None:
        if self._content is None and self._chunks is None and offset == self.size:
            self.tails.append(data)
            return
        if self._chunks is not None:
            assert self._base_size is not None
            if self._covered + max(0, min(offset + len(data), self._base_size) - offset) \
                    <= self._base_size:
                self._write_chunks(offset, data)
                return
            self._materialize()  # the patch would cover more than the file: written whole
            self._no_patch()
        content = self._materialize()
        if self._base_size is not None:
            self._note_write(content, offset, len(data))
        if offset > len(content):
            content.extend(bytes(offset - len(content)))
        content[offset : offset + len(data)] = data

    def _note_write(self, content: bytearray, offset: int, length: int, at: int = 0) -> None:
        """Record a write of `length` bytes at `offset` of `content` (which starts at byte `at`
        of the file: a chunk, or 0 for the whole content) for the patch: its extent, and the
        bytes of the visible file it covers (counted in the budget: a hostile batch
        rewriting one region over and over must not pile up copies of it). Once they would
        exceed the file's size, patching is given up: the copy is written whole."""
        assert self._base_size is not None
        end = min(at + offset + length, self._base_size) - at
        if offset < end:
            if self._covered + end - offset > self._base_size:
                self._no_patch()
                return
            self.budget.take(end - offset, f"{self.path}: bytes a patch covers")
            self._before.append((at + offset, bytes(content[offset:end])))
            self._covered += end - offset
        self._extents.append((at + min(offset, len(content)), at + offset + length))

    def _no_patch(self) -> None:
        """The copy will be written whole: what a patch needed is dropped."""
        self.budget.used -= self._covered
        self._base_size, self._extents, self._before, self._covered = None, [], [], 0

    def _replace(self, data: bytes) -> None:
        self._content, self._chunks, self.tails, self.exists = bytearray(data), None, [], True
        self._no_patch()

    def _materialize(self) -> bytearray:
        if self._content is None and self._chunks is not None:  # the changed chunks on top
            self._charge(max(self._size, self._visible_digest().size), 0)
            chunks, self._chunks = self._chunks, None
            loaded = self._load()
            content = loaded if isinstance(loaded, bytearray) else bytearray(loaded)
            del content[self._size :]
            content.extend(bytes(self._size - len(content)))
            for index, chunk in chunks.items():
                content[index * CHUNK_SIZE : index * CHUNK_SIZE + len(chunk)] = chunk
            self._content = content
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
        if not self.materialized or self._base_size is None or not self.exists:
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
            elif self._chunks is not None:
                self._digest = self._visible_digest().patched(self._size, self._changed())
            else:
                self._digest = self._visible_digest().extended(b"".join(self.tails))
        return self._digest

    def _changed(self) -> dict[int, bytearray]:
        """Every chunk that may differ from the visible file's: those written, and from the
        visible file's last chunk on when the size changed."""
        assert self._chunks is not None and self._base_size is not None
        if self._size != self._base_size:
            first = (min(self._size, self._base_size) - 1) // CHUNK_SIZE if self._size else 0
            for index in range(max(first, 0), (self._size - 1) // CHUNK_SIZE + 1):
                self._chunk(index)
        return self._chunks

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
