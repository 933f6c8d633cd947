"""Turning dirty directories into batches: read (dependents first), encode, order.

One flush reads every dirty directory, mailbox directories before the control directories and
mdbox `storage/` (their dependencies), and emits the batches in the reverse order, so a replica
cut at any batch boundary never holds a mailbox index that refers to map or uidlist entries it
lacks. Batches that only delete come last, so a renamed mailbox's files can still be copied from
their old place. The manifest is updated only after the whole flush is encoded: every COPY refers
to what the replicas held before the flush.
"""

from __future__ import annotations

import heapq
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from replicator.capture.basecache import BaseCache
from replicator.capture.manifest import DirEntry, FileEntry, Manifest
from replicator.capture.snapshot import DirScan, FileRead, TailHint, scan_dir
from replicator.capture.tailstate import TailState, TailStates
from replicator.delta.codec import MAX_DELTA_BASE
from replicator.delta.encode import Shipped, describe, encode_file, encode_tail, finish_copy
from replicator.delta.ops import Op, OpCode
from replicator.dovecot.filekinds import (
    APPEND_MOSTLY,
    TRAILING_KINDS,
    FileKind,
    classify,
    visible_rank,
)
from replicator.errors import PathError
from replicator.paths import (
    check_relpath,
    check_root_name,
    in_promote_area,
    join_rel,
    parent_rel,
)

DirKey = tuple[str, str]            # (root name, relative directory)
Forced = set[str] | None            # names to read even if their stat is unchanged; None: all
_UNCACHED_KINDS = frozenset({FileKind.LOG, FileKind.CACHE})
log = logging.getLogger(__name__)


@dataclass
class Draft:
    """One directory's ops, not yet numbered."""

    root: str
    reldir: str
    ops: list[Op]
    resync: bool = False
    token: int = 0  # fencing token of the directory's user (ownership on etcd), 0 without

    @property
    def user(self) -> str:
        """The user whose directory this is: the first component below the root."""
        return self.reldir.partition("/")[0]

    @property
    def deletes_only(self) -> bool:
        return all(op.code == OpCode.DELETE for op in self.ops)


@dataclass
class BuildResult:
    drafts: list[Draft] = field(default_factory=list)
    busy: dict[DirKey, Forced] = field(default_factory=dict)   # retry these shortly
    busy_files: list[str] = field(default_factory=list)        # ...once these are unlocked
    scanned: int = 0
    bytes_read: int = 0
    deferred: set[DirKey] = field(default_factory=set)  # changed files left unread there


def dir_rank(manifest: Manifest, key: DirKey, top: Path | None = None) -> int:
    """0 for mailbox directories, 1 for maildir control (uidlist), 2 for mdbox storage/.
    A directory not yet in the manifest is looked at (`top` is its root's path)."""
    root, reldir = key
    if reldir.rpartition("/")[2] == "storage":
        return 2
    entry = manifest.dir(root, reldir)
    if entry is not None:
        return 1 if "dovecot-uidlist" in entry.files else 0
    if top is not None and os.path.exists(os.path.join(top, reldir, "dovecot-uidlist")):
        return 1
    return 0


