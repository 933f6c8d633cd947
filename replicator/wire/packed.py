"""Link compression: the origin's frames, compressed as one zstd stream per connection.

Each batch is already small (a sync commit sends a few hundred bytes: log records, a cache
delta, paths, digests, a JSON header), and compressing each on its own gains little. What
repeats is across batches: the same paths, header keys and log record layouts, commit after
commit. So the origin compresses everything it streams on one connection as a single zstd
stream and flushes it at every send (`Packer`): the bytes of one send then decode on their own,
with every earlier send as their history. Measured on the sync-commit workload (mdbox, one
APPEND at a time): 1 137 link bytes per APPEND became 233, for about 12 µs of CPU.

The replica decodes them (`Unpacker`) without trusting a byte, as the plain frame decoder
does: the history window is capped before anything is allocated (`MAX_WINDOW`), and the output
of one PACKED frame may not exceed `limit` (its max_frame_bytes): it is decoded `FEED` bytes of
input at a time, each step yielding 2 MiB at most, and decoding stops at the first step past
the limit, so a frame of a few KB that would expand to gigabytes costs at most `limit` + 2 MiB
of memory.

Only the origin -> replica direction is packed (ACKs are a few bytes), and only when both
ends announced `FEATURE` in their HELLOs ([replication] link_compression on both).
"""

from __future__ import annotations

import zstandard

from replicator.errors import ProtocolError

FEATURE = "zstd-stream"
LEVEL = 1  # level 3 saved another 4 % of the bytes for about 40 % more CPU (same workload)
WINDOW_LOG = 20  # 1 MiB of history: about a thousand commits of this workload
MAX_WINDOW = 1 << 23  # what a replica accepts from a peer's frame header
# Input is decoded this many bytes at a time: a zstd block takes at least 4 of them and yields
# at most 128 KiB, so one step yields about 2 MiB at most, whatever the peer sent. (Feeding a
# whole payload would decode it whole before we could count; python-zstandard's stream_writer,
# which does hand out its output in slices, keeps the end of a flushed block back until more
# input comes, so a send of several slices would not decode in time.) 4 MiB of a resync
# compressed 20:1 takes about 2 ms in such steps.
FEED = 64


class Packer:
    """The origin's end of one connection's stream."""

    def __init__(self) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(LEVEL, window_log=WINDOW_LOG)
        self._stream = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def pack(self, data: bytes) -> bytes:
        """`data` compressed and flushed: the replica can decode it as soon as it arrives."""
        return self._stream.compress(data) + self._stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


class Unpacker:
    """The replica's end of one connection's stream."""

    def __init__(self) -> None:
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._stream = decompressor.decompressobj()

    def unpack(self, payload: bytes, limit: int) -> bytes:
        """What one PACKED frame carries, at most `limit` bytes; ProtocolError for anything
        else (the stream cannot go on after one: the connection ends, and the next one starts
        a new stream)."""
        parts, size = [], 0
        view = memoryview(payload)
        try:
            for start in range(0, len(view), FEED):
                out = self._stream.decompress(view[start : start + FEED])
                size += len(out)
                if size > limit:
                    raise ProtocolError(f"a packed frame decompresses to more than {limit} "
                                        "bytes", remote=True)
                parts.append(out)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"bad packed frame: {exc}", remote=True) from None
        except MemoryError:
            raise ProtocolError("out of memory decompressing a packed frame",
                                remote=True) from None
        return b"".join(parts)
