"""Talking to the detector: wire-format codecs (pure state machines), socket readers, detector control."""

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

__all__ = [
    "ImageMessage",
    "SeriesEnd",
    "SeriesStart",
    "StreamCodec",
    "StreamError",
    "encode_image",
    "encode_series_end",
    "encode_series_start",
]
