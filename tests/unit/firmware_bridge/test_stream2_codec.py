"""The Stream V2 codec against captures built field by field from the public spec (not by our encoder)."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import cbor2
import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.hdf5_chunks import ChunkError, bslz4_blocks, check_bslz4, decode_bslz4
from firmware_bridge.stream2_codec import (
    Stream2Codec,
    Stream2End,
    Stream2Error,
    Stream2Image,
    Stream2Start,
)
from kernels import compress_chunk

DATA = Path(__file__).parents[2] / "data"
_spec = importlib.util.spec_from_file_location("make_stream2_capture", DATA / "make_stream2_capture.py")
capture = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(capture)  # type: ignore[union-attr]


def replay(name: str) -> tuple[Stream2Codec, list[object]]:
    codec = Stream2Codec()
    events: list[object] = []
    for message in capture.iter_capture((DATA / name).read_bytes()):
        events += codec.feed(message)
    return codec, events


def test_captures_on_disk_are_what_the_generator_writes() -> None:
    for name, messages in capture.captures().items():
        assert (DATA / name).read_bytes() == capture.encode_capture(messages), name


def test_bslz4_two_channel_capture_with_mask_flatfield_and_metadata() -> None:
    codec, events = replay("stream2_bslz4_u16_2ch.bin")
    assert [type(e) for e in events] == [Stream2Start] + [Stream2Image] * 4 + [Stream2End]
    start = events[0]
    assert isinstance(start, Stream2Start)
    assert (start.series, start.series_unique_id) == (7, "capture-series-7")
    assert start.shape == (23, 41)  # (image_size_y, image_size_x): non-square, so a swap would show
    assert start.dtype == "uint16"
    assert start.channels == ("threshold_1", "threshold_2")
    assert start.number_of_images == 4
    for c, name in enumerate(start.channels):
        np.testing.assert_array_equal(start.pixel_mask[name].pixels(), capture.pixel_mask(c, (23, 41)))
        assert start.pixel_mask[name].dtype == "uint32"
    np.testing.assert_array_equal(
        start.flatfield["threshold_1"].pixels(), np.full((23, 41), 1.25, np.float32)
    )
    assert list(start.flatfield) == ["threshold_1"]
    assert start.countrate_correction is not None
    np.testing.assert_array_equal(start.countrate_correction, np.arange(4096, dtype=np.uint32) * 3 // 2)
    assert start.geometry["beam_center_x"] == 20.5
    assert start.geometry["goniometer"] == {"omega": {"start": 0.0, "increment": 0.1}}
    assert start.user_data == {"sample": "LaB6", "proposal": 1234}
    # unknown fields are kept, JSON-able
    assert start.metadata["x_vendor_field"]["note"] == "unknown fields are kept"
    assert start.metadata["x_vendor_field"]["blob"] == {"bytes": 2, "base64": "AAE="}
    assert start.metadata["arm_date"].startswith("2026-11-30T12:00:00")
    assert start.metadata["threshold_energy"] == {"threshold_1": 6200.0, "threshold_2": 9000.0}
    for number, image in enumerate(events[1:5]):
        assert isinstance(image, Stream2Image)
        assert (image.series, image.frame) == (7, number)
        assert list(image.channels) == ["threshold_1", "threshold_2"]
        for c, array in enumerate(image.channels.values()):
            expected = capture.frame(7, c, number, (23, 41), "uint16")
            assert (array.compression, array.elem_size, array.dtype) == ("bslz4", 2, "uint16")
            np.testing.assert_array_equal(array.pixels(), expected)
            # the payload is kept exactly as sent: an HDF5 filter-32008 chunk, header included
            assert array.data == capture.bslz4(expected, 256)
            array.check(sample=2)
            array.check()
        assert image.start_time_ns == number * 1_100_000
        assert image.stop_time_ns == number * 1_100_000 + 1_000_000
        assert image.metadata["user_data"] == {"shot": number}
    assert codec.errors == {}
    assert codec.counters["images"] == 4
    assert codec.series is None  # the end closed it


def test_lz4_uint32_capture_takes_the_dtype_from_bit_depth() -> None:
    codec, events = replay("stream2_lz4_u32.bin")
    start = events[0]
    assert isinstance(start, Stream2Start)
    assert (start.shape, start.dtype, start.channels) == ((16, 20), "uint32", ("threshold_1",))
    images = [e for e in events if isinstance(e, Stream2Image)]
    assert len(images) == 3
    for image in images:
        array = image.channels["threshold_1"]
        assert array.compression == "lz4"
        np.testing.assert_array_equal(array.pixels(), capture.frame(8, 0, image.frame, (16, 20), "uint32"))
        array.check()
    assert isinstance(events[-1], Stream2End)
    assert codec.errors == {}


def test_uncompressed_capture_uint16_uint8_float32_without_self_described_tag() -> None:
    codec, events = replay("stream2_raw.bin")
    starts = [e for e in events if isinstance(e, Stream2Start)]
    assert [(s.series, s.dtype) for s in starts] == [(9, "uint16"), (10, "uint8"), (11, "float32")]
    images = [e for e in events if isinstance(e, Stream2Image)]
    assert [(i.series, i.frame) for i in images] == [(9, 0), (9, 1), (10, 0), (11, 0)]
    for image, start in zip(images, [starts[0], starts[0], starts[1], starts[2]], strict=True):
        array = image.channels["threshold_1"]
        assert array.compression == "none"
        expected = capture.frame(image.series, 0, image.frame, (12, 10), start.dtype)
        np.testing.assert_array_equal(array.pixels(), expected)
        assert array.pixels().dtype == np.dtype(start.dtype)
    assert sum(isinstance(e, Stream2End) for e in events) == 3
    assert codec.errors == {}


# -- malformed input: an error event with a counted reason, never an exception ------------------------
def _messages() -> list[bytes]:
    return list(capture.iter_capture((DATA / "stream2_bslz4_u16_2ch.bin").read_bytes()))


def _image_fields() -> dict[str, object]:
    decoded = cbor2.loads(_messages()[1])
    return {k: v for k, v in decoded.items()}


def _started() -> Stream2Codec:
    codec = Stream2Codec()
    (start,) = codec.feed(_messages()[0])
    assert isinstance(start, Stream2Start)
    return codec


def _error(codec: Stream2Codec, message: bytes) -> Stream2Error:
    (event,) = codec.feed(message)
    assert isinstance(event, Stream2Error), event
    assert codec.errors[event.reason] >= 1
    return event


def test_every_truncation_of_an_image_is_a_counted_malformed_cbor_error() -> None:
    image = _messages()[1]
    codec = _started()
    for cut in range(0, len(image), 7):
        event = _error(codec, image[:cut])
        assert event.reason in ("malformed_cbor", "not_a_map"), (cut, event)
    assert codec.counters["errors"] == len(range(0, len(image), 7))
    assert isinstance(codec.feed(_messages()[2])[0], Stream2Image)  # still in step


def test_wrong_typed_array_tag_names_the_frame() -> None:
    fields = _image_fields()
    array = fields["data"]["threshold_1"]
    dims, typed = array.value
    fields["data"] = {
        **fields["data"],
        "threshold_1": cbor2.CBORTag(40, [dims, cbor2.CBORTag(65, typed.value)]),
    }
    event = _error(_started(), cbor2.dumps(cbor2.CBORTag(55799, fields)))
    assert (event.reason, event.frame) == ("unsupported_tag", 0)
    assert "65" in event.detail


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.update(type="imagex"), "unknown_type"),
        (lambda f: f.update(series_id=99), "wrong_series"),
        (lambda f: f.update(series_id=2**63), "bad_field"),  # beyond the ledger's INTEGER
        (lambda f: f.update(image_id=-1), "bad_field"),
        (lambda f: f.update(data={"threshold_9": f["data"]["threshold_1"]}), "unknown_channel"),
        (lambda f: f.update(data={}), "bad_field"),
        (lambda f: f.update(data={"threshold_1": cbor2.CBORTag(41, [])}), "unsupported_tag"),
        (lambda f: f.update(data={"threshold_1": cbor2.CBORTag(40, [[23, 41], b"xx"])}), "bad_tag"),
        (
            lambda f: f.update(
                data={"threshold_1": cbor2.CBORTag(40, [[41, 23], f["data"]["threshold_1"].value[1]])}
            ),
            "bad_size",
        ),
        (
            lambda f: f.update(
                data={
                    "threshold_1": cbor2.CBORTag(
                        40, [[23, 41], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["zstd", 2, b"x" * 20]))]
                    )
                }
            ),
            "bad_compression",
        ),
        (
            lambda f: f.update(
                data={
                    "threshold_1": cbor2.CBORTag(
                        40,
                        [
                            [23, 41],
                            cbor2.CBORTag(
                                69,
                                cbor2.CBORTag(
                                    56500, ["bslz4", 4, f["data"]["threshold_1"].value[1].value.value[2]]
                                ),
                            ),
                        ],
                    )
                }
            ),
            "bad_compression",
        ),
        (
            lambda f: f.update(
                data={
                    "threshold_1": cbor2.CBORTag(
                        40, [[23, 41], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, b"short"]))]
                    )
                }
            ),
            "bad_compression",
        ),
        (
            lambda f: f.update(
                data={"threshold_1": cbor2.CBORTag(40, [[23, 41], cbor2.CBORTag(69, b"\x00" * 10)])}
            ),
            "bad_size",
        ),
        (
            lambda f: f.update(
                data={
                    "threshold_1": cbor2.CBORTag(40, [[23, 41], cbor2.CBORTag(70, b"\x00" * (23 * 41 * 4))])
                }
            ),
            "bad_dtype",
        ),
    ],
)
def test_malformed_image_fields(change: object, reason: str) -> None:
    fields = _image_fields()
    change(fields)  # type: ignore[operator]
    event = _error(_started(), cbor2.dumps(fields))
    assert event.reason == reason, event


@pytest.mark.parametrize(
    "time",
    [[1, 0], [2**70, 1], [-1, 1], [1.5, 1], "now", [1, 2, 3], [2**64, 1]],
    ids=["zero-denominator", "beyond-int64-ns", "negative", "float", "text", "three", "2^64"],
)
def test_an_image_time_nobody_can_hold_costs_no_frame(time: object) -> None:
    """A bad ``start_time``/``stop_time`` is counted and the image kept with the time 0: a timestamp is
    not worth a frame (it used to be rejected as ``bad_field``, the frame lost)."""
    codec = _started()
    for key in ("start_time", "stop_time"):
        fields = _image_fields()
        fields[key] = time
        (image,) = codec.feed(cbor2.dumps(fields))
        assert isinstance(image, Stream2Image)
        assert getattr(image, f"{key}_ns") == 0
        assert image.frame == 0 and image.channels
    assert codec.counters["image_times_invalid"] == 2
    assert codec.errors == {}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "malformed_cbor"),
        (b"\xff\xfe", "malformed_cbor"),
        (cbor2.dumps([1, 2]), "not_a_map"),
        (cbor2.dumps({"type": "start"}), "bad_field"),
        (cbor2.dumps({"type": "start", "series_id": 1, "image_size_x": 4, "image_size_y": 4}), "bad_field"),
        (
            cbor2.dumps(
                {"type": "start", "series_id": 1, "image_size_x": 0, "image_size_y": 4, "channels": ["a"]}
            ),
            "bad_field",
        ),
        (
            cbor2.dumps(
                {
                    "type": "start",
                    "series_id": 1,
                    "image_size_x": 4,
                    "image_size_y": 4,
                    "channels": ["a"],
                    "image_dtype": "int64",
                }
            ),
            "bad_field",
        ),
        (cbor2.dumps({"type": "end"}), "bad_field"),
        (cbor2.dumps(cbor2.CBORTag(55799, "start")), "not_a_map"),
        (b"\x81" * 200 + b"\x00", "malformed_cbor"),  # nesting beyond the decoder's depth limit
    ],
)
def test_malformed_messages(message: bytes, reason: str) -> None:
    codec = Stream2Codec()
    assert _error(codec, message).reason == reason


def test_a_mask_or_flatfield_of_another_shape_is_left_out_not_the_start() -> None:
    """The start keeps its geometry, channels and metadata; the array is named in ``arrays_left_out``
    and counted (it used to reject the whole start, whose images then passed for a restarted series)."""
    codec = Stream2Codec()
    (start,) = codec.feed(
        cbor2.dumps(
            {
                "type": "start",
                "series_id": 1,
                "image_size_x": 4,
                "image_size_y": 4,
                "channels": ["a"],
                "incident_wavelength": 1.0,
                "pixel_mask": {"a": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(70, bytes(16))])},
            }
        )
    )
    assert isinstance(start, Stream2Start) and start.pixel_mask == {}
    assert start.metadata["arrays_left_out"] == ["pixel_mask[a] is (2, 2), not the images' (4, 4)"]
    assert start.geometry["incident_wavelength"] == 1.0 and codec.counters["arrays_wrong_shape"] == 1


def test_a_flatfield_whose_bytes_do_not_fit_its_shape_is_left_out_not_the_start() -> None:
    """A flatfield of 2x2 float32 carrying 3 bytes (bad_size) is left out with its reason; the start keeps
    its uid, length and geometry."""
    codec = Stream2Codec()
    (start,) = codec.feed(
        cbor2.dumps(
            {
                "type": "start",
                "series_id": 1,
                "series_unique_id": "keep-me",
                "number_of_images": 5,
                "image_size_x": 2,
                "image_size_y": 2,
                "channels": ["a"],
                "incident_wavelength": 1.0,
                "flatfield": {"a": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(85, bytes(3))])},
            }
        )
    )
    assert isinstance(start, Stream2Start) and start.flatfield == {}
    assert start.series_unique_id == "keep-me" and start.number_of_images == 5
    (why,) = start.metadata["arrays_left_out"]
    assert why.startswith("flatfield[a] is not readable: bad_size")
    assert codec.counters["arrays_unreadable"] == 1 and start.geometry["incident_wavelength"] == 1.0


def test_rejected_messages_say_what_they_were_and_whether_they_decoded() -> None:
    codec = Stream2Codec()
    start = _error(
        codec, cbor2.dumps({"type": "start", "series_id": 1, "image_size_x": 0, "image_size_y": 4})
    )
    assert (start.kind, start.readable) == ("start", True)
    other = _error(codec, cbor2.dumps({"type": "hello"}))
    assert (other.reason, other.kind, other.readable) == ("unknown_type", None, True)
    broken = _error(codec, b"\xa1\x64type")  # a map cut short
    assert (broken.kind, broken.readable) == (None, False)


def test_a_corrupt_compressed_block_decodes_to_a_chunk_error() -> None:
    fields = _image_fields()
    dims, typed = fields["data"]["threshold_1"].value
    algorithm, elem, chunk = typed.value.value
    bad = bytearray(chunk)
    _, _, blocks = bslz4_blocks(chunk, 2)
    offset, length, _ = blocks[2]
    assert len(blocks) == 4
    bad[offset : offset + length] = b"\xff" * length  # an LZ4 block that cannot decode
    fields["data"] = {
        **fields["data"],
        "threshold_1": cbor2.CBORTag(
            40, [dims, cbor2.CBORTag(69, cbor2.CBORTag(56500, [algorithm, elem, bytes(bad)]))]
        ),
    }
    (image,) = _started().feed(cbor2.dumps(fields))
    assert isinstance(image, Stream2Image)  # the message is well formed; the chunk is not
    array = image.channels["threshold_1"]
    with pytest.raises(ChunkError) as error:
        array.pixels()
    assert error.value.reason == "bad_lz4_block"
    with pytest.raises(ChunkError):
        array.check()
    with pytest.raises(ChunkError) as error:
        # a sample of one decompresses the first block only, but every block's sequences are parsed
        array.check(sample=1)
    assert error.value.reason == "bad_lz4_block"
    with pytest.raises(ChunkError):
        array.check(sample=3)  # blocks 0, 2 and 3 of 4


# -- properties -----------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    dtype=st.sampled_from(["uint8", "uint16", "uint32", "float32"]),
    compression=st.sampled_from(["none", "bslz4", "lz4"]),
    block=st.sampled_from([8, 64, 256]),
    seed=st.integers(0, 2**16),
)
def test_any_array_built_from_the_spec_decodes_to_its_pixels(
    height: int, width: int, dtype: str, compression: str, block: int, seed: int
) -> None:
    pixels = np.random.default_rng(seed).integers(0, 200, (height, width)).astype(dtype)
    start = {
        "type": "start",
        "series_id": 1,
        "image_size_x": width,
        "image_size_y": height,
        "channels": ["c"],
    }
    image = {
        "type": "image",
        "series_id": 1,
        "image_id": 5,
        "data": {"c": capture.typed(pixels, compression, block)},
    }
    codec = Stream2Codec()
    codec.feed(cbor2.dumps(start))
    (event,) = codec.feed(cbor2.dumps(cbor2.CBORTag(55799, image)))
    assert isinstance(event, Stream2Image), event
    np.testing.assert_array_equal(event.channels["c"].pixels(), pixels)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(blob: bytes) -> None:
    events = Stream2Codec().feed(blob)
    assert len(events) == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.sampled_from([1, 2, 4]))
def test_arbitrary_chunks_raise_only_chunk_errors(blob: bytes, elem: int) -> None:
    for call in (lambda: decode_bslz4(blob, (4, 4), f"uint{8 * elem}"), lambda: check_bslz4(blob, elem, 2)):
        with contextlib.suppress(ChunkError):
            call()


_VALID_CHUNK = capture.bslz4(capture.frame(7, 0, 0, (23, 41), "uint16"), 64)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(_VALID_CHUNK) - 1), st.integers(0, 255)), min_size=1, max_size=6)
)
def test_damaged_valid_chunks_raise_only_chunk_errors(changes: list[tuple[int, int]]) -> None:
    """Byte changes anywhere in a real chunk (block sizes included): a ChunkError or pixels, never a crash."""
    chunk = bytearray(_VALID_CHUNK)
    for index, value in changes:
        chunk[index] = value
    for call in (
        lambda: decode_bslz4(bytes(chunk), (23, 41), "uint16"),
        lambda: check_bslz4(bytes(chunk), 2),
        lambda: check_bslz4(bytes(chunk), 2, 3),
    ):
        with contextlib.suppress(ChunkError):
            call()


def _large_image(extra: dict[str, object] | None = None) -> tuple[bytes, bytes]:
    """An image message built from the spec with cbor2, one 512x512 uint16 channel of ~160 KiB bslz4
    (above the size from which the codec references byte strings in the message instead of copying)."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 60000, (512, 512)).astype(np.uint16)  # noise: compresses badly, stays large
    chunk = bytes(compress_chunk(pixels))
    fields: dict[str, object] = {
        "type": "image",
        "series_id": 7,
        "series_unique_id": "capture-series-7",
        "image_id": 0,
        "data": {
            "threshold_1": cbor2.CBORTag(
                40, [[512, 512], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, chunk]))]
            )
        },
        **(extra or {}),
    }
    return cbor2.dumps(cbor2.CBORTag(55799, fields)), chunk


