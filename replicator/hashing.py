"""xxh3 digests used everywhere a file's content is named.

A file's identity on the wire is its xxh3-128 digest (16 bytes); frames use xxh3-64. Streaming
hashers let the receiver verify an append without re-reading what it already holds.
"""

from __future__ import annotations

import xxhash

DIGEST_SIZE = 16
EMPTY_DIGEST = xxhash.xxh3_128(b"").digest()


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """The xxh3-128 digest of `data`, as 16 big-endian bytes."""
    return xxhash.xxh3_128(data).digest()


def frame_checksum(*parts: bytes | bytearray | memoryview) -> int:
    """The xxh3-64 of the concatenation of `parts`, without concatenating them."""
    hasher = xxhash.xxh3_64()
    for part in parts:
        hasher.update(part)
    return hasher.intdigest()


def block_hashes(data: bytes | bytearray | memoryview, block_size: int) -> list[int]:
    """xxh3-64 of every `block_size` block, so a changed range is found without the old bytes."""
    view = memoryview(data)
    starts = range(0, len(view), block_size)
    return [xxhash.xxh3_64_intdigest(view[i : i + block_size]) for i in starts]


def hex_digest(value: bytes) -> str:
    """A digest as lowercase hex, for logs and JSON."""
    return value.hex()


class StreamingDigest:
    """xxh3-128 over a growing file: `extended(tail)` gives the digest after an append."""

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._hasher = xxhash.xxh3_128(data)
        self.size = len(data)

    def extended(self, tail: bytes | bytearray | memoryview) -> StreamingDigest:
        """A new state for this content followed by `tail`; this one is left as it was."""
        clone = StreamingDigest.__new__(StreamingDigest)
        clone._hasher = self._hasher.copy()
        clone._hasher.update(tail)
        clone.size = self.size + len(tail)
        return clone

    def digest(self) -> bytes:
        return self._hasher.digest()
