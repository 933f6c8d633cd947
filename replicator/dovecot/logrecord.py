"""Transaction log record framing: the record header, its odd size encoding, and record types.

Every record starts with struct mail_transaction_header { u32 size; u32 type; }. `type` is
little-endian; `size` (header included, a multiple of 4) is stored through Dovecot's
mail_index_uint32_to_offset(): size/4 split into four 7-bit groups, each byte's top bit set,
written big-endian. A word without all four top bits set decodes to 0, which is how Dovecot
tells a record that is still being written (or garbage) from a finished one.
(Dovecot 2.3.19 `mail-transaction-log.h`, `mail-index-util.c`.)
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["BOUNDARY", "EXTERNAL", "HEADER_UPDATE", "LogRecord", "decode_size", "encode_size",
           "record_header", "type_name"]

EXPUNGE = 0x00000001
APPEND = 0x00000002
FLAG_UPDATE = 0x00000004
HEADER_UPDATE = 0x00000020
EXT_INTRO = 0x00000040
EXT_RESET = 0x00000080
EXT_HDR_UPDATE = 0x00000100
EXT_REC_UPDATE = 0x00000200
KEYWORD_UPDATE = 0x00000400
KEYWORD_RESET = 0x00000800
EXT_ATOMIC_INC = 0x00001000
EXPUNGE_GUID = 0x00002000
MODSEQ_UPDATE = 0x00008000
EXT_HDR_UPDATE32 = 0x00010000
INDEX_DELETED = 0x00020000
INDEX_UNDELETED = 0x00040000
BOUNDARY = 0x00080000
ATTRIBUTE_UPDATE = 0x00100000
TYPE_MASK = 0x0FFFFFFF
EXPUNGE_PROT = 0x0000CD90
EXTERNAL = 0x10000000
SYNC = 0x20000000

_NAMES = {
    EXPUNGE | EXPUNGE_PROT: "expunge", APPEND: "append", FLAG_UPDATE: "flag-update",
    HEADER_UPDATE: "header-update", EXT_INTRO: "ext-intro", EXT_RESET: "ext-reset",
    EXT_HDR_UPDATE: "ext-hdr", EXT_REC_UPDATE: "ext-rec", KEYWORD_UPDATE: "keyword-update",
    KEYWORD_RESET: "keyword-reset", EXT_ATOMIC_INC: "ext-atomic-inc",
    EXPUNGE_GUID | EXPUNGE_PROT: "expunge-guid", MODSEQ_UPDATE: "modseq-update",
    EXT_HDR_UPDATE32: "ext-hdr32", INDEX_DELETED: "index-deleted",
    INDEX_UNDELETED: "index-undeleted", BOUNDARY: "boundary", ATTRIBUTE_UPDATE: "attribute-update",
}
KNOWN_KINDS = frozenset(_NAMES)
HEADER_SIZE = 8
APPEND_RECORD_SIZE = 8  # struct mail_index_record: uid u32, flags u8, 3 bytes padding
_BE32 = struct.Struct(">I")
_LE32 = struct.Struct("<I")


class LogRecord(NamedTuple):
    """One record: its file offset, full size (8-byte header included) and raw type word.

    A NamedTuple rather than a dataclass because logs hold thousands of records and the
    min-next-uid writer scans them per mailbox on a 100 µs budget.
    """

    offset: int
    size: int
    type: int

    @property
    def kind(self) -> int:
        """The type without the EXTERNAL/SYNC flag bits (expunges keep their protection bits)."""
        return self.type & TYPE_MASK

    @property
    def external(self) -> bool:
        return bool(self.type & EXTERNAL)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def name(self) -> str:
        return type_name(self.type)


def type_name(rec_type: int) -> str:
    """The name `doveadm dump` prints: "header-update", "boundary (ext)", "unknown: 400000"."""
    name = _NAMES.get(rec_type & TYPE_MASK, f"unknown: {rec_type & TYPE_MASK:x}")
    return name + " (ext)" * bool(rec_type & EXTERNAL) + " (sync)" * bool(rec_type & SYNC)


def decode_size(word: bytes | memoryview) -> int:
    """mail_index_offset_to_uint32 of the 4 stored bytes; 0 means unfinished or garbage."""
    o: int = _BE32.unpack(word)[0]
    if o & 0x80808080 != 0x80808080:
        return 0
    return ((o & 0x7F) | (o & 0x7F00) >> 1 | (o & 0x7F0000) >> 2 | (o & 0x7F000000) >> 3) << 2


def encode_size(size: int) -> bytes:
    """mail_index_uint32_to_offset: the 4 bytes Dovecot stores for a record of `size` bytes."""
    if not 0 <= size < 0x40000000 or size % 4:
        raise ValueError(f"log record size {size} is not a multiple of 4 below 2**30")
    n = size >> 2
    o = (0x80808080 | (n & 0x7F) | (n & 0x3F80) << 1 | (n & 0x1FC000) << 2
         | (n & 0xFE00000) << 3)
    return _BE32.pack(o)


def record_header(rec_type: int, payload_size: int) -> bytes:
    """The 8-byte struct mail_transaction_header for a record carrying payload_size bytes."""
    return encode_size(HEADER_SIZE + payload_size) + _LE32.pack(rec_type)
