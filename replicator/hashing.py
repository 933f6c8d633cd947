"""xxh3 digests used everywhere a file's content is named.

A file's identity (on the wire, in manifests, digest journals, verify and promote) is a 16-byte
digest of its content: xxh3-128 of the content for a file of at most one chunk (64 KiB, which
is most of Dovecot's files), and for a longer one xxh3-128 over the xxh3-128 of each 64 KiB
chunk. The tree form lets a file changed in a few places be checked from those chunks and the
chunk digests kept for the rest: a mailbox cache of megabytes is written in place on every
commit, and with a flat digest both daemons read and hashed all of it each time (at 3 000
messages, about 1.1 MB per APPEND on each side). Sizes are always compared beside digests.

Frames use xxh3-64. Streaming states (`StreamingDigest`) let the receiver verify an append, or
a write into a few chunks, without re-reading what it already holds.
"""

from __future__ import annotations

from collections.abc import Mapping

import xxhash

DIGEST_SIZE = 16
CHUNK_SIZE = 64 << 10
_ROOT_SEED = 1  # the tree's root is hashed apart from any chunk's content
EMPTY_DIGEST = xxhash.xxh3_128(b"").digest()

Data = bytes | bytearray | memoryview


def digest(data: Data) -> bytes:
    """The digest of a file holding `data`, as 16 big-endian bytes (see the module)."""
    view = memoryview(data)
    if len(view) <= CHUNK_SIZE:
        return xxhash.xxh3_128_digest(view)
    return _root(chunk_digests(view))


def chunk_digests(data: Data) -> bytes:
    """The xxh3-128 of every CHUNK_SIZE chunk of `data`, concatenated (of b"" for no data)."""
    view = memoryview(data)
    if len(view) <= CHUNK_SIZE:
        return xxhash.xxh3_128_digest(view)
    return b"".join([xxhash.xxh3_128_digest(view[i : i + CHUNK_SIZE])
                     for i in range(0, len(view), CHUNK_SIZE)])


def digest_of_chunks(chunks: bytes) -> bytes:
    """The digest of a file whose chunk digests (`chunk_digests`) are `chunks`."""
    return chunks if len(chunks) <= DIGEST_SIZE else _root(chunks)


def _root(chunks: bytes) -> bytes:
    return xxhash.xxh3_128_digest(chunks, seed=_ROOT_SEED)


def frame_checksum(*parts: Data) -> int:
    """The xxh3-64 of the concatenation of `parts`, without concatenating them."""
    hasher = xxhash.xxh3_64()
    for part in parts:
        hasher.update(part)
    return hasher.intdigest()


def block_hashes(data: Data, block_size: int) -> list[int]:
    """xxh3-64 of every `block_size` block, so a changed range is found without the old bytes."""
    view = memoryview(data)
    starts = range(0, len(view), block_size)
    return [xxhash.xxh3_64_intdigest(view[i : i + block_size]) for i in starts]


def hex_digest(value: bytes) -> str:
    """A digest as lowercase hex, for logs and JSON."""
    return value.hex()


class StreamingDigest:
    """The digest of a file that grows or changes in a few chunks, kept as its finished
    chunks' digests and a hasher over its last chunk: `extended(tail)` gives the state after
    an append, `patched(size, chunks)` after writes into some chunks, neither re-reading the
    rest. Instances are never changed (each call returns a new one)."""

    __slots__ = ("_chunks", "_last", "size")

    def __init__(self, data: Data = b"") -> None:
        view = memoryview(data)
        whole = (len(view) - 1) // CHUNK_SIZE * CHUNK_SIZE if len(view) else 0
        self._chunks = chunk_digests(view[:whole]) if whole else b""  # all but the last
        self._last = xxhash.xxh3_128(view[whole:])
        self.size = len(view)

    def _with(self, chunks: bytes, last: xxhash.xxh3_128, size: int) -> StreamingDigest:
        clone = StreamingDigest.__new__(StreamingDigest)
        clone._chunks, clone._last, clone.size = chunks, last, size
        return clone

    def extended(self, tail: Data) -> StreamingDigest:
        """A new state for this content followed by `tail`; this one is left as it was."""
        view = memoryview(tail)
        if not len(view):
            return self
        chunks, last, size = self._chunks, self._last.copy(), self.size
        used = size - len(chunks) // DIGEST_SIZE * CHUNK_SIZE  # bytes in the last chunk
        finished = []
        while len(view):
            if used == CHUNK_SIZE:  # the last chunk is full and more follows: finish it
                finished.append(last.digest())
                last, used = xxhash.xxh3_128(), 0
            take = view[: CHUNK_SIZE - used]
            last.update(take)
            used += len(take)
            size += len(take)
            view = view[len(take) :]
        return self._with(chunks + b"".join(finished), last, size)

    def patched(self, size: int, chunks: Mapping[int, Data]) -> StreamingDigest:
        """The state once the content is `size` bytes and chunk i holds `chunks[i]` (its whole
        new content), every other chunk unchanged. The last chunk must be among `chunks`
        unless the size is unchanged and it is not changed either; chunks beyond the old
        end must all be given."""
        count = (size + CHUNK_SIZE - 1) // CHUNK_SIZE if size else 1
        old_count = len(self._chunks) // DIGEST_SIZE + 1
        if any(not i < count for i in chunks):
            raise ValueError("a chunk beyond the new size")
        parts = [self._chunks[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]
                 for i in range(min(count - 1, old_count - 1))]
        for index in range(len(parts), count - 1):
            if index not in chunks:
                raise ValueError(f"chunk {index} beyond the old end was not given")
            parts.append(b"")
        for index, content in chunks.items():
            if index < count - 1:
                parts[index] = xxhash.xxh3_128_digest(content)
        if count - 1 in chunks:
            last = xxhash.xxh3_128(chunks[count - 1])
        elif size == self.size:
            last = self._last.copy()
        else:
            raise ValueError("the last chunk changed size but was not given")
        return self._with(b"".join(parts), last, size)

    def digest(self) -> bytes:
        if not self._chunks:
            return self._last.digest()
        return _root(self._chunks + self._last.digest())

