"""A series header is the detector's, so nothing in it is trusted: fields only the receiver sets are kept
aside and never acted on, a description of any size or type costs no frame, and each case is named in
the run's record and counted. Through the real appliance (in this process) and a ZeroMQ PUSH peer."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from edgeprocs import in_process_appliance, wait_for

from edge.where import render
from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from firmware_bridge.zmq_reader import REORDER_FRAMES

SHAPE = (24, 32)


def _series(
    tmp_path: Path, header: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], Path, dict[str, Any]]:
    """Three frames under ``header``; the run's config, the appliance's status, its first data file and
    its where-is-my-data report."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(
            encode_series_start(1, SHAPE, "uint16", run_uid="hostile", frames_expected=3, **header)
        )
        for frame in range(3):
            data = np.full(SHAPE, frame + 1, np.uint16).tobytes()
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", data))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.view.run("hostile").get("exit_status"), 30, "the run's end")
        run = appliance.view.run("hostile")
        status = appliance.view.status()
    assert run["exit_status"] == "success" and run["totals"]["frames_stored"] == 3
    assert run["losses"] == []
    path = tmp_path / "store" / "hostile" / "hostile_00000.h5"
    return json.loads(run["config"]), status, path, run["where"]


def _send_frames(push: Any, series: int, frames: tuple[int, ...] | range) -> None:
    """One image message per frame number, each frame's pixels its number + 1."""
    for frame in frames:
        push.send_multipart(
            encode_image(series, frame, SHAPE, "uint16", np.full(SHAPE, frame + 1, "<u2").tobytes())
        )


