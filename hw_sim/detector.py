"""The simulated detector as one process: the camera IOC drives the ZeroMQ frame stream.

A real detector's control (EPICS PVs) and data (the frame stream) are one device: ``Acquire`` = 1 with
``NumImages`` N makes it send a series header, N frames at ``AcquirePeriod`` and the series end.
`StreamingDetector` is that coupling for the simulator: it is the `CamHooks` of a `SimCamIOC`, and a
worker thread owns the PUSH socket (ZeroMQ sockets are not thread-safe, and the IOC's event loop must
never wait on a slow consumer). ``Acquire`` = 0 aborts: the series end goes out early, and the consumer
accounts for the frames that never came. `run_detector` (``edge sim --ioc``) serves both until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from hw_sim import stream2_sender as stream2
from hw_sim.ioc import CamHooks, SimCamIOC, serve
from kernels import compress_chunk

__all__ = ["StreamingDetector", "run_detector"]

log = logging.getLogger(__name__)

#: Commands queued between the IOC's hooks and the sender thread before frames are dropped (and counted).
QUEUE_DEPTH = 1024


#: areaDetector's FrameType -> NXtomo's image_key (0 projection, 1 flat, 2 dark), as docs/pvs.md states
IMAGE_KEYS = {"Normal": 0, "FlatField": 1, "Background": 2}


class StreamingDetector:
    """Camera hooks that turn the IOC's acquisitions into DECTRIS-style series on a PUSH socket.

    Parameters
    ----------
    endpoint:
        Where the PUSH socket binds, e.g. ``tcp://127.0.0.1:5560``.
    frame:
        ``frame(index) -> 2-D array``: the pixels of frame ``index`` of a series.
    context:
        The ZeroMQ context the socket is made in.
    first_series:
        Series number of the first acquisition; each acquisition takes the next.
    encoding:
        ``"<"`` (raw little-endian) or ``"bs16-lz4<"`` (bitshuffle-LZ4); the JSON stream only.
    stream_format:
        ``"json"`` (DECTRIS stream v1 style) or ``"stream2"`` (DECTRIS Stream V2, CBOR, bslz4 images).
    config:
        Extra keys for every series header (geometry, seed, ...).
    """

    def __init__(
        self,
        endpoint: str,
        frame: Callable[[int], np.ndarray],
        context: zmq.Context,
        *,
        first_series: int = 1,
        encoding: str = "<",
        config: dict[str, Any] | None = None,
        sndhwm: int = 16,
        stream_format: str = "json",
    ) -> None:
        self.frame = frame
        self.encoding = encoding
        self.stream_format = stream_format
        self.config = dict(config or {})
        self.sock = context.socket(zmq.PUSH)
        self.sock.sndhwm = sndhwm
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        first = frame(0)
        self.shape = (int(first.shape[0]), int(first.shape[1]))
        self.dtype = str(first.dtype)
        #: Frames sent, series started/ended, frames dropped because the sender fell behind.
        self.stats: Counter[str] = Counter()
        self.series = first_series - 1
        self.run_uid: str | None = None
        self._stream2_uid = ""
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(QUEUE_DEPTH)
        #: the camera's FrameType now (the IOC sets it); Normal frames are projections / diffraction
        self.frame_type: Callable[[], str] = lambda: "Normal"
        #: the camera's exposure and frame period now (the IOC sets it): the series header's DECTRIS
        #: ``count_time`` and ``frame_time``, in seconds
        self.timing: Callable[[], dict[str, float]] = dict
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-detector-sender", daemon=True)
        self._thread.start()

    def hooks(self) -> CamHooks:
        """The hooks to give `SimCamIOC`."""
        return CamHooks(
            on_acquire_start=self._on_acquire_start,
            on_frame=self._on_frame,
            on_acquire_stop=self._on_acquire_stop,
        )

    def close(self, linger_ms: int = 2000) -> None:
        """Stop the sender thread and close the socket (queued messages get ``linger_ms`` to leave)."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close(linger=linger_ms)

    # --- hooks (the IOC's loop) ------------------------------------------------------------------
    def _on_acquire_start(self, planned: int) -> None:
        self.series += 1
        self.run_uid = str(uuid.uuid4())
        self._queue.put(("start", self.series, self.run_uid, planned, self.timing()))

    def _on_frame(self, index: int) -> None:
        try:
            # the camera's FrameType at the moment of the frame becomes its image key (NXtomo)
            self._queue.put_nowait(("frame", self.series, index, IMAGE_KEYS.get(self.frame_type(), 0)))
        except queue.Full:  # the consumer is not reading: the frame is lost, and counted
            self.stats["frames_dropped_sender_behind"] += 1

    def _on_acquire_stop(self) -> None:
        self._queue.put(("end", self.series))

    # --- the sender thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                command = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            kind, series = command[0], command[1]
            if self.stream_format == "stream2":
                self._run_stream2(command)
            elif kind == "start":
                run_uid, planned, timing = command[2], command[3], command[4]
                parts = encode_series_start(
                    series,
                    self.shape,
                    self.dtype,
                    run_uid=run_uid,
                    frames_expected=planned or None,
                    **{**self.config, **timing},
                )
                if self._send(parts):
                    self.stats["series_started"] += 1
                    log.info("series %d (run %s): %s frames", series, run_uid, planned or "unbounded")
            elif kind == "frame":
                index, key = command[2], command[3]
                pixels = np.ascontiguousarray(self.frame(index))
                data = memoryview(pixels).cast("B") if self.encoding == "<" else compress_chunk(pixels)
                now = time.time_ns()
                parts = encode_image(
                    series,
                    index,
                    self.shape,
                    self.dtype,
                    data,
                    self.encoding,
                    now,
                    now,
                    image_key=key or None,
                )
                if self._send(parts):
                    self.stats["frames_sent"] += 1
            else:
                if self._send(encode_series_end(series)):
                    self.stats["series_ended"] += 1

    def _run_stream2(self, command: tuple[Any, ...]) -> None:
        """The same commands as DECTRIS Stream V2 messages (one ZeroMQ message each)."""
        kind, series = command[0], command[1]
        if kind == "start":
            self._stream2_uid = str(command[2])
            message = stream2.encode_start(
                series,
                self._stream2_uid,
                self.shape,
                self.dtype,
                command[3] or None,
                {**self.config, **command[4]},
            )
            if self._send([message]):
                self.stats["series_started"] += 1
        elif kind == "frame":
            chunk = compress_chunk(np.ascontiguousarray(self.frame(command[2])))
            message = stream2.encode_image(
                series, self._stream2_uid, command[2], self.shape, self.dtype, chunk, time.time_ns()
            )
            if self._send([message]):
                self.stats["frames_sent"] += 1
        elif self._send([stream2.encode_end(series, self._stream2_uid)]):
            self.stats["series_ended"] += 1

    def _send(self, parts: list[Any]) -> bool:
        """Send when the consumer has room; give up only when closing."""
        while not self.sock.poll(100, zmq.POLLOUT):
            if self._stop.is_set():
                return False
        self.sock.send_multipart(parts, copy=False)
        return True


