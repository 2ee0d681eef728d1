"""Each reduction mode end to end through the real processes: simulator -> daemon -> pull client.

The products are checked against the kernels on the stored frames (powder, tomo) or against the
simulator's ground truth (serial), and every frame's fate is proven from the upstream copy alone.
"""

from __future__ import annotations

import json
import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (filter 32008 for reading back)
import numpy as np
import pytest
from edgeprocs import EdgeStack, wait_for

from edge.config import ReductionSettings
from edge.modes import PowderStage, RunContext
from hw_sim.physics import make_source
from kernels import Geometry, compress_chunk, get_backend

pytestmark = pytest.mark.timeout(180)

SIDE = 256
PIXEL = 75e-6
# the beam at the centre of the small detector
GEOMETRY = {"dist": 0.1, "poni1": SIDE / 2 * PIXEL, "poni2": SIDE / 2 * PIXEL, "wavelength": 1e-10}


def _stack(
    tmp_path: Path,
    *extra: str,
    side: int = SIDE,
    geometry: dict[str, float] = GEOMETRY,
    backend: str = "numba",
) -> EdgeStack:
    return EdgeStack(
        tmp_path,
        [
            f"detector.height={side}",
            f"detector.width={side}",
            *(f"geometry.{k}={v}" for k, v in geometry.items()),
            "store.frames_per_file=100",
            "store.file_seconds=600",
            f"reduction.backend={backend}",
            *extra,
        ],
    )