def _large_start() -> bytes:
    return cbor2.dumps(
        {
            "type": "start",
            "series_id": 7,
            "series_unique_id": "capture-series-7",
            "image_size_x": 512,
            "image_size_y": 512,
            "image_dtype": "uint16",
            "channels": ["threshold_1"],
        }
    )


def test_a_large_image_is_referenced_in_the_message_and_equals_a_full_decode() -> None:
    message, chunk = _large_image({"x_vendor_blob": b"\x01" * 200_000})
    assert len(chunk) > 128 << 10
    codec = Stream2Codec()
    codec.feed(_large_start())
    (event,) = codec.feed(message)
    assert isinstance(event, Stream2Image) and codec.counters["zero_copy_fallbacks"] == 0
    data = event.channels["threshold_1"].data
    assert isinstance(data, memoryview) and data.readonly and data == chunk  # a view, not a copy
    assert event.metadata["x_vendor_blob"] == {"bytes": 200_000}  # a large unknown field is kept too
    full = cbor2.loads(message)["data"]["threshold_1"].value[1].value.value[2]  # 55799 dropped by cbor2
    assert bytes(data) == full


def test_a_large_byte_string_cbor2_reads_as_something_else_is_decoded_as_it_stands() -> None:
    big = (1 << 8 * 200_000) - 1  # a bignum (tag 2) of 200 kB: cbor2 turns the byte string into an int
    message, chunk = _large_image({"x_vendor_number": big})
    codec = Stream2Codec()
    codec.feed(_large_start())
    (event,) = codec.feed(message)
    assert isinstance(event, Stream2Image)
    assert codec.counters["zero_copy_fallbacks"] == 1
    assert event.channels["threshold_1"].data == chunk


