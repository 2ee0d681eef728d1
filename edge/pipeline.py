"""The pipeline: takes frames from the ring in order, reduces them, stores them, frees the slot.

Per frame: dark/flat correction and 1D azimuthal integration (the kernel registry's backend), and
bitshuffle-LZ4 compression of the raw frame into an HDF5 chunk. Three stages overlap, each on its own
thread and each in ring order: the reducing thread integrates frame n while the compressing thread
compresses it, and the writing thread writes frame n - 1's chunk and profile; a full rollover file is
finished (fsync, rename, checksum, ledger) on a fourth thread while the next one fills. The reducing
thread starts each frame's mode stage (``ModeStage.start``); the writing thread collects its products in
ring order (``FrameResult.finish``): with ``reduction.analysis_threads`` > 1 serial and powder frames are
analysed several at once on their own threads, and on the GPU one frame's copy and kernel overlap the
next frame's hand-over. The slot is
released only after the frame is written to the run's file, so the ring never overwrites unpersisted
data. In-band control records in the ring open and close runs in order with their frames; a run is
closed only when all its files are finished and registered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ReductionSettings
from edge.diskguard import DiskGuard, brief
from edge.modes import (
    Corrections,
    EarlierParts,
    FrameResult,
    ModeStage,
    PowderStage,
    RunContext,
    make_stage,
    warm_up,
)
from edge.recorder import RunRecorder
from edge.recovery import continue_after_pause
from edge.ring import KIND_CONTROL, KIND_FRAME, FrameRing, Slot
from edge.run_masks import RunMasks
from edge.store import MAX_WAITING_ROWS, PAUSE_SECONDS, ReducedWriter, RunMetadata, RunStore
from firmware_bridge.hdf5_chunks import ChunkError, decode_bslz4
from firmware_bridge.source import (
    FLAG_CHUNK,
    FLAG_INCOMPLETE,
    FLAG_STATE_MASK,
    Checkpoint,
    Spawner,
    plain_spawn,
)
from kernels import Backend, Geometry, compress_chunk, frame_dummies, invalid_pixels

log = logging.getLogger(__name__)

#: a reduced file's products held in memory at most (bytes, uncompressed) before it is written; the
#: appliance bounds it further by the store's headroom (``reduced_file_bytes``)
REDUCED_FILE_BYTES = 256 << 20
RESUME_WAIT_SECONDS = 2.0  # held frames wait this long at most for the disk guard to see the room


def reduced_file_bytes(headroom: int) -> int:
    """The bound on a reduced file's products for a store keeping ``headroom`` bytes free: a reduced file
    is written whole when it is finished, so a quarter of the headroom (the rest for the data files being
    written and the ledger), at least 1 MiB and at most ``REDUCED_FILE_BYTES``."""
    if headroom <= 0:
        return REDUCED_FILE_BYTES
    return max(1 << 20, min(REDUCED_FILE_BYTES, headroom // 4))


@dataclass
class _Work:
    """One ring slot on its way from the reducing thread to the writing thread, in ring order."""

    slot: Slot
    action: str  # "frame", "open", "close" or "release" (nothing to write: a counted loss or no-op)
    chunk: Future[bytes | memoryview] | None = None
    result: FrameResult | None = None
    record: dict[str, Any] | None = None
    stage: ModeStage | None = None
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
        calibration: Corrections | None = None,
        store_blanks: str = "keep",
        disk: DiskGuard | None = None,
        queue_depth: int = 8,
        compress_threads: int = 1,
        frame_threads: int = 0,
        run_masks: RunMasks | None = None,
        analysis_threads: int = 1,
        reduced_file_seconds: float = 10.0,
        gaps: np.ndarray | None = None,
        reduced_file_bytes: int = REDUCED_FILE_BYTES,
    ) -> None:
        self.ring = ring
        self.gaps = gaps  # the detector's module gaps (in the mask too): NXmx pixel_mask bit 0
        self.backend = backend
        self.geometry = geometry
        self.store_root = store_root
        self.bins = bins
        self.unit = unit
        self.frames_per_file = frames_per_file
        self.file_seconds = file_seconds
        self.reduced_file_seconds = reduced_file_seconds
        self.reduced_file_bytes = reduced_file_bytes
        self.recorder = recorder
        self.may_write = may_write
        self.calibration = calibration
        self.run_masks = run_masks  # a run's detector mask combined with the settings' (Stream V2)
        self.store_blanks = store_blanks
        self.disk = disk
        self.stats: Counter[str] = Counter()
        self.mode_failed: dict[str, str] | None = None  # the newest run whose mode stage could not start
        # each mode warm-up running (`warm_up`, on this thread or one of its own): (mode, monotonic time
        # it began, frames processed then), for the IOC's progress, the status and its alarm
        self._warm_ups: dict[int, tuple[str, float, int]] = {}
        self._warm_up_ids = itertools.count()
        # the open (or last) run's vetoed frames, live: the ledger has a run's count once it has ended
        self._run_vetoed: tuple[str | None, int] = (None, 0)
        # the newest powder frame's (radial axis, intensity, pixels per bin) for the live view
        self.latest_profile: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._compressor = ThreadPoolExecutor(max_workers=compress_threads, thread_name_prefix="compress")
        self.frame_threads = frame_threads
        # frames analysed at once (serial peaks, powder profiles) on CPU backends; on the GPU the device
        # is what runs in parallel, and one thread feeds it
        self._analysis: ThreadPoolExecutor | None = None
        if analysis_threads > 1 and backend.name != "gpu":
            self._analysis = ThreadPoolExecutor(
                max_workers=analysis_threads, thread_name_prefix="analysis", initializer=self._limit_threads
            )
        self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-closer")
        self._work: queue.Queue[_Work | None] = queue.Queue(maxsize=queue_depth)
        self._stage: ModeStage | None = None  # the reducing thread's: the open run's mode
        #: the newest run's uid and stage, for the live product view (kept after the run ends); one
        #: reference, so a reader never pairs one run's stage with another's uid
        self.latest_run: tuple[str, ModeStage] | None = None
        self._reduced: ReducedWriter | None = None  # the writing thread's
        self._run_uid: str | None = None  # the reducing thread's view: the run frames now belong to
        self._run_dtype = np.dtype("uint16")  # the reducing thread's: the open run's pixel type
        self._capturing = False  # the reducing thread's: the open run is an areaDetector capture's
        self._store: RunStore | None = None  # the writing thread's
        # a run whose files could not be opened (a full disk at its start): (run uid, why); its frames are
        # loss records of it, and it is ended in the ledger when its series ends (an outside chaos probe:
        # its frames were recorded lost with no run, then again as a crash's at the next start)
        self._unopened: tuple[str, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._busy_seconds = 0.0
        self._pins = contextlib.ExitStack()  # the ring's page-locking for the GPU, undone at stop

    def start(self, spawn: Spawner = plain_spawn) -> None:
        """Start the writing and reducing threads through ``spawn`` (the appliance supervises them)."""
        self._pin_ring()
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
        if self._analysis is not None:
            self._analysis.shutdown(wait=True)
        self._closer.shutdown(wait=True)
        self._pins.close()  # no frame is on its way to the device any more

    def _pin_ring(self) -> None:
        """On a backend with memory of its own (the GPU: ``pin_host``), page-lock the ring's frame slots
        for the pipeline's lifetime, so that frames go to the device asynchronously and at the bus's
        speed. A refusal (the memlock limit, a driver error) is logged and counted, and frames are then
        copied from pageable memory: slower, the same results."""
        pin = getattr(self.backend.module, "pin_host", None)
        if pin is None:
            return
        slots = self.ring.slot_memory()
        try:
            self._pins.enter_context(pin(slots))
        except Exception as error:
            self.stats["ring_pin_failures"] += 1
            log.warning(
                "the frame ring (%d MiB) could not be page-locked for the GPU (%s): frames go to the device"
                " from pageable memory; raise the memlock limit (LimitMEMLOCK=infinity in edge.service)",
                slots.nbytes >> 20,
                error,
            )
            return
        self.stats["ring_pinned_bytes"] = slots.nbytes
        log.info("frame ring page-locked for the GPU: %d MiB", slots.nbytes >> 20)

    def progress(self) -> tuple[int, int]:
        """What changes while the pipeline works: frames processed, and how many mode warm-ups (kernel
        loads or compiles, which a run's first frame may be waiting for) are running."""
        return int(self.stats["frames_processed"]), len(self._warm_ups)

    def open_bytes(self) -> int:
        """Bytes of the files open for writing now (`RunStore.open_bytes`; any thread)."""
        store = self._store
        if store is None:
            return 0
        try:
            return store.open_bytes()
        except RuntimeError:  # (its files changing meanwhile): counted at the next look
            return 0

    def writing(self) -> tuple[str | None, int]:
        """The run being written now (None between runs) and its frames stored so far (written, less
        those of files given up when the disk filled)."""
        store = self._store
        return (store.run_uid, store.frames_stored) if store is not None else (None, 0)

    def counters(self) -> dict[str, Any]:
        store = self._store
        return {
            "backend": self.backend.name,
            "backend_degraded_from": list(self.backend.degraded_from),
            "busy_seconds": round(self._busy_seconds, 3),
            "run": store.run_uid if store else None,
            # the run whose mode product GET /api/product serves (the newest the pipeline began; its mode's
            # kernels may still be loading): the dashboard asks for the product again when it changes
            "product_run": latest[0] if (latest := self.latest_run) is not None else None,
            "queued": self._work.qsize(),
            "mode_failed": self.mode_failed,
            # modes whose kernels are loading now (compiled on an install's first use of a mode: tens of
            # seconds, minutes on a busy machine), and for how long: a run's first frames wait for them
            "warming": [
                {
                    "mode": mode,
                    "seconds": round(time.monotonic() - since, 1),
                    # frames a run in this mode reduced meanwhile: the kernels it needed were ready, the
                    # rest (e.g. for frames with missing pixels) still load (two outside probes read the
                    # alarm as the run's, after it had ended)
                    "frames_reduced": max(0, int(self.stats["frames_processed"]) - before)
                    if self.latest_run is not None and self.latest_run[1].name == mode
                    else 0,
                }
                for mode, since, before in list(self._warm_ups.values())
            ],
            **{k: int(v) for k, v in self.stats.items()},
            **({} if self.run_masks is None else {k: int(v) for k, v in self.run_masks.stats.items()}),
        }

    def run_vetoed(self) -> tuple[str | None, int]:
        """(run uid, frames vetoed so far) of the open run, else of the last one this pipeline ran."""
        return self._run_vetoed

    # -- the reducing thread: takes slots in ring order, integrates, starts compression -------------------
    def _limit_threads(self) -> None:
        if self.frame_threads:
            self.backend.limit_threads(self.frame_threads)  # this thread's kernels only

    def _run(self, checkpoint: Checkpoint) -> None:
        self._limit_threads()
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
                self._stage = self._make_stage(record)
                self._run_uid = str(record["run_uid"])
                # an areaDetector capture's file takes every frame, vetoed blanks too (`_write`)
                self._capturing = bool(record.get("file_path"))
                self.latest_run = (self._run_uid, self._stage)
                self._run_dtype = np.dtype(str(record["dtype"]))
                return _Work(slot, "open", record=record, stage=self._stage)
            if record["event"] == "series_end":
                if self.run_masks is not None and self._run_uid is not None:
                    self.run_masks.forget_missing(self._run_uid)  # of frames that never reached the stage
                self._run_uid = None
                return _Work(slot, "close", record=record)
            return _Work(slot, "release")
        if kind != KIND_FRAME:
            return _Work(slot, "release")
        if not self.may_write():  # the store is full of unverified data: hold the ring (backpressure)
            self.stats["backpressure_waits"] += 1
            self._wait_for_room()
        frame = int(slot.header["frame"])
        stage = self._stage
        if self._run_uid is None or stage is None:
            self.stats["frames_outside_run"] += 1
            self.recorder.loss(None, frame, frame, "outside_run", "frame arrived with no open run")
            return _Work(slot, "release")
        started = time.perf_counter()
        missing = None  # an incomplete UDP frame's pixels that never came: left out of its reduction
        if int(slot.header["flags"]) & FLAG_INCOMPLETE and self.run_masks is not None:
            missing = self.run_masks.take_missing(self._run_uid, frame)
            if missing is not None:
                self.stats["frames_reduced_without_missing_pixels"] += 1
        raw = slot.array()
        if raw.shape != stage.ctx.shape:
            self.stats["frames_wrong_shape"] += 1
            self.recorder.loss(  # (its shape and the run's: "(64, 64)" alone named neither, an outside probe)
                self._run_uid,
                frame,
                frame,
                "wrong_shape",
                f"{raw.shape}, the run's frames are {stage.ctx.shape}",
            )
            return _Work(slot, "release")
        if raw.dtype != self._run_dtype:  # its pixels would be stored under the run's type: never
            self.stats["frames_wrong_dtype"] += 1
            self.recorder.loss(
                self._run_uid, frame, frame, "wrong_dtype", f"{raw.dtype} in a {self._run_dtype} run"
            )
            return _Work(slot, "release")
        chunk: Future[bytes | memoryview]
        if int(slot.header["flags"]) & FLAG_CHUNK:  # the detector's checked bslz4 chunk: stored as received
            chunk = Future()  # the slot's own bytes (it is released after the write), never copied
            chunk.set_result(slot.buffer[: int(slot.header["nbytes"])])
            if stage.decompress:  # the mode needs the pixels: decoded for it, never recompressed
                try:
                    raw = decode_bslz4(chunk.result(), raw.shape, raw.dtype)
                except ChunkError as error:
                    self.stats["frames_bad_chunk"] += 1
                    self.recorder.loss(self._run_uid, frame, frame, "stream2_bad_chunk", str(error)[:160])
                    return _Work(slot, "release")
        else:
            chunk = self._compressor.submit(compress_chunk, raw)  # bitshuffle releases the GIL: overlap
        if stage.excludes_dummies and stage.ctx.dummy is not None:
            # the detector's invalid pixels (pyFAI's dummy value) are left out as the missing ones are
            invalid = invalid_pixels(raw, *stage.ctx.dummy)
            if invalid is not None:
                self.stats["frames_with_dummy_pixels"] += 1
                self.stats["dummy_pixels_left_out"] += int(np.count_nonzero(invalid))
                missing = invalid if missing is None else (missing | invalid)
        header = slot.header
        # started, not waited for: on the GPU the writing thread collects the products (``finish``)
        # while this thread hands on the next frame, whose copy to the device overlaps this one's kernel
        result = stage.start(
            raw if stage.decompress else None,
            frame,
            int(header["image_key"]),
            float(header["angle"]),
            missing if stage.decompress else None,
        )
        if not result.keep and not self._capturing:
            # a vetoed frame is never stored; its compression is not needed. In a capture it is stored (the
            # capture's file takes every frame): cancelled, the writer's wait for it raised, and the frame
            # became a pipeline_error loss whenever the cancel came first (an outside probe: 6 of 200)
            chunk.cancel()
        self._busy_seconds += time.perf_counter() - started
        return _Work(slot, "frame", chunk=chunk, result=result, started=started, stage=stage)

    def _context(
        self,
        shape: tuple[int, int],
        params: ReductionSettings,
        mask: np.ndarray | None = None,
        earlier: EarlierParts | None = None,
        dtype: str = "uint16",
    ) -> RunContext:
        calibration = self.calibration or Corrections()
        dummy = None if calibration.dummy is None else frame_dummies(*calibration.dummy, dtype)
        return RunContext(
            self.backend,
            self.geometry,
            shape,
            self.bins,
            self.unit,
            params,
            dataclasses.replace(calibration, mask=mask) if mask is not None else calibration,
            self.store_blanks,
            self._analysis,
            earlier,
            dummy,
        )

    def _make_stage(self, record: dict[str, Any]) -> ModeStage:
        """The run's mode stage, from the parameters the run started with; raw if they cannot work."""
        shape = (int(record["height"]), int(record["width"]))
        params = ReductionSettings.model_validate(record.get("reduction") or {"mode": "powder"})
        try:
            self._check_fits(shape, str(record.get("dtype", "uint16")))
            mask = None if self.run_masks is None else self.run_masks.take(str(record["run_uid"]))
            earlier = self._earlier(record, params.mode)
            stage = make_stage(
                self._context(shape, params, mask, earlier, str(record.get("dtype", "uint16")))
            )
            changed = stage.settings_record().get("calibration_files_changed")
            if changed:  # in the run's record too, not only in its files (`edge where`, REST)
                self.recorder.note(str(record["run_uid"]), "calibration_files_changed", str(changed))
            return stage
        except Exception as error:  # e.g. tomo slices outside the frame: store the frames, say why
            self.stats["mode_setup_errors"] += 1
            # the newest run whose mode could not start: an alarm while it is the run on screen
            self.mode_failed = {
                "run_uid": str(record.get("run_uid")),
                "mode": params.mode,
                "error": str(error)[:300],
            }
            log.error(
                "run %s: mode %s cannot start (%s); storing raw frames only",
                record.get("run_uid"),
                params.mode,
                error,
            )
            # and in the run's record: the alarm goes with the next run (an outside probe's run of a PONI
            # for other frames read "powder, success", no products and nothing saying why)
            self.recorder.note(
                str(record.get("run_uid")),
                "mode_not_started",
                f"mode {params.mode} could not start: {str(error)[:300]}; raw frames only",
            )
            return ModeStage(
                RunContext(
                    self.backend,
                    self.geometry,
                    shape,
                    self.bins,
                    self.unit,
                    params.model_copy(update={"mode": "raw"}),
                )
            )

    def _check_fits(self, shape: tuple[int, int], dtype: str) -> None:
        """Refuses a mode for frames larger than a ring slot: none can come (each is ``frame_too_large``),
        and a mode set up for what a series start declares costs that size's arrays (a Stream V2 start of
        16384 x 16384 under a 48 x 64 detector: powder's geometry took 14 GB and 90 s, the next series
        waiting behind it; an outside probe)."""
        nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
        if nbytes > self.ring.slot_bytes:
            raise ValueError(
                f"the series declares {shape[0]} x {shape[1]} {dtype} frames ({nbytes} bytes), larger than a"
                f" ring slot ({self.ring.slot_bytes} bytes, set by detector.height x width x dtype): none"
                " of its frames can be taken"
            )

    def _earlier(self, record: dict[str, Any], mode: str) -> EarlierParts | None:
        """A run resumed after a restart: what of its series is stored in the run(s) it continues, as
        far back as they were reduced in the same mode (None: nothing)."""
        resumes = record.get("resumes_run")
        if not resumes:
            return None
        runs, files, missing = self.recorder.earlier_parts(str(resumes), mode)
        return EarlierParts(tuple(runs), tuple(files), missing) if runs else None

    def warm_up(self, shape: tuple[int, int], dtype: str, params: ReductionSettings) -> float:
        """Load the configured mode's kernels before the first run needs them; returns the seconds it took.

        A mode that cannot start with these settings is skipped here: the run that uses them says why.
        """
        started = time.perf_counter()
        # (a run's first frame may wait for it: the IOC counts that as progress)
        key = next(self._warm_up_ids)
        self._warm_ups[key] = (params.mode, time.monotonic(), int(self.stats["frames_processed"]))
        try:
            warm_up(self._context(shape, params, dtype=dtype), dtype)
        except Exception as error:
            log.warning("warming up mode %s skipped: %s", params.mode, error)
        finally:
            del self._warm_ups[key]
        took = time.perf_counter() - started
        log.info("mode %s: kernels ready in %.2f s", params.mode, took)
        return took

    def product(self) -> dict[str, Any] | None:
        """The newest run's live product (``GET /api/product``): mode, run and the mode's own view; after
        the run ends, its final product, still naming the run."""
        latest = self.latest_run
        if latest is None:
            return None
        run_uid, stage = latest
        return {"mode": stage.name, "run_uid": run_uid, stage.name: stage.live()}

    def product_tally(self) -> dict[str, Any] | None:
        """The newest run's mode, uid and running figures (``ModeStage.tally``); None before the first."""
        latest = self.latest_run
        if latest is None:
            return None
        run_uid, stage = latest
        return {"mode": stage.name, "run_uid": run_uid, **stage.tally()}

    def _failed(self, slot: Slot, run_uid: str | None, error: BaseException) -> None:
        """A frame the pipeline could not handle: counted, and a loss record (control slots: logged only)."""
        if int(slot.header["kind"]) == KIND_FRAME:
            self.stats["frames_failed"] += 1
            frame = int(slot.header["frame"])
            self.recorder.loss(run_uid, frame, frame, "pipeline_error", repr(error)[:200])

    # -- the writing thread: in ring order, writes chunks and releases slots ----------------------------
    def _write_loop(self, checkpoint: Checkpoint) -> None:
        ticked = time.monotonic()
        while True:
            checkpoint()
            self.recorder.write_progress()  # the open run's highest frame received (every 0.2 s at most)
            if time.monotonic() - ticked >= 1.0:  # frames keep coming: what a full disk held back
                ticked = time.monotonic()
                self._retry_held()
                self._tick_streams()
            try:
                work = self._work.get(timeout=0.1)
            except queue.Empty:
                ticked = time.monotonic()
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
        if self._store is not None or self._unopened is not None:
            try:
                self._close_run("abort")
            except Exception:
                log.exception("closing the run at shutdown failed")
                self.stats["file_close_errors"] += 1

    def _retry_held(self) -> None:
        """Once the disk has room again, write what it held back (ledger records, files, documents)."""
        if self.disk is not None and not self.disk.check():
            self.recorder.retry_pending()

    #: a stream of a run's files (serial's hits, its blanks) with no frame this long while others keep
    #: coming is pausing on its own: its file open longer than store.file_seconds is finished then (at
    #: its next frame, `RunStore.write`, or at a tick of this thread's)
    STREAM_QUIET_SECONDS = PAUSE_SECONDS

    def _tick_streams(self) -> None:
        if self._store is not None:
            try:
                self._store.tick(quiet=self.STREAM_QUIET_SECONDS)
            except Exception:  # a file that cannot be closed must not stop the pipeline
                log.exception("closing a rollover file failed")
                self.stats["file_close_errors"] += 1

    def _tick(self) -> None:
        self._retry_held()
        if self._store is not None:
            try:
                self._store.tick()
            except Exception:  # a file that cannot be closed must not stop the pipeline
                log.exception("closing a rollover file failed")
                self.stats["file_close_errors"] += 1
        if self._reduced is not None and self._reduced.full():  # its time is up while frames pause
            self._finish_reduced()

    def _write(self, work: _Work) -> None:
        if work.action == "open":
            assert work.stage is not None
            self._open_or_record(work.record or {}, work.stage)
        elif work.action == "close":
            self._close_run((work.record or {}).get("exit_status", "success"))
        elif work.action == "frame":
            assert work.chunk is not None and work.result is not None
            store, reduced = self._store, self._reduced
            if (store is None or reduced is None) and self._unopened is not None:
                work.chunk.cancel()
                self._unopened_loss(int(work.slot.header["frame"]))
                return
            if store is None or reduced is None:  # cannot happen: frames are only handed on inside a run
                raise RuntimeError("frame reached the writer with no open run")
            slot, result = work.slot, work.result
            frame = int(slot.header["frame"])
            result.finish()  # the products the reducing thread started (the slot is still held)
            intensity = result.products.get("I")
            if intensity is not None and isinstance(work.stage, PowderStage):
                self.latest_profile = (work.stage.radial, intensity, result.live.get("count"))
            # an areaDetector capture's file takes every frame, a serial run's blanks too (its client counts
            # NumCaptured and names that file in its documents: blanks went to a file of their own or
            # were vetoed, the capture's file never made, a probe's plan timed out); store.blanks is for
            # the runs outside captures
            capture = store.data_path is not None
            keep, stream = result.keep or capture, "data" if capture else result.stream
            if keep and self.disk is not None and self.disk.check():
                work.chunk.cancel()
                self._disk_full_loss(store.run_uid, [frame], "the disk is full: not written")
            elif keep and stream == "data" and store.capture_given_up is not None:
                work.chunk.cancel()  # never into a new file of its name, over the one kept
                self._disk_full_loss(
                    store.run_uid,
                    [frame],
                    f"the capture's file was given up when its disk filled ({store.capture_given_up}, kept)",
                )
            elif keep:
                chunk = work.chunk.result()
                try:
                    flags = int(slot.header["flags"]) & FLAG_STATE_MASK
                    store.write(frame, chunk, result.products, flags, stream)
                except Exception as error:
                    if self.disk is None or not self.disk.note_error(error):
                        raise
                    self._disk_full(store, frame, error)
                    return
                self.stats["bytes_compressed"] += len(chunk)
                if int(slot.header["flags"]) & FLAG_CHUNK:  # stored as received (not a vetoed one)
                    self.stats["frames_passed_through"] += 1
                reduced.add(frame, "stored", stream, result.row, result.products)
            else:
                work.chunk.cancel()  # known only now when the frame was analysed on another thread
                self.stats["frames_vetoed"] += 1
                self._run_vetoed = (store.run_uid, self._run_vetoed[1] + 1)
                reduced.add(frame, "vetoed", result.stream, result.row, result.products)
            if store.open_frames() >= MAX_WAITING_ROWS and store.data_path is None:
                # rows wait for their files to close: the open files close early, rows stay bounded (not
                # by the rows waiting, which count files still closing too: each frame would roll again)
                store.roll()
                self.stats["files_rolled_for_rows"] += 1
            if reduced.full():
                self._finish_reduced()
            self.stats["frames_processed"] += 1
            self.stats["bytes_raw"] += slot.array().nbytes

    def _disk_full(self, store: RunStore, frame: int, error: BaseException) -> None:
        """A write failed for lack of space: the frame and the open files' frames become losses."""
        self.stats["disk_full_events"] += 1
        self._disk_full_loss(store.run_uid, [frame], f"write failed: {brief(error)}")
        for frames, where in store.quarantine_open():
            if self._reduced is not None:
                self._reduced.frames_lost(frames)
            # where its .part is, in the store's quarantine or a capture's own directory (it read
            # "quarantined" of a capture's file that was deleted; an outside probe)
            self._disk_full_loss(
                store.run_uid, frames, f"in a file given up when the disk filled, half-written: {where}"
            )

    def _disk_full_loss(self, run_uid: str, frames: list[int], detail: str) -> None:
        self.stats["frames_lost_disk_full"] += len(frames)
        for first, last in _ranges(frames):
            self.recorder.loss(run_uid, first, last, "disk_full", detail)

    def _finish_reduced(self, run_products: dict[str, Any] | None = None, closing: bool = False) -> None:
        """Write the reduced file's rows gathered so far. While the disk is full they are kept (the next
        try writes them all); a run that ends meanwhile has its last reduced file written when space
        returns (`RunRecorder.when_space_returns`), before its documents."""
        reduced = self._reduced
        if reduced is None:
            return
        if not closing and self.disk is not None and self.disk.full:  # kept; tried once space is back
            return
        try:
            closed = reduced.finish(run_products, closing=closing)
        except Exception as error:  # products only (the frames are in their files or loss records)
            if self.disk is None or not self.disk.note_error(error):
                raise
            self.stats["reduced_files_held_disk_full"] += 1
            if closing:
                self.recorder.when_space_returns(
                    f"run {reduced.run_uid}: its reduced file (frame table, products)",
                    lambda: self._write_reduced_later(reduced, run_products),
                    reduced.run_uid,
                )
            else:
                log.error("run %s: reduced rows kept until the full disk has room", reduced.run_uid)
            return
        if closed is not None:
            self.recorder.file_closed(closed)

    def _write_reduced_later(self, reduced: ReducedWriter, run_products: dict[str, Any] | None) -> None:
        closed = reduced.finish(run_products, closing=True)
        if closed is not None:
            self.recorder.file_closed(closed)

    def _open_or_record(self, record: dict[str, Any], stage: ModeStage) -> None:
        """Open the run's files; when they cannot be (a full disk: the guard turns full), the run stays
        one whose frames are its loss records (``_unopened``), ended when its series ends."""
        if self._unopened is not None and self._store is None:  # (a run before it never closed, as
            self._close_run("abort")  # _open_run closes an open one)
        self._unopened = None
        try:
            self._open_run(record, stage)
        except Exception as error:
            run_uid = str(record.get("run_uid"))
            full = self.disk is not None and self.disk.note_error(error)
            why = f"the run's files could not be opened: {brief(error)}"
            self._unopened = (run_uid, why)
            self.stats["runs_not_opened"] += 1
            if full:
                log.error("run %s: %s; its frames are loss records (disk_full)", run_uid, why)
            else:
                log.exception("run %s: %s; its frames are loss records (pipeline_error)", run_uid, why)

    def _unopened_loss(self, frame: int) -> None:
        run_uid, why = self._unopened  # type: ignore[misc]
        if self.disk is not None and self.disk.check():
            self._disk_full_loss(run_uid, [frame], why)
        else:
            self.stats["frames_failed"] += 1
            self.recorder.loss(run_uid, frame, frame, "pipeline_error", why)

    def _open_run(self, record: dict[str, Any], stage: ModeStage) -> None:
        if self._store is not None:
            self._close_run("abort")
        shape = (int(record["height"]), int(record["width"]))
        reduced = ReducedWriter(
            self.store_root / record["run_uid"],  # (the store's directory, made by the store)
            record["run_uid"],
            stage,
            max(self.frames_per_file, 1000),
            self.reduced_file_seconds,
            wait_for_data_files=True,
            max_bytes=self.reduced_file_bytes,
        )
        self._store = RunStore(
            self.store_root,
            record["run_uid"],
            shape,
            record["dtype"],
            self.frames_per_file,
            self.file_seconds,
            stage,
            self.recorder.file_closed,
            RunMetadata(
                self.geometry,
                str(record.get("detector") or "edge detector"),
                record.get("frames_expected"),
                datetime.now(UTC).isoformat(),
                record.get("nxmx") or {},
                stage.ctx.corrections.mask  # what the reduction used (a detector's mask combined)
                if stage.ctx.corrections.mask is not None or self.calibration is None
                else self.calibration.mask,
                self.gaps,
                None if self.calibration is None else self.calibration.poni_shape,
            ),
            closer=self._closer,
            on_close_failed=partial(self._file_close_failed, reduced),
            data_path=Path(record["file_path"]) if record.get("file_path") else None,
            on_durable=reduced.frames_durable,  # a stored frame's row waits for its data file
        )
        self._reduced = reduced
        self._write_run_files(stage, record["run_uid"])
        self._run_vetoed = (record["run_uid"], 0)
        self.stats["runs_opened"] += 1
        if record.get("resumed_after_pause") and record.get("resumes_run"):
            # the run before is closed (this writer closed it just before): its tail is this run's now
            continue_after_pause(
                self.recorder, str(record["resumes_run"]), int(record["first_frame"]), record["run_uid"]
            )

    def _wait_for_room(self) -> None:
        """Hold the ring until retention says there is room; then, a little (``RESUME_WAIT_SECONDS``), until
        the disk guard sees it too. The guard, full since a write met ENOSPC, measures again at most every
        0.1 s: the frames held until then all became disk_full losses in that gap (646 in 78 ms, an
        outside probe), though they had been held for exactly that room."""
        while not self.may_write() and not self._stop.is_set():
            time.sleep(0.1)
        deadline = time.monotonic() + RESUME_WAIT_SECONDS
        while self.disk is not None and self.disk.check() and not self._stop.is_set():
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)

    def _write_run_files(self, stage: ModeStage, run_uid: str) -> None:
        """The mode's files for the whole run (serial: CrystFEL's ``.geom``), registered with it. On a
        full disk they are written when space returns (a resumed serial run on a full disk raised here:
        a traceback, the run without its .geom, an empty .part left, an outside probe)."""

        def write() -> None:
            for path in stage.run_files(self._store.directory, run_uid):
                self.recorder.register_file(run_uid, path, (-1, -1, 0), "reduced")

        try:
            write()
        except Exception as error:
            if self.disk is None or not self.disk.note_error(error):
                raise
            self.recorder.when_space_returns(f"run {run_uid}: its {stage.name} run files", write, run_uid)

    def _file_close_failed(
        self, reduced: ReducedWriter, run_uid: str, frames: list[int], error: BaseException
    ) -> None:
        """A rollover file could not be finished: its frames are lost, with records (per range), and
        their reduced rows never say "stored"."""
        reduced.frames_lost(frames)
        self.stats["file_close_errors"] += 1
        self.stats["frames_file_not_finished"] += len(frames)  # (the IOC's WriteStatus: a write error)
        reason = "disk_full" if self.disk is not None and self.disk.note_error(error) else "file_close_failed"
        for first, last in _ranges(frames):
            self.recorder.loss(
                run_uid, first, last, reason, f"finishing the file failed: {brief(error, 200)}"
            )

    def _close_run(self, exit_status: str) -> None:
        store, self._store = self._store, None
        unopened, self._unopened = self._unopened, None
        if store is None:
            if unopened is not None:  # its frames are loss records: it ends (fail, with nothing stored)
                self.stats["runs_closed"] += 1
                self.recorder.close_run(unopened[0], 0, exit_status, 0)
            return
        vetoed = 0
        try:
            store.close()  # waits for its files to be finished and registered
        finally:
            reduced = self._reduced
            if reduced is not None:
                vetoed = reduced.counts["vetoed"]
                try:
                    stage = reduced.layout
                    self._finish_reduced(stage.finish(), closing=True)  # type: ignore[attr-defined]
                    for key, text in stage.run_notes().items():  # type: ignore[attr-defined]
                        self.recorder.note(store.run_uid, key, text)
                        log.warning("run %s: %s", store.run_uid, text)
                finally:
                    self._reduced = None
            self.stats["runs_closed"] += 1
            self.recorder.close_run(store.run_uid, store.frames_stored, exit_status, vetoed)


