"""What etcd says about ownership, and the decisions that follow from it: pure, no I/O.

Keys (below the configured prefix):
    nodes/<id>     a node's presence, bound to its lease: gone when the lease expires
    owners/<user>  JSON {"node", "from", "why", "time"}, bound to no lease: ownership outlives
                   its owner, so a takeover is a decision (compare its revision), never a race
                   to recreate a vanished key
    switchover/<id>  a planned handover asked for by `dovecot-replicator switchover`
    alone/<id>     bound to no lease: written by a node before it acknowledges a commit that
                   fewer than sync_quorum peers hold (quorum_counts = "live", its peers have
                   no lease), deleted once they hold everything again. While it exists no
                   other node takes the node's users over automatically: their copies may
                   lack changes a client was told about

A user's fencing token is the etcd mod revision of its owner key: every change of owner
raises it, and etcd revisions only grow, so "older token" means "an owner that has since been
replaced". One lease per node (not per user) keeps 10 000 users at one keep-alive.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Owner:
    node: str
    token: int              # mod revision of the owner key
    origin: str = ""        # for a takeover or handover: whose replica the new owner promoted
    why: str = "claim"      # claim | failover | switchover
    time: float = 0.0
    tree: str = ""          # failover: digest of the replica promoted (coordination.trees)

    def value(self) -> str:
        return json.dumps({"node": self.node, "from": self.origin, "why": self.why,
                           "time": self.time, "tree": self.tree}, sort_keys=True)

    @classmethod
    def parse(cls, raw: bytes | str, token: int) -> Owner | None:
        try:
            data: Any = json.loads(raw)
            return cls(str(data["node"]), token, str(data.get("from", "")),
                       str(data.get("why", "claim")), float(data.get("time", 0.0)),
                       str(data.get("tree", "")))
        except (ValueError, KeyError, TypeError):
            return None  # not ours: someone wrote below our prefix by hand


@dataclass
class View:
    revision: int = 0
    alive: frozenset[str] = frozenset()
    owners: dict[str, Owner] = field(default_factory=dict)
    # node -> (lowest token among the users it owns but has not put in place yet, 0: none;
    # the revision at which it said so)
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)
    # nodes that acknowledged commits with fewer acks than sync_quorum since their peers were
    # last all caught up: a replica of them may lack acknowledged changes
    alone: frozenset[str] = frozenset()

    def owner(self, user: str) -> Owner | None:
        return self.owners.get(user)

    def ready(self, user: str) -> bool:
        """Whether `user`'s owner is alive and has put the user in place (promoted it): only
        then may clients be sent there."""
        owner = self.owners.get(user)
        if owner is None or owner.node not in self.alive or owner.node not in self.pending:
            return False
        pending, said_at = self.pending[owner.node]
        # said before it became the owner: it has not spoken about this user yet
        return said_at > owner.token and (pending == 0 or owner.token < pending)

    def owned_by(self, node: str) -> dict[str, Owner]:
        return {u: o for u, o in self.owners.items() if o.node == node}

    def unclaimed(self, users: Iterable[str]) -> list[str]:
        """Users this node holds that no node owns yet (a first start, a new mailbox user)."""
        return sorted(u for u in users if u not in self.owners)

    def orphaned(self, me: str) -> dict[str, dict[str, Owner]]:
        """Owner node -> its users, for owners whose lease is gone (dead, or cut off)."""
        result: dict[str, dict[str, Owner]] = {}
        for user, owner in self.owners.items():
            if owner.node != me and owner.node not in self.alive:
                result.setdefault(owner.node, {})[user] = owner
        return result

    def lost(self, me: str, local_users: Iterable[str]) -> dict[str, Owner]:
        """Users this node still holds in its roots though another node owns them."""
        return {u: o for u in local_users if (o := self.owners.get(u)) and o.node != me}


def tokens(view: View) -> Mapping[str, int]:
    return {user: owner.token for user, owner in view.owners.items()}
