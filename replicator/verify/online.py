"""Online verification: the origin describes what it shipped, over the replication link, and
this node compares its RAM copy with that description.

The origin answers a `verifier` HELLO with the manifest of everything it has shipped and the
last seq it numbered; we wait (bounded) until our replica has applied that seq, then compare
sizes and digests file by file. An origin that cannot be reached makes the verification
impossible (exit 2), not failed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from replicator import __version__
from replicator.config import Config
from replicator.errors import ProtocolError
from replicator.hashing import digest
from replicator.manifest_codec import Entry, decode_entries
from replicator.replica.state import AppliedState
from replicator.transport.base import TransportClosed
from replicator.transport.handshake import Credentials, dial
from replicator.verify.model import Difference, VerifyReport
from replicator.verify.runner import Reading, _dovecot_checks, files_under, read_if_there
from replicator.wire.messages import ErrorMessage, Hello, Manifest, ManifestRequest

CONNECT_TIMEOUT = 5.0


async def origin_manifest(config: Config, origin: str) -> Manifest:
    """Ask `origin` (a configured peer) for the manifest of what it shipped."""
    peer = config.peer(origin)
    if peer is None:
        raise ProtocolError(f"{origin!r} is not a configured peer of {config.node_id}")
    hello = Hello(config.node_id, "verifier", f"dovecot-replicator/{__version__}")
    dialled = await dial(peer, Credentials.from_config(config), hello, timeout=CONNECT_TIMEOUT,
                         max_frame_bytes=config.tuning.max_frame_bytes)
    transport, session = dialled.transport, dialled.session
    try:
        await transport.send(session.send(ManifestRequest(1)))
        while True:
            async with asyncio.timeout(60):
                data = await transport.recv()
            if not data:
                raise TransportClosed(f"{origin} closed the connection")
            for message in session.receive_data(data):
                if isinstance(message, ErrorMessage):
                    raise ProtocolError(f"{origin} refused: {message.message}")
                if isinstance(message, Manifest):
                    return message
    finally:
        await transport.close()


def wait_for_position(state_path: Path, stream: str, seq: int, timeout: float) -> AppliedState:
    """Poll the replica's recorded position until it reached (stream, seq) or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        state = AppliedState.load(state_path)
        if (state.stream == stream and state.seq >= seq) or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


def verify_online(config: Config, origin: str, *, wait: float = 10.0) -> VerifyReport:
    started, read = time.monotonic(), Reading()
    base = config.replica_root(origin)
    report = VerifyReport("online", origin=origin, replica=str(base))
    try:
        manifest = asyncio.run(origin_manifest(config, origin))
    except (OSError, TimeoutError, ProtocolError, TransportClosed) as exc:
        report.errors.append(f"cannot get {origin}'s manifest: {exc}")
        return report
    state = wait_for_position(base / ".applied.json", manifest.stream, manifest.seq, wait)
    if state.stream != manifest.stream or state.seq < manifest.seq:
        report.warnings.append(Difference(".applied.json", "position",
                                          f"{manifest.stream} seq {manifest.seq}",
                                          f"{state.stream or '-'} seq {state.seq}", "bytes"))
    _compare(report, base, decode_entries(manifest.payload), read)
    roots = sorted({e.root for e in decode_entries(manifest.payload)})
    _dovecot_checks(report, [(root, None, base / root) for root in roots], read)
    report.bytes_read, report.seconds = read.bytes, time.monotonic() - started
    return report


def _compare(report: VerifyReport, base: Path, entries: list[Entry], read: Reading) -> None:
    expected = {f"{e.root}/{e.path}": e for e in entries if e.kind == "f"}
    roots = {e.root for e in entries}
    on_disk = {f"{root}/{rel}" for root in roots for rel in files_under(base / root)}
    for rel in sorted(on_disk | set(expected)):
        entry = expected.get(rel)
        if entry is None or rel not in on_disk:
            report.differences.append(Difference(rel, "presence",
                                                 "present" if entry else "absent",
                                                 "present" if rel in on_disk else "absent"))
            continue
        data = read_if_there(read, base / rel)
        if data is None:
            report.differences.append(Difference(rel, "presence", "present", "absent"))
            continue
        report.files += 1
        if (len(data), digest(data).hex()) != (entry.size, entry.digest):
            report.differences.append(Difference(
                rel, "xxh3-128", f"{entry.digest} ({entry.size} bytes)",
                f"{digest(data).hex()} ({len(data)} bytes)"))
