"""End-to-end measurements on two real Dovecot nodes (see replicator.testing.scenario)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from replicator.dovecot.instance import MailFormat
from replicator.testing.demo_steps import measure_lag, peak_rss_mib
from replicator.testing.scenario import scratch_dir, two_nodes
from replicator.testing.workload import Workload

MODES = {
    # disk: Dovecot's roots on the local disk, fdatasync on every transaction (Dovecot default)
    "disk": "always",
    # RAM: Dovecot's roots on tmpfs, no fsync: durability comes from the peer's copy
    "ram": "never",
}


def store_lag(mail_format: MailFormat, mode: str, samples: int) -> dict[str, Any]:
    """Flag STORE: origin file changed -> replica file identical."""
    with scratch_dir(f"bench-{mode}-", ram=mode == "ram") as base, \
            two_nodes(mail_format, base=base / "nodes", mail_fsync=MODES[mode]) as nodes:
        lags = measure_lag(nodes, samples)
        ack = nodes.repl_a.status()["peers"]["b"]["ack_lag"]
    return {"format": mail_format, "mode": mode, "samples": lags, "ack_lag": ack}


def workload_traffic(mail_format: MailFormat, ops: int, churn: bool) -> dict[str, Any]:
    """Bytes on the wire against a whole-file copier for the seeded IMAP workload."""
    with two_nodes(mail_format, churn=churn) as nodes:
        started = time.monotonic()
        report = Workload(nodes.dovecot_a, nodes.users, ops=ops, seed=2026).run()
        nodes.quiesce()
        elapsed = time.monotonic() - started
        status = nodes.repl_a.status()
        return {"format": mail_format, "churn": churn, "ops": sum(report.counts.values()),
                "seconds": elapsed, "body_bytes": report.appended_bytes,
                "traffic": status["traffic"], "link_bytes": status["peers"]["b"]["bytes_sent"],
                "batches": status["counters"]["batches"],
                "rss_mib": {"a": peak_rss_mib(nodes.repl_a), "b": peak_rss_mib(nodes.repl_b)}}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "max_ms": ordered[-1] * 1000}
