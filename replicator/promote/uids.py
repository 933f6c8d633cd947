"""The UID safety gap of an asynchronous failover (DESIGN §4.8).

Without sync commit the copy may trail the dead node by its last few batches, and the dead node
may have told clients about UIDs the copy never saw. Raising every promoted mailbox's next UID
by a gap means such a UID is never handed to a different message: IMAP allows gaps, it forbids
reuse. The raise is Dovecot's own min-next-uid header update appended to the mailbox's
transaction log (and, for maildir, the uidlist header).

It is computed here from the replica's bytes and written only into the staged copy (promote's
copy writes these bytes instead of the originals): the replica is never modified, so its digest
journal stays valid without being rewritten, and a promote run again (after a crash, or with
--force) computes the same gap from the same bytes instead of adding a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from replicator.dovecot.listindex import LIST_LOG, forget_status_transaction
from replicator.dovecot.logfile import parse_log_header
from replicator.dovecot.logscan import scan_records
from replicator.dovecot.nextuid import INDEX, LOG, LOG2, MailboxBytes, NeverSyncedError, plan_raise
from replicator.dovecot.nextuid_files import UIDLIST
from replicator.errors import ReplicatorError

MAILBOX_MARKERS = (INDEX, LOG)
Read = Callable[[str, int | None], bytes | None]  # a file's bytes (at most limit), None: absent


@dataclass
class RaiseSummary:
    mailboxes: int = 0
    raised: int = 0
    failures: list[str] = field(default_factory=list)
    unsynced: list[str] = field(default_factory=list)  # no UIDVALIDITY yet: nothing to raise


@dataclass(frozen=True)
class Mailbox:
    """Where one mailbox's files are: its index directory and, for maildir, its control
    directory (the one holding dovecot-uidlist)."""

    rel: str  # relative to the user's directory ("." for the user's directory itself)
    index_dir: str
    control_dir: str | None


def find_mailboxes(listing: Mapping[str, Mapping[str, list[str]]]) -> dict[str, Mailbox]:
    """Every mailbox of one user, keyed by its directory relative to the user's.

    `listing` maps each root's user directory (in the configured root order) to
    {relative dir ("" for the top): file names}. A directory holding dovecot.index or its log
    is a mailbox's index directory (the first root that has one wins); one holding
    dovecot-uidlist is its control directory. A maildir mailbox known only by its uidlist is
    looked for in the first root."""
    found: dict[str, Mailbox] = {}
    controls: dict[str, str] = {}
    for top, dirs in listing.items():
        for rel, names in dirs.items():
            if any(marker in names for marker in MAILBOX_MARKERS) and rel not in found:
                found[rel] = Mailbox(rel or ".", _join(top, rel), None)
            if UIDLIST in names:
                controls[rel] = _join(top, rel)
    first = next(iter(listing), "")
    for rel, control in controls.items():
        index_dir = found[rel].index_dir if rel in found else _join(first, rel)
        found[rel] = Mailbox(rel or ".", index_dir, control)
    return found


def raised_files(box: Mailbox, gap: int, read: Read,
                 summary: RaiseSummary) -> dict[str, bytes]:
    """The new bytes of the mailbox's files the gap changes (path -> bytes), counted in
    `summary`; nothing for a mailbox that was never synced (no client can hold a UID of it
    under a UIDVALIDITY it will keep) or whose files cannot be raised (a failure)."""
    summary.mailboxes += 1
    if gap <= 0:
        return {}
    index, control = box.index_dir, box.control_dir
    log = read(f"{index}/{LOG}", None)
    # with a log only the index's header counts; without one the index itself is rewritten
    files = MailboxBytes(Path(index), read(f"{index}/{INDEX}", 256 if log is not None else None),
                         log, lambda: read(f"{index}/{LOG2}", None),
                         read(f"{control}/{UIDLIST}", None) if control is not None else None,
                         control is not None)
    try:
        plan = plan_raise(files, 1, gap)
    except NeverSyncedError:
        summary.unsynced.append(box.rel)
        return {}
    except (ReplicatorError, OSError) as exc:  # NextUidError, DovecotFormatError, I/O
        summary.failures.append(f"{box.rel}: {exc}")
        return {}
    summary.raised += int(plan.result.changed)
    changed = {f"{index}/{LOG}": plan.log, f"{index}/{INDEX}": plan.index,
               f"{control}/{UIDLIST}": plan.uidlist}
    return {path: data for path, data in changed.items() if data is not None}


def forgotten_status(data: bytes) -> bytes:
    """dovecot.list.index.log with the transaction that makes the list index forget the
    STATUS values it caches (UIDNEXT among them) appended after its complete records, as
    forget_cached_status writes it on disk (see listindex)."""
    header = parse_log_header(data, LIST_LOG)
    _, end, _ = scan_records(data, header.hdr_size, LIST_LOG)
    return data[:end] + forget_status_transaction()


def _join(top: str, rel: str) -> str:
    return f"{top}/{rel}" if rel else top

