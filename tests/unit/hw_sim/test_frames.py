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


# Computed from PowderFrames before the physics modes were added; system tests compare these frames.
PINNED = {
    ((512, 512), 0): "9a7db7e4996e4599d1304f280a732cdb685e6725ae251c5b2cfa2ab8f8fbbba7",
    ((512, 512), 5): "2ac82ae559ec62097cf06a8e17792ff141c63433dc5aa0ade796474c4c85afd7",
    ((128, 160), 0): "140611362b98e204381bdfd317f4d6271ad0dedf73baa6b1b4a8f7d8073f77fa",
    ((128, 160), 5): "df28e3f99f16ff82fbf807fe8b0e43ade359c2d145573af690064452ce107bc9",
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
    assert frames.truth.tth_deg[0] == pytest.approx(18.419143050428623)


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
