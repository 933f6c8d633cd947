"""What this node does about the ownership view: claim its new users, take over a dead owner's
users, put in place what it was given, and give up what it lost.

Every ownership change is an etcd transaction that compares revisions, so two nodes acting on
the same view cannot both win; whatever follows a won transaction (promote, kick, quarantine)
runs in worker threads while the coordinator keeps the lease alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from replicator.coordination.etcd import MAX_TXN_KEYS, Compare
from replicator.coordination.local import kick, local_users, run_hook, set_aside
from replicator.coordination.trees import user_digest
from replicator.coordination.view import Owner, View
from replicator.promote.command import promote
from replicator.verify.runner import verify_replica

if TYPE_CHECKING:
    from replicator.coordination.coordinator import Coordinator
    from replicator.coordination.switchover import Handovers

log = logging.getLogger("replicator.coordination")
LOCAL_SCAN_INTERVAL = 2.0


def chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), MAX_TXN_KEYS):
        yield items[start:start + MAX_TXN_KEYS]


class Actions:
    def __init__(self, coordinator: Coordinator, learn_tokens: Callable[[View], None],
                 forgive: Callable[[set[str]], None]) -> None:
        self.c, self.config = coordinator, coordinator.config
        self.learn_tokens, self.forgive = learn_tokens, forgive
        self.local: set[str] = set()
        self.busy: set[str] = set()        # users being promoted or handed over right now
        self.diverged: dict[str, str] = {}  # user -> where its diverged copy was put
        self.handovers: Handovers | None = None
        # Sends users' directories whole to every peer (the daemon's resync); set by it.
        self.resync_users: Callable[[list[str]], object] = lambda users: None
        self._scanned = 0.0
        self._noted: dict[str, str] = {}   # once-only log lines (takeovers not possible)
        self._tasks: set[asyncio.Task[None]] = set()

    def learned(self, view: View) -> None:
        self.learn_tokens(view)

    async def act(self) -> None:
        now = time.monotonic()
        if now - self._scanned >= LOCAL_SCAN_INTERVAL:
            self.local = await asyncio.to_thread(local_users, self.config.roots)
            self._scanned = now
        view = self.c.view
        if await self._claim(view.unclaimed(self.local - self.busy)):
            return
        self._adopt_claims(view)
        if self.c.settings.takeover:
            for origin, users in view.orphaned(self.c.me).items():
                if await self._take_over(origin, users):
                    return
        self._materialize(view)
        await self._give_up(view)
        if self.handovers is not None:
            await self.handovers.act(view)
        await self._publish_pending(view)
        await self.c.caught_up(self.c.peers_hold_everything())

    async def _publish_pending(self, view: View) -> None:
        """Tell etcd (serving/<node>, bound to the lease) which of this node's users are in
        place, so `owner` and proxies send clients here only once the promote is done."""
        mine = view.owned_by(self.c.me)
        pending = min((o.token for u, o in mine.items() if self.c.owned.token(u) != o.token),
                      default=0)
        said, said_at = view.pending.get(self.c.me, (-1, 0))
        newest = max((o.token for o in mine.values()), default=0)
        if said != pending or said_at < newest:  # also: say it again for users gained since
            await asyncio.to_thread(self.c.etcd.put, self.c.keys.serving(self.c.me),
                                    f'{{"pending": {pending}}}', self.c.lease.lease_id)
            await self.c.refresh()

    def spawn(self, job: Callable[[], object], name: str) -> None:
        async def guarded() -> None:
            try:
                result = job()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("%s failed", name)
        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- claim: users that appear here and nobody owns -----------------------------------------
    async def _claim(self, users: list[str]) -> bool:
        if not users:
            return False
        keys = self.c.keys
        for chunk in chunks(users):
            owner = Owner(self.c.me, 0, why="claim", time=time.time())
            ok, revision = await asyncio.to_thread(
                self.c.etcd.txn, [Compare(keys.owner(u), "CREATE", 0) for u in chunk],
                [(keys.owner(u), owner.value()) for u in chunk])
            if ok:
                self.c.counters["claims"] += len(chunk)
                log.info("claimed %d user(s) at revision %d: %s", len(chunk), revision,
                         ", ".join(chunk[:10]))
                self.spawn(self._hook("claim", "", chunk), "on-owner-change")
        await self.c.refresh()
        return True

    async def claim_now(self, users: list[str]) -> None:
        await self._claim(users)
        self._adopt_claims(self.c.view)

    def _adopt_claims(self, view: View) -> None:
        fresh = {u: o.token for u, o in view.owned_by(self.c.me).items()
                 if not o.origin and self.c.owned.token(u) != o.token and u not in self.busy}
        if fresh:
            self.c.owned.record(fresh)

    # -- failover: the owner's lease expired ------------------------------------------------------
    async def _take_over(self, origin: str, owners: dict[str, Owner]) -> bool:
        if origin in self.c.view.alone:
            self._note(origin, f"{origin}'s lease expired, but it acknowledged commits that no "
                       "peer may hold (it committed alone, its peers had no lease): not taking "
                       f"its {len(owners)} user(s) over automatically. Bring {origin} back, or "
                       "check what this node's copy lacks and `promote --force`")
            return False
        replica = self.config.replica_root(origin)
        present = sorted(u for u in owners
                         if any((replica / root / u).is_dir() for root in self.config.roots))
        if not present:
            self._note(origin, f"{origin}'s lease expired; none of its {len(owners)} user(s) has "
                       "a replica here, so this node cannot take them over")
            return False
        report = await asyncio.to_thread(verify_replica, replica, sorted(self.config.roots))
        if report.errors or report.differences:
            self._note(origin, f"{origin}'s lease expired but this node's replica of it fails "
                       f"verification ({len(report.differences)} difference(s), "
                       f"{len(report.errors)} error(s)): not taking over its users")
            return False
        bases = {root: replica / root for root in self.config.roots}
        trees = await asyncio.to_thread(lambda: {u: user_digest(bases, u) for u in present})
        won: list[str] = []
        keys = self.c.keys
        for chunk in chunks(present):
            # its lease gone, and no record that it committed alone (read with the view, but
            # a transaction is what makes it certain)
            compares = [Compare(keys.node(origin), "CREATE", 0),
                        Compare(keys.alone(origin), "CREATE", 0)]
            compares += [Compare(keys.owner(u), "MOD", owners[u].token) for u in chunk]
            puts = [(keys.owner(u), Owner(self.c.me, 0, origin, "failover", time.time(),
                                          trees[u]).value()) for u in chunk]
            ok, _ = await asyncio.to_thread(self.c.etcd.txn, compares, puts)
            if ok:
                won += chunk
        if won:
            self.c.counters["takeovers"] += len(won)
            log.warning("%s's lease expired: took over %d user(s) (%s); promoting them",
                        origin, len(won), ", ".join(won[:10]))
        self._noted.pop(origin, None)
        await self.c.refresh()
        return True

    def _note(self, origin: str, message: str) -> None:
        if self._noted.get(origin) != message:
            self._noted[origin] = message
            log.warning("%s", message)

    # -- put in place what this node now owns -------------------------------------------------
    def _materialize(self, view: View) -> None:
        todo: dict[tuple[str, str], dict[str, int]] = {}
        for user, owner in view.owned_by(self.c.me).items():
            if owner.origin and self.c.owned.token(user) < owner.token and user not in self.busy:
                todo.setdefault((owner.origin, owner.why), {})[user] = owner.token
        for (origin, why), tokens in todo.items():
            self.busy |= set(tokens)
            self.spawn(self._promoter(origin, why, tokens), f"promote-{origin}")

    def _promoter(self, origin: str, why: str, tokens: dict[str, int]) -> Callable[[], object]:
        return lambda: self._promote(origin, why, tokens)

    async def _promote(self, origin: str, why: str, tokens: dict[str, int]) -> None:
        users = sorted(tokens)
        replica = self.config.replica_root(origin)
        present = [u for u in users
                   if any((replica / root / u).is_dir() for root in self.config.roots)]
        started = time.monotonic()
        # Users with directories here already: a client sent here while another node owned
        # them (a stale proxy, a retry on the wrong node) made a copy of its own. A session
        # still open on it when the promoted copy is renamed into place reopens files by
        # path, takes the new ones for corrupted and recreates them (seen: an mdbox map log
        # reset, every message gone). End those sessions before the swap and once more
        # after it (commits stay refused until the record below); users without such a
        # copy have no session that could hold one, and cost no doveadm run.
        stray = [u for u in present if any((root / u).exists()
                                           for root in self.config.roots.values())]
        try:
            if stray:
                await asyncio.to_thread(kick, self.c.settings.doveadm, stray)
            if present:
                result = await asyncio.to_thread(
                    promote, self.config, origin, users=present, force=True,
                    uid_gap=0 if why == "switchover" else None, token=max(tokens.values()))
                log.warning("promoted %d user(s) of %s (%s): %d mailbox(es), UID gap %d, "
                            "%.2f s", len(present), origin, why, result.mailboxes,
                            result.uid_gap, time.monotonic() - started)
                if stray:
                    await asyncio.to_thread(kick, self.c.settings.doveadm, stray)
                    # The capture followed the stray copy (never shipped: another node owned
                    # the user), so it would send the promoted one as deltas against files
                    # no peer holds, and without the directories' owner and mode (a peer's
                    # replica then has root-owned 0755 directories, and Dovecot on that
                    # peer cannot write after a promote there): send these users whole.
                    self.resync_users(stray)
        except Exception as exc:
            for user in users:
                self.c.blocked[user] = f"promote from {origin} failed: {exc}"
            log.error("promote of %d user(s) of %s failed: %s; commits for them stay refused",
                      len(users), origin, exc)
            return
        finally:
            self.busy -= set(users)
        for user in users:  # its own again: a copy set aside earlier is history now
            self.diverged.pop(user, None)
        self.c.owned.record(tokens)
        self.forgive(set(users))
        self.local |= set(present)
        await self._hook(why, origin, users)()
        if self.handovers is not None:
            await self.handovers.received(users)

    def _hook(self, why: str, old: str, users: list[str]) -> Callable[[], Awaitable[None]]:
        return lambda: asyncio.to_thread(run_hook, self.c.settings.on_owner_change, why, old,
                                         self.c.me, users)

    # -- give up what another node owns now ------------------------------------------------------
    async def _give_up(self, view: View) -> None:
        held = (self.local | self.c.owned.users()) - self.busy
        lost = view.lost(self.c.me, held)
        if not lost:
            return
        self.busy |= set(lost)
        given_up: set[str] = set()
        try:
            await asyncio.to_thread(kick, self.c.settings.doveadm, sorted(lost))
            for user in sorted(lost):
                # the view may have moved while sessions were kicked (a switchover back to
                # this node): only what another node owns *now* is set aside
                owner = self.c.view.owner(user)
                if owner is None or owner.node == self.c.me:
                    continue
                await asyncio.to_thread(self._set_aside, user, owner)
                given_up.add(user)
        finally:
            self.busy -= set(lost)
        self.c.owned.drop(given_up)
        self.local -= given_up
        self.c.counters["lost"] += len(given_up)

    def _set_aside(self, user: str, owner: Owner) -> None:
        clean, area, moved = set_aside(self.config.roots, self.config.state_dir, self.c.me,
                                       user, owner)
        if clean:
            log.info("%s is owned by %s now (token %d): this node holds its replica only; "
                     "local copy moved to %s", user, owner.node, owner.token, area)
            return
        self.diverged[user] = str(area)
        log.warning("%s diverged: %s owns it (token %d, %s from %s) but this node's copy "
                    "differs from the one %s promoted (changes made here after its last "
                    "replicated batch). Not serving it; local copy kept in %s for a merge",
                    user, owner.node, owner.token, owner.why, owner.origin or "-", owner.node,
                    ", ".join(str(p) for p in moved) or area)
