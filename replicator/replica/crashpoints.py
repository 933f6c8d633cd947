"""Named points inside a batch where a test may have the receiver killed (SIGKILL, no
clean-up), to check what a kill -9 there leaves: `REPLICATOR_TEST_CRASH_AT=<point>:<text>`
kills at `<point>` of a batch touching a file whose path contains `<text>`. Inert unless a
test sets the variable in the receiver's environment when it starts (read once, at import:
looking a missing variable up in os.environ at each point was 2 % of a batch's cost).

Points: before-renames, before-commit-mark (replica.apply), mid-patch (replica.fileio,
between the first and the second extent of an in-place patch).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

CRASH_AT = "REPLICATOR_TEST_CRASH_AT"
_ARMED = os.environ.get(CRASH_AT, "")


def crash_point(name: str, rels: Iterable[str]) -> None:
    if _ARMED:
        point, _, text = _ARMED.partition(":")
        if point == name and any(text in rel for rel in rels):
            os.kill(os.getpid(), signal.SIGKILL)
