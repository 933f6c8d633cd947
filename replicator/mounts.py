"""Which filesystem a path lives on, to warn when the replica is not in RAM."""

from __future__ import annotations

import os
from pathlib import Path


def filesystem_type(path: Path) -> str:
    """The type of the mount holding `path` ("tmpfs", "ext4", ...), or "unknown"."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return fstype
    for line in lines:
        fields = line.split(" ")
        mount_point = fields[4].replace("\\040", " ")
        after = fields[fields.index("-") + 1:]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best) and after:
            best, fstype = mount_point, after[0]
    return fstype
