"""Checked decoding of HDF5-framed compressed chunks that arrive from the wire (bslz4, lz4).

A detector that sends bitshuffle-LZ4 (HDF5 filter 32008) or LZ4 (HDF5 filter 32004) chunks hands us
bytes we must not trust. ``bitshuffle.decompress_lz4`` trusts its input: a corrupt block makes it read
and write out of bounds and the process dies (found while building the Stream V2 ingest). So the block
structure is walked here in Python first: every block's size must lie within the bytes really there
and the blocks must tile the chunk exactly. Only then does bitshuffle decode it (its LZ4 call is the
bounds-checked ``LZ4_decompress_safe``, safe once the sizes it is given are true). A sampled check
decompresses chosen blocks alone with ``lz4.block.decompress`` into block-sized buffers.
A chunk that does not decode raises :class:`ChunkError` (a ``ValueError``); nothing else escapes.

Both framings start with a 12-byte big-endian header: the uncompressed size (u64) and the block size
in bytes (u32). Each block is ``<u32 BE compressed size><bytes>``. bitshuffle blocks hold
``block_size`` elements; the last partial block is cut down to a multiple of 8 elements, and the
``size % 8`` elements left over follow the blocks uncompressed. An LZ4 block whose compressed size
equals its plain size is stored plain (HDF5 LZ4 filter rule).
"""

from __future__ import annotations

import importlib
import struct
from typing import Any

import numpy as np

HEADER = struct.Struct(">QI")
_BLOCK_SIZE = struct.Struct(">I")
MAX_CHUNK_BYTES = 1 << 31  # 2 GiB of pixels per chunk: far beyond any detector frame


