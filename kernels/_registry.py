"""One registry for every kernel backend, with a logged fallback chain GPU -> numba -> NumPy."""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from kernels._geometry import Geometry
from kernels._integrate import Integrator1D, Integrator2D
from kernels._peaks import PeakFinder
from kernels._roi import RoiSet, RoiStats, preview, roi_stats
from kernels._tomo import StreamingReconstructor, fbp

log = logging.getLogger(__name__)

_FALLBACK = ("gpu", "numba", "numpy")
_MODULES = {
    "numpy": "kernels._numpy_backend",
    "numba": "kernels._numba_backend",
    "gpu": "kernels._gpu_backend",
}


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run here; the message says how to get it."""


@dataclass
class Backend:
    """A set of kernels that share one implementation strategy."""

    name: str
    module: ModuleType
    degraded_from: list[str] = field(default_factory=list)

    def limit_threads(self, threads: int) -> None:
        """Run this backend's parallel kernels on at most ``threads`` CPU threads when called from the
        calling thread (numba's setting is per thread; other backends have nothing to limit)."""
        limit = getattr(self.module, "limit_threads", None)
        if limit is not None:
            limit(threads)

    def correct(self, raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self.module.correct(raw, dark, gain, out)

    def histogram(self, values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
        return self.module.histogram(values, bins, npt)

    def jungfrau_convert(
        self, raw: np.ndarray, pedestal: np.ndarray, gain: np.ndarray, out: np.ndarray
    ) -> np.ndarray:
        """JUNGFRAU three-gain pedestal/gain conversion; see ``kernels._numpy_backend.jungfrau_convert``."""
        return self.module.jungfrau_convert(raw, pedestal, gain, out)

    def integrator(self, geometry: Geometry, shape: tuple[int, int], npt: int, **kwargs: Any) -> Integrator1D:
        """A 1D integrator (see :class:`kernels.Integrator1D` for the keywords)."""
        return Integrator1D(self, geometry, shape, npt, **kwargs)

    def integrator2d(
        self, geometry: Geometry, shape: tuple[int, int], npt_rad: int, npt_azim: int = 360, **kwargs: Any
    ) -> Integrator2D:
        """A 2D (radial x azimuthal) integrator (see :class:`kernels.Integrator2D`)."""
        return Integrator2D(self, geometry, shape, npt_rad, npt_azim, **kwargs)

    # ---- tomography (see kernels._tomo) ----

    def flat_field(
        self, raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, out: np.ndarray, minus_log: bool = True
    ) -> np.ndarray:
        """Float32 ``(raw - dark) / (flat - dark)``, with ``minus_log`` ``-log(max(T, 1e-6))``."""
        return self.module.flat_field(raw, dark, flat, out, minus_log)

    def backproject(
        self, filtered: np.ndarray, angles_rad: np.ndarray, axis: float, circle: bool, out: np.ndarray
    ) -> np.ndarray:
        """Add the (unscaled) back-projection of filtered projections into float32 ``out``."""
        return self.module.backproject(filtered, angles_rad, axis, circle, out)

    def fbp(self, sinogram: np.ndarray, theta: Any = None, **kwargs: Any) -> np.ndarray:
        """Filtered back-projection of a ``(n_angles, n_detector)`` sinogram; see :func:`kernels.fbp`."""
        return fbp(self, sinogram, theta, **kwargs)

    def streaming_reconstructor(self, n_cols: int, rows: Any, **kwargs: Any) -> StreamingReconstructor:
        """Reconstruct detector ``rows`` as projections arrive (:class:`kernels.StreamingReconstructor`)."""
        return StreamingReconstructor(self, n_cols, rows, **kwargs)

    # ---- peak finding, ROI statistics, preview ----

    def peak_finder(self, shape: tuple[int, int], **kwargs: Any) -> PeakFinder:
        """A peakfinder8-style finder and hit classifier; see :class:`kernels.PeakFinder`."""
        return PeakFinder(self, shape, **kwargs)

    def roi_stats(self, frame: np.ndarray, rois: RoiSet) -> RoiStats:
        """Sum, mean, max and count of ``frame`` over each ROI of ``rois``."""
        return roi_stats(self, frame, rois)

    def preview(self, frame: np.ndarray, factor: int = 4, **kwargs: Any) -> np.ndarray:
        """8-bit preview: mean-binned by ``factor``, log (default) or linear scale; see ``kernels._roi``."""
        return preview(self, frame, factor, **kwargs)

    def bin_frame(self, frame: np.ndarray, factor: int) -> np.ndarray:
        """Float32 mean over ``factor x factor`` blocks."""
        return self.module.bin_frame(frame, int(factor))


def _load(name: str) -> Backend:
    if name not in _MODULES:
        raise BackendUnavailable(f"unknown kernel backend {name!r}; choose one of {', '.join(_MODULES)}")
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as error:
        raise BackendUnavailable(
            f"kernel backend {name!r} is not available ({error}); for the GPU: pip install 'edge[gpu]'"
        ) from error
    probe = getattr(module, "probe", None)
    if probe is not None:
        try:
            probe()
        except ImportError as error:
            raise BackendUnavailable(f"kernel backend {name!r} is not available: {error}") from error
    return Backend(name, module)


def available_backends() -> list[str]:
    """Names of the backends that load here, fastest first."""
    names = []
    for name in _FALLBACK:
        try:
            _load(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def get_backend(name: str = "auto", fallback: bool = False) -> Backend:
    """The named backend, or with ``auto`` the first that loads in the chain GPU -> numba -> NumPy.

    Every step down the chain is logged with its reason, so a slow run says why it is slow. With
    ``auto``, the ``EDGE_BACKEND`` environment variable (if set) names the backend instead. A named
    backend that cannot load raises `BackendUnavailable`, unless ``fallback`` is true: then the chain
    continues after it (a daemon configured for the GPU still runs, on numba, and says so).
    """
    if name == "auto":
        name = os.environ.get("EDGE_BACKEND", "auto").strip().lower() or "auto"
    if name != "auto" and not (fallback and name in _FALLBACK):
        return _load(name)
    chain = _FALLBACK if name == "auto" else _FALLBACK[_FALLBACK.index(name) :]
    failed: list[str] = []
    for candidate in chain:
        try:
            backend = _load(candidate)
        except BackendUnavailable as error:
            # asked for by name: a warning; "auto" on a machine without a GPU is the usual case, not news
            level = logging.INFO if name == "auto" else logging.WARNING
            log.log(level, "kernel backend %s unavailable, falling back: %s", candidate, error)
            failed.append(candidate)
            continue
        backend.degraded_from = failed
        return backend
    raise BackendUnavailable("no kernel backend could be loaded")  # pragma: no cover - numpy always loads
