"""Detector geometry in pyFAI's PONI convention, the per-pixel radial coordinates it implies, and PONI files.

Distances are metres, angles radians. ``poni1``/``poni2`` are the point of normal incidence measured
from the detector origin along the slow (row) and fast (column) axes. Rotations follow pyFAI: the
detector is rotated by rot1 about axis 1, rot2 about axis 2, rot3 about the beam. ``orientation`` is
pyFAI 2.1's detector orientation (1-4, EXIF-like): where pixel (0, 0) of the *image* sits on the
sensor. pyFAI handles it in the detector alone, by mirroring the pixel index before it becomes a
position (``Detector._calc_pixel_index_from_orientation``); the PONI, the rotations and the direct-beam
centre stay in the sensor's own frame (orientation 3, pyFAI's native one). We do exactly the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernels._detectors import DETECTORS, DetectorModel

ORIENTATIONS = (1, 2, 3, 4)
FLIPPED_AXES = {1: (True, True), 2: (True, False), 3: (False, False), 4: (False, True)}
"""Which image axes (slow, fast) run against the sensor's own axes, per orientation (pyFAI's table)."""


@dataclass(frozen=True)
class Geometry:
    """A PONI geometry for a flat detector with square-grid pixels."""

    dist: float = 0.1
    poni1: float = 0.0384
    poni2: float = 0.0384
    rot1: float = 0.0
    rot2: float = 0.0
    rot3: float = 0.0
    wavelength: float = 1.0e-10
    pixel1: float = 75e-6
    pixel2: float = 75e-6
    orientation: int = 3

    def __post_init__(self) -> None:
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation {self.orientation!r} not supported; pyFAI's 1 to 4 are")

    def _index(self, n: int, flipped: bool) -> np.ndarray:
        index = np.arange(n, dtype=np.float64)
        return index[::-1].copy() if flipped else index

    def _lab(
        self, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pixel-centre offsets from the PONI (d1, d2) and lab coordinates (t1, t2, t3), as pyFAI."""
        flip1, flip2 = FLIPPED_AXES[self.orientation]
        p1 = (self._index(shape[0], flip1) + 0.5) * self.pixel1 - self.poni1
        p2 = (self._index(shape[1], flip2) + 0.5) * self.pixel2 - self.poni2
        d1, d2 = np.meshgrid(p1, p2, indexing="ij")
        c1, c2, c3 = math.cos(self.rot1), math.cos(self.rot2), math.cos(self.rot3)
        s1, s2, s3 = math.sin(self.rot1), math.sin(self.rot2), math.sin(self.rot3)
        l3 = self.dist
        t1 = d1 * c2 * c3 + d2 * (c3 * s1 * s2 - c1 * s3) - l3 * (c1 * c3 * s2 + s1 * s3)
        t2 = d1 * c2 * s3 + d2 * (c1 * c3 + s1 * s2 * s3) - l3 * (-c3 * s1 + c1 * s2 * s3)
        t3 = d1 * s2 - d2 * c2 * s1 + l3 * c1 * c2
        return d1, d2, t1, t2, t3

    def tth(self, shape: tuple[int, int]) -> np.ndarray:
        """Scattering angle 2theta (radians) at each pixel centre, as pyFAI computes it."""
        _, _, t1, t2, t3 = self._lab(shape)
        out: np.ndarray = np.arctan2(np.sqrt(t1 * t1 + t2 * t2), t3)
        return out

    def q_nm(self, shape: tuple[int, int]) -> np.ndarray:
        """Momentum transfer q in nm^-1 at each pixel centre."""
        out: np.ndarray = 4.0e-9 * math.pi / self.wavelength * np.sin(self.tth(shape) / 2.0)
        return out

    def chi(self, shape: tuple[int, int]) -> np.ndarray:
        """Azimuthal angle chi (radians, in ]-pi, pi], discontinuity at pi) at each pixel centre."""
        _, _, t1, t2, _ = self._lab(shape)
        out: np.ndarray = np.arctan2(t1, t2)
        return out

    def solid_angle(self, shape: tuple[int, int]) -> np.ndarray:
        """Solid angle of each pixel relative to a pixel at the PONI: cos(incidence)^3, as pyFAI."""
        d1, d2, _, _, _ = self._lab(shape)
        cos_incidence = self.dist / np.sqrt(self.dist * self.dist + (d1 * d1 + d2 * d2))
        out: np.ndarray = cos_incidence**3
        return out

    def polarization(self, shape: tuple[int, int], factor: float, axis_offset: float = 0.0) -> np.ndarray:
        """pyFAI's polarisation correction (float32, as pyFAI stores it); factor in [-1, 1], 0 = random."""
        cos2_tth = np.cos(self.tth(shape)) ** 2
        chi = self.chi(shape)
        pol = 0.5 * (1.0 + cos2_tth - factor * np.cos(2.0 * (chi + axis_offset)) * (1.0 - cos2_tth))
        out: np.ndarray = pol.astype(np.float32)
        return out

    def radial(self, shape: tuple[int, int], unit: str) -> tuple[np.ndarray, float]:
        """Radial position of each pixel in the unit's internal scale, and the factor to the unit.

        pyFAI bins 2theta in radians and q in nm^-1 and only scales the bin centres, so we do too.
        """
        if unit == "2th_deg":
            return self.tth(shape), 180.0 / math.pi
        if unit == "2th_rad":
            return self.tth(shape), 1.0
        if unit == "q_nm^-1":
            return self.q_nm(shape), 1.0
        if unit == "q_A^-1":
            return self.q_nm(shape), 0.1
        raise ValueError(f"unit {unit!r} not supported; use one of {', '.join(RADIAL_UNITS)}")


