"""APPEND latency as an IMAP client sees it: without the sync-commit plugin, with it (one peer
over TCP loopback), and with two peers in network namespaces where one link drops 2 % of its
packets (sync_quorum = 1: the first ack suffices, so the lossy link should not show)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from replicator.dovecot.instance import DovecotInstance, DovecotLayout
from replicator.testing.cluster import PeerSpec, ReplicatorNode
from replicator.testing.netns import Star
from replicator.testing.scenario import scratch_dir, sync_commit_settings, two_nodes

MESSAGE = b"From: bench@example.org\r\nSubject: append latency\r\n\r\nbody\r\n"


def _append_latencies(instance: DovecotInstance, samples: int) -> list[float]:
    client = instance.imap("u1")
    out = []
    for _ in range(samples + 50):
        started = time.perf_counter()
        client.append("INBOX", MESSAGE)
        out.append(time.perf_counter() - started)
    client.logout()
    return out[50:]  # the first appends create files and connections


def two_node_append(samples: int, mode: str, sync: str | None) -> dict[str, Any]:
    """`mode` disk: roots on disk, fsync always; ram: tmpfs, no fsync."""
    with scratch_dir("sc-", ram=mode == "ram") as base, \
            two_nodes("mdbox", ("u1",), base=base / "n", sync_commit=sync,
                      mail_fsync="always" if mode == "disk" else "never") as nodes:
        latencies = _append_latencies(nodes.dovecot_a, samples)
        return {"mode": mode, "plugin": sync is not None, "links": "1 peer, loopback",
                "samples": latencies, "phases": nodes.repl_a.status()["sync_commit"]}


def lossy_peer_append(samples: int, loss_percent: int) -> dict[str, Any]:
    """a with peers b and c in network namespaces; the a-b link drops `loss_percent` %."""
    with scratch_dir("sc-loss-", ram=True) as base:
        return _lossy_peer_append(base, samples, loss_percent)


def _lossy_peer_append(base: Path, samples: int, loss_percent: int) -> dict[str, Any]:
    star = Star.create(2)
    nodes: list[ReplicatorNode] = []
    try:
        roots = {n: _roots(base / n) for n in ("a", "b", "c")}
        a = ReplicatorNode(base / "a" / "r", "a", roots["a"], host=star.center[0].address,
                           wrap=star.center[0].exec())
        a.host = "0.0.0.0"
        peers = []
        for index, name in enumerate(("b", "c")):
            leaf = star.leaves[index]
            node = ReplicatorNode(base / name / "r", name, roots[name], host=leaf.address,
                                  wrap=leaf.exec())
            node.peers = [PeerSpec("a", a.port, host=star.center[index].address)]
            peers.append(PeerSpec(name, node.port, host=leaf.address))
            nodes.append(node)
        a.peers = peers
        nodes.append(a)
        for node in nodes:
            node.start()
        if loss_percent:
            star.pairs[0].lossy(loss_percent, star.pairs[0].b)
            star.pairs[0].lossy(loss_percent, star.pairs[0].a)
        layout = DovecotLayout(base / "mail", roots["a"]["index"], roots["a"]["control"],
                               "mdbox")
        dovecot = DovecotInstance(base / "a" / "dovecot", "a", layout, ("u1",),
                                  mail_fsync="never", **sync_commit_settings(a.control_socket))
        dovecot.start()
        try:
            latencies = _append_latencies(dovecot, samples)
        finally:
            dovecot.kill9()
        return {"mode": "ram", "plugin": True,
                "links": f"2 peers in netns, {loss_percent} % loss on one",
                "samples": latencies}
    finally:
        for node in nodes:
            node.kill9()
        star.close()


def _roots(base: Path) -> dict[str, Path]:
    made = {name: base / name for name in ("index", "control")}
    for path in made.values():
        path.mkdir(parents=True, exist_ok=True)
    return made


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000
