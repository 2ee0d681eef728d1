"""DECTRIS Stream V2 (one CBOR message per ZeroMQ message) as a sans-I/O codec.

Bytes in, events out; no sockets. :meth:`Stream2Codec.feed` takes one whole ZeroMQ message and returns
the events it completes: :class:`Stream2Start`, :class:`Stream2Image`, :class:`Stream2End` or
:class:`Stream2Error`. The wire format is DECTRIS's public specification (github.com/dectris/documentation,
``stream_v2/README.md`` and ``cbor/dectris-compression-tag.md``): a top-level CBOR map whose ``type`` is
``start``, ``image`` or ``end``, optionally behind the self-described-CBOR tag 55799; images and masks
as RFC 8746 multi-dimensional arrays (tag 40: ``[[height, width], typed array]``) over little-endian
typed arrays (tags 64/68 uint8, 69 uint16, 70 uint32, 85 float32); a typed array's byte string may be a
DECTRIS compressed byte string (tag 56500: ``[algorithm, elem_size, bytes]``, ``bslz4`` or ``lz4`` with
HDF5 framing). Compressed image data is kept exactly as received (a ``bslz4`` payload is an HDF5 filter
32008 chunk as it stands); only its 12-byte header is checked here, the blocks by
:mod:`firmware_bridge.hdf5_chunks` when the pixels are asked for. Fields the codec does not know are kept,
made JSON-able, in the event's ``metadata``. Malformed input becomes a :class:`Stream2Error` event with a
reason and a counter; nothing raises out of ``feed``. See docs/wire-formats.md.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
import numpy as np

from firmware_bridge.hdf5_chunks import ChunkError, check_bslz4, decode_bslz4, decode_lz4, read_header
from firmware_bridge.stream_codec import MAX_COUNT, whole  # (MAX_COUNT: what the ledger, store, ring hold)

TAG_SELF_DESCRIBED = 55799
TAG_MULTI_DIM = 40
TAG_COMPRESSED = 56500
TYPED_ARRAY_TAGS: dict[int, str] = {64: "uint8", 68: "uint8", 69: "uint16", 70: "uint32", 85: "float32"}
TAG_OF_DTYPE: dict[str, int] = {"uint8": 64, "uint16": 69, "uint32": 70, "float32": 85}
COMPRESSIONS = ("none", "bslz4", "lz4")
MAX_PIXELS = 16384 * 16384
MAX_CHANNELS = 16
MESSAGE_TYPES = ("start", "image", "end")
IMAGE_DTYPES = {"uint8", "uint16", "uint32", "float32"}
LARGE_BYTES = 64 << 10  # byte strings from this size on are referenced in the message, not copied out
MAX_DEPTH = 64

# start-message fields the codec reads into typed attributes; everything else goes to ``metadata``
_START_FIELDS = {
    "type",
    "series_id",
    "series_unique_id",
    "image_size_x",
    "image_size_y",
    "image_dtype",
    "bit_depth_image",
    "channels",
    "number_of_images",
    "pixel_mask",
    "flatfield",
    "countrate_correction_lookup_table",
    "user_data",
}
GEOMETRY_FIELDS = (
    "beam_center_x",
    "beam_center_y",
    "detector_distance",
    "detector_translation",
    "pixel_size_x",
    "pixel_size_y",
    "incident_energy",
    "incident_wavelength",
    "goniometer",
    "sensor_material",
    "sensor_thickness",
)
_IMAGE_FIELDS = {"type", "series_id", "series_unique_id", "image_id", "data", "start_time", "stop_time"}


class Stream2ProtocolError(ValueError):
    """The peer sent something the specification does not allow (raised inside, returned as an event)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Stream2Array:
    """One 2-D typed array from the wire: an image channel, a pixel mask or a flatfield.

    ``data`` is the byte string as received: plain little-endian pixels for ``compression`` ``none``,
    otherwise the HDF5-framed compressed chunk (12-byte header included). A large one is a read-only
    view of the message it arrived in (not a copy), valid as long as the array is kept.
    """

    shape: tuple[int, int]
    dtype: str
    compression: str
    elem_size: int
    data: bytes | memoryview

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize

    def pixels(self) -> np.ndarray[Any, np.dtype[Any]]:
        """The decoded array (little-endian, native order); raises ChunkError if it does not decode."""
        dtype = np.dtype(self.dtype).newbyteorder("<")
        if self.compression == "bslz4":
            return decode_bslz4(self.data, self.shape, dtype).astype(self.dtype, copy=False)
        raw = self.data if self.compression == "none" else decode_lz4(self.data, self.nbytes)
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape).astype(self.dtype, copy=False)

    def check(self, sample: int | None = None) -> None:
        """Bounded-cost check that the data decodes (see :func:`check_bslz4`); raises ChunkError."""
        if self.compression == "bslz4":
            check_bslz4(self.data, self.elem_size, sample)
        elif self.compression == "lz4":
            decode_lz4(self.data, self.nbytes)

    def summary(self) -> dict[str, Any]:
        """JSON-able description for run metadata (shape, dtype, checksum; not the pixels)."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "compression": self.compression,
            "sha256": hashlib.sha256(self.data).hexdigest(),
        }


@dataclass(frozen=True)
class Stream2Start:
    """A series begins. ``dtype`` is None when the start message does not say (the images will)."""

    series: int
    series_unique_id: str
    shape: tuple[int, int]
    dtype: str | None
    channels: tuple[str, ...]
    number_of_images: int | None
    pixel_mask: dict[str, Stream2Array] = field(default_factory=dict)
    flatfield: dict[str, Stream2Array] = field(default_factory=dict)
    countrate_correction: np.ndarray[Any, np.dtype[Any]] | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    user_data: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream2Image:
    """One exposure: one array per channel, in the start message's channel order."""

    series: int
    series_unique_id: str
    frame: int
    channels: dict[str, Stream2Array]
    start_time_ns: int = 0
    stop_time_ns: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream2End:
    series: int
    series_unique_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream2Error:
    """A message the codec could not accept, and why. ``frame`` is set when an image was lost."""

    reason: str
    detail: str = ""
    frame: int | None = None
    #: the rejected message's ``type`` when it decoded to a map naming one ("start", "image", "end")
    kind: str | None = None
    #: False when the message did not decode at all (truncated or damaged CBOR): it may have been an image
    readable: bool = True
    #: the ``series_id`` a rejected image or start named, when it is an integer
    series: int | None = None


