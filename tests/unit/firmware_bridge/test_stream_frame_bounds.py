"""Numbers from the stream that no real detector sends: stray frame numbers, a series number and an
announced length beyond int64. The reader drops and counts a stray image (``frame_number_out_of_range``)
instead of declaring a gap, also when the codec rejects the stray message; the codec bounds the rest.
Messages are built here from docs/wire-formats.md, not with the codec's encoder."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from firmware_bridge.source import FrameHeader
from firmware_bridge.stream_codec import SeriesStart, StreamCodec, StreamError
from firmware_bridge.zmq_reader import MONITOR_SECONDS, ZmqStreamSource

SHAPE = (4, 6)  # height, width


def part(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def header(series: int, frames_expected: Any) -> list[bytes]:
    config = {"htype": "dconfig-edge-1.0", "shape": [SHAPE[1], SHAPE[0]], "type": "uint16"}
    config |= {"run_uid": "bounds", "frames_expected": frames_expected}
    return [part({"htype": "dheader-1.0", "series": series, "header_detail": "basic"}), part(config)]


def image(series: int, frame: int, size: int | None = None) -> list[bytes]:
    pixels = np.full(SHAPE, frame % 60000, "<u2").tobytes()
    return [
        part({"htype": "dimage-1.0", "series": series, "frame": frame, "hash": ""}),
        part(
            {
                "htype": "dimage_d-1.0",
                "shape": [SHAPE[1], SHAPE[0]],
                "type": "uint16",
                "encoding": "<",
                "size": len(pixels) if size is None else size,
            }
        ),
        pixels,
        part({"htype": "dconfig-1.0", "start_time": 0, "stop_time": 1, "real_time": 1}),
    ]


class Sink:
    def __init__(self) -> None:
        self.frames: list[int] = []
        self.losses: list[tuple[int, int, str]] = []
        self.configs: list[dict[str, Any]] = []
        self.lengths: list[int] = []  # lengths learnt after a series began (a late start)
        self.ended = threading.Event()

    def claim(self, nbytes: int) -> Any:
        class Slot:
            buffer = memoryview(bytearray(nbytes))

        return Slot()

    def publish(self, slot: Any, header: FrameHeader) -> None:
        self.frames.append(header.frame)

    def abandon(self, slot: Any) -> None:
        pass

    def series_start(self, series: int, config: dict[str, Any]) -> None:
        self.configs.append(config)

    def series_length(self, series: int, frames_expected: int) -> None:
        self.lengths.append(frames_expected)

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        self.ended.set()

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        self.losses.append((first, last, reason))


def feed(messages: list[list[bytes]]) -> list[Any]:
    codec = StreamCodec()
    events: list[Any] = []
    for parts in messages:
        for i, p in enumerate(parts):
            events += codec.feed(p, i < len(parts) - 1)
    return events


def run_series(
    sink: Sink,
    messages: list[list[bytes]],
    *,
    end: bool = True,
    until: Callable[[], bool] | None = None,
    **reader_options: Any,
) -> ZmqStreamSource:
    """Send ``messages`` and (``end``) series 1's end to a real reader on loopback; return it once a
    series ended (or ``until()`` holds)."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context, **reader_options)
    reader.start()
    try:
        for message in messages:
            push.send_multipart(message)
        if end:
            push.send_multipart([part({"htype": "dseries_end-1.0", "series": 1})])
        if until is None:
            assert sink.ended.wait(10)
        else:
            deadline = time.monotonic() + 10
            while not until() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert until()
    finally:
        reader.stop()
        push.close(0)
        context.term()
    return reader


def test_codec_bounds_the_series_number_and_the_announced_length() -> None:
    (start,) = feed([header(3, 2**64)])
    assert isinstance(start, SeriesStart) and start.frames_expected is None  # unknown, not 2**64
    assert feed([header(3, True)])[0].frames_expected is None
    assert feed([header(3, 30)])[0].frames_expected == 30
    assert feed([header(3, 2**32)])[0].frames_expected == 2**32  # five days at 10 kHz: believed
    assert feed([header(3, 2**32 + 1)])[0].frames_expected is None  # beyond: unknown
    (error,) = feed([header(2**63, 30)])
    assert isinstance(error, StreamError) and error.reason == "bad_field"