RADIAL_UNITS = ("2th_deg", "2th_rad", "q_nm^-1", "q_A^-1")


RADIAL_UNITS = ("2th_deg", "2th_rad", "q_nm^-1", "q_A^-1")


def direct_beam(geometry: Geometry) -> tuple[float, float]:
    """Where the direct beam meets the detector plane, (x, y) in pixels, as pyFAI's ``getFit2D()``.

    x runs along the fast axis (pyFAI's axis 2), y along the slow axis (axis 1), both in the sensor's
    own frame (orientation 3), from the outer corner of pixel (0, 0): the centre of pixel (i, j) is at
    (j + 0.5, i + 0.5). Tilts are included (``pyFAI.geometry.fit2d.convert_to_Fit2d``): with no tilt the
    direct beam hits the PONI; a tilt moves it by dist * tan(tilt) along the tilt plane.
    """
    g = geometry
    cos_tilt = math.cos(g.rot1) * math.cos(g.rot2)
    sin_tilt = math.sqrt(max(0.0, 1.0 - cos_tilt * cos_tilt))
    if sin_tilt == 0.0:
        return g.poni2 / g.pixel2, g.poni1 / g.pixel1
    tan_tilt = sin_tilt / cos_tilt
    cos_tpr = max(-1.0, min(1.0, -math.cos(g.rot2) * math.sin(g.rot1) / sin_tilt))
    sin_tpr = math.sin(g.rot2) / sin_tilt
    x = (g.poni2 + g.dist * tan_tilt * cos_tpr) / g.pixel2
    if math.degrees(math.acos(cos_tilt)) < 1e-5:  # pyFAI's own cut-off for "no tilt"
        return x, g.poni1 / g.pixel1
    return x, (g.poni1 + g.dist * tan_tilt * sin_tpr) / g.pixel1


def direct_beam_in_image(geometry: Geometry, shape: tuple[int, int]) -> tuple[float, float]:
    """`direct_beam` in the *image*'s pixels (x along its fast axis, y along its slow axis, from the outer
    corner of image pixel (0, 0)): mirrored along the axes the detector's orientation flips (pyFAI's
    orientations 1, 2 and 4 number the pixels against the sensor's own axes)."""
    x, y = direct_beam(geometry)
    flip1, flip2 = FLIPPED_AXES[geometry.orientation]
    return (shape[1] - x if flip2 else x), (shape[0] - y if flip1 else y)


