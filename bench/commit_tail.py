"""The worst case of a sync commit on a node that holds many mailboxes: what the medians of
bench.commit_path cannot show.

    .venv/bin/python -m bench.commit_tail [--mailboxes 5000] [--stores 5000] [--write]

Two measurements, each beside its baseline in the same run:

- STORE latency (p50, p99, p99.9, max) with `--mailboxes` replicated (mdbox, RAM mode, sync
  commit to one peer), while rescans run: a BARRIER, which rescans every directory, is asked
  every RESCAN_EVERY seconds (the daemon's own rescan comes every 30 s). The baseline is the
  same STOREs just before, with no rescan asked for (the daemon's own may still fall among
  them).
- The pause of one full garbage collection over a sender's manifest of `--mailboxes`
  mailboxes (three index files each, built in this process as the daemon builds it), before
  and after `replicator.heap.settle` froze it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imapclient

from bench.promote_scale import _fill
from bench.report import write_sections
from bench.scenarios import summary
from replicator import heap
from replicator.capture.basecache import BaseCache
from replicator.capture.manifest import Manifest
from replicator.sender.batcher import Batcher
from replicator.testing.imap import parse_appenduid
from replicator.testing.scenario import TwoNodes, scratch_dir, two_nodes

USERS = tuple(f"u{i}" for i in range(1, 11))
RESCAN_EVERY = 1.0
HERE = Path(__file__).resolve().parent


def tail(samples: list[float]) -> dict[str, float]:
    """scenarios.summary of `samples` (seconds; p50, p99, max in ms), with p99.9."""
    ordered = sorted(samples)
    return {**summary(ordered),
            "p999_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.999))] * 1000}


def _stores(client: imapclient.IMAPClient, uid: int, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        (client.add_flags if i % 2 == 0 else client.remove_flags)([uid], ["\\Flagged"],
                                                                   silent=True)
        latencies.append(time.perf_counter() - started)
    return latencies


def _rescanning(nodes: TwoNodes, stop: threading.Event, done: list[float]) -> None:
    """Ask BARRIER (a rescan of everything, then every peer's ack) every RESCAN_EVERY seconds
    until `stop`."""
    while not stop.wait(RESCAN_EVERY):
        started = time.monotonic()
        nodes.repl_a.barrier(timeout=120)
        done.append(time.monotonic() - started)


def store_tail(mailboxes: int, stores: int) -> dict[str, Any]:
    with scratch_dir("tail-", ram=True) as base, \
            two_nodes("mdbox", USERS, base=base / "n", sync_commit="fail",
                      mail_fsync="never") as nodes:
        with ThreadPoolExecutor(len(USERS)) as pool:
            list(pool.map(lambda u: _fill(nodes, u, mailboxes // len(USERS)), USERS))
        nodes.dovecot_a.wait_idle()
        nodes.repl_a.barrier(timeout=600)
        client = nodes.dovecot_a.imap("u1")
        client.select_folder("INBOX")
        _, (uid,) = parse_appenduid(client.append("INBOX", b"Subject: tail\r\n\r\nbody\r\n"))
        _stores(client, uid, 200)  # connections, caches
        quiet = _stores(client, uid, stores)
        stop, rescans = threading.Event(), list[float]()
        thread = threading.Thread(target=_rescanning, args=(nodes, stop, rescans))
        thread.start()
        try:
            busy = _stores(client, uid, stores)
        finally:
            stop.set()
            thread.join()
        client.logout()
    return {"mailboxes": mailboxes, "quiet": tail(quiet), "rescanning": tail(busy),
            "rescans": len(rescans), "rescan_s": statistics.median(rescans) if rescans else 0}


def full_collection(mailboxes: int) -> dict[str, Any]:
    """Milliseconds of a full collection with a sender's manifest of `mailboxes` loaded, as
    loaded (median of 3) and once `heap.settle` froze it (median of 3)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as scratch:
        root = Path(scratch)
        for n in range(mailboxes):
            box = root / f"u{n % 10}" / f"box{n}"
            box.mkdir(parents=True)
            for name in ("dovecot.index.log", "dovecot.index.cache", "dovecot.index"):
                (box / name).write_bytes(os.urandom(300))
        batcher = Batcher({"index": root}, Manifest(), BaseCache(1 << 26))
        batcher.build({("index", ""): None})
        tracked = len(gc.get_objects())

        def pause() -> float:
            started = time.perf_counter()
            gc.collect()
            return (time.perf_counter() - started) * 1000

        loaded = statistics.median(pause() for _ in range(3))
        try:
            heap.settle()
            settled = statistics.median(pause() for _ in range(3))
        finally:
            gc.unfreeze()
        files = batcher.manifest.file_count()
    return {"mailboxes": mailboxes, "files": files, "tracked": tracked, "loaded_ms": loaded,
            "settled_ms": settled}


def report(stores: dict[str, Any], collection: dict[str, Any]) -> str:
    def row(name: str, t: dict[str, float]) -> str:
        return (f"| {name} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['p999_ms']:.3f} | "
                f"{t['max_ms']:.3f} |")
    return "\n".join([
        f"STORE with sync commit, {stores['mailboxes']} mailboxes replicated (mdbox, RAM, TCP "
        f"loopback), {stores['quiet']['n']} per row:", "",
        "| while | p50 ms | p99 ms | p99.9 ms | max ms |", "|---|---|---|---|---|",
        row("no rescan asked for (baseline)", stores["quiet"]),
        row(f"a rescan asked every {RESCAN_EVERY:g} s ({stores['rescans']}, "
            f"{stores['rescan_s']:.2f} s each)", stores["rescanning"]), "",
        f"A full garbage collection with a sender's manifest of {collection['mailboxes']} "
        f"mailboxes ({collection['files']} files, {collection['tracked']} objects tracked) "
        f"loaded: {collection['loaded_ms']:.1f} ms; once `replicator.heap.settle` froze it: "
        f"{collection['settled_ms']:.2f} ms (medians of 3).",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_tail", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=5000)
    parser.add_argument("--stores", type=int, default=5000)
    parser.add_argument("--write", action="store_true",
                        help="also write the report as the 'Commit path, worst case' section "
                             "of bench/RESULTS.md")
    args = parser.parse_args(argv)
    collection = full_collection(args.mailboxes)
    stores = store_tail(args.mailboxes, args.stores)
    text = report(stores, collection)
    print(json.dumps({"stores": stores, "collection": collection}, indent=1))
    print(text)
    if args.write:
        from bench.run import machine

        m = machine()
        write_sections(HERE / "RESULTS.md", "\n".join([
            "", "## Commit path, worst case", "",
            f"`python -m bench.commit_tail --mailboxes {args.mailboxes} --stores "
            f"{args.stores}` on {m['cpu']}, {m['cpus']} CPUs, Dovecot {m['dovecot']}, Python "
            f"{m['python']}; {m['date']}. One run: each figure beside its baseline.", "", text,
            ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