Stream2Event = Stream2Start | Stream2Image | Stream2End | Stream2Error


# -- CBOR value helpers ----------------------------------------------------------------------------------
def _untag_self_described(value: Any) -> Any:
    while isinstance(value, cbor2.CBORTag) and value.tag == TAG_SELF_DESCRIBED:
        value = value.value
    return value


def _uint(message: Mapping[str, Any], key: str, required: bool = True) -> int | None:
    value = message.get(key)
    if value is None and not required:
        return None
    number = whole(value)  # an integer, or a whole float below 2^53 (as the JSON stream takes them)
    if number is None or number < 0 or number >= 1 << 64:
        raise Stream2ProtocolError("bad_field", f"{key}={_short(value)}")
    return number


def _series_id(message: Mapping[str, Any]) -> int:
    """``series_id``: an unsigned integer the ledger can hold (at most 2^63 - 1)."""
    series = _uint(message, "series_id")
    assert series is not None
    if series > MAX_COUNT:
        raise Stream2ProtocolError("bad_field", f"series_id={series} is beyond 2^63 - 1")
    return series


def _text(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key, "")
    if not isinstance(value, str):
        raise Stream2ProtocolError("bad_field", f"{key}={_short(value)}")
    return value


def _unique_id(message: Mapping[str, Any]) -> str:
    """``series_unique_id``: a string, or a number kept as its text (``12345`` -> ``"12345"``, as the
    stream v1 ``run_uid``); anything else is a bad field."""
    value = message.get("series_unique_id", "")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**128:
        return str(value)  # (a CBOR bignum beyond that would have no text: Python caps int-to-str)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if not isinstance(value, str):
        raise Stream2ProtocolError("bad_field", f"series_unique_id={_short(value)}")
    return value


