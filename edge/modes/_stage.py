"""What every reduction mode shares: the run's context, a frame's result, ROI statistics and the
``ModeStage`` interface (which is also the ``raw`` mode itself).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from edge.config import ReductionSettings
from edge.run_masks import file_sha256
from kernels import Backend, Geometry, RoiSet

log = logging.getLogger(__name__)

STREAM_DATA, STREAM_BLANK = "data", "blank"


@dataclass(frozen=True)
class Corrections:
    """Dark, flat and mask images and the pyFAI-style corrections for one detector."""

    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    mask: np.ndarray | None = None
    solid_angle: bool = False
    polarization: float | None = None
    #: the value the detector writes into a pixel it cannot measure, and its tolerance (pyFAI's
    #: ``DUMMY``, ``DELTA_DUMMY`` of the PONI file's named detector); None: it marks none
    dummy: tuple[float, float | None] | None = None
    #: the files the dark, flat and mask images came from, with the sha256 of their bytes ({"dark":
    #: (path, sha256)}): recorded with the run, so that a product can be reproduced with the same images
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: the detector shape the PONI file names (``max_shape``), when it names one
    poni_shape: tuple[int, int] | None = None
    #: the PONI file's geometry, read from the same bytes as its sha256 in ``files``; None without one
    geometry: Geometry | None = None

    def changed_on_disk(self) -> list[str]:
        """The calibration files whose bytes are no longer those loaded (the daemon keeps what it loaded
        until a restart: a run's record names the file, and its sha256 then is not the file's any more)."""
        changed = []
        for name, (path, digest) in sorted(self.files.items()):
            try:
                now = file_sha256(Path(path))
            except OSError as error:
                now = f"unreadable ({error.strerror or error})"
            if now != digest:
                changed.append(f"{name} {path}: now sha256 {now}, loaded sha256 {digest}")
        return changed

    def check_calibration(self, shape: tuple[int, int]) -> None:
        """Refuse frames of another shape than the detector the PONI file names (when it names one)."""
        if self.poni_shape is not None and tuple(self.poni_shape) != tuple(shape):
            poni = self.files.get("poni", ("the PONI file", ""))[0]
            raise ValueError(
                f"the calibration {poni} is for a detector of {tuple(self.poni_shape)}, frames are {shape}"
            )

    def check(self, shape: tuple[int, int]) -> None:
        """Refuse frames of another shape than the calibration and the images: the calibration first (a
        series of another shape named the mask, when the geometry is what disagrees: an outside probe)."""
        self.check_calibration(shape)
        for name in ("dark", "flat", "mask"):
            image = getattr(self, name)
            if image is not None and image.shape != shape:
                raise ValueError(f"{name} image is {image.shape}, frames are {shape}")


@dataclass
class FrameResult:
    """What a stage decided about one frame."""

    keep: bool = True  # False: vetoed by the mode's policy (never a loss)
    stream: str = STREAM_DATA  # which of the run's file streams stores it
    products: dict[str, Any] = field(default_factory=dict)  # per-frame products, stored beside the frame
    row: dict[str, Any] = field(default_factory=dict)  # the frame table's fields for this frame
    live: dict[str, Any] = field(default_factory=dict)  # for the live view only, never stored
    #: set by ``ModeStage.start`` while the frame is still being analysed: waits and gives the result
    pending: Callable[[], FrameResult] | None = None

    def finish(self) -> FrameResult:
        """Wait for a result still being computed and take it over (nothing to do for most stages)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            done = pending()
            self.keep, self.stream, self.products, self.row = done.keep, done.stream, done.products, done.row
            self.live = done.live
        return self


@dataclass
class RunContext:
    """What a stage is built from at a run's start."""

    backend: Backend
    geometry: Geometry
    shape: tuple[int, int]
    bins: int
    unit: str
    params: ReductionSettings
    corrections: Corrections = field(default_factory=Corrections)
    store_blanks: str = "keep"
    #: frames analysed at once (``reduction.analysis_threads`` > 1): stages that can (serial, powder on
    #: the CPU) analyse each frame there and fold the results in frame order
    analysis: Executor | None = None
    #: a run resumed after a restart: the stored frames of the series before it (tomography reads them)
    earlier: EarlierParts | None = None
    #: the run's frames' (dummy, delta): a pixel with ``abs(float32(value) - dummy) <= delta`` is left out
    #: of powder and serial products (``ModeStage.excludes_dummies``), as pyFAI does; None: none
    dummy: tuple[float, float] | None = None