def test_stray_frame_numbers_are_dropped_and_counted_never_a_gap() -> None:
    sink = Sink()
    messages = [header(1, 2**64 - 1), image(1, 10**9)]  # before any frame: bounded from frame 0
    messages += [image(1, frame) for frame in range(5)]
    messages += [image(1, 2**63), image(1, 2**64 - 1, size=3)]  # the second one the codec rejects as well
    messages += [image(1, 104), image(1, 205)]  # within the bound of frame 4: a real gap; then a stray
    reader = run_series(sink, messages, max_frame_jump=100)
    assert sink.frames == [0, 1, 2, 3, 4, 104]
    assert sink.losses == [(5, 103, "frame_number_gap")]
    assert sink.configs[0]["frames_expected"] is None  # 2**64 - 1 frames announced: unknown
    counters = reader.counters()
    assert counters["frame_number_out_of_range"] == 4
    assert counters["errors"] == {"bad_size": 1}
    assert counters.get("reader_crashes", 0) == 0


def test_an_absurd_announced_length_is_unknown_not_a_trillion_frames_lost() -> None:
    """A header announcing 10^12 frames, then 3 images and the end: the length is taken as unknown
    (counted, logged), so the end does not record 999,999,999,997 frames lost."""
    sink = Sink()
    reader = run_series(sink, [header(1, 10**12), *(image(1, frame) for frame in range(3))])
    assert sink.frames == [0, 1, 2] and sink.losses == []
    assert sink.configs[0]["frames_expected"] is None
    assert reader.counters()["frames_expected_ignored"] == 1


def test_frames_beyond_the_announced_length_are_kept_and_counted() -> None:
    sink = Sink()
    reader = run_series(sink, [header(1, 2), *(image(1, frame) for frame in range(4))])
    assert sink.frames == [0, 1, 2, 3] and sink.losses == []
    assert reader.counters()["frames_beyond_expected"] == 2


class SmallSlots(Sink):
    """A ring whose slots hold one 4x6 uint16 image: a bigger one does not fit (ValueError, as FrameRing)."""

    def claim(self, nbytes: int) -> Any:
        if nbytes > 48:
            raise ValueError(f"frame of {nbytes} bytes does not fit a 48-byte slot")
        return super().claim(nbytes)


def test_an_image_larger_than_a_ring_slot_is_a_loss_record_not_a_dead_reader() -> None:
    sink = SmallSlots()
    big = image(1, 1)
    big[1] = part({"htype": "dimage_d-1.0", "shape": [12, 4], "type": "uint16", "encoding": "<", "size": 96})
    big[2] = bytes(96)
    reader = run_series(sink, [header(1, 3), image(1, 0), big, image(1, 2)])
    assert sink.frames == [0, 2]
    assert sink.losses == [(1, 1, "frame_too_large")]
    assert reader.counters()["frames_too_large"] == 1 and reader.counters().get("reader_crashes", 0) == 0


def test_a_small_compressed_image_larger_than_a_slot_unpacked_is_a_loss_record() -> None:
    """bs16-lz4: 96 bytes of pixels (12x4 uint16, zeros) compress to far fewer; the slot must hold them
    unpacked, so the image is frame_too_large, and the reader keeps going (issue: a dead reader)."""
    import struct

    import bitshuffle

    pixels = np.zeros((4, 12), "<u2")
    chunk = struct.pack(">QI", pixels.nbytes, 8192) + bytes(bitshuffle.compress_lz4(pixels, 0))
    assert len(chunk) < 96
    sink = SmallSlots()
    big = image(1, 1)
    big[1] = part(
        {
            "htype": "dimage_d-1.0",
            "shape": [12, 4],
            "type": "uint16",
            "encoding": "bs16-lz4<",
            "size": len(chunk),
        }
    )
    big[2] = chunk
    reader = run_series(sink, [header(1, 3), image(1, 0), big, image(1, 2)])
    assert sink.frames == [0, 2]
    assert sink.losses == [(1, 1, "frame_too_large")]
    assert reader.counters()["frames_too_large"] == 1 and reader.counters().get("reader_crashes", 0) == 0


def test_a_series_left_open_by_a_silent_detector_raises_an_alarm_until_it_ends() -> None:
    """A detector that stops sending without ending its series leaves the run open: after
    ``silent_alarm_seconds`` with no message the reader says so, and the minor alarm
    ``condition:stream_silent`` follows from the counters; the series' end clears it."""
    import time

    from edge.alarms import current_alarms

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = Sink()
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context, silent_alarm_seconds=1.0)
    reader.start()
    try:
        assert reader.counters()["seconds_silent"] is None  # no series yet
        push.send_multipart(header(1, 100))
        push.send_multipart(image(1, 0))
        deadline = time.monotonic() + 10
        while (reader.counters()["seconds_silent"] or 0) < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        (alarm,) = current_alarms({"receiver": reader.counters()})
        assert alarm["id"] == "condition:stream_silent" and alarm["severity"] == "minor"
        assert alarm["message"].startswith("Series 1 is open but the detector has sent nothing for 1 s")
        push.send_multipart([part({"htype": "dseries_end-1.0", "series": 1})])
        assert sink.ended.wait(10)
        assert reader.counters()["seconds_silent"] is None
        assert current_alarms({"receiver": reader.counters()}) == []
    finally:
        reader.stop()
        push.close(0)
        context.term()


