"""Streaming digests of what replicas hold of append-mostly files (logs, uidlists), so a change
that only appended is read from the old end: the bytes replicas already hold are not read again.

Reading only the tail trusts that nothing before it changed in place. Dovecot appends to these
files and otherwise replaces them by rename (a new inode, which is always read whole); the one
in-place write it makes is to a log's header (marking the log corrupted), so a tail read also
reads the first HEAD_BYTES and compares their digest with the shipped ones (files shorter than
that are always read whole). As a last net, every WHOLE_READ_EVERY-th read of a file is whole,
and the encoder compares it with what was shipped, as it does for every whole read. The states
are an LRU bounded in count (about 0.7 KB each): a file that fell out is read whole once, which
is always correct, only slower.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from replicator.hashing import StreamingDigest, digest

WHOLE_READ_EVERY = 64
HEAD_BYTES = 4096
DEFAULT_MAX_FILES = 16384


@dataclass(frozen=True)
class TailState:
    """What replicas hold of a file: its streaming digest, the digest of its head, and how
    many tail reads in a row produced it."""

    digest: StreamingDigest
    head: bytes
    tail_reads: int = 0

    @property
    def size(self) -> int:
        return self.digest.size

    @classmethod
    def whole(cls, content: bytes) -> TailState:
        """The state of a file read (and shipped) whole."""
        return cls(StreamingDigest(content), digest(content[:HEAD_BYTES]))

    def extended(self, tail: bytes) -> TailState:
        """The state once `tail` is appended (the head, at least HEAD_BYTES, is unchanged)."""
        return TailState(self.digest.extended(tail), self.head, self.tail_reads + 1)


class TailStates:
    def __init__(self, max_files: int = DEFAULT_MAX_FILES) -> None:
        self.max_files = max_files
        self._items: OrderedDict[tuple[str, str], TailState] = OrderedDict()

    def for_tail_read(self, root: str, path: str) -> TailState | None:
        """What a tail read of `path` extends, or None: unknown, too short, or due for a
        whole read."""
        entry = self._items.get((root, path))
        if entry is None or entry.tail_reads >= WHOLE_READ_EVERY or entry.size < HEAD_BYTES:
            return None
        self._items.move_to_end((root, path))
        return entry

    def put(self, root: str, path: str, state: TailState) -> None:
        """Record what replicas hold of `path` once the batch just built is applied."""
        self._items.pop((root, path), None)
        self._items[(root, path)] = state
        while len(self._items) > self.max_files:
            self._items.popitem(last=False)

    def discard(self, root: str, path: str) -> None:
        self._items.pop((root, path), None)
