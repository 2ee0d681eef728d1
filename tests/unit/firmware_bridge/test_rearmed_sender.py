"""A sender whose connection dropped during a series and that sends the series' start again, identical:
re-armed for a new acquisition (its next image goes back to frame 0), or repeating its start on its new
connection (it goes on). The next image tells. An outside firmware probe: a re-armed sender's frames
0..2 were dropped as duplicates (a counter only), its frames 3..4 stored in the old run beside the old
acquisition's 0..2, and that run ended ``success``. Real ZeroMQ sockets on loopback; the messages are
built from docs/wire-formats.md by the helpers of the reader tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq
from test_stream2_reader import Sink as Stream2Sink
from test_stream2_reader import _series
from test_stream_frame_bounds import Sink, header, image, part, reader_on_a_push_socket

from firmware_bridge.stream2_reader import Stream2Source
from firmware_bridge.zmq_reader import ZmqStreamSource


class _Ends(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.ends: list[str] = []

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        self.ends.append(exit_status)
        super().series_end(series, exit_status)


def _wait(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _reconnecting(
    reader_type: type[ZmqStreamSource],
    sink: Any,
    first: list[Any],
    second: list[Any],
    send: Callable[[zmq.Socket, Any], None],
    received: Callable[[], int],
    ends: int,
) -> ZmqStreamSource:
    """``first`` from one sender, which then closes its socket; once the reader saw the drop, ``second``
    from a new sender bound to the same port (no ``first``: ``second`` on one connection)."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = reader_type(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    try:
        if first:
            for message in first:
                send(push, message)
            _wait(lambda: received() == len(first) - 1, "the first acquisition's frames")
            push.close(0)
            _wait(lambda: reader.counters().get("connections_dropped", 0) >= 1, "the drop seen")
            push = context.socket(zmq.PUSH)
            push.bind(f"tcp://127.0.0.1:{port}")
        for message in second:
            send(push, message)
        _wait(lambda: len(sink.ends) >= ends, "the series' ends")
    finally:
        reader.stop()
        push.close(0)
        context.term()
    return reader


def _json(sink: _Ends, first: list[Any], second: list[Any], ends: int) -> ZmqStreamSource:
    return _reconnecting(
        ZmqStreamSource, sink, first, second, lambda s, m: s.send_multipart(m), lambda: len(sink.frames), ends
    )


END = [part({"htype": "dseries_end-1.0", "series": 5})]


def test_a_json_sender_re_armed_with_the_same_start_gets_a_run_of_its_own() -> None:
    sink = _Ends()
    first = [header(5, 8), *(image(5, n) for n in range(3))]
    reader = _json(sink, first, [header(5, 8), *(image(5, n) for n in range(8)), END], ends=2)
    assert len(sink.configs) == 2 and sink.ends == ["fail", "success"]
    assert sink.losses == [(3, 7, "series_restarted")]  # the first acquisition's, never sent
    assert sink.frames == [0, 1, 2, *range(8)]
    counters = reader.counters()
    assert counters["starts_after_drop"] == 1 and counters["series_rearmed"] == 1
    assert counters.get("frames_duplicate", 0) == 0


def test_a_json_sender_that_repeats_its_start_on_a_new_connection_and_goes_on_keeps_its_run() -> None:
    sink = _Ends()
    first = [header(5, 8), *(image(5, n) for n in range(3))]
    reader = _json(sink, first, [header(5, 8), *(image(5, n) for n in range(3, 8)), END], ends=1)
    assert len(sink.configs) == 1 and sink.ends == ["success"] and sink.losses == []
    assert sink.frames == list(range(8))
    counters = reader.counters()
    assert counters["starts_repeated"] == 1 and counters.get("series_rearmed", 0) == 0


@pytest.mark.parametrize("rearmed", [True, False])
def test_a_stream2_sender_after_a_drop_is_told_by_its_next_image(rearmed: bool) -> None:
    messages = _series(1, 5)  # start, images 0..4, end
    sink = Stream2Sink()
    second = [messages[0], *(messages[1:] if rearmed else messages[4:])]
    reader = _reconnecting(
        Stream2Source,
        sink,
        messages[:4],
        second,
        lambda s, m: s.send(m),
        lambda: len(sink.published),
        ends=2 if rearmed else 1,
    )
    counters = reader.counters()
    if rearmed:
        assert len(sink.configs) == 2 and [status for _, status in sink.ends] == ["fail", "success"]
        assert (3, 4, "series_restarted") in sink.losses
        assert sorted(frame for run, frame in sink.frames if run == 2) == [0, 1, 2, 3, 4]
        assert counters["series_rearmed"] == 1
    else:
        assert len(sink.configs) == 1 and sink.ends == [(1, "success")] and sink.losses == []
        assert sorted(sink.published) == [0, 1, 2, 3, 4] and counters["starts_repeated"] == 1


def _one_connection(sink: _Ends, messages: list[Any], ends: int) -> ZmqStreamSource:
    return _json(sink, [], messages, ends)