def _short(value: Any) -> str:
    return repr(value)[:60]


def _rational_ns(message: Mapping[str, Any], key: str) -> int | None:
    """An image's optional ``start_time``/``stop_time`` (a rational in seconds) in ns: 0 when absent,
    None when it is not a non-negative rational whose ns fit in a signed 64-bit integer. A bad time
    costs no frame: the image is kept with the time 0 and the codec counts ``image_times_invalid``."""
    value = message.get(key)
    if value is None:
        return 0
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        or value[1] == 0
    ):
        return None
    ns = int(value[0]) * 1_000_000_000 // int(value[1])
    return ns if ns <= MAX_COUNT else None


def _compressed(value: cbor2.CBORTag) -> tuple[str, int, bytes | memoryview]:
    content = value.value
    if not isinstance(content, (list, tuple)) or len(content) != 3:
        raise Stream2ProtocolError(
            "bad_compression", "tag 56500 content is not [algorithm, elem_size, bytes]"
        )
    algorithm, elem_size, data = content
    if not isinstance(algorithm, str) or algorithm not in ("bslz4", "lz4"):
        raise Stream2ProtocolError("bad_compression", f"algorithm {_short(algorithm)}")
    if not isinstance(elem_size, int) or isinstance(elem_size, bool) or elem_size < 0:
        raise Stream2ProtocolError("bad_compression", f"elem_size {_short(elem_size)}")
    if not isinstance(data, (bytes, memoryview)):
        raise Stream2ProtocolError("bad_compression", "compressed data is not a byte string")
    return algorithm, elem_size, data


def _typed_array(value: Any, what: str) -> tuple[str, str, int, bytes | memoryview]:
    """(dtype, compression, elem_size, data) of an RFC 8746 typed array, maybe DECTRIS-compressed."""
    if not isinstance(value, cbor2.CBORTag):
        raise Stream2ProtocolError("bad_tag", f"{what}: not a typed array ({type(value).__name__})")
    dtype = TYPED_ARRAY_TAGS.get(value.tag)
    if dtype is None:
        raise Stream2ProtocolError("unsupported_tag", f"{what}: typed-array tag {value.tag}")
    content = value.value
    if isinstance(content, (bytes, memoryview)):
        return dtype, "none", np.dtype(dtype).itemsize, content
    if isinstance(content, cbor2.CBORTag) and content.tag == TAG_COMPRESSED:
        algorithm, elem_size, data = _compressed(content)
        return dtype, algorithm, elem_size, data
    if isinstance(content, cbor2.CBORTag):
        raise Stream2ProtocolError("unsupported_tag", f"{what}: tag {content.tag} inside a typed array")
    raise Stream2ProtocolError("bad_tag", f"{what}: typed array of {type(content).__name__}")


