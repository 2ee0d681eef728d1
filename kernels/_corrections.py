"""Setup for the per-pixel corrections: the gain map the ``correct`` kernels multiply by.

Dark subtraction, flat field, static mask and dead pixels all fold into two arrays made once per run:
the dark (float32) and ``gain = 1 / flat`` with 0 wherever a pixel must not count (masked, dead, a flat
that is zero, negative or not finite). The per-frame kernel is then one subtract and one multiply.
"""

from __future__ import annotations

import numpy as np


def make_gain(
    shape: tuple[int, ...],
    flat: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    dead: np.ndarray | None = None,
) -> np.ndarray:
    """Float32 ``1 / flat`` (1 without a flat), 0 at masked, dead and unusable-flat pixels."""
    gain = np.ones(shape, dtype=np.float32)
    bad = np.zeros(shape, dtype=bool)
    if flat is not None:
        flat32 = np.asarray(flat, dtype=np.float32)
        bad |= ~np.isfinite(flat32) | (flat32 <= 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(np.float32(1.0), flat32, out=gain, where=~bad)
    for extra in (mask, dead):
        if extra is not None:
            bad |= np.asarray(extra, dtype=bool)
    gain[bad] = 0.0
    return gain
