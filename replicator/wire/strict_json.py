"""The one JSON loader for bytes from a peer: every failure is a ProtocolError.

`json.loads` alone lets hostile input out as RecursionError (deep nesting), ValueError (an
integer of 5 000 digits hits Python's int-string limit), UnicodeDecodeError, MemoryError, or
lets it in as values later code chokes on: `Infinity`/`NaN`, integers past 64 bits, text
that is not UTF-8 (json would guess UTF-16 from a BOM), lone surrogates that no encoder
accepts, and duplicate keys that two parsers could read differently. Frame headers, message
fields and manifest entries all go through `loads`, so the rules live in one place.
"""

from __future__ import annotations

import json
from typing import Any

from replicator.errors import ProtocolError

# The longest decimal spelling of a signed 64-bit integer ("-9223372036854775808").
MAX_INT_DIGITS = 20
INT_LIMIT = 1 << 63  # every integer a peer sends (seq, epoch, size, id) is 0 <= x < this


def loads(raw: bytes | bytearray | memoryview, what: str) -> Any:
    """The JSON value in `raw` (UTF-8); ProtocolError naming `what` for anything else."""
    try:
        text = bytes(raw).decode("utf-8")
        return _DECODER.decode(text)
    except ProtocolError:
        raise
    except (ValueError, RecursionError, MemoryError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and the int-digit limit.
        raise ProtocolError(f"{what} is not valid JSON: {type(exc).__name__}: "
                            f"{str(exc)[:120]}") from None


def checked_int(value: Any, what: str) -> int:
    """`value` if it is an int (not a bool) with 0 <= value < 2**63."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} must be an integer, got {_short(value)}")
    if not 0 <= value < INT_LIMIT:
        raise ProtocolError(f"{what} = {value} is outside 0..2**63-1")
    return value


def checked_str(value: Any, what: str) -> str:
    """`value` if it is text that encodes as UTF-8 and holds no NUL."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, got {_short(value)}")
    if "\x00" in value:
        raise ProtocolError(f"{what} contains NUL")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{what} holds a lone surrogate: {_short(value)}") from None
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ProtocolError(f"integer of {len(text)} characters in JSON (at most "
                            f"{MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ProtocolError(f"number {text[:40]!r} in JSON overflows a float")
    return value


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not allowed in JSON from a peer")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ProtocolError("duplicate key in a JSON object")
    return result


_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_float=_finite_float,
                            parse_constant=_no_constant, object_pairs_hook=_unique_keys)
