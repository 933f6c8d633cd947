"""The demo's measuring steps, kept apart from its narration."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replicator.config import load_config
from replicator.dovecot.snapshot import StateSnapshot, snapshot
from replicator.promote.command import promote
from replicator.testing.cluster import ReplicatorNode
from replicator.testing.imap import parse_appenduid
from replicator.testing.lagprobe import LagProbe
from replicator.testing.scenario import TwoNodes
from replicator.verify.runner import verify_replica
from replicator.verify.trees import compare_trees


@dataclass
class Failover:
    mailboxes: int = 0
    identical: bool = False
    uid_gap: int = 0
    verify_s: float = 0.0
    promote_s: float = 0.0
    new_uid: int = 0
    old_uidnext: int = 0


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
    failover: Failover


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


def fail_over(nodes: TwoNodes, say: Callable[[str], None]) -> Failover:
    """Kill node a (Dovecot and daemon, SIGKILL), verify b's copy, promote it, start b's
    Dovecot on it and compare what Dovecot reports with what a reported before dying."""
    nodes.quiesce()
    before = snapshot(nodes.dovecot_a.config_path, nodes.users)
    nodes.dovecot_a.kill9()
    nodes.repl_a.kill9()
    say("node a killed (kill -9 of Dovecot and of its replicator)")
    config = load_config(nodes.repl_b.config_path)
    started = time.monotonic()
    report = verify_replica(config.replica_root("a"), sorted(config.roots))
    result = Failover(verify_s=time.monotonic() - started)
    say(f"verify --local on b: {report.files} files against the digest journal: "
        + ("consistent" if report.consistent else f"{len(report.differences)} differences"))
    started = time.monotonic()
    promoted = promote(config, "a")
    result.promote_s, result.uid_gap = time.monotonic() - started, promoted.uid_gap
    result.mailboxes = promoted.mailboxes
    say(f"promote on b: fenced a at epoch {promoted.epoch}, {len(promoted.users)} users, "
        f"{promoted.mailboxes} mailboxes, next UIDs raised by {promoted.uid_gap}")
    nodes.dovecot_b.start()
    after = snapshot(nodes.dovecot_b.config_path, nodes.users)
    result.identical = _same_but_gap(before, after, promoted.uid_gap)
    say("b's Dovecot serves a's users: " + ("same messages, UIDs, flags, UIDVALIDITY "
        f"(UIDNEXT +{promoted.uid_gap})" if result.identical else "DIFFERENT state:"))
    if not result.identical:
        for line in before.differences(after)[:20]:
            say(f"    {line}")
    client = nodes.dovecot_b.imap(nodes.users[0])
    result.old_uidnext = before.users[nodes.users[0]].mailboxes["INBOX"].status.uidnext
    result.new_uid = parse_appenduid(client.append("INBOX", b"Subject: on b\r\n\r\nhi\r\n"))[1][0]
    client.logout()
    say(f"a new APPEND on b got UID {result.new_uid} (a's UIDNEXT was {result.old_uidnext})")
    return result


def _same_but_gap(before: StateSnapshot, after: StateSnapshot, gap: int) -> bool:
    for user, state in before.users.items():
        other = after.users.get(user)
        if other is None or other.subscriptions != state.subscriptions:
            return False
        for name, box in state.mailboxes.items():
            got = other.mailboxes.get(name)
            if got is None or got.flags != box.flags or (
                    got.status.messages, got.status.uidnext, got.status.uidvalidity) != (
                    box.status.messages, box.status.uidnext + gap, box.status.uidvalidity):
                return False
    return set(after.users) == set(before.users)


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
        ("peak RSS of daemon a / b", f"{s.rss_mib.get('a', 0):.1f} MiB / "
                                     f"{s.rss_mib.get('b', 0):.1f} MiB"),
        ("failover: mailboxes promoted on b", f"{s.failover.mailboxes}"),
        ("failover: Dovecot state on b vs a", f"identical (UIDNEXT +{s.failover.uid_gap})"
         if s.failover.identical else "DIFFERENT"),
        ("failover: verify --local / promote", f"{s.failover.verify_s * 1000:.0f} ms / "
                                               f"{s.failover.promote_s * 1000:.0f} ms"),
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
