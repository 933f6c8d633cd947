"""`dovecot-replicator` (also `python -m replicator`): the daemon and its tools.

Every error an operator can cause (bad config, unreachable peer, refused promote) is printed as
one line and exits with the error's code (2 by default); `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from replicator import __version__
from replicator.config import DEFAULT_CONTROL_SOCKET, load_config
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
        "verify", help="check that a replica equals its origin",
        description="Offline: compare an origin root (--source) with a replica of it "
                    "(--replica), file by file (bytes and xxh3-128). Transient files (locks, "
                    "temp files) are ignored. Exit 0 consistent, 1 differences, 2 could not "
                    "verify.")
    verify.add_argument("--source", type=Path, required=True, help="origin root directory")
    verify.add_argument("--replica", type=Path, required=True, help="replica of that root")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
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
        return _verify_offline(args.source, args.replica, as_json=args.json)
    raise AssertionError(args.command)


def _verify_offline(source: Path, replica: Path, *, as_json: bool) -> int:
    from replicator.verify.trees import compare_trees

    report = compare_trees(source, replica)
    if as_json:
        print(json.dumps({
            "consistent": report.consistent, "files": report.files,
            "bytes_read": report.bytes_read,
            "differences": [d.__dict__ for d in report.differences]}, indent=2))
    else:
        for d in report.differences:
            print(f"DIFF {d.path}: {d.field}: expected {d.expected}, found {d.found}")
        verdict = "consistent" if report.consistent else f"{len(report.differences)} difference(s)"
        print(f"{report.files} files compared ({report.bytes_read} bytes read): {verdict}")
    return 0 if report.consistent else 1
