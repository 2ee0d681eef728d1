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

import hashlib
import json
import logging
import math
import mmap
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008 with HDF5)
import numpy as np
import xxhash

from edge.diskguard import is_no_space
from edge.nxmx import write_detector_geometry
from kernels import Geometry, hdf5_filter_options

log = logging.getLogger(__name__)

#: set when HDF5 could not close a file (a full disk under its flush): the library keeps it half-open,
#: and its own clean-up at interpreter exit then crashes, so ``edge run`` exits without it
HDF5_UNCLOSED = threading.Event()

CHECKSUM = "xxh3-128"
#: Frames one capture file can take (its dataset grows into this extent; chunks are allocated as written).
CAPTURE_CAPACITY = 10_000_000


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_checksums(path: Path, chunk_bytes: int = 0) -> tuple[int, str, list[tuple[int, int, str]]]:
    """Size, whole-file checksum and per-chunk ``(offset, length, checksum)`` in one pass (no chunks with
    ``chunk_bytes`` 0).

    The file is mapped (the pages are the page cache's own: the file was just written), so its bytes are
    hashed where they lie instead of being copied out first.
    """
    whole = xxhash.xxh3_128()
    chunks: list[tuple[int, int, str]] = []
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return 0, whole.hexdigest(), []
        with mmap.mmap(handle.fileno(), size, flags=_MAP_FLAGS, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            try:
                step = chunk_bytes or size
                for offset in range(0, size, step):
                    block = view[offset : offset + step]
                    whole.update(block)
                    if chunk_bytes:
                        chunks.append((offset, len(block), checksum_bytes(block)))
                    block.release()
            finally:
                view.release()
    return size, whole.hexdigest(), chunks


#: shared read-only mappings, populated in one call (fewer page faults than touching page by page)
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def drop_cached(path: str | Path) -> bool:
    """Hand a closed, fsynced file's pages in the page cache back to the kernel; False if it could not be.

    Called once the appliance will not read the file again soon: every required consumer has confirmed it
    (the forwarder's reads are done), or it is kept only locally. Frames keep arriving at hundreds of MB a
    second; without this the page cache grows by every byte written, and each new page comes from memory
    the kernel has not touched for a while. On this project's 2-core VM (free-page reporting) a new page
    costs ~10 us of the writer's CPU: 2 ms per 1024^2 frame instead of 0.2 ms once the cache had grown
    by ~1 GB; pages handed back are reused while they are still warm (``docs/kernels.md``). The data is on
    disk either way: a later read (a resend, a consumer added later) reads it from there.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # purged or moved meanwhile: nothing of it to hand back
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:  # (a file system without the advice)
        return False
    finally:
        os.close(fd)


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


_SERIES_LIMITS: dict[str, tuple[type, float, float]] = {
    # key: (kind, lowest, highest) -- exclusive low, inclusive high
    "count_time": (float, 0.0, 1e5),  # seconds
    "frame_time": (float, 0.0, 1e5),
    "sensor_thickness": (float, 0.0, 0.1),  # metres
    "saturation_value": (int, 0, 2**63 - 1),  # counts
    "countrate_correction_count_cutoff": (int, 0, 2**63 - 1),
    "sensor_material": (str, 0, 256),  # characters
    "instrument_name": (str, 0, 256),
    "source_name": (str, 0, 256),
    "sample_name": (str, 0, 256),
    "detector": (str, 0, 256),  # the detector's description (the run record's ``detector``)
}
#: where a Stream V2 start message keeps these (the codec's ``geometry`` and ``metadata``)
_STREAM2_PLACE = {"sensor_material": "geometry", "sensor_thickness": "geometry"}


def series_metadata(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The NXMX_SERIES_KEYS (and ``detector``) a series header gave, checked: ``(accepted, ignored)``.

    Values come from a detector, so none is trusted: a number must be a finite number in its key's
    range (a time in seconds, a thickness in metres, a count a whole number), a name a string of at
    most 256 characters. Anything else is left out of the files (they say "not reported" instead)
    and named in ``ignored`` as ``key=value: why``, never an error that could cost the run's frames.
    A Stream V2 series keeps them in its start message's ``geometry`` and ``metadata``.
    """
    stream2 = config.get("stream2") if isinstance(config.get("stream2"), dict) else None
    accepted: dict[str, Any] = {}
    ignored: list[str] = []
    for key in (*NXMX_SERIES_KEYS, "detector"):
        if stream2 is not None and key != "detector":
            place = stream2.get(_STREAM2_PLACE.get(key, "metadata"))
            value = place.get(key) if isinstance(place, dict) else None
        else:
            value = config.get(key)
        if value is None:
            continue
        kind, low, high = _SERIES_LIMITS[key]
        if kind is str:
            if isinstance(value, str) and 0 < len(value.strip()) <= high and value.isprintable():
                accepted[key] = value.strip()
                continue
            why = f"not a printable string of 1 to {int(high)} characters"
        elif isinstance(value, bool) or not isinstance(value, int | float):
            why = "not a number"
        elif not math.isfinite(value) or not low < value <= high:
            why = f"outside ({low:g}, {high:g}]"
        elif kind is int and value != int(value):
            why = "not a whole number"
        else:
            accepted[key] = int(value) if kind is int else float(value)
            continue
        ignored.append(f"{key}={json.dumps(value, default=str)[:80]}: {why}")
    return accepted, ignored


#: the most a run's config (ledger, RunStart document, API) may hold of what a detector's header sent
MAX_CONFIG_BYTES = 1 << 20
#: what the appliance itself puts in a run's config (never replaced, however large the rest)
_OWN_CONFIG_KEYS = frozenset(
    {"shape", "type", "run_uid", "frames_expected", "reduction", "upstream_forward", "capture_file"}
    | {"resumed_after_restart", "first_frame", "resumes_run", "header_fields_ignored", "format"}
)


def bounded_config(config: dict[str, Any], limit: int = MAX_CONFIG_BYTES) -> tuple[dict[str, Any], list[str]]:
    """A series config whose JSON fits ``limit`` bytes: ``(config, replaced)``.

    A header may carry anything (a vendor field of 20 MB would be copied into the ledger, the run's
    documents and the API): while the JSON is too large, the largest header value (a top-level field, or
    a field of one, as Stream V2's ``stream2.user_data``) is replaced by ``{"omitted": ..., "bytes",
    "sha256"}``; ``replaced`` names them (``stream2.user_data``). Small configs come back unchanged.
    """
    sizes = {key: len(json.dumps(value, default=str)) for key, value in config.items()}
    if sum(sizes.values()) + 4 * len(sizes) <= limit:
        return config, []
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in config.items()}
    replaced: list[str] = []
    while len(json.dumps(out, default=str)) > limit:
        candidates = [
            (len(json.dumps(value, default=str)), (key,), value)
            for key, value in out.items()
            if key not in _OWN_CONFIG_KEYS and not isinstance(value, dict)
        ]
        candidates += [
            (len(json.dumps(inner, default=str)), (key, name), inner)
            for key, value in out.items()
            if key not in _OWN_CONFIG_KEYS and isinstance(value, dict)
            for name, inner in value.items()
            if ".".join((key, name)) not in replaced
        ]
        if not candidates:
            break
        size, path, value = max(candidates, key=lambda c: c[0])
        if size < 1024:  # only small fields left: what remains is the appliance's own record
            break
        text = json.dumps(value, default=str).encode()
        summary = {
            "omitted": "too large for the run record",
            "bytes": size,
            "sha256": hashlib.sha256(text).hexdigest(),
        }
        if len(path) == 1:
            out[path[0]] = summary
        else:
            out[path[0]][path[1]] = summary
        replaced.append(".".join(path))
    return out, replaced


