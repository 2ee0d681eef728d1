"""The simulated detector's physics for each mode, seeded, each source returning its ground truth.

Three sources share one small interface, `SimFrameSource` (``shape``, ``dtype``, ``mode``, ``truth``,
``frame(n)``, ``expected_frame(n)``, ``frame_truth(n)``), and `make_source` picks one by name:

* ``rings``: powder rings of a calibrant (`hw_sim.frames.PowderFrames`).
* ``spots``: serial crystallography. Each of ``pool`` patterns is a hit (a seeded number of Bragg spots)
  or a miss (background only); exactly ``round(hit_fraction * pool)`` patterns are hits. Spots are placed
  uniformly over the live detector area (not from a crystal lattice: uniform placement keeps spots
  apart, so every centroid in the truth is measurable), away from the beamstop, the module gaps, dead
  pixels and the edges, at least ``min_separation_px`` apart. Each spot is a 2D Gaussian integrated over
  the pixel areas, so its pixels sum to its intensity; intensities are exponential (Wilson statistics for
  acentric reflections). The background is smooth: a flat level times the solid angle, a solvent halo
  (a broad ring at d = 3.2 A) and optionally faint calibrant rings.
* ``tomo``: parallel-beam tomography of a 3D Shepp-Logan phantom: dark frames, flat frames, projections
  over ``n_angles`` angles in [0, 180) degrees, optionally flats at the end, then the scan repeats.
  ``I = flat * exp(-integral of mu) + dark`` with Poisson noise; line integrals are computed exactly from
  the ellipsoids (no scikit-image at run time).

Like `PowderFrames`, frame ``n`` reuses a cached noise realisation (``n % pool`` for rings and spots,
``n % scan_length`` for tomo), so streaming at high rates costs nothing once a frame has been made;
every frame is reproducible from the seed whether or not it was cached.

Pixel coordinates in the truth: pixel ``(i, j)`` (row, column) is centred on ``(i, j)``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from hw_sim.frames import (
    PowderFrames,
    RingTruth,
    beamstop_mask,
    calibrant_d_spacings,
    defect_mask,
    poisson_frame,
)
from kernels import Geometry

MODES = ("rings", "spots", "tomo")

# Seed-sequence tags keeping the random streams of one seed apart (noise uses [seed, index]).
_LAYOUT = 0x5B07
_HITS = 0x417
_TOMO_PATTERN = 0x70D0


class SimFrameSource(Protocol):
    """What every simulated mode offers the senders (named apart from `firmware_bridge`'s receivers)."""

    mode: str
    shape: tuple[int, int]
    dtype: np.dtype[Any]
    truth: Any

    def frame(self, number: int) -> np.ndarray:
        """Frame ``number`` (read-only); the same number always gives the same pixels."""
        ...

    def expected_frame(self, number: int) -> np.ndarray:
        """The noiseless mean of frame ``number`` (float64, defects at 0)."""
        ...

    def frame_truth(self, number: int) -> Any:
        """What frame ``number`` contains."""
        ...


# --------------------------------------------------------------------------------------------------
# spots


class Spot(NamedTuple):
    """One Bragg spot: centroid (pixel index units), integrated counts, and its expected SNR."""

    row: float
    col: float
    intensity: float
    snr: float


@dataclass(frozen=True)
class SpotFrameTruth:
    """What one serial-crystallography frame holds: hit or miss, and its spots (empty for a miss).

    ``snr`` of a spot is ``I / sqrt(I + B * 4 pi sigma^2)`` with ``B`` the expected background per pixel
    at its centre: the SNR of an ideal profile-weighted integration (``4 pi sigma^2`` pixels of noise).
    """

    pattern: int
    hit: bool
    spots: tuple[Spot, ...]


@dataclass(frozen=True)
class SpotTruth:
    """Run-level truth of the spots mode: one entry per pattern of the pool (frame n shows n % pool)."""

    patterns: tuple[SpotFrameTruth, ...]
    hit_fraction: float
    spot_sigma_px: float

    @property
    def hits(self) -> tuple[bool, ...]:
        return tuple(p.hit for p in self.patterns)


def _pixel_integrals(centre: float, sigma: float, first: int, count: int) -> np.ndarray:
    """Fraction of a unit 1D Gaussian falling in pixels ``first .. first + count - 1`` (centred on index)."""
    scale = 1.0 / (sigma * math.sqrt(2.0))
    cdf = [0.5 * math.erf((first + k - 0.5 - centre) * scale) for k in range(count + 1)]
    return np.diff(np.asarray(cdf))


class SpotFrames:
    """Seeded serial-crystallography frames: hits with Bragg spots, misses, and their truth."""

    mode = "spots"

    def __init__(
        self,
        shape: tuple[int, int],
        geometry: Geometry,
        seed: int = 1234,
        pool: int = 32,
        dtype: str = "uint16",
        hit_fraction: float = 0.3,
        spots_per_hit: float = 30.0,
        spot_sigma_px: float = 1.0,
        mean_intensity: float = 2000.0,
        min_separation_px: float | None = None,
        background: float = 10.0,
        halo_counts: float = 5.0,
        ring_counts: float = 0.0,
        calibrant: str = "CeO2",
        dead_fraction: float = 0.0,
        module_shape: tuple[int, int] | None = None,
        gap_pixels: int = 2,
    ) -> None:
        if not 0.0 <= hit_fraction <= 1.0:
            raise ValueError(f"hit_fraction must be in [0, 1], got {hit_fraction}")
        if spot_sigma_px < 0.5:
            raise ValueError(f"spot_sigma_px must be >= 0.5 (sub-pixel centroids), got {spot_sigma_px}")
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        self.shape = shape
        self.seed = seed
        self.pool = pool
        self.dtype = np.dtype(dtype)
        self.sigma = spot_sigma_px
        self.background = self._background(shape, geometry, background, halo_counts, ring_counts, calibrant)
        self.beamstop = beamstop_mask(shape, geometry)
        self.background[self.beamstop] = 0.0
        self.mask = defect_mask(shape, seed, dead_fraction, module_shape, gap_pixels)
        blocked = self.beamstop if self.mask is None else self.beamstop | self.mask
        self._half = math.ceil(4.0 * spot_sigma_px) + 1  # a spot's window: centre pixel +- half
        separation = 8.0 * spot_sigma_px if min_separation_px is None else min_separation_px
        hits = np.random.default_rng([seed, _HITS]).permutation(pool) < round(hit_fraction * pool)
        self._spots: list[np.ndarray] = []  # per pattern: (n, 3) row, col, intensity
        patterns = []
        for index in range(pool):
            rng = np.random.default_rng([seed, index, _LAYOUT])
            spots = np.zeros((0, 3))
            if hits[index]:
                wanted = max(1, int(rng.poisson(spots_per_hit)))
                spots = self._place(rng, wanted, blocked, separation, mean_intensity)
            self._spots.append(spots)
            patterns.append(SpotFrameTruth(index, bool(hits[index]), self._spot_truth(spots)))
        self.truth = SpotTruth(tuple(patterns), round(hit_fraction * pool) / pool, spot_sigma_px)
        self._draws: dict[int, np.ndarray] = {}

    @staticmethod
    def _background(
        shape: tuple[int, int],
        geometry: Geometry,
        level: float,
        halo_counts: float,
        ring_counts: float,
        calibrant: str,
    ) -> np.ndarray:
        out = level * geometry.solid_angle(shape)
        if halo_counts:
            q_halo = 2.0 * math.pi / 0.32  # nm^-1, d = 3.2 A: liquid water / solvent
            out += halo_counts * np.exp(-0.5 * ((geometry.q_nm(shape) - q_halo) / 3.0) ** 2)
        if ring_counts:
            rings = PowderFrames(
                shape,
                geometry,
                d_spacings=calibrant_d_spacings(calibrant),
                peak_counts=ring_counts,
                background=0.0,
                ring_width_deg=0.15,
            )
            out += rings.expected
        return out

    def _place(
        self, rng: np.random.Generator, wanted: int, blocked: np.ndarray, separation: float, mean: float
    ) -> np.ndarray:
        """Up to ``wanted`` spots, uniform over the live area, windows clear of masked pixels."""
        rows, cols = self.shape
        half = self._half
        if rows <= 2 * half + 1 or cols <= 2 * half + 1:
            return np.zeros((0, 3))
        placed: list[tuple[float, float, float]] = []
        for _ in range(50 * wanted):
            if len(placed) == wanted:
                break
            r = rng.uniform(half, rows - 1 - half)
            c = rng.uniform(half, cols - 1 - half)
            intensity = float(rng.exponential(mean))
            r0, c0 = round(r), round(c)
            if blocked[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1].any():
                continue
            if any((r - pr) ** 2 + (c - pc) ** 2 < separation**2 for pr, pc, _ in placed):
                continue
            placed.append((r, c, intensity))
        return np.asarray(placed, dtype=np.float64).reshape(-1, 3)

    def _spot_truth(self, spots: np.ndarray) -> tuple[Spot, ...]:
        noise_pixels = 4.0 * math.pi * self.sigma**2
        out = []
        for r, c, intensity in spots.tolist():
            local = float(self.background[round(r), round(c)])
            snr = intensity / math.sqrt(intensity + local * noise_pixels) if intensity > 0 else 0.0
            out.append(Spot(r, c, intensity, snr))
        return tuple(out)

    def _expected(self, pattern: int) -> np.ndarray:
        image = self.background.copy()
        half = self._half
        width = 2 * half + 1
        for r, c, intensity in self._spots[pattern]:
            r0, c0 = round(r) - half, round(c) - half
            profile = np.outer(
                _pixel_integrals(r, self.sigma, r0, width), _pixel_integrals(c, self.sigma, c0, width)
            )
            image[r0 : r0 + width, c0 : c0 + width] += intensity * profile
        return image

    def frame(self, number: int) -> np.ndarray:
        """Frame ``number``: pattern ``number % pool`` with its own Poisson realisation."""
        pattern = number % self.pool
        cached = self._draws.get(pattern)
        if cached is None:
            cached = poisson_frame(self._expected(pattern), [self.seed, pattern], self.dtype, self.mask)
            self._draws[pattern] = cached
        return cached

    def expected_frame(self, number: int) -> np.ndarray:
        image = self._expected(number % self.pool)
        if self.mask is not None:
            image[self.mask] = 0.0
        return image

    def frame_truth(self, number: int) -> SpotFrameTruth:
        return self.truth.patterns[number % self.pool]


# --------------------------------------------------------------------------------------------------
# tomography


class Ellipsoid(NamedTuple):
    """One ellipsoid of a phantom, in units of the phantom's half-size; ``phi_deg`` turns it about z.

    ``value`` adds to the attenuation inside it (overlapping ellipsoids add, as in Shepp-Logan).
    """

    value: float
    a: float
    b: float
    c: float
    x0: float
    y0: float
    z0: float
    phi_deg: float


# The modified 3D Shepp-Logan phantom (Toft's contrast, Kak & Slaney's ellipsoids as in Schabel's
# phantom3d), with the two 10-degree tilts out of the slice plane dropped so every slice is a set of
# exact ellipses.
SHEPP_LOGAN_3D = (
    Ellipsoid(1.0, 0.6900, 0.920, 0.810, 0.0, 0.0, 0.0, 0.0),
    Ellipsoid(-0.8, 0.6624, 0.874, 0.780, 0.0, -0.0184, 0.0, 0.0),
    Ellipsoid(-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0, 0.0, -18.0),
    Ellipsoid(-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0, 0.0, 18.0),
    Ellipsoid(0.1, 0.2100, 0.250, 0.410, 0.0, 0.35, -0.15, 0.0),
    Ellipsoid(0.1, 0.0460, 0.046, 0.050, 0.0, 0.1, 0.25, 0.0),
    Ellipsoid(0.1, 0.0460, 0.046, 0.050, 0.0, -0.1, 0.25, 0.0),
    Ellipsoid(0.1, 0.0460, 0.023, 0.050, -0.08, -0.605, 0.0, 0.0),
    Ellipsoid(0.1, 0.0230, 0.023, 0.020, 0.0, -0.606, 0.0, 0.0),
    Ellipsoid(0.1, 0.0230, 0.046, 0.020, 0.06, -0.605, 0.0, 0.0),
)


@dataclass(frozen=True)
class EllipsoidPhantom:
    """A phantom of ellipsoids seen by a ``shape = (rows, cols)`` detector, rotating about the vertical.

    Detector row ``r`` sees the slice at ``z = ((rows - 1) / 2 - r) / (rows / 2)``; a slice is a
    ``cols x cols`` image whose pixel ``(i, j)`` sits at ``x = (j - cols // 2) / scale``,
    ``y = (cols // 2 - i) / scale`` (``scale = 0.45 * cols`` pixels). Attenuation is
    ``mu_per_pixel * value`` per pixel length. The projection at angle ``theta`` reads, at detector
    column ``k``, the line integral along ``y`` rotated by ``theta`` at offset
    ``t = (k - axis_col)`` from the axis, ``t = X cos(theta) - Y sin(theta)`` with ``X = j - cols // 2``,
    ``Y = i - cols // 2``: the convention of ``skimage.transform.radon`` and of `kernels.fbp`, so a
    reconstruction of row ``r`` compares pixel for pixel with ``slice(r)`` when ``axis_col = cols // 2``.
    Slices and projections are point-sampled at pixel centres.
    """

    shape: tuple[int, int]
    mu_per_pixel: float
    axis_col: float
    ellipsoids: tuple[Ellipsoid, ...] = SHEPP_LOGAN_3D

    @property
    def scale(self) -> float:
        return 0.45 * self.shape[1]

    def _z(self, rows: np.ndarray) -> np.ndarray:
        return ((self.shape[0] - 1) / 2.0 - rows) / (self.shape[0] / 2.0)

    def slice(self, row: int) -> np.ndarray:
        """Attenuation (per pixel length) of the slice detector row ``row`` sees, ``cols x cols``."""
        n = self.shape[1]
        centre = n // 2
        z = float(self._z(np.asarray(row)))
        X = (np.arange(n, dtype=np.float64) - centre)[None, :]
        Y = (np.arange(n, dtype=np.float64) - centre)[:, None]
        out = np.zeros((n, n))
        for e in self.ellipsoids:
            k2 = 1.0 - ((z - e.z0) / e.c) ** 2
            if k2 <= 0.0:
                continue
            phi = math.radians(e.phi_deg)
            # Image coordinates: y up is -Y; the major axis direction u = (cos phi, -sin phi) in (X, Y).
            dx = X - e.x0 * self.scale
            dy = Y + e.y0 * self.scale
            along = dx * math.cos(phi) - dy * math.sin(phi)
            across = dx * math.sin(phi) + dy * math.cos(phi)
            inside = (along / e.a) ** 2 + (across / e.b) ** 2 <= k2 * self.scale**2
            out[inside] += e.value * self.mu_per_pixel
        return out

    def volume(self) -> np.ndarray:
        """Every slice, ``(rows, cols, cols)``: mind the memory for large detectors."""
        return np.stack([self.slice(r) for r in range(self.shape[0])])

    def line_integrals(self, angle_deg: float) -> np.ndarray:
        """The exact projection (integral of mu along each ray) at this angle, ``shape`` float64."""
        rows, cols = self.shape
        theta = math.radians(angle_deg)
        n = (math.cos(theta), -math.sin(theta))  # t = n . (X, Y)
        t = np.arange(cols, dtype=np.float64) - self.axis_col
        z = self._z(np.arange(rows, dtype=np.float64))
        out = np.zeros((rows, cols))
        for e in self.ellipsoids:
            k2 = 1.0 - ((z - e.z0) / e.c) ** 2
            live = np.nonzero(k2 > 0.0)[0]
            if live.size == 0:
                continue
            phi = math.radians(e.phi_deg)
            u = (math.cos(phi), -math.sin(phi))
            v = (math.sin(phi), math.cos(phi))
            a, b = e.a * self.scale, e.b * self.scale
            nu = n[0] * u[0] + n[1] * u[1]
            nv = n[0] * v[0] + n[1] * v[1]
            r2 = a * a * nu * nu + b * b * nv * nv  # squared half-width of the shadow, unit slice
            offset = n[0] * e.x0 * self.scale - n[1] * e.y0 * self.scale
            s2 = (t - offset) ** 2
            chord = np.sqrt(np.maximum(k2[live, None] * r2 - s2[None, :], 0.0))
            out[live] += (e.value * self.mu_per_pixel * 2.0 * a * b / r2) * chord
        return out


@dataclass(frozen=True)
class TomoFrameTruth:
    """One frame of a tomography scan: ``kind`` is dark, flat or projection; angle only for projections."""

    index: int
    kind: str
    angle_deg: float | None
    projection: int | None


@dataclass(frozen=True)
class TomoTruth:
    """Run-level truth of a scan: the frame sequence, the phantom, and the dark and flat images."""

    kinds: tuple[str, ...]
    angles_deg: tuple[float, ...]
    phantom: EllipsoidPhantom
    dark: np.ndarray = field(repr=False)
    flat: np.ndarray = field(repr=False)

    @property
    def scan_length(self) -> int:
        return len(self.kinds)


class TomoFrames:
    """Seeded tomography scans of a 3D Shepp-Logan phantom: darks, flats, projections, (flats)."""

    mode = "tomo"

    def __init__(
        self,
        shape: tuple[int, int],
        geometry: Geometry | None = None,
        seed: int = 1234,
        pool: int = 32,
        dtype: str = "uint16",
        n_angles: int = 180,
        n_darks: int = 10,
        n_flats: int = 10,
        n_flats_end: int = 0,
        flat_counts: float = 20000.0,
        dark_counts: float = 100.0,
        max_attenuation: float = 2.0,
        gain_spread: float = 0.02,
        beam_height: float = 1.5,
        axis_offset_px: float = 0.0,
        start_deg: float = 0.0,
        range_deg: float = 180.0,
        turns: int = 1,
        cache_bytes: int = 512 * 2**20,
        dead_fraction: float = 0.0,
        module_shape: tuple[int, int] | None = None,
        gap_pixels: int = 2,
    ) -> None:
        """``geometry`` and ``pool`` are unused (the scan length is the cycle); accepted for `make_source`.

        ``max_attenuation`` is the largest line integral through the phantom at 0 and 90 degrees;
        ``beam_height`` the vertical Gaussian beam profile's sigma in units of half the detector height;
        ``gain_spread`` the relative spread of a fixed per-pixel response in the flat. ``turns`` > 1: a
        continuous rotation (a fly scan) over that many full turns, ``range_deg`` +-360: the ``n_angles``
        projections of a turn repeated, their angles going on by ``range_deg`` each turn (a projection
        and its repeat a turn later show the same pixels: the sample is where it was).
        """
        if n_angles < 1 or min(n_darks, n_flats, n_flats_end) < 0:
            raise ValueError("n_angles must be >= 1 and n_darks, n_flats, n_flats_end >= 0")
        if turns < 1 or (turns > 1 and abs(range_deg) != 360.0):
            raise ValueError(
                f"turns must be >= 1, and more than 1 only with range_deg +-360 (full turns), got {turns}"
                f" turns of {range_deg} degrees"
            )
        if not (math.isfinite(start_deg) and math.isfinite(range_deg) and range_deg != 0):
            raise ValueError(
                f"start_deg must be finite and range_deg finite and not 0, got {start_deg}, {range_deg}"
            )
        self.shape = shape
        self.seed = seed
        self.dtype = np.dtype(dtype)
        self.cache_bytes = cache_bytes
        rows, cols = shape
        kinds = ("dark",) * n_darks + ("flat",) * n_flats + ("projection",) * (n_angles * turns)
        kinds += ("flat",) * n_flats_end
        # n_angles steps over range_deg from start_deg (a negative range: a scan in descending angles),
        # each turn range_deg on from the one before
        steps = np.arange(n_angles) * (range_deg / n_angles)
        angles = tuple(float(start_deg + turn * range_deg + a) for turn in range(turns) for a in steps)
        self.n_angles = n_angles
        axis = cols // 2 + axis_offset_px
        #: the rotation axis, in detector columns (pixel centres at whole numbers): the truth the
        #: reconstruction's estimate is checked against
        self.axis_px = float(axis)
        unit = EllipsoidPhantom(shape, 1.0, axis)
        peak = max(float(unit.line_integrals(0.0).max()), float(unit.line_integrals(90.0).max()))
        phantom = EllipsoidPhantom(shape, max_attenuation / peak if peak > 0 else 0.0, axis)
        rng = np.random.default_rng([seed, _TOMO_PATTERN])
        z = (np.arange(rows) - (rows - 1) / 2.0) / (rows / 2.0)
        profile = np.exp(-0.5 * (z / beam_height) ** 2)[:, None] * np.ones((1, cols))
        flat = flat_counts * profile * (1.0 + gain_spread * rng.standard_normal(shape)).clip(0.5, 1.5)
        dark = dark_counts * (1.0 + 0.05 * rng.standard_normal(shape)).clip(0.5, 1.5)
        self.mask = defect_mask(shape, seed, dead_fraction, module_shape, gap_pixels)
        self.truth = TomoTruth(kinds, angles, phantom, dark, flat)
        self._first_projection = n_darks + n_flats
        self._draws: dict[int, np.ndarray] = {}

    @property
    def scan_length(self) -> int:
        return self.truth.scan_length

    def frame_truth(self, number: int) -> TomoFrameTruth:
        index = number % self.scan_length
        kind = self.truth.kinds[index]
        if kind != "projection":
            return TomoFrameTruth(index, kind, None, None)
        p = index - self._first_projection
        return TomoFrameTruth(index, kind, self.truth.angles_deg[p], p)

    def _expected(self, index: int) -> np.ndarray:
        info = self.frame_truth(index)
        if info.kind == "dark":
            return self.truth.dark.copy()
        if info.kind == "flat":
            return self.truth.flat + self.truth.dark
        assert info.angle_deg is not None
        transmission = np.exp(-self.truth.phantom.line_integrals(info.angle_deg))
        return self.truth.flat * transmission + self.truth.dark

    def expected_frame(self, number: int) -> np.ndarray:
        image = self._expected(number % self.scan_length)
        if self.mask is not None:
            image[self.mask] = 0.0
        return image

    def frame(self, number: int) -> np.ndarray:
        """Frame ``number`` of the repeating scan (frame ``n`` shows scan index ``n % scan_length``)."""
        index = number % self.scan_length
        p = index - self._first_projection
        if self.n_angles <= p < len(self.truth.angles_deg):  # a later turn's: the first turn's pixels
            index -= p - p % self.n_angles
        cached = self._draws.get(index)
        if cached is None:
            cached = poisson_frame(self._expected(index), [self.seed, index], self.dtype, self.mask)
            if (len(self._draws) + 1) * cached.nbytes <= self.cache_bytes:
                self._draws[index] = cached
        return cached


# --------------------------------------------------------------------------------------------------
# the factory

_CLASSES: dict[str, type] = {"rings": PowderFrames, "spots": SpotFrames, "tomo": TomoFrames}


def mode_options(mode: str) -> dict[str, Any]:
    """The options a mode takes beyond ``shape, geometry, seed, pool, dtype``, with their defaults."""
    if mode not in _CLASSES:
        raise ValueError(f"unknown simulator mode {mode!r}; choose one of {', '.join(MODES)}")
    params = inspect.signature(_CLASSES[mode]).parameters
    skip = {"shape", "geometry", "seed", "pool", "dtype"}
    options = {name: p.default for name, p in params.items() if name not in skip}
    if mode == "rings":
        options["calibrant"] = "CeO2"
    return options


def make_source(
    mode: str,
    shape: tuple[int, int],
    geometry: Geometry | None = None,
    seed: int = 1234,
    pool: int = 32,
    dtype: str = "uint16",
    **options: Any,
) -> SimFrameSource:
    """The simulated frame source for ``mode`` (rings, spots or tomo); unknown options are an error.

    ``geometry`` defaults to ``Geometry()`` (tomo ignores it). For rings, ``calibrant`` (CeO2, LaB6, Si)
    chooses the d-spacings; ``rings`` with only the shared arguments is exactly ``PowderFrames``.
    """
    allowed = mode_options(mode)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"mode {mode!r} takes no option {', '.join(unknown)}; it takes {', '.join(allowed)}")
    geometry = Geometry() if geometry is None else geometry
    if mode == "rings" and "calibrant" in options:
        calibrant = options.pop("calibrant")
        if "d_spacings" in options:
            raise ValueError("give rings either calibrant or d_spacings, not both")
        options["d_spacings"] = calibrant_d_spacings(calibrant)
    source: SimFrameSource = _CLASSES[mode](shape, geometry, seed=seed, pool=pool, dtype=dtype, **options)
    return source


__all__ = [
    "MODES",
    "SHEPP_LOGAN_3D",
    "Ellipsoid",
    "EllipsoidPhantom",
    "PowderFrames",
    "RingTruth",
    "SimFrameSource",
    "Spot",
    "SpotFrameTruth",
    "SpotFrames",
    "SpotTruth",
    "TomoFrameTruth",
    "TomoFrames",
    "TomoTruth",
    "make_source",
    "mode_options",
]
