"""The demo's measuring steps, kept apart from its narration."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.config import load_config
from replicator.dovecot.snapshot import StateSnapshot, snapshot
from replicator.promote.command import promote
from replicator.testing.cluster import ReplicatorNode
from replicator.testing.etcd import etcd_cluster
from replicator.testing.failover import body_bytes
from replicator.testing.imap import parse_appenduid
from replicator.testing.lagprobe import LagProbe
from replicator.testing.scenario import TwoNodes, scratch_dir, two_nodes
from replicator.verify.runner import verify_replica
from replicator.verify.trees import compare_trees


@dataclass
class Failover:
    mailboxes: int = 0
    identical: bool = False
    uid_gap: int = 0
    verify_s: float = 0.0
    promote_s: float = 0.0
    new_uid: int = 0
    old_uidnext: int = 0


@dataclass
class AutoFailover:
    """The automatic failover on etcd; times are seconds from the kill -9 of node a."""
    ttl: int = 2
    appended: int = 0
    owner_before: str = ""
    owner_after: str = ""
    took_over_s: float | None = None
    serving_s: float | None = None
    all_on_b: bool = False
    refused_alone: str = ""             # what b answered while a was down, if it refused
    a_back_s: float | None = None       # a's daemon and Dovecot running again
    append_on_b_s: float | None = None  # first APPEND b answered OK
    append_on_b_uid: int = 0
    quarantined: list[str] = field(default_factory=list)
    switchover_s: float | None = None
    owner_final: str = ""
    append_on_a_uid: int = 0

    @property
    def ok(self) -> bool:
        return self.all_on_b and self.append_on_b_s is not None and bool(self.owner_final)


@dataclass
class Summary:
    files: int
    differences: int
    body_bytes: int
    traffic: dict[str, Any]
    bytes_sent: int
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    rss_mib: dict[str, float]
    failover: Failover
    auto: AutoFailover | None = None
    auto_skipped: str = ""


def verify_roots(nodes: TwoNodes) -> tuple[int, int]:
    files = differences = 0
    for name, root in nodes.roots_of(nodes.dovecot_a).items():
        report = compare_trees(root, nodes.repl_b.replica_of("a", name))
        files += report.files
        differences += len(report.differences)
        for d in report.differences[:5]:
            print(f"    {name}/{d.path}: {d.field}: expected {d.expected}, found {d.found}")
    return files, differences


def measure_lag(nodes: TwoNodes, samples: int) -> list[float]:
    """Toggle \\Flagged on one message `samples` times, timing each change's replication."""
    client = nodes.dovecot_a.imap(nodes.users[0])
    client.append("INBOX", b"Subject: lag probe\r\n\r\nThe probe flags this message.\r\n")
    client.select_folder("INBOX")
    uid = max(client.search("ALL"))
    nodes.repl_a.barrier()
    origin = nodes.mailbox_index_dir(nodes.users[0]) / "dovecot.index.log"
    probe = LagProbe(origin, nodes.replica_path(origin))
    lags: list[float] = []
    try:
        for i in range(samples):
            lag = probe.measure(functools.partial(
                client.add_flags if i % 2 == 0 else client.remove_flags, [uid], ["\\Flagged"],
                silent=True))
            if lag is not None:
                lags.append(lag)
    finally:
        probe.close()
        client.logout()
    return lags


