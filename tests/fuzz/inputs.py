"""Hostile and golden inputs for the decoders: crafted zstd bombs, forged frames, seeds.

Shared by the unit tests (tests/unit/test_hostile_decoders.py), the end-to-end test against a
daemon (tests/integration/test_hostile_frames.py) and the fuzz targets (their seed corpus).
Bombs are written block by block rather than compressed from a huge buffer, so making one
costs nothing and the test measures only what the decoder does with it.
"""

from __future__ import annotations

import json
import struct

from replicator.delta import codec
from replicator.delta.ops import Codec, Meta, Op, OpCode, Result, encode_ops
from replicator.hashing import digest, frame_checksum
from replicator.manifest_codec import Entry, encode_entries
from replicator.wire.frames import FLAG_ZSTD, MAGIC, PREFIX, VERSION, Frame, FrameType, encode_frame
from replicator.wire.messages import Ack, Batch, Hello, Manifest, Nack, Ping

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK = 128 << 10  # the largest zstd block


def zstd_frame(blocks: bytes, *, content_size: int | None, window_log: int = 21) -> bytes:
    """A zstd frame around `blocks`, declaring `content_size` (8-byte field) or no size."""
    if content_size is None:
        return ZSTD_MAGIC + bytes([0x00, (window_log - 10) << 3]) + blocks
    return (ZSTD_MAGIC + bytes([0xC0, (window_log - 10) << 3])
            + struct.pack("<Q", content_size) + blocks)


def rle_blocks(total: int, byte: int = 0) -> bytes:
    """Blocks that decode to `total` copies of `byte`: 4 bytes of input per 128 KiB."""
    out, left = bytearray(), total
    while left:
        size = min(left, _BLOCK)
        left -= size
        header = (0 if left else 1) | (1 << 1) | (size << 3)  # last flag, RLE block, size
        out += header.to_bytes(3, "little") + bytes([byte])
    return bytes(out)


def raw_block(data: bytes) -> bytes:
    return ((len(data) << 3) | 1).to_bytes(3, "little") + data


def rle_bomb(total: int, *, declare: bool = True) -> bytes:
    """A zstd frame of RLE blocks that decodes to `total` zero bytes (~total/32768 bytes)."""
    return zstd_frame(rle_blocks(total), content_size=total if declare else None)


def tiny_bomb(declared: int = 1 << 62) -> bytes:
    """55 bytes declaring `declared` bytes of content: what `decompress` used to allocate."""
    frame = zstd_frame(raw_block(b"x" * 38), content_size=declared, window_log=10)
    assert len(frame) == 55
    return frame


def forged_frame(ftype: int, header: bytes, payload: bytes = b"", *, flags: int = 0) -> bytes:
    """A frame with a valid checksum around arbitrary header bytes and payload."""
    prefix = PREFIX.pack(MAGIC, VERSION, ftype, flags, len(header), len(payload), 0)[:-8]
    checksum = frame_checksum(prefix, header, payload)
    return prefix + checksum.to_bytes(8, "little") + header + payload


def hello_header() -> bytes:
    return json.dumps({"node": "a", "role": "origin", "software": "fuzz"}).encode()


def compressed_hello(bomb: bytes) -> bytes:
    """A HELLO whose payload is `bomb`, flagged as zstd: what an attacker sends first."""
    return forged_frame(FrameType.HELLO, hello_header(), bomb, flags=FLAG_ZSTD)


def sample_ops() -> list[Op]:
    base = b"0123456789abcdef" * 256
    data = base[:3000] + b"changed" + base[3007:]
    delta_codec, delta = codec.smallest(data, base=base)
    plain_codec, plain = codec.smallest(b"log record " * 200)
    meta = Meta(0o600, 1000, 1000, 1_700_000_000_000_000_000)
    return [
        Op(OpCode.ENSURE_DIR, "", meta=Meta(0o700, 1000, 1000, 0)),
        Op(OpCode.COPY, "dovecot.index", source="dovecot.index.tmp"),
        Op(OpCode.REPLACE, "dovecot.index", data=delta, codec=delta_codec, raw_size=len(data),
           result=Result(len(data), digest(data)), meta=meta),
        Op(OpCode.WRITE, "dovecot.index.log", offset=4096, data=plain, codec=plain_codec,
           raw_size=2200),
        Op(OpCode.TRUNCATE, "dovecot.index.cache", offset=100),
        Op(OpCode.META, "dovecot-uidlist", meta=meta),
        Op(OpCode.DELETE, "old"),
        Op(OpCode.KEEP_ONLY, "", names=("dovecot.index", "dovecot.index.log", "sub")),
    ]


