"""`bench.commit_trace` wraps daemon functions by name: a rename would break it quietly until
the next time someone measures. Run it briefly on real Dovecot and daemons, timing nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.commit_trace import PROBES

REPO = Path(__file__).resolve().parents[2]


def test_the_commit_trace_sees_every_step_of_a_sync_commit() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.commit_trace", "--rounds", "40",
                           "--warmup", "10", "--ops", "store"], capture_output=True, text=True,
                          cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for role, _module, _cls, _method, _when, label in PROBES:
        assert f"{role}: {label}" in done.stdout, done.stdout
    assert "the whole round (14 notes)" in done.stdout, done.stdout
    assert "the four hops alone" in done.stdout, done.stdout
