"""Small IMAP helpers for the workload: message bodies, UID sets, APPENDUID/COPYUID codes.

imapclient returns APPEND's tagged text but not COPY's or MOVE's, so COPYUID is read from
imaplib's response-code store (`client._imap.untagged_responses["COPYUID"]`), where imaplib puts
the `[COPYUID ...]` code of both the tagged OK (COPY) and the untagged OK (MOVE).
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ImapTarget",
    "make_message",
    "parse_appenduid",
    "pop_copyuid",
    "sha256",
    "uid_set",
]

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([\d:,]+)\]")


@dataclass(frozen=True)
class ImapTarget:
    """Where and how to log in when there is no DovecotInstance object (bench, demo, remote)."""

    host: str
    port: int
    passwords: dict[str, str]

    def imap(self, user: str, timeout: float = 30.0) -> Any:
        import imapclient

        client = imapclient.IMAPClient(self.host, port=self.port, ssl=False, timeout=timeout)
        client.login(user, self.passwords[user])
        return client


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def uid_set(text: str) -> list[int]:
    """Expands an IMAP sequence set such as `3:5,9` in the order the server wrote it."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        a, b = int(lo), int(hi or lo)
        out += range(a, b + 1) if a <= b else range(a, b - 1, -1)
    return out


def parse_appenduid(response: bytes) -> tuple[int, list[int]]:
    """(uidvalidity, uids) from APPEND's tagged OK text."""
    m = _APPENDUID.search(response)
    if m is None:
        raise ValueError(f"no APPENDUID in APPEND response: {response!r}")
    return int(m.group(1)), uid_set(m.group(2).decode())


def pop_copyuid(client: Any) -> tuple[int, list[tuple[int, int]]] | None:
    """(uidvalidity, [(source uid, destination uid)]) of the last COPY/MOVE, and forgets it."""
    codes = client._imap.untagged_responses.pop("COPYUID", None)
    if not codes:
        return None
    validity, src, dst = codes[-1].decode().split()
    return int(validity), list(zip(uid_set(src), uid_set(dst), strict=True))


def make_message(rng: random.Random, index: int, size: int) -> bytes:
    """A plain RFC 5322 message of about `size` bytes with CRLF line ends, ASCII only.

    The body is base64 of random bytes: cheap to make at 64 KiB, and 7-bit so that doveadm's
    JSON output returns it unchanged (see doveadm.fetch_body_hashes).
    """
    header = (
        f"From: sender{rng.randrange(50)}@example.org\r\n"
        f"To: rcpt{rng.randrange(50)}@example.org\r\n"
        f"Subject: workload message {index} {rng.getrandbits(32):08x}\r\n"
        f"Message-ID: <{index}.{rng.getrandbits(48):012x}@workload.test>\r\n"
        f"Date: Mon, 1 Jan 2024 00:{index // 60 % 60:02d}:{index % 60:02d} +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    need = max(0, size - len(header))
    raw = base64.b64encode(rng.randbytes(need * 3 // 4 + 3))[: max(need - need // 38, 1)]
    lines = [raw[i:i + 76] for i in range(0, len(raw), 76)]
    return header + b"\r\n".join(lines) + b"\r\n"
