"""Seeded powder-diffraction frames with Poisson noise and a beamstop, and the truth behind them.

A calibrant's d-spacings give ring positions for the geometry; each ring is a Gaussian in 2theta on a
smooth background. Noise realisations come from a pool of ``pool`` Poisson draws (frame ``n`` uses draw
``n % pool``) so a technician can stream at high rates; every frame is reproducible from the seed.

Detector defects are shared by every simulated mode (see `hw_sim.physics`): a seeded fixed set of dead
pixels and the blank rows/columns between modules, both reading 0. They are off by default, and when on
they only zero those pixels: every other pixel keeps the value it has without them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels import Geometry

# Cerium dioxide (CeO2, NIST SRM 674b, a = 5.411651 A, as pyFAI's CeO2 calibrant): the first d-spacings
# in metres.
CEO2_D_SPACINGS = tuple(
    5.411651e-10 / math.sqrt(h * h + k * k + m * m)
    for h, k, m in ((1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2), (4, 0, 0), (3, 3, 1), (4, 2, 0))
)


def cubic_d_spacings(a: float, allowed: Callable[[int, int, int], bool], count: int = 8) -> tuple[float, ...]:
    """The first ``count`` distinct d-spacings (metres, descending) of a cubic lattice of constant ``a``.

    ``allowed(h, k, l)`` is the reflection condition of the structure; reflections sharing
    ``h^2 + k^2 + l^2`` (e.g. 300 and 221) are one ring.
    """
    sums = sorted(
        {
            h * h + k * k + m * m
            for h in range(9)
            for k in range(h + 1)
            for m in range(k + 1)
            if (h, k, m) != (0, 0, 0) and allowed(h, k, m)
        }
    )
    return tuple(a / math.sqrt(n) for n in sums[:count])


def _primitive(h: int, k: int, m: int) -> bool:
    return True


def _diamond(h: int, k: int, m: int) -> bool:
    if h % 2 and k % 2 and m % 2:
        return True
    return h % 2 == 0 and k % 2 == 0 and m % 2 == 0 and (h + k + m) % 4 == 0


# Lanthanum hexaboride (NIST SRM 660c, a = 4.156826 A, primitive cubic: every hkl).
LAB6_D_SPACINGS = cubic_d_spacings(4.156826e-10, _primitive)
# Silicon (NIST SRM 640f, a = 5.431144 A, diamond: hkl all odd, or all even with h + k + l = 4n).
SI_D_SPACINGS = cubic_d_spacings(5.431144e-10, _diamond)

CALIBRANTS: dict[str, tuple[float, ...]] = {
    "CeO2": CEO2_D_SPACINGS,
    "LaB6": LAB6_D_SPACINGS,
    "Si": SI_D_SPACINGS,
}


def calibrant_d_spacings(name: str) -> tuple[float, ...]:
    """d-spacings (metres) of a calibrant by name (case-insensitive): CeO2, LaB6 or Si."""
    for key, value in CALIBRANTS.items():
        if key.lower() == name.lower():
            return value
    raise ValueError(f"unknown calibrant {name!r}; choose one of {', '.join(CALIBRANTS)}")


def beamstop_mask(shape: tuple[int, int], geometry: Geometry) -> np.ndarray:
    """Pixels behind the beamstop: a disc on the beam centre and an arm towards increasing columns."""
    rows, cols = np.indices(shape)
    centre_row = geometry.poni1 / geometry.pixel1 - 0.5
    centre_col = geometry.poni2 / geometry.pixel2 - 0.5
    radius = max(4.0, min(shape) / 40)
    stop = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < radius**2
    stop |= (np.abs(rows - centre_row) < radius / 3) & (cols > centre_col)  # the beamstop's arm
    return stop


def module_gap_mask(shape: tuple[int, int], module_shape: tuple[int, int], gap_pixels: int) -> np.ndarray:
    """Pixels between modules of ``module_shape`` laid on a grid with ``gap_pixels`` blank rows/columns.

    Module ``(i, j)`` starts at ``(i * (module_rows + gap), j * (module_cols + gap))``, as in
    `firmware_bridge.udp_codec.DetectorGeometry`; pass its ``frame_shape`` as ``shape``.
    """
    module_rows, module_cols = module_shape
    if module_rows < 1 or module_cols < 1 or gap_pixels < 0:
        raise ValueError(f"module_shape must be positive and gap_pixels >= 0: {module_shape}, {gap_pixels}")
    rows = np.arange(shape[0]) % (module_rows + gap_pixels) >= module_rows
    cols = np.arange(shape[1]) % (module_cols + gap_pixels) >= module_cols
    return rows[:, None] | cols[None, :]


def dead_pixel_mask(shape: tuple[int, int], seed: int, fraction: float) -> np.ndarray:
    """A seeded fixed set of ``round(fraction * pixels)`` dead pixels; the same for every mode and frame."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"dead_fraction must be in [0, 1], got {fraction}")
    size = shape[0] * shape[1]
    mask = np.zeros(size, dtype=bool)
    count = round(fraction * size)
    if count:
        rng = np.random.default_rng([seed, 0xDEAD, 0xBEEF])
        mask[rng.choice(size, count, replace=False)] = True
    return mask.reshape(shape)