def _run(stack: EdgeStack, frames: int) -> tuple[str, int]:
    run_uid = str(uuid.uuid4())
    sim = stack.start("sim", "--frames", str(frames), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
    out, _ = sim.communicate(timeout=150)
    sent = int(json.loads(out.strip().splitlines()[-1])["frames_sent"])

    def settled() -> dict[str, Any] | None:
        run = stack.run(run_uid)
        totals = run["totals"]
        if run["ended_at"] is None or run["where"]["bytes_pending"]:
            return None
        if totals["frames_stored"] + totals["frames_vetoed"] + totals["frames_lost"] < sent:
            return None
        return run

    wait_for(settled, 120, "every frame accounted for and every forwarded file verified")
    return run_uid, sent


def _upstream_accounting(directory: Path) -> dict[str, Any]:
    """Every frame's fate from the upstream copy alone: reduced files' frame tables + the RunStop."""
    stop = None
    for line in next(directory.glob("*.documents.jsonl")).read_text().splitlines():
        name, doc = json.loads(line)
        if name == "stop":
            stop = doc
    assert stop is not None
    dispositions = np.concatenate(
        [h5py.File(p, "r")["/entry/frames/disposition"][:] for p in sorted(directory.glob("*_reduced_*.nxs"))]
    )
    return {
        "stored": int(np.sum(dispositions == 0)),
        "vetoed": int(np.sum(dispositions == 1)),
        "lost": int(stop["edge_accounting"]["frames_lost"]),
        "stop": stop,
    }


def _frames_of(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    numbers, frames = [], []
    for path in paths:
        with h5py.File(path, "r") as handle:
            numbers.append(handle["/entry/data/frame_number"][:])
            frames.append(handle["/entry/data/data"][:])
    return np.concatenate(numbers), np.concatenate(frames)


def test_powder_products_equal_the_kernel_on_the_stored_frames(tmp_path: Path) -> None:
    stack = _stack(
        tmp_path,
        'reduction.mode="powder"',
        "reduction.bins=200",
        "reduction.cake_bins=18",
        "reduction.roi=[[100, 140, 100, 140]]",
        "sim.rate_hz=100",
    )
    try:
        stack.start_daemon()
        stack.start("pull")
        run_uid, sent = _run(stack, 40)
    finally:
        stack.stop_all()
    upstream = tmp_path / "upstream" / run_uid
    data_files = sorted(upstream.glob(f"{run_uid}_0*.h5"))
    numbers, _ = _frames_of(data_files)
    assert sorted(numbers) == list(range(sent))
    params = ReductionSettings(mode="powder", bins=200, cake_bins=18, roi=[(100, 140, 100, 140)])
    stage = PowderStage(
        RunContext(get_backend("numba"), Geometry(**GEOMETRY), (SIDE, SIDE), 200, "2th_deg", params)
    )
    with h5py.File(data_files[0], "r") as handle:
        reduced = handle["/entry/reduced"]
        assert reduced.attrs["signal"] == "I" and reduced["radial_axis"].attrs["units"] == "deg"
        assert reduced["radial_axis"].attrs["pyfai_unit"] == "2th_deg"
        assert reduced["radial_axis_edges"].shape == (201,)
        corrections = reduced["corrections"]
        assert not corrections["dark_applied"][()] and not corrections["solid_angle_applied"][()]
        settings = json.loads(handle["/entry/reduction/settings_json"][()])
        assert settings["mode"] == "powder" and settings["bins"] == 200
        for index in range(len(handle["/entry/data/frame_number"])):
            ours = stage.process(handle["/entry/data/data"][index], 0, 0, float("nan"))
            # our own deterministic kernel on the same frame: equal to the last bit
            np.testing.assert_array_equal(reduced["I"][index], ours.products["I"])
            np.testing.assert_array_equal(reduced["I_errors"][index], ours.products["I_errors"])
            np.testing.assert_array_equal(
                handle["/entry/reduced_2d/I"][index], ours.products["cake"].astype(np.float32)
            )
            np.testing.assert_array_equal(handle["/entry/roi/sum"][index], ours.products["roi"]["sum"])
    accounting = _upstream_accounting(upstream)
    assert accounting["stored"] + accounting["vetoed"] + accounting["lost"] == sent
    assert accounting["stop"]["edge_accounting"]["mode"] == "powder"
    # the reduced files upstream are NXazint1d applications (the profiles), with the cakes an NXazint2d
    # application of their own (/entry_2d), as nxvalidate checks them
    from nexusformat.nexus.validate import logger, validate_application

    logger.setLevel(logging.WARNING)
    reduced_files = sorted(upstream.glob(f"{run_uid}_reduced_*.nxs"))
    assert reduced_files
    for path in reduced_files:
        _warnings, errors = validate_application(str(path), application="NXazint1d")
        assert errors == 0, path
        _warnings, errors = validate_application(str(path), path="/entry_2d", application="NXazint2d")
        assert errors == 0, path
        with h5py.File(path, "r") as handle:
            assert handle["/entry/definition"][()] == b"NXazint1d"
            assert handle["/entry/reduction/input/bins"][()] == 200


@pytest.mark.parametrize("analysis_threads", [1, 3], ids=["on_the_reducing_thread", "three_frames_at_once"])
def test_serial_hits_and_peaks_agree_with_the_truth_and_only_hits_go_upstream(
    tmp_path: Path, analysis_threads: int
) -> None:
    """With ``reduction.analysis_threads`` 3, frames are analysed three at a time and folded in order:
    the veto of a blank is then known only in the writing thread, and everything below holds alike."""
    frames = 300
    stack = _stack(
        tmp_path,
        'reduction.mode="serial"',  # the finder's defaults (reduction.serial.*: box SNR 5, 2-200 px, 10 peaks)
        'store.blanks="drop"',
        'upstream.forward="hits"',
        'sim.mode="spots"',
        "sim.hit_fraction=0.3",
        "sim.rate_hz=150",
        f"reduction.analysis_threads={analysis_threads}",
    )
    try:
        stack.start_daemon()
        stack.start("pull")
        run_uid, sent = _run(stack, frames)
        run = stack.run(run_uid)
    finally:
        stack.stop_all()
    assert sent == frames
    source = make_source(
        "spots", (SIDE, SIDE), Geometry(**GEOMETRY), seed=1234, pool=frames, hit_fraction=0.3
    )
    truth = [source.frame_truth(n) for n in range(frames)]
    upstream = tmp_path / "upstream" / run_uid
    # the reduced files carry every frame's decision and peaks, vetoed blanks included
    numbers, hits, n_peaks, tables = [], [], [], []
    for path in sorted(upstream.glob("*_reduced_*.nxs")):
        with h5py.File(path, "r") as handle:
            numbers.append(handle["/entry/frames/frame_number"][:])
            hits.append(handle["/entry/frames/is_hit"][:])
            result = handle["/entry/result_1"]
            n_peaks.append(result["nPeaks"][:])
            tables.append(np.stack([result["peakYPosRaw"][:], result["peakXPosRaw"][:]], axis=-1))
    numbers_a, hits_a, n_a = np.concatenate(numbers), np.concatenate(hits), np.concatenate(n_peaks)
    table = np.concatenate(tables)
    agree = np.mean([hits_a[i] == truth[int(n)].hit for i, n in enumerate(numbers_a)])
    assert agree >= 0.99, agree
    matched_found = found = matched_truth = strong = 0
    for i, number in enumerate(numbers_a):
        spots = np.array([[s.row, s.col, s.snr] for s in truth[int(number)].spots]).reshape(-1, 3)
        peaks = table[i, : n_a[i]]
        found += len(peaks)
        strong += int(np.sum(spots[:, 2] >= 5))
        if len(peaks) and len(spots):
            d = np.hypot(*(peaks[:, None, :] - spots[None, :, :2]).transpose(2, 0, 1))
            matched_found += int(np.sum(d.min(axis=1) <= 1.5))
            matched_truth += int(np.sum(d.min(axis=0)[spots[:, 2] >= 5] <= 1.5))
    precision, recall = matched_found / found, matched_truth / strong
    assert precision >= 0.99 and recall >= 0.99, (precision, recall)
    # CrystFEL's geometry for the run travels with it, pointing at the peak tables
    geom = (upstream / f"{run_uid}.geom").read_text()
    assert "peak_list = /entry/result_1" in geom and "peak_list_type = cxi" in geom
    assert f"panel0/max_fs = {SIDE - 1}" in geom and "data = /entry/data/data" in geom
    # every frame's fate from the upstream copy alone
    accounting = _upstream_accounting(upstream)
    assert accounting["stored"] + accounting["vetoed"] + accounting["lost"] == sent
    assert (
        accounting["vetoed"] == int(np.sum(~hits_a))
        and accounting["stop"]["edge_accounting"]["frames_vetoed"]
    )
    # only hits' raw frames go upstream: bytes within 10% of hit fraction x raw bytes + products
    hit_fraction = float(np.mean(hits_a))
    raw_bytes = sum(len(compress_chunk(source.frame(n))) for n in range(frames))
    products = sum(p.stat().st_size for p in upstream.iterdir() if not p.name.startswith(f"{run_uid}_0"))
    expected = hit_fraction * raw_bytes + products
    actual = sum(p.stat().st_size for p in upstream.iterdir())
    assert abs(actual - expected) <= 0.1 * expected, (actual, expected)
    assert run["totals"]["bytes_upstream"] == actual
    assert run["totals"]["frames_vetoed"] == accounting["vetoed"]


def test_tomo_slices_equal_numpy_fbp_of_the_stored_frames_and_the_file_is_nxtomo(tmp_path: Path) -> None:
    side = 64
    stack = EdgeStack(
        tmp_path,
        [
            f"detector.height={side}",
            f"detector.width={side}",
            "store.frames_per_file=200",
            "store.file_seconds=600",
            'reduction.mode="tomo"',
            "reduction.tomo.slices=[20, 32]",
            "reduction.backend=numba",
            'sim.mode="tomo"',
            "sim.tomo_angles=90",
            "sim.tomo_darks=5",
            "sim.tomo_flats=5",
            "sim.rate_hz=200",
        ],
    )
    try:
        stack.start_daemon()
        stack.start("pull")
        run_uid, sent = _run(stack, 100)
        product = stack.run(run_uid)
    finally:
        stack.stop_all()
    assert sent == 100 and product["totals"]["frames_stored"] == 100
    upstream = tmp_path / "upstream" / run_uid
    (data_file,) = sorted(upstream.glob(f"{run_uid}_0*.h5"))
    with h5py.File(data_file, "r") as handle:
        assert handle["/entry/definition"][()] == b"NXtomo"
        # a voxel's size and the exposure, as tomography readers take them from NXtomo's detector
        detector = handle["/entry/instrument/detector"]
        assert detector["x_pixel_size"][()] == pytest.approx(PIXEL)  # the settings' default pitch
        assert detector["x_pixel_size"].attrs["units"] == "m"
        assert detector["distance"][()] == pytest.approx(GEOMETRY["dist"])
        assert (
            detector["frame_time"][()] == pytest.approx(1 / 200)
            and detector["count_time"].attrs["units"] == "s"
        )
        frames = handle["/entry/instrument/detector/data"][:].astype(np.float64)
        keys = handle["/entry/instrument/detector/image_key"][:]
        angles = handle["/entry/sample/rotation_angle"][:]
        # Data Exchange names read the same frames (virtual datasets, not copies)
        assert handle["/exchange/data"].shape[0] == 90 and handle["/exchange/data_dark"].shape[0] == 5
        np.testing.assert_array_equal(
            handle["/exchange/data_white"][:], handle["/entry/data/data"][keys == 1]
        )
        np.testing.assert_array_equal(handle["/exchange/theta"][:], angles[keys == 0])
    (reduced,) = sorted(upstream.glob("*_reduced_*.nxs"))
    with h5py.File(reduced, "r") as handle:
        slices = handle["/entry/reconstruction/slices"][:]
        rows = handle["/entry/reconstruction/rows"][:]
        center = float(handle["/entry/reconstruction/center"][()])
        units = [
            handle[f"/entry/reconstruction/{k}"].attrs["units"] for k in ("center", "rows", "rotation_angle")
        ]
        assert units == ["pixel", "pixel", "deg"]
        assert (
            handle["/entry/reconstruction/slices"].attrs["units"] == "1/pixel"
        )  # darks and flats came first
        assert list(handle["/entry/reconstruction"].attrs["axes"]) == ["rows", ".", "."]
    dark = frames[keys == 2].mean(axis=0)
    flat = frames[keys == 1].mean(axis=0)
    projections = frames[keys == 0]
    numpy = get_backend("numpy")
    for k, row in enumerate(rows):
        transmission = (projections[:, row, :] - dark[row]) / (flat[row] - dark[row])
        sinogram = -np.log(np.maximum(transmission, 1e-6))
        reference = numpy.fbp(sinogram.astype(np.float32), angles[keys == 0], center=center)
        assert np.max(np.abs(slices[k] - reference)) <= 1e-4 * np.max(np.abs(reference))
    from nexusformat.nexus.validate import logger, validate_application  # what nxvalidate runs

    logger.setLevel(logging.WARNING)
    _warnings, errors = validate_application(str(data_file), application="NXtomo")
    assert errors == 0


def test_powder_through_the_gpu_path_under_the_cuda_simulator(tmp_path: Path) -> None:
    """The daemon on the GPU backend (numba's CUDA simulator standing in for the device; frames of 32^2
    as every simulated GPU thread runs in Python): the ring is page-locked for the device, frames are
    started on the device ahead of their collection by the writer, and every stored frame's profile
    equals the NumPy kernel's on that frame."""
    pytest.importorskip("numba.cuda")
    side = 32
    geometry = {"dist": 0.05, "poni1": side / 2 * PIXEL, "poni2": side / 2 * PIXEL, "wavelength": 1e-10}
    stack = _stack(
        tmp_path,
        'reduction.mode="powder"',
        "reduction.bins=24",
        "sim.rate_hz=50",
        side=side,
        geometry=geometry,
        backend="gpu",
    )
    try:
        stack.start_daemon(env={"NUMBA_ENABLE_CUDASIM": "1"})
        pipeline = stack.status()["pipeline"]
        assert pipeline["backend"] == "gpu" and pipeline["ring_pinned_bytes"] > 0, pipeline
        stack.start("pull")
        run_uid, sent = _run(stack, 30)
    finally:
        stack.stop_all()
    upstream = tmp_path / "upstream" / run_uid
    data_files = sorted(upstream.glob(f"{run_uid}_0*.h5"))
    numbers, frames = _frames_of(data_files)
    assert sorted(numbers) == list(range(sent))
    params = ReductionSettings(mode="powder", bins=24)
    stage = PowderStage(
        RunContext(get_backend("numpy"), Geometry(**geometry), (side, side), 24, "2th_deg", params)
    )
    with h5py.File(data_files[0], "r") as handle:
        profiles = handle["/entry/reduced/I"][:]
    for index, frame in enumerate(frames):
        want = stage.process(frame, 0, 0, float("nan")).products["I"]
        np.testing.assert_allclose(profiles[index], want, rtol=1e-9, atol=1e-12)