def test_every_truncation_of_a_large_image_is_still_a_malformed_cbor_error() -> None:
    message, _ = _large_image()
    codec = Stream2Codec()
    codec.feed(_large_start())
    for cut in (1, 100, 160, len(message) // 2, len(message) - 1):
        event = _error(codec, message[:cut])
        assert event.reason in ("malformed_cbor", "not_a_map"), (cut, event)
    assert isinstance(codec.feed(message)[0], Stream2Image)


@settings(max_examples=300, deadline=None)
@given(
    blob=st.binary(min_size=0, max_size=400),
    count=st.integers(0, 40),
    cut=st.integers(0, 400),
    sample=st.integers(1, 6),
)
def test_the_compiled_block_walk_agrees_with_the_python_walk(
    blob: bytes, count: int, cut: int, sample: int
) -> None:
    """The numba walk of the sampled check against the Python reference, on arbitrary bytes."""
    from firmware_bridge import hdf5_chunks

    view = memoryview(blob)
    end = min(cut, len(blob))
    chosen = sorted({round(i * (count - 1) / max(sample - 1, 1)) for i in range(sample)}) if count else []
    compiled = hdf5_chunks._walk_chosen(view, count, end, chosen)
    assert compiled == hdf5_chunks._walk_chosen_python(view, count, end, chosen)


def _plain_values(value: object) -> object:
    """A decoded CBOR value with views turned into bytes and containers into lists and dicts."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, cbor2.CBORTag):
        return ("tag", value.tag, _plain_values(value.value))
    if isinstance(value, (list, tuple)):
        return [_plain_values(v) for v in value]
    if hasattr(value, "items"):
        return {k: _plain_values(v) for k, v in value.items()}  # type: ignore[attr-defined]
    return value


_LARGE_MESSAGE = _large_image({"x_vendor_blob": b"\x02" * 70_000})[0]


@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.integers(0, len(_LARGE_MESSAGE) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ),
    near_header=st.booleans(),
)
def test_a_damaged_large_message_decodes_as_cbor2_decodes_it(
    changes: list[tuple[int, int]], near_header: bool
) -> None:
    """The zero-copy decode of a large message equals cbor2's decode of the same bytes (or both refuse
    it), whatever bytes are changed; most changes hit the headers, where the walk could be misled."""
    from firmware_bridge.stream2_codec import (
        Stream2ProtocolError,
        _loads,
        _map_entries,
        _structure,
        _top_map_pairs,
    )

    message = bytearray(_LARGE_MESSAGE)
    for position, value in changes:
        message[position % 400 if near_header else position] = value
    data = bytes(message)
    codec = Stream2Codec()
    try:
        fast = _plain_values(codec._load(data))
    except Stream2ProtocolError as error:
        if "a key given twice" in str(error):
            # the codec's own rule on top of cbor2's decode (RFC 8949 5.6; cbor2 keeps the last): a
            # changed header byte can make two keys of one map equal (hypothesis found one at byte 4)
            walked, plain_value = _structure(memoryview(data)), _loads(data)
            if walked is not None:
                assert _map_entries(plain_value) < walked[1]
            else:  # (a walk that stopped: the top-level map alone)
                assert len(plain_value) < (_top_map_pairs(memoryview(data)) or 0)
            return
        with pytest.raises(Stream2ProtocolError) as plain:
            _loads(data)
        assert plain.value.reason == error.reason
        return
    expected = _loads(data)
    if isinstance(expected, cbor2.CBORTag) and expected.tag == 55799:
        expected = expected.value
    assert fast == _plain_values(expected)


def _start_fields() -> dict[str, object]:
    return dict(cbor2.loads(_messages()[0]))


def test_a_series_id_beyond_int64_is_refused_at_start_and_end() -> None:
    """A series id of 2^64 - 1 once killed the Stream V2 reader (the ledger's SQLite INTEGER overflowed)."""
    fields = _start_fields()
    fields["series_id"] = 2**64 - 1
    event = _error(Stream2Codec(), cbor2.dumps(fields))
    assert event.reason == "bad_field" and "2^63" in event.detail
    event = _error(_started(), cbor2.dumps({"type": "end", "series_id": 2**63}))
    assert event.reason == "bad_field"


@pytest.mark.parametrize("number", [-3, 2**64, 1.5, "ten", True])
def test_a_series_length_nobody_can_use_is_unknown_not_a_refused_start(number: object) -> None:
    """An unusable ``number_of_images`` once refused the whole start (its geometry, mask and metadata
    lost, the series adopted from its first image): now the length is unknown and the value kept."""
    fields = _start_fields()
    fields["number_of_images"] = number
    codec = Stream2Codec()
    (start,) = codec.feed(cbor2.dumps(fields))
    assert isinstance(start, Stream2Start)
    assert start.number_of_images is None
    assert start.metadata["number_of_images"] == repr(number)
    assert codec.counters["number_of_images_invalid"] == 1 and codec.errors == {}


def test_whole_floats_in_integer_fields_are_taken_as_the_json_stream_takes_them() -> None:
    """A sender whose numbers pass through floats (a numpy float64, a JSON-to-CBOR bridge) writes
    ``number_of_images: 3.0`` or ``image_id: 1.0``: the length was unknown and the image refused
    ``bad_field``. Whole floats up to 2^53 are taken, as the JSON stream v1 takes them; fractions are not."""
    fields = _start_fields()
    fields["number_of_images"] = 3.0
    codec = Stream2Codec()
    (start,) = codec.feed(cbor2.dumps(fields))
    assert isinstance(start, Stream2Start) and start.number_of_images == 3
    assert codec.counters.get("number_of_images_invalid", 0) == 0
    image = _image_fields()
    image["image_id"], image["series_id"] = 1.0, float(start.series)
    (event,) = codec.feed(cbor2.dumps(image))
    assert isinstance(event, Stream2Image) and event.frame == 1 and event.series == start.series
    image["image_id"] = 1.5
    assert _error(codec, cbor2.dumps(image)).reason == "bad_field"


@pytest.mark.parametrize(
    ("uid", "expected"),
    [(12345, "12345"), (-7, "-7"), (2.5, "2.5"), ("abc", "abc"), (True, None), ([1], None), (10**200, None)],
)
def test_a_numeric_series_unique_id_is_kept_as_its_text_as_the_v1_run_uid(
    uid: object, expected: str | None
) -> None:
    """An outside sender's ``series_unique_id: 12345`` rejected the whole start (bad_field): its length,
    geometry and mask were dropped. A number is kept as its text, as stream v1's ``run_uid``."""
    codec = Stream2Codec()
    message = {
        "type": "start",
        "series_id": 1,
        "series_unique_id": uid,
        "number_of_images": 5,
        "image_size_x": 2,
        "image_size_y": 2,
        "channels": ["a"],
    }
    (event,) = codec.feed(cbor2.dumps(message))
    if expected is None:
        assert not isinstance(event, Stream2Start) and event.reason == "bad_field"
    else:
        assert isinstance(event, Stream2Start) and event.series_unique_id == expected
        assert event.number_of_images == 5


@pytest.mark.parametrize("again", [("image_id", 3), ("type", "end"), ("data", {})])
def test_a_map_with_a_key_given_twice_is_not_taken(again: tuple[str, object]) -> None:
    """A clean-room sender's probe: an image map with ``image_id`` twice was stored as the last one's
    frame with the first one's pixels (cbor2 keeps the last value). A key given twice is not valid CBOR
    (RFC 8949 5.6): the message is refused as ``malformed_cbor``, so its frame becomes a gap. The map is
    built pair by pair here: no encoder writes one."""
    pairs = [*_image_fields().items(), again]
    message = bytes([0xA0 + len(pairs)]) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)
    assert len(pairs) < 24 and cbor2.loads(message)[again[0]] == again[1]  # the library takes it
    event = _error(_started(), b"\xd9\xd9\xf7" + message)
    assert event.reason == "malformed_cbor" and "a key given twice" in event.detail


