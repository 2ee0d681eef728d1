"""The serial run's CrystFEL geometry file, read by CFEL's own parser (cfelpyutils, a re-implementation
of CrystFEL's ``get_detector_geometry_2``), puts every pixel where pyFAI puts it.

CrystFEL's lab frame (``man crystfel_geometry``): +z along the beam, +y up, +x completing a right-handed
set; a pixel at (fs, ss) in the data lies at ``corner + fs * fs_vector + ss * ss_vector`` (x, y in pixels
of ``res``; z at ``clen + coffset`` plus the vectors' z components), the corner being the outer corner of
the panel's first pixel, so the centre of pixel (i, j) is at fs = j + 0.5, ss = i + 0.5.

Bound: 2theta and chi of every pixel centre within 1e-7 rad of pyFAI's ``center_array``. The file writes
vectors and the corner to 12 decimals, which moves a pixel by under 1e-10 pixel over this 64-pixel panel:
chi within 1e-9 rad even 0.03 pixel from the beam, where a pixel's chi turns fastest with its position;
1e-7 is loose for that and 5 orders below a mirrored or shifted panel (a mirror moves chi by up to 2 pi;
a half-pixel shift moves 2theta by ~3e-4 rad here).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from edge.config import ReductionSettings
from edge.modes import RunContext, make_stage
from edge.nxmx import LAB_FROM_PYFAI
from kernels import Geometry, get_backend

pytest.importorskip("pyFAI")
with warnings.catch_warnings():  # cfelpyutils 2.2 builds its TypedDicts with mypy_extensions' deprecated one
    warnings.simplefilter("ignore", DeprecationWarning)
    from cfelpyutils.geometry import compute_pix_maps, load_crystfel_geometry
from pyFAI.detectors import Detector
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

SHAPE = (48, 64)
TILTED = {"dist": 0.12, "poni1": 0.0021, "poni2": 0.0032, "rot1": 0.05, "rot2": -0.03, "rot3": 0.1}
FLAT = {"dist": 0.12, "poni1": 0.0021, "poni2": 0.0032, "rot1": 0.0, "rot2": 0.0, "rot3": 0.0}
# the beam 0.04 and 0.03 pixel from the centre of a pixel (an outside probe: chi, ill-conditioned there,
# was 5e-7 rad off pyFAI's within half a pixel of the beam with the corner written to 1e-6 pixel)
NEAR_BEAM = {**FLAT, "poni1": 20.54371234 * 75e-6, "poni2": 30.52912847 * 80e-6}
BOUND = 1e-7


def _geometry(orientation: int, placement: dict[str, float], pixel1: float = 75e-6) -> Geometry:
    return Geometry(**placement, wavelength=0.9e-10, pixel1=pixel1, pixel2=80e-6, orientation=orientation)


def _geom_file(tmp_path: Path, g: Geometry) -> Path:
    ctx = RunContext(get_backend("numpy"), g, SHAPE, 16, "2th_deg", ReductionSettings(mode="serial"))
    (path,) = make_stage(ctx).run_files(tmp_path, "run1")
    assert path.name == "run1.geom"
    return path


def _pyfai_angles(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    detector = Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=SHAPE, orientation=g.orientation)
    ai = AzimuthalIntegrator(
        dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1, rot2=g.rot2, rot3=g.rot3, detector=detector
    )
    return (
        ai.center_array(SHAPE, unit="2th_rad", scale=False),
        ai.center_array(SHAPE, unit="chi_rad", scale=False),
    )


def _angles(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2theta and pyFAI's chi of lab-frame points (CrystFEL's frame is NeXus's)."""
    t = lab @ LAB_FROM_PYFAI  # to pyFAI's (t1, t2, t3)
    return np.arctan2(np.hypot(t[..., 0], t[..., 1]), t[..., 2]), np.arctan2(t[..., 0], t[..., 1])


