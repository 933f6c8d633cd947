"""Ownership on etcd, measured: automatic failover after a kill -9 of node a, planned switchover
of 1, 100 and 1000 users, and what the lease check costs one commit.

    python -m bench.failover [--runs N] [--ttl 5 2] [--strict-runs N] [--sizes 1 100 1000]
                             [--json FILE]

Failover. One 3-member etcd cluster (data on disk, etcd's default election timing) serves every
run; each run starts a fresh coordinated pair (mdbox, the sync-commit plugin with `fail` in
both Dovecots, margin 1.0 s for TTL 5 and 0.5 s for TTL 2, request_timeout 0.3 s) under its own
key prefix. An IMAP client appends to one user on a without pause; at a random moment of a's
keep-alive cycle a's daemon and Dovecot are killed (SIGKILL). From that instant, polling every
20 ms: b's view names b as the owner, b serves the user (promoted), and b's Dovecot answers an
APPEND with OK. Then every APPENDUID a answered must be on b, same UIDVALIDITY, same bytes.

b is polled through its status, and APPENDs go to b only once it serves the user, as a proxy
that asks `owner` would send them: an APPEND that b refuses is still written by b's Dovecot
before the plugin answers NO, and a non-owner writing into the shared mdbox storage is not
what a client routed by the owner key ever does.

The timed runs use the default `quorum_counts = "live"`: with a's lease gone, b commits with
no peer's ack (after recording in etcd that it does). `--strict-runs` runs per TTL set
`quorum_counts = "configured"` (b waits for `sync_quorum` = 1 peer, and a is dead) and record
what b answers for 3 s after it serves the user.

Switchover: one pair with the largest size's users, one APPEND each; then for each size,
`switchover --to b --users ...` and back, timed by the command (`--json` seconds) and by a
client appending to the first user, which goes to the new owner once it serves the user: the
pause is its first OK there minus its last OK at the old owner.

Lease check: `Coordinator.refuse_commit({user})` on a coordinator whose lease and view are set
in memory (no etcd), each of 100 000 calls timed with perf_counter_ns, against the FLUSH time
the daemon reports (`status` sync_commit: capture + replicate p50).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.etcd_costs import machine
from replicator.config import load_config
from replicator.coordination.coordinator import Coordinator
from replicator.coordination.etcd import MAX_TXN_KEYS, Compare, Etcd
from replicator.coordination.keys import Keys
from replicator.coordination.view import Owner, View
from replicator.dovecot.instance import DovecotInstance
from replicator.testing.cluster import ReplicatorNode
from replicator.testing.etcd import EtcdCluster, etcd_cluster, have_etcd
from replicator.testing.failover import body_bytes
from replicator.testing.imap import parse_appenduid
from replicator.testing.scenario import TwoNodes, scratch_dir, two_nodes

MARGINS = {5: 1.0, 2: 0.5}  # lease_ttl -> margin
REQUEST_TIMEOUT = 0.3
POLL = 0.02
USER = "u1"
STRICT_WINDOW = 3.0  # seconds b is asked to APPEND after it serves the user (sync_quorum 1)
MICRO_CALLS = 100_000


def coordination(etcd: EtcdCluster, ttl: int, prefix: str) -> dict[str, Any]:
    return {"endpoints": etcd.endpoints, "lease_ttl": ttl,
            "margin": MARGINS.get(ttl, round(ttl / 5, 2)), "request_timeout": REQUEST_TIMEOUT,
            "prefix": prefix}


def start_pair(nodes: TwoNodes) -> None:
    """What two_nodes(start=True) does, once the test changed a node's settings."""
    nodes.repl_b.start()
    nodes.repl_a.start()
    nodes.dovecot_a.start()
    nodes.dovecot_b.start()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- failover --------------------------------------------------------------------------------