def fail_over(nodes: TwoNodes, say: Callable[[str], None]) -> Failover:
    """Kill node a (Dovecot and daemon, SIGKILL), verify b's copy, promote it, start b's
    Dovecot on it and compare what Dovecot reports with what a reported before dying."""
    nodes.quiesce()
    before = snapshot(nodes.dovecot_a.config_path, nodes.users)
    nodes.dovecot_a.kill9()
    nodes.repl_a.kill9()
    say("node a killed (kill -9 of Dovecot and of its replicator)")
    config = load_config(nodes.repl_b.config_path)
    started = time.monotonic()
    report = verify_replica(config.replica_root("a"), sorted(config.roots))
    result = Failover(verify_s=time.monotonic() - started)
    say(f"verify --local on b: {report.files} files against the digest journal: "
        + ("consistent" if report.consistent else f"{len(report.differences)} differences"))
    started = time.monotonic()
    promoted = promote(config, "a")
    result.promote_s, result.uid_gap = time.monotonic() - started, promoted.uid_gap
    result.mailboxes = promoted.mailboxes
    say(f"promote on b: fenced a at epoch {promoted.epoch}, {len(promoted.users)} users, "
        f"{promoted.mailboxes} mailboxes, next UIDs raised by {promoted.uid_gap}")
    nodes.dovecot_b.start()
    after = snapshot(nodes.dovecot_b.config_path, nodes.users)
    result.identical = _same_but_gap(before, after, promoted.uid_gap)
    say("b's Dovecot serves a's users: " + ("same messages, UIDs, flags, UIDVALIDITY "
        f"(UIDNEXT +{promoted.uid_gap})" if result.identical else "DIFFERENT state:"))
    if not result.identical:
        for line in before.differences(after)[:20]:
            say(f"    {line}")
    client = nodes.dovecot_b.imap(nodes.users[0])
    result.old_uidnext = before.users[nodes.users[0]].mailboxes["INBOX"].status.uidnext
    result.new_uid = parse_appenduid(client.append("INBOX", b"Subject: on b\r\n\r\nhi\r\n"))[1][0]
    client.logout()
    say(f"a new APPEND on b got UID {result.new_uid} (a's UIDNEXT was {result.old_uidnext})")
    return result


AUTO_USER = "u1"
AUTO_TTL, AUTO_MARGIN = 2, 0.5


def automatic_failover(say: Callable[[str], None], keep: Path | None = None) -> AutoFailover:
    """Ownership on etcd: a 3-member etcd, a pair whose daemons hold leases there (both
    Dovecots with the plugin, `fail`), node a killed with kill -9; b takes the user over by
    itself. Then a comes back as a replica and a switchover hands the user back to it."""
    result = AutoFailover(ttl=AUTO_TTL)
    with scratch_dir("dovecot-replicator-etcd-demo-", ram=False) as scratch:
        base = keep / "automatic-failover" if keep is not None else scratch
        with etcd_cluster(base / "etcd") as etcd:
            say(f"etcd: 3 members on loopback ({_etcd_version()}); lease TTL {AUTO_TTL} s, "
                f"commits stop {AUTO_MARGIN} s before it runs out")
            coordination = {"endpoints": etcd.endpoints, "lease_ttl": AUTO_TTL,
                            "margin": AUTO_MARGIN, "request_timeout": 0.3}
            with two_nodes("mdbox", (AUTO_USER, "u2"), base=base / "pair", sync_commit="fail",
                           coordination=coordination) as nodes:
                _auto_story(nodes, result, say)
    return result


def _auto_story(nodes: TwoNodes, result: AutoFailover, say: Callable[[str], None]) -> None:
    user = AUTO_USER
    client = nodes.dovecot_a.imap(user)
    sent: dict[int, str] = {}
    uidvalidity = 0
    for index in range(1, 6):
        message = body_bytes(user, index)
        uidvalidity, uids = parse_appenduid(client.append("INBOX", message))
        sent[uids[0]] = hashlib.sha256(message).hexdigest()
    client.logout()
    result.appended = len(sent)
    say(f"a: {len(sent)} APPENDs for {user}, APPENDUID {uidvalidity} {min(sent)}:{max(sent)} "
        "(each answered only once b held it)")
    result.owner_before = _owner_line(nodes, user)
    say(f"owner: {result.owner_before}")
    killed = time.monotonic()
    nodes.repl_a.kill9()
    nodes.dovecot_a.kill9()
    say("node a killed (kill -9 of its replicator and of its Dovecot); nobody promotes by hand")
    deadline = killed + 6 * AUTO_TTL + 10
    while time.monotonic() < deadline:
        ownership = nodes.repl_b.status()["ownership"]
        if result.took_over_s is None and ownership["owners"].get(user, {}).get("node") == "b":
            result.took_over_s = time.monotonic() - killed
        if user in ownership["serving"]:
            result.serving_s = time.monotonic() - killed
            break
        time.sleep(0.02)
    if result.serving_s is None:
        say(f"b did NOT take {user} over within {deadline - killed:.0f} s; b's log ends:")
        print(nodes.repl_b.log_text()[-2000:])
        return
    say(f"b: a's lease expired, b took {user} over at +{result.took_over_s:.2f} s and serves "
        f"it from its RAM copy at +{result.serving_s:.2f} s")
    result.owner_after = _owner_line(nodes, user)
    say(f"owner: {result.owner_after}")
    client = nodes.dovecot_b.imap(user)
    selected = client.select_folder("INBOX", readonly=True)
    found = client.fetch(sorted(sent), ["BODY.PEEK[]"])
    same = [uid for uid, digest in sent.items() if uid in found and
            hashlib.sha256(found[uid][b"BODY[]"]).hexdigest() == digest]
    result.all_on_b = len(same) == len(sent) and selected[b"UIDVALIDITY"] == uidvalidity
    say(f"b's Dovecot: {len(same)} of the {len(sent)} APPENDUIDs a answered, same bytes, "
        f"UIDVALIDITY {selected[b'UIDVALIDITY']}"
        + (" (same)" if selected[b"UIDVALIDITY"] == uidvalidity else f" (a said {uidvalidity})"))
    _append_on_b(nodes, client, killed, result, say)
    client.logout()
    if result.append_on_b_s is not None:
        _switch_back(nodes, result, say)


