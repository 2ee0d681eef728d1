"""numba CPU kernels: parallel over pixels, GIL released so pipeline threads overlap.

The integration kernel walks the frame once with a precomputed bin index. Each thread owns a slice of
pixels and two interleaved partial histograms (even and odd pixels), so neighbouring pixels, which
usually fall in the same bin, do not wait on each other's read-modify-write of one accumulator.
Masked pixels carry the sentinel bin ``nbins`` and land in a slot that is thrown away: no branch.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from kernels._numpy_backend import JUNGFRAU_ADC_MASK, JUNGFRAU_GAIN_BITS


@numba.njit(parallel=True, nogil=True, cache=True)
def _correct(raw, dark, gain, out):  # pragma: no cover - compiled
    flat_raw = raw.ravel()
    flat_dark = dark.ravel()
    flat_gain = gain.ravel()
    flat_out = out.ravel()
    for i in numba.prange(flat_raw.size):
        flat_out[i] = (np.float32(flat_raw[i]) - flat_dark[i]) * flat_gain[i]


@numba.njit(parallel=True, nogil=True, cache=True)
def _bin_sums(values, bins, nbins, nchunks, with_variance):  # pragma: no cover - compiled
    n = values.size
    width = nbins + 1
    copies = 4 if with_variance else 2
    partial = np.zeros((nchunks, copies * width), dtype=np.float64)
    step = ((n + nchunks - 1) // nchunks + 1) // 2 * 2
    for c in numba.prange(nchunks):
        row = partial[c]
        start = c * step
        stop = min(n, start + step)
        i = start
        if with_variance:
            while i + 2 <= stop:
                a = np.float64(values[i])
                b = np.float64(values[i + 1])
                row[bins[i]] += a
                row[width + bins[i + 1]] += b
                row[2 * width + bins[i]] += max(1.0, a)
                row[3 * width + bins[i + 1]] += max(1.0, b)
                i += 2
            if i < stop:
                a = np.float64(values[i])
                row[bins[i]] += a
                row[2 * width + bins[i]] += max(1.0, a)
        else:
            while i + 2 <= stop:
                row[bins[i]] += np.float64(values[i])
                row[width + bins[i + 1]] += np.float64(values[i + 1])
                i += 2
            if i < stop:
                row[bins[i]] += np.float64(values[i])
    sums = np.zeros(nbins, dtype=np.float64)
    variance = np.zeros(nbins if with_variance else 0, dtype=np.float64)
    for c in range(nchunks):
        for b in range(nbins):
            sums[b] += partial[c, b] + partial[c, width + b]
        if with_variance:
            for b in range(nbins):
                variance[b] += partial[c, 2 * width + b] + partial[c, 3 * width + b]
    return sums, variance


@numba.njit(parallel=True, nogil=True, cache=True)
def _jungfrau(raw, pedestal, gain, out):  # pragma: no cover - compiled
    flat_raw = raw.ravel()
    flat_out = out.ravel()
    n = flat_raw.size
    ped = pedestal.reshape(3, n)
    g = gain.reshape(3, n)
    for i in numba.prange(n):
        sample = np.int64(flat_raw[i])
        code = sample >> JUNGFRAU_GAIN_BITS
        adc = np.float32(sample & JUNGFRAU_ADC_MASK)
        if code == 2:
            flat_out[i] = np.float32(0.0)
        else:
            stage = np.int64(2) if code == 3 else code
            flat_out[i] = (adc - ped[stage, i]) / g[stage, i]


def _chunks() -> int:
    return max(1, numba.get_num_threads())


def correct(raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    _correct(raw, dark, gain, out)
    return out


def histogram(values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
    flat_values = np.ascontiguousarray(values).ravel()
    flat_bins = np.minimum(np.ascontiguousarray(bins).ravel(), npt)
    return _bin_sums(flat_values, flat_bins, npt, _chunks(), False)[0]


def jungfrau_convert(raw: np.ndarray, pedestal: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    _jungfrau(
        np.ascontiguousarray(raw, dtype=np.uint16),
        np.ascontiguousarray(pedestal, dtype=np.float32),
        np.ascontiguousarray(gain, dtype=np.float32),
        out,
    )
    return out


class BinSummer:
    """numba twin of :class:`kernels._numpy_backend.BinSummer`."""

    def __init__(self, bins: np.ndarray, nbins: int) -> None:
        self.bins = np.ascontiguousarray(bins).ravel()
        self.nbins = nbins

    def __call__(self, frame: Any, with_variance: bool) -> tuple[np.ndarray, np.ndarray | None]:
        values = np.ascontiguousarray(frame).ravel()
        sums, variance = _bin_sums(values, self.bins, self.nbins, _chunks(), with_variance)
        return sums, (variance if with_variance else None)
