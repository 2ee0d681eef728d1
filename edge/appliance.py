"""The appliance: wires source -> ring -> pipeline -> store/ledger -> forwarder, and owns their threads.

It composes the stages and hands each what it needs: the receiver and the pipeline get the run
recorder (all run bookkeeping), the web API, the IOC and metrics get the read-only view
(`edge.view.ApplianceView`). No stage calls back into the appliance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge.config import ReductionSettings, Settings
from edge.diskguard import DiskGuard
from edge.errors import ConfigError
from edge.frame_format import FrameFormat, frame_format, preview_step, udp_geometry
from edge.held_journal import HeldJournal
from edge.held_journal import replay as replay_held
from edge.ledger import Ledger, run_config
from edge.modes import Corrections
from edge.pipeline import Pipeline, WarmUps, reduced_file_bytes
from edge.poni import combined_mask, load_poni, load_poni_hashed, settings_geometry
from edge.recorder import RunRecorder
from edge.recovery import (
    SHOWN_SECONDS,
    UnseenRecoveries,
    empty_report,
    interrupted_shape,
    interrupted_udp_run,
    note_earlier,
    paused_udp_run,
    recover,
    resume_interrupted,
    udp_armed_last,
    udp_series_before,
    was_interrupted,
)
from edge.reduction_control import AUTOSAVE_NAME, ReductionControl, settings_changed
from edge.retention import Retention
from edge.ring import FrameRing, Slot, sweep_stale_rings
from edge.run_masks import RunMasks
from edge.store import bounded_config, series_metadata
from edge.supervision import Supervisor, parse_injection
from edge.upstream.curve import curve_paths
from edge.upstream.forwarder import Forwarder
from edge.view import ApplianceParts, ApplianceView
from firmware_bridge.hdf5_chunks import ChunkError, decode_bslz4
from firmware_bridge.source import FLAG_CHUNK, FLAG_STATE_MASK, FrameHeader, FrameSource
from firmware_bridge.stream2_reader import Stream2Source
from firmware_bridge.udp_reader import UDP_PAUSE_FILE, UdpSource, load_paused_timestamps
from firmware_bridge.zmq_reader import ZmqStreamSource
from kernels import get_backend, make_gain

__all__ = ["Appliance", "ApplianceView", "RingSink", "load_calibration", "udp_geometry"]

log = logging.getLogger(__name__)
#: seconds a series that ended short waits for the camera's state to say whether it was aborted there
ABORT_STATE_SECONDS = 1.0

CONTROL_BYTES = 64 << 10
#: a clean stop: how long the receiver may wait for the pipeline to make room for frames it already
#: holds (while the pipeline moves, or loads its kernels); the readers join within READER_JOIN_SECONDS
STOP_GRACE_SECONDS = 60.0  # (a mode's first kernels compile in up to a minute on a small machine)
PREVIEW_SECONDS = 0.05  # the receiver keeps a subsampled copy of the newest frame at most this often


def load_calibration(settings: Settings, fmt: FrameFormat | None = None) -> Corrections:
    """Dark, flat and mask images named in the settings, checked against the detector's frame shape."""
    red = settings.reduction
    shape = (fmt or frame_format(settings)).shape
    images: dict[str, np.ndarray | None] = {}
    files: dict[str, tuple[str, str]] = {}
    for key in ("dark", "flat", "mask"):
        path = getattr(red, f"{key}_file")
        if path is None:
            images[key] = None
            continue
        try:  # read once: the image used and the checksum recorded are of the same bytes (a file replaced
            # between two reads gave a run one file's image and the other's checksum: an outside probe)
            with open(path, "rb") as handle:
                data = handle.read()
            if data[:6] != b"\x93NUMPY" and not data.startswith(b"PK"):  # nor .npy nor .npz: numpy says
                # "contains pickled (object) data" of a text file, which misleads
                raise ValueError("not a NumPy file: it does not start with NumPy's .npy header")
            image = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise ConfigError(
                f"reduction.{key}_file = {str(path)!r}: cannot read a .npy image ({error})"
            ) from None
        if not isinstance(image, np.ndarray):  # an .npz archive: which of its arrays is meant is unknown
            image.close()
            raise ConfigError(
                f"reduction.{key}_file = {str(path)!r}: an .npz archive, not one .npy image (save the image"
                " alone with numpy.save)"
            )
        if image.dtype.kind not in "biuf":  # complex, text, dates, records: no pixel values
            raise ConfigError(
                f"reduction.{key}_file = {str(path)!r}: pixels of type {image.dtype}, not numbers"
                " (bool, integer or real)"
            )
        if image.shape != shape:
            raise ConfigError(
                f"reduction.{key}_file = {str(path)!r}: image is {image.shape}, frames are {shape}"
            )
        images[key] = image.astype(bool) if key == "mask" else image
        files[key] = (str(path), hashlib.sha256(data).hexdigest())
    poni = None
    if red.poni_file is not None:  # the calibration (its detector's own mask too), identified in every
        # run's record by the sha256 of the bytes its geometry came from
        poni, digest = load_poni_hashed(red.poni_file, shape)
        files["poni"] = (str(red.poni_file), digest)
    mask = combined_mask(poni, images["mask"])
    dark = images["dark"]
    if dark is not None and dark.dtype.kind == "f":
        unusable = ~np.isfinite(dark)
        if unusable.any():  # as a flat's: left out as masked (a NaN made a NaN bin of the profile, unsaid)
            log.warning(
                "reduction.dark_file %s is not finite at %d pixel(s): they are left out as masked",
                red.dark_file,
                int(np.count_nonzero(unusable)),
            )
            mask = unusable if mask is None else (mask | unusable)
            images["dark"] = np.where(unusable, 0, dark).astype(dark.dtype)
    gaps = udp_gaps(settings)  # the UDP layout's inter-module gaps: no sensor there, never zero counts
    if gaps is not None and gaps.shape == shape:
        mask = gaps if mask is None else (mask | gaps)
    _check_some_pixel_counts(shape, images["flat"], mask, red)
    model = None if poni is None else poni.detector  # its invalid-pixel value (pyFAI's dummy), if any
    dummy = None if model is None or model.dummy is None else (model.dummy, model.delta_dummy)
    poni_shape = None if poni is None or poni.shape is None else (int(poni.shape[0]), int(poni.shape[1]))
    return Corrections(
        images["dark"],
        images["flat"],
        mask,
        red.solid_angle,
        red.polarization,
        dummy,
        files,
        poni_shape,
        None if poni is None else poni.geometry,
    )


