"""The receiver's digest cache forgets exactly what a batch removed: a file, or a directory
with everything below it (and nothing of a sibling whose name starts the same)."""

from __future__ import annotations

import functools

from replicator.hashing import StreamingDigest
from replicator.replica.digestcache import DigestCache

FILES = ["/r/a/u1/box1/dovecot.index.log", "/r/a/u1/box1/sub/dovecot.index.log",
         "/r/a/u1/box10/dovecot.index.log", "/r/a/u1/box1.log", "/r/a/u2/dovecot.index.log"]


def filled() -> DigestCache:
    cache = DigestCache()
    for path in FILES:
        cache.set(path, StreamingDigest(path.encode()))
    return cache


def cached(cache: DigestCache) -> set[str]:
    """The files whose digest the cache still held (the others it had to load)."""
    held = set()
    for path in FILES:
        loaded: list[str] = []
        cache.get(path, functools.partial(_load, loaded))
        if not loaded:
            held.add(path)
    return held


def _load(loaded: list[str]) -> bytes:
    loaded.append("read")
    return b""


def test_forgetting_a_file_keeps_every_other() -> None:
    cache = filled()
    cache.forget_tree("/r/a/u1/box1/dovecot.index.log")
    assert cached(cache) == set(FILES) - {"/r/a/u1/box1/dovecot.index.log"}


def test_forgetting_a_directory_forgets_all_below_and_no_sibling() -> None:
    cache = filled()
    cache.forget_tree("/r/a/u1/box1")
    assert cached(cache) == {"/r/a/u1/box10/dovecot.index.log", "/r/a/u1/box1.log",
                             "/r/a/u2/dovecot.index.log"}


def test_a_directory_emptied_file_by_file_is_not_walked_again() -> None:
    cache = filled()
    for path in FILES[:2]:
        cache.forget_tree(path)
    cache.set("/r/a/u1/box1", StreamingDigest(b"a file where the directory was"))
    cache.forget_tree("/r/a/u1/box1")
    assert len(cache) == len(FILES) - 2
    cache.forget_tree("/r/a")
    assert len(cache) == 0
