"""Inbound replication connections: one origin per connection, batches applied in order.

Every connection first proves who it is (transport.handshake: a configured peer, the node id
its certificate names, the pre-shared key), within the handshake deadline; until then it is
told nothing. Then its role decides: an `origin` streams batches into its replica here (after
its epoch is checked); a `verifier` (the `verify` or `promote` command of a peer) asks for the
manifest of this node's own roots. A newer connection from the same origin replaces an older
one, so a half-dead socket never blocks a reconnecting peer. Acks are cumulative and sent once
per chunk of input; a NACK goes out in order, before the ack that covers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from replicator.config import Config
from replicator.errors import FencedError, ProtocolError
from replicator.manifest_codec import Entry, encode_entries, tree_entries
from replicator.replica.store import OriginReplica, ReplicaStore
from replicator.transport.base import Transport, TransportClosed
from replicator.transport.gate import Admission, RefusalLog
from replicator.transport.handshake import Accepted, Credentials, Refusal, accept
from replicator.wire.messages import (
    AWAITING_RESYNC,
    STALE_OWNER,
    Ack,
    Batch,
    ErrorMessage,
    Hello,
    Manifest,
    ManifestRequest,
    Message,
    Nack,
    Ping,
    Pong,
    Resync,
)
from replicator.wire.packed import FEATURE as PACKING
from replicator.wire.session import Session

log = logging.getLogger(__name__)


class Listener:
    def __init__(self, config: Config, store: ReplicaStore, software: str,
                 own_manifest: Callable[[], Iterable[Entry]],
                 own_position: Callable[[], tuple[str, int]], credentials: Credentials,
                 refusals: RefusalLog) -> None:
        self.config, self.store, self.software = config, store, software
        self.own_manifest, self.own_position = own_manifest, own_position
        self.credentials, self.refusals = credentials, refusals
        self.active: dict[str, asyncio.Task[Any]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def disconnect(self, origin: str) -> bool:
        """Drop `origin`'s connection (it reconnects and resumes); False if it had none."""
        task = self.active.pop(origin, None)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def handle(self, transport: Transport, admission: Admission) -> None:
        """Serve one connection. Whatever happens, only this connection ends: an unexpected
        exception is logged (with its traceback, once per address and kind) and closes it."""
        session = Session("server", max_frame_bytes=self.config.tuning.max_frame_bytes)
        try:
            try:
                async with asyncio.timeout_at(admission.deadline):
                    accepted = await self._hello(transport, session)
            except TimeoutError:
                self.refusals.refuse(admission.address, "timeout", "no authenticated HELLO "
                                     f"within {self.config.auth.hello_timeout:g} s")
                return
            if accepted is None:
                return
            admission.authenticated()
            if accepted.hello.role == "origin":
                await self._serve_origin(transport, session, accepted)
            else:
                await self._serve_verifier(transport, session, accepted)
        except ProtocolError as exc:
            self._protocol_error(admission, transport, exc)
        except (TransportClosed, TimeoutError, ConnectionError):
            pass
        except Exception as exc:
            if self.refusals.refuse(admission.address, f"bug:{type(exc).__name__}",
                                    f"unexpected {type(exc).__name__} ({exc}); connection "
                                    "closed, the listener carries on"):
                log.error("traceback of that failure:", exc_info=exc)

    def _protocol_error(self, admission: Admission, transport: Transport,
                        exc: ProtocolError) -> None:
        whose = "peer's fault" if exc.remote else "our fault"
        if admission.pending:  # not authenticated: once per address, like every refusal
            self.refusals.refuse(admission.address, "protocol", f"{exc} ({whose})")
        else:
            log.warning("replication connection from %s: %s (%s)",
                        transport.properties.get("peer"), exc, whose)

    async def _hello(self, transport: Transport, session: Session) -> Accepted | None:
        """The peer, authenticated (see transport.handshake), or None once refused."""
        try:
            return await accept(transport, session, self.config, self.credentials)
        except Refusal as exc:
            await self._refuse(transport, session, exc.code, str(exc))
            return None

    async def _refuse(self, transport: Transport, session: Session, code: str,
                      message: str) -> None:
        address = str(transport.properties.get("peer", "?")).rsplit(":", 1)[0]
        self.refusals.refuse(address, code, message)
        await transport.send(session.send(ErrorMessage(code, message)))

    async def _serve_origin(self, transport: Transport, session: Session,
                            accepted: Accepted) -> None:
        hello = accepted.hello
        origin = hello.node
        try:
            self.store.check_epoch(origin, hello.epoch)
        except FencedError as exc:
            await self._refuse(transport, session, "fenced", str(exc))
            return
        previous = self.active.get(origin)
        current = asyncio.current_task()
        if previous is not None and previous is not current:
            previous.cancel()
        if current is not None:
            self.active[origin] = current
        replica = self.store.origin(origin)
        replica.note_sync_policy(hello.sync_policy)
        features = [PACKING] if PACKING in hello.features and \
            self.config.tuning.link_compression == "zstd" else []
        if features:
            session.agree_packing()
        await transport.send(session.send(accepted.auth.sign(Hello(
            self.config.node_id, "replica", self.software, self.store.fences.minimum(origin),
            replica.persisted.stream, replica.persisted.seq,
            max_frame_bytes=self.config.tuning.max_frame_bytes, transports=["tcp"],
            broken_dirs=replica.broken_dirs(), features=features))))
        log.info("replicating %s into this node (stream %s, epoch %d)", origin, hello.stream,
                 hello.epoch)
        await self._origin_loop(transport, session, hello, replica)

    async def _origin_loop(self, transport: Transport, session: Session, hello: Hello,
                           replica: OriginReplica) -> None:
        stats = self.stats.setdefault(hello.node, {"batches": 0, "nacks": 0, "bytes": 0})
        try:
            await self._apply_stream(transport, session, hello, replica, stats)
        except FencedError as exc:
            await self._refuse(transport, session, "fenced", str(exc))

    async def _apply_stream(self, transport: Transport, session: Session, hello: Hello,
                            replica: OriginReplica, stats: dict[str, int]) -> None:
        while data := await transport.recv():
            stats["bytes"] += len(data)
            self.store.fences.reload()  # once per chunk: see ReplicaStore.check_epoch
            replies: list[Message] = []
            last_ack = 0
            for message in session.receive_data(data):
                reply, acked = self._on_origin(message, hello, replica, stats)
                if reply is not None:
                    if last_ack:
                        replies.append(Ack(last_ack))
                        last_ack = 0
                    replies.append(reply)
                last_ack = max(last_ack, acked)
            if last_ack:
                replies.append(Ack(last_ack))
            saved = replica.save_state()
            if not saved:  # only what is recorded may be acknowledged: refusals still go out
                replies = [r for r in replies if not isinstance(r, Ack)]
            if replies:
                await transport.send(b"".join(session.send(r) for r in replies))
            if not saved:
                return  # the origin reconnects and resumes from the position on disk

    def _on_origin(self, message: Message, hello: Hello, replica: OriginReplica,
                   stats: dict[str, int]) -> tuple[Message | None, int]:
        if isinstance(message, Batch):
            self.store.check_epoch(hello.node, message.epoch, reload=False)
            outcome = replica.receive(message)
            if outcome is None:
                return None, 0
            stats["batches"] += 1
            if outcome.ok:
                return None, outcome.seq
            stats["nacks"] += 1
            if outcome.full:
                stats["replica_enospc"] = stats.get("replica_enospc", 0) + 1
            stale = outcome.reason.startswith(STALE_OWNER)  # TokenFence logged it once
            if stale:
                stats["stale_token"] = stats.get("stale_token", 0) + 1
            level = logging.DEBUG if outcome.reason == AWAITING_RESYNC or stale else \
                logging.WARNING
            log.log(level, "batch %d from %s refused for %s/%s: %s", outcome.seq, hello.node,
                    outcome.root, outcome.dir or ".", outcome.reason)
            return Nack(outcome.seq, outcome.root, outcome.dir, outcome.reason), 0
        if isinstance(message, Resync):
            replica.resync(message.stream, message.seq, hello.epoch)
        elif isinstance(message, ManifestRequest):
            entries = list(tree_entries(replica.base, sorted(self.store.roots)))
            return Manifest(message.id, len(entries), payload=encode_entries(entries)), 0
        elif isinstance(message, Ping):
            replica.note_sync_policy(message.sync_policy)
            return Pong(message.t), 0
        elif isinstance(message, ErrorMessage):
            raise ProtocolError(f"{hello.node} closed the link: {message.message}")
        return None, 0

    async def _serve_verifier(self, transport: Transport, session: Session,
                              accepted: Accepted) -> None:
        """A configured peer (authenticated like an origin) asks what this node shipped."""
        await transport.send(session.send(accepted.auth.sign(
            Hello(self.config.node_id, "replica", self.software))))
        while data := await transport.recv():
            for message in session.receive_data(data):
                if isinstance(message, ManifestRequest):
                    entries = list(self.own_manifest())
                    stream, seq = self.own_position()
                    await transport.send(session.send(Manifest(
                        message.id, len(entries), stream, seq, encode_entries(entries))))
                elif isinstance(message, Ping):
                    await transport.send(session.send(Pong(message.t)))