@pytest.mark.parametrize("padding", [0, 300_000])
def test_a_nested_map_with_a_key_given_twice_is_not_taken(padding: int) -> None:
    """Only the top-level map was checked: an image whose ``data`` map named its channel twice was
    stored with the second array's pixels and no word. Every map's pairs are counted now, in a small
    message and in a large one (whose images are referenced, not copied: another decoding path)."""
    fields = _image_fields()
    channels = list(fields["data"].items())
    # every channel, then the first one's name again with the last one's array
    again = [*channels, (channels[0][0], channels[-1][1])]
    data = bytes([0xA0 + len(again)]) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in again)
    rest = {k: v for k, v in fields.items() if k != "data"}
    if padding:
        rest["padding"] = bytes(padding)
    pairs = len(rest) + 1
    message = (
        bytes([0xA0 + pairs])
        + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in rest.items())
        + cbor2.dumps("data")
        + data
    )
    assert pairs < 24 and len(cbor2.loads(message)["data"]) == len(channels)  # the library takes it
    event = _error(_started(), b"\xd9\xd9\xf7" + message)
    assert event.reason == "malformed_cbor" and "a key given twice" in event.detail
    # the same message with the key once is an image
    good = bytes([0xA0 + pairs]) + b"".join(
        cbor2.dumps(k) + cbor2.dumps(v) for k, v in {**rest, "data": dict(channels)}.items()
    )
    (image,) = _started().feed(b"\xd9\xd9\xf7" + good)
    assert isinstance(image, Stream2Image), image