def _ended(appliance: Any, run_uid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's record once it ended, and the receiver's counters then."""
    wait_for(lambda: appliance.view.run(run_uid).get("exit_status"), 30, f"the end of run {run_uid}")
    return appliance.view.run(run_uid), appliance.view.status()["receiver"]


def _losses(run: dict[str, Any]) -> list[tuple[int, int, str]]:
    return [(r["first_frame"], r["last_frame"], r["reason"]) for r in run["losses"]]


def _detector_again(context: Any, endpoint: str) -> Any:
    """A new detector's PUSH socket bound at ``endpoint``, the old one's just closed: ZeroMQ closes a socket
    on its I/O thread, so the port can still be held for a moment after close(); retried until it is free."""
    import time

    import zmq

    again = context.socket(zmq.PUSH)
    again.linger = 1000
    deadline = time.monotonic() + 10
    while True:
        try:
            again.bind(endpoint)
            return again
        except zmq.ZMQError as error:
            if error.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_fields_only_the_receiver_sets_are_kept_aside_not_acted_on(tmp_path: Path) -> None:
    header = {
        "resumed_after_restart": True,  # would make the run a resumed one, looking for a run to link
        "first_frame": "abc",
        "header_fields_ignored": 5,
        "reduction": "x",
        "capture_file": "/etc/passwd",
    }
    config, status, path, where = _series(tmp_path, header)
    assert config["header_reserved"] == header  # as sent, for the record
    assert "resumed_after_restart" not in config and "capture_file" not in config
    assert isinstance(config["reduction"], dict)  # the appliance's own record of the reduction
    assert status["receiver"]["header_fields_reserved"] == len(header)
    # the where-is-my-data report says so, beside the files
    (note,) = where["header_notes"]
    assert note.startswith("fields only the receiver sets, kept aside: capture_file, first_frame")
    assert f"detector header: {note}" in render(where)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["entry/data/frame_number"][:], [0, 1, 2])


@pytest.mark.parametrize(
    "description",
    ["x" * 1_000_000, {"model": "E-4M"}, 12, "line\nbreak"],
    ids=["1MB", "object", "number", "newline"],
)
def test_a_description_of_any_size_or_type_costs_no_frame(tmp_path: Path, description: Any) -> None:
    config, status, path, where = _series(tmp_path, {"detector": description})
    (ignored,) = config["header_fields_ignored"]
    assert ignored.startswith("detector=") and len(ignored) < 200
    assert status["store"]["header_fields_ignored"] == 1
    assert where["header_notes"] == [f"left out of the files: {ignored}"]
    with h5py.File(path) as f:
        assert f["entry/instrument/detector/description"][()] == b"edge detector"
        assert f["entry/data/data"].shape == (3, *SHAPE)


def test_a_series_restarted_before_its_end_fails_with_its_missing_frames_lost(tmp_path: Path) -> None:
    # the detector starts series 2 while series 1 (5 frames announced, 2 sent) has not ended
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="first", frames_expected=5))
        for frame in range(2):
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", np.ones(SHAPE, np.uint16).tobytes()))
        push.send_multipart(encode_series_start(2, SHAPE, "uint16", run_uid="second", frames_expected=1))
        push.send_multipart(encode_image(2, 0, SHAPE, "uint16", np.ones(SHAPE, np.uint16).tobytes()))
        push.send_multipart(encode_series_end(2))
        wait_for(lambda: appliance.view.run("second").get("exit_status"), 30, "the second run's end")
        first, second = appliance.view.run("first"), appliance.view.run("second")
    assert first["exit_status"] == "fail" and second["exit_status"] == "success"
    assert first["totals"]["frames_stored"] == 2
    assert [(loss["first_frame"], loss["last_frame"], loss["reason"]) for loss in first["losses"]] == [
        (2, 4, "series_restarted")
    ]


@pytest.mark.parametrize(
    "header",
    [
        {"count_time": "abc"},
        {"frame_time": [1, 2]},
        {"count_time": float("nan"), "frame_time": -1.0},
        {"sensor_thickness": {"m": 1}, "sensor_material": "x" * 100_000},
        {"saturation_value": 1e300, "countrate_correction_count_cutoff": 2.5},
        {"saturation_value": "many", "instrument_name": 12, "sample_name": ["a"], "source_name": "\x00"},
        {"count_time": True},
    ],
    ids=["text", "list", "nan-and-negative", "object-and-huge", "out-of-range", "wrong-types", "bool"],
)
def test_bad_acquisition_fields_are_left_out_of_the_files(tmp_path: Path, header: dict) -> None:
    # a count_time of "abc" once cost every frame of its run: now the files say "not reported" instead
    good = {"frame_time": 0.01} if "frame_time" not in header else {}
    config, status, path, _where = _series(tmp_path, {**header, **good})
    ignored = config["header_fields_ignored"]
    assert sorted(entry.split("=")[0] for entry in ignored) == sorted(header)
    assert status["store"]["header_fields_ignored"] == len(header)
    with h5py.File(path) as f:
        det = f["entry/instrument/detector"]
        assert "count_time" not in det
        if "saturation_value" in header:  # the dtype's own ceiling instead
            assert det["saturation_value"][()] == 65535
        if good:
            assert det["frame_time"][()] == 0.01  # the good field beside them is kept
        if "sensor_material" in header:
            assert det["sensor_material"][()] == b"unknown"


def test_a_huge_vendor_field_is_kept_as_its_digest_not_copied_into_every_record(tmp_path: Path) -> None:
    # 3 MB of vendor text would go into the ledger, the run's documents, the API and upstream: the
    # run's config keeps its size and sha256 instead, the small fields beside it as sent
    huge = "x" * 3_000_000
    config, status, _path, _where = _series(tmp_path, {"x_vendor": huge, "x_small": [1, 2]})
    assert config["header_fields_truncated"] == ["x_vendor"]
    assert config["x_vendor"]["bytes"] == len(json.dumps(huge))
    assert config["x_vendor"]["sha256"] == hashlib.sha256(json.dumps(huge).encode()).hexdigest()
    assert config["x_small"] == [1, 2]
    assert len(json.dumps(config)) < 1 << 20
    assert status["store"]["header_fields_truncated"] == 1
    documents = tmp_path / "store" / "hostile" / "hostile.documents.jsonl"
    assert documents.stat().st_size < 1 << 20


def test_image_times_beyond_int64_cost_no_frame_and_no_thread(tmp_path: Path) -> None:
    """An image whose ``start_time`` is 2^70 ns once killed the reader thread (OverflowError into the
    ring's int64 header): the run lost its frames to ``receiver_stopped``. Now the time is counted as
    invalid and the frame stored."""
    times = [(2**70, 2**70 + 5), (2**63, 2**64), (-5, -1)]
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="times", frames_expected=3))
        for frame, (start, stop) in enumerate(times):
            data = np.full(SHAPE, frame + 1, np.uint16).tobytes()
            push.send_multipart(
                encode_image(1, frame, SHAPE, "uint16", data, start_time=start, stop_time=stop)
            )
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.view.run("times").get("exit_status"), 30, "the run's end")
        run = appliance.view.run("times")
        receiver = appliance.view.status()["receiver"]
    assert run["exit_status"] == "success" and run["totals"]["frames_stored"] == 3
    assert run["losses"] == []
    assert receiver["codec"]["image_times_invalid"] == 3
    assert not receiver.get("reader_crashes")


def test_a_stream2_series_id_beyond_int64_is_refused_and_the_reader_lives(tmp_path: Path) -> None:
    """Stream V2's ``series_id`` of 2^64 - 1 once killed the reader (SQLite INTEGER overflow in the
    ledger): now its messages are refused as ``bad_field``, counted, and the next series is stored."""
    import cbor2

    def typed(frame: int) -> cbor2.CBORTag:  # tag 40 [[rows, cols], tag 69 (uint16 little-endian)]
        return cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, np.full(SHAPE, frame + 1, "<u2").tobytes())])

    def series(series_id: int, uid: str) -> list[bytes]:
        common = {"series_id": series_id, "series_unique_id": uid}
        start = {"type": "start", **common, "channels": ["threshold_1"], "image_dtype": "uint16",
                 "image_size_x": SHAPE[1], "image_size_y": SHAPE[0], "number_of_images": 2}  # fmt: skip
        images = [
            {"type": "image", **common, "image_id": n, "data": {"threshold_1": typed(n)}} for n in range(2)
        ]
        return [cbor2.dumps(m) for m in (start, *images, {"type": "end", **common})]

    with in_process_appliance(tmp_path, SHAPE, 'stream.format="stream2"') as (appliance, push, _s):
        for message in series(2**64 - 1, "huge") + series(3, "fine"):
            push.send(message)
        wait_for(lambda: appliance.view.run("fine").get("exit_status"), 30, "the good run's end")
        run = appliance.view.run("fine")
        receiver = appliance.view.status()["receiver"]
    assert run["exit_status"] == "success" and run["totals"]["frames_stored"] == 2
    assert receiver["errors"] == {"bad_field": 4} and not receiver.get("reader_crashes")


def test_a_stream2_series_without_a_start_after_a_refused_one_keeps_its_frames(tmp_path: Path) -> None:
    """The Stream V2 side of the outside probe above: series 2^64 - 1 refused whole, then series 3's
    images with no start: they were put down as "duplicates" of the refused series' images."""
    import cbor2

    def typed(frame: int) -> cbor2.CBORTag:
        return cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, np.full(SHAPE, frame + 1, "<u2").tobytes())])

    def messages(series_id: int, uid: str, with_start: bool) -> list[bytes]:
        common = {"series_id": series_id, "series_unique_id": uid}
        start = {"type": "start", **common, "channels": ["threshold_1"], "image_dtype": "uint16",
                 "image_size_x": SHAPE[1], "image_size_y": SHAPE[0], "number_of_images": 2}  # fmt: skip
        images = [
            {"type": "image", **common, "image_id": n, "data": {"threshold_1": typed(n)}} for n in range(2)
        ]
        return [cbor2.dumps(m) for m in ([start] * with_start + [*images, {"type": "end", **common}])]

    with in_process_appliance(tmp_path, SHAPE, 'stream.format="stream2"') as (appliance, push, _s):
        for message in messages(2**64 - 1, "huge", True) + messages(3, "headless", False):
            push.send(message)
        wait_for(lambda: [r for r in appliance.view.runs() if r.get("exit_status")], 30, "a run ended")
        (row,) = appliance.view.runs()
        run, receiver = _ended(appliance, row["run_uid"])
    assert run["series"] == 3 and run["totals"]["frames_stored"] == 2 and run["losses"] == [], run
    assert receiver["rejected_series_ended"] == 1 and receiver["frames_outside_series"] == 2


