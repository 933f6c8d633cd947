"""One outbound replication link: connect, agree where to resume, stream batches, read acks.

The link is the only place that decides *where* a peer resumes: from its last applied seq when
that is still in the outbox (a short disconnect costs nothing), otherwise through a manifest
resync (the peer says what it holds, the origin sends whole files only for directories that
differ). It reconnects forever with capped exponential backoff; a peer that refuses us (fenced,
unknown) is logged once per refusal with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

from replicator.config import PeerConfig
from replicator.errors import ProtocolError
from replicator.manifest_codec import DirKey
from replicator.sender.outbox import Numbered, Outbox
from replicator.transport.base import Transport, TransportClosed
from replicator.transport.handshake import Credentials, Dialled, dial
from replicator.transport.select import choose
from replicator.transport.tcp import tls_reason
from replicator.wire.auth import AuthError
from replicator.wire.messages import (
    AWAITING_RESYNC,
    STALE_OWNER,
    Ack,
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
KEEPALIVE = 2.0
SEND_CHUNK = 4 << 20


class LinkHost:
    """What a link needs from the daemon (kept narrow so links are testable on their own)."""

    node_id: str
    software: str
    sync_policy: str
    outbox: Outbox
    max_frame_bytes: int
    connect_timeout: float
    ack_timeout: float
    reconnect_max_delay: float
    credentials: Credentials
    link_compression: str = "zstd"  # [replication] link_compression: "zstd" offers wire.packed

    def resync(self, untrusted: Mapping[DirKey, set[str] | None]) -> int:
        """Queue resync batches (whole files for the named files, or all when None); returns
        the first seq of them (the next seq if there are none)."""
        raise NotImplementedError

    def diff_manifest(self, payload: bytes) -> dict[DirKey, set[str] | None]:
        raise NotImplementedError

    def repair_directory(self, key: DirKey) -> None:
        """Resend a directory a peer refused, whole (with backoff if it keeps refusing)."""
        raise NotImplementedError

    def owns_now(self, reldir: str) -> bool:
        """Whether this node owns the user of `reldir` under a fencing token now (ownership on
        etcd); False without etcd, where no batch carries a token."""
        return False


class PeerLink:
    def __init__(self, host: LinkHost, peer: PeerConfig) -> None:
        self.host, self.peer = host, peer
        self.wake = asyncio.Event()
        self.state = "starting"
        self.last_error = ""
        self.transport_properties: dict[str, Any] = {}
        self.bytes_sent = 0    # on the link
        self.bytes_framed = 0  # the batch frames they carried (more: link compression)
        self._peer_max_frame_bytes = host.max_frame_bytes
        self.packing = False  # whether this connection's batches travel compressed
        self._live: tuple[Transport, Session] | None = None  # streaming on this connection
        self._sent = 0  # last seq handed to its transport
        self._sending = False  # a send is waiting for the transport to take it
        self.connects = 0
        self.resyncs = 0
        self._manifest: asyncio.Future[Manifest] | None = None
        self._last_progress = time.monotonic()

    async def run(self) -> None:
        """Connect, stream, and on any failure back off and reconnect, for ever: whatever
        goes wrong (a refusal, garbage from the peer, a bug of ours) ends one connection, never
        the link, and `last_error` says what it was."""
        delay = 0.05
        while True:
            try:
                await self._connection()
                delay = 0.05
            except (OSError, TransportClosed, ProtocolError, TimeoutError) as exc:
                self._failed(exc)
            except Exception as exc:
                self._failed(exc, unexpected=True)
            finally:
                self.host.outbox.mark_disconnected(self.peer.id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.host.reconnect_max_delay)

    def _failed(self, exc: BaseException, *, unexpected: bool = False) -> None:
        message = describe_failure(exc)
        if message != self.last_error:
            log.warning("link to %s at %s: %s (retrying every %.1f s at most)", self.peer.id,
                        self.peer.address, message, self.host.reconnect_max_delay,
                        exc_info=exc if unexpected else None)
        self.last_error = message
        self.state = "disconnected"

    async def _connection(self) -> None:
        self.state = "connecting"
        dialled = await self._handshake()
        try:
            await self._stream(dialled.transport, dialled.session, dialled.hello)
        finally:
            self.packing = False
            await dialled.transport.close()

    async def _handshake(self) -> Dialled:
        """An authenticated connection to the peer (transport.handshake), announcing our stream."""
        outbox = self.host.outbox
        _name, reason = choose(self.peer.transport)
        offer = self.host.link_compression == "zstd"
        hello = Hello(self.host.node_id, "origin", self.host.software, outbox.epoch, outbox.stream,
                      max_frame_bytes=self.host.max_frame_bytes, sync_policy=self.host.sync_policy,
                      transports=["tcp"], features=[PACKING] if offer else [])
        dialled = await dial(self.peer, self.host.credentials, hello,
                             timeout=self.host.connect_timeout,
                             max_frame_bytes=self.host.max_frame_bytes, reason=reason)
        self.packing = offer and PACKING in dialled.hello.features
        if self.packing:
            dialled.session.agree_packing()
        self._peer_max_frame_bytes = dialled.hello.max_frame_bytes or self.host.max_frame_bytes
        self.transport_properties = dialled.transport.properties
        self.connects += 1
        log.info("link to %s up over %s; replica at stream %s seq %d", self.peer.id,
                 self.transport_properties.get("name"), dialled.hello.stream or "-",
                 dialled.hello.seq)
        return dialled

    async def _stream(self, transport: Transport, session: Session, hello: Hello) -> None:
        outbox = self.host.outbox
        cursor = outbox.cursors[self.peer.id]
        reader = asyncio.create_task(self._read(transport, session))
        try:
            position: int | None = None
            if hello.stream == outbox.stream and outbox.after(hello.seq) is not None:
                position = hello.seq
                cursor.acked = max(cursor.acked, hello.seq)
                outbox.mark_synced(self.peer.id)
            cursor.connected = True
            self._last_progress = time.monotonic()
            # Directories the replica could not apply (a full tmpfs, a failed check) are not
            # held there, whatever its position says: resend them whole, numbered after the
            # position we resume from (after a manifest resync: after its batches).
            broken = list(hello.broken_dirs)

            def resend_broken() -> None:  # once per connection: later resyncs know better
                for key in outbox.reported_broken(self.peer.id, broken):
                    self.host.repair_directory(key)
                broken.clear()
            if position is not None:
                self._sent = position
                resend_broken()
            while True:
                if position is None:
                    position = self._sent = await self._manifest_resync(transport, session)
                    resend_broken()
                self._live = (transport, session)  # kick() may send from here on
                if not await self._send_pending(transport, session, reader):
                    self._live = position = None
                if reader.done():
                    reader.result()
                    return
        finally:
            self._live = None
            reader.cancel()

    def kick(self) -> None:
        """The outbox numbered new batches: send them from the caller's stack when the
        connection is streaming and nothing is queued on it (a sync commit's batches then
        leave at once, not a few loop turns later when this link's task runs), else wake the
        task to send them. When they all left here the task is not woken: it would only find
        nothing to send and wait again, four loop turns per commit (measured: 10.6 epoll
        waits per sync-committed STORE before, on 2 vCPUs that the receiver and Dovecot
        share)."""
        live = self._live
        if live is not None and not self._sending and live[0].ready():
            batches = self.host.outbox.after(self._sent)
            if batches:
                live[0].send_nowait(self._encode(live[1], batches))
            if self.host.outbox.after(self._sent) == []:
                return
        self.wake.set()

    def _encode(self, session: Session, batches: list[Numbered]) -> bytes:
        """The bytes for `batches` (SEND_CHUNK and a bit at most), counted as sent."""
        chunk, size = [], 0
        for batch in batches:
            chunk += batch.frames
            size += batch.size
            self._sent = batch.seq
            if size >= SEND_CHUNK:
                break
        # PACKED frames carry at most half of what the peer accepts decompressed (a frame
        # the outbox made bigger, up to half of ours, goes alone)
        data = session.pack(chunk, max(self._peer_max_frame_bytes // 2, 1)) \
            if session.packing else b"".join(chunk)
        self.bytes_sent += len(data)
        self.bytes_framed += size
        self.state = "streaming"
        return data

    async def _send_pending(self, transport: Transport, session: Session,
                            reader: asyncio.Task[None]) -> bool:
        """Send what follows `_sent`, or wait for more (pinging while idle); False when the
        peer's position is no longer in the outbox (a manifest resync must follow)."""
        batches = self.host.outbox.after(self._sent)
        if batches is None:
            return False
        if batches:
            data = self._encode(session, batches)
            self._sending = True  # until the transport took it all: kick() must not overtake
            try:
                await transport.send(data)
            finally:
                self._sending = False
            return True
        self.wake.clear()
        if self.host.outbox.after(self._sent) == []:
            woken = asyncio.ensure_future(self.wake.wait())
            done, _ = await asyncio.wait({woken, reader}, timeout=KEEPALIVE,
                                         return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if not done:
                await self._keepalive(transport, session, self._sent)
        return True

    async def _keepalive(self, transport: Transport, session: Session, position: int) -> None:
        cursor = self.host.outbox.cursors[self.peer.id]
        if cursor.acked < position and \
                time.monotonic() - self._last_progress > self.host.ack_timeout:
            raise TimeoutError(f"{self.peer.id} acknowledged nothing for "
                               f"{self.host.ack_timeout:.0f} s")
        await transport.send(session.send(Ping(time.monotonic_ns(), self.host.sync_policy)))

    async def _manifest_resync(self, transport: Transport, session: Session) -> int:
        self.state = "resyncing"
        self.resyncs += 1
        self._manifest = asyncio.get_running_loop().create_future()
        await transport.send(session.send(ManifestRequest(self.resyncs)))
        async with asyncio.timeout(self.host.ack_timeout * 6):
            manifest = await self._manifest
        untrusted = self.host.diff_manifest(manifest.payload)
        start = self.host.resync(untrusted)
        cursor = self.host.outbox.cursors[self.peer.id]
        cursor.acked = max(cursor.acked, start - 1)
        for key in untrusted:
            cursor.broken[key] = start - 1
        self.host.outbox.mark_synced(self.peer.id)
        await transport.send(session.send(Resync(self.host.outbox.stream, start)))
        log.info("resync of %s: %d directories differ (of %d listed), resuming at seq %d",
                 self.peer.id, len(untrusted), manifest.entries, start)
        return start - 1

    async def _read(self, transport: Transport, session: Session) -> None:
        while True:
            data = await _recv(transport)
            replies = [r for m in session.receive_data(data) if (r := self._on(m)) is not None]
            if replies:
                await transport.send(b"".join(session.send(r) for r in replies))

    def _on(self, message: Message) -> Message | None:
        outbox = self.host.outbox
        if isinstance(message, Ack):
            outbox.ack(self.peer.id, message.seq)
            self._last_progress = time.monotonic()
        elif isinstance(message, Nack):
            self._on_nack(message)
        elif isinstance(message, Manifest) and self._manifest and not self._manifest.done():
            self._manifest.set_result(message)
        elif isinstance(message, Ping):
            return Pong(message.t)
        elif isinstance(message, ErrorMessage):
            raise ProtocolError(f"{self.peer.id} closed the link: {message.message}")
        return None

    def _on_nack(self, nack: Nack) -> None:
        key = (nack.root, nack.dir)
        if nack.reason.startswith(STALE_OWNER) and not self.host.owns_now(nack.dir):
            log.warning("%s refused batch %d (%s/%s): %s: another node owns that user now",
                        self.peer.id, nack.seq, nack.root, nack.dir or ".", nack.reason)
            self.host.outbox.fenced(self.peer.id, key)
            return
        # A stale token for a user this node owns now: the batch was numbered before its
        # claim (a new user's first changes); the resend below carries the current token.
        # Once a directory is refused, its later batches are too until the resend arrives:
        # only the first refusal says why.
        level = logging.DEBUG if nack.reason == AWAITING_RESYNC else logging.WARNING
        log.log(level, "%s could not apply batch %d (%s/%s): %s; resyncing that directory",
                self.peer.id, nack.seq, nack.root, nack.dir or ".", nack.reason)
        if self.host.outbox.nack(self.peer.id, nack.seq, key):
            self.host.repair_directory(key)


def describe_failure(exc: BaseException) -> str:
    """A short operator-facing reason for a failed link."""
    if isinstance(exc, AuthError):
        return f"authentication failed: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the peer's daemon running and listening there?)"
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {tls_reason(exc) if exc.reason else exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if not isinstance(exc, OSError | ProtocolError):
        return f"unexpected {type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__


async def _recv(transport: Transport) -> bytes:
    data = await transport.recv()
    if not data:
        raise TransportClosed("peer closed the connection")
    return data