def test_a_shared_map_referenced_twice_is_not_a_key_given_twice() -> None:
    """A decoded map can hold more entries than the message declares (a shared value referenced again,
    tags 28/29), never fewer unless a key was given twice."""
    shared = {"a": 1, "b": 2}
    message = cbor2.dumps({"type": "end", "series_id": 1, "x": shared, "y": shared}, value_sharing=True)
    assert b"\xd8\x1d" in message  # tag 29: the second is a reference
    codec = _started()
    events = codec.feed(message)
    assert not any(isinstance(e, Stream2Error) and "twice" in e.detail for e in events), events


def _lz4_decodes(block: bytes, plain: int) -> bool:
    try:
        return len(lz4.block.decompress(block, uncompressed_size=plain)) == plain
    except lz4.block.LZ4BlockError:
        return False


_LZ4_SOURCES = [
    np.random.default_rng(3).poisson(2, 3000).astype(np.uint8).tobytes(),  # short matches, literals
    bytes(2500),  # one long match
    np.random.default_rng(4).integers(0, 256, 600, dtype=np.uint8).tobytes(),  # literals only
    b"",  # an empty block (a single 0 token)
]


@settings(max_examples=600, deadline=None)
@given(
    source=st.sampled_from(range(len(_LZ4_SOURCES))),
    edits=st.lists(
        st.tuples(
            st.sampled_from("set insert delete"), st.floats(0, 1, exclude_max=True), st.integers(0, 255)
        ),
        max_size=3,
    ),
    size_change=st.sampled_from([0, 0, 0, -1, 1, -5, 7]),
)
def test_the_lz4_sequence_parse_accepts_only_what_lz4_decodes(
    source: int, edits: list[tuple[str, float, int]], size_change: int
) -> None:
    """The compiled parse of an LZ4 block (the "sampled" check's look at every block) against
    python-lz4's ``LZ4_decompress_safe``, on damaged blocks and wrong plain sizes: a block it accepts
    always decodes to exactly its size (else an undecodable chunk would be stored), and one it refuses
    does not, but for the format's rules the decoder does not enforce (an offset of 0, a match ending in
    the last 5 bytes), where the parse is stricter on purpose."""
    from firmware_bridge._block_walk import lz4_block_ok

    plain = _LZ4_SOURCES[source]
    block = bytearray(lz4.block.compress(plain, store_size=False))
    for kind, where, value in edits:
        at = int(where * len(block))
        if kind == "set" and block:
            block[at] = value
        elif kind == "insert":
            block.insert(at, value)
        elif kind == "delete" and block:
            del block[at]
    size = max(len(plain) + size_change, 0)
    padded = np.frombuffer(bytes(block) + b"\xff" * 16, np.uint8)  # bytes after it must not be read
    parsed = bool(lz4_block_ok(padded, 0, len(block), size))
    decodes = _lz4_decodes(bytes(block), size)
    assert not parsed or decodes
    if not edits and size_change == 0:
        assert parsed  # what the compressor wrote is always taken
    if decodes and not parsed:
        assert _breaks_end_rules(bytes(block), size), block.hex()