def test_a_message_part_over_the_limit_drops_the_connection_counted_and_becomes_a_gap(
    tmp_path: Path,
) -> None:
    """ZeroMQ buffers a whole message part before anyone sees it: a hostile multi-GB one would be
    allocated. ``stream.max_message_bytes`` (MAXMSGSIZE) makes libzmq drop the connection instead; the
    reader counts the drop, ZeroMQ reconnects, and the frame that never arrived is a recorded gap."""
    with in_process_appliance(tmp_path, SHAPE, "stream.max_message_bytes=65536") as (appliance, push, _s):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="big", frames_expected=4))
        frame0 = np.full(SHAPE, 1, np.uint16).tobytes()
        push.send_multipart(encode_image(1, 0, SHAPE, "uint16", frame0))
        push.send_multipart(encode_image(1, 1, SHAPE, "uint16", b"\0" * 200_000))  # over the limit
        wait_for(lambda: appliance.view.status()["receiver"].get("connections_dropped"), 30, "the drop")
        # libzmq never reconnects after a protocol error: the reader does, and what is sent after arrives
        wait_for(lambda: appliance.view.status()["receiver"].get("reconnects"), 30, "the reconnection")
        # the operator sees why frames are missing while the series is open
        wait_for(lambda: appliance.view.status()["receiver"]["dropped_in_series"] == 1, 10, "the report")
        (dropped,) = [a for a in appliance.view.alarms() if a["id"] == "condition:stream_dropped"]
        assert dropped["severity"] == "minor" and "during series 1" in dropped["message"]
        _send_frames(push, 1, (2, 3))
        push.send_multipart(encode_series_end(1))
        run, receiver = _ended(appliance, "big")
    assert run["totals"]["frames_stored"] == 3
    assert _losses(run) == [(1, 1, "frame_number_gap")]
    assert receiver["connections_dropped"] == 1 and receiver["reconnects"] == 1
    assert receiver["connections_dropped_in_series"] == 1  # frames were in flight: the alarm's drop
    assert receiver["dropped_in_series"] is None  # its series ended: the run's own record says the rest
    assert not receiver.get("reader_crashes")


