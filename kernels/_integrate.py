"""Azimuthal integration without pixel splitting, bin for bin what pyFAI's histogram engine returns.

Everything that does not change from frame to frame is done once, at setup: the radial (and azimuthal)
position of every pixel, its bin number (masked and out-of-range pixels get the sentinel ``nbins``), the
per-bin sums of the normalisation (flat x solid angle x polarisation), of its square, of the dark and the
pixel counts. Per frame only the signal (and for Poisson errors ``max(1, raw)``) is summed per bin by the
backend, so a frame is read exactly once.

pyFAI's conventions, checked against ``integrate1d``/``integrate2d`` with method ("no", "histogram",
"cython") (pyFAI 2026.9):

* positions are binned in the unit's internal scale (2theta in radians, q in nm^-1); only the bin centres
  are scaled to the requested unit;
* 1D range: ``[min, max * (1 + 2**-23)]`` over *all* pixels, masked ones included;
* 2D range: radial ``[max(0, min), max * (1 + 2**-23)]`` and chi ``[min, max * (1 + 2**-23)]`` over the
  unmasked pixels, chi in ]-pi, pi] (discontinuity at pi);
* bin = ``floor((x - lo) / ((hi - lo) / npt))``; centres ``lo + (i + 0.5) * delta``;
* intensity = sum(raw - dark) / sum(flat * solid angle * polarisation); empty bins give 0;
* Poisson model: variance = max(1, raw); sigma (pyFAI's ``sigma``, the standard error of the mean) =
  sqrt(sum variance) / sum normalisation; std = sqrt(sum variance / sum normalisation^2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels._geometry import Geometry

if TYPE_CHECKING:
    from kernels._registry import Backend

EPS32 = 1.0 + 2.0**-23  # pyFAI's upper-bound stretch, float32(1.0000001)
ERROR_MODELS = (None, "poisson")


@dataclass
class IntegrationResult:
    """One integrated frame; 2D arrays are (npt_azim, npt_rad) like pyFAI's ``integrate2d``."""

    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None
    std: np.ndarray | None
    sum_signal: np.ndarray
    sum_variance: np.ndarray | None
    sum_normalization: np.ndarray
    count: np.ndarray
    unit: str
    azimuthal: np.ndarray | None = None


def _bin_index(x: np.ndarray, lo: float, hi: float, npt: int) -> np.ndarray:
    delta = (hi - lo) / npt
    index = np.floor((x - lo) / delta)
    index[~((index >= 0) & (index < npt))] = -1
    return index.astype(np.int64)


def _smallest_index_dtype(nbins: int) -> np.dtype[Any]:
    # The sentinel ``nbins`` must fit too; uint16 halves the index traffic for 1D profiles.
    return np.dtype(np.uint16) if nbins < np.iinfo(np.uint16).max else np.dtype(np.int32)


# per frame: intensity, sum of signal, and with Poisson errors sum of variance, sigma, std (else None)
#: intensity, sum_signal, sum_variance, sigma, std, sum_normalization, count (the last two per frame:
#: its own excluded pixels taken out)
_Parts = tuple[
    np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray
]


