"""Two mail nodes on loopback, as the demo and the benchmarks run them.

Node a serves IMAP from a real Dovecot whose INDEX and CONTROL roots are replicated; bodies
live in a shared directory (standing in for the replicated filesystem). Node b has its own
Dovecot configuration over the same bodies (started only when it takes over) and a
replicator that keeps a's roots in RAM (`replica_dir` on /dev/shm when available).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.dovecot.instance import DovecotInstance, DovecotLayout, MailFormat
from replicator.testing.cluster import PeerSpec, ReplicatorNode
from replicator.testing.native import sync_plugin_dir
from replicator.testing.netns import HostPair


def ram_dir(prefix: str) -> Path:
    """A fresh directory on tmpfs if the machine has /dev/shm, else under /tmp."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@contextmanager
def scratch_dir(prefix: str, *, ram: bool) -> Iterator[Path]:
    """A fresh directory (on tmpfs with `ram`, else on disk under /var/tmp), removed with
    everything in it on the way out, whatever happened inside."""
    path = ram_dir(prefix) if ram else Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class TwoNodes:
    base: Path
    dovecot_a: DovecotInstance
    dovecot_b: DovecotInstance
    repl_a: ReplicatorNode
    repl_b: ReplicatorNode
    users: tuple[str, ...]
    cleanup: list[Path] = field(default_factory=list)

    def roots_of(self, instance: DovecotInstance) -> dict[str, Path]:
        return {"index": instance.layout.index_root, "control": instance.layout.control_root}

    def mailbox_index_dir(self, user: str, mailbox: str = "INBOX") -> Path:
        layout = self.dovecot_a.layout
        if layout.mail_format == "maildir":
            return layout.index_root / user / f".{mailbox.replace('/', '.')}"
        return layout.index_root / user / "mailboxes" / mailbox

    def replica_path(self, origin_path: Path) -> Path:
        for name, root in self.roots_of(self.dovecot_a).items():
            if origin_path.is_relative_to(root):
                return self.repl_b.replica_of("a", name) / origin_path.relative_to(root)
        raise ValueError(f"{origin_path} is not under a's roots")

    def quiesce(self) -> None:
        """Wait until a's Dovecot has no mail process left (clients logged out and their
        processes done writing), then until b acknowledged every change on a's disk."""
        self.dovecot_a.wait_idle()
        self.repl_a.barrier()

    def stop(self) -> None:
        for node in (self.repl_a, self.repl_b):
            if node.running():
                node.stop()
        for instance in (self.dovecot_a, self.dovecot_b):
            instance.kill9()
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def sync_commit_settings(socket: Path, policy: str = "fail",
                         timeout_ms: int = 2000) -> dict[str, Any]:
    """DovecotInstance options that load the sync-commit plugin built in native/ (built here if
    it is not yet)."""
    return {"mail_plugins": ("replicator_sync",), "mail_plugin_dir": sync_plugin_dir(),
            "plugin_settings": {"replicator_sync_socket": str(socket),
                                "replicator_sync_policy": policy,
                                "replicator_sync_timeout": str(timeout_ms)}}


@contextmanager
def two_nodes(mail_format: MailFormat = "maildir", users: tuple[str, ...] = ("u1", "u2", "u3"),
              *, base: Path | None = None, replication: dict[str, Any] | None = None,
              churn: bool = False, sync_commit: str | None = None,
              sync_timeout_ms: int = 2000, mail_fsync: str = "always",
              start: bool = True, hosts: HostPair | None = None,
              coordination: dict[str, Any] | None = None,
              dovecot_a_config: str = "") -> Iterator[TwoNodes]:
    """Node a (serving IMAP) and node b (holding a's copy). With `sync_commit` ("fail" or
    "degrade"), a's Dovecot loads the sync-commit plugin talking to a's daemon, and a's daemon
    is configured with that `sync_policy`. With `hosts`,
    the two daemons run in their own network namespaces, linked by a veth pair the test can
    cut (Dovecot and the test stay on the host's loopback). With `coordination` ([coordination]
    keys, endpoints included), ownership is on etcd: both Dovecots run, each daemon kicks
    sessions through its own Dovecot's doveadm. `dovecot_a_config`: lines added to a's
    dovecot.conf (a fault a bench injects there)."""
    made = base is None or not base.exists()
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="dovecot-replicator-"))
    replicas = ram_dir("dovecot-replicator-ram-")
    mail = base / "shared-mail"
    layouts = {n: DovecotLayout(mail, base / n / "index", base / n / "control", mail_format)
               for n in ("a", "b")}
    # The operator's statement that every Dovecot on a runs the plugin with this policy: a
    # peer is told so (a promote of a's copy uses a UID gap of 0 only under "fail").
    policy = {"sync_policy": sync_commit} if sync_commit else {}
    repl_a = ReplicatorNode(base / "a" / "replicator", "a", _roots(layouts["a"]),
                            replication={**policy, **(replication or {})})
    # With ownership on etcd the pair is symmetric: either node may own users and serve them.
    symmetric = coordination is not None
    repl_b = ReplicatorNode(base / "b" / "replicator", "b", _roots(layouts["b"]),
                            replication={**(policy if symmetric else {}), **(replication or {})},
                            ram=replicas)
    if symmetric:
        repl_a.ram = ram_dir("dovecot-replicator-ram-")
    repl_a.peers, repl_b.peers = [PeerSpec("b", repl_b.port)], [PeerSpec("a", repl_a.port)]
    if hosts is not None:
        for node, host, peer in ((repl_a, hosts.a, hosts.b), (repl_b, hosts.b, hosts.a)):
            node.host, node.wrap = host.address, host.exec()
            node.peers[0].host = peer.address
    options: dict[str, Any] = {"churn": churn, "mail_fsync": mail_fsync}
    plugin = (sync_commit_settings(repl_a.control_socket, sync_commit, sync_timeout_ms)
              if sync_commit else {})
    dovecot_a = DovecotInstance(base / "a" / "dovecot", "a", layouts["a"], users,
                                extra_config=dovecot_a_config, **options, **plugin)
    plugin_b = (sync_commit_settings(repl_b.control_socket, sync_commit, sync_timeout_ms)
                if sync_commit and symmetric else {})
    dovecot_b = DovecotInstance(base / "b" / "dovecot", "b", layouts["b"], users, **options,
                                **plugin_b)
    for instance in (dovecot_a, dovecot_b):
        instance.write_config()
    if coordination is not None:
        for node, instance in ((repl_a, dovecot_a), (repl_b, dovecot_b)):
            node.coordination = {"doveadm": f"doveadm -c {instance.config_path}",
                                 **coordination}
    nodes = TwoNodes(base, dovecot_a, dovecot_b, repl_a, repl_b, users,
                     [replicas] + ([repl_a.ram] if repl_a.ram else []) + ([base] if made else []))
    try:
        if start:
            repl_b.start()
            repl_a.start()
            dovecot_a.start()
            if coordination is not None:
                dovecot_b.start()
        yield nodes
    finally:
        nodes.stop()


def _roots(layout: DovecotLayout) -> dict[str, Path]:
    return {"index": layout.index_root, "control": layout.control_root}
