"""The control socket server: one task per client, one request at a time per connection.

The socket is created with the configured mode (default 0666 so Dovecot's mail processes, which
run as the mail users, can connect) in a directory created if missing. Any client may FLUSH and
ask STATUS; BARRIER, REPAIR and FENCE, which make the daemon do work or drop a link, are
answered only for root or the daemon's own user (the kernel's SO_PEERCRED says who asks).

Because any local user may connect, nothing a client sends can cost more than a bounded
share: connections are capped per uid and in total (`limits.py`; admins have a reserve), a
client silent for `idle_timeout` seconds is closed (the plugin notices the close before its
next request and reconnects), a line longer than `protocol.MAX_LINE` is refused, and STATUS
for anyone but an admin leaves out user and mailbox names, addresses and error texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Protocol

from replicator.control import protocol
from replicator.control.limits import ConnectionLimits, OncePerMinute
from replicator.errors import ProtocolError

log = logging.getLogger(__name__)

Answer = tuple[bool, int, str]  # ok, a count for OK, the reason for FAIL
ADMIN_VERBS = ("BARRIER", "REPAIR", "FENCE")
IDLE_TIMEOUT = 60.0
LINGER = 0.5        # seconds a refused client gets to read the reason before we close
MAX_LINGERING = 64  # refused clients given that moment at once (the rest: closed at once)
REPLY_LIMIT = 64 << 20  # what a tool accepts as one reply line (a large STATUS)


class ControlHost(Protocol):
    """What the daemon answers on its control socket."""

    async def flush_and_wait(self, request: protocol.FlushRequest) -> Answer: ...

    async def barrier(self, timeout: float) -> Answer: ...

    async def repair(self, origin: str) -> Answer: ...

    async def fence(self, origin: str) -> Answer: ...

    async def owner(self, user: str) -> Answer: ...

    def status(self, *, full: bool) -> dict[str, Any]: ...


class LineTooLong(ProtocolError):
    """A control line over protocol.MAX_LINE bytes."""


class ControlServer:
    def __init__(self, path: Path, mode: int, host: ControlHost,
                 limits: ConnectionLimits | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.path, self.mode, self.host = path, mode, host
        self.limits = limits or ConnectionLimits()
        self.idle_timeout = idle_timeout
        self.refused = 0
        self._lingering = 0  # refused clients being given a moment to read why
        self._warn = OncePerMinute(log)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.limits.fit_descriptors(log)
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
        uid = _peer_uid(writer)
        admin = uid in (0, os.geteuid())
        refusal = self.limits.admit(uid, admin)
        if refusal is not None:
            self.refused += 1
            self._warn.warning(("limit", uid), "control connection from uid %s refused: %s",
                               uid, refusal)
            await self._refuse(reader, writer, refusal)
            return
        try:
            await self._serve(reader, writer, admin)
        except LineTooLong as exc:
            self._warn.warning(("line", uid), "control client uid %s: %s", uid, exc)
            await self._refuse(reader, writer, str(exc))
        except ProtocolError as exc:
            self._warn.warning(("protocol", uid), "control client uid %s: %s", uid, exc)
        except TimeoutError:
            log.debug("control client uid %s silent or not reading for %g s: closed", uid,
                      self.idle_timeout)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug must cost one connection, never the server
            log.exception("control client uid %s: unexpected error; connection closed", uid)
        finally:
            self.limits.release(uid, admin)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     admin: bool) -> None:
        minor = protocol.parse_version(await self._next_line(reader))
        await self._reply(writer, protocol.VERSION_LINE)
        while line := await self._next_line(reader):
            await self._reply(writer, await self._answer(line, admin, minor))

    async def _reply(self, writer: asyncio.StreamWriter, line: str) -> None:
        """Send a reply; TimeoutError if the client does not read it within `idle_timeout`
        (a client that asks and never reads would otherwise hold its connection for ever).
        When the kernel took the whole reply at once, as it does for a client that reads, no
        timer is set up: this is on every sync commit's path."""
        writer.write(line.encode("utf-8", "surrogateescape") + b"\n")
        if writer.transport.get_write_buffer_size() == 0:
            return
        async with asyncio.timeout(self.idle_timeout):
            await writer.drain()

    async def _next_line(self, reader: asyncio.StreamReader) -> str:
        """The next request line; TimeoutError if the client stays silent (or dribbles one
        line) for `idle_timeout` seconds."""
        async with asyncio.timeout(self.idle_timeout):
            return await _line(reader)

    async def _answer(self, line: str, admin: bool, minor: int = 0) -> str:
        """The reply to one request: a malformed one gets a FAIL saying what is wrong, one that
        failed inside the daemon a FAIL naming the error (and the log a traceback); neither
        closes the connection (the line was read whole, so the next one is in step)."""
        try:
            return await self._request(line, admin, minor)
        except ProtocolError as exc:  # the line was whole: refuse it, keep the connection
            self._warn.warning(("request",), "malformed control request: %s", exc)
            return protocol.fail(_echoed_id(line), f"malformed request: {exc}")
        except Exception as exc:
            fields = line.split("\t")
            log.exception("control request %s failed", fields[0][:40])
            return protocol.fail(fields[1] if len(fields) > 1 else "",
                                 f"internal error: {type(exc).__name__}: {exc}")

    async def _request(self, line: str, admin: bool, minor: int) -> str:
        fields = line.split("\t")
        verb, ident = fields[0], fields[1] if len(fields) > 1 else ""
        if verb in ADMIN_VERBS and not admin:
            return protocol.fail(ident, f"{verb} is for root or the daemon's user")
        if verb == "FLUSH":
            request = protocol.parse_flush(fields)
            return _reply(request.id, await self.host.flush_and_wait(request), minor)
        if verb == "OWNER" and len(fields) == 3:
            user = protocol.unescape(fields[2])
            return _reply(ident, await self.host.owner(user), minor)
        if verb == "BARRIER" and len(fields) == 3:
            timeout_ms = protocol.decimal(fields[2], "BARRIER timeout_ms")
            return _reply(ident, await self.host.barrier(timeout_ms / 1000))
        if verb in ("REPAIR", "FENCE") and len(fields) == 3:
            origin = protocol.unescape(fields[2])
            handler = self.host.repair if verb == "REPAIR" else self.host.fence
            return _reply(ident, await handler(origin))
        if verb == "STATUS" and len(fields) == 2:
            data = self.host.status(full=admin)
            return f"STATUS\t{ident}\t{protocol.escape(json.dumps(data))}"
        raise ProtocolError(f"unknown control request {verb[:40]!r}")

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      reason: str) -> None:
        """Tell a client why it is being closed (the plugin logs the reply), then close. Up
        to MAX_LINGERING refused clients are given LINGER seconds to read it; past that a
        flood of refused connections is closed at once, so it cannot hold descriptors."""
        await _send_and_shut(writer, protocol.fail("", reason))
        if self._lingering < MAX_LINGERING:
            self._lingering += 1
            try:
                await _discard_input(reader)
            finally:
                self._lingering -= 1
        writer.close()

    def stats(self) -> dict[str, Any]:
        """Connection counts for STATUS (no uids: which users are connected is theirs)."""
        return {"connections": sum(self.limits.held.values()), "admin": self.limits.admins,
                "refused": self.refused, "lingering": self._lingering,
                "max_per_uid": self.limits.per_uid, "max_connections": self.limits.total,
                "idle_timeout_s": self.idle_timeout}