def defect_mask(
    shape: tuple[int, int],
    seed: int,
    dead_fraction: float = 0.0,
    module_shape: tuple[int, int] | None = None,
    gap_pixels: int = 2,
) -> np.ndarray | None:
    """Dead pixels and module gaps (pixels that read 0), or None when there are none."""
    mask = np.zeros(shape, dtype=bool)
    if dead_fraction:
        mask |= dead_pixel_mask(shape, seed, dead_fraction)
    if module_shape is not None:
        mask |= module_gap_mask(shape, module_shape, gap_pixels)
    return mask if mask.any() else None


def poisson_frame(
    expected: np.ndarray, seed: list[int], dtype: np.dtype[Any], mask: np.ndarray | None = None
) -> np.ndarray:
    """One read-only Poisson realisation of ``expected``, clipped to ``dtype``, ``mask`` set to 0."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    frame = np.clip(rng.poisson(expected), 0, info.max).astype(dtype)
    if mask is not None:
        frame[mask] = 0
    frame.setflags(write=False)
    return frame


@dataclass(frozen=True)
class RingTruth:
    """Where the rings are and how bright, for checking reductions."""

    tth_deg: tuple[float, ...]
    peak_counts: tuple[float, ...]
    background: float


class PowderFrames:
    """Generator of seeded 2D powder frames for one geometry.

    ``dead_fraction``, ``module_shape`` and ``gap_pixels`` add detector defects (see `defect_mask`);
    ``mask`` is then the boolean image of those pixels (None without defects).
    """

    mode = "rings"

    def __init__(
        self,
        shape: tuple[int, int],
        geometry: Geometry,
        seed: int = 1234,
        pool: int = 32,
        dtype: str = "uint16",
        d_spacings: tuple[float, ...] = CEO2_D_SPACINGS,
        peak_counts: float = 400.0,
        background: float = 20.0,
        ring_width_deg: float = 0.08,
        dead_fraction: float = 0.0,
        module_shape: tuple[int, int] | None = None,
        gap_pixels: int = 2,
    ) -> None:
        self.shape = shape
        self.seed = seed
        self.pool = pool
        self.dtype = np.dtype(dtype)
        tth = np.degrees(geometry.tth(shape))
        expected = np.full(shape, background, dtype=np.float64)
        positions, heights = [], []
        for order, d in enumerate(d_spacings):
            ratio = geometry.wavelength / (2.0 * d)
            if ratio >= 1.0:
                continue
            centre = math.degrees(2.0 * math.asin(ratio))
            height = peak_counts / (1.0 + 0.3 * order)
            expected += height * np.exp(-0.5 * ((tth - centre) / ring_width_deg) ** 2)
            positions.append(centre)
            heights.append(height)
        stop = beamstop_mask(shape, geometry)
        expected[stop] = 0.0
        self.beamstop = stop
        self.mask = defect_mask(shape, seed, dead_fraction, module_shape, gap_pixels)
        # Noise is drawn from the defect-free image, so defects change no other pixel.
        self._lam = expected
        self.expected = expected if self.mask is None else np.where(self.mask, 0.0, expected)
        self.truth = RingTruth(tuple(positions), tuple(heights), background)
        self._draws: dict[int, np.ndarray] = {}

    def frame(self, number: int) -> np.ndarray:
        """The frame with this number; the same number always gives the same pixels."""
        draw = number % self.pool
        cached = self._draws.get(draw)
        if cached is None:
            cached = poisson_frame(self._lam, [self.seed, draw], self.dtype, self.mask)
            self._draws[draw] = cached
        return cached

    def expected_frame(self, number: int) -> np.ndarray:
        """The noiseless mean of frame ``number`` (the same for every frame)."""
        return self.expected

    def frame_truth(self, number: int) -> RingTruth:
        """The truth behind frame ``number`` (the same for every frame)."""
        return self.truth