class Writer(threading.Thread):
    """Appends to USER on a without pause until a dies; keeps what a answered OK."""

    def __init__(self, dovecot: DovecotInstance) -> None:
        super().__init__(daemon=True)
        self.dovecot = dovecot
        self.acked: dict[int, str] = {}  # uid -> sha256 of the message
        self.uidvalidity = 0
        self.error = ""
        self.count = threading.Semaphore(0)

    def run(self) -> None:
        try:
            client = self.dovecot.imap(USER, timeout=10)
            for index in range(1, 1_000_000):
                message = body_bytes(USER, index)
                self.uidvalidity, uids = parse_appenduid(client.append("INBOX", message))
                self.acked[uids[0]] = sha(message)
                self.count.release()
        except Exception as exc:  # a's death ends it: the kill is the point
            self.error = f"{type(exc).__name__}: {exc}"[:200]
            self.count.release()


@dataclass
class Run:
    ttl: int
    alone: bool                        # quorum_counts = "live" (else "configured")
    acked: int = 0                     # APPENDs a answered OK before it died
    owner_s: float | None = None       # kill -> b's view names b the owner
    serving_s: float | None = None     # kill -> b serves the user (promoted)
    append_s: float | None = None      # kill -> b's Dovecot answered an APPEND with OK
    refused: list[str] = field(default_factory=list)  # what b answered instead
    uid_gap: int | None = None
    first_uid_on_b: int | None = None
    last_uid_on_a: int = 0
    lost: list[int] = field(default_factory=list)
    uidvalidity_same: bool = False
    problem: str = ""
    log: str = ""


def failover_run(etcd: EtcdCluster, base: Path, ttl: int, index: int, alone: bool,
                 rng: random.Random) -> Run:
    run = Run(ttl, alone)
    prefix = f"/bench-failover/{'alone' if alone else 'strict'}-{ttl}-{index}"
    counts = {"quorum_counts": "live" if alone else "configured"}
    with two_nodes("mdbox", (USER,), base=base / f"{prefix.rsplit('/', 1)[1]}",
                   sync_commit="fail", coordination={**coordination(etcd, ttl, prefix),
                                                     **counts}, start=False) as nodes:
        start_pair(nodes)
        writer = Writer(nodes.dovecot_a)
        writer.start()
        for _ in range(5):  # a few OKs first: a owns and serves the user
            writer.count.acquire(timeout=10)
        time.sleep(rng.uniform(0, ttl / 3))  # anywhere in a's keep-alive cycle
        killed = time.monotonic()
        nodes.repl_a.kill9()
        nodes.dovecot_a.kill9()
        writer.join(10)
        run.acked, run.last_uid_on_a = len(writer.acked), max(writer.acked, default=0)
        _wait_for_b(nodes, run, killed, deadline=killed + 3 * ttl + 10)
        if run.serving_s is not None:
            _append_on_b(nodes, run, killed)
            _check_on_b(nodes, run, writer)
        gap = re.findall(r"promoted \d+ user\(s\) of a \(failover\).*UID gap (\d+)",
                         nodes.repl_b.log_text())
        run.uid_gap = int(gap[-1]) if gap else None
        if run.problem or run.lost or not run.uidvalidity_same:
            run.log = nodes.repl_b.log_text()[-4000:]
    return run


def _wait_for_b(nodes: TwoNodes, run: Run, killed: float, deadline: float) -> None:
    while time.monotonic() < deadline:
        ownership = nodes.repl_b.status()["ownership"]
        now = time.monotonic() - killed
        owner = ownership["owners"].get(USER, {})
        if run.owner_s is None and owner.get("node") == "b":
            run.owner_s = now
        if USER in ownership["serving"]:
            run.serving_s = now
            return
        time.sleep(POLL)
    run.problem = f"no failover: b did not serve {USER} within {deadline - killed:.0f} s"


def _append_on_b(nodes: TwoNodes, run: Run, killed: float) -> None:
    client = nodes.dovecot_b.imap(USER, timeout=10)
    give_up = time.monotonic() + (5.0 if run.alone else STRICT_WINDOW)
    while time.monotonic() < give_up:
        try:
            answer = client.append("INBOX", b"Subject: on b\r\n\r\nfirst on b\r\n")
        except Exception as exc:
            reason = re.sub(r" \(\d+\.\d+ \+ .* secs\)\.?$", "", str(exc))
            run.refused.append(reason[:300])
            time.sleep(POLL)
            continue
        run.append_s = time.monotonic() - killed
        run.first_uid_on_b = parse_appenduid(answer)[1][0]
        break
    client.logout()
    if run.append_s is None and run.alone:
        run.problem = f"b served {USER} but refused every APPEND for 5 s"


