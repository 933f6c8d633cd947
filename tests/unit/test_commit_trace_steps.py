"""bench.commit_trace's arithmetic: rounds cut at the client's note, the usual order kept, a
step met twice in a round (an APPEND's two batches) listed twice with its own median."""

from __future__ import annotations

from pathlib import Path

from bench.commit_trace import rounds, steps


def test_a_step_met_twice_in_a_round_keeps_both_medians(tmp_path: Path) -> None:
    usual = [(0, "client: sent"), (10, "receiver: decoded"), (30, "receiver: applied"),
             (31, "receiver: decoded"), (71, "receiver: applied"), (80, "client: answered")]
    odd = [(0, "client: sent"), (5, "receiver: decoded"), (90, "client: answered")]
    notes = tmp_path / "all.notes"
    lines = [f"{1000 * (t + 1000 * n)} {label}" for n, r in enumerate([usual, usual, odd])
             for t, label in r]
    notes.write_text("\n".join(lines) + "\n")
    cut = rounds([notes], skip=0)
    assert len(cut) == 3
    order, medians, kept, whole = steps(cut)
    assert order == [label for _, label in usual]
    assert medians == [("client: sent -> receiver: decoded", 10.0),
                       ("receiver: decoded -> receiver: applied", 20.0),
                       ("receiver: applied -> receiver: decoded", 1.0),
                       ("receiver: decoded -> receiver: applied (again, 2)", 40.0),
                       ("receiver: applied -> client: answered", 9.0)]
    assert kept == 2 / 3 and whole == 80.0
