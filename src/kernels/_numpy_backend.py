"""NumPy reference kernels: the oracle every other backend is tested against."""

from __future__ import annotations

import numpy as np


def correct(raw: np.ndarray, dark: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = (raw - dark) * gain`` in float32; ``gain`` is 1/flat with 0 at masked pixels."""
    np.subtract(raw, dark, out=out, dtype=np.float32)
    np.multiply(out, gain, out=out)
    return out


def histogram(values: np.ndarray, bins: np.ndarray, npt: int) -> np.ndarray:
    """Sum of ``values`` per bin; pixels whose bin is ``npt`` or more (masked) are dropped."""
    sums = np.bincount(bins.ravel(), weights=values.ravel().astype(np.float64), minlength=npt + 1)
    return sums[:npt]