def _check_on_b(nodes: TwoNodes, run: Run, writer: Writer) -> None:
    """Every APPENDUID a answered is on b, with the same UIDVALIDITY and bytes."""
    client = nodes.dovecot_b.imap(USER, timeout=10)
    selected = client.select_folder("INBOX", readonly=True)
    run.uidvalidity_same = int(selected[b"UIDVALIDITY"]) == writer.uidvalidity
    found = client.fetch(sorted(writer.acked), ["BODY.PEEK[]"]) if writer.acked else {}
    client.logout()
    run.lost = sorted(uid for uid, digest in writer.acked.items()
                      if uid not in found or sha(found[uid][b"BODY[]"]) != digest)


# -- switchover ------------------------------------------------------------------------------
class PauseProbe(threading.Thread):
    """Appends to `user` at its owner until refused, then at the new owner once it serves the
    user: the commit pause a client sees is first OK there minus last OK here."""

    def __init__(self, user: str, source: DovecotInstance, target: DovecotInstance,
                 target_repl: ReplicatorNode) -> None:
        super().__init__(daemon=True)
        self.user, self.source, self.target, self.target_repl = user, source, target, target_repl
        self.last_ok = self.first_ok = 0.0
        self.oks = threading.Semaphore(0)
        self.refusal = self.error = ""
        self.stop = False
        self.index = 0

    def run(self) -> None:
        try:
            self._at_source()
            self._at_target()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:300]
        self.oks.release()  # whoever waits for OKs: there will be no more

    def _append(self, client: Any) -> None:
        self.index += 1
        client.append("INBOX", body_bytes(self.user, self.index))

    def _at_source(self) -> None:
        client = self.source.imap(self.user, timeout=10)
        while not self.stop:
            try:
                self._append(client)
            except Exception as exc:
                self.refusal = re.sub(r" \(\d+\.\d+ \+ .* secs\)\.?$", "", str(exc))[:300]
                return
            self.last_ok = time.monotonic()
            self.oks.release()
            time.sleep(0.01)

    def _at_target(self) -> None:
        while not self.stop and self.user not in \
                self.target_repl.status()["ownership"]["serving"]:
            time.sleep(0.01)
        client = self.target.imap(self.user, timeout=10)
        while not self.stop:
            try:
                self._append(client)
            except Exception:
                time.sleep(0.01)
                continue
            self.first_ok = time.monotonic()
            break
        client.logout()

    @property
    def pause(self) -> float | None:
        return self.first_ok - self.last_ok if self.first_ok and self.last_ok else None


def _ownership(node: ReplicatorNode) -> dict[str, Any]:
    ownership: dict[str, Any] = node.status()["ownership"]
    return ownership


def _settle(nodes: TwoNodes, source: ReplicatorNode, lost_before: int, users: int) -> float:
    """Wait until the old owner has given every moved user up and both nodes hold a lease
    they may commit under; the seconds that took after the command returned."""
    started = time.monotonic()
    deadline = started + 180
    while time.monotonic() < deadline:
        a, b = _ownership(nodes.repl_a), _ownership(nodes.repl_b)
        mine = _ownership(source)
        if a["may_commit"] and b["may_commit"] and {"a", "b"} <= set(a["alive"]) and \
                mine["counters"]["lost"] >= lost_before + users:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not settled 180 s after a switchover: a {_ownership(nodes.repl_a)}"
                         f"\nb {_ownership(nodes.repl_b)}")


