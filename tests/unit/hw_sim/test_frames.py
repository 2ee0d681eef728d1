"""PowderFrames stays bit-identical, calibrant tables, and the detector defects shared by every mode."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest

from firmware_bridge.udp_codec import DetectorGeometry
from hw_sim.frames import (
    CALIBRANTS,
    CEO2_D_SPACINGS,
    LAB6_D_SPACINGS,
    SI_D_SPACINGS,
    PowderFrames,
    calibrant_d_spacings,
    dead_pixel_mask,
    module_gap_mask,
)
from kernels import Geometry


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


# Computed from PowderFrames (CeO2 at NIST SRM 674b's lattice constant); system tests compare these frames.
PINNED = {
    ((512, 512), 0): "818f3d227a4fc50a31434364e05a86381bfb8b7ed13b3d5bb4aa2946f2e60f14",
    ((512, 512), 5): "04029375c563a9659dfeaf9e0119333dd503dd9f3af167ee5a1ccf01f077b261",
    ((128, 160), 0): "0e4dccca8b4fb0d62a2eaf8d1431d195e954913354e515a84fd1e2e97f41227c",
    ((128, 160), 5): "0d4269f3698e4b2cec38db19145fa8ac10049bfa6407746b57235e4d61f20096",
}


@pytest.mark.parametrize(("shape", "number"), list(PINNED))
def test_powder_frames_are_unchanged(shape: tuple[int, int], number: int) -> None:
    frames = PowderFrames(shape, Geometry())
    assert _sha(frames.frame(number)) == PINNED[(shape, number)]
    assert frames.frame(number + frames.pool) is frames.frame(number)


def test_powder_frames_unchanged_with_other_arguments() -> None:
    frames = PowderFrames(
        (200, 300), Geometry(dist=0.08, poni1=0.01, poni2=0.012), seed=7, pool=4, dtype="uint32"
    )
    assert _sha(frames.frame(3)) == "c4ba540e70ab1029376d369ac5597d3befb07cd33d990ae5c3a10d5ddaf034f8"
    assert _sha(frames.expected) == "b6a0e39b7e96a67b84a63aa583ae7bd2d45df0604e46a9f71e96dcd6241b3de4"
    assert frames.mask is None
    assert frames.frame_truth(3) is frames.truth
    assert frames.truth.tth_deg[0] == pytest.approx(18.417251344668692)


def test_calibrant_tables() -> None:
    assert calibrant_d_spacings("ceo2") is CEO2_D_SPACINGS
    assert set(CALIBRANTS) == {"CeO2", "LaB6", "Si"}
    # LaB6: primitive cubic, 300 and 221 share one ring; Si: diamond, no 200 or 222.
    assert [round((4.156826e-10 / d) ** 2) for d in LAB6_D_SPACINGS] == [1, 2, 3, 4, 5, 6, 8, 9]
    hkl_sums = [round((5.431144e-10 / d) ** 2) for d in SI_D_SPACINGS]
    assert hkl_sums == [3, 8, 11, 16, 19, 24, 27, 32]
    assert all(a > b for a, b in itertools.pairwise(LAB6_D_SPACINGS))
    with pytest.raises(ValueError, match="unknown calibrant"):
        calibrant_d_spacings("quartz")


@pytest.mark.parametrize("name", ["CeO2", "LaB6", "Si"])
def test_calibrant_rings_are_pyfai_s_own(name: str) -> None:
    """The simulator's rings are the first rings of pyFAI's calibrant of that name (what pyFAI-calib2
    fits a frame against), to 2e-5 relative: the NIST lattice constants of the certificates named beside
    the tables (pyFAI's Si file is SRM 640c, a = 5.4312 A; ours 640f, 5.431144 A)."""
    from pyFAI.calibrant import get_calibrant

    calibrant = get_calibrant(name)
    theirs = [1e-10 * d for d in calibrant.dspacing]
    distinct = [d for i, d in enumerate(theirs) if i == 0 or not math.isclose(d, theirs[i - 1], rel_tol=1e-9)]
    ours = calibrant_d_spacings(name)
    assert ours == pytest.approx(distinct[: len(ours)], rel=2e-5)


def test_lab6_rings_land_at_bragg_angles() -> None:
    geometry = Geometry()
    frames = PowderFrames((256, 256), geometry, d_spacings=LAB6_D_SPACINGS)
    expected = [math.degrees(2 * math.asin(geometry.wavelength / (2 * d))) for d in LAB6_D_SPACINGS]
    assert frames.truth.tth_deg == pytest.approx(expected)


def test_dead_pixels_are_zero_and_change_nothing_else() -> None:
    shape = (128, 160)
    clean = PowderFrames(shape, Geometry())
    broken = PowderFrames(shape, Geometry(), dead_fraction=0.01)
    assert broken.mask is not None
    assert broken.mask.sum() == round(0.01 * shape[0] * shape[1])
    for n in (0, 3):
        frame = broken.frame(n)
        assert not frame[broken.mask].any()
        np.testing.assert_array_equal(frame[~broken.mask], clean.frame(n)[~broken.mask])
    assert not broken.expected[broken.mask].any()
    # A fixed set: the same seed gives the same dead pixels, another seed others.
    np.testing.assert_array_equal(dead_pixel_mask(shape, 1234, 0.01), broken.mask)
    assert (dead_pixel_mask(shape, 99, 0.01) != broken.mask).any()
    with pytest.raises(ValueError, match="dead_fraction"):
        dead_pixel_mask(shape, 1, 1.5)


def test_module_gaps_match_the_udp_assembler_layout() -> None:
    layout = DetectorGeometry(module_rows=40, module_cols=50, grid_rows=2, grid_cols=3, gap_pixels=3)
    gaps = module_gap_mask(layout.frame_shape, layout.module_shape, layout.gap_pixels)
    assembled = layout.insert_gaps(np.ones(layout.raw_shape, dtype=np.uint16))
    np.testing.assert_array_equal(gaps, assembled == 0)
    frames = PowderFrames(
        layout.frame_shape, Geometry(poni1=0.003, poni2=0.006), module_shape=layout.module_shape, gap_pixels=3
    )
    assert not frames.frame(1)[gaps].any()
    assert frames.frame(1)[~gaps].any()
