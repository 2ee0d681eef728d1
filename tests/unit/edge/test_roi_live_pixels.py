"""ROI statistics over a box's live pixels. An outside probe put a box over a masked region: its sum and
mean counted every masked pixel (`reduction.mask_file` was applied to the profile, not to the ROIs). And a
frame's pixels at the detector's dummy value (65535 in an Eiger's gaps) were left out of the ROI mean's
divisor but not out of its sum, max or centroid, though the docs say they are left out "as if masked"."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from edge.config import ReductionSettings
from edge.modes import RunContext
from edge.modes._stage import Corrections, RoiStage
from kernels import Geometry

SHAPE = (24, 32)
BOXES = [(0, 24, 0, 32), (0, 4, 0, 4), (2, 6, 28, 40), (10, 14, 10, 14)]


def stage(backend: str, mask: np.ndarray | None) -> RoiStage:
    settings = ReductionSettings(mode="powder", roi=BOXES)  # type: ignore[arg-type]
    geometry = Geometry(dist=0.1, poni1=1e-3, poni2=1e-3, wavelength=1e-10)
    ctx = RunContext(
        kernels.get_backend(backend), geometry, SHAPE, 16, "2th_deg", settings, Corrections(mask=mask)
    )
    return RoiStage(ctx)


def expected(frame: np.ndarray, live: np.ndarray) -> dict[str, list[float]]:
    """The figures by hand: every live pixel of each box (clipped to the frame), nothing else."""
    out: dict[str, list[float]] = {k: [] for k in ("sum", "mean", "max", "centroid_x", "centroid_y")}
    for r0, r1, c0, c1 in BOXES:
        r1, c1 = min(r1, SHAPE[0]), min(c1, SHAPE[1])
        rows, cols = np.nonzero(live[r0:r1, c0:c1])
        values = frame[r0:r1, c0:c1][rows, cols].astype(np.float64)
        total = float(values.sum())
        out["sum"].append(total)
        out["mean"].append(total / values.size if values.size else np.nan)
        out["max"].append(float(values.max()) if values.size else -np.inf)
        out["centroid_y"].append(float((values * (rows + r0)).sum() / total) if total > 0 else np.nan)
        out["centroid_x"].append(float((values * (cols + c0)).sum() / total) if total > 0 else np.nan)
    return out


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_masked_dummy_and_missing_pixels_are_in_no_roi_figure(backend: str) -> None:
    rng = np.random.default_rng(5)
    frame = rng.integers(10, 100, SHAPE).astype(np.uint16)
    mask = np.zeros(SHAPE, bool)
    mask[0:4, 0:4] = True  # box 1 wholly masked
    mask[:, 15:17] = True  # a module gap through box 0
    frame[mask] = 65535  # what the detector writes there
    missing = np.zeros(SHAPE, bool)
    missing[11, 11] = missing[3, 29] = True  # this frame's dummy pixels (or packets that never came)
    frame[11, 11] = frame[3, 29] = 65535

    rois = stage(backend, mask)
    got = rois.stats(frame, missing)
    want = expected(frame, ~mask & ~missing)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-12, err_msg=name)
    assert got["max"][0] < 100 and got["sum"][1] == 0 and np.isnan(got["mean"][1])

    # a frame without missing pixels: the kernel's figures, the static mask still left out
    clean = frame.copy()
    clean[11, 11] = clean[3, 29] = 50
    got = rois.stats(clean)
    want = expected(clean, ~mask)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-12, err_msg=name)

    # no mask: every pixel of the box, as before
    got = stage(backend, None).stats(clean)
    want = expected(clean, np.ones(SHAPE, bool))
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-12, err_msg=name)
