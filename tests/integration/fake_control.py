"""A scripted, misbehaving stand-in for the daemon's control socket (protocol v1).

Only the sync-commit plugin's robustness tests use it: they need a daemon that answers OK, FAIL,
garbage, the wrong id, half a line, nothing, or too late, on demand. Each FLUSH consumes the next
scripted action; when the script runs out, `default` applies. Every request is recorded with the
number of the connection it came on, so tests can see reconnects.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VERSION_LINE = b"VERSION\treplicator-control\t1\t0\n"
ACTIONS = ("ok", "fail", "garbage", "wrong_id", "silent", "close_mid_line", "byte_by_byte",
           "late", "flood")


@dataclass(frozen=True)
class Flush:
    """One FLUSH request as the plugin sent it (fields unescaped)."""

    conn: int
    req_id: int
    timeout_ms: int
    policy: str
    user: str
    dirs: tuple[str, ...]


def tab_unescape(field: str) -> str:
    """Reverses Dovecot's str_tabescape (\\001 followed by 1, t, r or n)."""
    out, it = [], iter(field)
    for ch in it:
        out.append({"1": "\001", "t": "\t", "r": "\r", "n": "\n"}[next(it)] if ch == "\001"
                   else ch)
    return "".join(out)


class FakeControl:
    """Listens on a unix socket in a background thread; one thread per client connection."""

    def __init__(self, path: Path, *, default: str = "ok", version_line: bytes = VERSION_LINE,
                 fail_reason: str = "no peer connected", mode: int = 0o666) -> None:
        self.path, self.default, self.version_line = path, default, version_line
        self.fail_reason = fail_reason
        self.flushes: list[Flush] = []
        self.versions: list[str] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stale: tuple[socket.socket, int] | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, mode)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def script(self, *actions: str) -> None:
        """Queues actions for the next FLUSH requests, in order."""
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown actions {unknown}")
        with self._lock:
            self._script.extend(actions)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Polls predicate until it holds or the deadline passes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Stops listening, drops every connection and removes the socket file."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._lock:
            for conn in self._conns:  # shutdown() first: close() alone leaves a blocked recv
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self._thread.join(5.0)
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
                number = len(self._conns)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        """Reads lines until EOF: VERSION first, then FLUSH requests."""
        buf = b""
        with conn, contextlib.suppress(OSError):  # OSError: the client or close() hung up
            while data := conn.recv(65536):
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not self._handle(conn, number, line.decode()):
                        return

    def _handle(self, conn: socket.socket, number: int, line: str) -> bool:
        """Answers one line; False when the connection is to be dropped."""
        fields = line.split("\t")
        if fields[0] == "VERSION":
            self.versions.append(line)
            conn.sendall(self.version_line)
            return True
        if fields[0] != "FLUSH":
            return False
        req = Flush(number, int(fields[1]), int(fields[2]), fields[3], tab_unescape(fields[4]),
                    tuple(tab_unescape(f) for f in fields[5:]))
        with self._lock:
            action = self._script.popleft() if self._script else self.default
            stale, self._stale = self._stale, None
            self.flushes.append(req)
        if stale is not None:
            _send_quietly(stale[0], f"OK\t{stale[1]}\t1\n".encode())
        return self._act(conn, req.req_id, action)

    def _act(self, conn: socket.socket, req_id: int, action: str) -> bool:
        replies = {
            "ok": f"OK\t{req_id}\t1\n",
            "fail": f"FAIL\t{req_id}\t{self.fail_reason}\n",
            "garbage": "HELLO? \x01\x02 what\n",
            "wrong_id": f"OK\t{req_id + 1000}\t1\n",
            "close_mid_line": f"OK\t{req_id}",
            "flood": "x" * 70000,  # longer than the protocol's 64 KiB line limit, no LF
        }
        if action in replies:
            conn.sendall(replies[action].encode())
            return action != "close_mid_line"
        if action == "byte_by_byte":
            for byte in f"OK\t{req_id}\t2\n".encode():
                conn.sendall(bytes([byte]))
        elif action == "late":
            # answered (OK) only when the next request arrives, on whichever connection
            with self._lock:
                self._stale = (conn, req_id)
        return True  # "silent": keep the connection, never answer


def dead_socket(path: Path) -> None:
    """Leaves a socket file nobody listens on, as a crashed daemon does (ECONNREFUSED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    os.chmod(path, 0o666)


def _send_quietly(conn: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(data)
