"""Where one sync commit's latency goes, step by step, across the IMAP client, both daemons
and back: the critical path that `profile_commit`'s CPU shares cannot show.

    .venv/bin/python -m bench.commit_trace [--ops store,append] [--rounds 2000] [--write]

Both daemons run under a shim (`python -m bench.commit_trace shim ROLE OUT -- CMD...`) that
wraps a few of their functions to note CLOCK_MONOTONIC at each step of a commit, in memory,
written out when the daemon exits. The clock is one for every process of the machine, so the
client's and both daemons' notes merge into one timeline per round. Rounds whose steps come
in the usual order are kept, and each step's median is printed, with the whole round's.

Each note costs about a microsecond, and the steps include that: the figures say where the
time goes, not what a commit costs untraced (`bench.commit_path` says that).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import inspect
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import baselines
from replicator.testing.imap import parse_appenduid
from replicator.testing.scenario import scratch_dir, two_nodes

# (role, module, class, method, when, note): the steps of a commit in the daemon of `role`.
PROBES: list[tuple[str, str, str, str, str, str]] = [
    ("sender", "replicator.control.server", "ControlServer", "_request", "entry",
     "FLUSH read"),
    ("sender", "replicator.sync_commit", "SyncCommit", "keys_for", "exit", "paths checked"),
    ("sender", "replicator.capture.pipeline", "Capture", "catch_up", "exit",
     "inotify events read"),
    ("sender", "replicator.sender.batcher", "Batcher", "build_for_commit", "exit",
     "files read, deltas made"),
    ("sender", "replicator.daemon", "Daemon", "_enqueue", "exit", "batches numbered, sent"),
    ("sender", "replicator.sender.link", "PeerLink", "_on", "entry", "ACK decoded"),
    ("sender", "replicator.control.server", "ControlServer", "_request", "exit",
     "answer ready"),
    ("receiver", "replicator.wire.session", "Session", "receive_data", "entry",
     "bytes received"),
    ("receiver", "replicator.replica.listener", "Listener", "_on_origin", "entry",
     "batch decoded"),
    ("receiver", "replicator.replica.store", "OriginReplica", "receive", "exit",
     "batch applied"),
    ("receiver", "replicator.replica.store", "OriginReplica", "save_state", "exit",
     "position saved"),
    ("receiver", "replicator.transport.tcp", "TcpTransport", "send", "exit", "ACK sent"),
]
NOTES: list[tuple[int, str]] = []


def note(label: str) -> None:
    NOTES.append((time.monotonic_ns(), label))


def _wrapped(function: Callable[..., Any], when: str, label: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def async_probe(*args: Any, **kwargs: Any) -> Any:
            if when == "entry":
                note(label)
            result = await function(*args, **kwargs)
            if when == "exit":
                note(label)
            return result
        return async_probe

    @functools.wraps(function)
    def probe(*args: Any, **kwargs: Any) -> Any:
        if when == "entry":
            note(label)
        result = function(*args, **kwargs)
        if when == "exit":
            note(label)
        return result
    return probe


def shim(role: str, out: Path, command: list[str]) -> int:
    """Run the daemon `command` (`python -m replicator run ...`) in this process, its steps
    noted; the notes go to `out` at exit."""
    for probe_role, module, cls, method, when, label in PROBES:
        if probe_role == role:
            owner = getattr(importlib.import_module(module), cls)
            setattr(owner, method, _wrapped(getattr(owner, method), when, label))

    def dump() -> None:
        out.write_text("".join(f"{t} {role}: {label}\n" for t, label in NOTES))

    atexit.register(dump)
    if command[1:3] != ["-m", "replicator"]:
        raise SystemExit(f"shim: expected PYTHON -m replicator ..., got {command[:3]}")
    from replicator.cli import main as replicator_main

    return replicator_main(command[3:])


def rounds(paths: list[Path], skip: int) -> list[list[tuple[int, str]]]:
    """Every note of every process, cut into rounds at the client's "sent" note."""
    notes = sorted((int(t), label) for path in paths
                   for t, _, label in (line.partition(" ") for line in
                                       path.read_text().splitlines()))
    cut: list[list[tuple[int, str]]] = []
    for t, label in notes:
        if label == "client: sent":
            cut.append([])
        if cut:
            cut[-1].append((t, label))
    return cut[skip:]


