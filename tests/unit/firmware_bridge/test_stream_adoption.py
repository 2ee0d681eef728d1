"""Images of a series the reader never saw start (the daemon restarted mid-series) open a resumed run;
an image of a series that already ended is a loss record. Never only a counter (issue 12, hole 2).
Messages are built from docs/wire-formats.md by the helpers of test_stream_frame_bounds."""

from __future__ import annotations

import threading

import zmq
from test_stream_frame_bounds import SHAPE, Sink, header, image, part

from firmware_bridge.zmq_reader import ZmqStreamSource


class _Counting(Sink):
    """Tells when the first loss record arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.got = threading.Event()

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        super().lost(first, last, reason, detail)
        self.got.set()


def _run(messages: list[list[bytes]], sink: Sink, done: threading.Event) -> ZmqStreamSource:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context, max_frame_jump=100)
    reader.start()
    try:
        for message in messages:
            push.send_multipart(message)
        assert done.wait(10)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    return reader


def test_images_without_their_series_start_open_a_resumed_run() -> None:
    sink = Sink()
    end = [part({"htype": "dseries_end-1.0", "series": 7})]
    reader = _run([image(7, 500), image(7, 501), image(7, 503), end], sink, sink.ended)
    (config,) = sink.configs
    assert config["resumed_after_restart"] is True and config["first_frame"] == 500
    assert config["frames_expected"] is None and config["shape"] == [SHAPE[1], SHAPE[0]]
    assert sink.frames == [500, 501, 503]  # 500 is far beyond max_frame_jump of 0: numbered from 500
    assert sink.losses == [(502, 502, "frame_number_gap")]  # nothing before 500: the old run's
    counters = reader.counters()
    assert counters["series_adopted"] == 1 and counters.get("frames_outside_series", 0) == 0


def test_a_straggler_after_its_series_ended_is_a_loss_record() -> None:
    sink = _Counting()
    end = [part({"htype": "dseries_end-1.0", "series": 3})]
    reader = _run([header(3, 2), image(3, 0), image(3, 1), end, image(3, 2)], sink, sink.got)
    assert sink.frames == [0, 1]
    assert sink.losses == [(2, 2, "frame_outside_series")]
    assert len(sink.configs) == 1  # no new run for a straggler
    assert reader.counters()["frames_outside_series"] == 1
