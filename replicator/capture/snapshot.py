"""Reading one directory of a root the way Dovecot expects to be read.

Files are read in dependency order (dependents first, `filekinds.read_rank`), log and cache under
a shared fcntl lock (Dovecot appends and rewrites them under an exclusive one, so we see whole
records), and a file whose size moved while we read it is read again. A lock we cannot get at
once is not waited for: the file is reported `busy` and the directory is retried shortly, so the
event loop never blocks behind Dovecot; a log that stays locked past LOCK_PATIENCE (Dovecot's
disk flush) is read without the lock (filekinds.READ_PAST_LOCK says why that is safe). A file
that only grew in place since it was shipped (same inode, larger) can be read from its old end
alone (`tail_from`, see capture.tailstate).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from replicator.capture.locks import try_read_lock
from replicator.capture.manifest import RACY_NS, DirEntry, FileEntry, StatKey
from replicator.capture.tailstate import HEAD_BYTES
from replicator.delta.ops import Meta
from replicator.dovecot.filekinds import (
    FCNTL_LOCKED,
    READ_PAST_LOCK,
    classify,
    is_transient,
    read_rank,
)
from replicator.errors import PathError
from replicator.hashing import digest
from replicator.paths import check_relpath, is_promote_area, join_rel

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # paths already logged as unshippable (each is said once)

READ_ATTEMPTS = 3
# How long a log may stay locked by Dovecot before it is read without the lock (READ_PAST_LOCK).
# Without a flush (RAM mode) Dovecot holds a log's lock for its write alone, and waiting that
# out ships a commit's appends together; with mail_fsync = always it holds it through the
# disk's flush too, which is not waited for. A busy log is retried when Dovecot lets go or
# this long after it was found locked, whichever comes first (Capture._retry_when_unlocked,
# LockWaiter). Measured, STORE lag p50 maildir / mdbox: with Dovecot's flush made 2 ms slower
# (bench.slow_flush), 3.03 / 2.91 ms waiting for the lock, 0.72 / 0.55 ms with this patience;
# with this VM's own flush (0.15-0.3 ms; 2 interleaved pairs of bench.scenarios.store_lag),
# 0.96-0.97 / 0.86-0.91 -> 0.70-0.71 / 0.70-0.72 ms. No patience at all gave 0.49-0.59 /
# 0.58-0.63 ms there, but read RAM mode's commits mid-way: maildir STOREs went out in
# 1.21-1.56 batches each instead of 1.01-1.05 (this patience: 1.04-1.25).
LOCK_PATIENCE = 0.00005
_LOCKED_SINCE: dict[tuple[int, int], int] = {}  # (dev, ino) -> when a read first found it locked
_LOCKED_KEPT = 4096  # past that many (logs removed while locked) the record starts over
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class FileRead:
    """`content` is the file's bytes from `offset` on: the whole file, or (offset > 0) what
    was appended after the `offset` bytes replicas already hold."""

    name: str
    stat: StatKey
    meta: Meta
    content: bytes
    racy: bool
    offset: int = 0


@dataclass
class DirScan:
    """What a directory holds now. `reads` are files that changed (or were forced) and were
    read; `present` is every shippable file name; `busy` could not be read consistently yet
    (a Dovecot writer holds its lock)."""

    reldir: str
    exists: bool
    meta: Meta = field(default_factory=lambda: Meta(0, 0, 0, 0))
    ino: int = 0
    reads: list[FileRead] = field(default_factory=list)
    present: set[str] = field(default_factory=set)
    subdirs: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    deferred: set[str] = field(default_factory=set)  # changed, left unread (`defer`)


class TailHint(NamedTuple):
    """A known file may be read from `offset` (the size replicas hold) if its first HEAD_BYTES
    still have the digest `head` (see capture.tailstate)."""

    offset: int
    head: bytes


TailFrom = Callable[[str, FileEntry], TailHint | None]


def stat_key(st: os.stat_result) -> StatKey:
    return StatKey(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def meta_of(st: os.stat_result, *, with_mtime: bool = True) -> Meta:
    return Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                st.st_mtime_ns if with_mtime else 0)


def scan_dir(root: Path, reldir: str, known: DirEntry | None, forced: set[str] | None, *,
             tail_from: TailFrom | None = None,
             defer: Callable[[str], bool] | None = None,
             only: set[str] | None = None, dir_fd: int | None = None) -> DirScan:
    """Scan `root/reldir`; read files that changed since `known`, and all of `forced`
    (None = every file, each read whole).

    `tail_from(name, entry)` says from which offset a known file may be read if it only grew
    (None: whole); changed files `defer` names are not read but listed in `deferred`.

    `only` (with `known`): the caller knows that no file but these can differ from `known`
    (inotify named every change since `known` was recorded), so the directory is not listed:
    only these names, and the files `known` holds as racy, are looked at (`_sort_named`).
    `dir_fd`: the directory, already open (capture.keptdirs; not closed here).

    `reldir` must be a wire path (PathError otherwise), and it is opened component by component
    without following a symlink: one in its place (the mail user owns directories below the
    roots and may swap one for a link) makes the directory count as gone, so nothing outside
    the root is ever read. Entries whose wire path a receiver would refuse are left out."""
    check_relpath(reldir, allow_empty=True)
    fd = open_dir_beneath(root, reldir) if dir_fd is None else dir_fd
    if fd is None:
        return DirScan(reldir, exists=False)
    try:
        st = os.fstat(fd)
        scan = DirScan(reldir, True, meta_of(st, with_mtime=False), st.st_ino)
        candidates: list[tuple[str, os.stat_result]] = []
        if only is not None and known is not None:
            _sort_named(fd, only, known, scan, candidates)
        else:
            with os.scandir(fd) as listing:
                entries = list(listing)
            for entry in entries:
                _sort_entry(entry, scan, candidates)
        _read_candidates(fd, scan, candidates, known, forced, tail_from, defer)
    finally:
        if dir_fd is None:
            os.close(fd)
    return scan


def open_dir_beneath(root: Path, reldir: str) -> int | None:
    """A descriptor of `root/reldir` reached without following any symlink below `root`,
    or None if some component is missing, not a directory, or a symlink."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for part in reldir.split("/") if reldir else []:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            return None
        finally:
            os.close(fd)
        fd = child
    return fd