class CalibrationWatch:
    """Whether the calibration files the settings name (PONI, mask, dark, flat) would load at the next
    start: the daemon goes on with the copies it loaded, and a file edited into one the start refuses
    said nothing until a restart, after a kill mid-series, refused to start at all (an outside probe).
    Checked again only when a file's size or time changed (a stat per file per call)."""

    def __init__(self, settings: Settings, fmt: FrameFormat) -> None:
        self._settings, self._fmt = settings, fmt
        red = settings.reduction
        self._paths = [
            p for p in (red.poni_file, red.mask_file, red.dark_file, red.flat_file) if p is not None
        ]
        self._seen: tuple[Any, ...] | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def _signature(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for path in self._paths:
            try:
                stat = os.stat(path)
                out.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
            except OSError as error:
                out.append(str(error))
        return tuple(out)

    def problem(self) -> str | None:
        """Why the next start would refuse the calibration files as they are on disk now, or None."""
        if not self._paths:
            return None
        with self._lock:
            seen = self._signature()
            if seen != self._seen:
                self._seen = seen
                try:
                    load_calibration(self._settings, self._fmt)
                    self._problem = None
                except ConfigError as error:
                    self._problem = str(error)[:500]
                    log.error("the calibration files on disk would refuse the next start: %s", self._problem)
            return self._problem


def _check_some_pixel_counts(
    shape: tuple[int, int], flat: np.ndarray | None, mask: np.ndarray | None, red: ReductionSettings
) -> None:
    """Refuse (ConfigError) a mask and flat field that together leave no pixel to reduce: every profile,
    peak and slice would be zeros, and nothing would say why."""
    if flat is None and mask is None:
        return
    if np.any(make_gain(shape, flat, mask)):
        return
    pixels = shape[0] * shape[1]
    said = []
    if mask is not None:
        named = [f"reduction.{key}" for key in ("mask_file", "poni_file") if getattr(red, key) is not None]
        source = " and ".join(named) or "the detector layout's gaps"
        said.append(f"the mask ({source}) excludes {int(np.count_nonzero(mask))} of {pixels} pixels")
    if flat is not None:
        flat32 = np.asarray(flat, dtype=np.float32)
        unusable = int(np.count_nonzero(~np.isfinite(flat32) | (flat32 <= 0)))
        said.append(f"reduction.flat_file is zero, negative or not finite at {unusable} of {pixels} pixels")
    raise ConfigError(f"no pixel is left to reduce: {'; '.join(said)}")


def detector_gaps(settings: Settings, fmt: FrameFormat | None = None) -> np.ndarray | None:
    """The pixels with no sensor behind them: the PONI detector's own mask (pyFAI's module gaps) and
    the UDP layout's gaps (None: neither). They are in the calibration mask too; the files say which."""
    shape = (fmt or frame_format(settings)).shape
    poni = settings.reduction.poni_file
    gaps = combined_mask(None if poni is None else load_poni(poni, shape), None)
    udp = udp_gaps(settings)
    if udp is not None and udp.shape == shape:
        gaps = udp if gaps is None else (gaps | udp)
    return gaps


def udp_gaps(settings: Settings) -> np.ndarray | None:
    """True on the gap pixels between the UDP detector's modules (None: not UDP, or no gaps)."""
    if settings.stream.transport != "udp" or settings.udp.gap_pixels == 0:
        return None
    geometry = udp_geometry(settings)
    covered = geometry.insert_gaps(np.ones(geometry.raw_shape, dtype=bool), fill=False)
    return ~covered


@dataclasses.dataclass(frozen=True)
class _ChunkPreview:
    """A pass-through frame kept for the live view as its compressed chunk (a copy), not yet decoded."""

    chunk: bytes
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    info: dict[str, Any]


class RingSink:
    """The ring as seen by a frame source: frames go into the ring, runs and losses to the recorder."""

    def __init__(
        self,
        ring: FrameRing,
        recorder: RunRecorder,
        refusal: Callable[[], str | None],
        reduction: Callable[[], dict[str, Any]] = dict,
        masks: RunMasks | None = None,
    ) -> None:
        self.ring = ring
        self.masks = masks  # combines a series' detector pixel mask with the settings' mask
        self.recorder = recorder
        self.refusal = refusal
        self.reduction = reduction  # the reduction parameters a run starting now takes (JSON)
        self.blanks = "keep"  # ``store.blanks``: recorded with a serial run (its recovery's loss details)
        # the sha256 of each calibration file loaded ({"poni": ..., "mask": ...}): recorded with every run
        # (``calibration_sha256``), so a series resumed after a restart says when its calibration changed
        self.calibration: dict[str, str] = {}
        self.run_uid: str | None = None
        self.ended_run_uid: str | None = None  # the last series' run (its stragglers name it)
        #: the series length a run resumed after a restart took from the run it continues (None: none),
        #: for the reader that opened it from its images (`series_start`)
        self.resumed_length: int | None = None
        # a run opened from its images at (first_frame, why) whose frames below it no run accounts for:
        # the stream reader records them as a gap of this run, held as any gap (None: none such)
        self.below_first: tuple[int, str] | None = None
        # set while a series start takes the reduction parameters and opens its run: a change of them
        # in that moment is refused as during the run, never accepted "for the next run" and then not
        # taken by the run starting (ReductionControl reads this through ``run_or_opening``)
        self.opening: str | None = None
        self.refused = False
        self._refused_lost = 0  # frames recorded lost for the refused run since it was closed
        #: links a run resumed after a restart to the interrupted one (edge.recovery.resume_interrupted)
        self.resume: Callable[[int, int, str | None], dict[str, Any]] | None = None
        #: whether a run of a series was cut by a restart (`edge.recovery.was_interrupted`): a series seen
        #: without its start, far beyond frame 0, is taken for one resumed only then
        self.series_interrupted: Callable[..., bool] | None = None
        # the newest frame for the live view, or a detector chunk (Stream V2 pass-through) with what
        # its view needs, decoded only when the view is read (see ``preview``)
        self._preview: tuple[np.ndarray, dict[str, Any]] | _ChunkPreview | None = None
        self._preview_at = 0.0
        # the open series' last frame as it announced its length: always kept for the live view (an
        # outside probe: an 8-frame run at 30 Hz left "frame 6" on the page for good, 7 fell between two
        # previews)
        self._last_frame: int | None = None
        self.newest_frame: int | None = None  # the detector's number of the newest frame published
        self.losses = 0
        # frames received into the newest run this daemon opened (the run's "received": the ledger keeps
        # no such count, and a run opened before this daemon started has none)
        self._received_run: str | None = None
        self._received_in_run = 0
        # the detector's acquisitions, each a series (a capture's further ones included): how many have
        # started, and the frames received since the newest started (the IOC's NumImagesCounter_RBV)
        self.series_starts = 0
        self.series_received = 0
        # an areaDetector capture (HDF1:Capture=1 .. 0): one run, one file, across the detector's series
        self._capture_lock = threading.Lock()
        self._capture_path: Path | None = None
        self._capture_uid: str | None = None  # the run uid the open capture's run takes (`open_capture`)
        self._capture_run: str | None = None  # the capture's run, once its first series started
        self._capture_next = 0  # the capture's next frame number (series after the first continue it)
        self._capture_offset: int | None = None  # added to this series' frame numbers
        # the capture's run whose frame numbers the offset shifts: until that run ends, even when the
        # capture closed mid-series (HDF1:NumCapture reached, Capture 0): its late frames go on numbered
        self._numbered_run: str | None = None
        self._capture_series: int | None = None  # the detector series the capture's run takes now
        self._capture_length: int | None = None  # and its announced length (None: not announced)
        self._series_open = False
        self._abort_requested = False  # the control system aborted the run: its series ends `abort`
        self._armed = False  # the IOC's Acquire 1 armed the detector; its run may not have opened yet
        self._detector_state: Callable[[], str] | None = None  # the camera's state (`watch_detector`)
        self._images_taken: Callable[[], int | None] | None = None  # and its NumImagesCounter_RBV

    def claim(self, nbytes: int) -> Slot | None:
        return self.ring.claim(nbytes)

    @property
    def claim_wait_seconds(self) -> float:
        """The time claims spent waiting for a free slot, all told (a reader's drain at a clean stop
        does not count it against its own time)."""
        return self.ring.wait_seconds

    def publish(self, slot: Slot, header: FrameHeader) -> None:
        if self._numbered_run is not None and self.run_uid == self._numbered_run:
            if self._capture_offset is None:
                self._capture_offset = self._capture_next - header.frame
                if self._capture_series is not None:  # where a restart's resumed series finds its run
                    self.recorder.series_offset(
                        self.run_uid, self._capture_series, self._capture_offset, self._capture_length
                    )
            if self._capture_offset:
                header = dataclasses.replace(header, frame=header.frame + self._capture_offset)
            self._capture_next = max(self._capture_next, header.frame + 1)
        if header.missing is not None and self.masks is not None and self.run_uid is not None:
            self.masks.put_missing(self.run_uid, header.frame, header.missing)  # before the pipeline reads
        self.ring.publish(slot, header, header.nbytes or None)
        self.newest_frame = header.frame  # (the IOC's UniqueId_RBV)
        if self.run_uid is not None:
            self.recorder.frame_seen(self.run_uid, header.frame)  # (memory; the ledger every 0.2 s)
            if self.run_uid == self._received_run:
                self._received_in_run += 1
        self.series_received += 1
        now = time.monotonic()
        last = header.frame == self._last_frame
        # the live view skips the queue, as areaDetector's does
        if last or now - self._preview_at >= PREVIEW_SECONDS:
            self._preview_at = now
            pixels = slot.array()
            info = {
                "frame": header.frame,
                "run_uid": self.run_uid,
                "flags": header.flags & FLAG_STATE_MASK,
                "detector_timestamp_ns": header.timestamp_ns,
                "received_at": time.time(),
            }
            if header.flags & FLAG_CHUNK:  # a detector chunk stored as received: decoded when viewed
                self._preview = _ChunkPreview(
                    bytes(slot.buffer[: header.nbytes]), pixels.shape, pixels.dtype, info
                )
            else:
                step = preview_step(*pixels.shape)
                self._preview = (pixels[::step, ::step].copy(), info)

    @property
    def preview(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The newest frame received (subsampled) and what the receiver knew of it; the same tuple until
        a newer frame replaces it. A pass-through chunk is decoded here, when the view is read, not
        for every frame the receiver keeps (decoding a 1024x1024 chunk costs milliseconds)."""
        latest = self._preview
        if not isinstance(latest, _ChunkPreview):
            return latest
        try:
            pixels = decode_bslz4(latest.chunk, latest.shape, latest.dtype)
        except ChunkError:  # checked by the source at bounded cost only: no view of this frame
            return None
        step = preview_step(*pixels.shape)
        decoded = (pixels[::step, ::step].copy(), latest.info)
        if self._preview is latest:  # keep the decoded frame unless a newer one arrived meanwhile
            self._preview = decoded
        return decoded

    @preview.setter
    def preview(self, value: tuple[np.ndarray, dict[str, Any]] | None) -> None:
        self._preview = value

    def abandon(self, slot: Slot) -> None:
        self.ring.abandon(slot)

    # -- captures (edge.ioc's HDF1:Capture) -----------------------------------------------------------
    def open_capture(self, path: Path) -> str:
        """From now until `close_capture`, the detector's series make one run written to ``path``; returns
        that run's uid, given now (the first series' own uid, if any, is kept as its ``detector_run_uid``):
        ``RunUid_RBV`` names it from the ``Capture`` 1 on, before a frame came."""
        with self._capture_lock:
            self._capture_path = path
            self._capture_run = None
            self._capture_next = 0
            self._capture_uid = str(uuid.uuid4())
            return self._capture_uid

    def close_capture(self) -> str | None:
        """End the capture: its run ends now (or with the series still open); returns the run's uid."""
        with self._capture_lock:
            run_uid, self._capture_run, self._capture_path = self._capture_run, None, None
            if run_uid is not None and not self._series_open and not self.refused:
                self._control({"event": "series_end", "exit_status": "success"})
        return run_uid

    def received_in(self, run_uid: str | None) -> int | None:
        """Frames received into ``run_uid`` so far, when it is the newest run this daemon opened (a
        capture's further series included); None for any other run (this daemon did not count it)."""
        if run_uid is None or run_uid != self._received_run:
            return None
        return self._received_in_run

    def run_or_opening(self) -> str | None:
        """The open run, or the one a series start is opening now, or an open capture's run between its
        series (or the capture, ``HDF1:Capture`` 1, before its first series), or the one the IOC's
        ``Acquire`` 1 armed the detector for and whose series has not begun (None between runs): the
        reduction's mode and parameters stay as the run started."""
        armed = "(armed by Acquire 1; its series has not begun)" if self._armed else None
        path = self._capture_path
        capture = (
            None if path is None else f"(the open capture to {path.name}; its first series has not begun)"
        )
        return self.run_uid or self.opening or self._capture_run or capture or armed

    def set_armed(self, armed: bool) -> None:
        """The IOC's ``Acquire`` 1 is arming the detector for a run (True) until that acquisition is over
        (False): a change of mode or parameters meanwhile would change the run it started."""
        self._armed = armed

    def mark_abort(self) -> None:
        """The control system aborted the run (``Acquire`` 0): the open series, when the detector ends it,
        ends its run ``abort`` (the detector's own end message says only that the series ended)."""
        self._abort_requested = True

    def watch_detector(
        self, state: Callable[[], str], images_taken: Callable[[], int | None] | None = None
    ) -> None:
        """The camera's ``DetectorState_RBV`` and ``NumImagesCounter_RBV`` as the IOC follows them: a
        series that ends short is asked whether the camera was stopped at its own prefix (see `lost`)."""
        self._detector_state = state
        self._images_taken = images_taken

    def _aborted_at_the_camera(self, first_missing: int) -> bool:
        """A series ended short, frames ``first_missing`` on never came, with no abort through the
        appliance: was the camera stopped at its own prefix? Yes when it says ``Aborted``, or when it went
        ``Idle`` having taken exactly the frames that came (``NumImagesCounter_RBV`` equal to the first
        missing frame's number: it stopped short of its NumImages, and nothing it took went missing).
        Anything else (it took more than came, or says nothing) stays a loss. Its state and the stream's
        end travel apart, so it is given up to ABORT_STATE_SECONDS to leave ``Acquire``; the counter's
        last update comes before the state's on the same CA circuit."""
        state = self._detector_state
        if state is None:
            return False
        deadline = time.monotonic() + ABORT_STATE_SECONDS
        while True:
            now = state()
            if now in ("Aborted", "Aborting"):
                return True
            if now != "Acquire" or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if now != "Idle" or self._images_taken is None:
            return False
        taken = self._images_taken()
        return taken is not None and taken == first_missing

    def capture(self) -> dict[str, Any]:
        """The capture's file and run (None before its first series), for the IOC."""
        return {"path": self._capture_path, "run_uid": self._capture_run}

    def series_start(
        self, series: int, config: dict[str, Any], pixel_mask: np.ndarray | None = None
    ) -> str | None:
        if self.refused:  # a refused series that never ended: its account, before the next run opens
            self._refused_account()
        with self._capture_lock:
            self._series_open = True
            self._abort_requested = False
            self.series_received = 0
            self._last_frame = None
            self.series_starts += 1
            self._capture_series = series
            length = config.get("frames_expected")
            self._capture_length = length if isinstance(length, int) and length > 0 else None
            if self._capture_run is not None:  # a further acquisition of the open capture: same run
                self.run_uid = self._capture_run
                self._capture_offset = None
                return None
            capture_path = self._capture_path
        if capture_path is not None:  # a capture's length is its client's to decide (Capture=0)
            config = {**config, "frames_expected": None, "capture_file": str(capture_path)}
            if not config.get("resumed_after_restart"):  # the run named at the Capture 1 (`open_capture`)
                given = config.get("run_uid")
                config["run_uid"] = self._capture_uid
                if given and given != self._capture_uid:
                    config["detector_run_uid"] = given
        self.opening = str(config.get("run_uid") or f"of series {series}")  # before the parameters are read
        try:
            reduction = self.reduction()
            # recorded with the run (RunStart, where, files): how it is reduced and what goes upstream
            config = {**config, "reduction": reduction, "upstream_forward": self.recorder.forward}
            if self.calibration:
                config["calibration_sha256"] = dict(self.calibration)
            if reduction.get("mode") == "serial":  # whether its blanks are vetoed (a capture keeps them)
                config["store_blanks"] = "keep" if capture_path is not None else self.blanks
            config, replaced = bounded_config(config)
            if replaced:  # recorded with the run (its digest kept), counted, logged
                config["header_fields_truncated"] = replaced
                log.warning("series %d: header fields too large for the run record: %s", series, replaced)
            self.resumed_length = None
            self.below_first = None
            if config.get("resumed_after_restart") and self.resume is not None:
                config.update(self.resume(series, int(config["first_frame"]), config.get("transport")))
                self._note_mode_change(config, reduction)
                if config.get("frames_expected") is None and config.get("resumes_run"):
                    # the series' length as the interrupted run recorded it (this run saw no header): its
                    # tail is then accounted at its end (missing_at_series_end) and after another crash
                    with contextlib.suppress(Exception):
                        resumed = self.recorder.ledger.run(str(config["resumes_run"]))
                        known = resumed["frames_expected"]
                        if not known:  # a capture's run (its length the client's): the series' own
                            lengths = json.loads(resumed.get("config") or "{}").get("capture_series_length")
                            known = (lengths or {}).get(str(series))
                        if known:
                            config["frames_expected"] = self.resumed_length = int(known)
            if config.get("resumed_after_pause"):  # a UDP acquisition going on after a pause: the run
                config["resumes_run"] = self.ended_run_uid  # it continues (the writer hands over its tail)
            run_mask = self._run_mask(config, pixel_mask)
            nxmx, ignored = series_metadata(config)
            if ignored:  # recorded with the run, counted, and the files say "not reported" instead
                config["header_fields_ignored"] = ignored
                log.warning("series %d: header fields left out of the files: %s", series, "; ".join(ignored))
            length = config.get("frames_expected")
            self._last_frame = int(length) - 1 if isinstance(length, int) and length > 0 else None
            run_uid = self.recorder.open_run(
                config.get("run_uid"), series, config.get("frames_expected"), config, reduction.get("mode")
            )
            self.run_uid = run_uid
            self._received_run, self._received_in_run = run_uid, 0
        finally:
            self.opening = None
        refusal = self.refusal()
        if refusal is not None and (config.get("resumed_after_restart") or config.get("resumed_after_pause")):
            # a series already going (cut by a restart or a pause) is not a new run: refused, all its frames
            # would be lost, and stay lost after space returned (an outside probe: kill -9 on a full disk,
            # 2601 frames refused); it is held back as a run going on is, and stored once there is room
            log.warning("series %d goes on although new runs are refused now (%s)", series, refusal)
            refusal = None
        if refusal is not None:  # the run is recorded, refused and closed; its frames become losses
            self.refused = True
            self._refused_lost = 0
            self.recorder.close_run(run_uid, 0, "abort")
            return refusal
        if run_mask is not None and self.masks is not None:
            self.masks.put(run_uid, run_mask)  # before the series_start record the pipeline reads
        self.refused = False
        first = config.get("first_frame")
        if config.get("resumed_after_restart") and not config.get("resumes_run") and first:
            # taken for a series a restart cut, but no run of it is known to hold its frames before this
            # one's first: no other run accounts for them, so this one does (an outside probe: they had
            # no disposition at all)
            detail = (
                "before the first frame this daemon received of the series: its start never came here, and"
                " no earlier run of the series is known"
            )
            if config.get("transport") == "udp":
                self.recorder.loss(run_uid, 0, int(first) - 1, "frame_number_jump", detail)
            else:
                # the stream reader holds them as any gap (`below_first`): a frame overtaken by the one
                # that opened the run (a sender with several threads) is stored when it comes; it was
                # recorded lost at once, and dropped when it came a moment later (an outside probe)
                self.below_first = (int(first), detail)
        width, height = config["shape"]
        self._control(
            {
                "event": "series_start",
                "run_uid": run_uid,
                "height": height,
                "width": width,
                "dtype": config["type"],
                "frames_expected": config.get("frames_expected"),
                "detector": nxmx.pop("detector", None),
                "nxmx": nxmx,
                "reduction": reduction,
                "file_path": str(capture_path) if capture_path is not None else None,
                "resumes_run": config.get("resumes_run"),  # a series resumed after a restart
                # a UDP acquisition that went on after a pause: the writer settles the frames between runs
                "resumed_after_pause": bool(config.get("resumed_after_pause")),
                "first_frame": config.get("first_frame"),
            }
        )
        if capture_path is not None:
            with self._capture_lock:
                if self._capture_path == capture_path:
                    self._capture_run, self._capture_offset = run_uid, None
                    self._numbered_run = run_uid
                else:  # the capture closed while this series started: end the run with the series
                    capture_path = None
        return None

    def _note_mode_change(self, config: dict[str, Any], reduction: dict[str, Any]) -> None:
        """A series resumed after a restart in another reduction mode than the run it continues (the
        settings were changed across the restart): said in the log and in the run's config
        (``resumed_in_other_mode``), since its products do not continue that run's. Other settings
        that shape the products changed so (a serial run's hit criteria, say): each named in
        ``resumed_with_other_settings`` ({dotted name: [that run's, this run's]}) and in the log (an
        outside probe's min_peaks changed halfway through one detector series, said nowhere on the run)."""
        earlier = config.get("resumes_run")
        if not earlier:
            return
        with contextlib.suppress(Exception):
            run = self.recorder.ledger.run(str(earlier))
            mode = run.get("mode")
            if mode and mode != reduction.get("mode"):
                config["resumed_in_other_mode"] = mode
                log.warning(
                    "series resumed after a restart in mode %s; the run it continues (%s) was reduced in"
                    " mode %s: its products do not continue that run's (the reduction settings changed"
                    " across the restart)",
                    reduction.get("mode"),
                    earlier,
                    mode,
                )
            recorded = run_config(run.get("config"))
            before = recorded.get("reduction")
            changed = settings_changed(before, reduction) if isinstance(before, dict) else {}
            # and the calibration files' bytes (the same paths, other contents: an outside probe's series
            # went on with another .poni and mask after a restart, and nothing said so)
            was, now = recorded.get("calibration_sha256"), config.get("calibration_sha256") or {}
            if isinstance(was, dict):
                changed.update(
                    settings_changed({"calibration_sha256": was}, {"calibration_sha256": dict(now)})
                )
            if changed:
                config["resumed_with_other_settings"] = changed
                log.warning(
                    "series resumed after a restart with other reduction settings than the run it continues"
                    " (%s): %s",
                    earlier,
                    ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()),
                )

    def _run_mask(self, config: dict[str, Any], pixel_mask: np.ndarray | None) -> np.ndarray | None:
        """For a series that carries a detector pixel mask (or any Stream V2 series): the mask its
        reduction uses, detector OR settings; what went in is recorded in ``config["reduction_mask"]``.
        None: the settings' mask alone applies."""
        if self.masks is None or (pixel_mask is None and config.get("format") != "stream2"):
            return None
        stream2 = config.get("stream2") or {}
        channel = stream2.get("channel")
        detector = None
        if pixel_mask is not None:
            wire = (stream2.get("pixel_mask") or {}).get(channel) or {}
            detector = {"message": "start", "field": "pixel_mask", "channel": channel}
            detector["wire_sha256"] = wire.get("sha256")
        try:
            mask, record = self.masks.combine(pixel_mask, detector)
        except ValueError as error:  # a mask of another shape: the frames will not fit either
            config["reduction_mask"] = {"error": str(error)}
            return None
        config["reduction_mask"] = record
        return mask if pixel_mask is not None else None

    def series_length(self, series: int, frames_expected: int) -> None:
        self._last_frame = frames_expected - 1 if frames_expected > 0 else None
        run_uid = self.run_uid
        if run_uid is not None and not self.refused:
            self.recorder.run_length(run_uid, frames_expected)

    def series_named(self, series: int, detector_uid: str) -> None:
        """A start that came after its series' first images names the run: its uid is kept as the run's
        ``detector_run_uid`` (unless the images gave it one)."""
        run_uid = self.run_uid
        if run_uid is not None and not self.refused:
            self.recorder.run_named(run_uid, detector_uid[:1024])  # (as open_run keeps a refused one)

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        if self._abort_requested and exit_status == "success":
            exit_status = "abort"
        self._abort_requested = False
        if why and self.run_uid is not None and exit_status != "success":
            # what ended it, kept with the run (a run of unknown length ended by the next series' start
            # read "fail", 0 lost, and no reason anywhere: an outside probe)
            self.recorder.note(self.run_uid, "ended_because", why[:500])
        with self._capture_lock:
            self._series_open = False
            if self._capture_run is not None and self.run_uid == self._capture_run:
                if exit_status == "success":
                    self.run_uid = None
                    return  # the capture goes on: the run ends at Capture=0
                # an aborted series ends its capture's run, and the capture (never a second run in its file)
                self._capture_run = self._capture_path = None
        if not self.refused:
            self._control({"event": "series_end", "exit_status": exit_status})
        else:
            self._refused_account()
        if self.run_uid == self._numbered_run:  # the capture's run has ended: no more numbering
            self._numbered_run = self._capture_offset = None
        self.ended_run_uid, self.run_uid = self.run_uid, None

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        if (
            reason == "missing_at_series_end"
            and not self._abort_requested
            and self._aborted_at_the_camera(first)
        ):
            log.info("the detector was aborted at the camera: the series ends abort")
            self._abort_requested = True
        if reason == "missing_at_series_end" and self._abort_requested:
            # the control system aborted the run (Acquire 0): the detector stopped before these frames
            reason, detail = "aborted", f"not acquired: the run was aborted (Acquire 0); {detail}"
        if reason == "ring_full" and self.ring.stopping:  # no slot because the daemon is stopping
            reason, detail = "shutdown", "the daemon was stopping and no ring slot came free in time"
        numbered = self._numbered_run is not None and self.run_uid == self._numbered_run
        if self._capture_offset and numbered:
            first, last = first + self._capture_offset, last + self._capture_offset
        if numbered and self._capture_offset is not None:
            # the capture's next series numbers on past these too: a series cut short (its camera
            # restarted) had 49..109 recorded missing, and the next one's frames numbered from 49 were
            # stored and lost both (an outside probe)
            self._capture_next = max(self._capture_next, last + 1)
        self.losses += last - first + 1
        if self.refused and self.run_uid is not None:
            self._refused_lost += last - first + 1  # (after its RunStop: `_refused_account`)
        if self.run_uid is None and reason == "frame_outside_series" and self.ended_run_uid is not None:
            # the run's account is closed (its RunStop is written): the record stays outside it, and
            # names it in its detail
            detail = f"{detail} (run {self.ended_run_uid})"
        self.recorder.loss(self.run_uid, first, last, reason, detail)

    def refused_frame(self, frame: int) -> None:
        """An image of the refused series, dropped by the reader: how far its series got, kept with its run
        (`RunRecorder.refused_frame_seen`)."""
        if self.refused and self.run_uid is not None:
            self.recorder.refused_frame_seen(self.run_uid, frame)

    def _refused_account(self) -> None:
        """A refused run was closed, its documents written, before its frames were recorded lost
        (``run_refused``, by the reader, after the refusal): at its series' end, a new revision of its
        documents counts them. Its only documents upstream said "0 lost" of a series of 60 (an outside
        probe: sent = stored + vetoed + lost failed from the upstream copy)."""
        run_uid, lost, self._refused_lost = self.run_uid, self._refused_lost, 0
        if run_uid is not None and lost:
            self.recorder.documents_when_possible(run_uid, "abort")

    def _control(self, record: dict[str, Any]) -> None:
        # control records are never dropped: it waits for a slot whatever the ring's policy (retried
        # claims counted a dropped frame each, one more than the frames the ring really dropped)
        slot = self.ring.claim(CONTROL_BYTES, wait=True)
        if slot is not None:
            payload = json.dumps(record).encode()
            if len(payload) > CONTROL_BYTES:  # its parts are bounded where they come in: a bug
                self.ring.abandon(slot)
                raise ValueError(
                    f"control record {record.get('event')} of {len(payload)} bytes > {CONTROL_BYTES}"
                )
            self.ring.publish_control(slot, payload)


