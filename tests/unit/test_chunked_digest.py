"""A file's digest (replicator.hashing): flat for one chunk, a hash of chunk digests beyond, and
the streaming states that follow appends and writes into a few chunks without the rest."""

from __future__ import annotations

import random

import pytest
import xxhash

from replicator.hashing import CHUNK_SIZE, StreamingDigest, chunk_digests, digest

SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 7]


@pytest.mark.parametrize("size", SIZES)
def test_a_file_of_one_chunk_keeps_its_flat_digest_and_a_longer_one_does_not(size: int) -> None:
    data = random.Random(size).randbytes(size)
    flat = xxhash.xxh3_128(data).digest()
    assert (digest(data) == flat) == (size <= CHUNK_SIZE)
    assert StreamingDigest(data).digest() == digest(data)
    assert len(chunk_digests(data)) == 16 * max(1, -(-size // CHUNK_SIZE))


def test_any_changed_byte_or_length_changes_the_digest() -> None:
    rng = random.Random(5)
    data = bytearray(rng.randbytes(3 * CHUNK_SIZE + 100))
    seen = {digest(data)}
    for position in (0, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 50, len(data) - 1):
        data[position] ^= 1
        seen.add(digest(data))
        data[position] ^= 1
    seen |= {digest(data[:-1]), digest(data + b"\0"), digest(data[CHUNK_SIZE:])}
    assert len(seen) == 9


def test_streaming_states_follow_appends_and_writes_into_some_chunks() -> None:
    """Random appends of every length (across chunk borders, exactly to one) and random
    writes, each checked against the digest of the whole content computed from scratch;
    the state a call started from is left as it was."""
    rng = random.Random(1611)
    for _ in range(300):
        size = rng.choice([0, 1, CHUNK_SIZE, rng.randrange(5 * CHUNK_SIZE)])
        data = bytearray(rng.randbytes(size))
        state = StreamingDigest(data)
        tail = rng.randbytes(rng.choice([0, 1, CHUNK_SIZE, CHUNK_SIZE - len(data) % CHUNK_SIZE,
                                         rng.randrange(3 * CHUNK_SIZE)]))
        assert state.extended(tail).digest() == digest(data + tail)
        new = bytearray(data)
        for _ in range(rng.randrange(4)):
            offset, length = rng.randrange(len(new) + CHUNK_SIZE), rng.randrange(CHUNK_SIZE + 9)
            new[len(new):] = bytes(max(0, offset - len(new)))
            new[offset:offset + length] = rng.randbytes(length)
        count, old_last = max(1, -(-len(new) // CHUNK_SIZE)), max(0, len(data) - 1) // CHUNK_SIZE
        chunks = [slice(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) for i in range(count)]
        given = {i: new[at] for i, at in enumerate(chunks)
                 if new[at] != data[at] or (len(new) != len(data) and i >= old_last)}
        patched = state.patched(len(new), given)
        assert (patched.size, patched.digest()) == (len(new), digest(new))
        assert patched.extended(tail).digest() == digest(new + tail)
        assert state.digest() == digest(data)


def test_a_patch_that_leaves_out_a_chunk_it_needs_is_refused() -> None:
    state = StreamingDigest(bytes(2 * CHUNK_SIZE + 10))
    with pytest.raises(ValueError, match="last chunk"):
        state.patched(2 * CHUNK_SIZE + 20, {})
    with pytest.raises(ValueError, match="chunk 2 beyond the old end"):
        state.patched(4 * CHUNK_SIZE, {3: bytes(CHUNK_SIZE)})
    with pytest.raises(ValueError, match="beyond the new size"):
        state.patched(10, {1: b"x"})
