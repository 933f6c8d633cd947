"""The daemon's side of sync commit (and of BARRIER): answer only once peers hold the change.

A FLUSH names a mailbox's INDEX and CONTROL directories; the directories they depend on (the
user's list index, mdbox `storage/`) are added. Everything Dovecot changed there is captured at
once (inotify's queue), numbered, and the answer waits until `sync_quorum` peers acknowledged
the last batch of those directories, or fails shortly before the plugin's own timeout so it
gets our reason rather than a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from replicator.capture.pipeline import BUSY_RETRY, Capture
from replicator.control.protocol import FlushRequest
from replicator.paths import relative_to_root
from replicator.sender.batcher import DirKey
from replicator.sender.outbox import Outbox

if TYPE_CHECKING:
    from replicator.sender.link import PeerLink

log = logging.getLogger("replicator.sync")
Answer = tuple[bool, int, str]


class SyncCommit:
    def __init__(self, roots: Mapping[str, Path], capture: Capture, outbox: Outbox,
                 links: Mapping[str, PeerLink], quorum: int, counters: dict[str, int]) -> None:
        self.roots, self.capture, self.outbox = roots, capture, outbox
        self.links, self.quorum, self.counters = links, quorum, counters
        self.policy = "off"  # the last policy a plugin asked with (announced to peers)
        # Where a confirmed FLUSH spent its time (seconds, recent ones): reading and numbering
        # the changes, then the peers' round trip (send, apply, ack). STATUS reports both.
        self.capture_times: deque[float] = deque(maxlen=4096)
        self.replicate_times: deque[float] = deque(maxlen=4096)

    async def flush_and_wait(self, request: FlushRequest) -> Answer:
        """Ship every change in the request's directories now; wait for the quorum's acks."""
        self.policy = request.policy
        self.capture.expect_flush_requests()
        started = time.monotonic()
        margin = min(0.1, request.timeout_ms / 1000 * 0.2)
        deadline = started + request.timeout_ms / 1000 - margin
        keys = self.keys_for(request.dirs)
        if not keys:
            return self._result(False, 0, "no directory of the request is under a replicated "
                                "root", request)
        self.capture.catch_up(keys)
        if not await self._numbered(keys, deadline):
            return self._result(False, 0, "files stayed locked by Dovecot", request)
        numbered = time.monotonic()
        try:
            holders = await self.outbox.wait_replicated(frozenset(keys), self.quorum,
                                                        max(0.0, deadline - numbered))
        except TimeoutError:
            return self._result(False, 0, self.why_not_replicated(self.quorum), request)
        self.capture_times.append(numbered - started)
        self.replicate_times.append(time.monotonic() - numbered)
        return self._result(True, len(holders), "", request)

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
        keys: set[DirKey] = set()
        for directory in dirs:
            for name, root in self.roots.items():
                rel = relative_to_root(root, Path(directory))
                if rel is not None:
                    user = rel.partition("/")[0]
                    keys |= {(name, rel), (name, user)}
                    if (root / user / "storage").is_dir():
                        keys.add((name, f"{user}/storage" if user else "storage"))
        return keys

    def why_not_replicated(self, quorum: int) -> str:
        states = ", ".join(f"{peer}: {link.state}" + (f" ({link.last_error})"
                                                      if link.last_error else "")
                           for peer, link in self.links.items())
        return f"fewer than {quorum} peer(s) acknowledged in time [{states}]"

    def _result(self, ok: bool, peers: int, reason: str, request: FlushRequest) -> Answer:
        if ok:
            self.counters["sync_ok"] += 1
        else:
            self.counters["sync_degraded" if request.policy == "degrade" else "sync_failed"] += 1
            log.warning("sync commit for %s not confirmed (%s policy): %s", request.user,
                        request.policy, reason)
        return ok, peers, reason
