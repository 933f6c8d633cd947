"""Numbered batches, kept until every peer has them, and who has acknowledged what.

Every batch gets the next seq of this run's stream and is encoded once into frames (large
batches span several frames, `part`/`final`), shared by all peers. The outbox keeps batches
until all peers acknowledged them, up to `retain_bytes`; a peer that falls further behind, or
reconnects after the window moved on, is brought back by a manifest resync instead. Per peer it
tracks the cumulative ack and the directories the peer reported broken (NACK), which only a
later acknowledged resync batch of that directory clears. `wait_replicated` is what the sync
commit plugin waits on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from replicator.delta.ops import MAX_OPS_PER_PART, encode_ops
from replicator.sender.batcher import DirKey, Draft
from replicator.wire.frames import encode_frame
from replicator.wire.messages import Batch

FRAME_OVERHEAD = 1024


@dataclass
class Numbered:
    seq: int
    key: DirKey
    resync: bool
    frames: list[bytes]
    created: float
    ops: int

    @property
    def size(self) -> int:
        return sum(len(f) for f in self.frames)


@dataclass
class PeerCursor:
    """How far one peer got in this stream. Until `synced` (the peer resumed from a position
    in this stream, or a manifest resync told us what it holds) it holds nothing we can count:
    `acked` 0 would otherwise pass for "holds everything numbered so far" while nothing is
    numbered yet, and a BARRIER or FLUSH right after start would say OK for a peer that has
    not even connected. A peer is unsynced again from the moment its connection ends: one that
    rebooted lost its tmpfs, and only its next HELLO says what it still holds."""

    acked: int = 0
    synced: bool = False
    broken: dict[DirKey, int] = field(default_factory=dict)
    fenced: set[str] = field(default_factory=set)  # users whose batches it refused (token)
    connected: bool = False
    lag: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


class Outbox:
    def __init__(self, stream: str, epoch: int, peers: Iterable[str], *, retain_bytes: int,
                 max_frame_bytes: int) -> None:
        self.stream, self.epoch = stream, epoch
        self.retain_bytes, self.max_frame_bytes = retain_bytes, max_frame_bytes
        self.next_seq = 1
        self.cursors = {peer: PeerCursor() for peer in peers}
        self._batches: deque[Numbered] = deque()
        self._retained = 0
        self._last_seq: dict[DirKey, int] = {}
        self._last_resync: dict[DirKey, int] = {}
        self._waiters: list[tuple[int, frozenset[DirKey], int, asyncio.Future[list[str]]]] = []

    def add(self, draft: Draft) -> Numbered:
        """Number `draft` and keep it for every peer."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        key = (draft.root, draft.reldir)
        frames = self._frames(seq, draft)
        numbered = Numbered(seq, key, draft.resync, frames, time.monotonic(), len(draft.ops))
        self._batches.append(numbered)
        self._retained += numbered.size
        self._last_seq[key] = seq
        if draft.resync:
            self._last_resync[key] = seq
        self._trim()
        return numbered

    def _frames(self, seq: int, draft: Draft) -> list[bytes]:
        limit = self.max_frame_bytes // 2 - FRAME_OVERHEAD
        parts: list[list[bytes]] = [[]]
        size = 0
        for op in draft.ops:
            encoded = encode_ops([op])
            # a new part when this one is full in bytes, or in operations (the receiver's
            # decoder refuses a payload of more than MAX_OPS_PER_PART)
            if parts[-1] and (size + len(encoded) > limit or len(parts[-1]) >= MAX_OPS_PER_PART):
                parts.append([])
                size = 0
            parts[-1].append(encoded)
            size += len(encoded)
        return [
            encode_frame(Batch(self.epoch, self.stream, seq, draft.root, draft.reldir,
                               draft.resync, index, index == len(parts) - 1, draft.token,
                               b"".join(chunks)).to_frame())
            for index, chunks in enumerate(parts)
        ]

    def after(self, seq: int) -> list[Numbered] | None:
        """Batches numbered above `seq`, or None if some of them are no longer retained."""
        if seq + 1 >= self.next_seq:
            return []
        if not self._batches or self._batches[0].seq > seq + 1:
            return None
        return list(itertools.islice(self._batches, seq + 1 - self._batches[0].seq, None))

    def last_seq(self, key: DirKey) -> int:
        return self._last_seq.get(key, 0)

    def ack(self, peer: str, seq: int) -> None:
        cursor = self.cursors[peer]
        if seq <= cursor.acked:
            return
        now = time.monotonic()
        # Retained seqs are consecutive: index straight to the newly acknowledged ones (a
        # peer that is down keeps many batches here; the others' acks must not walk them).
        first = self._batches[0].seq if self._batches else seq + 1
        for index in range(max(cursor.acked + 1 - first, 0),
                           min(seq + 1 - first, len(self._batches))):
            batch = self._batches[index]
            cursor.lag.append(now - batch.created)
            if batch.resync and cursor.broken.get(batch.key, batch.seq) < batch.seq:
                del cursor.broken[batch.key]
        cursor.acked = seq
        self._trim()
        self._wake_waiters()

    def nack(self, peer: str, seq: int, key: DirKey) -> bool:
        """Record a NACK; True if a resync of `key` must be queued (none numbered after it).
        A NACK for a directory this stream never sent a batch of is ignored: the peer is
        confused or hostile, and marking it broken would fail every wait that names it."""
        if key not in self._last_seq:
            return False
        cursor = self.cursors[peer]
        cursor.broken[key] = max(seq, cursor.broken.get(key, 0))
        return self._last_resync.get(key, 0) <= seq

    def fenced(self, peer: str, key: DirKey) -> None:
        """`peer` refused a batch of `key` for a stale fencing token: another node owns that
        user for it. Nothing of the user counts as held by `peer` until this node owns the user
        again (`forgive`); resending would be refused the same way."""
        self.cursors[peer].fenced.add(key[1].partition("/")[0])

    def forgive(self, users: set[str]) -> None:
        """This node (again) owns `users` under a new token: peers' refusals are history."""
        for cursor in self.cursors.values():
            cursor.fenced -= users

    def reported_broken(self, peer: str, dirs: Iterable[str]) -> list[DirKey]:
        """The replica says (HELLO) it holds `dirs` (`root/dir`) broken: none of them counts as
        held by `peer` until a resync batch numbered from now on is acknowledged. Returns the
        directories that need one queued."""
        cursor, seq = self.cursors[peer], self.next_seq - 1
        keys = []
        for text in dirs:
            root, _, reldir = text.partition("/")
            key = (root, reldir)
            cursor.broken[key] = max(seq, cursor.broken.get(key, 0))
            if self._last_resync.get(key, 0) <= seq:
                keys.append(key)
        return keys

    def _trim(self) -> None:
        floor = min((c.acked for c in self.cursors.values()), default=self.next_seq)
        while self._batches and (self._batches[0].seq <= floor
                                 or self._retained > self.retain_bytes):
            self._retained -= self._batches.popleft().size

    def last_keys(self) -> list[DirKey]:
        """Every directory a batch was ever numbered for in this stream."""
        return list(self._last_seq)

    async def wait_replicated(self, keys: frozenset[DirKey], quorum: int, timeout: float,
                              target: int | None = None) -> list[str]:
        """Wait until `quorum` peers hold every batch so far for `keys` (or up to `target`);
        the peers, or TimeoutError."""
        if target is None:
            target = max((self.last_seq(k) for k in keys), default=0)
        holders = self._holders(target, keys)
        if len(holders) >= quorum:
            return holders
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        entry = (target, keys, quorum, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _holders(self, target: int, keys: frozenset[DirKey]) -> list[str]:
        return [peer for peer, c in self.cursors.items()
                if c.synced and c.acked >= target and not any(k in c.broken for k in keys)
                and not (c.fenced and any(k[1].partition("/")[0] in c.fenced for k in keys))]

    def mark_disconnected(self, peer: str) -> None:
        """`peer`'s connection ended: until it agrees on a position again, what it acked no
        longer counts (it may have restarted with an empty tmpfs meanwhile)."""
        cursor = self.cursors[peer]
        cursor.connected = cursor.synced = False

    def mark_synced(self, peer: str) -> None:
        """`peer` agreed on its position in this stream: from now on what it acked counts."""
        self.cursors[peer].synced = True
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        for target, keys, quorum, future in list(self._waiters):
            holders = self._holders(target, keys)
            if len(holders) >= quorum and not future.done():
                future.set_result(holders)

    @property
    def retained_bytes(self) -> int:
        return self._retained
