"""NumPy reference kernels: the oracle every other backend is tested against.

Each backend module offers the same functions (``correct``, ``histogram``, ``jungfrau_convert``) and a
``BinSummer`` class the integrators use; the numba and GPU modules must return what these return.
"""

from __future__ import annotations

from typing import Any

import numpy as np

JUNGFRAU_GAIN_BITS = 14  # bits 14-15 of a JUNGFRAU sample say which gain stage digitised it
JUNGFRAU_ADC_MASK = 0x3FFF
JUNGFRAU_STAGE = (0, 1, -1, 2)  # gain bits 0b00 -> G0, 0b01 -> G1, 0b11 -> G2; 0b10 is invalid


def correct(raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = (raw - dark) * gain`` in float32; ``gain`` is 1/flat with 0 at masked and dead pixels."""
    np.subtract(raw, dark, out=out, dtype=np.float32)
    np.multiply(out, gain, out=out)
    return out


def histogram(values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
    """Sum of ``values`` per bin; pixels whose bin is ``npt`` or more (masked) are dropped."""
    sums = np.bincount(bins.ravel(), weights=values.ravel().astype(np.float64), minlength=npt + 1)
    return sums[:npt]


def jungfrau_convert(raw: np.ndarray, pedestal: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    """JUNGFRAU three-gain conversion: ``out = (adc - pedestal[g]) / gain[g]`` in float32.

    ``raw`` is uint16 with the gain stage in bits 14-15 and the ADC value in bits 0-13; ``pedestal`` and
    ``gain`` are (3, *shape) float32, gain in ADU per output unit (keV or photons). A sample with the
    invalid gain code 0b10 gives 0.
    """
    raw = np.asarray(raw)
    code = (raw >> JUNGFRAU_GAIN_BITS).astype(np.intp)
    stage = np.asarray(JUNGFRAU_STAGE, dtype=np.intp)[code]
    valid = stage >= 0
    stage = np.where(valid, stage, 0)
    adc = (raw & JUNGFRAU_ADC_MASK).astype(np.float32)
    ped = np.take_along_axis(pedestal, stage[None], axis=0)[0]
    g = np.take_along_axis(gain, stage[None], axis=0)[0]
    value = (adc - ped) / g
    out[...] = np.where(valid, value, np.float32(0))
    return out


class BinSummer:
    """Per-bin sums of a frame (and of ``max(1, frame)``, the Poisson variance) over a fixed bin index."""

    def __init__(self, bins: np.ndarray, nbins: int) -> None:
        self.bins = bins.ravel().astype(np.intp)
        self.nbins = nbins

    def __call__(self, frame: Any, with_variance: bool) -> tuple[np.ndarray, np.ndarray | None]:
        values = np.asarray(frame).ravel().astype(np.float64)
        sums = np.bincount(self.bins, values, self.nbins + 1)[: self.nbins]
        if not with_variance:
            return sums, None
        variance = np.bincount(self.bins, np.maximum(1.0, values), self.nbins + 1)[: self.nbins]
        return sums, variance
