"""Typed protocol messages and their mapping to and from frames.

Each message knows its frame type, writes its fields into the frame header (JSON; fields at
their default are left out) and, for BATCH and MANIFEST, its payload. Decoding checks every
field's presence, type and range, so a peer that sends a malformed message gets a clear remote
ProtocolError instead of a KeyError, and nothing later meets a value it cannot use: integers
are 0 <= x < 2**63, text is UTF-8 without NUL, lists hold only such text. Header fields a
message does not know are ignored (a newer peer may send more).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from types import UnionType
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from replicator.errors import ProtocolError
from replicator.wire.frames import Frame, FrameType
from replicator.wire.strict_json import checked_int, checked_str

M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """Base: header fields are the dataclass fields except `payload`."""

    TYPE: ClassVar[FrameType]

    def to_frame(self) -> Frame:
        """Fields equal to their default are left out (the decoder fills them in): a BATCH
        header is a third shorter, and every sync commit sends a few."""
        header = {name: value for name, default in _header_fields(type(self))
                  if (value := getattr(self, name)) != default}
        return Frame(self.TYPE, header, getattr(self, "payload", b""))

    @classmethod
    def from_frame(cls: type[M], frame: Frame) -> M:
        values: dict[str, Any] = {}
        for name, expected, required in _schema(cls):  # type: ignore[arg-type]
            if name == "payload":
                values[name] = frame.payload
            elif name in frame.header:
                values[name] = _checked(cls.TYPE.name, name, frame.header[name], expected)
            elif required:
                raise ProtocolError(f"{cls.TYPE.name} message without {name!r}")
        return cls(**values)


_HEADER_FIELDS: dict[type[Message], tuple[tuple[str, Any], ...]] = {}


def _header_fields(cls: type[Message]) -> tuple[tuple[str, Any], ...]:
    """(name, default) of each header field: MISSING for a required one (no value equals it),
    a default factory's value for a list."""
    names = _HEADER_FIELDS.get(cls)
    if names is None:
        names = _HEADER_FIELDS[cls] = tuple(
            (f.name, f.default if f.default_factory is MISSING else f.default_factory())
            for f in fields(cls) if f.name != "payload")
    return names


@cache
def _schema(cls: type[Message]) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type hint, required) per field, computed once per message class."""
    hints = get_type_hints(cls)
    return tuple(
        (f.name, hints[f.name], f.default is MISSING and f.default_factory is MISSING)
        for f in fields(cls)
    )


def _checked(kind: str, name: str, value: Any, hint: Any) -> Any:
    """`value` if it fits `hint` (int, str, bool, float, list[...] of those); else a
    ProtocolError naming the field."""
    what = f"{kind}.{name}"
    if hint is int:
        return checked_int(value, what)
    if hint is str:
        return checked_str(value, what)
    if get_origin(hint) is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{what} must be a list, got {type(value).__name__}")
        (item_hint,) = get_args(hint) or (Any,)
        return [_checked(kind, f"{name}[]", item, item_hint) for item in value]
    if hint is Any:
        return value
    if get_origin(hint) in (Union, UnionType):
        return _checked_union(kind, name, value, get_args(hint))
    expected = get_origin(hint) or hint
    if not isinstance(expected, type) or isinstance(value, bool) != (expected is bool) \
            or not isinstance(value, expected):
        raise ProtocolError(f"{what} must be {getattr(expected, '__name__', expected)}, "
                            f"got {type(value).__name__}")
    return value


def _checked_union(kind: str, name: str, value: Any, hints: tuple[Any, ...]) -> Any:
    if value is None and type(None) in hints:
        return None
    errors = []
    for hint in hints:
        try:
            return _checked(kind, name, value, hint)
        except ProtocolError as exc:
            errors.append(str(exc))
    raise ProtocolError(" and ".join(errors) or f"{kind}.{name} has no acceptable type")


@dataclass(frozen=True)
class Hello(Message):
    """First message each way. The origin (client) announces its stream; the replica (server)
    answers with how far it got in that origin's stream and the epoch it fences below."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    node: str
    role: str                      # "origin" | "verifier" | "replica"
    software: str
    epoch: int = 0                 # origin: its epoch; replica: the fence for that origin
    stream: str = ""               # origin: this run's stream id; replica: the last applied one
    seq: int = 0                   # replica: last applied seq of `stream`
    max_frame_bytes: int = 0
    sync_policy: str = "off"       # origin: what its sync-commit plugin does ("fail"/"degrade")
    transports: list[str] = field(default_factory=list)
    nonce: str = ""                # client: its challenge to the server (see wire.auth)
    proof: str = ""                # server: its answer to that challenge (see wire.auth)
    # replica: `root/dir` of the directories it could not apply (and awaits whole): the origin
    # resends them and does not count them as held until a resend is acknowledged
    broken_dirs: list[str] = field(default_factory=list)
    # optional behaviours this end offers (origin) or agreed to (replica): wire.packed.FEATURE
    features: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Auth(Message):
    """The middle of the handshake (see wire.auth): the server's challenge (`nonce`), then the
    client's answer to it (`proof`)."""

    TYPE: ClassVar[FrameType] = FrameType.AUTH
    nonce: str = ""
    proof: str = ""


