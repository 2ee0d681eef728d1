"""The appliance: wires source -> ring -> pipeline -> store/ledger -> forwarder, and reports on all of it.

This is the one object the CLI, the web API and (later) the appliance IOC hold. It owns the threads'
lifecycle; every view it offers reads counters, never infers them.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from edge.config import Settings
from edge.documents import run_documents, write_documents
from edge.errors import ConfigError
from edge.ledger import Ledger
from edge.pipeline import Calibration, Pipeline
from edge.poni import combined_mask, load_poni
from edge.recovery import recover
from edge.retention import Retention
from edge.ring import FrameRing, Slot
from edge.store import ClosedFile, file_checksums
from edge.upstream.forwarder import Forwarder
from edge.where import resolve_run, where_report
from firmware_bridge.source import FrameHeader, FrameSource
from firmware_bridge.udp_codec import DetectorGeometry
from firmware_bridge.udp_reader import UdpSource
from firmware_bridge.zmq_reader import ZmqStreamSource
from kernels import Geometry, get_backend

log = logging.getLogger(__name__)

CONTROL_BYTES = 64 << 10
PREVIEW_SECONDS = 0.05  # the receiver keeps a subsampled copy of the newest frame at most this often
PREVIEW_STEP = 8


def curve_paths(first: Path | None, second: Path | None) -> tuple[Path, Path] | None:
    """Both CurveZMQ paths, or neither; one without the other is a configuration error."""
    if first is None and second is None:
        return None
    if first is None or second is None:
        raise ConfigError("CurveZMQ needs both a key pair file and the peer's key(s); one of them is unset")
    return (first, second)


def load_calibration(settings: Settings) -> Calibration:
    """Dark, flat and mask images named in the settings, checked against the detector's frame shape."""
    red = settings.reduction
    if settings.stream.transport == "udp":
        shape = tuple(udp_geometry(settings).frame_shape)
    else:
        shape = settings.detector.shape
    images: dict[str, np.ndarray | None] = {}
    for key in ("dark", "flat", "mask"):
        path = getattr(red, f"{key}_file")
        if path is None:
            images[key] = None
            continue
        try:
            image = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"reduction.{key}_file = {str(path)!r}: cannot read a .npy image ({error})"
            ) from None
        if image.shape != shape:
            raise ConfigError(
                f"reduction.{key}_file = {str(path)!r}: image is {image.shape}, frames are {shape}"
            )
        images[key] = image.astype(bool) if key == "mask" else image
    poni = None if red.poni_file is None else load_poni(red.poni_file, shape)  # its detector's own mask
    mask = combined_mask(poni, images["mask"])
    return Calibration(images["dark"], images["flat"], mask, red.solid_angle, red.polarization)


def udp_geometry(settings: Settings) -> DetectorGeometry:
    """The UDP detector layout the settings describe."""
    udp = settings.udp
    return DetectorGeometry(
        module_rows=udp.module_rows,
        module_cols=udp.module_cols,
        grid_rows=udp.grid_rows,
        grid_cols=udp.grid_cols,
        gap_pixels=udp.gap_pixels,
        payload_bytes=udp.payload_bytes,
    )


class RingSink:
    """The ring as seen by a frame source: frames go in, runs and losses go to the ledger."""

    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance
        self.run_uid: str | None = None
        self.refused = False
        self.preview: tuple[np.ndarray, dict[str, Any]] | None = None
        self._preview_at = 0.0
        self.losses = 0

    def claim(self, nbytes: int) -> Slot | None:
        return self.appliance.ring.claim(nbytes)

    def publish(self, slot: Slot, header: FrameHeader) -> None:
        self.appliance.ring.publish(slot, header)
        now = time.monotonic()
        if now - self._preview_at >= PREVIEW_SECONDS:  # the live view skips the queue, as areaDetector's does
            self._preview_at = now
            self.preview = (
                slot.array()[::PREVIEW_STEP, ::PREVIEW_STEP].copy(),
                {
                    "frame": header.frame,
                    "run_uid": self.run_uid,
                    "flags": header.flags,
                    "detector_timestamp_ns": header.timestamp_ns,
                    "received_at": time.time(),
                },
            )

    def abandon(self, slot: Slot) -> None:
        self.appliance.ring.abandon(slot)

    def series_start(self, series: int, config: dict[str, Any]) -> str | None:
        run_uid = str(config.get("run_uid") or uuid.uuid4())
        try:
            self.appliance.ledger.run_started(
                run_uid, series, config.get("frames_expected"), json.dumps(config)
            )
        except Exception as error:  # a repeated run uid: keep the data under a fresh one
            log.warning("run uid %s rejected by the ledger (%s); using a new uid", run_uid, error)
            run_uid = str(uuid.uuid4())
            self.appliance.ledger.run_started(
                run_uid, series, config.get("frames_expected"), json.dumps(config)
            )
        self.run_uid = run_uid
        refusal = self.appliance.retention.refusal()
        if refusal is not None:  # the run is recorded, refused and closed; its frames become losses
            self.refused = True
            self.appliance.ledger.run_ended(run_uid, "abort", 0)
            self.appliance._write_run_documents(run_uid, "abort")
            return refusal
        self.refused = False
        width, height = config["shape"]
        self._control(
            {
                "event": "series_start",
                "run_uid": run_uid,
                "height": height,
                "width": width,
                "dtype": config["type"],
                "frames_expected": config.get("frames_expected"),
                "detector": config.get("detector"),
            }
        )
        return None

    def series_end(self, series: int, exit_status: str = "success") -> None:
        if not self.refused:
            self._control({"event": "series_end", "exit_status": exit_status})
        self.run_uid = None

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        self.losses += last - first + 1
        log.warning("frames %d..%d lost: %s %s", first, last, reason, detail)
        self.appliance.ledger.record_loss(self.run_uid, first, last, reason, detail)

    def _control(self, record: dict[str, Any]) -> None:
        slot = self.appliance.ring.claim(CONTROL_BYTES)
        while slot is None and not self.appliance.stopping:  # control records are never dropped
            time.sleep(0.01)
            slot = self.appliance.ring.claim(CONTROL_BYTES)
        if slot is not None:
            self.appliance.ring.publish_control(slot, json.dumps(record).encode())