def test_a_run_uid_used_before_keeps_the_data_under_a_fresh_one_and_says_so(tmp_path: Path) -> None:
    """A detector that sends the same ``run_uid`` twice: the second run is recorded under a fresh uid,
    the detector's kept beside it with the reason, counted, and noted in its where-is-my-data report,
    which names the other run (the API's, as the dashboard shows it, and `edge where`'s)."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        for series in (1, 2):
            push.send_multipart(
                encode_series_start(series, SHAPE, "uint16", run_uid="same", frames_expected=2)
            )
            _send_frames(push, series, range(2))
            push.send_multipart(encode_series_end(series))
        wait_for(lambda: len([r for r in appliance.view.runs() if r.get("ended_at")]) == 2, 30, "two runs")
        second = next(r["run_uid"] for r in appliance.view.runs() if r["run_uid"] != "same")
        run = appliance.view.run(second)
        first = appliance.view.run("same")
        status = appliance.view.status()
    assert run["totals"]["frames_stored"] == 2 and run["losses"] == []
    # the API's where report (what the dashboard shows) names the other run from either side
    assert (run["where"]["detector_uid"], run["where"]["detector_uid_also_names"]) == ("same", ["same"])
    assert (first["where"]["detector_uid"], first["where"]["detector_uid_also_names"]) == ("same", [second])
    config = json.loads(run["config"])
    assert (config["detector_run_uid"], config["detector_run_uid_refused"]) == ("same", "already a run's uid")
    assert run["where"]["header_notes"] == ["run uid 'same' from the detector was already a run's uid"]
    assert status["store"]["run_uids_replaced"] == 1
    # `edge where` names the other run from either side
    for asked, other in (("same", second), (second, "same")):
        text = _edge_where(tmp_path, asked)
        assert f"the detector's run uid 'same' also names run {other}" in text
        assert json.loads(_edge_where(tmp_path, asked, "--json"))["detector_uid_also_names"] == [other]


def _edge_where(tmp_path: Path, run: str, *flags: str) -> str:
    """What `edge where RUN` prints, run as a user would, on the store under ``tmp_path``."""
    store = f'store.path="{tmp_path / "store"}"'
    done = subprocess.run(
        [sys.executable, "-m", "edge", "where", run, *flags, "--set", store],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def test_edge_where_finds_a_run_by_the_uid_the_detector_gave_it(tmp_path: Path) -> None:
    """A run uid that is not a file name is replaced; `edge where` still finds the run by it."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="a/b c", frames_expected=1))
        _send_frames(push, 1, range(1))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: [r for r in appliance.view.runs() if r.get("ended_at")], 30, "the run's end")
        (fresh,) = [r["run_uid"] for r in appliance.view.runs()]
    assert json.loads(_edge_where(tmp_path, "a/b c", "--json"))["run_uid"] == fresh
    text = _edge_where(tmp_path, "a/b c")
    # a data file names its frames; a reduced or documents file holds none (it printed "frames None")
    assert "frames 0..0" in text and "no frames" in text and "None" not in text, text


