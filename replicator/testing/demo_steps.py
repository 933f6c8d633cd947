"""The demo's measuring steps, kept apart from its narration."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from replicator.testing.cluster import ReplicatorNode
from replicator.testing.lagprobe import LagProbe
from replicator.testing.scenario import TwoNodes
from replicator.verify.trees import compare_trees


@dataclass
class Summary:
    files: int
    differences: int
    body_bytes: int
    traffic: dict[str, Any]
    bytes_sent: int
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    rss_mib: dict[str, float]


def verify_roots(nodes: TwoNodes) -> tuple[int, int]:
    files = differences = 0
    for name, root in nodes.roots_of(nodes.dovecot_a).items():
        report = compare_trees(root, nodes.repl_b.replica_of("a", name))
        files += report.files
        differences += len(report.differences)
        for d in report.differences[:5]:
            print(f"    {name}/{d.path}: {d.field}: expected {d.expected}, found {d.found}")
    return files, differences


def measure_lag(nodes: TwoNodes, samples: int) -> list[float]:
    """Toggle \\Flagged on one message `samples` times, timing each change's replication."""
    client = nodes.dovecot_a.imap(nodes.users[0])
    client.append("INBOX", b"Subject: lag probe\r\n\r\nThe probe flags this message.\r\n")
    client.select_folder("INBOX")
    uid = max(client.search("ALL"))
    nodes.repl_a.barrier()
    origin = nodes.mailbox_index_dir(nodes.users[0]) / "dovecot.index.log"
    probe = LagProbe(origin, nodes.replica_path(origin))
    lags: list[float] = []
    try:
        for i in range(samples):
            lag = probe.measure(functools.partial(
                client.add_flags if i % 2 == 0 else client.remove_flags, [uid], ["\\Flagged"],
                silent=True))
            if lag is not None:
                lags.append(lag)
    finally:
        probe.close()
        client.logout()
    return lags


def peak_rss_mib(node: ReplicatorNode) -> float:
    """Peak resident memory (VmHWM) of a running daemon."""
    assert node.process is not None
    with open(f"/proc/{node.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def print_summary(s: Summary, seconds: float) -> None:
    traffic = s.traffic
    ratio = traffic["ratio"]
    rows = [
        ("files replicated (index + control roots)", f"{s.files}"),
        ("differences after verify", f"{s.differences}"),
        ("message bodies written by IMAP clients", _size(s.body_bytes)),
        ("bytes a whole-file copier would send", _size(traffic["whole_file_bytes"])),
        ("delta bytes in batches", _size(traffic["op_bytes"])),
        ("bytes sent on the link (with framing)", _size(s.bytes_sent)),
        ("wire ratio (link bytes / whole-file bytes)",
         f"{s.bytes_sent / traffic['whole_file_bytes']:.3f}" if traffic["whole_file_bytes"]
         else "-"),
        ("delta ratio (batch data / whole-file bytes)", f"{ratio:.3f}" if ratio else "-"),
        ("lag p50 / p99 (flag STORE -> replica identical)",
         f"{s.lag_p50_ms:.3f} ms / {s.lag_p99_ms:.3f} ms" if s.lag_p50_ms else "-"),
        ("peak RSS of daemon a / b", f"{s.rss_mib['a']:.1f} MiB / {s.rss_mib['b']:.1f} MiB"),
        ("demo wall time", f"{seconds:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * (width + 24))
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("=" * (width + 24))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"
