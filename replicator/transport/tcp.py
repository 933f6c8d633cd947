"""TCP (optionally mutual TLS) transport on asyncio streams, with TCP_NODELAY.

Nagle's algorithm would hold a small ACK or BATCH back for up to 40 ms waiting for more data,
which is the whole latency budget many times over, so every socket sets TCP_NODELAY.
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
        self.properties: dict[str, Any] = {
            "name": "tcp", "reason": reason, "peer": f"{peer[0]}:{peer[1]}" if peer else "?",
            "tls": writer.get_extra_info("ssl_object") is not None,
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


def client_tls(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.check_hostname = False  # peers are pinned by the CA and their node id in HELLO
    return context


def server_tls(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def connect(address: Address, tls: ssl.SSLContext | None, timeout: float,
                  reason: str = "configured") -> TcpTransport:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(address.host, address.port, ssl=tls,
                                                       limit=READ_CHUNK)
    return TcpTransport(reader, writer, reason)


async def serve(address: Address, tls: ssl.SSLContext | None,
                handler: Callable[[TcpTransport], Awaitable[None]]) -> asyncio.Server:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = TcpTransport(reader, writer, "accepted")
        try:
            await handler(transport)
        finally:
            await transport.close()

    return await asyncio.start_server(on_connect, address.host, address.port, ssl=tls,
                                      limit=READ_CHUNK, reuse_address=True)
