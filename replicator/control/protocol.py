"""Control protocol v1: TAB-separated lines, Dovecot-style escaping (README documents it).

    client: VERSION\treplicator-control\t1\t<minor>   (the plugin speaks 1.1)
    client: FLUSH\t<id>\t<timeout_ms>\t<policy>\t<user>\t<dir>[\t<dir>...]
    daemon: OK\t<id>\t<peers_acked>        or   FAIL\t<id>\t<reason>
            or, to a 1.1 client, REFUSED\t<id>\t<reason>: no policy may answer OK (another
            node owns the user, or this node's ownership lease is not certainly valid)
    client: OWNER\t<id>\t<user>            ->   OK: this node may serve <user> (it owns it, or
                                                 ownership is not on etcd); REFUSED: another
                                                 node does (the plugin asks at login); FAIL:
                                                 the daemon could not tell (an error of its
                                                 own: the plugin lets the user in)
    client: STATUS\t<id>                   ->   STATUS\t<id>\t<json>
    client: BARRIER\t<id>\t<timeout_ms>     ->   OK / FAIL: every change on disk now is
                                                 acknowledged by every peer (tests, tools)
    client: REPAIR\t<id>\t<origin>          ->   OK\t<id>\t<damaged files>: the replica of
                                                 <origin> was checked against its journal;
                                                 damaged files are being resent
    client: FENCE\t<id>\t<origin>           ->   OK once <origin>'s link is dropped and the
                                                 fence (written by promote) is in force

Parsing is strict and bounded, whatever a local client sends: `decode_line` takes at most
MAX_LINE bytes ending in a newline, numbers are short ASCII decimals (`decimal`),
escapes are the five Dovecot ones, and an unescaped user or directory never holds NUL. Every
malformation is a ProtocolError naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicator.errors import ProtocolError

NAME = "replicator-control"
MAJOR, MINOR = 1, 1
REFUSED = -1  # the peers count of an Answer that no policy may turn into OK
VERSION_LINE = f"VERSION\t{NAME}\t{MAJOR}\t{MINOR}"
MAX_LINE = 64 * 1024
MAX_DIGITS = 18  # timeouts: below 10**18 < 2**63, so any later use of them fits
MAX_ID_DIGITS = 20  # request ids are the plugin's uint64 counter, echoed back as text
_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPES = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\x00"}


def escape(value: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def unescape(value: str) -> str:
    if "\x01" not in value:
        return value
    out, chars = [], iter(value)
    for ch in chars:
        if ch == "\x01":
            code = next(chars, "")
            if code not in _UNESCAPES:
                raise ProtocolError(f"bad escape \\001{code[:1]!r} in control line")
            out.append(_UNESCAPES[code])
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class FlushRequest:
    id: str
    timeout_ms: int
    policy: str
    user: str
    dirs: tuple[str, ...]


def decode_line(raw: bytes) -> str:
    """One request line as read from the socket (with its newline) as text without it.
    Bytes that are not UTF-8 survive as surrogate escapes (directory names are bytes)."""
    if len(raw) > MAX_LINE:
        raise ProtocolError(f"control line of {len(raw)} bytes exceeds {MAX_LINE}")
    if not raw.endswith(b"\n"):
        raise ProtocolError("control line without end of line")
    return raw[:-1].decode("utf-8", "surrogateescape")


def decimal(text: str, what: str, *, max_digits: int = MAX_DIGITS) -> int:
    """`text` as a number if it is 1 to `max_digits` ASCII digits (no sign, no spaces)."""
    if not (0 < len(text) <= max_digits and text.isascii() and text.isdigit()):
        raise ProtocolError(f"{what} must be a decimal number of at most {max_digits} digits, "
                            f"got {text[:40]!r}")
    return int(text)


def parse_version(line: str) -> int:
    """The client's minor version (what it understands of our replies)."""
    fields = line.split("\t")
    if len(fields) != 4 or fields[0] != "VERSION" or fields[1] != NAME:
        raise ProtocolError(f"expected a VERSION line, got {line[:80]!r}")
    if fields[2] != str(MAJOR):
        raise ProtocolError(f"control protocol version {fields[2][:20]!r} not supported (we speak "
                            f"{MAJOR})")
    return decimal(fields[3], "VERSION minor", max_digits=6)


def parse_flush(fields: list[str]) -> FlushRequest:
    if len(fields) < 6:
        raise ProtocolError("FLUSH needs id, timeout_ms, policy, user and at least one dir")
    _, ident, timeout, policy, user, *dirs = fields
    decimal(ident, "FLUSH id", max_digits=MAX_ID_DIGITS)
    timeout_ms = decimal(timeout, "FLUSH timeout_ms")
    if policy not in ("fail", "degrade"):
        raise ProtocolError(f"FLUSH policy must be fail or degrade, got {policy[:40]!r}")
    return FlushRequest(ident, timeout_ms, policy, _text(user, "FLUSH user"),
                        tuple(_text(d, "FLUSH dir") for d in dirs))


def _text(field: str, what: str) -> str:
    value = unescape(field)
    if "\x00" in value:
        raise ProtocolError(f"{what} {value[:80]!r} contains NUL")
    return value


def ok(ident: str, peers: int) -> str:
    return f"OK\t{ident}\t{peers}"


def fail(ident: str, reason: str) -> str:
    return f"FAIL\t{ident}\t{escape(reason)}"


def refused(ident: str, reason: str, minor: int) -> str:
    """A refusal no policy may turn into OK; a 1.0 client only knows FAIL."""
    return f"REFUSED\t{ident}\t{escape(reason)}" if minor >= 1 else fail(ident, reason)