class _Integrator:
    """Shared setup of the 1D and 2D integrators."""

    radial: np.ndarray
    azimuthal: np.ndarray | None = None

    def __init__(
        self,
        backend: Backend,
        geometry: Geometry,
        shape: tuple[int, int],
        unit: str,
        mask: np.ndarray | None,
        dark: np.ndarray | None,
        flat: np.ndarray | None,
        correct_solid_angle: bool,
        polarization_factor: float | None,
        error_model: str | None,
    ) -> None:
        if error_model not in ERROR_MODELS:
            raise ValueError(f"error_model {error_model!r} not supported; use None or 'poisson'")
        self.backend = backend
        self.geometry = geometry
        self.shape = (int(shape[0]), int(shape[1]))
        self.unit = unit
        self.error_model = error_model
        self.position, self.scale = geometry.radial(self.shape, unit)
        self.static_valid = np.ones(self.shape, dtype=bool) if mask is None else ~np.asarray(mask, bool)
        if self.static_valid.shape != self.shape:
            raise ValueError(f"mask shape {self.static_valid.shape} differs from frame shape {self.shape}")
        norm = np.ones(self.shape, dtype=np.float64)
        if flat is not None:
            norm *= np.asarray(flat, dtype=np.float32)
        if correct_solid_angle:
            norm *= geometry.solid_angle(self.shape)
        if polarization_factor is not None:
            norm *= geometry.polarization(self.shape, polarization_factor)
        self.normalization = norm
        # A pixel the normalisation cannot scale (dead flat, NaN) is as good as masked.
        self.valid = self.static_valid & np.isfinite(norm) & (norm != 0)
        self.dark = None if dark is None else np.asarray(dark, dtype=np.float32)

    def _finish_setup(self, index: np.ndarray, nbins: int) -> None:
        index = np.where(self.valid & (index >= 0), index, nbins)
        self.nbins = nbins
        self.bins = np.ascontiguousarray(index.astype(_smallest_index_dtype(nbins)))
        flat_index = index.ravel()
        self.count = np.bincount(flat_index, minlength=nbins + 1)[:nbins].astype(np.float64)
        norm = self.normalization.ravel()
        self.sum_normalization = np.bincount(flat_index, norm, nbins + 1)[:nbins]
        self.sum_normalization2 = np.bincount(flat_index, norm * norm, nbins + 1)[:nbins]
        self.sum_dark = (
            None if self.dark is None else np.bincount(flat_index, self.dark.ravel(), nbins + 1)[:nbins]
        )
        self._empty = self.count == 0
        self._summer = self.backend.module.BinSummer(self.bins, nbins)

    def _integrate(self, frame: Any, excluded: np.ndarray | None = None) -> _Parts:
        self._check(frame)
        sums = self._summer(frame, self.error_model == "poisson")
        if excluded is None:
            return self._normalised(*sums)
        return self._normalised(*sums, less=self._excluded_sums(frame, excluded))

    def _excluded_sums(self, frame: Any, excluded: np.ndarray) -> dict[str, np.ndarray]:
        """Per-bin sums over the pixels of ``excluded`` (bool, the frame's shape) that the integration
        counts: what one frame's own missing pixels (a UDP frame's lost packets) take out of its bins."""
        excluded = np.asarray(excluded, bool)
        if excluded.shape != self.shape:
            raise ValueError(f"excluded pixels {excluded.shape} differ from the frame shape {self.shape}")
        index = self.bins[excluded].astype(np.intp)  # nbins: a pixel the integration never counts
        values = np.asarray(frame)[excluded].astype(np.float64)
        n = self.nbins + 1
        norm = self.normalization[excluded]
        out = {
            "count": np.bincount(index, minlength=n)[: self.nbins].astype(np.float64),
            "signal": np.bincount(index, values, n)[: self.nbins],
            "variance": np.bincount(index, np.maximum(1.0, values), n)[: self.nbins],
            "norm": np.bincount(index, norm, n)[: self.nbins],
            "norm2": np.bincount(index, norm * norm, n)[: self.nbins],
        }
        if self.dark is not None:
            out["dark"] = np.bincount(index, self.dark[excluded], n)[: self.nbins]
        return out

    @property
    def overlaps(self) -> bool:
        """True when ``submit_full`` returns before the frame is integrated (the GPU's feed)."""
        return hasattr(self._summer, "submit")

    def _submit(self, frame: Any) -> Callable[[], _Parts]:
        """Start integrating ``frame``; the returned call waits and gives what ``_integrate`` gives. On
        a backend whose sums run while the caller goes on (the GPU's ``BinSummer.submit``: this frame's
        copy and kernel overlap the caller's next frame) the call waits for them; elsewhere the frame is
        integrated now and the call only hands the result over."""
        self._check(frame)
        with_variance = self.error_model == "poisson"
        submit = getattr(self._summer, "submit", None)
        if submit is None:
            done = self._normalised(*self._summer(frame, with_variance))
            return lambda: done
        pending = submit(frame, with_variance)
        return lambda: self._normalised(*pending())

    def _check(self, frame: Any) -> None:
        if tuple(frame.shape) != self.shape:
            raise ValueError(f"frame shape {tuple(frame.shape)} differs from integrator shape {self.shape}")

    def _normalised(
        self,
        sum_signal: np.ndarray,
        sum_variance: np.ndarray | None,
        less: dict[str, np.ndarray] | None = None,
    ) -> _Parts:
        sum_dark, norm, norm2, count = (
            self.sum_dark,
            self.sum_normalization,
            self.sum_normalization2,
            self.count,
        )
        if less is not None:  # this frame's excluded pixels (`_excluded_sums`) taken out of every sum
            sum_signal = sum_signal - less["signal"]
            sum_variance = None if sum_variance is None else sum_variance - less["variance"]
            sum_dark = None if sum_dark is None else sum_dark - less["dark"]
            norm, norm2, count = norm - less["norm"], norm2 - less["norm2"], count - less["count"]
        if sum_dark is not None:
            sum_signal = sum_signal - sum_dark
        keep = count > 0
        intensity = np.zeros(self.nbins)
        np.divide(sum_signal, norm, out=intensity, where=keep)
        if sum_variance is None:
            return intensity, sum_signal, None, None, None, norm, count
        sigma = np.zeros(self.nbins)
        std = np.zeros(self.nbins)
        np.divide(np.sqrt(sum_variance), norm, out=sigma, where=keep)
        np.sqrt(np.divide(sum_variance, norm2, out=std, where=keep), out=std)
        return intensity, sum_signal, sum_variance, sigma, std, norm, count