class Appliance:
    """Builds and runs every data-plane component from one Settings object."""

    def __init__(self, settings: Settings, context: zmq.Context | None = None) -> None:
        calibration = load_calibration(settings)  # first: a bad image fails the start before anything runs
        self.settings = settings
        self.started_at = time.time()
        self.stopping = False
        self.context = context or zmq.Context.instance()
        store = settings.store
        store.path.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(settings.ledger_path, settings.upstream.required_consumers)
        self.recovery = recover(self.ledger, store.path, store.chunk_bytes, self._write_run_documents)
        det = settings.detector
        frame_bytes = det.height * det.width * np.dtype(det.dtype).itemsize
        if settings.stream.transport == "udp":
            frame_bytes = int(np.prod(udp_geometry(settings).frame_shape)) * 2
        self.ring = FrameRing(
            settings.ring.slots, max(frame_bytes, CONTROL_BYTES), settings.ring.policy, settings.ring.name
        )
        self.backend = get_backend(settings.reduction.backend)
        if settings.reduction.poni_file is not None:
            geometry = load_poni(settings.reduction.poni_file).geometry  # shape checked above
        else:
            geometry = Geometry(**settings.geometry.model_dump())
        self.geometry = geometry
        self.sink = RingSink(self)
        self.source: FrameSource = self._source(settings)
        self.pipeline = Pipeline(
            self.ring,
            self.backend,
            geometry,
            store.path,
            settings.reduction.bins,
            settings.reduction.unit,
            store.frames_per_file,
            store.file_seconds,
            self._file_closed,
            self._run_closed,
            self._frame_lost,
            may_write=lambda: not self.retention.under_pressure(),
            calibration=calibration,
            compress_threads=store.compress_threads,
            frame_threads=settings.reduction.frame_threads,
        )
        self.forwarder = Forwarder(
            settings.upstream.endpoint,
            self.ledger,
            self.context,
            settings.upstream.resend_seconds,
            corrupt=settings.upstream.corrupt,
            curve=curve_paths(settings.upstream.curve_secret_file, settings.upstream.curve_clients_dir),
        )
        self.retention = Retention(self.ledger, settings.store.path, settings.retention)
        self._stats_lock = threading.Lock()
        self.files_closed = 0
        self._preview_doc: tuple[object, dict[str, Any]] | None = None  # the last preview, as sent

    def _source(self, settings: Settings) -> FrameSource:
        if settings.stream.transport == "udp":
            udp = settings.udp
            return UdpSource(
                udp.host,
                udp.port,
                udp_geometry(settings),
                self.sink,
                udp.frames_per_run,
                udp.idle_seconds,
                udp.frame_timeout_frames,
                udp.rcvbuf_bytes,
                max_frame_jump=udp.max_frame_jump,
            )
        stream = settings.stream
        return ZmqStreamSource(
            stream.endpoint,
            self.sink,
            self.context,
            stream.rcvhwm,
            stream.rcvbuf_bytes,
            max_frame_jump=stream.max_frame_jump,
        )

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self.forwarder.start()
        self.retention.start()
        self.pipeline.start()
        self.source.start()
        log.info(
            "appliance started: stream %s, upstream %s, backend %s",
            self.settings.stream.endpoint,
            self.forwarder.bound_endpoint,
            self.backend.name,
        )

    def stop(self) -> None:
        """Stop taking frames, persist what is in the ring, close files, stop serving."""
        self.stopping = True
        self.ring.stop()  # a reader waiting for a free slot gives up (and records the frame as lost)
        self.source.stop()
        self.pipeline.stop()  # persists everything already in the ring, closes the open run
        self.forwarder.stop()
        self.retention.stop()
        self.ledger.close()
        self.ring.close()

    # -- callbacks from the pipeline thread --------------------------------------------------------------
    def _file_closed(self, closed: ClosedFile) -> None:
        size, digest, chunks = file_checksums(closed.path, self.settings.store.chunk_bytes)
        self.ledger.file_stored(
            closed.run_uid,
            closed.name,
            closed.path,
            size,
            digest,
            (closed.first_frame, closed.last_frame, closed.n_frames),
            chunks,
        )
        with self._stats_lock:
            self.files_closed += 1

    def _run_closed(self, run_uid: str, frames: int, exit_status: str) -> None:
        self.ledger.run_ended(run_uid, exit_status, frames)
        self._write_run_documents(run_uid, exit_status)

    def _write_run_documents(self, run_uid: str, exit_status: str) -> None:
        """RunStart..RunStop for the run, as a file that is stored and forwarded like the data."""
        run = self.ledger.run(run_uid)
        config = json.loads(run.get("config") or "{}")
        shape = config.get("shape")
        docs = run_documents(
            run,
            self.ledger.files(run_uid),
            self.ledger.losses(run_uid),
            (int(shape[1]), int(shape[0])) if shape else None,
            exit_status,
        )
        path = write_documents(self.settings.store.path / run_uid, run_uid, docs)
        size, digest, chunks = file_checksums(path, self.settings.store.chunk_bytes)
        self.ledger.file_stored(run_uid, path.name, path, size, digest, (-1, -1, 0), chunks)

    def _frame_lost(self, run_uid: str | None, frame: int, reason: str, detail: str) -> None:
        self.ledger.record_loss(run_uid, frame, frame, reason, detail)

    # -- views ------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        ledger = self.ledger.summary()
        receiver = self.source.counters()
        disk = psutil.disk_usage(str(self.settings.store.path))
        return {
            "appliance": {
                "uptime_seconds": round(time.time() - self.started_at, 3),
                "stopping": self.stopping,
                "run_uid": self.sink.run_uid,
                "recovery": self.recovery,
            },
            "frames": {
                "received": receiver.get("frames_received", 0),
                "stored": ledger["frames_stored"],
                "delivered": ledger["frames_verified"],
                "lost": ledger["frames_lost"],
                "incomplete": ledger["frames_incomplete"],
                "loss_records": ledger["loss_records"],
            },
            "receiver": receiver,
            "ring": self.ring.counters(),
            "pipeline": self.pipeline.counters(),
            "store": {"path": str(self.settings.store.path), "files_closed": self.files_closed},
            "ledger": ledger,
            "upstream": self.forwarder.counters(),
            "retention": self.retention.status(),
            "disk": {"total": disk.total, "used": disk.used, "free": disk.free, "percent": disk.percent},
            "detector": self.detector_status(),
        }

    def runs(self) -> list[dict[str, Any]]:
        return self.ledger.runs()

    def run(self, run_uid: str) -> dict[str, Any]:
        """The ledger's run row, its files and losses, and the where-is-my-data report."""
        run_uid = resolve_run(self.ledger, run_uid)
        run = self.ledger.run(run_uid)
        return {
            **run,
            "files": self.ledger.files(run_uid),
            "losses": self.ledger.losses(run_uid),
            "where": where_report(self.ledger, run_uid),
        }

    def latest_preview(self) -> dict[str, Any] | None:
        """The newest frame received (not waiting for the pipeline), subsampled and log-scaled to 8 bits;
        ``pixels_b64`` holds them row-major, one byte each, base64-encoded (compact to send and parse)."""
        latest = self.sink.preview
        if latest is None:
            return None
        cached = self._preview_doc
        if cached is not None and cached[0] is latest:
            return cached[1]
        frame, info = latest
        logged = np.log1p(frame.astype(np.float32))
        top = float(np.percentile(logged, 99.5)) or 1.0
        image = np.clip(logged * (255.0 / top), 0, 255).astype(np.uint8)
        doc = {
            **info,
            "height": image.shape[0],
            "width": image.shape[1],
            "pixels_b64": base64.b64encode(image.tobytes()).decode("ascii"),
        }
        self._preview_doc = (latest, doc)
        return doc

    def latest_profile(self) -> dict[str, Any] | None:
        latest = self.pipeline.latest_profile
        if latest is None:
            return None
        radial, profile = latest
        return {
            "unit": self.settings.reduction.unit,
            "radial": radial.tolist(),
            "intensity": profile.tolist(),
        }

    def store_path(self) -> Path:
        return self.settings.store.path

    # -- detector control (the appliance IOC, edge.ioc, sets detector_view) -----------------------------
    #: Returns the detector's status for `status`; None while no IOC drives a detector.
    detector_view: Callable[[], dict[str, Any]] | None = None

    def detector_status(self) -> dict[str, Any]:
        view = self.detector_view
        if view is None:
            return {"enabled": False}
        return {"enabled": True, **view()}

    def source_open_series(self) -> bool:
        """True while the source is inside a series (header seen, end not yet)."""
        return self.source.series_open

    def end_open_series(self, reason: str) -> None:
        """End the series a vanished detector left open: the frames that never came become losses and
        the run's exit status is ``fail``. The source does it on its own thread."""
        if self.source.series_open:
            self.source.end_series(reason)
