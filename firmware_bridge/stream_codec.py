"""The ZeroMQ frame stream (DECTRIS stream v1 message sequence) as a sans-I/O codec.

Bytes in, events out; no sockets. A reader hands the codec one message part at a time with the
ZeroMQ "more" flag. When the next part is an image's pixel data, :meth:`StreamCodec.expecting_data`
returns its size so the reader can ``recv_into`` a ring slot and report only the byte count with
:meth:`StreamCodec.feed_received`. Malformed input becomes a :class:`StreamError` event and a counter;
nothing raises out of ``feed``. See docs/wire-formats.md for the byte layout.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENCODINGS = {"<": "raw", "bs16-lz4<": "bitshuffle-lz4", "bs32-lz4<": "bitshuffle-lz4"}
DTYPES = {"uint8", "uint16", "uint32", "int32", "float32"}
MAX_PIXELS = 16384 * 16384
#: the largest series number or announced frame count accepted (SQLite's INTEGER is a signed 64-bit int)
MAX_COUNT = (1 << 63) - 1
# the longest series a header may announce: 2^32 frames is five days at 10 kHz. A longer announcement is
# taken as unknown length (and counted by the reader): one damaged header must not make a series that
# ends early declare 10^12 frames lost
MAX_FRAMES_EXPECTED = 1 << 32


IMAGE_KEY_PROJECTION, IMAGE_KEY_FLAT, IMAGE_KEY_DARK = 0, 1, 2  # NXtomo image_key values


@dataclass(frozen=True)
class SeriesStart:
    """A new acquisition series; ``config`` carries the detector's JSON (shape, run uid, expected frames)."""

    series: int
    shape: tuple[int, int]
    dtype: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def run_uid(self) -> str | None:
        value = self.config.get("run_uid")
        return str(value) if value is not None else None

    @property
    def frames_expected(self) -> int | None:
        value = whole(self.config.get("frames_expected"))
        if value is None or not 0 <= value <= MAX_FRAMES_EXPECTED:
            return None  # absent or nonsense: the length of the series is unknown
        return value


@dataclass(frozen=True)
class ImageMessage:
    """One image. ``data`` is None when the reader received the pixel part into its own buffer."""

    series: int
    frame: int
    shape: tuple[int, int]
    dtype: str
    encoding: str
    size: int
    start_time: int = 0
    stop_time: int = 0
    data: bytes | memoryview | None = None
    image_key: int = IMAGE_KEY_PROJECTION  # NXtomo: 0 projection (any diffraction frame), 1 flat, 2 dark
    rotation_angle: float = math.nan  # degrees; NaN when the detector did not say


@dataclass(frozen=True)
class SeriesEnd:
    series: int


@dataclass(frozen=True)
class StreamError:
    """A message the codec could not accept, and why. ``frame`` is set when an image was lost."""

    reason: str
    detail: str = ""
    frame: int | None = None
    #: what the rejected message was, as far as it could be read: "start", "image" or "end" (None: not
    #: even that). A rejected start makes the images that follow a run of their own, not a resumed one.
    kind: str | None = None
    #: the series a rejected image or start named, when it was read before the rejection
    series: int | None = None


_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")

#: the message kind each v1 ``htype`` names (``StreamError.kind``)
_KINDS = {"dheader-1.0": "start", "dimage-1.0": "image", "dseries_end-1.0": "end"}

Event = SeriesStart | ImageMessage | SeriesEnd | StreamError

_IDLE, _HEADER_CONFIG, _IMAGE_D, _IMAGE_DATA, _IMAGE_CONFIG, _DISCARD = range(6)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _json(part: bytes | memoryview) -> dict[str, Any]:
    try:
        value = json.loads(bytes(part))
    except (ValueError, UnicodeDecodeError) as error:
        raise _Reject("malformed_json", str(error)[:120]) from None
    except RecursionError:  # arrays or objects nested thousands deep: no part of the stream's is
        raise _Reject("malformed_json", "nested too deep") from None
    if not isinstance(value, dict):
        raise _Reject("malformed_json", "part is not a JSON object")
    return value


#: whole floats below this (2^53) are taken as integers: from 2^53 on a float is no longer exact (the
#: text 9007199254740993.0 parses to 2^53 itself), so ``256.0`` style numbers that large are refused
MAX_WHOLE_FLOAT = 1 << 53


