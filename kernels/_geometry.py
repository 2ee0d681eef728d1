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

    def _lab(
        self, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pixel-centre offsets from the PONI (d1, d2) and lab coordinates (t1, t2, t3), as pyFAI."""
        p1 = (np.arange(shape[0], dtype=np.float64) + 0.5) * self.pixel1 - self.poni1
        p2 = (np.arange(shape[1], dtype=np.float64) + 0.5) * self.pixel2 - self.poni2
        d1, d2 = np.meshgrid(p1, p2, indexing="ij")
        c1, c2, c3 = math.cos(self.rot1), math.cos(self.rot2), math.cos(self.rot3)
        s1, s2, s3 = math.sin(self.rot1), math.sin(self.rot2), math.sin(self.rot3)
        l3 = self.dist
        t1 = d1 * c2 * c3 + d2 * (c3 * s1 * s2 - c1 * s3) - l3 * (c1 * c3 * s2 + s1 * s3)
        t2 = d1 * c2 * s3 + d2 * (c1 * c3 + s1 * s2 * s3) - l3 * (-c3 * s1 + c1 * s2 * s3)
        t3 = d1 * s2 - d2 * c2 * s1 + l3 * c1 * c2
        return d1, d2, t1, t2, t3

    def tth(self, shape: tuple[int, int]) -> np.ndarray:
        """Scattering angle 2theta (radians) at each pixel centre, as pyFAI computes it."""
        _, _, t1, t2, t3 = self._lab(shape)
        return np.arctan2(np.sqrt(t1 * t1 + t2 * t2), t3)

    def q_nm(self, shape: tuple[int, int]) -> np.ndarray:
        """Momentum transfer q in nm^-1 at each pixel centre."""
        return 4.0e-9 * math.pi / self.wavelength * np.sin(self.tth(shape) / 2.0)

    def chi(self, shape: tuple[int, int]) -> np.ndarray:
        """Azimuthal angle chi (radians, in ]-pi, pi], discontinuity at pi) at each pixel centre."""
        _, _, t1, t2, _ = self._lab(shape)
        return np.arctan2(t1, t2)

    def solid_angle(self, shape: tuple[int, int]) -> np.ndarray:
        """Solid angle of each pixel relative to a pixel at the PONI: cos(incidence)^3, as pyFAI."""
        d1, d2, _, _, _ = self._lab(shape)
        cos_incidence = self.dist / np.sqrt(self.dist * self.dist + (d1 * d1 + d2 * d2))
        return cos_incidence**3

    def polarization(self, shape: tuple[int, int], factor: float, axis_offset: float = 0.0) -> np.ndarray:
        """pyFAI's polarisation correction (float32, as pyFAI stores it); factor in [-1, 1], 0 = random."""
        cos2_tth = np.cos(self.tth(shape)) ** 2
        chi = self.chi(shape)
        pol = 0.5 * (1.0 + cos2_tth - factor * np.cos(2.0 * (chi + axis_offset)) * (1.0 - cos2_tth))
        return pol.astype(np.float32)

    def radial(self, shape: tuple[int, int], unit: str) -> tuple[np.ndarray, float]:
        """Radial position of each pixel in the unit's internal scale, and the factor to the unit.

        pyFAI bins 2theta in radians and q in nm^-1 and only scales the bin centres, so we do too.
        """
        if unit == "2th_deg":
            return self.tth(shape), 180.0 / math.pi
        if unit == "2th_rad":
            return self.tth(shape), 1.0
        if unit == "q_nm^-1":
            return self.q_nm(shape), 1.0
        if unit == "q_A^-1":
            return self.q_nm(shape), 0.1
        raise ValueError(f"unit {unit!r} not supported; use one of {', '.join(RADIAL_UNITS)}")


RADIAL_UNITS = ("2th_deg", "2th_rad", "q_nm^-1", "q_A^-1")


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
