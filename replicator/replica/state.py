"""Small durable JSON state files, replaced atomically.

`replica_dir/<origin>/.applied.json` says how far this replica got in the origin's stream; it
lives beside the replica (tmpfs: it must vanish with the data it describes). Fences live in
`state_dir/fences.json` (durable disk: a promote's fence must survive a reboot).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def save_json(path: Path, data: dict[str, Any], *, durable: bool) -> None:
    """Replace `path` with `data` atomically (one write: the receiver saves its position once
    per chunk of input, on the latency path); `durable` also syncs it to disk."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        encoded = json.dumps(data, sort_keys=True).encode()
        if os.write(fd, encoded) != len(encoded):
            raise OSError(errno.ENOSPC, f"short write to {tmp}")
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class AppliedState:
    """Position of one replica in its origin's stream."""

    stream: str = ""
    seq: int = 0
    epoch: int = 0
    broken: dict[str, int] = field(default_factory=dict)  # "root\\0dir" -> seq it broke at
    sync_policy: str = "off"  # what the origin's sync-commit plugin last did (fail: gap 0)
    why: dict[str, str] = field(default_factory=dict)  # "root\\0dir" -> why it broke

    @classmethod
    def load(cls, path: Path) -> AppliedState:
        data = load_json(path)
        return cls(str(data.get("stream", "")), int(data.get("seq", 0)),
                   int(data.get("epoch", 0)), dict(data.get("broken", {})),
                   str(data.get("sync_policy", "off")), dict(data.get("why", {})))

    def copy(self) -> AppliedState:
        return AppliedState(self.stream, self.seq, self.epoch, dict(self.broken),
                            self.sync_policy, dict(self.why))

    def save(self, path: Path) -> None:
        save_json(path, {"stream": self.stream, "seq": self.seq, "epoch": self.epoch,
                         "broken": self.broken, "sync_policy": self.sync_policy,
                         "why": self.why}, durable=False)

    def broken_dirs(self) -> list[tuple[str, str, int, str]]:
        """(root, dir, seq it broke at, why) of every directory awaiting its origin's resend."""
        return [(key.partition("\0")[0], key.partition("\0")[2], seq, self.why.get(key, ""))
                for key, seq in sorted(self.broken.items())]


class Fences:
    """The lowest epoch accepted from each origin; raised by promote, never lowered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._epochs: dict[str, int] = {}
        self.reload()

    def minimum(self, origin: str) -> int:
        return self._epochs.get(origin, 0)

    def raise_to(self, origin: str, epoch: int) -> None:
        if epoch > self.minimum(origin):
            self._epochs[origin] = epoch
            save_json(self.path, dict(self._epochs), durable=True)

    def reload(self) -> None:
        """Re-read the file if another process (a promote) changed it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns) != self._stamp:
            self._epochs = {k: int(v) for k, v in load_json(self.path).items()}
            self._stamp = (st.st_ino, st.st_mtime_ns)
