"""`make bench`'s micro-benchmarks are not part of `make test`, so an API change that breaks
them went unnoticed until the next `make bench` (describe() lost a keyword once): run them
here once each, timing nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MICRO = Path(__file__).resolve().parents[2] / "bench" / "test_micro.py"


def test_the_micro_benchmarks_run() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", str(MICRO), "-q", "-p",
                           "no:cacheprovider", "--benchmark-disable"],
                          capture_output=True, text=True, cwd=MICRO.parents[1], check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