class Batcher:
    def __init__(self, roots: Mapping[str, Path], manifest: Manifest, bases: BaseCache) -> None:
        self.roots, self.manifest, self.bases = roots, manifest, bases
        self.tails = TailStates()  # what replicas hold of logs: read them from their old end
        self._root_names = frozenset(roots)

    def build(self, dirty: Mapping[DirKey, Forced],
              untrusted: Mapping[DirKey, set[str] | None] | None = None,
              *, record_only: bool = False) -> BuildResult:
        """Scan `dirty` (and `untrusted`: directories a replica must get whole files for, a set of
        names or None for all) and return the batches; with `record_only`, only learn the state."""
        untrusted = untrusted or {}
        result = BuildResult()
        scans = self._scan_all(dirty, untrusted, result)
        plans = [_DirPlan(self, key, scan, untrusted.get(key, frozenset()),
                          key in untrusted) for key, scan in scans]
        drafts = [] if record_only else [d for p in plans for d in p.drafts()]
        for plan in plans:
            plan.commit()
        result.drafts = self._ordered(drafts)
        return result

    def _ordered(self, drafts: list[Draft]) -> list[Draft]:
        """Dependencies first (mdbox storage/, then control, then mailboxes), and deletions
        after every change (what they delete may be the source of a copy). A sync commit's
        flush mostly makes one draft: nothing to order then."""
        if len(drafts) == 1:
            return [draft for draft in drafts if _wire_safe(draft)]
        ranked = sorted(drafts, key=lambda d: -dir_rank(self.manifest, (d.root, d.reldir)))
        ranked = [d for d in ranked if _wire_safe(d)]
        changes = [d for d in ranked if not d.deletes_only]
        return changes + _deletions_after(changes, [d for d in ranked if d.deletes_only])

    def _scan_all(self, dirty: Mapping[DirKey, Forced], untrusted: Mapping[DirKey, object],
                  result: BuildResult) -> list[tuple[DirKey, DirScan]]:
        wanted: dict[DirKey, Forced] = {k: (None if k in untrusted else v) for k, v in
                                        dirty.items() if self.scannable(k)}
        wanted.update({k: None for k in untrusted if self.scannable(k)})
        # A heap, not a list: a directory discovered while scanning (a new user's INBOX, found
        # after its storage/) must still be read before the directories it depends on.
        queue = [(dir_rank(self.manifest, k, self.roots[k[0]]), k) for k in wanted]
        heapq.heapify(queue)
        scans: list[tuple[DirKey, DirScan]] = []
        while queue:
            _rank, key = heapq.heappop(queue)
            root, reldir = key
            scan = scan_dir(self.roots[root], reldir, self.manifest.dir(root, reldir), wanted[key],
                            tail_from=self._tail_from(root, reldir))
            result.scanned += 1
            if scan.busy:
                result.busy[key] = wanted[key]
                result.busy_files += [os.path.join(self.roots[root], reldir, name)
                                      for name in scan.busy]
                continue
            result.bytes_read += sum(len(r.content) for r in scan.reads)
            scans.append((key, scan))
            for sub in sorted(scan.subdirs):
                sub_key = (root, join_rel(reldir, sub))
                if sub_key not in wanted and self.manifest.dir(*sub_key) is None:
                    wanted[sub_key] = None
                    heapq.heappush(queue, (dir_rank(self.manifest, sub_key, self.roots[root]),
                                           sub_key))
        return self._defer_dependents(scans, wanted, result)

    @staticmethod
    def _defer_dependents(scans: list[tuple[DirKey, DirScan]], wanted: dict[DirKey, Forced],
                          result: BuildResult) -> list[tuple[DirKey, DirScan]]:
        """A user whose directory could not be read (Dovecot holds a lock) ships none of its
        directories in this flush: a mailbox index must not reach a replica before the mdbox
        map (storage/) or maildir uidlist it refers to, which may be the busy one."""
        busy_users = {reldir.partition("/")[0] for _root, reldir in result.busy}
        if not busy_users:
            return scans
        kept = []
        for key, scan in scans:
            if key[1].partition("/")[0] in busy_users:
                result.busy[key] = wanted[key]
            else:
                kept.append((key, scan))
        return kept

    def build_for_commit(self, keys: Iterable[DirKey],
                         named: Mapping[DirKey, set[str]] | None = None,
                         opened: Mapping[DirKey, int] | None = None) -> BuildResult | None:
        """What a sync commit must wait for in `keys`: every change there but index and backup
        rewrites (TRAILING_KINDS), which are left unread for the next whole flush to ship in
        the same ordered stream. A replica whose indexes trail their logs is a state Dovecot
        opens (it replays the log from the offset the index names), and what the commit made
        durable (its log records, the cache records they point to, maildir's uidlist) is in
        this batch.

        None, with nothing read recorded, when a directory is new (its subdirectories are found
        by a whole flush), vanished, or has a file Dovecot holds locked: then only a whole
        flush ships the commit.

        `named`: directories where inotify named every change since they were last read
        (Capture.flush_for_commit): only those names are looked at (scan_dir's `only`).
        `opened`: descriptors of directories, kept open by the caller (capture.keptdirs)."""
        named, opened = named or {}, opened or {}
        result = BuildResult()
        scans: list[tuple[DirKey, DirScan]] = []
        for key in sorted(keys, key=lambda k: dir_rank(self.manifest, k)):  # dependents first
            root, reldir = key
            if not self.scannable(key):
                return None
            known = self.manifest.dir(root, reldir)
            if known is None:
                if _absent(self.roots[root], reldir):
                    continue  # a directory the format does not use (mdbox's control)
                log.debug("a commit in new directory %s/%s waits for a whole flush", root,
                          reldir)
                return None
            scan = scan_dir(self.roots[root], reldir, known, set(),
                            tail_from=self._tail_from(root, reldir), defer=_trails,
                            only=named.get(key), dir_fd=opened.get(key))
            result.scanned += 1
            if not scan.exists or scan.busy:
                return None
            if scan.deferred:
                result.deferred.add(key)
            result.bytes_read += sum(len(r.content) for r in scan.reads)
            scans.append((key, scan))
        plans = [_DirPlan(self, key, scan, frozenset(), False) for key, scan in scans]
        drafts = [d for p in plans for d in p.drafts()]
        for plan in plans:
            plan.commit()
        result.drafts = self._ordered(drafts)
        return result

    def _tail_from(self, root: str, reldir: str) -> Callable[[str, FileEntry], TailHint | None]:
        """For scan_dir: how a grown append-mostly file of `reldir` may be read from its old
        end, when the streaming digest of what replicas hold of it is known."""
        def tail_from(name: str, entry: FileEntry) -> TailHint | None:
            if classify(name) not in APPEND_MOSTLY:
                return None
            state = self.tails.for_tail_read(root, join_rel(reldir, name))
            if state is None or state.size != entry.shipped.size \
                    or state.digest.digest() != entry.shipped.digest:
                return None
            return TailHint(state.size, state.head)
        return tail_from

    def scannable(self, key: DirKey) -> bool:
        """Whether `key` names a directory of a configured root by a wire path. Keys come from
        inotify, rescans, FLUSH requests and peers' NACKs; a bad one is dropped here, before
        anything is read, rather than shipped as a batch every receiver refuses."""
        try:
            check_root_name(key[0], self._root_names)
            check_relpath(key[1], allow_empty=True)
        except PathError as exc:
            log.error("not scanning %s/%s: %s", key[0][:64], key[1][:200], exc)
            return False
        return not in_promote_area(key[1])  # promote's own: dropped silently

    def shipped_base(self, root: str, path: str) -> bytes | None:
        return self.bases.get(root, path)