def run_detector(
    *,
    prefix: str,
    endpoint: str,
    frame: Callable[[int], np.ndarray],
    port: int = 5064,
    interface: str = "127.0.0.1",
    first_series: int = 1,
    encoding: str = "<",
    config: dict[str, Any] | None = None,
    stream_format: str = "json",
    stopped_state: str = "Aborted",
) -> dict[str, int]:
    """Serve the camera IOC and its frame stream until SIGINT/SIGTERM; return the sender's counters.

    Prints ``READY <prefix> <interface>:<tcp port> <stream endpoint>`` on stdout once both serve.
    """
    context = zmq.Context()
    detector = StreamingDetector(
        endpoint,
        frame,
        context,
        first_series=first_series,
        encoding=encoding,
        config=config,
        stream_format=stream_format,
    )
    first = frame(0)
    max_size = (int(first.shape[1]), int(first.shape[0]))
    data_type = {"uint8": "UInt8", "uint16": "UInt16", "uint32": "UInt32", "float32": "Float32"}.get(
        str(first.dtype), "UInt16"
    )

    def announce(tcp_port: int) -> None:
        print(f"READY {prefix} {interface}:{tcp_port} {detector.endpoint}", flush=True)

    async def main_task() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        ioc = SimCamIOC(
            prefix, detector.hooks(), max_size=max_size, data_type=data_type, stopped_state=stopped_state
        )
        detector.frame_type = lambda: str(ioc.frame_type.value)
        detector.timing = ioc.timing
        with contextlib.suppress(asyncio.CancelledError):
            await serve(ioc, interfaces=(interface,), port=port, on_ready=announce)

    try:
        asyncio.run(main_task())
    finally:
        detector.close()
        context.term()
    return dict(detector.stats)
