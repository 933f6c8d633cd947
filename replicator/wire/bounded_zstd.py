"""zstd decompression that never allocates more than the caller's limit, whatever the input.

python-zstandard's `decompress(data, max_output_size=n)` honours `n` only when the frame does
not declare its content size: a 55-byte frame declaring 2**60 bytes is a MemoryError, and a
32 KiB frame of RLE blocks declaring 1 GiB is 1 GiB of RSS. So the header is read first and
every number in it (content size, window size) is checked against the limit before anything
is allocated; a frame that does not declare its size is decompressed into a buffer of the
limit and refused if it does not fit. Exactly one zstd frame is accepted (our encoders write
one): concatenated or skippable frames are refused, so no payload can multiply the limit.
"""

from __future__ import annotations

import zstandard

from replicator.errors import ProtocolError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A frame's window is the history the decoder keeps (and allocates). Our encoders write
# single-segment frames (window = content size) or, for payloads over 2 MiB, a 2 MiB window;
# a window beyond this is a hostile header asking for memory it will not use.
MIN_WINDOW_CAP = 4 << 20


def decompress_bounded(
    data: bytes, limit: int, *, what: str, decompressor: zstandard.ZstdDecompressor,
    history: int = 0,
) -> bytes:
    """The content of the single zstd frame `data`, at most `limit` bytes; ProtocolError
    (naming `what`) for anything else, including an allocation failure. `history` is the size
    of the raw-content dictionary `decompressor` holds (a delta's base): the window may span it."""
    declared = _declared_size(data, limit, what, limit + history)
    try:
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            out = decompressor.decompress(data, max_output_size=max(limit, 1),
                                          allow_extra_data=False)
        else:
            out = decompressor.decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"{what} does not decompress within {limit} bytes: {exc}") from None
    except MemoryError:
        raise ProtocolError(f"{what}: out of memory decompressing {limit} bytes") from None
    if len(out) > limit:
        raise ProtocolError(f"{what} decompresses to more than {limit} bytes")
    return out


def _declared_size(data: bytes, limit: int, what: str, span: int) -> int:
    """The frame's declared content size (or CONTENTSIZE_UNKNOWN), once its header is sane."""
    if data[:4] != ZSTD_MAGIC:
        raise ProtocolError(f"{what} is not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"{what} has a bad zstd frame header: {exc}") from None
    if params.dict_id:
        raise ProtocolError(f"{what} asks for zstd dictionary {params.dict_id}")
    window_cap = max(2 * span, MIN_WINDOW_CAP)
    if params.window_size > window_cap:
        raise ProtocolError(f"{what} asks for a zstd window of {params.window_size} bytes "
                            f"(at most {window_cap})")
    declared = int(params.content_size)
    if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > limit:
        raise ProtocolError(f"{what} declares {declared} bytes, over the limit of {limit}")
    return declared