def test_a_frame_overtaken_by_later_ones_is_stored(tmp_path: Path) -> None:
    """Frames 0, 2, 1, 2, 3 (a sender whose threads overtake each other): the gap frame 2 left is held
    (``REORDER_FRAMES``, ``REORDER_SECONDS``), so the 1 that comes after it is stored with its own
    pixels (``frames_reordered``) and no frame is lost; the second 2 is a duplicate."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="reordered", frames_expected=4))
        _send_frames(push, 1, (0, 2, 1, 2, 3))
        push.send_multipart(encode_series_end(1))
        run, receiver = _ended(appliance, "reordered")
        path = Path(run["files"][0]["path"])
    assert run["totals"]["frames_stored"] == 4 and _losses(run) == []
    assert (receiver["frames_reordered"], receiver["frames_duplicate"], receiver.get("frames_late", 0)) == (
        1,
        1,
        0,
    )
    assert (run["files"][0]["first_frame"], run["files"][0]["last_frame"]) == (0, 3)
    with h5py.File(path, "r") as handle:
        numbers = handle["/entry/data/frame_number"][:].tolist()
        pixels = handle["/entry/data/data"][:, 0, 0].tolist()
    assert numbers == [0, 2, 1, 3] and pixels == [n + 1 for n in numbers]  # each frame its own pixels


def test_a_frame_after_its_gap_was_recorded_is_counted_late_not_duplicate(tmp_path: Path) -> None:
    """Frames 0 and 2, a pause longer than REORDER_SECONDS (the gap is recorded lost while nothing comes),
    then 1, 2 and 3: the 1 is late (``frames_late``, logged) and dropped, keeping its one disposition in
    the loss record; the second 2 is a duplicate; 3 stored + 1 lost. Frames REORDER_FRAMES newer than a
    gap record it as well, without a pause."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="late", frames_expected=4))
        _send_frames(push, 1, (0, 2))
        wait_for(lambda: appliance.view.status()["receiver"].get("frames_gap") == 1, 10, "the gap recorded")
        _send_frames(push, 1, (1, 2, 3))
        push.send_multipart(encode_series_end(1))
        run, receiver = _ended(appliance, "late")
        many = REORDER_FRAMES + 3  # frame 2 opens the gap; 3..258 are the REORDER_FRAMES after it
        push.send_multipart(encode_series_start(2, SHAPE, "uint16", run_uid="later", frames_expected=many))
        _send_frames(push, 2, (0, *range(2, many), 1))  # no pause: the frames after the gap record it
        push.send_multipart(encode_series_end(2))
        later, receiver_after = _ended(appliance, "later")
    assert run["totals"]["frames_stored"] == 3
    assert _losses(run) == [(1, 1, "frame_number_gap")]
    assert (receiver["frames_late"], receiver["frames_duplicate"]) == (1, 1)
    assert _losses(later) == [(1, 1, "frame_number_gap")] and later["totals"]["frames_stored"] == many - 1
    assert receiver_after["frames_late"] == 2


@pytest.mark.parametrize("dtype", ["float32", "int32", "uint8"])
def test_frames_of_every_pixel_type_are_stored_without_a_saturation_value(tmp_path: Path, dtype: str) -> None:
    """A header without ``saturation_value``: the file says the pixel type's maximum. For float32 that
    lost every frame (``np.iinfo`` of a float: a pipeline_error per frame, the run still ``success``)."""
    rng = np.random.default_rng(3)
    low = -50 if np.dtype(dtype).kind in "if" else 0  # signed and float pixels: negative counts too
    frames = [(low + rng.random(SHAPE) * 100).astype(dtype) for _ in range(3)]
    if dtype == "float32":
        frames[-1][0, :3] = (np.nan, np.inf, -np.inf)
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, dtype, run_uid="typed", frames_expected=3))
        for number, frame in enumerate(frames):
            push.send_multipart(encode_image(1, number, SHAPE, dtype, frame.tobytes()))
        push.send_multipart(encode_series_end(1))
        run, _receiver = _ended(appliance, "typed")
        preview = appliance.view.latest_preview()
    assert run["exit_status"] == "success" and run["losses"] == [], run["losses"]
    # the live image of any pixel type is valid JSON with a finite scale (NaN made it null, or no JSON)
    assert preview is not None and np.isfinite(preview["counts_top"]) and preview["counts_top"] > 0
    json.dumps(preview, allow_nan=False)
    with h5py.File(tmp_path / "store" / "typed" / "typed_00000.h5") as f:
        np.testing.assert_array_equal(f["entry/data/data"][:], np.stack(frames))
        saturation = f["entry/instrument/detector/saturation_value"][()]
    pixel = np.dtype(dtype)
    assert saturation == (np.finfo(pixel).max if pixel.kind == "f" else np.iinfo(pixel).max)