def direct_distance(geometry: Geometry) -> float:
    """Sample to where the direct beam meets the detector plane, in metres (pyFAI's ``getFit2D()``
    ``directDist``, in mm there): the PONI distance over the cosine of the tilt."""
    return geometry.dist / (math.cos(geometry.rot1) * math.cos(geometry.rot2))


# ---- PONI files -------------------------------------------------------------------------------------

PONI_VERSIONS = (1.0, 2.0, 2.1, 3.0)


class PoniError(ValueError):
    """A ``.poni`` file is malformed or asks for something we do not support; ``key`` names the entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Poni:
    """What a ``.poni`` file says: the geometry, the detector it names, and the file's version.

    ``detector.max_shape`` is None when the file leaves the shape open (pyFAI's generic ``Detector``
    without ``max_shape``); then any frame shape is accepted.
    """

    geometry: Geometry
    detector: DetectorModel
    version: float
    sensor_material: str | None = None
    sensor_thickness: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int] | None:
        return self.detector.max_shape

    def mask(self) -> np.ndarray | None:
        """The named detector's own mask (module gaps; True = excluded), or None if it has none."""
        return self.detector.mask()

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Refuse frames of another shape than the detector the file names."""
        if self.shape is not None and tuple(self.shape) != tuple(shape):
            raise PoniError(
                "Detector",
                f"{self.detector.name} is {tuple(self.shape)} pixels (slow, fast), frames are {tuple(shape)}",
            )


#: bounds far beyond any beamline, so that no axis is computed from infinities (as edge's settings):
#: distance up to 1 km, the PONI within 100 m, pixels (and sensors) up to 10 cm, wavelength up to 1 um
LIMITS = {"distance": 1000.0, "poni1": 100.0, "poni2": 100.0, "wavelength": 1e-6, "pixel": 0.1}
#: and below: a distance of 0.1 mm, a wavelength of 0.1 pm (12 MeV photons; 300 kV electrons are 2 pm),
#: pixels of 10 nm. A distance of 1e-300 m put every pixel at 2theta = 90 degrees, in 2 of 1000 bins
LOWEST = {"distance": 1e-4, "wavelength": 1e-13, "pixel": 1e-8}
#: rotations within a turn either way (radians): sin and cos of 1e300 are noise, not an angle
ROTATION_LIMIT = 2 * math.pi


def _float(values: dict[str, tuple[str, str]], key: str, *, positive: bool = False) -> float:
    if key not in values:
        raise PoniError(_SPELLING.get(key, key), "missing")
    spelled, text = values[key]
    if "_" in text:  # Python's float reads "0_08" as 8 (digit grouping): a typo of 0.08 taken for 8 m
        raise PoniError(spelled, f"{text!r} is not a plain number (an underscore)")
    try:
        value = float(text)
    except ValueError:
        raise PoniError(spelled, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise PoniError(spelled, f"{text!r} is not finite")
    if positive and value <= 0:
        raise PoniError(spelled, f"{text!r} must be > 0")
    kind = "pixel" if key.startswith("pixelsize") else key
    limit = LIMITS.get(kind)
    if limit is not None and abs(value) > limit:
        raise PoniError(spelled, f"{text!r} is beyond any beamline (at most {limit:g} m)")
    lowest = LOWEST.get(kind)
    if lowest is not None and abs(value) < lowest:
        raise PoniError(spelled, f"{text!r} is below any beamline (at least {lowest:g} m)")
    if key.startswith("rot") and abs(value) > ROTATION_LIMIT:
        raise PoniError(spelled, f"{text!r} is more than a turn (at most 2 pi = {ROTATION_LIMIT:.6f} rad)")
    return value


_SPELLING = {  # how pyFAI writes the keys, for messages about a missing one
    "distance": "Distance",
    "poni1": "Poni1",
    "poni2": "Poni2",
    "rot1": "Rot1",
    "rot2": "Rot2",
    "rot3": "Rot3",
    "wavelength": "Wavelength",
    "detector": "Detector",
    "detector_config": "Detector_config",
    "pixelsize1": "PixelSize1",
    "pixelsize2": "PixelSize2",
}


def _pixel(config: dict[str, Any], key: str, spelled: str) -> float | None:
    if config.get(key) is None:
        return None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PoniError(spelled, f"{key} = {value!r} is not a number")
    if isinstance(value, str) and "_" in value:  # (as `_float`: "1_0e-5" read as 1e-4)
        raise PoniError(spelled, f"{key} = {value!r} is not a plain number (an underscore)")
    try:
        number = float(value)
    except ValueError:
        raise PoniError(spelled, f"{key} = {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise PoniError(spelled, f"{key} = {value!r} must be a positive size in metres")
    if number > LIMITS["pixel"]:
        raise PoniError(spelled, f"{key} = {value!r} is beyond any detector (at most {LIMITS['pixel']:g} m)")
    if number < LOWEST["pixel"]:
        raise PoniError(spelled, f"{key} = {value!r} is below any detector (at least {LOWEST['pixel']:g} m)")
    return number


def _detector(
    name: str | None, config: dict[str, Any], spelled: str, name_key: str
) -> tuple[DetectorModel, float, float]:
    """The detector a file names, with the pixel size pyFAI would use for it."""
    p1 = _pixel(config, "pixel1", spelled)
    p2 = _pixel(config, "pixel2", spelled)
    shape: tuple[int, int] | None = None
    if config.get("max_shape") is not None:
        raw = config["max_shape"]
        if (
            not isinstance(raw, (list, tuple))
            or len(raw) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in raw)
        ):
            raise PoniError(spelled, f"max_shape = {raw!r} must be two positive integers (slow, fast)")
        shape = (int(raw[0]), int(raw[1]))
    for key in ("splineFile", "splinefile"):
        if config.get(key):
            raise PoniError(spelled, f"{key} = {config[key]!r}: spline distortion is not supported")
    binning = config.get("binning")
    if binning is not None and binning not in ([1, 1], (1, 1), 1):
        # pyFAI bins the pixels (and the mask, the shape) itself: read here as the unbinned detector,
        # the geometry would be another one, without a word
        raise PoniError(spelled, f"binning = {binning!r}: binned detectors are not supported")
    if name is None or name in ("None", "Detector"):
        if p1 is None or p2 is None:
            raise PoniError(spelled, "a generic Detector needs pixel1 and pixel2 (metres)")
        return DetectorModel("Detector", p1, p2, shape, force_pixel=False), p1, p2
    model = DETECTORS.get(name) or DETECTORS.get(_DETECTOR_ALIASES.get(_alias(str(name)), ""))
    if model is None:
        raise PoniError(
            name_key,
            f"{name!r} is not a detector we model (flat, uniform pixels, known mask); write the file with"
            " pyFAI's generic Detector (pixel1, pixel2, max_shape) and give its mask as reduction.mask_file",
        )
    if model.name in _TAKES_NO_PIXELS:
        # pyFAI's class has no pixel1, pixel2 or max_shape: it logs them as left-over and uses its own,
        # so a hand-edited file's values made another geometry here than in pyFAI (an outside probe: a
        # generic Detector's config under "Detector: FReLoN", radial axis 43% off pyFAI's)
        given = {"pixel1": p1, "pixel2": p2, "max_shape": shape}
        own = {"pixel1": model.pixel1, "pixel2": model.pixel2, "max_shape": model.max_shape}
        ignored = [key for key, value in given.items() if value is not None and value != own[key]]
        if ignored:
            raise PoniError(
                spelled,
                f"{', '.join(ignored)} given for {name}, whose pyFAI class takes none (pyFAI ignores them and"
                f" uses {model.pixel1!r} x {model.pixel2!r} m, {model.max_shape}): remove them, or write the"
                " file with pyFAI's generic Detector",
            )
    if config.get("module_size") is not None and tuple(config["module_size"]) != model.module_size:
        raise PoniError(spelled, f"module_size = {config['module_size']!r} differs from {name}'s own")
    pixel1 = model.pixel1 if p1 is None else p1
    pixel2 = model.pixel2 if p2 is None else p2
    if model.force_pixel and (
        not math.isclose(pixel1, model.pixel1, rel_tol=1e-9)
        or not math.isclose(pixel2, model.pixel2, rel_tol=1e-9)
    ):
        raise PoniError(
            spelled,
            f"pixel {pixel1!r} x {pixel2!r} m differs from {name}'s {model.pixel1!r} x {model.pixel2!r} m:"
            " binned detectors are not supported",
        )
    if shape is not None and shape != model.max_shape:
        model = dataclasses.replace(model, max_shape=shape)
    return model, pixel1, pixel2


#: named detectors whose pyFAI class takes no pixel size or shape (pyFAI ignores them in its config)
_TAKES_NO_PIXELS = frozenset({"FReLoN"})


def _orientation(config: dict[str, Any], spelled: str) -> int:
    value = config.get("orientation", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoniError(spelled, f"orientation = {value!r} must be an integer, 1 to 4")
    if value == 0:  # pyFAI: "Unspecified", read as the detector's default, 3 for every one we model
        return 3
    if value in (5, 6, 7, 8):
        raise PoniError(
            spelled,
            f"orientation = {value}: transposed orientations (5-8) are not supported, by pyFAI either",
        )
    if value not in ORIENTATIONS:
        raise PoniError(spelled, f"orientation = {value!r} not supported; 1 to 4 are")
    return value


def _sensor(config: dict[str, Any], spelled: str) -> tuple[str | None, float | None]:
    sensor = config.get("sensor")
    if not sensor:
        return None, None
    if not isinstance(sensor, dict):
        raise PoniError(spelled, f"sensor = {sensor!r} must be an object with material and thickness")
    material = sensor.get("material")
    thickness = sensor.get("thickness")
    if thickness is not None:
        thickness = _pixel(sensor, "thickness", spelled)
    return (None if material is None else str(material)), thickness


def parse_poni(text: str) -> Poni:
    """Parse the text of a pyFAI ``.poni`` file, versions 1, 2, 2.1 and 3 (without parallax).

    Read as pyFAI's ``PoniFile.read_from_file`` reads it: ``key: value`` lines, keys case-insensitive,
    the last one wins, ``#`` starts a comment (``# Calibrant: ...`` and ``# Image: ...`` are kept in
    ``extra``). Anything malformed or unsupported raises PoniError naming the key.
    """
    values: dict[str, tuple[str, str]] = {}
    extra: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            if key.strip().capitalize() in ("Calibrant", "Image"):
                extra[key.strip().capitalize()] = value.strip()
            continue
        key, _, value = line.partition(":")
        values[key.strip().lower()] = (key.strip(), value.strip())
    if not values.keys() & {"distance", "poni1", "poni2", "wavelength", "detector", "poni_version"}:
        # an empty file, or another kind of file: say that, not what its first missing key would be
        raise PoniError(
            "file", "not a pyFAI .poni file: none of Distance, Poni1, Poni2, Wavelength, Detector"
        )

    version = 1.0
    if "poni_version" in values:
        version = _float(values, "poni_version")
    config: dict[str, Any] = {}
    config_key = "Detector_config"
    if "detector_config" in values:
        config_key, text_config = values["detector_config"]
        try:
            config = json.loads(text_config)
        except ValueError as error:
            raise PoniError(config_key, f"not valid JSON ({error})") from None
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise PoniError(config_key, f"{text_config!r} is not a JSON object")
        version = max(version, 2.1 if "orientation" in config else 2.0)
    if "parallax" in values:
        version = max(version, 3.0)
    if version not in PONI_VERSIONS:
        spelled = values.get("poni_version", ("poni_version", ""))[0]
        raise PoniError(
            spelled,
            f"version {version:g} not supported; we read {', '.join(f'{v:g}' for v in PONI_VERSIONS)}",
        )
    if "parallax" in values:
        spelled, flag = values["parallax"]
        if flag.strip().lower() == "true":
            raise PoniError(
                spelled, "True: pyFAI's parallax correction is not supported; calibrate without it"
            )
        if flag.strip().lower() != "false":
            raise PoniError(spelled, f"{flag!r} must be True or False")

    name_key, name = values.get("detector", ("Detector", None))
    if version >= 2.0 and name is None:
        raise PoniError("Detector", f"missing; a version {version:g} file names its detector")
    if version == 1.0:
        for key in ("pixelsize1", "pixelsize2"):
            if key in values:
                config[key.replace("size", "")] = _float(values, key, positive=True)
        if "splinefile" in values and values["splinefile"][1].lower() not in ("", "none"):
            raise PoniError(values["splinefile"][0], "spline distortion is not supported")
        config_key = "PixelSize1" if name in (None, "None", "Detector") else name_key
    detector, pixel1, pixel2 = _detector(name, config, config_key, name_key)
    material, thickness = _sensor(config, config_key)

    if "distance" not in values and "dist" in values:
        values["distance"] = values["dist"]
    geometry = Geometry(
        dist=_float(values, "distance", positive=True),
        poni1=_float(values, "poni1"),
        poni2=_float(values, "poni2"),
        rot1=_float(values, "rot1"),
        rot2=_float(values, "rot2"),
        rot3=_float(values, "rot3"),
        wavelength=_float(values, "wavelength", positive=True),
        pixel1=pixel1,
        pixel2=pixel2,
        orientation=_orientation(config, config_key),
    )
    return Poni(geometry, detector, version, material, thickness, extra)


def read_poni_file(path: str | Path) -> Poni:
    """Read a pyFAI ``.poni`` file; see parse_poni. An unreadable file, or one larger than
    `MAX_PONI_BYTES` (a PONI file is a few hundred bytes: a larger one is not one), raises PoniError too."""
    return read_poni_bytes(path)[0]


def read_poni_bytes(path: str | Path) -> tuple[Poni, bytes]:
    """`read_poni_file`, and the bytes it read: what identifies the calibration (its checksum) is then
    the file the geometry came from, even when the file is replaced meanwhile."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PONI_BYTES + 1)
        if len(data) > MAX_PONI_BYTES:
            raise PoniError("file", f"{str(path)!r} is larger than {MAX_PONI_BYTES} bytes: not a PONI file")
        text = data.decode()
    except (OSError, UnicodeDecodeError) as error:
        raise PoniError("file", f"cannot read {str(path)!r} ({error})") from None
    return parse_poni(text), data


