"""A real etcd cluster (Debian's etcd-server 3.4) for tests, the demo and benchmarks.

Ownership lives in etcd, so what the replicator does when a member dies or quorum goes can
only be shown against real members: each is its own `etcd` process (`kill9()` is a real
SIGKILL), started through `tied_to_us` in a session of its own so an interrupted run leaves
nothing behind, and logging to `<workdir>/<name>.log`.

Restarting a killed member needs no special flag: with a WAL in its data dir etcd 3.4 ignores
`--initial-cluster*` and rejoins as the member it was, so `restart()` reuses the first argv.

Network namespaces: `hosts[i]` is the address member i listens on and advertises, `wrap[i]`
the prefix that runs it inside its namespace (`Host.exec()` of `testing.netns`), e.g.
`create(dir, hosts=[pair.a.address, pair.b.address, pair.b.address],
wrap=[pair.a.exec(), pair.b.exec(), pair.b.exec()])` puts one member across a link that
`pair.cut()` partitions. Every member must reach every other's address, and the test process
usually reaches none of them, so health probes of a wrapped member run inside its namespace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from etcd3gw import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from replicator.dovecot.instance import free_port
from replicator.testing.lifetime import tied_to_us

MISSING = "etcd-server is not installed (make bootstrap installs it)"
# Elections in half a second instead of etcd's one: a test that kills the leader waits less.
# etcd wants election-timeout >= 5 x heartbeat-interval.
FAST_ELECTIONS = ("--heartbeat-interval", "50", "--election-timeout", "500")
HEALTH_KEY = b"__etcd_harness/health"
# Run inside a member's namespace: exit 0 when it sees a leader and a put through it commits.
_PROBE = """import sys
from etcd3gw import Etcd3Client
c = Etcd3Client(sys.argv[1], int(sys.argv[2]), timeout=float(sys.argv[3]), api_path="/v3/")
sys.exit(0 if int(c.status().get("leader", 0)) and c.put(sys.argv[4], sys.argv[5]) else 1)
"""


def have_etcd() -> str | None:
    """None when the `etcd` binary is on PATH, else why a test needing it is skipped."""
    return None if shutil.which("etcd") else MISSING


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    initial_cluster: str = ""  # name=peer_url,... of every member
    token: str = "etcd-cluster"  # tells this cluster's members from another's on reused ports
    flags: Sequence[str] = FAST_ELECTIONS
    wrap: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", "ns"]
    process: subprocess.Popen[bytes] | None = None  # None before start() and after kill9()

    @property
    def host(self) -> str:
        return urlsplit(self.client_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.client_url).port or 2379

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def argv(self) -> list[str]:
        return ["etcd", "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls",
                self.client_url, "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--quota-backend-bytes", str(256 << 20),  # an alarm, not an allocation
                "--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr",
                *self.flags]

    def start(self) -> None:
        """Spawn the process and return: one member alone never has a leader, so waiting for
        health is the cluster's business (`EtcdCluster.wait_healthy`)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                tied_to_us([*self.wrap, *self.argv()]), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exited_by_itself(self) -> bool:
        """Started and not killed by us, yet gone (a bad flag, a port taken)."""
        return self.process is not None and self.process.poll() is not None

    def kill9(self) -> None:
        """SIGKILL its process group and reap it (`ip netns exec` execs etcd in place, so a
        wrapped member is one process too); the data dir stays for `restart()`."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Start again on the same data dir; the member rejoins with its raft log."""
        self.kill9()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, timeout: float = 5.0) -> Etcd3Client:
        """An etcd3gw client of this member's JSON gateway (the api path is fixed: discovery
        would cost a request to /version first)."""
        return Etcd3Client(self.host, self.port, timeout=timeout, api_path="/v3/")

    def healthy(self, timeout: float = 1.0) -> bool:
        """This member knows a leader and a put through it commits (so it is in a quorum)."""
        if self.wrap:
            probe = [*self.wrap, sys.executable, "-c", _PROBE, self.host, str(self.port),
                     str(timeout), HEALTH_KEY.decode(), self.name]
            try:
                return subprocess.run(probe, capture_output=True, timeout=timeout * 3 + 5
                                      ).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        try:
            client = self.client(timeout)
            return bool(int(client.status().get("leader", 0))) and \
                client.put(HEALTH_KEY, self.name)
        except Etcd3Exception:
            return False


@dataclass
class EtcdCluster:
    members: list[EtcdMember]

    @classmethod
    def create(cls, workdir: Path, size: int = 3, hosts: list[str] | None = None,
               wrap: list[list[str]] | None = None,
               flags: Sequence[str] = FAST_ELECTIONS) -> EtcdCluster:
        """`size` members under `workdir` on `hosts` (default all 127.0.0.1) with ports that
        were free on loopback (a fresh namespace has every port free); `flags` replaces the
        fast election timing (() keeps etcd's defaults, as a benchmark wants)."""
        hosts = hosts or ["127.0.0.1"] * size
        wrap = wrap or [[] for _ in range(size)]
        if len(hosts) != size or len(wrap) != size:
            raise ValueError("hosts and wrap need one entry per member")
        token = f"dr-{os.getpid()}-{secrets.token_hex(4)}"
        members = [EtcdMember(f"etcd{i}", f"http://{hosts[i]}:{free_port()}",
                              f"http://{hosts[i]}:{free_port()}", workdir / f"etcd{i}.etcd",
                              token=token, flags=tuple(flags), wrap=list(wrap[i]))
                   for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for member in members:
            member.initial_cluster = initial
        return cls(members)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        """Start every member, then wait for a leader and a put through each of them."""
        for member in self.members:
            member.start()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until every member that runs is in a quorum that commits puts."""
        deadline = time.monotonic() + timeout
        waiting = [m for m in self.members if m.process is not None]
        while waiting:
            for member in waiting:
                if member.exited_by_itself():
                    raise RuntimeError(f"etcd member {member.name} exited:\n"
                                       f"{member.log_text()[-3000:]}")
            waiting = [m for m in waiting if not m.healthy()]
            if waiting and time.monotonic() > deadline:
                logs = "\n".join(f"--- {m.name}\n{m.log_text()[-1500:]}" for m in waiting)
                raise TimeoutError(f"etcd not healthy after {timeout} s:\n{logs}")
            if waiting:
                time.sleep(0.05)  # poll interval, not a synchronisation

    def client(self, index: int, timeout: float = 5.0) -> Etcd3Client:
        return self.members[index].client(timeout)

    def kill9(self, index: int) -> None:
        self.members[index].kill9()

    def restart(self, index: int) -> None:
        """Start member `index` again (returns at once: `wait_healthy` waits for it)."""
        self.members[index].restart()

    def stop(self) -> None:
        """SIGKILL every member; the data dirs and logs stay for a post-mortem."""
        for member in self.members:
            member.kill9()


@contextlib.contextmanager
def etcd_cluster(workdir: Path, size: int = 3, *, timeout: float = 30.0,
                 **options: Any) -> Iterator[EtcdCluster]:
    """A started, healthy cluster for the block (options go to `EtcdCluster.create`); every
    member is killed on the way out, whatever happened inside."""
    cluster = EtcdCluster.create(workdir, size, **options)
    try:
        cluster.start(timeout)
        yield cluster
    finally:
        cluster.stop()