def test_a_frame_after_its_series_ended_is_a_loss_record_naming_the_run(tmp_path: Path) -> None:
    """A straggler after the series' end that its run never accounted for: a loss record outside the
    run (its account is closed: RunStop written) whose detail names the run, so that it can be found
    from the run's uid. A late copy of a frame the run stored (or recorded lost) is counted
    (``frames_after_series_end``), never also a loss: every frame keeps one disposition (a clean-room
    sender's probe saw frames missing at the end counted lost twice when they came after it)."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="ended", frames_expected=3))
        _send_frames(push, 1, (0, 1))
        push.send_multipart(encode_series_end(1))
        run, _receiver = _ended(appliance, "ended")
        _send_frames(push, 1, (1, 2, 3))  # a copy of a stored frame, one recorded missing, a new one

        def stragglers() -> list[dict[str, Any]]:
            return [r for r in appliance.ledger.losses() if r["reason"] == "frame_outside_series"]

        wait_for(stragglers, 30, "the straggler's loss record")
        wait_for(lambda: appliance.view.status()["receiver"].get("frames_after_series_end") == 2, 10, "2")
        records = stragglers()
        lost = appliance.view.status()["frames"]["lost"]
    assert run["totals"]["frames_stored"] == 2
    assert _losses(run) == [(2, 2, "missing_at_series_end")]
    (record,) = records
    assert record["run_uid"] is None and (record["first_frame"], record["last_frame"]) == (3, 3)
    assert record["detail"] == "arrived after series 1 ended (run ended)"
    assert lost == 2  # frame 2 once (in its run), frame 3 once (outside it)


def test_a_detector_that_ends_its_series_goes_away_and_comes_back_raises_no_drop_alarm(
    tmp_path: Path,
) -> None:
    """A dashboard probe: a simulator that finished its series and exited, then a new one starting
    series 1 again, raised "stream connection dropped during series 1" a few seconds into the new run,
    which had lost nothing. The drop (read every 0.5 s) was put down to the series that came after it."""
    import time

    import zmq

    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="first", frames_expected=3))
        _send_frames(push, 1, range(3))
        push.send_multipart(encode_series_end(1))
        _ended(appliance, "first")
        push.close(0)  # the detector goes away...
        context = zmq.Context()
        # ...and comes back at once with the next series
        again = _detector_again(context, settings.stream.endpoint)
        try:
            again.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="second", frames_expected=3))
            _send_frames(again, 1, range(2))
            wait_for(lambda: appliance.view.status()["receiver"].get("connections_dropped"), 10, "the drop")
            time.sleep(2.5)  # longer than a real drop takes to be reported (DROP_REPORT_SECONDS, 2 s)
            receiver = appliance.view.status()["receiver"]
            assert receiver["dropped_in_series"] is None and not receiver.get("connections_dropped_in_series")
            assert not [a for a in appliance.view.alarms() if a["id"] == "condition:stream_dropped"]
            _send_frames(again, 1, (2,))
            again.send_multipart(encode_series_end(1))
            run, _ = _ended(appliance, "second")
        finally:
            again.close(0)
            context.term()
    assert run["totals"]["frames_stored"] == 3 and run["totals"]["frames_lost"] == 0


def test_a_detector_that_ends_its_series_and_goes_away_at_once_counts_no_drop_in_series(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The simulator sends its series' end and exits: the connection drops while the reader still has
    images and the end queued. That is no drop during a series (nothing was in flight):
    ``connections_dropped`` counts it, ``connections_dropped_in_series`` (the alarm's drops) does not;
    nor is it put down to the next simulator's series, which carries the same number (a docs-walk probe
    saw the alarm on every clean run after the first)."""
    import time

    import zmq

    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="gone", frames_expected=400))
        _send_frames(push, 1, range(400))
        push.send_multipart(encode_series_end(1))
        push.close(linger=5000)  # everything is delivered, then the detector goes away
        run, _ = _ended(appliance, "gone")
        wait_for(lambda: appliance.view.status()["receiver"].get("connections_dropped"), 10, "the drop")
        time.sleep(2.5)  # longer than a real drop takes to be counted (DROP_REPORT_SECONDS, 2 s)
        receiver = appliance.view.status()["receiver"]
        context = zmq.Context()
        again = _detector_again(context, settings.stream.endpoint)
        try:
            again.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="next", frames_expected=3))
            _send_frames(again, 1, range(2))
            time.sleep(2.5)
            during = appliance.view.status()["receiver"]
            alarms = [a for a in appliance.view.alarms() if a["id"] == "condition:stream_dropped"]
            _send_frames(again, 1, (2,))
            again.send_multipart(encode_series_end(1))
            _ended(appliance, "next")
        finally:
            again.close(0)
            context.term()
    assert run["totals"]["frames_stored"] == 400 and run["totals"]["frames_lost"] == 0
    assert receiver["connections_dropped"] >= 1 and not receiver.get("connections_dropped_in_series")
    assert during["dropped_in_series"] is None and not during.get("connections_dropped_in_series")
    assert alarms == []
    # nor a warning that frames in flight became a gap (an outside probe saw one after every series)
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "gap" in r.getMessage()]


