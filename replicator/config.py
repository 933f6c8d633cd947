"""The daemon's TOML configuration, validated into frozen dataclasses.

Every mistake an operator can make (an unknown key, a missing or overlapping root, a bad
address, a duplicate node id) becomes a `ConfigError` whose one-line message names the file,
the key and what is wrong, so `dovecot-replicator` can print it and exit 2.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.config_values import (
    Address,
    ConfigReader,
    is_loopback,
    parse_address,
    read_psk,
)
from replicator.coordination.config import CoordinationConfig, parse_coordination
from replicator.errors import ConfigError
from replicator.paths import NODE_ID, ROOT_NAME

DEFAULT_CONTROL_SOCKET = Path("/run/dovecot-replicator/control.sock")
TRANSPORTS = ("auto", "rdma", "tcp")
WATCHERS = ("inotify", "watchdog")
SYNC_POLICIES = ("off", "degrade", "fail")  # weakest first
LINK_COMPRESSION = ("zstd", "off")
_CHOICES = {"watcher": WATCHERS, "sync_policy": SYNC_POLICIES,
            "link_compression": LINK_COMPRESSION}
_MINIMUMS = {"control_max_per_uid": 1, "control_max_connections": 1, "control_idle_timeout": 1}


@dataclass(frozen=True)
class PeerConfig:
    id: str
    address: Address
    transport: str = "auto"


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class AuthConfig:
    """[auth]: how peers prove who they are without TLS, and how long and how many callers
    may take to do so. `psk` is the key read from `psk_file` (never shown in a repr)."""

    psk_file: Path | None = None
    psk: bytes | None = field(default=None, repr=False)
    hello_timeout: float = 5.0
    max_connections: int = 64
    max_unauthenticated: int = 32
    max_unauthenticated_per_address: int = 4


@dataclass(frozen=True)
class Tuning:
    """Knobs with defaults that suit a mail server; each is explained in README."""

    sync_quorum: int = 1
    max_frame_bytes: int = 64 << 20
    rescan_interval: float = 30.0
    retain_bytes: int = 64 << 20
    base_cache_bytes: int = 256 << 20
    reconnect_max_delay: float = 2.0
    ack_timeout: float = 10.0
    promote_uid_gap: int = 1000
    scrub_interval: float = 600.0  # seconds between checks of replicas against their journals
    watcher: str = "inotify"       # "inotify" (on the event loop) or "watchdog" (threads)
    # What this node's sync-commit plugin does, as announced to peers: "fail" only when every
    # Dovecot here runs the plugin with replicator_sync_policy = fail (a promote of this node's
    # copy then needs no UID gap). FLUSH requests can weaken the announcement, never raise it.
    sync_policy: str = "off"
    control_max_per_uid: int = 256      # control connections one non-admin uid may hold
    control_max_connections: int = 1024  # all non-admin control connections together
    control_idle_timeout: float = 60.0  # seconds a control client may stay silent
    # How long index rewrites may trail the changes a commit needs (its log and cache records,
    # maildir's uidlist): one whole read of them then serves the commits in between. Seconds.
    trailing_delay: float = 0.05
    # Whether batches to peers travel as one zstd stream per connection (wire.packed), when
    # the peer agrees: about a fifth of the bytes for about 12 µs per commit. "off" if the
    # replication network is not trusted with compressed lengths (README: Link compression).
    link_compression: str = "zstd"


@dataclass(frozen=True)
class Config:
    path: Path
    node_id: str
    listen: Address
    replica_dir: Path
    state_dir: Path
    control_socket: Path
    control_socket_mode: int
    roots: Mapping[str, Path]
    peers: tuple[PeerConfig, ...]
    tls: TlsConfig | None = None
    tuning: Tuning = field(default_factory=Tuning)
    auth: AuthConfig = field(default_factory=AuthConfig)
    coordination: CoordinationConfig | None = None  # [coordination]: ownership on etcd

    def peer(self, peer_id: str) -> PeerConfig | None:
        return next((p for p in self.peers if p.id == peer_id), None)

    def replica_root(self, origin: str) -> Path:
        """Where this node keeps its RAM copy of `origin`'s roots."""
        return self.replica_dir / origin


def load_config(path: Path) -> Config:
    """Read and validate the TOML file at `path`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: Mapping[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document."""
    top = ConfigReader(raw, str(path), "")
    top.only_keys("node", "roots", "peers", "tls", "replication", "auth", "coordination")
    node = top.table("node", required=True)
    node.only_keys("id", "listen", "replica_dir", "state_dir", "control_socket",
                   "control_socket_mode")
    node_id = node.pattern("id", NODE_ID, "a node id (letters, digits, '-', '_')")
    config = Config(
        path=path,
        node_id=node_id,
        listen=parse_address(node.string("listen"), node.where("listen")),
        replica_dir=node.abs_path("replica_dir"),
        state_dir=node.abs_path("state_dir"),
        control_socket=node.abs_path("control_socket", default=DEFAULT_CONTROL_SOCKET),
        control_socket_mode=node.octal("control_socket_mode", default=0o666),
        roots=_roots(top),
        peers=(peers := _peers(top, node_id)),
        tls=_tls(top),
        tuning=_tuning(top, len(peers)),
        auth=_auth(top),
        coordination=parse_coordination(top),
    )
    _check_layout(config)
    _check_authentication(config)
    return config


