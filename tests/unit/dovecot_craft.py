"""Builders of crafted Dovecot 2.3 files for the unit tests (layouts as in the parsers' docs).

Independent of the code under test on purpose: offsets are spelled out here again with
struct formats, so a wrong offset in a parser cannot be hidden by the same mistake in a builder.
The one shared piece is the record size encoding, which has its own known-answer test.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

INDEXID = 1700000000
UID_VALIDITY = 1700000001
HEADER_UPDATE, APPEND, BOUNDARY, FLAG_UPDATE, EXTERNAL = 0x20, 0x02, 0x80000, 0x04, 0x10000000
EXPUNGE_GUID_PROT = 0x2000 | 0xCD90


def encoded_size(size: int) -> bytes:
    """Record size word, written the long way round (see logrecord.encode_size)."""
    n = size // 4
    groups = [(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F]
    return bytes(0x80 | g for g in groups)


def rec(rec_type: int, payload: bytes) -> bytes:
    return encoded_size(8 + len(payload)) + struct.pack("<I", rec_type) + payload


def header_update(field_offset: int, value: int, *, external: bool = True) -> bytes:
    return rec(HEADER_UPDATE | (EXTERNAL if external else 0),
               struct.pack("<HHI", field_offset, 4, value))


def append(*uids: int) -> bytes:
    return rec(APPEND | EXTERNAL, b"".join(struct.pack("<IB3x", u, 0) for u in uids))


def boundary(size: int) -> bytes:
    return rec(BOUNDARY | EXTERNAL, struct.pack("<I", size))


def flag_update(uid1: int, uid2: int) -> bytes:
    return rec(FLAG_UPDATE, struct.pack("<IIBBBx", uid1, uid2, 8, 0, 0))


def transaction(*records: bytes) -> bytes:
    """A boundary record followed by `records`, its size covering itself and them."""
    body = b"".join(records)
    return boundary(12 + len(body)) + body


def log_bytes(records: Sequence[bytes] = (), *, file_seq: int = 1, prev_file_seq: int = 0,
              prev_file_offset: int = 0, indexid: int = INDEXID, major: int = 1,
              minor: int = 3, hdr_size: int = 40, compat_flags: int = 1,
              initial_modseq: int = 1) -> bytes:
    hdr = struct.pack("<BBHIIIIIQB3xI", major, minor, hdr_size, indexid, file_seq,
                      prev_file_seq, prev_file_offset, 1700000100, initial_modseq,
                      compat_flags, 0)
    return hdr[:hdr_size].ljust(hdr_size, b"\0") + b"".join(records)


def ext_header(name: str, data: bytes = b"", *, reset_id: int = 0, record_offset: int = 0,
               record_size: int = 0, record_align: int = 0) -> bytes:
    raw = struct.pack("<IIHHHH", len(data), reset_id, record_offset, record_size,
                      record_align, len(name)) + name.encode()
    raw = raw.ljust((len(raw) + 7) & ~7, b"\0") + data
    return raw.ljust((len(raw) + 7) & ~7, b"\0")


def index_bytes(uids: Sequence[int] = (1, 2, 3), *, next_uid: int = 4,
                uid_validity: int = UID_VALIDITY, record_size: int = 16,
                extensions: Sequence[bytes] = (), log_file_seq: int = 1,
                head_offset: int = 40, tail_offset: int = 40, seen: int = 0,
                deleted: int = 0, first_recent_uid: int = 1, major: int = 7,
                compat_flags: int = 1, flags: int = 0, indexid: int = INDEXID,
                messages_count: int | None = None) -> bytes:
    ext = b"".join(extensions)
    count = len(uids) if messages_count is None else messages_count
    base = struct.pack("<BBHIIB3x18I8I", major, 3, 120, 120 + len(ext), record_size,
                       compat_flags, indexid, flags, uid_validity, next_uid, count, 0,
                       seen, deleted, first_recent_uid, 0, 0, log_file_seq, tail_offset,
                       head_offset, 0, 0xFFFFFFFF, 0, 1699920000, 1, 0, 0, 0, 0, 0, 0, 0)
    records = b"".join(struct.pack("<IB", u, 0).ljust(record_size, b"\0") for u in uids)
    return base + ext + records


def cache_bytes(*, indexid: int = INDEXID, file_seq: int = 1700000002, major: int = 1,
                uoff: int = 8, field_header_offset: int = 32, total: int = 64) -> bytes:
    hdr = struct.pack("<BBBxIIIIII", major, uoff, 1, indexid, file_seq, 0, 3, 0, 0)
    return (hdr + encoded_size(field_header_offset)).ljust(total, b"\0")