def _with_hash(message: list[bytes], md5: Any) -> list[bytes]:
    first = json.loads(message[0])
    return [part({**first, "hash": md5}), *message[1:]]


def test_an_image_whose_data_does_not_match_its_md5_hash_is_a_loss_record() -> None:
    """DECTRIS's ``hash``: the MD5 of the data part, in hex. When a sender gives one it is checked (raw
    data received straight into a ring slot included): a mismatch is ``stream_bad_hash``; an empty hash
    is not checked, one that is not an MD5 in hex is counted and not checked."""
    import hashlib

    good = [image(1, f) for f in range(5)]
    sent = [
        _with_hash(good[0], hashlib.md5(good[0][2]).hexdigest()),
        _with_hash(good[1], hashlib.md5(good[1][2]).hexdigest().upper()),
        _with_hash(good[2], hashlib.md5(b"other bytes").hexdigest()),  # damaged on the way
        _with_hash(good[3], "not-an-md5"),
        good[4],
    ]
    sink = Sink()
    reader = run_series(sink, [header(1, 5), *sent])
    assert sink.frames == [0, 1, 3, 4]
    assert sink.losses == [(2, 2, "stream_bad_hash")]
    codec = reader.counters()["codec"]
    assert codec["image_hashes_checked"] == 3 and codec["image_hash_unreadable"] == 1


def test_a_reader_held_back_by_the_appliance_is_not_a_silent_detector() -> None:
    """An outside chaos probe: with the store full of unverified data the appliance held the detector
    back for ten minutes (the ring's claim waits), and ``condition:stream_silent`` said the detector
    had sent nothing and might have stopped. The wait is the appliance's: no silence is counted while a
    message is being handed over, and it counts again from when the reader is ready for the next."""
    import time

    from edge.alarms import current_alarms

    class HeldSink(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def claim(self, nbytes: int) -> Any:
            if self.frames:  # the second frame waits, as for a ring the store does not let drain
                self.release.wait(20)
            return super().claim(nbytes)

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = HeldSink()
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context, silent_alarm_seconds=1.0)
    reader.start()
    try:
        push.send_multipart(header(1, 100))
        push.send_multipart(image(1, 0))
        push.send_multipart(image(1, 1))
        deadline = time.monotonic() + 10
        while len(sink.frames) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # held past silent_alarm_seconds
        assert reader.counters()["seconds_silent"] == 0.0
        assert current_alarms({"receiver": reader.counters()}) == []
        sink.release.set()
        while len(sink.frames) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        silent = reader.counters()["seconds_silent"]
        assert silent is not None and silent < 1.0  # from when frame 1 was handed over, not received
    finally:
        sink.release.set()
        reader.stop()
        push.close(0)
        context.term()


def test_a_gap_after_images_that_do_not_name_their_frame_is_put_down_to_them() -> None:
    """An image message rejected before its frame number could be read (``"frame": "two"``; a first part
    that is not JSON) is a frame the detector sent: the gap it leaves is recorded as
    ``stream_unreadable_message``, with how many such messages came, not as frames that never arrived
    (the Stream V2 reader's rule, ``stream2_unreadable_message``). The gap after a readable message that
    is no image (an unknown ``htype``) stays ``frame_number_gap``; so does one at the series' end only
    when nothing unreadable came."""
    bad_frame = image(1, 2)
    bad_frame[0] = part({"htype": "dimage-1.0", "series": 1, "frame": "two", "hash": ""})
    not_json = image(1, 4)
    not_json[0] = b"\xff{not json"
    sent = [image(1, 0), image(1, 1), bad_frame, image(1, 3), not_json]
    sink = Sink()
    reader = run_series(sink, [header(1, 5), *sent])
    assert sink.frames == [0, 1, 3]
    assert sink.losses == [(2, 2, "stream_unreadable_message"), (4, 4, "stream_unreadable_message")]
    assert reader.counters()["messages_rejected"] == 2

    negative = image(1, 2)  # a frame number below 0 names no frame either (docs/wire-formats.md)
    negative[0] = part({"htype": "dimage-1.0", "series": 1, "frame": -2, "hash": ""})
    sink = Sink()
    run_series(sink, [header(1, 4), image(1, 0), image(1, 1), negative, image(1, 3)])
    assert sink.frames == [0, 1, 3]
    assert sink.losses == [(2, 2, "stream_unreadable_message")]

    other = [part({"htype": "dsomething-1.0", "series": 1})]
    sink = Sink()
    run_series(sink, [header(1, 3), image(1, 0), other, image(1, 2)])
    assert sink.losses == [(1, 1, "frame_number_gap")]


