"""Replication lag of one flag STORE behind a slow disk flush.

Dovecot on node a runs with `mail_fsync = always` and every fdatasync/fsync of its processes
made `--flush-us` microseconds slower (bench/slowflush.c, loaded with LD_PRELOAD through
Dovecot's import_environment: the daemons are not slowed). Dovecot holds a log's lock through
that flush; a log the sender finds locked is read past the lock once Dovecot has held it for
capture.snapshot.LOCK_PATIENCE, so the lag should not grow with the flush. Beside it, the same
STOREs with this machine's own flush, in the same run. Dovecot 2.3 only (its
import_environment takes KEY=VALUE; 2.4 spells it otherwise).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.report import write_sections
from bench.scenarios import summary
from replicator.dovecot.version import installed
from replicator.testing.demo_steps import measure_lag
from replicator.testing.scenario import scratch_dir, two_nodes

HERE = Path(__file__).resolve().parent


def build_shim(directory: Path) -> Path:
    shim = directory / "slowflush.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim),
                    str(HERE / "slowflush.c"), "-ldl"], check=True)
    return shim


def lag(mail_format: str, samples: int, shim: Path | None, flush_us: int) -> dict[str, Any]:
    config = "" if shim is None else (f"import_environment = $import_environment "
                                      f"LD_PRELOAD={shim} SLOW_FLUSH_US={flush_us}")
    with scratch_dir("bench-slow-flush-", ram=False) as base, \
            two_nodes(mail_format, base=base / "nodes",  # type: ignore[arg-type]
                      dovecot_a_config=config) as nodes:
        before = nodes.repl_a.status()["counters"]["batches"]
        lags = measure_lag(nodes, samples)
        batches = nodes.repl_a.status()["counters"]["batches"] - before
    return {"format": mail_format, "flush_us": flush_us if shim else 0,
            "batches_per_store": batches / samples, **summary(lags)}


def report(rows: list[dict[str, Any]], flush_us: int) -> str:
    lines = ["| format | Dovecot's flush | lag p50 ms | lag p99 ms | batches per STORE |",
             "|---|---|---|---|---|"]
    for row in rows:
        flush = f"+{flush_us} µs" if row["flush_us"] else "this machine's"
        lines.append(f"| {row['format']} | {flush} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                     f"{row['batches_per_store']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_flush", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flush-us", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--write", action="store_true",
                        help="also write the 'Replication lag behind a slow disk flush' "
                             "section of bench/RESULTS.md")
    args = parser.parse_args(argv)
    if installed().settings_v24:
        parser.error("needs Dovecot 2.3 (2.4 spells import_environment otherwise)")
    with tempfile.TemporaryDirectory() as directory:
        shim = build_shim(Path(directory))
        rows = [lag(fmt, args.samples, chosen, args.flush_us)
                for fmt in ("maildir", "mdbox") for chosen in (None, shim)]
    text = report(rows, args.flush_us)
    print(text)
    if args.write:
        from bench.run import machine

        m = machine()
        write_sections(HERE / "RESULTS.md", "\n".join([
            "", "## Replication lag behind a slow disk flush", "",
            f"`python -m bench.slow_flush --flush-us {args.flush_us} --samples {args.samples}` "
            f"on {m['cpu']}, {m['cpus']} CPUs, Dovecot {m['dovecot']}, Python {m['python']}; "
            f"{m['date']}. Disk mode (`mail_fsync = always`), no plugin; each slowed row beside "
            "the same STOREs with this machine's own flush, in one run.", "", text, ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