def _multi_dim(value: Any, what: str) -> Stream2Array:
    """An RFC 8746 row-major multi-dimensional array (tag 40) of two dimensions."""
    if not isinstance(value, cbor2.CBORTag) or value.tag != TAG_MULTI_DIM:
        tag = value.tag if isinstance(value, cbor2.CBORTag) else type(value).__name__
        raise Stream2ProtocolError("unsupported_tag", f"{what}: {tag} where tag 40 belongs")
    content = value.value
    if not isinstance(content, (list, tuple)) or len(content) != 2:
        raise Stream2ProtocolError("bad_field", f"{what}: tag 40 content is not [dimensions, array]")
    dims, array = content
    if (
        not isinstance(dims, (list, tuple))
        or len(dims) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims)
        or dims[0] * dims[1] > MAX_PIXELS
    ):
        raise Stream2ProtocolError("bad_field", f"{what}: dimensions {_short(dims)}")
    shape = (int(dims[0]), int(dims[1]))
    dtype, compression, elem_size, data = _typed_array(array, what)
    result = Stream2Array(shape, dtype, compression, elem_size, data)
    if compression == "none":
        if len(data) != result.nbytes:
            raise Stream2ProtocolError("bad_size", f"{what}: {len(data)} bytes for {shape} {dtype}")
        return result
    try:
        nbytes, _ = read_header(data)
    except ChunkError as error:
        raise Stream2ProtocolError("bad_compression", f"{what}: {error}") from None
    if nbytes != result.nbytes:
        raise Stream2ProtocolError("bad_size", f"{what}: chunk holds {nbytes} bytes, {shape} {dtype}")
    if compression == "bslz4" and elem_size != np.dtype(dtype).itemsize:
        raise Stream2ProtocolError("bad_compression", f"{what}: bslz4 elem_size {elem_size} for {dtype}")
    return result


