"""The next uid and uid validity Dovecot would see in a mailbox index: dovecot.index + its logs.

dovecot.index is a snapshot up to (log_file_seq, log_file_head_offset); everything after that
lives only in the transaction log (small mailboxes have no dovecot.index at all). Dovecot's
sync replays those records onto the header. We replay only what moves the two fields we need:
header-update records (written into a copy of the 120-byte base header) and appends (a new
message's uid + 1). A header update that would lower next_uid is ignored, exactly as
`sync_header_update` in Dovecot 2.3.19 does, so the result is monotonic.

Which log bytes to replay, given the index's position and the head log's header:
- same file_seq: the head log from log_file_head_offset;
- the head log continues the index's file (prev_file_seq): the rest of .log.2, then the head log;
- the head log starts afresh (prev_file_seq 0: an index reset) or no dovecot.index: a fresh
  header, then .log.2 if the head log continues it, then the head log from its start.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from replicator.dovecot import logrecord as lr
from replicator.dovecot.binfmt import DovecotFormatError
from replicator.dovecot.indexfile import NEXT_UID_OFFSET, IndexHeader
from replicator.dovecot.logfile import (
    LogHeader,
    append_uids,
    header_update_payload,
    parse_log_header,
)
from replicator.dovecot.logscan import scan_records

__all__ = ["UidState", "replay_next_uid"]

BASE_HEADER_SIZE = 120
UID_VALIDITY_OFFSET = 24
_U32 = struct.Struct("<I")
_FROM_HEADER = 0  # replay .log.2 from just after its own header
_REPLAYED = frozenset({lr.HEADER_UPDATE, lr.APPEND})


@dataclass(frozen=True)
class UidState:
    next_uid: int
    uid_validity: int
    end: int  # where the head log's complete records end: the next record goes here
    torn: str | None  # why the head log has bytes after `end`


def replay_next_uid(index: tuple[IndexHeader, bytes] | None, log_hdr: LogHeader, log: bytes,
                    read_log2: Callable[[], bytes | None],
                    kind: str = "dovecot.index.log") -> UidState:
    """Replays the records after the index's position; `index` is (header, raw base header)."""
    image, log2_from, log_from = _plan(index, log_hdr)
    log2 = read_log2() if log2_from is not None else None
    if log2 is not None:
        log2_hdr = parse_log_header(log2, kind + ".2")
        if log2_hdr.file_seq == log_hdr.prev_file_seq:
            _replay(image, log2, log2_from or log2_hdr.hdr_size, kind + ".2")
    end, torn = _replay(image, log, log_from, kind)
    return UidState(_U32.unpack_from(image, NEXT_UID_OFFSET)[0],
                    _U32.unpack_from(image, UID_VALIDITY_OFFSET)[0], end, torn)


def _plan(index: tuple[IndexHeader, bytes] | None,
          log_hdr: LogHeader) -> tuple[bytearray, int | None, int]:
    """(starting header image, offset in .log.2 to replay from or None, offset in the log)."""
    continues = log_hdr.prev_file_seq != 0
    if index is None or (index[0].log_file_seq < log_hdr.file_seq and not continues):
        return _fresh_image(), (_FROM_HEADER if continues else None), log_hdr.hdr_size
    hdr, raw = index
    image = bytearray(raw[:BASE_HEADER_SIZE])
    if hdr.log_file_seq == log_hdr.file_seq:
        return image, None, hdr.log_file_head_offset
    if hdr.log_file_seq > log_hdr.file_seq:
        raise DovecotFormatError("dovecot.index", 60, f"index is at log file_seq "
                                 f"{hdr.log_file_seq}, newer than the log's {log_hdr.file_seq}")
    if hdr.log_file_seq == log_hdr.prev_file_seq:
        return image, hdr.log_file_head_offset, log_hdr.hdr_size
    return image, None, log_hdr.hdr_size


def _fresh_image() -> bytearray:
    """The header Dovecot starts from when it builds an index from logs alone: next_uid=1."""
    image = bytearray(BASE_HEADER_SIZE)
    _U32.pack_into(image, NEXT_UID_OFFSET, 1)
    return image


def _replay(image: bytearray, log: bytes, start: int, kind: str) -> tuple[int, str | None]:
    if start > len(log):
        raise DovecotFormatError(kind, start, f"replay starts past the end of the "
                                 f"{len(log)}-byte log (the index points beyond it)")
    records, end, torn = scan_records(log, start, kind, _REPLAYED)
    for rec in records:
        kind_bits = rec.type & lr.TYPE_MASK
        if kind_bits == lr.HEADER_UPDATE:
            _apply_header_update(image, log, rec, kind)
        elif kind_bits == lr.APPEND:
            for uid in append_uids(log, rec, kind):
                if uid + 1 > _U32.unpack_from(image, NEXT_UID_OFFSET)[0]:
                    _U32.pack_into(image, NEXT_UID_OFFSET, uid + 1)
    return end, torn


def _apply_header_update(image: bytearray, log: bytes, rec: lr.LogRecord, kind: str) -> None:
    before = _U32.unpack_from(image, NEXT_UID_OFFSET)[0]
    for offset, new in header_update_payload(log, rec, kind):
        if offset + len(new) > BASE_HEADER_SIZE:
            raise DovecotFormatError(kind, rec.offset, f"header update outside range: "
                                     f"{offset} + {len(new)} > {BASE_HEADER_SIZE}")
        image[offset:offset + len(new)] = new
    if _U32.unpack_from(image, NEXT_UID_OFFSET)[0] < before:
        _U32.pack_into(image, NEXT_UID_OFFSET, before)