def test_a_start_after_its_first_images_gives_the_run_its_length(tmp_path: Path) -> None:
    """A sender that sends a series' first images before its start: the run opened from the images goes
    on, and the start's ``frames_expected`` is the run's length in the ledger and REST (a clean-room
    sender's probe saw it applied to the accounting but the run's record stay null)."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="first", frames_expected=1))
        _send_frames(push, 1, (0,))
        push.send_multipart(encode_series_end(1))
        _ended(appliance, "first")
        _send_frames(push, 2, (0, 1))  # series 2's images before its start
        wait_for(lambda: appliance.view.status()["receiver"].get("series_adopted"), 30, "the adopted run")
        push.send_multipart(encode_series_start(2, SHAPE, "uint16", run_uid="late", frames_expected=4))
        _send_frames(push, 2, (2,))
        push.send_multipart(encode_series_end(2))
        wait_for(lambda: appliance.view.status()["receiver"].get("series_ended") == 2, 30, "the second end")
        runs = [r for r in appliance.view.runs() if r["run_uid"] != "first"]
        (run,) = runs
        # the receiver has seen the end; the run's record is complete once the recorder has ended it
        run, _ = _ended(appliance, run["run_uid"])
    assert run["frames_expected"] == 4
    assert run["totals"]["frames_stored"] == 3 and _losses(run) == [(3, 3, "missing_at_series_end")]


def test_an_unreadable_start_while_a_series_is_open_lets_the_next_series_be_stored(tmp_path: Path) -> None:
    """An outside sender's probe: series 1 open (its end never came), then a start too damaged to parse,
    then series 2's images: every one was dropped as ``wrong_series`` (counted only, no run, no loss
    record). The damaged message may have been series 2's start: series 1 now ends ``fail`` and series
    2's images open a run that says it has no start."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="one", frames_expected=5))
        _send_frames(push, 1, range(2))
        push.send_multipart([b'{"htype": "dheader-1.0", "ser'])  # cut short: not JSON
        _send_frames(push, 2, range(4))
        push.send_multipart(encode_series_end(2))
        wait_for(lambda: len([r for r in appliance.view.runs() if r.get("ended_at")]) == 2, 30, "two runs")
        first = appliance.view.run("one")
        second_uid = next(r["run_uid"] for r in appliance.view.runs() if r["run_uid"] != "one")
        second, receiver = _ended(appliance, second_uid)
    assert first["exit_status"] == "fail" and _losses(first) == [(2, 4, "series_restarted")]
    assert second["totals"]["frames_stored"] == 4 and second["losses"] == []
    config = json.loads(second["config"])
    assert "unreadable message" in config["start_rejected"] and not config.get("resumed_after_restart")
    assert receiver.get("images_wrong_series", 0) == 0