def _channel_map(value: Any, what: str, left_out: list[str] | None = None) -> dict[str, Stream2Array]:
    """Channel name -> array; with ``left_out``, an array that cannot be read is left out, and why is
    appended there, instead of rejecting the whole message (a start's pixel mask or flatfield)."""
    if not isinstance(value, Mapping):
        raise Stream2ProtocolError("bad_field", f"{what} is not a map of channel name to array")
    if len(value) > MAX_CHANNELS:
        raise Stream2ProtocolError("bad_field", f"{what}: {len(value)} channels")
    out = {}
    for name, array in value.items():
        if not isinstance(name, str):
            raise Stream2ProtocolError("bad_field", f"{what}: channel name {_short(name)}")
        try:
            out[name] = _multi_dim(array, f"{what}[{name}]")
        except Stream2ProtocolError as error:
            if left_out is None:
                raise
            left_out.append(f"{what}[{name}] is not readable: {error.reason}: {error.detail}"[:200])
    return out


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-able rendering of a decoded CBOR value (for metadata kept from unknown fields).

    Byte strings become ``{"bytes": n, "base64": ...}`` (base64 only up to 1 KiB), tags
    ``{"tag": n, "value": ...}``, date/times ISO 8601 strings, non-finite floats strings.
    """
    if depth > 32:
        return "<nested too deep>"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        blob = bytes(value)
        out: dict[str, Any] = {"bytes": len(blob)}
        if len(blob) <= 1024:
            out["base64"] = base64.b64encode(blob).decode()
        return out
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": jsonable(value.value, depth + 1)}
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else repr(k)[:60]): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    return repr(value)[:200]


def _rest(message: Mapping[str, Any], known: set[str] | tuple[str, ...]) -> dict[str, Any]:
    return {str(k): jsonable(v) for k, v in message.items() if k not in known}


class Stream2Codec:
    """Decodes Stream V2 messages; see the module docstring. Counters in ``counters`` and ``errors``."""

    def __init__(self) -> None:
        self._token = os.urandom(16)  # stands in for a large byte string while cbor2 decodes the rest
        self.series: int | None = None
        self.start: Stream2Start | None = None
        # a start that names no dtype: the dtype its series' first image taken had (the start it is of)
        self._decided: tuple[Stream2Start, str] | None = None
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def feed(self, message: bytes | memoryview) -> list[Stream2Event]:
        """Take one whole message; return the events it completes (one, or none)."""
        self.counters["messages"] += 1
        self.counters["bytes"] += len(message)
        frame: int | None = None
        series: int | None = None
        kind: str | None = None
        readable = False
        try:
            decoded = self._load(message)
            readable = True
            if isinstance(decoded, Mapping) and decoded.get("type") in ("start", "image", "end"):
                kind = str(decoded["type"])
            if kind == "image":
                raw_frame = whole(decoded.get("image_id"))
                if raw_frame is not None and raw_frame >= 0:
                    frame = raw_frame
            if kind in ("image", "start"):
                raw_series = whole(decoded.get("series_id"))
                # (one out of range names no series: the frame is then a loss of the open one)
                if raw_series is not None and 0 <= raw_series < 2**63:
                    series = raw_series
            return [self._message(decoded)]
        except Stream2ProtocolError as error:
            self.errors[error.reason] += 1
            self.counters["errors"] += 1
            if kind in ("start", None):
                # the detector started another series, even if this start cannot be taken (or a message
                # too damaged to say what it was, unreadable, not a map or of no known type, may have
                # been that start): the open series is no longer the only one whose images and end may
                # come (the reader decides)
                self.series = None
                self.start = None
            return [Stream2Error(error.reason, error.detail[:200], frame, kind, readable, series)]

    def _load(self, message: bytes | memoryview) -> Any:
        view = memoryview(message).cast("B")
        walked = _structure(view)
        value = self._decoded(view, None if walked is None else walked[0])
        # a key given twice, in any map (RFC 8949 5.6: not valid CBOR): cbor2 keeps the last, which
        # could make an image another frame's, put one channel's pixels under another or end a series:
        # the message is not taken at all. The walk counts the pairs every map declares, the decoded
        # maps hold one entry per distinct key (a shared reference, tag 29, only adds entries).
        declared: int | None
        held: int | None
        if walked is not None:
            declared, held = walked[1], _map_entries(value)
        else:  # a walk that stopped (an indefinite length): the top-level map alone
            declared = _top_map_pairs(view)
            held = len(value) if isinstance(value, Mapping) else None
        if declared is not None and held is not None and held < declared:
            raise Stream2ProtocolError("malformed_cbor", f"a key given twice: {declared} pairs, {held} keys")
        return value

    def _decoded(self, view: memoryview, spans: list[tuple[int, int, int]] | None) -> Any:
        spans = spans if len(view) >= 2 * LARGE_BYTES else None
        if spans:  # decoded without copying the images out: see _structure
            value = _loads(b"".join(_with_tokens(view, spans, self._token)))
            found: list[int] = []
            value = _restore(value, self._token, view, spans, found)
            if sorted(found) == list(range(len(spans))):
                return _untag_self_described(value)
            self.counters["zero_copy_fallbacks"] += 1  # a token where no byte string was: decode as is
        return _untag_self_described(_loads(view))

    def _message(self, message: Any) -> Stream2Event:
        if not isinstance(message, Mapping):
            raise Stream2ProtocolError("not_a_map", f"top-level item is {type(message).__name__}")
        kind = message.get("type")
        if kind == "image":
            return self._image(message)
        if kind == "start":
            return self._start(message)
        if kind == "end":
            series = _series_id(message)
            if self.series is not None and series != self.series:
                raise Stream2ProtocolError("wrong_series", f"end of series {series} during {self.series}")
            self.series = None
            self.start = None
            self.counters["series_ends"] += 1
            rest = _rest(message, {"type", "series_id", "series_unique_id"})
            return Stream2End(series, _unique_id(message), rest)
        raise Stream2ProtocolError("unknown_type", f"type={_short(kind)}")

    def _start(self, message: Mapping[str, Any]) -> Stream2Start:
        series = _series_id(message)
        width = _uint(message, "image_size_x")
        height = _uint(message, "image_size_y")
        assert width is not None and height is not None
        if not width or not height or width * height > MAX_PIXELS:
            raise Stream2ProtocolError("bad_field", f"image size {width} x {height}")
        channels = message.get("channels", ())
        if (
            not isinstance(channels, (list, tuple))
            or not 0 < len(channels) <= MAX_CHANNELS
            or not all(isinstance(c, str) for c in channels)
            or len(set(channels)) != len(channels)
        ):
            raise Stream2ProtocolError("bad_field", f"channels={_short(channels)}")
        dtype = self._start_dtype(message)
        left_out: list[str] = []  # an unreadable array, or one of another shape than the images, costs
        # the start nothing else
        masks = _channel_map(message.get("pixel_mask", {}), "pixel_mask", left_out)
        flats = _channel_map(message.get("flatfield", {}), "flatfield", left_out)
        if left_out:
            self.counters["arrays_unreadable"] += len(left_out)
        for what, arrays in (("pixel_mask", masks), ("flatfield", flats)):
            for name in [n for n, array in arrays.items() if array.shape != (height, width)]:
                left_out.append(
                    f"{what}[{name}] is {arrays.pop(name).shape}, not the images' {(height, width)}"
                )
                self.counters["arrays_wrong_shape"] += 1
        number = whole(message.get("number_of_images"))
        if number is None or not 0 <= number < 1 << 64:
            number = None
        table = None
        if message.get("countrate_correction_lookup_table") is not None:
            t_dtype, compression, _, data = _typed_array(
                message["countrate_correction_lookup_table"], "countrate_correction_lookup_table"
            )
            try:
                raw = data if compression == "none" else _plain(compression, data, np.dtype(t_dtype))
            except ChunkError as error:
                raise Stream2ProtocolError("bad_compression", f"countrate table: {error}") from None
            if len(raw) % np.dtype(t_dtype).itemsize:
                raise Stream2ProtocolError("bad_size", "countrate table is not whole items")
            table = np.frombuffer(raw, dtype=np.dtype(t_dtype).newbyteorder("<")).astype(t_dtype)
        start = Stream2Start(
            series=series,
            series_unique_id=_unique_id(message),
            shape=(height, width),
            dtype=dtype,
            channels=tuple(channels),
            number_of_images=number,
            pixel_mask=masks,
            flatfield=flats,
            countrate_correction=table,
            geometry={k: jsonable(message[k]) for k in GEOMETRY_FIELDS if k in message},
            user_data=jsonable(message.get("user_data")),
            metadata=_rest(message, _START_FIELDS | set(GEOMETRY_FIELDS)),
        )
        if left_out:  # recorded with the run (its config's stream2.metadata), logged by the reader
            start.metadata["arrays_left_out"] = left_out
        if number is None and message.get("number_of_images") is not None:
            # a length nobody can use costs no series: it is unknown, and the value kept for the record
            self.counters["number_of_images_invalid"] += 1
            start.metadata["number_of_images"] = _short(message["number_of_images"])
        self.series = series
        self.start = start
        self.counters["series_starts"] += 1
        return start

    @staticmethod
    def _start_dtype(message: Mapping[str, Any]) -> str | None:
        dtype = message.get("image_dtype")
        if dtype is not None:
            if not isinstance(dtype, str) or dtype not in IMAGE_DTYPES:
                raise Stream2ProtocolError("bad_field", f"image_dtype={_short(dtype)}")
            return dtype
        depth = message.get("bit_depth_image")
        if depth is None:
            return None
        if depth not in (8, 16, 32) or isinstance(depth, bool):
            raise Stream2ProtocolError("bad_field", f"bit_depth_image={_short(depth)}")
        return f"uint{depth}"

    def _image(self, message: Mapping[str, Any]) -> Stream2Image:
        series = _series_id(message)
        frame = _uint(message, "image_id")
        assert frame is not None
        if self.series is not None and series != self.series:
            raise Stream2ProtocolError("wrong_series", f"image of series {series} during {self.series}")
        channels = _channel_map(message.get("data"), "data")
        if not channels:
            raise Stream2ProtocolError("bad_field", "image without channel data")
        start = self.start
        if start is not None:
            # the start's dtype, or else the one its series' first image taken had: a later image of
            # another is as much the wrong dtype (an outside sender's was recorded `wrong_dtype`, a reason
            # the doc gives only v1 senders, and the codec said nothing)
            expected, decided = start.dtype, ""
            if expected is None and self._decided is not None and self._decided[0] is start:
                expected, decided = self._decided[1], " (the series' first image's)"
            for name, array in channels.items():
                if name not in start.channels:
                    raise Stream2ProtocolError("unknown_channel", f"channel {_short(name)}")
                if array.shape != start.shape:
                    raise Stream2ProtocolError(
                        "bad_size", f"data[{name}] is {array.shape}, not {start.shape}"
                    )
                if expected is not None and array.dtype != expected:
                    raise Stream2ProtocolError(
                        "bad_dtype", f"data[{name}] is {array.dtype}, not {expected}{decided}"
                    )
            if expected is None:  # the first image decides, all its channels alike
                dtypes = sorted({array.dtype for array in channels.values()})
                if len(dtypes) > 1:
                    raise Stream2ProtocolError("bad_dtype", f"channels of one image of {', '.join(dtypes)}")
                self._decided = (start, dtypes[0])
        self.counters["images"] += 1
        start_ns, stop_ns = _rational_ns(message, "start_time"), _rational_ns(message, "stop_time")
        if start_ns is None or stop_ns is None:
            self.counters["image_times_invalid"] += 1
        return Stream2Image(
            series=series,
            series_unique_id=_unique_id(message),
            frame=frame,
            channels=channels,
            start_time_ns=start_ns or 0,
            stop_time_ns=stop_ns or 0,
            metadata=_rest(message, _IMAGE_FIELDS),
        )


def _plain(compression: str, data: bytes | memoryview, dtype: np.dtype[Any]) -> bytes:
    if compression == "lz4":
        nbytes, _ = read_header(data)
        return decode_lz4(data, nbytes)
    nbytes, _ = read_header(data)
    items = nbytes // dtype.itemsize
    return decode_bslz4(data, (items,), dtype).tobytes()


def _loads(message: bytes | memoryview) -> Any:
    try:
        # cbor2.loads stops after the first top-level item: bytes after it are not looked at (a
        # CBORDecoder that reports its position costs six times as much per image)
        return cbor2.loads(message, max_depth=MAX_DEPTH)
    except cbor2.CBORDecodeError as error:
        raise Stream2ProtocolError("malformed_cbor", str(error)[:120]) from None
    except Exception as error:  # cbor2's tag decoders can raise other types on hostile input
        raise Stream2ProtocolError("malformed_cbor", f"{type(error).__name__}: {error}"[:120]) from None


def _structure(buf: memoryview) -> tuple[list[tuple[int, int, int]], int] | None:
    """``(spans, pairs)`` of the CBOR item at the start of ``buf``: ``(header, start, end)`` of each
    definite-length byte string of at least LARGE_BYTES, and how many key/value pairs its maps declare
    in all, found by walking the item's headers (contents are skipped by their lengths, so bytes inside
    a string are never read as structure).

    None when the walk meets what it does not follow (an indefinite length, a reserved value, more
    than MAX_DEPTH levels) or the item does not fit in ``buf``: the message is then decoded as it
    stands, and cbor2 says what is wrong with it.
    """
    size = len(buf)
    spans: list[tuple[int, int, int]] = []
    stack: list[int] = []
    pending = 1  # items still to read at this level
    pairs = 0
    pos = 0
    while True:
        while pending == 0:
            if not stack:
                return spans, pairs
            pending = stack.pop()
        if pos >= size:
            return None
        head = pos
        initial = buf[pos]
        major, info = initial >> 5, initial & 31
        pos += 1
        if info < 24:
            arg = info
        elif info < 28:
            width = 1 << (info - 24)
            if pos + width > size:
                return None
            arg = int.from_bytes(buf[pos : pos + width], "big")
            pos += width
        else:  # indefinite length (31) or reserved
            return None
        pending -= 1
        if major == 2 or major == 3:
            if arg > size - pos:
                return None
            if major == 2 and arg >= LARGE_BYTES:
                spans.append((head, pos, pos + arg))
            pos += arg
        elif major == 4 or major == 5:
            if len(stack) >= MAX_DEPTH:
                return None
            stack.append(pending)
            pending = arg if major == 4 else 2 * arg
            if major == 5:
                pairs += arg
        elif major == 6:
            pending += 1  # a tag: its one item follows
        # 0, 1: integers; 7: simple values and floats, whose bytes were the argument


def _map_entries(value: Any) -> int:
    """Entries in all the maps of a decoded item (keys and values, lists, tags looked into)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _LEAVES:
            continue
        if kind is dict or kind is _FROZENDICT:
            total += len(item)
            stack += item.keys()
            stack += item.values()
        elif kind is list or kind is tuple or kind is set or kind is frozenset:
            stack += item
        elif kind is cbor2.CBORTag:
            stack.append(item.value)
    return total