def _read_candidates(fd: int, scan: DirScan, candidates: list[tuple[str, os.stat_result]],
                     known: DirEntry | None, forced: set[str] | None,
                     tail_from: TailFrom | None, defer: Callable[[str], bool] | None) -> None:
    now = time.time_ns()
    for name, est in sorted(candidates, key=lambda c: read_rank(c[0])):
        old = known.files.get(name) if known else None
        unchanged = old is not None and old.stat == stat_key(est) and not old.racy
        if unchanged and (forced is not None and name not in forced):
            continue
        if not unchanged and defer is not None and defer(name):
            scan.deferred.add(name)
            continue
        hint = _tail_hint(old, est, tail_from(name, old) if tail_from and old else None) \
            if forced is not None else None
        read = read_file(fd, name, now, tail=hint, ino=est.st_ino)
        if read == "busy":
            scan.busy.add(name)
        elif read == "gone":
            scan.present.discard(name)
        else:
            scan.reads.append(read)


def _tail_hint(old: FileEntry | None, est: os.stat_result, hint: TailHint | None
               ) -> TailHint | None:
    """`hint` if the file is still the one shipped (same inode, the size it was read at, or
    larger): only the bytes from there on can be new. (Same size: read again because its last
    read was racy; the head check then suffices.)"""
    if old is None or hint is None or hint.offset != old.stat.size \
            or old.stat.ino != est.st_ino or est.st_size < hint.offset:
        return None
    return hint


def _sort_entry(entry: os.DirEntry[str], scan: DirScan,
                candidates: list[tuple[str, os.stat_result]]) -> None:
    name = entry.name
    if is_promote_area(scan.reldir, name) or not _shippable(join_rel(scan.reldir, name)):
        return
    try:
        if entry.is_dir(follow_symlinks=False):  # the directory entry's type: no stat call
            scan.subdirs.add(name)
            return
        if is_transient(name):
            return
        est = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(est.st_mode):
        scan.subdirs.add(name)
    elif stat.S_ISREG(est.st_mode):
        scan.present.add(name)
        candidates.append((name, est))


