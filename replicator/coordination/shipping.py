"""What ownership changes in what this node sends: only its own users' directories, each batch
with the user's fencing token, nothing before it knows whose users are whose.

The daemon passes every numbered-to-be batch (a Draft) through `OwnedShipping.admit`; the
coordinator tells it of every new view (`learned`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from replicator.coordination.coordinator import Coordinator
from replicator.coordination.view import View, tokens
from replicator.delta.ops import Op, OpCode
from replicator.replica.tokens import TokenFence
from replicator.sender.batcher import Draft
from replicator.sender.outbox import Outbox


class OwnedShipping:
    def __init__(self, coordinator: Coordinator, outbox: Outbox, fence: TokenFence,
                 enqueue: Callable[[list[Draft]], None],
                 resync_users: Callable[[list[str]], None], counters: dict[str, int]) -> None:
        self.c, self.me, self.outbox, self.fence = coordinator, coordinator.me, outbox, fence
        self.enqueue, self.resync_users, self.counters = enqueue, resync_users, counters
        # Batches captured before the first view was read: they go out (with their users'
        # tokens, or not at all) once it is. None: nothing is held back any more.
        self.held: list[Draft] | None = []

    def admit(self, drafts: list[Draft]) -> list[Draft]:
        """The drafts this node may send: its own users' (stamped with their tokens) and the
        roots' own batches less what names another owner's users."""
        if self.held is not None:  # no view yet: whose users these are is not known
            self.held.extend(drafts)
            return []
        kept = []
        for draft in drafts:
            if not draft.user:
                draft.ops = self._own_entries_only(draft.ops)
            if draft.ops and self.c.ships(draft.user):
                draft.token = self.c.token(draft.user)
                kept.append(draft)
            else:
                self.counters["unowned_skipped"] += 1
        return kept

    def _own_entries_only(self, ops: list[Op]) -> list[Op]:
        """A root's own batch (directory "") names the user directories in it: a DELETE when
        one vanished, the names a resync keeps. Those of users another node owns are not
        this node's to touch on a peer: the coordinator moving a lost user aside here must
        not delete the copy a peer is promoting (or serving from) there."""
        others = {u for u, o in self.c.view.owners.items() if o.node != self.me}
        kept = []
        for op in ops:
            if op.code == OpCode.KEEP_ONLY:
                op = replace(op, names=tuple(sorted(set(op.names) | others)))
            elif op.path and not self.c.ships(op.path.partition("/")[0]):
                continue
            kept.append(op)
        return kept

    def learned(self, view: View) -> None:
        """A new view: the receiver learns its tokens; batches held back until the first view
        go out now; users this node owns that a peer refused under an older token (numbered
        before a claim) are resent whole."""
        self.fence.learn(tokens(view), view.revision)
        if self.held is not None:
            held, self.held = self.held, None
            self.enqueue(held)
        refused = set().union(*(c.fenced for c in self.outbox.cursors.values()))
        if stale := refused & set(view.owned_by(self.me)):
            self.outbox.forgive(stale)
            self.resync_users(sorted(stale))

    def peers_hold_everything(self) -> bool:
        """Every peer agreed on its position and acknowledged everything numbered so far,
        with nothing broken or refused."""
        last = self.outbox.next_seq - 1
        return all(c.synced and c.acked >= last and not c.broken and not c.fenced
                   for c in self.outbox.cursors.values())
