"""The pipeline: takes frames from the ring in order, reduces them, stores them, frees the slot.

Per frame: dark/flat correction and 1D azimuthal integration (the kernel registry's backend), and
bitshuffle-LZ4 compression of the raw frame into an HDF5 chunk. Three stages overlap, each on its own
thread and each in ring order: the reducing thread integrates frame n while the compressing thread
compresses it, and the writing thread writes frame n - 1's chunk and profile; a full rollover file is
finished (fsync, rename, checksum, ledger) on a fourth thread while the next one fills. The slot is
released only after the frame is written to the run's file, so the ring never overwrites unpersisted
data. In-band control records in the ring open and close runs in order with their frames; a run is
closed only when all its files are finished and registered.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.recorder import RunRecorder
from edge.ring import KIND_CONTROL, KIND_FRAME, FrameRing, Slot
from edge.store import RunMetadata, RunStore
from firmware_bridge.source import Checkpoint, Spawner, plain_spawn
from kernels import Backend, Geometry, compress_chunk, make_gain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Dark, flat and mask images and the pyFAI-style corrections for one detector."""

    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    mask: np.ndarray | None = None
    solid_angle: bool = False
    polarization: float | None = None

    def check(self, shape: tuple[int, int]) -> None:
        for name in ("dark", "flat", "mask"):
            image = getattr(self, name)
            if image is not None and image.shape != shape:
                raise ValueError(f"{name} image is {image.shape}, frames are {shape}")


