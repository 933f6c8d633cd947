"""Showing a verification: a table for people, JSON for programs (documented in README)."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from replicator.verify.model import VerifyReport


def print_json(report: VerifyReport) -> None:
    print(json.dumps(report.to_json(), indent=2))


def print_table(report: VerifyReport) -> None:
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    for title, rows in (("Differences", report.differences), ("Warnings", report.warnings)):
        if rows:
            table = Table(title=title, show_lines=False)
            for column in ("file", "field", "expected", "found", "check"):
                table.add_column(column, overflow="fold")
            for d in rows:
                table.add_row(d.file, d.field, d.expected, d.found, d.check)
            console.print(table)
    if report.mailboxes:
        table = Table(title="Dovecot's view of the replica (doveadm mailbox status)")
        for column in ("user", "mailbox", "messages", "uidnext", "uidvalidity", "highestmodseq"):
            table.add_column(column)
        for m in report.mailboxes:
            table.add_row(m.user, m.mailbox, str(m.messages), str(m.uidnext),
                          str(m.uidvalidity), str(m.highestmodseq))
        console.print(table)
    for error in report.errors:
        console.print(f"[bold red]could not verify:[/] {error}")
    verdict = ("[bold green]consistent[/]" if report.consistent else
               f"[bold red]{len(report.differences)} difference(s)[/]" if not report.errors
               else "[bold red]not verified[/]")
    where = f"replica of {report.origin}" if report.origin else report.replica
    console.print(f"{report.mode} verify of {where}: {report.files} files, "
                  f"{report.bytes_read} bytes read in {report.seconds:.2f} s: {verdict}")