def sample_entries() -> list[Entry]:
    return [Entry("index", "", "d"), Entry("index", "u1", "d"),
            Entry("index", "u1/dovecot.index", "f", 4096, digest(b"x" * 4096).hex())]


def seed_frames() -> list[bytes]:
    """Valid frames of every message kind, plus the bombs: where a fuzzer starts."""
    messages = [
        Hello(node="a", role="origin", software="fuzz", epoch=3, stream="s1", seq=9,
              transports=["tcp"]),
        Batch(3, "s1", 10, "index", "u1", payload=encode_ops(sample_ops())),
        Ack(10), Nack(11, "index", "u1", "hash mismatch"), Ping(12345, "fail"),
        Manifest(1, 3, "s1", 10, payload=encode_entries(sample_entries())),
    ]
    frames = [encode_frame(m.to_frame(), compress=True) for m in messages]
    frames.append(encode_frame(Frame(FrameType.MANIFEST, {"id": 2, "entries": 0},
                                     encode_entries(sample_entries()) * 100), compress=True))
    frames += [compressed_hello(tiny_bomb()), compressed_hello(rle_bomb(4 << 20)),
               compressed_hello(rle_bomb(4 << 20, declare=False))]
    return frames


def seed_lines() -> list[bytes]:
    return [
        b"VERSION\treplicator-control\t1\t0\n",
        b"FLUSH\t1\t5000\tfail\tuser\x01t1\tINBOX\t.Sent\x01n\n",
        b"FLUSH\t18446744073709551615\t0\tdegrade\tu\td\x011\n",
        b"STATUS\t7\n", b"BARRIER\t8\t1000\n", b"REPAIR\t9\ta\n",
    ]


def codec_input(kind: Codec, raw_size: int, base: bytes, data: bytes) -> bytes:
    """The input of the `codec` fuzz target for these arguments."""
    return bytes([kind]) + raw_size.to_bytes(3, "little") + bytes([len(base)]) + base + data


def seeds(target: str) -> list[bytes]:
    """The seed corpus of one fuzz target: valid inputs and the known hostile ones."""
    if target == "frames":
        frames = seed_frames()
        return [*frames, b"".join(frames[:6])]
    if target == "ops":
        ops = sample_ops()
        return [encode_ops(ops), *(encode_ops([op]) for op in ops)]
    if target == "codec":
        base = b"0123456789abcdef" * 3
        data = base[:20] + b"changed" + base[27:] + b"x" * 2000
        return [codec_input(Codec.ZSTD, len(data), b"", codec.compress(data)),
                codec_input(Codec.ZSTD_DELTA, len(data), base, codec.compress(data, base=base)),
                codec_input(Codec.RAW, 5, b"", b"hello"),
                codec_input(Codec.ZSTD, 100, b"", tiny_bomb()),
                codec_input(Codec.ZSTD, 100, b"", rle_bomb(4 << 20, declare=False))]
    if target == "manifest":
        good = encode_entries(sample_entries())
        return [good, good + b'["index","../x","f",Infinity,""]\n', b"[" * 2000]
    if target == "control":
        return seed_lines()
    raise ValueError(f"no seeds for fuzz target {target!r}")


_JSON_TOKENS = [b"Infinity", b"-Infinity", b"NaN", b"1e999", b"-0", b"9" * 25, b"9" * 5000,
                b"[" * 64, b"{\"a\":" * 32, b'"\\ud800"', b"\\u0000", b'"../', b"/..", b"\xff",
                b"\xef\xbb\xbf", b"true", b"null", b'"seq":', b'"node":', b'"epoch":-1']
TOKENS: dict[str, list[bytes]] = {
    "frames": [*_JSON_TOKENS, ZSTD_MAGIC, b"DRPL\x01"],
    "ops": [b"\x00", b"\xff" * 8, b"\x7f" + b"\xff" * 7, b"..", b"/", b"\x00..\x00"],
    "codec": [ZSTD_MAGIC, b"\xc0", b"\xff" * 8, b"\x50\x2a\x4d\x18"],
    "manifest": [*_JSON_TOKENS, b"\n", b'"f"', b'"d"'],
    "control": [b"\t", b"\x01", b"\x010", b"\x01t", "\u00b2".encode(), "\u0661".encode(),
                b"9" * 19, b"9" * 5000, b"FLUSH\t", b"VERSION\treplicator-control\t",
                b"\tfail\t", b"\tdegrade\t", b"\n", b"\r", b"\x00"],
}
"""Fragments a mutation may insert: what broke these decoders before, and their neighbours."""


def libfuzzer_dict(target: str) -> str:
    """TOKENS[target] in libFuzzer's -dict format (entries of at most 64 bytes)."""
    return "".join('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n'
                   for token in TOKENS[target] if len(token) <= 64)
