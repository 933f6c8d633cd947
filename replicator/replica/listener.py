"""Inbound replication connections: one origin per connection, batches applied in order.

The first message decides the role: an `origin` streams batches into its replica here (after
its node id and epoch are checked); a `verifier` (the `verify` command of a peer) asks for the
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
from replicator.wire.messages import (
    AWAITING_RESYNC,
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
from replicator.wire.session import Session

log = logging.getLogger(__name__)
HELLO_TIMEOUT = 10.0


class Listener:
    def __init__(self, config: Config, store: ReplicaStore, software: str,
                 own_manifest: Callable[[], Iterable[Entry]],
                 own_position: Callable[[], tuple[str, int]]) -> None:
        self.config, self.store, self.software = config, store, software
        self.own_manifest, self.own_position = own_manifest, own_position
        self.active: dict[str, asyncio.Task[Any]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def disconnect(self, origin: str) -> bool:
        """Drop `origin`'s connection (it reconnects and resumes); False if it had none."""
        task = self.active.pop(origin, None)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def handle(self, transport: Transport) -> None:
        session = Session("server", max_frame_bytes=self.config.tuning.max_frame_bytes)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = await self._hello(transport, session)
            if hello.role == "origin":
                await self._serve_origin(transport, session, hello)
            elif hello.role == "verifier":
                await self._serve_verifier(transport, session)
            else:
                await self._refuse(transport, session, "bad-role", f"unknown role {hello.role!r}")
        except ProtocolError as exc:
            log.warning("replication connection from %s: %s (%s)",
                        transport.properties.get("peer"), exc,
                        "peer's fault" if exc.remote else "our fault")
        except (TransportClosed, TimeoutError, ConnectionError):
            pass

    async def _hello(self, transport: Transport, session: Session) -> Hello:
        while True:
            data = await transport.recv()
            if not data:
                raise TransportClosed("closed before HELLO")
            messages = session.receive_data(data)
            if messages:
                hello = messages[0]
                assert isinstance(hello, Hello)
                return hello

    async def _refuse(self, transport: Transport, session: Session, code: str,
                      message: str) -> None:
        log.warning("refusing replication connection from %s: %s",
                    transport.properties.get("peer"), message)
        await transport.send(session.send(ErrorMessage(code, message)))

    async def _serve_origin(self, transport: Transport, session: Session, hello: Hello) -> None:
        origin = hello.node
        if self.config.peer(origin) is None:
            await self._refuse(transport, session, "unknown-peer",
                               f"node {origin!r} is not a configured peer of {self.config.node_id}")
            return
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
        await transport.send(session.send(Hello(
            self.config.node_id, "replica", self.software, self.store.fences.minimum(origin),
            replica.persisted.stream, replica.persisted.seq,
            max_frame_bytes=self.config.tuning.max_frame_bytes, transports=["tcp"],
            broken_dirs=replica.broken_dirs())))
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
            self.store.check_epoch(hello.node, message.epoch)
            outcome = replica.receive(message)
            if outcome is None:
                return None, 0
            stats["batches"] += 1
            if outcome.ok:
                return None, outcome.seq
            stats["nacks"] += 1
            if outcome.full:
                stats["replica_enospc"] = stats.get("replica_enospc", 0) + 1
            level = logging.DEBUG if outcome.reason == AWAITING_RESYNC else logging.WARNING
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

    async def _serve_verifier(self, transport: Transport, session: Session) -> None:
        await transport.send(session.send(Hello(self.config.node_id, "replica", self.software)))
        while data := await transport.recv():
            for message in session.receive_data(data):
                if isinstance(message, ManifestRequest):
                    entries = list(self.own_manifest())
                    stream, seq = self.own_position()
                    await transport.send(session.send(Manifest(
                        message.id, len(entries), stream, seq, encode_entries(entries))))
                elif isinstance(message, Ping):
                    await transport.send(session.send(Pong(message.t)))
