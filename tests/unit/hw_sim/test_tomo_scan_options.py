"""The simulator's tomography scans beyond 0..180 degrees with darks and flats first: a start angle, a
range (360, descending), flats at the end and an off-centre axis, whose truth the reconstruction's
estimate is checked against (an outside tomography probe could simulate none of these)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge.config import ReductionSettings, load_settings
from edge.errors import ConfigError
from edge.modes import RunContext, make_stage
from hw_sim.physics import make_source
from kernels import Geometry, get_backend


def _scanned(tomo: Any, side: int, rows: list[int] | None = None) -> Any:
    """The tomography stage with every frame of the simulated scan processed (slices: ``rows``, default
    the middle row), before its ``finish``."""
    settings = ReductionSettings(mode="tomo", tomo={"slices": rows or [side // 2]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), Geometry(), (side, side), 24, "2th_deg", settings))
    for n in range(tomo.scan_length):
        truth = tomo.frame_truth(n)
        key = {"projection": 0, "flat": 1, "dark": 2}[truth.kind]
        stage.process(tomo.frame(n), n, key, float("nan") if truth.angle_deg is None else truth.angle_deg)
    return stage


def _reconstructed(tomo: Any, side: int, rows: list[int] | None = None) -> dict[str, Any]:
    """The tomography stage's run products of the simulated scan."""
    return _scanned(tomo, side, rows).finish()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("start", "span"), [(30.0, 360.0), (90.0, -183.0)])
def test_a_scan_s_angles_flats_at_the_end_and_axis_are_the_truth_the_reconstruction_finds(
    start: float, span: float
) -> None:
    side = 48
    tomo = make_source(
        "tomo",
        (side, side),
        seed=2,
        n_angles=120 if abs(span) == 360 else 61,  # descending: 90 .. -90 in steps of 3
        n_darks=2,
        n_flats=0,
        n_flats_end=3,
        start_deg=start,
        range_deg=span,
        axis_offset_px=-2.5,
    )
    assert tomo.axis_px == side // 2 - 2.5
    angles = [t.angle_deg for t in map(tomo.frame_truth, range(tomo.scan_length)) if t.angle_deg is not None]
    step = span / len(angles)
    assert angles[0] == start and angles[-1] == pytest.approx(start + span - step)
    kinds = [tomo.frame_truth(n).kind for n in range(tomo.scan_length)]
    assert kinds[:2] == ["dark", "dark"] and kinds[-3:] == ["flat"] * 3
    products = _reconstructed(tomo, side)
    assert abs(products["center"] - tomo.axis_px) <= 0.2, products["center_source"]
    assert products["flat_field"].startswith("applied: (projection - mean dark)")  # the flats at the end


def test_a_scan_over_no_angle_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"sim.tomo_range_deg.*0 degrees"):
        load_settings(overrides=["sim.tomo_range_deg=0"])
    settings = load_settings(overrides=["sim.tomo_range_deg=-360", "sim.tomo_start_deg=180"])
    assert (settings.sim.tomo_range_deg, settings.sim.tomo_start_deg) == (-360.0, 180.0)
    assert np.isfinite(settings.sim.tomo_axis_offset_px)


def test_a_fly_scan_over_several_turns_repeats_a_turn_s_pixels_at_angles_going_on() -> None:
    """``turns``: a continuous rotation, the projections of one turn repeated with their angles 360
    degrees on each turn; the tomography stage reconstructs the axis from it as from one turn."""
    side = 32
    tomo = make_source(
        "tomo",
        (side, side),
        seed=3,
        n_angles=60,
        n_darks=1,
        n_flats=1,
        range_deg=360.0,
        turns=3,
        axis_offset_px=2.0,
    )
    assert tomo.scan_length == 2 + 3 * 60
    angles = [tomo.frame_truth(n).angle_deg for n in range(2, tomo.scan_length)]
    assert angles == pytest.approx([6.0 * k for k in range(180)])
    for k in range(60):  # the sample is where it was a turn before: the same pixels
        assert np.array_equal(tomo.frame(2 + k), tomo.frame(2 + k + 60))
        assert np.array_equal(tomo.frame(2 + k), tomo.frame(2 + k + 120))
    assert not np.array_equal(tomo.frame(2), tomo.frame(3))
    products = _reconstructed(tomo, side)
    assert abs(products["center"] - tomo.axis_px) <= 0.2, products["center_source"]
    assert products["projections"] == 180


def test_turns_other_than_whole_ones_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"tomo_turns = 3 repeats full turns: tomo_range_deg must be 360"):
        load_settings(overrides=["sim.tomo_turns=3"])  # over the default 180 degrees
    with pytest.raises(ValueError, match="turns must be >= 1"):
        make_source("tomo", (16, 16), n_angles=4, range_deg=180.0, turns=2)
    assert load_settings(overrides=["sim.tomo_turns=3", "sim.tomo_range_deg=-360"]).sim.tomo_turns == 3


def test_the_axis_comes_from_every_chosen_row_not_the_first_alone() -> None:
    """Rows [0, 16]: row 0 is air above the sample. The axis was estimated from the first chosen row only,
    and came out tens of pixels off (an outside probe: 91 px on 256 columns), every slice about it."""
    side = 32
    tomo = make_source("tomo", (side, side), seed=5, n_angles=90, n_darks=2, n_flats=2, axis_offset_px=3.0)
    products = _reconstructed(tomo, side, [0, side // 2])
    assert abs(products["center"] - tomo.axis_px) <= 0.3, (products["center"], products["center_source"])


def test_a_fine_360_degree_scan_keeps_the_axis_it_streamed_about_when_the_end_agrees_within_tolerance() -> (
    None
):
    """2-degree steps: the first pair within 2 degrees is 0 and 178 (mid-scan), the whole scan's 0 and 180.
    Their axes differ by a few 0.01 px: the slices stay those streamed, not redone for it."""
    side = 32
    tomo = make_source(
        "tomo", (side, side), seed=3, n_angles=180, n_darks=2, n_flats=2, range_deg=360.0, axis_offset_px=3.0
    )
    stage = _scanned(tomo, side)
    streamed = np.asarray(stage.reconstructor.slices())  # type: ignore[attr-defined]
    products = stage.finish()
    assert abs(products["center"] - tomo.axis_px) <= 0.2, products["center_source"]
    if "of the whole scan" in products["center_source"]:  # the two estimates differ (within 0.05 px)
        assert products["center_source"].startswith("estimated from the projections at 0 and 178 degrees")
    np.testing.assert_array_equal(products["slices"], streamed)  # not redone
