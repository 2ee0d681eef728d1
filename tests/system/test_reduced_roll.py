"""A run's reduced files are finished every ``store.reduced_file_seconds`` as well as every 1000 rows, so
a crash leaves at most that long of frame-table rows (a serial run's vetoed blanks) unrecorded. Through
the real appliance in this process, frames from a ZeroMQ PUSH peer."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
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