def frame_row(image_key: int, angle: float) -> dict[str, Any]:
    """A frame's entries in the run's frame table common to every mode: its image key and, when the
    detector sent one, its rotation angle (the table's ``rotation_angle`` column, NaN where none came)."""
    return (
        {"image_key": image_key} if math.isnan(angle) else {"image_key": image_key, "rotation_angle": angle}
    )


@dataclass(frozen=True)
class EarlierParts:
    """The series' frames stored before a daemon restart cut it: the runs a resumed run continues (oldest
    first), their data files still on local disk in frame order, and how many of those runs' data files
    are not local any more."""

    runs: tuple[str, ...]
    files: tuple[Path, ...]
    missing: int = 0


#: h c in keV x angstrom (CODATA 2018): E[keV] = 12.398 / wavelength[angstrom]
_HC_KEV_ANGSTROM = 12.398419843320026


def _radial_axis(unit: str) -> tuple[str, str]:
    """(quantity, NeXus units) of a pyFAI radial unit name: ``2th_deg`` -> ("2theta", "deg")."""
    quantity, _, units = unit.partition("_")
    names = {"2th": "2theta", "q": "q", "r": "r"}
    shown = {"nm^-1": "1/nm", "A^-1": "1/angstrom"}.get(units, units)
    return names.get(quantity, quantity), shown


def _described(ds: h5py.Dataset, long_name: str, units: str, pyfai_unit: str = "") -> None:
    """A product's ``long_name`` and ``units`` as NXazint1d names them (and pyFAI's unit name)."""
    ds.attrs["long_name"] = long_name
    ds.attrs["units"] = units
    if pyfai_unit:
        ds.attrs["pyfai_unit"] = pyfai_unit