def _top_map_pairs(buf: memoryview) -> int | None:
    """How many key/value pairs the message's top-level map declares (after any self-described CBOR tags),
    or None when it is not a definite-length map."""
    pos, size = 0, len(buf)
    while pos + 3 <= size and buf[pos] == 0xD9 and buf[pos + 1] == 0xD9 and buf[pos + 2] == 0xF7:
        pos += 3  # tag 55799
    if pos >= size or buf[pos] >> 5 != 5:
        return None
    info = buf[pos] & 31
    if info < 24:
        return info
    if info >= 28:  # indefinite length, or reserved
        return None
    width = 1 << (info - 24)
    if pos + 1 + width > size:
        return None
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")


def _with_tokens(
    buf: memoryview, spans: list[tuple[int, int, int]], token: bytes
) -> list[bytes | memoryview]:
    """The message's pieces with each large byte string replaced by a 20-byte one: token + its index."""
    pieces: list[bytes | memoryview] = []
    pos = 0
    for index, (head, _, end) in enumerate(spans):
        pieces += [buf[pos:head], b"\x54" + token + index.to_bytes(4, "big")]  # 0x54: bytes, length 20
        pos = end
    pieces.append(buf[pos:])
    return pieces


def _restore(
    value: Any, token: bytes, buf: memoryview, spans: list[tuple[int, int, int]], found: list[int]
) -> Any:
    """``value`` with each token byte string replaced by a read-only view of the bytes it stands for
    (containers without a token are returned as they are)."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is bytes:
        if len(value) == 20 and value[:16] == token:
            index = int.from_bytes(value[16:], "big")
            if index < len(spans):
                found.append(index)
                _, start, end = spans[index]
                return buf[start:end].toreadonly()
        return value
    # containers: rebuilt only when something inside them was a token (a plain loop: this runs for
    # every container of every image, and comprehensions plus any() over zip cost twice as much)
    if kind is list or kind is tuple:  # cbor2 gives tuples and frozendicts inside immutable items
        items = list(value)
        changed = False
        for i, old in enumerate(items):
            if type(old) not in _LEAVES:
                new = _restore(old, token, buf, spans, found)
                if new is not old:
                    items[i] = new
                    changed = True
        return kind(items) if changed else value
    if kind is dict or kind is _FROZENDICT:
        restored: dict[Any, Any] | None = None
        for key, old in value.items():
            if type(old) not in _LEAVES:
                new = _restore(old, token, buf, spans, found)
                if new is not old:
                    if restored is None:
                        restored = dict(value)
                    restored[key] = new
        return value if restored is None else restored
    if kind is cbor2.CBORTag:
        inner = _restore(value.value, token, buf, spans, found)
        return value if inner is value.value else cbor2.CBORTag(value.tag, inner)
    return value


_LEAVES = {str, int, float, bool, type(None)}
_FROZENDICT = type(cbor2.loads(cbor2.dumps(cbor2.CBORTag(1000, {}))).value)  # cbor2.frozendict
