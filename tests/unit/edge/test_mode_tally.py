"""``ModeStage.tally``: the running figures the IOC shows once a second (`Reduction:Hits_RBV`,
`Reduction:HitRate_RBV`, `Reduction:SlicesDone_RBV`), equal to the mode's own live view."""

from __future__ import annotations

import numpy as np

from edge.config import ReductionSettings
from edge.modes import RunContext, make_stage
from kernels import Geometry, get_backend

SIDE = 32
GEOMETRY = Geometry(dist=0.05, poni1=SIDE / 2 * 75e-6, poni2=SIDE / 2 * 75e-6, wavelength=1e-10)

#: what a scan without darks or flats adds: an EPICS-driven scan's darks and flats taken by Acquires of
#: their own were runs of their own, never used, and nothing said so (an outside probe)
OTHER_RUNS = (
    "; darks and flats of other runs are never used: take them in the same run (an areaDetector capture,"
    " HDF1:Capture, open across the scan's acquisitions; each Acquire is a run otherwise)"
)


def _stage(mode: str, **params: object):  # type: ignore[no-untyped-def]
    settings = ReductionSettings(mode=mode, **params)  # type: ignore[arg-type]
    return make_stage(RunContext(get_backend("numpy"), GEOMETRY, (SIDE, SIDE), 24, "2th_deg", settings))


