"""Counts of what each directory holds below it, for maps keyed by slash-separated paths.

The digest journal and the digest cache hold one entry per file of a replica, and both must
forget a directory with everything below it. Walking every entry to find them is a cost per
commit that grows with the replica; with these counts only a path that is a directory holding
entries is walked, and forgetting one file costs a lookup per level.
"""

from __future__ import annotations


def count_below(below: dict[str, int], path: str, delta: int) -> None:
    """Add `delta` to the count of every directory above `path` ("a/b/c" counts in "a/b"
    and "a"); a directory is in `below` exactly while it holds something."""
    parent = path.rpartition("/")[0]
    while parent:
        left = below.get(parent, 0) + delta
        if left:
            below[parent] = left
        else:
            del below[parent]
        parent = parent.rpartition("/")[0]