def _breaks_end_rules(block: bytes, plain: int) -> bool:
    """True when ``block`` has an offset of 0 or a match reaching into the last 5 plain bytes."""
    try:
        return _end_rules_broken(block, plain)
    except IndexError:  # its bytes run out: no such rule decides it
        return False


def _length(block: bytes, ip: int, nibble: int) -> tuple[int, int]:
    """(a literal or match length, where the bytes after it start): 15 in the token adds bytes."""
    length = nibble
    if nibble == 15:
        while True:
            length += block[ip]
            ip += 1
            if block[ip - 1] != 255:
                break
    return length, ip


def _end_rules_broken(block: bytes, plain: int) -> bool:
    ip, op = 0, 0
    while ip < len(block):
        token = block[ip]
        literals, ip = _length(block, ip + 1, token >> 4)
        ip += literals
        op += literals
        if ip >= len(block):
            return False
        offset = block[ip] | block[ip + 1] << 8
        match, ip = _length(block, ip + 2, token & 15)
        op += match + 4
        if offset == 0 or op > plain - 5:
            return True
    return False


def _crafted(offset: int, last: int = 15) -> bytes:
    """An LZ4 block by hand: 1 literal and a 4-byte match at ``offset``, then ``last`` literals."""
    tail = bytes([0xF0, last - 15]) if last >= 15 else bytes([last << 4])
    return bytes([0x10]) + b"a" + offset.to_bytes(2, "little") + tail + b"b" * last


