"""The UID safety gap of an asynchronous failover (DESIGN §4.8).

Without sync commit the copy may trail the dead node by its last few batches, and the dead node
may have told clients about UIDs the copy never saw. Raising every promoted mailbox's next UID
by a gap means such a UID is never handed to a different message: IMAP allows gaps, it forbids
reuse. The raise is Dovecot's own min-next-uid header update appended to the mailbox's
transaction log (and, for maildir, the uidlist header), written into the staged copy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from replicator.dovecot.listindex import forget_cached_status
from replicator.dovecot.logappend import LogLockedError
from replicator.dovecot.nextuid import NeverSyncedError, raise_next_uid
from replicator.errors import ReplicatorError

MAILBOX_MARKERS = ("dovecot.index", "dovecot.index.log")


@dataclass
class RaiseSummary:
    mailboxes: int = 0
    raised: int = 0
    failures: list[str] = field(default_factory=list)
    unsynced: list[str] = field(default_factory=list)  # no UIDVALIDITY yet: nothing to raise
    touched: list[Path] = field(default_factory=list)  # files the raise rewrote


def mailbox_dirs(user_roots: Mapping[str, Path]) -> dict[str, tuple[Path, Path | None]]:
    """relative mailbox dir -> (its index directory, its maildir control directory or None),
    found in a user's staged roots."""
    found: dict[str, tuple[Path, Path | None]] = {}
    uidlists: dict[str, Path] = {}
    for top in user_roots.values():
        for dirpath, _dirs, names in os.walk(top):
            rel = os.path.relpath(dirpath, top)
            if any(marker in names for marker in MAILBOX_MARKERS):
                found.setdefault(rel, (Path(dirpath), None))
            if "dovecot-uidlist" in names:
                uidlists[rel] = Path(dirpath)
    for rel, control in uidlists.items():
        index_dir = found.get(rel, (next(iter(user_roots.values())) / rel, None))[0]
        found[rel] = (index_dir, control)
    return found


def raise_user(user_roots: Mapping[str, Path], gap: int) -> RaiseSummary:
    """Raise every mailbox of one user (in its staged copy) by `gap`."""
    summary = RaiseSummary()
    for rel, (index_dir, control_dir) in sorted(mailbox_dirs(user_roots).items()):
        summary.mailboxes += 1
        if gap <= 0:
            continue
        try:
            result = raise_next_uid(index_dir, 1, control_dir=control_dir, gap=gap)
        except LogLockedError as exc:
            summary.failures.append(f"{rel}: {exc}")
            continue
        except NeverSyncedError:
            # no client can hold a UID of it under a UIDVALIDITY it will keep
            summary.unsynced.append(rel)
            continue
        except (ReplicatorError, OSError) as exc:  # NextUidError, DovecotFormatError, I/O
            summary.failures.append(f"{rel}: {exc}")
            continue
        summary.raised += int(result.changed)
        if result.log_offset is not None:
            summary.touched.append(index_dir / "dovecot.index.log")
        if result.index_rewritten:
            summary.touched.append(index_dir / "dovecot.index")
        if result.uidlist_changed and control_dir is not None:
            summary.touched.append(control_dir / "dovecot-uidlist")
    for top in user_roots.values():
        if gap > 0 and (top / "dovecot.list.index.log").exists():
            forget_cached_status(top)
            summary.touched.append(top / "dovecot.list.index.log")
    return summary
