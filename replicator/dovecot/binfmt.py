"""Bounded little-endian reads over Dovecot's binary files, failing with the file kind and offset.

Every parser in this package reads fixed structs out of bytes that may be short, torn or not
Dovecot's at all (a replica caught mid-write, a corrupted copy). Funnelling each read through
`read_struct` means a bad file always ends in one `DovecotFormatError` that names the file kind,
the byte offset and what was wrong, never in a bare `struct.error` or `IndexError`.
"""

from __future__ import annotations

import struct
from typing import Any

from replicator.errors import ReplicatorError

__all__ = ["DovecotFormatError", "read_struct", "read_u32"]

_U32 = struct.Struct("<I")


class DovecotFormatError(ReplicatorError, ValueError):
    """A Dovecot file is not in the format Dovecot 2.3 would accept.

    `kind` is the file kind ("dovecot.index", "dovecot.index.log", ...), `offset` the byte
    offset where the problem was found, `reason` a short description. str() is one line.
    """

    def __init__(self, kind: str, offset: int, reason: str) -> None:
        super().__init__(f"{kind}: at offset {offset}: {reason}")
        self.kind = kind
        self.offset = offset
        self.reason = reason


def read_struct(kind: str, data: bytes | memoryview, offset: int, fmt: struct.Struct,
                what: str) -> tuple[Any, ...]:
    """fmt.unpack_from(data, offset), or DovecotFormatError saying `what` is cut short."""
    end = offset + fmt.size
    if offset < 0 or end > len(data):
        raise DovecotFormatError(
            kind, offset, f"{what} needs {fmt.size} bytes, file has {max(len(data) - offset, 0)}")
    return fmt.unpack_from(data, offset)


def read_u32(kind: str, data: bytes | memoryview, offset: int, what: str) -> int:
    """One little-endian uint32 at offset (see read_struct)."""
    value: int = read_struct(kind, data, offset, _U32, what)[0]
    return value