def _centres(panel: dict) -> np.ndarray:
    """Pixel centres in metres, evaluated from the parsed panel as CrystFEL does."""
    ss, fs = np.meshgrid(np.arange(SHAPE[0]) + 0.5, np.arange(SHAPE[1]) + 0.5, indexing="ij")
    res = panel["res"]
    x = panel["cnx"] + fs * panel["fsx"] + ss * panel["ssx"]
    y = panel["cny"] + fs * panel["fsy"] + ss * panel["ssy"]
    z = (panel["clen"] + panel["coffset"]) * res + fs * panel["fsz"] + ss * panel["ssz"]
    return np.stack([x, y, z], axis=-1) / res


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
@pytest.mark.parametrize("placement", [TILTED, FLAT, NEAR_BEAM], ids=["tilted", "flat", "near_beam"])
def test_every_pixel_centre_lands_where_pyfai_puts_it(
    tmp_path: Path, orientation: int, placement: dict[str, float]
) -> None:
    g = _geometry(orientation, placement)
    geometry = load_crystfel_geometry(_geom_file(tmp_path, g))
    (panel,) = geometry.detector["panels"].values()
    assert (panel["orig_max_fs"], panel["orig_max_ss"]) == (SHAPE[1] - 1, SHAPE[0] - 1)
    assert geometry.beam["photon_energy"] == pytest.approx(12398.419843 / 0.9, abs=1e-3)
    tth, chi = _angles(_centres(panel))
    want_tth, want_chi = _pyfai_angles(g)
    np.testing.assert_allclose(tth, want_tth, rtol=0, atol=BOUND)
    np.testing.assert_allclose(chi, want_chi, rtol=0, atol=BOUND)


def test_the_geometry_names_the_data_files_pixel_mask(tmp_path: Path) -> None:
    """CrystFEL (and cfelpyutils) take the bad pixels from the NXmx pixel_mask every data file holds:
    any bit set is bad (the gaps' bit 0, the mask file's bit 8), as DECTRIS's Eiger geometries say."""
    detector = load_crystfel_geometry(_geom_file(tmp_path, _geometry(3, FLAT))).detector
    (panel,) = detector["panels"].values()
    assert panel["mask"] == "/entry/instrument/detector/pixel_mask"
    assert (detector["mask_good"], detector["mask_bad"]) == (0, 0xFFFFFFFF)


def test_non_square_pixels_keep_their_slow_pitch(tmp_path: Path) -> None:
    # res is one pitch per panel (the fast one): the slow vector is longer by pixel1 / pixel2
    g = _geometry(3, TILTED, pixel1=172e-6)
    (panel,) = load_crystfel_geometry(_geom_file(tmp_path, g)).detector["panels"].values()
    assert np.hypot(np.hypot(panel["ssx"], panel["ssy"]), panel["ssz"]) == pytest.approx(172 / 80, abs=1e-8)
    tth, chi = _angles(_centres(panel))
    want_tth, want_chi = _pyfai_angles(g)
    np.testing.assert_allclose(tth, want_tth, rtol=0, atol=BOUND)
    np.testing.assert_allclose(chi, want_chi, rtol=0, atol=BOUND)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_cfel_pixel_maps_of_a_flat_panel_agree(tmp_path: Path, orientation: int) -> None:
    # cfelpyutils' own pixel maps (the corner of each pixel, x and y in pixels, z = clen): the direct
    # beam is their origin, so each pixel centre's distance from it gives pyFAI's 2theta
    g = _geometry(orientation, FLAT)
    geometry = load_crystfel_geometry(_geom_file(tmp_path, g))
    (panel,) = geometry.detector["panels"].values()
    maps = compute_pix_maps(geometry.detector)
    half = 0.5 * (np.array([panel["fsx"], panel["fsy"]]) + np.array([panel["ssx"], panel["ssy"]]))
    x, y = maps.x + half[0], maps.y + half[1]
    lab = np.stack([x / panel["res"], y / panel["res"], np.broadcast_to(maps.z, x.shape)], axis=-1)
    tth, chi = _angles(lab.astype(np.float64))
    want_tth, want_chi = _pyfai_angles(g)
    # the maps are float32: ~1e-7 relative of a ~1000-pixel coordinate, ~1e-8 rad here
    np.testing.assert_allclose(tth, want_tth, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chi, want_chi, rtol=0, atol=1e-5)
