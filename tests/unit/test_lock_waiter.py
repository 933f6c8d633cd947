"""LockWaiter: a wait ends when Dovecot lets go of the lock, or, with a patience, once the lock
has been held that long, the lock still held (a log is then read past it:
capture.snapshot.LOCK_PATIENCE)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from replicator.capture.locks import LockWaiter, try_read_lock
from tests.unit.lock_holder import held_lock


def _lockable(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return try_read_lock(fd)
    finally:
        os.close(fd)


def test_a_patient_wait_ends_while_the_lock_is_still_held(tmp_path: Path) -> None:
    log = tmp_path / "dovecot.index.log"
    log.write_bytes(b"log")

    async def scenario() -> None:
        ended = asyncio.Event()
        with held_lock(log):
            assert LockWaiter().wait(str(log), ended.set, patience=0.001)
            async with asyncio.timeout(10):
                await ended.wait()
            assert not _lockable(log)
        assert _lockable(log)

    asyncio.run(scenario())


def test_a_wait_without_patience_ends_when_the_lock_is_released(tmp_path: Path) -> None:
    cache = tmp_path / "dovecot.index.cache"
    cache.write_bytes(b"cache")

    async def scenario() -> None:
        ended = asyncio.Event()
        with held_lock(cache):
            assert LockWaiter().wait(str(cache), ended.set)
        async with asyncio.timeout(10):
            await ended.wait()

    asyncio.run(scenario())
