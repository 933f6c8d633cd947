"""The daemon's side of ownership: keep the lease, follow the view, gate every commit.

Two loops: one keeps the lease alive (a keep-alive every third of the TTL, on a thread of its
own); the other reads the ownership view every tick when etcd's revision moved and lets
`Actions` act on it (claim, take over, promote what was handed over, give up what was lost,
run switchovers). Commits ask
`refuse_commit`, which costs a dictionary lookup and a clock read, never an etcd round trip:
while this node holds its lease without a gap, no other node can change its users' owner
(a takeover needs the lease gone, a switchover is started by this node), so the view read
after the lease was (re)acquired stays true until the lease's commit deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from replicator.config import Config
from replicator.coordination.etcd import Etcd, EtcdUnavailable
from replicator.coordination.keys import Keys
from replicator.coordination.lease import LeaseClock
from replicator.coordination.owned import OwnedRecord
from replicator.coordination.view import View
from replicator.coordination.watch import WATCHED_POLL, Watch

if TYPE_CHECKING:
    from replicator.coordination.actions import Actions

log = logging.getLogger("replicator.coordination")
TICK = 0.2  # seconds between looks at etcd's revision while no watch stream is open
T = TypeVar("T")


class Coordinator:
    def __init__(self, config: Config) -> None:
        assert config.coordination is not None
        self.config, self.settings = config, config.coordination
        self.me = config.node_id
        self.etcd = Etcd(self.settings)
        self._lease_etcd = Etcd(self.settings)  # the lease loop's own sessions and thread
        self._lease_thread = ThreadPoolExecutor(1, thread_name_prefix="etcd-lease")
        self.keys = Keys(self.settings.prefix)
        self.watch = Watch(self.settings, self.keys.all, self.poke)
        self.lease = LeaseClock(self.settings.margin)
        self.view = View()
        self.requests: list[Any] = []
        self.owned = OwnedRecord(config.state_dir / "owned.json")
        self.blocked: dict[str, str] = {}   # user -> why its commits are refused for now
        self.counters = {"keepalives": 0, "keepalive_failures": 0, "leases_granted": 0,
                         "commits_refused": 0, "claims": 0, "takeovers": 0, "handovers": 0,
                         "lost": 0}
        self.state, self.last_error = "starting", ""
        self._view_lease = 0            # the lease the current view was read under
        self._next_keepalive = 0.0
        self.config_peers = [p.id for p in config.peers]
        self.peers_hold_everything: Callable[[], bool] = lambda: False  # set by the daemon
        self._changed = asyncio.Event()
        self.actions: Actions | None = None

    # -- the loops --------------------------------------------------------------------------
    async def run(self) -> None:
        """Two loops: the lease's keep-alives, on a thread and an etcd session of their own,
        so that nothing the view loop does (promoting 1 000 users, kicking their sessions)
        and no other worker thread can delay them; and the view loop, which acts."""
        lease = asyncio.create_task(self._lease_loop(), name="ownership-lease")
        self.watch.start(asyncio.get_running_loop())
        try:
            await self._view_loop()
        finally:
            self.watch.stop()
            lease.cancel()
            await asyncio.gather(lease, return_exceptions=True)
            self._lease_thread.shutdown(wait=False, cancel_futures=True)

    async def _lease_loop(self) -> None:
        while True:
            try:
                await self._keep_lease()
            except EtcdUnavailable as exc:
                self._unavailable(exc)
            except Exception:
                log.exception("keeping the ownership lease failed; trying again")
            due = self._next_keepalive - time.monotonic() if self.lease.lease_id else TICK
            await asyncio.sleep(min(max(due, 0.01), TICK))

    async def _view_loop(self) -> None:
        while True:
            try:
                if self.lease.lease_id:
                    await self._look()
            except EtcdUnavailable as exc:
                self._unavailable(exc)
            except Exception:
                log.exception("coordination step failed; trying again")
            try:  # a watch event, a poke, or the poll: fast while no watch stream is open
                async with asyncio.timeout(WATCHED_POLL if self.watch.open else TICK):
                    await self._changed.wait()
            except TimeoutError:
                pass
            self._changed.clear()

    async def _on_lease_thread(self, job: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._lease_thread, job, *args)

    def poke(self) -> None:
        """Look at etcd now rather than at the next tick (a FLUSH for an unclaimed user)."""
        self._changed.set()

    async def _look(self) -> None:
        revision = await asyncio.to_thread(self.etcd.revision, self.keys.all)
        if revision != self.view.revision or self._view_lease != self.lease.lease_id:
            await self.refresh()
        if self.actions is not None and self.lease.may_commit(time.monotonic()):
            await self.actions.act()

    async def refresh(self) -> None:
        lease = self.lease.lease_id
        revision, entries = await asyncio.to_thread(self.etcd.range_prefix, self.keys.all)
        if revision < self.view.revision and self._view_lease == lease:
            return  # two reads crossed (a FLUSH's and the loop's): keep the newer one
        self.view, self.requests = self.keys.view(revision, entries)
        self._view_lease = lease
        if self.actions is not None:
            self.actions.learned(self.view)

    async def _keep_lease(self) -> None:
        now = time.monotonic()
        if not self.lease.lease_id or now >= self.lease.expires_at:
            await self._new_lease()
        elif now >= self._next_keepalive:
            try:
                ttl, sent_at = await self._on_lease_thread(self._lease_etcd.keepalive,
                                                           self.lease.lease_id)
            except EtcdUnavailable as exc:
                self.counters["keepalive_failures"] += 1
                if self.settings.on_quorum_loss == "keep" and (
                        exc.no_leader or await self._on_lease_thread(
                            self._lease_etcd.without_leader)):
                    self.lease.held_without_leader(exc.sent_at, self.settings.lease_ttl)
                    raise EtcdUnavailable(str(exc), no_leader=True) from exc
                raise
            self.counters["keepalives"] += 1
            self.lease.renewed(sent_at, ttl)
            if not ttl:
                log.warning("ownership lease expired before it could be renewed (this node "
                            "was cut off from etcd); getting a new one")
                await self._new_lease()
                return
            self._next_keepalive = sent_at + self.settings.keepalive_interval
        if self.state != "ok":
            log.info("etcd reachable%s; commits may be acknowledged for %.1f s", "" if
                     self.state == "starting" else " again", self.lease.remaining(now))
            self.state, self.last_error = "ok", ""

    async def _new_lease(self) -> None:
        self.lease.lost()
        lease_id, ttl, sent_at = await self._on_lease_thread(self._lease_etcd.grant,
                                                             self.settings.lease_ttl)
        await self._on_lease_thread(self._lease_etcd.put, self.keys.node(self.me),
                                    f'{{"listen": "{self.config.listen}"}}', lease_id)
        self.lease.granted(lease_id, sent_at, ttl)
        self.counters["leases_granted"] += 1
        self.poke()  # the view loop reads the view under this lease at once
        self._next_keepalive = sent_at + self.settings.keepalive_interval
        log.info("ownership lease %x granted for %d s", lease_id, ttl)

    def _unavailable(self, exc: EtcdUnavailable) -> None:
        state = "no-leader" if exc.no_leader else "unreachable"
        if state != self.state:
            remaining = self.lease.remaining(time.monotonic())
            log.warning("etcd %s (%s); commits stop in %.1f s unless it answers", state, exc,
                        remaining)
        self.state, self.last_error = state, str(exc)

    # -- what the rest of the daemon asks -----------------------------------------------------
    async def admit(self, users: set[str]) -> str | None:
        """Why a commit touching `users` may not be acknowledged, or None. A user nobody owns
        yet (its first mail on this node) is claimed here first: one etcd transaction on the
        first commit of a user, none after."""
        try:
            if self.lease.may_commit(time.monotonic()) and \
                    self._view_lease != self.lease.lease_id:
                await self.refresh()  # a lease just (re)granted: read the view now
            unclaimed = [u for u in users if self.view.owner(u) is None]
            if unclaimed and self.actions is not None and self._lease_and_view_ok():
                await self.actions.claim_now(sorted(unclaimed))
        except EtcdUnavailable as exc:
            self._unavailable(exc)
        return self.refuse_commit(users)

    def _lease_and_view_ok(self) -> bool:
        return self.lease.may_commit(time.monotonic()) and \
            self._view_lease == self.lease.lease_id

    def refuse_commit(self, users: set[str]) -> str | None:
        """Why a commit touching `users` may not be acknowledged now, or None."""
        reason = self._refusal(users)
        if reason is not None:
            self.counters["commits_refused"] += 1
        return reason

    def _refusal(self, users: set[str]) -> str | None:
        if not self.lease.may_commit(time.monotonic()):
            return (f"this node holds no valid ownership lease (etcd {self.state}"
                    + (f": {self.last_error}" if self.last_error else "") + ")")
        if self._view_lease != self.lease.lease_id:
            return "ownership not read from etcd yet under the current lease"
        for user in sorted(users):
            owner = self.view.owner(user)
            if owner is None:
                self.poke()
                return f"{user} has no owner yet (claiming it now; try again)"
            if owner.node != self.me:
                return f"{user} is owned by {owner.node} (token {owner.token}), not {self.me}"
            if user in self.blocked:
                return f"{user}: {self.blocked[user]}"
            if self.owned.token(user) != owner.token:
                return f"{user} is being promoted on {self.me}"
        return None

    async def quorum(self, configured: int, peers: list[str]) -> int:
        """Acks a sync commit waits for: with quorum_counts = "live", peers without a lease
        (down, or cut off: they cannot commit either) are not waited for. Before the first
        such commit is acknowledged, etcd records that this node commits alone (alone/<id>):
        from then on no peer takes its users over by itself, since its copy may lack them."""
        if self.settings.quorum_counts != "live":
            return configured
        live = sum(1 for peer in peers if peer in self.view.alive)
        if live >= configured:
            return configured
        if self.me not in self.view.alone:
            try:
                await asyncio.to_thread(self.etcd.put, self.keys.alone(self.me),
                                        f'{{"since": {time.time()}, "acks": {live}}}')
                await self.refresh()
            except EtcdUnavailable as exc:
                self._unavailable(exc)
                return configured  # unrecorded: keep waiting for the configured quorum
            log.warning("only %d of the %d peer(s) a sync commit waits for hold a lease: "
                        "committing with %d ack(s) until they are back (recorded in etcd: "
                        "no automatic takeover of this node's users meanwhile)", live,
                        configured, live)
        return live

    async def caught_up(self, peers_hold_everything: bool) -> None:
        """Called by the view loop: once every peer holds everything again, this node's
        copies are whole and automatic takeovers of its users may resume."""
        if self.me in self.view.alone and peers_hold_everything and \
                all(peer in self.view.alive for peer in self.config_peers):
            await asyncio.to_thread(self.etcd.delete, self.keys.alone(self.me))
            log.warning("every peer holds everything again: committing with the configured "
                        "quorum, automatic takeover of this node's users possible again")
            await self.refresh()

    def serves_elsewhere(self, user: str) -> str | None:
        """Why `user` must not be served here at all (its Dovecot refuses the login), or None.
        Only a positive answer counts: another node owns the user, or this node owns it but
        is still promoting it (a session opened now would meet no index and rebuild one over
        the shared storage). Without a lease or a view the answer is None; reads then go on,
        commits are refused anyway."""
        owner = self.view.owner(user)
        if owner is None:
            return None
        if owner.node == self.me:
            if self.owned.token(user) == owner.token or not owner.origin:
                return None  # in place (or a claim: nothing to put in place)
            return f"{user} is being put in place on {self.me} (token {owner.token}); retry"
        return f"{user} is served by {owner.node} (token {owner.token}), not by {self.me}"

    def commit_deadline(self) -> float:
        return self.lease.commit_deadline()

    def ships(self, user: str) -> bool:
        """Whether this node replicates `user`'s directories (not if another node owns it)."""
        owner = self.view.owner(user)
        return owner is None or owner.node == self.me or not user

    def token(self, user: str) -> int:
        owner = self.view.owner(user)
        return owner.token if owner is not None and owner.node == self.me else 0

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        mine = self.view.owned_by(self.me)
        serving = sorted(u for u, o in mine.items()
                         if self.owned.token(u) == o.token and u not in self.blocked)
        return {"serving_users": len(serving), "serving": serving[:200], "state": self.state,
                "last_error": self.last_error,
                "lease_id": f"{self.lease.lease_id:x}", "commit_window_s":
                round(self.lease.remaining(now), 3), "may_commit": self.lease.may_commit(now),
                "revision": self.view.revision, "alive": sorted(self.view.alive),
                "committing_alone": self.me in self.view.alone,
                "alone": sorted(self.view.alone),
                "owned_users": len(mine), "owners": {u: {"node": o.node, "token": o.token}
                                                     for u, o in sorted(self.view.owners.items())
                                                     [:200]},
                "blocked": dict(self.blocked), "counters": dict(self.counters)}