def test_a_sender_re_armed_with_the_same_start_after_its_end_was_lost_gets_a_run_of_its_own() -> None:
    """An outside probe: the end lost, the same start again on the same connection and frames 0.. of a
    new acquisition: all ten were dropped as duplicates (counted only), the run ``success`` with the
    old acquisition's frames. The next image after a start sent again tells, with or without a drop."""
    sink = _Ends()
    messages = [
        header(5, 8),
        *(image(5, n) for n in range(3)),
        header(5, 8),
        *(image(5, n) for n in range(8)),
    ]
    reader = _one_connection(sink, [*messages, END], ends=2)
    assert len(sink.configs) == 2 and sink.ends == ["fail", "success"]
    assert sink.losses == [(3, 7, "series_restarted")]
    assert sink.frames == [0, 1, 2, *range(8)]
    assert reader.counters()["series_rearmed"] == 1 and reader.counters().get("frames_duplicate", 0) == 0


class _Restarted(_Ends):
    """A sink whose ledger has a run of every series cut by a daemon restart."""

    def series_interrupted(self, series: int) -> bool:
        return True


@pytest.mark.parametrize("first", [20, 0])
def test_a_start_sent_again_after_a_daemon_restart_is_told_by_its_first_image(first: int) -> None:
    """An outside probe: the daemon restarted mid-series and the sender sent its start again on its new
    connection, then went on from frame 20: a fresh run stored 20..39 and recorded 0..19 lost, while the
    interrupted run had recorded 15..39 lost: frames both stored and lost. Its first image tells: 20 is
    the series going on (a run resumed after the restart, which the appliance links to the one it
    continues); 0 is a new acquisition (the start's own run)."""
    sink = _Restarted()
    reader = _one_connection(sink, [header(5, 40), *(image(5, n) for n in range(first, 40)), END], ends=1)
    (config,) = sink.configs
    assert sink.frames == list(range(first, 40))
    if first:
        assert config.get("resumed_after_restart") is True and config["first_frame"] == 20, config
        assert not [loss for loss in sink.losses if loss[2] == "frame_number_gap"], sink.losses
        assert reader.counters()["starts_taken_as_resumed"] == 1
    else:
        assert not config.get("resumed_after_restart") and config["frames_expected"] == 40, config
        assert sink.losses == [] and sink.ends == ["success"]


def test_a_start_and_end_sent_again_after_a_restart_with_no_image_open_no_run() -> None:
    """An outside probe: after a restart the sender sent its series' start again, then only its end (the
    rest had gone while the daemon was down): a new run recorded all 10 frames lost, beside the
    interrupted run's own records of them. It is the interrupted series' end: no run opens."""
    sink = _Restarted()
    end6 = [part({"htype": "dseries_end-1.0", "series": 6})]
    reader = _one_connection(sink, [header(5, 10), END, header(6, 1), image(6, 0), end6], ends=1)
    assert [c["frames_expected"] for c in sink.configs] == [1]  # series 6 only
    assert sink.losses == [] and sink.frames == [0]
    assert reader.counters()["starts_after_restart_ended"] == 1


class _RestartedOther(_Ends):
    """A sink whose ledger has a run of every series cut by a restart, recorded as ``"the-cut-one"``."""

    def series_interrupted(self, series: int, uid: str | None = None) -> bool:
        return uid is None or uid == "the-cut-one"


def test_a_start_naming_another_run_than_the_one_a_restart_cut_opens_its_own_at_once() -> None:
    """An outside probe: a demo stopped as its simulator started sent a start and its end, no image; the
    series number was that of a run an earlier demo's restart had cut, and the start was taken for that
    series' own sent again: no run opened, its 300 announced frames in no record. The start names
    another run ("bounds"): a new acquisition, its run opened, its frames recorded missing."""
    sink = _RestartedOther()
    reader = _one_connection(sink, [header(5, 10), END], ends=1)
    assert [c["frames_expected"] for c in sink.configs] == [10]
    assert sink.losses == [(0, 9, "missing_at_series_end")]
    assert reader.counters().get("starts_after_restart_ended", 0) == 0


def test_json_images_of_the_last_series_long_after_its_end_are_a_run_that_reuses_its_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JSON v1 images name no series uid, so time tells: right after its series ended here, an image of
    that number is a straggler (counted, not stored again); ``STRAGGLER_SECONDS`` on, images of that
    number are a series whose start this receiver never saw (a second receiver on the stream took it, a
    detector that restarted its count): a run of their own that says so, not frames dropped as late."""
    from firmware_bridge import zmq_reader

    monkeypatch.setattr(zmq_reader, "STRAGGLER_SECONDS", 0.3)
    sink = _Ends()
    context, push, reader = reader_on_a_push_socket(sink)
    try:
        for message in [header(5, 3), *(image(5, n) for n in range(3)), END, image(5, 2)]:
            push.send_multipart(message)
        _wait(lambda: reader.counters().get("frames_after_series_end", 0) == 1, "the straggler counted")
        time.sleep(0.5)  # beyond STRAGGLER_SECONDS
        for message in [image(5, 1), image(5, 2), END]:
            push.send_multipart(message)
        _wait(lambda: len(sink.ends) >= 2, "the second run's end")
    finally:
        reader.stop()
        push.close(0)
        context.term()
    counters = reader.counters()
    assert counters["frames_after_series_end"] == 1 and counters["series_number_reused"] == 1
    assert len(sink.configs) == 2 and "used again" in sink.configs[1]["start_rejected"]
    assert sink.frames == [0, 1, 2, 1, 2]  # the new run's frames stored, not dropped
    assert (0, 0, "frame_number_gap") in sink.losses  # its frame below the first that came here
