"""`bench.baselines.sync_hops`, the goal table's floor for a sync commit's overhead, is not
run by `make test` otherwise: run it briefly, timing nothing."""

from __future__ import annotations

import multiprocessing

from bench import baselines


def test_the_four_hops_floor_measures_every_round_and_leaves_no_process() -> None:
    rounds = baselines.sync_hops(25)
    assert len(rounds) == 25
    assert all(seconds > 0 for seconds in rounds)
    assert multiprocessing.active_children() == []