class RoiStage:
    """ROI statistics per configured box, as areaDetector's Stats plugin gives them, over the box's live
    pixels: the run's mask (the settings', the PONI detector's gaps, the detector's own) and a frame's
    missing or dummy pixels are left out, as the profile leaves them out (an Eiger's gap pixels at 65535
    in a box made its sum and max theirs)."""

    def __init__(self, ctx: RunContext) -> None:
        self.boxes = [tuple(int(v) for v in box) for box in ctx.params.roi]
        self.backend = ctx.backend
        self.rois: RoiSet | None = None
        # per box: its pixel ranges clipped to the frame, and its live pixels (None: all of them)
        self._spans: list[tuple[int, int, int, int]] = []
        self._live: list[np.ndarray | None] = []
        if not self.boxes:
            return
        height, width = ctx.shape
        mask = ctx.corrections.mask
        for r0, r1, c0, c1 in self.boxes:
            r0, r1, c0, c1 = max(0, r0), min(height, r1), max(0, c0), min(width, c1)
            r1, c1 = max(r0, r1), max(c0, c1)
            self._spans.append((r0, r1, c0, c1))
            masked = None if mask is None else np.asarray(mask[r0:r1, c0:c1], bool)
            self._live.append(None if masked is None or not masked.any() else ~masked)
        if all(live is None for live in self._live):
            self.rois = RoiSet(ctx.shape, self.boxes)
        else:  # every box as a mask of its live pixels (the set keeps masks after rectangles: one kind)
            pieces = []
            for (r0, r1, c0, c1), live in zip(self._spans, self._live, strict=True):
                whole = np.zeros(ctx.shape, bool)
                whole[r0:r1, c0:c1] = True if live is None else live
                pieces.append(whole)
            self.rois = RoiSet(ctx.shape, masks=pieces)

    def __bool__(self) -> bool:
        return self.rois is not None

    def stats(self, frame: np.ndarray, missing: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Sum, mean, max and centroid per box, over its live pixels. ``missing``: this frame's pixels
        that never arrived or hold the detector's dummy value: left out of every figure, as masked
        pixels are (a box with no pixel left: sum 0, mean and centroid NaN, max -inf)."""
        assert self.rois is not None
        n = len(self.boxes)
        cx, cy = np.full(n, np.nan), np.full(n, np.nan)
        if missing is None:
            stats = self.backend.roi_stats(frame, self.rois)
            total = np.asarray(stats.sum, np.float64)
            mean = np.asarray(stats.mean, np.float64)
            peak = np.asarray(stats.max, np.float64)
        else:
            total, mean, peak = np.zeros(n), np.full(n, np.nan), np.full(n, -np.inf)
        for k, ((r0, r1, c0, c1), live) in enumerate(zip(self._spans, self._live, strict=True)):
            box = frame[r0:r1, c0:c1].astype(np.float64)
            if missing is not None:
                gone = missing[r0:r1, c0:c1]
                live = ~gone if live is None else (live & ~gone)
            if live is not None:
                box = np.where(live, box, 0.0)
            if missing is not None:  # this frame's own figures (the kernel's cover the static mask only)
                count = box.size if live is None else int(np.count_nonzero(live))
                total[k] = box.sum()
                if count:
                    mean[k] = total[k] / count
                    peak[k] = float(box.max() if live is None else box[live].max())
            weight = box.sum()
            if weight > 0:
                cy[k] = (box.sum(axis=1) @ np.arange(r0, r1)) / weight
                cx[k] = (box.sum(axis=0) @ np.arange(c0, c1)) / weight
        return {"sum": total, "mean": mean, "max": peak, "centroid_x": cx, "centroid_y": cy}

    def write(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        if self.rois is None:
            return
        group = entry.create_group("roi")
        group.attrs["NX_class"] = "NXcollection"
        group.create_dataset("boxes", data=np.asarray(self.boxes, dtype=np.int64)).attrs["meaning"] = (
            "row0, row1, col0, col1 (half-open), one row per ROI"
        )
        for name in ("sum", "mean", "max", "centroid_x", "centroid_y"):
            values = [p["roi"][name] for p in products]
            data = np.asarray(values, np.float64).reshape(len(products), len(self.boxes))
            ds = group.create_dataset(name, data=data)
            ds.attrs["units"] = "pixel" if name.startswith("centroid") else "counts"

    def row(self, stats: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"roi_sum": stats["sum"]}


class ModeStage:
    """The interface every mode implements (and the ``raw`` mode itself)."""

    name = "raw"
    decompress = False  # does `process` need the pixels?
    definition = "NXmx"  # the NeXus application definition of the run's data files
    reference = "none: raw frames, bitshuffle-LZ4 compressed and stored unchanged"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.frames = 0

    # per frame -----------------------------------------------------------------------------------
    def process(
        self,
        raw: np.ndarray | None,
        frame: int,
        image_key: int,
        angle: float,
        missing: np.ndarray | None = None,
    ) -> FrameResult:
        """One frame's result. ``missing``: its pixels that never arrived (an incomplete UDP frame, 0 in
        ``raw``), left out of its products as if masked."""
        if self.independent:
            return self.fold(self.analyse(raw, missing), frame, image_key, angle)
        self.frames += 1
        return FrameResult(row=frame_row(image_key, angle))

    def start(
        self,
        raw: np.ndarray | None,
        frame: int,
        image_key: int,
        angle: float,
        missing: np.ndarray | None = None,
    ) -> FrameResult:
        """``process``, except that the result may still be computing when it returns: the caller calls
        its ``finish`` before reading it (``keep``, ``stream``, products, row), and keeps ``raw`` alive
        until then. Frames are started and finished in order. The pipeline uses this: a stage that
        analyses frames independently (``analyse``, then ``fold`` in order) has the frame analysed on the
        run's analysis threads, several frames at once; the GPU's powder stage overlaps one frame's copy
        and kernels with the next frame's hand-over; every other stage processes the frame now."""
        executor = self.ctx.analysis
        if executor is None or not self.independent:
            return self.process(raw, frame, image_key, angle, missing)
        analysis = executor.submit(self.analyse, raw, missing)
        return FrameResult(pending=lambda: self.fold(analysis.result(), frame, image_key, angle))

    independent = False  # True: ``analyse`` may run on several frames at once, ``fold`` keeps the order
    #: True: a frame's pixels at the detector's dummy value reach ``start`` as ``missing`` (the pipeline
    #: finds them), left out of the products as pyFAI leaves them out of an integration
    excludes_dummies = False

    def analyse(self, raw: np.ndarray | None, missing: np.ndarray | None = None) -> Any:
        """The per-frame work that reads only the frame (thread-safe): peaks, profiles, ROI statistics;
        ``missing`` as in `process`."""
        raise NotImplementedError

    def fold(self, analysis: Any, frame: int, image_key: int, angle: float) -> FrameResult:
        """``analyse``'s result made into the frame's result, in frame order (counters, live view)."""
        raise NotImplementedError

    # the files ------------------------------------------------------------------------------------
    def settings_record(self) -> dict[str, Any]:
        """Every setting that shapes this mode's products (RunStart, files, `edge where`)."""
        return {"mode": self.name}

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """Per-frame products of one file's frames, in frame order, under ``entry``."""

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """The same products in a run's reduced file (no raw frames there)."""
        self.write_products(entry, products)

    def run_files(self, directory: Path, run_uid: str) -> list[Path]:
        """Files the mode writes once at the run's start (serial: CrystFEL's geometry); they go upstream."""
        return []

    def finish(self) -> dict[str, Any]:
        """Run products computed at the end (tomography slices); empty for most modes."""
        return {}

    def run_notes(self) -> dict[str, str]:
        """What the run's record must say of its products once `finish` made them (`Ledger.RUN_NOTES`:
        tomography's ``centre_not_estimated``); none for most modes."""
        return {}

    # live view ------------------------------------------------------------------------------------
    def live(self) -> dict[str, Any] | None:
        return None

    def tally(self) -> dict[str, float]:
        """The run's running figures, cheap to read once a second (the IOC's readbacks): frames here,
        hits and vetoed blanks in serial, slices reconstructed in tomo."""
        return {"frames": self.frames}


