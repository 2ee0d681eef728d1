"""The Stream V2 reader over a real ZeroMQ PUSH -> PULL on loopback, replaying the independent captures."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from typing import Any, NamedTuple

import cbor2
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.hdf5_chunks import ChunkError, bslz4_blocks, decode_bslz4
from firmware_bridge.source import FLAG_CHUNK, FrameHeader
from firmware_bridge.stream2_reader import Stream2Source

DATA = Path(__file__).parents[2] / "data"
_spec = importlib.util.spec_from_file_location("make_stream2_capture", DATA / "make_stream2_capture.py")
capture = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(capture)  # type: ignore[union-attr]


class Sink:
    """A FrameSink that keeps what it is given (pixels by frame, configs, losses, ends)."""

    def __init__(self, refuse: str | None = None) -> None:
        self.frames: dict[tuple[int, int], np.ndarray] = {}
        self.published: list[int] = []
        self.chunks: dict[int, bytes] = {}
        self.configs: list[dict[str, Any]] = []
        self.pixel_masks: list[np.ndarray | None] = []  # the stored channel's, as the sink was given it
        self.losses: list[tuple[int, int, str]] = []
        self.details: list[str] = []
        self.ends: list[tuple[int, str]] = []
        self.ended = threading.Event()
        self.refuse = refuse
        self.named: list[tuple[int, str]] = []  # late starts' uids (`series_named`)

    def claim(self, nbytes: int) -> Any:
        class Slot:
            buffer = memoryview(bytearray(nbytes))

        return Slot()

    def publish(self, slot: Any, header: FrameHeader) -> None:
        if header.flags & FLAG_CHUNK:  # passed through: the chunk as received
            chunk = bytes(slot.buffer[: header.nbytes])
            self.chunks[header.frame] = chunk
            try:
                pixels = decode_bslz4(chunk, (header.height, header.width), header.dtype)
            except ChunkError:  # a damaged block the sampled check did not look at
                pixels = np.zeros((header.height, header.width), header.dtype)
        else:
            pixels = np.frombuffer(slot.buffer, header.dtype).reshape(header.height, header.width)
        self.frames[(len(self.configs), header.frame)] = pixels.copy()
        self.published.append(header.frame)

    def abandon(self, slot: Any) -> None:
        pass

    def series_start(
        self, series: int, config: dict[str, Any], pixel_mask: np.ndarray | None = None
    ) -> str | None:
        json.dumps(config)  # the run record must be JSON-able
        self.configs.append(config)
        self.pixel_masks.append(pixel_mask)
        return self.refuse

    def series_length(self, series: int, frames_expected: int) -> None:
        pass

    def series_named(self, series: int, detector_uid: str) -> None:
        self.named.append((series, detector_uid))

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        self.ends.append((series, exit_status))
        self.ended.set()

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        self.losses.append((first, last, reason))
        self.details.append(detail)


def replay(
    messages: list[bytes], sink: Sink, ends: int = 1, until: Any = None, counted: str = "", **options: Any
) -> Stream2Source:
    """Send ``messages`` to a reader; stop it once ``ends`` series ended (and ``until(sink)`` holds, and
    the reader's counter ``counted`` is above 0)."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = Stream2Source(f"tcp://127.0.0.1:{port}", sink, context, **options)
    reader.start()
    try:
        for message in messages:
            push.send(message)
        deadline = threading.Event()
        for _ in range(100):
            if (
                len(sink.ends) >= ends
                and (until is None or until(sink))
                and (not counted or reader.counters().get(counted, 0) > 0)
            ):
                break
            deadline.wait(0.1)
        assert len(sink.ends) >= ends, sink.ends
    finally:
        reader.stop()
        push.close(0)
        context.term()
    return reader


def _messages(name: str) -> list[bytes]:
    return list(capture.iter_capture((DATA / name).read_bytes()))


def test_the_start_messages_acquisition_fields_reach_the_files() -> None:
    # count_time and frame_time kept among the unknown fields, the sensor among the geometry: the data
    # files' NXmx / NXtomo detector takes them under DECTRIS's names
    from edge.store import series_metadata

    sink = Sink()
    replay(_messages("stream2_bslz4_u16_2ch.bin"), sink, channel="threshold_1")
    (config,) = sink.configs
    accepted, ignored = series_metadata(config)
    assert ignored == []
    assert accepted == {
        "count_time": 0.001,
        "frame_time": 0.0011,
        "sensor_material": "Si",
        "sensor_thickness": 0.00045,
        "detector": "capture generator (not a DECTRIS detector)",
    }


def test_second_channel_is_stored_and_the_start_is_recorded() -> None:
    sink = Sink()
    reader = replay(_messages("stream2_bslz4_u16_2ch.bin"), sink, channel="threshold_2")
    assert sorted(n for _, n in sink.frames) == [0, 1, 2, 3]
    for (_, number), pixels in sink.frames.items():
        np.testing.assert_array_equal(pixels, capture.frame(7, 1, number, (23, 41), "uint16"))
    assert sink.losses == [] and sink.ends == [(7, "success")]
    (config,) = sink.configs
    assert config["shape"] == [41, 23] and config["type"] == "uint16"
    assert config["run_uid"] == "capture-series-7" and config["frames_expected"] == 4
    stream2 = config["stream2"]
    assert stream2["channel"] == "threshold_2"
    assert stream2["channels"] == ["threshold_1", "threshold_2"]
    assert stream2["geometry"]["beam_center_y"] == 11.25
    for c, name in enumerate(stream2["channels"]):
        mask = stream2["pixel_mask"][name]
        assert mask["masked_pixels"] == int(np.count_nonzero(capture.pixel_mask(c, (23, 41))))
        assert mask["shape"] == [23, 41] and mask["dtype"] == "uint32"
    # the stored channel's mask itself goes to the sink, decoded, for the reduction to combine
    (pixel_mask,) = sink.pixel_masks
    assert pixel_mask is not None
    np.testing.assert_array_equal(pixel_mask, capture.pixel_mask(1, (23, 41)))
    assert stream2["flatfield"]["threshold_1"]["dtype"] == "float32"
    assert stream2["countrate_correction"]["entries"] == 4096
    assert stream2["metadata"]["x_vendor_field"]["note"] == "unknown fields are kept"
    assert stream2["user_data"] == {"sample": "LaB6", "proposal": 1234}
    assert reader.counters()["frames_received"] == 4 and reader.counters()["channel"] == "threshold_2"


def test_lz4_uint32_without_image_dtype_and_raw_series() -> None:
    sink = Sink()
    replay(_messages("stream2_lz4_u32.bin") + _messages("stream2_raw.bin"), sink, ends=4)
    assert [c["type"] for c in sink.configs] == ["uint32", "uint16", "uint8", "float32"]
    expected = {(1, n): capture.frame(8, 0, n, (16, 20), "uint32") for n in range(3)}
    expected |= {(2, n): capture.frame(9, 0, n, (12, 10), "uint16") for n in range(2)}
    expected[(3, 0)] = capture.frame(10, 0, 0, (12, 10), "uint8")
    expected[(4, 0)] = capture.frame(11, 0, 0, (12, 10), "float32")
    assert sorted(sink.frames) == sorted(expected)
    for key, pixels in sink.frames.items():
        np.testing.assert_array_equal(pixels, expected[key])
    assert sink.losses == []


def test_a_start_without_dtype_takes_it_from_the_first_image() -> None:
    start, *rest = _messages("stream2_bslz4_u16_2ch.bin")
    fields = dict(cbor2.loads(start))
    del fields["image_dtype"]
    sink = Sink()
    replay([cbor2.dumps(fields), *rest], sink)
    assert sink.configs[0]["type"] == "uint16" and len(sink.frames) == 4


def test_faults_become_loss_records_with_their_reason() -> None:
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    fields = dict(cbor2.loads(image2))
    dims, typed = fields["data"]["threshold_1"].value
    algorithm, elem, chunk = typed.value.value
    bad = bytearray(chunk)
    (length,) = np.frombuffer(chunk[12:16], ">u4")
    bad[16 : 16 + int(length)] = b"\xff" * int(length)
    fields["data"] = {
        **fields["data"],
        "threshold_1": cbor2.CBORTag(
            40, [dims, cbor2.CBORTag(69, cbor2.CBORTag(56500, [algorithm, elem, bytes(bad)]))]
        ),
    }
    wrong = dict(cbor2.loads(image3))
    wrong["data"] = {
        **wrong["data"],
        "threshold_1": cbor2.CBORTag(40, [dims, cbor2.CBORTag(65, typed.value)]),
    }
    sink = Sink()
    reader = replay(
        [start, image0[: len(image0) // 2], image1, cbor2.dumps(fields), cbor2.dumps(wrong), end], sink
    )
    assert sorted(n for _, n in sink.frames) == [1]
    assert sorted(sink.losses) == [
        (0, 0, "stream2_unreadable_message"),
        (2, 2, "stream2_bad_chunk"),
        (3, 3, "stream2_unsupported_tag"),
    ]
    assert reader.counters()["frames_bad_chunk"] == 1
    assert reader.counters()["errors"] == {"malformed_cbor": 1, "unsupported_tag": 1}


def test_a_truncated_last_image_is_lost_as_unreadable_at_the_end() -> None:
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    sink = Sink()
    replay([start, image0, image1, image2, image3[:100], end], sink)
    assert sink.losses == [(3, 3, "stream2_unreadable_message")]


def test_an_unknown_channel_refuses_the_run_and_every_frame_is_lost() -> None:
    class Seeing(Sink):  # how far the refused series got: its run continues after a restart past it
        def __init__(self) -> None:
            super().__init__()
            self.refused_seen: list[int] = []

        def refused_frame(self, frame: int) -> None:
            self.refused_seen.append(frame)

    sink = Seeing()
    reader = replay(_messages("stream2_bslz4_u16_2ch.bin"), sink, channel="threshold_9")
    assert sink.frames == {}
    assert sink.losses == [(0, 3, "run_refused")]
    assert reader.counters()["series_refused"] == 1
    assert sink.refused_seen == [0, 1, 2, 3]


def test_multipart_messages_are_dropped_and_counted() -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = Sink()
    reader = Stream2Source(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    start, image0, *_, end = _messages("stream2_bslz4_u16_2ch.bin")
    try:
        push.send(start)
        push.send_multipart([image0, b"extra"])
        push.send(end)
        assert sink.ended.wait(10)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    assert reader.counters()["messages_multipart_rejected"] == 1
    # frame 0 came, unreadable: the frames missing at the end after it are put down to it, as after
    # any unreadable message of the series
    assert sink.frames == {} and sink.losses == [(0, 3, "stream2_unreadable_message")]


def test_a_frame_sent_as_a_multipart_message_is_an_unreadable_loss_not_a_gap() -> None:
    """An outside sender's probe: image 1 sent as a two-part message was dropped (counted, logged) but
    recorded as ``frame_number_gap``, "frames never arrived": it arrived, in a form Stream V2 never has."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    sink = Sink()
    reader = Stream2Source(f"tcp://127.0.0.1:{port}", sink, context)
    reader.start()
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    try:
        push.send(start)
        push.send(image0)
        push.send_multipart([image1, b""])
        for message in (image2, image3, end):
            push.send(message)
        assert sink.ended.wait(10)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    assert sorted(sink.frames) == [(1, 0), (1, 2), (1, 3)]  # (series, frame)
    assert sink.losses == [(1, 1, "stream2_unreadable_message")]


# -- every frame has exactly one disposition, whatever the faults -------------------------------------
FAULTS = ("ok", "ok", "dropped", "truncated", "wrong_tag", "bad_block", "duplicated")


def _faulty_series(kinds: list[str]) -> list[bytes]:
    start, *_ = _messages("stream2_bslz4_u16_2ch.bin")
    fields = dict(cbor2.loads(start))
    fields["number_of_images"] = len(kinds)
    messages = [cbor2.dumps(fields)]
    template = dict(cbor2.loads(_messages("stream2_bslz4_u16_2ch.bin")[1]))
    dims, typed = template["data"]["threshold_1"].value
    algorithm, elem, chunk = typed.value.value
    for number, kind in enumerate(kinds):
        if kind == "dropped":
            continue
        body = bytearray(chunk)
        if kind == "bad_block":
            (length,) = np.frombuffer(chunk[12:16], ">u4")
            body[16 : 16 + int(length)] = b"\xff" * int(length)
        tag = 65 if kind == "wrong_tag" else 69
        image = {
            **template,
            "image_id": number,
            "data": {
                "threshold_1": cbor2.CBORTag(
                    40, [dims, cbor2.CBORTag(tag, cbor2.CBORTag(56500, [algorithm, elem, bytes(body)]))]
                )
            },
        }
        message = cbor2.dumps(image)
        if kind == "truncated":
            message = message[: len(message) // 3]
        messages.append(message)
        if kind == "duplicated":
            messages.append(message)
    messages.append(_messages("stream2_bslz4_u16_2ch.bin")[-1])
    return messages


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(FAULTS), min_size=1, max_size=12))
def test_every_frame_is_stored_or_lost_exactly_once(kinds: list[str]) -> None:
    sink = Sink()
    replay(_faulty_series(kinds), sink)
    stored = sink.published
    assert len(stored) == len(set(stored)), f"a frame published twice: {stored}"
    lost: dict[int, str] = {}
    for first, last, reason in sink.losses:
        for number in range(first, last + 1):
            assert number not in lost, f"frame {number} lost twice"
            lost[number] = reason
    assert sorted(stored + list(lost)) == list(range(len(kinds))), (kinds, stored, sink.losses)
    expected = {
        "ok": {"stored"},
        "duplicated": {"stored"},
        "truncated": {"stream2_unreadable_message"},
        "wrong_tag": {"stream2_unsupported_tag"},
        "bad_block": {"stream2_bad_chunk"},
        # a frame that never came cannot be told from an unreadable one next to it
        "dropped": {"frame_number_gap", "missing_at_series_end", "stream2_unreadable_message"},
    }
    for number, kind in enumerate(kinds):
        got = "stored" if number in stored else lost[number]
        assert got in expected[kind], (number, kind, got, kinds)


def test_images_without_their_start_are_adopted_and_stragglers_lost() -> None:
    """After a daemon restart mid-series the rest of the series is a resumed run, as for the JSON stream."""
    *_, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    sink = Sink()
    reader = replay(
        [image2, image3, end, image3], sink, counted="frames_after_series_end", channel="threshold_2"
    )
    reader_counters = reader.counters()
    (config,) = sink.configs
    assert config["resumed_after_restart"] is True and config["first_frame"] == 2
    assert config["shape"] == [41, 23] and config["type"] == "uint16"
    assert sink.published == [2, 3]
    np.testing.assert_array_equal(sink.frames[(1, 3)], capture.frame(7, 1, 3, (23, 41), "uint16"))
    assert reader_counters["series_adopted"] == 1
    # the copy of image 3 after the end: stored already, so counted, never also a loss
    assert sink.losses == []
    assert reader.counters()["frames_after_series_end"] == 1


def test_pass_through_publishes_each_checked_chunk_exactly_as_received() -> None:
    sink = Sink()
    reader = replay(_messages("stream2_bslz4_u16_2ch.bin"), sink, channel="threshold_2", pass_through=True)
    assert sorted(sink.chunks) == [0, 1, 2, 3]
    for number, chunk in sink.chunks.items():
        expected = capture.frame(7, 1, number, (23, 41), "uint16")
        assert chunk == capture.bslz4(expected, 256)  # byte for byte what the capture carried
        np.testing.assert_array_equal(sink.frames[(1, number)], expected)
    assert reader.counters()["frames_passed_through"] == 4 and sink.losses == []


def test_pass_through_check_sampled_or_full() -> None:
    """A damaged block the sample does not decompress (4 of 15 blocks) once passed "sampled" and was
    stored undecodable, with no record (an outside probe). Every block's LZ4 sequences are parsed now:
    both checks turn the image into a loss record before it is stored."""
    start, image0, *_, end = _messages("stream2_bslz4_u16_2ch.bin")
    pixels = capture.frame(7, 0, 0, (23, 41), "uint16")
    chunk = capture.bslz4(pixels, 64)  # 943 elements in 64-element blocks: 15 blocks
    _, _, blocks = bslz4_blocks(chunk, 2)
    assert len(blocks) == 15
    offset, length, _ = blocks[2]  # sampled blocks are 0, 5, 9 and 14
    bad = bytearray(chunk)
    bad[offset : offset + length] = b"\xff" * length
    fields = dict(cbor2.loads(image0))
    fields["data"] = {
        "threshold_1": cbor2.CBORTag(
            40, [[23, 41], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, bytes(bad)]))]
        )
    }
    sampled = Sink()
    replay([start, cbor2.dumps(fields), end], sampled, pass_through=True, check="sampled")
    assert sampled.published == [] and sampled.losses[0][:3] == (0, 0, "stream2_bad_chunk")
    assert sampled.losses[1:] == [(1, 3, "missing_at_series_end")]  # the series announced 4 images
    full = Sink()
    replay([start, cbor2.dumps(fields), end], full, pass_through=True, check="full")
    assert full.published == [] and full.losses[0][:3] == (0, 0, "stream2_bad_chunk")


def test_an_image_larger_than_a_ring_slot_is_a_loss_record() -> None:
    class SmallRing(Sink):
        def claim(self, nbytes: int) -> Any:
            if nbytes > 100:
                raise ValueError(f"frame of {nbytes} bytes does not fit a 100-byte slot")
            return super().claim(nbytes)

    sink = SmallRing()
    reader = replay(_messages("stream2_bslz4_u16_2ch.bin"), sink)
    assert sink.published == [] and sink.losses == [(n, n, "frame_too_large") for n in range(4)]
    assert reader.counters()["frames_too_large"] == 4


def test_an_image_of_another_series_invents_no_loss_in_the_open_one() -> None:
    """Stray images of series 999 (image_id 1 and 7) amid a whole series of 4: the open run keeps its
    account (4 stored, none lost, no gap up to 7); the strays are counted."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    strays = []
    for number in (1, 7):
        fields = dict(cbor2.loads(images[0]))
        fields["series_id"], fields["image_id"] = 999, number
        strays.append(cbor2.dumps(fields))
    sink = Sink()
    reader = replay([start, images[0], strays[0], *images[1:], strays[1], end], sink)
    assert sorted(n for _, n in sink.frames) == [0, 1, 2, 3] and sink.losses == []
    assert reader.counters()["images_wrong_series"] == 2
    assert reader.counters()["errors"] == {"wrong_series": 2}


@pytest.mark.parametrize("pass_through", [False, True])
def test_a_small_chunk_of_an_image_larger_than_a_slot_is_a_loss_record(pass_through: bool) -> None:
    """The slot must hold the image unpacked (the writer and the live view unpack it there): a chunk that
    fits but unpacks to more is frame_too_large, passed through or not, and the reader keeps going."""
    unpacked = 23 * 41 * 2

    class SmallRing(Sink):
        def claim(self, nbytes: int) -> Any:
            if nbytes >= unpacked:
                raise ValueError(f"frame of {nbytes} bytes does not fit a {unpacked - 1}-byte slot")
            return super().claim(nbytes)

    assert len(capture.bslz4(capture.frame(7, 1, 0, (23, 41), "uint16"), 256)) < unpacked
    sink = SmallRing()
    reader = replay(_messages("stream2_bslz4_u16_2ch.bin"), sink, pass_through=pass_through)
    assert sink.published == [] and sink.losses == [(n, n, "frame_too_large") for n in range(4)]
    assert reader.counters()["frames_too_large"] == 4


def test_a_readable_rejected_message_does_not_make_the_next_gap_unreadable() -> None:
    """An end of another series and a message of an unknown type decode fine: they were never images,
    so the gap after them (frame 1 missing) is a ``frame_number_gap``, not ``stream2_unreadable_message``."""
    start, image0, _image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    other_end = cbor2.dumps(cbor2.CBORTag(55799, {"type": "end", "series_id": 999}))
    unknown = cbor2.dumps(cbor2.CBORTag(55799, {"type": "hello"}))
    sink = Sink()
    replay([start, image0, other_end, unknown, image2, image3, end], sink, channel="threshold_1")
    assert sink.losses == [(1, 1, "frame_number_gap")]


def test_images_after_a_rejected_start_are_a_run_that_says_so() -> None:
    """A start the codec rejects (image size 0): its images are a run of their own naming the rejection,
    not a series "resumed after restart"."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    fields = cbor2.loads(start)
    fields = fields.value if isinstance(fields, cbor2.CBORTag) else fields
    broken = cbor2.dumps(cbor2.CBORTag(55799, {**fields, "image_size_x": 0}))
    sink = Sink()
    reader = replay([broken, *images, end], sink, channel="threshold_1")
    (config,) = sink.configs
    assert "resumed_after_restart" not in config and config["start_rejected"].startswith("bad_field")
    assert sink.published == [0, 1, 2, 3] and sink.losses == []
    assert reader.counters()["series_without_start"] == 1


def _retagged(message: bytes, **fields: Any) -> bytes:
    """``message`` with some top-level fields replaced (series_id, image_size_x, ...)."""
    decoded = cbor2.loads(message)
    decoded = decoded.value if isinstance(decoded, cbor2.CBORTag) else decoded
    return cbor2.dumps(cbor2.CBORTag(55799, {**decoded, **fields}))


def test_a_rejected_start_while_a_series_is_open_ends_it_when_the_new_series_images_come() -> None:
    """Series A is open when series B's start comes and is rejected (image size 0); B's images show the
    detector moved on: A ends `fail` with its missing frames lost, and B's images are a run of their
    own. None of B's frames is taken for A's (a loss of A's frame 2, say)."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    fields = cbor2.loads(start)
    series = int((fields.value if isinstance(fields, cbor2.CBORTag) else fields)["series_id"])
    other = series + 1
    b_start = _retagged(start, series_id=other, image_size_x=0)
    b_images = [_retagged(m, series_id=other) for m in images]
    sink = Sink()
    reader = replay(
        [start, *images[:2], b_start, *b_images, _retagged(end, series_id=other)],
        sink,
        ends=2,
        channel="threshold_1",
    )
    assert sink.ends == [(series, "fail"), (other, "success")]
    assert sink.published == [0, 1, 0, 1, 2, 3]
    assert sink.losses == [(2, 3, "series_restarted")]
    assert sink.configs[1]["start_rejected"].startswith("bad_field")
    assert reader.counters().get("images_wrong_series", 0) == 0
    assert reader.counters()["series_ended_by_rejected_start"] == 1


def test_an_end_with_no_series_open_is_counted_and_ends_nothing() -> None:
    """An outside sender's end with nothing open (a repeated end, one whose start never came) was taken
    silently: ``series_ended`` counted it, and after a series whose frames were missing at its end a
    second end recorded those frames lost a second time."""
    start, image0, _image1, _image2, _image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    sink = Sink()
    reader = replay([end, start, image0, end, end], sink, channel="threshold_2")
    counters = reader.counters()
    assert counters["ends_without_series"] == 2  # before the start, and the repeat after it
    assert counters["series_ended"] == 1 and len(sink.ends) == 1
    assert sink.losses == [(1, 3, "missing_at_series_end")]  # once, not twice
    # the last frame that came, and how many were announced (it read "series ended after 1", a count
    # taken for a frame number; an outside sender's probe)
    assert sink.details == ["the series ended after frame 0, of 4 announced"]


def test_a_start_after_its_own_first_image_continues_the_run_that_image_opened() -> None:
    """An outside sender sent image 0, then the start, images 1..3, the end: image 0 opened a run (as
    after a restart), the start a second one, and frame 0 was stored in the first and lost as a gap of
    the second. One run, every frame once."""
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    sink = Sink()
    reader = replay([image0, start, image1, image2, image3, end], sink, channel="threshold_2")
    assert len(sink.configs) == 1 and sink.published == [0, 1, 2, 3]
    assert sink.losses == [] and sink.ends == [(sink.ends[0][0], "success")]
    assert reader.counters()["starts_after_images"] == 1
    # the detector's uid of the series, which every image carries, is kept with the run (it was lost:
    # the run opened from image 0 had none, and the late start's metadata is not applied)
    assert sink.configs[0]["detector_run_uid"] == cbor2.loads(image0)["series_unique_id"]


def test_a_late_start_names_the_run_with_its_series_unique_id_when_the_images_gave_none() -> None:
    """An outside sender's image 0 without ``series_unique_id``, then the start: the start's uid was
    dropped (the JSON stream's late ``run_uid`` was kept), so ``edge where`` could not find the run by
    the detector's uid. It is kept as the run's ``detector_run_uid`` now."""
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    bare = dict(cbor2.loads(image0))
    del bare["series_unique_id"]
    sink = Sink()
    reader = replay([cbor2.dumps(bare), start, image1, image2, image3, end], sink, channel="threshold_2")
    assert reader.counters()["starts_after_images"] == 1 and len(sink.configs) == 1
    assert sink.named == [(cbor2.loads(start)["series_id"], cbor2.loads(start)["series_unique_id"])]


def test_the_end_of_another_series_is_counted_as_a_stray_end_not_an_image() -> None:
    """An outside sender's end of series 999 while another series was open: right in effect (it ended
    nothing), but counted in ``images_wrong_series``; ``receiver.ends_wrong_series``, as wire-formats
    names it, stayed absent."""
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    stray = dict(cbor2.loads(end))
    stray["series_id"] = 999
    sink = Sink()
    reader = replay(
        [start, image0, image1, cbor2.dumps(stray), image2, image3, end], sink, channel="threshold_2"
    )
    counters = reader.counters()
    assert counters["ends_wrong_series"] == 1 and counters.get("images_wrong_series", 0) == 0
    assert sink.published == [0, 1, 2, 3] and sink.ends == [(sink.ends[0][0], "success")]


@pytest.mark.parametrize("series_id", [-1, 2**63])
def test_an_image_whose_series_is_out_of_range_leaves_an_unreadable_gap(series_id: int) -> None:
    """A clean-room sender's probe: an image with a readable ``image_id`` but ``series_id`` -1 or 2**63
    became a plain ``frame_number_gap``. It is no frame of the open series (a later probe: a stray
    sender's image took the open series' frame number, and the real frame was dropped as its duplicate);
    the open series' frame that never came is a gap after an unreadable message."""
    start, image0, image1, *rest = _messages("stream2_bslz4_u16_2ch.bin")
    fields = dict(cbor2.loads(image1))
    fields["series_id"] = series_id
    sink = Sink()
    replay([start, image0, cbor2.dumps(fields), *rest], sink, channel="threshold_2")
    assert [loss for loss in sink.losses if loss[0] == 1] == [(1, 1, "stream2_unreadable_message")]


def test_a_truncated_start_makes_a_run_without_its_start_not_one_resumed_after_a_restart() -> None:
    """A start message cut short cannot even say it was a start: its images (from frame 0) are a run of
    their own that says so (``start_rejected``), numbered from 0, as after a start the codec rejected.
    Before, the run was marked ``resumed_after_restart`` from frame 0 and linked to no run: the daemon
    had not restarted. An image of a series seen first at a later frame is still taken for a restart."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    sink = Sink()
    reader = replay([start[:40], *images, end], sink)
    (config,) = sink.configs
    assert config.get("start_rejected") and not config.get("resumed_after_restart"), config
    assert "unreadable message" in config["start_rejected"]
    assert (
        sink.published == [0, 1, 2, 3] and sink.losses == [] and sink.ends == [(sink.ends[0][0], "success")]
    )
    assert reader.counters()["series_start_unreadable"] == 1
    sink = Sink()  # the same damage before a series met from its frame 1 on: a restart, as before
    replay([start[:40], *images[1:], end], sink)
    (config,) = sink.configs
    assert config.get("resumed_after_restart") and config["first_frame"] == 1, config


def _series(series: int, images: int) -> list[bytes]:
    return list(capture.series_messages(series, (8, 6), "uint16", ["one"], images, "bslz4", False, {}))


def test_a_truncated_start_while_a_series_is_open_lets_the_next_series_be_stored() -> None:
    """An outside sender's probe: series 1 open, then series 2's start cut short, then its images: every
    one was dropped as ``wrong_series`` (counted only). Series 1 now ends ``fail``, series 2 is stored."""
    first, second = _series(1, 5), _series(2, 4)
    sink = Sink()
    reader = replay([first[0], first[1], first[2], second[0][:30], *second[1:]], sink, ends=2)
    assert sink.ends[0] == (1, "fail") and (2, 4, "series_restarted") in sink.losses
    assert [c.get("start_rejected") is not None for c in sink.configs] == [False, True]
    assert sorted(frame for (run, frame) in sink.frames if run == 2) == [0, 1, 2, 3]
    assert reader.counters().get("images_wrong_series", 0) == 0


def test_a_start_repeated_while_its_series_is_open_is_a_copy() -> None:
    messages = _series(1, 4)
    sink = Sink()
    reader = replay([messages[0], messages[1], messages[0], *messages[2:]], sink)
    assert len(sink.configs) == 1 and sink.losses == [] and sink.ends == [(1, "success")]
    assert sorted(sink.published) == [0, 1, 2, 3] and reader.counters()["starts_repeated"] == 1


def test_a_start_that_is_no_map_is_taken_as_a_damaged_start_as_in_the_json_stream() -> None:
    """An outside sender's probe: JSON ``[1, 2, 3]`` where a start was due made a run without a start,
    CBOR ``[1, 2, 3]`` (or a map of no known type) one "resumed after a restart". Both say no start now."""
    for damaged in (cbor2.dumps([1, 2, 3]), cbor2.dumps({"type": "strat", "series_id": 7})):
        _start, *images, end = _series(7, 3)
        sink = Sink()
        replay([damaged, *images, end], sink)
        (config,) = sink.configs
        assert config.get("start_rejected") and not config.get("resumed_after_restart"), config
        assert sorted(sink.published) == [0, 1, 2] and sink.losses == []


def test_a_stray_of_an_ended_series_after_a_truncated_image_does_not_split_the_open_series() -> None:
    """An outside sender's probe (as for the JSON stream): series A ends; series B sends images 0-1, a
    truncated image 2, image 3, then a late copy of A's image 1, and its end. The truncated message let
    images of another series through (it may have been a start) and the stray took over: B ended
    ``fail``, A reopened. B had sent an image since, so the stray is only ``wrong_series``."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    fields = cbor2.loads(start)
    series = int((fields.value if isinstance(fields, cbor2.CBORTag) else fields)["series_id"])
    other = series + 1
    b_start, b_end = _retagged(start, series_id=other), _retagged(end, series_id=other)
    b_images = [_retagged(m, series_id=other) for m in images]
    truncated = b_images[2][: len(b_images[2]) // 2]
    sink = Sink()
    reader = replay(
        [start, *images, end, b_start, *b_images[:2], truncated, b_images[3], images[1], b_end],
        sink,
        ends=2,
        channel="threshold_1",
    )
    assert sink.ends == [(series, "success"), (other, "success")]
    assert len(sink.configs) == 2 and sink.published == [0, 1, 2, 3, 0, 1, 3]
    assert sink.losses == [(2, 2, "stream2_unreadable_message")]
    counters = reader.counters()
    assert counters["images_wrong_series"] == 1 and counters.get("series_ended_by_rejected_start", 0) == 0


def test_the_end_of_a_stray_series_after_a_damaged_message_does_not_end_the_open_one() -> None:
    """An outside sender's probe (as for the JSON stream): series A's image 0, a message that is not
    CBOR, image 1 (A went on: the damaged message was no start), a stray image of series B and B's end,
    then A's images 2-3 and its end. B's end ended A ``fail`` and A's last images opened a resumed run.
    It ends nothing now: counted as ``ends_wrong_series``."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    fields = cbor2.loads(start)
    series = int((fields.value if isinstance(fields, cbor2.CBORTag) else fields)["series_id"])
    other = series + 1
    b_image, b_end = _retagged(images[0], series_id=other), _retagged(end, series_id=other)
    sink = Sink()
    messages = [start, images[0], b"\xff\x00 not CBOR", images[1], b_image, b_end, *images[2:], end]
    reader = replay(messages, sink, channel="threshold_1", until=lambda s: len(s.published) == 4)
    assert sink.ends == [(series, "success")] and len(sink.configs) == 1
    assert sink.published == [0, 1, 2, 3] and sink.losses == []
    counters = reader.counters()
    assert counters["ends_wrong_series"] == 1 and counters["images_wrong_series"] == 1


class _Case(NamedTuple):
    messages: list[bytes]
    ids: list[int]
    lengths: list[int]
    plan: str

    def __repr__(self) -> str:  # (the messages' bytes would make a repr of 100 kB)
        return repr(self.plan)


@st.composite
def _whole_series_with_noise(draw: st.DrawFn) -> _Case:
    """Whole series (start, images, end; ids 1, 4, 7, ...) one after another, with noise anywhere:
    messages that are not CBOR, late copies of images of series that ended, late ends of them."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    lengths = draw(st.lists(st.integers(2, len(images)), min_size=2, max_size=3))
    ids = [1 + 3 * k for k in range(len(lengths))]
    messages: list[tuple[bytes, int | None]] = []  # (message, the series it ends)
    plan: list[str] = []
    for series, n in zip(ids, lengths, strict=True):
        tags = {"series_id": series, "series_unique_id": f"noise-{series}"}
        messages.append((_retagged(start, number_of_images=n, **tags), None))
        messages += [(_retagged(m, **tags), None) for m in images[:n]]
        messages.append((_retagged(end, **tags), series))
        plan += [f"S{series}", *(f"I{series}.{f}" for f in range(n)), f"E{series}"]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(messages)))
        ended = [series for _m, series in messages[:at] if series is not None]
        kind = draw(st.sampled_from(["garbled", "late image", "late end"] if ended else ["garbled"]))
        if kind == "garbled":
            noise, name = b"\xff\x00 not CBOR", "D"
        else:
            series = draw(st.sampled_from(ended))
            tags = {"series_id": series, "series_unique_id": f"noise-{series}"}
            frame = draw(st.integers(0, 1))
            noise = _retagged(end if kind == "late end" else images[frame], **tags)
            name = f"E{series}" if kind == "late end" else f"I{series}.{frame}"
        messages.insert(at, (noise, None))
        plan.insert(at, name)
    return _Case([m for m, _s in messages], ids, lengths, " ".join(plan))


@settings(max_examples=25, deadline=None)
@given(_whole_series_with_noise())
def test_noise_between_and_inside_whole_series_changes_no_series(case: _Case) -> None:
    """As for the JSON stream: none of the noise is a start or the open series' own end, so each series
    is one run that stores all its images once and ends ``success``, with no loss record."""
    messages, ids, lengths, _plan = case
    sink = Sink()
    replay(messages, sink, ends=len(ids), channel="threshold_1")
    assert sink.ends == [(series, "success") for series in ids], sink.ends
    assert sink.published == [f for n in lengths for f in range(n)], sink.published
    assert sink.losses == [] and len(sink.configs) == len(ids)


class _RunSink(Sink):
    """A sink that records no loss before a run has started (the ledger's loss would name no run)."""

    def __init__(self) -> None:
        super().__init__()
        self.outside: list[tuple[int, int, str]] = []

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        if not self.configs:
            self.outside.append((first, last, reason))
        super().lost(first, last, reason, detail)


def test_a_rejected_first_image_of_a_start_naming_no_dtype_is_a_loss_of_its_run() -> None:
    """An outside probe: a start naming no dtype, then image 0 with channels of two dtypes (the codec's
    ``bad_dtype``), then good images. The run opens at its first good image, so the rejected image's
    loss was recorded before any run (run uid NULL in the ledger): the run said "2 stored, 0 lost" of
    3, and ``success``. It is now held until the run opens, and recorded in it."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    fields = dict(cbor2.loads(start))
    del fields["image_dtype"]
    first = dict(cbor2.loads(images[0]))
    shape = list(first["data"]["threshold_2"].value[0])
    first["data"] = {
        **first["data"],
        "threshold_2": cbor2.CBORTag(40, [shape, cbor2.CBORTag(70, bytes(4 * shape[0] * shape[1]))]),
    }

    sink = _RunSink()
    replay([cbor2.dumps(fields), cbor2.dumps(first), *images[1:], end], sink)
    assert len(sink.configs) == 1 and sink.configs[0]["type"] == "uint16"
    assert sink.losses == [(0, 0, "stream2_bad_dtype")] and sink.outside == []
    assert sorted(sink.published) == [1, 2, 3] and sink.ends == [(7, "success")]


def test_a_series_naming_no_dtype_whose_every_image_is_rejected_still_accounts_them() -> None:
    """The same, with every image of mixed dtypes: the series ended with its run opened at the end (the
    dtype assumed), and its images' losses in that run (it said 0 stored, 0 lost, success)."""
    start, *images, end = _messages("stream2_bslz4_u16_2ch.bin")
    fields = dict(cbor2.loads(start))
    del fields["image_dtype"]
    mixed = []
    for message in images:
        image = dict(cbor2.loads(message))
        shape = list(image["data"]["threshold_2"].value[0])
        image["data"] = {
            **image["data"],
            "threshold_2": cbor2.CBORTag(40, [shape, cbor2.CBORTag(70, bytes(4 * shape[0] * shape[1]))]),
        }
        mixed.append(cbor2.dumps(image))
    sink = _RunSink()
    replay([cbor2.dumps(fields), *mixed, end], sink)
    assert len(sink.configs) == 1
    assert sorted(sink.losses) == [(n, n, "stream2_bad_dtype") for n in range(4)] and sink.outside == []
    assert sink.published == []


def _replay_in_steps(sink: Sink, steps: list[tuple[float, Any, Any]]) -> Stream2Source:
    """Each step ``(pause, messages, until)``: wait ``pause`` seconds, send its messages to a reader, wait
    until ``until(reader)`` holds; returns the stopped reader."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = Stream2Source(f"tcp://127.0.0.1:{port}", sink, context, channel="threshold_2")
    reader.start()
    try:
        for pause, messages, until in steps:
            threading.Event().wait(pause)
            for message in messages:
                push.send(message)
            for _ in range(100):
                if until(reader):
                    break
                threading.Event().wait(0.1)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    return reader


def test_images_of_the_last_series_long_after_its_end_are_a_new_series_that_reuses_its_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outside probe: a second receiver on the stream took a series' start, and this one, whose last
    series had the same number, dropped the frames it received as late copies of that run's, counted
    only (97 frames in no record). Long after that series ended, such images are a new series that uses
    the number again: a run of their own that says so; right after it, still stragglers."""
    from firmware_bridge import zmq_reader

    monkeypatch.setattr(zmq_reader, "STRAGGLER_SECONDS", 0.3)
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    sink = Sink()
    again = [_retagged(m, series_unique_id="another-series") for m in (image2, image3, end)]
    reader = _replay_in_steps(
        sink,
        [
            # a straggler right after the end
            (
                0.0,
                (start, image0, image1, image2, image3, end, image3),
                lambda r: sink.ends and r.counters().get("frames_after_series_end", 0),
            ),
            # beyond STRAGGLER_SECONDS: the number used again, its start taken elsewhere
            (0.5, again, lambda r: len(sink.ends) >= 2),
        ],
    )
    assert reader.counters()["frames_after_series_end"] == 1  # the copy right after the end
    assert reader.counters()["series_number_reused"] == 1
    assert len(sink.configs) == 2 and "used again" in sink.configs[1]["start_rejected"]
    assert sink.published == [0, 1, 2, 3, 2, 3]  # the new run's frames stored, not dropped
    assert (0, 1, "frame_number_gap") in sink.losses  # its frames below the first that came here


def test_an_ended_series_uid_tells_a_straggler_from_a_new_series_whatever_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outside probe: images of a series that had ended 6 s before, its series_unique_id theirs, were
    taken for a new series reusing the number (a run recording frames already stored as lost, storing
    them again). Stream V2 names the series: its own uid is a straggler however late; another uid is a
    new series however soon."""
    from firmware_bridge import zmq_reader

    monkeypatch.setattr(zmq_reader, "STRAGGLER_SECONDS", 0.3)
    start, image0, image1, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")
    decoded = cbor2.loads(start)
    uid = (decoded.value if isinstance(decoded, cbor2.CBORTag) else decoded)["series_unique_id"]
    sink = Sink()
    other = [_retagged(m, series_unique_id=f"{uid}-again") for m in (image0, image1, end)]
    reader = _replay_in_steps(
        sink,
        [
            (0.0, (start, image0, image1, image2, image3, end), lambda r: sink.ends),
            # beyond STRAGGLER_SECONDS: its own uid still a straggler
            (0.5, (image2,), lambda r: r.counters().get("frames_after_series_end", 0)),
            # at once, another uid: a new series of that number
            (0.0, other, lambda r: len(sink.ends) >= 2),
        ],
    )
    assert reader.counters()["frames_after_series_end"] == 1
    assert len(sink.configs) == 2 and "another series_unique_id" in sink.configs[1]["start_rejected"]
    assert sink.published == [0, 1, 2, 3, 0, 1]


def test_a_series_resumed_after_a_restart_keeps_its_starts_shape_whatever_its_first_image() -> None:
    """An outside probe: after a restart, the first image of the resumed series was damaged (32x32 of a
    64x64 series): the run took its shape, stored it, and every good image after it was lost as
    wrong_shape. The run keeps the shape the series' start gave the run the restart cut; the damaged
    image is the one lost, with its reason."""
    *_, image2, image3, end = _messages("stream2_bslz4_u16_2ch.bin")

    class Cut(Sink):
        def interrupted_shape(self, series: int) -> tuple[tuple[int, int], str]:
            return (23, 41), "uint16"

    fields = dict(cbor2.loads(image2))
    small = np.arange(100, dtype="<u2").tobytes()
    fields["data"] = {
        name: cbor2.CBORTag(40, [[10, 10], cbor2.CBORTag(69, small)])
        for name in ("threshold_1", "threshold_2")
    }
    sink = Cut()
    reader = replay([cbor2.dumps(fields), image3, end], sink, channel="threshold_2")
    (config,) = sink.configs
    assert config["resumed_after_restart"] is True and config["first_frame"] == 2
    assert config["shape"] == [41, 23] and config["type"] == "uint16"
    # the damaged image goes on as any image of another shape than its run's: the pipeline records it
    # lost (wrong_shape), never the run's frames after it
    assert sink.published == [2, 3] and sink.frames[(1, 2)].shape == (10, 10)
    np.testing.assert_array_equal(sink.frames[(1, 3)], capture.frame(7, 1, 3, (23, 41), "uint16"))
    assert reader.counters()["resumed_first_image_other_format"] == 1
