"""Control protocol v1: TAB-separated lines, Dovecot-style escaping (README documents it).

    client: VERSION\treplicator-control\t1\t0
    client: FLUSH\t<id>\t<timeout_ms>\t<policy>\t<user>\t<dir>[\t<dir>...]
    daemon: OK\t<id>\t<peers_acked>        or   FAIL\t<id>\t<reason>
    client: STATUS\t<id>                   ->   STATUS\t<id>\t<json>
    client: BARRIER\t<id>\t<timeout_ms>     ->   OK / FAIL: every change on disk now is
                                                 acknowledged by every peer (tests, tools)
    client: REPAIR\t<id>\t<origin>          ->   OK\t<id>\t<damaged files>: the replica of
                                                 <origin> was checked against its journal;
                                                 damaged files are being resent
    client: FENCE\t<id>\t<origin>           ->   OK once <origin>'s link is dropped and the
                                                 fence (written by promote) is in force
"""

from __future__ import annotations

from dataclasses import dataclass

from replicator.errors import ProtocolError

NAME = "replicator-control"
MAJOR, MINOR = 1, 0
VERSION_LINE = f"VERSION\t{NAME}\t{MAJOR}\t{MINOR}"
MAX_LINE = 64 * 1024
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
                raise ProtocolError(f"bad escape \\001{code!r} in control line")
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


def parse_version(line: str) -> None:
    fields = line.split("\t")
    if len(fields) != 4 or fields[0] != "VERSION" or fields[1] != NAME:
        raise ProtocolError(f"expected a VERSION line, got {line[:80]!r}")
    if fields[2] != str(MAJOR):
        raise ProtocolError(f"control protocol version {fields[2]} not supported (we speak "
                            f"{MAJOR})")


def parse_flush(fields: list[str]) -> FlushRequest:
    if len(fields) < 6:
        raise ProtocolError("FLUSH needs id, timeout_ms, policy, user and at least one dir")
    _, ident, timeout, policy, user, *dirs = fields
    if not ident.isdigit() or not timeout.isdigit():
        raise ProtocolError(f"FLUSH id and timeout must be decimal numbers: {ident!r} {timeout!r}")
    if policy not in ("fail", "degrade"):
        raise ProtocolError(f"FLUSH policy must be fail or degrade, got {policy!r}")
    return FlushRequest(ident, int(timeout), policy, unescape(user),
                        tuple(unescape(d) for d in dirs))


def ok(ident: str, peers: int) -> str:
    return f"OK\t{ident}\t{peers}"


def fail(ident: str, reason: str) -> str:
    return f"FAIL\t{ident}\t{escape(reason)}"
