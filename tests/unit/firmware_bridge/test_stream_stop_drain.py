"""A clean stop reads what is already queued on the stream's socket: frames the detector sent (a burst)
and the daemon had not read yet were dropped with the socket, ``receiver_stopped`` losses of frames
that had arrived (an outside technician's SIGTERM, ``edge sim --burst 5``). Real ZeroMQ sockets on
loopback; the messages are built from docs/wire-formats.md by the helpers of the reader tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import zmq
from test_stream_frame_bounds import Sink, header, image, reader_on_a_push_socket

from firmware_bridge.zmq_reader import ZmqStreamSource


class _SlowSink(Sink):
    """Holds the reader on its first frame until released: the frames after it queue on the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    def publish(self, slot: Any, header: Any) -> None:
        super().publish(slot, header)
        if len(self.frames) == 1:
            self.holding.set()
            self.release.wait(10)


def test_a_clean_stop_reads_the_frames_already_queued_on_its_socket() -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = _SlowSink()
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    stopping = threading.Thread(target=reader.stop)
    try:
        push.send_multipart(header(1, 6))
        for frame in range(6):
            push.send_multipart(image(1, frame))
        assert sink.holding.wait(10), "the first frame"
        time.sleep(0.3)  # the other five are on the reader's socket now, not read
        stopping.start()  # SIGTERM: the reader is asked to stop while it holds the first frame
        time.sleep(0.2)
        sink.release.set()
        stopping.join(15)
    finally:
        sink.release.set()
        push.close(0)
        context.term()
    assert sink.frames == [0, 1, 2, 3, 4, 5], sink.frames
    assert sink.losses == [], sink.losses
    assert reader.counters()["messages_read_at_stop"] == 5


class _RingSink(Sink):
    """Frames go into a real FrameRing of 4 slots, which nothing empties until the test says so."""

    def __init__(self, ring: Any) -> None:
        super().__init__()
        self.ring = ring

    def claim(self, nbytes: int) -> Any:
        return self.ring.claim(nbytes)

    @property
    def claim_wait_seconds(self) -> float:
        return float(self.ring.wait_seconds)

    def publish(self, slot: Any, header: Any) -> None:
        self.ring.publish(slot, header)
        super().publish(slot, header)


def _empty(ring: Any, stop: threading.Event) -> None:
    """The pipeline: takes and releases every slot until stopped, a quarter of a second a frame (the
    frames read at the stop wait for slots longer, all told, than the drain's own half second)."""
    while not stop.is_set():
        slot = ring.next_ready(timeout=0.05)
        if slot is not None:
            time.sleep(0.25)
            ring.release(slot)


def test_a_clean_stop_stores_the_frames_a_full_ring_held_back_once_the_pipeline_moves() -> None:
    """An outside probe's SIGTERM while the mode's kernels loaded: the ring (16 slots) was full, the
    reader held frame 16 waiting for a slot and 17..19 were queued; the stop made the waiting claim give
    up at once, and those four became ``shutdown`` losses although the pipeline went on to store the
    ring's frames. A clean stop now lets the claim wait while the pipeline is busy getting ready or
    moves (`FrameRing.stop`'s grace), and the drain's half second does not count that wait."""
    from edge.ring import FrameRing

    ring = FrameRing(4, 64 * 1024)
    loading = threading.Event()
    loading.set()  # the kernels load: nothing is taken from the ring
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = _RingSink(ring)
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    done = threading.Event()
    pipeline = threading.Thread(target=_empty, args=(ring, done))

    def stop() -> None:  # the appliance's order: the ring, then the reader
        ring.stop(10.0, busy=loading.is_set)
        reader.stop()

    stopping = threading.Thread(target=stop)
    try:
        push.send_multipart(header(1, 10))
        for frame in range(10):
            push.send_multipart(image(1, frame))
        deadline = time.monotonic() + 10
        while len(sink.frames) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # frame 4 waits for a slot, 5..9 are on the socket
        stopping.start()  # SIGTERM
        time.sleep(1.5)  # longer than the drain's own half second: the kernels still load
        loading.clear()
        pipeline.start()  # ready: the pipeline empties the ring
        stopping.join(20)
    finally:
        done.set()
        push.close(0)
        context.term()
        if pipeline.is_alive():
            pipeline.join(5)
        ring.close()
    assert sink.frames == list(range(10)), sink.frames
    assert sink.losses == [], sink.losses
    assert ring.wait_seconds >= 1.0


def test_a_clean_stop_gives_up_on_a_ring_nobody_empties() -> None:
    """A pipeline that does not move (held by a full disk) and is not getting ready: the claim gives up
    ``STOP_STALL_SECONDS`` after the last release, as before the grace, and the frame is lost."""
    import edge.ring as ring_module
    from edge.ring import FrameRing

    ring = FrameRing(1, 4096)
    try:
        assert ring.claim(16) is not None  # the only slot, never released
        ring_module.STOP_STALL_SECONDS, stall = 0.3, ring_module.STOP_STALL_SECONDS
        try:
            ring.stop(10.0, busy=lambda: False)
            began = time.monotonic()
            assert ring.claim(16) is None
            assert time.monotonic() - began < 2
        finally:
            ring_module.STOP_STALL_SECONDS = stall
    finally:
        ring.close()


