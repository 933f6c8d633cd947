"""dovecot.index.log, .log.2 and the map logs: file header and the records that follow it.

Header layout (struct mail_transaction_log_header, Dovecot 2.3.19, 40 bytes little-endian):
0 major_version u8, 1 minor_version u8, 2 hdr_size u16, 4 indexid, 8 file_seq, 12 prev_file_seq,
16 prev_file_offset, 20 create_stamp, 24 initial_modseq u64, 32 compat_flags u8, 33-39 unused.

Where the complete records end is decided as Dovecot's reader does
(`mail_transaction_log_file_sync`): a size word that does not decode, or a record or a
boundary-declared transaction running past the end of the file, is a write still in progress or
torn by a crash. Everything from there on is the *torn tail*; Dovecot truncates it before its
next append. Structural nonsense before that point (a size below 8, an expunge without its
protection bits, an empty record) is corruption and raises DovecotFormatError.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from replicator.dovecot import logrecord as lr
from replicator.dovecot.binfmt import DovecotFormatError, read_struct, read_u32
from replicator.dovecot.logscan import scan_records

__all__ = ["LogFile", "LogHeader", "is_record_boundary", "iter_log_records", "parse_log",
           "parse_log_header"]

MAJOR_VERSION = 1
HEADER_MIN_SIZE = 24
_HEADER = struct.Struct("<BBHIIIIIQB7x")
_VERSION_COMPAT_FLAGS = (1, 2)


@dataclass(frozen=True)
class LogHeader:
    """struct mail_transaction_log_header; fields past hdr_size read as 0, as Dovecot does."""

    major_version: int
    minor_version: int
    hdr_size: int
    indexid: int
    file_seq: int
    prev_file_seq: int
    prev_file_offset: int
    create_stamp: int
    initial_modseq: int
    compat_flags: int


@dataclass(frozen=True)
class LogFile:
    """A parsed log: header, every complete record, and where (and why) completeness ends."""

    header: LogHeader
    records: tuple[lr.LogRecord, ...]
    end: int  # offset just after the last complete transaction
    size: int  # bytes given to the parser
    torn: str | None  # why the bytes from `end` to `size` are not records; None if end == size

    def is_record_boundary(self, offset: int) -> bool:
        return is_record_boundary(self, offset)


def parse_log_header(data: bytes | memoryview, kind: str = "dovecot.index.log") -> LogHeader:
    """The file header, with Dovecot's checks (version, sizes, endianness, indexid)."""
    if len(data) < 4:
        raise DovecotFormatError(kind, 0, f"file has {len(data)} bytes, shorter than a header")
    major, minor, hdr_size = struct.unpack_from("<BBH", data, 0)
    if major != MAJOR_VERSION:
        raise DovecotFormatError(kind, 0, f"major version {major}, Dovecot 2.3 writes 1")
    if hdr_size < HEADER_MIN_SIZE:
        raise DovecotFormatError(kind, 2, f"hdr_size {hdr_size} < {HEADER_MIN_SIZE}")
    if len(data) < hdr_size:
        raise DovecotFormatError(kind, len(data), f"file ends inside the {hdr_size}-byte header")
    raw = bytes(data[:min(hdr_size, _HEADER.size)]).ljust(_HEADER.size, b"\0")
    hdr = LogHeader(*read_struct(kind, raw, 0, _HEADER, "header"))
    if (major, minor) >= _VERSION_COMPAT_FLAGS and hdr.compat_flags != 1:
        raise DovecotFormatError(kind, 32, f"compat_flags {hdr.compat_flags:#x}: not little-endian")
    if hdr.indexid == 0:
        raise DovecotFormatError(kind, 4, "indexid is 0: the log was marked corrupted")
    return hdr


def parse_log(data: bytes | memoryview, kind: str = "dovecot.index.log") -> LogFile:
    """Header plus every complete record; a torn tail is reported in `.torn`, not raised."""
    hdr = parse_log_header(data, kind)
    records, end, torn = scan_records(data, hdr.hdr_size, kind)
    return LogFile(hdr, tuple(records), end, len(data), torn)


def iter_log_records(data: bytes | memoryview, kind: str = "dovecot.index.log",
                     start: int | None = None) -> Iterator[lr.LogRecord]:
    """Each complete record from `start` (default: after the header); raises at a torn tail.

    `start` must be a record boundary, e.g. an index's log_file_head_offset.
    """
    hdr = parse_log_header(data, kind)
    records, end, torn = scan_records(data, hdr.hdr_size if start is None else start, kind)
    yield from records
    if torn is not None:
        raise DovecotFormatError(kind, end, torn)


def is_record_boundary(log: LogFile, offset: int) -> bool:
    """True when a record starts at `offset`, or it is the end of the complete records.

    verify uses this to check that an index's log_file_tail/head_offset point into the
    replica's log at a place Dovecot could have written them.
    """
    if offset == log.header.hdr_size or offset == log.end:
        return True
    lo, hi = 0, len(log.records)
    while lo < hi:
        mid = (lo + hi) // 2
        if log.records[mid].offset < offset:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(log.records) and log.records[lo].offset == offset


def header_update_payload(data: bytes | memoryview, rec: lr.LogRecord,
                          kind: str) -> Iterator[tuple[int, bytes]]:
    """(header offset, new bytes) for each struct mail_transaction_header_update in rec."""
    pos, end = rec.offset + lr.HEADER_SIZE, rec.end
    while pos + 4 <= end:
        u_offset, u_size = struct.unpack_from("<HH", data, pos)
        if pos + 4 + u_size > end:
            raise DovecotFormatError(kind, pos, "header update extends beyond record size")
        yield u_offset, bytes(data[pos + 4:pos + 4 + u_size])
        pos += (4 + u_size + 3) & ~3


def append_uids(data: bytes | memoryview, rec: lr.LogRecord, kind: str) -> Iterator[int]:
    """The uid of each struct mail_index_record in an append record."""
    for pos in range(rec.offset + lr.HEADER_SIZE, rec.end, lr.APPEND_RECORD_SIZE):
        yield read_u32(kind, data, pos, "append record")
