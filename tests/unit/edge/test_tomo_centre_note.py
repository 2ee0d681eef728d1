"""A tomography run reconstructed about the detector's centre column because no two projections are
180 +- 5 degrees apart says so in its record (`edge where`, REST), not only inside its file: an outside
probe's 60-projection scan in 3-degree steps came out 2 px off its axis, said in one string in the file."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge.config import ReductionSettings
from edge.modes import RunContext, make_stage
from edge.where import products_note
from kernels import Geometry, get_backend

SHAPE = (8, 24)
GEOMETRY = Geometry(dist=0.1, poni1=0.0003, poni2=0.0009, wavelength=1e-10)


def _finished(step: float) -> dict[str, str]:
    params = ReductionSettings(mode="tomo", tomo={"slices": [4]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    stage.process(np.full(SHAPE, 1000, np.uint16), 0, 1, float("nan"))  # a flat
    columns = np.arange(SHAPE[1])
    for k, angle in enumerate(np.arange(0.0, 180.0, step)):
        line = 1000 - 300 * np.exp(-(((columns - 13 - 4 * np.sin(np.radians(angle))) / 3.0) ** 2))
        stage.process(np.broadcast_to(line, SHAPE).astype(np.uint16), 1 + k, 0, float(angle))
    products = stage.finish()
    assert products["slices"].shape[0] == 1
    return stage.run_notes()


def _simulated_scan(side: int, rows: list[int], n_angles: int, axis_offset_px: float) -> tuple[Any, Any]:
    """The simulator's tomography scan (2 darks, 2 flats, ``n_angles`` projections over a half turn, its
    axis ``axis_offset_px`` from the centre column) through a tomo stage reconstructing ``rows``: the
    stage and its finished products."""
    from hw_sim.physics import make_source

    tomo = make_source(
        "tomo", (side, side), seed=5, n_angles=n_angles, n_darks=2, n_flats=2, axis_offset_px=axis_offset_px
    )
    settings = ReductionSettings(mode="tomo", tomo={"slices": rows})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    for n in range(tomo.scan_length):
        truth = tomo.frame_truth(n)
        key = {"projection": 0, "flat": 1, "dark": 2}[truth.kind]
        angle = float("nan") if truth.angle_deg is None else float(truth.angle_deg)
        stage.process(tomo.frame(n), n, key, angle)
    return stage, stage.finish()


@pytest.mark.parametrize(("step", "noted"), [(6.0, True), (3.0, False), (1.5, False)])
def test_a_scan_without_a_pair_180_degrees_apart_says_its_slices_are_about_the_centre_column(
    step: float, noted: bool
) -> None:
    notes = _finished(step)
    assert ("centre_not_estimated" in notes) is noted, notes
    if noted:
        assert "centre column 12" in notes["centre_not_estimated"]
        assert "reduction.tomo.center" in notes["centre_not_estimated"]


def test_edge_where_shows_the_note_of_a_run_with_slices() -> None:
    note = "slices about the detector's centre column 12, not an estimated axis: ..."
    report = {
        "mode": "tomo",
        "config": json.dumps({"centre_not_estimated": note}),
        "files": [{"kind": "reduced", "holds": '{"slices": "/entry/reconstruction"}'}],
    }
    assert products_note(report, True, []) == note
    report["config"] = "{}"
    assert products_note(report, True, []) is None


def test_a_half_turn_in_3_degree_steps_estimates_its_axis_from_an_extrapolated_projection() -> None:
    """The outside probe's scan, 0 to 177 degrees in 3s with its axis off the centre column: no pair 180
    +- 2 degrees apart, and the slices were about the centre column, 2 px off. The projection at 177 and
    the one at -3, extrapolated from 0 and 3, give the axis."""
    side = 64
    stage, products = _simulated_scan(side, [32], n_angles=60, axis_offset_px=2.0)
    assert products["center_source"].startswith("estimated from the projections at 177 and -3 degrees"), (
        products["center_source"]
    )
    assert "extrapolated from those at 0 and 3" in products["center_source"]
    assert abs(products["center"] - (side // 2 + 2.0)) <= 0.3, products["center"]
    assert stage.run_notes() == {}


@pytest.mark.parametrize(("rows", "estimated"), [([3, 60], False), ([32], True), ([3, 32], True)])
def test_an_axis_is_estimated_from_rows_through_the_sample_and_not_from_rows_of_air(
    rows: list[int], estimated: bool
) -> None:
    """An outside probe chose slices of air only (rows above and below the sample): the axis came out
    at 19.5 for a true 67, "estimated from the projections at 0 and 179 degrees", with nothing said. Rows
    of noise agree about no axis: the slices are about the centre column, and the run's record says so."""
    side = 64
    stage, products = _simulated_scan(side, rows, n_angles=90, axis_offset_px=3.0)
    notes = stage.run_notes()
    if estimated:
        assert products["center_source"].startswith("estimated from"), products["center_source"]
        assert abs(products["center"] - (side // 2 + 3.0)) <= 0.3, products["center"]
        assert notes == {}
    else:
        assert products["center"] == side // 2, products["center_source"]
        assert "do not agree about any axis" in products["center_source"]
        assert "rows of air" in notes["centre_not_estimated"], notes
