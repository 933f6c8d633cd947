"""The daemon's status as a JSON-able dict: what `status` prints and the control socket serves."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replicator.daemon import Daemon


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None}
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)}


def build_status(daemon: Daemon, *, full: bool = True) -> dict[str, Any]:
    """The whole status (`full`, for root and the daemon's user), or the part any local user
    may see: counters, positions and link states, but no user or mailbox names (broken
    directories are counted, not listed), no peer addresses and no error texts (they quote
    paths)."""
    status = _full_status(daemon)
    return status if full else public_view(status)


def public_view(status: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in status.items() if k not in ("peers", "replicas", "ownership")}
    if status.get("ownership"):  # who owns which user names users: counts only
        view["ownership"] = {k: v for k, v in status["ownership"].items()
                             if k not in ("owners", "blocked", "diverged", "last_error",
                                          "serving")}
    view["peers"] = {peer: _public_peer(info) for peer, info in status["peers"].items()}
    view["replicas"] = {origin: {**{k: v for k, v in info.items() if k != "broken_dirs"},
                                 "broken_dirs": len(info["broken_dirs"])}
                        for origin, info in status["replicas"].items()}
    view["redacted"] = True
    return view


def _public_peer(info: dict[str, Any]) -> dict[str, Any]:
    transport = info["transport"] or {}
    return {**{k: v for k, v in info.items()
               if k not in ("address", "last_error", "broken_dirs", "transport")},
            "transport": {k: transport[k] for k in ("name", "tls") if k in transport} or None,
            "broken_dirs": len(info["broken_dirs"]),
            "last_error": "(shown to root only)" if info["last_error"] else None}


def _full_status(daemon: Daemon) -> dict[str, Any]:
    outbox = daemon.outbox
    peers = {}
    for peer, link in daemon.links.items():
        cursor = outbox.cursors[peer]
        peers[peer] = {
            "address": str(link.peer.address), "state": link.state,
            "transport": link.transport_properties, "last_error": link.last_error,
            "acked_seq": cursor.acked, "behind": outbox.next_seq - 1 - cursor.acked,
            "broken_dirs": [f"{r}/{d}" for r, d in cursor.broken], "bytes_sent": link.bytes_sent,
            "bytes_framed": link.bytes_framed, "link_compression": link.packing,
            "connects": link.connects, "manifest_resyncs": link.resyncs,
            "ack_lag": _percentiles(list(cursor.lag)),
        }
    replicas = {}
    for origin, replica in daemon.store.origins().items():
        replicas[origin] = {"stream": replica.state.stream, "seq": replica.state.seq,
                            "epoch": replica.state.epoch,
                            "fence": daemon.store.fences.minimum(origin),
                            "broken_dirs": sorted(replica.state.broken),
                            "stale_token_refused": daemon.store.tokens.refused.get(origin, 0),
                            **daemon.listener.stats.get(origin, {})}
    return {
        "node": daemon.node_id, "software": daemon.software,
        "uptime_s": round(time.time() - daemon.started, 1),
        "stream": outbox.stream, "epoch": outbox.epoch, "next_seq": outbox.next_seq,
        "retained_bytes": outbox.retained_bytes, "files": daemon.manifest.file_count(),
        "sync_policy": {"configured": daemon.sync.configured_policy,
                        "weakest_seen": daemon.sync.weakest_seen,
                        "announced": daemon.sync_policy},
        "sync_quorum": daemon.config.tuning.sync_quorum,
        "control": daemon.control.stats(),
        "sync_commit": {"capture": _percentiles(list(daemon.sync.capture_times)),
                        "replicate": _percentiles(list(daemon.sync.replicate_times))},
        "counters": dict(daemon.counters), "traffic": daemon.traffic.as_dict(),
        "heap": {"frozen_at_last_settle": daemon.heap.settled, "settles": daemon.heap.settles,
                 "last_settle_ms": round(daemon.heap.last_pause * 1000, 1)},
        "peers": peers, "replicas": replicas, "redacted": False,
        "ownership": daemon.ownership_status(),
    }
