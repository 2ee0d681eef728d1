"""Each reduction mode's stage on every kernel backend equals the NumPy backend (the oracle), on small
frames (<= 64x64, so the GPU backend also runs under numba's CUDA simulator in CI); asking for the GPU
where there is none falls back with a logged reason and says so in the backend's ``degraded_from``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import kernels
from edge.config import ReductionSettings
from edge.modes import RunContext, make_stage
from hw_sim.physics import make_source
from kernels import Geometry, get_backend

SIDE = 32  # the CUDA simulator runs every GPU thread in Python: keep the frames small
GEOMETRY = Geometry(dist=0.05, poni1=SIDE / 2 * 75e-6, poni2=SIDE / 2 * 75e-6, wavelength=1e-10)


@pytest.fixture(params=["numba", "gpu"])
def backend(request: pytest.FixtureRequest) -> kernels.Backend:
    if request.param == "gpu" and os.environ.get("EDGE_TEST_GPU") != "1":
        pytest.skip("runs in test_modes_on_the_gpu_backend_under_the_cuda_simulator (or EDGE_TEST_GPU=1)")
    try:
        return get_backend(request.param)
    except kernels.BackendUnavailable as error:
        pytest.skip(str(error))


def _run(backend: kernels.Backend, mode: str, frames: list[np.ndarray], keys: list[int], **params: object):
    settings = ReductionSettings(mode=mode, roi=[(4, 16, 4, 16)], **params)  # type: ignore[arg-type]
    stage = make_stage(RunContext(backend, GEOMETRY, (SIDE, SIDE), 24, "2th_deg", settings))
    angles = np.linspace(0, 180, sum(1 for k in keys if k == 0), endpoint=False)
    results, a = [], iter(angles)
    for n, (frame, key) in enumerate(zip(frames, keys, strict=True)):
        angle = float(next(a)) if key == 0 else float("nan")
        results.append(stage.process(frame, n, key, angle))
    return stage, results


def test_powder_and_serial_equal_the_numpy_backend(backend: kernels.Backend) -> None:
    rings = make_source("rings", (SIDE, SIDE), GEOMETRY, seed=3, pool=3)
    frames = [rings.frame(n) for n in range(2)]
    numpy = get_backend("numpy")
    _, ours = _run(backend, "powder", frames, [0] * 2, cake_bins=6)
    _, ref = _run(numpy, "powder", frames, [0] * 2, cake_bins=6)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a.products["I"], b.products["I"], rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(a.products["I_errors"], b.products["I_errors"], rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(a.products["cake"], b.products["cake"], rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(a.products["roi"]["sum"], b.products["roi"]["sum"], rtol=1e-12)
    spots = make_source("spots", (SIDE, SIDE), GEOMETRY, seed=5, pool=2, hit_fraction=0.5, spots_per_hit=4.0)
    frames = [spots.frame(n) for n in range(2)]
    params = {"serial": {"min_snr": 4.0, "min_peaks": 2}}
    _, ours = _run(backend, "serial", frames, [0] * 2, **params)
    _, ref = _run(numpy, "serial", frames, [0] * 2, **params)
    for a, b in zip(ours, ref, strict=True):
        assert a.row["is_hit"] == b.row["is_hit"] and a.row["n_peaks"] == b.row["n_peaks"]
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"):
            np.testing.assert_allclose(a.products["peaks"][name], b.products["peaks"][name], rtol=1e-5)


def test_powder_frames_started_ahead_equal_processed_ones(backend: kernels.Backend) -> None:
    """The pipeline starts a frame before the earlier ones' products are collected (on the GPU its copy
    and kernel then overlap the next frame's hand-over, more frames than the feed holds; with a cake
    one device copy serves both): started four ahead and finished in order, every frame's products
    equal NumPy's, in the same order."""
    rings = make_source("rings", (SIDE, SIDE), GEOMETRY, seed=4, pool=4)
    frames = [rings.frame(n) for n in range(4)]
    settings = ReductionSettings(mode="powder", roi=[(4, 16, 4, 16)], cake_bins=6)  # type: ignore[arg-type]
    stage = make_stage(RunContext(backend, GEOMETRY, (SIDE, SIDE), 24, "2th_deg", settings))
    reference = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (SIDE, SIDE), 24, "2th_deg", settings))
    started = [stage.start(frame, n, 0, float("nan")) for n, frame in enumerate(frames)]
    for n, result in enumerate(started):
        want = reference.process(frames[n], n, 0, float("nan"))
        assert result.finish() is result and result.pending is None
        assert list(result.products) == list(want.products) == ["I", "I_errors", "cake", "cake_errors", "roi"]
        np.testing.assert_allclose(result.products["I"], want.products["I"], rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(result.products["I_errors"], want.products["I_errors"], rtol=1e-9)
        np.testing.assert_allclose(result.products["cake"], want.products["cake"], rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(result.products["cake_errors"], want.products["cake_errors"], rtol=1e-9)
        np.testing.assert_allclose(result.products["roi"]["sum"], want.products["roi"]["sum"], rtol=1e-12)
    live = stage.live()
    assert live is not None and np.allclose(live["intensity"], np.nan_to_num(started[-1].products["I"]))


@pytest.mark.parametrize("mode", ["serial", "powder"])
def test_frames_analysed_several_at_once_equal_frames_processed_one_by_one(mode: str) -> None:
    """``reduction.analysis_threads``: the stage's ``analyse`` runs on the run's analysis threads, several
    frames at once, and ``fold`` keeps frame order: hits, vetoes, counters and every product equal those
    of the frames processed one by one."""
    numba = get_backend("numba")
    source = (
        make_source("spots", (SIDE, SIDE), GEOMETRY, seed=5, pool=8, hit_fraction=0.5, spots_per_hit=4.0)
        if mode == "serial"
        else make_source("rings", (SIDE, SIDE), GEOMETRY, seed=3, pool=8)
    )
    frames = [source.frame(n) for n in range(8)]
    settings = ReductionSettings(
        mode=mode,  # type: ignore[arg-type]
        roi=[(4, 16, 4, 16)],
        serial={"min_snr": 4.0, "min_peaks": 2},  # type: ignore[arg-type]
    )
    threads: set[str] = set()
    with ThreadPoolExecutor(3, thread_name_prefix="analysis") as pool:
        ours = make_stage(
            RunContext(
                numba, GEOMETRY, (SIDE, SIDE), 24, "2th_deg", settings, store_blanks="drop", analysis=pool
            )
        )
        analyse = ours.analyse

        def recorded(raw: np.ndarray, missing: np.ndarray | None = None) -> object:
            threads.add(threading.current_thread().name)
            return analyse(raw, missing)

        ours.analyse = recorded  # type: ignore[method-assign]
        started = [ours.start(frame, n, 0, float("nan")) for n, frame in enumerate(frames)]
        results = [result.finish() for result in started]
    one_by_one = make_stage(
        RunContext(numba, GEOMETRY, (SIDE, SIDE), 24, "2th_deg", settings, store_blanks="drop")
    )
    want = [one_by_one.process(frame, n, 0, float("nan")) for n, frame in enumerate(frames)]
    assert threads and all(name.startswith("analysis") for name in threads)
    for got, expected in zip(results, want, strict=True):
        assert (got.keep, got.stream, got.row) == (expected.keep, expected.stream, expected.row)
        assert list(got.products) == list(expected.products)
        for name, value in expected.products.items():
            for key, item in value.items() if isinstance(value, dict) else [(name, value)]:
                other = got.products[name][key] if isinstance(value, dict) else got.products[name]
                np.testing.assert_array_equal(other, item)
    assert ours.frames == one_by_one.frames == len(frames)
    if mode == "serial":
        assert (ours.hits, ours.vetoed) == (one_by_one.hits, one_by_one.vetoed) and ours.vetoed > 0


def test_tomo_slices_equal_the_numpy_backend(backend: kernels.Backend) -> None:
    tomo = make_source("tomo", (SIDE, SIDE), seed=2, n_angles=6, n_darks=1, n_flats=1)
    n = tomo.scan_length
    frames = [tomo.frame(i) for i in range(n)]
    keys = [{"projection": 0, "flat": 1, "dark": 2}[tomo.frame_truth(i).kind] for i in range(n)]
    params = {"tomo": {"slices": [12]}}
    ours, _ = _run(backend, "tomo", frames, keys, **params)
    ref, _ = _run(get_backend("numpy"), "tomo", frames, keys, **params)
    a, b = ours.finish()["slices"], ref.finish()["slices"]
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))


