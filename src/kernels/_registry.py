"""One registry for every kernel backend, with a logged fallback chain GPU -> numba -> NumPy."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from kernels._geometry import Geometry

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

    def correct(self, raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self.module.correct(raw, dark, gain, out)

    def histogram(self, values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
        return self.module.histogram(values, bins, npt)

    def integrator(
        self, geometry: Geometry, shape: tuple[int, int], npt: int, **kwargs: object
    ) -> Integrator1D:
        return Integrator1D(self, geometry, shape, npt, **kwargs)  # type: ignore[arg-type]


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
        probe()
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


def get_backend(name: str = "auto") -> Backend:
    """The named backend, or with ``auto`` the first that loads in the chain GPU -> numba -> NumPy.

    Every step down the chain is logged with its reason, so a slow run says why it is slow.
    """
    if name != "auto":
        return _load(name)
    failed: list[str] = []
    for candidate in _FALLBACK:
        try:
            backend = _load(candidate)
        except BackendUnavailable as error:
            log.warning("kernel backend %s unavailable, falling back: %s", candidate, error)
            failed.append(candidate)
            continue
        backend.degraded_from = failed
        return backend
    raise BackendUnavailable("no kernel backend could be loaded")  # pragma: no cover - numpy always loads


class Integrator1D:
    """Azimuthal integration to a 1D profile with a precomputed bin index per pixel (no pixel splitting).

    ``unit`` is ``2th_deg`` or ``q_nm^-1``. Bin edges span the unmasked pixels' radial range evenly, as
    pyFAI's histogram engine does. The profile is the mean corrected intensity per bin (0 where empty).
    """

    def __init__(
        self,
        backend: Backend,
        geometry: Geometry,
        shape: tuple[int, int],
        npt: int,
        unit: str = "2th_deg",
        mask: np.ndarray | None = None,
    ) -> None:
        if unit == "2th_deg":
            radial = np.degrees(geometry.tth(shape))
        elif unit == "q_nm^-1":
            radial = geometry.q_nm(shape)
        else:
            raise ValueError(f"unit {unit!r} not supported; use '2th_deg' or 'q_nm^-1'")
        valid = np.ones(shape, dtype=bool) if mask is None else ~mask.astype(bool)
        lo = float(radial[valid].min())
        hi = float(np.nextafter(radial[valid].max(), np.inf))
        self.backend = backend
        self.npt = npt
        self.unit = unit
        self.edges = np.linspace(lo, hi, npt + 1)
        self.radial = 0.5 * (self.edges[1:] + self.edges[:-1])
        index = np.floor((radial - lo) * (npt / (hi - lo))).astype(np.int64)
        index = np.clip(index, 0, npt - 1)
        index[~valid] = npt
        self.bins = np.ascontiguousarray(index.astype(np.int32))
        self.count = np.bincount(self.bins.ravel(), minlength=npt + 1)[:npt].astype(np.float64)

    def integrate(self, corrected: np.ndarray) -> np.ndarray:
        """Mean intensity per radial bin, float64."""
        sums = self.backend.histogram(corrected, self.bins, self.npt)
        return np.divide(sums, self.count, out=np.zeros(self.npt), where=self.count > 0)