@dataclass(frozen=True)
class RunMetadata:
    """What every file of a run records about how it was taken (the NXmx part of the layout).

    ``series`` holds what the detector's series header said (NXMX_SERIES_KEYS); ``mask`` is the
    calibration mask the reduction used (the PONI detector's own mask with ``reduction.mask_file``);
    ``gaps`` the pixels of it with no sensor behind them (module gaps), written as NXmx's bit 0.
    """

    geometry: Geometry
    detector: str = "edge detector"
    frames_expected: int | None = None
    start_time: str = ""
    series: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    gaps: np.ndarray | None = None


def _begin_entry(entry: h5py.Group, meta: RunMetadata, definition: str) -> h5py.Group:
    """The entry's definition, start time and announced length, and its NXinstrument (returned)."""
    entry.file.attrs["default"] = "entry"
    entry.create_dataset("definition", data=definition)
    entry.create_dataset("start_time", data=meta.start_time)
    if meta.frames_expected is not None:
        entry.attrs["frames_expected"] = meta.frames_expected
    instrument = entry.create_group("instrument")
    instrument.attrs["NX_class"] = "NXinstrument"
    instrument.create_dataset("name", data=str(meta.series.get("instrument_name") or "edge appliance"))
    return instrument


def _write_times(detector: h5py.Group, series: dict[str, Any]) -> None:
    """count_time and frame_time (seconds), when the detector reported them."""
    for key in ("count_time", "frame_time"):
        if series.get(key) is not None:
            detector.create_dataset(key, data=float(series[key])).attrs["units"] = "s"


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
    instrument = _begin_entry(entry, meta, "NXmx")
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
    _write_times(detector, series)
    saturation = series.get("saturation_value", series.get("countrate_correction_count_cutoff"))
    pixel = np.dtype(dtype)
    if saturation is None:  # the pixel type's maximum (NX_NUMBER: a float for float pixels)
        saturation = np.finfo(pixel).max if pixel.kind == "f" else np.iinfo(pixel).max
    detector.create_dataset(
        "saturation_value", data=float(saturation) if pixel.kind == "f" else int(saturation)
    )
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
    if meta.gaps is not None and meta.gaps.shape == tuple(shape):
        pixel_mask[meta.gaps.astype(bool)] = 1  # NXmx bit 0: gap (no sensor), not a user's choice
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
        ds = poni.create_dataset(name, data=getattr(g, name))
        if name.startswith("rot"):
            ds.attrs["units"] = "rad"
        elif name != "orientation":  # pyFAI's detector orientation (1-4) is a number, no unit
            ds.attrs["units"] = "m"
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