def whole(value: Any) -> int | None:
    """``value`` as an integer field takes it: a JSON integer, or a number with no fraction part as many
    encoders write them (``256.0``, below 2^53, where floats stop being exact); None for anything else
    (a bool, a fraction, NaN, a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < MAX_WHOLE_FLOAT:
        return int(value)
    return None


def _int(message: dict[str, Any], key: str) -> int:
    value = whole(message.get(key))
    if value is None or value < 0:
        raise _Reject("bad_field", f"{key}={message.get(key)!r}")
    return value


MAX_ANGLE_DEG = 1e6  # a rotation angle beyond this many degrees is not a real one


def _image_key(message: dict[str, Any]) -> int:
    """The optional ``image_key`` (NXtomo: 0 projection, 1 flat, 2 dark); 0 when absent."""
    value = message.get("image_key", IMAGE_KEY_PROJECTION)
    if value not in (IMAGE_KEY_PROJECTION, IMAGE_KEY_FLAT, IMAGE_KEY_DARK) or isinstance(value, bool):
        raise _Reject("bad_field", f"image_key={value!r} (0 projection, 1 flat, 2 dark)")
    return int(value)


def _angle(message: dict[str, Any]) -> float:
    """The optional ``rotation_angle`` in degrees; NaN when absent."""
    value = message.get("rotation_angle")
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Reject("bad_field", f"rotation_angle={value!r}")
    if abs(value) > MAX_ANGLE_DEG:
        raise _Reject("bad_field", f"rotation_angle={value!r} is beyond {MAX_ANGLE_DEG:g} degrees")
    return float(value)


def _time_ns(message: dict[str, Any], key: str) -> int | None:
    """An image's optional exposure time (``start_time``/``stop_time``, ns): 0 when absent, None when
    it is not an integer the store can hold (0 .. 2^63 - 1). A bad time costs no frame: the image is
    kept with the time 0 and the codec counts ``image_times_invalid``."""
    value = message.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def _shape(message: dict[str, Any]) -> tuple[int, int]:
    given = message.get("shape")
    sides = [whole(v) for v in given] if isinstance(given, list) else []
    shape = [v for v in sides if v is not None and v > 0]
    if len(sides) != 2 or len(shape) != 2 or shape[0] * shape[1] > MAX_PIXELS:
        raise _Reject("bad_field", f"shape={given!r}")
    width, height = shape  # DECTRIS order: [x, y]
    return (height, width)


def _dtype(message: dict[str, Any]) -> str:
    dtype = message.get("type")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _Reject("bad_field", f"type={dtype!r}")
    return str(dtype)


class StreamCodec:
    """State machine over message parts; see the module docstring."""

    def __init__(self) -> None:
        self._state = _IDLE
        self._image: dict[str, Any] = {}
        self._kind: str | None = None  # the kind of message being read ("start", "image", "end")
        self.series: int | None = None
        self._series_dtype: str | None = None  # the pixel type the open series' start announced
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    # -- what the reader needs to know --------------------------------------------------------------
    def expecting_data(self) -> int | None:
        """Byte size of the next part if it is an image's pixel data, else None."""
        return int(self._image["size"]) if self._state == _IMAGE_DATA else None

    @property
    def pending_frame(self) -> int | None:
        """Frame number of the image message being assembled, if any."""
        return self._image.get("frame") if self._state in (_IMAGE_D, _IMAGE_DATA, _IMAGE_CONFIG) else None

    @property
    def pending_image(self) -> tuple[int, int, tuple[int, int], str] | None:
        """(series, frame, shape, dtype) of the image whose data part comes next, if any."""
        if self._state != _IMAGE_DATA:
            return None
        image = self._image
        return int(image["series"]), int(image["frame"]), image["shape"], str(image["dtype"])

    @property
    def pending_encoding(self) -> str | None:
        """Encoding of the image whose data part comes next, if any."""
        return self._image.get("encoding") if self._state == _IMAGE_DATA else None

    # -- input --------------------------------------------------------------------------------------
    def feed(self, part: bytes | memoryview, more: bool) -> list[Event]:
        """Take one message part; return the events it completes."""
        self.counters["parts"] += 1
        self.counters["bytes"] += len(part)
        try:
            return self._feed(part, len(part), more)
        except _Reject as reject:
            return self._reject(reject, more)

    def feed_received(self, nbytes: int, more: bool, data: memoryview | None = None) -> list[Event]:
        """The data part was received into the reader's buffer; ``nbytes`` is its true size and ``data``
        its bytes (needed only to check an image's ``hash``; without them the hash is not checked)."""
        self.counters["parts"] += 1
        self.counters["bytes"] += nbytes
        try:
            return self._feed(data, nbytes, more, received=True)
        except _Reject as reject:
            return self._reject(reject, more)

    def _reject(self, reject: _Reject, more: bool) -> list[Event]:
        frame = self.pending_frame
        # the series a rejected image, or a rejected start, named (read before the rejection)
        series = self._image.get("series") if frame is not None or self._kind == "start" else None
        self.errors[reject.reason] += 1
        self.counters["errors"] += 1
        self._image = {}
        self._state = _DISCARD if more else _IDLE
        kind, self._kind = self._kind, None
        if kind in ("start", None):
            # the detector started another series, even if this start cannot be taken (or a message too
            # damaged to say what it was may have been that start): the open series is no longer the only
            # one whose images and end may come (the reader decides, as they come)
            self.series = None
            self._series_dtype = None
        return [StreamError(reject.reason, reject.detail, frame, kind, series)]

    def _feed(
        self, part: bytes | memoryview | None, nbytes: int, more: bool, received: bool = False
    ) -> list[Event]:
        state = self._state
        if state == _DISCARD:
            if not more:
                self._state = _IDLE
            return []
        if state == _IDLE:
            self._kind = None  # until the message's htype is read
        if state != _IMAGE_DATA and received:
            raise _Reject("unexpected_data", "a data part arrived where a JSON part belongs")
        if state == _IDLE:
            return self._first(part, more)  # type: ignore[arg-type]
        if state == _HEADER_CONFIG:
            return self._header_config(part, more)  # type: ignore[arg-type]
        if not more and state != _IMAGE_CONFIG:
            raise _Reject("truncated_message", f"image message ended after part {state}")
        if state == _IMAGE_D:
            message = _json(part)  # type: ignore[arg-type]
            if message.get("htype") != "dimage_d-1.0":
                raise _Reject("unexpected_htype", f"{message.get('htype')!r} where dimage_d-1.0 belongs")
            encoding = message.get("encoding")
            if not isinstance(encoding, str) or encoding not in ENCODINGS:
                raise _Reject("bad_encoding", f"encoding={encoding!r}")
            shape, dtype, size = _shape(message), _dtype(message), _int(message, "size")
            bits = 8 * np.dtype(dtype).itemsize
            if encoding != "<" and encoding != f"bs{bits}-lz4<":  # bitshuffle of another element size
                raise _Reject("bad_encoding", f"encoding={encoding} for {dtype} pixels: bs{bits}-lz4< or <")
            if self._series_dtype is not None and dtype != self._series_dtype:
                raise _Reject("bad_dtype", f"type={dtype} in a series of {self._series_dtype}")
            if encoding == "<" and size != shape[0] * shape[1] * np.dtype(dtype).itemsize:
                raise _Reject("bad_size", f"size={size} for {shape} {dtype}")
            self._image.update(shape=shape, dtype=dtype, encoding=encoding, size=size)
            self._state = _IMAGE_DATA
            return []
        if state == _IMAGE_DATA:
            if nbytes != self._image["size"]:
                raise _Reject(
                    "bad_size", f"data part holds {nbytes} bytes, header said {self._image['size']}"
                )
            expected = self._image.get("hash")
            if expected and part is not None:  # the sender's MD5 of the data part: damage is a loss
                got = hashlib.md5(part, usedforsecurity=False).hexdigest()
                self.counters["image_hashes_checked"] += 1
                if got != expected:
                    raise _Reject("bad_hash", f"MD5 of the data part is {got}, the image says {expected}")
            self._image["data"] = None if received else part
            self._state = _IMAGE_CONFIG
            return []
        # _IMAGE_CONFIG
        if more:
            raise _Reject("extra_parts", "image message has more than 4 parts")
        message = _json(part)  # type: ignore[arg-type]
        if message.get("htype") != "dconfig-1.0":
            raise _Reject("unexpected_htype", f"{message.get('htype')!r} where dconfig-1.0 belongs")
        image = self._image
        self._image = {}
        self._state = _IDLE
        self.counters["images"] += 1
        start_time, stop_time = _time_ns(message, "start_time"), _time_ns(message, "stop_time")
        if start_time is None or stop_time is None:
            self.counters["image_times_invalid"] += 1
        return [
            ImageMessage(
                series=image["series"],
                frame=image["frame"],
                shape=image["shape"],
                dtype=image["dtype"],
                encoding=image["encoding"],
                size=image["size"],
                start_time=start_time or 0,
                stop_time=stop_time or 0,
                data=image.get("data"),
                image_key=image["image_key"],
                rotation_angle=image["rotation_angle"],
            )
        ]

    def _first(self, part: bytes | memoryview, more: bool) -> list[Event]:
        message = _json(part)
        htype = message.get("htype")
        self._kind = _KINDS.get(htype) if isinstance(htype, str) else None
        if htype == "dimage-1.0":
            # the frame first, so that an image whose series is out of range still names the frame it
            # loses (`_reject` records it: a lost frame, never only a counter)
            self._image = {"frame": _int(message, "frame")}
            self._state = _IMAGE_D  # (so that a bad series, key or angle below names the frame, as lost)
        series = _int(message, "series")
        if series > MAX_COUNT:
            raise _Reject("bad_field", f"series={series} is beyond {MAX_COUNT}")
        if htype == "dimage-1.0":
            self._image["series"] = series
            if self.series is not None and series != self.series:
                raise _Reject("wrong_series", f"image of series {series} during series {self.series}")
            self._image.update(image_key=_image_key(message), rotation_angle=_angle(message))
            self._image["hash"] = self._hash(message.get("hash"))
            if not more:
                raise _Reject("truncated_message", "image message has only its first part")
            self._state = _IMAGE_D
            return []
        if htype == "dheader-1.0":
            self._image = {"series": series}  # (named by a rejection too)
            if not more:
                raise _Reject("truncated_message", "series header without its config part")
            self._state = _HEADER_CONFIG
            return []
        if htype == "dseries_end-1.0":
            if more:
                raise _Reject("extra_parts", "series end has more than one part")
            if self.series is not None and series != self.series:
                raise _Reject("wrong_series", f"end of series {series} during series {self.series}")
            self.series = None
            self._series_dtype = None
            self.counters["series_ends"] += 1
            return [SeriesEnd(series)]
        raise _Reject("unknown_htype", f"htype={htype!r}")

    def _hash(self, value: Any) -> str | None:
        """The image's ``hash`` as 32 lower-case hex digits (an MD5 to check), or None: absent or empty
        (not checked), or not an MD5 in hex (counted, ``image_hash_unreadable``, and not checked: the
        image itself may be good)."""
        if value is None or value == "":
            return None
        if isinstance(value, str) and _MD5_HEX.fullmatch(value):
            return value.lower()
        self.counters["image_hash_unreadable"] += 1
        return None

    def _header_config(self, part: bytes | memoryview, more: bool) -> list[Event]:
        if more:
            raise _Reject("extra_parts", "series header has more than 2 parts")
        config = _json(part)
        series = self._image["series"]
        self._image = {}
        self._state = _IDLE
        start = SeriesStart(series, _shape(config), _dtype(config), config)
        self.series = series
        self._series_dtype = start.dtype
        self.counters["series_starts"] += 1
        return [start]


