"""A short run of every fuzz target inside the normal test suite (`make fuzz` runs >= 1 M).

Fixed seeds, so a failure here reproduces; every input is measured (tracemalloc peak below
`targets.memory_bound()`), and any exception but the decoder's own ProtocolError fails.
"""

from __future__ import annotations

import pytest

from tests.fuzz.run import TARGET_NAMES, mutation_fuzz

SMOKE_INPUTS = 3000


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_fuzz_target_smoke(target: str) -> None:
    assert mutation_fuzz(target, SMOKE_INPUTS, seed=13) == SMOKE_INPUTS
