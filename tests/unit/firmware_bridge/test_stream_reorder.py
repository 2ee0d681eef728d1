"""Frames overtaken by later ones (a sender with several threads or sockets): the reader holds a gap
before recording it lost, so a frame that comes into it is stored, and what stays missing is recorded
as one loss per missing range, each frame once. Messages built from docs/wire-formats.md."""

from __future__ import annotations

import json

from test_stream_frame_bounds import Sink, header, image, part, run_series

from firmware_bridge.zmq_reader import HELD_GAPS


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
