"""Replication lag as an operator would define it: from the moment Dovecot changes a file on
the origin to the moment the replica's copy is byte-identical. When Dovecot writes the file
more than once for one command (maildir STORE appends two transactions ~2 ms apart: the flag
change, then the sync after renaming the message file), the lag counts from the last write.

Both moments come from inotify, read by a thread that timestamps each event as it arrives (a few
tens of µs after the kernel queues it), so the probe neither polls nor sleeps. Used by the
benchmarks and the demo, never to assert anything about speed in tests.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
_libc = ctypes.CDLL(None, use_errno=True)


class LagProbe:
    """Measures one action at a time: `measure(action)` returns seconds of lag, or None."""

    def __init__(self, origin_file: Path, replica_file: Path) -> None:
        self.origin_file, self.replica_file = origin_file, replica_file
        self._fd = _libc.inotify_init1(IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._origin_wd = self._watch(origin_file, IN_MODIFY)
        self._watch(replica_file.parent, IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)
        self._lock = threading.Lock()
        self._changed: int | None = None
        self._done = threading.Event()
        self._done_at = 0
        self._armed = False
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read, name="lagprobe", daemon=True)
        self._thread.start()

    def _watch(self, path: Path, mask: int) -> int:
        wd: int = _libc.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        return wd

    def measure(self, action: Callable[[], None], timeout: float = 10.0) -> float | None:
        with self._lock:
            self._changed, self._armed = None, True
            self._done.clear()
        action()
        return self._lag(self._done.wait(timeout))

    def _lag(self, finished: bool) -> float | None:
        with self._lock:
            self._armed = False
            if not finished or self._changed is None:
                return None
            return (self._done_at - self._changed) / 1e9

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            data = os.read(self._fd, 65536)
            now = time.perf_counter_ns()
            for wd in _wds(data):
                self._on_event(wd, now)

    def _on_event(self, wd: int, now: int) -> None:
        with self._lock:
            if not self._armed or self._done.is_set():
                return
            if wd == self._origin_wd:
                self._changed = now  # the latest change: Dovecot may write twice per command
                return
            if self._changed is not None and _same(self.origin_file, self.replica_file):
                self._done_at = now
                self._done.set()

    def close(self) -> None:
        """Stop the reader thread first: closing a descriptor another thread still reads would
        let it read from whatever reuses the number next (seen: a doveadm pipe's output)."""
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)


def _wds(data: bytes) -> list[int]:
    wds, pos = [], 0
    while pos + _EVENT.size <= len(data):
        wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
        wds.append(wd)
        pos += _EVENT.size + length
    return wds


def _same(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except FileNotFoundError:
        return False


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]