def test_asking_for_a_missing_gpu_falls_back_with_a_logged_reason(caplog: pytest.LogCaptureFixture) -> None:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or os.environ.get("EDGE_TEST_GPU") == "1":
        pytest.skip("a GPU (or its simulator) is present here")
    with caplog.at_level(logging.WARNING, logger="kernels"):
        backend = get_backend("gpu", fallback=True)  # as the daemon asks for reduction.backend = "gpu"
    assert backend.name in ("numba", "numpy") and "gpu" in backend.degraded_from
    assert any("falling back" in record.getMessage() for record in caplog.records)
    # every mode runs on what the registry chose
    stage = make_stage(
        RunContext(backend, GEOMETRY, (SIDE, SIDE), 24, "2th_deg", ReductionSettings(mode="serial"))
    )
    assert stage.process(np.zeros((SIDE, SIDE), np.uint16), 0, 0, float("nan")).row["n_peaks"] == 0


@pytest.mark.gpu
def test_modes_on_the_gpu_backend_under_the_cuda_simulator() -> None:
    pytest.importorskip("numba.cuda")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "EDGE_TEST_GPU": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            __file__,
            "-q",
            "-k",
            "gpu and not missing and not simulator",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::numba.core.errors.NumbaPerformanceWarning",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=Path(__file__).parents[3],
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout, done.stdout[-2000:]