class Integrator1D(_Integrator):
    """Azimuthal integration to a 1D profile (no pixel splitting), equal to pyFAI's histogram engine.

    ``unit`` is one of ``2th_deg``, ``2th_rad``, ``q_nm^-1``, ``q_A^-1``. ``integrate(frame)`` returns the
    intensity per bin (float64, length npt); ``integrate_full`` adds errors, sums and counts. Defaults
    (no dark, flat, solid angle or polarisation) make the intensity the plain mean per bin.
    """

    def __init__(
        self,
        backend: Backend,
        geometry: Geometry,
        shape: tuple[int, int],
        npt: int,
        unit: str = "2th_deg",
        mask: np.ndarray | None = None,
        *,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        correct_solid_angle: bool = False,
        polarization_factor: float | None = None,
        error_model: str | None = None,
        radial_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(
            backend,
            geometry,
            shape,
            unit,
            mask,
            dark,
            flat,
            correct_solid_angle,
            polarization_factor,
            error_model,
        )
        if npt < 1:
            raise ValueError(f"npt must be >= 1, got {npt}")
        self.npt = int(npt)
        x = self.position
        if radial_range is None:
            lo, hi = float(x.min()), float(x.max()) * EPS32
        else:
            lo, hi = float(min(radial_range)) / self.scale, float(max(radial_range)) / self.scale * EPS32
        self.edges = np.linspace(lo, hi, self.npt + 1) * self.scale
        delta = (hi - lo) / self.npt
        self.radial = (lo + (np.arange(self.npt) + 0.5) * delta) * self.scale
        self._finish_setup(_bin_index(x, lo, hi, self.npt), self.npt)

    def integrate(self, frame: Any) -> np.ndarray:
        """Intensity per radial bin, float64."""
        return self._integrate(frame)[0]

    def integrate_full(self, frame: Any, excluded: np.ndarray | None = None) -> IntegrationResult:
        """Intensity, errors (with ``error_model="poisson"``), the per-bin sums and counts. ``excluded``
        (bool, the frame's shape) are pixels of this frame alone to leave out, as if masked."""
        return self._full(self._integrate(frame, excluded))

    def submit_full(self, frame: Any) -> Callable[[], IntegrationResult]:
        """``integrate_full`` started now and collected by the returned call (see ``_submit``): on the GPU
        the caller can hand on the next frame while this one's copy and kernel run."""
        pending = self._submit(frame)
        return lambda: self._full(pending())

    def _full(self, parts: _Parts) -> IntegrationResult:
        intensity, sum_signal, sum_variance, sigma, std, norm, count = parts
        return IntegrationResult(
            self.radial, intensity, sigma, std, sum_signal, sum_variance, norm, count, self.unit
        )


class Integrator2D(_Integrator):
    """Integration to a (npt_azim, npt_rad) cake (no pixel splitting), equal to pyFAI's ``integrate2d``.

    ``azimuthal`` holds the chi bin centres in degrees, ``radial`` the radial ones in ``unit``;
    ``azimuthal_edges`` and ``edges`` their bin edges (one more each).
    """

    def __init__(
        self,
        backend: Backend,
        geometry: Geometry,
        shape: tuple[int, int],
        npt_rad: int,
        npt_azim: int = 360,
        unit: str = "2th_deg",
        mask: np.ndarray | None = None,
        *,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        correct_solid_angle: bool = False,
        polarization_factor: float | None = None,
        error_model: str | None = None,
    ) -> None:
        super().__init__(
            backend,
            geometry,
            shape,
            unit,
            mask,
            dark,
            flat,
            correct_solid_angle,
            polarization_factor,
            error_model,
        )
        if npt_rad < 1 or npt_azim < 1:
            raise ValueError(f"npt_rad and npt_azim must be >= 1, got {npt_rad}, {npt_azim}")
        self.npt_rad, self.npt_azim = int(npt_rad), int(npt_azim)
        x = self.position
        chi = geometry.chi(self.shape)
        inside = self.static_valid
        if not inside.any():
            raise ValueError("every pixel is masked")
        lo, hi = max(0.0, float(x[inside].min())), float(x[inside].max()) * EPS32
        alo, ahi = float(chi[inside].min()), float(chi[inside].max()) * EPS32
        self.edges = np.linspace(lo, hi, self.npt_rad + 1) * self.scale
        self.radial = (lo + (np.arange(self.npt_rad) + 0.5) * (hi - lo) / self.npt_rad) * self.scale
        self.azimuthal_edges = np.degrees(np.linspace(alo, ahi, self.npt_azim + 1))
        self.azimuthal = np.degrees(alo + (np.arange(self.npt_azim) + 0.5) * (ahi - alo) / self.npt_azim)
        radial_index = _bin_index(x, lo, hi, self.npt_rad)
        azimuthal_index = _bin_index(chi, alo, ahi, self.npt_azim)
        index = np.where(
            (radial_index >= 0) & (azimuthal_index >= 0), azimuthal_index * self.npt_rad + radial_index, -1
        )
        self._finish_setup(index, self.npt_rad * self.npt_azim)

    def _cake(self, values: np.ndarray) -> np.ndarray:
        return values.reshape(self.npt_azim, self.npt_rad)

    def integrate(self, frame: Any) -> np.ndarray:
        """Intensity per (azimuthal, radial) bin, float64."""
        return self._cake(self._integrate(frame)[0])

    def integrate_full(self, frame: Any, excluded: np.ndarray | None = None) -> IntegrationResult:
        """Intensity, errors (with ``error_model="poisson"``), the per-bin sums and counts, all 2D;
        ``excluded`` as for the 1D profile."""
        intensity, sum_signal, sum_variance, sigma, std, norm, count = self._integrate(frame, excluded)
        return IntegrationResult(
            self.radial,
            self._cake(intensity),
            None if sigma is None else self._cake(sigma),
            None if std is None else self._cake(std),
            self._cake(sum_signal),
            None if sum_variance is None else self._cake(sum_variance),
            self._cake(norm),
            self._cake(count),
            self.unit,
            self.azimuthal,
        )
