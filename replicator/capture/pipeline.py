"""From filesystem events to numbered batches: the capture half of the daemon.

Watcher hints mark directories dirty; one flush per loop wakeup (a few ms later while a
sync-commit plugin is asking: its FLUSH reads the finished commit) reads them and hands the
resulting drafts to `emit` (the outbox). A directory Dovecot holds a lock on is retried the
moment the lock is released (LockWaiter) and stays *held* meanwhile, so a sync-commit request
knows a change in it is still on its way. Periodic rescans, and one after an inotify overflow,
compare everything with the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from replicator.capture.basecache import BaseCache
from replicator.capture.inotify import InotifyWatcher
from replicator.capture.keptdirs import KeptDirs
from replicator.capture.locks import LockWaiter
from replicator.capture.manifest import Manifest
from replicator.capture.snapshot import LOCK_PATIENCE
from replicator.capture.watcher import Hint, Watcher
from replicator.delta.ops import Op, OpCode
from replicator.dovecot.filekinds import READ_PAST_LOCK, classify
from replicator.paths import parent_rel
from replicator.sender.batcher import Batcher, BuildResult, DirKey, Draft, Forced

log = logging.getLogger("replicator.capture")
BUSY_RETRY = 0.001
# A rescan compares RESCAN_SLICE directories at a time, and before each slice waits (at most
# RESCAN_YIELD) until no sync commit is in flight: a commit then waits for at most the one slice
# it arrived in. `python -m bench.commit_tail` (5 000 mailboxes, a rescan every second, 2-vCPU
# VM), STORE p99 / p99.9 / max in ms: 256 directories per slice, no wait: 1.6 / 89 / 119;
# 32 and the wait: 4.7-5.0 / 6.4-6.9 / 8.7-17; 16: 2.3-2.7 / 3.4-4.7 / 6.0-6.1; 8: 2.6 / 6.3 /
# 7.8 (the rescan itself took 0.41 s instead of 0.25).
RESCAN_SLICE = 16
RESCAN_YIELD = 0.01
# While a sync-commit plugin is asking (a FLUSH within the last SYNC_COMMIT_SEEN seconds), a
# watcher event is flushed after HINT_GRACE unless the plugin's FLUSH comes first, which it
# does right after Dovecot's commit. Flushing at a commit's first event reads the mailbox
# mid-commit, and the FLUSH then waits behind that read and reads again (measured over
# 3 x 1000 APPENDs with the plugin, before/after interleaved: p50 about 0.2-0.4 ms lower, one
# read per commit instead of ~2.8, lock retries 1051 -> 4 on disk).
HINT_GRACE = 0.005
# How long index rewrites may trail the changes a commit needs (`flush_for_commit`):
# one whole read of them then serves every commit in that time. The daemon sets it from
# [replication] trailing_delay. 50 ms against 5 ms, 2 x 2 x 550 rounds of APPEND, STORE,
# EXPUNGE with sync commit (mdbox, RAM), measured while caches trailed too: whole flushes
# 386-420 -> 51-52, bytes read per round halved, APPEND p50 1.62-1.81 -> 1.58-1.66 ms.
TRAILING_DELAY = 0.05
SYNC_COMMIT_SEEN = 10.0


class Capture:
    def __init__(self, roots: Mapping[str, Path], watcher: str, base_cache_bytes: int,
                 emit: Callable[[list[Draft]], None], counters: dict[str, int]) -> None:
        self.roots, self._backend = roots, watcher
        self.manifest = Manifest()
        self.batcher = Batcher(roots, self.manifest, BaseCache(base_cache_bytes))
        self._emit, self.counters = emit, counters
        self._dirty: dict[DirKey, Forced] = {}
        # Dirty directories whose every change since they were last read is a name in
        # `_dirty` (marked only by inotify events naming a file): a sync commit's read of
        # them need not list them (Batcher.build_for_commit's `named`).
        self._named: set[DirKey] = set()
        self._kept_dirs = KeptDirs(roots)  # descriptors of the directories commits read
        self._held: set[DirKey] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._trailing_handle: asyncio.TimerHandle | None = None  # see flush_for_commit
        self._watcher: Watcher | InotifyWatcher | None = None
        self._lock_waiter = LockWaiter()
        self.hint_grace = HINT_GRACE
        self.trailing_delay = TRAILING_DELAY
        self._flush_requests_until = 0.0  # loop time until which a FLUSH follows each commit
        self._overflows_rescanned = 0  # inotify overflows a finished rescan has made up for
        self._commits = 0  # sync commits in flight (commit_in_flight): a rescan waits for them
        self._no_commit = asyncio.Event()
        self._no_commit.set()

    def start(self, loop: asyncio.AbstractEventLoop) -> BuildResult:
        """Watch first (a change made during the initial scan is then an event), then learn
        what exists without shipping it (peers are brought in line by manifest resyncs)."""
        backend = InotifyWatcher if self._backend == "inotify" else Watcher
        self._watcher = backend(self.roots, loop, self._on_hints, self._on_overflow)
        self._watcher.start()
        return self.batcher.build({(name, ""): None for name in self.roots}, record_only=True)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self.flush()
        self._kept_dirs.close()

    # -- dirty directories ------------------------------------------------------------------
    def _on_hints(self, hints: list[Hint]) -> None:
        for root, reldir, name in hints:
            if name:
                self.mark((root, reldir), {name}, named=True)
            else:  # a directory event: what changed in it is not named
                self.mark((root, reldir), set())
        self._schedule_flush(after_commit=True)

    def mark(self, key: DirKey, names: Forced, *, named: bool = False) -> None:
        """`key` has changes to read: `names` at least (None: every file, read whole).
        `named`: an inotify event named the file; a directory only ever marked so since it
        was last read keeps its names as the whole of what changed (see `_named`)."""
        if key in self._dirty:
            known = self._dirty[key]
            self._dirty[key] = None if known is None or names is None else known | names
            if not named:
                self._named.discard(key)
        else:
            self._dirty[key] = None if names is None else set(names)
            if named:
                self._named.add(key)
            else:
                self._named.discard(key)

    def _schedule_flush(self, *, after_commit: bool = False) -> None:
        """Flush at the next loop wakeup. For watcher events (`after_commit`) that flush ships
        what a commit needs and leaves index rewrites for `trailing_delay` later
        (`_flush_events`); while a sync-commit plugin is asking, a watcher event waits
        `hint_grace` first, so that the plugin's FLUSH reads the finished commit once."""
        loop = asyncio.get_running_loop()
        graced = after_commit and loop.time() < self._flush_requests_until
        if self._flush_handle is not None:
            if graced or not isinstance(self._flush_handle, asyncio.TimerHandle):
                return  # what is scheduled comes as soon as this wants
            self._flush_handle.cancel()  # e.g. a lock was released: no reason to wait
        if graced:
            self._flush_handle = loop.call_later(self.hint_grace, self._flush_events)
        else:
            self._flush_handle = loop.call_soon(self._flush_events if after_commit
                                                else self.flush)

    def _flush_events(self) -> None:
        """What watcher events marked: the changes but index rewrites now, those
        within `trailing_delay` (flush_for_commit), or everything now when that cannot be
        done."""
        self.drain_events()  # flush_for_commit relies on every event so far being read
        self._flush_handle = None
        if not self._dirty:
            return
        if None in self._dirty.values() or not self.flush_for_commit(set(self._dirty)):
            self.flush()

    def _schedule_trailing(self) -> None:
        """A whole flush `trailing_delay` from now for what flush_for_commit left (not pushed
        back by later events: under a steady stream of commits indexes still follow)."""
        if self._trailing_handle is None:
            self._trailing_handle = asyncio.get_running_loop().call_later(
                self.trailing_delay, self.flush)

    def expect_flush_requests(self) -> None:
        """A sync-commit plugin asked: for a while, Dovecot's commits come with a FLUSH."""
        self._flush_requests_until = asyncio.get_running_loop().time() + SYNC_COMMIT_SEEN

    def _on_overflow(self) -> None:
        log.warning("filesystem events were lost (inotify queue overflow): full rescan")
        asyncio.get_running_loop().create_task(self.rescan())

    def pending(self, keys: set[DirKey] | frozenset[DirKey] | None = None) -> bool:
        """Whether a change (in `keys`, or anywhere) is not yet numbered: dirty, or waiting
        for Dovecot to release a lock (then it is in neither the dirty set nor the outbox)."""
        if keys is None:
            return bool(self._dirty or self._held or self._flush_handle is not None
                        or self._trailing_handle is not None)
        return any(key in self._dirty or key in self._held for key in keys)

    def dirty_among(self, keys: set[DirKey]) -> bool:
        return any(key in self._dirty for key in keys)

    def catch_up(self, keys: set[DirKey]) -> set[DirKey]:
        """Mark dirty every change Dovecot made in `keys` before asking; return the keys
        that have one to read.

        inotify queues an event inside the very write() or rename() that makes a change, so
        once Dovecot's commit returned, draining the queue marks every file it touched (and
        the directories it created, which get watched and listed). inotify loses events in
        two ways only, and both are known here: a queue overflow (until the rescan it starts
        has finished) and a directory without a watch (the watch limit, a directory not yet
        there). Then, and with the watchdog backend (its events arrive later, through
        threads), the directories are compared with the manifest instead. The periodic
        rescan stays the safety net under both. Comparing every directory of the request on
        each commit (four listed and stat'ed per mdbox APPEND, two of them the user's, which
        an APPEND rarely changes) held the capture phase of a sync commit about a fifth
        higher (bench.profile_commit, interleaved: 0.38-0.43 -> 0.32-0.34 ms p50). A
        directory neither watched nor ever shipped that `real_dir` finds missing (mdbox has no
        CONTROL directory per mailbox) has nothing to read or delete: it is not marked."""
        self.drain_events()
        for key in keys:
            if not self.watched(key) and (self.manifest.dir(*key) is not None
                                          or self.real_dir(key)):
                self.mark(key, set())
        return {key for key in keys if key in self._dirty}

    def drain_events(self) -> None:
        """Deliver every inotify event queued so far, now (see `catch_up` and `watched`)."""
        if isinstance(self._watcher, InotifyWatcher):
            self._watcher.drain()

    def _watch(self, key: DirKey) -> int | None:
        """The watch descriptor of `key` if `watched(key)`, else None."""
        watcher = self._watcher
        if not isinstance(watcher, InotifyWatcher) or \
                watcher.overflows != self._overflows_rescanned:
            return None
        return watcher.watch_of(*key)

    def watched(self, key: DirKey) -> bool:
        """Whether every change in `key`'s directory raises an event we have not lost: inotify
        watches it and no queue overflow is still waiting for its rescan.

        Once `drain_events` ran, this also proves that `root/reldir` is a real directory
        reached through real directories only. The watcher adds watches only by walking
        directories (never a symlink: an entry is followed only if its type is directory),
        and it forgets a whole subtree at the event that moves or removes any directory of
        it. So a directory swapped for a symlink, or one below it, is no longer watched once
        the events before now are read. A FLUSH's path check relies on this
        (SyncCommit.keys_for) and makes its lstat calls only where it does not hold."""
        return self._watch(key) is not None

    def real_dir(self, key: DirKey) -> bool:
        """Whether `root/reldir` is a directory now, reached through directories only: what
        the watches say (`dir_by_watches`), else what an lstat says. (A FLUSH asks this of
        mdbox's storage/ in both roots, and of the mailbox's CONTROL directory that mdbox
        does not use: an lstat that failed, twice per commit.)"""
        known = self.dir_by_watches(key)
        if known is not None:
            return known
        try:
            return stat.S_ISDIR(os.lstat(self.roots[key[0]] / key[1]).st_mode)
        except OSError:
            return False

    def dir_by_watches(self, key: DirKey) -> bool | None:
        """`real_dir` as far as the watcher alone can tell, None where it cannot: a watched
        directory is one (see `watched`), and below a watched directory every directory is
        watched, unless a watch could not be added (the watch limit)."""
        if self.watched(key):
            return True
        watcher = self._watcher
        if isinstance(watcher, InotifyWatcher) and not watcher.failed_watches and \
                self.watched_above(key) is not None:
            return False
        return None

    def watched_above(self, key: DirKey) -> str | None:
        """The nearest directory above `key`'s that is `watched` (its reldir), or None."""
        above = key[1]
        while above:
            above = parent_rel(above)
            if self.watched((key[0], above)):
                return above
        return None

    def watch_stamp(self) -> tuple[int, int, int, int] | None:
        """What `watched` and `dir_by_watches` depend on, None without inotify: while it is
        unchanged (and `drain_events` ran before each look), every answer they gave still
        holds."""
        watcher = self._watcher
        if not isinstance(watcher, InotifyWatcher):
            return None
        return (watcher.generation, watcher.overflows, self._overflows_rescanned,
                watcher.failed_watches)

    # -- flushing ---------------------------------------------------------------------------
    def flush_for_commit(self, keys: set[DirKey]) -> bool:
        """Number the changes of `keys` now but their index rewrites, which stay
        dirty for a whole flush `trailing_delay` later (one read of them serves every commit in
        between). For a sync commit's FLUSH, and for watcher events. False when that cannot
        be done (Batcher.build_for_commit) or a directory of these users waits for a lock:
        the caller then flushes whole."""
        held = self._held_users()
        if any(reldir.partition("/")[0] in held for _root, reldir in keys):
            return False
        watches = {key: wd for key in keys if (wd := self._watch(key)) is not None}
        named = {key: names for key in keys if key in self._named and key in watches
                 and (names := self._dirty.get(key)) is not None}
        try:
            opened = {key: fd for key, wd in watches.items()
                      if (fd := self._kept_dirs.get(key, wd)) is not None}
            result = self.batcher.build_for_commit(keys, named, opened)
        except OSError:
            return False  # the whole flush says what failed, and retries
        if result is None:
            return False
        self.counters["commit_flushes"] += 1
        self.counters["unlisted_reads"] += len(named)
        self.counters["bytes_read"] += result.bytes_read
        for draft in result.drafts:  # what they read is shipped: only the rest stays dirty
            names = self._dirty.get((draft.root, draft.reldir))
            if names:
                names -= {op.path.rpartition("/")[2] for op in draft.ops}
        for key in keys - result.deferred:  # nothing left to read there
            if self._dirty.get(key) == set():
                del self._dirty[key]
        self._emit(result.drafts)
        if any(key in self._dirty for key in keys):
            self._schedule_trailing()
        return True

    def flush(self) -> None:
        for handle in (self._flush_handle, self._trailing_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._trailing_handle = None
        dirty, self._dirty = self._gate(self._dirty)
        if not dirty:
            return
        try:
            result = self.batcher.build(dirty)
        except OSError as exc:
            log.error("reading changes failed (%s); retrying those directories in 1 s", exc)
            asyncio.get_running_loop().call_later(1.0, self._retry, dirty)
            return
        self.counters["flushes"] += 1
        self.counters["bytes_read"] += result.bytes_read
        if result.busy:
            self._retry_when_unlocked(result.busy, result.busy_files)
        self._emit(result.drafts)

    def _gate(self, dirty: dict[DirKey, Forced]) -> tuple[dict[DirKey, Forced],
                                                           dict[DirKey, Forced]]:
        """(what may be flushed now, what must wait). While one directory of a user waits for
        Dovecot's lock, that user's other directories wait too. This was made for mdbox's
        map, when logs were read under the lock: mdbox writes the map entry first and keeps
        the map locked while it writes the mailbox index that refers to it, so shipping the
        mailbox alone would have put a dangling reference on the replica. A log held locked
        for long is read past the lock now (filekinds.READ_PAST_LOCK), and a mailbox is read
        before the map (dir_rank), so the map read holds every entry the mailbox refers to;
        the user's other directories still wait while one of its files does."""
        if not self._held:
            return dirty, {}
        users = self._held_users()
        now = {k: v for k, v in dirty.items() if k[1].partition("/")[0] not in users}
        return now, {k: v for k, v in dirty.items() if k not in now}

    def _held_users(self) -> set[str]:
        """Users with a directory waiting for Dovecot to release a lock."""
        return {reldir.partition("/")[0] for _root, reldir in self._held}

    def _retry_when_unlocked(self, busy: dict[DirKey, Forced], files: list[str]) -> None:
        """Dovecot holds a write lock: retry those directories the moment it lets go (a log:
        or once it has held it for snapshot.LOCK_PATIENCE, after which it is read past the
        lock), or after BUSY_RETRY when too many waits are under way."""
        self.counters["busy_retries"] += 1
        self._held.update(busy)
        remaining = [len(files)]

        def released() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._retry(busy)

        if not all(self._lock_waiter.wait(path, released, LOCK_PATIENCE if classify(
                os.path.basename(path)) in READ_PAST_LOCK else None) for path in files):
            asyncio.get_running_loop().call_later(BUSY_RETRY, self._retry, busy)

    def _retry(self, dirty: Mapping[DirKey, Forced]) -> None:
        for key, names in dirty.items():
            self._held.discard(key)
            self.mark(key, names)
        self._schedule_flush()

    async def rescan(self) -> None:
        """Compare every known directory with the disk (stat; racy files re-read), in slices
        so the loop keeps serving acks and sync-commit requests meanwhile."""
        self.counters["rescans"] += 1
        overflows = self._watcher.overflows if isinstance(self._watcher, InotifyWatcher) else 0
        keys = [(name, "") for name in self.roots]
        keys += [(root, reldir) for root in self.manifest.roots()
                 for reldir, _ in self.manifest.dirs(root) if reldir]
        for start in range(0, len(keys), RESCAN_SLICE):
            await self._after_commits()
            for key in keys[start : start + RESCAN_SLICE]:
                self.mark(key, set())
            self.flush()
            await asyncio.sleep(0)
        self._overflows_rescanned = max(self._overflows_rescanned, overflows)

    @contextlib.contextmanager
    def commit_in_flight(self) -> Iterator[None]:
        """Around a sync commit's wait: a rescan starts no slice meanwhile (RESCAN_YIELD)."""
        self._commits += 1
        self._no_commit.clear()
        try:
            yield
        finally:
            self._commits -= 1
            if not self._commits:
                self._no_commit.set()

    async def _after_commits(self) -> None:
        """Once no sync commit is in flight, or RESCAN_YIELD from now: a steady stream of
        commits delays a rescan, never stops it."""
        if not self._no_commit.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESCAN_YIELD):
                    await self._no_commit.wait()

    def resync(self, untrusted: Mapping[DirKey, set[str] | None]) -> list[Draft]:
        """Whole files for `untrusted` directories (retried when Dovecot holds a lock). A
        directory that is gone and unknown still gets a batch (deleting it): only an
        acknowledged resync batch clears a peer's broken mark, and without one every wait on
        that directory (and every BARRIER) would fail for good."""
        result = self.batcher.build({}, dict(untrusted))
        covered = {(d.root, d.reldir) for d in result.drafts} | set(result.busy)
        result.drafts += [Draft(root, reldir, [Op(OpCode.DELETE, reldir)])
                          for root, reldir in untrusted
                          if (root, reldir) not in covered and reldir
                          and self.batcher.scannable((root, reldir))]
        for draft in result.drafts:
            draft.resync = True
        if result.busy:
            retry = {k: untrusted.get(k) for k in result.busy}  # found below: all files
            asyncio.get_running_loop().call_later(BUSY_RETRY * 10, self._resync_later, retry)
        return result.drafts

    def _resync_later(self, untrusted: Mapping[DirKey, set[str] | None]) -> None:
        self._emit(self.resync(untrusted))
