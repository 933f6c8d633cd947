"""`bench.commit_tail` drives real Dovecot and daemons with a BARRIER thread beside an IMAP
client: run it briefly so that it still works the next time someone measures, timing
nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_worst_case_bench_reports_both_rows_and_the_collection() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.commit_tail", "--mailboxes", "20",
                           "--stores", "30"], capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| no rescan asked for (baseline) |" in done.stdout, done.stdout
    assert "| a rescan asked every 1 s (" in done.stdout, done.stdout
    assert "once `replicator.heap.settle` froze it" in done.stdout, done.stdout
