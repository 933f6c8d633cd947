"""Applying one batch to one origin's replica of one root: verify everything, then commit.

All ops run first against in-memory working copies (`WorkingFile`), and every announced result
(size and xxh3-128) is checked; a failed check changes nothing. Then every new whole content
is written to a staging file, the batch's changes are recorded in the digest journal, and only
then do they become visible (renamed into place; appends and a file changed in a few places
are written in place), in the batch's order, which the origin chose so that logs land
before caches and caches before indexes. Every path is reached through directory descriptors
that never follow a symlink (replica.beneath). Streaming digests of visible files are kept so
that appending to a log verifies without re-reading it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from replicator.delta.apply import Budget, Patch, WorkingFile
from replicator.delta.ops import Op, OpCode
from replicator.errors import ApplyError, ProtocolError
from replicator.hashing import digest
from replicator.paths import join_rel
from replicator.replica import fileio
from replicator.replica.beneath import Beneath
from replicator.replica.crashpoints import crash_point
from replicator.replica.digestcache import DigestCache
from replicator.replica.journal import Change, DigestJournal, Expected
from replicator.replica.undo import UndoLog

Action = Callable[[], None]


@dataclass
class ApplyStats:
    files: int = 0
    bytes_written: int = 0


class BatchApplier:
    """Applies ops whose paths are relative to `base` (replica_dir/<origin>/<root>)."""

    def __init__(self, base: Path, staging: Path, digests: DigestCache, *, max_size: int,
                 may_chown: bool, journal: DigestJournal, root: str, budget: Budget,
                 undo: UndoLog | None = None) -> None:
        self.base, self.staging, self.digests = base, staging, digests
        self.journal, self.root, self.budget, self.undo = journal, root, budget, undo
        self.max_size, self.may_chown = max_size, may_chown
        self.tree = Beneath(str(base))
        self._work: dict[str, WorkingFile] = {}
        self._actions: list[tuple[str, Action]] = []
        self._targets: dict[str, WorkingFile] = {}  # file -> its working copy at commit
        self._staged: dict[str, str] = {}  # file -> staging file holding its new content
        self._patches: dict[str, Patch] = {}  # file -> its changes, written in place
        self._keep: dict[str, set[str]] = {}  # KEEP_ONLY directory -> the names it keeps
        self.changed = False  # whether anything visible has been changed yet

    def apply(self, ops: list[Op]) -> ApplyStats:
        """Verify every op, write every new content to staging files, then make the changes
        visible in the batch's order. An error before `changed` is set changed nothing a
        reader can see (a mismatch, or a full filesystem while staging); after it, each file
        is in its old or its new state (appends are cut back, renames are atomic) but the
        batch as a whole is half applied."""
        try:
            return self._apply(ops)
        finally:
            for staged in self._staged.values():
                with contextlib.suppress(OSError):
                    os.unlink(staged)
            self.tree.close()
            self._forget_batch()

    def _forget_batch(self) -> None:
        """Drop the batch's working copies and actions. Their closures refer back to this
        applier, so kept they make a reference cycle per batch, which only the garbage
        collector frees: about 47 objects a batch, a collection every ~25 batches, each
        pausing the receiver 0.17-0.19 ms (bench.commit_trace with gc callbacks, STORE)."""
        for held in (self._work, self._actions, self._targets, self._staged, self._patches,
                     self._keep):
            held.clear()

    def _apply(self, ops: list[Op]) -> ApplyStats:
        try:
            for op in ops:
                self._stage(op)
        except ProtocolError as exc:
            raise ApplyError(str(exc)) from None
        last = {key: index for index, (key, _) in enumerate(self._actions)}
        plan = [(key, action) for index, (key, action) in enumerate(self._actions)
                if last[key] == index or not key.startswith("file:")]  # a file commits once
        stats = ApplyStats(bytes_written=sum(op.raw_size for op in ops))
        self._write_staging([key[5:] for key, _ in plan if key.startswith("file:")])
        batch = self.journal.begin(self._changes(plan))
        crash_point("before-renames", self._targets)
        try:
            if self.undo is not None and any(p.before for p in self._patches.values()):
                # before the first in-place write (growth alone needs none: it is cut back)
                self.undo.record(batch, {f"{self.root}/{rel}": patch
                                         for rel, patch in self._patches.items()})
            for key, action in plan:
                self.changed = True
                action()
                stats.files += key.startswith("file:")
        except BaseException:
            with contextlib.suppress(OSError):  # else the files stay "old or new" (uncertain)
                self.journal.settle(self._holds)  # what each file holds now
            raise
        crash_point("before-commit-mark", self._targets)
        self.journal.commit(batch)
        return stats

    def _write_staging(self, rels: list[str]) -> None:
        """Every whole new content, written beside the replica before anything is renamed:
        the step that needs room happens while nothing visible has changed. A file the batch
        changed in place (writes into the visible file, growth) is patched instead: the
        patch undoes itself if the filesystem fills part way."""
        for rel in rels:
            wf = self._targets[rel]
            if wf.exists and wf.materialized:
                if (patch := wf.patch()) is not None:
                    self._patches[rel] = patch
                else:
                    self._stage_whole(wf)

    def _stage_whole(self, wf: WorkingFile) -> None:
        staged = self._staged[wf.path] = f"{self.staging}.{len(self._staged)}"
        fileio.write_staging(staged, wf.view(), wf.meta, may_chown=self.may_chown)

    def _changes(self, plan: list[tuple[str, Action]]) -> list[Change]:
        """What the journal must expect of each file the plan changes (None: removed)."""
        changes: list[Change] = []
        for key, _ in plan:
            kind, _, rel = key.partition(":")
            if kind == "file":
                wf = self._targets[rel]
                state = wf.digest() if wf.exists else None
                changes.append((f"{self.root}/{rel}",
                                (state.size, state.digest().hex()) if state else None))
            elif kind == "tree":
                changes.append((f"{self.root}/{rel}", None))
            elif kind == "keep":
                victims = self._keep_only_victims(rel)
                changes += [(f"{self.root}/{join_rel(rel, name)}", None) for name in victims]
                changes += [(path, None) for path in self._journal_victims(rel, set(victims))]
        return changes

    def _journal_victims(self, rel: str, on_disk: set[str]) -> list[str]:
        """Files the journal knows below directory `rel` that a KEEP_ONLY of it does not keep
        and that are not among its entries `on_disk` either: already gone (damage the resync
        repairs, such as the directory having been replaced by a file meanwhile). The journal
        must not go on expecting them."""
        prefix = f"{self.root}/{rel}/" if rel else f"{self.root}/"
        keep = self._keep[rel]
        return sorted(path for path in self.journal.files if path.startswith(prefix)
                      and (name := path[len(prefix):].partition("/")[0]) not in keep
                      and name not in on_disk)

    def _holds(self, rel: str) -> Expected | None:
        """What the visible file `rel` (root/path, as the journal names it) holds now."""
        path = rel.partition("/")[2]
        if self.tree.kind(path) != "file":
            return None
        data = self.tree.read(path)
        return len(data), digest(data).hex()

    def _key(self, rel: str) -> str:
        """The file's path, naming it in the digest cache (never opened by name)."""
        return f"{self.base}/{rel}" if rel else str(self.base)

    def _stage(self, op: Op) -> None:
        if op.code == OpCode.ENSURE_DIR:
            self._actions.append((f"dir:{op.path}", lambda: self._ensure_dir(op)))
        elif op.code == OpCode.KEEP_ONLY:
            self._keep[op.path] = set(op.names)
            self._actions.append((f"keep:{op.path}", lambda: self._keep_only(op)))
        elif op.code == OpCode.DELETE and self.tree.kind(op.path) == "dir":
            self._stage_tree_delete(op.path)
        else:
            self._stage_file(op)

    def _stage_file(self, op: Op) -> None:
        source = self._visible(op.source) if op.code == OpCode.COPY else None
        target = self._working(op.path)
        target.apply(op, self.max_size, source)
        if op.result is not None:
            target.check(op.result)
        self._targets[op.path] = target
        self._actions.append((f"file:{op.path}", lambda: self._commit(target)))

    def _stage_tree_delete(self, rel: str) -> None:
        for name in [n for n in self._work if n == rel or n.startswith(f"{rel}/")]:
            del self._work[name]
        self._actions.append((f"tree:{rel}", lambda: self._remove(rel)))

    def _working(self, rel: str) -> WorkingFile:
        if rel not in self._work:
            self._work[rel] = self._visible(rel, target=True)
        return self._work[rel]

    def _visible(self, rel: str, *, target: bool = False) -> WorkingFile:
        """The file as it was before this batch (what a COPY reads, whatever the batch did).
        A directory where a file is to be written counts as no file: the whole content must
        then come in the batch, and the directory is replaced when it commits. So does a
        symlink anywhere on the way (tampering): it is never followed."""
        kind = self.tree.kind(rel)
        if kind not in ("file", "missing") and not target:
            raise ApplyError(f"{self._key(rel)}: is a {kind}, expected a regular file")
        return WorkingFile(rel, kind == "file", lambda: self.tree.read_for_update(rel),
                           lambda: self.digests.get(self._key(rel), lambda: self.tree.read(rel)),
                           self.budget, lambda offset, n: self.tree.read_range(rel, offset, n))

    def _commit(self, wf: WorkingFile) -> None:
        """Make `wf` visible (the journal already expects it: `begin`)."""
        if not wf.exists:
            self._remove(wf.path)
            return
        key, state = self._key(wf.path), wf.digest()
        patch = self._patches.pop(wf.path, None)
        if patch is not None:
            place = self.tree.parent(wf.path)
            if place is None:
                raise ApplyError(f"{key}: vanished while the batch was applied")
            if fileio.patch_at(*place, wf.extent, wf.size, patch, wf.meta,
                               may_chown=self.may_chown):
                self.digests.set(key, state)
                return
            self._stage_whole(wf)  # a hard link stands there: replace it whole
        if wf.materialized:
            place = self.tree.parent(wf.path, create=True)
            self._forget(self.tree.take_removed())  # files that stood where directories go
            assert place is not None
            if fileio.install_at(self._staged.pop(wf.path), *place):
                self.tree.forget(wf.path)  # a directory stood there
            self.digests.forget_tree(key)
        elif wf.tails or wf.meta is not None:
            place = self.tree.parent(wf.path)
            if place is None:
                raise ApplyError(f"{key}: vanished while the batch was applied")
            fileio.append_at(*place, self.digests.get(key, lambda: self.tree.read(wf.path)).size,
                             wf.tails, wf.meta, may_chown=self.may_chown)
        self.digests.set(key, state)

    def _remove(self, rel: str) -> None:
        place = self.tree.parent(rel)
        if place is not None:
            fileio.remove_at(*place)
        self.tree.forget(rel)
        self.digests.forget_tree(self._key(rel))

    def _ensure_dir(self, op: Op) -> None:
        fd = self.tree.dir(op.path, create=True)
        self._forget(self.tree.take_removed())
        assert fd is not None
        if op.meta is not None:
            fileio.apply_meta(fd, replace(op.meta, mtime_ns=0), may_chown=self.may_chown)
        if f"{self.root}/{op.path}" in self.journal.files:  # was a file (damage since)
            self._forget([op.path])

    def _forget(self, removed: list[str]) -> None:
        """Drop cached digests and journal entries of files removed to make way for a
        directory (what the batch puts below it, the journal already expects)."""
        for rel in removed:
            self.digests.forget_tree(self._key(rel))
            self.journal.forget_file(f"{self.root}/{rel}")

    def _keep_only_victims(self, rel: str) -> list[str]:
        """Names in directory `rel` that a KEEP_ONLY of it removes (listed before the batch's
        changes become visible, for the journal; nothing else writes the replica)."""
        fd = self.tree.dir(rel)
        if fd is None:
            return []
        keep = self._keep[rel]
        return sorted(name for name in os.listdir(fd) if name not in keep)

    def _keep_only(self, op: Op) -> None:
        for name in self._keep_only_victims(op.path):
            self._remove(join_rel(op.path, name))
