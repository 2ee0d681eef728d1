"""Seeded powder-diffraction frames with Poisson noise and a beamstop, and the truth behind them.

A calibrant's d-spacings give ring positions for the geometry; each ring is a Gaussian in 2theta on a
smooth background. Noise realisations come from a pool of ``pool`` Poisson draws (frame ``n`` uses draw
``n % pool``) so a technician can stream at high rates; every frame is reproducible from the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernels import Geometry

# Cerium dioxide (CeO2, a = 5.4111 A): the first d-spacings in metres.
CEO2_D_SPACINGS = tuple(
    5.4111e-10 / math.sqrt(h * h + k * k + m * m)
    for h, k, m in ((1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2), (4, 0, 0), (3, 3, 1), (4, 2, 0))
)


@dataclass(frozen=True)
class RingTruth:
    """Where the rings are and how bright, for checking reductions."""

    tth_deg: tuple[float, ...]
    peak_counts: tuple[float, ...]
    background: float


class PowderFrames:
    """Generator of seeded 2D powder frames for one geometry."""

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
        rows, cols = np.indices(shape)
        centre_row = geometry.poni1 / geometry.pixel1 - 0.5
        centre_col = geometry.poni2 / geometry.pixel2 - 0.5
        radius = max(4.0, min(shape) / 40)
        stop = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < radius**2
        stop |= (np.abs(rows - centre_row) < radius / 3) & (cols > centre_col)  # the beamstop's arm
        expected[stop] = 0.0
        self.expected = expected
        self.beamstop = stop
        self.truth = RingTruth(tuple(positions), tuple(heights), background)
        self._draws: dict[int, np.ndarray] = {}

    def frame(self, number: int) -> np.ndarray:
        """The frame with this number; the same number always gives the same pixels."""
        draw = number % self.pool
        cached = self._draws.get(draw)
        if cached is None:
            rng = np.random.default_rng([self.seed, draw])
            info = np.iinfo(self.dtype)
            cached = np.clip(rng.poisson(self.expected), 0, info.max).astype(self.dtype)
            cached.setflags(write=False)
            self._draws[draw] = cached
        return cached
