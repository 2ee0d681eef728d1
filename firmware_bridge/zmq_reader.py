"""ZeroMQ frame-stream reader: pulls DECTRIS-style messages and receives pixels straight into ring slots.

The socket is a PULL connected to the detector's PUSH. Raw images are received with ``recv_into`` into
a slot the sink hands out, so the pixels are copied once, by the kernel. When the sink blocks (ring
full, ``block`` policy) the reader stops reading, ZeroMQ's queues fill and the detector's PUSH blocks:
that is the backpressure. Every frame that cannot be delivered is reported to the sink with a reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from firmware_bridge.hdf5_chunks import decode_bslz4
from firmware_bridge.source import (
    FLAG_COMPLETE,
    READER_JOIN_SECONDS,
    Checkpoint,
    FrameHeader,
    FrameSink,
    SlotLike,
    Spawner,
    detector_config,
    plain_spawn,
)
from firmware_bridge.stream_codec import (
    MAX_COUNT,
    MAX_FRAMES_EXPECTED,
    ImageMessage,
    SeriesEnd,
    SeriesStart,
    StreamCodec,
    StreamError,
)

log = logging.getLogger(__name__)

MONITOR_SECONDS = 0.5  # how often the reader looks at its connection's events
DROP_REPORT_SECONDS = 2.0  # a drop during a series is reported once the series outlives it this long
#: at a clean stop, how long the reader goes on reading the messages already queued on its socket
DRAIN_SECONDS = 0.5  # (not counting the time a frame waits for a ring slot: `_drain`)
DRAIN_GAP_MS = 20  # ... until nothing more comes for this long
GAPS_REMEMBERED = 64  # a series' latest gaps a late frame is looked for in
ENDED_SERIES_REMEMBERED = 16  # series ended here whose images are stragglers, never a new series
#: an image of the series that ended last, this long after its end, is no straggler but a new series that
#: uses the number again (its start never came here): a run of its own, opened from its images
STRAGGLER_SECONDS = 5.0
#: a start of a series opened from its images is late (its images came first) only when the run's first
#: image was among the series' first ones: a run opened at frame 3,000,000 (a restart mid-series, or a
#: stray) is not that series' beginning, and its start is the detector's next series (an outside sender:
#: a stray image far ahead, then a valid start, made one run of both with the start's uid lost and
#: 3 million frames recorded lost)
LATE_START_FRAMES = 64  # (a run opened at this frame or beyond: the start is the next series)
# A gap in the frame numbers is held this long before its frames are recorded lost, so that a frame
# overtaken by later ones (a sender with several threads or sockets) is stored when it comes: until
# REORDER_FRAMES newer frames have arrived or REORDER_SECONDS have passed, whichever is first (the
# defaults of stream.reorder_frames and stream.reorder_seconds), and at most HELD_GAPS gaps at once (the
# oldest is recorded first). The series' end records every held gap.
REORDER_FRAMES = 256
REORDER_SECONDS = 0.5
HELD_GAPS = 64
#: images rejected after a rejected series start, before a run is open, held for that run (beyond:
#: each recorded at once, outside any run)
MAX_ERRORS_BEFORE_RUN = 4096
#: multipart messages rejected by a single-part format (Stream V2) are logged the first time, then every
#: this many: a sender of the other format sends nothing else, and a line each would flood the log
MULTIPART_LOG_EVERY = 100


class _HeldGap:
    """Frames ``first..last`` missing when frame ``newest`` came at monotonic time ``at``."""

    __slots__ = ("at", "detail", "first", "last", "newest", "reason")

    def __init__(self, first: int, last: int, reason: str, detail: str, newest: int, at: float) -> None:
        self.first, self.last, self.reason, self.detail, self.newest, self.at = (
            first,
            last,
            reason,
            detail,
            newest,
            at,
        )

    def without(self, frame: int) -> list[_HeldGap]:
        """What stays missing once ``frame`` (inside) has come: up to two gaps."""
        pieces = ((self.first, frame - 1), (frame + 1, self.last))
        return [_HeldGap(a, b, self.reason, self.detail, self.newest, self.at) for a, b in pieces if a <= b]


def no_slot_detail(reason: str) -> str:
    """A frame's loss detail when the ring gave it no slot: ``ring_full`` (count-and-drop) or
    ``shutdown`` (the daemon stopping). It read "ring policy shutdown" under ring.policy block (an
    outside probe)."""
    if reason == "shutdown":
        return "the daemon was stopping and no ring slot came free in time"
    return "the frame ring was full (ring.policy count-and-drop drops a frame then)"


class ZmqStreamSource:
    """A :class:`~firmware_bridge.source.FrameSource` for the ZeroMQ frame stream."""

    #: the loss reason of a gap that follows messages too damaged to name their frame (which may have
    #: been its images), and of the frames missing at the end of a series in which such messages came
    unreadable_reason = "stream_unreadable_message"

    def __init__(
        self,
        endpoint: str,
        sink: FrameSink,
        context: zmq.Context,
        rcvhwm: int = 2,
        rcvbuf: int = 4 << 20,
        max_frame_jump: int | None = None,
        silent_alarm_seconds: float = 60.0,
        max_message_bytes: int = 0,
        reorder_frames: int = REORDER_FRAMES,
        reorder_seconds: float = REORDER_SECONDS,
    ) -> None:
        if max_frame_jump is not None and max_frame_jump < 1:
            raise ValueError(f"max_frame_jump must be >= 1, got {max_frame_jump}")
        if reorder_frames < 0 or not reorder_seconds >= 0:
            raise ValueError(f"reorder window must be >= 0: {reorder_frames} frames, {reorder_seconds} s")
        self.endpoint = endpoint
        # an image more than this beyond the newest accepted frame of its series (0 before the first)
        # is rejected as ``frame_number_out_of_range`` and never becomes a gap (None: unbounded)
        self.max_frame_jump = max_frame_jump
        self.sink = sink
        self.context = context
        self.rcvhwm = rcvhwm
        self.rcvbuf = rcvbuf  # bytes of kernel receive buffer; 0 leaves it to the OS (autotuning)
        # ZeroMQ's MAXMSGSIZE: a message part larger than this is never buffered; libzmq drops the
        # connection instead (counted here as ``connections_dropped``; the frames in flight become a gap).
        # 0 = no limit. Without it a hostile multi-GB part is allocated whole before we see it.
        self.max_message_bytes = int(max_message_bytes)
        self.codec = StreamCodec()
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._series: int | None = None
        self._next_frame = 0
        self._newest: int | None = None  # newest frame accepted in the open series
        # the open series' latest gaps recorded lost (first, last): a frame arriving in one is late
        self._gaps: deque[tuple[int, int]] = deque(maxlen=GAPS_REMEMBERED)
        # gaps not yet recorded, oldest first: a frame arriving in one is stored (see REORDER_FRAMES)
        self._held: list[_HeldGap] = []
        self.reorder_frames, self.reorder_seconds = int(reorder_frames), float(reorder_seconds)
        self._frames_expected: int | None = None
        self._end_request: str | None = None
        self._refused: str | None = None
        self._ended_series: int | None = None  # the last series that ended here (its stragglers are lost)
        self._ended_accounted = 0  # the frames below this number of that series are in its run's account
        self._ended_at = 0.0  # when it ended (monotonic)
        # the detector's uid of the open series and of the one that ended last, when its messages carry
        # one (Stream V2's series_unique_id): an image of the ended series' number and uid is a straggler
        # however late, one of its number and another uid a new series however soon
        self._open_uid: str | None = None
        self._ended_uid: str | None = None
        self._ended_ids: deque[int] = deque(maxlen=ENDED_SERIES_REMEMBERED)  # the latest series ended here
        self._adopted: int | None = None  # the open series, when it was opened from its images (`_adopt`)
        self._adopted_first = 0  # the first frame of that run
        self._interrupted_seen: dict[int, bool] = {}  # series -> a run of it was cut by a restart
        # why the last series start was rejected (or may have been lost), until a start is accepted: the
        # images that follow it are a run of their own, never taken for a series cut by a daemon restart
        self._start_rejected: str | None = None
        self._start_rejected_series: int | None = None  # the series that start named, if it named one
        # messages too damaged to say what they were since the last start or end: a series' first image
        # after one (its frame 0) opens a run without a start, as after a rejected start (the damaged
        # message was its start: before, the run was taken for one resumed after a restart)
        self._unreadable_between = 0
        # messages in the open series too damaged to name their frame (perhaps its images): the next gap,
        # or the frames missing at its end, are put down to them (``unreadable_reason``)
        self._unreadable = 0
        # the open series' start as it came (its series and every field): the same start again, while the
        # series is open, is a copy of it (counted, ignored), not a new series that ends it
        self._start_key: Any = None
        # images rejected while no series was open and no start was rejected (a restart mid-series):
        # (series, frame) -> (reason, detail), for the resumed run their series' next good image opens
        self._rejected_unopened: dict[tuple[int, int], tuple[str, str]] = {}
        # images rejected after a rejected start, before a run was open to hold them: frame -> (reason,
        # detail), recorded in the run the next good image opens (or outside any run if none does)
        self._errors_before_run: dict[tuple[int | None, int], tuple[str, str]] = {}  # (series, frame) ->
        # a series open with nothing heard for this long is reported silent (``counters``): a detector
        # that stopped without ending its series leaves the run open until the next series starts
        self.silent_alarm_seconds = float(silent_alarm_seconds)
        # monotonic time of the last message, moved on to when it has been handed over: a message held
        # by backpressure (a full ring; the store full of unverified data) is the appliance's wait, not
        # the detector's silence, and none is counted while one is being handed over (``_handing``)
        self._heard_at: float | None = None
        self._handing = False
        # (series, when) the connection last dropped while a series was open
        self._dropped_in_series: tuple[int, float] | None = None
        self._drop_counted = True  # connections_dropped_in_series counts each such drop once
        # a drop during the open series not yet logged (its ``connections_dropped`` count): logged as the
        # sender going away at the series' end, or warned of once the series outlives it
        self._drop_news: int | None = None
        # a drop during the open series that no gap has been put down to yet: the next gap's detail says so
        self._drop_unexplained = False
        # a drop seen while the old connection's messages may still be queued here: it explains a gap only
        # once they are read (nothing more to read), so that a gap among them, from before the drop, is not
        # put down to it (an outside probe: a sender that dropped a frame, sent its end and went away)
        self._drop_pending = False
        self._dropped_at: float | None = None  # a drop no event followed yet (see _connection_events)
        # the open series' start came again, identical, after the connection dropped: a sender that re-armed
        # (its next image goes back to a frame the run has) or one that repeats its start on a new
        # connection (it goes on): the start taken as a new series, called by the next image (`_rearmed`)
        self._restart_pending: Callable[[], None] | None = None
        # a start of a series a restart cut, held until its first image (`_start_after_restart`)
        self._start_deferred: tuple[int, Callable[[], None]] | None = None
        self._seen_a_series = False  # a series opened (or held) since this reader started
        self._multipart_seen = 0  # messages_multipart_rejected at the last look (`_warn_multipart`)

    @property
    def series_open(self) -> bool:
        """True between a series header and its end."""
        return self._series is not None

    def end_series(self, reason: str) -> None:
        """Ask the reader thread to end the open series (the detector vanished); the run fails.

        Frames still missing are recorded as lost with ``reason``. Safe to call from any thread.
        """
        self._end_request = reason

    def start(self, spawn: Spawner = plain_spawn) -> None:
        self._thread = spawn("reader", self._run)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # (a frame in hand may wait for a ring slot while the pipeline drains: FrameRing.stop's grace)
            self._thread.join(timeout=READER_JOIN_SECONDS)
            if not self._thread.is_alive() and self._series is not None:
                # the reader died (restarts exhausted) inside a series: what never came is lost
                self._end_series("receiver_stopped", exit_status="abort")

    def counters(self) -> dict[str, Any]:
        heard, series = self._heard_at, self._series
        silent = None if heard is None or series is None else round(time.monotonic() - heard, 1)
        if silent is not None and self._handing:
            silent = 0.0
        return {
            "endpoint": self.endpoint,
            **{k: int(v) for k, v in self.stats.items()},
            "codec": {k: int(v) for k, v in self.codec.counters.items()},
            "errors": {k: int(v) for k, v in self.codec.errors.items()},
            "series": series,
            "seconds_silent": silent,  # since the last message, while a series is open (else None)
            # the open series, when the connection dropped during it (frames in flight became a gap) and
            # the series is still open DROP_REPORT_SECONDS later: its end may have been queued before the
            # drop (a detector that ends its series and goes away is no fault)
            "dropped_in_series": self._series_dropped(series),
            "silent_alarm_seconds": self.silent_alarm_seconds,
        }

    def _count_drop_in_series(self, now: float) -> None:
        """Count a drop during the open series once that series has outlived it by DROP_REPORT_SECONDS
        (when it is reported): frames were in flight. A detector that ends its series and goes away at
        once drops the connection with the end still queued here: no drop during a series."""
        if not self._drop_counted and self._series_dropped(self._series, now) is not None:
            self.stats["connections_dropped_in_series"] += 1
            self._drop_counted = True
            count = self.stats["connections_dropped_in_series"]
            self._drop_news = None
            if count == 1 or count % 100 == 0:
                limit = self.max_message_bytes
                log.warning(
                    "the stream connection to %s dropped during series %s (%d such drops so far; logged"
                    " the first, then every 100th): frames in flight became a gap; the detector went away%s",
                    self.endpoint,
                    self._series,
                    count,
                    f", or sent a message part over stream.max_message_bytes ({limit} bytes)"
                    if limit
                    else "",
                )

    def _series_dropped(self, series: int | None, now: float | None = None) -> int | None:
        dropped = self._dropped_in_series
        if dropped is None or series is None or dropped[0] != series:
            return None
        elapsed = (time.monotonic() if now is None else now) - dropped[1]
        return series if elapsed >= DROP_REPORT_SECONDS else None

    # -- the loop ---------------------------------------------------------------------------------------
    def _run(self, checkpoint: Checkpoint) -> None:
        sock = self.context.socket(zmq.PULL)
        sock.rcvhwm = self.rcvhwm
        if self.rcvbuf:
            sock.rcvbuf = self.rcvbuf
        sock.linger = 0
        if self.max_message_bytes:
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        # the connection's drops (the detector went away, or sent a part over MAXMSGSIZE), looked at
        # every MONITOR_SECONDS: libzmq reconnects by itself after the first, so without this they
        # would go unseen, and never after the second (see ``_connection_events``)
        monitor = sock.get_monitor_socket()
        monitor_due = 0.0
        self._dropped_at = None
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                checkpoint()
                now = time.monotonic()
                if now >= monitor_due:
                    monitor_due = now + MONITOR_SECONDS
                    self._connection_events(sock, monitor, now)
                if sock.poll(100):
                    self._heard_at = time.monotonic()
                    if monitor.get(zmq.EVENTS) & zmq.POLLIN:
                        # a drop before these messages came: counted now, so that it is never put down
                        # to a series these messages start (a detector that ended its series, went away
                        # and came back with the next one, within one look)
                        self._connection_events(sock, monitor, self._heard_at)
                    self._handing = True
                    try:
                        self._receive_message(sock)
                    finally:
                        self._handing = False
                        self._heard_at = time.monotonic()
                else:
                    if self._drop_pending:  # the old connection's queue is read: later gaps may be its
                        self._drop_pending, self._drop_unexplained = False, True
                    if self._held:  # nothing came: the held gaps' time runs out all the same
                        self._release_gaps(time.monotonic())
                    elif self._end_request is not None:
                        reason, self._end_request = self._end_request, None
                        if self._series is not None:
                            self._end_series(
                                reason, exit_status="fail", why=f"the appliance ended it ({reason})"
                            )
            self._drain(sock)
        except Exception:  # a bug, not bad input: counted, and raised to the spawner (which restarts us)
            self.stats["reader_crashes"] += 1
            raise
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            if self._series is not None and self._stop.is_set():
                # stopped mid-series: what never came is lost, and says why (after a crash the series
                # stays open for the restarted reader)
                self._end_series("receiver_stopped", exit_status="abort")

    def _drain(self, sock: zmq.Socket) -> None:
        """A clean stop: the messages already queued on the socket (sent by the detector, not read yet)
        are read and handed on, for up to DRAIN_SECONDS, before it closes. Closing dropped them: frames
        of a burst already here became ``receiver_stopped`` losses (an outside probe's SIGTERM). What
        comes after is lost with that reason, as before (the resumed run starts after it)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        read = 0
        waited: float | None = None  # the sink's wait for ring slots so far, once there is a message
        # (a short wait, not none: beyond the socket's receive high-water mark the rest waits in the
        # connection's buffers, moved on as the queue is read). Time a frame spent waiting for a ring
        # slot (the pipeline emptying a full ring) does not count: the queued frames behind it were lost
        # as ``receiver_stopped`` once one had waited half a second (an outside probe's SIGTERM while the
        # mode's kernels loaded)
        while sock.poll(DRAIN_GAP_MS):
            if waited is None:
                waited = self._claim_waited()
            elif time.monotonic() >= deadline + (self._claim_waited() - waited):
                break
            dropped = self.stats["frames_dropped_shutdown"]
            self._receive_message(sock)
            read += 1
            if self.stats["frames_dropped_shutdown"] > dropped:
                # the ring takes no more (the pipeline is held, e.g. by a full disk): what is still
                # queued stays with the sender, which sends it to the daemon after the restart (a run
                # resumed there takes it); read here, each was a `shutdown` loss (an outside probe: the
                # detector's whole backlog, 276 frames)
                break
        if read:
            self.stats["messages_read_at_stop"] += read
            log.info("stopping: %d message(s) already queued from %s read and handed on", read, self.endpoint)

    def _claim_waited(self) -> float:
        """The sink's time spent waiting for ring slots, all told (0 for a sink that does not say)."""
        return float(getattr(self.sink, "claim_wait_seconds", 0.0))

    def _warn_multipart(self) -> None:
        """Say what multipart messages dropped by a single-part format (Stream V2, counted in
        ``messages_multipart_rejected`` by its ``_receive_message``, which calls this after each) most
        likely mean: the first, then every MULTIPART_LOG_EVERY. A sender of DECTRIS's JSON multipart
        format (``edge sim``'s default) into a Stream V2 receiver sends nothing else, so without this line
        every frame went missing with only a counter to show for it; the reverse mismatch is logged by
        the JSON decoder (``malformed_json``)."""
        count, seen = self.stats["messages_multipart_rejected"], self._multipart_seen
        self._multipart_seen = count
        if seen and count // MULTIPART_LOG_EVERY == seen // MULTIPART_LOG_EVERY:
            return
        log.warning(
            "rejected %d multipart message(s) from %s so far (logged the first time, then every %dth): "
            "Stream V2 messages are single-part CBOR, so the sender likely speaks the JSON multipart "
            "format into this Stream V2 receiver: check stream.format on both sides (the detector or "
            "`edge sim --format`, and this daemon)",
            count,
            self.endpoint,
            MULTIPART_LOG_EVERY,
        )

    def _connection_events(self, sock: zmq.Socket, monitor: zmq.Socket, now: float) -> None:
        """Count the stream connection's drops since the last look, and reconnect after one libzmq
        gave up on. A drop by the network or the peer is followed within its reconnect interval (100 ms)
        by libzmq's own retry; a drop for a protocol error (a part over MAXMSGSIZE) ends the connection
        for good, with no event after it: seen that way at the next look, we connect again."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event != zmq.EVENT_DISCONNECTED:
                self._dropped_at = None  # libzmq is reconnecting (or has) by itself
                continue
            self._dropped_at = now
            self.stats["connections_dropped"] += 1
            if self._series is None:  # a series start may have been what was in flight
                self._start_rejected = "the stream connection dropped before the series' first image"
            if self._series is not None:  # frames in flight may be lost: counted, and the operator told
                self._dropped_in_series = (self._series, now)  # why, once the series outlives the drop
                self._drop_counted = False
                self._drop_pending = True
            dropped = self.stats["connections_dropped"]
            if dropped > 1 and dropped % 100:  # a peer that drops every connection: not a line each time
                continue
            limit = self.max_message_bytes
            # news only, until a series outlives the drop (`_count_drop_in_series` warns then): a
            # detector that ends its series and goes away drops it with its end still queued here
            too_big = f"a message part over stream.max_message_bytes ({limit} bytes)" if limit else ""
            if self._series is None:  # between series: a sender that went away after its end (normal)
                log.info(
                    "the stream connection to %s closed with no series open (%d so far; logged the first"
                    " time, then every 100th): the sender went away after its series, nothing was in"
                    " flight%s",
                    self.endpoint,
                    dropped,
                    f" (unless it sent {too_big}: check the sender's log)" if limit else "",
                )
            else:  # told when it is known: at the series' end (queued before the drop) or 2 s on
                self._drop_news = dropped
        self._count_drop_in_series(now)
        if self._dropped_at is not None and now - self._dropped_at >= MONITOR_SECONDS / 2:
            self._dropped_at = None
            with contextlib.suppress(zmq.ZMQError):  # (the endpoint may be gone with the connection)
                sock.disconnect(self.endpoint)
            sock.connect(self.endpoint)
            self.stats["reconnects"] += 1
            if self.stats["reconnects"] == 1 or self.stats["reconnects"] % 100 == 0:
                log.warning(
                    "reconnecting to %s (%d times so far): ZeroMQ ended the connection for a protocol error",
                    self.endpoint,
                    self.stats["reconnects"],
                )

    def _receive_message(self, sock: zmq.Socket) -> None:
        part = sock.recv()
        more = bool(sock.get(zmq.RCVMORE))  # get(): a third of .rcvmore's cost
        self.stats["messages"] += 1
        events = self.codec.feed(part, more)
        slot: SlotLike | None = None
        while more:
            size = self.codec.expecting_data()
            pending = self.codec.pending_image
            # before the slot is claimed: the run start goes first in the ring. With no series open, the
            # image is read whole first and opens a run only if the codec takes it (`_handle`): a rejected
            # start's rejected images had opened a run here before their data part was found short
            # (an outside sender's probe; the Stream V2 reader, reading whole messages, opened none)
            if pending is not None and self._series is not None and not self._series_for(*pending):
                self._drop_rest(sock, more)  # a stray of another series: counted only
                return
            if size is not None and self._refused is not None:
                frame = self.codec.pending_frame
                self._drop_rest(sock, more)
                self._frame_refused(frame)
                return
            if size is not None and self.codec.pending_encoding == "<" and self._series is not None:
                frame = self.codec.pending_frame
                try:
                    slot = self.sink.claim(size)
                except ValueError as error:  # larger than a ring slot: more than the detector was set for
                    self._drop_rest(sock, more)
                    self.stats["frames_too_large"] += 1
                    if frame is not None and self._note_frame(frame):
                        self.sink.lost(frame, frame, "frame_too_large", str(error)[:160])
                    return
                if slot is None:
                    self._drop_rest(sock, more)
                    reason = "shutdown" if self._stop.is_set() else "ring_full"
                    self.stats[f"frames_dropped_{reason}"] += 1
                    if frame is not None and self._note_frame(frame):
                        self.sink.lost(frame, frame, reason, no_slot_detail(reason))
                    return
                nbytes = sock.recv_into(slot.buffer[:size])
                more = bool(sock.get(zmq.RCVMORE))
                events += self.codec.feed_received(nbytes, more, slot.buffer[:nbytes])
            else:
                part = sock.recv()
                more = bool(sock.get(zmq.RCVMORE))
                events += self.codec.feed(part, more)
        for event in events:
            slot = self._handle(event, slot)
        if slot is not None:  # claimed but the message was rejected after the data part
            self.sink.abandon(slot)

    def _drop_rest(self, sock: zmq.Socket, more: bool) -> None:
        while more:
            part = sock.recv()
            more = bool(sock.get(zmq.RCVMORE))
            self.codec.feed(part, more)

    def _handle(self, event: object, slot: SlotLike | None) -> SlotLike | None:
        if isinstance(event, ImageMessage):
            if not self._series_for(event.series, event.frame, event.shape, event.dtype):
                return slot  # abandoned by the caller
            if not self._note_frame(event.frame):
                return slot  # abandoned by the caller
            self._beyond_expected(event.frame)
            if event.data is not None:
                slot = self._decode_into_slot(event)
                if slot is None:
                    return None
            assert slot is not None
            header = FrameHeader(
                frame=event.frame,
                height=event.shape[0],
                width=event.shape[1],
                dtype=event.dtype,
                timestamp_ns=event.stop_time,
                flags=FLAG_COMPLETE,
                image_key=event.image_key,
                angle_deg=event.rotation_angle,
            )
            self.sink.publish(slot, header)
            self.stats["frames_received"] += 1
            self.stats["bytes_received"] += event.size
            return None
        if isinstance(event, StreamError):
            self.stats["messages_rejected"] += 1
            log.warning("rejected stream message: %s %s", event.reason, event.detail)
            if event.reason == "wrong_series" and event.kind == "end":
                # a stray end of another series (the codec rejected it: no rejected start or damaged
                # message before it): it ends nothing. It was counted as an image of another series, and
                # ends_wrong_series missed it (an outside probe)
                self.stats["ends_wrong_series"] += 1
            elif event.reason == "wrong_series":  # (as the Stream V2 reader counts them)
                self.stats["images_wrong_series"] += 1
            if event.kind == "start":
                self._start_was_rejected(f"{event.reason}: {event.detail}", event.series)
            elif event.kind == "end":
                self._rejected_series_ended()
            elif event.kind is None:  # perhaps a start (`_adopt`, `_leave_for`)
                self._unreadable_between += 1
            if event.frame is not None:
                self._image_rejected(event.series, event.frame, f"stream_{event.reason}", event.detail)
            elif (
                self._series is not None
                and event.kind in ("image", None)
                and event.reason not in ("wrong_series", "unknown_htype")
            ):
                # an image, or perhaps one, whose frame could not be read (a readable message of another
                # htype, or an image of another series, was never a frame of this one)
                self._unreadable += 1
            return slot
        if isinstance(event, SeriesStart):
            self._flush_errors_before_run()
            key = (event.series, json.dumps(event.config, sort_keys=True, default=str))
            if self._repeated_start(key, partial(self._series_started, event, key)):
                return slot
            if self._late_start(event.series, event.frames_expected, event.config.get("run_uid")):
                return slot
            uid = event.config.get("run_uid")
            uid = uid if isinstance(uid, str) else None
            if self._start_after_restart(event.series, partial(self._series_started, event, key), uid):
                return slot
            self._series_started(event, key)
            return slot
        if isinstance(event, SeriesEnd):
            if self._deferred_end(event.series):
                return slot
            self._deferred_start(event.series, 0)  # (a held start of another series: opened, ended)
            self._rejected_series_ended()
            self._flush_errors_before_run()
            if self._stray_end(event.series):
                return slot
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
            return slot
        return slot  # pragma: no cover

    def _begin_series(self, series: int, key: Any, frames_expected: int | None) -> None:
        """Both formats' start taken: the open series, if any, ends ``fail`` (its end never came, the
        frames it announced and never sent are lost, ``series_restarted``), the new one's state begins."""
        if self._series is not None:
            self._end_series(
                self._missing("series_restarted"),
                exit_status="fail",
                why=f"the start of series {series} came before its end message",
            )
        self._series = series
        self._start_key = key
        self._start_rejected = None
        self._rejected_unopened.clear()
        self._unreadable_between = 0
        self._next_frame = 0
        self._newest = None
        self._gaps.clear()
        self._held.clear()
        self._frames_expected = frames_expected
        self.stats["series_started"] += 1

    def _series_started(self, event: SeriesStart, key: Any) -> None:
        """A series start taken: the open series, if any, ends ``fail`` (its end never came), and the new
        one opens its run."""
        self._begin_series(event.series, key, event.frames_expected)
        announced = event.config.get("frames_expected")
        if announced is not None and event.frames_expected is None:
            self.stats["frames_expected_ignored"] += 1
            log.warning(
                "series %d announces frames_expected=%.200r, not an integer in 0..%d: its length is"
                " taken as unknown",
                event.series,
                announced,
                MAX_FRAMES_EXPECTED,
            )
        # the announced length as the codec bounded it (None when absent or beyond int64)
        config, reserved = detector_config({**event.config, "frames_expected": event.frames_expected})
        if reserved:
            self.stats["header_fields_reserved"] += len(reserved)
            log.warning(
                "series %d header sets %s, which only the receiver sets: kept aside, not acted on",
                event.series,
                ", ".join(reserved),
            )
        self._refused = self.sink.series_start(event.series, config)
        self._series_refused(event.series)

    def _series_refused(self, series: int) -> None:
        """When the sink (or the reader) refused the series just started (``_refused``): counted, logged,
        and its announced frames recorded lost at once (``run_refused``); its images are then dropped
        (`_frame_refused`)."""
        if self._refused is None:
            return
        self.stats["series_refused"] += 1
        log.error("series %d refused: %s", series, self._refused)
        if self._frames_expected:
            self.sink.lost(0, self._frames_expected - 1, "run_refused", self._refused)
            self._next_frame = self._frames_expected

    def _frame_refused(self, frame: int | None) -> None:
        """An image of a refused series: counted; recorded lost when the series announced no length (an
        announced length was recorded lost whole at its start)."""
        assert self._refused is not None
        self.stats["frames_refused"] += 1
        seen = getattr(self.sink, "refused_frame", None)  # how far the series got (the sink keeps it)
        if frame is not None and seen is not None:
            seen(frame)
        if frame is not None and self._frames_expected is None and self._note_frame(frame):
            self.sink.lost(frame, frame, "run_refused", self._refused)

    def _series_for(self, series: int, frame: int, shape: tuple[int, int], dtype: str) -> bool:
        """Open the run an image of ``series`` goes into, when it is not the open one; False for an image
        that belongs to no run here (a stray of another series: counted, `_stray`).

        An image of another series than the open one gets here only after a rejected series start, or a
        message too damaged to say what it was (the codecs reject it otherwise, as ``wrong_series``). See
        `_leave_for` for when it ends the open series."""
        self._rearmed(series, frame)
        self._deferred_start(series, frame)
        if not self._leave_for(series) or self._older_series(series, frame):
            return False
        if self._series is None:
            return self._adopt(series, frame, shape, dtype)
        return True

    def _older_series(self, series: int, frame: int) -> bool:
        """True, counted as a stray, for an image of a series that ended here before the last one did,
        while none is open: never reopened (the last one's stragglers are its own, `_note_frame`)."""
        if self._series is not None or self._start_rejected is not None:
            return False
        if series == self._ended_series or series not in self._ended_ids:
            return False
        self._stray(series, frame)
        return True

    def _leave_for(self, series: int) -> bool:
        """End the open series if an image of ``series``, another one, shows the detector moved on: after
        a rejected start (of another series), or right after a message too damaged to say what it was (it
        may have been the next start), when the image is not of a series that ended here. The open
        series ends ``fail``, its missing frames lost as ``series_restarted``, as when a good start comes
        before the end. Any other image of another series is a stray: False (`_stray`). An image of the
        open series clears the damaged messages seen and a rejected start: the series went on, so they
        were not the detector moving on (a chaos probe's stray start, then good images, then a stray end
        ended the series and split its frames between two runs, half of them "lost" in each)."""
        if self._series is None:
            return True
        if series == self._series:
            self._unreadable_between = 0
            if self._start_rejected is not None:
                self.stats["rejected_starts_ignored"] += 1
                log.warning(
                    "series %d goes on after a rejected series start (%s): that start was a stray",
                    series,
                    self._start_rejected,
                )
                self._start_rejected = None
                self._flush_errors_before_run()  # images held for it: no run of theirs will come
            return True
        if self._start_rejected is None and (not self._unreadable_between or series in self._ended_ids):
            self._stray(series, None)
            self._unreadable_between = 0  # (only the first image after a damaged message may end it)
            return False
        self.stats["series_ended_by_rejected_start"] += 1
        log.warning(
            "an image of series %d while series %d is open, after a rejected or unreadable start:"
            " series %d ends (its end never came)",
            series,
            self._series,
            self._series,
        )
        unreadable = self._unreadable_between  # (what `_adopt` weighs for the next series)
        self._end_series(
            "series_restarted",
            exit_status="fail",
            why=f"an image of series {series} came after a rejected or unreadable start: its end never came",
        )
        self._unreadable_between = unreadable
        return True

    def _stray_end(self, series: int) -> bool:
        """True, counted and logged, for the end of another series than the open one that does not show
        the detector moved on: it ends nothing. Only after a rejected start, or as the first message after
        one too damaged to say what it was (perhaps the start of the series it ends), does an end of
        another series end the open one; never an end of a series that ended here (a late copy), as for
        images (`_leave_for`)."""
        if self._series is None or series == self._series:
            return False
        if self._start_rejected is not None and series == self._start_rejected_series:
            # the rejected series' own end, none of its images having come: it is over, and the open
            # series goes on (taken for the detector moving on, it ended the open series, whose later
            # frames opened a run of their own: each frame stored in one run and lost in the other)
            self._start_rejected = self._start_rejected_series = None
            self._flush_errors_before_run()
            self.stats["rejected_series_ended"] += 1
            log.warning(
                "the end of series %d, whose start was rejected, while series %d is open: that series is"
                " over (none of its images came); series %d goes on",
                series,
                self._series,
                self._series,
            )
            return True
        if self._start_rejected is None and (not self._unreadable_between or series in self._ended_ids):
            self._unreadable_between = 0
            self.stats["ends_wrong_series"] += 1
            log.warning(
                "the end of series %d while series %d is open: it ends nothing (%d such so far,"
                " ends_wrong_series)",
                series,
                self._series,
                self.stats["ends_wrong_series"],
            )
            return True
        return False

    def _stray(self, series: int, frame: int | None) -> None:
        """An image of a series that is not the open one and did not start here: no frame of any run here
        (neither a loss nor a gap), counted and logged as the codecs' ``wrong_series``."""
        self.stats["images_wrong_series"] += 1
        count = self.stats["images_wrong_series"]
        if count == 1 or count % 100 == 0:
            log.warning(
                "an image of series %d%s while %s: not a frame of any run here, dropped (%d such so far,"
                " images_wrong_series)",
                series,
                "" if frame is None else f" (frame {frame})",
                "no series is open" if self._series is None else f"series {self._series} is open",
                count,
            )

    def _image_rejected(self, series: int | None, frame: int, reason: str, detail: str) -> None:
        """An image the codec rejected: a loss of the open series' frame, or, after a rejected start
        (another series, or none open yet), held for the run that series' next good image opens. One whose
        series cannot be read while a series is open is no frame of it: perhaps its own frame damaged,
        perhaps another sender's (an outside probe: a stray series -1's image "frame 1" was taken for the
        open series' frame 1, lost, and its real frame 1 then dropped as a duplicate). It is counted as an
        unreadable message: if the open series' frame never comes, its gap says so."""
        if self._series is not None and series is None:
            self._unreadable += 1
            return
        if self._series is not None and series == self._series:
            if self._note_rejected(frame):
                self.sink.lost(frame, frame, reason, detail)
        elif self._start_rejected is not None and len(self._errors_before_run) < MAX_ERRORS_BEFORE_RUN:
            self._errors_before_run[(series, frame)] = (reason, detail)
        elif self._start_rejected is not None:  # more than can be held: recorded now, outside any run
            self._lost_outside_run(frame, reason, detail)
        elif (
            self._series is None
            and series is not None
            and len(self._rejected_unopened) < MAX_ERRORS_BEFORE_RUN
        ):  # no series open (a restart mid-series): the run its next good image resumes may begin with it
            self._rejected_unopened[(series, frame)] = (reason, detail)

    def _note_rejected(self, frame: int) -> bool:
        """`_note_frame` for a rejected image of the open series (a subclass may account gaps its way)."""
        return self._note_frame(frame)

    def _start_was_rejected(self, why: str, series: int | None = None) -> None:
        """A series start the codec rejected (of ``series``, when it named one): its images (good ones
        open a run that says so) and the rejected ones held meanwhile belong to it. Those held for an
        earlier rejected start are recorded now, outside any run: the detector has moved on (held on,
        they were put into this series' run, a good frame of it dropped as their "duplicate")."""
        self._flush_errors_before_run()
        self._start_rejected = why[:200]
        self._start_rejected_series = series

    def _rejected_series_ended(self) -> None:
        """An end (readable or not) while no series is open after a rejected start: the rejected series
        is over, none of its images having opened a run. Its rejected images held meanwhile are recorded
        outside any run, and images that come next without a start are a new series' (taken as resumed
        after a restart, as any series seen without its start), not the rejected one's: an outside
        sender's probe saw a later series' good frames 0..2 dropped as "duplicates" of the rejected
        series' images 0..2, which had been put into its run."""
        if self._series is not None or self._start_rejected is None:
            return
        self._flush_errors_before_run()
        self._start_rejected = None
        self.stats["rejected_series_ended"] += 1

    def _flush_errors_before_run(self) -> None:
        """Images rejected after a rejected start that no good image followed: recorded outside any run
        (there is none to hold them), each with its reason."""
        held, self._errors_before_run = self._errors_before_run, {}
        for (_series, frame), (reason, detail) in sorted(held.items(), key=lambda item: item[0][1]):
            self._lost_outside_run(frame, reason, detail)

    def _lost_outside_run(self, frame: int, reason: str, detail: str) -> None:
        self.stats["frames_outside_series"] += 1
        self.sink.lost(frame, frame, reason, f"{detail} (after a rejected series start)")

    def _adopt(
        self, series: int, frame: int, shape: tuple[int, int], dtype: str, detector_uid: str = ""
    ) -> bool:
        """An image of a series this reader never saw start: the daemon restarted in the middle of it.

        The rest of the series becomes a run of its own, "resumed after restart" from ``frame`` on
        (the sink links it to the run the restart interrupted, whose missing frames become losses). An
        image of the series that just ended here is a straggler, not a new run: `_note_frame` records
        it as lost (unless a start was rejected since: the series id used again). After a rejected
        series start (`_start_rejected`) the images are a run of their own that says so
        (``start_rejected``), without the start's metadata, and no restart is assumed; so after a
        message too damaged to name its kind when the first image is frame 0. ``detector_uid``: the
        detector's uid of the series when its images carry one (Stream V2's ``series_unique_id``), kept
        with the run as ``detector_run_uid`` (the run's own uid is a fresh one).

        False for an image dropped instead: one that would open a run numbered from 0 (after a rejected
        start) more than ``max_frame_jump`` beyond 0 (``frame_number_out_of_range``, as inside a series;
        an outside sender's such image, dropped and counted, had still opened a run, and the valid start
        after it was then taken as late, its uid lost).
        """
        named = {"detector_run_uid": detector_uid} if detector_uid else {}
        self._seen_a_series = True
        if series == self._ended_series and self._start_rejected is None:
            since = time.monotonic() - self._ended_at
            same = (detector_uid == self._ended_uid) if detector_uid and self._ended_uid else None
            if same or (same is None and since <= STRAGGLER_SECONDS):
                return True  # (a straggler, `_note_frame`; after a rejected start, images of that id are
                # the new series': a sender reusing it). Its uid says so however late (an outside probe's
                # images of an ended series 6 s on, its uid theirs, made a run of frames already stored)
            # long after that series ended here: its number used again, by a series whose start this
            # receiver never saw (a detector that restarted its count, or a second receiver on the stream
            # that took the start). Its frames were dropped as late copies of the old run's, counted only
            # (an outside probe: 97 received frames in no record); now a run of their own that says so
            self.stats["series_number_reused"] += 1
            told = (
                f"its images name another series_unique_id ({detector_uid!r}) than that series'"
                f" ({self._ended_uid!r})"
                if same is False
                else f"series {series} ended here {since:.0f} s before"
            )
            self._start_rejected = (
                f"no start came here: {told}, so the number is used again (a detector that restarted its"
                " count, or another receiver on the stream took the series' start)"
            )
        # far beyond frame 0: a run numbered from 0 (after a rejected start) never opens from it, nor one
        # "resumed after restart" when no run of its series was cut by one (an outside sender's single
        # image at frame 5,000,000 opened one recording 5 million frames lost): dropped and counted, as
        # beyond the bound inside a series
        if (
            self.max_frame_jump is not None
            and frame > self.max_frame_jump
            and (self._start_rejected is not None or not self._series_interrupted(series))
        ):
            self.stats["frame_number_out_of_range"] += 1
            log.warning(
                "frame %d of series %d rejected: more than %d beyond 0 with no run of the series to resume",
                frame,
                series,
                self.max_frame_jump,
            )
            return False
        rejected, self._start_rejected = self._start_rejected, None
        unreadable, self._unreadable_between = self._unreadable_between, 0
        self._open_uid = detector_uid or None  # (the run opened from its images: its stragglers later)
        if rejected is None and unreadable and frame == 0:  # (a restart mid-series misses frame 0 too)
            self.stats["series_start_unreadable"] += 1
            rejected = f"{unreadable} unreadable message(s) came where its start was due"
        if rejected is not None:
            self._open_without_start(series, frame, shape, dtype, rejected, named)
            # the first image that came (the run is numbered from 0, the frames below it gaps): a start
            # after an image far beyond 0 is the next series', as after any run opened from its images (a
            # stray at frame 900,000 after a reconnect took the series' own start as its late one)
            self._adopted_first = frame
            return True
        self.stats["series_adopted"] += 1
        log.warning(
            "frames of series %d without its start (a restart mid-series): a resumed run from frame %d",
            series,
            frame,
        )
        # damaged images of the series just before this one, since the restart: the run begins with them
        # (each a loss with its reason); before, the interrupted run kept them as receiver_stopped
        held, self._rejected_unopened = self._rejected_unopened, {}
        first = frame
        while (series, first - 1) in held:
            first -= 1
        marks = {"resumed_after_restart": True, "first_frame": first, **named}
        shape, dtype = self._resumed_format(series, frame, shape, dtype)
        self._open_headless(series, first, frame, shape, dtype, marks)
        self._adopted = series
        self._adopted_first = first
        for earlier in range(first, frame):
            if self._refused is not None:  # (the run refused: its frames are that)
                self._frame_refused(earlier)
            elif self._note_frame(earlier):
                reason, detail = held[(series, earlier)]
                self.sink.lost(earlier, earlier, reason, detail)
        return True

    def _resumed_format(
        self, series: int, frame: int, shape: tuple[int, int], dtype: str
    ) -> tuple[tuple[int, int], str]:
        """The frame shape and pixel type a series resumed from its images keeps: those of the run the
        restart cut, as its start gave them (the sink's ``interrupted_shape``), not its first image's
        after the restart, which may be damaged (then lost as any wrong-shaped frame, with its reason);
        the image's when the sink cannot say."""
        ask = getattr(self.sink, "interrupted_shape", None)
        known = ask(series) if callable(ask) else None
        if known is None or (tuple(known[0]), known[1]) == (tuple(shape), dtype):
            return shape, dtype
        self.stats["resumed_first_image_other_format"] += 1
        log.warning(
            "series %d resumed at frame %d: that image is %s %s, the series' start gave %s %s: the run keeps"
            " the start's (the image is lost, wrong_shape)",
            series,
            frame,
            tuple(shape),
            dtype,
            tuple(known[0]),
            known[1],
        )
        return (int(known[0][0]), int(known[0][1])), str(known[1])

    def _series_interrupted(self, series: int) -> bool:
        """Whether a run of ``series`` was cut by a restart (the sink's ``series_interrupted``; True when
        the sink cannot say). Asked once per series while none is open: a flood of strays far ahead
        would otherwise read the ledger's runs once per image, on the receiving thread."""
        known = self._interrupted_seen.get(series)
        if known is None:
            ask = getattr(self.sink, "series_interrupted", None)
            known = bool(ask(series)) if callable(ask) else True
            if len(self._interrupted_seen) >= ENDED_SERIES_REMEMBERED:
                self._interrupted_seen.clear()
            self._interrupted_seen[series] = known
        return known

    def _uid_interrupted(self, series: int, uid: str) -> bool:
        """Whether the run of ``series`` a restart cut is the one ``uid`` names (its uid, or the detector's
        uid it was recorded under); True when the sink cannot say."""
        ask = getattr(self.sink, "series_interrupted", None)
        if not callable(ask):
            return True
        try:
            return bool(ask(series, uid))
        except TypeError:  # (a sink that takes the series alone)
            return True

    def _repeated_start(self, key: Any, restart: Callable[[], None]) -> bool:
        """True for a start identical to the open series' own (its series and every field): a copy the
        sender or the network repeated, or a sender that re-armed for a new acquisition with the same
        start (its end lost, or its connection dropped: ZeroMQ repeats nothing across connections).
        Before, it ended the series ``fail`` and opened a second run of the same frames: each stored in
        one and lost in the other; then it was ignored, and a re-armed sender's frames 0.. were dropped
        as duplicates (a counter only), its later ones stored in the old run, ended ``success`` (outside
        probes). The next image tells (`_rearmed`): ``restart`` (the start taken as a new series) is
        called if it goes back to a frame the run has."""
        if self._series is None or key != self._start_key:
            return False
        self._restart_pending = restart
        dropped = self._dropped_in_series
        if dropped is not None and dropped[0] == self._series:
            self.stats["starts_after_drop"] += 1
            log.warning(
                "series %d: its start came again, identical, after the connection dropped: a new"
                " acquisition if its next image goes back to a frame the run has, else a repeat",
                self._series,
            )
        return True

    def _start_repeated(self) -> None:
        self.stats["starts_repeated"] += 1
        log.warning(
            "series %d: its start came again, identical, while the series is open: ignored (%d so far)",
            self._series,
            self.stats["starts_repeated"],
        )

    def _rearmed(self, series: int, frame: int) -> None:
        """An image of the open series after its start came again (`_repeated_start`): a frame number
        the run has already (received or recorded lost, not a held gap's) means the sender began a new
        acquisition: the open series ends ``fail`` (its frames not received ``series_restarted``) and
        the start opens a run of its own, before the image is taken."""
        restart = self._restart_pending
        if restart is None or series != self._series:
            return
        self._restart_pending = None
        if frame < self._next_frame and not any(g.first <= frame <= g.last for g in self._held):
            self.stats["series_rearmed"] += 1
            log.warning(
                "series %d: frame %d came after its start was sent again: a new acquisition, in a run of"
                " its own (the open run ends fail)",
                series,
                frame,
            )
            restart()
        else:
            self._start_repeated()

    def _start_after_restart(self, series: int, start: Callable[[], None], uid: str | None = None) -> bool:
        """A start of a series a daemon restart cut, the first series this reader sees: the sender may
        have sent it again on its new connection and go on where it was, or re-armed. Its first image
        tells (`_deferred_start`): frame 0 opens the start's run; a later one opens the run "resumed after
        restart" that continues the interrupted one (as for images without a start), so each frame of the
        series is stored or lost once across the two (an outside probe: the resumed frames were stored
        in a fresh run that recorded 0..19 lost, the interrupted run 15..39 lost too). True when held."""
        first, self._seen_a_series = not self._seen_a_series, True
        if (
            self._series is not None
            or not first
            or not callable(getattr(self.sink, "series_interrupted", None))
        ):
            return False  # (a sink that cannot say: no restart assumed here)
        if not self._series_interrupted(series):
            return False
        if uid and not self._uid_interrupted(series, uid):
            # the start names a run that no restart cut: a new acquisition that reuses the number, opened
            # at once (held, a start and end with no image between were taken for the cut series' own, no
            # run opened, its announced frames in no record; an outside probe's demo stopped at once)
            return False
        self._start_deferred = (series, start)
        self.stats["starts_after_restart"] += 1
        log.info(  # news, not a fault: most such starts are a new acquisition that reuses the number
            "series %d started; a run of series %d was cut by the daemon's restart: the first image tells"
            " whether this is a new acquisition (frame 0: a new run) or that series going on (a run"
            " resumed after the restart)",
            series,
            series,
        )
        return True

    def _deferred_end(self, series: int) -> bool:
        """An end right after a start held by `_start_after_restart`, with no image between: the end of
        the series the restart cut, sent again with its start on the new connection (its frames came
        while the daemon was down, or before: the interrupted run accounts for them). No run is opened
        for it (one was, and recorded all its frames lost again: an outside probe). True when so."""
        deferred = self._start_deferred
        if deferred is None or deferred[0] != series:
            return False
        self._start_deferred = None
        self.stats["starts_after_restart_ended"] += 1
        log.warning(
            "series %d: its start and end came again after the restart, with no image: the interrupted"
            " run's series, which that run accounts for; no run opened",
            series,
        )
        return True

    def _deferred_start(self, series: int, frame: int) -> None:
        """The first image after a start held by `_start_after_restart`: frame 0, or another series',
        opens the start's run; a later frame of its series is left to `_adopt` (a resumed run)."""
        deferred, self._start_deferred = self._start_deferred, None
        if deferred is None:
            return
        held_series, start = deferred
        if series != held_series or frame == 0:
            start()
        else:
            self.stats["starts_taken_as_resumed"] += 1

    def _late_start(self, series: int, frames_expected: int | None, run_uid: Any = None) -> bool:
        """A start of the series that is open already, opened from its own images (`_adopt`): its images
        came before it (a sender that sends them first). The run goes on as it was opened, so a frame it
        stored is never also a gap of a second run; the start's length is taken when the run has none, its
        other metadata is not. True when it was such a start."""
        if self._series is None or series != self._series or self._adopted != series:
            return False
        if self._adopted_first >= LATE_START_FRAMES:  # not the series' first images: the next series
            self.stats["starts_after_far_images"] += 1
            log.warning(
                "series %d: a start came for the run opened from its frame %d on: not its late start (a"
                " series begins at frame 0) but the next series of that number; that run ends",
                series,
                self._adopted_first,
            )
            return False
        self.stats["starts_after_images"] += 1
        log.warning(
            "series %d: its start came after its first images: the run opened from them goes on (the"
            " start's metadata is not applied)",
            series,
        )
        if self._frames_expected is None and frames_expected is not None:
            self._frames_expected = frames_expected
            self.sink.series_length(series, frames_expected)  # recorded with the run
        named = getattr(self.sink, "series_named", None)
        if isinstance(run_uid, str) and run_uid and callable(named):
            # the uid the start gives, kept with the run as the detector's (`edge where UID` finds it; an
            # outside sender's run was findable by no uid it had sent)
            named(series, run_uid)
        return True

    def _open_without_start(
        self,
        series: int,
        frame: int,
        shape: tuple[int, int],
        dtype: str,
        rejected: str,
        named: dict[str, Any] | None = None,
    ) -> None:
        """Images of ``series`` after its start was rejected: stored as a run of their own, numbered from
        0 (frames below the first one that came are gaps, as in any series)."""
        self.stats["series_without_start"] += 1
        log.warning(
            "frames of series %d after its start was rejected (%s): stored as a run of their own, without"
            " the start's metadata",
            series,
            rejected,
        )
        held, self._errors_before_run = self._errors_before_run, {}
        ordered = sorted(held.items(), key=lambda item: item[0][1])
        for (held_series, held_frame), (reason, detail) in ordered:
            if held_series != series:  # another series', or one it could not read: outside any run
                # (before the run opens, or the sink would put them into it; an image whose series could
                # not be read is no frame this run can be sure of: put into it, a good frame of the same
                # number was dropped as its "duplicate")
                self._lost_outside_run(held_frame, reason, detail)
        self._open_headless(series, 0, None, shape, dtype, {"start_rejected": rejected, **(named or {})})
        self._adopted = series  # its start, if it comes now, is a late one: this run goes on
        for (held_series, held_frame), (reason, detail) in ordered:
            if held_series == series and self._note_frame(held_frame):  # its own, with their reasons
                self.sink.lost(held_frame, held_frame, reason, detail)

    def _open_headless(
        self,
        series: int,
        first: int,
        newest: int | None,
        shape: tuple[int, int],
        dtype: str,
        marks: dict[str, Any],
    ) -> None:
        """Open ``series`` from its images alone, frames counted from ``first``; ``marks`` say why."""
        self._rejected_unopened.clear()
        self._series = series
        self._next_frame = first
        self._newest = newest
        self._gaps.clear()
        self._held.clear()
        self._frames_expected = None
        config = {"shape": [shape[1], shape[0]], "type": dtype, "frames_expected": None, **marks}
        self._refused = self.sink.series_start(series, config)
        # a series resumed after a restart: its length, when the run it continues recorded one (the sink
        # says so), accounts for its tail at its end as a start's would
        known = getattr(self.sink, "resumed_length", None)
        if self._refused is None and isinstance(known, int) and known > first:
            self._frames_expected = known
        below = getattr(self.sink, "below_first", None)  # frames below the first that no run holds
        if self._refused is None and isinstance(below, tuple) and below[0] == first and first > 0:
            # a gap of this run, held as any gap: a frame the first one overtook is stored when it comes
            self._next_frame = 0
            self._gap(first, "frame_number_gap", below[1])
            self._next_frame = first
        if self._refused is not None:
            self.stats["series_refused"] += 1
            log.error("series %d (opened from its images) refused: %s", series, self._refused)

    def _note_frame(self, frame: int) -> bool:
        """Account for gaps before ``frame``; False for a stale, duplicate or out-of-range frame number. A
        gap that follows unreadable messages of the series is recorded with ``unreadable_reason``."""
        if self._unreadable and self._series is not None and frame > self._next_frame:
            reference = self._newest if self._newest is not None else 0
            if self.max_frame_jump is None or frame <= reference + self.max_frame_jump:
                detail = f"{self._unreadable} unreadable message(s) in the series"
                self._gap(frame, self.unreadable_reason, detail)
                self._next_frame = frame
                self._unreadable = 0
        if self._series is None:  # a straggler after its series ended
            if frame < self._ended_accounted:
                # stored, or recorded lost (a gap, missing at the end), in its run: one disposition each,
                # so a late copy is counted and logged, never also a loss
                self.stats["frames_after_series_end"] += 1
                if self.stats["frames_after_series_end"] % 100 == 1:
                    log.warning(
                        "frame %d of series %s came after the series ended; its run accounted for it"
                        " already (stored, or recorded lost): counted in frames_after_series_end",
                        frame,
                        self._ended_series,
                    )
                return False
            self.stats["frames_outside_series"] += 1  # a frame its run never accounted for: a loss
            self.sink.lost(
                frame, frame, "frame_outside_series", f"arrived after series {self._ended_series} ended"
            )
            return False
        if self.max_frame_jump is not None:
            reference = self._newest if self._newest is not None else 0
            if frame > min(reference + self.max_frame_jump, MAX_COUNT):  # never beyond int64
                self.stats["frame_number_out_of_range"] += 1
                log.warning(
                    "frame %d rejected: more than %d beyond frame %d", frame, self.max_frame_jump, reference
                )
                return False
        if frame < self._next_frame:
            if self._fill_gap(frame):
                return True
            if any(first <= frame <= last for first, last in self._gaps):
                # it came after later frames had made it a gap, recorded lost: dropped, and said so
                self.stats["frames_late"] += 1
                if self.stats["frames_late"] == 1 or self.stats["frames_late"] % 100 == 0:
                    log.warning(
                        "frame %d of series %s came after later frames, where it was recorded lost "
                        "(frame_number_gap); dropped (%d such so far)",
                        frame,
                        self._series,
                        self.stats["frames_late"],
                    )
            else:
                self.stats["frames_duplicate"] += 1
            return False
        if frame > self._next_frame:
            self._gap(frame, "frame_number_gap", self._gap_detail())
        self._next_frame = frame + 1
        self._newest = frame
        if self._held:
            self._release_gaps(time.monotonic())
        return True

    def _beyond_expected(self, frame: int) -> None:
        """An image the run takes (not one rejected, nor a loss): counted when it is numbered at or beyond
        the length its series announced."""
        if self._frames_expected is not None and frame >= self._frames_expected:
            # kept and stored like any frame, but the detector sends more than it announced: say so
            if not self.stats["frames_beyond_expected"]:
                log.warning(
                    "series %s: frame %d is beyond the %d frames it announced",
                    self._series,
                    frame,
                    self._frames_expected,
                )
            self.stats["frames_beyond_expected"] += 1

    def _gap_detail(self) -> str:
        """A gap's detail: the frames never arrived, and why when the connection dropped since the last one
        (they were in flight, or queued behind a message libzmq refused)."""
        if not self._drop_unexplained:
            return "frames never arrived"
        self._drop_unexplained = False
        limit = self.max_message_bytes
        why = f", or sent a message part over stream.max_message_bytes ({limit} bytes)" if limit else ""
        return f"frames never arrived: the stream connection dropped meanwhile (the detector went away{why})"

    def _gap(self, frame: int, reason: str, detail: str) -> None:
        """The frames from the next expected one up to ``frame`` have not come: held (a frame overtaken
        by later ones is stored when it comes), then recorded lost (`_record_gap`)."""
        self._held.append(_HeldGap(self._next_frame, frame - 1, reason, detail, frame, time.monotonic()))
        if len(self._held) > HELD_GAPS:
            self._record_gap(self._held.pop(0))

    def _fill_gap(self, frame: int) -> bool:
        """Whether ``frame`` is in a held gap, and then no longer missing: it came after later frames."""
        for i, gap in enumerate(self._held):
            if gap.first <= frame <= gap.last:
                self._held[i : i + 1] = gap.without(frame)
                while len(self._held) > HELD_GAPS:  # split in two: still at most HELD_GAPS held
                    self._record_gap(self._held.pop(0))
                self.stats["frames_reordered"] += 1
                if self.stats["frames_reordered"] == 1 or self.stats["frames_reordered"] % 1000 == 0:
                    log.info(
                        "frame %d of series %s came after later frames; stored (%d such so far)",
                        frame,
                        self._series,
                        self.stats["frames_reordered"],
                    )
                return True
        return False

    def _release_gaps(self, now: float, everything: bool = False) -> None:
        """Record the held gaps whose wait is over (``everything``: all of them)."""
        newest = self._newest if self._newest is not None else 0
        while self._held:
            gap = self._held[0]
            due = newest - gap.newest >= self.reorder_frames or now - gap.at >= self.reorder_seconds
            if not (everything or due):
                break
            self._record_gap(self._held.pop(0))

    def _record_gap(self, gap: _HeldGap) -> None:
        """Frames that never came: recorded lost, and remembered so that one arriving later is late."""
        self.stats["frames_gap"] += gap.last - gap.first + 1
        self._gaps.append((gap.first, gap.last))
        self.sink.lost(gap.first, gap.last, gap.reason, gap.detail)

    def _missing(self, reason: str) -> str:
        """The loss reason of the frames missing when the open series ends at its end, or at the next
        series' start: ``reason``, or ``unreadable_reason`` when messages of the series came too damaged
        to name their frame (they may have been those frames)."""
        return self.unreadable_reason if self._unreadable else reason

    def _end_series(self, reason: str, exit_status: str = "success", why: str = "") -> None:
        """End the open series with ``exit_status``; its frames not received are lost for ``reason``.
        ``why``: what ended it, for a run that ends ``fail`` (kept with the run: ``ended_because``; a run
        of unknown length ended by another series' start said why nowhere, an outside probe)."""
        if self._series is None:  # no series open: a repeated end, or one whose start never came
            self.stats["ends_without_series"] += 1
            log.warning("a series end with no series open: ignored (nothing to end, nothing recorded)")
            return
        self._interrupted_seen.clear()  # (a run ending fail or abort is one a restart may have cut)
        self._release_gaps(time.monotonic(), everything=True)
        self._count_drop_in_series(time.monotonic())  # (it may end between two looks at the connection)
        news, self._drop_news = self._drop_news, None
        # a drop the series' end was queued before (its own end: the appliance ending a series whose
        # detector died is no end the sender sent, an outside probe read "the sender went away after its
        # series" of a camera killed mid-series)
        if news is not None and exit_status == "success" and (news == 1 or news % 100 == 0):
            log.info(
                "the stream connection to %s closed with series %s's end already sent (%d closes so far;"
                " logged the first time, then every 100th): the sender went away after its series",
                self.endpoint,
                self._series,
                news,
            )
        self._dropped_in_series = None  # the next series may carry the same number: not its drop
        if self._restart_pending is not None:  # its start came again, and no image after it: a copy
            self._restart_pending = None
            self._start_repeated()
        self._drop_unexplained = self._drop_pending = False
        self._unreadable = 0
        expected = self._frames_expected
        if expected is not None and self._next_frame < expected:
            self.stats["frames_gap"] += expected - self._next_frame
            # (the daemon stopping cuts the series, which may go on: said so, not "ended", a probe)
            what = "the daemon stopped" if reason == "receiver_stopped" else "the series ended"
            came = (
                f"{what} after frame {self._next_frame - 1}"
                if self._next_frame
                else f"{what} before the series' first frame"
            )
            self.sink.lost(self._next_frame, expected - 1, reason, f"{came}, of {expected} announced")
        series = self._series
        self._series = None
        self._adopted = None
        self._start_key = None
        self._unreadable_between = 0
        self._ended_series = series
        self._ended_at = time.monotonic()  # (`_adopt`: a frame of it much later is a new series')
        self._ended_uid, self._open_uid = self._open_uid, None
        self._ended_ids.append(series)
        # frames below this number were stored or recorded lost in the run: a later copy is not a loss
        self._ended_accounted = max(self._next_frame, expected or 0)
        self._refused = None
        self.stats["series_ended"] += 1
        if why:
            log.warning("series %s ends %s: %s", series, exit_status, why)
        self.sink.series_end(series, exit_status, why)

    def _decode_into_slot(self, event: ImageMessage) -> SlotLike | None:
        nbytes = event.shape[0] * event.shape[1] * np.dtype(event.dtype).itemsize
        try:  # the slot first: a small chunk may unpack to more than a slot holds
            slot = self.sink.claim(nbytes)
        except ValueError as error:  # larger than a ring slot: more than the detector was set for
            self.stats["frames_too_large"] += 1
            self.sink.lost(event.frame, event.frame, "frame_too_large", str(error)[:160])
            return None
        if slot is None:
            self.stats["frames_dropped_ring_full"] += 1
            self.sink.lost(event.frame, event.frame, "ring_full", "count-and-drop policy")
            return None
        if event.encoding == "<":  # raw pixels read whole (the first image of a series with none open)
            raw = np.frombuffer(event.data, dtype=np.uint8)  # type: ignore[arg-type]  # (size checked)
            np.frombuffer(slot.buffer, dtype=np.uint8, count=nbytes)[:] = raw[:nbytes]
            return slot
        try:
            # bounds-checked: bitshuffle's own decoder crashes the process on a corrupt chunk
            pixels = decode_bslz4(event.data, event.shape, event.dtype)  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as error:
            self.sink.abandon(slot)
            self.stats["frames_undecodable"] += 1
            self.sink.lost(event.frame, event.frame, "stream_undecodable", str(error)[:120])
            return None
        np.frombuffer(slot.buffer, dtype=np.uint8, count=nbytes)[:] = pixels.view(np.uint8).ravel()
        return slot