def steps(cut: list[list[tuple[int, str]]]
          ) -> tuple[list[str], list[tuple[str, float]], float, float]:
    """(the usual order of notes, each step in it with its median µs, share of rounds kept,
    median µs of a whole round). A step met again in a round (an APPEND's second batch) is
    listed again, marked so."""
    orders = Counter(tuple(label for _, label in r) for r in cut)
    usual, count = orders.most_common(1)[0]
    kept = [r for r in cut if tuple(label for _, label in r) == usual]
    medians: list[tuple[str, float]] = []
    met: Counter[str] = Counter()
    for i in range(1, len(usual)):
        step = f"{usual[i - 1]} -> {usual[i]}"
        met[step] += 1
        medians.append((step + (f" (again, {met[step]})" if met[step] > 1 else ""),
                        statistics.median((r[i][0] - r[i - 1][0]) / 1000 for r in kept)))
    whole = statistics.median((r[-1][0] - r[0][0]) / 1000 for r in kept)
    return list(usual), medians, count / len(cut), whole


def drive(op: str, count: int, out: Path) -> None:
    """Two nodes in RAM mode (mdbox, sync commit to b), both daemons under the shim; `count`
    sync-committed `op`s from an IMAP client, each noted."""
    with scratch_dir("trace-", ram=True) as base, \
            two_nodes("mdbox", ("u1",), base=base / "n", sync_commit="fail",
                      mail_fsync="never", start=False) as nodes:
        for node, role in ((nodes.repl_a, "sender"), (nodes.repl_b, "receiver")):
            node.wrap = [sys.executable, "-m", "bench.commit_trace", "shim", role,
                         str(out / f"{role}.notes"), "--"]
        nodes.repl_b.start()
        nodes.repl_a.start()
        nodes.dovecot_a.start()
        client = nodes.dovecot_a.imap("u1")
        client.select_folder("INBOX")
        _, (uid,) = parse_appenduid(client.append("INBOX", b"Subject: trace\r\n\r\nbody\r\n"))
        client_notes: list[tuple[int, str]] = []
        for i in range(count):
            client_notes.append((time.monotonic_ns(), "client: sent"))
            if op == "store":
                (client.add_flags if i % 2 == 0 else client.remove_flags)(
                    [uid], ["\\Flagged"], silent=True)
            else:
                client.append("INBOX", b"Subject: trace %d\r\n\r\nbody\r\n" % i)
            client_notes.append((time.monotonic_ns(), "client: answered"))
        client.logout()
        (out / "client.notes").write_text("".join(f"{t} {label}\n"
                                                  for t, label in client_notes))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["shim"]:
        split = args.index("--")
        return shim(args[1], Path(args[2]), args[split + 1:])
    parser = argparse.ArgumentParser(prog="python -m bench.commit_trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="store,append",
                        help="which commands to trace, in turn (store, append)")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200,
                        help="rounds first made and left out of the figures")
    parser.add_argument("--write", action="store_true",
                        help="also write the report as the 'Commit path, step by step' "
                             "section of bench/RESULTS.md")
    options = parser.parse_args(args)
    ops = [op.strip() for op in options.ops.split(",") if op.strip()]
    if not ops or set(ops) - {"store", "append"}:
        parser.error(f"--ops: store and/or append, got {options.ops!r}")
    text = "\n".join(trace(op, options.rounds, options.warmup) for op in ops)
    print(text)
    if options.write:
        from bench.report import write_sections
        from bench.run import machine

        m = machine()
        write_sections(Path(__file__).resolve().parent / "RESULTS.md", "\n".join([
            "", "## Commit path, step by step", "",
            f"`python -m bench.commit_trace --ops {','.join(ops)} --rounds {options.rounds}` "
            f"on {m['cpu']}, {m['cpus']} CPUs, Dovecot {m['dovecot']}, Python {m['python']}; "
            f"{m['date']}. Where one sync commit's latency goes: each step's median, from "
            "notes of CLOCK_MONOTONIC taken in the IMAP client and in both daemons (about a "
            "microsecond each, counted in the steps; `Commit path goals` has the untraced "
            "figures).", "", "```", text, "```", ""]))
    return 0


def trace(op: str, count: int, warmup: int) -> str:
    """The report of `count` traced `op`s (after `warmup` more)."""
    with scratch_dir("trace-notes-", ram=False) as out:
        drive(op, count + warmup, out)
        usual, medians, kept, whole = steps(rounds(sorted(out.glob("*.notes")), skip=warmup))
    hops = statistics.median(baselines.sync_hops(count)) * 1e6
    lines = [f"{count} sync-committed {op.upper()}s (mdbox, RAM mode, TCP loopback); "
             f"{kept:.0%} of the rounds in the usual order; medians in µs"]
    lines += [f"  {value:7.1f}  {step}" for step, value in medians]
    lines.append(f"  {whole:7.1f}  the whole round ({len(usual)} notes)")
    lines.append(f"  {hops:7.1f}  the four hops alone, no work (bench.baselines.sync_hops, "
                 "just after)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
