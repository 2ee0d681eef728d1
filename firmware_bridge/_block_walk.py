"""The bslz4 block walk compiled with numba (one pass over the block sizes, no Python per block).

``walk_blocks`` is the compiled twin of the Python walk in :mod:`firmware_bridge.hdf5_chunks` (which
stays the reference: tests compare the two on arbitrary bytes). Imported on first use, so that a
missing numba only means the Python walk.

``lz4_block_ok`` parses one LZ4 block's sequences without writing its output: it says whether the
block decodes to exactly ``plain`` bytes under the rules of liblz4's bounds-checked decoder
(``LZ4_decompress_safe``, which bitshuffle, python-lz4 and hdf5plugin call), at the cost of one read
per sequence instead of the decompression. It is stricter than that decoder where the LZ4 block format
says a block is invalid and the decoder lets it through anyway: an offset of 0, and a match ending
inside the last 5 bytes (LASTLITERALS). Tests compare it with ``lz4.block.decompress`` on arbitrary
damage. Format: lz4's ``doc/lz4_Block_format.md``.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np


@numba.njit(cache=True, inline="always")  # type: ignore[misc]
def _block_at(buf: Any, pos: int, end: int) -> int:
    """The size (``>u32``) of the block whose size sits at ``pos``; -1 when the size or the block's
    bytes would pass ``end``."""
    if pos + 4 > end:
        return -1
    length = (
        (np.int64(buf[pos]) << 24)
        | (np.int64(buf[pos + 1]) << 16)
        | (np.int64(buf[pos + 2]) << 8)
        | np.int64(buf[pos + 3])
    )
    return length if length <= end - pos - 4 else -1


@numba.njit(cache=True)  # type: ignore[misc]
def walk_blocks(buf: Any, pos: int, count: int, end: int, chosen: Any, picked: Any) -> int:
    """Walk ``count`` blocks of ``<u32 BE size><bytes>`` from ``pos``; returns where the last ends, or
    -1 when a block's size or bytes would pass ``end``. ``picked[k]`` gets (offset, length) of the LZ4
    data of block ``chosen[k]`` (``chosen`` ascending)."""
    k = 0
    for index in range(count):
        length = _block_at(buf, pos, end)
        if length < 0:
            return -1
        pos += 4
        if k < chosen.shape[0] and chosen[k] == index:
            picked[k, 0] = pos
            picked[k, 1] = length
            k += 1
        pos += length
    return pos


MIN_MATCH = 4
LAST_LITERALS = 5  # the last 5 bytes of a block are literals
MF_LIMIT = 12  # the last match starts at least 12 bytes before the block's end


@numba.njit(cache=True)  # type: ignore[misc]
def lz4_block_ok(buf: Any, start: int, length: int, plain: int) -> bool:
    """True when the LZ4 block ``buf[start:start + length]`` decodes to exactly ``plain`` bytes."""
    ip = start
    iend = start + length
    if plain == 0:
        return length == 1 and buf[ip] == 0
    if length == 0:
        return False
    op = 0
    while ip < iend:
        token = np.int64(buf[ip])
        ip += 1
        literals = token >> 4
        if literals == 15:  # more length bytes follow, each 255 but the last
            if ip >= iend - 15:
                return False
            more = 255
            while more == 255:
                more = np.int64(buf[ip])
                ip += 1
                literals += more
                if ip > iend - 15:
                    return False
        if op + literals > plain - MF_LIMIT or ip + literals > iend - 8:
            # only the last sequence may come this close to either end: literals only, ending both
            return ip + literals == iend and op + literals == plain
        ip += literals
        op += literals
        offset = np.int64(buf[ip]) | (np.int64(buf[ip + 1]) << 8)
        ip += 2
        match = token & 15
        if match == 15:
            more = 255
            while more == 255:
                more = np.int64(buf[ip])
                ip += 1
                match += more
                if ip > iend - LAST_LITERALS + 1:
                    return False
        match += MIN_MATCH
        if offset == 0 or offset > op or op + match > plain - LAST_LITERALS:
            return False
        op += match
    return False


@numba.njit(cache=True)  # type: ignore[misc]
def first_bad_block(buf: Any, pos: int, count: int, end: int, block_plain: int, last_plain: int) -> int:
    """The index of the first of ``count`` blocks (``<u32 BE size><LZ4>`` from ``pos``, each
    ``block_plain`` bytes plain, the last ``last_plain``) that does not decode, ``count`` when they all
    do; -1 when a block's size would pass ``end`` or the blocks do not end exactly at ``end``."""
    for index in range(count):
        length = _block_at(buf, pos, end)
        if length < 0:
            return -1
        pos += 4
        if not lz4_block_ok(buf, pos, length, last_plain if index == count - 1 else block_plain):
            return index
        pos += length
    return count if pos == end else -1


def warm_up() -> None:
    """Compile (or load from numba's cache) before the first image needs it."""
    buf = np.frombuffer(b"\0" * 8, np.uint8)
    walk_blocks(buf, 0, 1, 8, np.zeros(1, np.int64), np.zeros((1, 2), np.int64))
    first_bad_block(buf, 0, 1, 8, 8, 8)
