"""TCP (optionally mutual TLS) transport on asyncio streams, with TCP_NODELAY.

Nagle's algorithm would hold a small ACK or BATCH back for up to 40 ms waiting for more data,
which is the whole latency budget many times over, so every socket sets TCP_NODELAY.

TLS: both contexts require TLS 1.2 or later in code (not whatever the host's OpenSSL allows)
and verify the peer's chain against the configured CA. Who the peer is comes from its
certificate: `properties["peer_names"]` holds its subject CN and DNS SANs, and the handshake
(transport.handshake) requires the node id there, compared exactly, on both ends. Hostname
checking is off on purpose: node ids are not host names (`node_1` is a valid id), OpenSSL's
matcher would accept wildcards, and one exact rule for both directions is easier to reason
about than two.

The listener does the server side of TLS itself after accepting (`start_tls`), so a connection
counts against the gate's caps and the handshake deadline from its first byte, TLS included.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from replicator.config_values import Address
from replicator.transport.base import TransportClosed
from replicator.transport.gate import Admission, ConnectionGate

READ_CHUNK = 1 << 20


class TcpTransport:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 reason: str) -> None:
        self._reader, self._writer = reader, writer
        self._closed = False
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        tls = writer.get_extra_info("ssl_object")
        self.properties: dict[str, Any] = {
            "name": "tcp", "reason": reason, "peer": f"{peer[0]}:{peer[1]}" if peer else "?",
            "tls": tls is not None,
            "tls_version": tls.version() if tls is not None else None,
            "peer_names": certificate_names(writer.get_extra_info("peercert")),
        }

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise TransportClosed("transport closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except asyncio.CancelledError:
            await self._abort()
            raise
        except (ConnectionError, OSError) as exc:
            await self._abort()
            raise TransportClosed(str(exc)) from exc

    def ready(self) -> bool:
        """Open, and nothing waits in the socket's send buffer of asyncio."""
        return not self._closed and not self._writer.is_closing() and \
            self._writer.transport.get_write_buffer_size() == 0

    def send_nowait(self, data: bytes) -> None:
        """Queue `data` (the kernel takes it at once when `ready()`); a failure shows in the
        next `send` or `recv`."""
        self._writer.write(data)

    async def recv(self) -> bytes:
        if self._closed:
            raise TransportClosed("transport closed")
        try:
            return await self._reader.read(READ_CHUNK)
        except asyncio.CancelledError:
            await self._abort()
            raise
        except (ConnectionError, OSError) as exc:
            await self._abort()
            raise TransportClosed(str(exc)) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(2):
                await self._writer.wait_closed()

    async def _abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()


def certificate_names(cert: dict[str, Any] | None) -> list[str]:
    """The subject CNs and DNS subjectAltNames of a verified peer certificate (sorted)."""
    if not cert:
        return []
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn
             if key == "commonName"}
    names.update(value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS")
    return sorted(names)


def _strict(context: ssl.SSLContext) -> ssl.SSLContext:
    """RFC 5280 checks on every certificate (a CA must carry keyUsage, a node certificate an
    authority key identifier). Python 3.13 (Debian 13) turns them on by default, 3.11
    (Debian 12) does not: on both, so that certificates a Debian 12 node accepts keep working
    when a node of the pair moves to Debian 13 (README: "Certificates")."""
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_tls(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.check_hostname = False  # the node id is checked against the certificate's names
    return _strict(context)


def server_tls(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    return _strict(context)


def tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason, with the verifier's own words when a certificate was refused
    ("CERTIFICATE_VERIFY_FAILED (CA cert does not include key usage extension)")."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    detail = getattr(exc, "verify_message", None)
    return f"{reason} ({detail})" if detail else str(reason)


async def connect(address: Address, tls: ssl.SSLContext | None, timeout: float,
                  reason: str = "configured") -> TcpTransport:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(address.host, address.port, ssl=tls,
                                                       limit=READ_CHUNK)
    return TcpTransport(reader, writer, reason)


Handler = Callable[[TcpTransport, Admission], Awaitable[None]]


async def serve(address: Address, tls: ssl.SSLContext | None, gate: ConnectionGate,
                handler: Handler) -> asyncio.Server:
    """Accept connections under `gate`'s caps; TLS (if any) must finish by the deadline."""
    loop = asyncio.get_running_loop()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        admission = gate.admit(host, loop.time())
        if admission is None:
            writer.transport.abort()
            return
        try:
            if tls is not None and not await _start_tls(writer, tls, admission, gate):
                return
            transport = TcpTransport(reader, writer, "accepted")
            try:
                await handler(transport, admission)
            finally:
                await transport.close()
        finally:
            admission.release()

    return await asyncio.start_server(on_connect, address.host, address.port,
                                      limit=READ_CHUNK, reuse_address=True)


async def _start_tls(writer: asyncio.StreamWriter, tls: ssl.SSLContext, admission: Admission,
                     gate: ConnectionGate) -> bool:
    """The server side of the TLS handshake; False (connection aborted, refusal logged) if it
    failed or did not finish by the admission's deadline."""
    try:
        async with asyncio.timeout_at(admission.deadline):
            await writer.start_tls(tls)
        return True
    except TimeoutError:
        gate.refusals.refuse(admission.address, "tls-timeout",
                             f"no TLS handshake within {gate.hello_timeout:g} s")
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        reason = tls_reason(exc)
        gate.refusals.refuse(admission.address, f"tls:{reason}", f"TLS failed: {reason}")
    writer.transport.abort()
    return False