class ChunkError(ValueError):
    """A compressed chunk that cannot be decoded; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _module(name: str) -> Any:
    """``name`` imported on first use (importlib's lookup costs ~5 us a call: this runs per block)."""
    module = _MODULES.get(name)
    if module is None:
        try:
            module = _MODULES[name] = importlib.import_module(name)
        except ImportError as error:  # pragma: no cover - both are core dependencies
            raise ImportError(f"{name} is needed to decode compressed chunks: pip install {name}") from error
    return module


_MODULES: dict[str, Any] = {}


def read_header(chunk: bytes | memoryview) -> tuple[int, int]:
    """(uncompressed bytes, block bytes) of an HDF5-framed chunk; raises ChunkError if short/absurd."""
    if len(chunk) < HEADER.size:
        raise ChunkError("short_chunk", f"{len(chunk)} bytes, the header alone is {HEADER.size}")
    nbytes, block_bytes = HEADER.unpack_from(chunk, 0)
    if nbytes > MAX_CHUNK_BYTES:
        raise ChunkError("bad_chunk_header", f"uncompressed size {nbytes}")
    return int(nbytes), int(block_bytes)


def bslz4_blocks(chunk: bytes | memoryview, elem_size: int) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Walk a bslz4 chunk's structure without decompressing it.

    Returns ``(nbytes, block_elems, blocks)`` where each block is ``(offset, length, plain_bytes)`` of
    its LZ4 data. Raises ChunkError unless the blocks tile the chunk exactly.
    """
    nbytes, block_elems, plain, starts, end = _walk_bslz4(chunk, elem_size)
    ends = [*(start - 4 for start in starts[1:]), end] if starts else []
    blocks = [(start, stop - start, size) for start, stop, size in zip(starts, ends, plain, strict=True)]
    return nbytes, block_elems, blocks


def _bslz4_plan(chunk: bytes | memoryview, elem_size: int) -> tuple[int, int, list[int], int]:
    """``(nbytes, block_elems, plain bytes per block, where the blocks must end)`` from the header."""
    if elem_size not in (1, 2, 4, 8):
        raise ChunkError("bad_elem_size", f"element size {elem_size}")
    nbytes, block_bytes = read_header(chunk)
    if nbytes % elem_size:
        raise ChunkError(
            "bad_chunk_header", f"{nbytes} bytes is not a whole number of {elem_size}-byte items"
        )
    block_elems = block_bytes // elem_size
    if block_bytes <= 0 or block_bytes % elem_size or block_elems % 8:
        raise ChunkError("bad_chunk_header", f"block size {block_bytes} bytes for {elem_size}-byte items")
    elems = nbytes // elem_size
    if (elems // block_elems + 1) * 4 > len(chunk) + 4:  # each block needs its 4-byte size at least
        raise ChunkError("truncated_chunk", f"{len(chunk)} bytes cannot hold {elems // block_elems} blocks")
    plain = [block_elems * elem_size] * (elems // block_elems)
    last = elems % block_elems - elems % block_elems % 8
    if last:
        plain.append(last * elem_size)
    leftover = elems % 8 * elem_size
    return nbytes, block_elems, plain, len(chunk) - leftover


def _walk_bslz4(chunk: bytes | memoryview, elem_size: int) -> tuple[int, int, list[int], list[int], int]:
    """``(nbytes, block_elems, plain bytes per block, offset of each block's LZ4 data, end of the
    blocks)``; raises ChunkError unless the blocks tile the chunk exactly.

    The walk reads one 4-byte size per block and checks only that the last block ends exactly where
    the blocks must end: the offsets only grow, so a block that claims more bytes than are there
    leaves the walk past that end (or reading past the chunk). Only then is the walk repeated
    block by block, to say which block is wrong.
    """
    nbytes, block_elems, plain, end = _bslz4_plan(chunk, elem_size)
    unpack = _BLOCK_SIZE.unpack_from
    starts: list[int] = []
    append = starts.append
    pos = HEADER.size
    try:
        for _ in plain:
            pos += 4
            append(pos)
            pos += unpack(chunk, pos - 4)[0]
    except struct.error:
        pos = -1  # read past the chunk: say where below
    if pos != end:
        _explain_walk(chunk, len(plain), end)
    return nbytes, block_elems, plain, starts, end


def _explain_walk(chunk: bytes | memoryview, count: int, end: int) -> None:
    """Raise the ChunkError that says which of ``count`` blocks does not fit before ``end``."""
    pos = HEADER.size
    for index in range(count):
        if pos + 4 > end:
            raise ChunkError("truncated_chunk", f"block {index} of {count} missing")
        (length,) = _BLOCK_SIZE.unpack_from(chunk, pos)
        pos += 4
        if length > end - pos or length >= 1 << 31:
            raise ChunkError("truncated_chunk", f"block {index} claims {length} bytes")
        pos += length
    raise ChunkError("bad_chunk_length", f"{end - pos} stray bytes after the blocks")


def _lz4_block(data: memoryview, plain_bytes: int) -> bytes:
    try:
        out: bytes = _module("lz4.block").decompress(data, uncompressed_size=plain_bytes)
    except Exception as error:  # lz4.block.LZ4BlockError and friends: the block is corrupt
        raise ChunkError("bad_lz4_block", str(error)[:80]) from None
    if len(out) != plain_bytes:
        raise ChunkError("bad_lz4_block", f"block decoded to {len(out)} bytes, expected {plain_bytes}")
    return out


def decode_bslz4(
    chunk: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype[Any] | str
) -> np.ndarray[Any, np.dtype[Any]]:
    """The pixels of a bslz4 chunk, checked block by block; raises ChunkError."""
    dtype = np.dtype(dtype)
    view = memoryview(chunk).cast("B")
    nbytes, block_elems, _ = bslz4_blocks(view, dtype.itemsize)
    expected = int(np.prod(shape)) * dtype.itemsize
    if nbytes != expected:
        raise ChunkError("bad_chunk_size", f"chunk holds {nbytes} bytes, {shape} {dtype} needs {expected}")
    # every block size was checked against the bytes really there, so bitshuffle's decoder (which
    # trusts them) now only runs LZ4_decompress_safe on in-bounds blocks into block-sized buffers
    body = np.frombuffer(view[HEADER.size :], dtype=np.uint8)
    try:
        result: np.ndarray[Any, np.dtype[Any]] = _module("bitshuffle").decompress_lz4(
            body, tuple(shape), dtype, block_elems
        )
    except (RuntimeError, ValueError) as error:  # an LZ4 block that does not decode
        raise ChunkError("bad_lz4_block", str(error)[:80]) from None
    return result


def check_bslz4(chunk: bytes | memoryview, elem_size: int, sample: int | None = None) -> int:
    """Check that a bslz4 chunk decodes, at bounded cost; returns the number of blocks decompressed.

    With ``sample`` set: the whole block structure is walked and every block's LZ4 sequences are
    parsed (compiled, `first_bad_block`: each must decode to exactly its size under liblz4's rules,
    about a tenth of the decompression's cost), and ``sample`` evenly spaced blocks (the first; the last
    too when ``sample`` > 1) are decompressed as well. With None, every block is decompressed (without
    numba, ``sample`` is ignored: the same answer, by the decoder). Raises ChunkError.
    """
    view = memoryview(chunk).cast("B")
    nbytes, _, plain, end = _bslz4_plan(view, elem_size)
    count = len(plain)
    if sample is not None and _compiled_walk() is not None:
        _parse_every_block(view, count, end, plain)
    elif sample is not None:
        sample = None
    if sample is None or sample >= count:  # all of it: the fast decoder, result discarded
        decode_bslz4(view, (nbytes // elem_size,), np.dtype(f"u{elem_size}"))
        return count
    last = count - 1
    chosen = sorted({0, *(round(i * last / (sample - 1)) for i in range(1, sample))} if sample > 1 else {0})
    # the whole structure is walked (as _walk_bslz4 does), noting only the chosen blocks on the way
    picked = _walk_chosen(view, count, end, chosen)
    if picked is None:
        _explain_walk(view, count, end)
        raise AssertionError("unreachable: _explain_walk raises")  # pragma: no cover
    for (offset, length), block in zip(picked, chosen, strict=True):
        _lz4_block(view[offset : offset + length], plain[block])
    return len(chosen)


def _parse_every_block(view: memoryview, count: int, end: int, plain: list[int]) -> None:
    """Raise the ChunkError of the first block whose LZ4 sequences do not decode to its size."""
    if not count:
        return
    from firmware_bridge._block_walk import first_bad_block

    buf = np.frombuffer(view.toreadonly(), dtype=np.uint8)
    bad = first_bad_block(buf, HEADER.size, count, end, plain[0], plain[-1])
    if bad == count:
        return
    if bad < 0:
        _explain_walk(view, count, end)
    offset = HEADER.size
    for _ in range(bad):
        offset += 4 + _BLOCK_SIZE.unpack_from(view, offset)[0]
    length = _BLOCK_SIZE.unpack_from(view, offset)[0]
    _lz4_block(view[offset + 4 : offset + 4 + length], plain[bad])  # the decoder's own reason, if it has one
    raise ChunkError("bad_lz4_block", f"block {bad} of {count} breaks the LZ4 block format's end rules")


def _walk_chosen(view: memoryview, count: int, end: int, chosen: list[int]) -> list[tuple[int, int]] | None:
    """(offset, length) of each chosen block once the ``count`` blocks are found to end exactly at
    ``end``; None when they do not. Compiled (numba) where it can be, else in Python."""
    walk = _compiled_walk()
    if walk is not None:
        buf = np.frombuffer(view.toreadonly(), dtype=np.uint8)
        picked_array = np.zeros((len(chosen), 2), dtype=np.int64)
        pos = walk(buf, HEADER.size, count, end, np.asarray(chosen, dtype=np.int64), picked_array)
        return [(o, n) for o, n in picked_array.tolist()] if pos == end else None
    return _walk_chosen_python(view, count, end, chosen)


def _walk_chosen_python(
    view: memoryview, count: int, end: int, chosen: list[int]
) -> list[tuple[int, int]] | None:
    """The reference walk (and the fallback without numba)."""
    unpack = _BLOCK_SIZE.unpack_from
    picked: list[tuple[int, int]] = []
    pos, index = HEADER.size, 0
    try:
        for stop in [*chosen, count]:
            for _ in range(stop - index):
                pos += 4 + unpack(view, pos)[0]
            index = stop
            if stop < count:
                picked.append((pos + 4, unpack(view, pos)[0]))
    except struct.error:
        return None
    return picked if pos == end else None


_WALK: Any = None  # the compiled walk once loaded; False when numba is not there


def _compiled_walk() -> Any:
    global _WALK
    if _WALK is None:
        try:
            from firmware_bridge._block_walk import walk_blocks
        except ImportError:  # numba missing: the Python walk (slower, same answers)
            _WALK = False
        else:
            _WALK = walk_blocks
    return _WALK or None


def warm_up_check() -> None:
    """Load the compiled walk before the first image needs it (compiling it takes ~1 s uncached)."""
    if _compiled_walk() is not None:
        from firmware_bridge._block_walk import warm_up

        warm_up()


def decode_lz4(chunk: bytes | memoryview, expected: int) -> bytes:
    """The plain bytes (``expected`` of them) of an HDF5-framed LZ4 chunk; raises ChunkError."""
    view = memoryview(chunk).cast("B")
    nbytes, block_bytes = read_header(view)
    if nbytes != expected:
        raise ChunkError("bad_chunk_size", f"chunk holds {nbytes} bytes, {expected} expected")
    if nbytes and (block_bytes <= 0 or -(-nbytes // block_bytes) * 4 > len(view)):
        raise ChunkError("bad_chunk_header", f"block size {block_bytes} for {nbytes} bytes in {len(view)}")
    parts = []
    pos = HEADER.size
    remaining = nbytes
    while remaining:
        plain = min(block_bytes, remaining)
        if pos + 4 > len(view):
            raise ChunkError("truncated_chunk", f"{remaining} bytes of blocks missing")
        (length,) = _BLOCK_SIZE.unpack_from(view, pos)
        pos += 4
        if length > len(view) - pos:
            raise ChunkError("truncated_chunk", f"block claims {length} bytes")
        block = view[pos : pos + length]
        parts.append(bytes(block) if length == plain else _lz4_block(block, plain))
        pos += length
        remaining -= plain
    if pos != len(view):
        raise ChunkError("bad_chunk_length", f"{len(view) - pos} stray bytes after the blocks")
    return b"".join(parts)