@dataclass(frozen=True)
class Batch(Message):
    """One directory's ordered operations; `final` is False while more parts follow."""

    TYPE: ClassVar[FrameType] = FrameType.BATCH
    epoch: int
    stream: str
    seq: int
    root: str
    dir: str
    resync: bool = False
    part: int = 0
    final: bool = True
    token: int = 0         # the origin's fencing token for the user of `dir` (0: no etcd)
    payload: bytes = b""


@dataclass(frozen=True)
class Ack(Message):
    TYPE: ClassVar[FrameType] = FrameType.ACK
    seq: int


AWAITING_RESYNC = "awaiting resync"  # Nack reason: an earlier batch for the directory failed
# Nack reason: the batch's fencing token is older than the newest this replica saw for the
# user (another node owns the user now). Not a damaged copy: the origin must not resend.
STALE_OWNER = "stale owner token"


@dataclass(frozen=True)
class Nack(Message):
    """Batch `seq` could not be applied to `root`/`dir`; the origin resyncs that directory."""

    TYPE: ClassVar[FrameType] = FrameType.NACK
    seq: int
    root: str
    dir: str
    reason: str


@dataclass(frozen=True)
class Resync(Message):
    """The origin restarts the replica's view of its stream at `seq` (a manifest resync)."""

    TYPE: ClassVar[FrameType] = FrameType.RESYNC
    stream: str
    seq: int


@dataclass(frozen=True)
class ManifestRequest(Message):
    TYPE: ClassVar[FrameType] = FrameType.MANIFEST_REQ
    id: int


@dataclass(frozen=True)
class Manifest(Message):
    """Entries as zstd-compressed JSON lines in the payload (see replicator.manifest_codec)."""

    TYPE: ClassVar[FrameType] = FrameType.MANIFEST
    id: int
    entries: int
    stream: str = ""   # an origin describing itself: its stream and last numbered seq
    seq: int = 0
    payload: bytes = b""


@dataclass(frozen=True)
class Ping(Message):
    """Keepalive; an origin also repeats its sync-commit policy (it can change after HELLO)."""

    TYPE: ClassVar[FrameType] = FrameType.PING
    t: int
    sync_policy: str = ""


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[FrameType] = FrameType.PONG
    t: int


@dataclass(frozen=True)
class ErrorMessage(Message):
    """Sent before closing: `code` for programs, `message` for the operator's log."""

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: str
    message: str


MESSAGE_TYPES: dict[FrameType, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Auth, Batch, Ack, Nack, Resync, ManifestRequest, Manifest, Ping, Pong,
                ErrorMessage)
}


def decode_message(frame: Frame) -> Message:
    """The message `frame` carries; ProtocolError for any frame that is not a valid one."""
    cls = MESSAGE_TYPES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"no message is carried by a {frame.type.name} frame")
    return cls.from_frame(frame)
