"""One real Dovecot process tree (2.3 or 2.4; a "node") for tests, benchmarks and the demo.

Each instance has its own base_dir and instance_name so that several run side by side and
`doveadm -c <conf>` reaches the right one. The master runs in its own session, which is how
stop()/kill9() find every child it forked (they inherit the session id) without trusting names.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from replicator.dovecot.doveadm import run_doveadm
from replicator.dovecot.instance_conf import (
    ConfInputs,
    DovecotLayout,
    MailFormat,
    passwd_file,
    render_config,
)
from replicator.dovecot.procs import (
    holds_socket,
    listening_inode,
    session_pids,
    signal_until_gone,
    wait_gone,
)
from replicator.testing.lifetime import tied_to_us

if TYPE_CHECKING:
    import imapclient

__all__ = ["DovecotInstance", "DovecotLayout", "DovecotStartError", "MailFormat", "stop_all"]

MAIL_UID = 8  # Debian's `mail` system user and group
MAIL_GID = 8
_SUN_PATH_MAX = 107
_LONGEST_SOCKET = "/token-login/imap-urlauth"  # longest socket name Dovecot puts in base_dir
_ERROR_RE = re.compile(r"(Error|Panic|Fatal):|[Cc]orrupt|fscking")


class DovecotStartError(RuntimeError):
    """Dovecot exited or never served an IMAP greeting; carries the tail of its log."""


class _PortTaken(Exception):
    """Dovecot could not bind its IMAP port."""


class DovecotInstance:
    """A Dovecot master plus children, configured only for IMAP on 127.0.0.1."""

    def __init__(self, workdir: Path, name: str, layout: DovecotLayout, users: Sequence[str], *,
                 imap_port: int | None = None, mail_plugins: Sequence[str] = (),
                 mail_plugin_dir: Path | None = None, plugin_settings: Mapping[str, str] = {},
                 extra_config: str = "", mail_fsync: str = "always", churn: bool = False,
                 mail_uid: int = MAIL_UID, mail_gid: int = MAIL_GID) -> None:
        self.workdir = Path(workdir).absolute()
        self.name = name
        self.layout = layout
        self.users = tuple(users)
        self._auto_port = imap_port is None
        self.imap_port = imap_port if imap_port is not None else free_port()
        self.mail_uid, self.mail_gid = mail_uid, mail_gid
        self.config_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self.base_dir = self._pick_base_dir()
        self._passwd_path = self.workdir / "passwd"
        self._conf = ConfInputs(
            instance_name=f"dovecot-{name}-{os.getpid()}-{id(self):x}", base_dir=self.base_dir,
            log_path=self.log_path, passwd_path=self._passwd_path, layout=layout,
            imap_port=self.imap_port, mail_uid=mail_uid, mail_gid=mail_gid, mail_fsync=mail_fsync,
            mail_plugins=tuple(mail_plugins), mail_plugin_dir=mail_plugin_dir,
            plugin_settings=dict(plugin_settings), churn=churn, extra_config=extra_config)
        self._proc: subprocess.Popen[bytes] | None = None

    def _pick_base_dir(self) -> Path:
        """workdir/run unless its sockets would exceed sun_path; then a short dir under /tmp."""
        wanted = self.workdir / "run"
        if len(str(wanted)) + len(_LONGEST_SOCKET) <= _SUN_PATH_MAX:
            return wanted
        return Path(tempfile.mkdtemp(prefix=f"dc-{self.name}-", dir="/tmp"))

    def password(self, user: str) -> str:
        """Deterministic plaintext password, so other processes (bench, demo) can log in too."""
        return f"pw-{user}"

    def write_config(self) -> Path:
        """Writes dovecot.conf and the passwd-file, and prepares directories the mail user needs."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "home"
        for d in (self.layout.mail_root, self.layout.index_root, self.layout.control_root, home):
            self._make_mail_dir(d)
        self._passwd_path.write_text(passwd_file(
            self.users, {u: self.password(u) for u in self.users},
            self.mail_uid, self.mail_gid, home))
        self.config_path.write_text(render_config(self._conf))
        return self.config_path

    def _make_mail_dir(self, path: Path) -> None:
        """Creates path owned by the mail user and lets that user traverse every ancestor."""
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.mail_uid, self.mail_gid)
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH and parent.stat().st_uid != self.mail_uid:
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)

    def start(self, timeout: float = 30.0) -> None:
        """Runs `dovecot -F -c conf` in its own session; returns once IMAP greets on the port.

        A port picked by free_port() can be taken by another process before Dovecot binds it;
        then Dovecot exits and, with an automatic port, we retry on a fresh one.
        """
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if not self._auto_port or attempt == 2:
                    raise DovecotStartError(f"{self.name}: port {self.imap_port} is taken\n"
                                            f"{self._tail()}") from None
                self.imap_port = free_port()
                self._conf = dataclasses.replace(self._conf, imap_port=self.imap_port)

    def _start_once(self, timeout: float) -> None:
        if self._proc is not None and self._proc.poll() is None:
            raise DovecotStartError(f"{self.name}: already running (pid {self._proc.pid})")
        self.write_config()
        out = (self.workdir / "dovecot.stdout").open("ab")
        with out:
            self._proc = subprocess.Popen(
                tied_to_us(["dovecot", "-F", "-c", str(self.config_path)]),
                stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_for_greeting(time.monotonic() + timeout)

    def _wait_for_greeting(self, deadline: float) -> None:
        """Waits until *our* master holds the listener and it greets (another server on the
        same port would greet too, so ownership is checked through /proc)."""
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                if "Address already in use" in self._tail():
                    raise _PortTaken
                raise DovecotStartError(f"{self.name}: dovecot exited ({self._proc.returncode})"
                                        f"\n{self._tail()}")
            inode = listening_inode(self.imap_port)
            if inode and holds_socket(self._proc.pid, inode) and _greets(self.imap_port):
                return
            time.sleep(0.02)
        self.kill9()
        raise DovecotStartError(f"{self.name}: no IMAP greeting on port {self.imap_port}\n"
                                f"{self._tail()}")

    def _tail(self) -> str:
        texts = [p.read_text(errors="replace") for p in
                 (self.workdir / "dovecot.stdout", self.log_path) if p.exists()]
        return "\n".join("\n".join(t.splitlines()[-15:]) for t in texts)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> list[int]:
        """Live pids of the master and every child (zombies excluded)."""
        return session_pids(self._proc.pid) if self._proc is not None else []

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Waits until no mail process (imap, lmtp, doveadm) of this instance is left: a
        client's LOGOUT is answered before its process has closed its mailboxes and written
        the list index, and doveadm run in that moment can list a user's mailboxes as none."""
        deadline = time.monotonic() + timeout
        while any(_comm(pid) in MAIL_PROCESSES for pid in self.pids()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: mail processes still running after {timeout} s")
            time.sleep(0.005)

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop; waits until every process of the instance is gone.

        Takes about 1 s: Dovecot's master sleeps a hard-coded second after SIGQUITting its
        children (services_monitor_wait_and_kill). stop_all() overlaps that for many instances.
        """
        self.request_stop()
        self.wait_stopped(timeout)

    def request_stop(self) -> None:
        """SIGTERM to the master, which shuts its children down."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 20.0) -> None:
        """Waits for the master and every child; SIGKILLs and raises if they outlive timeout."""
        if self._proc is None:
            return
        deadline = time.monotonic() + timeout
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise TimeoutError(f"{self.name}: dovecot did not stop in {timeout} s") from None
        survivors = wait_gone(self._proc.pid, deadline)
        if survivors:
            self.kill9()
            raise TimeoutError(f"{self.name}: children {survivors} outlived the master")

    def kill9(self) -> None:
        """SIGKILL to the master and every child, as a crash would; waits until all are gone."""
        if self._proc is None:
            return
        signal_until_gone(self._proc.pid, signal.SIGKILL, time.monotonic() + 20.0)
        self._proc.wait(10.0)

    def doveadm(self, *args: str) -> str:
        """`doveadm -c <conf> args...`; stdout, or DoveadmError carrying doveadm's stderr."""
        return run_doveadm(self.config_path, *args)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def error_lines(self) -> list[str]:
        """Error/Panic/Fatal lines and index corruption reports from this instance's log."""
        return [ln for ln in self.log_text().splitlines() if _ERROR_RE.search(ln)]

    def imap(self, user: str, timeout: float = 30.0) -> imapclient.IMAPClient:
        """A logged-in IMAP client on 127.0.0.1:imap_port (the caller logs out)."""
        import imapclient

        client = imapclient.IMAPClient("127.0.0.1", port=self.imap_port, ssl=False,
                                       timeout=timeout)
        client.login(user, self.password(user))
        return client

    def __repr__(self) -> str:
        return f"DovecotInstance({self.name!r}, {self.layout.mail_format}, port={self.imap_port})"


def stop_all(instances: Sequence[DovecotInstance], timeout: float = 20.0) -> None:
    """Stops several instances at once (their 1 s shutdown pauses overlap)."""
    for inst in instances:
        inst.request_stop()
    errors = []
    for inst in instances:
        try:
            inst.wait_stopped(timeout)
        except TimeoutError as exc:
            errors.append(str(exc))
    if errors:
        raise TimeoutError("; ".join(errors))


MAIL_PROCESSES = frozenset({"imap", "lmtp", "pop3", "doveadm", "dovecot-lda"})


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port the kernel may pick as an outgoing connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range, not handed out before.

    Why not the kernel's own pick (bind to port 0): that port lies in the ephemeral range,
    and until the daemon that is given it binds it, any outgoing connection may take it as
    its source port. A peer that keeps dialling the not yet listening port can even connect
    to itself on it (TCP simultaneous open). CI saw the daemon then fail to bind. A port
    below that range is never a source port, so only another listener can take it, which
    the bind test here sees, and this process never hands the same port out twice.
    """
    top = max(_ephemeral_low(), 2049)
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(1024 if top <= 10000 else 10000, top)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port below {top} on 127.0.0.1 after 1000 tries")


def _greets(port: int) -> bool:
    """True when an IMAP server on 127.0.0.1:port answers with an untagged OK greeting."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
            return s.recv(256).startswith(b"* OK")
    except OSError:
        return False
