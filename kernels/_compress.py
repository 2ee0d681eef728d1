"""bitshuffle-LZ4 chunks byte-identical to what HDF5 filter 32008 stores.

The ``bitshuffle`` library does the codec; our part is framing each chunk the way the HDF5 filter
does (an 8-byte big-endian uncompressed size and a 4-byte big-endian block size in bytes, then the
LZ4 blocks), so the chunk can be written with ``write_direct_chunk`` and compressed only once. The
compressed body is copied exactly once (into the returned ``bytes``). bitshuffle releases the GIL, so
``compress_chunks`` spreads frames over an executor the caller passes in (we start no threads).
bitshuffle is imported on first use, so machines without it (a GPU box) can still import ``kernels``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

_HEADER = struct.Struct(">QI")
_TARGET_BLOCK_BYTES = 8192  # bitshuffle's BSHUF_TARGET_BLOCK_SIZE_B
BITSHUFFLE_FILTER_ID = 32008
BITSHUFFLE_LZ4 = 2


def _bitshuffle() -> Any:
    try:
        import bitshuffle
    except ImportError as error:  # pragma: no cover - bitshuffle is a core dependency
        raise ImportError("bitshuffle is needed to (de)compress chunks: pip install bitshuffle") from error
    return bitshuffle


def default_block_elems(itemsize: int) -> int:
    """Block size bitshuffle chooses when asked for 0, in elements."""
    return max(128, (_TARGET_BLOCK_BYTES // itemsize) // 8 * 8)


def hdf5_filter_options() -> dict[str, object]:
    """Keyword arguments for ``h5py.create_dataset`` that declare the same filter our chunks use."""
    return {"compression": BITSHUFFLE_FILTER_ID, "compression_opts": (0, BITSHUFFLE_LZ4)}


def compress_chunk(frame: np.ndarray) -> bytes:
    """Compress one contiguous array into a filter-32008 chunk (header included)."""
    frame = np.ascontiguousarray(frame)
    body = _bitshuffle().compress_lz4(frame, 0)
    header = _HEADER.pack(frame.nbytes, default_block_elems(frame.itemsize) * frame.itemsize)
    return b"".join((header, memoryview(body)))


def compress_chunks(frames: Iterable[np.ndarray], executor: Executor | None = None) -> list[bytes]:
    """:func:`compress_chunk` over several frames, in parallel on ``executor`` when one is given."""
    if executor is None:
        return [compress_chunk(frame) for frame in frames]
    return list(executor.map(compress_chunk, frames))


def decompress_chunk(
    chunk: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype[Any] | str
) -> np.ndarray:
    """Inverse of :func:`compress_chunk`; raises ValueError on a chunk that does not match the shape."""
    dtype = np.dtype(dtype)
    view = memoryview(chunk)
    if len(view) < _HEADER.size:
        raise ValueError("chunk shorter than its 12-byte header")
    nbytes, block_bytes = _HEADER.unpack(view[: _HEADER.size])
    expected = int(np.prod(shape)) * dtype.itemsize
    if nbytes != expected:
        raise ValueError(f"chunk holds {nbytes} bytes, shape {shape} {dtype} needs {expected}")
    body = np.frombuffer(view[_HEADER.size :], dtype=np.uint8)
    result: np.ndarray = _bitshuffle().decompress_lz4(body, shape, dtype, block_bytes // dtype.itemsize)
    return result


def decompress_chunks(
    chunks: Sequence[bytes | memoryview],
    shape: tuple[int, ...],
    dtype: np.dtype[Any] | str,
    executor: Executor | None = None,
) -> list[np.ndarray]:
    """:func:`decompress_chunk` over several chunks, in parallel on ``executor`` when one is given."""
    if executor is None:
        return [decompress_chunk(chunk, shape, dtype) for chunk in chunks]
    return list(executor.map(lambda chunk: decompress_chunk(chunk, shape, dtype), chunks))
