"""DECTRIS Stream V2 end to end: ``edge run`` fed by ``edge sim --format stream2``, both real processes.

Every frame the simulator sends intact is stored, and reads back through h5py + hdf5plugin equal to the
simulator's frame; every frame an injected fault destroyed (a corrupt compressed block, a wrong
typed-array tag, a truncated CBOR message) is a loss record with that fault's reason; the start
message's geometry and mask are recorded with the run. A series whose end message never comes is
closed by the next series, with every frame stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (the bitshuffle filter for reading back)
import numpy as np
import pytest
from edgeprocs import EdgeStack, get_json, loopback_overrides, run_bounded_demo, wait_for

from edge.config import load_settings
from hw_sim.physics import make_source
from kernels import Geometry, compress_chunk

HEIGHT, WIDTH = 48, 64


def _stack(tmp_path: Path, *extra: str) -> EdgeStack:
    return EdgeStack(
        tmp_path,
        [
            'stream.format="stream2"',
            f"detector.height={HEIGHT}",
            f"detector.width={WIDTH}",
            "store.frames_per_file=10",
            "reduction.bins=20",
            *extra,
        ],
    )


def _sim(stack: EdgeStack, frames: int, *flags: str) -> dict[str, Any]:
    proc = stack.start(
        "sim", "--format", "stream2", "--frames", str(frames), "--rate", "100", "--json", *flags,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return dict(json.loads(out.strip().splitlines()[-1]))


def _ended_runs(stack: EdgeStack, count: int) -> list[dict[str, Any]]:
    def ended() -> Any:
        runs = get_json(stack.url + "/api/runs")
        done = [r for r in runs if r["ended_at"] is not None]
        return len(done) >= count and done

    wait_for(ended, 60, f"{count} run(s) to end")
    return [stack.run(r["run_uid"]) for r in get_json(stack.url + "/api/runs")]  # newest first


def _stored(stack: EdgeStack, run: dict[str, Any]) -> dict[int, np.ndarray]:
    frames: dict[int, np.ndarray] = {}
    for row in run["files"]:
        path = Path(row["path"])
        if path.suffix != ".h5":
            continue
        with h5py.File(path if path.is_absolute() else stack.store / path, "r") as handle:
            data = handle["/entry/data/data"]
            for index, number in enumerate(handle["/entry/data/frame_number"][:]):
                assert int(number) not in frames, f"frame {number} stored twice"
                frames[int(number)] = data[index]
    return frames


def _wait_files(stack: EdgeStack, run_uid: str, frames: int) -> dict[str, Any]:
    def complete() -> Any:
        run = stack.run(run_uid)
        return sum(f["n_frames"] for f in run["files"]) >= frames and run

    return dict(wait_for(complete, 60, f"{frames} frames of run {run_uid} in the ledger"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_stream2_frames_stored_equal_and_every_fault_is_a_loss_record(tmp_path: Path) -> None:
    frames = 40
    stack = _stack(tmp_path, "sim.corrupt=0.1", "sim.truncate=0.1", "sim.wrong_tag=0.1", "sim.fault_seed=5")
    try:
        stack.start_daemon()
        summary = _sim(stack, frames)
        truth = summary["faults"]["truth"]
        assert truth["frames_bad_block"] and truth["frames_wrong_tag"] and truth["frames_truncated"], truth
        lost = set(truth["frames_lost"])
        _ended_runs(stack, 1)
        run = _wait_files(stack, summary["run_uid"], frames - len(lost))
        assert run["exit_status"] == "success"

        # every fault is a loss record with its reason
        by_reason: dict[str, set[int]] = {}
        for loss in run["losses"]:
            by_reason.setdefault(loss["reason"], set()).update(
                range(loss["first_frame"], loss["last_frame"] + 1)
            )
        assert by_reason.get("stream2_bad_chunk") == set(truth["frames_bad_block"]), run["losses"]
        assert by_reason.get("stream2_unsupported_tag") == set(truth["frames_wrong_tag"]), run["losses"]
        assert by_reason.get("stream2_unreadable_message") == set(truth["frames_truncated"]), run["losses"]
        assert set(by_reason) == {
            "stream2_bad_chunk",
            "stream2_unsupported_tag",
            "stream2_unreadable_message",
        }

        # every other frame is stored once and equals the simulator's frame
        settings = load_settings(overrides=[f"detector.height={HEIGHT}", f"detector.width={WIDTH}"])
        source = make_source(
            settings.sim.mode,
            (HEIGHT, WIDTH),
            Geometry(**settings.geometry.model_dump()),
            seed=settings.sim.seed,
            pool=settings.sim.pool,
            dtype=settings.detector.dtype,
        )
        stored = _stored(stack, run)
        assert sorted(stored) == sorted(set(range(frames)) - lost)
        for number, pixels in stored.items():
            assert np.array_equal(pixels, source.frame(number)), f"frame {number} differs"
        # the start message's acquisition fields describe the detector in the NXmx files: frame and
        # count time (sent at 100 Hz), the sensor from its geometry fields
        first = next(Path(r["path"]) for r in run["files"] if r["path"].endswith(".h5"))
        with h5py.File(first if first.is_absolute() else stack.store / first, "r") as handle:
            detector = handle["/entry/instrument/detector"]
            assert detector["frame_time"][()] == pytest.approx(0.01)
            assert 0.009 < detector["count_time"][()] < 0.01
            assert detector["sensor_material"][()] == b"Si" and detector["sensor_thickness"][()] == 450e-6
    finally:
        stack.stop_all()

    # the start message's metadata is recorded with the run
    with sqlite3.connect(stack.store / "ledger.sqlite") as db:
        (config_text,) = db.execute(
            "SELECT config FROM runs WHERE run_uid=?", (summary["run_uid"],)
        ).fetchone()
    config = json.loads(config_text)
    assert config["format"] == "stream2" and config["shape"] == [WIDTH, HEIGHT]
    stream2 = config["stream2"]
    assert stream2["channel"] == "threshold_1" and stream2["channels"] == ["threshold_1"]
    assert stream2["geometry"]["detector_distance"] == settings.geometry.dist
    assert stream2["pixel_mask"]["threshold_1"]["masked_pixels"] == 0
    assert stream2["user_data"]["edge_sim"]["seed"] == settings.sim.seed


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_stream2_series_without_its_end_is_closed_by_the_next(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    try:
        stack.start_daemon()
        first = _sim(stack, 10, "--set", "sim.missing_end=true", "--set", "sim.series=1")
        assert first["faults"]["truth"]["end_sent"] is False
        second = _sim(stack, 5, "--set", "sim.series=2")
        runs = _ended_runs(stack, 2)
        assert {r["run_uid"] for r in runs} == {first["run_uid"], second["run_uid"]}
        for summary, frames in ((first, 10), (second, 5)):
            run = _wait_files(stack, summary["run_uid"], frames)
            assert run["losses"] == []
            assert sorted(_stored(stack, run)) == list(range(frames))
    finally:
        stack.stop_all()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_with_stream2_delivers_every_frame(tmp_path: Path) -> None:
    frames = 30
    overrides = [
        *loopback_overrides(),
        "sim.rate_hz=100",
        f"detector.height={HEIGHT}",
        f"detector.width={WIDTH}",
    ]
    summary = run_bounded_demo(tmp_path, frames, ["--format", "stream2"], overrides)
    assert summary["sim"]["encoding"] == "stream2-bslz4"
    assert summary["frames_sent"] == summary["frames_stored"] == summary["frames_delivered"] == frames
    assert summary["frames_lost"] == 0 and summary["loss_records"] == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["raw", "powder"])
def test_stream2_chunks_are_stored_exactly_as_received(tmp_path: Path, mode: str) -> None:
    """Pass-through: each stored HDF5 chunk is byte for byte the simulator's bitshuffle-LZ4 block; in raw
    mode nothing is decompressed or recompressed, in powder mode the pixels are decoded for the reduction
    only; a corrupt block is still a loss record."""
    frames = 20
    stack = _stack(tmp_path, f'reduction.mode="{mode}"', "sim.corrupt=0.1", "sim.fault_seed=2")
    try:
        stack.start_daemon()
        summary = _sim(stack, frames)
        bad = set(summary["faults"]["truth"]["frames_bad_block"])
        assert bad, summary["faults"]
        _ended_runs(stack, 1)
        run = _wait_files(stack, summary["run_uid"], frames - len(bad))
        receiver = stack.status()["receiver"]
        pipeline = stack.status()["pipeline"]
    finally:
        stack.stop_all()
    assert {(loss["first_frame"], loss["reason"]) for loss in run["losses"]} == {
        (n, "stream2_bad_chunk") for n in bad
    }
    assert receiver["frames_passed_through"] == frames - len(bad)
    assert pipeline["frames_passed_through"] == frames - len(bad)
    assert pipeline.get("bytes_compressed", 0) > 0
    settings = load_settings(overrides=[f"detector.height={HEIGHT}", f"detector.width={WIDTH}"])
    source = make_source(
        settings.sim.mode,
        (HEIGHT, WIDTH),
        Geometry(**settings.geometry.model_dump()),
        seed=settings.sim.seed,
        pool=settings.sim.pool,
        dtype=settings.detector.dtype,
    )
    seen = set()
    for row in run["files"]:
        path = Path(row["path"])
        if path.suffix != ".h5":
            continue
        with h5py.File(path if path.is_absolute() else stack.store / path, "r") as handle:
            if "/entry/data/data" not in handle:
                continue
            data = handle["/entry/data/data"]
            for index, number in enumerate(handle["/entry/data/frame_number"][:]):
                _, stored = data.id.read_direct_chunk((index, 0, 0))
                assert stored == compress_chunk(source.frame(int(number))), f"frame {number}: chunk differs"
                assert np.array_equal(data[index], source.frame(int(number)))  # and hdf5plugin reads it
                seen.add(int(number))
    assert seen == set(range(frames)) - bad


@pytest.mark.timeout(180)
def test_stream2_detector_mask_and_mask_file_both_exclude_pixels_from_the_powder_profile(
    tmp_path: Path,
) -> None:
    """The start message's pixel mask (nonzero = bad, DECTRIS) OR ``reduction.mask_file``: a hot pixel
    masked by either is left out of every azimuthal profile; the run records both masks with checksums,
    and the data files' NXmx pixel_mask holds their union."""
    import zmq

    from hw_sim.stream2_sender import encode_end, encode_image, encode_start

    detector_pixel, file_pixel = (20, 30), (30, 40)
    detector_mask = np.zeros((HEIGHT, WIDTH), np.uint32)
    detector_mask[detector_pixel] = 1 << 1  # NXmx "dead" bit, as a DECTRIS detector sends it
    file_mask = np.zeros((HEIGHT, WIDTH), bool)
    file_mask[file_pixel] = True
    mask_path = tmp_path / "mask.npy"
    np.save(mask_path, file_mask)
    frame = np.full((HEIGHT, WIDTH), 10, np.uint16)
    frame[detector_pixel] = frame[file_pixel] = 60000  # either one left in lifts its bin far above 10
    frames = 3
    stack = _stack(tmp_path, 'reduction.mode="powder"', f'reduction.mask_file="{mask_path}"')
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    try:
        push.bind(f"tcp://127.0.0.1:{stack.stream_port}")  # the detector binds, the daemon connects
        stack.start_daemon()
        uid = "masked-series-1"
        push.send(encode_start(1, uid, (HEIGHT, WIDTH), "uint16", frames, {}, detector_mask))
        chunk = compress_chunk(frame)
        for number in range(frames):
            push.send(encode_image(1, uid, number, (HEIGHT, WIDTH), "uint16", chunk, 0))
        push.send(encode_end(1, uid))
        _ended_runs(stack, 1)
        run = _wait_files(stack, uid, frames)
    finally:
        push.close(linger=1000)
        context.term()
        stack.stop_all()

    profiles, nxmx_masks = [], []
    for row in run["files"]:
        path = Path(row["path"])
        if path.suffix != ".h5":
            continue
        with h5py.File(path if path.is_absolute() else stack.store / path, "r") as handle:
            if "/entry/reduced/I" in handle and "/entry/data/data" in handle:
                profiles.extend(handle["/entry/reduced/I"][:])
                nxmx_masks.append(handle["/entry/instrument/detector/pixel_mask"][:])
    assert len(profiles) == frames
    for intensity in profiles:
        finite = intensity[np.isfinite(intensity) & (intensity != 0)]
        assert finite.size > 10
        # every pixel left holds 10 counts; 1e-6 relative: float32 sums in our own integration kernel
        np.testing.assert_allclose(finite, 10.0, rtol=1e-6)
    for pixel_mask in nxmx_masks:
        assert sorted(zip(*np.nonzero(pixel_mask), strict=True)) == [detector_pixel, file_pixel]

    with sqlite3.connect(stack.store / "ledger.sqlite") as db:
        (config_text,) = db.execute("SELECT config FROM runs WHERE run_uid=?", (uid,)).fetchone()
    record = json.loads(config_text)["reduction_mask"]
    settings_source, detector_source = record["sources"]
    assert settings_source["source"] == "settings" and settings_source["mask_file"] == str(mask_path)
    assert settings_source["mask_file_sha256"] == hashlib.sha256(mask_path.read_bytes()).hexdigest()
    assert settings_source["masked_pixels"] == 1
    assert detector_source["source"] == "detector" and detector_source["channel"] == "threshold_1"
    assert detector_source["masked_pixels"] == 1
    assert detector_source["wire_sha256"] == hashlib.sha256(detector_mask.astype("<u4").tobytes()).hexdigest()
    assert record["masked_pixels"] == 2
    assert record["geometry_source"] == "geometry settings"


