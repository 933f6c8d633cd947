"""How many control connections who may hold, and logging that a flood cannot multiply.

The control socket is open to every local user (Dovecot's mail processes run as the mail
users), so without limits one unprivileged user could hold every descriptor the daemon has and
make every sync commit on the node fail. Non-admin connections are capped per uid (well below
the total, so one user cannot take the room of the others) and in total; admins (root and the
daemon's own uid: the tools, never Dovecot's mail processes) have a reserve of their own, so
`status`, BARRIER and promote's FENCE still get through while a user holds its maximum.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass, field

ADMIN_RESERVE = 64   # connections kept for root and the daemon's user, beyond the total
OTHER_FDS = 256      # descriptors the daemon needs besides control connections (links, files)


@dataclass
class ConnectionLimits:
    per_uid: int = 256
    total: int = 1024
    held: Counter[int] = field(default_factory=Counter)
    admins: int = 0

    def admit(self, uid: int | None, admin: bool) -> str | None:
        """Count a new connection in, or say why it is refused (it is then not counted)."""
        if admin:
            if self.admins >= ADMIN_RESERVE:
                return f"{ADMIN_RESERVE} admin connections are open already"
            self.admins += 1
            return None
        key = -1 if uid is None else uid
        if self.held[key] >= self.per_uid:
            return f"uid {uid} holds {self.per_uid} control connections already (the most one " \
                   f"user may hold)"
        if sum(self.held.values()) >= self.total:
            return f"{self.total} control connections are open already"
        self.held[key] += 1
        return None

    def release(self, uid: int | None, admin: bool) -> None:
        if admin:
            self.admins -= 1
            return
        key = -1 if uid is None else uid
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]

    def fit_descriptors(self, log: logging.Logger) -> None:
        """Raise the soft descriptor limit so every admitted connection can be accepted (an
        accept() failing with EMFILE would lock admins out too); if the hard limit is too
        low for that, lower the total instead and say so."""
        needed = self.total + ADMIN_RESERVE + OTHER_FDS
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        if soft != resource.RLIM_INFINITY and soft < needed:
            self.total = max(1, soft - ADMIN_RESERVE - OTHER_FDS)
            log.warning("descriptor limit %d is too low for %d control connections; allowing "
                        "%d (raise LimitNOFILE)", soft, needed - ADMIN_RESERVE - OTHER_FDS,
                        self.total)
        self.per_uid = min(self.per_uid, self.total)


class OncePerMinute:
    """Logs one line per key per minute and counts what it held back, so a client repeating a
    refused request cannot flood the log."""

    def __init__(self, log: logging.Logger, interval: float = 60.0) -> None:
        self.log, self.interval = log, interval
        self._last: dict[object, tuple[float, int]] = {}

    def warning(self, key: object, message: str, *args: object) -> None:
        now = time.monotonic()
        last, held_back = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, held_back + 1)
            return
        if len(self._last) > 4096:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        self._last[key] = (now, 0)
        suffix = f" ({held_back} more like it since the last such line)" if held_back else ""
        self.log.warning(message + suffix, *args)
