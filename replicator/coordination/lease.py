"""How long this node may still act as an owner: the lease as this node must believe it.

Pure arithmetic on a monotonic clock, no I/O. etcd counts a lease's TTL from when its leader
*received* a keep-alive; this node counts it from when the keep-alive was *sent*, which is
earlier, so the lease believed here always ends before the lease etcd enforces. Commits stop
`margin` before that (clock drift, a keep-alive answered late): by the time another node can
win ownership in etcd, this one has long stopped handing out UIDs (DESIGN §10).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LeaseClock:
    margin: float
    expires_at: float = 0.0     # monotonic seconds; 0: no lease yet
    lease_id: int = 0
    frozen_by_no_leader: bool = False  # the last extension came from a "no leader" answer

    def granted(self, lease_id: int, sent_at: float, ttl: float) -> None:
        """A new lease: valid `ttl` seconds from when its grant was sent."""
        self.lease_id, self.expires_at, self.frozen_by_no_leader = lease_id, sent_at + ttl, False

    def renewed(self, sent_at: float, ttl: float) -> None:
        """A keep-alive sent at `sent_at` was answered with `ttl` seconds (0: it had expired)."""
        if ttl <= 0:
            self.lost()
            return
        self.expires_at = max(self.expires_at, sent_at + ttl)
        self.frozen_by_no_leader = False

    def held_without_leader(self, sent_at: float, ttl: float) -> None:
        """`on_quorum_loss = keep`: a member answered that it has no leader. While no leader
        exists no lease can expire, and a newly elected leader renews every lease for a full
        TTL (etcd's lessor promotion), so nobody can take over before a keep-alive from here
        reaches the new leader or a full TTL after this answer passes."""
        self.expires_at = max(self.expires_at, sent_at + ttl)
        self.frozen_by_no_leader = True

    def lost(self) -> None:
        self.expires_at, self.lease_id = 0.0, 0

    def commit_deadline(self) -> float:
        """The last instant (monotonic) at which a commit may still be acknowledged."""
        return self.expires_at - self.margin if self.lease_id else 0.0

    def may_commit(self, now: float) -> bool:
        return now < self.commit_deadline()

    def remaining(self, now: float) -> float:
        return max(0.0, self.commit_deadline() - now)
