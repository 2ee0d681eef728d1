"""Reduction modes: one small stage class per mode behind one interface, chosen per run.

A stage gets every raw frame of its run in order and says, per frame, whether it is kept (and in which
file stream) or vetoed by the mode's stated policy, which products go beside it, and which fields go
into the run's frame table. It also knows how its products are laid out in the files (NeXus / CXI names
the field's readers use) and what it shows live. The pipeline knows none of this: it only calls
`ModeStage.process` and hands the results to the store.

- ``raw``: nothing computed; frames are never decompressed for it.
- ``powder``: 1D azimuthal integration with Poisson errors (NXazint1d names), optionally a 2D cake.
- ``serial``: peakfinder8-style peaks and a hit classifier; a CXI peak table aligned with the frames;
  blanks go to their own files (``store.blanks = keep``) or are vetoed (``drop``).
- ``tomo``: NXtomo image keys; darks and flats averaged, projections normalised (-log) and chosen rows
  reconstructed while they arrive (streaming FBP); the slices are a run product.

ROI statistics (sum, mean, max, centroid per box) are computed in every mode but ``raw``.
"""

from __future__ import annotations

import numpy as np

from edge.modes._powder import PowderStage
from edge.modes._serial import SerialStage
from edge.modes._stage import Corrections, EarlierParts, FrameResult, ModeStage, RunContext
from edge.modes._tomo import TomoStage
from kernels import invalid_pixels

__all__ = [
    "STAGES",
    "Corrections",
    "EarlierParts",
    "FrameResult",
    "ModeStage",
    "PowderStage",
    "RunContext",
    "SerialStage",
    "TomoStage",
    "make_stage",
    "warm_up",
]


STAGES: dict[str, type[ModeStage]] = {
    "raw": ModeStage,
    "powder": PowderStage,
    "serial": SerialStage,
    "tomo": TomoStage,
}


def make_stage(ctx: RunContext) -> ModeStage:
    """The stage for the run's mode (``ctx.params.mode``)."""
    return STAGES[ctx.params.mode](ctx)


def warm_up(ctx: RunContext, dtype: str) -> None:
    """Run the mode's kernels once on synthetic frames of the run's shape and ``dtype``, and throw it away.

    numba loads (or compiles) a kernel on its first call; in a fresh process that first load costs about
    a second and a half, which would otherwise fall on a run's first frame. The frames are a flat
    background with a few bright 3x3 blocks, so every path a real frame takes (peaks found and labelled,
    a tomography scan's darks, flats and projections) is taken.
    """
    stage = make_stage(ctx)
    if not stage.decompress:
        return
    height, width = ctx.shape
    frame = np.full(ctx.shape, 10, dtype=np.dtype(dtype))
    for k in range(12):  # enough bright blocks for a serial "hit"
        r, c = (k + 1) * height // 14, (3 * k + 2) * width // 40
        frame[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2] = 200
    stage.process(frame, 0, 2, float("nan"))  # tomography: a dark, a flat, then projections
    stage.process(frame + 1, 1, 1, float("nan"))
    for n, angle in enumerate((0.0, 90.0, 180.0)):
        stage.process(frame, 2 + n, 0, angle)
    # a frame with pixels missing (an incomplete UDP frame, or pixels at the detector's dummy value) takes
    # the kernels' float path: loaded here too, or the first such frame stalled its run while it
    # compiled (24 s on a fresh install, the UDP socket overflowing meanwhile)
    missing = np.zeros(ctx.shape, dtype=bool)
    missing[0, : min(2, width)] = True
    stage.process(frame, 5, 0, 45.0, missing)
    stage.finish()
    stage.live()
    if stage.excludes_dummies and ctx.dummy is not None:  # the pipeline's test for invalid pixels
        invalid_pixels(frame, *ctx.dummy)
