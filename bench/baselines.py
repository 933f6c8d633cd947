"""The floors everything is compared with, measured in the same run: a TCP round trip on
loopback (blocking sockets and asyncio streams), a 4 KiB append + fdatasync on disk, and the
same write on tmpfs."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from pathlib import Path


def tcp_round_trip_blocking(samples: int, size: int = 64) -> list[float]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload, out = b"x" * size, []
    for _ in range(samples):
        start = time.perf_counter()
        client.sendall(payload)
        got = 0
        while got < size:
            got += len(client.recv(65536))
        out.append(time.perf_counter() - start)
    client.close()
    server.close()
    return out


def tcp_round_trip_asyncio(samples: int, size: int = 64) -> list[float]:
    async def run() -> list[float]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload, out = b"x" * size, []
        for _ in range(samples):
            start = time.perf_counter()
            writer.write(payload)
            await reader.readexactly(size)
            out.append(time.perf_counter() - start)
        writer.close()
        server.close()
        return out

    return asyncio.run(run())


def timed_appends(directory: Path, samples: int, *, fdatasync: bool,
                  size: int = 4096) -> list[float]:
    """Appends of `size` bytes to a new file in `directory`, each timed; with `fdatasync`,
    each followed by fdatasync: the cost Dovecot pays per transaction with mail_fsync = always
    (the log's case). Without it, the cost of the write alone (tmpfs: RAM)."""
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        fd, block, out = f.fileno(), os.urandom(size), []
        for _ in range(samples):
            start = time.perf_counter()
            os.write(fd, block)
            if fdatasync:
                os.fdatasync(fd)
            out.append(time.perf_counter() - start)
    return out
