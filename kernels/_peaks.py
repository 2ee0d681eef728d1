"""Bragg peak finding in the manner of peakfinder8, and a hit classifier for serial crystallography.

Setup (once): every pixel gets a ring number, ``floor(distance to the beam centre / ring_width)``, rings
of fewer than `MIN_RING_PIXELS` live pixels merged with their neighbours (``merged_rings``); masked
pixels get the sentinel ``n_rings``. Per frame:

1. Ring background: mean and sigma of each ring, recomputed ``iterations`` times, each time only over
   pixels below ``mean + clip_snr * sigma`` of the previous pass (the first pass takes every pixel), so
   the peaks do not inflate their own background.
2. Candidates, on locally summed pixels: a live pixel (not masked, finite) is a candidate when the sum
   ``S`` of the ``n`` live pixels of its 3x3 box exceeds what its ring predicts by ``min_snr`` times the
   noise of that sum, ``S - n * mean > min_snr * sigma * sqrt(n)`` (pixels' noise independent, as on a
   photon-counting detector), and the box's mean exceeds ``adc_threshold``. A Gaussian spot of
   sigma 1 px puts about 3/4 of its flux in one box but 1/6 in its brightest pixel, so the box finds
   spots of ideal (profile-fitted) SNR 5-7 whose brightest pixel is only 2-4 sigma up, where
   peakfinder8's per-pixel threshold misses them; a ring without noise (sigma 0) has no candidates.
3. Candidates are grouped into 8-connected components; a component with ``min_pixels <= n <=
   max_pixels`` and positive intensity is a peak, measured on the raw pixels of the component: its
   intensity is the sum of ``value - ring mean``, its position the centroid weighted by the positive
   terms of that sum (so it lies among the component's pixels), its SNR ``intensity / (sigma *
   sqrt(n))``. A component is the set of box centres above threshold, so it reaches about a pixel past
   the spot's bright core; a hot pixel makes a 3x3 component (mask hot pixels, as for peakfinder8).

Peaks come ordered by their first pixel in row-major order. The backend supplies ``ring_sums`` (step 1),
``find_candidates`` (step 2) and ``label_peaks`` (step 3); this module holds the shared driver. A backend
may also supply larger pieces of it (``ring_moments_listing``, ``clipped_background``, ``measure_peaks``,
``lone_peaks``) or the whole of ``find`` in one call (``find_peaks``: numba, whose steps then run without
returning to the interpreter between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kernels._registry import Backend


# frame dtypes the finder widens, exactly, before the kernels see them: 8-bit detector modes and signed
# 16-bit frames are rare, and each dtype would be one more compiled copy of every peak kernel
# (~10-15 s each in a fresh install)
_WIDENED = {np.dtype(np.uint8): np.uint16, np.dtype(np.int8): np.float32, np.dtype(np.int16): np.float32}


def kernel_frame(frame: Any) -> Any:
    """``frame`` as the peak kernels take it: C-contiguous, read-only (a writable and a read-only frame
    of one dtype would otherwise compile every numba kernel twice) and uint8/int8/int16 widened exactly
    to uint16/float32. Not a NumPy array (a device array): returned as it is."""
    if not isinstance(frame, np.ndarray):
        return frame
    wide = _WIDENED.get(frame.dtype)
    return frozen(frame if wide is None else frame.astype(wide))


def _on_host(frame: Any) -> np.ndarray:
    """``frame`` as a NumPy array: itself, or a host copy of a device array (CuPy, numba CUDA)."""
    if isinstance(frame, np.ndarray):
        return frame
    if hasattr(frame, "get"):
        return np.asarray(frame.get())
    if hasattr(frame, "copy_to_host"):
        return np.asarray(frame.copy_to_host())
    return np.asarray(frame)


def frozen(array: np.ndarray) -> np.ndarray:
    """A C-contiguous read-only view of ``array`` (a copy only when it is not contiguous)."""
    array = np.ascontiguousarray(array)
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


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


#: the fewest live pixels a ring's background is taken from: a thinner ring (at the beam centre, in a
#: frame's corner, a sliver beside a mask) is merged with the rings next to it until it has this many
MIN_RING_PIXELS = 32


def merged_rings(ring: np.ndarray) -> tuple[np.ndarray, int]:
    """The ring map with each run of neighbouring rings of fewer than `MIN_RING_PIXELS` live pixels
    merged into one ring, numbered 0.. outwards (a ring's mean and sigma from 1-10 pixels was no measure
    of its background: an outside probe's frame corners and beam centre held 'peaks' of SNR 1 with
    centroids off the frame). Rings are taken outwards from the centre, each added to the one being
    gathered until it holds enough; the last, still too thin, joins the one before it. ``ring``: the
    radial ring of every pixel, -1 where masked; returns (the map with the masked sentinel ``n``, ``n``)."""
    live = ring >= 0
    counts = np.bincount(ring[live], minlength=1) if live.any() else np.zeros(1, np.int64)
    merged = np.empty(counts.size, np.int64)
    group = held = 0
    for r, count in enumerate(counts):
        if held >= MIN_RING_PIXELS:  # the group gathered so far is wide enough: this ring starts another
            group, held = group + 1, 0
        merged[r] = group
        held += int(count)
    if held < MIN_RING_PIXELS and group > 0:  # the outermost group is too thin: into the one before it
        merged[merged == group] = group - 1
        group -= 1
    n_rings = group + 1
    return np.where(live, merged[np.maximum(ring, 0)], n_rings), n_rings


#: the least share of a peak's intensity its brightest pixel holds for the peak to count as that pixel
#: alone (with no neighbour above background): dropped when ``min_pixels`` >= 2
LONE_SHARE = 0.8


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
        if mask is not None:
            ring[np.asarray(mask, dtype=bool)] = -1
        ring, self.n_rings = merged_rings(ring)
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
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # built on first use
        self._plan: Any = None  # the backend's box plan (``box_plan``), built on first use

    def background(self, frame: Any) -> tuple[np.ndarray, np.ndarray]:
        """Sigma-clipped mean and sigma per ring (float64, ``n_rings`` each; empty rings give 0)."""
        mean, sigma, _listed, _bound = self._background(self._kernel_input(frame))
        return mean, sigma

    def _kernel_input(self, frame: Any) -> Any:
        """``frame`` as this backend's kernels take it (``kernel_frame``); on a backend with its own
        memory (the GPU), copied there once for all the passes of one frame."""
        frame = kernel_frame(frame)
        to_device = getattr(self.backend.module, "to_device", None)
        return frame if to_device is None else to_device(frame)

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

    def _ring_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixels sorted by ring, where each ring starts in that order, pixels per ring)."""
        if self._index is None:
            flat = self.rings.ravel()
            count = np.bincount(flat, minlength=self.n_rings + 1).astype(np.int64)
            start = np.concatenate(([0], np.cumsum(count))).astype(np.int64)
            self._index = (np.argsort(flat, kind="stable").astype(np.int64), start, count)
        return self._index

    def _background(self, frame: Any) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray | None]:
        """(mean, sigma, listed, bound): ``listed`` (or None) lists every pixel with value >= ``bound``
        (sorted indices, values, rings).

        A backend without ``ring_moments_listing`` sums the whole frame once per pass. One with it sums
        the frame once: a clipped pass is the first one minus the few pixels it drops (the finite pixels
        at or above its bound). Those are listed in the first pass already, at a per-ring guess learnt
        from the last frame; rings whose bound comes out below the guess are searched again, pixel by
        pixel of those rings only. The list is kept for ``find``. A backend with ``clipped_background``
        does everything after the summing pass in that one compiled call.
        """
        module = self.backend.module
        if not hasattr(module, "ring_moments_listing"):
            upper = np.full(self.n_rings + 1, np.inf)
            upper[-1] = -np.inf
            for _ in range(self.iterations):
                mean, sigma, upper = self._stats(*module.ring_sums(frame, self.rings, upper))
            return mean, sigma, None, None
        values = np.ascontiguousarray(frame).ravel()
        flat_rings = self.rings.ravel()
        ring_pixels, ring_start, ring_count = self._ring_index()
        guess = self._listing_guess()
        total, total2, listed = module.ring_moments_listing(values, flat_rings, guess)
        if hasattr(module, "clipped_background"):  # the rest below, in one compiled call
            mean, sigma, self._guess, listed, listed_bound = module.clipped_background(
                values,
                flat_rings,
                total,
                total2,
                listed,
                guess,
                (ring_pixels, ring_start, ring_count),
                self.n_rings,
                self.clip_snr,
                self.iterations,
            )
            return mean, sigma, listed, listed_bound
        count = ring_count.copy()
        listed_bound = None if listed is None else guess
        bad = np.flatnonzero(~np.isfinite(total[: self.n_rings] + total2[: self.n_rings]))
        if bad.size:  # a NaN or inf in these rings: redo them, counting only the pixels below +inf
            count[bad], total[bad], total2[bad] = module.ring_moments_exact(
                values, ring_pixels, ring_start, bad
            )
        mean, sigma, upper = self._stats(count, total, total2)
        lowest = np.full(self.n_rings, np.inf)  # the lowest bound any pass of this frame used
        for _ in range(1, self.iterations):
            bound = upper.copy()
            bound[-1] = np.inf  # masked pixels were never summed
            lowest = np.minimum(lowest, bound[: self.n_rings])
            listed, listed_bound = self._cover(values, listed, listed_bound, bound)
            dropped = module.listed_moments(listed, bound)
            mean, sigma, upper = self._stats(count - dropped[0], total - dropped[1], total2 - dropped[2])
        # next frame: list in the summing pass what this frame's clipping and thresholds would pick,
        # with half a sigma to spare (a guess only: a bound below it makes the next frame search again).
        # A ring's first clipping bound comes from unclipped sums, high where a spot sat in this frame
        # only: the clipped statistics' bound stands in for a ring without spots.
        lowest = np.minimum(lowest, mean + self.clip_snr * sigma)
        guess = np.full(self.n_rings + 1, np.inf)
        guess[: self.n_rings] = np.where(np.isfinite(lowest), lowest - 0.5 * sigma, np.inf)
        self._guess = guess
        return mean, sigma, listed, listed_bound

    def _listing_guess(self) -> np.ndarray:
        """The per-ring bound above which the summing pass lists pixels: learnt from the last frame, or
        +inf (list nothing) before the first."""
        return self._guess if self._guess is not None else np.full(self.n_rings + 1, np.inf)

    def _box_plan(self) -> Any:
        """The backend's ``box_plan`` for this finder's rings, made on first use."""
        if self._plan is None:
            self._plan = self.backend.module.box_plan(self.rings, self.n_rings)
        return self._plan

    def _cover(
        self, values: np.ndarray, listed: Any, listed_bound: np.ndarray | None, bound: np.ndarray
    ) -> tuple[Any, np.ndarray]:
        """A list of every pixel with value >= ``min(listed_bound, bound)`` per ring, and that bound:
        ``listed`` extended over the rings whose bound is lower, or a full scan at ``bound``."""
        module = self.backend.module
        if listed is not None and listed_bound is not None:
            ring_pixels, ring_start, _count = self._ring_index()
            extended = module.extend_listing(values, listed, listed_bound, bound, ring_pixels, ring_start)
            if extended is not None:
                return extended, np.minimum(listed_bound, bound)
        return module.listing_of(values, self.rings.ravel(), bound), bound.copy()

    def find(self, frame: Any) -> Peaks:
        """The peaks of one frame."""
        if tuple(frame.shape) != self.shape:
            raise ValueError(f"frame shape {tuple(frame.shape)} differs from finder shape {self.shape}")
        frame = self._kernel_input(frame)
        module = self.backend.module
        if hasattr(module, "find_peaks"):  # every step below in one compiled call
            self._guess, *fields = module.find_peaks(
                frame,
                self.rings,
                self._listing_guess(),
                self._ring_index(),
                self._box_plan(),
                self.n_rings,
                self.clip_snr,
                self.iterations,
                self.min_snr,
                self.adc_threshold,
                self.min_pixels,
                self.max_pixels,
                LONE_SHARE,
            )
            return Peaks(*fields)
        mean, sigma, _listed, _bound = self._background(frame)
        # a ring whose background is one value throughout (a ring of a few pixels at the beam centre, a
        # flat region) has sigma 0 and could hold no candidate, while its neighbours' boxes reaching a
        # spot in it made candidates of background pixels: its noise is taken as Poisson's, sqrt(mean)
        sigma = np.where(sigma > 0, sigma, np.sqrt(np.maximum(mean, 0.0)))
        args = (frame, self.rings, mean, sigma, self.min_snr, self.adc_threshold)
        if hasattr(module, "box_plan"):  # a backend that plans the boxes once per finder
            candidates = module.find_candidates(*args, plan=self._box_plan())
        else:
            candidates = module.find_candidates(*args)
        if hasattr(module, "measure_peaks"):  # labelled and measured as below, in one compiled call
            row, col, total, n_pixels, max_value, snr = module.measure_peaks(
                frame, self.rings, candidates, mean, sigma, self.shape[1], self.min_pixels, self.max_pixels
            )
            return self._without_lone_pixels(
                frame, mean, sigma, Peaks(row, col, total, n_pixels, max_value, snr)
            )
        stats = module.label_peaks(frame, self.rings, candidates, mean, self.shape[1])
        _first, n_pixels, total, weight, row_sum, col_sum, max_value, ring_of_first = stats
        # a component whose pixels sum to no excess over the ring is no peak (its candidates' boxes
        # reached a bright pixel that is not one: in a ring of sigma 0, say)
        keep = (n_pixels >= self.min_pixels) & (n_pixels <= self.max_pixels) & (total > 0)
        n_pixels, total, weight = n_pixels[keep], total[keep], weight[keep]
        with np.errstate(divide="ignore", invalid="ignore"):  # (weight >= total > 0)
            row = row_sum[keep] / weight
            col = col_sum[keep] / weight
            noise = sigma[ring_of_first[keep]] * np.sqrt(n_pixels)
            snr = np.where(noise > 0, total / noise, np.inf)
        return self._without_lone_pixels(
            frame, mean, sigma, Peaks(row, col, total, n_pixels, max_value[keep], snr)
        )

    def _without_lone_pixels(self, frame: Any, mean: np.ndarray, sigma: np.ndarray, peaks: Peaks) -> Peaks:
        """``peaks`` less those that are one pixel above background, when ``min_pixels`` >= 2.

        A lone hot pixel (or a zinger) makes a 3x3 component of box candidates, so ``n_pixels`` alone
        cannot reject it as peakfinder8's pixel count does. A peak is one pixel's when the brightest
        pixel of the 3x3 pixels at its centroid is above ``mean + clip_snr * sigma`` of its ring, none of
        that pixel's 8 neighbours is above ``mean + 2 * clip_snr * sigma`` (signal, not noise: with the
        clipping bound itself one neighbour in 35 or so was, by chance, on a Poisson background, and an
        outside probe's hot pixel came and went as a 9-pixel peak from frame to frame), and it holds at
        least `LONE_SHARE` of the excess over the ring's mean of its own 3x3 box. A spot spread over
        several pixels keeps others well above background, or its brightest pixel holds a smaller share.
        """
        if self.min_pixels < 2 or len(peaks) == 0:
            return peaks
        module = self.backend.module
        if hasattr(module, "lone_peaks"):  # the rule below, in one compiled call
            lone = module.lone_peaks(
                frame, self.rings, self.n_rings, mean, sigma, self.clip_snr, LONE_SHARE, peaks.row, peaks.col
            )
            return self._kept(peaks, ~lone) if lone.any() else peaks
        values = _on_host(frame)
        height, width = self.shape
        steps = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]

        def around(r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            """Per peak, its 9 pixels around (r, c): rows, columns, values (NaN outside or masked)."""
            rr = r[:, None] + np.array([s[0] for s in steps])[None, :]
            cc = c[:, None] + np.array([s[1] for s in steps])[None, :]
            inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
            rr, cc = np.clip(rr, 0, height - 1), np.clip(cc, 0, width - 1)
            live = inside & (self.rings[rr, cc] < self.n_rings)
            return rr, cc, np.where(live, values[rr, cc].astype(np.float64), np.nan), live

        r = np.clip(np.rint(peaks.row).astype(np.int64), 0, height - 1)
        c = np.clip(np.rint(peaks.col).astype(np.int64), 0, width - 1)
        rr, cc, window, live = around(r, c)
        if not live.any():
            return peaks
        best = np.argmax(np.where(live, np.nan_to_num(window, nan=-np.inf), -np.inf), axis=1)
        pick = np.arange(len(peaks))
        rb, cb = rr[pick, best], cc[pick, best]
        ring = np.minimum(self.rings[rb, cb].astype(np.int64), self.n_rings - 1)
        mu, bound = mean[ring], mean[ring] + self.clip_snr * sigma[ring]
        strong = mean[ring] + 2 * self.clip_snr * sigma[ring]
        _, _, box, _ = around(rb, cb)
        centre = box[:, 4]
        others = np.delete(box, 4, axis=1)
        excess = np.nansum(box - mu[:, None], axis=1)
        with np.errstate(invalid="ignore"):
            lone = (centre > bound) & ~np.any(others > strong[:, None], axis=1)
            lone &= centre - mu >= LONE_SHARE * excess
        return self._kept(peaks, ~lone) if lone.any() else peaks

    @staticmethod
    def _kept(peaks: Peaks, keep: np.ndarray) -> Peaks:
        fields = ("row", "col", "intensity", "n_pixels", "max_value", "snr")
        return Peaks(*(getattr(peaks, name)[keep] for name in fields))

    def is_hit(self, frame: Any) -> bool:
        """Hit classifier: at least ``min_peaks`` peaks."""
        return classify_hit(self.find(frame), self.min_peaks)


def classify_hit(peaks: Peaks, min_peaks: int) -> bool:
    """A frame is a hit (kept) when it has at least ``min_peaks`` peaks; a blank otherwise (vetoed)."""
    return len(peaks) >= min_peaks
