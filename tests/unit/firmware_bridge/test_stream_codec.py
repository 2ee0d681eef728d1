"""The ZeroMQ frame-stream codec, fed bytes directly (no sockets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.stream_codec import (
    ImageMessage,
    SeriesEnd,
    SeriesStart,
    StreamCodec,
    StreamError,
    encode_image,
    encode_series_end,
    encode_series_start,
)
from kernels import compress_chunk


def feed_message(codec: StreamCodec, parts: list) -> list:
    events = []
    for i, part in enumerate(parts):
        events += codec.feed(bytes(part), more=i < len(parts) - 1)
    return events


def test_series_round_trip() -> None:
    codec = StreamCodec()
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    (start,) = feed_message(codec, encode_series_start(7, (3, 4), "uint16", run_uid="abc", frames_expected=2))
    assert isinstance(start, SeriesStart)
    assert (start.series, start.shape, start.dtype, start.run_uid, start.frames_expected) == (
        7,
        (3, 4),
        "uint16",
        "abc",
        2,
    )
    for n in range(2):
        (image,) = feed_message(codec, encode_image(7, n, (3, 4), "uint16", frame.tobytes(), "<", 5, 9))
        assert isinstance(image, ImageMessage)
        assert (image.frame, image.shape, image.size, image.start_time, image.stop_time) == (
            n,
            (3, 4),
            24,
            5,
            9,
        )
        assert np.array_equal(np.frombuffer(image.data, np.uint16).reshape(3, 4), frame)
    assert feed_message(codec, encode_series_end(7)) == [SeriesEnd(7)]
    assert codec.counters["images"] == 2 and not codec.errors


def test_data_part_received_into_callers_buffer() -> None:
    codec = StreamCodec()
    feed_message(codec, encode_series_start(1, (2, 2), "uint16"))
    parts = encode_image(1, 0, (2, 2), "uint16", b"\x00" * 8)
    assert codec.feed(parts[0], True) == [] and codec.feed(parts[1], True) == []
    assert codec.expecting_data() == 8 and codec.pending_encoding == "<" and codec.pending_frame == 0
    assert codec.feed_received(8, True) == []
    (image,) = codec.feed(parts[3], False)
    assert image.data is None and image.frame == 0


def test_compressed_image_keeps_its_encoding() -> None:
    codec = StreamCodec()
    frame = np.random.default_rng(1).integers(0, 50, (16, 16), dtype=np.uint16)
    feed_message(codec, encode_series_start(1, (16, 16), "uint16"))
    chunk = compress_chunk(frame)
    (image,) = feed_message(codec, encode_image(1, 0, (16, 16), "uint16", chunk, "bs16-lz4<"))
    assert image.encoding == "bs16-lz4<" and image.size == len(chunk)


@pytest.mark.parametrize(
    ("dtype", "encoding"), [("uint16", "bs32-lz4<"), ("uint32", "bs16-lz4<"), ("uint8", "bs16-lz4<")]
)
def test_a_bitshuffle_element_size_other_than_the_pixels_is_refused(dtype: str, encoding: str) -> None:
    """Decoded with the declared element size, the pixels would be stored wrong without a trace."""
    codec = StreamCodec()
    chunk = bytes(compress_chunk(np.zeros((4, 4), dtype)))
    events = feed_message(codec, encode_image(1, 7, (4, 4), dtype, chunk, encoding))
    assert [(e.reason, e.frame) for e in events] == [("bad_encoding", 7)]


def test_wrong_size_is_rejected_and_names_the_frame() -> None:
    codec = StreamCodec()
    feed_message(codec, encode_series_start(1, (2, 2), "uint16"))
    parts = encode_image(1, 3, (2, 2), "uint16", b"\x00" * 8)
    parts[2] = b"\x00" * 6
    events = feed_message(codec, parts)
    assert events == [StreamError("bad_size", "data part holds 6 bytes, header said 8", 3, "image", 1)]
    assert codec.errors["bad_size"] == 1
    # the codec is back in step: the next image decodes
    (image,) = feed_message(codec, encode_image(1, 4, (2, 2), "uint16", b"\x00" * 8))
    assert image.frame == 4


def test_malformed_messages_are_counted_not_raised() -> None:
    codec = StreamCodec()
    cases = [
        [b"not json"],
        [b"[1,2]"],
        [b"[" * 30_000 + b"]" * 30_000],  # valid JSON nested past Python's recursion limit
        [json.dumps({"htype": "nope", "series": 1}).encode()],
        [json.dumps({"htype": "dimage-1.0", "series": 1, "frame": -1}).encode(), b"{}"],
        [json.dumps({"htype": "dimage-1.0", "series": 1, "frame": 0}).encode()],
        [json.dumps({"htype": "dseries_end-1.0", "series": 1}).encode(), b"extra"],
        [json.dumps({"htype": "dheader-1.0", "series": 1}).encode(), b'{"shape":[0,1],"type":"uint16"}'],
    ]
    for parts in cases:
        events = feed_message(codec, parts)
        assert len(events) == 1 and isinstance(events[0], StreamError), parts
    assert codec.counters["errors"] == len(cases)
    assert set(codec.errors) >= {
        "malformed_json",
        "unknown_htype",
        "bad_field",
        "truncated_message",
        "extra_parts",
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=64), st.booleans()), max_size=12))
def test_no_input_makes_the_codec_raise(parts: list[tuple[bytes, bool]]) -> None:
    codec = StreamCodec()
    for part, more in parts:
        codec.feed(part, more)
        size = codec.expecting_data()
        if size is not None:
            codec.feed_received(size, more)
    # and it still decodes a well-formed series afterwards, once the last message is closed
    codec.feed(b"{}", False)
    feed_message(codec, encode_series_end(0))
    events = feed_message(codec, encode_series_start(2, (1, 1), "uint16"))
    assert isinstance(events[-1], SeriesStart)


def _hand_image(series: int, frame: int, dtype: str, data: bytes) -> list[bytes]:
    """An image message written from docs/wire-formats.md by hand (not by our encoder)."""
    return [
        json.dumps({"htype": "dimage-1.0", "series": series, "frame": frame, "hash": ""}).encode(),
        json.dumps(
            {"htype": "dimage_d-1.0", "shape": [2, 2], "type": dtype, "encoding": "<", "size": len(data)}
        ).encode(),
        data,
        json.dumps({"htype": "dconfig-1.0", "start_time": 0, "stop_time": 0, "real_time": 0}).encode(),
    ]


def test_an_image_of_another_pixel_type_than_its_series_is_refused() -> None:
    """A uint32 image (its size right for uint32) in a uint16 series would be stored as wrong pixels."""
    codec = StreamCodec()
    header = [
        json.dumps({"htype": "dheader-1.0", "series": 4, "header_detail": "basic"}).encode(),
        json.dumps({"htype": "dconfig-edge-1.0", "shape": [2, 2], "type": "uint16"}).encode(),
    ]
    (start,) = feed_message(codec, header)
    assert start.dtype == "uint16"
    events = feed_message(codec, _hand_image(4, 0, "uint32", b"\x01\x00\x00\x00" * 4))
    assert events == [StreamError("bad_dtype", "type=uint32 in a series of uint16", 0, "image", 4)]
    (image,) = feed_message(codec, _hand_image(4, 1, "uint16", b"\x01\x00" * 4))
    assert image.frame == 1 and image.dtype == "uint16"


def test_the_end_of_another_series_does_not_end_the_open_one() -> None:
    codec = StreamCodec()
    feed_message(codec, encode_series_start(40, (2, 2), "uint16"))
    end = [json.dumps({"htype": "dseries_end-1.0", "series": 999}).encode()]
    assert feed_message(codec, end) == [
        StreamError("wrong_series", "end of series 999 during series 40", None, "end")
    ]
    assert codec.series == 40
    (image,) = feed_message(codec, _hand_image(40, 0, "uint16", b"\x00" * 8))
    assert image.series == 40
    assert feed_message(codec, [json.dumps({"htype": "dseries_end-1.0", "series": 40}).encode()]) == [
        SeriesEnd(40)
    ]


def test_a_bad_image_key_names_its_frame_so_it_becomes_a_loss_record() -> None:
    codec = StreamCodec()
    feed_message(codec, encode_series_start(2, (2, 2), "uint16"))
    parts = _hand_image(2, 5, "uint16", b"\x00" * 8)
    parts[0] = json.dumps({"htype": "dimage-1.0", "series": 2, "frame": 5, "image_key": 7}).encode()
    (error,) = feed_message(codec, parts)
    assert isinstance(error, StreamError) and error.reason == "bad_field" and error.frame == 5
    (image,) = feed_message(codec, _hand_image(2, 6, "uint16", b"\x00" * 8))
    assert image.frame == 6


@pytest.mark.parametrize("time", [2**63, 2**70, -1, 1.5, "12", [1]])
def test_an_image_time_nobody_can_hold_costs_no_frame(time: object) -> None:
    """``start_time``/``stop_time`` beyond a signed 64-bit integer once killed the reader thread (the
    ring's header holds int64): now a bad time is counted and the image kept with the time 0."""
    codec = StreamCodec()
    feed_message(codec, encode_series_start(4, (2, 2), "uint16"))
    image = _hand_image(4, 0, "uint16", b"\x01\x00" * 4)
    image[3] = json.dumps({"htype": "dconfig-1.0", "start_time": time, "stop_time": 2**63 - 1}).encode()
    (event,) = feed_message(codec, image)
    assert isinstance(event, ImageMessage)
    assert (event.frame, event.start_time, event.stop_time) == (0, 0, 2**63 - 1)
    assert codec.counters["image_times_invalid"] == 1 and not codec.errors


def test_integer_fields_written_as_whole_floats_are_taken_and_fractions_refused() -> None:
    """Many JSON encoders write integers as ``256.0``: an outside sender's start with ``"shape":
    [4.0, 3.0]`` was refused (its run uid, frame count and metadata dropped) and ``frames_expected: 3.0``
    made the series' length unknown. Hand-written parts, not our encoder's."""
    codec = StreamCodec()
    start = [
        json.dumps({"htype": "dheader-1.0", "series": 7.0, "header_detail": "basic"}).encode(),
        json.dumps(
            {
                "htype": "dconfig-edge-1.0",
                "shape": [4.0, 3.0],
                "type": "uint16",
                "run_uid": "abc",
                "frames_expected": 2.0,
            }
        ).encode(),
    ]
    (event,) = feed_message(codec, start)
    assert isinstance(event, SeriesStart)
    assert (event.series, event.shape, event.run_uid, event.frames_expected) == (7, (3, 4), "abc", 2)
    pixels = np.arange(12, dtype=np.uint16)
    image = [
        json.dumps({"htype": "dimage-1.0", "series": 7, "frame": 1e0, "hash": ""}).encode(),
        json.dumps(
            {"htype": "dimage_d-1.0", "shape": [4, 3.0], "type": "uint16", "encoding": "<", "size": 24.0}
        ).encode(),
        pixels.tobytes(),
        json.dumps({"htype": "dconfig-1.0", "start_time": 0, "stop_time": 0, "real_time": 0}).encode(),
    ]
    (taken,) = feed_message(codec, image)
    assert isinstance(taken, ImageMessage) and (taken.frame, taken.shape, taken.size) == (1, (3, 4), 24)
    # (from 2^53 on a float is not exact: the text 9007199254740993.0 reads as 2^53, refused as well)
    for frame in (2.5, 2.0**60, True, "3", "9007199254740993.0", "9007199254740992.0"):
        number = frame if not isinstance(frame, str) or "." not in frame else None
        text = json.dumps({"htype": "dimage-1.0", "series": 7, "frame": number, "hash": ""})
        if number is None:  # the literal text, as a sender wrote it
            text = text.replace('"frame": null', f'"frame": {frame}')
        bad = [text.encode(), *image[1:]]
        (refused,) = feed_message(codec, bad)
        assert isinstance(refused, StreamError) and refused.reason == "bad_field", frame
