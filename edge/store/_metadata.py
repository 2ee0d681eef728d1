"""What a run's files record about how it was taken: the detector's series header, bounded, and the
NXmx / NXtomo metadata written once per file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008 with HDF5)
import numpy as np

from edge.h5template import H5Template
from edge.nxmx import write_detector_geometry, write_pyfai_poni
from kernels import Geometry, direct_distance

log = logging.getLogger(__name__)


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
    | {"store_blanks"}
    | {
        "resumed_after_restart",
        "resumed_after_pause",
        "first_frame",
        "resumes_run",
        "header_fields_ignored",
        "format",
    }
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
    #: the detector shape the PONI file names (its ``max_shape``), when it names one
    poni_shape: tuple[int, int] | None = None


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


def _source(parent: h5py.Group, series: dict[str, Any]) -> h5py.Group:
    """The NXsource under ``parent``, named as the detector's series header names it (else unknown)."""
    source = parent.create_group("source")
    source.attrs["NX_class"] = "NXsource"
    source.create_dataset("name", data=str(series.get("source_name") or "unknown"))
    return source


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
    _source(entry, series)
    detector = instrument.create_group("detector")
    detector.attrs["NX_class"] = "NXdetector"
    detector.create_dataset("description", data=meta.detector)
    module = detector.create_group("module")
    module.attrs["NX_class"] = "NXdetector_module"
    nx = write_detector_geometry(detector, module, g, shape)
    for name, value, units in (
        ("distance", direct_distance(g), "m"),
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
    detector["distance"].attrs["convention"] = (
        "sample to where the direct beam meets the detector (tilts included): pyFAI getFit2D()"
        " directDist; the PONI distance (to the point of normal incidence) is pyfai_poni/dist"
    )
    detector.create_dataset("distance_derived", data=True)
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
    write_pyfai_poni(detector, g, meta.poni_shape or shape, frames=shape)
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
    omega.attrs["offset_units"] = "m"  # NeXus: an offset has its units, a length also for a rotation
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
        self._template = H5Template(lambda root: _write_nxmx(root.create_group("entry"), meta, shape, dtype))

    def write(self, entry: h5py.Group) -> None:
        """Copy the metadata into ``entry`` (a new file's ``/entry``)."""
        source = self._template.h5["entry"]
        for name in source:
            self._template.h5.copy(source[name], entry, name=name)
        for key, value in source.attrs.items():
            entry.attrs[key] = value
        entry.file.attrs["default"] = "entry"

    def close(self) -> None:
        self._template.close()


def _write_nxtomo(entry: h5py.Group, meta: RunMetadata) -> None:
    """NXtomo's header: the instrument's detector as tomography readers size a voxel from it (pixel
    pitch and distance, in metres; count and frame time when the detector reported them), the source,
    and the sample's name when the series header gave one. The frames, image keys and angles follow
    with the mode's products (``TomoStage.write_products``)."""
    g = meta.geometry
    series = meta.series
    instrument = _begin_entry(entry, meta, "NXtomo")
    source = _source(instrument, series)
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