class NxmxTemplate:
    """A run's NXmx metadata, written once into an in-memory HDF5 file and copied into each of its files.

    Writing it costs about 50 ms of CPU a file (the pixel mask's gzip most of it), copying it about 5
    (``H5Ocopy`` copies the mask's compressed chunk as it is): with rollover files of 100-200 frames that
    is a quarter to half a millisecond of every frame saved. The copy holds the same objects, values and
    attributes as `_write_nxmx` writes (the run's start time and mask are the same for all its files).
    """

    def __init__(self, meta: RunMetadata, shape: tuple[int, int], dtype: str) -> None:
        name = f"nxmx-template-{uuid.uuid4().hex}.h5"  # a name only: nothing is written to disk
        self._h5 = h5py.File(name, "w", driver="core", backing_store=False, libver="latest")
        _write_nxmx(self._h5.create_group("entry"), meta, shape, dtype)

    def write(self, entry: h5py.Group) -> None:
        """Copy the metadata into ``entry`` (a new file's ``/entry``)."""
        source = self._h5["entry"]
        for name in source:
            self._h5.copy(source[name], entry, name=name)
        for key, value in source.attrs.items():
            entry.attrs[key] = value
        entry.file.attrs["default"] = "entry"

    def close(self) -> None:
        self._h5.close()


