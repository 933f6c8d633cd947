"""dovecot.index.cache: the 32-byte header, enough to tell whether a cache belongs to its index.

struct mail_cache_header (Dovecot 2.3.19 `mail-cache-private.h`), little-endian:
0 major_version u8, 1 compat_sizeof_uoff_t u8 (8), 2 minor_version u8, 3 unused, 4 indexid,
8 file_seq, 12 continued_record_count, 16 record_count, 20 backwards_compat_used_file_size,
24 deleted_record_count, 28 field_header_offset (stored in the log's 7-bit-group encoding).

A cache belongs to an index when its indexid equals the index's and its file_seq equals the
reset_id of the index's "cache" extension; otherwise Dovecot ignores (or unlinks) it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from replicator.dovecot.binfmt import DovecotFormatError, read_struct
from replicator.dovecot.logrecord import decode_size

__all__ = ["CacheHeader", "parse_cache"]

MAJOR_VERSION = 1
SIZEOF_UOFF_T = 8
_HEADER = struct.Struct("<BBBxIIIIII4s")


@dataclass(frozen=True)
class CacheHeader:
    major_version: int
    compat_sizeof_uoff_t: int
    minor_version: int
    indexid: int
    file_seq: int
    continued_record_count: int
    record_count: int
    backwards_compat_used_file_size: int
    deleted_record_count: int
    field_header_offset: int  # decoded; 0 when the stored word does not decode


def parse_cache(data: bytes | memoryview, kind: str = "dovecot.index.cache") -> CacheHeader:
    """The header, with the checks of mail_cache_verify_header (indexid is the caller's job)."""
    values = read_struct(kind, data, 0, _HEADER, "cache header")
    hdr = CacheHeader(*[*values[:9], decode_size(values[9])])
    if hdr.major_version != MAJOR_VERSION:
        raise DovecotFormatError(kind, 0, f"unsupported major version {hdr.major_version}")
    if hdr.compat_sizeof_uoff_t != SIZEOF_UOFF_T:
        raise DovecotFormatError(kind, 1, f"unsupported uoff_t size {hdr.compat_sizeof_uoff_t}")
    if hdr.file_seq == 0:
        raise DovecotFormatError(kind, 8, "file_seq is 0")
    if hdr.field_header_offset > len(data):
        raise DovecotFormatError(kind, 28, f"field_header_offset {hdr.field_header_offset} "
                                           f"points past the end of the file ({len(data)})")
    return hdr