class _CorrectedStage(ModeStage):
    """A stage that reads pixels and computes ROI statistics."""

    decompress = True

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.roi = RoiStage(ctx)

    def _roi(self, raw: np.ndarray, result: FrameResult, missing: np.ndarray | None = None) -> FrameResult:
        return self._with_roi(self._roi_stats(raw, missing), result)

    def _roi_stats(self, raw: np.ndarray, missing: np.ndarray | None = None) -> dict[str, np.ndarray] | None:
        return self.roi.stats(raw, missing) if self.roi else None

    def _dummy_record(self) -> dict[str, Any]:
        """The invalid-pixel value the products leave out (pyFAI's names; None: none)."""
        dummy = self.ctx.dummy if self.excludes_dummies else None
        return {
            "dummy": None if dummy is None else dummy[0],
            "delta_dummy": None if dummy is None else dummy[1],
        }

    def _mask_file_record(self) -> dict[str, Any]:
        """``reduction.mask_file`` and ``reduction.poni_file`` with the sha256 of their bytes (None: no
        such file), the sha256 of the mask the run applied (the settings', the PONI detector's gaps and
        the detector's own, combined: ``mask_sha256``, one bit per pixel, row-major, ``np.packbits``;
        the mask itself is stored beside the products), and the kernels' backend."""
        path, digest = self.ctx.corrections.files.get("mask", (None, None))
        poni, poni_digest = self.ctx.corrections.files.get("poni", (None, None))
        if self._applied_mask_sha256 is None and self.ctx.corrections.mask is not None:
            packed = np.packbits(np.ascontiguousarray(self.ctx.corrections.mask, dtype=bool))
            self._applied_mask_sha256 = hashlib.sha256(packed).hexdigest()
        if self._files_changed is None:  # once a run: the files' bytes read again (a mask: a few ms)
            self._files_changed = self.ctx.corrections.changed_on_disk()
            if self._files_changed:
                log.warning(
                    "calibration files changed on disk since the daemon loaded them; this run uses the"
                    " loaded ones (a restart applies the change): %s",
                    "; ".join(self._files_changed),
                )
        return {
            "mask_file": path,
            "mask_file_sha256": digest,
            "mask_sha256": self._applied_mask_sha256,
            "poni_file": poni,
            "poni_file_sha256": poni_digest,
            # the files named above whose bytes changed since loaded: the sha256s above are what the run
            # used (None: none changed)
            "calibration_files_changed": "; ".join(self._files_changed) or None,
            "backend": self.ctx.backend.name,
        }

    _applied_mask_sha256: str | None = None  # computed once a run (a 4M-pixel mask: a few ms)
    _files_changed: list[str] | None = None

    def _with_roi(self, stats: dict[str, np.ndarray] | None, result: FrameResult) -> FrameResult:
        if stats is not None:
            result.products["roi"] = stats
            result.row.update(self.roi.row(stats))
        return result

    def settings_record(self) -> dict[str, Any]:
        return {**super().settings_record(), "roi": [list(b) for b in self.roi.boxes]}

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        self.roi.write(entry, products)