def _write_nxtomo(entry: h5py.Group, meta: RunMetadata) -> None:
    """NXtomo's header: the instrument's detector as tomography readers size a voxel from it (pixel
    pitch and distance, in metres; count and frame time when the detector reported them), the source,
    and the sample's name when the series header gave one. The frames, image keys and angles follow
    with the mode's products (``TomoStage.write_products``)."""
    g = meta.geometry
    series = meta.series
    instrument = _begin_entry(entry, meta, "NXtomo")
    source = instrument.create_group("source")
    source.attrs["NX_class"] = "NXsource"
    source.create_dataset("name", data=str(series.get("source_name") or "unknown"))
    source.create_dataset("probe", data="x-ray")
    detector = instrument.create_group("detector")
    detector.attrs["NX_class"] = "NXdetector"
    detector.create_dataset("description", data=meta.detector)
    for name, value in (("x_pixel_size", g.pixel2), ("y_pixel_size", g.pixel1), ("distance", g.dist)):
        detector.create_dataset(name, data=float(value)).attrs["units"] = "m"
    _write_times(detector, series)
    if series.get("sample_name"):
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample.create_dataset("name", data=str(series["sample_name"]))


@dataclass(frozen=True)
class ClosedFile:
    run_uid: str
    name: str
    path: Path
    first_frame: int
    last_frame: int
    n_frames: int
    kind: str = "data"  # data (kept frames), blank (serial blanks kept locally), reduced (products)


class ProductLayout(Protocol):
    """How a reduction mode lays out its products in a file (edge.modes stages implement it)."""

    definition: str  # the NeXus application definition of the data files: NXmx or NXtomo
    reference: str  # what the reduction's algorithm is, for /entry/reduction/reference

    def settings_record(self) -> dict[str, Any]: ...

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None: ...

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None: ...


def _write_reduction_record(entry: h5py.Group, layout: ProductLayout) -> None:
    """Every setting that shaped the products, readable from the file alone."""
    from edge import __version__

    group = entry.create_group("reduction")
    group.attrs["NX_class"] = "NXprocess"
    record = layout.settings_record()
    group.create_dataset("program", data="edge")
    group.create_dataset("version", data=__version__)
    group.create_dataset("date", data=datetime.now(UTC).isoformat(timespec="seconds"))
    group.create_dataset("reference", data=layout.reference)
    group.create_dataset("mode", data=str(record.get("mode", "")))
    group.create_dataset("settings_json", data=json.dumps(record, sort_keys=True, default=str))
    inputs = group.create_group("input")  # one field per setting (NXparameters); lists and None as JSON
    inputs.attrs["NX_class"] = "NXparameters"
    for key, value in sorted(record.items()):
        plain = isinstance(value, bool | int | float | str) and not (
            isinstance(value, float) and math.isnan(value)
        )
        inputs.create_dataset(key, data=value if plain else json.dumps(value, default=str))


