"""The simulated detector's ZeroMQ frame stream: a PUSH socket that sends a series at a chosen rate.

Like a DECTRIS detector it binds and waits for a consumer; when the consumer stops reading, the send
queue fills and the simulator waits (and counts the time it was held back as it passes, so a send that
is still blocked, or given up at a stop, is in the count too).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from kernels import compress_chunk


@dataclass(frozen=True)
class StreamFaults:
    """Faults to inject into the frame stream (probabilities per frame)."""

    loss: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    stall_seconds: float = 0.0
    burst: int = 0
    seed: int = 0


@dataclass
class SendSummary:
    """What a series sent. ``frames_sent`` counts every frame of the series, including those an
    injected fault destroyed on the way (listed in ``faults["truth"]``)."""

    series: int
    run_uid: str
    frames_sent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    seconds_held_back: float = 0.0
    encoding: str = "<"
    stopped_early: bool = False
    #: the series' end message was taken by the transport (False: the consumer held the sender back past
    #: its 5 s, e.g. after a Ctrl-C while the appliance's store was full: the series stays open there until
    #: the next one starts, and the frames still queued when the sender closes may never arrive)
    end_sent: bool = False
    faults: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        rate = self.frames_sent / self.seconds if self.seconds > 0 else 0.0
        return {**self.__dict__, "rate_hz_achieved": round(rate, 2)}


class ZmqFrameSender:
    """Binds a PUSH socket and sends series of frames."""

    def __init__(self, endpoint: str, context: zmq.Context, sndhwm: int = 2) -> None:
        self.sock = context.socket(zmq.PUSH)
        self.sock.sndhwm = sndhwm
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _send(
        self,
        parts: list[Any],
        stop: threading.Event,
        summary: SendSummary,
        timeout: float | None = None,
        waiting: Callable[[SendSummary], None] | None = None,
    ) -> bool:
        """Send one message once the consumer has room; False when ``stop`` or ``timeout`` came first.

        The wait is held-back time, added to ``summary.seconds_held_back`` as it passes (a send still
        blocked shows in the summary, and one given up is counted too); ``waiting(summary)`` is told
        about once a second while blocked.
        """
        try:  # the usual case, the consumer has room: sent without a poll
            self.sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            pass
        started = last = told = time.perf_counter()
        try:
            while True:
                if self.sock.poll(100, zmq.POLLOUT):
                    # never a blocking send: the room the poll saw goes when the consumer goes (a daemon
                    # killed then), and a blocked send heard no stop: SIGTERM did nothing for a minute and
                    # the summary never came (an outside probe)
                    try:
                        self.sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
                        return True
                    except zmq.Again:
                        pass
                now = time.perf_counter()
                summary.seconds_held_back += now - last
                last = now
                if waiting is not None and now - told >= 1.0:
                    told = now
                    waiting(summary)
                if stop.is_set() or (timeout is not None and now - started > timeout):
                    return False
        finally:
            summary.seconds_held_back += time.perf_counter() - last

    def send_series(
        self,
        frame: Callable[[int], np.ndarray],
        frames: int,
        rate_hz: float,
        series: int,
        run_uid: str,
        config: dict[str, Any],
        stop: threading.Event,
        encoding: str = "<",
        progress: Callable[[SendSummary], None] | None = None,
        faults: StreamFaults | None = None,
        meta: Callable[[int], dict[str, Any]] | None = None,
    ) -> SendSummary:
        """Send one series; ``frames`` 0 means until ``stop`` is set.

        ``faults`` drops, corrupts (wrong data size) or duplicates whole image messages, stalls once
        half-way, or sends in bursts; the summary lists the frame numbers each fault hit.
        """
        faults = faults or StreamFaults()
        rng = random.Random(faults.seed)
        dropped: list[int] = []
        corrupted: list[int] = []
        duplicated: list[int] = []
        summary = SendSummary(series, run_uid, encoding=encoding)
        first = frame(0)
        shape = (int(first.shape[0]), int(first.shape[1]))
        dtype = str(first.dtype)
        if encoding != "<":  # bitshuffle's element size is the pixels' (8-bit pixels go raw)
            bits = 8 * first.dtype.itemsize
            encoding = "<" if bits == 8 else f"bs{bits}-lz4<"
            summary.encoding = encoding
        header = encode_series_start(
            series, shape, dtype, run_uid=run_uid, frames_expected=frames or None, **config
        )
        start = time.perf_counter()

        def waiting(summary: SendSummary) -> None:  # progress goes on while the consumer holds us back
            if progress is not None:
                summary.seconds = time.perf_counter() - start
                progress(summary)

        if not self._send(header, stop, summary, waiting=waiting):
            summary.stopped_early = True
            return summary
        period = 1.0 / rate_hz
        next_due = time.perf_counter()
        last_progress = next_due
        number = 0
        while frames == 0 or number < frames:
            if stop.is_set():
                summary.stopped_early = True
                break
            if faults.burst <= 1 or number % faults.burst == 0:
                delay = next_due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing to the chosen rate, not synchronisation
                next_due += period * max(1, faults.burst)
            if faults.stall_seconds and frames and number == frames // 2:
                time.sleep(faults.stall_seconds)  # the injected stall
                # the frames after it paced from it: the next one a period later, not at once (the pause
                # came out a period short at slow rates; an outside probe)
                next_due = time.perf_counter() + period * max(1, faults.burst)
            if rng.random() < faults.loss:
                dropped.append(number)  # the detector made it; the injected fault lost it on the way
                summary.frames_sent += 1
                number += 1
                continue
            pixels = frame(number)
            data = (
                memoryview(np.ascontiguousarray(pixels)).cast("B")
                if encoding == "<"
                else compress_chunk(pixels)
            )
            now = time.time_ns()
            extra = meta(number) if meta is not None else {}  # e.g. a tomography frame's image key
            parts = encode_image(series, number, shape, dtype, data, encoding, now, now, **extra)
            if rng.random() < faults.corrupt:
                parts[2] = bytes(data)[:-1]  # a data part one byte short of its header's size
                corrupted.append(number)
            if not self._send(parts, stop, summary, waiting=waiting):
                summary.stopped_early = True
                break
            if rng.random() < faults.duplicate:
                duplicated.append(number)
                self._send(parts, stop, summary)
            summary.frames_sent += 1
            summary.bytes_sent += pixels.nbytes
            number += 1
            if progress is not None and time.perf_counter() - last_progress >= 1.0:
                last_progress = time.perf_counter()
                summary.seconds = last_progress - start
                progress(summary)
        # the end of the series is sent even after a stop, but a consumer that is gone cannot hold it up
        summary.end_sent = self._send(encode_series_end(series), threading.Event(), summary, timeout=5.0)
        if not summary.end_sent:
            summary.stopped_early = True
        summary.seconds = time.perf_counter() - start
        summary.faults = {
            **faults.__dict__,
            "truth": {
                "frames_lost": sorted(dropped + corrupted),
                "frames_dropped": dropped,
                "frames_corrupted": corrupted,
                "frames_duplicated": duplicated,
            },
        }
        return summary

    def close(self, linger_ms: int = 10_000) -> None:
        """Close after queued messages are delivered (or ``linger_ms`` passes: then they are dropped)."""
        self.sock.close(linger=linger_ms)
