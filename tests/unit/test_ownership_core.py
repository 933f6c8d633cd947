"""The pure parts of ownership on etcd: the lease as this node must believe it, the view and
the decisions drawn from it, the receiver's fencing-token check, and [coordination] parsing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from replicator.config import load_config
from replicator.coordination.coordinator import Coordinator
from replicator.coordination.etcd import Entry
from replicator.coordination.keys import Keys
from replicator.coordination.lease import LeaseClock
from replicator.coordination.switchover import Request, done_here
from replicator.coordination.view import Owner, View
from replicator.errors import ConfigError
from replicator.replica.tokens import TokenFence
from replicator.wire.messages import STALE_OWNER, Batch
from tests.unit.test_config import GOOD, write


# -- the lease ------------------------------------------------------------------------------
def test_a_lease_counts_from_when_its_keepalive_was_sent_and_stops_a_margin_early() -> None:
    clock = LeaseClock(margin=1.0)
    assert not clock.may_commit(0.0)  # no lease yet: nothing may be acknowledged
    clock.granted(7, sent_at=100.0, ttl=5)
    assert clock.may_commit(103.9) and not clock.may_commit(104.0)
    clock.renewed(sent_at=102.0, ttl=5)  # answered late: still counts from 102, not from now
    assert clock.commit_deadline() == 106.0


def test_an_expired_or_lost_lease_allows_nothing() -> None:
    clock = LeaseClock(margin=0.5)
    clock.granted(7, 0.0, 5)
    clock.renewed(sent_at=3.0, ttl=0)  # etcd: the lease had expired
    assert not clock.may_commit(3.1) and clock.remaining(3.1) == 0.0


def test_a_late_answer_never_shortens_the_lease() -> None:
    clock = LeaseClock(margin=0.5)
    clock.granted(7, 10.0, 5)
    clock.renewed(sent_at=9.0, ttl=5)  # an older keep-alive's answer arriving last
    assert clock.commit_deadline() == 14.5


def test_no_leader_extends_only_under_the_keep_policy_helper() -> None:
    clock = LeaseClock(margin=0.5)
    clock.granted(7, 0.0, 2)
    clock.held_without_leader(sent_at=1.5, ttl=2)
    assert clock.frozen_by_no_leader and clock.may_commit(2.9) and not clock.may_commit(3.0)


# -- the view -------------------------------------------------------------------------------
def owner(node: str, token: int, **kw: str) -> Owner:
    return Owner(node, token, **kw)  # type: ignore[arg-type]


def test_view_decisions() -> None:
    view = View(10, frozenset({"a", "b"}), {"u1": owner("a", 3), "u2": owner("c", 4),
                                            "u3": owner("b", 5)})
    assert view.unclaimed({"u1", "u9"}) == ["u9"]
    assert view.orphaned("b") == {"c": {"u2": view.owners["u2"]}}
    assert set(view.lost("b", {"u1", "u3"})) == {"u1"}


def test_ready_only_once_the_owner_put_the_user_in_place() -> None:
    view = View(10, frozenset({"a", "b"}), {"u1": owner("b", 8), "u2": owner("b", 3)},
                pending={"b": (8, 9)})
    assert view.ready("u2") and not view.ready("u1")
    view.pending["b"] = (0, 10)
    assert view.ready("u1")
    view.pending["b"] = (0, 7)  # said before it became u1's owner: not about u1 yet
    assert not view.ready("u1") and view.ready("u2")
    assert not View(1, frozenset(), {"u1": owner("b", 8)}, {"b": (0, 9)}).ready("u1")  # gone


def test_keys_read_one_range_of_the_prefix() -> None:
    keys = Keys("/dr")
    entries = [Entry("/dr/nodes/a", b"{}", 2, 2),
               Entry("/dr/owners/u1", Owner("a", 0, why="claim").value().encode(), 5, 5),
               Entry("/dr/owners/bad", b"not json", 6, 6),
               Entry("/dr/serving/a", b'{"pending": 0}', 7, 7),
               Entry("/dr/switchover/x1", b"{}", 8, 8)]
    view, requests = keys.view(9, entries)
    assert view.alive == {"a"} and view.owners["u1"] == Owner("a", 5, why="claim")
    assert "bad" not in view.owners and view.pending == {"a": (0, 7)}
    assert [r.key for r in requests] == ["/dr/switchover/x1"]


def test_a_switchover_ends_on_the_new_owner_once_handed_and_every_user_is_in_place() -> None:
    """The new owner's promote may end before the old owner wrote "handed": the request is
    then ended by a later look, which must pick it up (CI once waited 120 s for it)."""
    tokens = {"u1": 7, "u2": 8}

    def request(ident: str, state: str, target: str, users: list[str]) -> Request:
        return Request(ident, "a", target, users, state)

    requests = [request("early", "requested", "b", ["u1"]),  # the old owner is still at it
                request("handed", "handed", "b", ["u1", "u2"]),
                request("partly", "handed", "b", ["u1", "u3"]),  # u3 not promoted yet
                request("elsewhere", "handed", "c", ["u1"]),
                request("over", "done", "b", ["u1"])]
    done = done_here(requests, "b", lambda user: tokens.get(user, 0))
    assert [r.ident for r in done] == ["handed"]


# -- the receiver's token check ---------------------------------------------------------------
def batch(directory: str, token: int) -> Batch:
    return Batch(1, "s", 1, "index", directory, token=token)


def test_a_batch_with_an_older_token_is_refused_and_counted() -> None:
    fence = TokenFence()
    fence.learn({"u1": 9})
    assert fence.refusal("a", batch("u1/mailboxes/INBOX", 9)) is None
    reason = fence.refusal("a", batch("u1/mailboxes/INBOX", 7))
    assert reason is not None and reason.startswith(STALE_OWNER)
    assert fence.refused == {"a": 1}


def test_tokens_only_grow_and_no_token_is_refused_only_after_a_real_one() -> None:
    fence = TokenFence()
    assert fence.refusal("a", batch("u1", 0)) is None  # no etcd anywhere: nothing to compare
    assert fence.refusal("b", batch("u1", 12)) is None
    fence.learn({"u1": 4})  # an older view arriving late does not lower it
    assert fence.newest["u1"] == 12
    assert fence.refusal("a", batch("u1", 0)) is not None
    assert fence.refusal("a", batch("", 0)) is None  # root-level files belong to no user


def test_a_peer_cannot_poison_a_user_with_a_token_from_the_future() -> None:
    fence = TokenFence()
    fence.learn({"u1": 9}, revision=20)  # this node's view of etcd is at revision 20
    assert fence.refusal("evil", batch("u1", 2**63 - 1)) is None  # accepted, not remembered
    assert fence.refusal("a", batch("u1", 9)) is None  # the real owner is not locked out
    assert fence.refusal("a", batch("u1", 15)) is None and fence.newest["u1"] == 15
    fence.learn({}, revision=40)
    assert fence.refusal("b", batch("u1", 30)) is None
    assert fence.refusal("a", batch("u1", 15)) is not None  # 30 is confirmed possible now


def test_owner_keys_that_are_no_user_directory_are_ignored() -> None:
    keys = Keys("/dr")
    value = Owner("a", 0).value().encode()
    entries = [Entry(f"/dr/owners/{name}", value, 5, 5)
               for name in ("u1", "..", "../../etc", ".hidden", "a/b", "x\x00y", "")]
    view, _ = keys.view(6, entries)
    assert list(view.owners) == ["u1"]


# -- [coordination] -----------------------------------------------------------------------------
COORD = GOOD + """
[coordination]
endpoints = ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
"""


def test_coordination_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, COORD))
    assert config.coordination is not None
    assert config.coordination.lease_ttl == 5 and config.coordination.margin == 1.0
    assert config.coordination.on_quorum_loss == "stop" and config.coordination.takeover
    assert load_config(write(tmp_path, GOOD)).coordination is None


@pytest.mark.parametrize(("extra", "message"), [
    ("endpoints = []", "non-empty list of etcd client URLs"),
    ('endpoints = ["127.0.0.1:2379"]', "is not an etcd client URL"),
    ('endpoints = ["http://e:2379"]\nlease_ttl = 1', "at least 2"),
    ('endpoints = ["http://e:2379"]\nlease_ttl = 2\nmargin = 1.0', "under half of lease_ttl"),
    ('endpoints = ["http://e:2379"]\nmargin = 0.5\nrequest_timeout = 0.5', "under margin"),
    ('endpoints = ["http://e:2379"]\non_quorum_loss = "maybe"', "not one of stop, keep"),
    ('endpoints = ["http://e:2379"]\ntakeover = "yes"', "must be true or false"),
    ('endpoints = ["http://e:2379"]\nprefix = "x"', "must start with '/'"),
    ('endpoints = ["http://e:2379"]\nttl = 5', "unknown key"),
])
def test_bad_coordination_is_one_clear_error(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, GOOD + "[coordination]\n" + extra + "\n"))


# -- the commit gate (no etcd: lease and view set in memory) ------------------------------------
def test_the_commit_gate(tmp_path: Path) -> None:
    coordinator = Coordinator(load_config(write(tmp_path, COORD)))
    assert "no valid ownership lease" in str(coordinator.refuse_commit({"u1"}))
    coordinator.lease.granted(7, time.monotonic(), 5)
    assert "not read from etcd yet" in str(coordinator.refuse_commit({"u1"}))
    coordinator.view = View(3, frozenset({"a", "b"}), {"u1": owner("a", 3), "u2": owner("b", 4),
                                                        "u3": owner("a", 5, origin="b")})
    coordinator._view_lease = 7
    coordinator.owned.record({"u1": 3})
    assert coordinator.refuse_commit({"u1"}) is None
    assert "owned by b (token 4)" in str(coordinator.refuse_commit({"u1", "u2"}))
    assert "being promoted" in str(coordinator.refuse_commit({"u3"}))
    assert "no owner yet" in str(coordinator.refuse_commit({"u9"}))
    coordinator.blocked["u1"] = "being handed over to b"
    assert "handed over" in str(coordinator.refuse_commit({"u1"}))
    assert coordinator.ships("u1") and not coordinator.ships("u2") and coordinator.ships("u9")
    assert coordinator.token("u1") == 3 and coordinator.token("u2") == 0
    coordinator.lease.lost()
    assert "no valid ownership lease" in str(coordinator.refuse_commit({"u1"}))
