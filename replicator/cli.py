"""`dovecot-replicator` (also `python -m replicator`): the daemon and its tools.

Every error an operator can cause (bad config, unreachable peer, refused promote) is printed as
one line and exits with the error's code (2 by default); `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from replicator import __version__
from replicator.config import DEFAULT_CONTROL_SOCKET, load_config
from replicator.coordination.commands import add_commands
from replicator.errors import ReplicatorError

DESCRIPTION = """\
Keeps Dovecot's index, cache and control files replicated in the RAM of peer mail servers, so
that a node can fail and a peer take over its users with every UID, flag and UIDVALIDITY intact.
Message bodies stay on the shared (replicated) filesystem and are never sent.
"""

EPILOG = """\
examples:
  dovecot-replicator run --config /etc/dovecot-replicator/node.toml
  dovecot-replicator status --config /etc/dovecot-replicator/node.toml
  dovecot-replicator verify --source /var/lib/dovecot-index \\
      --replica /run/dovecot-replicator/a/index
  dovecot-replicator owner --config /etc/dovecot-replicator/node.toml alice
  dovecot-replicator switchover --config /etc/dovecot-replicator/node.toml --to b
exit codes: 0 ok, 1 differences found (verify), 2 error (message on stderr)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dovecot-replicator", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the daemon in the foreground (what systemd starts)",
        description="Watch this node's roots and stream changes to every peer; keep RAM copies "
                    "of every peer's roots under replica_dir; serve the control socket.")
    run.add_argument("--config", type=Path, required=True, help="TOML configuration file")

    status = commands.add_parser(
        "status", help="peers, transport, lag, queue depth, epoch, last errors",
        description="Ask the running daemon (over its control socket) how replication goes.")
    status.add_argument("--config", type=Path, help="configuration (for the socket path)")
    status.add_argument("--socket", type=Path, help=f"control socket (default: from --config, "
                                                    f"else {DEFAULT_CONTROL_SOCKET})")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    verify = commands.add_parser(
        "verify", help="prove that a replica equals its origin (exit 0/1/2)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare a replica with its origin file by file (size and xxh3-128), "
                    "explain differing Dovecot files field by field (next_uid, uid_validity, "
                    "log offsets...), and check that Dovecot would accept the replica (index "
                    "log offsets exist in the replica's log, cache and uidlist match).",
        epilog="modes:\n"
               "  --source DIR --replica DIR     offline: an origin root and a copy of it\n"
               "  --config FILE --origin ID      online: ask the origin (over the replication\n"
               "                                 link) what it shipped; compare this node's\n"
               "                                 RAM copy\n"
               "  --config FILE --origin ID --local\n"
               "                                 the RAM copy against its digest journal\n"
               "                                 (the origin may be down)\n"
               "exit codes: 0 consistent, 1 differences, 2 could not verify")
    verify.add_argument("--source", type=Path, help="origin root directory (offline)")
    verify.add_argument("--replica", type=Path, help="replica of that root (offline)")
    verify.add_argument("--config", type=Path, help="this node's configuration")
    verify.add_argument("--origin", help="node id of the origin whose replica to verify")
    verify.add_argument("--local", action="store_true",
                        help="check against the digest journal, without asking the origin")
    verify.add_argument("--repair", action="store_true",
                        help="if differences are found, ask the local daemon to have the "
                             "origin resend them, then verify again")
    verify.add_argument("--wait", type=float, default=10.0,
                        help="seconds to wait for the replica to catch up (online; 10)")
    verify.add_argument("--doveadm", metavar="MAIL_LOCATION",
                        help="also open a copy of the replica with Dovecot, e.g. "
                             "'maildir:/srv/mail/%%u/Maildir' (2.3's mail_location form on "
                             "2.3 and 2.4 alike; INDEX/CONTROL are added), and report doveadm "
                             "mailbox status for every mailbox")
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    promote = commands.add_parser(
        "promote", help="take over a dead node's users from this node's RAM copy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fence the origin (a higher epoch, stored before anything else: its "
                    "batches are refused from then on), check the RAM copy against its digest "
                    "journal and Dovecot's rules, copy its users into this node's Dovecot "
                    "roots (per user: stage, sync, rename), raising each mailbox's next UID by "
                    "a safety gap unless the origin ran sync commit with the fail policy. "
                    "Refuses while the origin still answers, unless --force. Users promoted "
                    "before are left alone, so users can be moved in steps (--users).",
        epilog="example:\n  dovecot-replicator promote --config /etc/dovecot-replicator/"
               "node.toml --origin a\nthen start (or reload) Dovecot for the promoted users.")
    promote.add_argument("--config", type=Path, required=True, help="this node's configuration")
    promote.add_argument("--origin", required=True, help="node id of the dead node")
    promote.add_argument("--users", nargs="+", metavar="USER",
                         help="only these users (default: every user of the copy not promoted "
                              "yet)")
    promote.add_argument("--force", action="store_true",
                         help="promote although the origin answers (it must be fenced off by "
                              "other means), or again after an earlier promote")
    promote.add_argument("--uid-gap", type=int, metavar="N",
                         help="raise next UIDs by N (default: [replication] promote_uid_gap, "
                              "or 0 if the origin ran sync commit with the fail policy)")
    promote.add_argument("--json", action="store_true", help="machine-readable output")
    add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except ReplicatorError as exc:
        if args.debug:
            raise
        print(f"dovecot-replicator: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from replicator.daemon import run_daemon

        asyncio.run(run_daemon(load_config(args.config)))
        return 0
    if args.command == "status":
        from replicator.status_cli import show_status

        return show_status(args.config, args.socket, as_json=args.json)
    if args.command == "verify":
        from replicator.verify.command import run_verify

        return run_verify(args)
    if args.command == "promote":
        from replicator.promote.show import run_promote

        return run_promote(args)
    if args.command in ("owner", "switchover"):
        from replicator.coordination.commands import run_owner, run_switchover

        return run_owner(args) if args.command == "owner" else run_switchover(args)
    raise AssertionError(args.command)
