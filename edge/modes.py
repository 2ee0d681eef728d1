"""Reduction modes: one small stage class per mode behind one interface, chosen per run.

A stage gets every raw frame of its run in order and says, per frame, whether it is kept (and in which
file stream) or vetoed by the mode's stated policy, which products go beside it, and which fields go
into the run's frame table. It also knows how its products are laid out in the files (NeXus / CXI names
the field's readers use) and what it shows live. The pipeline knows none of this: it only calls
`ModeStage.process` and hands the results to the store.

- ``raw``: nothing computed; frames are never decompressed for it.
- ``powder``: 1D azimuthal integration with Poisson errors (NXazint1d names), optionally a 2D cake.
- ``serial``: peakfinder8-style peaks and a hit classifier; a CXI peak table aligned with the frames;
  blanks go to their own files (``store.blanks = keep``) or are vetoed (``drop``).
- ``tomo``: NXtomo image keys; darks and flats averaged, projections normalised (-log) and chosen rows
  reconstructed while they arrive (streaming FBP); the slices are a run product.

ROI statistics (sum, mean, max, centroid per box) are computed in every mode but ``raw``.
"""

from __future__ import annotations

import base64
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from edge.config import ReductionSettings
from edge.nxmx import crystfel_panel
from kernels import (
    Backend,
    Geometry,
    RoiSet,
    direct_beam,
    estimate_center_from_sinogram,
    invalid_pixels,
    make_gain,
)

log = logging.getLogger(__name__)

