"""Who may hold a connection to the replication listener, and how refusals are logged.

Anyone who reaches the port can open connections, so the listener admits a connection only
while it stays under three caps: all connections, connections that have not finished the
handshake (TLS, HELLO, proof) and, of those, connections from one address. An attacker on one
address can therefore hold at most `per_address` connections, each for at most the handshake
timeout, and never starve a peer that dials from another address. Authenticated connections
only count against the total (there is one per peer and role in normal operation).

Refusals are logged once per address and reason, so a flood of attempts is a line, not a disk.
Both classes are sans-IO: the TCP transport asks and reports, they count.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass

log = logging.getLogger("replicator.listener")


class RefusalLog:
    """Logs the first refusal per (address, reason); counts the rest. Remembers `limit` pairs."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.counts: OrderedDict[tuple[str, str], int] = OrderedDict()

    def refuse(self, address: str, reason: str, detail: str) -> bool:
        """Record a refusal; True if this one was logged."""
        key = (address, reason)
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        self.counts.move_to_end(key)
        while len(self.counts) > self.limit:
            self.counts.popitem(last=False)
        if seen:
            return False
        log.warning("refusing replication connection from %s: %s (logged once per address "
                    "and reason)", address, detail)
        return True


@dataclass
class Admission:
    """One admitted connection; `authenticated()` once it proved itself, `release()` at the end."""

    gate: ConnectionGate
    address: str
    deadline: float
    pending: bool = True
    released: bool = False

    def authenticated(self) -> None:
        if self.pending and not self.released:
            self.pending = False
            pending = self.gate.pending
            pending[self.address] -= 1
            if pending[self.address] <= 0:
                del pending[self.address]  # the Counter stays as small as the open handshakes

    def release(self) -> None:
        if self.released:
            return
        self.authenticated()
        self.released = True
        self.gate.total -= 1


class ConnectionGate:
    def __init__(self, max_connections: int, max_unauthenticated: int, per_address: int,
                 hello_timeout: float, refusals: RefusalLog | None = None) -> None:
        self.max_connections, self.max_unauthenticated = max_connections, max_unauthenticated
        self.per_address, self.hello_timeout = per_address, hello_timeout
        self.refusals = refusals or RefusalLog()
        self.total = 0
        self.pending: Counter[str] = Counter()

    def admit(self, address: str, now: float) -> Admission | None:
        """An Admission (its handshake must end by its deadline), or None: close at once."""
        reason = self._over_cap(address)
        if reason is not None:
            self.refusals.refuse(address, "cap", reason)
            return None
        self.total += 1
        self.pending[address] += 1
        return Admission(self, address, now + self.hello_timeout)

    def _over_cap(self, address: str) -> str | None:
        if self.total >= self.max_connections:
            return f"{self.total} connections open (max_connections = {self.max_connections})"
        if self.pending.total() >= self.max_unauthenticated:
            return (f"{self.pending.total()} connections still in their handshake "
                    f"(max_unauthenticated = {self.max_unauthenticated})")
        if self.pending[address] >= self.per_address:
            return (f"{self.pending[address]} connections from this address still in their "
                    f"handshake (max_unauthenticated_per_address = {self.per_address})")
        return None