def _switch(nodes: TwoNodes, users: list[str], to: str) -> dict[str, Any]:
    if to == "b":
        source, source_repl = nodes.dovecot_a, nodes.repl_a
        target, target_repl = nodes.dovecot_b, nodes.repl_b
    else:
        source, source_repl = nodes.dovecot_b, nodes.repl_b
        target, target_repl = nodes.dovecot_a, nodes.repl_a
    before = {n.node_id: _ownership(n)["counters"] for n in (nodes.repl_a, nodes.repl_b)}
    errors_before = (len(source.error_lines()), len(target.error_lines()))
    probe = PauseProbe(users[0], source, target, target_repl)
    probe.start()
    for _ in range(3):
        probe.oks.acquire(timeout=10)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "replicator", "switchover", "--config",
                             str(nodes.repl_a.config_path), "--to", to, "--users", *users,
                             "--json", "--timeout", "600"], capture_output=True, text=True)
    wall = time.monotonic() - started
    probe.join(60)
    probe.stop = True
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = {"state": "error", "reason": (result.stderr or result.stdout)[-500:]}
    settle = _settle(nodes, source_repl, before[source_repl.node_id]["lost"], len(users))
    after = {n.node_id: _ownership(n)["counters"] for n in (nodes.repl_a, nodes.repl_b)}
    dovecot_errors = (source.error_lines()[errors_before[0]:] +
                      target.error_lines()[errors_before[1]:])
    return {"users": len(users), "to": to, "state": answer.get("state"),
            "reason": answer.get("reason", ""), "seconds": answer.get("seconds"),
            "steps": answer.get("steps", {}), "command_wall_s": round(wall, 3),
            "settle_s": round(settle, 3), "client_pause_s": probe.pause,
            "refused_with": probe.refusal, "probe_error": probe.error,
            "leases_lost": {node: after[node]["leases_granted"] - before[node]["leases_granted"]
                            for node in after},
            "dovecot_errors": dovecot_errors[:5]}


def switchover_sizes(etcd: EtcdCluster, base: Path, sizes: list[int]) -> dict[str, Any]:
    users = tuple(f"s{i:04d}" for i in range(max(sizes)))
    with two_nodes("mdbox", users, base=base / "switchover", sync_commit="fail",
                   coordination=coordination(etcd, 5, "/bench-switchover")) as nodes:
        started = time.monotonic()
        _claim_for_a(nodes, users)
        refused: list[str] = []

        def fill(user: str) -> None:
            """One APPEND (the user's claim); a refused one is tried again (its message
            stays: a duplicate at worst)."""
            client = nodes.dovecot_a.imap(user, timeout=30)
            for _ in range(5):
                try:
                    client.append("INBOX", body_bytes(user, 0))
                    break
                except Exception as exc:
                    refused.append(f"{user}: {exc}"[:300])
            client.logout()

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(fill, users))
        setup_s = time.monotonic() - started
        nodes.repl_a.barrier()
        view_read_ms = _view_read_ms(nodes)
        moves = []
        for size in sizes:
            chosen = list(users[:size])
            for to in ("b", "a"):
                moves.append(_switch(nodes, chosen, to))
                print(f"  switchover of {size} user(s) to {to}: {moves[-1]['state']} in "
                      f"{moves[-1]['seconds']} s", file=sys.stderr, flush=True)
        kick = _doveadm_kick_cost(nodes)
        return {"setup_users": len(users), "setup_s": round(setup_s, 1),
                "setup_refused": refused, "view_read_ms": view_read_ms, "moves": moves,
                "doveadm_kick_s": kick}


def _claim_for_a(nodes: TwoNodes, users: tuple[str, ...]) -> None:
    """Write the users' owner keys for a before Dovecot touches them, as a's own claims would
    (compare: absent), 100 per transaction, and wait until a serves them all. Not claims made
    by the users' first APPENDs: with many new users at once, the first batches of a user's new
    directories (drafted before the claim, token 0) can reach b after b learned the claim's
    token; b refuses them, a then counts b as holding nothing of that user, and its FLUSHes
    (and every BARRIER, so every switchover) fail from then on."""
    config = load_config(nodes.repl_a.config_path)
    assert config.coordination is not None
    etcd, keys = Etcd(config.coordination), Keys(config.coordination.prefix)
    value = Owner("a", 0, why="claim", time=time.time()).value()
    for start in range(0, len(users), MAX_TXN_KEYS):
        chunk = users[start:start + MAX_TXN_KEYS]
        ok, _ = etcd.txn([Compare(keys.owner(u), "CREATE", 0) for u in chunk],
                         [(keys.owner(u), value) for u in chunk])
        if not ok:
            raise AssertionError(f"owner keys of {chunk[0]}... exist already")
    deadline = time.monotonic() + 60
    while nodes.repl_a.status()["ownership"]["serving_users"] < len(users):
        if time.monotonic() > deadline:
            raise AssertionError(f"a serves {nodes.repl_a.status()['ownership']} of "
                                 f"{len(users)} users claimed for it")
        time.sleep(0.05)