class RunFileWriter:
    """One open rollover file of a run: frames as direct chunks, their products beside them."""

    def __init__(
        self,
        directory: Path,
        run_uid: str,
        name: str,
        index: int,
        shape: tuple[int, int],
        dtype: str,
        capacity: int,
        layout: ProductLayout,
        meta: RunMetadata | None = None,
        kind: str = "data",
        nxmx: NxmxTemplate | None = None,
    ) -> None:
        self.run_uid = run_uid
        self.name = name
        self.kind = kind
        self.final_path = directory / self.name
        self.part_path = directory / (self.name + ".part")
        self.capacity = capacity
        self.layout = layout
        self.opened_at = time.monotonic()
        self.frames: list[int] = []
        self.flags: list[int] = []
        self._products: list[dict[str, Any]] = []
        try:
            self._h5 = h5py.File(self.part_path, "w", libver="latest", rdcc_nbytes=0)
        except BaseException:  # (a full disk) never a 0-byte .part left for the next start to call a crash's
            self.part_path.unlink(missing_ok=True)
            raise
        try:
            entry = self._h5.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "data"
            entry.attrs["run_uid"] = run_uid
            entry.attrs["file_index"] = index
            entry.attrs["file_kind"] = kind
            if meta is not None and layout.definition == "NXmx" and nxmx is not None:
                nxmx.write(entry)  # the run's metadata, written once (see NxmxTemplate)
            elif meta is not None and layout.definition == "NXmx":
                _write_nxmx(entry, meta, shape, dtype)
            elif meta is not None and layout.definition == "NXtomo":
                _write_nxtomo(entry, meta)
            elif meta is not None:
                self._h5.attrs["default"] = "entry"
                entry.create_dataset("definition", data=layout.definition)
                entry.create_dataset("start_time", data=meta.start_time)
            _write_reduction_record(entry, layout)
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            data.attrs["axes"] = ["frame_number", ".", "."]  # (frame_number: written with the file's end)
            data.attrs["frame_number_indices"] = 0
            self._data = data.create_dataset(
                "data",
                shape=(capacity, *shape),
                maxshape=(None, *shape),
                chunks=(1, *shape),
                dtype=dtype,
                **hdf5_filter_options(),  # type: ignore[arg-type]
            )
            self._data.attrs["units"] = "counts"
        except BaseException:  # the metadata did not fit (a full disk): nothing of the file stays
            _abandon(self._h5, self.part_path)
            raise

    def __len__(self) -> int:
        return len(self.frames)

    def write(self, frame: int, chunk: bytes, products: dict[str, Any], flags: int = 0) -> None:
        self._data.id.write_direct_chunk((len(self.frames), 0, 0), chunk)
        self.frames.append(frame)
        self.flags.append(flags)
        self._products.append(products)

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
        self.layout.write_products(entry, self._products)
        _finish_file(self._h5, self.part_path, self.final_path)
        # the lowest and highest frame numbers (a frame overtaken by later ones is stored where it comes)
        first = min(self.frames, default=-1)
        last = max(self.frames, default=-1)
        return ClosedFile(self.run_uid, self.name, self.final_path, first, last, n, self.kind)

    def discard(self) -> None:
        self._h5.close()
        self.part_path.unlink(missing_ok=True)


def _close_as_far_as_possible(h5: h5py.File, name: str) -> None:
    """Close a file that could not be finished. A full disk under HDF5's flush makes the close fail and
    the library keep the file half-open: logged, and noted (`HDF5_UNCLOSED`)."""
    try:
        h5.close()
    except Exception as error:
        HDF5_UNCLOSED.set()
        log.warning("closing %s on a full disk failed: %s", name, error)


def _abandon(h5: h5py.File, part: Path) -> None:
    """Close a file that could not be finished, as far as HDF5 can, and remove its ``.part``."""
    _close_as_far_as_possible(h5, part.name)
    part.unlink(missing_ok=True)


def _finish_file(h5: h5py.File, part_path: Path, final_path: Path) -> None:
    """Flush and close, fsync, rename to the final name, fsync the directory."""
    h5.flush()
    h5.close()
    fd = os.open(part_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part_path, final_path)
    fsync_dir(final_path.parent)


#: the frame table's disposition codes (``/entry/frames/disposition`` in a run's reduced files)
DISPOSITION_CODES = {"stored": 0, "vetoed": 1}


