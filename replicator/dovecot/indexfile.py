"""dovecot.index and dovecot.map.index (one format): base header, extension list, record count.

Layout from Dovecot 2.3.19 `src/lib-index/mail-index.h` (struct mail_index_header, 120 bytes,
all fields little-endian) and `mail-index-map.c` (extension headers), checked against
`doveadm dump`. The checks are the ones Dovecot applies before it trusts a file
(`mail_index_check_header_compat`, `mail_index_map_check_header`), so a file that passes here
is one Dovecot would open without declaring it corrupted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

from replicator.dovecot.binfmt import DovecotFormatError, read_struct
from replicator.dovecot.indexext import IndexExtension, parse_extensions

__all__ = ["NEXT_UID_OFFSET", "IndexExtension", "IndexFile", "IndexHeader", "parse_index",
           "parse_index_header"]

MAJOR_VERSION = 7
BASE_HEADER_MIN_SIZE = 120
COMPAT_LITTLE_ENDIAN = 0x01
HDR_FLAG_CORRUPTED = 0x0001
RECORD_MIN_SIZE = 8  # sizeof(struct mail_index_record): uid, flags, padding
NEXT_UID_OFFSET = 28  # offsetof(struct mail_index_header, next_uid)
_BASE = struct.Struct("<BBHIIB3x18I8I")
_RECORD_UID = struct.Struct("<I")


@dataclass(frozen=True)
class IndexHeader:
    """struct mail_index_header; the comment after each field is its byte offset."""

    major_version: int  # 0
    minor_version: int  # 1
    base_header_size: int  # 2 (u16)
    header_size: int  # 4: base header + extension headers
    record_size: int  # 8
    compat_flags: int  # 12 (u8, then 3 unused bytes)
    indexid: int  # 16
    flags: int  # 20
    uid_validity: int  # 24
    next_uid: int  # 28
    messages_count: int  # 32
    unused_old_recent_messages_count: int  # 36
    seen_messages_count: int  # 40
    deleted_messages_count: int  # 44
    first_recent_uid: int  # 48
    first_unseen_uid_lowwater: int  # 52
    first_deleted_uid_lowwater: int  # 56
    log_file_seq: int  # 60
    log_file_tail_offset: int  # 64
    log_file_head_offset: int  # 68
    unused_old_sync_size_part1: int  # 72
    log2_rotate_time: int  # 76: 0 unknown, 0xffffffff no .log.2
    last_temp_file_scan: int  # 80
    day_stamp: int  # 84
    day_first_uid: tuple[int, ...]  # 88: 8 x u32, ends at 120


_OFFSETS = dict(zip([f.name for f in fields(IndexHeader)],
                    [0, 1, 2, 4, 8, 12, *range(16, 92, 4)], strict=True))


@dataclass(frozen=True)
class IndexFile:
    """A whole index file: header, extensions and the records that follow the header."""

    header: IndexHeader
    extensions: tuple[IndexExtension, ...]
    last_uid: int  # uid of the last record, 0 when there are none
    trailing_bytes: int  # bytes after header_size + messages_count * record_size

    def extension(self, name: str) -> IndexExtension | None:
        return next((e for e in self.extensions if e.name == name), None)


def parse_index_header(data: bytes | memoryview, kind: str = "dovecot.index") -> IndexHeader:
    """The base header from the first bytes of an index file (the rest may be absent)."""
    values = read_struct(kind, data, 0, _BASE, "base header")
    hdr = IndexHeader(*[*values[:24], tuple(values[24:])])
    _check_compat(hdr, kind)
    _check_uids(hdr, kind)
    return hdr


def parse_index(data: bytes | memoryview, kind: str = "dovecot.index") -> IndexFile:
    """The whole file: header, extension headers, and the record area's size and last uid."""
    hdr = parse_index_header(data, kind)
    if hdr.header_size > len(data):
        _fail(kind, hdr, "header_size", f"header_size {hdr.header_size} > file size {len(data)}")
    extensions = parse_extensions(data, hdr.base_header_size, hdr.header_size,
                                  hdr.record_size, kind)
    records_end = hdr.header_size + hdr.messages_count * hdr.record_size
    if records_end > len(data):
        _fail(kind, hdr, "messages_count",
              f"{hdr.messages_count} records of {hdr.record_size} bytes need {records_end} "
              f"bytes, file has {len(data)}")
    last_uid = 0
    if hdr.messages_count:
        last_uid = _RECORD_UID.unpack_from(data, records_end - hdr.record_size)[0]
        _check_last_uid(hdr, last_uid, records_end - hdr.record_size, kind)
    return IndexFile(hdr, extensions, last_uid, len(data) - records_end)


def _fail(kind: str, hdr: IndexHeader, field: str, reason: str) -> None:
    raise DovecotFormatError(kind, _OFFSETS[field], reason)


def _check_compat(hdr: IndexHeader, kind: str) -> None:
    """Dovecot refuses these outright (mail_index_check_header_compat)."""
    if hdr.major_version != MAJOR_VERSION:
        _fail(kind, hdr, "major_version",
              f"major version {hdr.major_version}, Dovecot 2.3 writes {MAJOR_VERSION}")
    if hdr.compat_flags != COMPAT_LITTLE_ENDIAN:
        _fail(kind, hdr, "compat_flags", f"compat_flags {hdr.compat_flags:#x}: not little-endian")
    if hdr.flags & HDR_FLAG_CORRUPTED:
        _fail(kind, hdr, "flags", "the corrupted flag is set")
    if hdr.base_header_size < BASE_HEADER_MIN_SIZE or hdr.header_size < hdr.base_header_size:
        _fail(kind, hdr, "base_header_size",
              f"corrupted header sizes (base {hdr.base_header_size}, full {hdr.header_size})")
    if hdr.record_size < RECORD_MIN_SIZE:
        _fail(kind, hdr, "record_size", f"record_size {hdr.record_size} < {RECORD_MIN_SIZE}")


def _check_uids(hdr: IndexHeader, kind: str) -> None:
    """The consistency rules of mail_index_map_check_header that need no records."""
    if hdr.next_uid == 0:
        _fail(kind, hdr, "next_uid", "next_uid=0")
    if hdr.uid_validity == 0 and hdr.next_uid != 1:
        _fail(kind, hdr, "uid_validity", f"uid_validity=0, but next_uid={hdr.next_uid}")
    for name in ("seen_messages_count", "deleted_messages_count"):
        if getattr(hdr, name) > hdr.messages_count:
            _fail(kind, hdr, name,
                  f"{name} {getattr(hdr, name)} > messages_count {hdr.messages_count}")
    if hdr.first_recent_uid == 0 and hdr.minor_version >= 1:
        _fail(kind, hdr, "first_recent_uid", "first_recent_uid=0")
    for name in ("first_recent_uid", "first_unseen_uid_lowwater", "first_deleted_uid_lowwater"):
        if getattr(hdr, name) > hdr.next_uid:
            _fail(kind, hdr, name, f"{name} {getattr(hdr, name)} > next_uid {hdr.next_uid}")


def _check_last_uid(hdr: IndexHeader, last_uid: int, offset: int, kind: str) -> None:
    if last_uid == 0:
        raise DovecotFormatError(kind, offset, "last message has uid=0")
    if last_uid >= hdr.next_uid:
        raise DovecotFormatError(kind, offset,
                                 f"last message uid {last_uid} >= next_uid {hdr.next_uid}")
