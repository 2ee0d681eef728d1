"""NXmx as a crystallographer's tools read it, checked against nexusformat's validator and pyFAI.

* nexusformat's ``validate_application`` (what the ``nxvalidate`` CLI runs) against NXmx: no errors.
* The pyFAI geometry rebuilt from the NXmx fields alone (transformation chain, module, beam; not the
  ``pyfai_poni`` group) equals the source PONI within 1e-6 (metres, radians, absolute) on a tilted
  geometry, in every orientation. The rebuild is plain float64 linear algebra, so 1e-6 is loose; it is
  the issue's bound.
* The direct-beam centre equals pyFAI's ``getFit2D()`` centre within 0.01 px (orientation 3, pyFAI's
  native frame) and, in every orientation, the point where the beam axis meets the detector plane as the
  chain places it. Same formulas as pyFAI, so they agree to ~1e-9 px; 0.01 px is the issue's bound.
* Every pixel centre the chain places has pyFAI's 2theta and chi (1e-9 rad: float64 rounding of two
  different but equivalent compositions of the same rotations).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from edge.config import ReductionSettings
from edge.modes import ModeStage, RunContext
from edge.nxmx import LAB_FROM_PYFAI, chain_matrix, pyfai_from_nxmx
from edge.store import RunFileWriter, RunMetadata
from kernels import Geometry, compress_chunk, get_backend

pytest.importorskip("pyFAI")
from pyFAI.detectors import Detector
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

SHAPE = (48, 64)
TILTED = {"dist": 0.12, "poni1": 0.0021, "poni2": 0.0032, "rot1": 0.05, "rot2": -0.03, "rot3": 0.1}
SERIES = {"count_time": 0.0099, "frame_time": 0.01, "sensor_material": "Si", "sensor_thickness": 450e-6}


def _geometry(orientation: int = 3, **changes: float) -> Geometry:
    return Geometry(
        **{**TILTED, **changes}, wavelength=0.9e-10, pixel1=75e-6, pixel2=80e-6, orientation=orientation
    )


def _write(
    tmp_path: Path, geometry: Geometry, mask: np.ndarray | None = None, series: dict | None = None
) -> Path:
    meta = RunMetadata(
        geometry, "sim", 3, "2026-12-01T00:00:00+00:00", dict(SERIES if series is None else series), mask
    )
    raw = ModeStage(
        RunContext(get_backend("numpy"), geometry, SHAPE, 5, "2th_deg", ReductionSettings(mode="raw"))
    )
    writer = RunFileWriter(tmp_path, "run1", "run1_00000.h5", 0, SHAPE, "uint16", 4, raw, meta)
    for frame in range(3):
        writer.write(frame, compress_chunk(np.full(SHAPE, frame, np.uint16)), {})
    return writer.close().path


def test_gap_pixels_are_nxmx_bit_0_and_the_mask_file_s_bit_8(tmp_path: Path) -> None:
    """NXmx's pixel_mask: bit 0 is a gap (no sensor), bit 8 a user-defined mask; DIALS and XDS readers
    tell them apart, so the module gaps are not written as a user's choice."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10:12, :] = True  # module gaps (in the reduction's mask too)
    mask[0, 0] = True  # from a mask file
    gaps = np.zeros(SHAPE, dtype=bool)
    gaps[10:12, :] = True
    meta = RunMetadata(_geometry(3), "sim", 1, "2026-12-01T00:00:00+00:00", dict(SERIES), mask, gaps)
    raw = ModeStage(
        RunContext(get_backend("numpy"), _geometry(3), SHAPE, 5, "2th_deg", ReductionSettings(mode="raw"))
    )
    writer = RunFileWriter(tmp_path, "run1", "run1_00000.h5", 0, SHAPE, "uint16", 4, raw, meta)
    writer.write(0, compress_chunk(np.zeros(SHAPE, np.uint16)), {})
    with h5py.File(writer.close().path) as f:
        pixel_mask = f["entry/instrument/detector/pixel_mask"][()]
    assert (pixel_mask[gaps] == 1).all()
    assert pixel_mask[0, 0] == 256
    assert set(np.unique(pixel_mask)) == {0, 1, 256}


def _pyfai(g: Geometry) -> AzimuthalIntegrator:
    detector = Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=SHAPE, orientation=g.orientation)
    return AzimuthalIntegrator(
        dist=g.dist,
        poni1=g.poni1,
        poni2=g.poni2,
        rot1=g.rot1,
        rot2=g.rot2,
        rot3=g.rot3,
        wavelength=g.wavelength,
        detector=detector,
    )


