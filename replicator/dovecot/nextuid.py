"""Raise a mailbox's next UID in a stopped Dovecot's files, writing what Dovecot itself writes.

`doveadm mailbox update --min-next-uid N` (Dovecot 2.3.19, index_storage_mailbox_update and
sdbox/mdbox_write_index_header) commits one index transaction holding a single
mail_index_update_header() of next_uid. One change means no boundary record, so it appends
exactly one 16-byte record to dovecot.index.log (compared byte for byte with doveadm's):

    size  80 80 80 84   (16, in the log's 7-bit-group encoding)
    type  20 00 00 10   maildir: MAIL_TRANSACTION_HEADER_UPDATE | EXTERNAL
          20 00 00 00   sdbox, mdbox: MAIL_TRANSACTION_HEADER_UPDATE
    data  1c 00 04 00   struct mail_transaction_header_update {offset 28, size 4}
          N (u32 LE)    the new next_uid

For maildir doveadm first recreates dovecot-uidlist with `N<next uid>` in its header line; we
rewrite that line the same way (temp file + rename under the uidlist dotlock).

Why writing the log is enough: Dovecot replays log records after dovecot.index's head offset
whenever it opens the mailbox, and the mailbox list index (dovecot.list.index) trusts its
cached STATUS (uidnext included) only while the mailbox log's size and mtime match what it
recorded, so the append itself invalidates the cache.

A doveadm process costs ~10 ms; this costs tens of microseconds per mailbox (see RaiseResult
timing in the tests), which is what lets promote raise 10 000 mailboxes in under a second.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from replicator.dovecot import logrecord as lr
from replicator.dovecot.indexfile import NEXT_UID_OFFSET, IndexHeader, parse_index_header
from replicator.dovecot.logappend import LockedLog, locked_log
from replicator.dovecot.nextuid_files import (
    UIDLIST,
    NeverSyncedError,
    NextUidError,
    raise_in_index_file,
    raise_uidlist,
    read_file,
)
from replicator.dovecot.uidlist import peek_next_uid
from replicator.dovecot.uidstate import UidState, replay_next_uid

__all__ = ["NeverSyncedError", "NextUidError", "RaiseResult", "header_update_record",
           "raise_next_uid"]

INDEX, LOG, LOG2 = "dovecot.index", "dovecot.index.log", "dovecot.index.log.2"
UID_MAX = 0xFFFFFFFF
_UPDATE = struct.Struct("<HHI")


@dataclass(frozen=True)
class RaiseResult:
    mailbox_index_dir: Path
    previous_next_uid: int  # before: index + log replay, and the maildir uidlist's if higher
    next_uid: int  # the next uid Dovecot will assign afterwards (>= min_next_uid)
    log_offset: int | None  # where our record went in dovecot.index.log; None if not appended
    truncated_bytes: int  # torn log tail removed first, as Dovecot's next append would
    index_rewritten: bool  # there was no log, so dovecot.index's header was patched instead
    uidlist_previous: int | None  # maildir uidlist's effective next uid, None without uidlist
    uidlist_changed: bool

    @property
    def changed(self) -> bool:
        return self.log_offset is not None or self.index_rewritten or self.uidlist_changed


def header_update_record(next_uid: int, *, external: bool) -> bytes:
    """The 16-byte log record Dovecot writes for `mailbox update --min-next-uid next_uid`."""
    rec_type = lr.HEADER_UPDATE | (lr.EXTERNAL if external else 0)
    return lr.record_header(rec_type, _UPDATE.size) + _UPDATE.pack(NEXT_UID_OFFSET, 4, next_uid)


def raise_next_uid(mailbox_index_dir: Path, min_next_uid: int, *, control_dir: Path | None,
                   fsync: bool = False, gap: int = 0) -> RaiseResult:
    """Makes the mailbox's next uid at least min_next_uid, and with `gap` at least `gap` above
    what it is now (the promote safety gap); never lowers it.

    control_dir is the maildir mailbox's control directory (holding dovecot-uidlist), None for
    sdbox and mdbox; it also selects maildir's EXTERNAL record flag. Dovecot must not be
    running on these files (a held log lock raises NextUidError). fsync is off because promote
    works on a staged copy and syncs the whole tree once before renaming it into place.
    """
    if not 1 <= min_next_uid <= UID_MAX:
        raise ValueError(f"min_next_uid {min_next_uid} is not a uid (1..{UID_MAX})")
    index = _read_index_header(mailbox_index_dir / INDEX)
    floor = _uidlist_next(control_dir) if gap and control_dir is not None else 0
    try:
        with locked_log(mailbox_index_dir / LOG, LOG) as log:
            return _raise_in_log(log, mailbox_index_dir, index, (min_next_uid, floor, gap),
                                 control_dir, fsync)
    except FileNotFoundError as e:
        if e.filename != str(mailbox_index_dir / LOG):
            raise
    if gap:
        known = max(floor, index[0].next_uid if index is not None else 0)
        min_next_uid = min(UID_MAX, max(min_next_uid, known + gap))
    return _without_log(mailbox_index_dir, index, min_next_uid, control_dir, fsync)


def _uidlist_next(control_dir: Path) -> int:
    """The maildir uidlist's effective next uid (it may be ahead of the index), 0 if none."""
    data = read_file(control_dir / UIDLIST)
    return peek_next_uid(data) if data is not None else 0


