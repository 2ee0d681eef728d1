"""NumPy reference kernels: the oracle every other backend is tested against.

Each backend module offers the same functions (``correct``, ``histogram``, ``jungfrau_convert``) and a
``BinSummer`` class the integrators use; the numba and GPU modules must return what these return.
"""

from __future__ import annotations

from typing import Any

import numpy as np

JUNGFRAU_GAIN_BITS = 14  # bits 14-15 of a JUNGFRAU sample say which gain stage digitised it
JUNGFRAU_ADC_MASK = 0x3FFF
JUNGFRAU_STAGE = (0, 1, -1, 2)  # gain bits 0b00 -> G0, 0b01 -> G1, 0b11 -> G2; 0b10 is invalid
FLAT_FIELD_FLOOR = 1e-6  # transmission floor before -log, so dead or saturated pixels stay finite


def correct(raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = (raw - dark) * gain`` in float32; ``gain`` is 1/flat with 0 at masked and dead pixels."""
    np.subtract(raw, dark, out=out, dtype=np.float32)
    np.multiply(out, gain, out=out)
    return out


def histogram(values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
    """Sum of ``values`` per bin; pixels whose bin is ``npt`` or more (masked) are dropped."""
    sums = np.bincount(bins.ravel(), weights=values.ravel().astype(np.float64), minlength=npt + 1)
    return sums[:npt]


def jungfrau_convert(raw: np.ndarray, pedestal: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    """JUNGFRAU three-gain conversion: ``out = (adc - pedestal[g]) / gain[g]`` in float32.

    ``raw`` is uint16 with the gain stage in bits 14-15 and the ADC value in bits 0-13; ``pedestal`` and
    ``gain`` are (3, *shape) float32, gain in ADU per output unit (keV or photons). A sample with the
    invalid gain code 0b10 gives 0.
    """
    raw = np.asarray(raw)
    code = (raw >> JUNGFRAU_GAIN_BITS).astype(np.intp)
    stage = np.asarray(JUNGFRAU_STAGE, dtype=np.intp)[code]
    valid = stage >= 0
    stage = np.where(valid, stage, 0)
    adc = (raw & JUNGFRAU_ADC_MASK).astype(np.float32)
    ped = np.take_along_axis(pedestal, stage[None], axis=0)[0]
    g = np.take_along_axis(gain, stage[None], axis=0)[0]
    value = (adc - ped) / g
    out[...] = np.where(valid, value, np.float32(0))
    return out


class BinSummer:
    """Per-bin sums of a frame (and of ``max(1, frame)``, the Poisson variance) over a fixed bin index."""

    def __init__(self, bins: np.ndarray, nbins: int) -> None:
        self.bins = bins.ravel().astype(np.intp)
        self.nbins = nbins

    def __call__(self, frame: Any, with_variance: bool) -> tuple[np.ndarray, np.ndarray | None]:
        values = np.asarray(frame).ravel().astype(np.float64)
        sums = np.bincount(self.bins, values, self.nbins + 1)[: self.nbins]
        if not with_variance:
            return sums, None
        variance = np.bincount(self.bins, np.maximum(1.0, values), self.nbins + 1)[: self.nbins]
        return sums, variance


# ---- tomography ---------------------------------------------------------------------------------------


def flat_field(raw: Any, dark: Any, flat: Any, out: np.ndarray, minus_log: bool = True) -> np.ndarray:
    """Transmission ``(raw - dark) / (flat - dark)`` in float32; with ``minus_log`` the line integral
    ``-log(max(T, 1e-6))``. ``raw`` is one projection or a stack ``(n, *dark.shape)``.

    A pixel whose flat is not above its dark (a dead pixel: 0 in both), or whose transmission is not
    finite (a NaN or inf in the frame), has no measure of the sample: transmission 1 (line integral 0),
    so one such pixel leaves the rest of a reconstructed slice intact instead of turning it NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = np.asarray(flat, np.float32) - np.asarray(dark, np.float32)
        transmission = (np.asarray(raw, np.float32) - np.asarray(dark, np.float32)) / denominator
        transmission = np.where((denominator > 0) & np.isfinite(transmission), transmission, np.float32(1))
        if minus_log:
            transmission = -np.log(np.maximum(transmission, np.float32(FLAT_FIELD_FLOOR)).astype(np.float64))
    out[...] = transmission
    return out


def backproject(
    filtered: np.ndarray, angles: np.ndarray, axis: float, circle: bool, out: np.ndarray
) -> np.ndarray:
    """Add the linear-interpolation back-projection of ``filtered`` (``(n_angles, width)``) into ``out``.

    skimage's loop, in float64: pixel (i, j) reads each projection at ``axis + (j - R) cos - (i - R) sin``
    with ``np.interp`` (0 off the detector); with ``circle`` only pixels inside radius ``R`` get a value.
    """
    size = out.shape[0]
    radius = size // 2
    xpr, ypr = np.mgrid[:size, :size] - radius
    positions = np.arange(filtered.shape[1], dtype=np.float64)
    total = np.zeros((size, size))
    for projection, angle in zip(np.asarray(filtered, np.float64), angles, strict=True):
        t = axis + ypr * np.cos(angle) - xpr * np.sin(angle)
        total += np.interp(t, positions, projection, left=0, right=0)
    if circle:
        total[xpr**2 + ypr**2 > radius**2] = 0.0
    out += total.astype(np.float32)
    return out


# ---- peak finding -------------------------------------------------------------------------------------


def ring_sums(frame: Any, rings: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ring: count, sum and sum of squares of the pixels below ``upper[ring]`` (float64 sums)."""
    values = np.asarray(frame).ravel().astype(np.float64)
    index = rings.ravel().astype(np.intp)
    keep = values < upper[index]
    n = upper.size
    index, values = index[keep], values[keep]
    count = np.bincount(index, minlength=n)
    return count, np.bincount(index, values, n), np.bincount(index, values * values, n)


def box_sums(values: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ``values`` and count of ``live`` pixels over each pixel's 3x3 box (float64; outside the frame
    counts as 0). ``values`` must be 0 where not live. Summed as the numba kernel does: the three rows of
    each column first (row above + row + row below), then the three columns (left + centre + right)."""
    padded = np.pad(values.astype(np.float64), 1)
    count = np.pad(live.astype(np.float64), 1)
    column = padded[:-2] + padded[1:-1] + padded[2:]
    column_n = count[:-2] + count[1:-1] + count[2:]
    return (
        column[:, :-2] + column[:, 1:-1] + column[:, 2:],
        column_n[:, :-2] + column_n[:, 1:-1] + column_n[:, 2:],
    )


def find_candidates(
    frame: Any,
    rings: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    min_snr: float,
    adc_threshold: float,
) -> np.ndarray:
    """Row-major linear indices (int64, sorted) of the peak candidates: live pixels (not masked, finite)
    whose 3x3 box of live pixels, ``n`` of them summing to ``S``, stands out of the pixel's ring:
    ``S - n * mean > min_snr * sigma * sqrt(n)`` (sigma > 0) and ``S > n * adc_threshold``."""
    values = np.asarray(frame, dtype=np.float64)
    n_rings = mean.size
    live = (rings < n_rings) & np.isfinite(values)
    total, count = box_sums(np.where(live, values, 0.0), live)
    ring = np.minimum(rings, n_rings - 1)
    mu, sd = mean[ring], sigma[ring]
    full = count == 9
    with np.errstate(invalid="ignore"):
        excess = np.where(
            full,
            total > np.maximum(9.0 * mu + 3.0 * min_snr * sd, 9.0 * adc_threshold),
            (total - count * mu > min_snr * sd * np.sqrt(count)) & (total > count * adc_threshold),
        )
    return np.flatnonzero(live & (sd > 0) & excess).astype(np.int64)


def label_peaks(
    frame: Any, rings: np.ndarray, candidates: np.ndarray, mean: np.ndarray, width: int
) -> tuple[np.ndarray, ...]:
    """8-connected components of the candidate pixels, by breadth-first search, with their sums.

    Returns per component (ordered by first pixel): first pixel, pixel count, sum of ``value - mean``,
    sum of its positive terms, that sum weighted by row and by column (the centroid's weights: inside the
    component whatever the pixels below the mean), maximum value, ring of the first pixel.
    """
    values = np.asarray(frame).ravel()
    flat_rings = rings.ravel()
    position = {int(p): k for k, p in enumerate(candidates)}
    seen = np.zeros(candidates.size, dtype=bool)
    out: list[tuple[float, ...]] = []
    for k, start in enumerate(candidates):
        if seen[k]:
            continue
        seen[k] = True
        queue = [int(start)]
        n = 0
        total = weight = row_sum = col_sum = 0.0
        peak = -np.inf
        while queue:
            p = queue.pop()
            r, c = divmod(p, width)
            v = float(values[p])
            w = v - float(mean[flat_rings[p]])
            n += 1
            total += w
            if w > 0:
                weight += w
                row_sum += w * r
                col_sum += w * c
            peak = max(peak, v)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (dr or dc) and 0 <= c + dc < width:
                        q = position.get(p + dr * width + dc)
                        if q is not None and not seen[q]:
                            seen[q] = True
                            queue.append(int(candidates[q]))
        out.append((int(start), n, total, weight, row_sum, col_sum, peak, int(flat_rings[start])))
    columns = list(zip(*out, strict=True)) if out else [()] * 8
    types = (np.int64, np.int64, np.float64, np.float64, np.float64, np.float64, np.float64, np.intp)
    return tuple(np.array(col, dtype=t) for col, t in zip(columns, types, strict=True))


# ---- ROI statistics and preview -----------------------------------------------------------------------


def roi_stats(
    frame: Any, boxes: np.ndarray, offsets: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Per ROI (box rows r0:r1, cols c0:c1, optionally a cropped mask at ``masks[offset:]``): sum (float64),
    pixel count, maximum (-inf when empty)."""
    frame = np.asarray(frame)
    n = boxes.shape[0]
    sums, counts, peaks = np.zeros(n), np.zeros(n, np.int64), np.full(n, -np.inf)
    for k, ((r0, r1, c0, c1), off) in enumerate(zip(boxes, offsets, strict=True)):
        values = frame[r0:r1, c0:c1].astype(np.float64)
        if off >= 0:
            values = values[masks[off : off + values.size].reshape(values.shape)]
        sums[k], counts[k] = values.sum(), values.size
        if values.size:
            peaks[k] = values.max()
    return sums, counts, peaks


def bin_frame(frame: Any, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (float64 sums, float32 result); a ragged edge is dropped."""
    frame = np.asarray(frame)
    rows, cols = frame.shape[0] // factor, frame.shape[1] // factor
    blocks = frame[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    return (blocks.astype(np.float64).sum(axis=(1, 3)) * (1.0 / (factor * factor))).astype(np.float32)


def to_uint8(image: np.ndarray, lo: float, hi: float, log: bool) -> np.ndarray:
    """``v = max(x - lo, 0)``, with ``log`` ``log1p(v) / log1p(hi - lo)`` else ``v / (hi - lo)``, clipped
    to [0, 1], times 255, rounded half up; NaN gives 0."""
    v = np.maximum(np.asarray(image, np.float64) - lo, 0.0)
    span = np.log1p(hi - lo) if log else hi - lo
    if log:
        v = np.log1p(v)
    x = v / span if span > 0 else np.zeros_like(v)
    x = np.where(np.isnan(x), 0.0, np.clip(x, 0.0, 1.0))
    return np.floor(x * 255.0 + 0.5).astype(np.uint8)
