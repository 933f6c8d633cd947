"""The daemon: capture and ship this node's roots, keep RAM copies of the peers' roots.

Everything runs on one asyncio loop: watcher hints mark directories dirty, a flush (scheduled
once per wakeup, so a burst of events costs one scan) turns them into numbered batches, links
stream them to every peer, the listener applies peers' batches, and the control socket lets the
sync-commit plugin wait until a change is held by `sync_quorum` peers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from replicator import __version__, sdnotify
from replicator.capture.basecache import BaseCache
from replicator.capture.inotify import InotifyWatcher
from replicator.capture.locks import LockWaiter
from replicator.capture.manifest import Manifest
from replicator.capture.watcher import Hint, Watcher
from replicator.config import Config
from replicator.control.protocol import FlushRequest
from replicator.control.server import ControlServer
from replicator.manifest_codec import decode_entries, diff, origin_entries
from replicator.mounts import filesystem_type
from replicator.paths import relative_to_root
from replicator.replica.listener import Listener
from replicator.replica.store import ReplicaStore
from replicator.sender.batcher import Batcher, DirKey, Draft, Forced
from replicator.sender.link import LinkHost, PeerLink
from replicator.sender.outbox import Outbox
from replicator.status import build_status
from replicator.traffic import Traffic
from replicator.transport import tcp
from replicator.verify.runner import verify_replica

log = logging.getLogger("replicator")
SOFTWARE = f"dovecot-replicator/{__version__}"
BUSY_RETRY = 0.001
RESCAN_SLICE = 256


class Daemon(LinkHost):
    def __init__(self, config: Config) -> None:
        self.config, tuning = config, config.tuning
        self.node_id, self.software, self.sync_policy = config.node_id, SOFTWARE, "off"
        self.max_frame_bytes, self.ack_timeout = tuning.max_frame_bytes, tuning.ack_timeout
        self.connect_timeout, self.reconnect_max_delay = 5.0, tuning.reconnect_max_delay
        self.tls = tcp.client_tls(*_tls_files(config)) if config.tls else None
        for directory in (config.replica_dir, config.state_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest()
        self.bases = BaseCache(tuning.base_cache_bytes)
        self.batcher = Batcher(config.roots, self.manifest, self.bases)
        self.outbox = Outbox(secrets.token_hex(8), _load_epoch(config.state_dir),
                             [p.id for p in config.peers], retain_bytes=tuning.retain_bytes,
                             max_frame_bytes=tuning.max_frame_bytes)
        self.store = ReplicaStore(config.replica_dir, config.state_dir, frozenset(config.roots),
                                  tuning.max_frame_bytes)
        self.listener = Listener(config, self.store, SOFTWARE,
                                 lambda: origin_entries(self.manifest),
                                 lambda: (self.outbox.stream, self.outbox.next_seq - 1))
        self.links = {p.id: PeerLink(self, p) for p in config.peers}
        self.control = ControlServer(config.control_socket, config.control_socket_mode, self)
        self.counters: dict[str, int] = dict.fromkeys(
            ("flushes", "batches", "resync_batches", "busy_retries", "sync_ok", "sync_failed",
             "sync_degraded", "rescans", "bytes_read"), 0)
        self.traffic = Traffic()
        self.started = time.time()
        self._dirty: dict[DirKey, Forced] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._watcher: Watcher | InotifyWatcher | None = None
        self._events_lost = False
        self._repairs: dict[DirKey, tuple[float, float]] = {}
        self._held: set[DirKey] = set()  # busy directories waiting for Dovecot's unlock
        self._lock_waiter = LockWaiter()

    # -- life cycle -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._warn_if_not_ram()
        backend = InotifyWatcher if self.config.tuning.watcher == "inotify" else Watcher
        self._watcher = backend(self.config.roots, loop, self._on_hints, self._on_overflow)
        self._watcher.start()  # before the scan: a change made while it runs is an event
        started = time.monotonic()
        result = self.batcher.build({(name, ""): None for name in self.config.roots},
                                    record_only=True)
        log.info("node %s: %d files in %d directories under %d roots learned in %.2f s; "
                 "stream %s epoch %d", self.node_id, self.manifest.file_count(), result.scanned,
                 len(self.config.roots), time.monotonic() - started, self.outbox.stream,
                 self.outbox.epoch)
        tls = tcp.server_tls(*_tls_files(self.config)) if self.config.tls else None
        server = await tcp.serve(self.config.listen, tls, self.listener.handle)
        await self.control.start()
        tasks = [asyncio.create_task(link.run(), name=f"link-{peer}")
                 for peer, link in self.links.items()]
        tasks.append(asyncio.create_task(self._periodic_rescan(), name="rescan"))
        tasks.append(asyncio.create_task(self._periodic_scrub(), name="scrub"))
        log.info("listening on %s; control socket %s; peers: %s", self.config.listen,
                 self.config.control_socket, ", ".join(self.links) or "none")
        sdnotify.notify("READY=1", f"STATUS=replicating to {len(self.links)} peer(s)")
        try:
            await stop.wait()
        finally:
            sdnotify.notify("STOPPING=1")
            await self._shutdown(server, tasks)

    async def _shutdown(self, server: asyncio.Server, tasks: list[asyncio.Task[Any]]) -> None:
        """Stop capturing, ship what is pending, give peers a moment to ack, then close."""
        if self._watcher is not None:
            self._watcher.stop()
        self._flush()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(
                c.connected and c.acked < self.outbox.next_seq - 1
                for c in self.outbox.cursors.values()):
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.close()
        await self.control.stop()
        log.info("stopped")

    def _warn_if_not_ram(self) -> None:
        fstype = filesystem_type(self.config.replica_dir)
        if fstype not in ("tmpfs", "ramfs"):
            log.warning("replica_dir %s is on %s, not tmpfs: peers' copies are not held in RAM",
                        self.config.replica_dir, fstype)

    # -- capture ----------------------------------------------------------------------------
    def _on_hints(self, hints: list[Hint]) -> None:
        for root, reldir, name in hints:
            self._mark((root, reldir), {name} if name else set())
        self._schedule_flush()

    def _mark(self, key: DirKey, names: Forced) -> None:
        if key in self._dirty:
            known = self._dirty[key]
            self._dirty[key] = None if known is None or names is None else known | names
        else:
            self._dirty[key] = None if names is None else set(names)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _on_overflow(self) -> None:
        log.warning("filesystem events were lost (inotify queue overflow): full rescan")
        self._events_lost = True
        asyncio.get_running_loop().create_task(self.rescan())

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        dirty, self._dirty = self._dirty, {}
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
        self._enqueue(result.drafts)

    def _retry_when_unlocked(self, busy: dict[DirKey, Forced], files: list[str]) -> None:
        """Dovecot holds a write lock: retry those directories the moment it lets go (or after
        BUSY_RETRY when too many waits are under way)."""
        self.counters["busy_retries"] += 1
        self._held.update(busy)
        remaining = [len(files)]

        def released() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._retry(busy)

        if not all(self._lock_waiter.wait(path, released) for path in files):
            asyncio.get_running_loop().call_later(BUSY_RETRY, self._retry, busy)

    def _retry(self, dirty: Mapping[DirKey, Forced]) -> None:
        for key, names in dirty.items():
            self._held.discard(key)
            self._mark(key, names)
        self._schedule_flush()

    def _pending(self, keys: set[DirKey]) -> bool:
        """Whether a change in `keys` is not yet numbered: dirty, or waiting for Dovecot to
        release a lock (such a directory is in neither the dirty set nor the outbox)."""
        return any(key in self._dirty or key in self._held for key in keys)

    def _enqueue(self, drafts: list[Draft]) -> None:
        for draft in drafts:
            self.outbox.add(draft)
            self.traffic.count(draft)
        self.counters["batches"] += len(drafts)
        if drafts:
            for link in self.links.values():
                link.wake.set()

    async def rescan(self) -> None:
        """Compare every known directory with the disk (stat; racy files re-read)."""
        self.counters["rescans"] += 1
        keys = [(name, "") for name in self.config.roots]
        keys += [(root, reldir) for root in self.manifest.roots()
                 for reldir, _ in self.manifest.dirs(root) if reldir]
        lost_before = self._events_lost
        for start in range(0, len(keys), RESCAN_SLICE):
            for key in keys[start : start + RESCAN_SLICE]:
                self._mark(key, set())
            self._flush()
            await asyncio.sleep(0)
        if lost_before:
            self._events_lost = False

    async def _periodic_rescan(self) -> None:
        while True:
            await asyncio.sleep(self.config.tuning.rescan_interval)
            await self.rescan()

    # -- link host ---------------------------------------------------------------------------
    def resync(self, untrusted: Mapping[DirKey, set[str] | None]) -> int:
        first = self.outbox.next_seq
        result = self.batcher.build({}, dict(untrusted))
        for draft in result.drafts:
            draft.resync = True
        self.counters["resync_batches"] += len(result.drafts)
        self._enqueue(result.drafts)
        if result.busy:
            retry = {k: untrusted[k] for k in result.busy}
            asyncio.get_running_loop().call_later(BUSY_RETRY * 10, self.resync, retry)
        return first

    def repair_directory(self, key: DirKey) -> None:
        """Resend `key` whole. A peer that refuses the resend too (its disk is full, its copy
        keeps failing) is retried with a delay doubling up to 30 s, not in a tight loop."""
        now = time.monotonic()
        last, delay = self._repairs.get(key, (0.0, 0.0))
        delay = min(30.0, max(0.05, delay * 2)) if now - last < max(5.0, delay * 2) else 0.0
        self._repairs[key] = (now + delay, delay)
        if delay == 0.0:
            self.resync({key: None})
        else:
            log.warning("%s/%s refused again: resending it in %.2f s", key[0], key[1] or ".",
                        delay)
            asyncio.get_running_loop().call_later(delay, self.resync, {key: None})

    def diff_manifest(self, payload: bytes) -> dict[DirKey, set[str] | None]:
        return dict(diff(origin_entries(self.manifest), decode_entries(payload)))

    # -- sync commit -------------------------------------------------------------------------
    async def flush_and_wait(self, request: FlushRequest) -> tuple[bool, int, str]:
        """Ship every change in the request's directories now; wait for the quorum's acks."""
        self.sync_policy = request.policy
        # answer a little before the plugin gives up, so it gets our reason, not a timeout
        margin = min(0.1, request.timeout_ms / 1000 * 0.2)
        deadline = time.monotonic() + request.timeout_ms / 1000 - margin
        keys = self._sync_keys(request.dirs)
        if not keys:
            return self._sync_result(False, 0, "no directory of the request is under a "
                                     "replicated root", request)
        self._catch_up(keys)
        while self._pending(keys):
            if any(key in self._dirty for key in keys):
                self._flush()
            if not self._pending(keys):
                break
            await asyncio.sleep(BUSY_RETRY)
            if time.monotonic() > deadline:
                return self._sync_result(False, 0, "files stayed locked by Dovecot", request)
        quorum = self.config.tuning.sync_quorum
        try:
            holders = await self.outbox.wait_replicated(frozenset(keys), quorum,
                                                        max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return self._sync_result(False, 0, self._why_not_replicated(quorum), request)
        return self._sync_result(True, len(holders), "", request)

    async def barrier(self, timeout: float) -> tuple[bool, int, str]:
        """Rescan everything, then wait until every peer acknowledged all of it."""
        deadline = time.monotonic() + timeout
        await self.rescan()
        while self._dirty or self._held or self._flush_handle is not None:
            self._flush()
            if self._dirty:
                await asyncio.sleep(BUSY_RETRY)
            if time.monotonic() > deadline:
                return False, 0, "files stayed locked by Dovecot"
        every = len(self.links)
        keys = frozenset(self.outbox.last_keys())
        try:
            holders = await self.outbox.wait_replicated(keys, every, deadline - time.monotonic(),
                                                        target=self.outbox.next_seq - 1)
        except TimeoutError:
            return False, 0, self._why_not_replicated(every)
        return True, len(holders), ""

    async def repair(self, origin: str) -> tuple[bool, int, str]:
        """Check `origin`'s replica against its digest journal; if anything was damaged, make
        the origin resend what differs (manifest resync). Returns (ok, damaged files, why)."""
        replica = self.store.origins().get(origin)
        if replica is None and not self.config.replica_root(origin).is_dir():
            return False, 0, f"no replica of {origin!r} here"
        report = await asyncio.to_thread(verify_replica, self.config.replica_root(origin),
                                         sorted(self.config.roots))
        damaged = [d for d in report.differences if d.check == "journal"]
        if damaged or report.errors:
            log.warning("replica of %s: %d damaged file(s) (%s); asking %s to resend them",
                        origin, len(damaged), ", ".join(d.file for d in damaged[:5]), origin)
            self.store.origin(origin).forget_position()
            self.listener.disconnect(origin)
        return True, len(damaged), ""

    async def fence(self, origin: str) -> tuple[bool, int, str]:
        """A promote raised `origin`'s fence: take it into account now and drop its link."""
        self.store.fences.reload()
        dropped = self.listener.disconnect(origin)
        log.warning("%s fenced at epoch %d by a promote on this node%s", origin,
                    self.store.fences.minimum(origin), "; its link was dropped" if dropped else "")
        return True, 0, ""

    async def _periodic_scrub(self) -> None:
        while True:
            await asyncio.sleep(self.config.tuning.scrub_interval)
            for origin in list(self.store.origins()):
                await self.repair(origin)

    def _catch_up(self, keys: set[DirKey]) -> None:
        """Make sure every change Dovecot made before asking is marked dirty.

        inotify queues an event inside the very write() or rename() that makes a change, so
        once Dovecot's commit returned, reading the queue now yields every file it touched:
        only those are read, no directory is scanned. Without that guarantee (watchdog's
        threads, or events lost to an overflow) the directories are compared with the
        manifest instead."""
        if isinstance(self._watcher, InotifyWatcher) and not self._events_lost:
            self._watcher.drain()
            return
        for key in keys:
            self._mark(key, set())

    def _sync_keys(self, dirs: tuple[str, ...]) -> set[DirKey]:
        keys: set[DirKey] = set()
        for directory in dirs:
            for name, root in self.config.roots.items():
                rel = relative_to_root(root, Path(directory))
                if rel is not None:
                    keys.add((name, rel))
                    user = rel.partition("/")[0]
                    keys.add((name, user))
                    if (root / user / "storage").is_dir():
                        keys.add((name, f"{user}/storage" if user else "storage"))
        return keys

    def _why_not_replicated(self, quorum: int) -> str:
        states = ", ".join(f"{peer}: {link.state}" + (f" ({link.last_error})"
                                                      if link.last_error else "")
                           for peer, link in self.links.items())
        return f"fewer than {quorum} peer(s) acknowledged in time [{states}]"

    def _sync_result(self, ok: bool, peers: int, reason: str,
                     request: FlushRequest) -> tuple[bool, int, str]:
        if ok:
            self.counters["sync_ok"] += 1
        else:
            self.counters["sync_degraded" if request.policy == "degrade" else "sync_failed"] += 1
            log.warning("sync commit for %s not confirmed (%s policy): %s", request.user,
                        request.policy, reason)
        return ok, peers, reason

    def status(self) -> dict[str, Any]:
        return build_status(self)


def _tls_files(config: Config) -> tuple[Path, Path, Path]:
    assert config.tls is not None
    return config.tls.cert, config.tls.key, config.tls.ca


def _load_epoch(state_dir: Path) -> int:
    path = state_dir / "epoch"
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        path.write_text("1\n")
        return 1


async def run_daemon(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Daemon(config).run(stop)
