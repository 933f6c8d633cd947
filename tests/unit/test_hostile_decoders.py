"""Hostile input for every decoder: each class of attack is refused with a ProtocolError,
within the configured memory, and golden frames still decode to what they always meant.

Memory is measured with tracemalloc (python-zstandard allocates its output as a Python bytes
object, so a bomb shows as a traced peak): a bound derived from the limit under test, not a
timing threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from replicator.control import protocol
from replicator.delta import codec
from replicator.delta.ops import (
    MAX_KEEP_ONLY_NAMES,
    MAX_OPS_PER_PART,
    Codec,
    Op,
    OpCode,
    decode_ops,
    encode_ops,
)
from replicator.errors import ProtocolError
from replicator.manifest_codec import decode_entries
from replicator.wire.frames import FLAG_ZSTD, FrameDecoder, FrameType, encode_frame
from replicator.wire.messages import Ack, Batch, Hello, Manifest, decode_message
from tests.fuzz.inputs import (
    compressed_hello,
    forged_frame,
    raw_block,
    rle_bomb,
    sample_entries,
    sample_ops,
    tiny_bomb,
)

LIMIT = 1 << 20  # max_frame_bytes for these tests


@contextmanager
def peak_below(bound: int) -> Iterator[None]:
    """Fail if the Python heap grows by `bound` bytes or more inside the block."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bound, f"peak allocation {peak} bytes, bound {bound}"


def refused(decode: Callable[[], Any], match: str | None = None) -> None:
    """`decode()` raises a ProtocolError, and allocates less than 2 * LIMIT on the way."""
    with peak_below(2 * LIMIT), pytest.raises(ProtocolError, match=match):
        decode()


def decode_frames(data: bytes) -> list[Any]:
    return [decode_message(frame) for frame in FrameDecoder(LIMIT).feed(data)]


# --- decompression bombs ------------------------------------------------------------------

def test_55_byte_frame_declaring_2_62_bytes_is_refused_before_allocating() -> None:
    refused(lambda: decode_frames(compressed_hello(tiny_bomb())), match="declares")


def test_32k_frame_declaring_1_gib_is_refused_before_allocating() -> None:
    bomb = rle_bomb(1 << 30)
    assert len(bomb) < 33 << 10
    refused(lambda: decode_frames(compressed_hello(bomb)), match="declares")


# Regression guards: main refused these already (max_output_size holds when no size is
# declared; zstd's own window limit), and they must stay refused through bounded_zstd.

def test_bomb_without_declared_size_stops_at_the_limit() -> None:
    refused(lambda: decode_frames(compressed_hello(rle_bomb(64 << 20, declare=False))))


def test_bomb_declaring_a_huge_window_is_refused() -> None:
    frame = rle_bomb(1000, declare=False)
    huge_window = frame[:5] + bytes([(30 - 10) << 3]) + frame[6:]
    refused(lambda: decode_frames(compressed_hello(huge_window)))


