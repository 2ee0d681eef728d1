"""Frames overtaken by later ones (a sender with several threads or sockets): the reader holds a gap
before recording it lost, so a frame that comes into it is stored, and what stays missing is recorded
as one loss per missing range, each frame once. Messages built from docs/wire-formats.md."""

from __future__ import annotations

import json
from typing import Any

from test_stream_frame_bounds import Sink, header, image, part, run_series

from firmware_bridge.source import FrameHeader
from firmware_bridge.zmq_reader import HELD_GAPS, ZmqStreamSource


def test_frames_filling_a_held_gap_out_of_order_are_stored_and_the_rest_recorded() -> None:
    sink = Sink()
    order = [0, 9, 5, 2, 7, 8, 1, 10]  # 3, 4 and 6 never come
    reader = run_series(sink, [header(1, 11), *(image(1, f) for f in order)])
    assert sink.frames == order
    assert sorted(sink.losses) == [(3, 4, "frame_number_gap"), (6, 6, "frame_number_gap")]
    counters = reader.counters()
    assert counters["frames_reordered"] == 5 and counters["frames_gap"] == 3
    assert counters.get("frames_late", 0) == 0 and counters.get("frames_duplicate", 0) == 0


def test_at_most_held_gaps_are_held_the_oldest_recorded_first() -> None:
    """Every other frame missing: once more than HELD_GAPS gaps are held the oldest is recorded, so its
    frame coming afterwards is late, while a frame of a gap still held is stored."""
    sink = Sink()
    evens = list(range(0, 2 * (HELD_GAPS + 3), 2))  # HELD_GAPS + 2 gaps: frames 1, 3, 5, ...
    reader = run_series(sink, [header(1, None), *(image(1, f) for f in evens), image(1, 1), image(1, 7)])
    assert (1, 1, "frame_number_gap") in sink.losses and (3, 3, "frame_number_gap") in sink.losses
    assert 1 not in sink.frames and 7 in sink.frames
    counters = reader.counters()
    assert counters["frames_late"] == 1 and counters["frames_reordered"] == 1
    lost = {first for first, _last, _reason in sink.losses}
    assert lost == set(range(1, evens[-1], 2)) - {7}  # every other odd frame recorded once, at the end


def test_the_window_is_a_setting_zero_records_a_gap_at_once() -> None:
    """``stream.reorder_frames = 0``: the gap 0 -> 2 is recorded when 2 comes, so 1 is late; a window
    wider than the default keeps a frame overtaken by more than 256 later ones."""
    sink = Sink()
    reader = run_series(sink, [header(1, 4), *(image(1, f) for f in (0, 2, 1, 3))], reorder_frames=0)
    assert sink.frames == [0, 2, 3] and sink.losses == [(1, 1, "frame_number_gap")]
    assert reader.counters()["frames_late"] == 1 and reader.counters().get("frames_reordered", 0) == 0

    sink = Sink()
    late = [0, *range(2, 400), 1]  # frame 1 comes after 398 newer ones
    reader = run_series(
        sink, [header(1, 400), *(image(1, f) for f in late)], reorder_frames=1000, reorder_seconds=30
    )
    assert sorted(sink.frames) == list(range(400)) and sink.losses == []
    assert reader.counters()["frames_reordered"] == 1


def test_images_after_a_rejected_start_are_a_run_that_says_so_not_a_resumed_one() -> None:
    """A series start the codec rejects (here a pixel type it does not take), then the series' images:
    they are stored as a run of their own whose config names the rejection (``start_rejected``), never
    "resumed after restart" (no restart happened: that would send the sink looking for a run to link)."""
    sink = Sink()
    bad = header(1, 3)
    bad[1] = part({**json.loads(bad[1]), "type": "int16"})
    reader = run_series(sink, [bad, *(image(1, f) for f in range(3))])
    (config,) = sink.configs
    assert "resumed_after_restart" not in config and "first_frame" not in config
    assert config["start_rejected"].startswith("bad_")
    assert sink.frames == [0, 1, 2] and sink.losses == []
    assert reader.counters()["series_without_start"] == 1 and reader.counters().get("series_adopted", 0) == 0


def test_images_without_any_start_are_still_a_resumed_series() -> None:
    sink = Sink()
    run_series(sink, [image(1, f) for f in (5, 6)])
    (config,) = sink.configs
    assert config["resumed_after_restart"] is True and config["first_frame"] == 5


