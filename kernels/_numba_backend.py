"""numba CPU kernels: parallel over pixels, GIL released so pipeline threads overlap.

The integration kernel walks the frame once with a precomputed bin index. Each thread owns a slice of
pixels and two interleaved partial histograms (even and odd pixels), so neighbouring pixels, which
usually fall in the same bin, do not wait on each other's read-modify-write of one accumulator.
Masked pixels carry the sentinel bin ``nbins`` and land in a slot that is thrown away: no branch.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numba
import numba.extending
import numpy as np

from kernels._numba_cache import serialise_cache_writes
from kernels._numpy_backend import FLAT_FIELD_FLOOR, JUNGFRAU_ADC_MASK, JUNGFRAU_GAIN_BITS
from kernels._peaks import frozen

serialise_cache_writes()  # before anything here compiles: see kernels._numba_cache

U64 = np.uint64  # unsigned loop indices: no negative-index wraparound check per access


def _prange_only() -> dict[str, bool]:
    """numba's ``parallel`` options for our kernels: the explicit ``prange`` loops only. With
    ``parallel=True`` numba also turns every array expression (``np.zeros``, ``.sum()``, ``.max()`` of a
    few elements) into a parallel loop of its own, each costing ~1 s to compile and a thread hand-off to
    run. (A fresh dict each time: numba consumes it.)"""
    return {
        "prange": True,
        "comprehension": False,
        "reduction": False,
        "inplace_binop": False,
        "setitem": False,
        "numpy": False,
        "stencil": False,
        "fusion": False,
    }


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _correct(raw, dark, gain, out):  # pragma: no cover - compiled
    flat_raw = raw.ravel()
    flat_dark = dark.ravel()
    flat_gain = gain.ravel()
    flat_out = out.ravel()
    for i in numba.prange(flat_raw.size):
        flat_out[i] = (np.float32(flat_raw[i]) - flat_dark[i]) * flat_gain[i]


# The loops of ``_bin_sums``, one task's pixels ``start..stop`` into its row of copies (see there). Each is a
# function of its own, called from the parallel loop: written inline in the prange body the same loop ran
# ~20% slower (2048^2 uint16, one thread, interleaved minimum of 25: 4.53 against 3.61 ms).


@numba.njit(nogil=True)
def _sums_plain(values, bins, row, width, start, stop):  # pragma: no cover - compiled
    one, two, three, four = U64(1), U64(2), U64(3), U64(4)
    i = start
    while i + four <= stop:
        row[U64(bins[i])] += values[i]
        row[width + U64(bins[i + one])] += values[i + one]
        row[two * width + U64(bins[i + two])] += values[i + two]
        row[three * width + U64(bins[i + three])] += values[i + three]
        i += four
    while i < stop:
        row[U64(bins[i])] += values[i]
        i += one


@numba.njit(nogil=True)
def _sums_variance(values, bins, row, width, start, stop):  # pragma: no cover - compiled
    one, two = U64(1), U64(2)
    i = start
    low = 0
    while i + two <= stop:
        a = values[i]
        b = values[i + one]
        ka = U64(bins[i])
        kb = width + U64(bins[i + one])
        row[ka] += a
        row[kb] += b
        row[two * width + ka] += max(a, 1)
        row[two * width + kb] += max(b, 1)
        low += a < 1
        low += b < 1
        i += two
    if i < stop:
        a = values[i]
        ka = U64(bins[i])
        row[ka] += a
        row[two * width + ka] += max(a, 1)
        low += a < 1
    return low


@numba.njit(nogil=True)
def _sums_few_low(values, bins, row, width, start, stop):  # pragma: no cover - compiled
    one, two = U64(1), U64(2)
    i = start
    low = 0
    while i + two <= stop:
        a = values[i]
        b = values[i + one]
        ka = U64(bins[i])
        kb = width + U64(bins[i + one])
        row[ka] += a
        row[kb] += b
        if a < 1:
            row[two * width + ka] += 1 - a
            low += 1
        if b < 1:
            row[two * width + kb] += 1 - b
            low += 1
        i += two
    if i < stop:
        a = values[i]
        ka = U64(bins[i])
        row[ka] += a
        if a < 1:
            row[two * width + ka] += 1 - a
            low += 1
    return low


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _bin_sums(values, bins, nbins, partial, with_variance, few_low):  # pragma: no cover - compiled
    # ``partial`` (nchunks, 4 * (nbins + 1)) zeros: uint32 for small unsigned frames when no bin can
    # overflow (exact, and half the cache footprint of int64), int64 for other integer frames (exact),
    # float64 otherwise. Without variance, pixel i adds into copy i % 4: neighbours, which share a bin
    # more than half of the time, do not wait on each other's read-modify-write (two pixels four apart
    # share one about a tenth of the time). With variance, copies 0-1 hold the signal and 2-3 max(1, v);
    # with ``few_low`` (integer frames whose last frame had few pixels below 1) copies 2-3 hold only
    # max(1, v) - v = 1 - v of the pixels below 1, behind a branch that is rarely taken: one
    # read-modify-write per pixel instead of two, and the variance is the signal plus those.
    # Indices are unsigned: numba's wraparound handling of signed indices (i < 0 -> i + n) costs a
    # compare and select on every access. Returns the sums, the variance and how many pixels were below 1.
    n = values.size
    nchunks = partial.shape[0]
    width = U64(nbins + 1)
    step = ((n + nchunks - 1) // nchunks + 3) // 4 * 4
    lows = np.zeros(nchunks, np.int64)
    for c in numba.prange(nchunks):
        start = U64(min(n, c * step))
        stop = U64(min(n, c * step + step))
        if with_variance and few_low:
            lows[c] = _sums_few_low(values, bins, partial[c], width, start, stop)
        elif with_variance:
            lows[c] = _sums_variance(values, bins, partial[c], width, start, stop)
        else:
            _sums_plain(values, bins, partial[c], width, start, stop)
    sums = np.zeros(nbins, dtype=np.float64)
    variance = np.zeros(nbins if with_variance else 0, dtype=np.float64)
    stride = nbins + 1
    for c in range(nchunks):
        if with_variance:
            for b in range(nbins):
                sums[b] += np.float64(partial[c, b]) + np.float64(partial[c, stride + b])
                variance[b] += np.float64(partial[c, 2 * stride + b]) + np.float64(partial[c, 3 * stride + b])
        else:
            for q in range(4):
                for b in range(nbins):
                    sums[b] += np.float64(partial[c, q * stride + b])
    if with_variance and few_low:
        for b in range(nbins):
            variance[b] += sums[b]
    return sums, variance, lows.sum()


def _accumulator_dtype(values: np.ndarray, max_count: int) -> np.dtype[Any]:
    # uint8/uint16 frames sum exactly in uint32 while no bin can pass 2**32 - 1 (``max_count`` pixels
    # at the dtype's maximum; the dropped sentinel slot may wrap, harmlessly); other integer frames of
    # up to 32 bits in int64 (2**31 * 2**32 pixels before overflow).
    small = values.dtype.kind == "u" and values.dtype.itemsize <= 2
    if small and max_count * int(np.iinfo(values.dtype).max) <= int(np.iinfo(np.uint32).max):
        return np.dtype(np.uint32)
    if values.dtype.kind in "ui" and values.dtype.itemsize <= 4:
        return np.dtype(np.int64)
    return np.dtype(np.float64)


def _summed(
    values: np.ndarray,
    bins: np.ndarray,
    nbins: int,
    with_variance: bool,
    max_count: int | None = None,
    few_low: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(sums, variance, pixels below 1); ``few_low`` picks the variance path for frames with few
    pixels below 1 (integer frames only: it is exact for them)."""
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    count = values.size if max_count is None else max_count
    partial = np.zeros((_chunks(), 4 * (nbins + 1)), dtype=_accumulator_dtype(values, count))
    few_low = bool(few_low and with_variance and values.dtype.kind in "ui")
    sums, variance, low = _bin_sums(values, bins, nbins, partial, with_variance, few_low)
    return sums, variance, int(low)


FEW_LOW = 0.05  # below this fraction of pixels under 1 in the last frame, the branchy variance path


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
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


_threads = threading.local()  # this thread's numba thread count, as ``limit_threads`` last set it


def _chunks() -> int:
    """The numba threads kernels called from this thread run on (tasks are split into this many parts).
    Remembered per thread: ``numba.get_num_threads`` is a ctypes call, which lets go of the GIL, and
    taking it back behind the daemon's other threads cost the frame thread more than the call itself."""
    count = getattr(_threads, "count", None)
    if count is None:
        count = _threads.count = max(1, numba.get_num_threads())
    return int(count)


def limit_threads(threads: int) -> None:
    """At most ``threads`` numba threads for kernels called from this thread (numba's own per-thread
    setting; capped at the pool's size)."""
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    _threads.count = max(1, numba.get_num_threads())