def _roots(top: ConfigReader) -> dict[str, Path]:
    table = top.table("roots", required=True)
    if not table.names():
        raise ConfigError(f"{table.where('')}: no roots configured (name = \"/directory\")")
    roots: dict[str, Path] = {}
    for name in table.names():
        if not ROOT_NAME.match(name):
            raise ConfigError(f"{table.where(name)}: root name must be letters, digits, '-', '_'")
        roots[name] = table.abs_path(name, must_exist=True)
    for name, root in roots.items():
        for other_name, other in roots.items():
            if name < other_name and (root == other or root in other.parents
                                      or other in root.parents):
                raise ConfigError(f"{table.where('')}: roots {name!r} ({root}) and "
                                  f"{other_name!r} ({other}) overlap")
    return roots


def _peers(top: ConfigReader, node_id: str) -> tuple[PeerConfig, ...]:
    peers: list[PeerConfig] = []
    for table in top.table_array("peers"):
        table.only_keys("id", "address", "transport")
        peer_id = table.pattern("id", NODE_ID, "a node id (letters, digits, '-', '_')")
        if peer_id == node_id:
            raise ConfigError(f"{table.where('id')}: peer id {peer_id!r} is this node's own id")
        if any(p.id == peer_id for p in peers):
            raise ConfigError(f"{table.where('id')}: duplicate peer id {peer_id!r}")
        transport = table.choice("transport", TRANSPORTS, default="auto")
        address = parse_address(table.string("address"), table.where("address"))
        peers.append(PeerConfig(peer_id, address, transport))
    return tuple(peers)


def _tls(top: ConfigReader) -> TlsConfig | None:
    table = top.table("tls", required=False)
    if not table.names():
        return None
    table.only_keys("cert", "key", "ca")
    return TlsConfig(*(table.abs_path(k, must_exist=True) for k in ("cert", "key", "ca")))


def _auth(top: ConfigReader) -> AuthConfig:
    table = top.table("auth", required=False)
    defaults = AuthConfig()
    minimums: dict[str, float] = {"hello_timeout": 0.1, "max_connections": 1,
                                  "max_unauthenticated": 1, "max_unauthenticated_per_address": 1}
    table.only_keys("psk_file", *minimums)
    values: dict[str, Any] = {}
    for name in table.names():
        if name in minimums:
            kind = type(getattr(defaults, name))
            values[name] = table.number(name, kind, minimum=kind(minimums[name]))
    if "psk_file" in table.names():
        values["psk_file"] = table.abs_path("psk_file")
        values["psk"] = read_psk(values["psk_file"], table.where("psk_file"))
    return AuthConfig(**values)


def _tuning(top: ConfigReader, peer_count: int) -> Tuning:
    table = top.table("replication", required=False)
    defaults = Tuning()
    table.only_keys(*defaults.__dataclass_fields__)
    values: dict[str, Any] = {"sync_quorum": min(1, peer_count)}
    for name in table.names():
        default = getattr(defaults, name)
        if isinstance(default, str):
            values[name] = table.choice(name, _CHOICES[name], default=default)
        else:
            values[name] = table.number(name, type(default),
                                        minimum=type(default)(_MINIMUMS.get(name, 0)))
    return Tuning(**values)


def _check_layout(config: Config) -> None:
    for name, root in config.roots.items():
        for other, label in ((config.replica_dir, "replica_dir"), (config.state_dir, "state_dir")):
            if other == root or root in other.parents or other in root.parents:
                raise ConfigError(
                    f"{config.path}: root {name!r} ({root}) overlaps {label} ({other})")
    if config.tuning.sync_quorum > len(config.peers):
        raise ConfigError(f"{config.path}: [replication] sync_quorum = {config.tuning.sync_quorum} "
                          f"but only {len(config.peers)} peer(s) are configured")


def _check_authentication(config: Config) -> None:
    """With neither TLS nor a pre-shared key, anyone who reaches the port could pose as a peer:
    acceptable on loopback (the daemon warns), refused anywhere else."""
    if config.tls is None and config.auth.psk is None and not is_loopback(config.listen.host):
        raise ConfigError(f"{config.path}: [node] listen = \"{config.listen}\" is not a loopback "
                          "address but neither [tls] nor [auth] psk_file is configured, so any "
                          "host could pose as a peer: configure one of them")
