"""`dovecot-replicator owner USER` and `dovecot-replicator switchover --to NODE`: the
operator's view of ownership and the planned handover, both straight from etcd (they work
from any node whose config has [coordination], whether its daemon runs or not)."""

from __future__ import annotations

import argparse
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replicator.config import Config, load_config
from replicator.errors import ReplicatorError

if TYPE_CHECKING:  # imported when used: every other command starts without an HTTP stack
    from replicator.coordination.etcd import Etcd
    from replicator.coordination.keys import Keys
    from replicator.coordination.switchover import Request
    from replicator.coordination.view import View


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    owner = commands.add_parser(
        "owner", help="which node owns a user (ownership on etcd), with its fencing token",
        description="Read the owner of USER from etcd: the node that may commit for it now, "
                    "the fencing token (the etcd revision of the owner key: every change of "
                    "owner raises it), how it became owner, and whether that node's lease is "
                    "alive. A proxy or passdb can ask this to route the user.",
        epilog="exit codes: 0 served by its live owner, 1 no owner, owner's lease gone, or "
               "the owner is still promoting the user, 2 error")
    owner.add_argument("user", nargs="+", metavar="USER")
    owner.add_argument("--config", type=Path, required=True, help="a node's configuration")
    owner.add_argument("--json", action="store_true", help="machine-readable output")

    switch = commands.add_parser(
        "switchover", help="move users to another live node: no UID gap, nothing lost",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Planned handover (maintenance, failback). The current owner refuses new "
                    "commits for the users and kicks their sessions, waits until the target "
                    "acknowledged everything, hands the owner keys over in etcd transactions "
                    "that compare each key's revision; the target promotes its RAM copy with "
                    "a UID gap of 0 and serves them. Both daemons must be running.",
        epilog="examples:\n  dovecot-replicator switchover --config node.toml --to b\n"
               "  dovecot-replicator switchover --config node.toml --to a --users u1 u2\n"
               "exit codes: 0 done, 1 refused or failed (users stay with their owner), 2 error")
    switch.add_argument("--config", type=Path, required=True, help="a node's configuration")
    switch.add_argument("--to", required=True, metavar="NODE", help="the new owner")
    switch.add_argument("--from", dest="source", metavar="NODE",
                        help="move every user of NODE (default: the one other owner)")
    switch.add_argument("--users", nargs="+", metavar="USER", help="only these users")
    switch.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the switchover to finish (120)")
    switch.add_argument("--json", action="store_true", help="machine-readable output")


def _connect(path: Path) -> tuple[Config, Etcd, Keys]:
    from replicator.coordination.etcd import Etcd
    from replicator.coordination.keys import Keys

    config = load_config(path)
    if config.coordination is None:
        raise ReplicatorError(f"{path} has no [coordination]: ownership is manual here "
                              "(`promote` moves users)")
    return config, Etcd(config.coordination), Keys(config.coordination.prefix)


def read_view(etcd: Etcd, keys: Keys) -> tuple[View, list[Request]]:
    from replicator.coordination.switchover import Request

    revision, entries = etcd.range_prefix(keys.all)
    view, raw = keys.view(revision, entries)
    return view, [r for e in raw if (r := Request.parse(e)) is not None]


def run_owner(args: argparse.Namespace) -> int:
    _, etcd, keys = _connect(args.config)
    view, _ = read_view(etcd, keys)
    answers: dict[str, Any] = {}
    for user in args.user:
        owner = view.owner(user)
        answers[user] = None if owner is None else {
            "node": owner.node, "token": owner.token, "alive": owner.node in view.alive,
            "ready": view.ready(user),
            "why": owner.why, "from": owner.origin or None, "since": owner.time}
    if args.json:
        print(json.dumps({"revision": view.revision, "owners": answers}, indent=2))
    for user, answer in answers.items():
        if args.json:
            break
        if answer is None:
            print(f"{user}: no owner (no node has claimed it yet)")
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(answer["since"]))
        how = answer["why"] + (f" from {answer['from']}" if answer["from"] else "")
        state = ("serving" if answer["ready"] else "promoting") if answer["alive"] else \
            "lease GONE: awaiting takeover"
        print(f"{user}: {answer['node']} (token {answer['token']}, {how} at {since}; {state})")
    return 0 if all(a is not None and a["ready"] for a in answers.values()) else 1


def run_switchover(args: argparse.Namespace) -> int:
    _, etcd, keys = _connect(args.config)
    view, _ = read_view(etcd, keys)
    if args.to not in view.alive:
        raise ReplicatorError(f"{args.to} holds no lease in etcd (is its daemon running?)")
    from replicator.coordination.etcd import Compare
    from replicator.coordination.switchover import Request

    source, users = _pick(view, args)
    request = Request(secrets.token_hex(4), source, args.to, users)
    started = time.monotonic()
    ok, _ = etcd.txn([Compare(keys.switchover(request.ident), "CREATE", 0)],
                     [(keys.switchover(request.ident), request.value())])
    if not ok:
        raise ReplicatorError("could not record the switchover request (try again)")
    final = _wait(etcd, keys, request.ident, started + args.timeout)
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({"request": request.ident, "from": source, "to": args.to,
                          "users": len(users), "state": final.state, "reason": final.reason,
                          "seconds": round(seconds, 3), "steps": final.times}, indent=2))
    elif final.state == "done":
        print(f"switchover {request.ident}: {len(users)} user(s) moved from {source} to "
              f"{args.to} in {seconds:.2f} s (commits paused {seconds:.2f} s, UID gap 0)")
    else:
        print(f"switchover {request.ident} {final.state}: {final.reason or 'timed out'}")
    return 0 if final.state == "done" else 1


def _pick(view: View, args: argparse.Namespace) -> tuple[str, list[str]]:
    if args.users:
        unowned = [u for u in args.users if view.owner(u) is None]
        if unowned:
            raise ReplicatorError(f"no owner for {', '.join(unowned[:10])}")
        owners = {o.node for u in args.users if (o := view.owner(u)) is not None}
        if len(owners) != 1:
            raise ReplicatorError("the users have different owners: one switchover moves "
                                  "users of one owner")
        source = str(owners.pop())
        users = sorted(args.users)
    else:
        others = sorted({o.node for o in view.owners.values()} - {args.to})
        if args.source is None and len(others) != 1:
            raise ReplicatorError(f"say --from NODE (owners other than {args.to}: "
                                  f"{', '.join(others) or 'none'})")
        source = args.source or others[0]
        users = sorted(view.owned_by(source))
    if source == args.to:
        raise ReplicatorError(f"{args.to} already owns them")
    if not users:
        raise ReplicatorError(f"{source} owns no users")
    if source not in view.alive:
        raise ReplicatorError(f"{source} holds no lease: a failover, not a switchover, moves "
                              "its users (it happens by itself)")
    return source, users


def _wait(etcd: Etcd, keys: Keys, ident: str, deadline: float) -> Request:
    last: Request | None = None
    while time.monotonic() < deadline:
        _, requests = read_view(etcd, keys)
        last = next((r for r in requests if r.ident == ident), last)
        if last is not None and last.state in ("done", "failed"):
            return last
        time.sleep(0.02)
    assert last is not None
    return last
