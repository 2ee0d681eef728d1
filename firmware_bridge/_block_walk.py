"""The bslz4 block walk compiled with numba (one pass over the block sizes, no Python per block).

``walk_blocks`` is the compiled twin of the Python walk in :mod:`firmware_bridge.hdf5_chunks` (which
stays the reference: tests compare the two on arbitrary bytes). Imported on first use, so that a
missing numba only means the Python walk.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np


@numba.njit(cache=True)  # type: ignore[misc]
def walk_blocks(buf: Any, pos: int, count: int, end: int, chosen: Any, picked: Any) -> int:
    """Walk ``count`` blocks of ``<u32 BE size><bytes>`` from ``pos``; returns where the last ends, or
    -1 when a block's size or bytes would pass ``end``. ``picked[k]`` gets (offset, length) of the LZ4
    data of block ``chosen[k]`` (``chosen`` ascending)."""
    k = 0
    for index in range(count):
        if pos + 4 > end:
            return -1
        length = (
            (np.int64(buf[pos]) << 24)
            | (np.int64(buf[pos + 1]) << 16)
            | (np.int64(buf[pos + 2]) << 8)
            | np.int64(buf[pos + 3])
        )
        pos += 4
        if length > end - pos:
            return -1
        if k < chosen.shape[0] and chosen[k] == index:
            picked[k, 0] = pos
            picked[k, 1] = length
            k += 1
        pos += length
    return pos


def warm_up() -> None:
    """Compile (or load from numba's cache) before the first image needs it."""
    buf = np.frombuffer(b"\0" * 8, np.uint8)
    walk_blocks(buf, 0, 1, 8, np.zeros(1, np.int64), np.zeros((1, 2), np.int64))
