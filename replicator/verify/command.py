"""The `verify` command: pick the mode from the arguments, run it, show it, exit 0/1/2."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from replicator.config import load_config
from replicator.control.server import request
from replicator.errors import ReplicatorError
from replicator.verify.model import MailboxStatus, VerifyReport
from replicator.verify.online import verify_online
from replicator.verify.render import print_json, print_table
from replicator.verify.runner import Reading, verify_offline, verify_replica
from replicator.verify.walk import walk

REPAIR_TIMEOUT = 60.0
PROGRESS_FROM = 2000  # files; below this a bar would only flicker


def run_verify(args: argparse.Namespace) -> int:
    with _progress(args):
        report = _run(args)
    print_json(report) if args.json else print_table(report)
    return report.exit_code


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[None]:
    """A progress bar on stderr for large trees, when a person is watching."""
    top = args.replica or (load_config(args.config).replica_root(args.origin)
                           if args.config and args.origin else None)
    total = sum(len(names) for _rel, names in walk(str(top))) if top and sys.stderr.isatty() else 0
    if total < PROGRESS_FROM:
        yield
        return
    with Progress(*Progress.get_default_columns(), console=Console(stderr=True),
                  transient=True) as bar:
        task = bar.add_task("verifying", total=total)
        Reading.on_read = lambda: bar.advance(task)
        try:
            yield
        finally:
            Reading.on_read = None


def _run(args: argparse.Namespace) -> VerifyReport:
    if args.source or args.replica:
        if not (args.source and args.replica):
            raise ReplicatorError("offline verify needs both --source and --replica")
        report = verify_offline(args.source, args.replica)
    elif args.config and args.origin:
        report = _verify_node(args)
    else:
        raise ReplicatorError("verify needs --source and --replica, or --config and --origin "
                              "(see verify --help)")
    if args.doveadm and not report.errors:
        _add_doveadm_view(args, report)
    return report


def _verify_node(args: argparse.Namespace) -> VerifyReport:
    config = load_config(args.config)
    if config.peer(args.origin) is None:
        raise ReplicatorError(f"{args.origin!r} is not a configured peer of {config.node_id}")

    def once() -> VerifyReport:
        if args.local:
            report = verify_replica(config.replica_root(args.origin), sorted(config.roots))
            report.origin = args.origin
            return report
        return verify_online(config, args.origin, wait=args.wait)

    report = once()
    if args.repair and report.exit_code == 1:
        _ask_repair(config.control_socket, args.origin)
        deadline = time.monotonic() + REPAIR_TIMEOUT
        while (report := once()).exit_code == 1 and time.monotonic() < deadline:
            time.sleep(0.2)
    return report


def _ask_repair(socket_path: Path, origin: str) -> None:
    try:
        reply = asyncio.run(request(socket_path, f"REPAIR\t1\t{origin}"))
    except OSError as exc:
        raise ReplicatorError(f"cannot reach the local daemon to repair: {exc}") from None
    if not reply.startswith("OK"):
        raise ReplicatorError(f"the daemon could not repair: {reply}")


def _add_doveadm_view(args: argparse.Namespace, report: VerifyReport) -> None:
    from replicator.dovecot.doveadm import DoveadmError
    from replicator.dovecot.instance_conf import MailLocationError
    from replicator.dovecot.readonly_view import replica_status
    from replicator.promote.materialize import replica_users

    base = (load_config(args.config).replica_root(args.origin) if args.config
            else args.replica.parent)
    users = replica_users(base, ["index", "control"])
    try:
        view = replica_status(base / "index", base / "control", args.doveadm, users)
    except DoveadmError as exc:
        report.errors.append(f"Dovecot could not open the replica: {exc}")
        return
    except MailLocationError as exc:
        report.errors.append(f"--doveadm: {exc}")
        return
    for user, boxes in view.items():
        for name, st in sorted(boxes.items()):
            report.mailboxes.append(MailboxStatus(user, name, st.messages, st.uidnext,
                                                  st.uidvalidity, st.highestmodseq))
