"""Applying one batch to one origin's replica of one root: verify everything, then commit.

All ops run first against in-memory working copies (`WorkingFile`), and every announced result
(size and xxh3-128) is checked; only then do changes become visible, in the batch's order, which
the origin chose so that logs land before caches and caches before indexes. A failed check
changes nothing. Streaming digests of visible files are kept so that appending to a log verifies
without re-reading it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from replicator.delta.apply import WorkingFile
from replicator.delta.ops import Op, OpCode
from replicator.errors import ApplyError, PathError, ProtocolError
from replicator.hashing import StreamingDigest, digest
from replicator.paths import join_rel, resolve_under
from replicator.replica import fileio
from replicator.replica.journal import Change, DigestJournal, Expected

Action = Callable[[], None]
CRASH_AT = "REPLICATOR_TEST_CRASH_AT"


@dataclass
class ApplyStats:
    files: int = 0
    bytes_written: int = 0


class DigestCache:
    """Streaming digests of the visible replica files, computed lazily after a restart, and
    the directories already checked to be real directories (not symlinks)."""

    def __init__(self) -> None:
        self._states: dict[str, StreamingDigest] = {}
        self.trusted_dirs: set[str] = set()

    def get(self, path: str) -> StreamingDigest:
        state = self._states.get(path)
        if state is None:
            state = self._states[path] = StreamingDigest(fileio.read_bytes(path))
        return state

    def set(self, path: str, state: StreamingDigest) -> None:
        self._states[path] = state

    def forget_tree(self, path: str) -> None:
        prefix = f"{path}/"
        for key in [k for k in self._states if k == path or k.startswith(prefix)]:
            del self._states[key]
        self.trusted_dirs = {d for d in self.trusted_dirs
                             if d != path and not d.startswith(prefix)}


class BatchApplier:
    """Applies ops whose paths are relative to `base` (replica_dir/<origin>/<root>)."""

    def __init__(self, base: Path, staging: Path, digests: DigestCache, *, max_size: int,
                 may_chown: bool, journal: DigestJournal, root: str) -> None:
        self.base, self.staging, self.digests = base, staging, digests
        self.journal, self.root = journal, root
        self.max_size, self.may_chown = max_size, may_chown
        self._work: dict[str, WorkingFile] = {}
        self._actions: list[tuple[str, Action]] = []
        self._resolved: dict[str, str] = {}
        self._targets: dict[str, WorkingFile] = {}  # file -> its working copy at commit
        self._staged: dict[str, str] = {}  # file -> staging file holding its new content
        self._keep: dict[str, set[str]] = {}  # KEEP_ONLY directory -> the names it keeps
        self.changed = False  # whether anything visible has been changed yet

    def apply(self, ops: list[Op]) -> ApplyStats:
        """Verify every op, write every new content to staging files, then make the changes
        visible in the batch's order. An error before `changed` is set changed nothing a
        reader can see (a mismatch, or a full filesystem while staging); after it, each file
        is in its old or its new state (appends are cut back, renames are atomic) but the
        batch as a whole is half applied."""
        try:
            for op in ops:
                self._stage(op)
        except ProtocolError as exc:
            raise ApplyError(str(exc)) from None
        last = {key: index for index, (key, _) in enumerate(self._actions)}
        plan = [(key, action) for index, (key, action) in enumerate(self._actions)
                if last[key] == index or not key.startswith("file:")]  # a file commits once
        stats = ApplyStats()
        try:
            self._write_staging([key[5:] for key, _ in plan if key.startswith("file:")])
            batch = self.journal.begin(self._changes(plan))
            crash_point("before-renames", self._targets)
            try:
                for key, action in plan:
                    self.changed = True
                    action()
                    stats.files += key.startswith("file:")
            except BaseException:
                self.journal.settle(self._holds)  # what each file holds now: old or new
                raise
            crash_point("before-commit-mark", self._targets)
            self.journal.commit(batch)
        finally:
            for staged in self._staged.values():
                with contextlib.suppress(OSError):
                    os.unlink(staged)
        stats.bytes_written = sum(op.raw_size for op in ops)
        return stats

    def _write_staging(self, rels: list[str]) -> None:
        """Every whole new content, written beside the replica before anything is renamed:
        the step that needs room happens while nothing visible has changed."""
        for rel in rels:
            wf = self._targets[rel]
            if wf.exists and wf.materialized:
                staged = self._staged[rel] = f"{self.staging}.{len(self._staged)}"
                fileio.write_staging(staged, wf.content(), wf.meta, may_chown=self.may_chown)

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
                changes += [(f"{self.root}/{join_rel(rel, name)}", None)
                            for name in self._keep_only_victims(rel)]
        return changes

    def _holds(self, rel: str) -> Expected | None:
        """What the visible file `rel` (root/path, as the journal names it) holds now."""
        path = self._path(rel.partition("/")[2])
        if fileio.kind_of(path) != "file":
            return None
        data = fileio.read_bytes(path)
        return len(data), digest(data).hex()

    def _path(self, rel: str) -> str:
        path = self._resolved.get(rel)
        if path is None:
            try:
                path = resolve_under(self.base, rel, self.digests.trusted_dirs)
            except PathError as exc:
                raise ApplyError(str(exc)) from None
            self._resolved[rel] = path
        return path

    def _stage(self, op: Op) -> None:
        if op.code == OpCode.ENSURE_DIR:
            path = self._path(op.path)
            self._actions.append((f"dir:{op.path}", lambda: self._ensure_dir(op, path)))
        elif op.code == OpCode.KEEP_ONLY:
            self._keep[op.path] = set(op.names)
            self._actions.append((f"keep:{op.path}", lambda: self._keep_only(op)))
        elif op.code == OpCode.DELETE and fileio.kind_of(self._path(op.path)) == "dir":
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
        path = self._path(rel)
        for name in [n for n in self._work if n == rel or n.startswith(f"{rel}/")]:
            del self._work[name]

        def delete_tree() -> None:
            fileio.remove(path)
            self.digests.forget_tree(path)
        self._actions.append((f"tree:{rel}", delete_tree))

    def _working(self, rel: str) -> WorkingFile:
        if rel not in self._work:
            self._work[rel] = self._visible(rel, target=True)
        return self._work[rel]

    def _visible(self, rel: str, *, target: bool = False) -> WorkingFile:
        """The file as it was before this batch (what a COPY reads, whatever the batch did).
        A directory where a file is to be written counts as no file: the whole content must
        then come in the batch, and the directory is replaced when it commits."""
        path = self._path(rel)
        kind = fileio.kind_of(path)
        if kind not in ("file", "missing") and not target:
            raise ApplyError(f"{path}: is a {kind}, expected a regular file")
        return WorkingFile(rel, kind == "file", lambda: fileio.read_bytes(path),
                           lambda: self.digests.get(path))

    def _commit(self, wf: WorkingFile) -> None:
        path = self._path(wf.path)  # the journal already expects this (`begin`)
        if not wf.exists:
            fileio.remove(path)
            self.digests.forget_tree(path)
            return
        state = wf.digest()
        if wf.materialized:
            removed = fileio.install_file(str(self.base), path, self._staged.pop(wf.path))
            self.digests.forget_tree(path)
            self._forget([r for r in removed if r != path])  # parents that were files
        elif wf.tails or wf.meta is not None:
            fileio.append_file(path, self.digests.get(path).size, wf.tails, wf.meta,
                               may_chown=self.may_chown)
        self.digests.set(path, state)

    def _ensure_dir(self, op: Op, path: str) -> None:
        self._forget(fileio.ensure_dir(str(self.base), path, op.meta, may_chown=self.may_chown))
        if f"{self.root}/{op.path}" in self.journal.files:  # was a file (damage since)
            self._forget([path])

    def _forget(self, removed: list[str]) -> None:
        """Drop cached digests and journal entries of files removed to make way for a
        directory (what the batch puts below it, the journal already expects)."""
        for path in removed:
            self.digests.forget_tree(path)
            self.journal.forget_file(f"{self.root}/{path[len(str(self.base)) + 1:]}")

    def _keep_only_victims(self, rel: str) -> list[str]:
        """Names in directory `rel` that a KEEP_ONLY of it removes (listed before the batch's
        changes become visible, for the journal; nothing else writes the replica)."""
        directory = self._path(rel)
        if fileio.kind_of(directory) != "dir":
            return []
        keep = self._keep[rel]
        return sorted(name for name in os.listdir(directory) if name not in keep)

    def _keep_only(self, op: Op) -> None:
        directory = self._path(op.path)
        for name in self._keep_only_victims(op.path):
            victim = f"{directory}/{name}"
            fileio.remove(victim)
            self.digests.forget_tree(victim)


def crash_point(name: str, rels: Iterable[str]) -> None:
    """Tests only: kill this process (SIGKILL, no clean-up) at the named point of a batch
    that touches a file whose path contains the armed text, e.g.
    `REPLICATOR_TEST_CRASH_AT=before-renames:crash-me`. Inert unless a test sets it."""
    armed = os.environ.get(CRASH_AT)
    if armed:
        point, _, text = armed.partition(":")
        if point == name and any(text in rel for rel in rels):
            os.kill(os.getpid(), signal.SIGKILL)
