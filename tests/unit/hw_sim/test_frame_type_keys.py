"""The simulated camera stamps each frame it streams with the NXtomo image key of its FrameType."""

from __future__ import annotations

import json

import numpy as np
import zmq

from hw_sim.detector import StreamingDetector


def test_frames_carry_the_image_key_of_the_frame_type() -> None:
    context = zmq.Context()
    detector = StreamingDetector("tcp://127.0.0.1:0", lambda n: np.full((4, 6), n, np.uint16), context)
    sink = context.socket(zmq.PULL)
    sink.connect(detector.endpoint)
    try:
        hooks = detector.hooks()
        hooks.on_acquire_start(3)
        for index, frame_type in enumerate(("Background", "FlatField", "Normal")):
            detector.frame_type = lambda frame_type=frame_type: frame_type
            hooks.on_frame(index)
        hooks.on_acquire_stop()
        keys = []
        while len(keys) < 3:
            assert sink.poll(10_000), "the detector sent nothing"
            parts = sink.recv_multipart()
            first = json.loads(parts[0])
            if first["htype"] == "dimage-1.0":
                keys.append(first.get("image_key", 0))
        assert keys == [2, 1, 0]  # dark, flat, projection (a Normal frame carries no key: 0 by default)
    finally:
        sink.close(0)
        detector.close(0)
        context.term()


def test_the_series_header_gives_the_cameras_exposure_and_period() -> None:
    # what the IOC's AcquireTime and (effective) AcquirePeriod say at Acquire: DECTRIS's count_time and
    # frame_time in the series header, which the appliance's NXmx files then carry
    context = zmq.Context()
    detector = StreamingDetector("tcp://127.0.0.1:0", lambda n: np.zeros((4, 6), np.uint16), context)
    detector.timing = lambda: {"count_time": 0.004, "frame_time": 0.005}
    sink = context.socket(zmq.PULL)
    sink.connect(detector.endpoint)
    try:
        detector.hooks().on_acquire_start(1)
        assert sink.poll(10_000), "the detector sent nothing"
        header, config = (json.loads(part) for part in sink.recv_multipart())
        assert header["htype"] == "dheader-1.0"
        assert config["count_time"] == 0.004 and config["frame_time"] == 0.005
    finally:
        sink.close(0)
        detector.close(0)
        context.term()
