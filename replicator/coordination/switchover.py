"""Planned switchover: move users from their owner to another live node with no UID gap and
no moment in which both accept a commit.

`dovecot-replicator switchover --to b` writes a request below `<prefix>/switchover/`. The
owner named in it (a) then:
  1. refuses commits for those users (FLUSH -> FAIL) and kicks their sessions here,
  2. waits for a barrier: b has acknowledged everything on a's disk,
  3. hands the owner keys to b in a transaction that compares each key's revision and
     requires b's lease to exist (chunks of 100 keys: etcd's default --max-txn-ops is 128),
and b, seeing itself owner of users it has not put in place, promotes them from its replica
with a UID gap of 0 and marks the request done. Commits for the users are refused from
step 1 until b's promote ends: the only cost is that pause.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from replicator.coordination.actions import chunks
from replicator.coordination.etcd import Compare, Entry, EtcdUnavailable
from replicator.coordination.local import kick
from replicator.coordination.view import Owner, View

if TYPE_CHECKING:
    from replicator.coordination.actions import Actions

log = logging.getLogger("replicator.coordination")
Answer = tuple[bool, int, str]


@dataclass
class Request:
    ident: str
    source: str
    target: str
    users: list[str]
    state: str = "requested"          # requested | handed | done | failed
    reason: str = ""
    times: dict[str, float] = field(default_factory=dict)
    revision: int = 0                 # mod revision of the request key (not stored)

    def value(self) -> str:
        data = asdict(self)
        data.pop("revision")
        return json.dumps(data, sort_keys=True)

    @classmethod
    def parse(cls, entry: Entry) -> Request | None:
        try:
            data: Any = json.loads(entry.value)
            return cls(str(data["ident"]), str(data["source"]), str(data["target"]),
                       [str(u) for u in data["users"]], str(data.get("state", "requested")),
                       str(data.get("reason", "")),
                       {str(k): float(v) for k, v in data.get("times", {}).items()},
                       entry.mod_revision)
        except (ValueError, KeyError, TypeError):
            return None


class Handovers:
    """Both ends of switchover inside the daemon."""

    def __init__(self, actions: Actions, barrier: Callable[[float], Awaitable[Answer]]) -> None:
        self.actions, self.c, self.barrier = actions, actions.c, barrier
        self.running: set[str] = set()

    def _requests(self) -> list[Request]:
        return [r for e in self.c.requests if (r := Request.parse(e)) is not None]

    async def act(self, view: View) -> None:
        requests = self._requests()
        for request in requests:
            if (request.state == "requested" and request.source == self.c.me
                    and request.ident not in self.running):
                self.running.add(request.ident)
                self.actions.spawn(self._handing(request, view), f"switchover-{request.ident}")
        # The promote here may end before the old owner has written "handed" (it hands the
        # keys first, then says so): received() then saw the request still "requested", and
        # only this look, after the old owner's write, can end it.
        for request in done_here(requests, self.c.me, self.c.owned.token):
            await self._finish(request, "done", "")

    def _handing(self, request: Request, view: View) -> Callable[[], object]:
        return lambda: self._hand_over(request, view)

    async def _hand_over(self, request: Request, view: View) -> None:
        users = request.users
        started = time.time()
        not_mine = [u for u in users if (o := view.owner(u)) is None or o.node != self.c.me]
        if not_mine:
            await self._finish(request, "failed", f"{self.c.me} does not own "
                               f"{', '.join(not_mine[:10])}")
            return
        if request.target not in view.alive:
            await self._finish(request, "failed", f"{request.target} holds no lease (down?)")
            return
        for user in users:
            self.c.blocked[user] = f"being handed over to {request.target}"
        try:
            await self._move(request, view, started)
        except EtcdUnavailable as exc:
            await self._settle_unknown(request, exc)
        finally:
            for user in users:
                self.c.blocked.pop(user, None)

    async def _settle_unknown(self, request: Request, exc: EtcdUnavailable) -> None:
        """etcd did not answer a handover transaction: it may still be applied later (a
        request that timed out is not a request that failed). The users stay blocked until a
        read shows who owns them."""
        log.error("switchover %s: etcd did not answer (%s); commits for its users stay "
                  "refused until etcd tells who owns them", request.ident, exc)
        while True:
            await asyncio.sleep(self.c.settings.keepalive_interval)
            try:
                await self.c.refresh()
                break
            except EtcdUnavailable:
                continue
        still = [u for u in request.users if (o := self.c.view.owner(u)) and o.node == self.c.me]
        if still:
            await self._finish(request, "failed", f"etcd did not answer: {exc}")
    async def _move(self, request: Request, view: View, started: float) -> None:
        users = request.users
        await asyncio.to_thread(kick, self.c.settings.doveadm, users)
        request.times["blocked"] = time.time() - started
        ok, _, why = await self.barrier(self.c.settings.switchover_timeout)
        if not ok:
            await self._finish(request, "failed", f"barrier: {why}")
            return
        request.times["barrier"] = time.time() - started
        keys = self.c.keys
        for chunk in chunks(users):
            compares = [Compare(keys.node(request.target), "CREATE", 0, "GREATER")]
            compares += [Compare(keys.owner(u), "MOD", view.owners[u].token) for u in chunk]
            owner = Owner(request.target, 0, self.c.me, "switchover", time.time())
            done, _ = await asyncio.to_thread(self.c.etcd.txn, compares,
                                              [(keys.owner(u), owner.value()) for u in chunk])
            if not done:
                await self._finish(request, "failed", "an owner key changed under the "
                                   "switchover (or the target's lease vanished)")
                return
        self.c.owned.drop(set(users))
        self.c.counters["handovers"] += len(users)
        request.times["handed"] = time.time() - started
        log.warning("handed %d user(s) over to %s (switchover %s) in %.3f s", len(users),
                    request.target, request.ident, request.times["handed"])
        await self._finish(request, "handed", "")
        await self.c.refresh()

    async def received(self, users: list[str]) -> None:
        """The new owner put `users` in place: requests all of whose users are done end."""
        await self.c.refresh()
        for request in done_here(self._requests(), self.c.me, self.c.owned.token):
            await self._finish(request, "done", "")

    async def _finish(self, request: Request, state: str, reason: str) -> None:
        request.state, request.reason = state, reason
        if state == "failed":
            log.error("switchover %s to %s failed: %s", request.ident, request.target, reason)
        await asyncio.to_thread(self.c.etcd.put, self.c.keys.switchover(request.ident),
                                request.value())


def done_here(requests: list[Request], me: str,
              token_of: Callable[[str], int]) -> list[Request]:
    """Requests handed over to `me` whose users are all in place here (a token recorded for
    each: promoted), which `me` now marks done."""
    return [r for r in requests if r.state == "handed" and r.target == me
            and all(token_of(user) for user in r.users)]
