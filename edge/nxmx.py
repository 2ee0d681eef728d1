"""The NXmx description of a pyFAI geometry, both ways: write it into a file, rebuild the PONI from it.

Frames (NeXus/McStas lab frame): z along the beam, y up, x = y x z (horizontal, to the left looking
downstream); the sample at the origin. pyFAI's lab frame (t1, t2, t3) is slow-axis up, fast-axis to the
right looking downstream, beam along t3 (its orientation 3: "origin at the bottom left when looking from
the sample"), so x = -t2, y = t1, z = t3. With that mapping, an orientation-2 image (origin top left,
Dioptas and DECTRIS) gets fast = (-1, 0, 0) and slow = (0, -1, 0), DECTRIS's own vectors.

The detector's ``depends_on`` chain, applied to a point of the detector plane (before rotation, in
metres, the PONI at the origin):

    module_offset (image origin corner) -> distance (translation +z by ``dist``)
    -> rot1 (rotation about -y) -> rot2 (about +x) -> rot3 (about +z) -> "."

which is pyFAI's ``t = R3 R2 R1 (d1, d2, dist)``, one NeXus transformation per pyFAI parameter, values in
metres and radians. ``fast_pixel_direction`` and ``slow_pixel_direction`` are translations of one pixel
along the image's fast and slow axes, mirrored where pyFAI's orientation mirrors them.

Pixel-origin convention (as Fit2D, pyFAI's ``getFit2D()`` and DIALS): the module offset is the position
of the *outer corner* of image pixel (0, 0); pixel (i, j) covers ``[j, j + 1) x [i, i + 1)`` in pixel
coordinates and its centre is at ``(j + 0.5, i + 0.5)``. ``beam_center_x``/``beam_center_y`` are the
direct-beam position (where the beam axis meets the detector plane, tilts included) in those pixel
coordinates of the stored image, x along the fast axis; for pyFAI's native orientation 3 they are
exactly ``getFit2D()``'s ``centerX``/``centerY``, for the other orientations the mirrored axis reads
``size - centre``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from kernels import Geometry, direct_beam_in_image, poni_text

LAB_FROM_PYFAI = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
"""(x, y, z) in the NeXus frame = LAB_FROM_PYFAI @ (t1, t2, t3) in pyFAI's."""

FLIPPED_AXES = {1: (True, True), 2: (True, False), 3: (False, False), 4: (False, True)}
ORIENTATION_OF_FLIPS = {flips: orientation for orientation, flips in FLIPPED_AXES.items()}

#: The pyFAI rotations as NeXus rotations: name, axis in the NeXus frame (sign folded in), pyFAI name.
ROTATIONS = (("rot1", (0.0, -1.0, 0.0)), ("rot2", (1.0, 0.0, 0.0)), ("rot3", (0.0, 0.0, 1.0)))


@dataclass(frozen=True)
class NxmxGeometry:
    """What the NXmx detector and module groups say about one geometry, in the NeXus frame."""

    distance: float  # metres, along +z before the rotations
    rotations: tuple[tuple[str, tuple[float, float, float], float], ...]  # (name, axis, radians)
    module_offset: tuple[float, float, float]  # metres: PONI -> outer corner of image pixel (0, 0)
    fast_vector: tuple[float, float, float]
    slow_vector: tuple[float, float, float]
    fast_pixel_size: float
    slow_pixel_size: float
    beam_center_x: float  # image pixels, corner origin, along the fast axis
    beam_center_y: float