def _sort_named(fd: int, names: set[str], known: DirEntry, scan: DirScan,
                candidates: list[tuple[str, os.stat_result]]) -> None:
    """What listing the directory and `_sort_entry` would find, when only `names` can differ
    from `known`: the other files and subdirectories are as `known` recorded them. Files
    `known` holds as racy are looked at too (as a listing would: their stat proves nothing).
    On a sync commit's path this replaced a directory listing (a descriptor duplicated, two
    getdents, a seek) and a stat per file with a stat per changed name."""
    look = names | {name for name, entry in known.files.items() if entry.racy}
    scan.present = set(known.files) - look
    scan.subdirs = set(known.subdirs)
    for name in look:
        if is_promote_area(scan.reldir, name) or not _shippable(join_rel(scan.reldir, name)):
            continue
        try:
            est = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            scan.subdirs.discard(name)
            continue
        if stat.S_ISDIR(est.st_mode):
            scan.subdirs.add(name)
            continue
        scan.subdirs.discard(name)
        if stat.S_ISREG(est.st_mode) and not is_transient(name):
            scan.present.add(name)
            candidates.append((name, est))


def _shippable(relpath: str) -> bool:
    """Whether a receiver accepts `relpath` (a name too long for the wire, say, is not)."""
    try:
        check_relpath(relpath)
    except PathError as exc:
        if len(_WARNED) < 1000 and relpath not in _WARNED:
            _WARNED.add(relpath)
            log.warning("not replicating %s: %s", relpath[:200], exc)
        return False
    return True


def read_file(dir_fd: int, name: str, now_ns: int, *, tail: TailHint | None = None,
              ino: int = 0) -> FileRead | Literal["busy", "gone"]:
    """The file `name` in the open directory `dir_fd`: its content and stat, consistent with
    each other. A symlink is not followed. With `tail`, only the bytes from its offset on are
    read if the file is still inode `ino`, at least that long, with the same head (else the
    whole file is)."""
    kind = classify(name)
    locked = kind in FCNTL_LOCKED
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return "gone"
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since the scan: not ours to ship
            return "gone"
        raise
    try:
        if locked and not try_read_lock(fd) and not (kind in READ_PAST_LOCK
                                                     and _patience_over(os.fstat(fd))):
            return "busy"
        for _ in range(READ_ATTEMPTS):
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return "gone"  # replaced by a fifo or device since the scan: never read one
            offset = _tail_offset(fd, before, tail, ino)
            content = _read_all(fd, offset, before.st_size - offset)
            after = os.fstat(fd)
            if offset + len(content) == after.st_size and stat_key(before) == stat_key(after):
                _LOCKED_SINCE.pop((after.st_dev, after.st_ino), None)
                racy = now_ns - after.st_mtime_ns < RACY_NS
                return FileRead(name, stat_key(after), meta_of(after), content, racy, offset)
        return "busy"
    finally:
        os.close(fd)


def _patience_over(st: os.stat_result) -> bool:
    """Whether the file `st` describes has been found locked for LOCK_PATIENCE or longer (the
    first time it is found locked starts the count; a read of it ends it)."""
    now = time.monotonic_ns()
    if len(_LOCKED_SINCE) >= _LOCKED_KEPT:
        _LOCKED_SINCE.clear()
    since = _LOCKED_SINCE.setdefault((st.st_dev, st.st_ino), now)
    return now - since >= LOCK_PATIENCE * 1e9


def _tail_offset(fd: int, st: os.stat_result, tail: TailHint | None, ino: int) -> int:
    """Where to start reading: `tail`'s offset if it still applies to the open file, else 0."""
    if tail is None or st.st_ino != ino or st.st_size < tail.offset:
        return 0
    return tail.offset if digest(os.pread(fd, HEAD_BYTES, 0)) == tail.head else 0


def _read_all(fd: int, offset: int, expected: int) -> bytes:
    """The file from `offset` to its end. `expected` (what fstat said is left) is asked for
    in one read, and its end is not confirmed by another: the caller's fstat after the read
    says whether the file is still that long."""
    chunks = []
    while chunk := os.pread(fd, expected if expected > 0 else 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
        expected -= len(chunk)
        if expected == 0:
            break
    return b"".join(chunks)
