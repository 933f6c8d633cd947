"""The extension headers that follow an index file's base header.

Each is a struct mail_index_ext_header (16 bytes: hdr_size u32, reset_id u32, record_offset u16,
record_size u16, record_align u16, name_size u16), the name (not NUL-terminated), padding to a
64-bit boundary, hdr_size bytes of data, padding to a 64-bit boundary (Dovecot 2.3.19
`mail_index_map_ext_get_next`). The "cache" extension's reset_id must equal the cache file's
file_seq, which is how a verifier tells that a cache belongs to its index.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from replicator.dovecot.binfmt import DovecotFormatError, read_struct

__all__ = ["IndexExtension", "parse_extensions"]

_EXT = struct.Struct("<IIHHHH")
_NAME_RE = re.compile(rb"[A-Za-z0-9_ -]{1,63}")
_MAX_HDR_SIZE = 1024 * 1024 * 16 - 1


@dataclass(frozen=True)
class IndexExtension:
    """One extension: where it sits in the header and in each record, and its header data."""

    name: str
    ext_offset: int  # file offset of its mail_index_ext_header
    hdr_offset: int  # file offset of its header data
    hdr_size: int
    reset_id: int
    record_offset: int
    record_size: int
    record_align: int
    data: bytes  # the extension's header data (hdr_size bytes)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def parse_extensions(data: bytes | memoryview, base_header_size: int, header_size: int,
                     record_size: int, kind: str) -> tuple[IndexExtension, ...]:
    """Every extension header between the base header and header_size, in file order."""
    offset = _align8(base_header_size)
    found: list[IndexExtension] = []
    while offset < header_size:
        ext = _parse_one(data, offset, header_size, kind)
        _check(ext, record_size, kind)
        if any(e.name == ext.name for e in found):
            raise DovecotFormatError(kind, offset, f"duplicate header extension {ext.name!r}")
        found.append(ext)
        offset = ext.hdr_offset + _align8(ext.hdr_size)
    return tuple(found)


def _parse_one(data: bytes | memoryview, offset: int, header_size: int,
               kind: str) -> IndexExtension:
    if offset + _EXT.size >= header_size:
        raise DovecotFormatError(kind, offset, "extension header goes outside header_size")
    hdr_size, reset_id, rec_off, rec_size, rec_align, name_size = read_struct(
        kind, data, offset, _EXT, "extension header")
    hdr_offset = offset + _align8(_EXT.size + name_size)
    if hdr_offset + _align8(hdr_size) > header_size:
        raise DovecotFormatError(
            kind, offset, f"extension (name_size {name_size}, hdr_size {hdr_size}) goes outside "
            f"header_size {header_size}")
    raw_name = bytes(data[offset + _EXT.size:offset + _EXT.size + name_size])
    if not _NAME_RE.fullmatch(raw_name):
        raise DovecotFormatError(kind, offset, f"invalid extension name {raw_name!r}")
    return IndexExtension(raw_name.decode("ascii"), offset, hdr_offset, hdr_size, reset_id,
                          rec_off, rec_size, rec_align,
                          bytes(data[hdr_offset:hdr_offset + hdr_size]))


def _check(ext: IndexExtension, record_size: int, kind: str) -> None:
    """mail_index_map_ext_hdr_check and ..._check_record."""
    problem = None
    if ext.record_size == 0 and ext.hdr_size == 0:
        problem = "both record_size and hdr_size are 0"
    elif ext.hdr_size > _MAX_HDR_SIZE:
        problem = f"hdr_size {ext.hdr_size} too large"
    elif ext.record_size and not 1 <= ext.record_align <= 8:
        problem = f"record_align {ext.record_align} not in 1..8"
    elif ext.record_size >= 32768:
        problem = f"record_size {ext.record_size} too large"
    elif ext.record_size and ext.record_offset:
        problem = _check_record_placement(ext, record_size)
    if problem is not None:
        raise DovecotFormatError(kind, ext.ext_offset, f"extension {ext.name!r}: {problem}")


def _check_record_placement(ext: IndexExtension, record_size: int) -> str | None:
    if ext.record_offset + ext.record_size > record_size:
        return (f"record field outside record size ({ext.record_offset}+{ext.record_size} > "
                f"{record_size})")
    if ext.record_offset % ext.record_align or record_size % ext.record_align:
        return f"record field not aligned to {ext.record_align}"
    return None
