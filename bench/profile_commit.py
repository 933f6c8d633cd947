"""Where a sync commit's time goes: CPU per APPEND of the sender and the receiver daemon, what
one APPEND costs in flushes, batches and link bytes, and (with py-spy installed) the functions
that hold the CPU, sampled in both daemons while an IMAP client APPENDs with the plugin.

    .venv/bin/python -m bench.profile_commit [--appends 3000] [--mode ram|disk] [--stacks DIR]

The profile of issue 16 ("the commit path"): measure here before changing the path and after.
py-spy is optional (`.venv/bin/pip install py-spy`); without it the CPU and count figures are
still printed. Sampling slows the daemons a little: latencies printed with stacks are not
figures for RESULTS.md (`make bench` and `python -m bench.versions` are).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import write_sections
from bench.sync_commit import _append_latencies
from replicator.testing.scenario import scratch_dir, two_nodes

COUNTERS = ("flushes", "commit_flushes", "batches", "busy_retries", "bytes_read")
HERE = Path(__file__).resolve().parent


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "500",
                             "--format", "raw", "--nonblocking", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(collapsed: Path, limit: int = 25) -> list[tuple[float, str]]:
    """(share of all samples, function) for our own functions, inclusive, from py-spy's
    collapsed stacks; and the idle share (the event loop waiting) as the first row."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += int(count)
        if "select (selectors.py)" in frames[-1]:
            idle += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    rows = [(idle / total, "(idle: the event loop waiting)")] if total else []
    rows += [(n / total, f) for f, n in inclusive.most_common()
             if "replicator/" in f and "cli.py" not in f and "__main__" not in f][:limit]
    return rows


def profile(appends: int, mode: str, stacks: Path | None) -> dict[str, Any]:
    with scratch_dir("prof-", ram=mode == "ram") as base, \
            two_nodes("mdbox", ("u1",), base=base / "n", sync_commit="fail",
                      mail_fsync="always" if mode == "disk" else "never") as nodes:
        _append_latencies(nodes.dovecot_a, 100)  # files, connections, caches
        pids = {role: node.process.pid for role, node in
                (("sender", nodes.repl_a), ("receiver", nodes.repl_b)) if node.process}
        spies = {}
        if stacks is not None:
            stacks.mkdir(parents=True, exist_ok=True)
            for role, pid in pids.items():
                spy = _spy(pid, stacks / f"{role}.txt")
                if spy is not None:
                    spies[role] = spy
            time.sleep(1.0)  # py-spy attaches
        before_cpu = {role: _cpu_seconds(pid) for role, pid in pids.items()}
        before = nodes.repl_a.status()
        latencies = _append_latencies(nodes.dovecot_a, appends)
        after = nodes.repl_a.status()
        after_cpu = {role: _cpu_seconds(pid) for role, pid in pids.items()}
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        counted = appends + 50  # _append_latencies drops its first 50 from the samples
        result: dict[str, Any] = {
            "mode": mode, "appends": appends, "sampled": bool(spies),
            "append_p50_ms": statistics.median(latencies) * 1000,
            "cpu_us_per_append": {
                r: {"user": (after_cpu[r][0] - before_cpu[r][0]) / counted * 1e6,
                    "system": (after_cpu[r][1] - before_cpu[r][1]) / counted * 1e6}
                for r in pids},
            "per_append": {k: (after["counters"].get(k, 0) - before["counters"].get(k, 0)) / counted
                           for k in COUNTERS},
            "link_bytes_per_append": (sum(p["bytes_sent"] for p in after["peers"].values())
                                      - sum(p["bytes_sent"] for p in before["peers"].values()))
                                     / counted,
            "delta_bytes_per_append": (after["traffic"]["op_bytes"]
                                       - before["traffic"]["op_bytes"]) / counted,
            "flush_phases": after["sync_commit"],
        }
        if spies and stacks is not None:
            result["top"] = {role: top_functions(stacks / f"{role}.txt") for role in spies}
        return result


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['appends']} APPENDs, mdbox, {result['mode']} mode, sync commit to one "
             f"peer over TCP loopback; APPEND p50 {result['append_p50_ms']:.3f} ms"
             + (" (while sampled)" if result["sampled"] else "")]
    for role, cpu in result["cpu_us_per_append"].items():
        lines.append(f"  {role:8} CPU per APPEND: {cpu['user'] + cpu['system']:.0f} µs "
                     f"(user {cpu['user']:.0f}, system {cpu['system']:.0f})")
    per = result["per_append"]
    lines.append(f"  per APPEND: {per['flushes']:.2f} flushes, "
                 f"{per.get('commit_flushes', 0):.2f} commit flushes, "
                 f"{per['batches']:.2f} batches, "
                 f"{per['bytes_read']:.0f} bytes read, {per['busy_retries']:.3f} lock retries; "
                 f"{result['delta_bytes_per_append']:.0f} delta bytes, "
                 f"{result['link_bytes_per_append']:.0f} link bytes")
    phases = result["flush_phases"]
    lines.append(f"  FLUSH p50: capture {phases['capture']['p50_ms']} ms, "
                 f"replicate {phases['replicate']['p50_ms']} ms")
    for role, rows in result.get("top", {}).items():
        lines.append(f"  {role}: share of samples, inclusive")
        lines += [f"    {share:6.1%} {name}" for share, name in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_commit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--mode", choices=("ram", "disk"), default="ram")
    parser.add_argument("--stacks", type=Path, default=None,
                        help="sample both daemons with py-spy; collapsed stacks go here")
    parser.add_argument("--write", action="store_true",
                        help="also write the report as the 'Commit path profile' section of "
                             "bench/RESULTS.md")
    args = parser.parse_args(argv)
    result = profile(args.appends, args.mode, args.stacks)
    text = report(result)
    print(text)
    if args.write:
        from bench.run import machine

        m = machine()
        command = (f"python -m bench.profile_commit --appends {args.appends} --mode {args.mode}"
                   + (" --stacks DIR" if args.stacks else ""))
        write_sections(HERE / "RESULTS.md", "\n".join([
            "", "## Commit path profile", "",
            f"`{command}` on {m['cpu']}, {m['cpus']} CPUs, Dovecot {m['dovecot']}, Python "
            f"{m['python']}; {m['date']}. Where a sync commit's CPU goes (issue 16 measures "
            "against this).", "", "```", text, "```", ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
