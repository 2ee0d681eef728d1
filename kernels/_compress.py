"""bitshuffle-LZ4 chunks byte-identical to what HDF5 filter 32008 stores.

The ``bitshuffle`` library does the codec; our part is framing each chunk the way the HDF5 filter
does (an 8-byte big-endian uncompressed size and a 4-byte big-endian block size in bytes, then the
LZ4 blocks), so the chunk can be written with ``write_direct_chunk`` and compressed only once.

The library's C entry point ``bshuf_compress_lz4`` (exported by ``bitshuffle.ext``) is called through
ctypes (which releases the GIL) into a NumPy buffer of the library's bound, right after the header,
and a read-only view of the bytes used is returned: compressed once, never copied. (A per-thread scratch
buffer copied into a ``bytes`` cost ~7%; building the ``bytes`` in place through CPython's
``_PyBytes_Resize`` was taken out after an unexplained segfault in a CI run.) A bitshuffle build without
the symbol falls back to its Python wrapper (output joined to the header).
All use bitshuffle's OpenMP threads (``OMP_NUM_THREADS``, read when bitshuffle is first loaded).
``compress_chunks`` spreads frames over an executor the caller passes in (we start no threads).
bitshuffle is imported on first use, so machines without it (a GPU box) can still import ``kernels``.
"""

from __future__ import annotations

import ctypes
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


class _CompressLZ4:
    """ctypes binding of ``bshuf_compress_lz4`` and ``bshuf_compress_lz4_bound`` in ``bitshuffle.ext``."""

    def __init__(self, library_path: str) -> None:
        library = ctypes.CDLL(library_path)  # already loaded by the import: same handle, no second copy
        self.compress = library.bshuf_compress_lz4
        self.compress.restype = ctypes.c_int64
        self.compress.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 3
        self.bound = library.bshuf_compress_lz4_bound
        self.bound.restype = ctypes.c_size_t
        self.bound.argtypes = [ctypes.c_size_t] * 3


_binding: list[_CompressLZ4 | None] = []  # [] until first use, then [binding or None]


def _compress_lz4() -> _CompressLZ4 | None:
    if not _binding:
        ext = _bitshuffle().ext
        try:
            _binding.append(_CompressLZ4(ext.__file__))
        except (AttributeError, OSError):  # pragma: no cover - a build that hides its C symbols
            _binding.append(None)
    return _binding[0]


def compress_chunk(frame: np.ndarray) -> bytes | memoryview:
    """Compress one contiguous array into a filter-32008 chunk (header included).

    The header and the blocks are written into one buffer allocated for this chunk (as
    ``bitshuffle.compress_lz4`` allocates its output), and a read-only ``memoryview`` of the bytes used
    is returned: no copy after compression. It compares equal to the same ``bytes`` and goes wherever
    ``bytes`` go (``write_direct_chunk``, sockets, hashes); ``bytes(chunk)`` when a real ``bytes`` is
    wanted.
    """
    frame = np.ascontiguousarray(frame)
    header = _HEADER.pack(frame.nbytes, default_block_elems(frame.itemsize) * frame.itemsize)
    binding = _compress_lz4()
    if binding is None:  # pragma: no cover - see _compress_lz4
        return b"".join((header, memoryview(_bitshuffle().compress_lz4(frame, 0))))
    buffer = np.empty(_HEADER.size + binding.bound(frame.size, frame.itemsize, 0), dtype=np.uint8)
    written = binding.compress(
        frame.ctypes.data, buffer.ctypes.data + _HEADER.size, frame.size, frame.itemsize, 0
    )
    if written < 0:  # pragma: no cover - bitshuffle's own error codes (out of memory, bad size)
        raise RuntimeError(f"bshuf_compress_lz4 failed with error {written}")
    buffer[: _HEADER.size] = np.frombuffer(header, dtype=np.uint8)
    return memoryview(buffer[: _HEADER.size + written]).toreadonly()


def compress_chunks(
    frames: Iterable[np.ndarray], executor: Executor | None = None
) -> list[bytes | memoryview]:
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