@pytest.mark.parametrize("orientation", [3, 2])
def test_nxvalidate_reports_no_errors(tmp_path: Path, orientation: int) -> None:
    from nexusformat.nexus.validate import logger, validate_application

    mask = np.zeros(SHAPE, dtype=bool)
    mask[10:12, :] = True
    path = _write(tmp_path, _geometry(orientation), mask)
    logger.setLevel(logging.WARNING)
    warnings, errors = validate_application(str(path), application="NXmx")
    assert errors == 0
    # the rest are "recommended" fields we have no value for (time zone, beam size and profile, ...)
    assert warnings <= 8
    with h5py.File(path) as f:
        assert f.attrs["default"] == "entry" and f["entry"].attrs["default"] == "data"
        det = f["entry/instrument/detector"]
        assert det["count_time"][()] == 0.0099 and det["frame_time"][()] == 0.01
        assert det["sensor_material"][()] == b"Si" and det["sensor_thickness"][()] == 450e-6
        assert det["saturation_value"][()] == 65535
        np.testing.assert_array_equal(det["pixel_mask"][()] != 0, mask)
        assert set(np.unique(det["pixel_mask"][()])) == {0, 256}  # NXmx bit 8: user-defined mask
        assert list(f["entry/data"].attrs["axes"]) == ["frame_number", ".", "."]
        assert f["entry/sample/depends_on"][()] == b"/entry/sample/transformations/omega"
        assert f["entry/instrument/name"][()] and f["entry/source/name"][()]
        assert "pyfai_poni" in det  # pyFAI users keep their group, with the units of each value
        units = {k: v.attrs.get("units") for k, v in det["pyfai_poni"].items()}
        assert units == {
            **dict.fromkeys(("dist", "poni1", "poni2", "pixel1", "pixel2", "wavelength"), "m"),
            **dict.fromkeys(("rot1", "rot2", "rot3"), "rad"),
            "orientation": None,
            "max_shape": None,
            "poni_file": None,
        }
        # NeXus: an ``offset`` comes with its ``offset_units``; a translation's are its own units, a
        # rotation's a length (the validator does not check it, so it is checked here)
        offsets: dict[str, tuple[str, str | None, str | None]] = {}

        def visit(name: str, item: object) -> None:
            if isinstance(item, h5py.Dataset) and "offset" in item.attrs:
                a = item.attrs
                offsets[name] = (a["transformation_type"], a.get("units"), a.get("offset_units"))

        f.visititems(visit)
        assert {name.rsplit("/", 1)[-1] for name in offsets} == {
            *("distance", "rot1", "rot2", "rot3", "module_offset", "omega"),
            *("fast_pixel_direction", "slow_pixel_direction"),
        }
        for name, (kind, units, offset_units) in offsets.items():
            assert offset_units == (units if kind == "translation" else "m") == "m", name


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_geometry_rebuilt_from_nxmx_alone_equals_the_poni(tmp_path: Path, orientation: int) -> None:
    g = _geometry(orientation)
    with h5py.File(_write(tmp_path, g), "r+") as f:
        del f["entry/instrument/detector/pyfai_poni"]  # nothing of it may be used
    with h5py.File(tmp_path / "run1_00000.h5") as f:
        rebuilt = pyfai_from_nxmx(f)
    for key in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3", "pixel1", "pixel2", "wavelength"):
        assert abs(rebuilt[key] - getattr(g, key)) <= 1e-6, key
    assert rebuilt["orientation"] == orientation
    assert rebuilt["shape"] == SHAPE
    ai = AzimuthalIntegrator(
        **{k: rebuilt[k] for k in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength")},
        detector=Detector(rebuilt["pixel1"], rebuilt["pixel2"], max_shape=SHAPE, orientation=orientation),
    )
    np.testing.assert_allclose(
        ai.center_array(SHAPE, unit="2th_rad", scale=False),
        _pyfai(g).center_array(SHAPE, unit="2th_rad", scale=False),
        rtol=0,
        atol=1e-9,
    )


def _chain(f: h5py.File) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    module = f["entry/instrument/detector/module"]
    for name in ("fast_pixel_direction", "slow_pixel_direction"):  # not one through the other
        assert module[name].attrs["depends_on"] == f"{module.name}/module_offset"
    # the panel's origin from the fast direction's chain, as dxtbx (DIALS) takes it
    to_lab = chain_matrix(f, module["fast_pixel_direction"].attrs["depends_on"])
    fast = to_lab[:3, :3] @ module["fast_pixel_direction"].attrs["vector"]
    slow = to_lab[:3, :3] @ module["slow_pixel_direction"].attrs["vector"]
    return to_lab[:3, 3], fast, slow, module["fast_pixel_direction"][()], module["slow_pixel_direction"][()]


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
@pytest.mark.parametrize("rots", [(0.05, -0.03, 0.1), (0.0, 0.0, 0.0), (-0.3, 0.2, -1.2)])
def test_beam_centre_is_the_direct_beam(
    tmp_path: Path, orientation: int, rots: tuple[float, float, float]
) -> None:
    g = _geometry(orientation, rot1=rots[0], rot2=rots[1], rot3=rots[2])
    with h5py.File(_write(tmp_path, g)) as f:
        det = f["entry/instrument/detector"]
        x, y = float(det["beam_center_x"][()]), float(det["beam_center_y"][()])
        distance = float(det["distance"][()])
        corner, fast, slow, px2, px1 = _chain(f)
    f2d = _pyfai(g).getFit2D()
    if orientation == 3:  # pyFAI's native frame: the stored centre is getFit2D()'s
        assert abs(x - f2d["centerX"]) < 0.01 and abs(y - f2d["centerY"]) < 0.01
    # where the beam axis (0, 0, z) meets the plane the chain places: corner + a fast + b slow
    normal = np.cross(fast, slow)
    z = np.dot(corner, normal) / normal[2]
    a, b = np.linalg.lstsq(np.column_stack([fast, slow]), np.array([0.0, 0.0, z]) - corner, rcond=None)[0]
    assert abs(a / px2 - x) < 0.01 and abs(b / px1 - y) < 0.01
    # NXmx's distance is the sample's to the beam centre: along the beam, to that same point (an
    # outside probe found the PONI distance there, 0.25 m where pyFAI's directDist is 0.25016 m)
    assert distance == pytest.approx(z, rel=1e-9)
    assert distance == pytest.approx(f2d["directDist"] / 1000, rel=1e-9)


@pytest.mark.parametrize("orientation", [3, 2])
def test_the_stored_poni_file_loads_in_pyfai_as_the_run_s_geometry(tmp_path: Path, orientation: int) -> None:
    """``pyfai_poni/poni_file`` is a PONI file pyFAI loads as it is, with the detector's shape: without
    the shape an outside probe's ``Detector(orientation=2)`` gave other angles (68% off in intensity)."""
    import pyFAI

    from kernels import read_poni_file

    g = _geometry(orientation)
    with h5py.File(_write(tmp_path, g)) as f:
        poni = f["entry/instrument/detector/pyfai_poni"]
        text = poni["poni_file"][()].decode()
        assert tuple(poni["max_shape"][()]) == SHAPE
    path = tmp_path / "run.poni"
    path.write_text(text)
    ai = pyFAI.load(str(path))
    assert ai.detector.shape == SHAPE and ai.detector.orientation == orientation
    np.testing.assert_allclose(
        ai.center_array(unit="2th_rad", scale=False),
        _pyfai(g).center_array(SHAPE, unit="2th_rad", scale=False),
        rtol=0,
        atol=1e-12,
    )
    assert read_poni_file(path).geometry == g  # and ours reads it back to the same geometry


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_every_pixel_centre_has_pyfais_angles(tmp_path: Path, orientation: int) -> None:
    g = _geometry(orientation)
    with h5py.File(_write(tmp_path, g)) as f:
        corner, fast, slow, px2, px1 = _chain(f)
    i, j = np.meshgrid(np.arange(SHAPE[0]) + 0.5, np.arange(SHAPE[1]) + 0.5, indexing="ij")
    lab = corner + j[..., None] * px2 * fast + i[..., None] * px1 * slow  # pixel centres, corner origin
    t = lab @ LAB_FROM_PYFAI  # back to pyFAI's (t1, t2, t3)
    ai = _pyfai(g)
    tth = np.arctan2(np.hypot(t[..., 0], t[..., 1]), t[..., 2])
    chi = np.arctan2(t[..., 0], t[..., 1])
    np.testing.assert_allclose(tth, ai.center_array(SHAPE, unit="2th_rad", scale=False), rtol=0, atol=1e-9)
    np.testing.assert_allclose(chi, ai.center_array(SHAPE, unit="chi_rad", scale=False), rtol=0, atol=1e-9)


def test_unreported_sensor_is_marked_not_invented(tmp_path: Path) -> None:
    with h5py.File(_write(tmp_path, _geometry(), series={})) as f:
        det = f["entry/instrument/detector"]
        assert det["sensor_material"][()] == b"unknown" and np.isnan(det["sensor_thickness"][()])
        assert "note" in det["sensor_thickness"].attrs
        assert "count_time" not in det


def test_a_transformation_s_offset_is_read_in_its_offset_units(tmp_path: Path) -> None:
    """Another writer's chain: an offset in its ``offset_units``, whatever the value's units (a
    rotation's offset is a length; without ``offset_units``: the value's units, metres for a rotation)."""
    with h5py.File(tmp_path / "chain.h5", "w") as f:
        turn = f.create_dataset("turn", data=90.0)
        turn.attrs.update(
            {"transformation_type": "rotation", "vector": [0.0, 0.0, 1.0], "units": "deg", "depends_on": "."}
        )
        turn.attrs.update({"offset": [0.0, 0.0, 5.0], "offset_units": "mm"})
        move = f.create_dataset("move", data=2.0)
        move.attrs.update({"transformation_type": "translation", "vector": [1.0, 0.0, 0.0], "units": "mm"})
        move.attrs.update({"offset": [0.0, 1.0, 0.0], "depends_on": "/turn"})  # no offset_units: mm
        point = chain_matrix(f, "/move") @ np.array([0.0, 0.0, 0.0, 1.0])
    # 2 mm along x, 1 mm along y; turned 90 degrees about z: (-1, 2) mm; then 5 mm along z
    np.testing.assert_allclose(point[:3], [-1e-3, 2e-3, 5e-3], atol=1e-15)
