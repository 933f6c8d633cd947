"""The control socket server: one task per client, one request at a time per connection.

The socket is created with the configured mode (default 0666 so Dovecot's mail processes, which
run as the mail users, can connect) in a directory created if missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from replicator.control import protocol
from replicator.errors import ProtocolError

log = logging.getLogger(__name__)

FlushHandler = Callable[[protocol.FlushRequest], Awaitable[tuple[bool, int, str]]]
BarrierHandler = Callable[[float], Awaitable[tuple[bool, int, str]]]
RepairHandler = Callable[[str], Awaitable[tuple[bool, int, str]]]


class ControlServer:
    def __init__(self, path: Path, mode: int, on_flush: FlushHandler,
                 on_barrier: BarrierHandler, on_repair: RepairHandler,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.path, self.mode = path, mode
        self.on_flush, self.on_barrier, self.status = on_flush, on_barrier, status
        self.on_repair = on_repair
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                       limit=protocol.MAX_LINE)
        os.chmod(self.path, self.mode)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            protocol.parse_version(await _line(reader))
            await _send(writer, protocol.VERSION_LINE)
            while line := await _line(reader):
                await _send(writer, await self._request(line))
        except ProtocolError as exc:
            log.warning("control client: %s", exc)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _request(self, line: str) -> str:
        fields = line.split("\t")
        if fields[0] == "FLUSH":
            request = protocol.parse_flush(fields)
            ok, peers, reason = await self.on_flush(request)
            return protocol.ok(request.id, peers) if ok else protocol.fail(request.id, reason)
        if fields[0] == "BARRIER" and len(fields) == 3 and fields[2].isdigit():
            ok, peers, reason = await self.on_barrier(int(fields[2]) / 1000)
            return protocol.ok(fields[1], peers) if ok else protocol.fail(fields[1], reason)
        if fields[0] == "REPAIR" and len(fields) == 3:
            ok, damaged, reason = await self.on_repair(protocol.unescape(fields[2]))
            return protocol.ok(fields[1], damaged) if ok else protocol.fail(fields[1], reason)
        if fields[0] == "STATUS" and len(fields) == 2:
            return f"STATUS\t{fields[1]}\t{protocol.escape(json.dumps(self.status()))}"
        raise ProtocolError(f"unknown control request {fields[0][:40]!r}")


async def _line(reader: asyncio.StreamReader) -> str:
    raw = await reader.readline()
    if raw and not raw.endswith(b"\n"):
        raise ProtocolError("control line without end of line")
    return raw.decode("utf-8", "surrogateescape").rstrip("\n")


async def _send(writer: asyncio.StreamWriter, line: str) -> None:
    writer.write(line.encode("utf-8", "surrogateescape") + b"\n")
    await writer.drain()


async def request(path: Path, line: str, timeout: float = 5.0) -> str:
    """One request from a tool (status, tests): connect, handshake, ask, return the reply."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    try:
        await _send(writer, protocol.VERSION_LINE)
        protocol.parse_version(await asyncio.wait_for(_line(reader), timeout))
        await _send(writer, line)
        return await asyncio.wait_for(_line(reader), timeout)
    finally:
        writer.close()