def _view_read_ms(nodes: TwoNodes, rounds: int = 20) -> float:
    """One read of the whole prefix and its parse into a View, as a daemon's refresh does
    after every claim and whenever etcd's revision moved (p50 ms)."""
    config = load_config(nodes.repl_a.config_path)
    assert config.coordination is not None
    etcd, keys = Etcd(config.coordination), Keys(config.coordination.prefix)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        keys.view(*etcd.range_prefix(keys.all))
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def flush_cost(etcd: EtcdCluster, base: Path, appends: int = 300) -> dict[str, Any]:
    """One client's sequential APPENDs to a user a owns (TTL 5): the client's round trip and
    the daemon's own FLUSH timing (capture + replicate p50, `status` sync_commit)."""
    with two_nodes("mdbox", (USER,), base=base / "flush", sync_commit="fail",
                   coordination=coordination(etcd, 5, "/bench-flush")) as nodes:
        client = nodes.dovecot_a.imap(USER, timeout=10)
        client.append("INBOX", body_bytes(USER, 0))  # the claim
        samples = []
        for index in range(1, appends + 1):
            started = time.perf_counter()
            client.append("INBOX", body_bytes(USER, index))
            samples.append(time.perf_counter() - started)
        client.logout()
        daemon = nodes.repl_a.status()["sync_commit"]
    return {"appends": appends, "append_p50_ms": statistics.median(samples) * 1000,
            "capture_p50_ms": daemon["capture"]["p50_ms"],
            "replicate_p50_ms": daemon["replicate"]["p50_ms"]}


def _doveadm_kick_cost(nodes: TwoNodes, rounds: int = 20) -> float:
    """One `doveadm kick` of a user with no session (what a switchover runs per user)."""
    started = time.monotonic()
    for _ in range(rounds):
        subprocess.run(["doveadm", "-c", str(nodes.dovecot_a.config_path), "kick", "s0000"],
                       capture_output=True)
    return (time.monotonic() - started) / rounds


# -- the lease check ---------------------------------------------------------------------------
def refuse_commit_cost(base: Path, users: int = 1000) -> dict[str, float]:
    node = ReplicatorNode(base / "micro", "a", {"index": base / "micro-index"},
                          coordination={"endpoints": ["http://127.0.0.1:2379"]})
    (base / "micro-index").mkdir(parents=True)
    config = load_config(node.write_config())
    coordinator = Coordinator(config)
    coordinator.lease.granted(0x1234, time.monotonic(), 3600)
    coordinator._view_lease = coordinator.lease.lease_id  # the view read under this lease
    owners = {f"u{i}": Owner("a", 100 + i) for i in range(users)}
    coordinator.view = View(revision=100 + users, alive=frozenset({"a", "b"}), owners=owners)
    coordinator.owned._tokens = {u: o.token for u, o in owners.items()}
    one = {"u7"}
    if coordinator.refuse_commit(one) is not None:
        raise AssertionError(coordinator.refuse_commit(one))
    check: Callable[[set[str]], str | None] = coordinator.refuse_commit
    samples = []
    clock = time.perf_counter_ns
    for _ in range(MICRO_CALLS):
        started = clock()
        check(one)
        samples.append(clock() - started)
    empty = []
    for _ in range(MICRO_CALLS):
        started = clock()
        empty.append(clock() - started)
    bulk = clock()
    for _ in range(MICRO_CALLS):
        check(one)
    bulk = clock() - bulk
    return {"p50_us": statistics.median(samples) / 1000,
            "p99_us": sorted(samples)[int(MICRO_CALLS * 0.99)] / 1000,
            "timer_p50_us": statistics.median(empty) / 1000,
            "mean_us": bulk / MICRO_CALLS / 1000, "calls": MICRO_CALLS, "view_users": users}


