"""What daemon tests share: roots under a base directory (bare daemons, no Dovecot), waiting
for a condition without a fixed sleep, and ownership on etcd (settings, waiting for a node to
serve a user)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from replicator.testing.cluster import ReplicatorNode


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


def coordination(endpoints: Sequence[str], **more: Any) -> dict[str, Any]:
    """[coordination] for test nodes: TTL 2 s, commits stop 0.5 s before the lease ends."""
    return {"endpoints": list(endpoints), "lease_ttl": 2, "margin": 0.5,
            "request_timeout": 0.3, **more}


def wait_serving(node: ReplicatorNode, user: str, timeout: float = 30.0) -> None:
    """Until `node` serves `user` (owns it in etcd and has put it in place)."""
    poll(lambda: user in node.status()["ownership"]["serving"],
         f"{node.node_id} to serve {user}:\n{node.log_text()[-3000:]}", timeout)