class WarmUps:
    """Kernel loads asked for between runs (each accepted mode or parameter change, PV or REST), done on
    one thread of their own, one at a time: a change asked for while a load runs waits for it, and only
    the newest of those loads next (none when it equals the one just loaded). An outside probe's 30
    repeated ``PUT /api/reduction`` started 30 loads at once, 55 more threads, the CPU of a 2-core machine
    taken for 20 s and ``pipeline.warming`` listing all 30."""

    def __init__(self, load: Callable[[ReductionSettings], object]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._next: ReductionSettings | None = None
        self._running = False
        self.loads = 0  # loads started
        self.coalesced = 0  # changes whose load a newer one (or the same one, loaded) stood for

    @property
    def busy(self) -> bool:
        """A load asked for is running or waiting to."""
        with self._lock:
            return self._running

    @property
    def queued_mode(self) -> str | None:
        """The mode of the load waiting behind the one running (None: none waits)."""
        with self._lock:
            return None if self._next is None else self._next.mode

    def request(self, params: ReductionSettings) -> None:
        with self._lock:
            if self._next is not None:
                self.coalesced += 1
            self._next = params
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name="mode-warm-up", daemon=True).start()

    def _run(self) -> None:
        last: ReductionSettings | None = None
        while True:
            with self._lock:  # (the thread ends under the lock: a request from now on starts another)
                params, self._next = self._next, None
                if params is None:
                    self._running = False
                    return
                if params == last:
                    self.coalesced += 1
                    continue
                self.loads += 1
            try:
                self._load(params)
            except Exception:  # (Pipeline.warm_up says why a mode cannot load; anything else is a bug)
                log.exception("loading mode %s's kernels failed", params.mode)
                continue
            except BaseException:
                with self._lock:
                    self._running = False
                raise
            last = params


def _ranges(frames: list[int]) -> list[tuple[int, int]]:
    """Sorted frame numbers as inclusive ``(first, last)`` runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    for frame in sorted(frames):
        if out and frame == out[-1][1] + 1:
            out[-1] = (out[-1][0], frame)
        else:
            out.append((frame, frame))
    return out
