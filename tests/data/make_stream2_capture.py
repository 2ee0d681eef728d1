"""Regenerate the Stream V2 captures ``stream2_*.bin``, built field by field from DECTRIS's public spec.

Independent of our codec and simulator on purpose: this file uses only ``cbor2`` (tags written as
``cbor2.CBORTag``), ``bitshuffle.compress_lz4`` and ``lz4.block`` and frames the chunks itself, following
github.com/dectris/documentation ``stream_v2/README.md`` (message fields), ``cbor/dectris-compression-tag.md``
(tag 56500) and RFC 8746 (tag 40 row-major arrays ``[[rows, cols], typed array]``; typed-array tags 64
uint8, 69 uint16 LE, 70 uint32 LE, 85 float32 LE). Run from the repository root:
``.venv/bin/python tests/data/make_stream2_capture.py``.

Container (``docs/wire-formats.md``): ``b"EDGV2CAP"``, then per message ``<u32 length><bytes>``,
little-endian. Captures:

- ``stream2_bslz4_u16_2ch.bin``: series 7, 23 x 41 uint16, channels ``threshold_1`` and ``threshold_2``,
  bitshuffle-LZ4 with 256-element blocks (three full blocks, one partial, 7 leftover elements), a
  32-bit pixel mask per channel, a float32 flatfield for ``threshold_1``, a bslz4-compressed uint32
  count-rate table, goniometer and other geometry, user data, an unknown vendor field; images 0..3;
  every message behind the self-described tag 55799.
- ``stream2_lz4_u32.bin``: series 8, 16 x 20 uint32, one channel ``threshold_1``, HDF5-LZ4 framing with
  512-byte blocks (frame 2 is noise, so some of its blocks are stored plain), ``bit_depth_image`` 32
  and no ``image_dtype``; images 0..2.
- ``stream2_raw.bin``: uncompressed typed arrays, no 55799 prefix: series 9 (12 x 10 uint16, 2 images),
  series 10 (uint8, 1 image), series 11 (float32, 1 image).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import bitshuffle
import cbor2
import lz4.block
import numpy as np

MAGIC = b"EDGV2CAP"
TYPED = {"uint8": 64, "uint16": 69, "uint32": 70, "float32": 85}
ARM_DATE = "2026-11-30T12:00:00.000Z"


def frame(series: int, channel: int, number: int, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """The pixels the captures carry (seeded, so tests can recompute them)."""
    rng = np.random.default_rng([series, channel, number])
    if dtype == "float32":
        return rng.normal(10.0, 3.0, shape).astype(np.float32)
    if dtype == "uint32" and number == 2:
        return rng.integers(0, 2**32, shape, dtype=np.uint32)  # incompressible: plain LZ4 blocks
    return rng.poisson(20 + 10 * channel, shape).astype(dtype)


def pixel_mask(channel: int, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint32)
    mask[0, :] = 1  # gap row
    mask[5, 7 + channel] = 2  # a dead pixel, different per channel
    mask[-1, -1] = 8  # a hot pixel
    return mask


def bslz4(array: np.ndarray, block_elems: int) -> bytes:
    """HDF5 bitshuffle filter (32008) chunk: >u64 plain size, >u32 block bytes, the LZ4 blocks."""
    array = np.ascontiguousarray(array)
    head = struct.pack(">QI", array.nbytes, block_elems * array.itemsize)
    return head + bitshuffle.compress_lz4(array, block_elems).tobytes()


def lz4_hdf5(plain: bytes, block_bytes: int) -> bytes:
    """HDF5 LZ4 filter (32004) chunk: >u64 plain size, >u32 block bytes, per block >u32 size + data."""
    out = bytearray(struct.pack(">QI", len(plain), block_bytes))
    for pos in range(0, len(plain), block_bytes):
        block = plain[pos : pos + block_bytes]
        packed = lz4.block.compress(block, store_size=False)
        if len(packed) >= len(block):
            packed = block  # the filter stores a block plain when LZ4 does not shrink it
        out += struct.pack(">I", len(packed)) + packed
    return bytes(out)


def typed(array: np.ndarray, compression: str = "none", block: int = 256) -> cbor2.CBORTag:
    """tag 40 [[rows, cols], tag 64/69/70/85 (byte string | tag 56500 [algorithm, elem, bytes])]."""
    dtype = str(array.dtype)
    little = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    if compression == "bslz4":
        content: object = cbor2.CBORTag(56500, ["bslz4", little.itemsize, bslz4(little, block)])
    elif compression == "lz4":
        content = cbor2.CBORTag(56500, ["lz4", 0, lz4_hdf5(little.tobytes(), 512)])
    else:
        content = little.tobytes()
    return cbor2.CBORTag(40, [list(array.shape), cbor2.CBORTag(TYPED[dtype], content)])


def message(fields: dict[str, object], self_described: bool) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(55799, fields) if self_described else fields)


def series_messages(
    series: int,
    shape: tuple[int, int],
    dtype: str,
    channels: list[str],
    images: int,
    compression: str,
    self_described: bool,
    start_extra: dict[str, object],
) -> Iterator[bytes]:
    uid = f"capture-series-{series}"
    start: dict[str, object] = {
        "type": "start",
        "series_id": series,
        "series_unique_id": uid,
        "arm_date": cbor2.CBORTag(0, ARM_DATE),
        "channels": channels,
        "image_size_x": shape[1],
        "image_size_y": shape[0],
        "number_of_images": images,
        "count_time": 0.001,
        "frame_time": 0.0011,
        **start_extra,
    }
    yield message(start, self_described)
    for number in range(images):
        data = {
            name: typed(frame(series, c, number, shape, dtype), compression)
            for c, name in enumerate(channels)
        }
        image: dict[str, object] = {
            "type": "image",
            "series_id": series,
            "series_unique_id": uid,
            "image_id": number,
            "real_time": [1000, 1_000_000],
            "series_date": cbor2.CBORTag(0, ARM_DATE),
            "start_time": [number * 1100, 1_000_000],
            "stop_time": [number * 1100 + 1000, 1_000_000],
            "data": data,
            "user_data": {"shot": number},
        }
        yield message(image, self_described)
    yield message({"type": "end", "series_id": series, "series_unique_id": uid}, self_described)


def captures() -> dict[str, list[bytes]]:
    shape = (23, 41)
    channels = ["threshold_1", "threshold_2"]
    table = np.arange(0, 4096, dtype=np.uint32) * 3 // 2
    bslz4_start = {
        "image_dtype": "uint16",
        "pixel_mask": {name: typed(pixel_mask(c, shape)) for c, name in enumerate(channels)},
        "pixel_mask_enabled": True,
        "flatfield": {"threshold_1": typed(np.full(shape, 1.25, dtype=np.float32))},
        "flatfield_enabled": True,
        "countrate_correction_enabled": True,
        "countrate_correction_lookup_table": cbor2.CBORTag(
            70, cbor2.CBORTag(56500, ["bslz4", 4, bslz4(table, 512)])
        ),
        "beam_center_x": 20.5,
        "beam_center_y": 11.25,
        "detector_distance": 0.12,
        "detector_translation": [0.0, 0.0, 0.12],
        "pixel_size_x": 7.5e-5,
        "pixel_size_y": 7.5e-5,
        "incident_energy": 12400.0,
        "incident_wavelength": 1.0,
        "goniometer": {"omega": {"start": 0.0, "increment": 0.1}},
        "sensor_material": "Si",
        "sensor_thickness": 0.00045,
        "threshold_energy": {"threshold_1": 6200.0, "threshold_2": 9000.0},
        "detector_description": "capture generator (not a DECTRIS detector)",
        "detector_serial_number": "E-00-0000",
        "user_data": {"sample": "LaB6", "proposal": 1234},
        "x_vendor_field": {"note": "unknown fields are kept", "blob": b"\x00\x01"},
    }
    return {
        "stream2_bslz4_u16_2ch.bin": list(
            series_messages(7, shape, "uint16", channels, 4, "bslz4", True, bslz4_start)
        ),
        "stream2_lz4_u32.bin": list(
            series_messages(8, (16, 20), "uint32", ["threshold_1"], 3, "lz4", True, {"bit_depth_image": 32})
        ),
        "stream2_raw.bin": [
            *series_messages(
                9, (12, 10), "uint16", ["threshold_1"], 2, "none", False, {"image_dtype": "uint16"}
            ),
            *series_messages(
                10, (12, 10), "uint8", ["threshold_1"], 1, "none", False, {"image_dtype": "uint8"}
            ),
            *series_messages(
                11, (12, 10), "float32", ["threshold_1"], 1, "none", False, {"image_dtype": "float32"}
            ),
        ],
    }


def encode_capture(messages: list[bytes]) -> bytes:
    return MAGIC + b"".join(struct.pack("<I", len(m)) + m for m in messages)


def iter_capture(data: bytes) -> Iterator[bytes]:
    if data[:8] != MAGIC:
        raise ValueError("not a Stream V2 capture")
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        yield data[pos + 4 : pos + 4 + length]
        pos += 4 + length


def main() -> None:
    for name, messages in captures().items():
        path = Path(__file__).with_name(name)
        path.write_bytes(encode_capture(messages))
        print(f"wrote {path} ({len(messages)} messages)")


if __name__ == "__main__":
    main()
