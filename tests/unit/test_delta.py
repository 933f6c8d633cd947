"""Every encoder/decoder pair: decode(encode(old, new)) == new, for any old and new."""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.delta.apply import apply_in_memory
from replicator.delta.encode import BLOCK_SIZE, describe, encode_file, finish_copy
from replicator.delta.ops import Codec, Meta, Op, OpCode, decode_ops, encode_ops
from replicator.errors import ApplyError, ProtocolError
from replicator.hashing import CHUNK_SIZE, digest

META = Meta(0o600, 8, 8, 1_700_000_000_000_000_000)
OTHER_META = Meta(0o640, 8, 8, 1_700_000_000_000_000_001)


def roundtrip(old: bytes | None, new: bytes, *, cached_base: bool = True,
              blocks: bool = True) -> list[Op]:
    """Encode old->new, push the ops through the wire codec, apply them; return the ops."""
    shipped_old = describe(old, META) if old is not None else None
    shipped_new = describe(new, OTHER_META, shipped_old)
    if not blocks:
        shipped_old = replace(shipped_old, blocks=None) if shipped_old else None
        shipped_new = replace(shipped_new, blocks=None)
    base = old if cached_base else None
    ops = encode_file("f", shipped_old, base, new, shipped_new)
    wire = decode_ops(encode_ops(ops))
    assert wire == ops
    start = {"f": old} if old is not None else {}
    assert apply_in_memory(start, wire).get("f", b"") == new
    return ops


