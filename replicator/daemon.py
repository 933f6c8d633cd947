"""The daemon: capture and ship this node's roots, keep RAM copies of the peers' roots.

Everything runs on one asyncio loop: the capture pipeline turns filesystem events into numbered
batches, links stream them to every peer, the listener applies peers' batches into replica_dir,
and the control socket serves the sync-commit plugin and the tools. This module wires those
parts together and owns the life cycle (startup, systemd notification, staged shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replicator import __version__, heap, sdnotify
from replicator.capture.pipeline import Capture
from replicator.config import Config
from replicator.control import protocol
from replicator.control.limits import ConnectionLimits
from replicator.control.protocol import FlushRequest
from replicator.control.server import ControlServer
from replicator.manifest_codec import decode_entries, diff, origin_entries
from replicator.mounts import filesystem_type
from replicator.replica.listener import Listener
from replicator.replica.store import ReplicaStore
from replicator.sender.batcher import DirKey, Draft
from replicator.sender.link import LinkHost, PeerLink
from replicator.sender.outbox import Outbox
from replicator.status import build_status
from replicator.sync_commit import Answer, SyncCommit
from replicator.traffic import Traffic
from replicator.transport import tcp
from replicator.transport.gate import ConnectionGate
from replicator.transport.handshake import Credentials
from replicator.transport.select import choose
from replicator.verify.runner import verify_replica

if TYPE_CHECKING:  # imported when [coordination] is configured: an HTTP stack costs ~8 MiB
    from replicator.coordination.coordinator import Coordinator
    from replicator.coordination.shipping import OwnedShipping

log = logging.getLogger("replicator")
SOFTWARE = f"dovecot-replicator/{__version__}"
COUNTERS = ("flushes", "commit_flushes", "unlisted_reads", "batches", "resync_batches",
            "busy_retries", "sync_ok", "sync_failed", "sync_degraded", "sync_refused",
            "rescans", "bytes_read", "unowned_skipped")


class Daemon(LinkHost):
    def __init__(self, config: Config) -> None:
        self.config, tuning = config, config.tuning
        self.node_id, self.software = config.node_id, SOFTWARE
        self.max_frame_bytes, self.ack_timeout = tuning.max_frame_bytes, tuning.ack_timeout
        self.connect_timeout, self.reconnect_max_delay = 5.0, tuning.reconnect_max_delay
        self.link_compression = tuning.link_compression
        self.credentials = Credentials.from_config(config, server=True)
        auth = config.auth
        self.gate = ConnectionGate(auth.max_connections, auth.max_unauthenticated,
                                   auth.max_unauthenticated_per_address, auth.hello_timeout)
        for peer in config.peers:
            choose(peer.transport)  # transport = "rdma" without one: a clear error, exit 2
        for directory in (config.replica_dir, config.state_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.traffic = Traffic()
        self.capture = Capture(config.roots, tuning.watcher, tuning.base_cache_bytes,
                               self._enqueue, self.counters)
        self.capture.trailing_delay = tuning.trailing_delay
        self.manifest = self.capture.manifest
        self.outbox = Outbox(secrets.token_hex(8), _load_epoch(config.state_dir),
                             [p.id for p in config.peers], retain_bytes=tuning.retain_bytes,
                             max_frame_bytes=tuning.max_frame_bytes)
        self.store = ReplicaStore(config.replica_dir, config.state_dir, frozenset(config.roots),
                                  tuning.max_frame_bytes)
        self.listener = Listener(config, self.store, SOFTWARE,
                                 lambda: origin_entries(self.manifest),
                                 lambda: (self.outbox.stream, self.outbox.next_seq - 1),
                                 self.credentials, self.gate.refusals)
        self.links = {p.id: PeerLink(self, p) for p in config.peers}
        self.sync = SyncCommit(config.roots, self.capture, self.outbox, self.links,
                               tuning.sync_quorum, self.counters, tuning.sync_policy)
        self.control = ControlServer(
            config.control_socket, config.control_socket_mode, self,
            ConnectionLimits(tuning.control_max_per_uid, tuning.control_max_connections),
            tuning.control_idle_timeout)
        self.shipping: OwnedShipping | None = None
        self.ownership = self._ownership(config)
        self.started = time.time()
        self.heap = heap.HeapPolicy()
        self._repairs: dict[DirKey, tuple[float, float]] = {}
        self._repair_pending: set[DirKey] = set()

    def _ownership(self, config: Config) -> Coordinator | None:
        """With [coordination]: etcd decides who owns which user (DESIGN §10)."""
        if config.coordination is None:
            return None
        from replicator.coordination.actions import Actions
        from replicator.coordination.coordinator import Coordinator
        from replicator.coordination.shipping import OwnedShipping
        from replicator.coordination.switchover import Handovers

        coordinator = Coordinator(config)
        self.shipping = OwnedShipping(coordinator, self.outbox, self.store.tokens,
                                      self._enqueue, self.resync_users, self.counters)
        actions = Actions(coordinator, self.shipping.learned, self.outbox.forgive)
        actions.handovers = Handovers(actions, self.barrier)
        actions.resync_users = self.resync_users
        coordinator.actions = actions
        coordinator.peers_hold_everything = self.shipping.peers_hold_everything
        self.sync.ownership = coordinator
        return coordinator

    def ownership_status(self) -> dict[str, Any] | None:
        if self.ownership is None:
            return None
        status = self.ownership.status()
        if self.ownership.actions is not None:
            status["diverged"] = dict(self.ownership.actions.diverged)
        return status

    @property
    def sync_policy(self) -> str:  # type: ignore[override]
        """What this node's sync-commit plugin does, as announced to peers (0 gap if fail):
        the configured policy, or a weaker one a FLUSH asked with since start."""
        return self.sync.policy

    # -- life cycle -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._warn_if_not_ram()
        self._warn_if_unauthenticated()
        started = time.monotonic()
        result = self.capture.start(asyncio.get_running_loop())
        log.info("node %s: %d files in %d directories under %d roots learned in %.2f s; "
                 "stream %s epoch %d", self.node_id, self.manifest.file_count(), result.scanned,
                 len(self.config.roots), time.monotonic() - started, self.outbox.stream,
                 self.outbox.epoch)
        self.heap.start()  # what is loaded now is walked by no garbage collection again
        server = await tcp.serve(self.config.listen, self.credentials.server_tls, self.gate,
                                 self.listener.handle)
        await self.control.start()
        tasks = [asyncio.create_task(link.run(), name=f"link-{peer}")
                 for peer, link in self.links.items()]
        tasks.append(asyncio.create_task(self._every(self.config.tuning.rescan_interval,
                                                     self.capture.rescan), name="rescan"))
        tasks.append(asyncio.create_task(self._every(self.config.tuning.scrub_interval,
                                                     self._scrub), name="scrub"))
        tasks.append(asyncio.create_task(self._every(heap.TICK_SECONDS, self._heap_tick),
                                         name="heap"))
        if self.ownership is not None:
            tasks.append(asyncio.create_task(self.ownership.run(), name="ownership"))
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
        self.capture.stop()
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

    @staticmethod
    async def _every(seconds: float, job: Any) -> None:
        """Run `job` every `seconds`; one failed run is logged and the next one still comes
        (a periodic rescan or scrub that died silently would leave nothing to catch misses)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                log.exception("periodic %s failed; trying again in %g s",
                              getattr(job, "__name__", "job"), seconds)

    def _warn_if_not_ram(self) -> None:
        fstype = filesystem_type(self.config.replica_dir)
        if fstype not in ("tmpfs", "ramfs"):
            log.warning("replica_dir %s is on %s, not tmpfs: peers' copies are not held in RAM",
                        self.config.replica_dir, fstype)

    def _warn_if_unauthenticated(self) -> None:
        """Config refuses this off loopback; on loopback it is allowed (tests, one-host demos)
        but worth a line: any local user can connect and claim to be a peer."""
        if self.config.tls is None and self.config.auth.psk is None:
            log.warning("neither [tls] nor [auth] psk_file is configured: any local user can "
                        "connect to %s and pose as a peer", self.config.listen)

    def _enqueue(self, drafts: list[Draft]) -> None:
        if self.shipping is not None:
            drafts = self.shipping.admit(drafts)
        for draft in drafts:
            self.outbox.add(draft)
            self.traffic.count(draft)
        self.counters["batches"] += len(drafts)
        self.counters["resync_batches"] += sum(1 for d in drafts if d.resync)
        if drafts:
            for link in self.links.values():
                link.kick()

    # -- link host ---------------------------------------------------------------------------
    def resync(self, untrusted: Mapping[DirKey, set[str] | None]) -> int:
        first = self.outbox.next_seq
        self._enqueue(self.capture.resync(untrusted))
        return first

    def resync_users(self, users: list[str]) -> None:
        """Resend every directory of `users` whole (ENSURE_DIR with owner and mode, every
        file, KEEP_ONLY): after a promote put them in place here."""
        keys: dict[DirKey, set[str] | None] = {}
        for name, root in self.config.roots.items():
            for user in users:
                for top, _, _ in os.walk(root / user):
                    keys[(name, os.path.relpath(top, root))] = None
        if keys:
            self.resync(keys)

    def repair_directory(self, key: DirKey) -> None:
        """Resend `key` whole. A peer that refuses the resend too (its disk is full, its copy
        keeps failing) is retried with a delay doubling up to 30 s, not in a tight loop."""
        if key in self._repair_pending:
            return  # later batches refused while the resend waits: it covers them
        now = time.monotonic()
        last, delay = self._repairs.get(key, (0.0, 0.0))
        delay = min(30.0, max(0.05, delay * 2)) if now - last < max(5.0, delay * 2) else 0.0
        self._repairs[key] = (now + delay, delay)
        if delay == 0.0:
            self.resync({key: None})
            return
        log.warning("%s/%s refused again: resending it in %.2f s", key[0], key[1] or ".", delay)
        self._repair_pending.add(key)

        def resend() -> None:
            self._repair_pending.discard(key)
            self.resync({key: None})
        asyncio.get_running_loop().call_later(delay, resend)

    def owns_now(self, reldir: str) -> bool:
        user = reldir.partition("/")[0]
        return self.ownership is not None and self.ownership.token(user) > 0

    def diff_manifest(self, payload: bytes) -> dict[DirKey, set[str] | None]:
        return dict(diff(origin_entries(self.manifest), decode_entries(payload)))

    # -- control socket ---------------------------------------------------------------------
    async def flush_and_wait(self, request: FlushRequest) -> Answer:
        return await self.sync.flush_and_wait(request)

    async def owner(self, user: str) -> Answer:
        """The plugin's question at login: may this node serve `user`?"""
        elsewhere = None if self.ownership is None else self.ownership.serves_elsewhere(user)
        return (False, protocol.REFUSED, elsewhere) if elsewhere else (True, 0, "")

    async def barrier(self, timeout: float) -> Answer:
        return await self.sync.barrier(timeout)

    async def repair(self, origin: str) -> Answer:
        """Check `origin`'s replica against its digest journal; if anything was damaged, make
        the origin resend what differs (manifest resync). Returns (ok, damaged files, why)."""
        if origin not in self.store.origins() and not self.config.replica_root(origin).is_dir():
            return False, 0, f"no replica of {origin!r} here"
        report = await asyncio.to_thread(verify_replica, self.config.replica_root(origin),
                                         sorted(self.config.roots))
        replica = self.store.origin(origin)
        damaged = [d for d in report.differences
                   if d.check == "journal" and replica.differs_from_journal(d.file)]
        if damaged or report.errors:
            log.warning("replica of %s: %d damaged file(s) (%s); asking %s to resend them",
                        origin, len(damaged), ", ".join(d.file for d in damaged[:5]), origin)
            self.store.origin(origin).forget_position()
            self.listener.disconnect(origin)
        return True, len(damaged), ""

    async def fence(self, origin: str) -> Answer:
        """A promote raised `origin`'s fence: take it into account now and drop its link."""
        self.store.fences.reload()
        dropped = self.listener.disconnect(origin)
        log.warning("%s fenced at epoch %d by a promote on this node%s", origin,
                    self.store.fences.minimum(origin), "; its link was dropped" if dropped else "")
        return True, 0, ""

    async def _heap_tick(self) -> None:
        self.heap.tick()

    async def _scrub(self) -> None:
        for origin in list(self.store.origins()):
            await self.repair(origin)

    def status(self, *, full: bool = True) -> dict[str, Any]:
        return build_status(self, full=full)


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
