"""Streaming digests of the visible replica files, so an append verifies without a re-read."""

from __future__ import annotations

from collections.abc import Callable

from replicator.hashing import StreamingDigest
from replicator.replica.below import count_below


class DigestCache:
    """Digests by the file's path (replica_dir/<origin>/<root>/<rel>), computed lazily after a
    restart (`load` reads the file) and forgotten with what a batch removes.

    It holds every file of a replica once batches touched them all, and a batch that
    rewrites a file (every commit rewrites a cache) forgets its old digest: that must not cost
    a look at every other file. So each directory counts the files cached below it, and only
    forgetting a directory that holds some walks the cache (measured with 5 000 mailboxes:
    the walk was half the receiver's CPU, 1 ms per commit)."""

    def __init__(self) -> None:
        self._states: dict[str, StreamingDigest] = {}
        self._below: dict[str, int] = {}  # directory -> how many cached files it holds, any depth

    def get(self, path: str, load: Callable[[], bytes]) -> StreamingDigest:
        state = self._states.get(path)
        if state is None:
            state = StreamingDigest(load())
            self.set(path, state)
        return state

    def set(self, path: str, state: StreamingDigest) -> None:
        if path not in self._states:
            self._count(path, 1)
        self._states[path] = state

    def forget_tree(self, path: str) -> None:
        """Forget the file `path`, or everything below it if it is a directory."""
        if self._states.pop(path, None) is not None:
            self._count(path, -1)
        if path in self._below:
            prefix = f"{path}/"
            for key in [k for k in self._states if k.startswith(prefix)]:
                del self._states[key]
                self._count(key, -1)

    def __len__(self) -> int:
        return len(self._states)

    def _count(self, path: str, delta: int) -> None:
        count_below(self._below, path, delta)