@pytest.mark.timeout(180)
def test_a_start_declaring_frames_larger_than_a_ring_slot_sets_up_no_mode_for_them(tmp_path: Path) -> None:
    """An outside probe: a start of 16384 x 16384 under a 48 x 64 detector made powder compute its
    geometry for that size (14 GB, 90 s, the next series waiting). No frame of that size fits a ring slot,
    so no mode is set up for it: the run says why, its image is a loss, the next series is reduced."""
    import zmq

    from hw_sim.stream2_sender import encode_end, encode_image, encode_start

    stack = _stack(tmp_path, 'reduction.mode="powder"')
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    frame = np.full((HEIGHT, WIDTH), 10, np.uint16)
    chunk = compress_chunk(frame)
    try:
        push.bind(f"tcp://127.0.0.1:{stack.stream_port}")
        stack.start_daemon()
        big = (2048, 2048)  # 8 MiB of uint16: more than the 64 KiB slot (cheap enough for the old code)
        push.send(encode_start(1, "declared-big", big, "uint16", 1, {}))
        push.send(encode_image(1, "declared-big", 0, (HEIGHT, WIDTH), "uint16", chunk, 0))
        push.send(encode_end(1, "declared-big"))
        push.send(encode_start(2, "after-big", (HEIGHT, WIDTH), "uint16", 2, {}))
        for number in range(2):
            push.send(encode_image(2, "after-big", number, (HEIGHT, WIDTH), "uint16", chunk, 0))
        push.send(encode_end(2, "after-big"))
        _ended_runs(stack, 2)
        after = _wait_files(stack, "after-big", 2)
        big_run = stack.run("declared-big")
    finally:
        push.close(linger=1000)
        context.term()
        stack.stop_all()
    note = json.loads(big_run["config"]).get("mode_not_started", "")
    assert "larger than a ring slot" in note and "2048 x 2048" in note
    assert big_run["exit_status"] == "fail" and big_run["frames_stored"] == 0
    assert after["exit_status"] == "success" and after["frames_stored"] == 2
    assert "mode_not_started" not in json.loads(after["config"])