class _DetailSink(Sink):
    """Keeps each loss's detail too."""

    def __init__(self) -> None:
        super().__init__()
        self.details: list[str] = []

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        super().lost(first, last, reason, detail)
        self.details.append(detail)


def test_a_gap_after_the_connection_dropped_says_so() -> None:
    """A message part over ``stream.max_message_bytes`` makes ZeroMQ drop the connection (the receiver
    never sees the message, nor what was queued behind it); the reader connects again and the frames
    lost meanwhile are a ``frame_number_gap``, whose detail said "frames never arrived". It says the
    connection dropped, and the likely causes."""
    big = image(1, 1)
    big[2] = bytes(64 << 10)  # a data part over the 16 KiB limit below (its size field does not matter)
    sink = _DetailSink()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context, max_message_bytes=16 << 10)
    reader.start()
    try:
        for message in (header(1, 5), image(1, 0), big):
            push.send_multipart(message)
        deadline = time.monotonic() + 10
        while reader.counters().get("reconnects", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # (connected again)
        for message in (image(1, 3), image(1, 4), [part({"htype": "dseries_end-1.0", "series": 1})]):
            push.send_multipart(message)
        assert sink.ended.wait(10)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    assert sink.frames == [0, 3, 4]
    assert sink.losses == [(1, 2, "frame_number_gap")]
    (detail,) = sink.details
    assert "connection dropped" in detail and "max_message_bytes" in detail, detail


def test_a_gap_among_messages_queued_before_the_connection_dropped_is_not_put_down_to_the_drop() -> None:
    """A sender that dropped frame 1, sent frame 2 and its series' end, then went away: the reader saw
    the drop before it read the queued messages, and the gap's detail said "the stream connection
    dropped meanwhile" (an outside probe looked for a network fault that never happened). A drop
    explains a gap only once the old connection's messages are read."""
    import threading

    class Held(_DetailSink):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def publish(self, slot: Any, header: FrameHeader) -> None:
            super().publish(slot, header)
            if header.frame == 0:
                assert self.release.wait(10)  # the reader waits here while the rest queues and the drop

    sink = Held()
    context, push, reader = reader_on_a_push_socket(sink)
    try:
        for message in (
            header(1, 3),
            image(1, 0),
            image(1, 2),
            [part({"htype": "dseries_end-1.0", "series": 1})],
        ):
            push.send_multipart(message)
        deadline = time.monotonic() + 10
        while 0 not in sink.frames and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # (the rest is in the reader's queue)
        push.close(linger=1000)
        time.sleep(MONITOR_SECONDS + 0.5)  # the drop happens, and a look at the connection is due
        sink.release.set()
        assert sink.ended.wait(10)
    finally:
        sink.release.set()
        reader.stop()
        context.term()
    assert sink.frames == [0, 2] and sink.losses == [(1, 1, "frame_number_gap")]
    assert sink.details == ["frames never arrived"], sink.details


def test_a_series_the_daemon_stops_in_says_the_daemon_stopped_not_that_the_series_ended() -> None:
    """An outside probe: a SIGTERM mid-series recorded the rest "receiver_stopped: the series ended after
    frame 137, of 300 announced", and the series went on (in the run resumed after the restart)."""
    sink = _DetailSink()
    context, push, reader = reader_on_a_push_socket(sink)
    try:
        for message in (header(1, 10), image(1, 0), image(1, 1), image(1, 2)):
            push.send_multipart(message)
        deadline = time.monotonic() + 10
        while len(sink.frames) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    assert sink.losses == [(3, 9, "receiver_stopped")]
    assert sink.details == ["the daemon stopped after frame 2, of 10 announced"]


def reader_on_a_push_socket(sink: Any) -> tuple[zmq.Context, zmq.Socket, ZmqStreamSource]:
    """A started reader into ``sink``, connected to a PUSH socket of its own on a free loopback port:
    (the context, the socket to send on, the reader); the caller stops the reader and ends the context."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    return context, push, reader