@pytest.mark.parametrize("its_end", [True, False], ids=["its end between", "no end between"])
def test_after_a_rejected_series_has_ended_the_next_series_without_a_start_keeps_its_frames(
    tmp_path: Path, its_end: bool
) -> None:
    """An outside sender's probe: a start, images and end of series 2^63 (all rejected as bad_field),
    then images 0..2 of series 700 with no start: the rejected images were put into series 700's run
    as its frames 0..2 and its three good frames dropped as "duplicates" (nothing stored). The rejected
    series is over at its end: its images are recorded outside any run, series 700's frames stored."""
    huge = 2**63
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        header = {"htype": "dheader-1.0", "series": huge, "header_detail": "basic"}
        config = {"shape": [SHAPE[1], SHAPE[0]], "type": "uint16", "run_uid": "huge", "frames_expected": 3}
        push.send_multipart([json.dumps(header).encode(), json.dumps(config).encode()])
        for frame in range(3):
            image = encode_image(1, frame, SHAPE, "uint16", np.full(SHAPE, 9, "<u2").tobytes())
            head = json.loads(image[0])
            head["series"] = huge
            push.send_multipart([json.dumps(head).encode(), *image[1:]])
        if its_end:
            push.send_multipart([json.dumps({"htype": "dseries_end-1.0", "series": huge}).encode()])
        _send_frames(push, 700, range(3))  # its start never came
        push.send_multipart(encode_series_end(700))
        wait_for(lambda: appliance.view.status()["receiver"].get("series_ended", 0) >= 1, 30, "an end")
        wait_for(lambda: [r for r in appliance.view.runs() if r.get("exit_status")], 30, "a run ended")
        (row,) = appliance.view.runs()
        run, receiver = _ended(appliance, row["run_uid"])
        outside = [loss for loss in appliance.recorder.ledger.losses() if loss["run_uid"] is None]
    assert run["series"] == 700 and run["totals"]["frames_stored"] == 3, run["totals"]
    assert run["losses"] == [] and receiver.get("frames_duplicate", 0) == 0, _losses(run)
    assert _losses({"losses": outside}) == [(0, 2, "stream_bad_field")], outside
    assert receiver["frames_outside_series"] == 3
    # without the end, the images whose series could not be read are no frames of series 700's run
    assert receiver.get("rejected_series_ended", 0) == int(its_end)


def test_a_start_repeated_while_its_series_is_open_is_a_copy_not_a_new_series(tmp_path: Path) -> None:
    """An outside sender's probe: the identical start again mid-series ended the run ``fail`` (frames 3-4
    lost) and opened a second one under a fresh uid (frames 0-2 lost): 5 frames sent, 5 stored, 5 lost.
    It is now counted (``starts_repeated``) and ignored."""
    start = encode_series_start(1, SHAPE, "uint16", run_uid="dup", frames_expected=5)
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        push.send_multipart(start)
        _send_frames(push, 1, range(3))
        push.send_multipart(start)
        _send_frames(push, 1, range(3, 5))
        push.send_multipart(encode_series_end(1))
        run, receiver = _ended(appliance, "dup")
        runs = appliance.view.runs()
    assert run["exit_status"] == "success" and run["totals"]["frames_stored"] == 5 and run["losses"] == []
    assert len(runs) == 1 and receiver["starts_repeated"] == 1


def test_frames_before_the_first_image_of_a_series_without_a_known_earlier_run_are_lost_here(
    tmp_path: Path,
) -> None:
    """An outside sender's probe: images from frame 3 with no start (a start came late), no earlier run
    of the series in the ledger: frames 0-2 had no disposition anywhere. They are this run's gap now."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        _send_frames(push, 1, (3, 4))
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="late", frames_expected=6))
        _send_frames(push, 1, (5,))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: [r for r in appliance.view.runs() if r.get("ended_at")], 30, "the run's end")
        (only,) = appliance.view.runs()
        run, _receiver = _ended(appliance, only["run_uid"])
    assert run["totals"]["frames_stored"] == 3
    assert _losses(run) == [(0, 2, "frame_number_gap")]


def test_a_frame_overtaken_by_the_image_that_opened_a_run_without_its_start_is_stored(tmp_path: Path) -> None:
    """An outside probe (round 5): image 1, then the start, then image 0, then 2..5. The frames below
    the run's first were recorded lost at once, and frame 0, a moment later, dropped: 5 stored + 1 lost
    of 6 received. They are a gap held as any gap (stream.reorder_frames / reorder_seconds): frame 0 is
    stored when it comes; frames that never come are still recorded lost, as before."""
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        _send_frames(push, 1, (1,))
        wait_for(lambda: appliance.view.status()["receiver"].get("series_adopted"), 30, "the adopted run")
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="late", frames_expected=6))
        _send_frames(push, 1, (0, 2, 3, 4, 5))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: [r for r in appliance.view.runs() if r.get("ended_at")], 30, "the run's end")
        (only,) = appliance.view.runs()
        run, receiver = _ended(appliance, only["run_uid"])
    assert run["totals"]["frames_stored"] == 6 and _losses(run) == [], _losses(run)
    assert receiver["frames_reordered"] == 1
