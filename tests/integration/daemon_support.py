"""What tests of bare daemons share (no Dovecot: the roots are plain directories the test
writes): roots under a base directory, and waiting for a condition without a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def roots(base: Path) -> dict[str, Path]:
    """An `index` and a `control` root under `base`, created."""
    made = {name: base / name for name in ("index", "control")}
    for path in made.values():
        path.mkdir(parents=True, exist_ok=True)
    return made


def poll(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Return once `condition()` holds; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
