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
    """series -> saved figures, for the versions measured so far."""
    found = {}
    for series in ("2.3", "2.4"):
        path = HERE / f"dovecot-{series}.json"
        if path.exists():
            found[series] = json.loads(path.read_text())
    return found


def section(figures: dict[str, dict[str, Any]]) -> list[str]:
    """The RESULTS.md section; empty until some version was measured."""
    if not figures:
        return []
    lines = ["## Dovecot 2.4 beside 2.3", "",
             "The same measurements on each version, one `python -m bench.versions` run per "
             "Debian root (Debian 12: Dovecot 2.3, Debian 13: Dovecot 2.4) on the same machine.",
             ""]
    for series, f in figures.items():
        m = f["machine"]
        lines.append(f"- {series}: Dovecot {m['dovecot']}, Python {m['python']}, {m['date']}; "
                     f"TCP round trip p50 {f['floors']['tcp_rtt_asyncio']['p50_ms']} ms, "
                     f"fdatasync p50 {f['floors']['fdatasync_4k_disk']['p50_ms']} ms")
    lines += ["", "Replication lag of one flag STORE (p50 / p99 ms):", "",
              "| format | mode | " + " | ".join(figures) + " |",
              "|---|---|" + "---|" * len(figures)]
    keys = [(r["format"], r["mode"]) for r in next(iter(figures.values()))["lag"]]
    for fmt, mode in keys:
        cells = []
        for f in figures.values():
            s = next(r["samples"] for r in f["lag"] if (r["format"], r["mode"]) == (fmt, mode))
            cells.append(f"{s['p50_ms']:.3f} / {s['p99_ms']:.3f}")
        lines.append(f"| {fmt} | {mode} | " + " | ".join(cells) + " |")
    lines += ["", "APPEND, sent to answer received, mdbox (p50 / p99 ms):", "",
              "| mode | plugin | " + " | ".join(figures) + " |",
              "|---|---|" + "---|" * len(figures)]
    for mode in ("disk", "ram"):
        for plugin in (False, True):
            cells = []
            for f in figures.values():
                s = next(r["samples"] for r in f["append"]
                         if (r["mode"], r["plugin"]) == (mode, plugin))
                cells.append(f"{s['p50_ms']:.3f} / {s['p99_ms']:.3f}")
            lines.append(f"| {mode} | {'yes' if plugin else 'no'} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="STOREs per lag run")
    parser.add_argument("--appends", type=int, default=1000, help="APPENDs per run")
    args = parser.parse_args(argv)
    figures = measure(args.samples, args.appends)
    out = HERE / f"dovecot-{installed().series}.json"
    out.write_text(json.dumps(figures, indent=1) + "\n")
    write_sections(HERE / "RESULTS.md", "\n" + "\n".join(section(saved())))
    print(f"wrote {out} and the section in {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
