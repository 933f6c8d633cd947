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

The decision is made once, by plan_raise, from the files' bytes: raise_next_uid applies it to a
mailbox on disk (log lock held), and promote applies it to the bytes it is copying anyway, so
the copy it writes is already raised and the replica it reads is left as it was.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from replicator.dovecot import logrecord as lr
from replicator.dovecot.indexfile import (
    NEXT_UID_OFFSET,
    IndexHeader,
    parse_index,
    parse_index_header,
)
from replicator.dovecot.logappend import locked_log
from replicator.dovecot.logfile import parse_log_header
from replicator.dovecot.nextuid_files import (
    UIDLIST,
    NeverSyncedError,
    NextUidError,
    raise_in_index_file,
    raise_uidlist,
    read_file,
)
from replicator.dovecot.uidlist import peek_next_uid, with_next_uid
from replicator.dovecot.uidstate import UidState, replay_next_uid

__all__ = ["MailboxBytes", "NeverSyncedError", "NextUidError", "RaisePlan", "RaiseResult",
           "header_update_record", "plan_raise", "raise_next_uid"]

INDEX, LOG, LOG2 = "dovecot.index", "dovecot.index.log", "dovecot.index.log.2"
UID_MAX = 0xFFFFFFFF
_UPDATE = struct.Struct("<HHI")
_U32 = struct.Struct("<I")


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


@dataclass(frozen=True)
class MailboxBytes:
    """One mailbox's files as bytes (None: the file is absent), what a raise decides from."""

    box: Path  # the mailbox's index directory: names it in errors
    index: bytes | None  # dovecot.index: its header at least, whole where there is no log
    log: bytes | None  # dovecot.index.log, whole
    read_log2: Callable[[], bytes | None]  # dovecot.index.log.2, read only if replay needs it
    uidlist: bytes | None  # maildir's dovecot-uidlist, whole
    maildir: bool  # has a control directory: the uidlist counts, records are EXTERNAL