@pytest.mark.parametrize(
    ("block", "plain", "expected"),
    [
        (_crafted(1), 20, True),  # "a" then "aaaa" then 15 "b"
        (_crafted(2), 20, False),  # the match starts before the block's first byte
        (_crafted(1), 21, False),  # one byte short of the size it must have
        (_crafted(1), 19, False),  # one byte over
        (_crafted(1)[:-1], 20, False),  # the last literal cut off
        (_crafted(0), 20, False),  # offset 0: invalid LZ4 (liblz4's decoder lets it through)
        (_crafted(1, last=4), 9, False),  # a match ending in the last 5 bytes: the same
        (bytes([0xF0, 0xFF]), 300, False),  # a literal length whose bytes run out
    ],
)
def test_the_lz4_sequence_parse_on_hand_made_blocks(block: bytes, plain: int, expected: bool) -> None:
    from firmware_bridge._block_walk import lz4_block_ok

    assert bool(lz4_block_ok(np.frombuffer(block + b"\xff" * 16, np.uint8), 0, len(block), plain)) is expected
    if expected or not _breaks_end_rules(block, plain):
        assert _lz4_decodes(block, plain) is expected  # python-lz4 agrees


def _raw_channel(dtype: str, shape: tuple[int, int] = (23, 41)) -> cbor2.CBORTag:
    tag = {"uint16": 69, "uint32": 70}[dtype]  # RFC 8746, little-endian
    return cbor2.CBORTag(
        40, [list(shape), cbor2.CBORTag(tag, bytes(shape[0] * shape[1] * np.dtype(dtype).itemsize))]
    )