async def _send_and_shut(writer: asyncio.StreamWriter, line: str) -> None:
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        writer.write(line.encode() + b"\n")
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER):
            await writer.drain()


async def _discard_input(reader: asyncio.StreamReader) -> None:
    """Read until the client closes (or LINGER passes). Closing a unix socket with unread
    input makes the client's next read fail with ECONNRESET before it sees our reply."""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(LINGER):
            while await reader.read(1 << 16):
                pass


def _echoed_id(line: str) -> str:
    """The request's id if it is one (a short decimal), else "" (never echo arbitrary text)."""
    fields = line.split("\t", 2)
    ident = fields[1] if len(fields) > 1 else ""
    return ident if 0 < len(ident) <= protocol.MAX_ID_DIGITS and ident.isascii() \
        and ident.isdigit() else ""


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _reply(ident: str, answer: Answer, minor: int = 0) -> str:
    ok, count, reason = answer
    if ok:
        return protocol.ok(ident, count)
    if count == protocol.REFUSED:
        return protocol.refused(ident, reason, minor)
    return protocol.fail(ident, reason)


async def _line(reader: asyncio.StreamReader) -> str:
    """One line without its newline ('' at end of input). A line over the reader's limit is
    LineTooLong (StreamReader.readline would raise a bare ValueError)."""
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("control line without end of line") from None
        return ""
    except asyncio.LimitOverrunError:
        raise LineTooLong(f"control line longer than {protocol.MAX_LINE} bytes refused") from None
    return raw.decode("utf-8", "surrogateescape").rstrip("\n")


async def _send(writer: asyncio.StreamWriter, line: str) -> None:
    writer.write(line.encode("utf-8", "surrogateescape") + b"\n")
    await writer.drain()


async def request(path: Path, line: str, timeout: float = 5.0) -> str:
    """One request from a tool (status, tests): connect, handshake, ask, return the reply."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=REPLY_LIMIT)
    try:
        await _send(writer, protocol.VERSION_LINE)
        async with asyncio.timeout(timeout):
            protocol.parse_version(await _line(reader))
        await _send(writer, line)
        async with asyncio.timeout(timeout):
            return await _line(reader)
    finally:
        writer.close()