@dataclass(frozen=True)
class RaisePlan:
    """What raising one mailbox changes: the result, and each changed file's new bytes."""

    result: RaiseResult
    wanted: int  # the next uid asked for (the gap applied)
    log: bytes | None  # dovecot.index.log: complete records + our header update
    index: bytes | None  # dovecot.index with next_uid patched (only where there is no log)
    uidlist: bytes | None  # dovecot-uidlist with its header's next uid raised


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
    running on these files (a held log lock raises NextUidError). Everything is read and
    checked (plan_raise) before anything is written, the log lock held throughout.
    """
    _check_uid(min_next_uid)
    box = mailbox_index_dir
    uidlist = read_file(control_dir / UIDLIST) if control_dir is not None else None
    index = read_file(box / INDEX, limit=256)
    try:
        with locked_log(box / LOG, LOG) as log:
            plan = plan_raise(MailboxBytes(box, index, log.data, lambda: read_file(box / LOG2),
                                           uidlist, control_dir is not None), min_next_uid, gap)
            _write_uidlist(plan, control_dir, fsync)
            offset = plan.result.log_offset
            if plan.log is not None and offset is not None:
                log.append(plan.log[offset:], offset, fsync)
            return plan.result
    except FileNotFoundError as e:
        if e.filename != str(box / LOG):
            raise
    whole = read_file(box / INDEX)  # no log: the index itself is rewritten, so read it all
    plan = plan_raise(MailboxBytes(box, whole, None, lambda: None, uidlist,
                                   control_dir is not None), min_next_uid, gap)
    _write_uidlist(plan, control_dir, fsync)
    if plan.index is not None:
        raise_in_index_file(box / INDEX, plan.wanted, fsync)
    return plan.result


def _write_uidlist(plan: RaisePlan, control_dir: Path | None, fsync: bool) -> None:
    """The uidlist goes first (as doveadm does it): its dotlock + rename is all or nothing."""
    if plan.uidlist is not None and control_dir is not None:
        raise_uidlist(control_dir, plan.wanted, fsync)


def plan_raise(files: MailboxBytes, min_next_uid: int, gap: int = 0) -> RaisePlan:
    """What raise_next_uid would write, decided from bytes alone (no I/O): promote raises the
    copy it writes with it, so the replica it reads stays untouched and a repeated promote
    computes the same gap from the same bytes."""
    _check_uid(min_next_uid)
    index = None if files.index is None else (parse_index_header(files.index, INDEX),
                                              files.index)
    uidlist = files.uidlist if files.maildir else None
    floor = peek_next_uid(uidlist) if gap and uidlist is not None else 0
    if files.log is not None:
        return _plan_in_log(files, index, (min_next_uid, floor, gap))
    if gap:
        known = max(floor, index[0].next_uid if index is not None else 0)
        min_next_uid = min(UID_MAX, max(min_next_uid, known + gap))
    return _plan_without_log(files, index, min_next_uid)


def _check_uid(min_next_uid: int) -> None:
    if not 1 <= min_next_uid <= UID_MAX:
        raise ValueError(f"min_next_uid {min_next_uid} is not a uid (1..{UID_MAX})")


def _plan_in_log(files: MailboxBytes, index: tuple[IndexHeader, bytes] | None,
                 target: tuple[int, int, int]) -> RaisePlan:
    """`target` is (minimum, the uidlist's next uid, gap above the current next uid)."""
    assert files.log is not None
    log_hdr = parse_log_header(files.log, LOG)
    state = replay_next_uid(index, log_hdr, files.log, files.read_log2)
    wanted, floor, gap = target
    if gap:
        wanted = min(UID_MAX, max(wanted, max(state.next_uid, floor) + gap))
    write = state.next_uid < wanted and _may_write(state, files)
    uidlist = _raised_uidlist(files.uidlist, wanted, floor if gap else None) \
        if files.maildir else None
    log = offset = None
    if write:
        offset = state.end
        log = files.log[:offset] + header_update_record(wanted, external=files.maildir)
    after = wanted if write else state.next_uid
    cut = len(files.log) - state.end if write else 0
    result = _result(files.box, state.next_uid, after, wanted, offset, cut, False, uidlist)
    return RaisePlan(result, wanted, log, None, uidlist[2] if uidlist else None)


def _may_write(state: UidState, files: MailboxBytes) -> bool:
    """False for a maildir index whose uid validity is still 0: Dovecot's next sync copies
    validity and next uid from the uidlist, and a header with uid_validity 0 but next_uid != 1
    is one Dovecot declares corrupted. For sdbox/mdbox there is no such second source."""
    if state.uid_validity != 0:
        return True
    if files.maildir and files.uidlist is not None:
        return False
    raise NeverSyncedError(f"{files.box / LOG}: uid_validity is 0 (mailbox never synced); "
                           "raising next_uid would make Dovecot declare the index corrupted")


def _raised_uidlist(data: bytes | None, wanted: int, peeked: int | None = None
                    ) -> tuple[int, bool, bytes | None] | None:
    """(effective next uid before, rewritten?, new bytes) of a uidlist; None if absent. Mirrors
    maildir_uidlist_set_next_uid: the header's `N<next uid>` changes only when the uidlist's
    effective next uid is below `wanted` (the rule raise_uidlist applies on disk). `peeked`:
    peek_next_uid(data), when the caller has it already."""
    if data is None:
        return None
    previous = peek_next_uid(data) if peeked is None else peeked
    if previous >= wanted:
        return previous, False, None
    return previous, True, with_next_uid(data, wanted, checked=True)


def _plan_without_log(files: MailboxBytes, index: tuple[IndexHeader, bytes] | None,
                      wanted: int) -> RaisePlan:
    """No log: patch dovecot.index if there is one; a maildir may have only its uidlist."""
    if index is not None and index[0].uid_validity == 0 and not files.maildir:
        raise NeverSyncedError(f"{files.box / INDEX}: uid_validity is 0 (never synced); "
                               "raising next_uid would make Dovecot declare it corrupted")
    uidlist = _raised_uidlist(files.uidlist, wanted) if files.maildir else None
    if index is None and uidlist is None:
        raise NeverSyncedError(f"{files.box}: no {INDEX}, {LOG} or {UIDLIST} to raise")
    previous = index[0].next_uid if index is not None else 0
    patched = None
    if index is not None and index[0].uid_validity != 0:
        patched = _patched_index(index[1], wanted)
    after = max(previous, wanted) if patched is not None else previous
    result = _result(files.box, previous, after, wanted, None, 0, patched is not None, uidlist)
    return RaisePlan(result, wanted, None, patched, uidlist[2] if uidlist else None)


def _patched_index(data: bytes, wanted: int) -> bytes | None:
    """dovecot.index with next_uid set to `wanted`, None if it is there already (the rule
    raise_in_index_file applies on disk)."""
    if parse_index(data, INDEX).header.next_uid >= wanted:
        return None
    new = bytearray(data)
    _U32.pack_into(new, NEXT_UID_OFFSET, wanted)
    return bytes(new)


def _result(box: Path, previous: int, after: int, wanted: int, offset: int | None,
            truncated: int, rewritten: bool,
            uidlist: tuple[int, bool, bytes | None] | None) -> RaiseResult:
    """For maildir the uidlist counts too: Dovecot's next sync copies its next uid into the
    index. Refuses to report success when neither source reaches `wanted`."""
    uidlist_after = max(uidlist[0], wanted) if uidlist and uidlist[1] else (
        uidlist[0] if uidlist else 0)
    next_uid = max(after, uidlist_after)
    if next_uid < wanted:
        raise NextUidError(f"{box}: next uid stays {next_uid} < {wanted}: nothing to raise")
    return RaiseResult(box, max(previous, uidlist[0] if uidlist else 0), next_uid, offset,
                       truncated, rewritten, uidlist[0] if uidlist else None,
                       bool(uidlist and uidlist[1]))
