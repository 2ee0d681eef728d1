"""An areaDetector capture (HDF1:Capture 1 .. 0): the file FileTemplate names, where it may go, and how the
receiver's sink makes one run of several detector series (no sockets: a recording ring and recorder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.appliance import RingSink
from edge.ioc import capture_file, path_refusal
from firmware_bridge.source import FrameHeader


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%s%s.h5", "/data/scans/abc.h5"),
        ("%s%s_%3.3d.h5", "/data/scans/abc_007.h5"),
        ("%s%s_%d.nxs", "/data/scans/abc_7.nxs"),
        ("%s/%s.h5", "/data/scans//abc.h5"),
    ],
)
def test_file_template_names_the_file(template: str, expected: str) -> None:
    assert capture_file(template, "/data/scans/", "abc", 7) == Path(expected)


@pytest.mark.parametrize("template", ["%s.h5", "%d%s.h5", "%s%s%s.h5", "abc.h5", "%s%s_%d_%d.h5"])
def test_a_template_that_does_not_take_path_and_name_is_refused(template: str) -> None:
    with pytest.raises(ValueError, match="FileTemplate"):
        capture_file(template, "/data/", "abc", 1)


@pytest.mark.parametrize("template", ["%s%s_%999999999d.h5", "%256s%s.h5", "%s%.300s.h5", "%s%s_%0256d.h5"])
def test_a_field_wider_than_a_file_name_is_refused_before_the_name_is_made(template: str) -> None:
    with pytest.raises(ValueError, match="wider than a file name"):
        capture_file(template, "/data/", "abc", 1)


def test_a_name_longer_than_full_file_name_rbv_takes_is_refused() -> None:
    assert len(str(capture_file("%s%s%253d", "/", "_", 1))) == 255
    with pytest.raises(ValueError, match="makes a file name of 256 bytes"):
        capture_file("%s%s%253d", "/", "é", 1)  # (counted in bytes: é is two)
    with pytest.raises(ValueError, match="makes a file name of 305 bytes"):
        capture_file("%s%s.h5", "/data/", "n" * 296, 1)


def test_paths_outside_the_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    roots = [root, tmp_path / "beamtime"]
    assert path_refusal(root, roots) is None
    assert path_refusal(root / "scans" / "a.h5", roots) is None
    assert path_refusal(tmp_path / "beamtime" / "x", roots) is None
    for outside in (tmp_path, tmp_path / "elsewhere", root / ".." / "elsewhere", Path("/etc")):
        reason = path_refusal(outside, roots)
        assert reason is not None and "outside store.roots" in reason and "store.path" in reason
    assert "not a usable path" in str(path_refusal(Path("/data/a\0b"), roots))


class _Slot:
    def __init__(self) -> None:
        self.pixels = np.ones((16, 16), dtype=np.uint16)

    def array(self) -> np.ndarray:
        return self.pixels


class _Ring:
    """Records what the sink publishes, in order."""

    stopping = False

    def __init__(self) -> None:
        self.events: list[Any] = []

    def claim(self, nbytes: int, timeout: float | None = None, wait: bool = False) -> _Slot:
        return _Slot()

    def publish(self, slot: _Slot, header: FrameHeader, nbytes: int | None = None) -> None:
        self.events.append(("frame", header.frame))

    def publish_control(self, slot: _Slot, data: bytes) -> None:
        self.events.append(json.loads(data))


class _Recorder:
    forward = "all"

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.expected: list[int | None] = []
        self.losses: list[tuple[str | None, int, int, str]] = []
        self.offsets: list[tuple[str, int, int]] = []  # (run, series, offset): where a capture put each
        self.lengths: list[int | None] = []  # and each series' announced length

    def frame_seen(self, run_uid: str, frame: int) -> None:
        pass

    def open_run(self, run_uid: str | None, series: int, expected: int | None, config: Any, mode: Any) -> str:
        uid = f"run{len(self.opened) + 1}"
        self.opened.append(uid)
        self.expected.append(expected)
        return uid

    def close_run(self, *args: Any) -> None:  # refused runs only
        raise AssertionError("no run is refused here")

    def loss(self, run_uid: str | None, first: int, last: int, reason: str, detail: str = "") -> None:
        self.losses.append((run_uid, first, last, reason))

    def series_offset(self, run_uid: str, series: int, offset: int, length: int | None = None) -> None:
        self.offsets.append((run_uid, series, offset))
        self.lengths.append(length)


def _series(sink: RingSink, series: int, frames: int) -> None:
    config = {"shape": [16, 16], "type": "uint16", "frames_expected": frames}
    assert sink.series_start(series, config) is None
    for frame in range(frames):
        sink.publish(_Slot(), FrameHeader(frame=frame, height=16, width=16, dtype="uint16"))  # type: ignore[arg-type]


def _sink() -> tuple[RingSink, _Ring, _Recorder]:
    ring, recorder = _Ring(), _Recorder()
    return RingSink(ring, recorder, lambda: None), ring, recorder  # type: ignore[arg-type]


def test_a_capture_is_one_run_across_series_with_frames_numbered_on(tmp_path: Path) -> None:
    sink, ring, recorder = _sink()
    sink.open_capture(tmp_path / "scan.h5")
    # open before its first series: its run will start with the mode set now, so none changes it (an
    # outside probe changed Mode between Capture 1 and the first Acquire, and the capture's run took it)
    waiting = sink.run_or_opening()
    assert waiting is not None and "scan.h5" in waiting and "first series" in waiting
    _series(sink, 1, 2)
    sink.series_end(1)
    _series(sink, 2, 3)
    sink.lost(1, 1, "frame_number_gap")  # the second series' frame 1 is the capture's frame 3
    sink.series_end(2)
    assert recorder.opened == ["run1"] and sink.capture()["run_uid"] == "run1"
    assert recorder.expected == [None]  # a capture's length is its client's (Capture 0)
    start, *frames = ring.events
    assert start["event"] == "series_start" and start["file_path"] == str(tmp_path / "scan.h5")
    assert frames == [("frame", n) for n in range(5)]  # no series_end: the capture goes on
    assert recorder.losses == [("run1", 3, 3, "frame_number_gap")]
    # where each series lies in the run: a series a restart cuts is found in it (`resume_interrupted`)
    assert recorder.offsets == [("run1", 1, 0), ("run1", 2, 2)]
    assert recorder.lengths == [2, 3]  # and each series' announced length (a resumed one's expected count)
    # between the capture's series its run is open: the reduction's mode stays as the run started it
    assert sink.run_uid is None and sink.run_or_opening() == "run1"
    assert sink.close_capture() == "run1"
    assert ring.events[-1] == {"event": "series_end", "exit_status": "success"}
    # after the capture, a series is a run of its own again, in the store's rollover files
    assert sink.run_or_opening() is None
    _series(sink, 3, 1)
    assert recorder.opened == ["run1", "run2"] and recorder.expected == [None, 1]
    assert ring.events[-2]["file_path"] is None


def test_closing_a_capture_while_a_series_goes_ends_the_run_with_the_series(tmp_path: Path) -> None:
    sink, ring, _ = _sink()
    sink.open_capture(tmp_path / "scan.h5")
    _series(sink, 1, 2)
    assert sink.close_capture() == "run1"
    assert ring.events[-1] == ("frame", 1)  # not ended under the series' feet
    sink.series_end(1)
    assert ring.events[-1] == {"event": "series_end", "exit_status": "success"}


def test_an_aborted_run_ends_abort_and_ends_its_capture(tmp_path: Path) -> None:
    sink, ring, recorder = _sink()
    sink.open_capture(tmp_path / "scan.h5")
    _series(sink, 1, 2)
    sink.mark_abort()  # Acquire 0
    # the frames the detector never took say why (not the plain "missing at the series end")
    sink.lost(2, 9, "missing_at_series_end", "series ended after 2")
    assert recorder.losses[-1] == ("run1", 2, 9, "aborted")
    sink.series_end(1)  # the detector's end message says only that the series ended
    assert ring.events[-1] == {"event": "series_end", "exit_status": "abort"}
    assert sink.capture() == {"path": None, "run_uid": None}  # no second run into the same file
    # outside a capture too, and only for the series that was aborted
    _series(sink, 2, 1)
    sink.mark_abort()
    sink.series_end(2)
    assert ring.events[-1] == {"event": "series_end", "exit_status": "abort"}
    _series(sink, 3, 1)
    sink.series_end(3)
    assert ring.events[-1] == {"event": "series_end", "exit_status": "success"}


def test_the_series_after_one_cut_short_numbers_on_past_its_missing_frames(tmp_path: Path) -> None:
    """An outside probe: in a capture, a series of 100 cut short at 39 frames (its camera restarted)
    had the capture's frames 49..109 recorded missing_at_series_end, and the next series' frames were
    numbered from 49: 49..53 stored and recorded lost both. It numbers on from 110."""
    sink, ring, recorder = _sink()
    sink.open_capture(tmp_path / "scan.h5")
    _series(sink, 1, 10)  # the capture's 0..9
    sink.series_end(1)
    config = {"shape": [16, 16], "type": "uint16", "frames_expected": 100}
    assert sink.series_start(2, config) is None
    for frame in range(39):  # the capture's 10..48
        sink.publish(_Slot(), FrameHeader(frame=frame, height=16, width=16, dtype="uint16"))  # type: ignore[arg-type]
    sink.lost(39, 99, "missing_at_series_end")  # the camera stopped: the capture's 49..109
    sink.series_end(2)
    _series(sink, 3, 5)
    frames = [e[1] for e in ring.events if isinstance(e, tuple) and e[0] == "frame"]
    assert frames == [*range(49), *range(110, 115)], frames
    assert recorder.losses == [("run1", 49, 109, "missing_at_series_end")]


def test_the_live_view_keeps_a_series_last_frame() -> None:
    """The receiver keeps a frame for the live view at most every 50 ms; an outside probe's 8-frame run at
    30 Hz left "frame 6" on the page for good, its last frame between two previews. The frame the
    series announced as its last is always kept (here all eight come within the same 50 ms)."""
    sink, _ring, _recorder = _sink()
    _series(sink, 1, 8)
    preview = sink.preview
    assert preview is not None and preview[1]["frame"] == 7
    # a series of unknown length: only what the 50 ms allow (its first frame here)
    assert sink.series_start(2, {"shape": [16, 16], "type": "uint16"}) is None
    for frame in range(5):
        sink.publish(_Slot(), FrameHeader(frame=frame, height=16, width=16, dtype="uint16"))  # type: ignore[arg-type]
    preview = sink.preview
    assert preview is not None and preview[1]["frame"] in (0, 7)


def test_a_series_resumed_from_a_capture_s_run_expects_the_series_own_length() -> None:
    """An outside ophyd-async probe: a restart during a fly scan of 60 frames inside a capture; the
    camera's series went on in a run "resumed after restart" that said "expected unknown" (a capture's
    run has no length: its client's Capture 0 ends it). The capture's run records each series' announced
    length; the resumed run takes its series' (and accounts for its tail against it)."""

    class _Ledger:
        def run(self, run_uid: str) -> dict[str, Any]:
            assert run_uid == "capture-run"
            config = {"capture_series": {"3": 20}, "capture_series_length": {"3": 60}}
            return {"frames_expected": None, "config": json.dumps(config)}

    sink, _ring, recorder = _sink()
    recorder.ledger = _Ledger()  # type: ignore[attr-defined]
    sink.resume = lambda series, first, transport: {"resumes_run": "capture-run"}
    config = {"shape": [16, 16], "type": "uint16", "frames_expected": None}
    assert sink.series_start(3, {**config, "resumed_after_restart": True, "first_frame": 30}) is None
    assert recorder.expected == [60] and sink.resumed_length == 60