def _read_index_header(path: Path) -> tuple[IndexHeader, bytes] | None:
    raw = read_file(path, limit=256)
    return None if raw is None else (parse_index_header(raw, path.name), raw)


def _raise_in_log(log: LockedLog, box: Path, index: tuple[IndexHeader, bytes] | None,
                  target: tuple[int, int, int], control_dir: Path | None,
                  fsync: bool) -> RaiseResult:
    """Everything is checked before anything is written, the log lock held throughout.
    `target` is (minimum, the uidlist's next uid, gap above the current next uid)."""
    state = replay_next_uid(index, log.header, log.data, lambda: read_file(box / LOG2))
    wanted, floor, gap = target
    if gap:
        wanted = min(UID_MAX, max(wanted, max(state.next_uid, floor) + gap))
    write = state.next_uid < wanted and _may_write(state, box, control_dir)
    uidlist = raise_uidlist(control_dir, wanted, fsync) if control_dir else None
    offset = truncated = None
    if write:
        record = header_update_record(wanted, external=control_dir is not None)
        offset, truncated = state.end, log.append(record, state.end, fsync)
    after = wanted if write else state.next_uid
    return _result(box, state.next_uid, after, wanted, offset, truncated or 0, False, uidlist)


def _may_write(state: UidState, box: Path, control_dir: Path | None) -> bool:
    """False for a maildir index whose uid validity is still 0: Dovecot's next sync copies
    validity and next uid from the uidlist, and a header with uid_validity 0 but next_uid != 1
    is one Dovecot declares corrupted. For sdbox/mdbox there is no such second source."""
    if state.uid_validity != 0:
        return True
    if control_dir is not None and (control_dir / UIDLIST).exists():
        return False
    raise NeverSyncedError(f"{box / LOG}: uid_validity is 0 (mailbox never synced); raising "
                       "next_uid would make Dovecot declare the index corrupted")


def _without_log(box: Path, index: tuple[IndexHeader, bytes] | None, wanted: int,
                 control_dir: Path | None, fsync: bool) -> RaiseResult:
    """No log: patch dovecot.index if there is one; a maildir may have only its uidlist."""
    if index is not None and index[0].uid_validity == 0 and control_dir is None:
        raise NeverSyncedError(f"{box / INDEX}: uid_validity is 0 (never synced); "
                           "raising next_uid would make Dovecot declare it corrupted")
    uidlist = raise_uidlist(control_dir, wanted, fsync) if control_dir else None
    if index is None and uidlist is None:
        raise NeverSyncedError(f"{box}: no {INDEX}, {LOG} or {UIDLIST} to raise")
    previous = index[0].next_uid if index is not None else 0
    rewritten = (index is not None and index[0].uid_validity != 0
                 and raise_in_index_file(box / INDEX, wanted, fsync))
    after = max(previous, wanted) if rewritten else previous
    return _result(box, previous, after, wanted, None, 0, rewritten, uidlist)


def _result(box: Path, previous: int, after: int, wanted: int, offset: int | None,
            truncated: int, rewritten: bool, uidlist: tuple[int, bool] | None) -> RaiseResult:
    """For maildir the uidlist counts too: Dovecot's next sync copies its next uid into the
    index. Refuses to report success when neither source reaches `wanted`."""
    uidlist_after = max(uidlist[0], wanted) if uidlist and uidlist[1] else (
        uidlist[0] if uidlist else 0)
    next_uid = max(after, uidlist_after)
    if next_uid < wanted:
        raise NextUidError(f"{box}: next uid stays {next_uid} < {wanted}: nothing to raise")
    return RaiseResult(box, max(previous, uidlist[0] if uidlist else 0), next_uid, offset,
                       truncated, rewritten, *(uidlist or (None, False)))
