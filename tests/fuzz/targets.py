"""Fuzz targets: each takes arbitrary bytes, drives one decoder, and lets through only the
decoder's own ProtocolError. Anything else that escapes is a crash the fuzzer reports.

The targets also check invariants that need no oracle: a frame stream decodes to the same
frames whether fed whole or in slices; a decoded batch re-encodes to the bytes it came from.
Every target runs with MAX_FRAME_BYTES as its limit, so a harness can hold the memory an input
may use to a small multiple of it (see `memory_bound`).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

from replicator.control import protocol
from replicator.delta import codec
from replicator.delta.ops import Codec, decode_ops, encode_ops
from replicator.errors import ProtocolError
from replicator.manifest_codec import decode_entries
from replicator.wire.bounded_zstd import ZSTD_MAGIC
from replicator.wire.frames import FrameDecoder
from replicator.wire.messages import Batch, Manifest, decode_message

MAX_FRAME_BYTES = 1 << 20


def memory_bound() -> int:
    """What one input may allocate at peak: the frame being parsed, its decompressed payload
    and what that payload decodes to, each bounded by MAX_FRAME_BYTES, with room to spare."""
    return 4 * MAX_FRAME_BYTES


def frames(data: bytes) -> None:
    """FrameDecoder fed the whole input, and again in slices chosen by the input's first
    bytes; both must agree; each frame's message (and a batch's ops, a manifest's entries)
    is decoded."""
    whole, whole_failed = _feed(data, [len(data)])
    rng = random.Random(data[:8])
    cuts = [rng.randint(1, 64) for _ in range(min(len(data), 200) // 8 + 1)]
    sliced, sliced_failed = _feed(data, cuts)
    # feed() that raises drops the frames it completed in the same call, so after an error
    # the whole feed may have seen fewer: only a prefix of what the sliced one saw.
    agree = (whole == sliced) if not whole_failed else whole == sliced[: len(whole)]
    if whole_failed != sliced_failed or not agree:
        raise AssertionError(f"whole and sliced feeding disagree: {whole!r} ({whole_failed}) "
                             f"!= {sliced!r} ({sliced_failed})")


def _feed(data: bytes, cuts: list[int]) -> tuple[list[object], bool]:
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    got: list[object] = []
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for frame in decoder.feed(data[pos : pos + cut]):
                got.append(_message_content(decode_message(frame)))
            pos += cut
    except ProtocolError:
        return got, True
    return got, False


def _message_content(message: object) -> object:
    if isinstance(message, Batch):
        return message, decode_ops(message.payload)
    if isinstance(message, Manifest):
        return message, decode_entries(message.payload)
    return message


def ops(data: bytes) -> None:
    """decode_ops; whatever decodes re-encodes to the same bytes; op data decompresses within
    its announced size (capped as the receiver caps it)."""
    try:
        decoded = decode_ops(data)
    except ProtocolError:
        return
    if encode_ops(decoded) != data:
        raise AssertionError("decode_ops/encode_ops do not round-trip")
    for op in decoded:
        if op.codec != Codec.RAW or op.data:
            _decompress(op.data, op.codec, min(op.raw_size, MAX_FRAME_BYTES), os.fsencode(op.path))


def codec_data(data: bytes) -> None:
    """codec.decompress with a codec, raw_size and base taken from the input's first bytes:
    codec u8 | raw_size u24 (up to 2 * MAX_FRAME_BYTES) | base_len u8 | base | data. With
    bit 7 of the codec byte the zstd magic is put in front of data, so that most inputs reach
    the frame-header checks and zstd itself (whose C code gives atheris no coverage)."""
    if len(data) < 5:
        return
    kind = Codec(data[0] % 3)
    raw_size = int.from_bytes(data[1:4], "little") % (2 * MAX_FRAME_BYTES)
    base_end = 5 + data[4]
    packed = data[base_end:]
    if data[0] & 0x80:
        packed = ZSTD_MAGIC + packed
    _decompress(packed, kind, raw_size, data[5:base_end])



def _decompress(data: bytes, kind: Codec, raw_size: int, base: bytes) -> None:
    try:
        out = codec.decompress(data, kind, raw_size, base=base)
    except ProtocolError:
        return
    if len(out) != raw_size:
        raise AssertionError(f"decompress returned {len(out)} bytes for raw_size {raw_size}")


def manifest(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_entries(data)


def control(data: bytes) -> None:
    """A control line as the server reads it: decode_line, then the parser for its verb."""
    try:
        line = protocol.decode_line(data if data.endswith(b"\n") else data + b"\n")
        fields = line.split("\t")
        if fields[0] == "VERSION":
            protocol.parse_version(line)
        elif fields[0] == "FLUSH":
            protocol.parse_flush(fields)
        else:
            for field in fields:
                protocol.unescape(field)
            if len(fields) > 2:
                protocol.decimal(fields[2], "number")
    except ProtocolError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": frames, "ops": ops, "codec": codec_data, "manifest": manifest, "control": control,
}
