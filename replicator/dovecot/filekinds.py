"""What a file under a Dovecot index or control root is, and whether it is worth shipping.

Nothing here is an allow-list: every file is shipped except the transient ones Dovecot uses while
it writes (locks, dotlocks, temp files). The kind only decides the order in which a directory's
files are read (dependents first) and made visible on the replica (dependencies first), and
which encoder is likely to give the smallest delta.
"""

from __future__ import annotations

import re
from enum import Enum
from functools import lru_cache

# Dovecot's transient names (seen with strace on 2.3.19): dotlocks and their temp names
# (`dovecot-uidlist.lock`, `subscriptions.lock`, `mailboxes.lock<16 hex>`), the log rotation
# lock (`dovecot.index.log.newlock`), and temp files renamed into place (`dovecot.index.tmp`,
# `dovecot.index.cache.tmp`, `dovecot.index.backup.tmp`, `dovecot-uidlist.tmp`,
# `.temp.<host>.<pid>.<rand>`). `dovecot-uidvalidity.<hex>` is NOT transient: it is a marker.
_TRANSIENT = re.compile(
    r"""(?x)
    .*\.lock.* | .*\.newlock | .*\.tmp | \.temp\..* | .*\.tmp\..*
    """
)


class FileKind(Enum):
    """Kinds with distinct write patterns (DESIGN §3)."""

    INDEX = "index"            # dovecot.index, dovecot.list.index, dovecot.map.index: temp+rename
    LOG = "log"                # *.log and rotated *.log.2: O_APPEND under an fcntl lock
    CACHE = "cache"            # dovecot.index.cache: appends and in-place header rewrites
    UIDLIST = "uidlist"        # dovecot-uidlist: appends, sometimes temp+rename
    MAILBOX_LOG = "mailbox-log"  # dovecot.mailbox.log: appends
    SMALL = "small"            # keywords, subscriptions, uidvalidity markers: lock+rename
    BACKUP = "backup"          # dovecot.index.backup: a hard link to the previous index
    OTHER = "other"            # anything else Dovecot (or a plugin) writes there


_BY_NAME: dict[str, FileKind] = {
    "dovecot.index": FileKind.INDEX,
    "dovecot.list.index": FileKind.INDEX,
    "dovecot.map.index": FileKind.INDEX,
    "dovecot.index.cache": FileKind.CACHE,
    "dovecot-uidlist": FileKind.UIDLIST,
    "dovecot.mailbox.log": FileKind.MAILBOX_LOG,
    "dovecot-keywords": FileKind.SMALL,
    "subscriptions": FileKind.SMALL,
    "dovecot.index.backup": FileKind.BACKUP,
    "dovecot.list.index.backup": FileKind.BACKUP,
    "dovecot.map.index.backup": FileKind.BACKUP,
}

# Files read under a shared fcntl lock, as Dovecot's own readers do (lock_method = fcntl):
# Dovecot appends to its logs and rewrites its caches under an exclusive one, so a reader
# holding a shared one for the moment of its read sees whole records.
FCNTL_LOCKED = frozenset({FileKind.LOG, FileKind.CACHE})

# Of those, the kinds read without the lock once Dovecot has held it for a while
# (capture.snapshot.LOCK_PATIENCE). Dovecot holds a log's lock through the fdatasync after the
# append (mail_fsync = always), and a reader that waits for it lags by the disk's flush. A log
# is appended to (its header is written in place only to mark it corrupted, four bytes in one
# page), and every byte below the size fstat reports has been written: what a reader without
# the lock sees is a prefix of what Dovecot wrote, as for maildir's uidlist, which Dovecot
# appends to under a dotlock we never took. A prefix that ends inside a record (a multi-page
# append caught between pages) is a torn tail, which Dovecot itself cuts and promote's checks
# accept; the end of that append (an inotify event) asks for the next read, which ships the
# rest. Not the cache: Dovecot rewrites it in place, and a reader without the lock can see a
# record half old and half new (DESIGN §2 measured such a copy being deleted as corrupted).
READ_PAST_LOCK = frozenset({FileKind.LOG})

# Append-mostly kinds: the tail encoder is tried first.
APPEND_MOSTLY = frozenset({FileKind.LOG, FileKind.UIDLIST, FileKind.MAILBOX_LOG})

# Kinds a sync commit need not wait for (sender.batcher.build_for_commit): indexes are snapshots
# of their log (Dovecot replays the log from the offset an index names), a backup is an older
# index. They follow the log tails in the same ordered stream. Not the cache: the log names
# offsets in it, and a promoted copy whose cache lacked them would append its own records
# there (Dovecot 2.4, mdbox, under load: "Broken physical size" for the message the log meant).
TRAILING_KINDS = frozenset({FileKind.INDEX, FileKind.BACKUP})

# The order a directory's changes become visible on the replica: what others depend on first.
_VISIBLE_RANK = {
    FileKind.UIDLIST: 0,
    FileKind.SMALL: 1,
    FileKind.MAILBOX_LOG: 2,
    FileKind.LOG: 3,
    FileKind.CACHE: 4,
    FileKind.INDEX: 5,
    FileKind.BACKUP: 6,
    FileKind.OTHER: 7,
}


@lru_cache(maxsize=8192)
def is_transient(name: str) -> bool:
    """True for lock and temp files, which are never shipped."""
    return bool(_TRANSIENT.fullmatch(name))


@lru_cache(maxsize=8192)
def classify(name: str) -> FileKind:
    """The kind of a (non-transient) file, from its name alone."""
    kind = _BY_NAME.get(name)
    if kind is not None:
        return kind
    if name.endswith(".log") or re.search(r"\.log\.\d+$", name):
        return FileKind.LOG
    if name.startswith("dovecot-uidvalidity"):
        return FileKind.SMALL
    if name.endswith(".cache"):
        return FileKind.CACHE
    return FileKind.OTHER


@lru_cache(maxsize=8192)
def visible_rank(name: str) -> tuple[int, int, str]:
    """Sort key for making a directory's files visible: dependencies first.

    A rotated log (`.log.2`) goes before the live log, whose new content replaces it.
    """
    rotated = 0 if re.search(r"\.log\.\d+$", name) else 1
    return (_VISIBLE_RANK[classify(name)], rotated, name)


@lru_cache(maxsize=8192)
def read_rank(name: str) -> tuple[int, int, str]:
    """Sort key for reading a directory's files: dependents first (the reverse of visibility),
    so every log offset an index refers to is already in the log we read after it."""
    rank, rotated, _ = visible_rank(name)
    return (-rank, -rotated, name)
