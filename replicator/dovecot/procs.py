"""Finds and signals the processes of one Dovecot instance through /proc.

The instance's master is started with setsid(), so its pid is the session id of every process it
forks; Dovecot never calls setsid() in its children. Matching on the session (rather than on a
process name) cannot touch another instance or anything else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def _stat_fields(pid_dir: Path) -> tuple[str, int] | None:
    """(state, session id) from /proc/<pid>/stat, or None when the process vanished."""
    try:
        raw = (pid_dir / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # comm may contain spaces and parentheses
    return fields[0], int(fields[3])


def session_pids(sid: int) -> list[int]:
    """Pids in session `sid` that are not zombies (a zombie has released everything it held)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        info = _stat_fields(entry)
        if info is not None and info[1] == sid and info[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_gone(sid: int, deadline: float) -> list[int]:
    """Polls until the session has no live process; returns the survivors at the deadline."""
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pids


def signal_until_gone(sid: int, signum: int, deadline: float) -> None:
    """Sends signum to every process of the session until none is left or the deadline passes.

    Re-scans after each round because a master that is still alive may fork while we signal.
    """
    while True:
        pids = session_pids(sid)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes of session {sid} still alive: {pids}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        time.sleep(0.01)


def listening_inode(port: int, host_hex: str = "0100007F") -> str | None:
    """Socket inode of the TCP listener on 127.0.0.1:port, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == f"{host_hex}:{port:04X}" and f[3] == "0A":
            return f[9]
    return None


def holds_socket(pid: int, inode: str) -> bool:
    """True when process `pid` has socket `inode` open (a listener it bound)."""
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
    return False
