"""The local HDF5 store: one directory per run, rollover files closed and renamed atomically.

Frames arrive already compressed as filter-32008 chunks and are written with ``write_direct_chunk``, so
compression happens once. A file is written as ``NAME.h5.part`` and renamed to ``NAME.h5`` only after it
is closed and fsynced: a crash leaves complete ``.h5`` files plus at most one ``.part`` per run, never a
half-written file under a final name. (We chose rollover files over SWMR: every closed file is a
self-contained unit to checksum, forward and purge, and readers never see a file that is still open.)
Closed files are checksummed (xxh3-128: ~10x faster than SHA-256 and ample against corruption; this is
not a security boundary) and recorded in the ledger with their transfer chunks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008 with HDF5)
import numpy as np
import xxhash

from edge.nxmx import write_detector_geometry
from kernels import Geometry, hdf5_filter_options

log = logging.getLogger(__name__)

CHECKSUM = "xxh3-128"


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_checksums(path: Path, chunk_bytes: int) -> tuple[int, str, list[tuple[int, int, str]]]:
    """Size, whole-file checksum and per-chunk ``(offset, length, checksum)`` in one read pass."""
    whole = xxhash.xxh3_128()
    chunks: list[tuple[int, int, str]] = []
    offset = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk_bytes)
            if not block:
                break
            whole.update(block)
            chunks.append((offset, len(block), checksum_bytes(block)))
            offset += len(block)
    return offset, whole.hexdigest(), chunks


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Series-header keys (DECTRIS ``dconfig`` names) the NXmx metadata takes from the detector, if sent.
NXMX_SERIES_KEYS = (
    "count_time",
    "frame_time",
    "sensor_material",
    "sensor_thickness",
    "saturation_value",
    "countrate_correction_count_cutoff",
    "instrument_name",
    "source_name",
    "sample_name",
)


@dataclass(frozen=True)
class RunMetadata:
    """What every file of a run records about how it was taken (the NXmx part of the layout).

    ``series`` holds what the detector's series header said (NXMX_SERIES_KEYS); ``mask`` is the
    calibration mask the reduction used (the PONI detector's own mask with ``reduction.mask_file``).
    """

    geometry: Geometry
    detector: str = "edge detector"
    frames_expected: int | None = None
    start_time: str = ""
    series: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None


def _write_nxmx(entry: h5py.Group, meta: RunMetadata, shape: tuple[int, int], dtype: str) -> None:
    """NXmx as DIALS-grade readers expect it (edge/nxmx.py has the geometry and its conventions).

    The detector's depends_on chain and NXtransformations carry the PONI's distance and tilts, the
    NXdetector_module its pixel axes; beam_center_x/y are the direct-beam position in image pixels; the
    pyFAI PONI group stays for pyFAI users. Values the detector did not report (count_time, frame_time,
    sensor) are written only when known, except the two NXmx requires: sensor_material "unknown" and
    sensor_thickness NaN then, each with a note.
    """
    g = meta.geometry
    series = meta.series
    entry.file.attrs["default"] = "entry"
    entry.create_dataset("definition", data="NXmx")
    entry.create_dataset("start_time", data=meta.start_time)
    if meta.frames_expected is not None:
        entry.attrs["frames_expected"] = meta.frames_expected
    instrument = entry.create_group("instrument")
    instrument.attrs["NX_class"] = "NXinstrument"
    instrument.create_dataset("name", data=str(series.get("instrument_name") or "edge appliance"))
    source = entry.create_group("source")
    source.attrs["NX_class"] = "NXsource"
    source.create_dataset("name", data=str(series.get("source_name") or "unknown"))
    detector = instrument.create_group("detector")
    detector.attrs["NX_class"] = "NXdetector"
    detector.create_dataset("description", data=meta.detector)
    module = detector.create_group("module")
    module.attrs["NX_class"] = "NXdetector_module"
    nx = write_detector_geometry(detector, module, g, shape)
    for name, value, units in (
        ("distance", g.dist, "m"),
        ("x_pixel_size", g.pixel2, "m"),
        ("y_pixel_size", g.pixel1, "m"),
        ("beam_center_x", nx.beam_center_x, "pixel"),
        ("beam_center_y", nx.beam_center_y, "pixel"),
    ):
        detector.create_dataset(name, data=value).attrs["units"] = units
    detector["beam_center_x"].attrs["convention"] = (
        "direct beam (tilts included), pixel coordinates of the stored image: pixel (i, j) spans"
        " [j, j+1) x [i, i+1), x along the fast axis; pyFAI getFit2D() centerX/centerY for orientation 3"
    )
    detector.create_dataset("distance_derived", data=False)
    detector.create_dataset("beam_center_derived", data=True)
    for key in ("count_time", "frame_time"):
        if series.get(key) is not None:
            detector.create_dataset(key, data=float(series[key])).attrs["units"] = "s"
    saturation = series.get("saturation_value", series.get("countrate_correction_count_cutoff"))
    if saturation is None:
        saturation = np.iinfo(np.dtype(dtype)).max
    detector.create_dataset("saturation_value", data=int(saturation))
    detector.create_dataset("bit_depth_readout", data=np.dtype(dtype).itemsize * 8)
    material = series.get("sensor_material")
    ds = detector.create_dataset("sensor_material", data=str(material or "unknown"))
    if material is None:
        ds.attrs["note"] = "not reported by the detector's series header"
    thickness = series.get("sensor_thickness")
    ds = detector.create_dataset(
        "sensor_thickness", data=float("nan") if thickness is None else float(thickness)
    )
    ds.attrs["units"] = "m"
    if thickness is None:
        ds.attrs["note"] = "not reported by the detector's series header"
    pixel_mask = np.zeros(shape, dtype=np.uint32)
    if meta.mask is not None and meta.mask.shape == tuple(shape):
        pixel_mask[meta.mask.astype(bool)] = 1 << 8  # NXmx bit 8: user-defined (calibration) mask
    detector.create_dataset("pixel_mask", data=pixel_mask, compression="gzip", shuffle=True)
    detector.create_dataset("pixel_mask_applied", data=False)
    poni = detector.create_group("pyfai_poni")
    poni.attrs["NX_class"] = "NXcollection"
    for name in (
        "dist",
        "poni1",
        "poni2",
        "rot1",
        "rot2",
        "rot3",
        "wavelength",
        "pixel1",
        "pixel2",
        "orientation",
    ):
        poni.create_dataset(name, data=getattr(g, name))
    detector["data"] = h5py.SoftLink("/entry/data/data")
    detector.attrs["shape"] = shape
    beam = instrument.create_group("beam")
    beam.attrs["NX_class"] = "NXbeam"
    beam.create_dataset("incident_wavelength", data=g.wavelength * 1e10).attrs["units"] = "angstrom"
    sample = entry.create_group("sample")
    sample.attrs["NX_class"] = "NXsample"
    sample.create_dataset("name", data=str(series.get("sample_name") or "unknown"))
    goniometer = sample.create_group("transformations")
    goniometer.attrs["NX_class"] = "NXtransformations"
    omega = goniometer.create_dataset("omega", data=0.0)  # a fixed goniometer: no rotation during the run
    omega.attrs["transformation_type"] = "rotation"
    omega.attrs["vector"] = np.array([1.0, 0.0, 0.0])
    omega.attrs["offset"] = np.zeros(3)
    omega.attrs["units"] = "deg"
    omega.attrs["depends_on"] = "."
    sample.create_dataset("depends_on", data=omega.name)


@dataclass(frozen=True)
class ClosedFile:
    run_uid: str
    name: str
    path: Path
    first_frame: int
    last_frame: int
    n_frames: int


class RunFileWriter:
    """One open rollover file of a run."""

    def __init__(
        self,
        directory: Path,
        run_uid: str,
        index: int,
        shape: tuple[int, int],
        dtype: str,
        capacity: int,
        radial: np.ndarray,
        radial_unit: str,
        meta: RunMetadata | None = None,
    ) -> None:
        self.run_uid = run_uid
        self.name = f"{run_uid}_{index:05d}.h5"
        self.final_path = directory / self.name
        self.part_path = directory / (self.name + ".part")
        self.capacity = capacity
        self.opened_at = time.monotonic()
        self.frames: list[int] = []
        self.flags: list[int] = []
        self._profiles: list[np.ndarray] = []
        self._h5 = h5py.File(self.part_path, "w", libver="latest", rdcc_nbytes=0)
        entry = self._h5.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry.attrs["run_uid"] = run_uid
        entry.attrs["file_index"] = index
        if meta is not None:
            _write_nxmx(entry, meta, shape, dtype)
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        self._data = data.create_dataset(
            "data",
            shape=(capacity, *shape),
            maxshape=(None, *shape),
            chunks=(1, *shape),
            dtype=dtype,
            **hdf5_filter_options(),  # type: ignore[arg-type]
        )
        reduced = entry.create_group("reduced")
        reduced.attrs["NX_class"] = "NXdata"
        reduced.attrs["signal"] = "profile"
        reduced.attrs["axes"] = [".", "radial"]
        radial_ds = reduced.create_dataset("radial", data=radial)
        radial_ds.attrs["units"] = radial_unit
        self._reduced = reduced

    def __len__(self) -> int:
        return len(self.frames)

    def write(self, frame: int, chunk: bytes, profile: np.ndarray, flags: int = 0) -> None:
        self._data.id.write_direct_chunk((len(self.frames), 0, 0), chunk)
        self.frames.append(frame)
        self.flags.append(flags)
        self._profiles.append(profile)

    def close(self) -> ClosedFile:
        """Finish the file, fsync it, and rename it to its final name."""
        n = len(self.frames)
        self._data.resize(n, axis=0)
        entry = self._h5["entry"]
        end_time = datetime.now(UTC).isoformat()
        entry.create_dataset("end_time", data=end_time)
        if "definition" in entry:  # NXmx requires it; once the file is closed the estimate is the end
            entry.create_dataset("end_time_estimated", data=end_time)
        entry.attrs["frames_written"] = n
        entry["data"].create_dataset("frame_number", data=np.asarray(self.frames, dtype=np.int64))
        flags = entry["data"].create_dataset("frame_flags", data=np.asarray(self.flags, dtype=np.uint32))
        flags.attrs["meaning"] = "0 complete, 1 incomplete (packets missing; their pixels are 0), 2 corrupt"
        profiles = np.asarray(self._profiles, dtype=np.float64).reshape(n, -1)
        self._reduced.create_dataset("profile", data=profiles)
        self._h5.flush()
        self._h5.close()
        fd = os.open(self.part_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.part_path, self.final_path)
        fsync_dir(self.final_path.parent)
        first = self.frames[0] if self.frames else -1
        last = self.frames[-1] if self.frames else -1
        return ClosedFile(self.run_uid, self.name, self.final_path, first, last, n)

    def discard(self) -> None:
        self._h5.close()
        self.part_path.unlink(missing_ok=True)


class RunStore:
    """Writes one run's frames into rollover files under ``root/run_uid/``."""

    def __init__(
        self,
        root: Path,
        run_uid: str,
        shape: tuple[int, int],
        dtype: str,
        frames_per_file: int,
        file_seconds: float,
        radial: np.ndarray,
        radial_unit: str,
        on_closed: Callable[[ClosedFile], None],
        meta: RunMetadata | None = None,
        closer: Executor | None = None,
        on_close_failed: Callable[[str, list[int], BaseException], None] | None = None,
    ) -> None:
        self.directory = root / run_uid
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run_uid = run_uid
        self.shape = shape
        self.dtype = dtype
        self.frames_per_file = frames_per_file
        self.file_seconds = file_seconds
        self.radial = radial
        self.radial_unit = radial_unit
        self.meta = meta
        self.on_closed = on_closed
        self.files_closed = 0
        self.frames_written = 0
        self._current: RunFileWriter | None = None
        # with a ``closer``, full files are finished there, in order, while the next one fills; a file
        # that cannot be finished goes to ``on_close_failed`` with its frames (without one, it raises)
        self._closer = closer
        self._on_close_failed = on_close_failed
        self._closing: list[Future[None]] = []

    def write(self, frame: int, chunk: bytes, profile: np.ndarray, flags: int = 0) -> None:
        if self._current is None:
            self._current = RunFileWriter(
                self.directory,
                self.run_uid,
                self.files_closed,
                self.shape,
                self.dtype,
                self.frames_per_file,
                self.radial,
                self.radial_unit,
                self.meta,
            )
        self._current.write(frame, chunk, profile, flags)
        self.frames_written += 1
        if len(self._current) >= self.frames_per_file:
            self.roll()

    def tick(self) -> None:
        """Close the open file if it has been open longer than ``file_seconds``."""
        if self._current is not None and time.monotonic() - self._current.opened_at >= self.file_seconds:
            self.roll()

    def roll(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        if len(current) == 0:
            current.discard()
            return
        self.files_closed += 1
        if self._closer is None:
            self.on_closed(current.close())
            return
        self._closing = [f for f in self._closing if not f.done()]
        self._closing.append(self._closer.submit(self._finish, current))

    def _finish(self, current: RunFileWriter) -> None:
        try:
            closed = current.close()
            self.on_closed(closed)
        except Exception as error:
            log.exception("finishing %s failed", current.name)
            if self._on_close_failed is None:
                raise
            self._on_close_failed(self.run_uid, list(current.frames), error)

    def close(self) -> None:
        """Finish the open file and wait until every file of the run is finished and registered."""
        self.roll()
        for pending in self._closing:
            pending.result()
        self._closing = []