@st.composite
def edits(draw: st.DrawFn) -> tuple[bytes, bytes]:
    old = draw(st.binary(max_size=3 * BLOCK_SIZE + 100))
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["append", "overwrite", "insert", "truncate"]))
        pos = draw(st.integers(0, len(new)))
        chunk = draw(st.binary(min_size=1, max_size=300))
        if kind == "append":
            new += chunk
        elif kind == "overwrite":
            new[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            new[pos:pos] = chunk
        else:
            del new[pos:]
    return old, bytes(new)


@settings(max_examples=300)
@given(edits())
def test_any_edit_roundtrips(pair: tuple[bytes, bytes]) -> None:
    roundtrip(*pair)


@settings(max_examples=100)
@given(edits())
def test_any_edit_roundtrips_without_the_old_bytes(pair: tuple[bytes, bytes]) -> None:
    roundtrip(*pair, cached_base=False)


@settings(max_examples=100)
@given(edits(), st.booleans())
def test_any_edit_roundtrips_for_append_mostly_files(pair: tuple[bytes, bytes],
                                                     cached: bool) -> None:
    """Logs and uidlists keep no block hashes: a same-size rewrite must still be shipped."""
    roundtrip(*pair, cached_base=cached, blocks=False)


@given(st.binary(max_size=20000))
def test_new_file_roundtrips(new: bytes) -> None:
    roundtrip(None, new)


def test_append_ships_only_the_tail() -> None:
    old = os.urandom(50_000)
    ops = roundtrip(old, old + b"tail-record")
    assert [op.code for op in ops] == [OpCode.WRITE]
    assert ops[0].offset == len(old) and ops[0].raw_size == len(b"tail-record")


def test_in_place_header_rewrite_ships_one_block() -> None:
    old = os.urandom(40 * BLOCK_SIZE)
    new = b"HDR!" + old[4:]
    ops = roundtrip(old, new, cached_base=False)
    assert sum(op.raw_size for op in ops) == BLOCK_SIZE


def test_a_cache_rewritten_in_place_is_not_compressed_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit rewrites a cache's header and appends a record: the changed blocks go, and
    the megabytes around them are not compressed just to be compared with them."""
    from replicator.delta import codec

    compressed: list[int] = []
    plain = codec.compress

    def counting(data: bytes, *, base: bytes | None = None) -> bytes:
        compressed.append(len(data))
        return plain(data, base=base)

    monkeypatch.setattr(codec, "compress", counting)
    old = os.urandom(256 * BLOCK_SIZE)
    new = b"HDR!" + old[4:] + b"a new cache record"
    ops = roundtrip(old, new, cached_base=False)
    assert [op.code for op in ops] == [OpCode.WRITE, OpCode.WRITE]
    assert max(compressed) <= BLOCK_SIZE, "only the changed blocks were compressed"


def test_rewrite_with_shifted_records_uses_the_previous_version() -> None:
    old = os.urandom(200_000)
    new = old[:1000] + old[1100:]  # a record expunged: everything after it moves
    ops = roundtrip(old, new)
    assert ops[0].codec == Codec.ZSTD_DELTA
    assert len(ops[0].data) < 2000


def test_unchanged_content_with_new_metadata_is_a_meta_op() -> None:
    ops = encode_file("f", describe(b"abc", META), b"abc", b"abc", describe(b"abc", OTHER_META))
    assert [(op.code, op.meta) for op in ops] == [(OpCode.META, OTHER_META)]
    assert encode_file("f", describe(b"abc", META), None, b"abc", describe(b"abc", META)) == []


def test_copy_then_append_reproduces_a_rotated_log() -> None:
    log = os.urandom(5000)
    rotated = log + b"last"
    copy = Op(OpCode.COPY, "f.2", source="f")
    ops = finish_copy(copy, encode_file("f.2", describe(log, META), log, rotated,
                                        describe(rotated, META)), describe(rotated, META))
    files = apply_in_memory({"f": log}, decode_ops(encode_ops(ops)))
    assert files == {"f": log, "f.2": rotated}


def test_wrong_base_is_refused_not_applied() -> None:
    ops = encode_file("f", describe(b"abc", META), None, b"abcdef", describe(b"abcdef", META))
    with pytest.raises(ApplyError, match="digest"):
        apply_in_memory({"f": b"xyz"}, ops)


def test_copy_from_a_missing_file_is_refused() -> None:
    with pytest.raises(ApplyError, match="copy source"):
        apply_in_memory({}, [Op(OpCode.COPY, "b", source="a")])


def test_oversized_op_is_refused() -> None:
    ops = encode_file("f", None, None, b"x" * 5000, describe(b"x" * 5000, META))
    with pytest.raises(ApplyError, match="exceeds the limit"):
        apply_in_memory({}, ops, max_size=4096)


@pytest.mark.parametrize("path", ["/etc/passwd", "../up", "a/../b", "a//b", "a\x00b", "", "./a"])
def test_bad_paths_are_protocol_errors(path: str) -> None:
    payload = encode_ops([Op(OpCode.REPLACE, path, data=b"x", raw_size=1)])
    with pytest.raises(ProtocolError, match="path"):
        decode_ops(payload)


def test_truncated_payload_is_a_protocol_error() -> None:
    payload = encode_ops([Op(OpCode.REPLACE, "a", data=b"xyz", raw_size=3)])
    with pytest.raises(ProtocolError, match="truncated"):
        decode_ops(payload[:-1])


def test_lying_raw_size_is_refused() -> None:
    op = Op(OpCode.REPLACE, "a", data=b"xyz", raw_size=4)
    with pytest.raises(ProtocolError, match="announced 4"):
        apply_in_memory({}, decode_ops(encode_ops([op])))


def test_describing_a_change_from_the_last_description_gives_the_same_record() -> None:
    """`describe(new, meta, old)` takes the block hashes of unchanged 64 KiB chunks from
    `old`: random edits of files of up to six chunks (in place, appended, cut, inserted, so
    that every chunk after shifts) give the record a description from scratch gives."""
    rng = random.Random(16)
    for _ in range(60):
        old = rng.randbytes(rng.randrange(0, 6 * CHUNK_SIZE))
        new = bytearray(old)
        for _ in range(rng.randrange(1, 4)):
            kind = rng.choice(["write", "append", "cut", "insert"])
            pos = rng.randrange(0, len(new) + 1)
            if kind == "write":
                new[pos:pos + 100] = rng.randbytes(100)
            elif kind == "append":
                new += rng.randbytes(rng.randrange(1, CHUNK_SIZE))
            elif kind == "cut":
                del new[pos:]
            else:
                new[pos:pos] = rng.randbytes(7)
        fresh = describe(bytes(new), META)
        assert describe(bytes(new), META, describe(old, META)) == fresh
        assert fresh.digest == digest(new) and fresh.size == len(new)
        assert roundtrip(old, bytes(new), cached_base=False)


@pytest.mark.parametrize("old_size", [CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 77])
def test_an_append_to_a_file_of_several_chunks_is_one_write(old_size: int) -> None:
    """Whether the old content is still the new one's prefix is decided from chunk digests
    (only the old last chunk is hashed again): an append is one WRITE at the old end, and a
    change anywhere in the old part, last byte included, is not taken for one."""
    old = os.urandom(old_size)
    new = old + os.urandom(5000)
    ops = roundtrip(old, new, cached_base=False)
    assert [(op.code, op.offset) for op in ops] == [(OpCode.WRITE, old_size)]
    for position in (0, old_size - 1):
        changed = bytearray(new)
        changed[position] ^= 1
        ops = roundtrip(old, bytes(changed), cached_base=False)
        assert (ops[0].code, ops[0].offset) != (OpCode.WRITE, old_size)
