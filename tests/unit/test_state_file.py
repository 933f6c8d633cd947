"""The receiver's position file, rewritten in place (replica.state.InPlaceJson)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from replicator.replica.state import IN_PLACE_MAX, AppliedState, InPlaceJson, load_json
from replicator.testing.tmpfs import fill, small_tmpfs

ROOT = Path(__file__).resolve().parents[2]


def test_a_shorter_state_leaves_nothing_of_a_longer_one(tmp_path: Path) -> None:
    path = tmp_path / ".applied.json"
    state = InPlaceJson(path)
    state.save({"why": {"index\0u1/box": "x" * 300}, "seq": 1})
    state.save({"seq": 2})
    assert load_json(path) == {"seq": 2}
    assert AppliedState.load(path).seq == 2


def test_one_file_rewritten_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / ".applied.json"
    state = InPlaceJson(path)
    state.save({"seq": 1})
    inode = os.stat(path).st_ino
    state.save({"seq": 2})
    assert os.stat(path).st_ino == inode and load_json(path) == {"seq": 2}


def test_a_state_too_big_for_one_step_is_replaced_and_small_ones_go_back_in_place(
        tmp_path: Path) -> None:
    path = tmp_path / ".applied.json"
    state = InPlaceJson(path)
    state.save({"seq": 1})
    big = {"broken": {f"index\0u{i}/box": i for i in range(IN_PLACE_MAX // 10)}, "seq": 2}
    state.save(big)
    assert load_json(path) == big and os.path.getsize(path) > IN_PLACE_MAX
    state.save({"seq": 3})
    assert load_json(path) == {"seq": 3} and os.path.getsize(path) <= IN_PLACE_MAX
    again = InPlaceJson(path)  # a restarted receiver finds a small file and keeps it
    again.save({"seq": 4})
    assert load_json(path) == {"seq": 4}


def test_a_file_removed_under_it_is_written_anew(tmp_path: Path) -> None:
    path = tmp_path / ".applied.json"
    state = InPlaceJson(path)
    state.save({"seq": 1})
    path.unlink()
    state.save({"seq": 2})
    assert load_json(path) == {"seq": 2}


def test_a_damaged_file_is_an_error_not_an_empty_state(tmp_path: Path) -> None:
    path = tmp_path / ".applied.json"
    path.write_bytes(b'{"seq": 7, "str')
    with pytest.raises(json.JSONDecodeError):
        load_json(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_the_position_is_still_recorded_on_a_full_filesystem(tmp_path: Path) -> None:
    """A rename needed a new file, which a full tmpfs refuses; a rewrite in place needs no
    new space, so the receiver can still record how far it got."""
    with small_tmpfs(tmp_path / "ram", "64k") as mount:
        path = mount / ".applied.json"
        state = InPlaceJson(path)
        state.save(AppliedState("s", 1, 1).as_json())
        fill(mount)
        with pytest.raises(OSError):
            (mount / "another").write_bytes(b"x" * 8192)
        state.save(AppliedState("s", 2, 1).as_json())
        assert AppliedState.load(path).seq == 2


WRITER = """
import sys
from pathlib import Path
from replicator.replica.state import InPlaceJson
state = InPlaceJson(Path(sys.argv[1]))
seq = 0
while True:
    seq += 1
    # lengths vary, so a torn rewrite would leave a longer state's end behind a shorter one
    state.save({"seq": seq, "why": {"index\\u0000u1/box": "x" * (seq * 37 % 900)}})
    if seq % 500 == 0:
        print(seq, flush=True)
"""


def test_a_kill_9_never_leaves_a_state_half_written(tmp_path: Path) -> None:
    """The receiver's claim (one page rewritten in one step): a writer killed at arbitrary
    points of its rewrite loop, 20 times, always leaves a state that parses whole."""
    path = tmp_path / ".applied.json"
    last = 0
    for _ in range(20):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                  stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert writer.stdout is not None
        written = int(writer.stdout.readline())
        writer.kill()
        writer.wait()
        state = load_json(path)
        assert state["seq"] >= written and set(state) == {"seq", "why"}
        assert len(state["why"]["index\0u1/box"]) == state["seq"] * 37 % 900
        last = state["seq"]
    assert last > 0