def test_tomo_tally_counts_darks_flats_projections_and_the_slices_once_reconstructed() -> None:
    stage = _stage("tomo", tomo={"slices": [8, 16]})
    frame = np.full((SIDE, SIDE), 100, np.uint16)
    stage.process(frame // 10, 0, 2, float("nan"))  # a dark
    stage.process(frame, 1, 1, float("nan"))  # a flat
    for n, angle in enumerate(np.linspace(0.0, 180.0, 12, endpoint=False)):
        stage.process(frame - 5, 2 + n, 0, float(angle))
    before = stage.tally()
    assert before == {"frames": 14, "projections": 12, "darks": 1, "flats": 1, "slices_done": 0}
    products = stage.finish()
    live = stage.live()
    assert stage.tally()["slices_done"] == live["slices_done"] == 2
    assert products["flat_field"].startswith("applied")


def test_a_scan_without_darks_and_flats_says_its_slices_are_not_flat_field_corrected() -> None:
    """A scan resumed after a restart (its darks and flats were in the interrupted run) has none to
    normalise with: the run product says so instead of claiming the correction."""
    stage = _stage("tomo", tomo={"slices": [8]})
    for n, angle in enumerate(np.linspace(0.0, 180.0, 12, endpoint=False)):
        stage.process(np.full((SIDE, SIDE), 95, np.uint16), n, 0, float(angle))
    products = stage.finish()
    assert products["flat_field"] == (
        "not applied: no darks and flats before the first projection; the slices are of -log(counts)"
        + OTHER_RUNS
    )


def test_serial_and_powder_tallies() -> None:
    serial = _stage("serial")
    blank = np.full((SIDE, SIDE), 3, np.uint16)
    for n in range(3):
        serial.process(blank, n, 0, float("nan"))
    assert serial.tally() == {"frames": 3, "hits": 0, "vetoed": 0, "hit_rate": 0.0}  # kept: blanks "keep"
    powder = _stage("powder")
    powder.process(blank, 0, 0, float("nan"))
    assert powder.tally() == {"frames": 1}


def test_the_clipping_passes_reach_the_finder() -> None:
    assert _stage("serial").finder.iterations == 2
    assert _stage("serial", serial={"clip_iterations": 5}).finder.iterations == 5


def test_the_cxi_peak_count_never_passes_the_table_width(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """CrystFEL reads ``nPeaks`` entries of each row: with more peaks found than ``max_peaks`` columns,
    ``nPeaks`` is the columns filled (Cheetah's convention) and ``nPeaksFound`` the count found."""
    import h5py

    stage = _stage("serial", serial={"max_peaks": 2, "min_peaks": 1})
    rng = np.random.default_rng(1)
    frame = rng.poisson(10, (SIDE, SIDE)).astype(np.uint16)
    for (r, c), value in zip(((6, 6), (6, 24), (24, 6), (24, 24)), (300, 800, 400, 900), strict=True):
        frame[r : r + 2, c : c + 2] = value
    result = stage.process(frame, 0, 0, float("nan"))
    # the two strongest (an outside probe: the first two in row order were kept, strong spots lower in
    # the frame dropped for weak ones above them), in row order
    kept = result.products["peaks"]
    np.testing.assert_allclose(kept["peakYPosRaw"], [6.5, 24.5], atol=0.2)
    np.testing.assert_allclose(kept["peakXPosRaw"], [24.5, 24.5], atol=0.2)
    with h5py.File(tmp_path / "peaks.h5", "w") as handle:
        stage.write_products(handle.create_group("entry"), [result.products])
        table = handle["entry/result_1"]
        assert table["nPeaksFound"][0] == result.products["peaks"]["nPeaks"] >= 3
        assert table["nPeaks"][0] == 2 and table["peakXPosRaw"].shape == (1, 2)
        assert table["peakXPosRaw"].attrs["units"] == "pixel"
        assert "/entry/frames" in table.attrs["meaning"]  # no /entry/data here: a reduced file's rows


def _scan(stage, darks: int, flats: int, flats_after: int = 0) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Darks of 10, flats of 1000, then 12 projections of 400 and ``flats_after`` more flats; returns a
    projection."""
    n = 0
    for _ in range(darks):
        stage.process(np.full((SIDE, SIDE), 10, np.uint16), n, 2, float("nan"))
        n += 1
    for _ in range(flats):
        stage.process(np.full((SIDE, SIDE), 1000, np.uint16), n, 1, float("nan"))
        n += 1
    projection = np.full((SIDE, SIDE), 400, np.uint16)
    for angle in np.linspace(0.0, 180.0, 12, endpoint=False):
        stage.process(projection, n, 0, float(angle))
        n += 1
    for _ in range(flats_after):
        stage.process(np.full((SIDE, SIDE), 1000, np.uint16), n, 1, float("nan"))
        n += 1
    return projection


def test_flats_after_the_projections_go_into_the_final_sinograms_and_are_said_to() -> None:
    """An outside probe's scan with its flats at the end: the label said "applied" while the sinograms
    were -log(counts) (the means are fixed at the first projection). Then they were stored, not used;
    now the final sinograms and slices are normalised with them, and the label says how."""
    stage = _stage("tomo", tomo={"slices": [8]})
    _scan(stage, darks=0, flats=0, flats_after=3)
    products = stage.finish()
    assert products["flat_field"] == (
        "applied without darks: projection / mean flat; no darks in the scan"
        + OTHER_RUNS
        + "; 3 flats came after the first projection: the live slices were without them, the sinograms and"
        " final slices are normalised with every dark and flat"
    )
    np.testing.assert_allclose(products["sinograms"], -np.log(400.0 / 1000.0), rtol=1e-6)
    assert "dark_mean" not in products and products["flat_mean"].mean() == 1000.0
    assert products["flats"] == 3


def test_darks_without_flats_subtract_the_dark_and_invent_no_flat() -> None:
    """Darks only: -log(projection - mean dark), said so, and no made-up flat in the product (the probe
    found a flat of max(dark) + 1 dividing every column differently)."""
    stage = _stage("tomo", tomo={"slices": [8]})
    _scan(stage, darks=2, flats=0)
    products = stage.finish()
    assert products["flat_field"] == (
        "not applied: no flats before the first projection; the slices are of -log(projection - mean dark)"
        + OTHER_RUNS
    )
    np.testing.assert_allclose(products["sinograms"], -np.log(400.0 - 10.0), rtol=1e-6)
    np.testing.assert_allclose(products["dark_mean"], 10.0)
    assert "flat_mean" not in products


def test_flats_without_darks_are_applied_and_said_to_be() -> None:
    stage = _stage("tomo", tomo={"slices": [8]})
    _scan(stage, darks=0, flats=2)
    products = stage.finish()
    assert products["flat_field"] == (
        "applied without darks: projection / mean flat; no darks before the first projection" + OTHER_RUNS
    )
    np.testing.assert_allclose(products["sinograms"], -np.log(400.0 / 1000.0), rtol=1e-6)
    np.testing.assert_allclose(products["flat_mean"], 1000.0)
    assert "dark_mean" not in products


def test_every_mode_s_frame_table_row_carries_the_angle_a_frame_came_with() -> None:
    """A clean-room sender's probe: in raw mode a frame's ``rotation_angle`` was taken and stored
    nowhere (the frame table had its image key only)."""
    for mode in ("raw", "powder", "serial", "tomo"):
        stage = _stage(mode)
        frame = np.full((SIDE, SIDE), 7, np.uint16)
        with_angle = stage.process(frame, 0, 0, 12.5)
        with_angle.finish()  # (powder's result may still be computing)
        assert with_angle.row["rotation_angle"] == 12.5, mode
        assert with_angle.row["image_key"] == 0


def test_the_newest_hit_s_image_is_kept_with_its_own_peaks() -> None:
    """An outside dashboard probe: the newest hit's peaks were circled over whatever frame the live image
    showed then. The live view now carries the hit's own pixels (subsampled as the live image, one at
    most every HIT_IMAGE_SECONDS) beside its peaks."""
    import base64

    stage = _stage("serial", serial={"min_peaks": 1})
    rng = np.random.default_rng(2)
    frame = rng.poisson(10, (SIDE, SIDE)).astype(np.uint16)
    frame[10:12, 20:22] = 500
    stage.process(frame, 7, 0, float("nan"))
    image = stage.live()["hit_image"]
    assert image["frame"] == 7 and (image["height"], image["width"]) == (SIDE, SIDE)
    assert (image["detector_height"], image["detector_width"]) == (SIDE, SIDE)
    pixels = np.frombuffer(base64.b64decode(image["pixels_b64"]), np.uint8).reshape(SIDE, SIDE)
    assert pixels[10, 20] == 255 and pixels[0, 0] < 255  # the spot at the top of the scale
    (x, y, _intensity), *_ = image["peaks"]
    assert abs(x - 20.5) < 1 and abs(y - 10.5) < 1  # x the column, y the row
    stage.process(np.roll(frame, 5, axis=1), 8, 0, float("nan"))  # a hit within HIT_IMAGE_SECONDS
    assert stage.live()["latest_hit"]["frame"] == 8 and stage.live()["hit_image"]["frame"] == 7
    # a burst of hits within HIT_IMAGE_SECONDS keeps one at least every HIT_IMAGE_HITS (a probe: frames
    # held while kernels loaded came at once, and the image stayed the burst's first, 76 frames behind)
    for n in range(9, 9 + 3 * stage.HIT_IMAGE_HITS):
        stage.process(np.roll(frame, n, axis=1), n, 0, float("nan"))
        latest, kept = stage.live()["latest_hit"]["frame"], stage.live()["hit_image"]["frame"]
        assert latest == n and latest - kept <= stage.HIT_IMAGE_HITS, (latest, kept)


def test_a_serial_run_shorter_than_a_second_has_a_hit_rate_to_draw() -> None:
    """The hit rate over time came from samples a second apart: a run of frames that came within one
    second (held while the kernels loaded, then all at once) had one sample and no rate, the page's chart
    "no samples yet" beside "30 % hits" (an outside probe). The newest frame's tally ends the series."""
    stage = _stage("serial", serial={"min_peaks": 1})
    rng = np.random.default_rng(3)
    blank = rng.poisson(10, (SIDE, SIDE)).astype(np.uint16)
    hit = blank.copy()
    hit[10:12, 20:22] = 500
    for n in range(10):
        stage.process(hit if n % 4 == 0 else blank, n, 0, float("nan"))
    live = stage.live()
    assert live["recent"], live["recent"]
    # the first frame's sample, then the rest: 2 hits in frames 1..9
    assert abs(live["recent"][-1]["hit_rate"] - 2 / 9) < 1e-9, live["recent"]
