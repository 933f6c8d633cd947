"""The record walk over a transaction log body: where complete records end, and why.

Kept apart from the header parsing because it is the hot loop of the min-next-uid writer (one
walk per promoted mailbox) and because its stopping rules are subtle enough to deserve a module
of their own. They follow `mail_transaction_log_file_sync` in Dovecot 2.3.19:

- a size word that does not decode (0) is a record still being written, or garbage: stop;
- a decoded size below the 8-byte record header is corruption;
- a record running past the end of the data is still being written: stop;
- a boundary record announces how many bytes its transaction spans (itself included); if those
  bytes are not all there, the transaction is incomplete and stops the walk *at the boundary*,
  so none of its records count.
"""

from __future__ import annotations

import struct

from replicator.dovecot import logrecord as lr
from replicator.dovecot.binfmt import DovecotFormatError

__all__ = ["scan_records"]

_LE32 = struct.Struct("<I")
_HEADER = struct.Struct("<II")
_FAST_KINDS = lr.KNOWN_KINDS - {lr.APPEND}  # kinds _check has nothing more to say about
_PROTECTED = {lr.EXPUNGE: lr.EXPUNGE | lr.EXPUNGE_PROT,
              lr.EXPUNGE_GUID: lr.EXPUNGE_GUID | lr.EXPUNGE_PROT}


Scanned = tuple[list[lr.LogRecord], int, str | None]
# The last scan of a `bytes` log (which cannot change), whole: promote scans each mailbox's log
# twice, for the UID gap (uidstate) and for Dovecot's checks (logfile.parse_log), with the same
# bytes object. Held with the object itself, so an `is` test cannot meet another object at the
# same address. 10 000 one-message maildir mailboxes staged: one scan each instead of two.
_last: tuple[bytes, int, str, Scanned] | None = None


def scan_records(data: bytes | memoryview, start: int, kind: str,
                 only: frozenset[int] | None = None) -> Scanned:
    """(complete records from `start`, offset after the last complete transaction, torn reason).

    The reason is None when the complete records reach the end of data exactly. `only` keeps
    just the records of those kinds (every record is still checked), for callers that want a
    few kinds out of thousands of records. The same `bytes` scanned again from the same
    offset (the call just before) is not walked again.
    """
    global _last
    last = _last
    if last is not None and last[0] is data and last[1] == start and last[2] == kind:
        records, end, torn = last[3]
    else:
        records, end, torn = _scan(data, start, kind)
        if isinstance(data, bytes):
            _last = (data, start, kind, (records, end, torn))
    if only is None:
        return list(records), end, torn
    return [rec for rec in records if rec.type & lr.TYPE_MASK in only], end, torn


def _scan(data: bytes | memoryview, start: int, kind: str) -> Scanned:
    """scan_records, every record kept."""
    if not 0 < start <= len(data):
        raise DovecotFormatError(kind, start, f"start offset outside the {len(data)}-byte file")
    records: list[lr.LogRecord] = []
    size, pos, txn_end, txn_start, txn_count = len(data), start, 0, start, 0
    while pos + lr.HEADER_SIZE <= size:
        # Both header words read little-endian in one call; the size word is big-endian
        # 7-bit groups (logrecord.decode_size), rearranged here from the little-endian value.
        v, rec_type = _HEADER.unpack_from(data, pos)
        if v & 0x80808080 != 0x80808080:
            return _torn(records, txn_count, pos, txn_end, txn_start, "unfinished record size")
        rec_size = ((v >> 24) & 0x7F | (v >> 9) & 0x3F80 | (v << 6) & 0x1FC000
                    | (v & 0x7F) << 21) << 2
        if rec_size <= lr.HEADER_SIZE or rec_type & lr.TYPE_MASK not in _FAST_KINDS:
            _check(rec_size, rec_type, pos, kind)
        if pos + rec_size > size:
            return _torn(records, txn_count, pos, txn_end, txn_start,
                         f"record of {rec_size} bytes runs past end of file ({size})")
        if rec_type & lr.TYPE_MASK == lr.BOUNDARY:
            txn_start, txn_count = pos, len(records)
            txn_end = pos + (_LE32.unpack_from(data, pos + 8)[0] if rec_size >= 12 else 0)
        records.append(lr.LogRecord(pos, rec_size, rec_type))
        pos += rec_size
    if txn_end > pos:
        return _torn(records, txn_count, pos, txn_end, txn_start, "")
    if pos < size:
        return records, pos, f"{size - pos} bytes after the last record"
    return records, pos, None


def _torn(records: list[lr.LogRecord], txn_count: int, pos: int, txn_end: int, txn_start: int,
          reason: str) -> Scanned:
    """Cut at `pos`, or at the open transaction's boundary record if it reaches past pos."""
    if txn_end > pos:
        why = f"transaction at {txn_start} spans {txn_end - txn_start} bytes, file ends first"
        return records[:txn_count], txn_start, why if not reason else f"{why} ({reason})"
    return records, pos, reason


def _check(rec_size: int, rec_type: int, pos: int, kind: str) -> None:
    """Structural rules of log_view_is_record_valid and the sync reader."""
    if rec_size < lr.HEADER_SIZE:
        raise DovecotFormatError(kind, pos, f"record size {rec_size} < {lr.HEADER_SIZE}")
    if rec_size == lr.HEADER_SIZE:
        raise DovecotFormatError(kind, pos, f"empty record contents (type {rec_type:#x})")
    for bit, wanted in _PROTECTED.items():
        if rec_type & bit and rec_type & lr.TYPE_MASK != wanted:
            raise DovecotFormatError(kind, pos, "expunge record missing protection mask")
    if rec_type & lr.TYPE_MASK not in lr.KNOWN_KINDS:
        raise DovecotFormatError(kind, pos,
                                 f"unknown record type {rec_type & lr.TYPE_MASK:#x}")
    if (rec_type & lr.TYPE_MASK == lr.APPEND
            and (rec_size - lr.HEADER_SIZE) % lr.APPEND_RECORD_SIZE):
        raise DovecotFormatError(kind, pos, f"append record size {rec_size} not 8 + n*8")