def _send_series(push: zmq.Socket, series: int, frames: int) -> None:
    """A whole series on ``push``: its start, ``frames`` images and its end."""
    push.send_multipart(header(series, frames))
    for frame in range(frames):
        push.send_multipart(image(series, frame))
    push.send_multipart([f'{{"htype": "dseries_end-1.0", "series": {series}}}'.encode()])


def test_a_sender_that_goes_away_after_its_series_is_logged_as_normal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outside newcomer's probe: every simulator run that ended normally left "the stream connection
    dropped ... the detector went away, or sent a message part over stream.max_message_bytes", read as
    a fault. Between series the line says the sender went away after its series."""
    import logging

    caplog.set_level(logging.INFO, logger="firmware_bridge.zmq_reader")
    context = zmq.Context()
    pull_side = Sink()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", pull_side, context)
    reader.start()
    try:
        _send_series(push, 1, 2)
        assert pull_side.ended.wait(10)
        push.close(0)  # the sender goes away
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not reader.counters().get("connections_dropped"):
            time.sleep(0.1)
    finally:
        reader.stop()
        context.term()
    lines = [r.getMessage() for r in caplog.records if "stream connection" in r.getMessage()]
    assert lines and "closed with no series open" in lines[0] and "went away after its series" in lines[0], (
        lines
    )


def test_a_clean_stop_leaves_the_queue_to_the_sender_once_the_ring_takes_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outside probe: a SIGTERM while a full disk held the pipeline (the ring full, the detector held
    back). The stop's drain read the detector's whole backlog and dropped each frame as ``shutdown``;
    left queued, the frames stay with the sender, which sends them again to the restarted daemon. The
    drain stops at the first frame the ring no longer takes."""
    import edge.ring as ring_module
    from edge.ring import FrameRing

    monkeypatch.setattr(ring_module, "STOP_STALL_SECONDS", 0.3)
    ring = FrameRing(4, 64 * 1024)  # nothing empties it: the pipeline is held
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = _RingSink(ring)
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    try:
        push.send_multipart(header(1, 30))
        for frame in range(30):
            push.send_multipart(image(1, frame))
        deadline = time.monotonic() + 10
        while len(sink.frames) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # frame 4 waits for a slot; 5..29 are queued
        ring.stop(10.0, busy=lambda: False)
        reader.stop()
    finally:
        push.close(0)
        context.term()
        ring.close()
    shutdown = [loss for loss in sink.losses if loss[2] == "shutdown"]
    assert sink.frames == [0, 1, 2, 3]
    assert len(shutdown) <= 2, sink.losses  # the frame in hand, and at most the one the drain read
    assert reader.counters().get("messages_read_at_stop", 0) <= 1


def test_a_sender_gone_with_its_series_end_still_queued_is_logged_as_normal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outside probe: a simulator that sent its series' end and exited while the daemon was still
    reading the series left "dropped during series 1 ... the detector went away, or sent a message part
    over stream.max_message_bytes" although every frame arrived. The close is seen before the end is
    read: it is told at the end, as the sender going away after its series."""
    import logging

    caplog.set_level(logging.INFO, logger="firmware_bridge.zmq_reader")
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = _SlowSink()
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    try:
        _send_series(push, 1, 3)
        assert sink.holding.wait(10), "the first frame"
        time.sleep(0.3)  # the rest and the end are on the reader's socket
        push.close(0)  # the sender goes away
        time.sleep(0.5)  # its close reaches the reader's monitor before the queued messages are read
        sink.release.set()
        assert sink.ended.wait(10)
        counters = reader.counters()
    finally:
        sink.release.set()
        reader.stop()
        context.term()
    assert sink.frames == [0, 1, 2] and sink.losses == [], (sink.frames, sink.losses)
    assert counters["connections_dropped"] == 1 and counters.get("connections_dropped_in_series", 0) == 0
    lines = [r.getMessage() for r in caplog.records if "stream connection" in r.getMessage()]
    assert lines and all("end already sent" in line for line in lines), lines


def test_a_series_the_appliance_ends_after_its_sender_died_is_not_said_to_have_ended_by_the_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outside probe killed the camera (and its stream) mid-series; the appliance ended the series
    (``detector_disconnected``) and the log said the connection "closed with series 1's end already
    sent ... the sender went away after its series"."""
    import logging

    caplog.set_level(logging.INFO, logger="firmware_bridge.zmq_reader")
    sink = Sink()
    context, push, reader = reader_on_a_push_socket(sink)
    try:
        push.send_multipart(header(1, 10))
        push.send_multipart(image(1, 0))
        deadline = time.monotonic() + 10
        while len(sink.frames) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        push.close(0)  # the sender dies mid-series
        while reader.counters().get("connections_dropped", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        reader.end_series("detector_disconnected")  # what the appliance does for a vanished detector
        assert sink.ended.wait(10)
    finally:
        reader.stop()
        context.term()
    assert sink.losses == [(1, 9, "detector_disconnected")]
    assert not [r for r in caplog.records if "end already sent" in r.getMessage()]
