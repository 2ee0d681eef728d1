"""A tomography data file (NXtomo) read back: the detector group carries what tomography readers size
and place a reconstruction with (pixel pitch, exposure, and the rotation axis when it is given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from edge.config import ReductionSettings
from edge.modes import RunContext, make_stage
from edge.store import RunFileWriter, RunMetadata
from kernels import Geometry, compress_chunk, get_backend

SHAPE = (24, 32)
GEOMETRY = Geometry(dist=0.1, poni1=0.001, poni2=0.0012, wavelength=1e-10, pixel1=6.5e-6, pixel2=6.5e-6)


def test_a_tomography_file_with_a_given_axis_says_where_it_is(tmp_path: Path) -> None:
    # NXtomo's x_rotation_axis_pixel_position, from reduction.tomo.center when it is given
    params = ReductionSettings(mode="tomo", tomo={"center": 30.5})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    meta = RunMetadata(GEOMETRY, "sim", 2, "2026-12-02T00:00:00+00:00", {"frame_time": 0.01})
    writer = RunFileWriter(tmp_path, "tomo1", "tomo1_00000.h5", 0, SHAPE, "uint16", 2, stage, meta)
    for frame, (key, angle) in enumerate(((1, float("nan")), (0, 0.0))):
        pixels = np.full(SHAPE, 100 + frame, np.uint16)
        result = stage.process(pixels, frame, key, angle)
        writer.write(frame, compress_chunk(pixels), result.products)
    with h5py.File(writer.close().path, "r") as f:
        detector = f["/entry/instrument/detector"]
        assert detector["x_rotation_axis_pixel_position"][()] == 30.5
        assert detector["x_rotation_axis_pixel_position"].attrs["units"] == "pixel"
        assert detector["x_pixel_size"][()] == GEOMETRY.pixel2 and detector["frame_time"][()] == 0.01
        # NeXus plotting (silx, nexpy) and Data Exchange readers find what they look for
        assert list(f["/entry/data"].attrs["axes"]) == ["frame_number", ".", "."]
        assert f["/entry/data/data"].attrs["units"] == "counts"
        assert f["/implements"][()] == b"exchange"
        assert f["/exchange/data_white"].shape == (1, *SHAPE) and f["/exchange/data"].shape == (1, *SHAPE)


def test_a_row_named_twice_is_reconstructed_once() -> None:
    params = ReductionSettings(mode="tomo", tomo={"slices": [20, 20, 3, 20]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    assert stage.settings_record()["slices"] == [20, 3]


def test_an_incomplete_frame_s_missing_pixels_stay_out_of_the_means_and_the_sinogram() -> None:
    """A UDP frame with a packet lost has 0 where it was: as a dark or flat it would pull the mean down
    (it is left out, counted), as a projection its -log(0) would streak the slice (those line integrals
    are 0, transmission 1, as a dead pixel's)."""
    params = ReductionSettings(mode="tomo", tomo={"slices": [5]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    missing = np.zeros(SHAPE, bool)
    missing[5, 10:20] = True
    dark, flat = np.full(SHAPE, 10, np.uint16), np.full(SHAPE, 1000, np.uint16)
    stage.process(dark, 0, 2, float("nan"))
    holey = dark.copy()
    holey[missing] = 0
    stage.process(holey, 1, 2, float("nan"), missing)
    stage.process(flat, 2, 1, float("nan"))
    projection = np.full(SHAPE, 505, np.uint16)
    projection[missing] = 0
    stage.process(projection, 3, 0, 0.0, missing)
    stage.process(np.full(SHAPE, 505, np.uint16), 4, 0, 90.0)
    products = stage.finish()
    assert (products["darks"], products["darks_and_flats_incomplete"]) == (1, 1)
    np.testing.assert_allclose(products["dark_mean"], 10.0)
    sinogram = products["sinograms"][0]  # (angles, columns) of row 5
    assert (sinogram[0, 10:20] == 0).all()  # not -log(1e-6) = 13.8
    np.testing.assert_allclose(sinogram[1], -np.log(495 / 990), rtol=1e-5)


def test_a_file_of_projections_only_opens_in_nexusformat_with_empty_darks_and_flats(tmp_path: Path) -> None:
    """A scan's second file holds projections only: its Data Exchange darks and flats are empty. As
    virtual datasets without a source nexusformat's tree walk failed (IndexError) on every such file."""
    from nexusformat.nexus import nxload

    params = ReductionSettings(mode="tomo")
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    meta = RunMetadata(GEOMETRY, "sim", 2, "2026-12-02T00:00:00+00:00", {"frame_time": 0.01})
    writer = RunFileWriter(tmp_path, "tomo2", "tomo2_00001.h5", 0, SHAPE, "uint16", 2, stage, meta)
    for frame in range(2):
        pixels = np.full(SHAPE, 100 + frame, np.uint16)
        writer.write(frame, compress_chunk(pixels), stage.process(pixels, frame, 0, 10.0 * frame).products)
    path = writer.close().path
    with h5py.File(path, "r") as f:
        for name in ("data_white", "data_dark"):
            assert f["/exchange"][name].shape == (0, *SHAPE)
            assert f["/exchange"][name].dtype == np.uint16
        assert f["/exchange/data"].shape == (2, *SHAPE)
    tree = nxload(str(path)).tree
    assert "data_dark" in tree and "data_white" in tree


def test_a_projection_without_an_angle_stays_out_of_data_exchange(tmp_path: Path) -> None:
    """dxchange / tomopy back-project every frame of /exchange/data at its theta: a projection sent
    without an angle (NaN) is left out there, and kept in the NXtomo names (an outside probe's)."""
    params = ReductionSettings(mode="tomo")
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    meta = RunMetadata(GEOMETRY, "sim", 3, "2026-12-02T00:00:00+00:00", {"frame_time": 0.01})
    writer = RunFileWriter(tmp_path, "tomo3", "tomo3_00000.h5", 0, SHAPE, "uint16", 3, stage, meta)
    for frame, angle in enumerate((0.0, float("nan"), 20.0)):
        pixels = np.full(SHAPE, 100 + frame, np.uint16)
        writer.write(frame, compress_chunk(pixels), stage.process(pixels, frame, 0, angle).products)
    with h5py.File(writer.close().path, "r") as f:
        np.testing.assert_array_equal(f["/exchange/theta"][()], [0.0, 20.0])
        # the Data Exchange names are views of the NXtomo data, theta too (an outside probe: it was a copy);
        # (this file has no darks or flats: those two are empty datasets, see the test above)
        assert f["/exchange/data"].is_virtual and f["/exchange/theta"].is_virtual
        assert f["/exchange/theta"].attrs["units"] == "deg"
        assert f["/exchange/data"].shape == (2, *SHAPE)
        np.testing.assert_array_equal(f["/exchange/data"][:, 0, 0], [100, 102])
        assert np.isnan(f["/entry/sample/rotation_angle"][1]) and f["/entry/data/data"].shape[0] == 3
        # and the group says so (a tomo run over UDP: every frame without an angle, /exchange/data empty)
        assert "1 projection(s) of this file came without a rotation angle" in f["/exchange"].attrs["note"]


def test_a_dark_or_flat_sent_without_an_angle_reads_nan_as_in_the_frame_table(tmp_path: Path) -> None:
    """An outside probe: darks and flats sent without an angle read 0.0 in the data file's
    rotation_angle but NaN in the run's frame table; 0 is an angle never measured. The file keeps what
    came (NaN), and a dark or flat sent with its angle keeps that."""
    params = ReductionSettings(mode="tomo")
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    meta = RunMetadata(GEOMETRY, "sim", 4, "2026-12-02T00:00:00+00:00", {"frame_time": 0.01})
    writer = RunFileWriter(tmp_path, "tomo4", "tomo4_00000.h5", 0, SHAPE, "uint16", 4, stage, meta)
    sent = ((2, float("nan")), (1, float("nan")), (1, 90.0), (0, 0.0))
    rows = []
    for frame, (key, angle) in enumerate(sent):
        pixels = np.full(SHAPE, 100 + frame, np.uint16)
        result = stage.process(pixels, frame, key, angle)
        rows.append(result.row["rotation_angle"])
        writer.write(frame, compress_chunk(pixels), result.products)
    with h5py.File(writer.close().path, "r") as f:
        stored = f["/entry/sample/rotation_angle"][()]
        np.testing.assert_array_equal(stored, [angle for _key, angle in sent])  # (NaN equals NaN here)
        np.testing.assert_array_equal(stored, rows)
        np.testing.assert_array_equal(f["/exchange/theta"][()], [0.0])


def test_projections_of_an_epics_driven_scan_take_the_angles_given_and_are_reconstructed(
    tmp_path: Path,
) -> None:
    """An outside probe drove a tomography scan the areaDetector way (FrameType, Acquire): its frames
    carry no rotation angle, so nothing was reconstructed and only a null slice said so. With
    ``reduction.tomo.angle_start`` and ``angle_step`` (tomoScan's RotationStart, RotationStep) the n-th
    projection that comes without an angle is at start + n x step: in the files, and reconstructed; one
    that brings its own keeps it."""
    params = ReductionSettings(mode="tomo", tomo={"slices": [12], "angle_start": 10.0, "angle_step": 2.5})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    meta = RunMetadata(GEOMETRY, "sim", 6, "2026-12-02T00:00:00+00:00", {"frame_time": 0.01})
    writer = RunFileWriter(tmp_path, "tomo6", "tomo6_00000.h5", 0, SHAPE, "uint16", 6, stage, meta)
    frames = (
        (2, float("nan")),
        (1, float("nan")),
        (0, float("nan")),
        (0, float("nan")),
        (0, 90.0),
        (0, float("nan")),
    )
    for frame, (key, angle) in enumerate(frames):
        pixels = np.full(SHAPE, 400 + 10 * frame if key == 0 else (10 if key == 2 else 1000), np.uint16)
        writer.write(frame, compress_chunk(pixels), stage.process(pixels, frame, key, angle).products)
    assert stage.live()["projections_angle_given"] == 3 and stage.live()["projections_without_angle"] == 0
    with h5py.File(writer.close().path, "r") as f:
        angles = f["/entry/sample/rotation_angle"][()]
        assert np.isnan(angles[:2]).all()  # darks and flats: none
        np.testing.assert_array_equal(angles[2:], [10.0, 12.5, 90.0, 15.0])
        np.testing.assert_array_equal(f["/exchange/theta"][()], [10.0, 12.5, 90.0, 15.0])
    products = stage.finish()
    assert products["projections_angle_given"] == 3 and products["slices"].shape[0] == 1
    np.testing.assert_array_equal(products["rotation_angle"], [10.0, 12.5, 90.0, 15.0])
    # the hole between 15 and 90 degrees is said (an outside probe found one only by reading every angle)
    assert (products["angle_step"], products["largest_angle_step"], products["angle_gaps"]) == (2.5, 75.0, 1)


def test_angle_gaps_of_an_even_scan_and_of_one_with_holes() -> None:
    from edge.modes._tomo import angle_gaps

    even = np.linspace(0.0, 179.0, 180)
    assert angle_gaps(even) == {
        "angle_step": 1.0,
        "largest_angle_step": 1.0,
        "angle_gaps": 0,
        "angle_range": [0.0, 179.0],
    }
    holed = np.delete(even, [*range(52, 59), 100])  # 7 projections lost at 52..58, one at 100
    assert angle_gaps(holed) == {
        "angle_step": 1.0,
        "largest_angle_step": 8.0,
        "angle_gaps": 2,
        "angle_range": [0.0, 179.0],
    }
    # the scan's first part lost with a crash: no step shows it, the range does
    assert angle_gaps(even[77:])["angle_range"] == [77.0, 179.0]
    assert angle_gaps(np.array([5.0, np.nan])) == {}  # too few to say


def _given_angles_scan(
    tmp_path: Path,
    params: ReductionSettings,
    first_frames: Any,
    second_frames: Any,
    first_keys: dict[int, int] | None = None,
) -> tuple[Path, Any, list[float]]:
    """A scan's first part (projections without angles at ``first_frames``) stored by one run, and the
    run that goes on with it taking ``second_frames``: (the first part's file, the second run's stage,
    the angles its projections took)."""
    from edge.modes import EarlierParts

    first = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params))
    meta = RunMetadata(GEOMETRY, "sim", 30, "2026-12-02T00:00:00+00:00", {"frame_time": 0.01})
    directory = tmp_path / "part1"
    directory.mkdir()
    writer = RunFileWriter(directory, "part1", "part1_00000.h5", 0, SHAPE, "uint16", 30, first, meta)
    for frame in first_frames:  # projections, but for the darks and flats of ``first_keys``
        pixels = np.full(SHAPE, 400 + frame, np.uint16)
        key = (first_keys or {}).get(frame, 0)
        writer.write(frame, compress_chunk(pixels), first.process(pixels, frame, key, float("nan")).products)
    path = writer.close().path
    earlier = EarlierParts(runs=("part1",), files=(path,))
    second = make_stage(
        RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", params, earlier=earlier)
    )
    angles = [
        second.process(np.full(SHAPE, 500, np.uint16), frame, 0, float("nan")).products["rotation_angle"]
        for frame in second_frames
    ]
    return path, second, angles


def test_a_scan_going_on_in_a_second_run_counts_its_given_angles_on(tmp_path: Path) -> None:
    """An outside probe: a UDP tomo scan with ``angle_start`` 0 and ``angle_step`` 3, split by a pause
    into two runs; the second run's projections took 0, 3, 6 ... again (its n counted from 0), so its
    reconstruction held angles 0..45 twice, for different frames, and said nothing. The n goes on from
    the projections the earlier part stored."""

    params = ReductionSettings(mode="tomo", tomo={"slices": [12], "angle_start": 0.0, "angle_step": 3.0})  # type: ignore[arg-type]
    _path, second, angles = _given_angles_scan(tmp_path, params, range(5), range(5, 8))  # as over UDP
    assert angles == [15.0, 18.0, 21.0]
    products = second.finish()
    np.testing.assert_array_equal(np.sort(products["rotation_angle"]), 3.0 * np.arange(8))
    assert products["angle_gaps"] == 0 and products["projections_angle_given"] == 3


def test_given_angles_keep_their_places_across_frames_lost_in_a_run_and_at_a_restart(tmp_path: Path) -> None:
    """An outside probe: an EPICS-driven scan (angle_start 0, step 6), the daemon killed at frame 11 of
    30, frames 11..13 lost, the series resumed at frame 14 after the restart: the resumed projections took
    66, 72 ... (n counted on from the 11 stored), every one 18 degrees off, and angle_gaps said 0. The n
    is the frame's place in the scan: frames that never came leave a hole, said in angle_gaps."""

    params = ReductionSettings(mode="tomo", tomo={"slices": [12], "angle_start": 0.0, "angle_step": 6.0})  # type: ignore[arg-type]
    stored = [f for f in range(11) if f != 4]  # frame 4 lost inside the first part too
    path, second, angles = _given_angles_scan(tmp_path, params, stored, range(14, 18))
    with h5py.File(path, "r") as f:  # the frame lost at 4 leaves its angle's place empty
        np.testing.assert_array_equal(f["/entry/sample/rotation_angle"][()], 6.0 * np.asarray(stored))
    assert angles == [84.0, 90.0, 96.0, 102.0]
    products = second.finish()
    np.testing.assert_array_equal(
        np.sort(products["rotation_angle"]), 6.0 * np.asarray([*stored, 14, 15, 16, 17])
    )
    assert products["angle_gaps"] == 2 and products["largest_angle_step"] == 24.0, products["angle_gaps"]


def test_darks_and_flats_stored_after_the_last_projection_before_a_restart_take_no_angle(
    tmp_path: Path,
) -> None:
    """An outside probe: projections 10..29, a dark at 30 and a flat at 31, a restart, projections from
    32 on: frame 32 took n + 3 (two steps too high, a false hole), the stored dark and flat counted as
    projection places."""
    params = ReductionSettings(mode="tomo", tomo={"slices": [12], "angle_start": 0.0, "angle_step": 6.0})  # type: ignore[arg-type]
    _path, _second, angles = _given_angles_scan(tmp_path, params, range(12), range(12, 14), {10: 2, 11: 1})
    assert angles == [60.0, 66.0]
