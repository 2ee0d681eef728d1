"""Detector geometry in pyFAI's PONI convention, and the per-pixel radial coordinates it implies.

Distances are metres, angles radians. ``poni1``/``poni2`` are the point of normal incidence measured
from the detector origin along the slow (row) and fast (column) axes. Rotations follow pyFAI: the
detector is rotated by rot1 about axis 1, rot2 about axis 2, rot3 about the beam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """A PONI geometry for a flat detector with square-grid pixels."""

    dist: float = 0.1
    poni1: float = 0.0384
    poni2: float = 0.0384
    rot1: float = 0.0
    rot2: float = 0.0
    rot3: float = 0.0
    wavelength: float = 1.0e-10
    pixel1: float = 75e-6
    pixel2: float = 75e-6

    def tth(self, shape: tuple[int, int]) -> np.ndarray:
        """Scattering angle 2theta (radians) at each pixel centre, as pyFAI computes it."""
        p1 = (np.arange(shape[0], dtype=np.float64) + 0.5) * self.pixel1 - self.poni1
        p2 = (np.arange(shape[1], dtype=np.float64) + 0.5) * self.pixel2 - self.poni2
        d1, d2 = np.meshgrid(p1, p2, indexing="ij")
        c1, c2, c3 = math.cos(self.rot1), math.cos(self.rot2), math.cos(self.rot3)
        s1, s2, s3 = math.sin(self.rot1), math.sin(self.rot2), math.sin(self.rot3)
        l3 = self.dist
        t1 = d1 * c2 * c3 + d2 * (c3 * s1 * s2 - c1 * s3) - l3 * (c1 * c3 * s2 + s1 * s3)
        t2 = d1 * c2 * s3 + d2 * (c1 * c3 + s1 * s2 * s3) - l3 * (-c3 * s1 + c1 * s2 * s3)
        t3 = d1 * s2 - d2 * c2 * s1 + l3 * c1 * c2
        return np.arctan2(np.sqrt(t1 * t1 + t2 * t2), t3)

    def q_nm(self, shape: tuple[int, int]) -> np.ndarray:
        """Momentum transfer q in nm^-1 at each pixel centre."""
        return 4.0e-9 * math.pi / self.wavelength * np.sin(self.tth(shape) / 2.0)


def read_poni(path: str | Path) -> Geometry:
    """Read a pyFAI ``.poni`` file (versions 1 and 2) into a Geometry."""
    values: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        values[key.strip().lower()] = value.strip()
    pixel1 = pixel2 = 75e-6
    if "detector_config" in values:
        import json

        config = json.loads(values["detector_config"])
        pixel1 = float(config.get("pixel1", pixel1))
        pixel2 = float(config.get("pixel2", pixel2))
    pixel1 = float(values.get("pixelsize1", pixel1))
    pixel2 = float(values.get("pixelsize2", pixel2))
    return Geometry(
        dist=float(values["distance"]),
        poni1=float(values["poni1"]),
        poni2=float(values["poni2"]),
        rot1=float(values.get("rot1", 0.0)),
        rot2=float(values.get("rot2", 0.0)),
        rot3=float(values.get("rot3", 0.0)),
        wavelength=float(values.get("wavelength", 1e-10)),
        pixel1=pixel1,
        pixel2=pixel2,
    )
