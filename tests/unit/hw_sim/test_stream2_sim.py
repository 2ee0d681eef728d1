"""The simulator's Stream V2 output, decoded by the codec: frames, chunks, faults and the IOC-driven path."""

from __future__ import annotations

import threading

import numpy as np
import zmq

from firmware_bridge.hdf5_chunks import ChunkError
from firmware_bridge.stream2_codec import Stream2Codec, Stream2End, Stream2Error, Stream2Image, Stream2Start
from hw_sim.detector import StreamingDetector
from hw_sim.stream2_sender import Stream2Faults, send_series_stream2
from hw_sim.zmq_sender import ZmqFrameSender
from kernels import compress_chunk

SHAPE = (24, 40)


def frame(number: int) -> np.ndarray:
    return np.random.default_rng([3, number]).poisson(25, SHAPE).astype(np.uint16)


def _receive(pull: zmq.Socket, codec: Stream2Codec) -> list[object]:
    events: list[object] = []
    while not events or not isinstance(events[-1], Stream2End):
        assert pull.poll(10_000), f"nothing more after {events}"
        events += codec.feed(pull.recv())
    return events


def test_faults_in_the_truth_are_what_the_codec_and_chunk_check_see() -> None:
    context = zmq.Context()
    sender = ZmqFrameSender("tcp://127.0.0.1:*", context, sndhwm=1000)
    pull = context.socket(zmq.PULL)
    pull.connect(sender.endpoint)
    faults = Stream2Faults(loss=0.1, bad_block=0.15, truncate=0.15, wrong_tag=0.15, seed=3)
    try:
        summary = send_series_stream2(
            sender, frame, 60, 5000.0, 4, "uid-4", {"geometry": {}}, threading.Event(), faults=faults
        )
        events = _receive(pull, Stream2Codec())
    finally:
        pull.close(0)
        sender.close(0)
        context.term()
    truth = summary.faults["truth"]
    assert all(
        truth[k] for k in ("frames_dropped", "frames_bad_block", "frames_truncated", "frames_wrong_tag")
    )
    start = events[0]
    assert isinstance(start, Stream2Start) and start.series_unique_id == "uid-4" and start.dtype == "uint16"
    seen_ok, seen_bad = [], []
    for event in events:
        if isinstance(event, Stream2Image):
            array = event.channels["threshold_1"]
            try:
                np.testing.assert_array_equal(array.pixels(), frame(event.frame))
                assert array.data == compress_chunk(frame(event.frame))  # the block as the filter writes it
                seen_ok.append(event.frame)
            except ChunkError:
                seen_bad.append(event.frame)
    errors = [e for e in events if isinstance(e, Stream2Error)]
    assert sorted(seen_bad) == truth["frames_bad_block"]
    assert sorted(e.frame for e in errors if e.reason == "unsupported_tag") == truth["frames_wrong_tag"]
    assert sum(e.reason == "malformed_cbor" for e in errors) == len(truth["frames_truncated"])
    assert sorted(seen_ok) == sorted(set(range(60)) - set(truth["frames_lost"]))


def test_ioc_driven_detector_speaks_stream2() -> None:
    context = zmq.Context()
    detector = StreamingDetector("tcp://127.0.0.1:*", frame, context, first_series=9, stream_format="stream2")
    pull = context.socket(zmq.PULL)
    pull.connect(detector.endpoint)
    try:
        hooks = detector.hooks()
        hooks.on_acquire_start(3)
        for index in range(3):
            hooks.on_frame(index)
        hooks.on_acquire_stop()
        events = _receive(pull, Stream2Codec())
    finally:
        pull.close(0)
        detector.close(0)
        context.term()
    start, *images, end = events
    assert isinstance(start, Stream2Start) and (start.series, start.number_of_images) == (9, 3)
    assert [i.frame for i in images] == [0, 1, 2]
    for image in images:
        np.testing.assert_array_equal(image.channels["threshold_1"].pixels(), frame(image.frame))
    assert isinstance(end, Stream2End) and end.series == 9