def correct(raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    _correct(raw, dark, gain, out)
    return out


def histogram(values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
    flat_values = np.ascontiguousarray(values).ravel()
    flat_bins = np.ascontiguousarray(bins).ravel()
    # out-of-range bins (above npt, or negative) land in the dropped sentinel slot
    flat_bins = np.where((flat_bins < 0) | (flat_bins > npt), npt, flat_bins)
    return _summed(flat_values, flat_bins, npt, False)[0]


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
        # the most pixels any kept bin holds: decides whether uint32 accumulators are exact
        counts = np.bincount(self.bins, minlength=nbins + 1)[:nbins]
        self.max_count = int(counts.max()) if counts.size else 0
        # the variance path for the next frame: few pixels below 1 in the last one (a guess from one
        # frame to the next; either path gives the same sums)
        self.few_low = True

    def __call__(self, frame: Any, with_variance: bool) -> tuple[np.ndarray, np.ndarray | None]:
        values = frozen(frame).ravel()  # read-only: one compiled copy for ring slots and arrays alike
        sums, variance, low = _summed(
            values, self.bins, self.nbins, with_variance, self.max_count, self.few_low
        )
        if with_variance:
            self.few_low = low <= FEW_LOW * values.size
        return sums, (variance if with_variance else None)


# ---- tomography ---------------------------------------------------------------------------------------

BACKPROJECT_ROWS = 8  # output rows per task: their accumulators (8 x size float32) stay in L1/L2


@numba.njit(nogil=True, cache=True)
def _circle_spans(size, circle):  # pragma: no cover - compiled
    """Per output row, the columns [lo, hi) to reconstruct (inside the inscribed circle)."""
    radius = size // 2
    lo = np.zeros(size, np.int64)
    hi = np.full(size, size, np.int64)
    if circle:
        for r in range(size):
            dy = r - radius
            h = radius * radius - dy * dy
            if h < 0:
                hi[r] = 0
                continue
            m = int(math.sqrt(h))
            while (m + 1) * (m + 1) <= h:
                m += 1
            while m * m > h:
                m -= 1
            lo[r] = max(0, radius - m)
            hi[r] = min(size, radius + m + 1)
    return lo, hi


@numba.njit(nogil=True, cache=True)
def _detector_span(base, step, top, jlo, jhi):  # pragma: no cover - compiled
    """Columns j in [jlo, jhi) whose position ``base + step * j`` (float32) lies in [0, top]."""
    if step == 0:
        return (jlo, jhi) if 0 <= base <= top else (jlo, jlo)
    u = (np.float64(0.0) - base) / step
    w = (np.float64(top) - base) / step
    a = math.floor(min(max(min(u, w), -1e9), 1e9)) - 1
    b = math.ceil(min(max(max(u, w), -1e9), 1e9)) + 2
    a = max(a, jlo)
    b = min(b, jhi)
    while a < b:
        x = base + step * np.float32(a)
        if 0 <= x <= top:
            break
        a += 1
    while b > a:
        x = base + step * np.float32(b - 1)
        if 0 <= x <= top:
            break
        b -= 1
    return a, b


@numba.njit(nogil=True, cache=True)
def _base(axis, radius, cos_a, sin_a, a, r):  # pragma: no cover - compiled
    """Detector position (float32) of output column 0 of row ``r`` at angle ``a``."""
    return np.float32(axis - radius * cos_a[a] - (r - radius) * sin_a[a])


@numba.njit(parallel=_prange_only(), nogil=True, cache=True, fastmath={"contract"})
def _backproject(filtered, cos_a, sin_a, axis, circle, out, mirrored, rest):  # pragma: no cover - compiled
    # ``mirrored`` (n, 2): angle pairs (theta, pi - theta), n a multiple of 4; ``rest``: the other angles.
    # Column j of a row at theta reads the detector where column 2R - j of the same row reads it at
    # pi - theta (t = y cos - x sin, and y -> -y, cos -> -cos): one position, floor and fraction serve
    # two interpolations, the second added into the mirrored column.
    n_angles, width = filtered.shape
    size = out.shape[0]
    radius = size // 2
    mirror = 2 * radius
    lo, hi = _circle_spans(size, circle)
    top = np.float32(width - 1)
    # (p[k], p[k+1] - p[k]) side by side: one cache line serves both samples of an interpolation, the
    # difference is computed once per sample instead of once per pixel, and the trailing pair
    # (p[width-1], 0) lets x == width - 1 read k = width - 1 with no clamp in the inner loop
    pairs = np.zeros((n_angles, 2 * width + 2), np.float32)
    for a in numba.prange(n_angles):
        for k in range(width - 1):
            pairs[a, 2 * k] = filtered[a, k]
            pairs[a, 2 * k + 1] = filtered[a, k + 1] - filtered[a, k]
        pairs[a, 2 * width - 2] = filtered[a, width - 1]
    one = U64(1)
    n_blocks = (size + BACKPROJECT_ROWS - 1) // BACKPROJECT_ROWS
    n_rest = rest.size
    grouped = n_rest - n_rest % 4
    for block in numba.prange(n_blocks):
        r0 = block * BACKPROJECT_ROWS
        r1 = min(size, r0 + BACKPROJECT_ROWS)
        acc = np.zeros((BACKPROJECT_ROWS, size), np.float32)
        bases = np.empty(4, np.float32)
        steps = np.empty(4, np.float32)
        # four mirrored pairs per sweep: four positions, eight interpolations, two read-modify-writes
        for g in range(0, mirrored.shape[0], 4):
            a0, a1, a2, a3 = mirrored[g, 0], mirrored[g + 1, 0], mirrored[g + 2, 0], mirrored[g + 3, 0]
            m0, m1, m2, m3 = mirrored[g, 1], mirrored[g + 1, 1], mirrored[g + 2, 1], mirrored[g + 3, 1]
            p0, p1, p2, p3 = pairs[a0], pairs[a1], pairs[a2], pairs[a3]
            q0, q1, q2, q3 = pairs[m0], pairs[m1], pairs[m2], pairs[m3]
            c0 = np.float32(cos_a[a0])
            c1 = np.float32(cos_a[a1])
            c2 = np.float32(cos_a[a2])
            c3 = np.float32(cos_a[a3])
            for r in range(r0, r1):
                row = acc[r - r0]
                b0 = _base(axis, radius, cos_a, sin_a, a0, r)
                b1 = _base(axis, radius, cos_a, sin_a, a1, r)
                b2 = _base(axis, radius, cos_a, sin_a, a2, r)
                b3 = _base(axis, radius, cos_a, sin_a, a3, r)
                # the mirrored column must be in the row's span too; then every angle on the detector
                j0, j1 = _detector_span(
                    b0, c0, top, max(lo[r], mirror - hi[r] + 1), min(hi[r], mirror - lo[r] + 1)
                )
                j0, j1 = _detector_span(b1, c1, top, j0, j1)
                j0, j1 = _detector_span(b2, c2, top, j0, j1)
                j0, j1 = _detector_span(b3, c3, top, j0, j1)
                # inside, 0 <= x <= width - 1, so int32 truncation is the floor; unsigned indices
                for j in range(j0, j1):
                    fj = np.float32(j)
                    x0 = b0 + c0 * fj
                    x1 = b1 + c1 * fj
                    x2 = b2 + c2 * fj
                    x3 = b3 + c3 * fj
                    k0 = np.int32(x0)
                    k1 = np.int32(x1)
                    k2 = np.int32(x2)
                    k3 = np.int32(x3)
                    f0 = x0 - np.float32(k0)
                    f1 = x1 - np.float32(k1)
                    f2 = x2 - np.float32(k2)
                    f3 = x3 - np.float32(k3)
                    i0 = U64(k0 + k0)
                    i1 = U64(k1 + k1)
                    i2 = U64(k2 + k2)
                    i3 = U64(k3 + k3)
                    row[U64(j)] += ((p0[i0] + f0 * p0[i0 + one]) + (p1[i1] + f1 * p1[i1 + one])) + (
                        (p2[i2] + f2 * p2[i2 + one]) + (p3[i3] + f3 * p3[i3 + one])
                    )
                    row[U64(mirror - j)] += ((q0[i0] + f0 * q0[i0 + one]) + (q1[i1] + f1 * q1[i1 + one])) + (
                        (q2[i2] + f2 * q2[i2 + one]) + (q3[i3] + f3 * q3[i3 + one])
                    )
                if j1 <= j0:
                    j0 = j1 = lo[r]
                # what the paired loop left: columns [lo, j0) and [j1, hi) at theta, the mirror of
                # [j0, j1) excluded at pi - theta
                for a in (a0, a1, a2, a3):
                    base = _base(axis, radius, cos_a, sin_a, a, r)
                    step = np.float32(cos_a[a])
                    _one_angle(pairs[a], base, step, top, row, lo[r], j0)
                    _one_angle(pairs[a], base, step, top, row, j1, hi[r])
                for m in (m0, m1, m2, m3):
                    base = _base(axis, radius, cos_a, sin_a, m, r)
                    step = np.float32(cos_a[m])
                    _one_angle(pairs[m], base, step, top, row, lo[r], max(lo[r], mirror - j1 + 1))
                    _one_angle(pairs[m], base, step, top, row, min(hi[r], mirror - j0 + 1), hi[r])
        # four unpaired angles per sweep: one read-modify-write of the accumulator per four interpolations
        for g in range(0, grouped, 4):
            a0, a1, a2, a3 = rest[g], rest[g + 1], rest[g + 2], rest[g + 3]
            p0, p1, p2, p3 = pairs[a0], pairs[a1], pairs[a2], pairs[a3]
            for r in range(r0, r1):
                j0, j1 = lo[r], hi[r]
                for q in range(4):
                    steps[q] = np.float32(cos_a[rest[g + q]])
                    bases[q] = _base(axis, radius, cos_a, sin_a, rest[g + q], r)
                    j0, j1 = _detector_span(bases[q], steps[q], top, j0, j1)
                b0, b1, b2, b3 = bases[0], bases[1], bases[2], bases[3]
                c0, c1, c2, c3 = steps[0], steps[1], steps[2], steps[3]
                row = acc[r - r0]
                for j in range(j0, j1):
                    fj = np.float32(j)
                    x0 = b0 + c0 * fj
                    x1 = b1 + c1 * fj
                    x2 = b2 + c2 * fj
                    x3 = b3 + c3 * fj
                    k0 = np.int32(x0)
                    k1 = np.int32(x1)
                    k2 = np.int32(x2)
                    k3 = np.int32(x3)
                    i0 = U64(k0 + k0)
                    i1 = U64(k1 + k1)
                    i2 = U64(k2 + k2)
                    i3 = U64(k3 + k3)
                    v0 = p0[i0] + (x0 - np.float32(k0)) * p0[i0 + one]
                    v1 = p1[i1] + (x1 - np.float32(k1)) * p1[i1 + one]
                    v2 = p2[i2] + (x2 - np.float32(k2)) * p2[i2 + one]
                    v3 = p3[i3] + (x3 - np.float32(k3)) * p3[i3 + one]
                    row[U64(j)] += (v0 + v1) + (v2 + v3)
                if j1 <= j0:
                    j0 = j1 = lo[r]
                for q in range(4):
                    _one_angle(pairs[rest[g + q]], bases[q], steps[q], top, row, lo[r], j0)
                    _one_angle(pairs[rest[g + q]], bases[q], steps[q], top, row, j1, hi[r])
        for g in range(grouped, n_rest):
            a = rest[g]
            for r in range(r0, r1):
                base = _base(axis, radius, cos_a, sin_a, a, r)
                _one_angle(pairs[a], base, np.float32(cos_a[a]), top, acc[r - r0], lo[r], hi[r])
        for r in range(r0, r1):
            for j in range(size):
                out[r, j] += acc[r - r0, j]


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _one_angle(pairs, base, step, top, row, jlo, jhi):  # pragma: no cover - compiled
    j0, j1 = _detector_span(base, step, top, jlo, jhi)
    for j in range(j0, j1):
        x = base + step * np.float32(j)
        k = np.int32(x)
        i = U64(k + k)
        row[U64(j)] += pairs[i] + (x - np.float32(k)) * pairs[i + U64(1)]


def mirrored_angles(cos_a: np.ndarray, sin_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((n, 2) pairs of angle indices theta, pi - theta with n a multiple of 4, the other indices).

    Angles pair when ``cos b == -cos a`` and ``sin b == sin a`` to 1e-9 (a position error of at most
    ~1e-6 pixel on a 2048-wide detector); an angle pairs at most once.
    """
    keys: dict[tuple[float, float], list[int]] = {}
    for i in range(cos_a.size):  # keyed by the partner each angle wants
        keys.setdefault((round(-float(cos_a[i]), 9) + 0.0, round(float(sin_a[i]), 9) + 0.0), []).append(i)
    used = np.zeros(cos_a.size, dtype=bool)
    found: list[tuple[int, int]] = []
    for i in range(cos_a.size):
        if used[i]:
            continue
        for j in keys.get((round(float(cos_a[i]), 9) + 0.0, round(float(sin_a[i]), 9) + 0.0), ()):
            if j != i and not used[j]:
                used[i] = used[j] = True
                found.append((i, j))
                break
    keep = len(found) - len(found) % 4
    mirrored = np.array(found[:keep], dtype=np.int64).reshape(keep, 2)
    leftover = np.array(found[keep:], dtype=np.int64).reshape(-1)
    rest = np.sort(np.concatenate((leftover, np.flatnonzero(~used)))).astype(np.int64)
    return mirrored, rest


def backproject(
    filtered: np.ndarray, angles: np.ndarray, axis: float, circle: bool, out: np.ndarray
) -> np.ndarray:
    """Add the back-projection of ``filtered`` (float32 ``(n_angles, width)``) into float32 ``out``."""
    if filtered.shape[1] < 2:
        raise ValueError("a projection needs at least 2 detector pixels")
    angles = np.asarray(angles, dtype=np.float64)
    cos_a, sin_a = np.cos(angles), np.sin(angles)
    mirrored, rest = mirrored_angles(cos_a, sin_a)
    _backproject(
        np.ascontiguousarray(filtered, dtype=np.float32),
        cos_a,
        sin_a,
        float(axis),
        circle,
        out,
        mirrored,
        rest,
    )
    return out


@numba.njit(parallel=_prange_only(), nogil=True, cache=True, error_model="numpy")
def _flat_field(raw, dark, flat, out, minus_log, floor):  # pragma: no cover - compiled
    frame = dark.size
    flat_raw = raw.ravel()
    flat_out = out.ravel()
    d = dark.ravel()
    f = flat.ravel()
    for i in numba.prange(flat_raw.size):
        p = i % frame
        denominator = f[p] - d[p]
        value = np.float32(1.0)  # no measure of the sample (a dead pixel, a NaN): the NumPy reference
        if denominator > 0:
            ratio = (np.float32(flat_raw[i]) - d[p]) / denominator
            if math.isfinite(ratio):
                value = ratio
        if minus_log:
            value = -np.float32(math.log(max(value, floor)))
        flat_out[i] = value


def flat_field(raw: Any, dark: Any, flat: Any, out: np.ndarray, minus_log: bool = True) -> np.ndarray:
    _flat_field(
        np.ascontiguousarray(raw),
        np.ascontiguousarray(dark, dtype=np.float32),
        np.ascontiguousarray(flat, dtype=np.float32),
        out,
        minus_log,
        np.float32(FLAT_FIELD_FLOOR),
    )
    return out


# ---- peak finding -------------------------------------------------------------------------------------
# Frames of integers up to 16 bits (the detectors' uint16) are summed in integers: exact, so equal to the
# float64 sums of the NumPy reference, and the box sums run eight 32-bit lanes per vector instead of four
# doubles. The helpers below pick the integer or the float64 arithmetic from the frame's dtype when a
# kernel is compiled.


def _narrow_int(dtype: Any) -> bool:
    return isinstance(dtype, numba.types.Integer) and dtype.bitwidth <= 16


def _acc_zeros(values, shape):  # pragma: no cover - compiled only
    """Zeroed ring accumulators for ``values``: int64 for narrow integers, float64 otherwise."""
    raise NotImplementedError


@numba.extending.overload(_acc_zeros)
def _acc_zeros_impl(values, shape):
    if _narrow_int(values.dtype):
        return lambda values, shape: np.zeros(shape, np.int64)
    return lambda values, shape: np.zeros(shape, np.float64)


def _acc_value(acc, x):  # pragma: no cover - compiled only
    """``x`` in the accumulators' type."""
    raise NotImplementedError


@numba.extending.overload(_acc_value)
def _acc_value_impl(acc, x):
    if isinstance(acc.dtype, numba.types.Integer):
        return lambda acc, x: np.int64(x)
    return lambda acc, x: np.float64(x)


def _acc_bound(acc, bound):  # pragma: no cover - compiled only
    """A bound for ``value >= bound`` in the accumulators' type: for integers the least integer at or
    above it (clamped; NaN lists nothing, as a float compare with NaN would)."""
    raise NotImplementedError


@numba.extending.overload(_acc_bound)
def _acc_bound_impl(acc, bound):
    if isinstance(acc.dtype, numba.types.Integer):

        def impl(acc, bound):
            if bound <= -4.0e18:
                return np.int64(-(2**62))
            if bound <= 4.0e18:
                return np.int64(math.ceil(bound))
            return np.int64(2**62)  # above every 16-bit value, and NaN: nothing listed

        return impl
    return lambda acc, bound: np.float64(bound)


def _row_boxes(values, up, base, down, w, icolumn, ibox, column, box):  # pragma: no cover - compiled only
    """The 3x3 box sums of one row (columns 1..w-2) from the rows starting at ``up``, ``base`` and ``down``:
    column sums of the three rows first, then three neighbouring columns (the reference's order), into
    ``ibox`` (narrow integers, exact) or ``box`` (float64)."""
    raise NotImplementedError


@numba.extending.overload(_row_boxes)
def _row_boxes_impl(values, up, base, down, w, icolumn, ibox, column, box):
    if _narrow_int(values.dtype):

        def impl(values, up, base, down, w, icolumn, ibox, column, box):
            for j in range(w):
                icolumn[j] = (
                    np.int32(values[up + j]) + np.int32(values[base + j]) + np.int32(values[down + j])
                )
            for j in range(U64(1), w - U64(1)):
                ibox[j] = icolumn[j - U64(1)] + icolumn[j] + icolumn[j + U64(1)]

        return impl

    def impl(values, up, base, down, w, icolumn, ibox, column, box):
        for j in range(w):
            column[j] = (
                np.float64(values[up + j]) + np.float64(values[base + j]) + np.float64(values[down + j])
            )
        for j in range(U64(1), w - U64(1)):
            box[j] = column[j - U64(1)] + column[j] + column[j + U64(1)]

    return impl


def _boxes_above(values, ibox, box, lo, hi, floor):  # pragma: no cover - compiled only
    """How many of the box sums ``lo..hi-1`` of the row ``_row_boxes`` summed are not ``<= floor``
    (above it, or NaN or -inf), in a loop without branches."""
    raise NotImplementedError


@numba.extending.overload(_boxes_above)
def _boxes_above_impl(values, ibox, box, lo, hi, floor):
    if _narrow_int(values.dtype):

        def impl(values, ibox, box, lo, hi, floor):
            # total <= floor  <=>  total <= floor(floor) for an integer total; the box sums of 16-bit
            # values lie well inside int32, so the bound is clamped to it (NaN: every box is above)
            if floor >= 2147483647.0:
                limit = np.int32(2147483647)
            elif floor >= -2147483648.0:
                limit = np.int32(math.floor(floor))
            else:
                limit = np.int32(-2147483648)
            above = np.int32(0)
            for j in range(lo, hi):
                above += np.int32(ibox[j] > limit)
            return above

        return impl

    def impl(values, ibox, box, lo, hi, floor):
        above = 0
        for j in range(lo, hi):
            total = box[j]
            above += not (total <= floor and total > -np.inf)
        return above

    return impl


def _box_at(values, ibox, box, j):  # pragma: no cover - compiled only
    """Box sum ``j`` of the row ``_row_boxes`` summed, as float64."""
    raise NotImplementedError


@numba.extending.overload(_box_at)
def _box_at_impl(values, ibox, box, j):
    if _narrow_int(values.dtype):
        return lambda values, ibox, box, j: np.float64(ibox[j])
    return lambda values, ibox, box, j: box[j]


@numba.njit(inline="always", nogil=True)
def _ring_add(acc, k, v, bound):  # pragma: no cover - compiled
    keep = v < bound  # no branch: a pixel at or above the bound (or NaN) adds zeros
    v = v if keep else 0.0
    acc[k] += 1.0 if keep else 0.0
    acc[k + U64(1)] += v
    acc[k + U64(2)] += v * v


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _ring_sums(values, rings, upper, nchunks):  # pragma: no cover - compiled
    # Per ring (count, sum, sum of squares) side by side, over the pixels below upper[ring]; four
    # far-apart streams per task, as in ``_ring_moments``.
    n = values.size
    width = upper.size
    three = U64(3)
    partial = np.zeros((nchunks, 3 * width), np.float64)
    step = (n + nchunks - 1) // nchunks
    for c in numba.prange(nchunks):
        acc = partial[c]
        start = min(n, c * step)
        stop = min(n, c * step + step)
        m = (stop - start) // 4
        s0, s1, s2, s3 = U64(start), U64(start + m), U64(start + 2 * m), U64(start + 3 * m)
        for i in range(U64(m)):
            r0, r1 = U64(rings[s0 + i]), U64(rings[s1 + i])
            r2, r3 = U64(rings[s2 + i]), U64(rings[s3 + i])
            _ring_add(acc, three * r0, np.float64(values[s0 + i]), upper[r0])
            _ring_add(acc, three * r1, np.float64(values[s1 + i]), upper[r1])
            _ring_add(acc, three * r2, np.float64(values[s2 + i]), upper[r2])
            _ring_add(acc, three * r3, np.float64(values[s3 + i]), upper[r3])
        for i in range(U64(start + 4 * m), U64(stop)):
            r0 = U64(rings[i])
            _ring_add(acc, three * r0, np.float64(values[i]), upper[r0])
    total = np.zeros(width, np.int64)
    s1 = np.zeros(width)
    s2 = np.zeros(width)
    for c in range(nchunks):
        for b in range(width):
            total[b] += np.int64(partial[c, 3 * b])
            s1[b] += partial[c, 3 * b + 1]
            s2[b] += partial[c, 3 * b + 2]
    return total, s1, s2


def ring_sums(frame: Any, rings: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _ring_sums(frozen(frame).ravel(), rings.ravel(), upper, _chunks())


@numba.njit(inline="always", nogil=True)
def _moment_add(acc, r, x, found, k, capacity, p):  # pragma: no cover - compiled
    v = _acc_value(acc, x)
    j = U64(3) * r
    acc[j] += v
    acc[j + U64(1)] += v * v
    if v >= acc[j + U64(2)]:
        if k < capacity:
            found[k] = np.int64(p)
        k += 1
    return k


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _ring_moments(values, rings, guess, nchunks, capacity):  # pragma: no cover - compiled
    # The first pass of the ring background: per ring, the sum and sum of squares of all its pixels
    # (a NaN or inf makes its ring's sums non-finite: the caller redoes those rings), and a listing of
    # the pixels with value >= guess[ring] (index, value, ring). Per ring (sum, sum of squares, guess)
    # sit side by side in the task's own row, so one pixel touches one cache line. Each task walks four
    # far-apart streams of its pixels in step, so consecutive updates hit different rings and do not
    # wait on each other's read-modify-write; unsigned indices (no wraparound check). Lists are kept
    # per stream, in order; longer than ``capacity`` they are dropped (the caller scans instead).
    n = values.size
    width = guess.size
    partial = _acc_zeros(values, (nchunks, 3 * width))  # int64 for narrow integers: exact, and faster
    found = np.empty((nchunks, 4, capacity), np.int64)
    found_v = np.empty((nchunks, 4, capacity), np.float64)
    found_r = np.empty((nchunks, 4, capacity), np.int64)
    counts = np.zeros((nchunks, 4), np.int64)
    step = (n + nchunks - 1) // nchunks
    for c in numba.prange(nchunks):
        acc = partial[c]
        for b in range(width):
            acc[3 * b + 2] = _acc_bound(acc, guess[b])
        start = min(n, c * step)
        stop = min(n, c * step + step)
        m = (stop - start) // 4
        k0 = k1 = k2 = k3 = 0
        f0, f1, f2, f3 = found[c, 0], found[c, 1], found[c, 2], found[c, 3]
        s0, s1, s2, s3 = U64(start), U64(start + m), U64(start + 2 * m), U64(start + 3 * m)
        for i in range(U64(m)):
            k0 = _moment_add(acc, U64(rings[s0 + i]), values[s0 + i], f0, k0, capacity, s0 + i)
            k1 = _moment_add(acc, U64(rings[s1 + i]), values[s1 + i], f1, k1, capacity, s1 + i)
            k2 = _moment_add(acc, U64(rings[s2 + i]), values[s2 + i], f2, k2, capacity, s2 + i)
            k3 = _moment_add(acc, U64(rings[s3 + i]), values[s3 + i], f3, k3, capacity, s3 + i)
        for p in range(U64(start + 4 * m), U64(stop)):
            k3 = _moment_add(acc, U64(rings[p]), values[p], f3, k3, capacity, p)
        counts[c, 0], counts[c, 1], counts[c, 2], counts[c, 3] = k0, k1, k2, k3
        for q in range(4):  # the listed pixels' values and rings, gathered by the task that found them
            for k in range(min(counts[c, q], capacity)):
                p = found[c, q, k]
                found_v[c, q, k] = values[p]
                found_r[c, q, k] = rings[p]
    total = np.zeros(width)
    total2 = np.zeros(width)
    for c in range(nchunks):
        for b in range(width):
            total[b] += np.float64(partial[c, 3 * b])
            total2[b] += np.float64(partial[c, 3 * b + 1])
    if counts.max() > capacity:
        return total, total2, (np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)), False
    size = counts.sum()
    listed, listed_v, listed_r = np.empty(size, np.int64), np.empty(size), np.empty(size, np.int64)
    k = 0
    for c in range(nchunks):  # streams in pixel order: the list comes out sorted
        for q in range(4):
            # element by element: an array assigned to a slice makes numba compile its shape-mismatch
            # error function, seconds of compile time in every fresh process, for no speed
            for x in range(counts[c, q]):
                listed[k + x] = found[c, q, x]
                listed_v[k + x] = found_v[c, q, x]
                listed_r[k + x] = found_r[c, q, x]
            k += counts[c, q]
    return total, total2, (listed, listed_v, listed_r), True


Listing = tuple[np.ndarray, np.ndarray, np.ndarray]  # sorted pixel indices, their values (f8), rings (i8)


def ring_moments_listing(
    values: np.ndarray, rings: np.ndarray, guess: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Listing | None]:
    """The peak finder's first pass over flat ``values``: per ring the sum and sum of squares of every
    pixel (non-finite in a ring holding a NaN or inf), and the listing of the pixels with
    value >= guess[ring] (None when there are too many to be worth listing)."""
    capacity = max(4096, values.size // 64)
    total, total2, listing, ok = _ring_moments(frozen(values), rings, guess, _chunks(), capacity)
    return total, total2, (listing if ok else None)


def listing_of(values: np.ndarray, rings: np.ndarray, bound: np.ndarray) -> Listing:
    """The listing of every pixel with value >= bound[ring], by a full scan."""
    index = _scan(values, rings, bound, True)
    return index, values[index].astype(np.float64), rings[index].astype(np.int64)


@numba.njit(nogil=True, cache=True)
def ring_moments_exact(values, ring_pixels, ring_start, which):  # pragma: no cover - compiled
    """Count, sum and sum of squares of the pixels below +inf of each ring in ``which`` (rings whose
    fast sums are not finite); ``ring_pixels[ring_start[r]:ring_start[r + 1]]`` are ring r's pixels."""
    count = np.zeros(which.size, np.int64)
    total = np.zeros(which.size)
    total2 = np.zeros(which.size)
    for k in range(which.size):
        r = which[k]
        for j in range(ring_start[r], ring_start[r + 1]):
            v = np.float64(values[ring_pixels[j]])
            if v < np.inf:
                count[k] += 1
                total[k] += v
                total2[k] += v * v
    return count, total, total2


@numba.njit(nogil=True, cache=True)
def _listed_moments(listed_v, listed_r, bound):  # pragma: no cover - compiled
    width = bound.size
    count = np.zeros(width, np.int64)
    total = np.zeros(width)
    total2 = np.zeros(width)
    for k in range(listed_v.size):
        r = listed_r[k]
        v = listed_v[k]
        if v >= bound[r] and v < np.inf:
            count[r] += 1
            total[r] += v
            total2[r] += v * v
    return count, total, total2


def listed_moments(listing: Listing, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ring: count, sum and sum of squares of the listed pixels with bound[ring] <= value < inf."""
    return _listed_moments(listing[1], listing[2], bound)


@numba.njit(nogil=True, cache=True)
def _extend_listing(
    values, listed, listed_v, listed_r, listed_bound, bound, ring_pixels, ring_start, limit
):  # pragma: no cover - compiled
    width = bound.size
    todo = 0
    for r in range(width):
        if bound[r] < listed_bound[r]:
            todo += ring_start[r + 1] - ring_start[r]
    if todo > limit:
        return listed, listed_v, listed_r, False
    extra = np.empty(todo, np.int64)
    extra_r = np.empty(todo, np.int64)
    k = 0
    for r in range(width):
        lo, hi = bound[r], listed_bound[r]
        if lo < hi:
            for j in range(ring_start[r], ring_start[r + 1]):
                p = ring_pixels[j]
                v = values[p]
                if v >= lo and v < hi:
                    extra[k] = p
                    extra_r[k] = r
                    k += 1
    if k == 0:
        return listed, listed_v, listed_r, True
    order = np.argsort(extra[:k])
    size = listed.size + k
    merged, merged_v, merged_r = np.empty(size, np.int64), np.empty(size), np.empty(size, np.int64)
    i = j = 0
    for o in range(size):
        if j == k or (i < listed.size and listed[i] < extra[order[j]]):
            merged[o], merged_v[o], merged_r[o] = listed[i], listed_v[i], listed_r[i]
            i += 1
        else:
            p = extra[order[j]]
            merged[o], merged_v[o], merged_r[o] = p, np.float64(values[p]), extra_r[order[j]]
            j += 1
    return merged, merged_v, merged_r, True


def extend_listing(
    values: np.ndarray,
    listing: Listing,
    listed_bound: np.ndarray,
    bound: np.ndarray,
    ring_pixels: np.ndarray,
    ring_start: np.ndarray,
) -> Listing | None:
    """``listing`` (every pixel with value >= listed_bound[ring]) extended to every pixel with
    value >= min(listed_bound, bound)[ring], by looking only at the rings whose bound is lower; None
    when those rings hold more than an eighth of the frame (a full scan is cheaper then)."""
    *merged, ok = _extend_listing(
        frozen(values), *listing, listed_bound, bound, ring_pixels, ring_start, values.size // 8
    )
    return (merged[0], merged[1], merged[2]) if ok else None


@numba.njit(nogil=True, cache=True)
def _ring_stats(count, total, total2, n_rings, clip_snr, mean, sigma, upper):  # pragma: no cover - compiled
    # PeakFinder._stats, ring by ring, with the same float operations (so the same bits)
    for r in range(n_rings):
        safe = max(count[r], 1)
        m = total[r] / safe
        var = total2[r] / safe - m * m
        if var < 0.0:
            var = 0.0
        mean[r] = m
        sigma[r] = np.sqrt(var)
        upper[r] = m + clip_snr * sigma[r] if count[r] > 0 else np.inf
    upper[n_rings] = -np.inf  # the masked sentinel never counts


@numba.njit(nogil=True, cache=True)
def _clipped_background(
    values,
    rings,
    total,
    total2,
    listed,
    listed_v,
    listed_r,
    has_listing,
    guess,
    ring_pixels,
    ring_start,
    ring_count,
    n_rings,
    clip_snr,
    iterations,
):  # pragma: no cover - compiled
    count = ring_count.copy()
    for r in range(n_rings):  # a NaN or inf in a ring: redo it, counting only the pixels below +inf
        if not np.isfinite(total[r] + total2[r]):
            one = np.array([r], np.int64)
            c, t, t2 = ring_moments_exact(values, ring_pixels, ring_start, one)
            count[r], total[r], total2[r] = c[0], t[0], t2[0]
    mean = np.empty(n_rings)
    sigma = np.empty(n_rings)
    upper = np.empty(n_rings + 1)
    _ring_stats(count, total, total2, n_rings, clip_snr, mean, sigma, upper)
    listed_bound = guess.copy()
    lowest = np.full(n_rings, np.inf)  # the lowest bound any pass of this frame used
    bound = np.empty(n_rings + 1)
    for _ in range(1, iterations):
        for r in range(n_rings):  # element by element: see _ring_moments on slice assignments
            bound[r] = upper[r]
        bound[n_rings] = np.inf  # masked pixels were never summed
        for r in range(n_rings):
            lowest[r] = min(lowest[r], bound[r])
        extended = False
        if has_listing:
            listed, listed_v, listed_r, extended = _extend_listing(
                values,
                listed,
                listed_v,
                listed_r,
                listed_bound,
                bound,
                ring_pixels,
                ring_start,
                values.size // 8,
            )
        if extended:
            for r in range(n_rings + 1):
                listed_bound[r] = min(listed_bound[r], bound[r])
        else:  # no listing, or too much to extend: every pixel at or above the bound, by a full scan
            k = 0
            for p in range(values.size):
                k += values[p] >= bound[rings[p]]
            listed = np.empty(k, np.int64)
            listed_v = np.empty(k)
            listed_r = np.empty(k, np.int64)
            k = 0
            for p in range(values.size):
                if values[p] >= bound[rings[p]]:
                    listed[k], listed_v[k], listed_r[k] = p, values[p], rings[p]
                    k += 1
            for r in range(n_rings + 1):
                listed_bound[r] = bound[r]
            has_listing = True
        dropped, dropped1, dropped2 = _listed_moments(listed_v, listed_r, bound)
        _ring_stats(
            count - dropped, total - dropped1, total2 - dropped2, n_rings, clip_snr, mean, sigma, upper
        )
    # next frame: list in the summing pass what this frame's clipping and thresholds would pick, with half
    # a sigma to spare (a guess only: a bound below it makes the next frame search again). A ring's first
    # clipping bound comes from unclipped sums, high where a spot sat in this frame only: the clipped
    # statistics' bound stands in for a ring without spots.
    next_guess = np.full(n_rings + 1, np.inf)
    for r in range(n_rings):
        low = min(lowest[r], mean[r] + clip_snr * sigma[r])
        if np.isfinite(low):
            next_guess[r] = low - 0.5 * sigma[r]
    return mean, sigma, next_guess, listed, listed_v, listed_r, listed_bound, has_listing


def clipped_background(
    values: np.ndarray,
    rings: np.ndarray,
    total: np.ndarray,
    total2: np.ndarray,
    listing: Listing | None,
    guess: np.ndarray,
    index: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_rings: int,
    clip_snr: float,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Listing | None, np.ndarray | None]:
    """``PeakFinder._background`` after ``ring_moments_listing``, in one compiled call: the rings with a
    NaN or inf summed again exactly, the clipped passes (the listing extended or rescanned where a bound
    falls below it), and the next frame's guess. Returns (mean, sigma, next guess, listing, its bound)."""
    ring_pixels, ring_start, ring_count = index
    has_listing = listing is not None
    if listing is None:
        listing = (np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))
    mean, sigma, next_guess, listed, listed_v, listed_r, bound, has_listing = _clipped_background(
        frozen(values),
        rings,
        total,
        total2,
        *listing,
        has_listing,
        guess,
        ring_pixels,
        ring_start,
        ring_count,
        int(n_rings),
        float(clip_snr),
        int(iterations),
    )
    if not has_listing:
        return mean, sigma, next_guess, None, None
    return mean, sigma, next_guess, (listed, listed_v, listed_r), bound


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _find_candidates(values, rings, threshold, nchunks, capacity, inclusive):  # pragma: no cover - compiled
    n = values.size
    step = (n + nchunks - 1) // nchunks
    found = np.empty((nchunks, capacity), np.int64)
    counts = np.zeros(nchunks, np.int64)
    for c in numba.prange(nchunks):
        k = 0
        row = found[c]
        for i in range(U64(min(n, c * step)), U64(min(n, c * step + step))):
            v = values[i]
            bound = threshold[U64(rings[i])]
            if v > bound or (inclusive and v == bound):
                if k < capacity:
                    row[U64(k)] = np.int64(i)
                k += 1
        counts[c] = k
    total = 0
    for c in range(nchunks):
        total += counts[c]
    if counts.max() > capacity:
        return np.empty(0, np.int64), total
    out = np.empty(total, np.int64)
    k = 0
    for c in range(nchunks):
        for x in range(counts[c]):  # element by element: see _ring_moments on slice assignments
            out[k + x] = found[c, x]
        k += counts[c]
    return out, total


def _scan(frame: Any, rings: np.ndarray, bound: np.ndarray, inclusive: bool) -> np.ndarray:
    values = frozen(frame).ravel()
    flat_rings = rings.ravel()
    nchunks = 4 * _chunks()
    capacity = 4096
    while True:
        out, total = _find_candidates(values, flat_rings, bound, nchunks, capacity, inclusive)
        if out.size == total:
            return out
        capacity = int(total)  # a frame full of candidates: retry with room for all of them


@numba.njit(inline="always", nogil=True)
def _live_value(values, rings, sentinel, height, width, i, j):  # pragma: no cover - compiled
    # (value, 1) for a live pixel (inside the frame, not masked, finite), (0, 0) otherwise
    if i < 0 or i >= height or j < 0 or j >= width:
        return 0.0, 0.0
    p = U64(i) * U64(width) + U64(j)
    v = np.float64(values[p])
    if U64(rings[p]) == sentinel or v - v != 0.0:
        return 0.0, 0.0
    return v, 1.0


@numba.njit(inline="always", nogil=True)
def _box_decision(total, count, r, full, mean, sigma, min_snr, adc_threshold):  # pragma: no cover - compiled
    # a box of ``count`` live pixels summing to ``total`` in ring ``r``: a candidate? (a full box against
    # its ring's precomputed bound, a partial one against the same test with its own pixel count)
    if count == 9.0:
        return total > full[r]
    sd = sigma[r]
    return (
        sd > 0 and total - count * mean[r] > min_snr * sd * np.sqrt(count) and total > count * adc_threshold
    )


@numba.njit(nogil=True)
def _box_test(
    values, rings, sentinel, height, width, p, full, mean, sigma, min_snr, adc_threshold
):  # pragma: no cover - compiled
    # The candidate test of one pixel with its box summed from live pixels only, in the reference's order.
    i = np.int64(p // U64(width))
    j = np.int64(p % U64(width))
    _centre, live = _live_value(values, rings, sentinel, height, width, i, j)
    if live == 0.0:
        return False
    total = 0.0
    count = 0.0
    for dj in range(-1, 2):
        a, na = _live_value(values, rings, sentinel, height, width, i - 1, j + dj)
        b, nb = _live_value(values, rings, sentinel, height, width, i, j + dj)
        c, nc = _live_value(values, rings, sentinel, height, width, i + 1, j + dj)
        total = (a + b + c) if dj == -1 else total + (a + b + c)
        count = (na + nb + nc) if dj == -1 else count + (na + nb + nc)
    return _box_decision(total, count, U64(rings[p]), full, mean, sigma, min_snr, adc_threshold)


@numba.njit(inline="always", nogil=True)
def _listed_value(values, p):  # pragma: no cover - compiled
    # (value, 1) for a listed box pixel that is finite, (0, 0) for -1 (outside the frame or masked) or
    # a NaN or inf: ``_live_value`` for a pixel whose place and mask were looked up once per finder
    if p < 0:
        return 0.0, 0.0
    v = np.float64(values[U64(p)])
    if v - v != 0.0:
        return 0.0, 0.0
    return v, 1.0


@numba.njit(inline="always", nogil=True)
def _edge_test(values, box, full, mean, sigma, min_snr, adc_threshold, ring):  # pragma: no cover - compiled
    # ``_box_test`` of an edge pixel from its listed box (centre, then the three columns' pixels top to
    # bottom): the same sums in the same order, so the same decision
    _centre, live = _listed_value(values, box[0])
    if live == 0.0:
        return False
    total = 0.0
    count = 0.0
    for dj in range(3):
        a, na = _listed_value(values, box[1 + 3 * dj])
        b, nb = _listed_value(values, box[2 + 3 * dj])
        c, nc = _listed_value(values, box[3 + 3 * dj])
        total = (a + b + c) if dj == 0 else total + (a + b + c)
        count = (na + nb + nc) if dj == 0 else count + (na + nb + nc)
    return _box_decision(total, count, U64(ring), full, mean, sigma, min_snr, adc_threshold)


@numba.njit(nogil=True)
def _range_min_table(values):  # pragma: no cover - compiled
    # table[l, r]: min of values[r : r + 2**l] (a sparse table: any range's minimum from two entries)
    n = values.size
    levels = 1
    while (1 << levels) <= n:
        levels += 1
    table = np.empty((levels, n))
    for r in range(n):  # not ``table[0] = values``: see _ring_moments on slice assignments
        table[0, r] = values[r]
    for lv in range(1, levels):
        half = 1 << (lv - 1)
        for r in range(n):
            table[lv, r] = (
                min(table[lv - 1, r], table[lv - 1, r + half]) if r + half < n else table[lv - 1, r]
            )
    return table


@numba.njit(inline="always", nogil=True)
def _range_min(table, lo, hi):  # pragma: no cover - compiled
    lv = 0
    while (2 << lv) <= hi - lo + 1:
        lv += 1
    return min(table[lv, lo], table[lv, hi - (1 << lv) + 1])


BOX_BLOCK = 64  # columns per block of a row whose boxes ``_box_candidates`` first test together


@numba.njit(nogil=True, cache=True)
def _box_band(
    values, rings, box_rings, edge, edge_boxes, bounds, shape, stats, lo, hi, out, out_edge
):  # pragma: no cover - compiled
    # ``_box_candidates``' work for the rows lo..hi-1: their full boxes, then their edge pixels; returns
    # how many of each it found (the first ``capacity`` of them in ``out`` and ``out_edge``)
    block_lo, block_hi, table, full = bounds
    height, width = shape
    mean, sigma, min_snr, adc_threshold = stats
    sentinel = U64(mean.size)
    capacity = out.size
    w = U64(width)
    column = np.empty(width)
    box = np.empty(width)
    icolumn = np.empty(width, np.int32)
    ibox = np.empty(width, np.int32)
    k = 0
    for i in range(max(lo, 1), min(hi, height - 1)):
        summed = False
        base = U64(i) * w
        for b in range(block_lo.shape[1]):
            lo_ring, hi_ring = block_lo[i, b], block_hi[i, b]
            if lo_ring > hi_ring:
                continue  # no pixel of this block has a full box
            if not summed:
                _row_boxes(values, base - w, base, base + w, w, icolumn, ibox, column, box)
                summed = True
            floor = _range_min(table, lo_ring, hi_ring)
            j0 = U64(max(1, b * BOX_BLOCK))
            j1 = U64(min(width - 1, b * BOX_BLOCK + BOX_BLOCK))
            if _boxes_above(values, ibox, box, j0, j1, floor) == 0:
                continue
            for j in range(j0, j1):
                total = _box_at(values, ibox, box, j)
                if total <= floor and total > -np.inf:
                    continue
                r = U64(box_rings[base + j])
                if (total <= full[r] and total > -np.inf) or r == sentinel:  # NaN and -inf go on
                    continue
                p = base + j
                if total - total == 0.0 or _box_test(
                    values, rings, sentinel, height, width, p, full, mean, sigma, min_snr, adc_threshold
                ):
                    if k < capacity:
                        out[k] = np.int64(p)
                    k += 1
    k_edge = 0
    e = np.searchsorted(edge, np.int64(lo) * np.int64(width))
    stop = np.searchsorted(edge, np.int64(hi) * np.int64(width))
    for q in range(e, stop):
        if _edge_test(values, edge_boxes[q], full, mean, sigma, min_snr, adc_threshold, rings[edge[q]]):
            if k_edge < capacity:
                out_edge[k_edge] = edge[q]
            k_edge += 1
    return k, k_edge


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _box_candidates(
    values,
    rings,
    box_rings,
    edge,
    edge_boxes,
    block_lo,
    block_hi,
    height,
    width,
    mean,
    sigma,
    min_snr,
    adc_threshold,
    nchunks,
    capacity,
):  # pragma: no cover - compiled
    # Each task takes a band of rows. Inside the frame, a pixel whose box is 9 unmasked pixels
    # (``box_rings`` = its ring; the sentinel otherwise) is compared with its ring's bound for a full box:
    # per row, the column sums of three raw rows, then the sum of three neighbouring columns, in the
    # order the NumPy reference sums them, with no per-pixel masking or lookup but the ring's bound. A
    # sum that is not finite (a NaN or inf nearby) is redone from live pixels only; so are the pixels of
    # ``edge`` (sorted: unmasked pixels on the frame's border or next to a masked pixel), each with its
    # box's unmasked pixels listed once per finder (``edge_boxes``, -1 for a pixel outside the frame or
    # masked; as ``_box_test`` takes them, without its per-pixel bounds and mask tests). Each task
    # merges its two sorted lists. A row is first summed; then each block of `BOX_BLOCK` of its columns
    # is compared with the lowest bound of the rings its full boxes cross (``block_lo..block_hi``, a
    # range minimum from a sparse table) in a loop without branches; only a block with a sum above that,
    # or a NaN or -inf, is compared pixel by pixel with its rings. (A whole row crosses rings of very
    # different backgrounds: its lowest bound let most rows through to the pixel-by-pixel loop.)
    n_rings = mean.size
    full = np.empty(n_rings + 1)
    for r in range(n_rings):
        full[r] = max(9.0 * mean[r] + 3.0 * min_snr * sigma[r], 9.0 * adc_threshold)
        if not sigma[r] > 0:
            full[r] = np.inf
    full[n_rings] = np.inf
    table = _range_min_table(full)
    step = (height + nchunks - 1) // nchunks
    found = np.empty((nchunks, capacity), np.int64)
    found_edge = np.empty((nchunks, capacity), np.int64)
    counts = np.zeros(nchunks, np.int64)
    counts_edge = np.zeros(nchunks, np.int64)
    for c in numba.prange(nchunks):  # the band's work in a function of its own: see _bin_sums
        counts[c], counts_edge[c] = _box_band(
            values,
            rings,
            box_rings,
            edge,
            edge_boxes,
            (block_lo, block_hi, table, full),
            (height, width),
            (mean, sigma, min_snr, adc_threshold),
            min(height, c * step),
            min(height, c * step + step),
            found[c],
            found_edge[c],
        )
    total_found = counts.sum() + counts_edge.sum()
    if max(counts.max(), counts_edge.max()) > capacity:
        return np.empty(0, np.int64), total_found
    result = np.empty(total_found, np.int64)
    k = 0
    for c in range(nchunks):  # bands in order, each band's two sorted lists merged
        a, b = found[c], found_edge[c]
        na, nb = counts[c], counts_edge[c]
        x = y = 0
        while x < na or y < nb:
            if y == nb or (x < na and a[x] < b[y]):
                result[k] = a[x]
                x += 1
            else:
                result[k] = b[y]
                y += 1
            k += 1
    return result, total_found


def box_plan(rings: np.ndarray, n_rings: int) -> tuple[np.ndarray, ...]:
    """For ``find_candidates``, once per finder: each pixel's ring where its 3x3 box is 9 unmasked pixels
    (``n_rings`` elsewhere), the sorted indices of the unmasked pixels whose box is not with each one's
    box listed (10 flat indices: the pixel, then its 3x3 box column by column; -1 outside the frame or
    masked), and per block of `BOX_BLOCK` columns of each row the lowest and highest ring of those full
    boxes (lowest > highest: none)."""
    unmasked = rings < n_rings
    padded = np.pad(unmasked, 1)
    whole = np.ones(rings.shape, dtype=bool)
    for di in range(3):
        for dj in range(3):
            whole &= padded[di : di + rings.shape[0], dj : dj + rings.shape[1]]
    box_rings = np.where(whole, rings, n_rings).astype(rings.dtype)
    edge = np.flatnonzero(unmasked & ~whole).astype(np.int64)
    # each edge pixel's box: itself, then columns j-1, j, j+1 top to bottom (``_box_test``'s order), as
    # flat indices; -1 where that pixel is outside the frame or masked
    height, width = rings.shape
    i, j = np.divmod(edge, width)
    edge_boxes = np.full((edge.size, 10), -1, np.int64)
    edge_boxes[:, 0] = edge
    for dj in range(3):
        for di in range(3):
            ii, jj = i + di - 1, j + dj - 1
            live = (ii >= 0) & (ii < height) & (jj >= 0) & (jj < width)
            live[live] = unmasked[ii[live], jj[live]]
            edge_boxes[live, 1 + 3 * dj + di] = ii[live] * width + jj[live]
    # per block of each row, the lowest and highest ring of its full boxes (lo > hi: none)
    blocks = -(-width // BOX_BLOCK)
    spare = ((0, 0), (0, blocks * BOX_BLOCK - width))
    lowest = np.pad(np.where(whole, rings.astype(np.int64), n_rings), spare, constant_values=n_rings)
    highest = np.pad(np.where(whole, rings.astype(np.int64), -1), spare, constant_values=-1)
    block_lo = lowest.reshape(height, blocks, BOX_BLOCK).min(axis=2)
    block_hi = highest.reshape(height, blocks, BOX_BLOCK).max(axis=2)
    return np.ascontiguousarray(box_rings), edge, edge_boxes, block_lo, block_hi


def find_candidates(
    frame: Any,
    rings: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    min_snr: float,
    adc_threshold: float,
    plan: tuple[np.ndarray, ...] | None = None,
) -> np.ndarray:
    """Peak candidates by their 3x3 box sums, as the NumPy reference's ``find_candidates``; ``plan`` is
    ``box_plan(rings, mean.size)`` (made here when not given)."""
    frame = frozen(frame)
    height, width = frame.shape
    box_rings, edge, edge_boxes, block_lo, block_hi = box_plan(rings, mean.size) if plan is None else plan
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    sigma = np.ascontiguousarray(sigma, dtype=np.float64)
    return _all_candidates(  # type: ignore[no-any-return]
        frame.ravel(),
        rings.ravel(),
        box_rings.ravel(),
        (edge, edge_boxes, block_lo, block_hi),
        height,
        width,
        mean,
        sigma,
        float(min_snr),
        float(adc_threshold),
        4 * _chunks(),
    )


@numba.njit(nogil=True, cache=True)
def _all_candidates(
    values, rings, box_rings, plan, height, width, mean, sigma, min_snr, adc_threshold, nchunks
):  # pragma: no cover - compiled
    edge, edge_boxes, block_lo, block_hi = plan
    capacity = 4096
    while True:
        out, total = _box_candidates(
            values,
            rings,
            box_rings,
            edge,
            edge_boxes,
            block_lo,
            block_hi,
            height,
            width,
            mean,
            sigma,
            min_snr,
            adc_threshold,
            nchunks,
            capacity,
        )
        if out.size == total:
            return out
        capacity = total  # a frame full of candidates: again with room for all of them


@numba.njit(nogil=True, cache=True)
def _root(parent, k):  # pragma: no cover - compiled
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return k


@numba.njit(nogil=True, cache=True)
def _label_listed(values, rings, candidates, mean, width):  # pragma: no cover - compiled
    # ``values[k]`` and ``rings[k]`` are candidate k's (pixel ``candidates[k]``): the frame itself is not
    # needed, so a backend that finds the candidates elsewhere (the GPU) sends back only these
    m = candidates.size
    parent = np.arange(m)
    above = 0  # the first candidate at or after the pixel up and left of the current one
    for k in range(m):
        p = candidates[k]
        c = p % width
        # earlier neighbours: left, and the three above (found by walking ``above`` forward, as the
        # candidates are sorted); union towards the smaller (earlier) root, so a component's root is its
        # first pixel whatever the order of the unions
        while above < k and candidates[above] < p - width - 1:
            above += 1
        j = above
        while j < k and candidates[j] <= p - width + 1:
            dc = candidates[j] % width - c
            if -1 <= dc <= 1:
                a = _root(parent, j)
                b = _root(parent, k)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
            j += 1
        if k > 0 and candidates[k - 1] == p - 1 and c > 0:
            a = _root(parent, k - 1)
            b = _root(parent, k)
            if a < b:
                parent[b] = a
            elif b < a:
                parent[a] = b
    label = np.empty(m, np.int64)
    n_peaks = 0
    for k in range(m):
        r = _root(parent, k)
        if r == k:
            label[k] = n_peaks
            n_peaks += 1
        else:
            label[k] = label[r]
    first = np.zeros(n_peaks, np.int64)
    n_pixels = np.zeros(n_peaks, np.int64)
    total = np.zeros(n_peaks)
    weight = np.zeros(n_peaks)
    row_sum = np.zeros(n_peaks)
    col_sum = np.zeros(n_peaks)
    peak = np.full(n_peaks, -np.inf)
    ring_of_first = np.zeros(n_peaks, np.intp)
    for k in range(m):
        p = candidates[k]
        b = label[k]
        v = np.float64(values[k])
        w = v - mean[rings[k]]
        if n_pixels[b] == 0:
            first[b] = p
            ring_of_first[b] = rings[k]
        n_pixels[b] += 1
        total[b] += w
        if w > 0:  # the centroid's weights: the positive terms (see the NumPy reference's label_peaks)
            weight[b] += w
            row_sum[b] += w * (p // width)
            col_sum[b] += w * (p % width)
        peak[b] = max(peak[b], v)
    return first, n_pixels, total, weight, row_sum, col_sum, peak, ring_of_first


@numba.njit(nogil=True, cache=True)
def _measure_listed(
    values, rings, candidates, mean, sigma, width, min_pixels, max_pixels
):  # pragma: no cover
    _first, n_pixels, total, weight, row_sum, col_sum, peak, ring_of_first = _label_listed(
        values, rings, candidates, mean, width
    )
    m = 0
    for b in range(n_pixels.size):
        m += min_pixels <= n_pixels[b] <= max_pixels and total[b] > 0
    row, col, intensity, snr = np.empty(m), np.empty(m), np.empty(m), np.empty(m)
    count, max_value = np.empty(m, np.int64), np.empty(m)
    k = 0
    for b in range(n_pixels.size):  # PeakFinder.find's NumPy expressions, element by element
        n = n_pixels[b]
        if not (min_pixels <= n <= max_pixels and total[b] > 0):
            continue
        t = total[b]
        row[k] = row_sum[b] / weight[b]  # (weight >= t > 0)
        col[k] = col_sum[b] / weight[b]
        noise = sigma[ring_of_first[b]] * np.sqrt(np.float64(n))
        snr[k] = t / noise if noise > 0 else np.inf
        count[k], intensity[k], max_value[k] = n, t, peak[b]
        k += 1
    return row, col, intensity, count, max_value, snr


def measure_peaks(
    frame: Any,
    rings: np.ndarray,
    candidates: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    width: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[np.ndarray, ...]:
    """``label_peaks`` and ``PeakFinder.find``'s measurement of the components of ``min_pixels..max_pixels``
    in one compiled call: (row, col, intensity, n_pixels, max_value, snr), one entry per peak."""
    return measure_listed(
        frozen(frame).ravel()[candidates],
        rings.ravel()[candidates],
        candidates,
        mean,
        sigma,
        width,
        min_pixels,
        max_pixels,
    )


def measure_listed(
    values: np.ndarray,
    rings: np.ndarray,
    candidates: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    width: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[np.ndarray, ...]:
    """``measure_peaks`` from the candidates' values and rings alone (``values[k]`` at ``candidates[k]``)."""
    return _measure_listed(
        np.ascontiguousarray(values),
        np.ascontiguousarray(rings),
        candidates,
        mean,
        np.ascontiguousarray(sigma, dtype=np.float64),
        int(width),
        int(min_pixels),
        int(max_pixels),
    )


@numba.njit(inline="always", nogil=True)
def _window_value(values, rings, n_rings, height, width, i, j):  # pragma: no cover - compiled
    # the pixel at (i, j) as ``PeakFinder._without_lone_pixels`` reads it: NaN outside or masked
    if i < 0 or i >= height or j < 0 or j >= width:
        return np.nan
    p = i * width + j
    if rings[p] >= n_rings:
        return np.nan
    return np.float64(values[p])


@numba.njit(nogil=True, cache=True)
def _lone_peaks(
    values, rings, n_rings, height, width, mean, sigma, clip_snr, share, row, col
):  # pragma: no cover
    lone = np.zeros(row.size, np.bool_)
    for k in range(row.size):
        r = min(max(np.int64(np.rint(row[k])), 0), height - 1)
        c = min(max(np.int64(np.rint(col[k])), 0), width - 1)
        # the brightest live pixel of the 3x3 around (r, c), the first of equals (NaN lowest, inf highest)
        best = -np.inf
        rb, cb = min(max(r - 1, 0), height - 1), min(max(c - 1, 0), width - 1)
        for di in range(-1, 2):
            for dj in range(-1, 2):
                i, j = r + di, c + dj
                if i < 0 or i >= height or j < 0 or j >= width:
                    continue
                if rings[i * width + j] >= n_rings:
                    continue
                v = np.float64(values[i * width + j])
                if v != v:
                    v = -np.inf
                elif v == np.inf:
                    v = 1.7976931348623157e308
                elif v == -np.inf:
                    v = -1.7976931348623157e308
                if v > best:
                    best, rb, cb = v, i, j
        ring = min(np.int64(rings[rb * width + cb]), n_rings - 1)
        mu = mean[ring]
        bound = mu + clip_snr * sigma[ring]
        strong = mu + 2.0 * clip_snr * sigma[ring]  # a neighbour above this is signal, not noise
        centre = _window_value(values, rings, n_rings, height, width, rb, cb)
        if not centre > bound:
            continue
        excess = 0.0
        alone = True
        for di in range(-1, 2):
            for dj in range(-1, 2):
                v = _window_value(values, rings, n_rings, height, width, rb + di, cb + dj)
                if v == v:
                    excess += v - mu
                if (di != 0 or dj != 0) and v > strong:
                    alone = False
        lone[k] = alone and centre - mu >= share * excess
    return lone


def lone_peaks(
    frame: Any,
    rings: np.ndarray,
    n_rings: int,
    mean: np.ndarray,
    sigma: np.ndarray,
    clip_snr: float,
    share: float,
    row: np.ndarray,
    col: np.ndarray,
) -> np.ndarray:
    """Per peak, whether it is one pixel above background: ``PeakFinder._without_lone_pixels``'s rule,
    in one compiled call (True: drop it)."""
    height, width = frame.shape
    return _lone_peaks(
        frozen(frame).ravel(),
        rings.ravel(),
        int(n_rings),
        int(height),
        int(width),
        np.ascontiguousarray(mean, dtype=np.float64),
        np.ascontiguousarray(sigma, dtype=np.float64),
        float(clip_snr),
        float(share),
        np.ascontiguousarray(row, dtype=np.float64),
        np.ascontiguousarray(col, dtype=np.float64),
    )


@numba.njit(nogil=True, cache=True)
def _find_fused(
    values, rings, guess, index, plan, shape, n_rings, settings, lone_share, nchunks, capacity
):  # pragma: no cover - compiled
    # PeakFinder.find's steps on this backend, the compiled calls its driver makes one after the other
    ring_pixels, ring_start, ring_count = index
    box_rings, edge, edge_boxes, block_lo, block_hi = plan
    height, width = shape
    clip_snr, iterations, min_snr, adc_threshold, min_pixels, max_pixels = settings
    total, total2, listing, ok = _ring_moments(values, rings, guess, nchunks, capacity)
    listed, listed_v, listed_r = listing
    mean, sigma, next_guess, _l, _lv, _lr, _bound, _has = _clipped_background(
        values,
        rings,
        total,
        total2,
        listed,
        listed_v,
        listed_r,
        ok,
        guess,
        ring_pixels,
        ring_start,
        ring_count,
        n_rings,
        clip_snr,
        iterations,
    )
    for r in range(n_rings):  # a ring of sigma 0 takes Poisson's noise (PeakFinder.find)
        if not sigma[r] > 0:
            sigma[r] = np.sqrt(np.maximum(mean[r], 0.0))
    candidates = _all_candidates(
        values,
        rings,
        box_rings,
        (edge, edge_boxes, block_lo, block_hi),
        height,
        width,
        mean,
        sigma,
        min_snr,
        adc_threshold,
        4 * nchunks,
    )
    row, col, intensity, count, max_value, snr = _measure_listed(
        values[candidates], rings[candidates], candidates, mean, sigma, width, min_pixels, max_pixels
    )
    if min_pixels >= 2 and row.size > 0:
        lone = _lone_peaks(values, rings, n_rings, height, width, mean, sigma, clip_snr, lone_share, row, col)
        if lone.any():
            keep = ~lone
            row, col, intensity = row[keep], col[keep], intensity[keep]
            count, max_value, snr = count[keep], max_value[keep], snr[keep]
    return next_guess, row, col, intensity, count, max_value, snr


def find_peaks(
    frame: Any,
    rings: np.ndarray,
    guess: np.ndarray,
    index: tuple[np.ndarray, np.ndarray, np.ndarray],
    plan: tuple[np.ndarray, ...],
    n_rings: int,
    clip_snr: float,
    iterations: int,
    min_snr: float,
    adc_threshold: float,
    min_pixels: int,
    max_pixels: int,
    share: float,
) -> tuple[np.ndarray, ...]:
    """``PeakFinder.find`` in one compiled call: ``ring_moments_listing``, ``clipped_background``,
    ``find_candidates``, ``measure_peaks`` and ``lone_peaks`` in turn, with no return to the interpreter
    between them (in the daemon each return takes the GIL back behind its other threads). Returns the next
    frame's listing guess, then (row, col, intensity, n_pixels, max_value, snr), one entry per peak."""
    frame = frozen(frame)
    values = frame.ravel()
    box_rings, edge, edge_boxes, block_lo, block_hi = plan
    settings = (
        float(clip_snr),
        int(iterations),
        float(min_snr),
        float(adc_threshold),
        int(min_pixels),
        int(max_pixels),
    )
    return _find_fused(  # type: ignore[no-any-return]
        values,
        rings.ravel(),
        np.ascontiguousarray(guess, dtype=np.float64),
        index,
        (box_rings.ravel(), edge, edge_boxes, block_lo, block_hi),
        (int(frame.shape[0]), int(frame.shape[1])),
        int(n_rings),
        settings,
        float(share),
        _chunks(),
        max(4096, values.size // 64),
    )


def label_peaks(
    frame: Any, rings: np.ndarray, candidates: np.ndarray, mean: np.ndarray, width: int
) -> tuple[np.ndarray, ...]:
    return _label_listed(
        frozen(frame).ravel()[candidates], rings.ravel()[candidates], candidates, mean, width
    )


# ---- ROI statistics and preview -----------------------------------------------------------------------


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _roi_stats(frame, boxes, offsets, masks):  # pragma: no cover - compiled
    n = boxes.shape[0]
    sums = np.zeros(n)
    counts = np.zeros(n, np.int64)
    peaks = np.full(n, -np.inf)
    for k in numba.prange(n):
        r0, r1, c0, c1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        off = offsets[k]
        w = c1 - c0
        total = 0.0
        count = 0
        peak = -np.inf
        for r in range(r0, r1):
            for c in range(c0, c1):
                if off >= 0 and not masks[off + (r - r0) * w + (c - c0)]:
                    continue
                v = np.float64(frame[r, c])
                total += v
                count += 1
                peak = max(peak, v)
        sums[k] = total
        counts[k] = count
        peaks[k] = peak
    return sums, counts, peaks


def roi_stats(
    frame: Any, boxes: np.ndarray, offsets: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, ...]:
    return _roi_stats(frozen(frame), boxes, offsets, masks)


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _bin_frame(frame, factor):  # pragma: no cover - compiled
    rows = frame.shape[0] // factor
    cols = frame.shape[1] // factor
    out = np.empty((rows, cols), np.float32)
    scale = 1.0 / (factor * factor)
    for i in numba.prange(rows):
        acc = np.zeros(cols)
        for r in range(i * factor, (i + 1) * factor):
            for c in range(cols * factor):
                acc[c // factor] += np.float64(frame[r, c])
        for j in range(cols):
            out[i, j] = np.float32(acc[j] * scale)
    return out


def bin_frame(frame: Any, factor: int) -> np.ndarray:
    return _bin_frame(frozen(frame), int(factor))


@numba.njit(parallel=_prange_only(), nogil=True, cache=True)
def _to_uint8(image, lo, hi, log):  # pragma: no cover - compiled
    out = np.empty(image.shape, np.uint8)
    flat = image.ravel()
    flat_out = out.ravel()
    span = math.log1p(hi - lo) if log else hi - lo
    for i in numba.prange(flat.size):
        v = max(np.float64(flat[i]) - lo, 0.0)
        if log:
            v = math.log1p(v)
        x = v / span if span > 0 else 0.0
        x = min(max(x, 0.0), 1.0) if x == x else 0.0
        flat_out[i] = np.uint8(math.floor(x * 255.0 + 0.5))
    return out


def to_uint8(image: np.ndarray, lo: float, hi: float, log: bool) -> np.ndarray:
    return _to_uint8(frozen(image), float(lo), float(hi), log)
