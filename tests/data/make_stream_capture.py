"""Regenerate ``stream_capture_v1.bin``: a small DECTRIS-style ZeroMQ frame stream, recorded.

Run from the repository root: ``PYTHONPATH=src python tests/data/make_stream_capture.py``. Container
(``docs/wire-formats.md``): ``b"EDGZCAP1"``, then per message ``<u32 parts>`` and per part
``<u32 length><bytes>``, little-endian. The series (32 x 48 uint16, seeded) holds frames 0..9 of an announced 11 (frame 10 never comes) with
frame 4 missing (a gap), frame 6 sent with a data part one byte short (rejected), frame 7 compressed
(``bs16-lz4<``), frame 8 sent twice, and one message that is not JSON. ``test_stream_capture.py``
pins what a replay must produce.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from kernels import compress_chunk

MAGIC = b"EDGZCAP1"
SHAPE = (32, 48)


def frame(number: int) -> np.ndarray:
    return np.random.default_rng([11, number]).poisson(30, SHAPE).astype(np.uint16)


def messages() -> Iterator[list[bytes]]:
    yield [
        bytes(p) for p in encode_series_start(3, SHAPE, "uint16", run_uid="capture-v1", frames_expected=11)
    ]
    for n in range(10):
        if n == 4:
            continue
        data = frame(n).tobytes()
        encoding = "<"
        if n == 7:
            data, encoding = compress_chunk(frame(n)), "bs16-lz4<"
        parts = [
            bytes(p) for p in encode_image(3, n, SHAPE, "uint16", data, encoding, n * 1000, n * 1000 + 500)
        ]
        if n == 6:
            parts[2] = parts[2][:-1]
        yield parts
        if n == 8:
            yield parts
        if n == 2:
            yield [b"\xffnot json"]
    yield [bytes(p) for p in encode_series_end(3)]


def encode_capture(msgs: Iterator[list[bytes]]) -> bytes:
    out = bytearray(MAGIC)
    for parts in msgs:
        out += struct.pack("<I", len(parts))
        for part in parts:
            out += struct.pack("<I", len(part)) + part
    return bytes(out)


def iter_capture(data: bytes) -> Iterator[list[bytes]]:
    if data[:8] != MAGIC:
        raise ValueError("not a stream capture")
    pos = 8
    while pos < len(data):
        (count,) = struct.unpack_from("<I", data, pos)
        pos += 4
        parts = []
        for _ in range(count):
            (length,) = struct.unpack_from("<I", data, pos)
            pos += 4
            parts.append(data[pos : pos + length])
            pos += length
        yield parts


def main() -> None:
    out = Path(__file__).with_name("stream_capture_v1.bin")
    out.write_bytes(encode_capture(messages()))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
