"""Frames fed whole, byte at a time, with trailing bytes, tampered, and from the future."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.errors import ProtocolError
from replicator.wire.frames import (
    PREFIX,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)

FRAMES = [
    Frame(FrameType.HELLO, {"node": "a", "role": "origin"}),
    Frame(FrameType.BATCH, {"seq": 7, "dir": "u1/.Sent"}, b"\x00\x01payload" * 50),
    Frame(FrameType.MANIFEST, {"id": 1}, b"x" * 10000),
    Frame(FrameType.ACK, {"seq": 8}),
]


def stream() -> bytes:
    return b"".join(encode_frame(f, compress=True) for f in FRAMES)


def test_whole_stream_gives_every_frame_in_order() -> None:
    assert FrameDecoder().feed(stream()) == FRAMES


def test_byte_at_a_time_gives_the_same_frames() -> None:
    decoder = FrameDecoder()
    got = [frame for byte in stream() for frame in decoder.feed(bytes([byte]))]
    assert got == FRAMES
    assert decoder.buffered == 0


def test_trailing_partial_frame_waits_for_more() -> None:
    data = stream()
    tail = encode_frame(FRAMES[1])[:10]
    decoder = FrameDecoder()
    assert decoder.feed(data + tail) == FRAMES
    assert decoder.buffered == 10


def test_compressed_payload_is_smaller_on_the_wire_and_restored() -> None:
    frame = FRAMES[2]
    packed = encode_frame(frame, compress=True)
    assert len(packed) < len(frame.payload)
    assert FrameDecoder().feed(packed) == [frame]


@pytest.mark.parametrize("position", [0, 4, 5, 6, 12, 24, 30, -1])
def test_any_flipped_byte_is_refused(position: int) -> None:
    data = bytearray(encode_frame(FRAMES[1]))
    data[position] ^= 0x40
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(bytes(data))


def test_tampered_checksum_is_named() -> None:
    data = bytearray(encode_frame(FRAMES[0]))
    data[PREFIX.size - 1] ^= 1
    with pytest.raises(ProtocolError, match="checksum"):
        FrameDecoder().feed(bytes(data))


def test_unknown_version_is_named() -> None:
    data = bytearray(encode_frame(FRAMES[0]))
    data[4] = 9
    with pytest.raises(ProtocolError, match="version 9"):
        FrameDecoder().feed(bytes(data))


def test_unknown_type_is_named_even_with_a_valid_checksum() -> None:
    good = encode_frame(FRAMES[0])
    magic, version, _type, flags, hlen, plen, _ = PREFIX.unpack_from(good)
    prefix = PREFIX.pack(magic, version, 99, flags, hlen, plen, 0)[:-8]
    from replicator.hashing import frame_checksum

    body = good[PREFIX.size :]
    checksum = frame_checksum(prefix, body[:hlen], body[hlen:])
    forged = prefix + struct.pack("<Q", checksum) + body
    with pytest.raises(ProtocolError, match="unknown frame type 99"):
        FrameDecoder().feed(forged)


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    with pytest.raises(ProtocolError, match="exceeds max_frame_bytes"):
        decoder.feed(encode_frame(FRAMES[2])[: PREFIX.size])


def test_garbage_is_not_a_peer() -> None:
    with pytest.raises(ProtocolError, match="magic"):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\n\r\n" + b"\x00" * 20)


@given(st.binary(max_size=5000), st.lists(st.integers(1, 600), max_size=20))
def test_any_split_of_a_frame_decodes_it(payload: bytes, cuts: list[int]) -> None:
    frame = Frame(FrameType.BATCH, {"seq": 1}, payload)
    data = encode_frame(frame, compress=True)
    decoder, got, pos = FrameDecoder(), [], 0
    for cut in cuts:
        got += decoder.feed(data[pos : pos + cut])
        pos += cut
    got += decoder.feed(data[pos:])
    assert got == [frame]
