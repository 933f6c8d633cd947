"""Streaming digests of the visible replica files, so an append verifies without a re-read."""

from __future__ import annotations

from collections.abc import Callable

from replicator.hashing import StreamingDigest


class DigestCache:
    """Digests by the file's path (replica_dir/<origin>/<root>/<rel>), computed lazily after a
    restart (`load` reads the file) and forgotten with what a batch removes."""

    def __init__(self) -> None:
        self._states: dict[str, StreamingDigest] = {}

    def get(self, path: str, load: Callable[[], bytes]) -> StreamingDigest:
        state = self._states.get(path)
        if state is None:
            state = self._states[path] = StreamingDigest(load())
        return state

    def set(self, path: str, state: StreamingDigest) -> None:
        self._states[path] = state

    def forget_tree(self, path: str) -> None:
        prefix = f"{path}/"
        for key in [k for k in self._states if k == path or k.startswith(prefix)]:
            del self._states[key]
