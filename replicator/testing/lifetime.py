"""Processes started by tests, benchmarks and the demo die with the process that started them.

An interrupted run (a timeout's SIGKILL, a closed terminal) runs no cleanup, and a daemon left
behind keeps a CPU busy and skews every later measurement. `setpriv --pdeathsig` (util-linux,
in every Debian) asks the kernel to kill the child when its parent goes; it survives the exec
of the real program, so no Python runs between fork and exec.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence


def tied_to_us(argv: Sequence[str]) -> list[str]:
    """`argv`, wrapped so the kernel SIGKILLs it when this process exits (as is if setpriv is
    missing). The parent is the thread that starts it: call from a thread that outlives it."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)
