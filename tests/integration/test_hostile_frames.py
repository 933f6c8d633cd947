"""Hostile frames against a real daemon, before any HELLO: decompression bombs over a raw TCP
socket. The daemon must refuse them, stay up, answer STATUS, and its peak RSS (VmHWM) must
stay within a bound derived from its max_frame_bytes. No Dovecot needed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.testing.cluster import ReplicatorNode, stop_all
from tests.fuzz.inputs import compressed_hello, rle_bomb, tiny_bomb

pytestmark = pytest.mark.integration

MAX_FRAME_BYTES = 1 << 20
# What one connection's frame may cost the daemon: the frame, its payload decompressed (both
# bounded by max_frame_bytes) and copies of them, with room for the interpreter's own noise.
RSS_HEADROOM = 8 * MAX_FRAME_BYTES


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ReplicatorNode]:
    root = tmp_path / "roots" / "index"
    root.mkdir(parents=True)
    node = ReplicatorNode(tmp_path / "b", "b", {"index": root},
                          replication={"max_frame_bytes": MAX_FRAME_BYTES})
    node.start()
    yield node
    stop_all([node])


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def send_and_wait_for_close(port: int, data: bytes) -> None:
    """Send `data` as the first bytes of a replication connection and read until the daemon
    closes it (it must: the frame is refused). The timeout only guards a broken daemon."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        while sock.recv(65536):
            pass


@pytest.mark.parametrize("bomb", ["32k-declaring-1g", "55-bytes-declaring-2**62",
                                  "size-less-64m"])
def test_bomb_before_hello_is_refused_within_max_frame_bytes(daemon: ReplicatorNode,
                                                             bomb: str) -> None:
    payload = {"32k-declaring-1g": lambda: rle_bomb(1 << 30),
               "55-bytes-declaring-2**62": tiny_bomb,
               "size-less-64m": lambda: rle_bomb(64 << 20, declare=False)}[bomb]()
    frame = compressed_hello(payload)
    assert len(frame) < MAX_FRAME_BYTES
    assert daemon.process is not None
    pid = daemon.process.pid
    before = vm_hwm(pid)
    for _ in range(3):
        send_and_wait_for_close(daemon.port, frame)
    assert daemon.running(), daemon.log_text()[-3000:]
    assert daemon.status()["node"] == "b"
    grown = vm_hwm(pid) - before
    assert grown < RSS_HEADROOM, f"peak RSS grew by {grown} bytes (bound {RSS_HEADROOM})"
    log = daemon.log_text()
    assert "replication connection from" in log
    assert "Traceback" not in log and "MemoryError" not in log