def test_concatenated_frames_are_refused_not_silently_dropped_or_multiplied() -> None:
    piece = rle_bomb(LIMIT * 3 // 4)
    refused(lambda: decode_frames(compressed_hello(piece + piece)), match="unused data")


def test_skippable_frame_is_not_a_zstd_payload() -> None:
    skippable = b"\x50\x2a\x4d\x18" + (1 << 30).to_bytes(4, "little")
    refused(lambda: decode_frames(compressed_hello(skippable)))  # regression guard


@pytest.mark.parametrize("declare", [True, False])
def test_op_bomb_is_bounded_by_its_raw_size(declare: bool) -> None:
    bomb = rle_bomb(256 << 20, declare=declare)
    refused(lambda: codec.decompress(bomb, Codec.ZSTD, 100, base=None))
    refused(lambda: codec.decompress(bomb, Codec.ZSTD_DELTA, 100, base=b"b" * 1000))


def test_op_data_smaller_than_announced_is_refused() -> None:
    packed = codec.compress(b"x" * 5000)
    with pytest.raises(ProtocolError, match="announced 6000"):
        codec.decompress(packed, Codec.ZSTD, 6000, base=None)
    refused(lambda: codec.decompress(rle_bomb(10, declare=False), Codec.ZSTD, 0, base=None))


def test_op_payload_with_more_than_the_op_ceiling_is_refused() -> None:
    payload = encode_ops([Op(OpCode.DELETE, "x")]) * (MAX_OPS_PER_PART + 1)
    with pytest.raises(ProtocolError, match="operations"):
        decode_ops(payload)


def test_keep_only_with_more_than_the_name_ceiling_is_refused() -> None:
    names = tuple(f"{i:x}" for i in range(MAX_KEEP_ONLY_NAMES + 1))
    payload = encode_ops([Op(OpCode.KEEP_ONLY, "", names=names)])
    with pytest.raises(ProtocolError, match="KEEP_ONLY"):
        decode_ops(payload)


@pytest.mark.parametrize("field", ["offset", "raw_size"])
def test_op_sizes_past_2_63_are_refused(field: str) -> None:
    op = Op(OpCode.TRUNCATE, "f", **{field: 1 << 63})
    with pytest.raises(ProtocolError, match="2\\*\\*63"):
        decode_ops(encode_ops([op]))


# --- JSON: nesting, digits, constants, types ---------------------------------------------

HOSTILE_HEADERS = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "5000-digit integer": b'{"seq":' + b"9" * 5000 + b"}",
    "Infinity": b'{"node":"a","role":"origin","software":"s","epoch":Infinity}',
    "NaN": b'{"node":"a","role":"origin","software":"s","x":NaN}',
    "1e999": b'{"node":"a","role":"origin","software":"s","x":1e999}',
    "UTF-16": json.dumps({"node": "a"}).encode("utf-16"),
    "invalid UTF-8": b'{"node":"\xff"}',
    "duplicate key": b'{"node":"a","node":"b","role":"origin","software":"s"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_hostile_frame_header_is_a_protocol_error(name: str) -> None:
    refused(lambda: FrameDecoder(LIMIT).feed(forged_frame(FrameType.HELLO,
                                                          HOSTILE_HEADERS[name])))


HOSTILE_HELLOS: dict[str, dict[str, Any]] = {
    "epoch of 2**64": {"epoch": 1 << 64},
    "negative seq": {"seq": -1},
    "bool as int": {"seq": True},
    "int list item": {"transports": ["tcp", 1]},
    "list for a str": {"node": ["a"]},
    "NUL in node": {"node": "a\x00b"},
    "lone surrogate": {"node": "\ud800"},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HELLOS))
def test_hostile_message_field_is_a_protocol_error(name: str) -> None:
    header = {"node": "a", "role": "origin", "software": "s", **HOSTILE_HELLOS[name]}
    raw = json.dumps(header).encode()
    refused(lambda: decode_frames(forged_frame(FrameType.HELLO, raw)))


HOSTILE_ENTRIES = {
    "dotdot path": b'["index","../../etc/shadow","f",1,""]',
    "NUL path": b'["index","a\\u0000b","f",1,""]',
    "absolute path": b'["index","/etc","d",0,""]',
    "root escapes": b'["..","x","f",1,""]',
    "Infinity size": b'["index","x","f",Infinity,""]',
    "5000-digit size": b'["index","x","f",' + b"9" * 5000 + b',""]',
    "negative size": b'["index","x","f",-1,""]',
    "deep nesting": b"[" * 100_000,
    "wrong arity": b'["index","x","f",1]',
    "object": b'{"root":"index"}',
    "bad kind": b'["index","x","l",1,""]',
    "bad digest": b'["index","x","f",1,"zz"]',
    "non-str path": b'["index",7,"f",1,""]',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ENTRIES))
def test_hostile_manifest_entry_is_a_protocol_error(name: str) -> None:
    good = b"\n".join(json.dumps(["index", e.path, e.kind, e.size, e.digest]).encode()
                      for e in sample_entries())
    refused(lambda: decode_entries(good + b"\n" + HOSTILE_ENTRIES[name]))


# --- control lines -----------------------------------------------------------------------

HOSTILE_FLUSHES = {
    "superscript digit timeout": "FLUSH\t1\t\u00b2\tfail\tu\td",
    "5000-digit timeout": "FLUSH\t1\t" + "9" * 5000 + "\tfail\tu\td",
    "dangling escape": "FLUSH\t1\t10\tfail\tu\td\x01",
    "unknown escape": "FLUSH\t1\t10\tfail\tu\td\x01x",
    "NUL dir": "FLUSH\t1\t10\tfail\tu\td\x010x",
    "negative id": "FLUSH\t-1\t10\tfail\tu\td",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FLUSHES))
