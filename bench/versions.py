"""Dovecot 2.4 beside 2.3: the lag and sync-commit APPEND figures of `make bench` for the
installed Dovecot, kept per version so that RESULTS.md can set them side by side.

    .venv/bin/python -m bench.versions     # on a Debian 12 machine (2.3), then on Debian 13 (2.4)

writes bench/dovecot-<2.3|2.4>.json (the machine, the floors of the same run, the STORE lag in
disk and RAM mode, APPEND with and without the plugin) and the "Dovecot 2.4 beside 2.3" section
of RESULTS.md from whichever of the two files are there (`make bench` keeps that section).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import baselines, scenarios, sync_commit
from bench.report import write_sections
from bench.scenarios import summary
from replicator.dovecot.version import installed

HERE = Path(__file__).resolve().parent


def measure(samples: int, appends: int) -> dict[str, Any]:
    from bench.run import machine

    floors = {
        "tcp_rtt_asyncio": summary(baselines.tcp_round_trip_asyncio(samples * 2)),
        "fdatasync_4k_disk": summary(baselines.timed_appends(Path("/var/tmp"), samples // 2,
                                                             fdatasync=True)),
    }
    lag = []
    for mode in ("disk", "ram"):
        for fmt in ("maildir", "mdbox"):
            print(f"lag {fmt} {mode} ...", flush=True)
            run = scenarios.store_lag(fmt, mode, samples)
            lag.append({**run, "samples": summary(run["samples"])})
    append = []
    for mode in ("disk", "ram"):
        for sync in (None, "fail"):
            print(f"APPEND {mode} plugin={sync is not None} ...", flush=True)
            run = sync_commit.two_node_append(appends, mode, sync)
            append.append({**run, "samples": summary(run["samples"])})
    return {"machine": machine(), "floors": floors, "lag": lag, "append": append}


def saved() -> dict[str, dict[str, Any]]:
    """series -> {"runs": [figures of one run, ...]}, for the versions measured so far."""
    found = {}
    for series in ("2.3", "2.4"):
        path = HERE / f"dovecot-{series}.json"
        if path.exists():
            found[series] = json.loads(path.read_text())
    return found


def _cell(runs: list[dict[str, Any]], kind: str, key: dict[str, Any]) -> str:
    """Median over the runs of p50 and of p99, and the runs' p50 range."""
    rows = [next(r["samples"] for r in run[kind] if all(r[k] == v for k, v in key.items()))
            for run in runs]
    p50s = sorted(r["p50_ms"] for r in rows)
    p99 = statistics.median(r["p99_ms"] for r in rows)
    return (f"{statistics.median(p50s):.3f} / {p99:.3f} "
            f"({p50s[0]:.3f}-{p50s[-1]:.3f})")


def section(figures: dict[str, dict[str, Any]]) -> list[str]:
    """The RESULTS.md section; empty until some version was measured."""
    if not figures:
        return []
    lines = ["## Dovecot 2.4 beside 2.3", "",
             "The same measurements on each version, `python -m bench.versions` (3 runs) in each "
             "Debian root (Debian 12: Dovecot 2.3, Debian 13: Dovecot 2.4) on the same machine. "
             "Each cell: median over the runs of p50 / of p99 ms, and the range of the runs' "
             "p50s: on this 2-vCPU VM the runs of one version spread about as far apart as the "
             "two versions do.", ""]
    for series, f in figures.items():
        m, first = f["runs"][0]["machine"], f["runs"][0]
        lines.append(f"- {series}: Dovecot {m['dovecot']}, Python {m['python']}, {m['date']}; "
                     f"{len(f['runs'])} runs of {first['lag'][0]['samples']['n']} STOREs and "
                     f"{first['append'][0]['samples']['n']} APPENDs per row; TCP round trip "
                     f"p50 {first['floors']['tcp_rtt_asyncio']['p50_ms']:.3f} ms, fdatasync p50 "
                     f"{first['floors']['fdatasync_4k_disk']['p50_ms']:.3f} ms")
    lines += ["", "Replication lag of one flag STORE:", "",
              "| format | mode | " + " | ".join(figures) + " |",
              "|---|---|" + "---|" * len(figures)]
    for fmt, mode in [(r["format"], r["mode"])
                      for r in next(iter(figures.values()))["runs"][0]["lag"]]:
        cells = [_cell(f["runs"], "lag", {"format": fmt, "mode": mode})
                 for f in figures.values()]
        lines.append(f"| {fmt} | {mode} | " + " | ".join(cells) + " |")
    lines += ["", "APPEND, sent to answer received, mdbox:", "",
              "| mode | plugin | " + " | ".join(figures) + " |",
              "|---|---|" + "---|" * len(figures)]
    for mode in ("disk", "ram"):
        for plugin in (False, True):
            cells = [_cell(f["runs"], "append", {"mode": mode, "plugin": plugin})
                     for f in figures.values()]
            lines.append(f"| {mode} | {'yes' if plugin else 'no'} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="STOREs per lag run")
    parser.add_argument("--appends", type=int, default=1000, help="APPENDs per run")
    parser.add_argument("--runs", type=int, default=3,
                        help="repetitions (this VM's run-to-run spread exceeds 2.3 vs 2.4)")
    args = parser.parse_args(argv)
    out = HERE / f"dovecot-{installed().series}.json"
    runs = [measure(args.samples, args.appends) for _ in range(args.runs)]
    out.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    write_sections(HERE / "RESULTS.md", "\n" + "\n".join(section(saved())))
    print(f"wrote {out} and the section in {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
