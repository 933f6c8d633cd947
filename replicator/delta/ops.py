"""Replication operations and their binary encoding inside a BATCH payload.

A batch is a list of operations on one directory of one root. File operations act on a working
copy of the file; the last operation on a file carries the file's size and xxh3-128 after it
(`result`), which the receiver checks before anything becomes visible, and its metadata
(`meta`), which the receiver applies. Paths are relative to the root and checked on decode.

Decoding is bounded so that a small payload cannot become a large Python structure: at most
MAX_OPS_PER_PART operations per payload (one BATCH frame, one part of a batch) and at most
MAX_KEEP_ONLY_NAMES names in a KEEP_ONLY; offsets and sizes are below 2**63. Sizes are only
announced here: the receiver caps them against its file-size limit before it allocates, and
`codec.decompress` never produces more than the announced size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import IntEnum

from replicator.errors import PathError, ProtocolError
from replicator.hashing import DIGEST_SIZE
from replicator.paths import check_relpath


class OpCode(IntEnum):
    ENSURE_DIR = 1   # the directory exists with `meta` (parents created as needed)
    DELETE = 2       # remove a file or a whole directory tree
    COPY = 3         # working copy of `path` := `source` as it was before this batch
    WRITE = 4        # write `data` at `offset` (extends the file when past its end)
    TRUNCATE = 5     # cut or extend the file to `offset` bytes
    REPLACE = 6      # working copy := `data` (codec RAW/ZSTD, or ZSTD_DELTA against the old copy)
    META = 7         # only the metadata changed
    KEEP_ONLY = 8    # resync: delete every entry of directory `path` not named in `names`


class Codec(IntEnum):
    RAW = 0
    ZSTD = 1
    ZSTD_DELTA = 2   # zstd with the working copy before this op as raw-content dictionary


@dataclass(frozen=True)
class Meta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int


@dataclass(frozen=True)
class Result:
    size: int
    digest: bytes


@dataclass(frozen=True)
class Op:
    code: OpCode
    path: str
    offset: int = 0
    data: bytes = b""
    codec: Codec = Codec.RAW
    raw_size: int = 0                 # decompressed size of `data`
    source: str = ""                  # COPY
    names: tuple[str, ...] = ()       # KEEP_ONLY
    result: Result | None = None
    meta: Meta | None = None


# code, flags, codec, reserved (0), path_len, aux_len, offset, data_len, raw_size
_HEAD = struct.Struct("<BBBBHIQIQ")
_RESULT = struct.Struct(f"<Q{DIGEST_SIZE}s")
_META = struct.Struct("<IIIq")
_HAS_RESULT = 1
_HAS_META = 2
_KNOWN_FLAGS = _HAS_RESULT | _HAS_META
_INT_LIMIT = 1 << 63

# Ceilings on what one payload may decode to (each op costs ~0.5 KB of Python objects, each
# name ~60 B). A sender never needs more: a batch is one directory, and the outbox starts a new
# part long before (it splits at max_frame_bytes/2; these bound payloads of up to 64 MiB made
# of the smallest possible ops). A directory with more entries than MAX_KEEP_ONLY_NAMES cannot
# be resynced by name and is refused with a clear error.
MAX_OPS_PER_PART = 1 << 18
MAX_KEEP_ONLY_NAMES = 1 << 20
_DATA_OPS = (OpCode.WRITE, OpCode.REPLACE)


def encode_ops(ops: list[Op]) -> bytes:
    """The BATCH payload for `ops`."""
    parts: list[bytes] = []
    for op in ops:
        path = op.path.encode("utf-8", "surrogateescape")
        aux = _aux(op).encode("utf-8", "surrogateescape")
        flags = (_HAS_RESULT if op.result else 0) | (_HAS_META if op.meta else 0)
        parts.append(_HEAD.pack(op.code, flags, op.codec, 0, len(path), len(aux), op.offset,
                                len(op.data), op.raw_size))
        if op.result:
            parts.append(_RESULT.pack(op.result.size, op.result.digest))
        if op.meta:
            m = op.meta
            parts.append(_META.pack(m.mode, m.uid, m.gid, m.mtime_ns))
        parts += [path, aux, op.data]
    return b"".join(parts)


def _aux(op: Op) -> str:
    if op.code == OpCode.COPY:
        return op.source
    if op.code == OpCode.KEEP_ONLY:
        return "\x00".join(op.names)
    return ""


def decode_ops(payload: bytes | memoryview) -> list[Op]:
    """Parse a BATCH payload; any malformation is a remote ProtocolError."""
    view = memoryview(payload)
    ops: list[Op] = []
    pos = 0
    try:
        while pos < len(view):
            if len(ops) == MAX_OPS_PER_PART:
                raise ProtocolError(f"batch payload holds more than {MAX_OPS_PER_PART} "
                                    "operations")
            op, pos = _decode_one(view, pos)
            ops.append(op)
    except MemoryError:
        raise ProtocolError(f"out of memory decoding op {len(ops)} of a batch") from None
    return ops


def _take(view: memoryview, pos: int, size: int) -> tuple[memoryview, int]:
    if pos + size > len(view):
        raise ProtocolError(f"batch payload truncated at byte {pos} (needs {size} more)")
    return view[pos : pos + size], pos + size


def _decode_one(view: memoryview, pos: int) -> tuple[Op, int]:
    head, pos = _take(view, pos, _HEAD.size)
    code, flags, codec, reserved, path_len, aux_len, offset, data_len, raw_size = _HEAD.unpack(head)
    if reserved:
        raise ProtocolError(f"reserved byte {reserved:#x} set in a batch operation")
    opcode = _checked_head(code, flags, codec, aux_len, offset, raw_size, data_len)
    result = meta = None
    if flags & _HAS_RESULT:
        raw, pos = _take(view, pos, _RESULT.size)
        result = Result(*_RESULT.unpack(raw))
        if result.size >= _INT_LIMIT:
            raise ProtocolError(f"{opcode.name} result size {result.size} is not below 2**63")
    if flags & _HAS_META:
        raw, pos = _take(view, pos, _META.size)
        meta = Meta(*_META.unpack(raw))
        if meta.mode & ~0o7777:
            raise ProtocolError(f"{opcode.name} mode {meta.mode:#o} has more than permission bits")
    raw_path, pos = _take(view, pos, path_len)
    raw_aux, pos = _take(view, pos, aux_len)
    data, pos = _take(view, pos, data_len)
    path = _checked_path(bytes(raw_path), allow_empty=opcode in (OpCode.ENSURE_DIR,
                                                                  OpCode.KEEP_ONLY))
    op = Op(opcode, path, offset, bytes(data), Codec(codec), raw_size, result=result, meta=meta)
    if opcode == OpCode.COPY:
        op = replace(op, source=_checked_path(bytes(raw_aux), allow_empty=False))
    elif opcode == OpCode.KEEP_ONLY:
        op = replace(op, names=_checked_names(bytes(raw_aux).decode("utf-8", "surrogateescape")))
    return op, pos


def _checked_head(code: int, flags: int, codec: int, aux_len: int, offset: int,
                  raw_size: int, data_len: int) -> OpCode:
    """The op's code, once the fixed-size head is known to describe a valid operation in its
    one encoding (so that decoding and re-encoding give the same bytes)."""
    try:
        opcode, op_codec = OpCode(code), Codec(codec)
    except ValueError:
        raise ProtocolError(f"unknown operation {code} or codec {codec} in batch") from None
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown operation flags {flags:#x} in batch")
    if offset >= _INT_LIMIT or raw_size >= _INT_LIMIT:
        raise ProtocolError(f"{opcode.name} offset {offset} or size {raw_size} is not below 2**63")
    if aux_len and opcode not in (OpCode.COPY, OpCode.KEEP_ONLY):
        raise ProtocolError(f"{opcode.name} with {aux_len} bytes of source or names")
    if opcode not in _DATA_OPS and (data_len or raw_size or op_codec != Codec.RAW):
        raise ProtocolError(f"{opcode.name} carries data ({data_len} bytes, {op_codec.name})")
    if offset and opcode not in (OpCode.WRITE, OpCode.TRUNCATE):
        raise ProtocolError(f"{opcode.name} with an offset ({offset})")
    return opcode


def _checked_path(raw: bytes, *, allow_empty: bool) -> str:
    try:
        return check_relpath(raw.decode("utf-8", "surrogateescape"), allow_empty=allow_empty)
    except PathError as exc:
        raise ProtocolError(f"bad path in batch: {exc}") from None


def _checked_names(aux: str) -> tuple[str, ...]:
    if not aux:
        return ()
    if aux.count("\x00") >= MAX_KEEP_ONLY_NAMES:
        raise ProtocolError(f"KEEP_ONLY names more than {MAX_KEEP_ONLY_NAMES} entries")
    names = tuple(aux.split("\x00"))
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            raise ProtocolError(f"bad name {name!r} in KEEP_ONLY")
    return names
