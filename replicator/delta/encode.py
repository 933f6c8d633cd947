"""Choose the smallest set of operations that turns the shipped version of a file into its
current content.

Candidates, tried from cheapest to compute: nothing (same digest), an appended tail (the old
content is an unchanged prefix: logs, uidlists), changed 4 KiB blocks (in-place rewrites such as
the cache header, found from per-block hashes without the old bytes), a zstd delta against the
previous version (whole rewrites such as `dovecot.index`), and the whole file compressed.
Whatever is chosen, the last op carries the resulting size and digest, so a wrong guess can
never corrupt a replica: the receiver refuses it and the directory is resynced.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, replace

from replicator.delta.codec import smallest
from replicator.delta.ops import Codec, Meta, Op, OpCode, Result
from replicator.hashing import (
    CHUNK_SIZE,
    DIGEST_SIZE,
    block_hashes,
    chunk_digests,
    digest,
    digest_of_chunks,
)

BLOCK_SIZE = 4096
OP_OVERHEAD = 48  # bytes an op costs on the wire beyond its data, for comparing candidates


BLOCKS_PER_CHUNK = CHUNK_SIZE // BLOCK_SIZE


@dataclass(frozen=True)
class Shipped:
    """What every replica holds of a file: enough to encode the next change against it."""

    size: int
    digest: bytes
    blocks: array[int] | None  # None: not computed (append-only kinds)
    meta: Meta
    chunks: bytes | None = None  # its chunk digests (replicator.hashing), with `blocks`


def describe(content: bytes, meta: Meta, old: Shipped | None = None, *,
             blocks: bool = True) -> Shipped:
    """The `Shipped` record for `content` once it has been sent, with its block hashes. One
    pass hashes its 64 KiB chunks (which also gives the digest); the 4 KiB block hashes of a
    chunk whose digest equals that chunk's in `old` (what was shipped before) are taken from
    `old`, so a cache of megabytes changed in two places hashes two chunks' blocks again, not
    all of them. Append-only files (logs) skip the block hashes (`blocks=False`): their
    changes are found by the prefix digest instead."""
    if not blocks:
        return Shipped(len(content), digest(content), None, meta)
    chunks = chunk_digests(content)
    if old is None or old.blocks is None or old.chunks is None:
        hashes = array("Q", block_hashes(content, BLOCK_SIZE))
    else:
        hashes = array("Q")
        view = memoryview(content)
        for start in range(0, len(chunks), DIGEST_SIZE):
            first = start // DIGEST_SIZE * BLOCKS_PER_CHUNK
            if chunks[start : start + DIGEST_SIZE] == old.chunks[start : start + DIGEST_SIZE]:
                hashes.extend(old.blocks[first : first + BLOCKS_PER_CHUNK])
            else:
                offset = first * BLOCK_SIZE
                hashes.extend(block_hashes(view[offset : offset + CHUNK_SIZE], BLOCK_SIZE))
        del hashes[(len(content) + BLOCK_SIZE - 1) // BLOCK_SIZE :]  # b"": one chunk, no block
    return Shipped(len(content), digest_of_chunks(chunks), hashes, meta, chunks)


# Changed blocks that cost at most 1/RANGES_WIN of a file's size are shipped without also
# compressing the whole file to compare (without a base, that is plain zstd of all of it, which
# would be several times bigger): a cache is rewritten in place on every commit, and for a
# mailbox of 5 000 messages (a 1.7 MB cache) that compression was a third of the sender's CPU.
RANGES_WIN = 16


def encode_file(path: str, old: Shipped | None, base: bytes | None, new: bytes,
                shipped_new: Shipped) -> list[Op]:
    """Ops turning `old` (whose bytes are `base` when still cached) into `new`."""
    result = Result(shipped_new.size, shipped_new.digest)
    if old is not None and old.digest == result.digest and old.size == result.size:
        if old.meta == shipped_new.meta:
            return []
        return [Op(OpCode.META, path, result=result, meta=shipped_new.meta)]
    if old is not None:
        tail = _append(path, old, new, shipped_new)
        if tail is not None:
            return _finish(tail, result, shipped_new.meta)
    candidates = []
    if old is not None and old.blocks is not None and shipped_new.blocks is not None:
        ranges = _ranges(path, old.blocks, old.size, new, shipped_new.blocks)
        if base is None and _cost(ranges) * RANGES_WIN <= len(new):
            return _finish(ranges, result, shipped_new.meta)
        candidates.append(ranges)
    candidates.append(_whole(path, new, base))
    best = min(candidates, key=_cost)
    return _finish(best, result, shipped_new.meta)


def encode_tail(path: str, offset: int, tail: bytes, shipped_new: Shipped) -> list[Op]:
    """Ops for a file known to be its shipped `offset` bytes followed by `tail` (read from its
    old end, capture.tailstate): a WRITE there, or only the metadata if nothing was appended
    (the caller leaves out a file whose metadata did not change either)."""
    result = Result(shipped_new.size, shipped_new.digest)
    if not tail:
        return [Op(OpCode.META, path, result=result, meta=shipped_new.meta)]
    return _finish([_write(path, offset, tail)], result, shipped_new.meta)


def finish_copy(copy: Op, ops: list[Op], new: Shipped) -> list[Op]:
    """A COPY followed by the ops that adjust the copied content; the last carries the result."""
    if ops:
        return [copy, *ops]
    return [replace(copy, result=Result(new.size, new.digest), meta=new.meta)]


def _cost(ops: list[Op]) -> int:
    return sum(len(op.data) + OP_OVERHEAD for op in ops)


def _finish(ops: list[Op], result: Result, meta: Meta) -> list[Op]:
    return [*ops[:-1], replace(ops[-1], result=result, meta=meta)]


def _whole(path: str, new: bytes, base: bytes | None) -> list[Op]:
    codec, data = smallest(new, base=base)
    return [Op(OpCode.REPLACE, path, data=data, codec=codec, raw_size=len(new))]


def _append(path: str, old: Shipped, new: bytes, shipped_new: Shipped) -> list[Op] | None:
    if len(new) < old.size or not _holds_prefix(old, new, shipped_new):
        return None
    return [_write(path, old.size, new[old.size :])]


def _holds_prefix(old: Shipped, new: bytes, shipped_new: Shipped) -> bool:
    """Whether `new` starts with what `old` describes. With both sides' chunk digests, the
    old file's whole chunks are compared by digest and only its last, partial chunk is hashed
    again: a cache written at its head (every commit) fails at the first chunk, with nothing
    hashed, where the digest of the whole prefix was a second pass over the file."""
    if old.chunks is None or shipped_new.chunks is None or old.size <= CHUNK_SIZE:
        return digest(memoryview(new)[: old.size]) == old.digest
    whole, rest = divmod(old.size, CHUNK_SIZE)
    if shipped_new.chunks[: whole * DIGEST_SIZE] != old.chunks[: whole * DIGEST_SIZE]:
        return False
    start = whole * CHUNK_SIZE
    return not rest or chunk_digests(memoryview(new)[start : old.size]) \
        == old.chunks[whole * DIGEST_SIZE :]


def _write(path: str, offset: int, raw: bytes) -> Op:
    codec, data = smallest(raw)
    return Op(OpCode.WRITE, path, offset=offset, data=data, codec=codec, raw_size=len(raw))


def _ranges(path: str, old_blocks: array[int], old_size: int, new: bytes,
            new_blocks: array[int]) -> list[Op]:
    ops = [
        _write(path, start, new[start:end])
        for start, end in changed_ranges(old_blocks, new_blocks, len(new), BLOCK_SIZE)
    ]
    if len(new) < old_size or not ops:
        ops.append(Op(OpCode.TRUNCATE, path, offset=len(new)))
    return ops


def changed_ranges(old: array[int], new: array[int], size: int,
                   block: int) -> list[tuple[int, int]]:
    """Byte ranges of `new` whose blocks differ from `old`, adjacent blocks merged."""
    ranges: list[tuple[int, int]] = []
    for index, value in enumerate(new):
        if index < len(old) and old[index] == value:
            continue
        start, end = index * block, min(size, (index + 1) * block)
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


__all__ = ["BLOCK_SIZE", "Codec", "Shipped", "describe", "encode_file", "encode_tail",
           "finish_copy"]
