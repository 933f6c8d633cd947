"""The sans-IO protocol session: bytes in, messages out; messages in, bytes out.

It knows nothing of sockets or tasks. Which message may be sent or received in which state is
one table (`_ALLOWED` for an open session, `_HANDSHAKE` for the four opening messages: HELLO,
AUTH challenge, AUTH proof, HELLO; see wire.auth for what they prove). ERROR may come at any
point and closes the session, as does a protocol violation. A violation by the peer raises a
remote ProtocolError, one by us a local one, so logs say who broke the protocol.

Once both ends agreed on link compression (HELLO `features`, wire.packed), the origin may send
PACKED frames: each carries whole frames, compressed in the connection's stream. The replica's
session unpacks them (bounded) and checks every frame inside as if it had come alone; a PACKED
frame inside one, or a frame cut off at its end, is a protocol error.

Until the handshake is done, a frame may be no larger than `HANDSHAKE_MAX_FRAME_BYTES`: the
opening messages carry only small headers, and a caller who has proven nothing must not make us
buffer (or decompress) a frame of the full `max_frame_bytes` per connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Literal

from replicator.errors import ProtocolError
from replicator.wire.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    PREFIX,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)
from replicator.wire.messages import ErrorMessage, Hello, Message, decode_message
from replicator.wire.packed import Packer, Unpacker

Role = Literal["client", "server"]
HANDSHAKE_MAX_FRAME_BYTES = PREFIX.size + MAX_HEADER_BYTES


class State(Enum):
    IDLE = "idle"                      # nothing exchanged yet
    HELLO_SENT = "hello-sent"          # client: waiting for the server's challenge
    CHALLENGED = "challenged"          # client: must answer the challenge
    PROOF_SENT = "proof-sent"          # client: waiting for the server's HELLO
    HELLO_RECEIVED = "hello-received"  # server: must challenge (or refuse)
    CHALLENGE_SENT = "challenge-sent"  # server: waiting for the client's proof
    PROOF_RECEIVED = "proof-received"  # server: must answer HELLO (or refuse)
    OPEN = "open"
    CLOSED = "closed"


_T = FrameType
_CLIENT_OPEN_SEND = {_T.BATCH, _T.RESYNC, _T.MANIFEST_REQ, _T.PING, _T.PONG, _T.PACKED}
_SERVER_OPEN_SEND = {_T.ACK, _T.NACK, _T.MANIFEST, _T.PING, _T.PONG}

# (role, state, direction) -> frame types allowed once the session is open (it stays open)
_ALLOWED: dict[tuple[Role, State, str], set[FrameType]] = {
    ("client", State.OPEN, "send"): _CLIENT_OPEN_SEND,
    ("client", State.OPEN, "recv"): _SERVER_OPEN_SEND,
    ("server", State.OPEN, "send"): _SERVER_OPEN_SEND,
    ("server", State.OPEN, "recv"): _CLIENT_OPEN_SEND,
}

# (role, state, direction, frame type) -> next state: the handshake, one message at a time
_HANDSHAKE: dict[tuple[Role, State, str, FrameType], State] = {
    ("client", State.IDLE, "send", _T.HELLO): State.HELLO_SENT,
    ("client", State.HELLO_SENT, "recv", _T.AUTH): State.CHALLENGED,
    ("client", State.CHALLENGED, "send", _T.AUTH): State.PROOF_SENT,
    ("client", State.PROOF_SENT, "recv", _T.HELLO): State.OPEN,
    ("server", State.IDLE, "recv", _T.HELLO): State.HELLO_RECEIVED,
    ("server", State.HELLO_RECEIVED, "send", _T.AUTH): State.CHALLENGE_SENT,
    ("server", State.CHALLENGE_SENT, "recv", _T.AUTH): State.PROOF_RECEIVED,
    ("server", State.PROOF_RECEIVED, "send", _T.HELLO): State.OPEN,
}


class Session:
    """One end of one connection. `peer_hello` holds the peer's HELLO once received."""

    def __init__(self, role: Role, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.role: Role = role
        self.state = State.IDLE
        self.peer_hello: Hello | None = None
        self._max_frame_bytes = max_frame_bytes
        self._decoder = FrameDecoder(min(max_frame_bytes, HANDSHAKE_MAX_FRAME_BYTES))
        self._packer: Packer | None = None
        self._unpacker: Unpacker | None = None
        self._inner = FrameDecoder(max_frame_bytes)  # frames inside PACKED ones

    def agree_packing(self) -> None:
        """Both HELLOs named wire.packed.FEATURE: from now on the client may `pack` frames and
        the server accepts PACKED ones (called by each end once it knows)."""
        if self.role == "client":
            self._packer = self._packer or Packer()
        else:
            self._unpacker = self._unpacker or Unpacker()

    @property
    def packing(self) -> bool:
        return self._packer is not None

    def pack(self, frames: Sequence[bytes], limit: int) -> bytes:
        """PACKED frames carrying `frames` (whole encoded frames, in order), each carrying at
        most `limit` bytes of them (half of what the peer accepts in one frame); a frame larger
        than that goes alone in its own."""
        packer = self._packer
        if packer is None:
            raise ProtocolError("PACKED frame without agreeing on link compression")
        self._check(_T.PACKED, "send", remote=False)
        out: list[bytes] = []
        group: list[bytes] = []
        size = 0
        for frame in frames:
            if group and size + len(frame) > limit:
                out.append(encode_frame(Frame(_T.PACKED, {}, packer.pack(b"".join(group)))))
                group, size = [], 0
            group.append(frame)
            size += len(frame)
        if group:
            out.append(encode_frame(Frame(_T.PACKED, {}, packer.pack(b"".join(group)))))
        return b"".join(out)

    def send(self, message: Message) -> bytes:
        """The bytes to put on the wire for `message`; a local ProtocolError if not allowed now."""
        self._check(message.TYPE, "send", remote=False)
        self._advance(message, "send")
        return encode_frame(message.to_frame(), compress=message.TYPE == _T.MANIFEST)

    def receive_data(self, data: bytes) -> list[Message]:
        """Messages completed by `data`; a remote ProtocolError if the peer broke the protocol."""
        if self.state is State.CLOSED:
            raise ProtocolError("data received on a closed session", remote=True)
        messages: list[Message] = []
        try:
            for frame in self._decoder.feed(data):
                frames = self._unpack(frame) if frame.type is _T.PACKED else (frame,)
                for inner in frames:
                    self._check(inner.type, "recv", remote=True)
                    message = decode_message(inner)
                    self._advance(message, "recv")
                    messages.append(message)
                    if isinstance(message, ErrorMessage):
                        return messages  # the peer said ERROR: nothing after it counts
        except ProtocolError:
            self.state = State.CLOSED
            raise
        return messages

    def _unpack(self, frame: Frame) -> list[Frame]:
        """The frames a PACKED frame carries: whole ones, none of them PACKED."""
        if self._unpacker is None or self.state is not State.OPEN:
            raise ProtocolError("PACKED frame without agreeing on link compression", remote=True)
        inner = self._inner.feed(self._unpacker.unpack(frame.payload, self._max_frame_bytes))
        if self._inner.buffered:
            raise ProtocolError("a PACKED frame ends inside a frame", remote=True)
        if any(f.type is _T.PACKED for f in inner):
            raise ProtocolError("a PACKED frame inside a PACKED frame", remote=True)
        return inner

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    def close(self) -> None:
        self.state = State.CLOSED

    def _check(self, frame_type: FrameType, direction: str, *, remote: bool) -> None:
        if frame_type is _T.ERROR and self.state is not State.CLOSED:
            return
        if (self.role, self.state, direction, frame_type) in _HANDSHAKE:
            return
        if frame_type not in _ALLOWED.get((self.role, self.state, direction), set()):
            who = "peer" if remote else "we"
            raise ProtocolError(f"{who} {direction} {frame_type.name} in state {self.state.value} "
                                f"({self.role})", remote=remote)

    def _advance(self, message: Message, direction: str) -> None:
        if isinstance(message, ErrorMessage):
            self.state = State.CLOSED
            return
        following = _HANDSHAKE.get((self.role, self.state, direction, message.TYPE))
        if following is not None:
            if isinstance(message, Hello) and direction == "recv":
                self.peer_hello = message
            self.state = following
            if following is State.OPEN:
                self._decoder.max_frame_bytes = self._max_frame_bytes
