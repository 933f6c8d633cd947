"""Small JSON state files: the receiver's position, rewritten in place; fences and markers,
replaced atomically.

`replica_dir/<origin>/.applied.json` says how far this replica got in the origin's stream; it
lives beside the replica (tmpfs: it must vanish with the data it describes) and is rewritten in
place, once per chunk of input (`InPlaceJson`). Fences live in `state_dir/fences.json` (durable
disk: a promote's fence must survive a reboot), replaced atomically.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.replica.rewritten import RewrittenFile

# An in-place rewrite covers at most one page: the kernel copies it into the file in one step,
# so a kill -9 cannot leave it half written (a bigger state is replaced by a rename instead).
IN_PLACE_MAX = 4096
# A reader may meet an in-place rewrite half done (another process writing it just then): it
# reads again, a few times, before calling the file damaged.
TORN_READS = 5


def load_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path` ({} if there is none). A file being rewritten in place
    (InPlaceJson) is read again until it parses; ValueError if it never does."""
    for attempt in range(TORN_READS):
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            if attempt == TORN_READS - 1:
                raise
            continue
        return data if isinstance(data, dict) else {}
    return {}  # not reached: the last attempt returns or raises


def save_json(path: Path, data: dict[str, Any], *, durable: bool) -> None:
    """Replace `path` with `data` atomically; `durable` also syncs it to disk."""
    _replace(path, json.dumps(data, sort_keys=True).encode(), durable=durable)


def _replace(path: Path, encoded: bytes, *, durable: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
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


class InPlaceJson:
    """A small JSON file rewritten in place: one pwrite at offset 0 (replica.rewritten),
    padded with spaces to at least what the file held, so nothing of an older, longer state
    stays behind it.

    The receiver saves its position once per chunk of input, on a sync commit's latency path;
    replacing the file (open, write, close, rename) was a fifth of a batch's cost there
    (`python -m bench.receiver_apply`). A rewrite of up to IN_PLACE_MAX bytes is as safe
    against a kill -9 as the rename was (one page, copied in one step); readers in other
    processes read again if they meet one half done (`load_json`). It needs no new space on a
    full filesystem either, where the rename needed a new file. Not durable: for state that
    lives and dies with a tmpfs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = RewrittenFile(path, 0o644)

    def save(self, data: dict[str, Any]) -> None:
        encoded = json.dumps(data, sort_keys=True).encode()
        self._file.open()
        if len(encoded) > IN_PLACE_MAX or self._file.size > IN_PLACE_MAX:
            # too big for one step, or a big state is there: a new file, renamed (the next
            # small one then goes in place again)
            self._file.close()
            _replace(self.path, encoded, durable=False)
            return
        self._file.write_opened(encoded.ljust(self._file.size))

    def close(self) -> None:
        self._file.close()


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

    def as_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "seq": self.seq, "epoch": self.epoch,
                "broken": self.broken, "sync_policy": self.sync_policy, "why": self.why}

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
