"""`dovecot-replicator status`: the running daemon's view, asked over its control socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from replicator.config import DEFAULT_CONTROL_SOCKET, load_config
from replicator.control import protocol
from replicator.control.server import request
from replicator.errors import ReplicatorError


def fetch_status(socket_path: Path) -> dict[str, Any]:
    try:
        reply = asyncio.run(request(socket_path, "STATUS\t1"))
    except (OSError, TimeoutError) as exc:
        raise ReplicatorError(f"cannot reach the daemon at {socket_path}: {exc} "
                              f"(is `dovecot-replicator run` running?)") from None
    fields = reply.split("\t", 2)
    if len(fields) != 3 or fields[0] != "STATUS":
        raise ReplicatorError(f"unexpected reply from the daemon: {reply[:80]!r}")
    data: dict[str, Any] = json.loads(protocol.unescape(fields[2]))
    return data


def show_status(config: Path | None, socket_path: Path | None, *, as_json: bool) -> int:
    if socket_path is None:
        socket_path = load_config(config).control_socket if config else DEFAULT_CONTROL_SOCKET
    data = fetch_status(socket_path)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    policy = data["sync_policy"]
    print(f"node {data['node']} ({data['software']}), epoch {data['epoch']}, stream "
          f"{data['stream']}, next seq {data['next_seq']}, {data['files']} files, "
          f"retained {data['retained_bytes']} bytes")
    if data.get("redacted"):
        print("  (the view for any local user: run as root for names, addresses and errors)")
    for peer, info in data["peers"].items():
        transport = info["transport"] or {}
        lag = info["ack_lag"]
        where = f" {info['address']}" if "address" in info else ""
        print(f"  peer {peer}{where}: {info['state']} via "
              f"{transport.get('name', '-')} ({transport.get('reason', '-')}), acked "
              f"{info['acked_seq']} ({info['behind']} behind), lag p50 {lag['p50_ms']} ms "
              f"p99 {lag['p99_ms']} ms" + (f", last error: {info['last_error']}"
                                          if info["last_error"] else ""))
    for origin, info in data["replicas"].items():
        print(f"  replica of {origin}: stream {info['stream']} seq {info['seq']} epoch "
              f"{info['epoch']} fence {info['fence']}"
              + (f", broken: {_listed(info['broken_dirs'])}" if info["broken_dirs"] else ""))
    print(f"  sync policy announced to peers: {policy['announced']} (configured "
          f"{policy['configured']}, weakest asked for by a FLUSH: {policy['weakest_seen'] or '-'})")
    sync = data["sync_commit"]
    if sync["capture"]["p50_ms"] is not None:
        print(f"  sync commit ({policy['announced']} policy, quorum {data['sync_quorum']}): "
              f"capture p50 {sync['capture']['p50_ms']} ms p99 {sync['capture']['p99_ms']} ms, "
              f"peers' acks p50 {sync['replicate']['p50_ms']} ms "
              f"p99 {sync['replicate']['p99_ms']} ms")
    if data.get("ownership"):
        _show_ownership(data["ownership"])
    print("  counters: " + ", ".join(f"{k}={v}" for k, v in data["counters"].items()))
    control = data["control"]
    print(f"  control socket: {control['connections']} connections (+{control['admin']} admin), "
          f"{control['refused']} refused; at most {control['max_per_uid']} per uid, "
          f"{control['max_connections']} in all, closed after {control['idle_timeout_s']} s idle")
    return 0


def _show_ownership(own: dict[str, Any]) -> None:
    """Ownership on etcd: the lease, the users served here, and the owners with their tokens
    (for root; any other local user sees counts)."""
    window = (f"commits acknowledged for {own['commit_window_s']} s more" if own["may_commit"]
              else "NOT acknowledging commits")
    print(f"  ownership (etcd {own['state']}, revision {own['revision']}): lease "
          f"{own['lease_id']}, {window}; nodes alive: {', '.join(own['alive']) or '-'}; "
          f"serving {own['serving_users']} user(s)"
          + (f", last error: {own['last_error']}" if own.get("last_error") else ""))
    if "owners" in own:
        owners = ", ".join(f"{u}={o['node']}@{o['token']}" for u, o in own["owners"].items())
        print(f"    owners (user=node@token): {owners or '-'}")
    for user, why in own.get("blocked", {}).items():
        print(f"    {user}: commits refused: {why}")
    for user, where in own.get("diverged", {}).items():
        print(f"    {user}: DIVERGED, not served; local copy kept in {where}")
    print("    " + ", ".join(f"{k}={v}" for k, v in own["counters"].items()))


def _listed(dirs: list[str] | int) -> str:
    return f"{dirs} directories" if isinstance(dirs, int) else ", ".join(dirs)
