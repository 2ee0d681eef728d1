"""Live updates for the dashboard: Server-Sent Events from one producer, at a bounded rate.

However many pages watch, the view is read once per tick: :class:`LiveFeed` runs a single task while at
least one subscriber is connected, reads ``status()`` once a second (in a worker thread: it touches
SQLite and the disk) and the live image when a new frame is there, at most ten times a second to one
page and ten images a second to all pages together (five pages: two a second each),
encodes each event once and hands the same bytes to every subscriber's small queue. A subscriber that
falls behind loses its oldest events, never the appliance's time. With nobody watching, nothing runs:
the dashboard costs the daemon nothing (``benchmarks/dashboard_subscribers.py`` measures it).

Each status event carries one trend sample (frame rate, ring fill, upstream backlog, disk use); the
last ten minutes of samples taken while someone watched are kept and sent to a page when it connects.
Events: ``trends`` (on connect: the history), ``status`` (``{"status": ..., "trend": ...}``),
``preview`` (the live image with its age). The browser's ``EventSource`` reconnects by itself
(``retry:`` below); a comment line every 10 s keeps idle proxies from closing the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

STATUS_SECONDS = 1.0
UNWATCHED_SECONDS = 5.0  # trend samples while no page is open
PREVIEW_SECONDS = 0.1  # the live image to one page: at most ten frames a second
PREVIEW_SENDS_PER_SECOND = 10.0  # ... and to all pages together: five pages get two frames a second each
HISTORY_SECONDS = 600.0
QUEUE_EVENTS = 8  # per subscriber; a slow page loses its oldest events
KEEPALIVE_SECONDS = 10.0
RETRY_MS = 1000
#: how long a stream admitted by `LiveFeed.admit` holds its place before its first byte is asked for
ADMITTED_SECONDS = 10.0


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event (compact JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


_END = b""  # published after the status that says the daemon is stopping: each stream ends after it


class LiveFeed:
    """One producer, many subscribers (see the module docstring)."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        preview: Callable[[], dict[str, Any] | None],
        status_seconds: float = STATUS_SECONDS,
        preview_seconds: float = PREVIEW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._status = status
        self._preview = preview
        self.status_seconds = status_seconds
        self.preview_seconds = preview_seconds
        self._clock = clock
        self._wall = wall_clock
        self._subscribers: set[asyncio.Queue[bytes]] = set()
        # streams admitted (`admit`) that have not begun yet: their admission times (monotonic)
        self._admitted: deque[float] = deque()
        self._admit_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, once a page subscribed
        self.history: deque[dict[str, Any]] = deque(maxlen=int(HISTORY_SECONDS / status_seconds) + 1)
        self._last_status: bytes | None = None
        self._last_preview_doc: dict[str, Any] | None = None
        self._preview_key: object = None
        self._prev_received: tuple[float, float] | None = None  # (monotonic time, frames received)
        self._background_seconds = 0.0  # the unwatched sampling interval (sample_in_background)
        self.reads = {"status": 0, "preview": 0}  # how often the view was read (tests, the benchmark)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def admit(self, limit: int) -> bool:
        """Whether one more stream may open with at most ``limit`` open, those admitted and not begun
        counted as open: a burst of requests all looked before any of theirs began, and 400 were let
        through a limit of 384 (an outside probe). An admitted stream that never begins frees its place
        after `ADMITTED_SECONDS`."""
        with self._admit_lock:
            now = self._clock()
            while self._admitted and now - self._admitted[0] > ADMITTED_SECONDS:
                self._admitted.popleft()
            if len(self._subscribers) + len(self._admitted) >= limit:
                return False
            self._admitted.append(now)
            return True

    def sample_in_background(self, stop: threading.Event, seconds: float = UNWATCHED_SECONDS) -> None:
        """Keep the trends going while no page watches (a daemon thread, every ``seconds``), so a page
        opened later shows the last minutes; while pages watch, the producer samples instead."""
        self._background_seconds = seconds

        def sample() -> None:
            while not stop.wait(seconds):
                if self._subscribers:
                    continue
                try:
                    self.history.append(self._trend(self._status()))
                except Exception as error:  # the appliance stopping under it, say: the next one will do
                    log.debug("background trend sample failed: %s", error)

        threading.Thread(target=sample, name="edge-trends", daemon=True).start()

    # -- subscribers --------------------------------------------------------------------------------------
    async def stream(self, is_disconnected: Callable[[], Any] | None = None) -> AsyncIterator[bytes]:
        """The byte stream of one subscriber, from its ``retry`` line until it goes away."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_EVENTS)
        with self._admit_lock:  # (admitted: its place is its own now)
            if self._admitted:
                self._admitted.popleft()
            self._subscribers.add(queue)
        self._loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._produce(), name="edge-live-feed")
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            yield sse("trends", list(self.history))
            if self._last_status is not None:
                yield self._last_status
            if self._last_preview_doc is not None:  # stamped now: its age as of this connection (an
                # outside probe: the first preview of a new page carried the server_time of its push,
                # minutes old, so the page under-reported how old the frame was)
                yield self._preview_sse(self._last_preview_doc)
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):  # no task per event, as wait_for makes
                        item = await queue.get()
                except TimeoutError:
                    item = b": keepalive\n\n"
                if item is _END:  # the daemon is stopping: its status said so, the stream ends cleanly
                    return
                yield item
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """End every open stream now (from any thread), as a server about to stop should: a stream left
        open is cut by the server's shutdown timeout, its connection never closed cleanly."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (the loop stopped meanwhile: nothing is open)
                loop.call_soon_threadsafe(self._publish, _END)

    def _publish(self, item: bytes) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(item)

    # -- the producer --------------------------------------------------------------------------------------
    def preview_interval(self) -> float:
        """Seconds between live images: ``preview_seconds`` for one page, longer for many, so that the
        images sent to all pages together stay within ``PREVIEW_SENDS_PER_SECOND`` (each send costs
        the daemon's event loop the same, whatever the page)."""
        return max(self.preview_seconds, len(self._subscribers) / PREVIEW_SENDS_PER_SECOND)

    async def _produce(self) -> None:
        next_status = next_preview = self._clock()
        while self._subscribers:
            now = self._clock()
            if now >= next_status:
                next_status = now + self.status_seconds
                await self._status_event()
            if now >= next_preview and await self._preview_event():
                next_preview = now + self.preview_interval()
            wake = min(next_status, max(next_preview, now + self.preview_seconds))
            await asyncio.sleep(max(0.0, wake - self._clock()))
        self._task = None

    async def _status_event(self) -> None:
        try:
            status = await run_in_threadpool(self._status)
        except Exception:  # the page shows "stale" when status events stop; the log says why
            log.exception("live feed: status() failed")
            return
        self.reads["status"] += 1
        trend = self._trend(status)
        self.history.append(trend)
        self._last_status = sse("status", {"status": status, "trend": trend})
        self._publish(self._last_status)
        if (status.get("appliance") or {}).get("stopping"):  # that event was the streams' last
            self._publish(_END)

    async def _preview_event(self) -> bool:
        """Push the live image if a new frame is there; True when one was pushed."""
        try:
            # on the loop, not in a worker thread: a cached answer is an identity check, a new frame's
            # encoding well under a millisecond, and a thread hop costs more than either
            preview = self._preview()
        except Exception:
            log.exception("live feed: latest_preview() failed")
            return False
        self.reads["preview"] += 1
        if preview is None:
            return False
        key = (preview.get("run_uid"), preview.get("frame"), preview.get("received_at"))
        if key == self._preview_key:
            return False
        self._preview_key = key
        self._last_preview_doc = preview
        self._publish(self._preview_sse(preview))
        return True

    def _preview_sse(self, preview: dict[str, Any]) -> bytes:
        """The preview as an event sent now: ``server_time`` now, ``age_seconds`` since it was taken."""
        now = self._wall()
        received = preview.get("received_at")
        age = None if received is None else round(max(0.0, now - float(received)), 3)
        return sse("preview", {**preview, "server_time": now, "age_seconds": age})

    def _trend(self, status: dict[str, Any]) -> dict[str, Any]:
        """One trend sample: frame rate (from the receiver's counter), ring fill, backlog, disk use."""
        now = self._clock()
        received = float((status.get("frames") or {}).get("received") or 0)
        rate = None
        if self._prev_received is not None:
            t0, r0 = self._prev_received
            # a restarted daemon's counter starts again, and a gap (no sample taken) is no rate either;
            # samples come every status_seconds while a page watches, every background interval otherwise
            if (
                now > t0
                and received >= r0
                and now - t0 < 5 * max(self.status_seconds, self._background_seconds)
            ):
                rate = round((received - r0) / (now - t0), 2)
        self._prev_received = (now, received)
        ring = status.get("ring") or {}
        slots = float(ring.get("slots") or 0)
        return {
            "t": status.get("server_time", self._wall()),
            "frame_rate": rate,
            "ring_fill": round(float(ring.get("fill") or 0) / slots, 4) if slots else None,
            "backlog_bytes": (status.get("ledger") or {}).get("bytes_pending"),
            "disk_percent": (status.get("disk") or {}).get("percent"),
        }