class ReducedWriter:
    """A run's reduced files: the frame table and every frame's products, stored or vetoed.

    These travel upstream under every ``upstream.forward`` policy, so ``sent = stored + vetoed + lost``
    can be proven from the upstream copy alone (lost frames are in the run's documents). A file is
    finished every ``frames_per_file`` frames (memory stays bounded) and at the run's end, when the
    mode's run products (e.g. tomography slices) go into the last one.
    """

    def __init__(
        self,
        directory: Path,
        run_uid: str,
        layout: ProductLayout,
        frames_per_file: int,
        seconds: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.run_uid = run_uid
        self.layout = layout
        self.frames_per_file = max(1, frames_per_file)
        self.seconds = seconds
        self.clock = clock
        self._since: float | None = None  # when the first row of the file being gathered came
        self.files = 0
        self.rows: list[dict[str, Any]] = []
        self.products: list[dict[str, Any]] = []
        self.counts = {"stored": 0, "vetoed": 0}

    def add(
        self, frame: int, disposition: str, stream: str, row: dict[str, Any], products: dict[str, Any]
    ) -> None:
        self.counts[disposition] += 1
        if not self.rows:
            self._since = self.clock()
        self.rows.append({"frame_number": frame, "disposition": disposition, "stream": stream, **row})
        self.products.append(products)

    def full(self) -> bool:
        """Time to finish the file: ``frames_per_file`` rows, or its first row ``seconds`` ago (a crash
        then leaves at most that long of rows, e.g. vetoed blanks, unrecorded)."""
        if len(self.rows) >= self.frames_per_file:
            return True
        return bool(self.rows) and self._since is not None and self.clock() - self._since >= self.seconds

    def finish(self, run_products: dict[str, Any] | None = None) -> ClosedFile | None:
        """Write the frames gathered so far (and ``run_products``) to the next reduced file."""
        if not self.rows and not run_products:
            return None
        name = f"{self.run_uid}_reduced_{self.files:05d}.nxs"
        final, part = self.directory / name, self.directory / (name + ".part")
        try:
            h5 = h5py.File(part, "w", libver="latest")
        except BaseException:  # (a full disk) never a 0-byte .part left for the next start to call a crash's
            part.unlink(missing_ok=True)
            raise
        try:
            entry = h5.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["run_uid"] = self.run_uid
            entry.attrs["file_kind"] = "reduced"
            h5.attrs["default"] = "entry"
            _write_reduction_record(entry, self.layout)
            self._write_frames(entry)
            if self.rows:
                self.layout.write_reduced(entry, self.products)
            if run_products:
                _write_run_products(entry, run_products)
            if "default" not in entry.attrs and "n_peaks" in entry["frames"]:
                _peaks_plot(entry)
            if "default" not in entry.attrs:  # raw, or rows with no product: the dispositions
                _frames_plot(entry, "disposition")
            _finish_file(h5, part, final)
        except BaseException:
            _abandon(h5, part)
            raise
        numbers = [int(r["frame_number"]) for r in self.rows]
        closed = ClosedFile(
            self.run_uid,
            name,
            final,
            min(numbers, default=-1),
            max(numbers, default=-1),
            0,  # a reduced file holds no raw frames: its frames are counted in the data files
            "reduced",
        )
        self.files += 1
        self.rows, self.products = [], []
        return closed

    def _write_frames(self, entry: h5py.Group) -> None:
        table = entry.create_group("frames")
        table.attrs["NX_class"] = "NXcollection"
        table.attrs["meaning"] = (
            "one row per frame that reached the pipeline: disposition 0 stored, 1 vetoed (by the mode's"
            " policy); lost frames are the run's loss records (documents file)"
        )
        rows = self.rows
        table.create_dataset("frame_number", data=np.asarray([r["frame_number"] for r in rows], np.int64))
        table.create_dataset(
            "disposition", data=np.asarray([DISPOSITION_CODES[r["disposition"]] for r in rows], np.int8)
        )
        table.create_dataset("stream", data=[str(r["stream"]) for r in rows], dtype=h5py.string_dtype())
        for name, dtype in (("image_key", np.int8), ("is_hit", bool), ("n_peaks", np.int32)):
            if any(name in r for r in rows):
                table.create_dataset(name, data=np.asarray([r.get(name, 0) for r in rows], dtype))
        if any("rotation_angle" in r for r in rows):
            angles = [r.get("rotation_angle", np.nan) for r in rows]
            table.create_dataset("rotation_angle", data=np.asarray(angles, np.float64)).attrs["units"] = "deg"
        if any("roi_sum" in r for r in rows):
            table.create_dataset("roi_sum", data=np.asarray([r["roi_sum"] for r in rows], np.float64))


def _peaks_plot(entry: h5py.Group) -> None:
    """Serial: peaks per frame against the frame number, the entry's default plot (what a NeXus reader
    such as silx view shows on opening the file); links to the frame table's columns, not copies."""
    _frames_plot(entry, "n_peaks", "peaks_per_frame")


def _frames_plot(entry: h5py.Group, column: str, name: str | None = None) -> None:
    """A column of the frame table against the frame number, as the entry's default NXdata (links)."""
    group = entry.create_group(name or f"{column}_per_frame")
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = column
    group.attrs["axes"] = ["frame_number"]
    group.attrs["interpretation"] = "spectrum"
    group[column] = entry[f"frames/{column}"]
    group["frame_number"] = entry["frames/frame_number"]
    entry.attrs["default"] = group.name.rsplit("/", 1)[-1]


def _write_run_products(entry: h5py.Group, products: dict[str, Any]) -> None:
    """Products of the whole run (tomography: slices, sinograms, mean dark and flat).

    The slices are the entry's default plot: NeXus readers (silx view, nexpy) follow the file's
    ``@default`` to the entry and the entry's to this NXdata.
    """
    group = entry.create_group("reconstruction")
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "slices"
    if "rows" in products:  # one slice per detector row reconstructed
        group.attrs["axes"] = ["rows", ".", "."]
        group.attrs["rows_indices"] = 0
    entry.attrs["default"] = "reconstruction"
    for key, value in products.items():
        if isinstance(value, str):
            group.create_dataset(key, data=value)
            continue
        array = np.asarray(value)
        if array.ndim >= 2:
            group.create_dataset(key, data=array, compression="gzip", shuffle=True)
        else:
            group.create_dataset(key, data=array)
    if "rotation_angle" in group:
        group["rotation_angle"].attrs["units"] = "deg"
    for name in ("center", "rows"):  # detector columns and rows
        if name in group:
            group[name].attrs["units"] = "pixel"
    normalised = str(products.get("flat_field", "")).startswith("applied")
    if "slices" in group:
        # filtered back-projection of -log(transmission) on a grid of detector pixels: the linear
        # attenuation coefficient per pixel (divide by x_pixel_size for 1/m); without a flat field,
        # of -log(counts): relative values only
        group["slices"].attrs["long_name"] = (
            "linear attenuation coefficient (per pixel length)" if normalised else "FBP of -log(counts)"
        )
        group["slices"].attrs["units"] = "1/pixel" if normalised else "arbitrary units"
    if "sinograms" in group:
        group["sinograms"].attrs["long_name"] = "-log(transmission)" if normalised else "-log(counts)"
        if not normalised:  # a transmission's log has no unit
            group["sinograms"].attrs["units"] = "arbitrary units"
    for name in ("dark_mean", "flat_mean"):
        if name in group:
            group[name].attrs["units"] = "counts"


class RunStore:
    """Writes one run's frames into rollover files under ``root/run_uid/``, one series of files per
    stream (``data``; ``blank`` for serial blanks kept locally)."""

    def __init__(
        self,
        root: Path,
        run_uid: str,
        shape: tuple[int, int],
        dtype: str,
        frames_per_file: int,
        file_seconds: float,
        layout: ProductLayout,
        on_closed: Callable[[ClosedFile], None],
        meta: RunMetadata | None = None,
        closer: Executor | None = None,
        on_close_failed: Callable[[str, list[int], BaseException], None] | None = None,
        data_path: Path | None = None,
    ) -> None:
        self.directory = root / run_uid
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run_uid = run_uid
        #: an areaDetector capture's file (HDF1:FileTemplate): every data frame of the run goes into this one
        #: file (no rollover); reduced products and documents stay under the run's directory
        self.data_path = data_path
        if data_path is not None:
            frames_per_file, file_seconds = CAPTURE_CAPACITY, math.inf
        self.shape = shape
        self.dtype = dtype
        self.frames_per_file = frames_per_file
        self.file_seconds = file_seconds
        self.layout = layout
        self.meta = meta
        self.on_closed = on_closed
        self.files_closed = 0
        self.frames_written = 0
        self._current: dict[str, RunFileWriter] = {}
        self._indices: dict[str, int] = {}
        # with a ``closer``, full files are finished there, in order, while the next one fills; a file
        # that cannot be finished goes to ``on_close_failed`` with its frames (without one, it raises)
        self._closer = closer
        self._on_close_failed = on_close_failed
        self._closing: list[Future[None]] = []
        self._nxmx: NxmxTemplate | None = None

    def _nxmx_template(self) -> NxmxTemplate | None:
        """The run's NXmx metadata to copy into each file (made with the first file)."""
        if self._nxmx is None and self.meta is not None and self.layout.definition == "NXmx":
            self._nxmx = NxmxTemplate(self.meta, self.shape, self.dtype)
        return self._nxmx

    def _name(self, stream: str, index: int) -> str:
        if stream == "data" and self.data_path is not None:
            return self.data_path.name
        if stream == "data":
            return f"{self.run_uid}_{index:05d}.h5"
        return f"{self.run_uid}_{stream}_{index:05d}.h5"

    def write(
        self, frame: int, chunk: bytes, products: dict[str, Any], flags: int = 0, stream: str = "data"
    ) -> None:
        current = self._current.get(stream)
        if current is None:
            index = self._indices.get(stream, 0)
            self._indices[stream] = index + 1
            data_path = self.data_path if stream == "data" else None
            current = RunFileWriter(
                self.directory if data_path is None else data_path.parent,
                self.run_uid,
                self._name(stream, index),
                index,
                self.shape,
                self.dtype,
                self.frames_per_file,
                self.layout,
                self.meta,
                stream,
                self._nxmx_template(),
            )
            self._current[stream] = current
        current.write(frame, chunk, products, flags)
        self.frames_written += 1
        if len(current) >= self.frames_per_file:
            self.roll(stream)

    def tick(self) -> None:
        """Close each open file that has been open longer than ``file_seconds``."""
        now = time.monotonic()
        for stream, current in list(self._current.items()):
            if now - current.opened_at >= self.file_seconds:
                self.roll(stream)

    def roll(self, stream: str | None = None) -> None:
        """Finish the open file of ``stream`` (of every stream when None)."""
        streams = list(self._current) if stream is None else [stream]
        for name in streams:
            current = self._current.pop(name, None)
            if current is None:
                continue
            if len(current) == 0:
                current.discard()
                continue
            self.files_closed += 1
            if self._closer is None:
                self.on_closed(current.close())
                continue
            self._closing = [f for f in self._closing if not f.done()]
            self._closing.append(self._closer.submit(self._finish, current))

    def _finish(self, current: RunFileWriter) -> None:
        try:
            closed = current.close()
        except Exception as error:
            if is_no_space(error):  # expected on a full disk: one line, the frames become disk_full losses
                log.error("finishing %s failed: the disk is full (%s)", current.name, str(error)[:160])
            else:
                log.exception("finishing %s failed", current.name)
            self._set_aside(current)  # now, here: not when a half-closed HDF5 file is collected, anywhere
            if self._on_close_failed is None:
                raise
            self._on_close_failed(self.run_uid, list(current.frames), error)
            return
        try:
            self.on_closed(closed)
        except Exception as error:  # finished, but not registered: its frames are recorded lost
            log.exception("registering %s failed", current.name)
            if self._on_close_failed is None:
                raise
            self._on_close_failed(self.run_uid, list(current.frames), error)

    def quarantine_open(self) -> list[list[int]]:
        """Give up the open files (the disk is full): each ``.part`` moves to ``STORE/quarantine/RUN/``
        (a rename, which needs no space), never under a final name; returns each file's frame numbers."""
        abandoned: list[list[int]] = []
        for stream in list(self._current):
            current = self._current.pop(stream)
            abandoned.append(list(current.frames))
            self._set_aside(current)
        return abandoned

    def _set_aside(self, current: RunFileWriter) -> None:
        """Close a file that cannot be finished (as far as HDF5 can) and move its ``.part`` to
        ``STORE/quarantine/RUN/`` (a rename, which needs no space), never under a final name."""
        _close_as_far_as_possible(current._h5, current.name)  # the .part is set aside all the same
        target = self.directory.parent / "quarantine" / self.run_uid / current.part_path.name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(current.part_path, target)
        except OSError as error:
            log.error("cannot quarantine %s (%s); removing it", current.part_path, error)
            current.part_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the open files and wait until every file of the run is finished and registered."""
        self.roll()
        for pending in self._closing:
            pending.result()
        self._closing = []
        if self._nxmx is not None:
            self._nxmx.close()
            self._nxmx = None