def test_a_serial_run_records_its_blanks_policy_and_a_capture_s_keeps_them(tmp_path: Path) -> None:
    """``store_blanks`` in a serial run's config: the policy it ran with (its crash recovery says vetoed
    blanks may be among its losses only when it dropped them); an areaDetector capture keeps every frame."""
    ring, recorder = _Ring(), _Recorder()
    configs: list[dict[str, Any]] = []
    opened = recorder.open_run

    def open_run(run_uid: str | None, series: int, expected: int | None, config: Any, mode: Any) -> str:
        configs.append(config)
        return opened(run_uid, series, expected, config, mode)

    recorder.open_run = open_run  # type: ignore[method-assign]
    sink = RingSink(ring, recorder, lambda: None, lambda: {"mode": "serial"})  # type: ignore[arg-type]
    sink.blanks = "drop"
    _series(sink, 1, 2)
    sink.series_end(1)
    sink.open_capture(tmp_path / "scan.h5")
    _series(sink, 2, 2)
    sink.series_end(2)
    assert [c.get("store_blanks") for c in configs] == ["drop", "keep"]
    sink = RingSink(ring, recorder, lambda: None, lambda: {"mode": "powder"})  # type: ignore[arg-type]
    _series(sink, 3, 1)
    assert "store_blanks" not in configs[-1]