class Reduction:
    """Per-run kernel state: correction arrays and the integrator for one frame shape."""

    def __init__(
        self,
        backend: Backend,
        geometry: Geometry,
        shape: tuple[int, int],
        bins: int,
        unit: str,
        calibration: Calibration | None = None,
    ) -> None:
        cal = calibration or Calibration()
        self.backend = backend
        self.shape = shape
        cal.check(shape)
        self.dark = np.zeros(shape, np.float32) if cal.dark is None else cal.dark.astype(np.float32)
        self.gain = make_gain(shape, cal.flat, cal.mask)  # 1/flat, 0 at masked and unusable pixels
        excluded = self.gain == 0
        # dark, flat, mask and the geometric corrections are folded into the integrator, which then
        # reads the raw frame once; its profile is pyFAI's (sum of signal over sum of normalisation)
        self.integrator = backend.integrator(
            geometry,
            shape,
            bins,
            unit=unit,
            mask=excluded if excluded.any() else None,
            dark=cal.dark,
            flat=cal.flat,
            correct_solid_angle=cal.solid_angle,
            polarization_factor=cal.polarization,
        )
        self._scratch = np.empty(shape, dtype=np.float32)

    def reduce(self, raw: np.ndarray) -> np.ndarray:
        """The 1D profile of one raw frame."""
        return self.integrator.integrate(raw)

    def corrected(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - dark) / flat`` with masked pixels 0 (for previews and spot finding)."""
        return self.backend.correct(raw, self.dark, self.gain, self._scratch)


@dataclass
class _Work:
    """One ring slot on its way from the reducing thread to the writing thread, in ring order."""

    slot: Slot
    action: str  # "frame", "open", "close" or "release" (nothing to write: a counted loss or no-op)
    chunk: Future[bytes] | None = None
    profile: np.ndarray | None = None
    record: dict[str, Any] | None = None
    radial: np.ndarray | None = None
    started: float = 0.0


class Pipeline:
    """Consumes the ring on two threads; see the module docstring."""

    def __init__(
        self,
        ring: FrameRing,
        backend: Backend,
        geometry: Geometry,
        store_root: Path,
        bins: int,
        unit: str,
        frames_per_file: int,
        file_seconds: float,
        recorder: RunRecorder,
        may_write: Callable[[], bool] = lambda: True,
        calibration: Calibration | None = None,
        queue_depth: int = 8,
        compress_threads: int = 1,
        frame_threads: int = 0,
    ) -> None:
        self.ring = ring
        self.backend = backend
        self.geometry = geometry
        self.store_root = store_root
        self.bins = bins
        self.unit = unit
        self.frames_per_file = frames_per_file
        self.file_seconds = file_seconds
        self.recorder = recorder
        self.may_write = may_write
        self.calibration = calibration
        self.stats: Counter[str] = Counter()
        self.latest_profile: tuple[np.ndarray, np.ndarray] | None = None
        self._compressor = ThreadPoolExecutor(max_workers=compress_threads, thread_name_prefix="compress")
        self.frame_threads = frame_threads
        self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-closer")
        self._work: queue.Queue[_Work | None] = queue.Queue(maxsize=queue_depth)
        self._reduction: Reduction | None = None  # the reducing thread's
        self._run_uid: str | None = None  # the reducing thread's view: the run frames now belong to
        self._store: RunStore | None = None  # the writing thread's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._busy_seconds = 0.0

    def start(self, spawn: Spawner = plain_spawn) -> None:
        """Start the writing and reducing threads through ``spawn`` (the appliance supervises them)."""
        self._writer = spawn("pipeline-writer", self._write_loop)
        self._thread = spawn("pipeline", self._run)

    def stop(self) -> None:
        """Finish what is in the ring, close the open run, and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._writer is not None:
            self._writer.join(timeout=60)
        self._compressor.shutdown(wait=True)
        self._closer.shutdown(wait=True)

    def counters(self) -> dict[str, Any]:
        store = self._store
        return {
            "backend": self.backend.name,
            "backend_degraded_from": list(self.backend.degraded_from),
            "busy_seconds": round(self._busy_seconds, 3),
            "run": store.run_uid if store else None,
            "queued": self._work.qsize(),
            **{k: int(v) for k, v in self.stats.items()},
        }

    # -- the reducing thread: takes slots in ring order, integrates, starts compression -------------------
    def _run(self, checkpoint: Checkpoint) -> None:
        if self.frame_threads:
            self.backend.limit_threads(self.frame_threads)  # this thread's kernels only
        while True:
            checkpoint()  # between slots: an error raised here leaves no slot half-handled
            slot = self.ring.next_ready(timeout=0.1)
            if slot is None:
                # everything published has been handed on; a slot a stopped reader claimed but never
                # filled holds no frame (the reader recorded it as lost)
                if self._stop.is_set() and self.ring.caught_up():
                    break
                continue
            try:
                work = self._reduce(slot)
            except Exception as error:  # a bug: log it, count it, record the loss
                log.exception("pipeline failed on slot %d", slot.seq)
                self._failed(slot, self._run_uid, error)
                work = _Work(slot, "release")
            self._work.put(work)
        self._work.put(None)  # normal end (stopping and caught up): the writer finishes after it

    def _reduce(self, slot: Slot) -> _Work:
        kind = int(slot.header["kind"])
        if kind == KIND_CONTROL:
            record = json.loads(slot.payload)
            if record["event"] == "series_start":
                shape = (int(record["height"]), int(record["width"]))
                self._reduction = Reduction(
                    self.backend, self.geometry, shape, self.bins, self.unit, self.calibration
                )
                self._run_uid = str(record["run_uid"])
                return _Work(slot, "open", record=record, radial=self._reduction.integrator.radial)
            if record["event"] == "series_end":
                self._run_uid = None
                return _Work(slot, "close", record=record)
            return _Work(slot, "release")
        if kind != KIND_FRAME:
            return _Work(slot, "release")
        if not self.may_write():  # the store is full of unverified data: hold the ring (backpressure)
            self.stats["backpressure_waits"] += 1
            while not self.may_write() and not self._stop.is_set():
                time.sleep(0.1)
        frame = int(slot.header["frame"])
        if self._run_uid is None or self._reduction is None:
            self.stats["frames_outside_run"] += 1
            self.recorder.loss(None, frame, frame, "outside_run", "frame arrived with no open run")
            return _Work(slot, "release")
        started = time.perf_counter()
        raw = slot.array()
        if raw.shape != self._reduction.shape:
            self.stats["frames_wrong_shape"] += 1
            self.recorder.loss(self._run_uid, frame, frame, "wrong_shape", f"{raw.shape}")
            return _Work(slot, "release")
        chunk = self._compressor.submit(compress_chunk, raw)  # bitshuffle releases the GIL: overlap
        profile = self._reduction.reduce(raw)
        self._busy_seconds += time.perf_counter() - started
        return _Work(slot, "frame", chunk=chunk, profile=profile, started=started)

    def _failed(self, slot: Slot, run_uid: str | None, error: BaseException) -> None:
        """A frame the pipeline could not handle: counted, and a loss record (control slots: logged only)."""
        if int(slot.header["kind"]) == KIND_FRAME:
            self.stats["frames_failed"] += 1
            frame = int(slot.header["frame"])
            self.recorder.loss(run_uid, frame, frame, "pipeline_error", repr(error)[:200])

    # -- the writing thread: in ring order, writes chunks and releases slots ----------------------------
    def _write_loop(self, checkpoint: Checkpoint) -> None:
        while True:
            checkpoint()
            try:
                work = self._work.get(timeout=0.1)
            except queue.Empty:
                self._tick()
                reducer = self._thread
                if self._stop.is_set() and reducer is not None and not reducer.is_alive():
                    break  # the reducing thread died for good: nothing more will come
                continue
            if work is None:
                break
            try:
                self._write(work)
            except Exception as error:  # a full disk or a bug: log it, count it, record the loss
                log.exception("pipeline failed writing slot %d", work.slot.seq)
                self._failed(work.slot, self._store.run_uid if self._store else None, error)
            finally:
                self.ring.release(work.slot)
        if self._store is not None:
            try:
                self._close_run("abort")
            except Exception:
                log.exception("closing the run at shutdown failed")
                self.stats["file_close_errors"] += 1

    def _tick(self) -> None:
        if self._store is not None:
            try:
                self._store.tick()
            except Exception:  # a file that cannot be closed must not stop the pipeline
                log.exception("closing a rollover file failed")
                self.stats["file_close_errors"] += 1

    def _write(self, work: _Work) -> None:
        if work.action == "open":
            record = work.record or {}
            self._open_run(record, work.radial if work.radial is not None else np.empty(0))
        elif work.action == "close":
            self._close_run((work.record or {}).get("exit_status", "success"))
        elif work.action == "frame":
            assert work.chunk is not None and work.profile is not None
            store = self._store
            if store is None:  # cannot happen: frames are only handed on inside a run
                raise RuntimeError("frame reached the writer with no open run")
            chunk = work.chunk.result()
            slot = work.slot
            store.write(int(slot.header["frame"]), chunk, work.profile, int(slot.header["flags"]))
            self.latest_profile = (store.radial, work.profile)
            self.stats["frames_processed"] += 1
            self.stats["bytes_raw"] += slot.array().nbytes
            self.stats["bytes_compressed"] += len(chunk)

    def _open_run(self, record: dict[str, Any], radial: np.ndarray) -> None:
        if self._store is not None:
            self._close_run("abort")
        shape = (int(record["height"]), int(record["width"]))
        self._store = RunStore(
            self.store_root,
            record["run_uid"],
            shape,
            record["dtype"],
            self.frames_per_file,
            self.file_seconds,
            radial,
            self.unit,
            self.recorder.file_closed,
            RunMetadata(
                self.geometry,
                str(record.get("detector") or "edge detector"),
                record.get("frames_expected"),
                datetime.now(UTC).isoformat(),
                record.get("nxmx") or {},
                None if self.calibration is None else self.calibration.mask,
            ),
            closer=self._closer,
            on_close_failed=self._file_close_failed,
        )
        self.stats["runs_opened"] += 1

    def _file_close_failed(self, run_uid: str, frames: list[int], error: BaseException) -> None:
        """A rollover file could not be finished: its frames are lost, each with a record."""
        self.stats["file_close_errors"] += 1
        for frame in frames:
            self.recorder.loss(run_uid, frame, frame, "file_close_failed", repr(error)[:200])

    def _close_run(self, exit_status: str) -> None:
        store, self._store = self._store, None
        if store is None:
            return
        store.close()  # waits for its files to be finished and registered
        self.stats["runs_closed"] += 1
        self.recorder.close_run(store.run_uid, store.frames_written, exit_status)
