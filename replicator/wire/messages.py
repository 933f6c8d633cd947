"""Typed protocol messages and their mapping to and from frames.

Each message knows its frame type, writes its fields into the frame header (JSON) and, for
BATCH and MANIFEST, its payload. Decoding checks every field's presence and type, so a peer
that sends a malformed message gets a clear remote ProtocolError instead of a KeyError.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, ClassVar, TypeVar, get_type_hints

from replicator.errors import ProtocolError
from replicator.wire.frames import Frame, FrameType

M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """Base: header fields are the dataclass fields except `payload`."""

    TYPE: ClassVar[FrameType]

    def to_frame(self) -> Frame:
        header = {name: getattr(self, name) for name in _header_fields(type(self))}
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


_HEADER_FIELDS: dict[type[Message], tuple[str, ...]] = {}


def _header_fields(cls: type[Message]) -> tuple[str, ...]:
    names = _HEADER_FIELDS.get(cls)
    if names is None:
        names = _HEADER_FIELDS[cls] = tuple(f.name for f in fields(cls) if f.name != "payload")
    return names


@cache
def _schema(cls: type[Message]) -> tuple[tuple[str, type, bool], ...]:
    """(name, runtime type, required) per field, computed once per message class."""
    hints = get_type_hints(cls)
    return tuple(
        (f.name, getattr(hints[f.name], "__origin__", hints[f.name]),
         f.default is MISSING and f.default_factory is MISSING)
        for f in fields(cls)
    )


def _checked(kind: str, name: str, value: Any, expected: type) -> Any:
    wrong_int = expected is int and isinstance(value, bool)
    if wrong_int or not isinstance(value, expected):
        raise ProtocolError(f"{kind}.{name} must be {expected.__name__}, got {value!r}")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{kind}.{name} must be a list of strings")
    return value


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
    # replica: `root/dir` of the directories it could not apply (and awaits whole): the origin
    # resends them and does not count them as held until a resend is acknowledged
    broken_dirs: list[str] = field(default_factory=list)


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
    payload: bytes = b""


@dataclass(frozen=True)
class Ack(Message):
    TYPE: ClassVar[FrameType] = FrameType.ACK
    seq: int


AWAITING_RESYNC = "awaiting resync"  # Nack reason: an earlier batch for the directory failed


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
    for cls in (Hello, Batch, Ack, Nack, Resync, ManifestRequest, Manifest, Ping, Pong,
                ErrorMessage)
}


def decode_message(frame: Frame) -> Message:
    return MESSAGE_TYPES[frame.type].from_frame(frame)
