"""Tomography frames in the JSON stream: ``image_key`` and ``rotation_angle`` in an image's first part.

The messages are written out by hand here, field by field as docs/wire-formats.md describes them, not
by our encoder.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from firmware_bridge.stream_codec import ImageMessage, StreamCodec, StreamError


def _parts(first: dict) -> list[bytes]:
    pixels = np.arange(12, dtype="<u2").tobytes()
    return [
        json.dumps({"htype": "dheader-1.0", "series": 3, "header_detail": "basic"}).encode(),
        json.dumps({"htype": "dconfig-edge-1.0", "shape": [4, 3], "type": "uint16"}).encode(),
        json.dumps({"htype": "dimage-1.0", "series": 3, "frame": 7, "hash": "", **first}).encode(),
        json.dumps(
            {"htype": "dimage_d-1.0", "shape": [4, 3], "type": "uint16", "encoding": "<", "size": 24}
        ).encode(),
        pixels,
        json.dumps({"htype": "dconfig-1.0", "start_time": 1, "stop_time": 2, "real_time": 1}).encode(),
    ]


def _feed(parts: list[bytes]) -> list:
    codec = StreamCodec()
    events = codec.feed(parts[0], True) + codec.feed(parts[1], False)
    for i, part in enumerate(parts[2:]):
        events += codec.feed(part, i < 3)
    return events


def test_image_key_and_angle_are_read() -> None:
    events = _feed(_parts({"image_key": 1, "rotation_angle": 12.5}))
    (image,) = [e for e in events if isinstance(e, ImageMessage)]
    assert (image.frame, image.image_key, image.rotation_angle) == (7, 1, 12.5)


def test_without_them_a_frame_is_a_projection_with_no_angle() -> None:
    (image,) = [e for e in _feed(_parts({})) if isinstance(e, ImageMessage)]
    assert image.image_key == 0 and math.isnan(image.rotation_angle)


@pytest.mark.parametrize(
    "first", [{"image_key": 3}, {"image_key": True}, {"rotation_angle": "x"}, {"rotation_angle": 1e9}]
)
def test_bad_values_are_rejected_with_a_reason(first: dict) -> None:
    events = _feed(_parts(first))
    assert not any(isinstance(e, ImageMessage) for e in events)
    errors = [e for e in events if isinstance(e, StreamError)]
    assert errors and errors[0].reason == "bad_field", errors