def _append_on_b(nodes: TwoNodes, client: Any, killed: float, result: AutoFailover,
                 say: Callable[[str], None]) -> None:
    try:
        answer = client.append("INBOX", b"Subject: on b\r\n\r\nwritten on b\r\n")
    except Exception as exc:
        result.refused_alone = re.sub(r" \(\d+\.\d+ \+ .* secs\)\.?$", "", str(exc))
        say(f"APPEND on b while a is down: NO: {result.refused_alone}")
        say("  (`fail` answers OK only once a peer holds the change; b's only peer is dead)")
        nodes.repl_a.start()
        nodes.dovecot_a.start()
        result.a_back_s = time.monotonic() - killed
        say(f"a restarted at +{result.a_back_s:.2f} s: it holds a lease again and follows b "
            "as a replica")
        answer = b""
        for _ in range(3):  # a's link to b may take a moment to come up
            try:
                answer = client.append("INBOX", b"Subject: on b\r\n\r\nwritten on b\r\n")
                break
            except Exception as again:
                say(f"APPEND on b refused again: {again}")
        if not answer:
            return
    result.append_on_b_s = time.monotonic() - killed
    result.append_on_b_uid = parse_appenduid(answer)[1][0]
    say(f"APPEND on b: OK, UID {result.append_on_b_uid}, +{result.append_on_b_s:.2f} s after "
        "the kill" + (" (the refused one stays too: `fail` may duplicate, never lose)"
                      if result.refused_alone else ""))


def _switch_back(nodes: TwoNodes, result: AutoFailover, say: Callable[[str], None]) -> None:
    user = AUTO_USER
    if not nodes.repl_a.running():
        nodes.repl_a.start()
        nodes.dovecot_a.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not result.quarantined:
        area = nodes.repl_a.state_dir / "quarantine"
        result.quarantined = sorted(p.name for p in area.iterdir()) if area.is_dir() else []
        time.sleep(0.05)
    if result.quarantined:
        say(f"a's own copy of {user} (superseded by b's) was moved to its quarantine "
            f"({', '.join(result.quarantined)}), not deleted")
    answer = _cli(nodes, "switchover", "--to", "a", "--users", user, "--json")
    try:
        moved = json.loads(answer)
    except ValueError:
        say(f"switchover b -> a failed: {answer.strip()}")
        return
    if moved["state"] != "done":
        say(f"switchover b -> a {moved['state']}: {moved['reason']}")
        return
    result.switchover_s = float(moved["seconds"])
    result.owner_final = _owner_line(nodes, user)
    say(f"switchover b -> a: {result.switchover_s:.2f} s (b stops committing, a catches up, "
        f"the owner key moves); owner: {result.owner_final}")
    client = nodes.dovecot_a.imap(user)
    result.append_on_a_uid = parse_appenduid(
        client.append("INBOX", b"Subject: back on a\r\n\r\nhello again\r\n"))[1][0]
    client.logout()
    say(f"APPEND on a: OK, UID {result.append_on_a_uid} (UID gap 0)")


