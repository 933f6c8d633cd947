"""zstd for op data: plain, or as a delta with the previous version as raw-content dictionary.

Decompression is bounded by the size the op announces (`raw_size`, which the receiver caps
before it calls us): the zstd header's declared content size must not exceed it, its window must
fit it before anything is allocated, and a frame that does not declare its size is decoded into
a buffer of `raw_size` at most (see replicator.wire.bounded_zstd). So a corrupt or hostile op
never makes us allocate more than it announced, and fails with a ProtocolError.
"""

from __future__ import annotations

import zstandard

from replicator.delta.ops import Codec
from replicator.errors import ProtocolError
from replicator.wire.bounded_zstd import decompress_bounded

LEVEL = 3
MAX_WINDOW = 1 << 31
# Measured with python-zstandard 0.25: with level-3 defaults a raw-content dictionary is only
# matched within about its last MiB; a window covering base + data and a hash table sized to the
# base make a one-byte change to an 8 MiB base cost ~10 KB in ~60 ms. Beyond this size the
# block-range encoder is used instead.
MAX_DELTA_BASE = 8 << 20


# Below this, compressing saves a few bytes and costs ~10 µs on each side (a batch of a flag
# change carries a 20-100 byte log record): not worth it on the latency path.
MIN_COMPRESS = 1024
_PLAIN_COMPRESSOR = zstandard.ZstdCompressor(level=LEVEL)
_PLAIN_DECOMPRESSOR = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)


def compress(data: bytes, *, base: bytes | None = None) -> bytes:
    """zstd of `data`; with `base`, `base` serves as a raw-content dictionary (patch-from)."""
    if base is None:
        return _PLAIN_COMPRESSOR.compress(data)
    hash_log = min(21, max(17, len(base).bit_length() - 3))
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, source_size=len(data), dict_size=len(base), hash_log=hash_log, chain_log=hash_log,
        window_log=max(21, (len(base) + len(data)).bit_length()),
    )
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(data)


def decompress(data: bytes, codec: Codec, raw_size: int, *, base: bytes | None) -> bytes:
    """The op's raw bytes; ProtocolError if they do not decompress to exactly `raw_size`."""
    if codec == Codec.RAW:
        out = data
    else:
        out = _zstd(data, raw_size, base if codec == Codec.ZSTD_DELTA else None)
    if len(out) != raw_size:
        raise ProtocolError(f"op data is {len(out)} bytes, announced {raw_size}")
    return out


def _zstd(data: bytes, raw_size: int, base: bytes | None) -> bytes:
    decompressor = _PLAIN_DECOMPRESSOR
    if base is not None:
        try:
            dictionary = zstandard.ZstdCompressionDict(
                base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            decompressor = zstandard.ZstdDecompressor(dict_data=dictionary,
                                                      max_window_size=MAX_WINDOW)
        except (zstandard.ZstdError, MemoryError) as exc:
            raise ProtocolError(f"op delta base of {len(base)} bytes is unusable: {exc}") from None
    return decompress_bounded(data, raw_size, what="op data", decompressor=decompressor,
                              history=len(base or b""))


def smallest(data: bytes, *, base: bytes | None = None) -> tuple[Codec, bytes]:
    """The cheapest of raw, zstd and (given a base) zstd-delta for `data`."""
    best = (Codec.RAW, data)
    if len(data) >= MIN_COMPRESS:
        plain = compress(data)
        if len(plain) < len(best[1]):
            best = (Codec.ZSTD, plain)
    if base and len(data) >= 64 and len(base) <= MAX_DELTA_BASE:
        delta = compress(data, base=base)
        if len(delta) < len(best[1]):
            best = (Codec.ZSTD_DELTA, delta)
    return best
