"""What etcd costs per operation the ownership code would make: lease grant, one lease
keep-alive, a get, a compare-and-swap on mod_revision, through etcd3gw's JSON gateway client
against a real 3-member cluster on loopback, via the leader and via a follower (a node's
local member is either). Also the CPU one keep-alive costs the client and the three members,
extrapolated to a keep-alive every TTL/3, to size the lease TTL.

    python -m bench.etcd_costs [--rounds N] [--json FILE] [--ram]

Members use etcd's default election timing (not the tests' fast one) and, unless --ram,
a data dir on disk, so every write pays real fsyncs (3.4 cannot turn them off).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from etcd3gw import Etcd3Client, Lease

from replicator.testing.etcd import EtcdCluster, etcd_cluster, have_etcd
from replicator.testing.scenario import scratch_dir

TTLS = (5, 2)  # seconds; one keep-alive every TTL/3
WARMUP = 20  # rounds not counted: connections, first allocations


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), "unknown")
    etcd = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    return {"cpu": model, "nproc": os.cpu_count(), "etcd": etcd.splitlines()[0],
            "etcd3gw": version("etcd3gw"), "python": sys.version.split()[0]}


def _server_cpu(cluster: EtcdCluster) -> float:
    """User+system seconds the member processes used so far (utime, stime of /proc/pid/stat)."""
    total = 0
    for member in cluster.members:
        assert member.process is not None
        fields = Path(f"/proc/{member.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _timed(rounds: int, op: Callable[[], object]) -> list[float]:
    for _ in range(WARMUP):
        op()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        op()
        samples.append(time.perf_counter() - started)
    return samples


def _b64(text: str) -> str:
    """The gateway's JSON carries keys and values as base64 (protobuf `bytes`)."""
    return base64.b64encode(text.encode()).decode()


def _cas(client: Etcd3Client, key: str) -> Callable[[], object]:
    """A txn that puts `key` only if its mod_revision is still the one last seen, as an owner
    that renews its claim would; it must succeed every time (nobody else writes `key`)."""
    client.put(key, "0")
    seen = [int(client.get(key, metadata=True)[0][1]["mod_revision"])]

    def swap() -> object:
        encoded = _b64(key)
        result = client.transaction({
            "compare": [{"key": encoded, "result": "EQUAL", "target": "MOD",
                         "mod_revision": seen[0]}],
            "success": [{"request_put": {"key": encoded, "value": _b64(str(seen[0]))}}],
            "failure": []})
        if not result.get("succeeded"):
            raise AssertionError(f"compare-and-swap lost at revision {seen[0]}: {result}")
        seen[0] = int(result["header"]["revision"])
        return result
    return swap


def measure(client: Etcd3Client, rounds: int, path: str) -> dict[str, list[float]]:
    granted: list[Lease] = []
    out = {"lease grant": _timed(rounds, lambda: granted.append(client.lease(TTLS[0])))}
    for lease in granted:
        lease.revoke()
    lease = client.lease(TTLS[0])
    out["keep-alive"] = _timed(rounds, lease.refresh)
    lease.revoke()
    client.put(f"bench/{path}/get", "owner=a")
    out["get"] = _timed(rounds, lambda: client.get(f"bench/{path}/get"))
    out["cas txn"] = _timed(rounds, _cas(client, f"bench/{path}/cas"))
    return out


def keepalive_cpu(cluster: EtcdCluster, client: Etcd3Client, rounds: int) -> dict[str, float]:
    """CPU seconds per keep-alive in this process and in the members together; the members'
    idle cost (heartbeats) over as long a wall time is measured first and taken off."""
    lease = client.lease(TTLS[0])
    client_cpu, server_cpu, wall = time.process_time(), _server_cpu(cluster), time.monotonic()
    for _ in range(rounds):
        lease.refresh()
    client_cpu = time.process_time() - client_cpu
    server_cpu, wall = _server_cpu(cluster) - server_cpu, time.monotonic() - wall
    lease.revoke()
    idle = _server_cpu(cluster)
    time.sleep(wall)  # a measurement window, not a wait for anything
    idle = _server_cpu(cluster) - idle
    return {"client_s": client_cpu / rounds, "members_s": max(server_cpu - idle, 0.0) / rounds}


def _us(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_us": cuts[49] * 1e6, "p99_us": cuts[98] * 1e6}


def run(rounds: int, ram: bool) -> dict[str, Any]:
    with scratch_dir("etcd-costs-", ram=ram) as base, \
            etcd_cluster(base / "etcd", 3, flags=()) as cluster:
        leader = int(cluster.client(0).status()["leader"])
        ids = [int(cluster.client(i).status()["header"]["member_id"]) for i in range(3)]
        lead, follower = ids.index(leader), (ids.index(leader) + 1) % 3
        via = {path: measure(cluster.client(index), rounds, path)
               for path, index in (("leader", lead), ("follower", follower))}
        cpu = keepalive_cpu(cluster, cluster.client(follower), rounds)
    per_minute = {f"ttl_{ttl}s": {who: cpu[f"{who}_s"] * 60 / (ttl / 3)
                                  for who in ("client", "members")} for ttl in TTLS}
    return {"machine": machine(), "rounds": rounds, "storage": "tmpfs" if ram else "disk",
            "ops": {op: {path: _us(via[path][op]) for path in via} for op in via["leader"]},
            "keepalive_cpu": cpu, "cpu_s_per_minute": per_minute}


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['nproc']} CPUs; {m['etcd']}; etcd3gw {m['etcd3gw']}, "
             f"Python {m['python']}",
             f"3 members on loopback, data on {result['storage']}, {result['rounds']} rounds",
             "", f"{'operation':<12} {'leader p50':>11} {'p99':>9} {'follower p50':>13} "
             f"{'p99':>9}   (µs)"]
    for op, paths in result["ops"].items():
        lead, follow = paths["leader"], paths["follower"]
        lines.append(f"{op:<12} {lead['p50_us']:>11.0f} {lead['p99_us']:>9.0f} "
                     f"{follow['p50_us']:>13.0f} {follow['p99_us']:>9.0f}")
    cpu = result["keepalive_cpu"]
    lines += ["", f"one keep-alive (via a follower): client CPU {cpu['client_s'] * 1e6:.0f} µs, "
              f"members' CPU {cpu['members_s'] * 1e6:.0f} µs (all three, idle cost taken off)"]
    for ttl in TTLS:
        spent = result["cpu_s_per_minute"][f"ttl_{ttl}s"]
        lines.append(f"TTL {ttl} s, keep-alive every {ttl / 3:.2f} s: client "
                     f"{spent['client'] * 1e3:.1f} ms CPU/min, members "
                     f"{spent['members'] * 1e3:.1f} ms CPU/min")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd_costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--ram", action="store_true", help="data dirs on tmpfs (no disk)")
    args = parser.parse_args(argv)
    missing = have_etcd()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    result = run(args.rounds, args.ram)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
