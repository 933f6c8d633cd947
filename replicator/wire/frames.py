"""Frames: the unit of the replication protocol on every transport.

Layout (little-endian), 24 bytes of prefix, then the header and the payload:

    magic "DRPL" | version u8 | type u8 | flags u16 | header_len u32 | payload_len u32 |
    xxh3-64 of (prefix without the checksum + header + payload) u64

The header is a UTF-8 JSON object (small, evolvable metadata); the payload is opaque bytes
(zstd-compressed when FLAG_ZSTD is set). `FrameDecoder` is incremental: feed it any slices of
the byte stream and it returns whole frames, raising ProtocolError on anything malformed.

Bounds, whatever the peer sends: a frame on the wire is at most `max_frame_bytes` (checked
from the prefix, before it is buffered), its header at most MAX_HEADER_BYTES of strict JSON
(`strict_json`), and a compressed payload at most `max_frame_bytes` once decompressed (checked
from the zstd header before anything is allocated, `bounded_zstd`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import zstandard

from replicator.errors import ProtocolError
from replicator.hashing import frame_checksum
from replicator.wire.bounded_zstd import decompress_bounded
from replicator.wire.strict_json import loads as strict_loads

MAGIC = b"DRPL"
# 3: a file longer than 64 KiB is named by a digest of its chunks' digests (replicator.hashing);
# 2: peers authenticate (AUTH frames, HELLO nonce and proof); 1 spoke unauthenticated
VERSION = 3
PREFIX = struct.Struct("<4sBBHIIQ")
FLAG_ZSTD = 0x1
_KNOWN_FLAGS = FLAG_ZSTD
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_FRAME_BYTES = 64 << 20
COMPRESS_MIN_BYTES = 4096


class FrameType(IntEnum):
    HELLO = 1
    BATCH = 2
    ACK = 3
    NACK = 4
    MANIFEST_REQ = 5
    MANIFEST = 6
    PING = 7
    PONG = 8
    ERROR = 9
    RESYNC = 10
    AUTH = 11
    PACKED = 12  # origin -> replica: frames compressed in the connection's stream (wire.packed)


@dataclass(frozen=True)
class Frame:
    type: FrameType
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


def encode_frame(frame: Frame, *, compress: bool = False) -> bytes:
    """Serialize `frame`; with `compress`, a large payload is zstd-compressed if that helps."""
    header = json.dumps(frame.header, separators=(",", ":")).encode()
    payload, flags = frame.payload, 0
    if compress and len(payload) >= COMPRESS_MIN_BYTES:
        packed = zstandard.ZstdCompressor(level=3).compress(payload)
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_ZSTD
    prefix = PREFIX.pack(MAGIC, VERSION, frame.type, flags, len(header), len(payload), 0)
    checksum = frame_checksum(prefix[:-8], header, payload)
    return b"".join((prefix[:-8], checksum.to_bytes(8, "little"), header, payload))


class FrameDecoder:
    """Incremental, bounded frame parser: `feed(data)` returns the frames completed by `data`."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._decompressor = zstandard.ZstdDecompressor()

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        frames: list[Frame] = []
        try:
            self._buffer += data
            while (frame := self._next()) is not None:
                frames.append(frame)
        except MemoryError:
            raise ProtocolError(f"out of memory decoding a frame ({len(self._buffer)} bytes "
                                f"buffered)") from None
        return frames

    def _next(self) -> Frame | None:
        if len(self._buffer) < PREFIX.size:
            return None
        magic, version, ftype, flags, hlen, plen, checksum = PREFIX.unpack_from(self._buffer)
        self._check_prefix(magic, version, flags, hlen, plen)
        total = PREFIX.size + hlen + plen
        if len(self._buffer) < total:
            return None
        buffer = self._buffer
        header_bytes = bytes(buffer[PREFIX.size : PREFIX.size + hlen])
        payload = bytes(buffer[PREFIX.size + hlen : total])
        if frame_checksum(buffer[: PREFIX.size - 8], header_bytes, payload) != checksum:
            raise ProtocolError("frame checksum mismatch (corrupted or tampered frame)")
        header = _parse_header(header_bytes)
        del buffer[:total]
        frame_type = _frame_type(ftype)
        if flags & FLAG_ZSTD:
            payload = decompress_bounded(payload, self.max_frame_bytes, what="frame payload",
                                         decompressor=self._decompressor)
        return Frame(frame_type, header, payload)

    def _check_prefix(self, magic: bytes, version: int, flags: int, hlen: int, plen: int) -> None:
        if magic != MAGIC:
            raise ProtocolError(f"bad frame magic {magic!r}: not a dovecot-replicator peer")
        if version != VERSION:
            raise ProtocolError(f"unsupported protocol version {version} (this node speaks "
                                f"{VERSION})")
        if flags & ~_KNOWN_FLAGS:
            raise ProtocolError(f"unknown frame flags {flags:#x}")
        if hlen > MAX_HEADER_BYTES:
            raise ProtocolError(f"frame header of {hlen} bytes exceeds {MAX_HEADER_BYTES}")
        if PREFIX.size + hlen + plen > self.max_frame_bytes:
            raise ProtocolError(f"frame of {PREFIX.size + hlen + plen} bytes exceeds "
                                f"max_frame_bytes ({self.max_frame_bytes})")


def _frame_type(value: int) -> FrameType:
    try:
        return FrameType(value)
    except ValueError:
        raise ProtocolError(f"unknown frame type {value}") from None


def _parse_header(raw: bytes) -> dict[str, Any]:
    header = strict_loads(raw, "frame header") if raw else {}
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header