# -- the whole run and its table ------------------------------------------------------------
def _stats(values: list[float | None]) -> dict[str, float | None]:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "p50": None, "max": None, "min": None}
    return {"n": len(got), "p50": statistics.median(got), "max": max(got), "min": min(got)}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(2026)
    result: dict[str, Any] = {"machine": machine(), "runs": args.runs,
                              "strict_runs": args.strict_runs, "ttls": args.ttl}
    with scratch_dir("bench-failover-", ram=False) as base, \
            etcd_cluster(base / "etcd", 3, flags=()) as etcd:
        runs: list[Run] = []
        for ttl in args.ttl:
            for alone, count in ((True, args.runs), (False, args.strict_runs)):
                for index in range(count):
                    run = failover_run(etcd, base, ttl, index, alone, rng)
                    runs.append(run)
                    print(f"  TTL {ttl} {'alone' if alone else 'strict'} run {index + 1}: "
                          f"owner {_s(run.owner_s)}, serving {_s(run.serving_s)}, APPEND OK "
                          f"{_s(run.append_s)}, acked {run.acked}, lost {len(run.lost)}"
                          + (f"; {run.problem}" if run.problem else ""),
                          file=sys.stderr, flush=True)
        result["failover"] = [asdict(r) for r in runs]
        result["switchover"] = switchover_sizes(etcd, base, args.sizes) if args.sizes else None
        result["flush"] = flush_cost(etcd, base)
        result["lease_check"] = refuse_commit_cost(base)
    return result


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    runs = [Run(**r) for r in result["failover"]]
    lines = [f"machine: {m['cpu']}, {m['nproc']} CPUs; {m['etcd']}; Python {m['python']}",
             "etcd: 3 members on loopback, data on disk, default election timing", "",
             "failover: kill -9 of a's daemon and Dovecot -> ... (mdbox, plugin `fail`)",
             f"{'TTL/margin':<11}{'counts':>11}{'runs':>5}{'owner p50/max':>16}"
             f"{'serving p50/max':>18}{'APPEND OK p50/max':>20}{'acked':>7}{'lost':>5}"]
    for ttl in result["ttls"]:
        for alone in (True, False):
            group = [r for r in runs if r.ttl == ttl and r.alone == alone]
            if not group:
                continue
            cells = []
            for name in ("owner_s", "serving_s", "append_s"):
                s = _stats([getattr(r, name) for r in group])
                cells.append("never" if s["n"] == 0 else
                             f"{s['p50']:.2f}/{s['max']:.2f}" +
                             ("" if s["n"] == len(group) else f" ({s['n']} ok)"))
            lines.append(f"{f'{ttl} s/{MARGINS.get(ttl)} s':<11}"
                         f"{'live' if alone else 'configured':>11}"
                         f"{len(group):>5}{cells[0]:>16}{cells[1]:>18}{cells[2]:>20}"
                         f"{sum(r.acked for r in group):>7}{sum(len(r.lost) for r in group):>5}")
    gaps = sorted({r.uid_gap for r in runs if r.uid_gap is not None})
    steps = sorted({r.first_uid_on_b - r.last_uid_on_a for r in runs
                    if r.first_uid_on_b is not None})
    lines.append(f"UID gap of b's promotes: {gaps}; UIDVALIDITY kept in "
                 f"{sum(r.uidvalidity_same for r in runs)}/{len(runs)} runs; b's first UID "
                 f"minus a's last acknowledged UID: {steps} (2: a's APPEND in flight at the "
                 "kill was written, not answered)")
    strict = [r for r in runs if not r.alone]
    if strict:
        reasons = sorted({why for r in strict for why in r.refused})
        refused = sum(len(r.refused) for r in strict)
        lines.append(f"b with quorum_counts = configured, a dead: {refused} "
                     f"APPEND(s) refused in {len(strict)} run(s), "
                     f"{sum(r.append_s is not None for r in strict)} OK; "
                     + ("; ".join(reasons[:2]) or "-"))
    for r in runs:
        if r.problem or r.lost or (r.serving_s is not None and not r.uidvalidity_same):
            lines += [f"FINDING (TTL {r.ttl}, {'alone' if r.alone else 'strict'}): "
                      f"{r.problem or ''} lost {r.lost} uidvalidity same {r.uidvalidity_same}",
                      r.log]
    sw = result.get("switchover")
    if sw:
        lines += ["", f"switchover (TTL 5 s; {sw['setup_users']} users made with one APPEND "
                  f"each by 2 clients in {sw['setup_s']} s, {len(sw['setup_refused'])} APPEND(s)"
                  f" refused on the way; one `doveadm kick` costs "
                  f"{sw['doveadm_kick_s'] * 1000:.0f} ms; one read and parse of the view with "
                  f"{sw['setup_users']} owners {sw['view_read_ms']:.1f} ms)",
                  f"{'users':>6}{'to':>4}{'state':>7}{'command s':>11}{'blocked':>9}"
                  f"{'barrier':>9}{'handed':>8}{'client pause s':>16}{'settle s':>10}"
                  f"{'leases lost a/b':>17}"]
        notes = []
        for move in sw["moves"]:
            steps = move["steps"]
            pause = move["client_pause_s"]
            lost = f"{move['leases_lost']['a']}/{move['leases_lost']['b']}"
            lines.append(f"{move['users']:>6}{move['to']:>4}{move['state'] or '?':>7}"
                         f"{move['seconds'] or 0:>11.3f}{steps.get('blocked', 0):>9.3f}"
                         f"{steps.get('barrier', 0):>9.3f}{steps.get('handed', 0):>8.3f}"
                         f"{'-' if pause is None else f'{pause:.3f}':>16}"
                         f"{move['settle_s']:>10.1f}{lost:>17}")
            where = f"{move['users']} to {move['to']}"
            if move["state"] != "done":
                notes.append(f"  {where}: {move['state']}: {move['reason']}")
            if move["probe_error"]:
                notes.append(f"  {where}: client: {move['probe_error']}")
            notes += [f"  {where}: Dovecot: {line[:250]}" for line in move["dovecot_errors"]]
        lines += notes
    lease, flush = result["lease_check"], result["flush"]
    flush_ms = None
    if flush["capture_p50_ms"] is not None:
        flush_ms = flush["capture_p50_ms"] + flush["replicate_p50_ms"]
    lines += ["", f"FLUSH at a, {flush['appends']} sequential APPENDs of one client: APPEND "
              f"round trip p50 {flush['append_p50_ms']:.3f} ms; daemon's FLUSH p50: capture "
              f"{flush['capture_p50_ms']} ms + replicate {flush['replicate_p50_ms']} ms",
              f"lease check: refuse_commit({{user}}) with {lease['view_users']} owners in the "
              f"view, {lease['calls']} calls: p50 {lease['p50_us']:.2f} µs, p99 "
              f"{lease['p99_us']:.2f} µs (timer alone p50 {lease['timer_p50_us']:.2f} µs), "
              f"mean {lease['mean_us']:.2f} µs in a bare loop"
              + (f"; {lease['p50_us'] / (flush_ms * 1000) * 100:.3f} % of a {flush_ms:.3f} ms "
                 "FLUSH" if flush_ms else "")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20,
                        help="timed failovers per TTL (b may commit alone; 20)")
    parser.add_argument("--strict-runs", type=int, default=3,
                        help="failovers per TTL with quorum_counts = \"configured\" (3)")
    parser.add_argument("--ttl", type=int, nargs="+", default=[5, 2], help="lease TTLs (5 2)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 100, 1000],
                        help="users per switchover (1 100 1000; none: skip)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    missing = have_etcd()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    result = run_all(args)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    lost = sum(len(r["lost"]) for r in result["failover"])
    return 1 if lost or any(r["problem"] for r in result["failover"]) else 0


if __name__ == "__main__":
    sys.exit(main())
