"""[coordination]: where etcd is and how ownership behaves. Absent: two nodes, manual promote.

    [coordination]
    endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
    prefix = "/dovecot-replicator"   # every key of this cluster lives below it
    lease_ttl = 5                    # seconds (etcd leases are whole seconds)
    margin = 1.0                     # stop acknowledging commits this long before expiry
    on_quorum_loss = "stop"          # or "keep" (README: what each risks)
    on_owner_change = "/usr/local/sbin/move-users"   # optional hook
    doveadm = "doveadm"              # how to reach the local Dovecot (kick)
    takeover = true                  # take over a dead owner's users by itself
    quorum_counts = "live"           # or "configured" (see below)

The margin must exceed one etcd request's timeout plus the clock drift the operator expects
over one TTL: a keep-alive answered late still counts from when it was *sent*, so the lease
this node believes in always ends before the one etcd enforces.

`quorum_counts = "live"`: a sync commit waits for min(sync_quorum, peers holding a lease) acks.
A peer without a lease cannot commit anything (it stopped at its own deadline), so waiting for
it buys no safety against two owners, only durability, and in a two-node pair it would turn
every commit on the survivor of a failover into NO. The survivor then commits with no copy
elsewhere until its peer is back (status and the log say so); "configured" keeps waiting for
`sync_quorum` peers (the survivor refuses commits until a peer is back).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from replicator.config_values import ConfigReader
from replicator.errors import ConfigError

QUORUM_POLICIES = ("stop", "keep")
QUORUM_COUNTS = ("live", "configured")
DEFAULT_PREFIX = "/dovecot-replicator"


@dataclass(frozen=True)
class CoordinationConfig:
    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    lease_ttl: int = 5
    margin: float = 1.0
    request_timeout: float = 0.5
    on_quorum_loss: str = "stop"
    on_owner_change: Path | None = None
    doveadm: tuple[str, ...] = ("doveadm",)
    takeover: bool = True
    quorum_counts: str = "live"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    switchover_timeout: float = 30.0

    @property
    def keepalive_interval(self) -> float:
        """A third of the TTL, as etcd's own clients do: two lost keep-alives still leave
        the lease alive."""
        return self.lease_ttl / 3


def parse_coordination(top: ConfigReader) -> CoordinationConfig | None:
    table = top.table("coordination", required=False)
    if not table.names():
        return None
    table.only_keys("endpoints", "prefix", "lease_ttl", "margin", "request_timeout",
                    "on_quorum_loss", "on_owner_change", "doveadm", "takeover", "ca", "cert",
                    "key", "switchover_timeout", "quorum_counts")
    names = set(table.names())
    values: dict[str, object] = {"endpoints": _endpoints(table)}
    if "prefix" in names:
        prefix = table.string("prefix").rstrip("/")
        if not prefix.startswith("/") or "//" in prefix:
            raise ConfigError(f"{table.where('prefix')}: must start with '/' (e.g. "
                              f"\"{DEFAULT_PREFIX}\")")
        values["prefix"] = prefix
    for name, kind, minimum in (("lease_ttl", int, 2), ("margin", float, 0.1),
                                ("request_timeout", float, 0.05),
                                ("switchover_timeout", float, 1.0)):
        if name in names:
            values[name] = table.number(name, kind, minimum=kind(minimum))
    if "quorum_counts" in names:
        values["quorum_counts"] = table.choice("quorum_counts", QUORUM_COUNTS, "live")
    if "on_quorum_loss" in names:
        values["on_quorum_loss"] = table.choice("on_quorum_loss", QUORUM_POLICIES, "stop")
    for name in ("on_owner_change", "ca", "cert", "key"):
        if name in names:
            values[name] = table.abs_path(name, must_exist=True)
    if "doveadm" in names:
        values["doveadm"] = tuple(shlex.split(table.string("doveadm")))
    if "takeover" in names:
        values["takeover"] = _boolean(table, "takeover")
    config = CoordinationConfig(**values)  # type: ignore[arg-type]
    _check(config, table)
    return config


def _endpoints(table: ConfigReader) -> tuple[str, ...]:
    raw = table.raw("endpoints")
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) for e in raw):
        raise ConfigError(f"{table.where('endpoints')}: must be a non-empty list of etcd client "
                          "URLs such as [\"http://127.0.0.1:2379\"]")
    for endpoint in raw:
        scheme, _, rest = endpoint.partition("://")
        if scheme not in ("http", "https") or not rest or ":" not in rest.rstrip("/"):
            raise ConfigError(f"{table.where('endpoints')}: {endpoint!r} is not an etcd client "
                              "URL (http://host:port or https://host:port)")
    return tuple(e.rstrip("/") for e in raw)


def _boolean(table: ConfigReader, key: str) -> bool:
    value = table.raw(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{table.where(key)}: must be true or false")
    return value


def _check(config: CoordinationConfig, table: ConfigReader) -> None:
    if config.margin >= config.lease_ttl / 2:
        raise ConfigError(f"{table.where('margin')}: {config.margin:g} s must be under half of "
                          f"lease_ttl ({config.lease_ttl} s), or the lease is never usable")
    if config.request_timeout >= config.margin:
        raise ConfigError(f"{table.where('request_timeout')}: {config.request_timeout:g} s must "
                          f"be under margin ({config.margin:g} s): a keep-alive answered that "
                          "late would otherwise count for longer than etcd grants")
    if (config.cert is None) != (config.key is None):
        raise ConfigError(f"{table.where('cert')}: cert and key go together")
