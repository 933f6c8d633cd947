"""The floors everything is compared with, measured in the same run: a TCP round trip on
loopback (blocking sockets and asyncio streams), the four hops of a sync commit through two
asyncio processes doing nothing else (`sync_hops`), a 4 KiB append + fdatasync on disk, and
the same write on tmpfs."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

# The sizes of a sync commit's messages (mdbox STORE): the plugin's FLUSH line, the packed
# BATCH frame, the ACK frame, the daemon's answer line.
FLUSH_BYTES, BATCH_BYTES, ACK_BYTES, ANSWER_BYTES = 160, 240, 40, 24


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


def sync_hops(samples: int) -> list[float]:
    """The four hops a sync commit adds, with no work at either end: a client (blocking, as
    the plugin is) sends a FLUSH-sized line over a unix socket to a "sender" process, which
    writes a BATCH-sized message over TCP loopback to a "receiver" process, which answers an
    ACK-sized one; the sender then answers the client. Both are asyncio processes on streams,
    as the daemons are, each in an interpreter of its own. The in-process `tcp_round_trip_*`
    floors leave out what this one holds: four wake-ups of separate processes, which on a VM
    cost tens of µs each. What a sync commit's overhead adds beyond this is our own work."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        path = f"{scratch}/hops.sock"
        ready = context.Queue()  # each process says when it listens (the receiver: where)
        receiver = context.Process(target=_hops_receiver, args=(ready,), daemon=True)
        receiver.start()
        sender = context.Process(target=_hops_sender, args=(path, ready.get(timeout=30), ready),
                                 daemon=True)
        sender.start()
        try:
            ready.get(timeout=30)
            line, out = b"F" * (FLUSH_BYTES - 1) + b"\n", []
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
                for _ in range(samples):
                    start = time.perf_counter()
                    client.sendall(line)
                    got = 0
                    while got < ANSWER_BYTES:
                        data = client.recv(4096)
                        if not data:
                            raise ConnectionError("the sync_hops sender process went away")
                        got += len(data)
                    out.append(time.perf_counter() - start)
            return out
        finally:
            for process in (sender, receiver):
                process.kill()
                process.join()


def _hops_receiver(ready: multiprocessing.Queue[int]) -> None:
    async def run() -> None:
        async def on_batch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                                                       1)
            ack = b"A" * ACK_BYTES
            while True:
                await reader.readexactly(BATCH_BYTES)
                writer.write(ack)
                await writer.drain()

        server = await asyncio.start_server(on_batch, "127.0.0.1", 0)
        ready.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(run())


def _hops_sender(path: str, port: int, ready: multiprocessing.Queue[int]) -> None:
    async def run() -> None:
        peer_reader, peer_writer = await asyncio.open_connection("127.0.0.1", port)
        peer_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                        socket.TCP_NODELAY, 1)
        batch, answer = b"B" * BATCH_BYTES, b"O" * (ANSWER_BYTES - 1) + b"\n"

        async def on_flush(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.readline():
                peer_writer.write(batch)
                await peer_writer.drain()
                await peer_reader.readexactly(ACK_BYTES)
                writer.write(answer)
                await writer.drain()

        server = await asyncio.start_unix_server(on_flush, path)
        ready.put(0)
        await server.serve_forever()

    asyncio.run(run())
