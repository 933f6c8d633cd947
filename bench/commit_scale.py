"""What a sync-committed APPEND costs as a node grows: many mailboxes replicated, and one big
mailbox (whose cache Dovecot rewrites in place on every commit), against one small mailbox in
the same run.

    .venv/bin/python -m bench.commit_scale [--mailboxes 5000] [--messages 5000] [--appends 500]

The single-mailbox figures of bench.commit_path cannot show a cost that grows with the replica
or with a file: this one can (issue 16 found two, a walk over every cached digest per commit on
the receiver and a whole-cache compression per commit on the sender).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.profile_commit import _cpu_seconds
from bench.promote_scale import _fill
from bench.sync_commit import _append_latencies
from replicator.testing.scenario import TwoNodes, scratch_dir, two_nodes

USERS = tuple(f"u{i}" for i in range(1, 11))


def _big_inbox(nodes: TwoNodes, messages: int) -> None:
    """`messages` in u1's INBOX, their envelopes and structures fetched (so cached)."""
    client = nodes.dovecot_a.imap("u1")
    for i in range(messages):
        client.append("INBOX", (f"From: sender{i}@example.org\r\nTo: u1@example.org\r\n"
                                f"Subject: message {i} of the big mailbox\r\nMessage-ID: "
                                f"<{i}.{os.getpid()}@example.org>\r\n\r\nbody {i}\r\n").encode())
    client.select_folder("INBOX")
    client.fetch(client.search("ALL"), ["ENVELOPE", "BODYSTRUCTURE", "FLAGS", "RFC822.SIZE"])
    client.logout()


def commit_cost(*, mailboxes: int, messages: int, appends: int) -> dict[str, Any]:
    """APPEND p50 and CPU per sync-committed APPEND (mdbox, RAM) into u1's INBOX, with
    `mailboxes` replicated over 10 users and `messages` already in that INBOX."""
    with scratch_dir("scale-", ram=True) as base, \
            two_nodes("mdbox", USERS, base=base / "n", sync_commit="fail",
                      mail_fsync="never") as nodes:
        started = time.monotonic()
        if mailboxes > 1:
            with ThreadPoolExecutor(len(USERS)) as pool:
                list(pool.map(lambda u: _fill(nodes, u, mailboxes // len(USERS)), USERS))
        if messages:
            _big_inbox(nodes, messages)
        nodes.dovecot_a.wait_idle()
        nodes.repl_a.barrier(timeout=600)
        fill = time.monotonic() - started
        caches = list(nodes.dovecot_a.layout.index_root.glob("u1/mailboxes/INBOX/*.cache"))
        _append_latencies(nodes.dovecot_a, 50)  # files, connections, caches
        pids = {role: node.process.pid for role, node in
                (("sender", nodes.repl_a), ("receiver", nodes.repl_b)) if node.process}
        before = {role: _cpu_seconds(pid) for role, pid in pids.items()}
        latencies = _append_latencies(nodes.dovecot_a, appends)
        after = {role: _cpu_seconds(pid) for role, pid in pids.items()}
        counted = appends + 50  # _append_latencies drops its first 50 from the samples
        return {"mailboxes": mailboxes, "messages": messages, "fill_s": fill,
                "cache_bytes": sum(p.stat().st_size for p in caches),
                "append_p50_ms": statistics.median(latencies) * 1000,
                "cpu_us_per_append": {role: (sum(after[role]) - sum(before[role])) / counted
                                      * 1e6 for role in pids}}


def measure(mailboxes: int, messages: int, appends: int) -> dict[str, Any]:
    return {"small": commit_cost(mailboxes=1, messages=0, appends=appends),
            "many_mailboxes": commit_cost(mailboxes=mailboxes, messages=0, appends=appends),
            "big_mailbox": commit_cost(mailboxes=1, messages=messages, appends=appends)}


def describe(run: dict[str, Any]) -> str:
    cpu = run["cpu_us_per_append"]
    return (f"APPEND p50 {run['append_p50_ms']:.3f} ms, CPU per APPEND sender "
            f"{cpu['sender']:.0f} µs, receiver {cpu['receiver']:.0f} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--appends", type=int, default=500)
    args = parser.parse_args(argv)
    results = measure(args.mailboxes, args.messages, args.appends)
    print(json.dumps(results, indent=1))
    for name, run in results.items():
        print(f"{name}: {describe(run)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
