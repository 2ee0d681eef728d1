"""A run's reduced files are finished every ``store.reduced_file_seconds`` as well as every 1000 rows, so
a crash leaves at most that long of frame-table rows (a serial run's vetoed blanks) unrecorded. Through
the real appliance in this process, frames from a ZeroMQ PUSH peer."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from edgeprocs import in_process_appliance, wait_for

from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start

SHAPE = (16, 24)


def test_a_reduced_file_is_finished_when_its_time_is_up_while_the_run_goes_on(tmp_path: Path) -> None:
    with in_process_appliance(tmp_path, SHAPE, "store.reduced_file_seconds=0.5") as (appliance, push, _s):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="slow", frames_expected=6))
        for frame in range(3):
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", np.ones(SHAPE, np.uint16).tobytes()))
        directory = tmp_path / "store" / "slow"
        first = directory / "slow_reduced_00000.nxs"
        # the series is still open (3 of 6 frames): the time alone finishes the first reduced file
        wait_for(first.exists, 20, "the first reduced file, by time")
        assert appliance.view.run("slow")["exit_status"] is None
        for frame in range(3, 6):
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", np.ones(SHAPE, np.uint16).tobytes()))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.view.run("slow").get("exit_status"), 20, "the run's end")
    numbers = []
    for path in sorted(directory.glob("slow_reduced_*.nxs")):
        with h5py.File(path, "r") as f:
            numbers += [int(n) for n in f["/entry/frames/frame_number"][:]]
    assert sorted(numbers) == list(range(6)) and len(numbers) == 6  # every row once, over >= 2 files
    assert first.exists() and len(list(directory.glob("slow_reduced_*.nxs"))) >= 2


def test_rows_waiting_for_their_data_file_close_it_early_beyond_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows say "stored" only once their data file is closed; with many frames to a file they would wait
    without bound, so at ``MAX_WAITING_ROWS`` frames in the open files (10 000; 25 here) they close early
    (``files_rolled_for_rows``); not at that many rows waiting, which count files still closing too (each
    frame after a roll rolled again: files of one frame). Every frame stored once, every row written."""
    import edge.pipeline

    monkeypatch.setattr(edge.pipeline, "MAX_WAITING_ROWS", 25)
    n = 80
    with in_process_appliance(tmp_path, SHAPE, "store.frames_per_file=1000") as (appliance, push, _s):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="many", frames_expected=n))
        for frame in range(n):
            image = np.full(SHAPE, frame, np.uint16)
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", image.tobytes()))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.view.run("many").get("exit_status"), 30, "the run's end")
        rolled = appliance.pipeline.stats["files_rolled_for_rows"]
        run = appliance.view.run("many")
    sizes = sorted(f["n_frames"] for f in run["files"] if f["kind"] == "data")
    assert rolled == 3 and sizes == [5, 25, 25, 25], (rolled, sizes)  # no file of 1 frame after a roll
    directory = tmp_path / "store" / "many"
    stored = []
    for path in sorted(directory.glob("many_0*.h5")):
        with h5py.File(path, "r") as f:
            data = f["/entry/data/data"]
            stored += [int(data[i][0, 0]) for i in range(data.shape[0])]
    assert sorted(stored) == list(range(n))
    rows = []
    for path in sorted(directory.glob("many_reduced_*.nxs")):
        with h5py.File(path, "r") as f:
            rows += [int(x) for x in f["/entry/frames/frame_number"][:]]
    assert sorted(rows) == list(range(n))


def test_a_hits_file_is_finished_by_time_while_blanks_keep_coming(tmp_path: Path) -> None:
    """Serial, blanks dropped: an outside probe's hits file took ~17 s to fill its 100 frames, because
    ``store.file_seconds`` finished a file only when the whole stream paused (blanks kept it going), and a
    crash took all of those hits. A stream quiet on its own (no hit for 0.1 s) has its file finished once
    it is ``file_seconds`` old, while the series goes on."""
    import time

    rng = np.random.default_rng(4)
    shape = (48, 48)

    def frame(hit: bool) -> bytes:
        image = rng.poisson(10.0, shape).astype(np.uint16)
        if hit:
            for r, c in ((12, 12), (30, 34), (20, 40)):
                image[r - 1 : r + 2, c - 1 : c + 2] += 400
        return image.tobytes()

    overrides = (
        'reduction.mode="serial"',
        'reduction.backend="numpy"',
        "reduction.serial.min_peaks=2",
        'store.blanks="drop"',
        "store.frames_per_file=1000",
        "store.file_seconds=0.5",
    )
    with in_process_appliance(tmp_path, shape, *overrides) as (appliance, push, _s):
        push.send_multipart(encode_series_start(1, shape, "uint16", run_uid="hits", frames_expected=400))
        directory = tmp_path / "store" / "hits"
        first = directory / "hits_00000.h5"
        sent = 0
        deadline = time.monotonic() + 20
        while not first.exists() and time.monotonic() < deadline and sent < 399:
            push.send_multipart(encode_image(1, sent, shape, "uint16", frame(sent % 5 == 0)))
            sent += 1
            time.sleep(0.025)  # 40 frames/s: never a pause of the whole stream
        assert first.exists(), f"no hits file finished after {sent} frames"
        assert appliance.view.run("hits")["exit_status"] is None  # the series goes on
        for n in range(sent, 400):
            push.send_multipart(encode_image(1, n, shape, "uint16", frame(n % 5 == 0)))
        push.send_multipart(encode_series_end(1))
        run = wait_for(
            lambda: (r := appliance.view.run("hits")).get("exit_status") and r, 30, "the run's end"
        )
    totals = run["totals"]
    assert totals["frames_stored"] == 80 and totals["frames_vetoed"] == 320 and totals["frames_lost"] == 0, (
        totals
    )
