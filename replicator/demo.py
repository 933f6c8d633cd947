"""`make demo`: two real Dovecot nodes on loopback, a replicator beside each, an IMAP workload
on node a, then proof that node b holds a's index and control files byte for byte, and the
figures that matter (lag, bytes on the wire against a whole-file copier, memory). Node a is
then killed and b's copy promoted by hand. With etcd installed, a second part shows the same
failover done by the nodes themselves: ownership on etcd, a's lease runs out, b takes over.

Everything lives in temporary directories (node b's copy on tmpfs) removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from replicator.dovecot.version import installed
from replicator.testing.demo_steps import (
    Summary,
    automatic_failover,
    fail_over,
    measure_lag,
    peak_rss_mib,
    print_summary,
    verify_roots,
)
from replicator.testing.etcd import have_etcd
from replicator.testing.scenario import TwoNodes, two_nodes
from replicator.testing.workload import Workload


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run(nodes: TwoNodes, ops: int, lag_samples: int) -> Summary:
    say(f"node a: Dovecot {installed()} on 127.0.0.1:{nodes.dovecot_a.imap_port} (maildir, "
        f"bodies in {nodes.dovecot_a.layout.mail_root})")
    say(f"replicators: a on :{nodes.repl_a.port}, b on :{nodes.repl_b.port}; b keeps a's "
        f"roots in {nodes.repl_b.replica_dir / 'a'}")
    started = time.monotonic()
    report = Workload(nodes.dovecot_a, nodes.users, ops=ops, seed=2026).run()
    say(f"workload: {sum(report.counts.values())} IMAP operations over {len(nodes.users)} "
        f"users in {time.monotonic() - started:.1f} s: " +
        ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())))
    nodes.quiesce()
    say("barrier: every change on a's disk is acknowledged by b")
    files, differences = verify_roots(nodes)
    say(f"verify: {files} files compared byte for byte: "
        + ("identical" if not differences else f"{differences} DIFFERENCES"))
    lags = measure_lag(nodes, lag_samples)
    say(f"lag: {len(lags)} single-flag STOREs, origin file changed -> replica identical")
    status = nodes.repl_a.status()
    rss = {name: peak_rss_mib(node) for name, node in (("a", nodes.repl_a), ("b", nodes.repl_b))}
    failover = fail_over(nodes, say)
    return Summary(
        files=files, differences=differences, body_bytes=report.appended_bytes,
        traffic=status["traffic"], bytes_sent=status["peers"]["b"]["bytes_sent"],
        lag_p50_ms=statistics.median(lags) * 1000 if lags else None,
        lag_p99_ms=sorted(lags)[int(len(lags) * 0.99)] * 1000 if lags else None,
        rss_mib=rss, failover=failover)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicator.demo", description=__doc__)
    parser.add_argument("--ops", type=int, default=600, help="IMAP operations (default 600)")
    parser.add_argument("--lag-samples", type=int, default=500, help="STOREs timed (500)")
    parser.add_argument("--keep", type=Path, help="keep everything under this directory")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with two_nodes("maildir", base=args.keep) as nodes:
        summary = run(nodes, args.ops, args.lag_samples)
    missing = have_etcd()
    if missing is None:
        say("automatic failover: ownership on etcd, no promote by hand")
        summary.auto = automatic_failover(say, args.keep)
    else:
        summary.auto_skipped = missing
        say(f"automatic failover part skipped: {missing}")
    print_summary(summary, time.monotonic() - started)
    auto_ok = summary.auto is None or summary.auto.ok
    return 0 if summary.differences == 0 and summary.failover.identical and auto_ok else 1


if __name__ == "__main__":
    sys.exit(main())
