"""Replay the recorded frame-stream capture, through the codec and through a real ZeroMQ reader."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from firmware_bridge.source import FrameHeader
from firmware_bridge.stream_codec import ImageMessage, SeriesEnd, SeriesStart, StreamCodec, StreamError
from firmware_bridge.zmq_reader import ZmqStreamSource

DATA = Path(__file__).parents[2] / "data"
spec = importlib.util.spec_from_file_location("make_stream_capture", DATA / "make_stream_capture.py")
capture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(capture)
RECORDED = (DATA / "stream_capture_v1.bin").read_bytes()


def test_capture_is_what_the_generator_writes() -> None:
    assert capture.encode_capture(capture.messages()) == RECORDED


def test_codec_replay() -> None:
    codec = StreamCodec()
    events: list[Any] = []
    for parts in capture.iter_capture(RECORDED):
        for i, part in enumerate(parts):
            events += codec.feed(part, i < len(parts) - 1)
    images = [e for e in events if isinstance(e, ImageMessage)]
    errors = [e for e in events if isinstance(e, StreamError)]
    assert isinstance(events[0], SeriesStart) and events[0].run_uid == "capture-v1"
    assert isinstance(events[-1], SeriesEnd)
    assert [i.frame for i in images] == [0, 1, 2, 3, 5, 7, 8, 8, 9]
    assert [(e.reason, e.frame) for e in errors] == [("malformed_json", None), ("bad_size", 6)]
    assert images[5].encoding == "bs16-lz4<"
    assert np.array_equal(np.frombuffer(images[0].data, np.uint16).reshape(capture.SHAPE), capture.frame(0))


class Sink:
    """A minimal FrameSink that keeps what it is given."""

    def __init__(self) -> None:
        self.frames: dict[int, np.ndarray] = {}
        self.losses: list[tuple[int, int, str]] = []
        self.ended = threading.Event()
        self.buffers: list[bytearray] = []

    def claim(self, nbytes: int):
        class Slot:
            buffer = memoryview(bytearray(nbytes))

        return Slot()

    def publish(self, slot, header: FrameHeader) -> None:
        pixels = np.frombuffer(slot.buffer, np.uint16).reshape(header.height, header.width)
        self.frames[header.frame] = pixels.copy()

    def abandon(self, slot) -> None:
        pass

    def series_start(self, series: int, config: dict[str, Any]) -> None:
        pass

    def series_length(self, series: int, frames_expected: int) -> None:
        pass

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        self.ended.set()

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        self.losses.append((first, last, reason))


def test_reader_replay_over_zeromq_accounts_for_every_frame() -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = Sink()
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    try:
        for parts in capture.iter_capture(RECORDED):
            push.send_multipart(parts)
        assert sink.ended.wait(10)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    assert sorted(sink.frames) == [0, 1, 2, 3, 5, 7, 8, 9]
    for number, pixels in sink.frames.items():
        assert np.array_equal(pixels, capture.frame(number)), number
    assert sorted(sink.losses) == [
        (4, 4, "stream_unreadable_message"),  # the gap after the message that is not JSON (as Stream V2)
        (6, 6, "stream_bad_size"),
        (10, 10, "missing_at_series_end"),
    ]
    counters = reader.counters()
    assert counters["frames_received"] == 8 and counters["frames_duplicate"] == 1