# -- encoder (used by the simulator and by tests) ------------------------------------------------------
def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def encode_series_start(series: int, shape: tuple[int, int], dtype: str, **config: Any) -> list[bytes]:
    """Parts of a series header; ``shape`` is (height, width)."""
    head = {"htype": "dheader-1.0", "series": series, "header_detail": "basic"}
    body = {"htype": "dconfig-edge-1.0", "shape": [shape[1], shape[0]], "type": dtype, **config}
    return [_dump(head), _dump(body)]


def encode_image(
    series: int,
    frame: int,
    shape: tuple[int, int],
    dtype: str,
    data: bytes | memoryview,
    encoding: str = "<",
    start_time: int = 0,
    stop_time: int = 0,
    image_key: int | None = None,
    rotation_angle: float | None = None,
) -> list[bytes | memoryview]:
    """Parts of one image message; ``data`` is already encoded as ``encoding`` says. ``image_key`` and
    ``rotation_angle`` (tomography) go into the first part when given."""
    first: dict[str, Any] = {"htype": "dimage-1.0", "series": series, "frame": frame, "hash": ""}
    if image_key is not None:
        first["image_key"] = image_key
    if rotation_angle is not None:
        first["rotation_angle"] = rotation_angle
    return [
        _dump(first),
        _dump(
            {
                "htype": "dimage_d-1.0",
                "shape": [shape[1], shape[0]],
                "type": dtype,
                "encoding": encoding,
                "size": len(data) if not isinstance(data, memoryview) else data.nbytes,
            }
        ),
        data,
        _dump(
            {
                "htype": "dconfig-1.0",
                "start_time": start_time,
                "stop_time": stop_time,
                "real_time": stop_time - start_time,
            }
        ),
    ]


def encode_series_end(series: int) -> list[bytes]:
    return [_dump({"htype": "dseries_end-1.0", "series": series})]
