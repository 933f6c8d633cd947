"""doveadm as the oracle of mailbox state: what Dovecot itself says a user's mailboxes hold.

Every function takes the dovecot.conf path, so the same code serves tests (an instance's config)
and production (verify/promote on /etc/dovecot/dovecot.conf). doveadm must reach a running
Dovecot through the config's base_dir (auth-userdb socket) to look users up.

Formats, measured on 2.3.19 and the same on 2.4.1: global options such as `-f tab` go before
the command; `mailbox status` takes its field list as ONE argument ('messages uidnext ...');
mailbox names are printed as UTF-8; the tab formatter does not escape, which is safe because
Dovecot refuses control characters in mailbox names and flags never contain whitespace.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DoveadmError",
    "MailboxStatus",
    "fetch_body_hashes",
    "fetch_flags",
    "force_resync",
    "list_mailboxes",
    "list_subscriptions",
    "mailbox_status",
    "run_doveadm",
    "sha256_crlf",
]

STATUS_FIELDS = ("messages", "uidnext", "uidvalidity", "highestmodseq")


class DoveadmError(RuntimeError):
    """doveadm exited non-zero; the message is its stderr (one line per doveadm error)."""

    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"doveadm {' '.join(args)} (exit {returncode}): {self.stderr}")


@dataclass(frozen=True, order=True)
class MailboxStatus:
    messages: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int


def run_doveadm(conf: Path, *args: str, timeout: float = 120.0) -> str:
    """Runs `doveadm -c conf args...` and returns stdout, or raises DoveadmError."""
    res = subprocess.run(["doveadm", "-c", str(conf), *args], capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise DoveadmError(args, res.returncode, res.stderr)
    return res.stdout


def _tab_rows(text: str) -> list[list[str]]:
    """Rows of a `-f tab` answer without its header line (an empty answer has only the header)."""
    lines = text.splitlines()
    return [ln.split("\t") for ln in lines[1:] if ln != ""]


def list_mailboxes(conf: Path, user: str) -> list[str]:
    """Every mailbox name doveadm lists, including non-selectable parents (maildir++ lists
    `A` and `A/B` for a mailbox `A/B/C` although only `A/B/C` exists)."""
    return [ln for ln in run_doveadm(conf, "mailbox", "list", "-u", user).splitlines() if ln]


def list_subscriptions(conf: Path, user: str) -> list[str]:
    """Subscribed mailbox names (the `subscriptions` file in the control root)."""
    out = run_doveadm(conf, "mailbox", "list", "-s", "-u", user)
    return [ln for ln in out.splitlines() if ln]


def mailbox_status(conf: Path, user: str, mailboxes: tuple[str, ...] = ("*",)
                   ) -> dict[str, MailboxStatus]:
    """name -> status for every existing (selectable) mailbox matching `mailboxes`.

    Opening each mailbox syncs it, which also makes sure its index header carries the
    UIDVALIDITY (see update_min_next_uid).
    """
    out = run_doveadm(conf, "-f", "tab", "mailbox", "status", "-u", user,
                      " ".join(STATUS_FIELDS), *mailboxes)
    return {row[0]: MailboxStatus(*(int(v) for v in row[1:5])) for row in _tab_rows(out)}


def _parse_flags(field: str) -> frozenset[str]:
    return frozenset(f for f in field.split() if f != "\\Recent")


def fetch_flags(conf: Path, user: str, mailbox: str) -> dict[int, frozenset[str]]:
    """uid -> flags and keywords of every message in `mailbox` (\\Recent dropped: it is
    per-session state that differs between any two observers)."""
    out = run_doveadm(conf, "-f", "tab", "fetch", "-u", user, "uid flags",
                      "mailbox", mailbox, "all")
    rows = _tab_rows(out)
    if not rows:
        _require_mailbox(conf, user, mailbox)
    return {int(row[0]): _parse_flags(row[1] if len(row) > 1 else "") for row in rows}


def _require_mailbox(conf: Path, user: str, mailbox: str) -> None:
    """Raises DoveadmError unless `mailbox` exists: `doveadm fetch` answers a search in a
    missing mailbox with no rows and exit 0, which an oracle must not take for "empty"."""
    mailbox_status(conf, user, (mailbox,))


def fetch_all_flags(conf: Path, user: str) -> dict[str, dict[int, frozenset[str]]]:
    """mailbox -> uid -> flags for all of a user's mailboxes in one doveadm run."""
    out = run_doveadm(conf, "-f", "tab", "fetch", "-u", user, "mailbox uid flags", "all")
    result: dict[str, dict[int, frozenset[str]]] = {}
    for row in _tab_rows(out):
        flags = _parse_flags(row[2] if len(row) > 2 else "")
        result.setdefault(row[0], {})[int(row[1])] = flags
    return result


def sha256_crlf(text: str) -> str:
    """sha256 of a message with CRLF line ends, as an IMAP client sends and receives it.

    Dovecot stores bodies with LF (mail_save_crlf = no) and doveadm returns them that way;
    hashing the CRLF form makes this equal to the hash of the bytes a client APPENDed.
    """
    import hashlib

    data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()


def fetch_body_hashes(conf: Path, user: str, mailbox: str) -> dict[int, str]:
    """uid -> sha256_crlf(full message). Assumes UTF-8 (or ASCII) messages: doveadm's JSON
    output cannot carry arbitrary 8-bit bytes faithfully."""
    out = run_doveadm(conf, "-f", "json", "fetch", "-u", user, "uid text",
                      "mailbox", mailbox, "all")
    rows = json.loads(out) if out.strip() else []
    if not rows:
        _require_mailbox(conf, user, mailbox)
    return {int(r["uid"]): sha256_crlf(r["text"]) for r in rows}


def force_resync(conf: Path, user: str, mailbox: str = "*") -> None:
    """`doveadm force-resync`: makes Dovecot rebuild index state from the storage."""
    run_doveadm(conf, "force-resync", "-u", user, mailbox)
