"""Pixels a detector marks invalid in the frame itself: pyFAI's "dummy" value.

A DECTRIS detector writes -2 (+-1.5) into a pixel it cannot measure, all ones in an unsigned frame
(65534 and 65535 in uint16); X-Spectrum's Lambda writes 0. pyFAI leaves such pixels out of every
integration of a frame from a detector that declares one (``Detector.DUMMY``), and so must we to equal
it. The test is pyFAI's, in float32: ``abs(float32(value) - dummy) <= delta`` (see
``kernels._detectors.frame_dummies`` for the two numbers). One compiled pass counts them; the mask is
built only for a frame that has some.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _count(values, dummy, delta):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    found = 0
    for i in range(values.size):
        if abs(np.float32(values[i]) - dummy) <= delta:
            found += 1
    return found


@numba.njit(nogil=True, cache=True)
def _mark(values, dummy, delta, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    for i in range(values.size):
        out[i] = abs(np.float32(values[i]) - dummy) <= delta


def invalid_pixels(frame: Any, dummy: float, delta: float) -> np.ndarray | None:
    """True where ``frame`` holds the detector's dummy value (within ``delta``); None if nowhere."""
    values = np.ascontiguousarray(frame).ravel()
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    value, tolerance = np.float32(dummy), np.float32(delta)
    if _count(values, value, tolerance) == 0:
        return None
    out = np.empty(values.size, np.bool_)
    _mark(values, value, tolerance, out)
    return out.reshape(np.shape(frame))
