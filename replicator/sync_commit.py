"""The daemon's side of sync commit (and of BARRIER): answer only once peers hold the change.

A FLUSH names a mailbox's INDEX and CONTROL directories; the directories they depend on (the
user's list index, mdbox `storage/`) are added. What Dovecot changed there is captured at once
(inotify's queue), numbered, and the answer waits until `sync_quorum` peers acknowledged the
last batch of those directories, or fails shortly before the plugin's own timeout so it gets
our reason rather than a timeout. Index rewrites are not waited for: they follow in the same
stream shortly after (Capture.flush_for_commit), since what makes the commit durable is in its
log records (read from the log's old end), its cache records and, for maildir, its uidlist.

Any local user may send a FLUSH, so nothing in one is trusted: its directories must be proven
to lie below a root (`paths.wire_path_under`: no `..`, no symlink) or the request is refused
before anything is read, and the policy it names can only weaken what this node announces to
its peers (the operator's `sync_policy`), never strengthen it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from replicator.capture.pipeline import BUSY_RETRY, Capture
from replicator.config import SYNC_POLICIES
from replicator.control.limits import OncePerMinute
from replicator.control.protocol import REFUSED, FlushRequest
from replicator.errors import PathError
from replicator.paths import join_rel, wire_path_under
from replicator.sender.batcher import DirKey
from replicator.sender.outbox import Outbox

if TYPE_CHECKING:
    from replicator.coordination.coordinator import Coordinator
    from replicator.sender.link import PeerLink

log = logging.getLogger("replicator.sync")
Answer = tuple[bool, int, str]
PROVEN_KEPT = 4096  # FLUSH path proofs kept (keys_for); past that they are all dropped


class SyncCommit:
    def __init__(self, roots: Mapping[str, Path], capture: Capture, outbox: Outbox,
                 links: Mapping[str, PeerLink], quorum: int, counters: dict[str, int],
                 configured_policy: str = "off") -> None:
        self.roots, self.capture, self.outbox = roots, capture, outbox
        self.links, self.quorum, self.counters = links, quorum, counters
        # What peers are told this node's plugin does ("fail": a promote may use a UID gap of
        # 0). It comes from the operator's configuration; a FLUSH, which any local user may
        # send, can only weaken it (a plugin seen asking with "degrade"), never strengthen it.
        self.configured_policy = configured_policy
        self.weakest_seen: str | None = None
        self._warn = OncePerMinute(log)  # any local user may send FLUSHes: no log flood
        self._root_paths = {name: _spellings(root) for name, root in roots.items()}
        # Where a confirmed FLUSH spent its time (seconds, recent ones): reading and numbering
        # the changes, then the peers' round trip (send, apply, ack). STATUS reports both.
        self.capture_times: deque[float] = deque(maxlen=4096)
        self.ownership: Coordinator | None = None  # set by the daemon with [coordination]
        self.replicate_times: deque[float] = deque(maxlen=4096)
        self._proven: dict[tuple[str, ...], _Proven] = {}  # see keys_for

    @property
    def policy(self) -> str:
        """The policy announced to peers: the configured one, or a weaker one seen since."""
        seen = [self.weakest_seen] if self.weakest_seen else []
        return min([self.configured_policy, *seen], key=SYNC_POLICIES.index)

    def _note_policy(self, policy: str) -> None:
        if policy not in SYNC_POLICIES:
            return
        if self.weakest_seen is None or \
                SYNC_POLICIES.index(policy) < SYNC_POLICIES.index(self.weakest_seen):
            self.weakest_seen = policy

    async def flush_and_wait(self, request: FlushRequest) -> Answer:
        """Ship every change in the request's directories now; wait for the quorum's acks.
        A periodic rescan starts no slice meanwhile (Capture.commit_in_flight)."""
        with self.capture.commit_in_flight():
            return await self._flush_and_wait(request)

    async def _flush_and_wait(self, request: FlushRequest) -> Answer:
        self._note_policy(request.policy)
        try:
            keys = self.keys_for(request.dirs)
        except PathError as exc:
            self.counters["sync_refused"] += 1
            self._warn.warning("refused", "FLUSH refused, nothing read: %s", exc)
            return False, 0, f"refused: {exc}"
        if not keys:
            return self._result(False, 0, "no directory of the request is under a replicated "
                                "root", request)
        if self.ownership is not None and (refusal := await self.ownership.admit(
                _users(keys))) is not None:
            return self._result(False, REFUSED, refusal, request)
        self.capture.expect_flush_requests()
        started = time.monotonic()
        margin = min(0.1, request.timeout_ms / 1000 * 0.2)
        deadline = started + request.timeout_ms / 1000 - margin
        if self.ownership is not None:  # never wait past the lease's commit deadline
            deadline = min(deadline, self.ownership.commit_deadline())
        changed = self.capture.catch_up(keys)
        if not (changed and self.capture.flush_for_commit(changed)) and \
                not await self._numbered(keys, deadline):
            return self._result(False, 0, "files stayed locked by Dovecot", request)
        numbered = time.monotonic()
        quorum = self.quorum if self.ownership is None else \
            await self.ownership.quorum(self.quorum, list(self.links))
        try:
            holders = await self.outbox.wait_replicated(frozenset(keys), quorum,
                                                        max(0.0, deadline - numbered))
        except TimeoutError:
            return self._result(False, 0, self.why_not_replicated(quorum), request)
        if (refusal := self._not_owner(keys)) is not None:  # the lease ran out meanwhile
            return self._result(False, REFUSED, refusal, request)
        self.capture_times.append(numbered - started)
        self.replicate_times.append(time.monotonic() - numbered)
        return self._result(True, len(holders), "", request)

    def _not_owner(self, keys: set[DirKey]) -> str | None:
        """With ownership on etcd: why this node may not acknowledge a commit touching
        `keys` (another node owns the user, or the lease is not certainly valid), or None."""
        if self.ownership is None:
            return None
        return self.ownership.refuse_commit(_users(keys))

    async def _numbered(self, keys: set[DirKey] | None, deadline: float) -> bool:
        """Flush until no change in `keys` (None: anywhere) waits to be numbered."""
        while self.capture.pending(keys):
            if keys is None or self.capture.dirty_among(keys):
                self.capture.flush()
            if not self.capture.pending(keys):
                break
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(BUSY_RETRY)
        return True

    async def barrier(self, timeout: float) -> Answer:
        """Rescan everything, then wait until every peer acknowledged all of it."""
        deadline = time.monotonic() + timeout
        await self.capture.rescan()
        if not await self._numbered(None, deadline):
            return False, 0, "files stayed locked by Dovecot"
        every = len(self.links)
        try:
            holders = await self.outbox.wait_replicated(
                frozenset(self.outbox.last_keys()), every, deadline - time.monotonic(),
                target=self.outbox.next_seq - 1)
        except TimeoutError:
            return False, 0, self.why_not_replicated(every)
        return True, len(holders), ""

    def keys_for(self, dirs: tuple[str, ...]) -> set[DirKey]:
        """The directories to flush for a FLUSH naming `dirs` (absolute paths), with the
        user's directories they depend on. Paths outside every root are ignored; one that
        names a root but is not proven to stay below it (`..`, a symlink) raises PathError,
        and then nothing of the request is read.

        The proof comes from the inotify watches where it can (`_WatchProof`, once the
        queued events are read), else from an lstat per component. An answer the watches
        proved is kept for the same `dirs` (a mailbox's commits all send the same FLUSH)
        until a watch is added or dropped (Capture.watch_stamp) or a directory it found
        missing exists: each FLUSH still reads the queued events first, so a directory
        swapped for a symlink since is seen as before. bench.commit_trace's step from the
        FLUSH read to its paths checked (mdbox STORE, 2 interleaved pairs of 2000): 36-40 ->
        18-22 µs."""
        self.capture.drain_events()
        stamp = self.capture.watch_stamp()
        known = self._proven.get(dirs)
        if stamp is not None and known is not None and known.stamp == stamp and \
                not any(map(_exists, known.missing)):
            return set(known.keys)
        keys, proof = self._prove(dirs)
        if stamp is not None and not proof.refused:
            if len(self._proven) >= PROVEN_KEPT:  # any local user may send FLUSHes
                self._proven.clear()
            self._proven[dirs] = _Proven(stamp, frozenset(keys), tuple(proof.missing))
        return keys

    def _prove(self, dirs: tuple[str, ...]) -> tuple[set[DirKey], _WatchProof]:
        """`keys_for`'s answer, and what proved it."""
        keys: set[DirKey] = set()
        proof = _WatchProof(self.capture)
        for directory in dirs:
            for name, spellings in self._root_paths.items():
                proof.root = name
                rel = next((r for root in spellings if (r := wire_path_under(
                    root, directory, proven=proof)) is not None), None)
                if rel is None:
                    continue
                user = rel.partition("/")[0]
                keys |= {(name, rel), (name, user)}
                storage = (name, f"{user}/storage" if user else "storage")
                is_dir = self.capture.dir_by_watches(storage)
                if is_dir is None:
                    proof.refused = True
                    is_dir = self.capture.real_dir(storage)
                if is_dir:
                    keys.add(storage)
        return keys, proof

    def why_not_replicated(self, quorum: int) -> str:
        states = ", ".join(f"{peer}: {link.state}" + (f" ({link.last_error})"
                                                      if link.last_error else "")
                           for peer, link in self.links.items())
        return f"fewer than {quorum} peer(s) acknowledged in time [{states}]"

    def _result(self, ok: bool, peers: int, reason: str, request: FlushRequest) -> Answer:
        if ok:
            self.counters["sync_ok"] += 1
        else:
            degraded = request.policy == "degrade" and peers != REFUSED
            self.counters["sync_degraded" if degraded else "sync_failed"] += 1
            log.warning("sync commit for %s not confirmed (%s policy): %s", request.user,
                        request.policy, reason)
        return ok, peers, reason


class _Proven(NamedTuple):
    """A FLUSH's keys, proven by the watches in the state `stamp` names, with the paths
    found missing then (nothing below them existed)."""

    stamp: tuple[int, int, int, int]
    keys: frozenset[DirKey]
    missing: tuple[Path, ...]


class _WatchProof:
    """`wire_path_under`'s proof, from the watches: `root/rel` is watched (a real directory
    reached through real directories: Capture.watched), or its deepest watched ancestor is
    and the next component below that does not exist, so nothing below it does (mdbox names
    a CONTROL directory it never makes). That takes one lstat, and the missing path is
    noted: a kept proof needs it still missing. `refused`: it could not prove (an lstat per
    component was then made instead, which proves nothing for a later FLUSH)."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.root = ""  # the root the next paths are below (set by the caller)
        self.refused = False
        self.missing: list[Path] = []

    def __call__(self, rel: str) -> bool:
        if self.capture.watched((self.root, rel)):
            return True
        above = self.capture.watched_above((self.root, rel))
        if above is not None:
            rest = rel[len(above) + 1:] if above else rel
            below = self.capture.roots[self.root] / join_rel(above, rest.partition("/")[0])
            if not _exists(below):
                self.missing.append(below)
                return True
        self.refused = True
        return False


def _exists(path: Path) -> bool:
    """Whether anything (a symlink included) is at `path`."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _users(keys: set[DirKey]) -> set[str]:
    """The users whose directories `keys` name (the first component below a root)."""
    return {rel.partition("/")[0] for _, rel in keys} - {""}


def _spellings(root: Path) -> list[Path]:
    """The configured root path, and its resolved form if that differs (Dovecot may name
    the directory either way)."""
    resolved = Path(os.path.realpath(root))
    return [root] if resolved == root else [root, resolved]