def test_hostile_flush_line_is_a_protocol_error(name: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_flush(HOSTILE_FLUSHES[name].split("\t"))


def test_overlong_or_unterminated_control_line_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode_line(b"STATUS\t1\t" + b"x" * protocol.MAX_LINE + b"\n")
    with pytest.raises(ProtocolError, match="end of line"):
        protocol.decode_line(b"STATUS\t1")
    assert protocol.decode_line(b"STATUS\t1\xff\n") == "STATUS\t1\udcff"


def test_good_flush_still_parses() -> None:
    request = protocol.parse_flush(["FLUSH", "18446744073709551615", "5000", "fail", "u\x01t1",
                                    "d"])
    assert (request.timeout_ms, request.user, request.dirs) == (5000, "u\t1", ("d",))


# --- golden known-answer frames -----------------------------------------------------------

# Known answers (DESIGN §12): the bytes of v3 frames as written on the wire. If one of these
# changes, old peers can no longer talk to new ones: bump VERSION instead (v1 -> v2 when peers
# began to authenticate, v2 -> v3 when files over 64 KiB began to be named by their chunks'
# digests: the frames are the same, what a digest in them means is not).
GOLDEN_ACK = "4452504c030300000b000000000000000f851c90d31aaa237b22736571223a3130307d"
GOLDEN_HELLO = ("4452504c030100003500000000000000e933caab4a0b22c27b226e6f6465223a2261222c22726f6c"
                "65223a226f726967696e222c22736f667477617265223a2267222c2265706f6368223a327d")
GOLDEN_V2_ACK = "4452504c020300000b00000000000000a60fb8bcbd03297f7b22736571223a3130307d"
GOLDEN_V1_ACK = "4452504c010300000b000000000000009e63afa43a5894d37b22736571223a3130307d"


def test_golden_frames_decode_to_what_they_always_meant() -> None:
    assert decode_frames(bytes.fromhex(GOLDEN_ACK)) == [Ack(100)]
    assert encode_frame(Ack(100).to_frame()).hex() == GOLDEN_ACK
    hello = decode_frames(bytes.fromhex(GOLDEN_HELLO))
    assert hello == [Hello(node="a", role="origin", software="g", epoch=2)]


@pytest.mark.parametrize(("old", "frame"), [(1, GOLDEN_V1_ACK), (2, GOLDEN_V2_ACK)])
def test_an_older_peer_is_told_which_version_we_speak(old: int, frame: str) -> None:
    with pytest.raises(ProtocolError, match=rf"unsupported protocol version {old} .*speaks 3"):
        decode_frames(bytes.fromhex(frame))


def test_golden_batch_and_compressed_manifest_round_trip() -> None:
    batch = Batch(3, "s1", 10, "index", "u1", payload=encode_ops(sample_ops()))
    (got,) = decode_frames(encode_frame(batch.to_frame()))
    assert isinstance(got, Batch) and decode_ops(got.payload) == sample_ops()
    entries = b"".join(json.dumps(["index", f"u{i}", "d", 0, ""]).encode() + b"\n"
                       for i in range(500))
    data = encode_frame(Manifest(1, 500, payload=entries).to_frame(), compress=True)
    assert data[6] & FLAG_ZSTD and len(data) < len(entries)
    (manifest,) = decode_frames(data)
    assert isinstance(manifest, Manifest) and len(decode_entries(manifest.payload)) == 500


@pytest.mark.parametrize("position", range(35))
def test_tampered_golden_ack_never_decodes(position: int) -> None:
    """Any flipped byte is refused, or (a length grew) leaves the decoder waiting for more."""
    data = bytearray.fromhex(GOLDEN_ACK)
    data[position] ^= 0x20
    decoder = FrameDecoder(LIMIT)
    try:
        assert decoder.feed(bytes(data)) == []
    except ProtocolError:
        return
    assert decoder.buffered == len(data)


def test_zstd_header_with_a_dictionary_id_is_refused() -> None:
    frame = b"\x28\xb5\x2f\xfd\x03\x58\x01\x00\x00\x00" + raw_block(b"x" * 100)
    refused(lambda: codec.decompress(frame, Codec.ZSTD, 100, base=None))  # regression guard


REPO = Path(__file__).resolve().parents[2]
OUT_OF_MEMORY_SCRIPT = """
import resource, sys
from replicator.errors import ProtocolError
from replicator.wire.frames import FrameDecoder
from tests.fuzz.inputs import compressed_hello, rle_bomb
frame = compressed_hello(rle_bomb(400 << 20))
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (128 << 20), resource.RLIM_INFINITY))
try:
    FrameDecoder(max_frame_bytes=512 << 20).feed(frame)
except ProtocolError as exc:
    print("ProtocolError:", exc)
"""


def test_out_of_memory_while_decoding_is_a_protocol_error() -> None:
    """A frame within a (too generous) max_frame_bytes that the process cannot hold: a
    refused frame, not a MemoryError that kills the task reading the connection. Run in a
    child with an address-space limit, so the allocation really fails."""
    done = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_SCRIPT], capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ProtocolError: frame payload: out of memory")
