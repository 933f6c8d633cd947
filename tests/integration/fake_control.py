"""A scripted, misbehaving stand-in for the daemon's control socket (protocol 1.1).

Only the sync-commit plugin's robustness tests use it: they need a daemon that answers OK, FAIL,
REFUSED, garbage, the wrong id, half a line, nothing, or too late, on demand. Each FLUSH consumes
the next scripted action; when the script runs out, `default` applies. OWNER requests (the
plugin's question when a user logs in) have a script and a default of their own (`owner`: "ok",
"refused" with `owner_reason`, "fail" (the daemon's own error), "unknown" as a 1.0 daemon
answers a request it does not know, or any FLUSH action). Every request is recorded with the
number of the connection it came on, so tests can see reconnects; `pipelined` lists the
requests that arrived together with a VERSION line.
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

VERSION_LINE = b"VERSION\treplicator-control\t1\t1\n"
VERSION_1_0 = b"VERSION\treplicator-control\t1\t0\n"
ACTIONS = ("ok", "fail", "refused", "garbage", "wrong_id", "silent", "close_mid_line",
           "byte_by_byte", "late", "flood", "unknown")


@dataclass(frozen=True)
class Flush:
    """One FLUSH request as the plugin sent it (fields unescaped)."""

    conn: int
    req_id: int
    timeout_ms: int
    policy: str
    user: str
    dirs: tuple[str, ...]


@dataclass(frozen=True)
class Owner:
    """One OWNER request as the plugin sent it."""

    conn: int
    req_id: int
    user: str


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
                 fail_reason: str = "no peer connected",
                 refuse_reason: str = "u1 is served by b (token 7), not by a",
                 owner: str = "ok", owner_reason: str = "u1 is served by b (token 7), not by a",
                 mode: int = 0o666) -> None:
        self.path, self.default, self.version_line = path, default, version_line
        self.fail_reason, self.refuse_reason = fail_reason, refuse_reason
        self.owner_default, self.owner_reason = owner, owner_reason
        self.flushes: list[Flush] = []
        self.owners: list[Owner] = []
        self.versions: list[str] = []
        self.pipelined: list[str] = []
        self._script: deque[str] = deque()
        self._owner_script: deque[str] = deque()
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
        with self._lock:
            self._script.extend(_checked(actions))

    def script_owner(self, *actions: str) -> None:
        """Queues actions for the next OWNER requests, in order."""
        with self._lock:
            self._owner_script.extend(_checked(actions))

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
                    if line.startswith(b"VERSION\t") and b"\n" in buf:
                        self.pipelined.append(buf.split(b"\t", 1)[0].decode())
                    if not self._handle(conn, number, line.decode()):
                        return

    def _handle(self, conn: socket.socket, number: int, line: str) -> bool:
        """Answers one line; False when the connection is to be dropped."""
        fields = line.split("\t")
        if fields[0] == "VERSION":
            self.versions.append(line)
            conn.sendall(self.version_line)
            return True
        if fields[0] == "OWNER":
            owner = Owner(number, int(fields[1]), tab_unescape(fields[2]))
            with self._lock:
                action = self._owner_script.popleft() if self._owner_script else \
                    self.owner_default
                self.owners.append(owner)
            return self._act(conn, owner.req_id, action, self.owner_reason, self.owner_reason)
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
        return self._act(conn, req.req_id, action, self.fail_reason)

    def _act(self, conn: socket.socket, req_id: int, action: str, reason: str,
             refuse_reason: str | None = None) -> bool:
        replies = {
            "ok": f"OK\t{req_id}\t1\n",
            "fail": f"FAIL\t{req_id}\t{reason}\n",
            "refused": f"REFUSED\t{req_id}\t{refuse_reason or self.refuse_reason}\n",
            # what a 1.0 daemon answers to a request it does not know (OWNER)
            "unknown": f"FAIL\t{req_id}\tmalformed request: unknown control request 'OWNER'\n",
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


def _checked(actions: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise ValueError(f"unknown actions {unknown}")
    return actions


def dead_socket(path: Path) -> None:
    """Leaves a socket file nobody listens on, as a crashed daemon does (ECONNREFUSED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    os.chmod(path, 0o666)


def _send_quietly(conn: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(data)
