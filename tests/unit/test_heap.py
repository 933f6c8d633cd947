"""The daemon's garbage-collection policy (replicator.heap): what survives is frozen, so that no
collection walks it again; a tick freezes without walking anything; a settle, once the process
has grown, unfreezes first, so a cycle that became garbage after it was frozen is still
reclaimed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from replicator import heap


class Node:
    """A reference cycle (it points at itself), observable through a weak reference."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the test process as it was


@pytest.fixture
def full_passes() -> Iterator[list[int]]:
    """The generation of every collection that starts (2: a full one)."""
    started: list[int] = []

    def noted(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(noted)
    yield started
    gc.callbacks.remove(noted)


def test_what_survives_a_settle_is_walked_by_no_collection() -> None:
    kept = [Node()]
    frozen = heap.settle()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects()), "still in a generation collections walk"


def test_a_tick_freezes_without_a_collection(full_passes: list[int]) -> None:
    policy = heap.HeapPolicy()
    policy.start()
    before = gc.get_freeze_count()
    full_passes.clear()
    born = [[n] for n in range(1000)]  # tracked lists, alive across the tick
    policy.tick()
    assert 2 not in full_passes and policy.settles == 1
    assert gc.get_freeze_count() >= before + len(born)


def test_a_cycle_that_died_frozen_is_reclaimed_once_the_process_grew(
        monkeypatch: pytest.MonkeyPatch) -> None:
    size = [100_000]  # KiB
    monkeypatch.setattr(heap, "peak_size", lambda: size[0])
    policy = heap.HeapPolicy()
    cycle = Node()
    dead = weakref.ref(cycle)
    policy.start()  # frozen while alive
    del cycle
    gc.collect()
    assert dead() is not None, "frozen: collections do not see it"
    size[0] = int(100_000 * heap.GROWTH)  # grown, but not by more than GROWTH
    policy.tick()
    assert dead() is not None and policy.settles == 1
    size[0] += 1
    policy.tick()
    assert policy.settles == 2 and policy.settled_size == size[0]
    assert dead() is None, "the settle unfreezes before it collects"
