"""A clean stop reads what is already queued on the stream's socket: frames the detector sent (a burst)
and the daemon had not read yet were dropped with the socket, ``receiver_stopped`` losses of frames
that had arrived (an outside technician's SIGTERM, ``edge sim --burst 5``). Real ZeroMQ sockets on
loopback; the messages are built from docs/wire-formats.md by the helpers of the reader tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq
from test_stream_frame_bounds import Sink, header, image

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
