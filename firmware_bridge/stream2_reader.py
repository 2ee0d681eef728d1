"""ZeroMQ reader for DECTRIS Stream V2 (CBOR): one message per image, decoded into ring slots.

The same PULL socket, backpressure and loss accounting as :class:`ZmqStreamSource` (series bookkeeping,
frame-number gaps, ``max_frame_jump``, refusal, ``end_series``); only the message handling differs. Each
message is handed to :class:`~firmware_bridge.stream2_codec.Stream2Codec`. Of an image, the channel
``channel`` (default: the first the start message announces) is decoded, checked block by block, into
a ring slot and published; the start message's geometry, pixel mask, flatfield and unknown fields go
into the series config as JSON-able metadata (summaries and checksums, not the arrays). A frame that
does not decode is a loss record ``stream2_bad_chunk``; a message the codec rejects is
``stream2_<reason>``; a gap that follows messages too damaged to name their frame is
``stream2_unreadable_message``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import zmq

from firmware_bridge.hdf5_chunks import ChunkError, check_bslz4, warm_up_check
from firmware_bridge.source import FLAG_CHUNK, FLAG_COMPLETE, FrameHeader, FrameSink, SlotLike
from firmware_bridge.stream2_codec import (
    Stream2Array,
    Stream2Codec,
    Stream2End,
    Stream2Error,
    Stream2Image,
    Stream2Start,
)
from firmware_bridge.stream_codec import MAX_FRAMES_EXPECTED
from firmware_bridge.zmq_reader import (
    MAX_ERRORS_BEFORE_RUN,
    REORDER_FRAMES,
    REORDER_SECONDS,
    ZmqStreamSource,
    no_slot_detail,
)

log = logging.getLogger(__name__)

UNREADABLE = "stream2_unreadable_message"
ASSUMED_DTYPE = "uint16"  # only for a series that announced no dtype and ended before any image
DRAIN_MESSAGES = 8  # messages handled per poll of the socket when they are already queued
SAMPLE_BLOCKS = 4  # stream2_check "sampled": blocks decompressed per image (structure always walked)


def _array_summary(array: Stream2Array, count_masked: bool) -> dict[str, Any]:
    summary = array.summary()
    try:
        pixels = array.pixels()
        if count_masked:
            summary["masked_pixels"] = int(np.count_nonzero(pixels))
    except ChunkError as error:
        summary["undecodable"] = str(error)[:120]
    return summary


def series_config(start: Stream2Start, dtype: str, channel: str, assumed: bool = False) -> dict[str, Any]:
    """The JSON-able description of a Stream V2 series handed to ``FrameSink.series_start``."""
    table = start.countrate_correction
    stream2: dict[str, Any] = {
        "series_id": start.series,
        "series_unique_id": start.series_unique_id,
        "channels": list(start.channels),
        "channel": channel,
        "geometry": start.geometry,
        "user_data": start.user_data,
        "metadata": start.metadata,
        "pixel_mask": {k: _array_summary(v, True) for k, v in start.pixel_mask.items()},
        "flatfield": {k: _array_summary(v, False) for k, v in start.flatfield.items()},
        "countrate_correction": None
        if table is None
        else {"entries": int(table.size), "dtype": str(table.dtype), "max": int(table.max(initial=0))},
    }
    if assumed:
        stream2["dtype_assumed"] = True
    frames = start.number_of_images
    return {
        "shape": [start.shape[1], start.shape[0]],  # [w, h], as the JSON stream's header
        "type": dtype,
        "run_uid": start.series_unique_id or None,
        "frames_expected": frames if frames is not None and frames <= MAX_FRAMES_EXPECTED else None,
        "detector": start.metadata.get("detector_description") or "DECTRIS Stream V2",
        "format": "stream2",
        "stream2": stream2,
    }


class Stream2Source(ZmqStreamSource):
    """A :class:`~firmware_bridge.source.FrameSource` for DECTRIS Stream V2 over ZeroMQ."""

    unreadable_reason = UNREADABLE

    def __init__(
        self,
        endpoint: str,
        sink: FrameSink,
        context: zmq.Context[Any],
        rcvhwm: int = 2,
        rcvbuf: int = 4 << 20,
        max_frame_jump: int | None = None,
        channel: str = "",
        pass_through: bool = False,
        check: str = "sampled",
        silent_alarm_seconds: float = 60.0,
        max_message_bytes: int = 0,
        reorder_frames: int = REORDER_FRAMES,
        reorder_seconds: float = REORDER_SECONDS,
    ) -> None:
        super().__init__(
            endpoint,
            sink,
            context,
            rcvhwm,
            rcvbuf,
            max_frame_jump=max_frame_jump,
            silent_alarm_seconds=silent_alarm_seconds,
            max_message_bytes=max_message_bytes,
            reorder_frames=reorder_frames,
            reorder_seconds=reorder_seconds,
        )
        if check not in ("sampled", "full"):
            raise ValueError(f"check must be 'sampled' or 'full', got {check!r}")
        # a bslz4 image of the run's shape and dtype is published as received (FLAG_CHUNK) after a
        # bounded-cost check that it decodes; otherwise (and for lz4 or plain images) as pixels
        self.pass_through = pass_through
        self.check = check
        if pass_through:
            warm_up_check()  # the compiled block walk is loaded now, not on the first image
        self.stream2 = Stream2Codec()  # the inherited ``codec`` (stream v1) stays unused
        self.channel = channel  # '' = the first channel the start message announces
        self._channel: str | None = None
        self._pending: Stream2Start | None = None  # a start whose dtype the first image will tell
        # images of that series the codec rejected before its run opened (its first, of channels of two
        # dtypes): recorded in the run once it opens (they went to no run, an outside probe's run of
        # 3 frames "2 stored, 0 lost, success")
        self._rejected_pending: list[tuple[int, str, str]] = []

    def counters(self) -> dict[str, Any]:
        counters = super().counters()
        counters["codec"] = {k: int(v) for k, v in self.stream2.counters.items()}
        counters["errors"] = {k: int(v) for k, v in self.stream2.errors.items()}
        return {**counters, "format": "stream2", "channel": self._channel}

    # -- the loop (socket handling inherited) ----------------------------------------------------------
    def _receive_message(self, sock: zmq.Socket[Any]) -> None:
        """Handle the message the loop polled for, then those already queued behind it (at most
        DRAIN_MESSAGES, without polling again: a poll per message costs a system call and a GIL hand-off)."""
        for count in range(DRAIN_MESSAGES):
            try:
                message = sock.recv(zmq.NOBLOCK if count else 0, copy=False)
            except zmq.Again:
                return
            self.stats["messages"] += 1
            if message.more:  # Stream V2 never sends multipart messages: drop it whole, counted
                while sock.rcvmore:
                    sock.recv(copy=False)
                self.stats["messages_multipart_rejected"] += 1
                self._warn_multipart()
                if self._series is not None:  # it may have been an image: a gap after it is put down to it
                    self._unreadable += 1  # (it read "frames never arrived": they came, unreadable)
                continue
            for event in self.stream2.feed(message.buffer):
                self._handle2(event)
            if self._stop.is_set():
                return

    def _handle2(self, event: Stream2Start | Stream2Image | Stream2End | Stream2Error) -> None:
        if isinstance(event, Stream2Image):
            self._image(event)
        elif isinstance(event, Stream2Error):
            self.stats["messages_rejected"] += 1
            log.warning("rejected Stream V2 message: %s %s", event.reason, event.detail)
            if event.kind == "start":
                self._start_was_rejected(f"{event.reason}: {event.detail}", event.series)
            elif event.kind == "end":
                self._rejected_series_ended()
            if event.reason == "wrong_series" and event.kind == "end":
                # the end of another series than the open one (the codec passes an end that may close it,
                # after a rejected start or a damaged message): it ends nothing; counted as the JSON
                # stream's reader counts it (it was counted as an image, an outside sender's probe)
                self.stats["ends_wrong_series"] += 1
            elif event.reason == "wrong_series":
                # an image of a series that is not the open one: not a frame of this run, so neither its
                # loss nor a gap before it (its number counts in another series); counted and logged
                self.stats["images_wrong_series"] += 1
            elif event.frame is None:
                # a message that may have been an image (it did not decode, or an image not naming its
                # frame): the next gap is put down to it; a readable start, end or other message is not
                if self._series is not None and (not event.readable or event.kind == "image"):
                    self._unreadable += 1
                if event.kind is None:  # a start, perhaps, as in the JSON stream (`_adopt`, `_leave_for`)
                    self._unreadable_between += 1
            else:
                self._image_rejected(event.series, event.frame, f"stream2_{event.reason}", event.detail)
        elif isinstance(event, Stream2Start):
            self._flush_errors_before_run()
            self._start(event)
        else:
            if self._deferred_end(event.series):
                return
            self._deferred_start(event.series, 0)  # (a held start of another series: opened, ended)
            self._rejected_series_ended()
            self._flush_errors_before_run()
            if self._stray_end(event.series):
                return
            if self._series is not None and event.series != self._series:
                # the end of a series whose start was rejected or unreadable (`_stray_end`): the open
                # series' own end never came
                self._end_series(
                    self._missing("series_restarted"),
                    exit_status="fail",
                    why=f"the end of series {event.series} came while it was open: its own end never came",
                )
            else:
                self._end_series(self._missing("missing_at_series_end"))

    def _start(self, start: Stream2Start) -> None:
        expected = series_config(start, start.dtype or ASSUMED_DTYPE, "")["frames_expected"]
        key = (
            start.series,
            start.series_unique_id,
            start.shape,
            start.dtype,
            start.channels,
            start.number_of_images,
            repr(start.metadata),
        )
        if self._repeated_start(key, partial(self._take_start, start, key)):
            return
        if self._late_start(start.series, expected, start.series_unique_id or None):
            return
        if self._start_after_restart(
            start.series, partial(self._take_start, start, key), start.series_unique_id or None
        ):
            return
        self._take_start(start, key)

    def _take_start(self, start: Stream2Start, key: Any) -> None:
        """A series start taken: the open series, if any, ends ``fail`` (its end never came), and the new
        one opens its run (at its first image when the start names no dtype)."""
        config = series_config(start, start.dtype or ASSUMED_DTYPE, "")
        self._begin_series(start.series, key, config["frames_expected"])
        self._open_uid = start.series_unique_id or None  # (`_adopt`: its stragglers are told by it)
        unusable = start.metadata.get("number_of_images")  # set by the codec when not an integer >= 0
        if unusable is not None or (start.number_of_images is not None and self._frames_expected is None):
            self.stats["frames_expected_ignored"] += 1
            log.warning(
                "series %d announces number_of_images=%s, not an integer in 0..%d: its length is taken "
                "as unknown",
                start.series,
                unusable if unusable is not None else start.number_of_images,
                MAX_FRAMES_EXPECTED,
            )
        if start.dtype is None:
            self._pending = start
            return
        self._open(start, start.dtype)

    def _open(self, start: Stream2Start, dtype: str, assumed: bool = False) -> None:
        self._pending = None
        wanted = self.channel or start.channels[0]
        self._channel = wanted
        config = series_config(start, dtype, wanted, assumed)
        for note in start.metadata.get("arrays_left_out") or ():
            log.warning("series %d: start message's %s: left out", start.series, note)
        mask = start.pixel_mask.get(wanted)
        pixel_mask = None
        if mask is not None:
            try:
                pixel_mask = mask.pixels()  # nonzero = bad (DECTRIS); the reduction combines it
            except ChunkError as error:
                log.error("series %d: the pixel mask of %r does not decode (%s)", start.series, wanted, error)
        if pixel_mask is None:
            self._refused = self.sink.series_start(start.series, config)
        else:
            self._refused = self.sink.series_start(start.series, config, pixel_mask=pixel_mask)
        if self._refused is None and wanted not in start.channels:
            self._refused = f"stream.channel {wanted!r} is not among {list(start.channels)}"
        self._series_refused(start.series)
        held, self._rejected_pending = self._rejected_pending, []
        for frame, reason, detail in held:
            if self._note_rejected(frame):
                self.sink.lost(frame, frame, reason, detail)

    def _image_rejected(self, series: int | None, frame: int, reason: str, detail: str) -> None:
        if self._pending is not None and series is not None and series == self._series:
            if len(self._rejected_pending) < MAX_ERRORS_BEFORE_RUN:
                self._rejected_pending.append((frame, reason, detail))
                return
            self._open(self._pending, ASSUMED_DTYPE, assumed=True)  # (that many: the run opens now)
        super()._image_rejected(series, frame, reason, detail)

    def _end_series(self, reason: str, exit_status: str = "success", why: str = "") -> None:
        if self._pending is not None:  # announced no dtype and no image told it: the run is still recorded
            self._open(self._pending, ASSUMED_DTYPE, assumed=True)
        super()._end_series(reason, exit_status, why)

    def _image(self, image: Stream2Image) -> None:
        self._rearmed(image.series, image.frame)
        self._deferred_start(image.series, image.frame)
        if not self._leave_for(image.series) or self._older_series(image.series, image.frame):
            return  # a stray of another series: counted only
        if self._series is None:  # no start seen (the daemon restarted mid-series): as the JSON reader
            name = self.channel or next(iter(image.channels))
            chosen = image.channels.get(name) or next(iter(image.channels.values()))
            self._channel = name
            if not self._adopt(image.series, image.frame, chosen.shape, chosen.dtype, image.series_unique_id):
                return  # out of range: dropped and counted
        if self._pending is not None:
            first = image.channels.get(self.channel or self._pending.channels[0])
            dtype = first.dtype if first is not None else next(iter(image.channels.values())).dtype
            self._open(self._pending, dtype)
        if self._refused is not None:
            self._frame_refused(image.frame)
            return
        if not self._note_frame(image.frame):
            return
        self._beyond_expected(image.frame)
        array = image.channels.get(self._channel or "")
        if array is None:
            self.stats["frames_channel_missing"] += 1
            self.sink.lost(image.frame, image.frame, "stream2_channel_missing", f"no {self._channel!r}")
            return
        if self.pass_through and array.compression == "bslz4" and len(array.data) <= array.nbytes:
            self._publish_chunk(image, array)
            return
        try:
            pixels = array.pixels()
        except ChunkError as error:
            self.stats["frames_bad_chunk"] += 1
            self.sink.lost(image.frame, image.frame, "stream2_bad_chunk", str(error)[:160])
            return
        slot = self._claim(image.frame, pixels.nbytes)
        if slot is None:
            return
        np.frombuffer(slot.buffer, dtype=np.uint8, count=pixels.nbytes)[:] = pixels.view(np.uint8).ravel()
        header = FrameHeader(
            frame=image.frame,
            height=array.shape[0],
            width=array.shape[1],
            dtype=array.dtype,
            timestamp_ns=image.stop_time_ns,
            flags=FLAG_COMPLETE,
        )
        self.sink.publish(slot, header)
        self.stats["frames_received"] += 1
        self.stats["bytes_received"] += len(array.data)

    def _claim(self, frame: int, nbytes: int) -> SlotLike | None:
        """A ring slot for ``frame``, or None with the loss recorded (ring full, stopping, too large)."""
        try:
            slot = self.sink.claim(nbytes)
        except ValueError as error:  # larger than a ring slot: the detector sends more than configured
            self.stats["frames_too_large"] += 1
            self.sink.lost(frame, frame, "frame_too_large", str(error)[:160])
            return None
        if slot is None:
            reason = "shutdown" if self._stop.is_set() else "ring_full"
            self.stats[f"frames_dropped_{reason}"] += 1
            self.sink.lost(frame, frame, reason, no_slot_detail(reason))
        return slot

    def _publish_chunk(self, image: Stream2Image, array: Stream2Array) -> None:
        """Hand the chunk on exactly as received (no decompression), once a bounded-cost check of the
        copy in the ring slot says it decodes; a chunk that does not is abandoned and a loss record.

        The check reads the slot, not the message: the copy has just brought the chunk into the cache,
        so walking its block sizes (one dependent 4-byte read per block) costs about half the walk over
        the cold message (~0.04 against ~0.08 ms per 1024^2 frame), and what is checked is exactly what
        the writer stores."""
        nbytes = len(array.data)
        # a slot that holds the frame unpacked (the writer and the live view unpack it there), not just
        # the chunk: a small chunk of a frame larger than a slot is frame_too_large
        unpacked = int(array.shape[0]) * int(array.shape[1]) * np.dtype(array.dtype).itemsize
        slot = self._claim(image.frame, max(nbytes, unpacked))
        if slot is None:
            return
        stored = slot.buffer[:nbytes]
        stored[:] = array.data
        try:
            check_bslz4(stored, array.elem_size, None if self.check == "full" else SAMPLE_BLOCKS)
        except ChunkError as error:
            self.sink.abandon(slot)
            self.stats["frames_bad_chunk"] += 1
            self.sink.lost(image.frame, image.frame, "stream2_bad_chunk", str(error)[:160])
            return
        header = FrameHeader(
            frame=image.frame,
            height=array.shape[0],
            width=array.shape[1],
            dtype=array.dtype,
            timestamp_ns=image.stop_time_ns,
            flags=FLAG_COMPLETE | FLAG_CHUNK,
            nbytes=nbytes,
        )
        self.sink.publish(slot, header)
        self.stats["frames_received"] += 1
        self.stats["frames_passed_through"] += 1
        self.stats["bytes_received"] += nbytes
