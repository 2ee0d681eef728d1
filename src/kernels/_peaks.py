"""Bragg peak finding in the manner of peakfinder8, and a hit classifier for serial crystallography.

Setup (once): every pixel gets a ring number, ``floor(distance to the beam centre / ring_width)``;
masked pixels get the sentinel ``n_rings``. Per frame:

1. Ring background: mean and sigma of each ring, recomputed ``iterations`` times, each time only over
   pixels below ``mean + clip_snr * sigma`` of the previous pass (the first pass takes every pixel), so
   the peaks do not inflate their own background.
2. Threshold per ring: ``max(adc_threshold, mean + min_snr * sigma)``; pixels above it are candidates.
3. Candidates are grouped into 8-connected components; a component with ``min_pixels <= n <=
   max_pixels`` is a peak. Its intensity is the sum of ``value - ring mean`` over its pixels, its
   position the centroid weighted by that, its SNR ``intensity / (sigma * sqrt(n))``.

Peaks come ordered by their first pixel in row-major order. The backend supplies ``ring_sums`` (step 1)
and ``find_candidates`` / ``label_peaks`` (steps 2-3); this module holds the shared driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kernels._registry import Backend


@dataclass
class Peaks:
    """Peaks of one frame; every array has one entry per peak."""

    row: np.ndarray
    col: np.ndarray
    intensity: np.ndarray
    n_pixels: np.ndarray
    max_value: np.ndarray
    snr: np.ndarray

    def __len__(self) -> int:
        return int(self.row.size)


class PeakFinder:
    """peakfinder8-style finder for frames of one shape; ``find(frame) -> Peaks``, ``is_hit(frame)``."""

    def __init__(
        self,
        backend: Backend,
        shape: tuple[int, int],
        center: tuple[float, float] | None = None,
        mask: np.ndarray | None = None,
        *,
        min_snr: float = 5.0,
        clip_snr: float = 3.0,
        adc_threshold: float = 0.0,
        min_pixels: int = 2,
        max_pixels: int = 200,
        iterations: int = 2,
        ring_width: float = 1.0,
        min_peaks: int = 10,
    ) -> None:
        if min_pixels < 1 or max_pixels < min_pixels:
            raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if iterations < 1 or ring_width <= 0:
            raise ValueError(f"need iterations >= 1 and ring_width > 0, got {iterations}, {ring_width}")
        self.backend = backend
        self.shape = (int(shape[0]), int(shape[1]))
        cy, cx = ((self.shape[0] - 1) / 2, (self.shape[1] - 1) / 2) if center is None else center
        yy, xx = np.ogrid[: self.shape[0], : self.shape[1]]
        ring = np.floor(np.hypot(yy - cy, xx - cx) / ring_width).astype(np.int64)
        self.n_rings = int(ring.max()) + 1
        if mask is not None:
            ring[np.asarray(mask, dtype=bool)] = self.n_rings
        dtype = np.uint16 if self.n_rings < np.iinfo(np.uint16).max else np.int32
        self.rings = np.ascontiguousarray(ring.astype(dtype))
        self.min_snr, self.clip_snr, self.adc_threshold = (
            float(min_snr),
            float(clip_snr),
            float(adc_threshold),
        )
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.iterations = int(iterations)
        self.min_peaks = int(min_peaks)
        self._guess: np.ndarray | None = None  # per-ring listing bound learnt from the last frame
        self._ring_start: np.ndarray | None = None  # pixels sorted by ring (built on first use)
        self._ring_pixels = np.empty(0, np.int64)

    def background(self, frame: Any) -> tuple[np.ndarray, np.ndarray]:
        """Sigma-clipped mean and sigma per ring (float64, ``n_rings`` each; empty rings give 0)."""
        mean, sigma, _listed, _bound = self._background(frame)
        return mean, sigma

    def _stats(
        self, count: np.ndarray, total: np.ndarray, total2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count, total, total2 = count[: self.n_rings], total[: self.n_rings], total2[: self.n_rings]
        safe = np.maximum(count, 1)
        mean = total / safe
        sigma = np.sqrt(np.maximum(total2 / safe - mean * mean, 0.0))
        upper = np.empty(self.n_rings + 1)
        upper[: self.n_rings] = np.where(count > 0, mean + self.clip_snr * sigma, np.inf)
        upper[-1] = -np.inf  # the masked sentinel never counts
        return mean, sigma, upper

    def _background(self, frame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(mean, sigma, listed, bound): ``listed`` (or None) holds every pixel with value >= ``bound``.

        With a backend that can list the pixels at or above a per-ring bound (``pixels_at_or_above``),
        only the first pass sums the whole frame: a clipped pass is the first one minus the few pixels
        it drops (all finite pixels at or above its bound), and those are listed by a compare-only scan,
        or picked from the last list when its bound is no higher. The list is kept for ``find``.
        """
        module = self.backend.module
        upper = np.full(self.n_rings + 1, np.inf)
        upper[-1] = -np.inf
        scan = getattr(module, "pixels_at_or_above", None)
        fused = getattr(module, "ring_sums_listing", None)
        listed: np.ndarray | None = None
        listed_bound: np.ndarray | None = None
        guess = self._guess
        if scan is not None and fused is not None and guess is not None:
            count, total, total2, listed = fused(frame, self.rings, upper, guess)
            listed_bound = None if listed is None else guess
        else:
            count, total, total2 = module.ring_sums(frame, self.rings, upper)
        mean, sigma, upper = self._stats(count, total, total2)
        if scan is None:
            for _ in range(1, self.iterations):
                mean, sigma, upper = self._stats(*module.ring_sums(frame, self.rings, upper))
            return mean, sigma, None, None
        values = np.asarray(frame).ravel()
        flat_rings = self.rings.ravel()
        width = self.n_rings + 1
        lowest = np.full(self.n_rings, np.inf)  # the lowest bound any pass of this frame used
        for _ in range(1, self.iterations):
            bound = upper.copy()
            bound[-1] = np.inf  # masked pixels were never summed
            lowest = np.minimum(lowest, bound[: self.n_rings])
            if listed is not None and listed_bound is not None:
                listed, listed_bound = self._extend(values, listed, listed_bound, bound)
            if listed is not None and listed_bound is not None:
                dropped = listed[values[listed] >= bound[flat_rings[listed]]]
            else:
                listed = dropped = scan(frame, self.rings, bound)
                listed_bound = bound
            v = values[dropped].astype(np.float64)
            finite = v < np.inf  # the first pass summed every value below +inf
            v, ring = v[finite], flat_rings[dropped][finite].astype(np.intp)
            mean, sigma, upper = self._stats(
                count - np.bincount(ring, minlength=width),
                total - np.bincount(ring, v, width),
                total2 - np.bincount(ring, v * v, width),
            )
        # next frame: list in the summing pass what this frame's clipping and thresholds would pick,
        # with half a sigma to spare (a guess only: a bound below it makes the next frame scan again)
        lowest = np.minimum(lowest, np.maximum(self.adc_threshold, mean + self.min_snr * sigma))
        guess = np.full(self.n_rings + 1, np.inf)
        guess[: self.n_rings] = np.where(np.isfinite(lowest), lowest - 0.5 * sigma, np.inf)
        self._guess = guess
        return mean, sigma, listed, listed_bound

    def _extend(
        self, values: np.ndarray, listed: np.ndarray, listed_bound: np.ndarray, bound: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The list of pixels >= ``listed_bound`` extended to ``min(listed_bound, bound)`` per ring, by
        looking at the pixels of the rings whose bound is lower only; (None, None) when that is most of
        the frame (a full scan is cheaper then)."""
        low = np.flatnonzero(bound < listed_bound)
        if low.size == 0:
            return listed, listed_bound
        if self._ring_start is None:
            order = np.argsort(self.rings.ravel(), kind="stable")
            self._ring_pixels = order.astype(np.int64)
            self._ring_start = np.concatenate(([0], np.cumsum(np.bincount(self.rings.ravel()))))
        start = self._ring_start
        if np.sum(start[low + 1] - start[low]) > values.size // 8:
            return None, None
        parts = [listed]
        for r in low:
            pixels = self._ring_pixels[start[r] : start[r + 1]]
            v = values[pixels]
            parts.append(pixels[(v >= bound[r]) & (v < listed_bound[r])])
        return np.sort(np.concatenate(parts)), np.minimum(listed_bound, bound)

    def find(self, frame: Any) -> Peaks:
        """The peaks of one frame."""
        if tuple(frame.shape) != self.shape:
            raise ValueError(f"frame shape {tuple(frame.shape)} differs from finder shape {self.shape}")
        mean, sigma, listed, listed_bound = self._background(frame)
        threshold = np.empty(self.n_rings + 1)
        threshold[: self.n_rings] = np.maximum(self.adc_threshold, mean + self.min_snr * sigma)
        threshold[-1] = np.inf
        module = self.backend.module
        if listed is not None and listed_bound is not None:
            listed, listed_bound = self._extend(np.asarray(frame).ravel(), listed, listed_bound, threshold)
        if listed is not None and listed_bound is not None:
            # every candidate (value > threshold >= bound) is in the list
            flat_rings = self.rings.ravel()
            candidates = listed[np.asarray(frame).ravel()[listed] > threshold[flat_rings[listed]]]
        else:
            candidates = module.find_candidates(frame, self.rings, threshold)
        stats = module.label_peaks(frame, self.rings, candidates, mean, self.shape[1])
        _first, n_pixels, total, row_sum, col_sum, max_value, ring_of_first = stats
        keep = (n_pixels >= self.min_pixels) & (n_pixels <= self.max_pixels)
        n_pixels, total = n_pixels[keep], total[keep]
        with np.errstate(divide="ignore", invalid="ignore"):
            row = np.where(total != 0, row_sum[keep] / total, 0.0)
            col = np.where(total != 0, col_sum[keep] / total, 0.0)
            noise = sigma[ring_of_first[keep]] * np.sqrt(n_pixels)
            snr = np.where(noise > 0, total / noise, np.inf)
        return Peaks(row, col, total, n_pixels, max_value[keep], snr)

    def is_hit(self, frame: Any) -> bool:
        """Hit classifier: at least ``min_peaks`` peaks."""
        return classify_hit(self.find(frame), self.min_peaks)


def classify_hit(peaks: Peaks, min_peaks: int) -> bool:
    """A frame is a hit (kept) when it has at least ``min_peaks`` peaks; a blank otherwise (vetoed)."""
    return len(peaks) >= min_peaks