def nxmx_geometry(geometry: Geometry, shape: tuple[int, int]) -> NxmxGeometry:
    """The NXmx transformations, module vectors and direct-beam centre of a pyFAI geometry."""
    g = geometry
    flip1, flip2 = FLIPPED_AXES[g.orientation]
    # the image origin's corner and the image axes, in pyFAI's detector frame (d1, d2) before rotation
    origin1 = shape[0] * g.pixel1 if flip1 else 0.0
    origin2 = shape[1] * g.pixel2 if flip2 else 0.0
    offset = LAB_FROM_PYFAI @ np.array([origin1 - g.poni1, origin2 - g.poni2, 0.0])
    slow = LAB_FROM_PYFAI @ np.array([-1.0 if flip1 else 1.0, 0.0, 0.0])
    fast = LAB_FROM_PYFAI @ np.array([0.0, -1.0 if flip2 else 1.0, 0.0])
    x, y = direct_beam_in_image(g, shape)
    return NxmxGeometry(
        distance=g.dist,
        rotations=tuple((name, axis, float(getattr(g, name))) for name, axis in ROTATIONS),
        module_offset=_tuple(offset),
        fast_vector=_tuple(fast),
        slow_vector=_tuple(slow),
        fast_pixel_size=g.pixel2,
        slow_pixel_size=g.pixel1,
        beam_center_x=x,
        beam_center_y=y,
    )


@dataclass(frozen=True)
class CrystfelPanel:
    """One flat panel as CrystFEL's geometry file describes it (``man crystfel_geometry``).

    CrystFEL's lab frame is the NeXus one (+z along the beam, +y up, +x completing a right-handed set), so
    the panel is the NXmx chain evaluated: ``fs``/``ss`` are the image's fast and slow axes in the lab,
    one pixel long in units of ``1 / res``, tilts included (a z component where the panel is tilted);
    ``corner_x``/``corner_y`` place the outer corner of pixel (0, 0) relative to the beam axis, in those
    pixels; ``clen`` is that corner's z, in metres (so ``coffset`` is 0).
    """

    fs: tuple[float, float, float]
    ss: tuple[float, float, float]
    corner_x: float
    corner_y: float
    clen: float
    res: float  # pixels per metre along the fast axis (1 / fast pixel size)


def crystfel_panel(geometry: Geometry, shape: tuple[int, int]) -> CrystfelPanel:
    """The CrystFEL panel of a pyFAI geometry: the NXmx chain (module offset, distance, rot1-3) applied."""
    nx = nxmx_geometry(geometry, shape)
    rotation = np.identity(3)
    for _, axis, angle in nx.rotations:  # rot1 first: the chain is rot3(rot2(rot1(p)))
        rotation = rotation_matrix(np.array(axis), angle) @ rotation
    corner = rotation @ (np.array(nx.module_offset) + np.array([0.0, 0.0, nx.distance]))
    res = 1.0 / nx.fast_pixel_size
    fs = rotation @ np.array(nx.fast_vector)
    ss = rotation @ np.array(nx.slow_vector) * (nx.slow_pixel_size * res)  # non-square pixels: longer ss
    return CrystfelPanel(
        fs=_tuple(fs),
        ss=_tuple(ss),
        corner_x=float(corner[0] * res) + 0.0,
        corner_y=float(corner[1] * res) + 0.0,
        clen=float(corner[2]),
        res=res,
    )


def rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """The 3x3 right-handed rotation by ``angle`` radians about the unit vector ``axis`` (Rodrigues)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.identity(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _tuple(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]) + 0.0, float(v[1]) + 0.0, float(v[2]) + 0.0)  # + 0.0: no negative zeros


def write_detector_geometry(
    detector: Any, module: Any, geometry: Geometry, shape: tuple[int, int]
) -> NxmxGeometry:
    """Write the transformations, depends_on, module vectors and beam centre into h5py groups."""
    nx = nxmx_geometry(geometry, shape)
    path = detector.name
    transformations = detector.create_group("transformations")
    transformations.attrs["NX_class"] = "NXtransformations"
    names = ["distance", *(name for name, _, _ in nx.rotations)]
    for index, name in enumerate(names):
        if name == "distance":
            ds = transformations.create_dataset(name, data=nx.distance)
            ds.attrs["transformation_type"] = "translation"
            ds.attrs["vector"] = np.array([0.0, 0.0, 1.0])
            ds.attrs["units"] = "m"
        else:
            _, axis, angle = next(r for r in nx.rotations if r[0] == name)
            ds = transformations.create_dataset(name, data=angle)
            ds.attrs["transformation_type"] = "rotation"
            ds.attrs["vector"] = np.array(axis)
            ds.attrs["units"] = "rad"
        ds.attrs["offset"] = np.zeros(3)
        # NeXus gives every ``offset`` its ``offset_units``: a length, also for a rotation (whose
        # ``units`` are an angle)
        ds.attrs["offset_units"] = "m"
        following = names[index + 1] if index + 1 < len(names) else None
        ds.attrs["depends_on"] = "." if following is None else f"{path}/transformations/{following}"
    detector.create_dataset("depends_on", data=f"{path}/transformations/distance")

    module.create_dataset("data_origin", data=np.array([0, 0], dtype=np.int32))
    module.create_dataset("data_size", data=np.array(shape, dtype=np.int32))
    offset = np.array(nx.module_offset)
    norm = float(np.linalg.norm(offset))
    ds = module.create_dataset("module_offset", data=norm)
    ds.attrs["transformation_type"] = "translation"
    ds.attrs["vector"] = offset / norm if norm > 0 else np.array([1.0, 0.0, 0.0])
    ds.attrs["offset"] = np.zeros(3)
    ds.attrs["offset_units"] = "m"
    ds.attrs["units"] = "m"
    ds.attrs["depends_on"] = f"{path}/transformations/distance"
    for name, size, vector, depends_on in (
        ("slow_pixel_direction", nx.slow_pixel_size, nx.slow_vector, f"{module.name}/module_offset"),
        # both on the module offset, as DECTRIS writes them: a chain through the other pixel direction
        # would add that direction's one-pixel translation (dxtbx takes the panel origin from this chain)
        ("fast_pixel_direction", nx.fast_pixel_size, nx.fast_vector, f"{module.name}/module_offset"),
    ):
        ds = module.create_dataset(name, data=size)
        ds.attrs["transformation_type"] = "translation"
        ds.attrs["vector"] = np.array(vector)
        ds.attrs["offset"] = np.zeros(3)
        ds.attrs["offset_units"] = "m"
        ds.attrs["units"] = "m"
        ds.attrs["depends_on"] = depends_on
    return nx


# ---- reading it back ---------------------------------------------------------------------------------

_LENGTH = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "microns": 1e-6, "nm": 1e-9, "cm": 1e-2}
_ANGLE = {"rad": 1.0, "radian": 1.0, "radians": 1.0, "deg": math.pi / 180, "degree": math.pi / 180}


def _attr(ds: Any, name: str, default: Any = None) -> Any:
    value = ds.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _matrix(ds: Any) -> np.ndarray:
    """The 4x4 homogeneous matrix of one NeXus transformation (offset applied after it)."""
    kind = _attr(ds, "transformation_type")
    vector = np.asarray(_attr(ds, "vector"), dtype=np.float64)
    vector = vector / np.linalg.norm(vector)
    value = float(np.ravel(ds[()])[0])
    units = str(_attr(ds, "units", "m" if kind == "translation" else "rad"))
    out = np.identity(4)
    if kind == "translation":
        out[:3, 3] = value * _LENGTH[units] * vector
    elif kind == "rotation":
        out[:3, :3] = rotation_matrix(vector, value * _ANGLE[units])
    else:
        raise ValueError(f"{ds.name}: transformation_type {kind!r} is neither translation nor rotation")
    offset = np.asarray(_attr(ds, "offset", np.zeros(3)), dtype=np.float64)
    # in its ``offset_units``; a file without them: a translation's own units, metres for a rotation
    offset_units = str(_attr(ds, "offset_units", units if kind == "translation" else "m"))
    shift = np.identity(4)
    shift[:3, 3] = offset * _LENGTH[offset_units]
    return shift @ out


def chain_matrix(h5: Any, path: str) -> np.ndarray:
    """Compose the depends_on chain that starts at ``path`` into one 4x4 matrix (object -> lab)."""
    out = np.identity(4)
    seen: set[str] = set()
    while path and path != ".":
        if path in seen:
            raise ValueError(f"depends_on loops at {path}")
        seen.add(path)
        ds = h5[path]
        out = _matrix(ds) @ out
        path = _attr(ds, "depends_on", ".")
    return out


def pyfai_from_nxmx(h5: Any, detector_path: str = "/entry/instrument/detector") -> dict[str, Any]:
    """Rebuild pyFAI's PONI (dist, poni1, poni2, rot1-3, pixel1-2, orientation, wavelength) from NXmx.

    Uses only the detector's transformation chain, its NXdetector_module and the beam's wavelength.
    Valid for tilts under 90 degrees, where the sensor's own axes are the ones nearest pyFAI's.
    """
    detector = h5[detector_path]
    module = next(
        detector[name] for name in detector if _attr(detector[name], "NX_class") == "NXdetector_module"
    )
    shape = tuple(int(n) for n in module["data_size"][()])
    fast_ds, slow_ds = module["fast_pixel_direction"], module["slow_pixel_direction"]
    to_lab = chain_matrix(h5, _attr(slow_ds, "depends_on"))  # module offset, detector chain
    corner = to_lab[:3, 3]
    rotation = to_lab[:3, :3]
    pixel2 = float(fast_ds[()]) * _LENGTH[str(_attr(fast_ds, "units", "m"))]
    pixel1 = float(slow_ds[()]) * _LENGTH[str(_attr(slow_ds, "units", "m"))]
    fast_t = LAB_FROM_PYFAI.T @ (rotation @ _unit(_attr(fast_ds, "vector")))
    slow_t = LAB_FROM_PYFAI.T @ (rotation @ _unit(_attr(slow_ds, "vector")))
    corner_t = LAB_FROM_PYFAI.T @ corner
    flip1, flip2 = bool(slow_t[0] < 0), bool(fast_t[1] < 0)
    e1 = -slow_t if flip1 else slow_t
    e2 = -fast_t if flip2 else fast_t
    e3 = np.cross(e1, e2)
    origin = (
        corner_t + (shape[0] * pixel1 * slow_t if flip1 else 0) + (shape[1] * pixel2 * fast_t if flip2 else 0)
    )
    dist = float(np.dot(origin, e3))
    foot = dist * e3 - origin
    m = np.column_stack([e1, e2, e3])  # pyFAI: t = M (d1, d2, L); M = R3 R2 R1
    wavelength = h5[f"{detector.parent.name}/beam/incident_wavelength"]
    return {
        "dist": dist,
        "poni1": float(np.dot(foot, e1)),
        "poni2": float(np.dot(foot, e2)),
        "rot1": math.atan2(-m[2, 1], m[2, 2]),
        "rot2": math.asin(max(-1.0, min(1.0, m[2, 0]))),
        "rot3": math.atan2(m[1, 0], m[0, 0]),
        "pixel1": pixel1,
        "pixel2": pixel2,
        "orientation": ORIENTATION_OF_FLIPS[(flip1, flip2)],
        "wavelength": float(wavelength[()])
        * {"angstrom": 1e-10, "m": 1.0, "nm": 1e-9}[str(_attr(wavelength, "units", "angstrom"))],
        "shape": shape,
    }


def _unit(vector: Any) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    return v / np.linalg.norm(v)


def write_pyfai_poni(
    detector: h5py.Group, g: Geometry, shape: tuple[int, int], frames: tuple[int, int] | None = None
) -> None:
    """``detector/pyfai_poni``: the PONI parameters with their units, the detector's shape, and the
    whole as a PONI file pyFAI loads as it is. ``frames``: the frames' shape, when it may differ from the
    calibration's detector (``shape``): a note then says the geometry was not theirs (it was written
    relabelled with the frames' shape, a calibration pyFAI never saved: an outside probe)."""
    poni = detector.create_group("pyfai_poni")
    poni.attrs["NX_class"] = "NXcollection"
    if frames is not None and tuple(frames) != tuple(shape):
        poni.attrs["note"] = (
            f"this calibration is for a detector of {tuple(shape)}; these frames are {tuple(frames)}: it does"
            " not apply to them, and no product of the run used it"
        )
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
    # the detector's shape: pyFAI places an orientation other than 3 from it (without it, pyFAI's
    # Detector(orientation=2) gives other angles), and the whole as a PONI file pyFAI loads as it is
    poni.create_dataset("max_shape", data=np.asarray(shape, dtype=np.int64))
    poni.create_dataset("poni_file", data=poni_text(g, shape))
