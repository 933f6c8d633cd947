"""`make bench`: measure, then write bench/RESULTS.md and the plots beside it.

End-to-end figures come from two real Dovecot nodes with replicators on loopback (lag of a flag
STORE in disk and RAM mode, bytes on the wire for the seeded workload, daemon memory); the
floors (TCP round trip, fdatasync, tmpfs write) are measured in the same run, and the hot path's
pieces by pytest-benchmark (bench/test_micro.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import baselines, promote_scale, scenarios, sync_commit
from bench.report import write_report

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout
    return {"cpu": cpu, "cpus": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version(), "dovecot": dovecot.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def micro(quick: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "micro.json"
        args = [sys.executable, "-m", "pytest", str(HERE / "test_micro.py"), "-q",
                "-p", "no:cacheprovider", f"--benchmark-json={out}",
                "--benchmark-min-rounds=50"]
        if quick:
            args.append("--benchmark-max-time=0.05")
        subprocess.run(args, check=True, cwd=HERE.parent)
        data = json.loads(out.read_text())
    return [{"name": b["name"], "median_us": b["stats"]["median"] * 1e6,
             "ops": b["stats"]["ops"]} for b in data["benchmarks"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--samples", type=int, default=1000, help="STOREs per lag run")
    parser.add_argument("--ops", type=int, default=600, help="workload operations")
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    args = parser.parse_args(argv)
    samples = 100 if args.quick else args.samples
    results: dict[str, Any] = {"machine": machine(), "lag": [], "traffic": []}
    print("floors ...", flush=True)
    results["floors"] = {
        "tcp_rtt_blocking": baselines.tcp_round_trip_blocking(samples * 2),
        "tcp_rtt_asyncio": baselines.tcp_round_trip_asyncio(samples * 2),
        "fdatasync_4k_disk": baselines.timed_appends(Path("/var/tmp"), samples // 2,
                                                       fdatasync=True),
        "write_4k_tmpfs": baselines.timed_appends(Path("/dev/shm"), samples * 2,
                                                    fdatasync=False),
    }
    for mode in ("disk", "ram"):
        for fmt in ("maildir", "mdbox"):
            print(f"lag {fmt} {mode} ...", flush=True)
            results["lag"].append(scenarios.store_lag(fmt, mode, samples))
    for fmt in ("maildir", "mdbox"):
        for churn in (False, True):
            print(f"traffic {fmt} churn={churn} ...", flush=True)
            results["traffic"].append(scenarios.workload_traffic(fmt, args.ops, churn))  # type: ignore[arg-type]
    print("APPEND latency with and without sync commit ...", flush=True)
    appends = samples if args.quick else max(samples, 1000)
    results["append"] = [sync_commit.two_node_append(appends, mode, sync)
                         for mode in ("disk", "ram") for sync in (None, "fail")]
    results["append"] += [sync_commit.lossy_peer_append(appends, loss) for loss in (0, 2)]
    print("promote and verify at scale ...", flush=True)
    scales = (1, 100) if args.quick else (1, 100, 10_000)
    results["promote"] = [promote_scale.promote_at_scale(n) for n in scales]
    print("micro-benchmarks ...", flush=True)
    results["micro"] = micro(args.quick)
    write_report(results, HERE)
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