def test_tomo_estimates_an_off_centre_rotation_axis() -> None:
    side = 32
    tomo = make_source("tomo", (side, side), seed=4, n_angles=90, n_darks=2, n_flats=2, axis_offset_px=3.0)
    frames = [tomo.frame(i) for i in range(tomo.scan_length)]
    keys = [
        {"projection": 0, "flat": 1, "dark": 2}[tomo.frame_truth(i).kind] for i in range(tomo.scan_length)
    ]
    settings = ReductionSettings(mode="tomo", tomo={"slices": [16]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    for n, (frame, key) in enumerate(zip(frames, keys, strict=True)):
        truth = tomo.frame_truth(n)
        stage.process(frame, n, key, float("nan") if truth.angle_deg is None else truth.angle_deg)
    products = stage.finish()
    assert products["center_source"].startswith("estimated")
    assert abs(products["center"] - (side // 2 + 3.0)) <= 0.3, products["center"]


def _tomo_scan(stage: object, tomo: object, upto: int | None = None) -> None:
    for n in range(tomo.scan_length if upto is None else upto):  # type: ignore[attr-defined]
        truth = tomo.frame_truth(n)  # type: ignore[attr-defined]
        key = {"projection": 0, "flat": 1, "dark": 2}[truth.kind]
        angle = float("nan") if truth.angle_deg is None else truth.angle_deg
        stage.process(tomo.frame(n), n, key, angle)  # type: ignore[attr-defined]


def test_tomo_streams_about_the_estimated_axis_once_the_scan_has_turned_180_degrees() -> None:
    """A 360-degree scan about an axis 3 px off the centre column: once two projections 180 degrees apart
    are in (mid-scan), the live slice is streamed about the axis they give, so before the scan ends it
    is the reconstruction about that axis (not a blurred one about the centre column), and the final
    slices, not redone, equal the filtered back-projection of the whole scan about the final axis."""
    side = 32
    tomo = make_source(
        "tomo", (side, side), seed=4, n_angles=120, n_darks=2, n_flats=2, axis_offset_px=3.0, range_deg=360.0
    )
    settings = ReductionSettings(mode="tomo", tomo={"slices": [16]})  # type: ignore[arg-type]
    backend = get_backend("numpy")
    stage = make_stage(RunContext(backend, GEOMETRY, (side, side), 24, "2th_deg", settings))
    _tomo_scan(stage, tomo)
    sinogram = np.stack(stage.sinograms)[:, 0, :]  # type: ignore[attr-defined]
    angles = np.asarray(stage.angles)  # type: ignore[attr-defined]
    live = np.asarray(stage.reconstructor.partial_slices())[0]  # type: ignore[attr-defined]
    products = stage.finish()
    center = products["center"]
    assert products["center_source"] == "estimated from the projections at 0 and 180 degrees"
    assert abs(center - (side // 2 + 3.0)) <= 0.3, center
    expected = backend.fbp(sinogram, angles, filter_name="ramp", center=center)
    scale = float(np.abs(expected).max())
    assert np.abs(live - expected).max() <= 1e-4 * scale  # the live slice, before the scan's end
    assert np.abs(products["slices"][0] - expected).max() <= 1e-4 * scale
    about_column = backend.fbp(sinogram, angles, filter_name="ramp", center=float(side // 2))
    assert np.abs(about_column - expected).max() > 0.05 * scale  # the axis matters at this offset


def test_the_live_slice_says_which_axis_it_is_about_and_how_many_projections_it_holds() -> None:
    """The dashboard's live slice (``live()["slice"]``) after the axis moved mid-scan is the new
    reconstruction, catching up on the projections streamed before: it says the axis it is about, how it
    was found, and how many of the scan's projections it holds so far (it had no axis at all, and looked
    worse for a while with nothing to say why)."""
    side = 32
    tomo = make_source(
        "tomo", (side, side), seed=4, n_angles=120, n_darks=2, n_flats=2, axis_offset_px=3.0, range_deg=360.0
    )
    settings = ReductionSettings(mode="tomo", tomo={"slices": [16]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    _tomo_scan(stage, tomo, upto=4 + 30)  # darks, flats and 30 projections: a quarter turn, no pair yet
    before = stage.live()["slice"]  # type: ignore[index]
    assert before["center"] == side // 2 and before["center_source"] == "the detector's centre column"
    assert before["projections_in_slice"] == before["projections"] == 30
    for n in range(4 + 30, 4 + 70):  # 70 projections: the pair came at the 61st (180 degrees), the
        truth = tomo.frame_truth(n)  # axis moved, the 60 before it back-projected again, 2 a projection
        stage.process(tomo.frame(n), n, 0, float(truth.angle_deg))
    after = stage.live()["slice"]  # type: ignore[index]
    assert abs(after["center"] - (side // 2 + 3.0)) <= 0.3
    assert after["center_source"].startswith("estimated from the projections at 0 and 180")
    # the 61st brought 2 of the 61 to back-project again, each of the 9 after it itself and 2 more
    assert after["projections"] == 70 and after["projections_in_slice"] == 2 + 3 * 9


def test_tomo_s_final_product_names_the_axis_of_the_final_slices() -> None:
    """An outside probe: flats after the projections (the scan's end flats), so the slices were redone at
    the end about the whole scan's axis; the file named it, the live product still the axis streamed
    about (0.006 px apart, each from another pair of projections). Both name the final slices' axis."""
    side = 32
    tomo = make_source("tomo", (side, side), seed=4, n_angles=91, n_darks=2, n_flats=2, axis_offset_px=3.0)
    settings = ReductionSettings(mode="tomo", tomo={"slices": [16]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    last = tomo.scan_length - 1
    _tomo_scan(stage, tomo, last + 1)
    stage.process(tomo.frame(2), last + 1, 1, float("nan"))  # an end flat: the slices are redone
    products = stage.finish()
    assert products["center_source"].startswith("estimated from the projections")
    final = stage.live()["slice"]  # type: ignore[index]
    assert (final["center"], final["center_source"]) == (products["center"], products["center_source"])


def test_tomo_keeps_streaming_about_the_centre_column_until_the_scan_has_a_pair() -> None:
    """A 0-180 scan: no two projections 180 degrees apart until its last, so every projection before it is
    streamed about the centre column; the final slices come out about the estimated axis all the same."""
    side = 32
    tomo = make_source("tomo", (side, side), seed=4, n_angles=91, n_darks=2, n_flats=2, axis_offset_px=3.0)
    settings = ReductionSettings(mode="tomo", tomo={"slices": [16]})  # type: ignore[arg-type]
    backend = get_backend("numpy")
    stage = make_stage(RunContext(backend, GEOMETRY, (side, side), 24, "2th_deg", settings))
    last = tomo.scan_length - 1
    _tomo_scan(stage, tomo, last)  # every projection but the last (at 178 degrees)
    before = np.stack(stage.sinograms)[:, 0, :]  # type: ignore[attr-defined]
    live = np.asarray(stage.reconstructor.partial_slices())[0]  # type: ignore[attr-defined]
    streamed = backend.fbp(before, np.asarray(stage.angles), filter_name="ramp", center=float(side // 2))  # type: ignore[attr-defined]
    assert np.abs(live - streamed).max() <= 1e-4 * float(np.abs(streamed).max())
    stage.process(tomo.frame(last), last, 0, tomo.frame_truth(last).angle_deg)
    sinogram = np.stack(stage.sinograms)[:, 0, :]  # type: ignore[attr-defined]
    angles = np.asarray(stage.angles)  # type: ignore[attr-defined]
    products = stage.finish()
    assert products["center_source"].startswith("estimated from the projections at 0 and 178.0")
    assert abs(products["center"] - (side // 2 + 3.0)) <= 0.3, products["center"]
    expected = backend.fbp(sinogram, angles, filter_name="ramp", center=products["center"])
    assert np.abs(products["slices"][0] - expected).max() <= 1e-4 * float(np.abs(expected).max())


def test_tomo_estimates_the_axis_of_a_scan_that_does_not_start_at_zero() -> None:
    """A scan from -90 to +88 degrees (an outside probe's): the axis comes from two projections 180
    degrees apart (-90 and 88 is the nearest pair here), not from those nearest 0 and 180 mod 360,
    which are 90 degrees apart and gave an axis 7 px off."""
    side = 32
    tomo = make_source("tomo", (side, side), seed=4, n_angles=90, n_darks=2, n_flats=2, axis_offset_px=3.0)
    settings = ReductionSettings(mode="tomo", tomo={"slices": [16]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    for n in range(tomo.scan_length):
        truth = tomo.frame_truth(n)
        key = {"projection": 0, "flat": 1, "dark": 2}[truth.kind]
        angle = float("nan") if truth.angle_deg is None else truth.angle_deg - 90.0
        stage.process(tomo.frame(n), n, key, angle)
    products = stage.finish()
    assert products["center_source"] == "estimated from the projections at -90 and 88 degrees"
    assert abs(products["center"] - (side // 2 + 3.0)) <= 0.3, products["center"]


def test_tomo_keeps_the_centre_column_of_a_scan_short_of_180_degrees_and_says_why() -> None:
    side = 32
    settings = ReductionSettings(mode="tomo", tomo={"slices": [16]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    rng = np.random.default_rng(3)
    for n, angle in enumerate(np.arange(0.0, 150.0, 5.0)):
        stage.process(rng.integers(50, 100, (side, side)).astype(np.uint16), n, 0, float(angle))
    products = stage.finish()
    assert products["center"] == side // 2
    assert products["center_source"] == (
        "detector centre column (n_cols // 2): no two projections 180 +- 5 degrees apart"
    )


def test_tomo_slices_without_flats_name_the_dark_they_were_corrected_for(tmp_path: Path) -> None:
    """Darks but no flats: the sinograms are -log(projection - mean dark), as ``flat_field`` says; their
    and the slices' labels said -log(counts) (an outside tomography probe)."""
    import h5py

    from edge.store._reduced import _write_run_products

    side = 16
    settings = ReductionSettings(mode="tomo", tomo={"slices": [8]})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    rng = np.random.default_rng(5)
    stage.process(np.full((side, side), 5, np.uint16), 0, 2, float("nan"))  # a dark
    for n, angle in enumerate(np.arange(0.0, 180.0, 10.0), start=1):
        stage.process(rng.integers(50, 100, (side, side)).astype(np.uint16), n, 0, float(angle))
    products = stage.finish()
    assert "-log(projection - mean dark)" in products["flat_field"]
    with h5py.File(tmp_path / "r.nxs", "w") as handle:
        _write_run_products(handle.create_group("entry"), products)
        group = handle["/entry/reconstruction"]
        assert group["sinograms"].attrs["long_name"] == "-log(projection - mean dark)"
        assert group["slices"].attrs["long_name"] == "FBP of -log(projection - mean dark)"


@pytest.mark.parametrize("order", ["flats-after", "darks-and-flats-after", "before"])
def test_tomo_flats_taken_after_the_projections_go_into_the_final_slices(order: str) -> None:
    """Flats (and darks) taken at the scan's end, as many beamlines do: the final sinograms and slices
    are normalised with every dark and flat of the scan, equal to an FBP of the true line integrals;
    before, they were stored and left out, the slices of -log(counts) (an outside tomography probe)."""
    side, dark_level, flat_level = 24, 20.0, 1000.0
    settings = ReductionSettings(mode="tomo", tomo={"slices": [12], "center": 12.0})  # type: ignore[arg-type]
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, (side, side), 24, "2th_deg", settings))
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    body = np.where(yy**2 + xx**2 < 36, 0.02, 0.0)  # attenuation per pixel of a disc
    angles = np.arange(0.0, 180.0, 3.0)
    from skimage.transform import radon

    lines = radon(body, angles, circle=False).T  # (angles, detector positions)
    lines = lines[:, (lines.shape[1] - side) // 2 :][:, :side]
    references = [(2, dark_level), (1, flat_level)]
    before = references if order == "before" else references[:1] if order == "flats-after" else []
    after = [r for r in references if r not in before]
    n = 0
    for key, level in before:
        for _ in range(3):
            stage.process(np.full((side, side), level, np.float32), n, key, float("nan"))
            n += 1
    for angle, line in zip(angles, lines, strict=True):
        frame = np.repeat((flat_level - dark_level) * np.exp(-line)[None, :] + dark_level, side, axis=0)
        stage.process(frame.astype(np.float32), n, 0, float(angle))
        n += 1
    for key, level in after:
        for _ in range(3):
            stage.process(np.full((side, side), level, np.float32), n, key, float("nan"))
            n += 1
    products = stage.finish()
    assert products["flat_field"].startswith("applied: (projection - mean dark) / (mean flat - mean dark)")
    if after:
        assert "came after the first projection: the live slices were without them" in products["flat_field"]
    np.testing.assert_allclose(products["sinograms"][0], lines, atol=1e-4)
    expected = get_backend("numpy").fbp(lines, angles, center=12.0)
    np.testing.assert_allclose(products["slices"][0], expected, atol=1e-4 * np.abs(expected).max())
    assert products["flat_mean"].mean() == pytest.approx(flat_level)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_the_serial_finder_s_rings_are_centred_on_the_direct_beam_in_the_frames_own_pixels(
    orientation: int,
) -> None:
    """An outside probe (pyFAI's own orientation-2 PONI): the peak finder's background rings were centred
    on the direct beam in the sensor's frame, not the image's, ~350 columns off; the noise between the
    misplaced rings was found as peaks and every frame was a hit. The pixel nearest the beam (least 2theta,
    from the geometry pyFAI agrees with) is in the innermost ring, and so is its mirror image only when
    the beam is central."""
    shape = (48, 40)
    geometry = Geometry(
        dist=0.05, poni1=10 * 75e-6, poni2=30 * 75e-6, rot1=0.02, rot2=-0.015, orientation=orientation
    )
    settings = ReductionSettings(mode="serial")
    stage = make_stage(RunContext(get_backend("numpy"), geometry, shape, 24, "2th_deg", settings))
    rings = stage.finder.rings  # type: ignore[attr-defined]
    nearest = np.unravel_index(np.argmin(geometry.tth(shape)), shape)
    assert rings[nearest] == rings.min(), (nearest, np.unravel_index(np.argmin(rings), shape))
    x, y = kernels.direct_beam_in_image(geometry, shape)
    assert abs((y - 0.5) - nearest[0]) <= 1 and abs((x - 0.5) - nearest[1]) <= 1