#: the largest file read as a PONI file (pyFAI's are a few hundred bytes, with Detector_config a few KiB)
MAX_PONI_BYTES = 1 << 20


def read_poni(path: str | Path) -> Geometry:
    """The geometry in a pyFAI ``.poni`` file (versions 1, 2, 2.1 and 3); see read_poni_file."""
    return read_poni_file(path).geometry


def _alias(name: str) -> str:
    """A detector name as pyFAI's factory matches it: case, spaces, ``_`` and ``-`` do not count
    (``pilatus1m`` and ``Pilatus 1M`` are its ``Pilatus1M``)."""
    return "".join(c for c in name.lower() if c not in " _-")


_DETECTOR_ALIASES = {_alias(known): known for known in DETECTORS}


def poni_text(geometry: Geometry, shape: tuple[int, int]) -> str:
    """``geometry`` as a PONI file (version 2.1, a generic pyFAI ``Detector`` of this pixel size, shape
    and orientation) that ``pyFAI.load`` and :func:`read_poni_file` read back to the same geometry."""
    g = geometry
    config = {
        "pixel1": g.pixel1,
        "pixel2": g.pixel2,
        "max_shape": [int(shape[0]), int(shape[1])],
        "orientation": int(g.orientation),
    }
    lines = [
        "# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis",
        "poni_version: 2.1",
        "Detector: Detector",
        f"Detector_config: {json.dumps(config)}",
        f"Distance: {g.dist!r}",
        f"Poni1: {g.poni1!r}",
        f"Poni2: {g.poni2!r}",
        f"Rot1: {g.rot1!r}",
        f"Rot2: {g.rot2!r}",
        f"Rot3: {g.rot3!r}",
        f"Wavelength: {g.wavelength!r}",
    ]
    return "\n".join(lines) + "\n"