def _cli(nodes: TwoNodes, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "replicator", *args, "--config",
                           str(nodes.repl_b.config_path)], capture_output=True, text=True)
    return done.stdout or done.stderr


def _owner_line(nodes: TwoNodes, user: str) -> str:
    return _cli(nodes, "owner", user).strip().removeprefix(f"{user}: ")


def _etcd_version() -> str:
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].replace("etcd Version: ", "etcd ") if out else "etcd"


def _same_but_gap(before: StateSnapshot, after: StateSnapshot, gap: int) -> bool:
    for user, state in before.users.items():
        other = after.users.get(user)
        if other is None or other.subscriptions != state.subscriptions:
            return False
        for name, box in state.mailboxes.items():
            got = other.mailboxes.get(name)
            if got is None or got.flags != box.flags or (
                    got.status.messages, got.status.uidnext, got.status.uidvalidity) != (
                    box.status.messages, box.status.uidnext + gap, box.status.uidvalidity):
                return False
    return set(after.users) == set(before.users)


def peak_rss_mib(node: ReplicatorNode) -> float:
    """Peak resident memory (VmHWM) of a running daemon."""
    assert node.process is not None
    with open(f"/proc/{node.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def print_summary(s: Summary, seconds: float) -> None:
    traffic = s.traffic
    ratio = traffic["ratio"]
    rows = [
        ("files replicated (index + control roots)", f"{s.files}"),
        ("differences after verify", f"{s.differences}"),
        ("message bodies written by IMAP clients", _size(s.body_bytes)),
        ("bytes a whole-file copier would send", _size(traffic["whole_file_bytes"])),
        ("delta bytes in batches", _size(traffic["op_bytes"])),
        ("bytes sent on the link (framed, compressed)", _size(s.bytes_sent)),
        ("wire ratio (link bytes / whole-file bytes)",
         f"{s.bytes_sent / traffic['whole_file_bytes']:.3f}" if traffic["whole_file_bytes"]
         else "-"),
        ("delta ratio (batch data / whole-file bytes)", f"{ratio:.3f}" if ratio else "-"),
        ("lag p50 / p99 (flag STORE -> replica identical)",
         f"{s.lag_p50_ms:.3f} ms / {s.lag_p99_ms:.3f} ms" if s.lag_p50_ms else "-"),
        ("peak RSS of daemon a / b", f"{s.rss_mib.get('a', 0):.1f} MiB / "
                                     f"{s.rss_mib.get('b', 0):.1f} MiB"),
        ("failover: mailboxes promoted on b", f"{s.failover.mailboxes}"),
        ("failover: Dovecot state on b vs a", f"identical (UIDNEXT +{s.failover.uid_gap})"
         if s.failover.identical else "DIFFERENT"),
        ("failover: verify --local / promote", f"{s.failover.verify_s * 1000:.0f} ms / "
                                               f"{s.failover.promote_s * 1000:.0f} ms"),
    ]
    rows += _auto_rows(s)
    rows.append(("demo wall time", f"{seconds:.1f} s"))
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * (width + 24))
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("=" * (width + 24))


def _auto_rows(s: Summary) -> list[tuple[str, str]]:
    auto = s.auto
    if auto is None:
        return [("automatic failover (etcd)", f"skipped: {s.auto_skipped}")]
    rows = [("auto failover: kill -9 -> b serves the user",
             f"{auto.serving_s:.2f} s (lease TTL {auto.ttl} s)" if auto.serving_s else "NO"),
            ("auto failover: a's APPENDUIDs on b", "all, same UIDVALIDITY" if auto.all_on_b
             else "MISSING OR DIFFERENT")]
    if auto.refused_alone:
        rows.append(("auto failover: APPEND on b while a is down", "refused (fail policy)"))
    rows.append(("auto failover: kill -9 -> first APPEND OK on b",
                 "-" if auto.append_on_b_s is None else f"{auto.append_on_b_s:.2f} s"
                 + (f" (a back at {auto.a_back_s:.2f} s)" if auto.a_back_s else "")))
    rows.append(("switchover b -> a", "-" if auto.switchover_s is None
                 else f"{auto.switchover_s:.2f} s, UID gap 0"))
    return rows


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"