class Appliance:
    """Builds and runs every data-plane component from one Settings object."""

    def __init__(self, settings: Settings, context: zmq.Context | None = None) -> None:
        self.frame_format = frame_format(settings)  # the one definition every part reads
        calibration = load_calibration(settings, self.frame_format)  # a bad image fails the start first
        self.settings = settings
        self.stopping = False
        #: set when a data-plane thread used up its restarts: the daemon exits non-zero (see edge run)
        self.fatal: str | None = None
        self.reload_refused: dict[str, Any] | None = None  # the last SIGHUP's, refused (`edge.cli`)
        self.fatal_event = threading.Event()
        sup = settings.supervision
        self.supervisor = Supervisor(
            max_restarts=sup.max_restarts,
            backoff_seconds=sup.restart_backoff_seconds,
            on_exhausted=self._thread_exhausted,
            inject=parse_injection(sup.inject_error),
        )
        self.context = context or zmq.Context.instance()
        # settings that can only be checked here, before anything is opened or made
        curve = curve_paths(
            settings.upstream.curve_secret_file,
            settings.upstream.curve_clients_dir,
            ("upstream.curve_secret_file", "upstream.curve_clients_dir"),
        )
        if curve is not None:
            from edge.upstream.curve import load_keys

            load_keys(curve[0], "upstream.curve_secret_file", secret=True)  # bad: one line, no ring made
        store = settings.store
        store.path.mkdir(parents=True, exist_ok=True)
        self.disk = DiskGuard(
            store.path,
            settings.ledger_path.with_name("ledger.reserve"),
            settings.ledger.reserve_bytes,
            settings.ledger.resume_free_bytes,
        )
        if settings.ledger.reserve_bytes == 0 and settings.retention.headroom_bytes == 0:
            log.warning(
                "ledger.reserve_bytes and retention.headroom_bytes are both 0: a disk that fills leaves no"
                " room to record the consumers' confirmations that let retention purge files, and it stays"
                " full until space is made by hand"
            )
        self.ledger = Ledger(settings.ledger_path, settings.upstream.required_consumers)
        self.ledger.reconcile_verified()  # the daemon's own list decides what is verified (purgeable)
        # records a full disk held back when the last daemon stopped (or was killed): written before the
        # recovery, which then accounts for their runs (those the disk refuses again stay held)
        journal = HeldJournal(settings.ledger_path.with_name("ledger.held"))
        journal.make()
        _written, still_held, documents_waiting = replay_held(self.ledger, journal)
        self.recorder = RunRecorder(
            self.ledger,
            store.path,
            store.chunk_bytes,
            settings.upstream.forward,
            disk=self.disk,
            journal=journal,
        )
        if still_held:
            self.recorder.hold(still_held)
        unseen = UnseenRecoveries(settings.ledger_path.with_name("recovery.unseen"))
        self.recovery = empty_report()  # (one dict: the view and the sink read it; filled by `_recover`)
        self._recovery_shown = threading.Event()
        self._start_lock = threading.Lock()  # `stop` against a start that waited (`_start_when_written`)
        # Records the last daemon held back that the disk refuses again (it is still full): the recovery
        # and the frames wait until they are written. Run on a ledger without them, the recovery failed a
        # run that a start before this one had already failed and continued in a run of its own (held too),
        # and when space returned both accounts were written: frames lost in two runs, stored in one and
        # lost in the other, a run left "running" (an outside chaos probe: two kill -9s while the disk
        # stayed full, 3371 dispositions for 2500 frames). Until then this start records nothing of its
        # own: the reader is not started (what the detector sends meanwhile is accounted as after any
        # restart, when its series is seen again) and runs are refused (`refusal`).
        self._waiting: tuple[UnseenRecoveries, list[tuple[str, str]]] | None = None
        if still_held:
            self._waiting = (unseen, documents_waiting)
            log.error(
                "the disk is full and %d ledger record(s) the last daemon held back cannot be written yet:"
                " this daemon runs its recovery and takes frames once they are (make room on %s)",
                len(still_held),
                store.path,
            )
        else:
            self._recover(unseen, documents_waiting)
        stale, freed = sweep_stale_rings(() if settings.ring.name is None else (settings.ring.name,))
        if stale:
            log.warning(
                "removed %d shared-memory ring(s) no process uses any more (%.1f MiB; left by daemons killed"
                " before they could remove them): %s",
                len(stale),
                freed / 2**20,
                ", ".join(stale[:8]) + (" ..." if len(stale) > 8 else ""),
            )
        try:
            self.ring = FrameRing(
                settings.ring.slots,
                max(self.frame_format.nbytes, CONTROL_BYTES),
                settings.ring.policy,
                settings.ring.name,
            )
        except OSError as error:
            if error.errno == errno.ENOSPC:  # more slots than the shared memory has room for
                raise ConfigError(
                    f"ring.slots = {settings.ring.slots} of {self.frame_format.nbytes:,} bytes:"
                    f" {error.strerror}; lower ring.slots (or enlarge /dev/shm)"
                ) from error
            # a ring.name another daemon holds: name the setting
            raise ConfigError(
                f"ring.name = {settings.ring.name!r}: its shared memory cannot be made:"
                f" {error.strerror or error}"
            ) from error
        try:  # a start that fails from here on must not leave the ring's shared memory behind
            self.backend = get_backend(settings.reduction.backend, fallback=True)  # logged when it falls back
            # the PONI file's geometry as loaded with its checksum above (read again here, a file replaced
            # meanwhile gave the run another geometry than the checksum it recorded: an outside probe)
            geometry = (
                calibration.geometry if calibration.geometry is not None else settings_geometry(settings)
            )
            self.geometry = geometry
            self.retention = Retention(
                self.ledger, settings.store.path, settings.retention, disk_low_bytes=self.disk.resume_bytes
            )
            self.reduction = ReductionControl(
                settings.reduction,
                open_run=lambda: self.sink.run_or_opening(),
                on_change=self._warm_up_in_background,
                frame_shape=self.frame_format.shape,
                autosave=settings.store.path / AUTOSAVE_NAME,  # changes kept across a restart
            )
            red = settings.reduction
            self.masks = RunMasks(calibration.mask, red.mask_file, red.poni_file)  # + a detector's, per run
            self.sink = RingSink(
                self.ring,
                self.recorder,
                self.refusal,
                lambda: self.reduction.current().model_dump(mode="json"),
                masks=self.masks,
            )
            self.sink.blanks = settings.store.blanks
            self.sink.calibration = {key: digest for key, (_path, digest) in calibration.files.items()}
            self.sink.resume = lambda series, first, transport: resume_interrupted(
                self.recorder, self.recovery, series, first, transport
            )
            self.sink.series_interrupted = lambda series, uid=None: was_interrupted(
                self.ledger, self.recovery, series, uid
            )
            self.sink.interrupted_shape = lambda series: interrupted_shape(self.ledger, self.recovery, series)
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
                self.recorder,
                may_write=lambda: not self.retention.under_pressure(),
                calibration=calibration,
                gaps=detector_gaps(settings, self.frame_format),
                store_blanks=store.blanks,
                disk=self.disk,
                reduced_file_seconds=store.reduced_file_seconds,
                compress_threads=store.compress_threads,
                frame_threads=settings.reduction.frame_threads,
                analysis_threads=settings.reduction.analysis_threads,
                run_masks=self.masks,
                reduced_file_bytes=reduced_file_bytes(self.retention.headroom()),
            )
            self.retention.open_bytes = self.pipeline.open_bytes  # (files open now count in the store)
            self.warm_ups = WarmUps(
                partial(self.pipeline.warm_up, self.frame_format.shape, self.frame_format.dtype)
            )
            self.forwarder = Forwarder(
                settings.upstream.endpoint,
                self.ledger,
                self.context,
                settings.upstream.resend_seconds,
                appliance_id=socket.gethostname(),
                corrupt=settings.upstream.corrupt,
                curve=curve,
                disk=self.disk,
            )
            self.view = ApplianceView(
                ApplianceParts(
                    settings=settings,
                    frame_format=self.frame_format,
                    geometry=geometry,
                    backend_name=self.backend.name,
                    ledger=self.ledger,
                    source=self.source,
                    ring=self.ring,
                    pipeline=self.pipeline,
                    forwarder=self.forwarder,
                    retention=self.retention,
                    recorder=self.recorder,
                    sink=self.sink,
                    recovery=self.recovery,
                    recovery_waits=self.waiting_for_held,
                    threads=self.threads,
                    stopping=lambda: self.stopping,
                    kernels_loading=lambda: self.warm_ups.busy,
                    kernels_queued=lambda: self.warm_ups.queued_mode,
                    reload_refused=lambda: self.reload_refused,
                    calibration_problem=CalibrationWatch(settings, self.frame_format).problem,
                )
            )
        except BaseException:
            self.ring.close()
            raise

    def _source(self, settings: Settings) -> FrameSource:
        if settings.stream.transport == "udp":
            udp = settings.udp
            try:
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
                    pause_file=settings.ledger_path.with_name(UDP_PAUSE_FILE),
                    **self._udp_links(settings),
                )
            except OSError as error:  # the port taken, or a host that does not resolve: name the setting
                raise ConfigError(
                    f"udp.host, udp.port = {udp.host}, {udp.port}: cannot receive there:"
                    f" {error.strerror or error}"
                ) from error
        stream = settings.stream
        if stream.format == "stream2":  # DECTRIS Stream V2 (CBOR): same socket handling, its own codec
            return Stream2Source(
                stream.endpoint,
                self.sink,
                self.context,
                stream.rcvhwm,
                stream.rcvbuf_bytes,
                max_frame_jump=stream.max_frame_jump,
                max_message_bytes=self._max_message_bytes(settings),
                channel=stream.channel,
                pass_through=True,  # bslz4 images go to the store as received; the pipeline decodes if needed
                check=stream.stream2_check,
                silent_alarm_seconds=stream.silent_alarm_seconds,
                reorder_frames=stream.reorder_frames,
                reorder_seconds=stream.reorder_seconds,
            )
        return ZmqStreamSource(
            stream.endpoint,
            self.sink,
            self.context,
            stream.rcvhwm,
            stream.rcvbuf_bytes,
            max_frame_jump=stream.max_frame_jump,
            silent_alarm_seconds=stream.silent_alarm_seconds,
            max_message_bytes=self._max_message_bytes(settings),
            reorder_frames=stream.reorder_frames,
            reorder_seconds=stream.reorder_seconds,
        )

    def _udp_links(self, settings: Settings) -> dict[str, Any]:
        """The UDP reader's links to the runs before it (`UdpSource.link_earlier`), from the ledger and
        this start's recovery."""
        interrupted = interrupted_udp_run(self.ledger, self.recovery)  # a restart mid-acquisition
        # ... or during a pause, after silence had ended the run: the run that goes on is linked to it
        paused = None if interrupted is not None else paused_udp_run(self.ledger)
        before = (interrupted or paused or ({},))[0]
        stamps: dict[int, int] = {}
        if paused is not None:
            self.sink.ended_run_uid = paused[0]["run_uid"]
        if before:  # its last frames' timestamps: a copy of them after the restart is that run's
            pause_file = settings.ledger_path.with_name(UDP_PAUSE_FILE)
            stamps = load_paused_timestamps(pause_file, str(before["run_uid"]))
        return {
            "resume_above": interrupted[1] if interrupted is not None else None,
            "paused_above": paused[1] if paused is not None else None,
            "series_before": udp_series_before(self.ledger),
            "armed_last_before": udp_armed_last(before),
            "length_before": before.get("frames_expected"),
            "paused_timestamps": stamps,
        }

    def _max_message_bytes(self, settings: Settings) -> int:
        """``stream.max_message_bytes``, or its default: 16 ring slots, at least 256 MiB."""
        return settings.stream.max_message_bytes or max(256 << 20, 16 * self.ring.slot_bytes)

    # -- lifecycle --------------------------------------------------------------------------------------
    def _recover(self, unseen: UnseenRecoveries, documents_waiting: list[tuple[str, str]]) -> None:
        """The recovery (`edge.recovery.recover`), then the documents the last daemon's runs waited for."""
        since = unseen.begin()
        self.recovery.update(recover(self.recorder, self.settings.store.path))
        note_earlier(self.ledger, self.recovery, since)
        # once this daemon has run a while, its recovery has been shown (a start killed sooner is named
        # again by the next one)
        self._recovery_shown = unseen.shown_after(SHOWN_SECONDS)
        for run_uid, exit_status in documents_waiting:  # (each a new revision; held again if still full)
            try:
                self.recorder.documents_when_possible(run_uid, exit_status)
            except Exception:  # a run since gone from the ledger, say: logged, the start goes on
                log.exception("run %s: the documents that waited for space could not be written", run_uid)

    def waiting_for_held(self) -> int:
        """The last daemon's held records this start waits for before its recovery (0: it has run)."""
        return 0 if self._waiting is None else max(1, self.recorder.held())

    def _start_when_written(self) -> None:
        """(Thread) Once the pipeline has written the last daemon's held records (when space returns):
        the recovery, then the reader."""
        while not self.stopping:
            if self.recorder.held() == 0:
                with self._start_lock:
                    if self.stopping or self._waiting is None:
                        return
                    try:
                        self._recover(*self._waiting)
                        if isinstance(self.source, UdpSource):  # (the run a restart cut: known only now)
                            self.source.link_earlier(**self._udp_links(self.settings))
                        self.source.start(self.supervisor.spawn)
                    except Exception as error:
                        log.exception("the start that waited for the last daemon's held records failed")
                        self.fatal = f"the recovery after the held records were written failed: {error!r}"
                        self.fatal_event.set()
                        return
                    self._waiting = None
                log.warning("the last daemon's held ledger records are written: recovered, taking frames")
                return
            time.sleep(0.5)

    def start(self) -> None:
        self.forwarder.start(self.supervisor.spawn)
        self.retention.start(self.supervisor.spawn)
        # the configured mode's kernels load now, not on the first run's first frame, on the warm-ups'
        # thread: the API answers meanwhile and shows the load (``pipeline.warming``, the mode_warming
        # alarm); an install's first compile kept the API unanswered for 70 s (an outside probe). A run
        # that starts meanwhile waits for numba's compile lock, its frames held in the ring. On the GPU
        # backend, before the pipeline starts, as before: under numba's CUDA simulator (what CI can run) a
        # kernel on one thread swaps the backend module's ``cuda`` for a fake one that the pipeline's
        # thread would meet (a CI run: the ring's page-locking failed so)
        if self.backend.name == "gpu":
            self.pipeline.warm_up(self.frame_format.shape, self.frame_format.dtype, self.reduction.current())
        else:
            self.warm_ups.request(self.reduction.current())
        self.pipeline.start(self.supervisor.spawn)  # (it writes the held records when space returns)
        if self._waiting is None:
            self.source.start(self.supervisor.spawn)
        else:
            threading.Thread(target=self._start_when_written, name="held-records-wait", daemon=True).start()
        stream = self.settings.stream
        udp = self.settings.udp
        source = (
            f"udp {udp.host}:{udp.port}"
            if stream.transport == "udp"
            else f"{stream.format} stream from {stream.endpoint}"
        )
        log.info(
            "appliance started: %s, upstream %s, backend %s",
            source,
            self.forwarder.bound_endpoint,
            self.backend.name,
        )

    def _warm_up_in_background(self, params: ReductionSettings) -> None:
        """A mode or its parameters changed between runs (PV, REST): load the kernels the next run needs
        now, on a thread of its own, as `start` does for the configured mode. Cached kernels take a
        second; an install's first use of a mode compiles them (tens of seconds), which would otherwise
        stall the next run's first frames. A run that starts meanwhile waits for numba's compile lock,
        never compiles twice. A failure is logged by `Pipeline.warm_up`; the run then says why. One load
        at a time (`WarmUps`): changes made while one runs are loaded after it, only the newest."""
        self.warm_ups.request(params)

    def stop(self) -> None:
        """Stop taking frames, persist what is in the ring, close files, stop serving."""
        with self._start_lock:  # (a start that waited for held records is not begun now, or is done)
            self.stopping = True
        self.supervisor.stopping()
        loading = self.pipeline.progress()[1] > 0
        if loading:  # (an outside probe saw nothing logged for the 18 s the stop then took)
            log.info(
                "stopping while a mode's kernels load: the frames in the ring wait for them (up to %.0f s),"
                " and what the detector sends meanwhile, a new series too, is read and stored; stop the"
                " detector first for a prompt stop",
                STOP_GRACE_SECONDS,
            )
        # a reader waiting for a free slot gives up (and records the frame as lost), unless the pipeline
        # empties the ring within the grace: frames already received are stored (see FrameRing.stop)
        self.ring.stop(STOP_GRACE_SECONDS, busy=lambda: self.pipeline.progress()[1] > 0)
        self.source.stop()
        self.pipeline.stop()  # persists everything already in the ring, closes the open run
        self.forwarder.stop()
        self.retention.stop()
        self.recorder.give_up_held()  # what a full disk held back: written now, or logged as lost
        self._recovery_shown.set()  # (cancels the mark that the recoveries were shown, not yet made)
        self.ledger.close()
        self.ring.close()

    def threads(self) -> dict[str, dict[str, Any]]:
        """Each data-plane thread's state: ``running``, ``restarting``, ``stopped`` or ``dead``, with its
        restarts and last error (supervised threads), or just alive or not (the others)."""
        return self.supervisor.states()

    def _thread_exhausted(self, name: str, error: BaseException) -> None:
        self.fatal = f"thread {name} failed {self.settings.supervision.max_restarts + 1} times: {error!r}"
        self.fatal_event.set()

    def refusal(self) -> str | None:
        """Why a new run is refused now (a full disk, a store full of unverified data, the last daemon's
        held records not yet written), or None: the sink refuses a series with it, and the IOC an
        ``Acquire`` put before the detector is armed."""
        waiting = self.waiting_for_held()
        if waiting:
            return (
                f"{waiting} ledger record(s) the last daemon held back through a full disk are not written"
                " yet: no run starts before they are and the recovery has run (make room on the store's"
                " disk)"
            )
        return self.disk.refusal() or self.retention.refusal()

    def liveness(self) -> dict[str, Any]:
        """For the service watchdog (see `ApplianceView.liveness`)."""
        return self.view.liveness()

    # -- control ------------------------------------------------------------------------------------------
    def end_open_series(self, reason: str) -> None:
        """End the series a vanished detector left open: the frames that never came become losses and
        the run's exit status is ``fail``. The source does it on its own thread."""
        if self.source.series_open:
            self.source.end_series(reason)
