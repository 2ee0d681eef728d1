"""The simulated detector's ZeroMQ frame stream: a PUSH socket that sends a series at a chosen rate.

Like a DECTRIS detector it binds and waits for a consumer; when the consumer stops reading, the send
queue fills and the simulator waits (and counts the time it was held back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from kernels import compress_chunk


@dataclass
class SendSummary:
    series: int
    run_uid: str
    frames_sent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    seconds_held_back: float = 0.0
    encoding: str = "<"
    stopped_early: bool = False
    faults: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        rate = self.frames_sent / self.seconds if self.seconds > 0 else 0.0
        return {**self.__dict__, "rate_hz_achieved": round(rate, 2)}


class ZmqFrameSender:
    """Binds a PUSH socket and sends series of frames."""

    def __init__(self, endpoint: str, context: zmq.Context, sndhwm: int = 16) -> None:
        self.sock = context.socket(zmq.PUSH)
        self.sock.sndhwm = sndhwm
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _send(self, parts: list[Any], stop: threading.Event, summary: SendSummary) -> bool:
        started = time.perf_counter()
        while not self.sock.poll(100, zmq.POLLOUT):
            if stop.is_set():
                return False
        summary.seconds_held_back += time.perf_counter() - started
        self.sock.send_multipart(parts, copy=False)
        return True

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
    ) -> SendSummary:
        """Send one series; ``frames`` 0 means until ``stop`` is set."""
        summary = SendSummary(series, run_uid, encoding=encoding)
        first = frame(0)
        shape = (int(first.shape[0]), int(first.shape[1]))
        dtype = str(first.dtype)
        header = encode_series_start(
            series, shape, dtype, run_uid=run_uid, frames_expected=frames or None, **config
        )
        start = time.perf_counter()
        if not self._send(header, stop, summary):
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
            delay = next_due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing to the chosen rate, not synchronisation
            next_due += period
            pixels = frame(number)
            data = (
                memoryview(np.ascontiguousarray(pixels)).cast("B")
                if encoding == "<"
                else compress_chunk(pixels)
            )
            now = time.time_ns()
            parts = encode_image(series, number, shape, dtype, data, encoding, now, now)
            if not self._send(parts, stop, summary):
                summary.stopped_early = True
                break
            summary.frames_sent += 1
            summary.bytes_sent += pixels.nbytes
            number += 1
            if progress is not None and time.perf_counter() - last_progress >= 1.0:
                last_progress = time.perf_counter()
                summary.seconds = last_progress - start
                progress(summary)
        self._send(encode_series_end(series), threading.Event(), summary)
        summary.seconds = time.perf_counter() - start
        return summary

    def close(self, linger_ms: int = 60_000) -> None:
        """Close after queued messages are delivered (or ``linger_ms`` passes)."""
        self.sock.close(linger=linger_ms)