class _EndsSink(Sink):
    """A Sink that also keeps each series' end and which run each frame and loss went to."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[tuple[int, str]] = []
        self.whys: list[str] = []  # what ended each series (its run's ``ended_because``), "" for none
        self.run_frames: list[tuple[int, int]] = []  # (run index, frame)
        self.run_losses: list[tuple[int, int, int, str]] = []  # (run index or -1, first, last, reason)
        self.open = False

    def series_start(self, series: int, config: dict[str, Any]) -> None:
        super().series_start(series, config)
        self.open = True

    def publish(self, slot: Any, header: FrameHeader) -> None:
        super().publish(slot, header)
        self.run_frames.append((len(self.configs) - 1, header.frame))

    def series_length(self, series: int, frames_expected: int) -> None:
        pass

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        self.ends.append((series, exit_status))
        self.whys.append(why)
        self.open = False

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        super().lost(first, last, reason, detail)
        self.run_losses.append((len(self.configs) - 1 if self.open else -1, first, last, reason))


def _send(sink: _EndsSink, messages: list[list[bytes]], ends: int) -> ZmqStreamSource:
    return run_series(sink, messages, end=False, until=lambda: len(sink.ends) >= ends)


def _end(series: int) -> list[bytes]:
    return [part({"htype": "dseries_end-1.0", "series": series})]


def _rejected_header(series: int, frames: int) -> list[bytes]:
    bad = header(series, frames)
    bad[1] = part({**json.loads(bad[1]), "type": "int16"})
    return bad


def test_a_rejected_start_while_a_series_is_open_ends_it_when_the_new_series_images_come() -> None:
    """Series 1 (6 frames) is open when series 2's start comes and is rejected: series 2's images show
    the detector moved on, so series 1 ends `fail` with its missing frames lost, and series 2's images
    are stored as a run of their own (never counted as series 1's frames or losses)."""
    sink = _EndsSink()
    messages = [header(1, 6), image(1, 0), image(1, 1), _rejected_header(2, 3)]
    messages += [image(2, f) for f in range(3)] + [_end(2)]
    reader = _send(sink, messages, ends=2)
    assert sink.ends == [(1, "fail"), (2, "success")]
    assert sink.run_frames == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert sink.run_losses == [(0, 2, 5, "series_restarted")]
    assert sink.whys == [
        "an image of series 2 came after a rejected or unreadable start: its end never came",
        "",
    ]
    assert sink.configs[1]["start_rejected"].startswith("bad_")
    assert reader.counters().get("images_wrong_series", 0) == 0


def test_a_rejected_start_that_no_image_follows_leaves_the_open_series_going() -> None:
    """A rejected start in the middle of a series, then that series' own images and end: a stray start
    (a sender's bug) does not end the series that goes on."""
    sink = _EndsSink()
    messages = [header(1, 4), image(1, 0), _rejected_header(2, 3), *(image(1, f) for f in (1, 2, 3)), _end(1)]
    _send(sink, messages, ends=1)
    assert sink.ends == [(1, "success")]
    assert sink.run_frames == [(0, f) for f in range(4)] and sink.run_losses == []


def test_a_bad_image_first_after_a_rejected_start_is_lost_with_its_own_reason() -> None:
    """After a rejected start, no run is open until a good image comes: a bad image before it is recorded
    with its own reason (stream_bad_field) in the run that opens, not as a frame number gap."""
    sink = _EndsSink()
    bad = image(1, 0)
    bad[0] = part({"htype": "dimage-1.0", "series": 1, "frame": 0, "hash": "", "image_key": 7})
    reader = _send(sink, [_rejected_header(1, 3), bad, image(1, 1), image(1, 2), _end(1)], ends=1)
    assert sink.run_frames == [(0, 1), (0, 2)]
    assert sink.run_losses == [(0, 0, 0, "stream_bad_field")]
    assert reader.counters()["series_without_start"] == 1


def test_bad_images_after_a_rejected_start_that_no_good_image_follows_are_still_recorded() -> None:
    sink = _EndsSink()
    bad = image(1, 0)
    bad[0] = part({"htype": "dimage-1.0", "series": 1, "frame": 0, "hash": "", "image_key": 7})
    context_end = [_rejected_header(1, 3), bad, _end(1), header(2, 1), image(2, 0), _end(2)]
    _send(sink, context_end, ends=1)
    assert (-1, 0, 0, "stream_bad_field") in sink.run_losses


def test_a_rejected_start_that_reuses_the_series_id_just_ended_is_a_run_of_its_own() -> None:
    """An outside sender: series 50 (3 frames) ends, then a start of series 50 again that the codec
    rejects, and its 3 images. They were taken for stragglers of the series that ended and only counted
    (``frames_after_series_end``): no run, no loss record."""
    sink = _EndsSink()
    messages = [header(50, 3), *(image(50, f) for f in range(3)), _end(50), _rejected_header(50, 3)]
    messages += [image(50, f) for f in range(3)] + [_end(50)]
    reader = _send(sink, messages, ends=2)
    assert sink.ends == [(50, "success"), (50, "success")]
    assert sink.run_frames == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert sink.configs[1]["start_rejected"].startswith("bad_") and sink.run_losses == []
    assert reader.counters().get("frames_after_series_end", 0) == 0


def test_a_series_of_unknown_length_ended_by_the_next_start_says_why() -> None:
    """An outside probe: a series of unknown length (no frames announced), the next series' start before
    its end: the run ended ``fail`` with no loss record (none due: its length unknown) and no reason
    anywhere. Its end says what ended it (the run's ``ended_because``, RunStop's ``reason``)."""
    sink = _EndsSink()
    messages = [header(1, 0), image(1, 0), image(1, 1), header(2, 2), image(2, 0), image(2, 1), _end(2)]
    _send(sink, messages, ends=2)
    assert sink.ends == [(1, "fail"), (2, "success")]
    assert sink.whys == ["the start of series 2 came before its end message", ""]
    assert [loss for loss in sink.run_losses if loss[0] == 0] == []


def test_a_stray_end_of_another_series_is_counted_as_an_end_not_an_image() -> None:
    """An outside probe: the end of series 98 during series 14 ended nothing (as documented), but was
    counted in images_wrong_series, and ends_wrong_series stayed absent."""
    sink = _EndsSink()
    reader = _send(sink, [header(14, 2), image(14, 0), image(14, 1), _end(98), _end(14)], ends=1)
    assert sink.ends == [(14, "success")]
    counters = reader.counters()
    assert counters["ends_wrong_series"] == 1 and counters.get("images_wrong_series", 0) == 0, counters