def _absent(top: Path, reldir: str) -> bool:
    """Whether `top/reldir` does not exist (as a directory: unknown to the manifest, but
    nothing to ship either)."""
    try:
        return not stat.S_ISDIR(os.lstat(top / reldir).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True


def _trails(name: str) -> bool:
    """Whether a change to `name` may reach replicas after the log tails it follows from."""
    return classify(name) in TRAILING_KINDS


def _wire_safe(draft: Draft) -> bool:
    """Whether every path of `draft` passes the receiver's checks (the last guard: a batch a
    receiver refuses would be resent for ever)."""
    try:
        check_relpath(draft.reldir, allow_empty=True)
        for op in draft.ops:
            check_relpath(op.path, allow_empty=op.code in (OpCode.ENSURE_DIR, OpCode.KEEP_ONLY))
            if op.code == OpCode.COPY:
                check_relpath(op.source)
            for name in op.names:
                if "/" in check_relpath(name):
                    raise PathError(f"KEEP_ONLY name {name!r} has a '/'")
    except PathError as exc:
        log.error("not shipping a batch of %s/%s: %s", draft.root, draft.reldir[:200], exc)
        return False
    return True


def _deletions_after(changes: list[Draft], deletions: list[Draft]) -> list[Draft]:
    """The deletions to send after `changes`, minus any of a path those changes write or
    create: a name that changed kind (a directory replaced by a file, or the reverse) is
    replaced on the replica by the write itself, and deleting it afterwards would lose it."""
    written = {(d.root, op.path) for d in changes for op in d.ops
               if op.code not in (OpCode.DELETE, OpCode.KEEP_ONLY)}
    kept = []
    for draft in deletions:
        ops = [op for op in draft.ops if (draft.root, op.path) not in written]
        if ops:
            kept.append(Draft(draft.root, draft.reldir, ops, draft.resync))
    return kept


class _DirPlan:
    """The encoding of one scanned directory, and the manifest changes it implies."""

    def __init__(self, batcher: Batcher, key: DirKey, scan: DirScan,
                 untrusted: set[str] | frozenset[str] | None, resync: bool) -> None:
        self.b, self.key, self.scan = batcher, key, scan
        self.untrusted, self.resync = untrusted, resync
        self.updates: list[tuple[FileRead, Shipped, TailState | None]] = [
            (read, *self._describe(read))
            for read in sorted(scan.reads, key=lambda r: visible_rank(r.name))
        ]

    def _describe(self, read: FileRead) -> tuple[Shipped, TailState | None]:
        """What replicas will hold of the file once its ops are applied; for an append-mostly
        file also its TailState (extended from the last one for a tail read)."""
        if classify(read.name) not in APPEND_MOSTLY:
            old = self.b.manifest.file(self.key[0], join_rel(self.key[1], read.name))
            return describe(read.content, read.meta, old.shipped if old else None), None
        if read.offset:
            previous = self.b.tails.for_tail_read(self.key[0],
                                                  join_rel(self.key[1], read.name))
            if previous is None or previous.size != read.offset:
                raise AssertionError(f"tail read of {read.name} without its shipped digest")
            state = previous.extended(read.content)
        else:
            state = TailState.whole(read.content)
        return Shipped(state.size, state.digest.digest(), None, read.meta), state

    def _trusted(self, name: str) -> bool:
        return self.untrusted is not None and name not in self.untrusted

    def drafts(self) -> list[Draft]:
        """The directory's changes, and separately its deletions (sent after every other batch
        of the flush, so what they delete can still be the source of a copy)."""
        root, reldir = self.key
        known = self.b.manifest.dir(root, reldir)
        if not self.scan.exists:
            return [Draft(root, reldir, [Op(OpCode.DELETE, reldir)])] if known and reldir else []
        head = []
        if known is None or known.meta != self.scan.meta or self.resync:
            head.append(Op(OpCode.ENSURE_DIR, reldir, meta=self.scan.meta))
        groups = [g for read, new, _ in self.updates if (g := self._file_ops(read, new))]
        groups.sort(key=lambda g: 0 if g[0].code == OpCode.COPY else 1)
        ops = head + [op for group in groups for op in group]
        if self.resync:
            names = tuple(sorted(self.scan.present | self.scan.subdirs))
            ops.append(Op(OpCode.KEEP_ONLY, reldir, names=names))
        deletes = self._deletes(known)
        return ([Draft(root, reldir, ops, self.resync)] if ops else []) + (
            [Draft(root, reldir, deletes)] if deletes else [])

    def _deletes(self, known: DirEntry | None) -> list[Op]:
        if known is None:
            return []
        reldir = self.key[1]
        gone = [n for n in known.files if n not in self.scan.present]
        gone += [n for n in known.subdirs if n not in self.scan.subdirs]
        return [Op(OpCode.DELETE, join_rel(reldir, name)) for name in sorted(gone)]

    def _copy_source(self, ino: int, path: str) -> str | None:
        """A shipped file with this inode that a COPY may read: in this directory (rotated
        logs, index backups: batch order keeps it untouched until the copy), or in a directory
        that vanished (a renamed mailbox: only a deletion, sent last, touches it)."""
        root, reldir = self.key
        source = self.b.manifest.path_of_inode(root, ino)
        if source is None or source == path or self.b.manifest.file(root, source) is None:
            return None
        source_dir = parent_rel(source)
        if source_dir == reldir or self._vanished(root, source_dir):
            return source
        return None

    def _vanished(self, root: str, reldir: str) -> bool:
        """`reldir` is gone, and no file took the place of it or of a parent (such a file is
        written in this flush, which removes the copy source on the replica first)."""
        path, first = reldir, True
        while path:
            try:
                mode = os.lstat(self.b.roots[root] / path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                path, first = parent_rel(path), False
                continue
            return not first and stat.S_ISDIR(mode)
        return True

    def _file_ops(self, read: FileRead, new: Shipped) -> list[Op]:
        root, reldir = self.key
        path = join_rel(reldir, read.name)
        if read.offset:  # scan_dir checked: the same file, as shipped up to read.offset
            old_entry = self.b.manifest.file(root, path)
            if not read.content and old_entry is not None and old_entry.shipped.meta == new.meta:
                return []  # read again only because its last read was racy: unchanged
            return encode_tail(path, read.offset, read.content, new)
        if not self._trusted(read.name):
            return encode_file(path, None, None, read.content, new)
        old = self.b.manifest.file(root, path)
        source = self._copy_source(read.stat.ino, path) if (
            old is None or old.stat.ino != read.stat.ino) else None
        source_entry = self.b.manifest.file(root, source) if source else None
        if source is not None and source_entry is not None:
            ops = encode_file(path, source_entry.shipped, self.b.shipped_base(root, source),
                              read.content, new)
            return finish_copy(Op(OpCode.COPY, path, source=source), ops, new)
        base = self.b.shipped_base(root, path) if old else None
        return encode_file(path, old.shipped if old else None, base, read.content, new)

    def commit(self) -> None:
        """Record what this plan shipped (or, record-only, what exists)."""
        root, reldir = self.key
        manifest = self.b.manifest
        if not self.scan.exists:
            manifest.remove_tree(root, reldir)
            return
        entry = manifest.set_dir(root, reldir, self.scan.meta, self.scan.ino)
        for name in [n for n in entry.files if n not in self.scan.present]:
            manifest.remove_file(root, reldir, name)
            self.b.bases.discard(root, join_rel(reldir, name))
            self.b.tails.discard(root, join_rel(reldir, name))
        for name in [n for n in entry.subdirs if n not in self.scan.subdirs]:
            manifest.remove_tree(root, join_rel(reldir, name))
        for read, shipped, state in self.updates:
            path = join_rel(reldir, read.name)
            manifest.set_file(root, reldir, read.name, FileEntry(read.stat, shipped, read.racy))
            self._remember_base(path, read)
            if state is not None:
                self.b.tails.put(root, path, state)

    def _remember_base(self, path: str, read: FileRead) -> None:
        root = self.key[0]
        content = read.content
        if read.offset:  # a tail: the cached base (if any) is the rest
            base = self.b.bases.get(root, path)
            content = base + read.content if base is not None and len(base) == read.offset \
                else b""
        if not content or classify(read.name) in _UNCACHED_KINDS \
                or len(content) > MAX_DELTA_BASE:
            self.b.bases.discard(root, path)
        else:
            self.b.bases.put(root, path, content)
