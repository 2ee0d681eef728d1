"""numba CPU kernels: parallel over pixels, GIL released so pipeline threads overlap."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=False)
def _correct(raw, dark, gain, out):  # pragma: no cover - compiled
    flat_raw = raw.ravel()
    flat_dark = dark.ravel()
    flat_gain = gain.ravel()
    flat_out = out.ravel()
    for i in numba.prange(flat_raw.size):
        flat_out[i] = (np.float32(flat_raw[i]) - flat_dark[i]) * flat_gain[i]


@numba.njit(parallel=True, nogil=True, cache=True)
def _histogram(values, bins, npt, nchunks):  # pragma: no cover - compiled
    flat_values = values.ravel()
    flat_bins = bins.ravel()
    n = flat_values.size
    partial = np.zeros((nchunks, npt + 1), dtype=np.float64)
    step = (n + nchunks - 1) // nchunks
    for c in numba.prange(nchunks):
        start = c * step
        stop = min(n, start + step)
        row = partial[c]
        for i in range(start, stop):
            b = flat_bins[i]
            if b < npt:
                row[b] += flat_values[i]
    out = np.zeros(npt, dtype=np.float64)
    for c in range(nchunks):
        for b in range(npt):
            out[b] += partial[c, b]
    return out


def correct(raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    _correct(raw, dark, gain, out)
    return out


def histogram(values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
    return _histogram(values, bins, npt, max(1, numba.get_num_threads()))