def test_a_start_naming_no_dtype_lets_the_first_image_decide_and_a_later_other_dtype_is_bad_dtype() -> None:
    """An outside sender's start named no ``image_dtype``; its second image carried a uint32 channel
    after a first image of uint16. The codec took it, and the pipeline recorded it ``wrong_dtype`` (a
    reason the doc gives v1 senders only). It is the codec's ``bad_dtype``, a loss record
    ``stream2_bad_dtype``, as for a start that names the dtype."""
    start = _start_fields()
    for key in ("image_dtype", "bit_depth_image"):
        start.pop(key, None)
    codec = Stream2Codec()
    (started,) = codec.feed(cbor2.dumps(start))
    assert isinstance(started, Stream2Start) and started.dtype is None

    def image(frame: int, dtypes: tuple[str, str]) -> bytes:
        fields = _image_fields()
        fields["image_id"] = frame
        fields["data"] = {"threshold_1": _raw_channel(dtypes[0]), "threshold_2": _raw_channel(dtypes[1])}
        return cbor2.dumps(fields)

    (first,) = codec.feed(image(0, ("uint16", "uint16")))
    assert isinstance(first, Stream2Image)
    event = _error(codec, image(1, ("uint32", "uint16")))
    assert (event.reason, event.frame) == ("bad_dtype", 1)
    assert "uint16 (the series' first image's)" in event.detail
    assert isinstance(codec.feed(image(2, ("uint16", "uint16")))[0], Stream2Image)

    # a new series decides afresh; the channels of its first image must agree among themselves
    codec.feed(cbor2.dumps({"type": "end", "series_id": start["series_id"]}))
    codec.feed(cbor2.dumps(start))
    event = _error(codec, image(0, ("uint16", "uint32")))
    assert event.reason == "bad_dtype" and "channels of one image" in event.detail
    assert isinstance(codec.feed(image(1, ("uint32", "uint32")))[0], Stream2Image)