IMAGE_KEY_NAMES = {0: "projection", 1: "flat", 2: "dark"}
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

    def check(self, shape: tuple[int, int]) -> None:
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
    """ROI statistics per configured box, as areaDetector's Stats plugin gives them."""

    def __init__(self, ctx: RunContext) -> None:
        self.boxes = [tuple(int(v) for v in box) for box in ctx.params.roi]
        self.backend = ctx.backend
        self.rois = RoiSet(ctx.shape, self.boxes) if self.boxes else None

    def __bool__(self) -> bool:
        return self.rois is not None

    def stats(self, frame: np.ndarray, missing: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Sum, mean, max and centroid per box. ``missing``: this frame's pixels that never arrived (0 in
        it): they add nothing to a sum, a max or a centroid, and the mean is over the pixels that came."""
        assert self.rois is not None
        stats = self.backend.roi_stats(frame, self.rois)
        mean = np.asarray(stats.mean, np.float64)
        if missing is not None:
            mean = mean.copy()
            for k, (r0, r1, c0, c1) in enumerate(self.rois.boxes.tolist()):
                came = (r1 - r0) * (c1 - c0) - int(np.count_nonzero(missing[r0:r1, c0:c1]))
                mean[k] = float(stats.sum[k]) / came if came > 0 else np.nan
        cx = np.full(len(self.boxes), np.nan)
        cy = np.full(len(self.boxes), np.nan)
        for k, (r0, r1, c0, c1) in enumerate(self.rois.boxes.tolist()):
            box = frame[r0:r1, c0:c1].astype(np.float64)
            total = box.sum()
            if total > 0:
                cy[k] = (box.sum(axis=1) @ np.arange(r0, r1)) / total
                cx[k] = (box.sum(axis=0) @ np.arange(c0, c1)) / total
        return {
            "sum": np.asarray(stats.sum, np.float64),
            "mean": mean,
            "max": np.asarray(stats.max, np.float64),
            "centroid_x": cx,
            "centroid_y": cy,
        }

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
        return FrameResult(row={"image_key": image_key})

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

    def _with_roi(self, stats: dict[str, np.ndarray] | None, result: FrameResult) -> FrameResult:
        if stats is not None:
            result.products["roi"] = stats
            result.row.update(self.roi.row(stats))
        return result

    def settings_record(self) -> dict[str, Any]:
        return {**super().settings_record(), "roi": [list(b) for b in self.roi.boxes]}

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        self.roi.write(entry, products)


class PowderStage(_CorrectedStage):
    """Azimuthal integration (pyFAI's histogram engine, no pixel splitting), NXazint1d names."""

    name = "powder"
    excludes_dummies = True
    reference = (
        "azimuthal integration by histogram without pixel splitting, as pyFAI's integrate1d/integrate2d "
        "method ('no', 'histogram', ...) (Ashiotis et al., J. Appl. Cryst. 48 (2015) 510); Poisson errors"
    )

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        cal = ctx.corrections
        cal.check(ctx.shape)
        gain = make_gain(ctx.shape, cal.flat, cal.mask)  # 1/flat, 0 at masked and unusable pixels
        excluded = gain == 0
        common: dict[str, Any] = {
            "unit": ctx.unit,
            "mask": excluded if excluded.any() else None,
            "dark": cal.dark,
            "flat": cal.flat,
            "correct_solid_angle": cal.solid_angle,
            "polarization_factor": cal.polarization,
        }
        self.integrator = ctx.backend.integrator(
            ctx.geometry, ctx.shape, ctx.bins, error_model="poisson", **common
        )
        self.cake = None
        if ctx.params.cake_bins:
            self.cake = ctx.backend.integrator2d(
                ctx.geometry, ctx.shape, ctx.bins, ctx.params.cake_bins, error_model="poisson", **common
            )
        self.latest: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None

    @property
    def radial(self) -> np.ndarray:
        return np.asarray(self.integrator.radial)

    independent = True

    def analyse(
        self, raw: np.ndarray | None, missing: np.ndarray | None = None
    ) -> tuple[Any, Any, dict[str, np.ndarray] | None]:
        assert raw is not None
        cake = None if self.cake is None else self.cake.integrate_full(raw, missing)
        return self.integrator.integrate_full(raw, missing), cake, self._roi_stats(raw, missing)

    def fold(self, analysis: Any, frame: int, image_key: int, angle: float) -> FrameResult:
        full, cake, roi = analysis
        self.frames += 1
        products: dict[str, Any] = {"I": full.intensity, "I_errors": full.sigma}
        if cake is not None:
            products["cake"] = cake.intensity
            products["cake_errors"] = cake.sigma
        self.latest = (full.intensity, None if cake is None else cake.intensity, full.count)
        result = FrameResult(products=products, row={"image_key": image_key}, live={"count": full.count})
        return self._with_roi(roi, result)

    def start(
        self,
        raw: np.ndarray | None,
        frame: int,
        image_key: int,
        angle: float,
        missing: np.ndarray | None = None,
    ) -> FrameResult:
        """On a backend whose sums run while the caller goes on (the GPU's feed, ``submit_full``): the
        profile started, queued behind the previous frame's, the cake and ROI statistics computed now,
        and the result's ``finish`` collects the profile (``held`` keeps the frame's device copy alive
        until then). Elsewhere, and for a frame with ``missing`` pixels, as every stage
        (``ModeStage.start``)."""
        if not self.integrator.overlaps or missing is not None:
            return super().start(raw, frame, image_key, angle, missing)
        assert raw is not None
        # with a cake, one copy to the device serves both integrations (the cake waits for its kernel)
        source = raw if self.cake is None else self.ctx.backend.module.to_device(raw)
        profile = self.integrator.submit_full(source)
        cake = None if self.cake is None else self.cake.integrate_full(source)
        roi = self._roi_stats(raw)
        return FrameResult(
            pending=lambda held=source: self.fold((profile(), cake, roi), frame, image_key, angle)
        )

    def settings_record(self) -> dict[str, Any]:
        cal = self.ctx.corrections
        return {
            **super().settings_record(),
            "bins": self.ctx.bins,
            "unit": self.ctx.unit,
            "cake_bins": self.ctx.params.cake_bins,
            "dark_applied": cal.dark is not None,
            "flat_applied": cal.flat is not None,
            "mask_applied": cal.mask is not None,
            "solid_angle_applied": bool(cal.solid_angle),
            "polarization_applied": cal.polarization is not None,
            "polarization_factor": cal.polarization,
            "error_model": "poisson",
            **self._dummy_record(),
        }

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        self._write_profiles(entry, products)
        if self.cake is not None:
            self._write_cake(entry.create_group("reduced_2d"), products)

    def _write_profiles(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """ROI statistics and the profiles (``reduced``, NXazint1d's NXdata) of ``products``."""
        super().write_products(entry, products)
        n = len(products)
        record = self.settings_record()
        reduced = entry.create_group("reduced")
        reduced.attrs["NX_class"] = "NXdata"
        reduced.attrs["signal"] = "I"
        reduced.attrs["axes"] = [".", "radial_axis"]
        reduced.attrs["interpretation"] = "spectrum"
        reduced.attrs["definition"] = "NXazint1d"
        intensity = np.asarray([p["I"] for p in products], np.float64).reshape(n, -1)
        _described(reduced.create_dataset("I", data=intensity), "intensity", "arbitrary units")
        errors = np.asarray([p["I_errors"] for p in products], np.float64).reshape(n, -1)
        ds = reduced.create_dataset("I_errors", data=errors)
        _described(ds, "estimated intensity error", "arbitrary units")
        quantity, units = _radial_axis(self.ctx.unit)
        _described(reduced.create_dataset("radial_axis", data=self.radial), quantity, units, self.ctx.unit)
        ds = reduced.create_dataset("radial_axis_edges", data=np.asarray(self.integrator.edges))
        _described(ds, f"{quantity} bin edges", units, self.ctx.unit)
        reduced["profile"] = h5py.SoftLink(reduced.name + "/I")  # the name earlier files used
        reduced["radial"] = h5py.SoftLink(reduced.name + "/radial_axis")
        corrections = reduced.create_group("corrections")
        corrections.attrs["NX_class"] = "NXcollection"
        for key in (
            "dark_applied",
            "flat_applied",
            "mask_applied",
            "solid_angle_applied",
            "polarization_applied",
        ):
            corrections.create_dataset(key, data=bool(record[key]))
        if record["polarization_factor"] is not None:
            corrections.create_dataset("polarization_factor", data=float(record["polarization_factor"]))
        corrections.create_dataset("error_model", data="poisson")
        corrections.create_dataset("integration_method", data="histogram, no pixel splitting (pyFAI 'no')")

    def _write_cake(self, cake: h5py.Group, products: list[dict[str, Any]]) -> None:
        """The cakes of ``products`` and their Poisson errors as NXazint2d's NXdata names them."""
        assert self.cake is not None
        quantity, units = _radial_axis(self.ctx.unit)
        cake.attrs["NX_class"] = "NXdata"
        cake.attrs["definition"] = "NXazint2d"
        cake.attrs["signal"] = "I"
        cake.attrs["axes"] = [".", "azimuthal_axis", "radial_axis"]
        cake.attrs["interpretation"] = "image"
        stack = np.asarray([p["cake"] for p in products], np.float32)
        image = cake.create_dataset("I", data=stack, compression="gzip", shuffle=True)
        _described(image, "intensity", "arbitrary units")
        errors = np.asarray([p["cake_errors"] for p in products], np.float32)
        ds = cake.create_dataset("I_errors", data=errors, compression="gzip", shuffle=True)
        _described(ds, "estimated intensity error", "arbitrary units")
        ds = cake.create_dataset("radial_axis", data=np.asarray(self.cake.radial))
        _described(ds, quantity, units, self.ctx.unit)
        ds = cake.create_dataset("radial_axis_edges", data=np.asarray(self.cake.edges))
        _described(ds, f"{quantity} bin edges", units, self.ctx.unit)
        ds = cake.create_dataset("azimuthal_axis", data=np.asarray(self.cake.azimuthal))
        _described(ds, "azimuthal bin center", "deg")
        ds = cake.create_dataset("azimuthal_axis_edges", data=np.asarray(self.cake.azimuthal_edges))
        _described(ds, "azimuthal bin edges", "deg")

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """The reduced file's entry is an NXazint1d application (what ``nxvalidate -a NXazint1d``
        checks): the correction flags at its top, the instrument's wavelength, the profiles in
        ``reduced``. The cake, when configured, is an NXazint2d application of its own, the entry
        ``entry_2d`` beside it (same instrument and reduction record, its cakes in ``entry_2d/reduced``):
        one definition per entry, as each application's validator and reader expect."""
        self._write_profiles(entry, products)
        self._write_application(entry, "NXazint1d")
        if self.cake is not None:
            cake_entry = entry.file.create_group("entry_2d")
            cake_entry.attrs["NX_class"] = "NXentry"
            for name in ("run_uid", "file_kind"):
                if name in entry.attrs:
                    cake_entry.attrs[name] = entry.attrs[name]
            entry.file.copy(entry["reduction"], cake_entry, "reduction")
            self._write_application(cake_entry, "NXazint2d")
            self._write_cake(cake_entry.create_group("reduced"), products)
            cake_entry.attrs["default"] = "reduced"

    def _write_application(self, entry: h5py.Group, definition: str) -> None:
        """What NXazint1d and NXazint2d ask of their entry: the definition, the correction flags, the
        instrument's name, wavelength and source."""
        record = self.settings_record()
        entry.create_dataset("definition", data=definition)
        if definition == "NXazint1d":
            entry.attrs["default"] = "reduced"
        entry.create_dataset("solid_angle_applied", data=bool(record["solid_angle_applied"]))
        entry.create_dataset("polarization_applied", data=bool(record["polarization_applied"]))
        # each bin is the mean of its pixels (divided by their count, or their solid angle's sum)
        entry.create_dataset("normalization_applied", data=True)
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        instrument.create_dataset("name", data="edge appliance")
        mono = instrument.create_group("monochromator")
        mono.attrs["NX_class"] = "NXmonochromator"
        wavelength_a = float(self.ctx.geometry.wavelength) * 1e10
        mono.create_dataset("wavelength", data=wavelength_a).attrs["units"] = "angstrom"
        energy = _HC_KEV_ANGSTROM / wavelength_a if wavelength_a > 0 else float("nan")
        mono.create_dataset("energy", data=energy).attrs["units"] = "keV"
        source = instrument.create_group("source")
        source.attrs["NX_class"] = "NXsource"
        source.create_dataset("name", data="unknown")  # the detector's stream does not say
        source.create_dataset("type", data="Synchrotron X-ray Source")
        source.create_dataset("probe", data="x-ray")

    def live(self) -> dict[str, Any] | None:
        if self.latest is None:
            return None
        intensity, cake, count = self.latest
        out: dict[str, Any] = {
            "unit": self.ctx.unit,
            "radial": self.radial.tolist(),
            "intensity": np.nan_to_num(intensity).tolist(),
            "count": np.asarray(count, np.int64).tolist(),  # 0: a bin no pixel of this frame fell in
            "cake": None,
        }
        if cake is not None and self.cake is not None:
            finite = np.nan_to_num(cake.astype(np.float64))
            top = float(np.percentile(finite, 99.5)) or 1.0
            pixels = np.clip(finite * (255.0 / top), 0, 255).astype(np.uint8)
            out["cake"] = {
                "radial": np.asarray(self.cake.radial).tolist(),
                "azimuthal": np.asarray(self.cake.azimuthal).tolist(),
                "height": int(pixels.shape[0]),
                "width": int(pixels.shape[1]),
                "pixels_b64": base64.b64encode(pixels.tobytes()).decode("ascii"),
            }
        return out


class SerialStage(_CorrectedStage):
    """Peaks (peakfinder8-style) and hits; a CXI peak table CrystFEL reads with ``peak_list_type = cxi``."""

    name = "serial"
    excludes_dummies = True
    reference = (
        "peakfinder8-style spot finding: per-ring background by iterative sigma clipping, 3x3 box "
        "candidates above min_snr, connected components (Barty et al., J. Appl. Cryst. 47 (2014) 1118)"
    )
    RECENT_SECONDS = 300.0
    PEAK_CHUNK = 64  # peak table columns per HDF5 chunk (see write_products)

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        p = ctx.params.serial
        x, y = direct_beam(ctx.geometry)  # rings of equal background are centred on the direct beam
        self.finder = ctx.backend.peak_finder(
            ctx.shape,
            center=(y - 0.5, x - 0.5),  # pixel index units: pixel (i, j) is centred at (i + 0.5, j + 0.5)
            mask=ctx.corrections.mask,
            min_snr=p.min_snr,
            adc_threshold=p.adc_threshold,
            min_pixels=p.min_pixels,
            max_pixels=p.max_pixels,
            min_peaks=p.min_peaks,
        )
        self.min_peaks = p.min_peaks
        self.max_peaks = p.max_peaks
        self.hits = 0
        self.vetoed = 0
        self._latest_hit: tuple[int, dict[str, Any]] | None = None
        self._recent: deque[tuple[float, int, int]] = deque()  # (time, frames, hits) once a second

    independent = True

    def analyse(
        self, raw: np.ndarray | None, missing: np.ndarray | None = None
    ) -> tuple[Any, dict[str, np.ndarray] | None]:
        # the finder's only state is a guess learnt from the frame before, which speeds its search and
        # never changes its answer: frames analysed at once find what they would one by one. A frame's
        # missing pixels reach it as NaN, which it leaves out as it does masked pixels (its zeros would
        # pull the rings' backgrounds down and make background pixels candidates)
        assert raw is not None
        frame = raw
        if missing is not None:
            frame = raw.astype(np.float32)
            frame[missing] = np.nan
        return self.finder.find(frame), self._roi_stats(raw, missing)

    def fold(self, analysis: Any, frame: int, image_key: int, angle: float) -> FrameResult:
        peaks, roi = analysis
        self.frames += 1
        n = len(peaks)
        hit = n >= self.min_peaks
        keep_n = min(n, self.max_peaks)
        table = {
            "nPeaks": n,
            "peakXPosRaw": np.asarray(peaks.col[:keep_n], np.float32),
            "peakYPosRaw": np.asarray(peaks.row[:keep_n], np.float32),
            "peakTotalIntensity": np.asarray(peaks.intensity[:keep_n], np.float32),
            "peakNPixels": np.asarray(peaks.n_pixels[:keep_n], np.float32),
            "peakSNR": np.asarray(peaks.snr[:keep_n], np.float32),
            "is_hit": hit,
        }
        row = {"image_key": image_key, "is_hit": hit, "n_peaks": n}
        if hit:
            self.hits += 1
            self._latest_hit = (frame, table)  # made into the live view's list only when asked for
            result = FrameResult(products={"peaks": table}, row=row)
        elif self.ctx.store_blanks == "drop":
            self.vetoed += 1
            result = FrameResult(keep=False, products={"peaks": table}, row=row)
        else:
            result = FrameResult(stream=STREAM_BLANK, products={"peaks": table}, row=row)
        self._sample()
        return self._with_roi(roi, result)

    def tally(self) -> dict[str, float]:
        rate = self.hits / self.frames if self.frames else 0.0
        return {"frames": self.frames, "hits": self.hits, "vetoed": self.vetoed, "hit_rate": rate}

    def _sample(self) -> None:
        now = time.time()
        if not self._recent or now - self._recent[-1][0] >= 1.0:
            self._recent.append((now, self.frames, self.hits))
            while self._recent and now - self._recent[0][0] > self.RECENT_SECONDS:
                self._recent.popleft()

    def settings_record(self) -> dict[str, Any]:
        return {
            **super().settings_record(),
            **self.ctx.params.serial.model_dump(),
            "blanks": self.ctx.store_blanks,
            **self._dummy_record(),
        }

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        super().write_products(entry, products)
        n, width = len(products), self.max_peaks
        result = entry.create_group("result_1")
        result.attrs["NX_class"] = "NXcollection"
        rows = "/entry/data/data" if "data" in entry else "/entry/frames (vetoed blanks included)"
        result.attrs["meaning"] = (
            f"CXI peak list, one row per frame of {rows} (CrystFEL peak_list_type = cxi)"
        )
        peaks = [p["peaks"] for p in products]
        found = np.asarray([p["nPeaks"] for p in peaks], np.int32)
        # nPeaks counts the table's entries, at most max_peaks wide (Cheetah's convention: CrystFEL reads
        # nPeaks entries of each row); how many the finder found, when more, is nPeaksFound
        result.create_dataset("nPeaks", data=np.minimum(found, width)).attrs["meaning"] = (
            f"peaks listed in this row's columns (at most max_peaks = {width}); all found: nPeaksFound"
        )
        result.create_dataset("nPeaksFound", data=found)
        result.create_dataset("is_hit", data=np.asarray([p["is_hit"] for p in peaks], bool))
        # The tables are (frames, max_peaks), zero-padded. Stored in chunks of PEAK_CHUNK columns, only
        # the columns some frame fills are written: HDF5 allocates no chunk never written and reads it
        # back as the fill value 0, so a reader sees the whole padded table, and the padding is neither
        # built nor compressed (hits hold tens of peaks; the table is hundreds wide).
        used = min(width, int(max((p["peakXPosRaw"].size for p in peaks), default=0)))
        chunks = (max(1, n), min(width, self.PEAK_CHUNK))
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakNPixels", "peakSNR"):
            data = result.create_dataset(
                name, (n, width), np.float32, chunks=chunks, compression="gzip", shuffle=True, fillvalue=0
            )
            if used:
                table = np.zeros((n, used), np.float32)
                for i, p in enumerate(peaks):
                    values = p[name]
                    table[i, : values.size] = values
                data[:, :used] = table
        index = "pixels, as an index: the centre of pixel (0, 0) is at 0"
        result["peakXPosRaw"].attrs["meaning"] = f"fast-scan (column) position, {index}"
        result["peakYPosRaw"].attrs["meaning"] = f"slow-scan (row) position, {index}"
        for name in ("peakXPosRaw", "peakYPosRaw"):
            result[name].attrs["units"] = "pixel"

    def run_files(self, directory: Path, run_uid: str) -> list[Path]:
        """``RUN.geom``: the detector as CrystFEL's geometry file describes it, reading the data files'
        frames and their CXI peak tables (``peak_list_type = cxi``).

        The panel is the NXmx chain evaluated (``edge.nxmx.crystfel_panel``): orientation and tilts
        included, so a pixel lands where pyFAI puts it. Peak positions in the tables are pixel indices
        (the centre of pixel (0, 0) at 0, 0), which CrystFEL's default half-pixel shift expects."""
        g = self.ctx.geometry
        height, width = self.ctx.shape
        x, y = direct_beam(g)
        panel = crystfel_panel(g, self.ctx.shape)
        energy_ev = 12398.419843 / (g.wavelength * 1e10)

        def vector(v: tuple[float, float, float]) -> str:
            return f"{v[0]:+.9f}x {v[1]:+.9f}y {v[2]:+.9f}z"

        text = f"""; CrystFEL geometry written by edge for run {run_uid}
; pyFAI geometry: dist {g.dist} m, poni1 {g.poni1} m, poni2 {g.poni2} m, rot1 {g.rot1}, rot2 {g.rot2},
; rot3 {g.rot3} rad, orientation {g.orientation}; the direct beam at ({x:.3f}, {y:.3f}) pixels of the
; sensor frame (orientation 3) from the outer corner of pixel (0, 0)
; peak tables: positions are pixel indices, so keep CrystFEL's default half-pixel shift
; clen in metres, written without a unit as older parsers (CrystFEL 0.9, cfelpyutils) read it
adu_per_photon = 1
photon_energy = {energy_ev:.3f}
clen = {panel.clen:.9f}
res = {panel.res:.6f}
data = /entry/data/data
; NXmx pixel_mask in every data file (bit 0 gaps, bit 8 the mask file): any bit set is a bad pixel
mask = /entry/instrument/detector/pixel_mask
mask_good = 0x0
mask_bad = 0xffffffff
peak_list = /entry/result_1
peak_list_type = cxi
dim0 = %
dim1 = ss
dim2 = fs

panel0/min_fs = 0
panel0/max_fs = {width - 1}
panel0/min_ss = 0
panel0/max_ss = {height - 1}
panel0/corner_x = {panel.corner_x:.6f}
panel0/corner_y = {panel.corner_y:.6f}
panel0/coffset = 0
panel0/fs = {vector(panel.fs)}
panel0/ss = {vector(panel.ss)}
"""
        path = directory / f"{run_uid}.geom"
        part = path.with_name(path.name + ".part")
        with open(part, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
        return [path]

    def live(self) -> dict[str, Any] | None:
        recent = list(self._recent)
        series = []
        for (_, f0, h0), (t1, f1, h1) in itertools.pairwise(recent):
            frames = f1 - f0
            series.append({"t": t1, "hit_rate": (h1 - h0) / frames if frames else 0.0})
        return {**self.tally(), "recent": series, "latest_hit": self.latest_hit}

    @property
    def latest_hit(self) -> dict[str, Any] | None:
        """The newest hit: its frame number and its peaks as ``[x, y, intensity]`` (x the fast-scan axis)."""
        if self._latest_hit is None:
            return None
        frame, table = self._latest_hit
        columns = (table["peakXPosRaw"], table["peakYPosRaw"], table["peakTotalIntensity"])
        return {"frame": frame, "peaks": np.stack(columns, axis=-1).astype(float).tolist()}


class _EarlierScan:
    """The part of a tomography scan stored before a daemon restart cut it (``RunContext.earlier``), for
    the run that resumes the scan: its darks and flats summed at once (the projections' normalisation
    needs their means before the first projection arrives), its projections' chosen rows read on a
    thread of their own while the run goes on, and back-projected with the run's own at its end. A file
    that cannot be read is skipped and named in ``errors``; nothing here stops the run."""

    def __init__(self, earlier: EarlierParts, shape: tuple[int, int], rows: list[int]) -> None:
        self.parts = earlier
        self.rows = rows
        self.darks = self.flats = 0
        self.dark_sum = np.zeros(shape, np.float64)
        self.flat_sum = np.zeros(shape, np.float64)
        self.errors: list[str] = []
        self.lines: list[np.ndarray] = []  # per projection read: its chosen rows, as stored (float32)
        self.angles: list[float] = []
        self.planned = 0  # projections listed in the readable files (read on the thread)
        self.without_angle = 0  # stored projections without an angle (NaN): not back-projected
        planned: list[tuple[Path, np.ndarray, np.ndarray]] = []
        for path in earlier.files:
            try:
                with h5py.File(path, "r") as handle:
                    data = handle["/entry/data/data"]
                    if tuple(data.shape[1:]) != tuple(shape):
                        raise ValueError(f"frames of {tuple(data.shape[1:])}, this run's are {tuple(shape)}")
                    keys = np.asarray(handle["/entry/instrument/detector/image_key"][:], np.int64)
                    angles = np.asarray(handle["/entry/sample/rotation_angle"][:], np.float64)
                    if keys.size != data.shape[0] or angles.size != data.shape[0]:
                        raise ValueError("image_key or rotation_angle does not list every frame")
                    for key, total in ((2, self.dark_sum), (1, self.flat_sum)):
                        for i in np.flatnonzero(keys == key):
                            total += data[int(i)]
                    self.darks += int(np.count_nonzero(keys == 2))
                    self.flats += int(np.count_nonzero(keys == 1))
                    projections = np.flatnonzero((keys == 0) & np.isfinite(angles))
                    self.without_angle += int(np.count_nonzero(keys == 0)) - int(projections.size)
                    planned.append((path, projections, angles[projections]))
                    self.planned += int(projections.size)
            except Exception as error:  # a file not as this stage writes them: its frames are not used
                self._error(path, error)
        self._lock = threading.Lock()  # the reading thread publishes whole files under it
        self._abandoned = False  # the run's end stopped waiting: the thread publishes nothing more
        self._thread = threading.Thread(target=self._read, args=(planned,), name="tomo-earlier", daemon=True)
        self._thread.start()

    def _error(self, path: Path, error: BaseException) -> None:
        self.errors.append(f"{path.name}: {str(error)[:200]}")
        log.error("tomography run: the earlier part's file %s cannot be used (%s)", path, error)

    def _read(self, planned: list[tuple[Path, np.ndarray, np.ndarray]]) -> None:
        for path, projections, angles in planned:
            try:
                with h5py.File(path, "r") as handle:
                    data = handle["/entry/data/data"]
                    lines = [np.asarray(data[int(i)][self.rows], np.float32) for i in projections]
            except Exception as error:
                self._error(path, error)
                continue
            with self._lock:
                if self._abandoned:
                    return
                self.lines.extend(lines)
                self.angles.extend(float(a) for a in angles)

    READ_SECONDS = 600.0  # the longest the run's end waits for the reading thread

    def projections(self) -> tuple[list[np.ndarray], list[float]]:
        """The earlier projections' rows and angles, in frame order (waits for the reading thread, at most
        READ_SECONDS: a file that hangs leaves out what was not read by then, and says so)."""
        self._thread.join(self.READ_SECONDS)
        with self._lock:
            self._abandoned = True
            if self._thread.is_alive():
                self.errors.append(f"still reading after {self.READ_SECONDS:g} s: the rest left out")
                log.error("tomography run: the earlier part's projections still reading; the rest left out")
            return list(self.lines), list(self.angles)

    def read_so_far(self, start: int, most: int) -> tuple[list[np.ndarray], list[float]]:
        """Up to ``most`` projections already read, from the ``start``-th on (without waiting)."""
        with self._lock:
            stop = min(len(self.angles), start + most)
            return self.lines[start:stop], self.angles[start:stop]

    def record(self) -> dict[str, Any]:
        """What the run product says about the part it took over."""
        record: dict[str, Any] = {
            "inherited_from_runs": ", ".join(self.parts.runs),
            "darks_inherited": self.darks,
            "flats_inherited": self.flats,
            "projections_inherited": len(self.angles),
            "projections_inherited_without_angle": self.without_angle,
            "inherited_files_not_local": self.parts.missing,
        }
        if self.errors:
            record["inherited_files_unusable"] = "; ".join(self.errors)
        return record


class TomoStage(_CorrectedStage):
    """NXtomo frames; darks/flats averaged; chosen rows reconstructed while projections arrive."""

    name = "tomo"
    definition = "NXtomo"
    reference = (
        "dark/flat normalisation, -log, filtered back-projection with a ramp filter, streamed as "
        "projections arrive (Kak & Slaney, Principles of Computerized Tomographic Imaging, 1988)"
    )

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        p = ctx.params.tomo
        rows = list(dict.fromkeys(p.slices)) or [ctx.shape[0] // 2]  # a row named twice: once
        bad = [r for r in rows if not 0 <= r < ctx.shape[0]]
        if bad:
            raise ValueError(f"reduction.tomo.slices {bad} are outside the detector's {ctx.shape[0]} rows")
        self.rows = rows
        self.center = p.center
        self.filter = p.filter
        self._dark_sum = np.zeros(ctx.shape, np.float64)
        self._flat_sum = np.zeros(ctx.shape, np.float64)
        self.darks = self.flats = self.projections = self.without_angle = 0
        self.incomplete_left_out = 0  # darks and flats with pixels missing: not in the means
        self.reconstructor: Any = None
        self.angles: list[float] = []
        self.sinograms: list[np.ndarray] = []  # normalised rows of each projection, for the run product
        self._latest: np.ndarray | None = None
        self.slices_done = 0
        # a scan resumed after a restart: the darks, flats and projections stored before it was cut
        self.earlier = None if ctx.earlier is None else _EarlierScan(ctx.earlier, ctx.shape, rows)
        self._earlier_pending = self.earlier  # its projections not yet all back-projected
        self._earlier_lines: list[np.ndarray] = []  # those back-projected so far (normalised) ...
        self._earlier_angles: list[float] = []  # ... and their angles

    def process(
        self,
        raw: np.ndarray | None,
        frame: int,
        image_key: int,
        angle: float,
        missing: np.ndarray | None = None,
    ) -> FrameResult:
        """A dark or flat adds to its mean; a projection's chosen rows are normalised and back-projected.
        With ``missing`` pixels, a dark or flat is left out of the means (stored, counted
        ``incomplete_left_out``), and a projection's missing pixels are line integrals of 0
        (transmission 1, as a dead pixel's) rather than -log of a zero count."""
        assert raw is not None
        self.frames += 1
        if image_key in (1, 2) and missing is not None:
            self.incomplete_left_out += 1
        elif image_key == 2:
            self.darks += 1
            self._dark_sum += raw
        elif image_key == 1:
            self.flats += 1
            self._flat_sum += raw
        else:
            self._project(raw, angle, missing)
        result = FrameResult(
            products={"image_key": image_key, "rotation_angle": angle},
            row={"image_key": image_key, "rotation_angle": angle},
        )
        return self._roi(raw, result, missing)

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        _CorrectedStage.write_products(self, entry, products)  # ROI statistics; the rest is run products

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """NXtomo (image_key, sample/rotation_angle, an NXdata of links) and the Data Exchange names
        (/exchange/data, data_white, data_dark, theta) as virtual datasets over the stored frames."""
        super().write_products(entry, products)
        keys = np.asarray([p["image_key"] for p in products], np.int8)
        angles = np.asarray([p["rotation_angle"] for p in products], np.float64)
        # darks and flats have no angle: 0 by convention; a projection without one keeps NaN (at 0 a
        # reader would back-project it there; the live reconstruction leaves it out, as must they)
        angles = np.where(np.isnan(angles) & (keys != 0), 0.0, angles)
        data = entry["data"]["data"]
        instrument = entry.require_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.require_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        detector["data"] = data  # a hard link: the same dataset under NXtomo's name
        detector.create_dataset("image_key", data=keys).attrs["meaning"] = "0 projection, 1 flat, 2 dark"
        if self.center is not None:  # given (reduction.tomo.center); an estimate is known only at the end
            ds = detector.create_dataset("x_rotation_axis_pixel_position", data=float(self.center))
            ds.attrs["units"] = "pixel"
        sample = entry.require_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        if "name" not in sample:
            sample.create_dataset("name", data="unknown")
        sample.create_dataset("rotation_angle", data=angles).attrs["units"] = "deg"
        nxdata = entry["data"]
        nxdata["image_key"] = detector["image_key"]
        nxdata["rotation_angle"] = sample["rotation_angle"]
        # NeXus links: one object under both names, its @target naming the NXtomo home
        data.attrs["target"] = detector.name + "/data"
        detector["image_key"].attrs["target"] = detector.name + "/image_key"
        sample["rotation_angle"].attrs["target"] = sample.name + "/rotation_angle"
        if "implements" not in entry.file:  # Data Exchange's list of the file's top-level groups
            entry.file.create_dataset("implements", data="exchange")
        exchange = entry.file.require_group("exchange")
        exchange.attrs["note"] = (
            "this file's frames only: a scan's darks and flats are in its first file(s); read the run's"
            " files together (or its reduced file's reconstruction)"
        )
        for name, key in (("data", 0), ("data_white", 1), ("data_dark", 2)):
            _virtual_subset(exchange, name, data, np.flatnonzero(keys == key))
        exchange["theta"] = np.asarray(angles[keys == 0], np.float64)
        exchange["theta"].attrs["units"] = "deg"

    def _dark_flat_counts(self) -> tuple[int, int]:
        """Darks and flats the normalisation averages: this run's and, resumed, the earlier part's."""
        if self.earlier is None:
            return self.darks, self.flats
        return self.darks + self.earlier.darks, self.flats + self.earlier.flats

    def flat_field(self) -> str:
        """What the projections' normalisation could use: the scan's darks and flats come before its
        first projection (in a scan resumed after a restart, those of the part stored before it was cut;
        a scan without them has none to use)."""
        darks, flats = self._dark_flat_counts()
        if darks and flats:
            earlier = self.earlier
            inherited = "" if earlier is None else f" (with those stored in run {earlier.parts.runs[0]})"
            return f"applied: (projection - mean dark) / (mean flat - mean dark){inherited}"
        missing = " and ".join(name for name, n in (("darks", darks), ("flats", flats)) if not n)
        return f"not applied: no {missing} before the first projection; the slices are of -log(counts)"

    def _means(self) -> tuple[np.ndarray, np.ndarray]:
        darks, flats = self._dark_flat_counts()
        dark_sum, flat_sum = self._dark_sum, self._flat_sum
        if self.earlier is not None:
            dark_sum, flat_sum = dark_sum + self.earlier.dark_sum, flat_sum + self.earlier.flat_sum
        dark = dark_sum / darks if darks else np.zeros(self.ctx.shape)
        flat = flat_sum / flats if flats else np.full(self.ctx.shape, float(np.max(dark)) + 1.0)
        return dark.astype(np.float32), flat.astype(np.float32)

    def _project(self, raw: np.ndarray, angle: float, missing: np.ndarray | None = None) -> None:
        self.projections += 1
        if math.isnan(angle):  # stored, but a projection at an unknown angle cannot be back-projected
            self.without_angle += 1
            return
        if self.reconstructor is None:  # darks and flats come first in a scan: their means are final
            self._start_reconstruction()
        self.angles.append(angle)
        normalised = self._normalised(raw[self.rows].astype(np.float32))
        if missing is not None:
            normalised[missing[self.rows]] = 0.0
        self.sinograms.append(normalised)
        self.reconstructor.add(normalised, angle)
        earlier = self._earlier_pending
        if earlier is not None:  # a few of the earlier part's go with each: live, and less left for the end
            self._add_earlier(*earlier.read_so_far(len(self._earlier_angles), self.EARLIER_PER_FRAME))

    def _start_reconstruction(self) -> None:
        dark, flat = self._means()
        if not all(self._dark_flat_counts()):
            log.warning("tomography run: flat field %s", self.flat_field())
        # fed the chosen rows already normalised (once per projection, kept for the sinograms)
        self.reconstructor = self.ctx.backend.streaming_reconstructor(
            self.ctx.shape[1],
            np.arange(len(self.rows)),
            filter_name=self.filter,
            center=self.center,
        )
        self._dark, self._flat = dark[self.rows], flat[self.rows]

    def _normalised(self, lines: np.ndarray) -> np.ndarray:
        """The chosen rows of one projection as -log(transmission), float32."""
        out = self.ctx.backend.flat_field(lines, self._dark, self._flat, np.empty_like(lines))
        return np.asarray(out, np.float32)

    EARLIER_PER_FRAME = 2  # earlier projections back-projected with each projection of the run

    def _add_earlier(self, lines: list[np.ndarray], angles: list[float]) -> None:
        """Back-project projections of the earlier part (read, not yet normalised)."""
        if not angles:
            return
        if self.reconstructor is None:
            self._start_reconstruction()
        for line, angle in zip(lines, angles, strict=True):
            normalised = self._normalised(line)
            self.reconstructor.add(normalised, angle)
            self._earlier_lines.append(normalised)
            self._earlier_angles.append(angle)

    def _take_earlier(self) -> None:
        """A resumed scan: the rest of the projections stored before the restart, back-projected with
        this run's (once, at the end: a few went with each of the run's projections already), and ahead
        of them in the sinograms, as they came in the scan."""
        earlier, self._earlier_pending = self._earlier_pending, None
        if earlier is None:
            return
        lines, angles = earlier.projections()
        done = len(self._earlier_angles)
        self._add_earlier(lines[done:], angles[done:])
        self.sinograms[:0] = self._earlier_lines
        self.angles[:0] = self._earlier_angles

    def settings_record(self) -> dict[str, Any]:
        return {
            **super().settings_record(),
            "slices": self.rows,
            "center": self.center,
            "center_source": "given" if self.center is not None else "detector centre column (n_cols // 2)",
            "filter": self.filter,
            "normalisation": "-log((projection - mean dark) / (mean flat - mean dark))",
        }

    def finish(self) -> dict[str, Any]:
        self._take_earlier()
        if self.reconstructor is None:
            return {}
        slices = np.asarray(self.reconstructor.slices(), np.float32)
        sinograms = np.stack(self.sinograms, axis=0)  # (angles, rows, columns)
        angles = np.asarray(self.angles, np.float64)
        center, source = self.center, "given"
        if center is None:
            # streamed about the detector's centre column; with a scan that reaches 180 degrees the axis is
            # estimated from the projections nearest 0 and 180 and, if it differs, the slices are redone
            center, source = float(self.ctx.shape[1] // 2), "detector centre column (n_cols // 2)"
            if angles.size and np.ptp(angles) >= 170.0:
                estimated = float(estimate_center_from_sinogram(sinograms[:, 0, :], angles))
                if np.isfinite(estimated) and abs(estimated - center) > 0.5:
                    center, source = estimated, "estimated from the projections nearest 0 and 180 degrees"
                    slices = np.stack(
                        [
                            self.ctx.backend.fbp(
                                sinograms[:, k, :], angles, filter_name=self.filter, center=center
                            )
                            for k in range(len(self.rows))
                        ]
                    ).astype(np.float32)
        self.slices_done = len(self.rows)
        self._latest = slices
        dark, flat = self._means()
        return {
            "slices": slices,
            "rows": np.asarray(self.rows, np.int64),
            "sinograms": np.transpose(sinograms, (1, 0, 2)),  # (rows, angles, columns)
            "rotation_angle": angles,
            "dark_mean": dark,
            "flat_mean": flat,
            "center": float(center),
            "center_source": source,
            "projections": self.projections,
            "projections_without_angle": self.without_angle,
            "darks": self.darks,
            "flats": self.flats,
            "darks_and_flats_incomplete": self.incomplete_left_out,  # stored, not in the means
            "flat_field": self.flat_field(),
            **({} if self.earlier is None else self.earlier.record()),
        }

    def live(self) -> dict[str, Any] | None:
        slice_doc = None
        current = self._latest
        if current is None and self.reconstructor is not None and self.projections:
            # what is back-projected so far: this runs on the API's thread while the pipeline's adds
            current = np.asarray(self.reconstructor.partial_slices(), np.float32)
        if current is not None and len(current):
            image = current[0]
            lo, hi = float(np.min(image)), float(np.max(image))
            scaled = (
                np.zeros(image.shape, np.uint8)
                if hi <= lo
                else ((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)
            )
            slice_doc = {
                "row": self.rows[0],
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "pixels_b64": base64.b64encode(scaled.tobytes()).decode("ascii"),
                "min": lo,
                "max": hi,
            }
        earlier = self.earlier
        return {
            "projections": self.projections,
            "darks": self.darks,
            "flats": self.flats,
            "slices_done": self.slices_done,
            "slice": slice_doc,
            # a scan resumed after a restart: what the part stored before it adds (its projections are
            # back-projected at the run's end)
            "inherited": None
            if earlier is None
            else {
                "runs": list(earlier.parts.runs),
                "darks": earlier.darks,
                "flats": earlier.flats,
                "projections": earlier.planned,
                "files_unusable": len(earlier.errors),
            },
        }

    def tally(self) -> dict[str, float]:
        return {
            "frames": self.frames,
            "projections": self.projections,
            "darks": self.darks,
            "flats": self.flats,
            "slices_done": self.slices_done,
        }


def _virtual_subset(group: h5py.Group, name: str, source: h5py.Dataset, indices: np.ndarray) -> None:
    """``group[name]``: a virtual dataset of the frames ``indices`` of ``source`` (no copy). With no
    frames, an empty dataset of the frames' shape: a virtual one without a source trips readers
    (nexusformat's tree walk)."""
    frame_shape = source.shape[1:]
    if not len(indices):
        group.create_dataset(name, shape=(0, *frame_shape), dtype=source.dtype)
        return
    layout = h5py.VirtualLayout(shape=(len(indices), *frame_shape), dtype=source.dtype)
    vsource = h5py.VirtualSource(".", source.name, shape=source.shape)
    # contiguous runs of frames map as one block each (a scan has darks, flats, projections in runs)
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    start = 0
    for block in np.split(indices, breaks):
        first, count = int(block[0]), len(block)
        layout[start : start + count] = vsource[first : first + count]
        start += count
    group.create_virtual_dataset(name, layout)


STAGES: dict[str, type[ModeStage]] = {
    "raw": ModeStage,
    "powder": PowderStage,
    "serial": SerialStage,
    "tomo": TomoStage,
}


def make_stage(ctx: RunContext) -> ModeStage:
    """The stage for the run's mode (``ctx.params.mode``)."""
    return STAGES[ctx.params.mode](ctx)


def warm_up(ctx: RunContext, dtype: str) -> None:
    """Run the mode's kernels once on synthetic frames of the run's shape and ``dtype``, and throw it away.

    numba loads (or compiles) a kernel on its first call; in a fresh process that first load costs about
    a second and a half, which would otherwise fall on a run's first frame. The frames are a flat
    background with a few bright 3x3 blocks, so every path a real frame takes (peaks found and labelled,
    a tomography scan's darks, flats and projections) is taken.
    """
    stage = make_stage(ctx)
    if not stage.decompress:
        return
    height, width = ctx.shape
    frame = np.full(ctx.shape, 10, dtype=np.dtype(dtype))
    for k in range(12):  # enough bright blocks for a serial "hit"
        r, c = (k + 1) * height // 14, (3 * k + 2) * width // 40
        frame[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2] = 200
    stage.process(frame, 0, 2, float("nan"))  # tomography: a dark, a flat, then projections
    stage.process(frame + 1, 1, 1, float("nan"))
    for n, angle in enumerate((0.0, 90.0, 180.0)):
        stage.process(frame, 2 + n, 0, angle)
    stage.finish()
    stage.live()
    if stage.excludes_dummies and ctx.dummy is not None:  # the pipeline's test for invalid pixels
        invalid_pixels(frame, *ctx.dummy)
