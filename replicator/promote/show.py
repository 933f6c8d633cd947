"""The `promote` command's output."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from replicator.config import load_config
from replicator.promote.command import PromoteResult, promote


def run_promote(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    result = promote(config, args.origin, users=args.users, force=args.force,
                     uid_gap=args.uid_gap)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        _print(result, ", ".join(f"{k}={v}" for k, v in config.roots.items()))
    return 0


def _print(result: PromoteResult, roots: str) -> None:
    if result.already:
        print(f"{result.origin} was already promoted here (epoch {result.epoch}, users: "
              f"{', '.join(result.users[:10])}{' ...' if len(result.users) > 10 else ''}); "
              "nothing to do (--force promotes again)")
        return
    print(f"fenced {result.origin} at epoch {result.epoch}: its batches are refused from now on")
    print(f"promoted {len(result.users)} user(s) ({', '.join(result.users[:10])}"
          f"{' ...' if len(result.users) > 10 else ''}) into {roots}")
    print(f"checked {result.files_checked} file(s) ({result.bytes_read} bytes) against the "
          "digest journal and Dovecot's checks as they were copied: all consistent")
    gap = (f"next UIDs raised by {result.uid_gap} in {result.raised} of {result.mailboxes} "
           f"mailboxes" if result.uid_gap else f"{result.mailboxes} mailboxes, no UID gap")
    print(gap)
    for box in result.unsynced:
        print(f"not raised (never synced on the origin: Dovecot gives it a new UIDVALIDITY, so "
              f"no client's UID can be reused): {box}")
    for path in result.moved_aside:
        print(f"moved aside (not deleted): {path}")
    steps = ", ".join(f"{k} {v:.3f} s" for k, v in result.steps.items())
    print(f"done in {result.seconds:.3f} s ({steps}); start Dovecot for these users now")
