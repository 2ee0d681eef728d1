"""PONI files as pyFAI writes them: versions 1, 2, 2.1 and 3, orientations 1-4, named detectors.

The oracle is the installed pyFAI: it writes every file read here, and its ``integrate1d`` with method
("no", "histogram", "cython") on the same file is what our profile must equal, bin for bin, within 1e-6
relative. Why not bit-equality: pyFAI sums in its own order (and float32 in places), and its results
already differ by an ulp or so across CPUs and versions; 1e-6 is far below a count's Poisson noise and
far above summation-order noise. Radial bin centres are compared within 1e-9 relative (one float64
division and product apart).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import Geometry, PoniError, direct_beam, read_poni_file
from kernels._detectors import DETECTORS

pyFAI = pytest.importorskip("pyFAI")
from pyFAI.detectors import Detector, detector_factory  # noqa: E402
from pyFAI.integrator.azimuthal import AzimuthalIntegrator  # noqa: E402
from pyFAI.io.ponifile import PoniFile  # noqa: E402

METHOD = ("no", "histogram", "cython")
SHAPE = (40, 56)
TILTED = {"dist": 0.05, "poni1": 0.0017, "poni2": 0.0022, "rot1": 0.012, "rot2": -0.021, "rot3": 0.03}
NAMED = "Pilatus200k"  # small enough to integrate in a unit test, and has pyFAI's module-gap mask


@pytest.fixture(params=["numpy", "numba"])
def backend(request: pytest.FixtureRequest) -> kernels.Backend:
    try:
        return kernels.get_backend(request.param)
    except kernels.BackendUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(autouse=True)
def _quiet_pyfai() -> None:
    logging.getLogger("pyFAI").setLevel(logging.ERROR)


def _write(ai: AzimuthalIntegrator, path: Path, version: float | None = None) -> Path:
    """The file pyFAI writes for ``ai`` (``ai.write``), or in an older format through its PoniFile."""
    if version is None:
        ai.write(str(path))
    else:
        poni = PoniFile(ai)
        poni.API_VERSION = version
        with open(path, "w") as fd:
            poni.write(fd)
    return path


def _integrator(detector: Detector, **geometry: float) -> AzimuthalIntegrator:
    return AzimuthalIntegrator(**{**TILTED, **geometry}, wavelength=1.0e-10, detector=detector)


def _assert_rel(ours: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    worst = float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-30), initial=0.0))
    assert worst <= rtol, f"worst relative difference {worst:.3g}"


def _profile_matches_pyfai(
    backend: kernels.Backend, path: Path, image: np.ndarray, user_mask: np.ndarray | None, unit: str
) -> None:
    """Integrate ``image`` with the file as we read it and as pyFAI reads it; compare every bin."""
    poni = read_poni_file(path)
    poni.check_shape(image.shape)
    mask = poni.mask()
    if user_mask is not None:
        mask = user_mask if mask is None else mask | user_mask  # reduction.mask_file adds to the detector's
    ai = AzimuthalIntegrator()
    ai.load(str(path))
    # pyFAI uses the detector's own mask only when no mask is passed, so give it the same union
    ref = ai.integrate1d(image, 53, unit=unit, method=METHOD, mask=mask, polarization_factor=0.9)
    if user_mask is None:
        default = ai.integrate1d(image, 53, unit=unit, method=METHOD, polarization_factor=0.9)
        np.testing.assert_array_equal(default.count, ref.count)  # ... which is the detector's own mask
    ours = backend.integrator(
        poni.geometry,
        image.shape,
        53,
        unit=unit,
        mask=mask,
        correct_solid_angle=True,
        polarization_factor=0.9,
    ).integrate_full(image)
    np.testing.assert_array_equal(ours.count, ref.count)
    _assert_rel(ours.radial, ref.radial, 1e-9)
    _assert_rel(ours.intensity, ref.intensity, 1e-6)


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a ramp along each axis makes a wrongly mirrored axis change the profile, not just its noise
    ramp = np.add.outer(np.linspace(0, 300, shape[0]), np.linspace(0, 500, shape[1]))
    return rng.poisson(50 + ramp).astype(np.uint32)


# ---- orientation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_orientation_positions_equal_pyfai(orientation: int) -> None:
    ai = _integrator(Detector(pixel1=75e-6, pixel2=80e-6, max_shape=SHAPE, orientation=orientation))
    g = Geometry(**TILTED, wavelength=1.0e-10, pixel1=75e-6, pixel2=80e-6, orientation=orientation)
    # pyFAI mirrors the pixel index before it becomes a position, so the values are the same floats
    np.testing.assert_allclose(g.tth(SHAPE), ai.center_array(SHAPE, unit="2th_deg", scale=False), rtol=1e-12)
    np.testing.assert_allclose(g.chi(SHAPE), ai.center_array(SHAPE, unit="chi_rad", scale=False), rtol=1e-12)
    np.testing.assert_allclose(g.solid_angle(SHAPE), ai.solidAngleArray(SHAPE), rtol=1e-7)


@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1"])
@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_generic_detector_profile_equals_pyfai(
    backend: kernels.Backend, tmp_path: Path, orientation: int, unit: str
) -> None:
    detector = Detector(pixel1=75e-6, pixel2=80e-6, max_shape=SHAPE, orientation=orientation)
    path = _write(_integrator(detector), tmp_path / f"o{orientation}.poni")
    poni = read_poni_file(path)
    assert poni.version == 2.1
    assert poni.geometry.orientation == orientation
    assert poni.shape == SHAPE
    user_mask = np.zeros(SHAPE, dtype=bool)
    user_mask[5:9, 30:40] = True
    _profile_matches_pyfai(backend, path, _image(SHAPE, orientation), user_mask, unit)


def test_orientation_changes_the_profile(tmp_path: Path) -> None:
    """The issue's report: orientation 2 read as 3 gave a profile far off. Mirrored, it must differ."""
    image = _image(SHAPE, 0)
    profiles = []
    for orientation in (2, 3):
        detector = Detector(pixel1=75e-6, pixel2=80e-6, max_shape=SHAPE, orientation=orientation)
        geometry = read_poni_file(_write(_integrator(detector), tmp_path / f"{orientation}.poni")).geometry
        profiles.append(kernels.get_backend("numpy").integrator(geometry, SHAPE, 53).integrate(image))
    assert not np.allclose(profiles[0], profiles[1], rtol=1e-3)


# ---- named detectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_named_detector_supplies_pixels_shape_and_mask(
    backend: kernels.Backend, tmp_path: Path, orientation: int
) -> None:
    detector = detector_factory(NAMED, {"orientation": orientation})
    ai = _integrator(detector, poni1=0.035, poni2=0.042, dist=0.12)
    path = _write(ai, tmp_path / "named.poni")
    assert "max_shape" not in path.read_text()  # pyFAI leaves the shape to the class: we must know it
    poni = read_poni_file(path)
    assert poni.detector.name == NAMED
    assert poni.shape == detector.max_shape
    assert (poni.geometry.pixel1, poni.geometry.pixel2) == (detector.pixel1, detector.pixel2)
    np.testing.assert_array_equal(poni.mask(), detector.mask.astype(bool))
    image = _image(poni.shape, 10 + orientation)
    _profile_matches_pyfai(backend, path, image, None, "q_nm^-1")
    user_mask = np.zeros(poni.shape, dtype=bool)
    user_mask[100:140, 200:260] = True
    _profile_matches_pyfai(backend, path, image, user_mask, "2th_deg")


def test_every_modelled_detector_equals_pyfai() -> None:
    for name, model in DETECTORS.items():
        detector = detector_factory(name)
        assert (model.pixel1, model.pixel2) == (detector.pixel1, detector.pixel2), name
        assert model.max_shape == tuple(detector.max_shape), name
        ref = detector.mask
        ours = model.mask()
        if ref is None or not np.any(ref):
            assert ours is None, name
        else:
            np.testing.assert_array_equal(ours, ref.astype(bool), err_msg=name)
        # the invalid-pixel value (DECTRIS -2 +- 1.5, Lambda 0), as each frame type sees it
        assert (model.dummy, model.delta_dummy) == (detector.dummy, detector.delta_dummy), name
        for dtype in ("uint8", "uint16", "int32", "uint32", "float32"):
            ref_dummies = detector.get_dummies(np.dtype(dtype))
            ours_dummies = model.dummies(dtype)
            if ref_dummies[0] is None:
                assert ours_dummies is None, name
            else:
                assert ours_dummies == tuple(float(v) for v in ref_dummies), (name, dtype)


@pytest.mark.parametrize(
    ("name", "dtype", "marks"),
    [
        ("Pilatus100k", "int32", (-2, -1, -3)),  # DECTRIS's -2 +- 1.5 in a signed frame
        ("Pilatus100k", "uint16", (65535, 65534, 65533)),  # ... cast into uint16: all ones and below
        ("Lambda60k", "uint16", (0,)),  # X-Spectrum's 0: a pixel that counted nothing is left out too
    ],
)
def test_a_named_detector_s_invalid_pixels_are_left_out_as_pyfai_leaves_them(
    backend: kernels.Backend, tmp_path: Path, name: str, dtype: str, marks: tuple[int, ...]
) -> None:
    """pyFAI leaves out of an integration every pixel at the detector's dummy value (``Detector.DUMMY``):
    counted, they pulled bins down by up to 6.5% (an outside probe, Lambda250k and Pilatus100k)."""
    detector = detector_factory(name)
    path = _write(_integrator(detector, poni1=0.012, poni2=0.02, dist=0.1), tmp_path / "d.poni")
    poni = read_poni_file(path)
    image = _image(poni.shape, 3).astype(dtype)
    rng = np.random.default_rng(5)
    for mark in marks:  # dead pixels, as the detector writes them
        image.ravel()[rng.choice(image.size, image.size // 50, replace=False)] = mark
    image.ravel()[rng.choice(image.size, 20, replace=False)] = marks[0] + (2 if marks[0] < 100 else -3)
    dummy = poni.detector.dummies(image.dtype)
    assert dummy is not None
    invalid = kernels.invalid_pixels(image, *dummy)
    assert invalid is not None
    value, delta = (np.float32(v) for v in dummy)
    np.testing.assert_array_equal(invalid, np.abs(image.astype(np.float32) - value) <= delta)
    ai = AzimuthalIntegrator()
    ai.load(str(path))
    ref = ai.integrate1d(image, 53, unit="q_nm^-1", method=METHOD, correctSolidAngle=False)  # its dummy
    integrator = backend.integrator(poni.geometry, image.shape, 53, unit="q_nm^-1", mask=poni.mask())
    ours = integrator.integrate_full(image, invalid)
    np.testing.assert_array_equal(ours.count, ref.count)
    _assert_rel(ours.intensity, ref.intensity, 1e-6)
    assert not np.allclose(integrator.integrate_full(image).intensity, ref.intensity, rtol=1e-3)


# ---- versions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 2.1, 3])
def test_every_version_pyfai_writes_is_read(tmp_path: Path, version: float) -> None:
    detector = Detector(pixel1=75e-6, pixel2=80e-6, max_shape=SHAPE)
    ai = _integrator(detector)
    path = _write(ai, tmp_path / "v.poni", version)
    poni = read_poni_file(path)
    assert poni.version == version
    assert poni.geometry == Geometry(**TILTED, wavelength=1.0e-10, pixel1=75e-6, pixel2=80e-6, orientation=3)
    back = AzimuthalIntegrator()
    back.load(str(path))  # and pyFAI reads the same numbers from it
    assert (back.dist, back.rot1, back.detector.pixel2) == (poni.geometry.dist, poni.geometry.rot1, 80e-6)


def test_version_1_named_detector(tmp_path: Path) -> None:
    ai = _integrator(detector_factory("Eiger500k"))
    poni = read_poni_file(_write(ai, tmp_path / "v1.poni", 1))
    assert poni.detector.name == "Eiger500k" and poni.shape == (514, 1030) and poni.version == 1


@pytest.mark.parametrize("spelled", ["pilatus1m", "Pilatus 1M", "PILATUS_1M"])
def test_a_detector_name_spelled_as_pyfai_takes_it_is_that_detector(tmp_path: Path, spelled: str) -> None:
    """pyFAI's factory takes a name whatever its case, spaces or underscores (``pyFAI.load`` reads these
    files); an outside probe saw them refused as "not a detector we model"."""
    text = _write(_integrator(detector_factory("Pilatus1M")), tmp_path / "p.poni").read_text()
    path = tmp_path / "spelled.poni"
    path.write_text(text.replace("Detector: Pilatus1M", f"Detector: {spelled}"))
    assert f"Detector: {spelled}" in path.read_text()
    poni = read_poni_file(path)
    assert poni.detector.name == "Pilatus1M" and poni.shape == (1043, 981)


# ---- malformed files refuse, naming the key --------------------------------------------------------


def test_a_file_far_larger_than_a_poni_file_is_refused_unread(tmp_path: Path) -> None:
    """An outside probe's 300 MB file of comments and valid keys took 1.25 s and 770 MB to read."""
    text = _good(tmp_path)
    path = tmp_path / "huge.poni"
    path.write_text(text + "# " + "x" * (2 << 20) + "\n")
    with pytest.raises(PoniError, match="larger than 1048576 bytes: not a PONI file"):
        read_poni_file(path)


def _good(tmp_path: Path) -> str:
    ai = _integrator(Detector(pixel1=75e-6, pixel2=80e-6, max_shape=SHAPE, orientation=2))
    return _write(ai, tmp_path / "good.poni").read_text()


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("Distance: 0.05", "Distance: five cm", "Distance", "not a number"),
        ("Distance: 0.05", "Distance: -0.05", "Distance", "> 0"),
        ("Poni1: 0.0017\n", "", "Poni1", "missing"),
        ("Rot2: -0.021", "Rot2: nan", "Rot2", "not finite"),
        ("Wavelength: 1e-10\n", "", "Wavelength", "missing"),
        ('"orientation": 2', '"orientation": 6', "Detector_config", "transposed"),
        ('"orientation": 2', '"orientation": 9', "Detector_config", "1 to 4"),
        ('"orientation": 2', '"orientation": "top"', "Detector_config", "integer"),
        ('"pixel1": 7.5e-05', '"pixel1": 7.5e-05,,', "Detector_config", "JSON"),
        ('"pixel1": 7.5e-05', '"pixel1": -1', "Detector_config", "positive"),
        ('"pixel1": 7.5e-05', '"pixel1": 1e300', "Detector_config", "beyond any detector"),
        ("Rot2: -0.021", "Rot2: -0.021\nPoni1: 1e300", "Poni1", "beyond any beamline"),
        # an outside probe: positive but absurdly small ones ran, every pixel at 2theta = 90 degrees
        ("Distance: 0.05", "Distance: 1e-300", "Distance", "below any beamline"),
        ("Wavelength: 1e-10", "Wavelength: 1e-20", "Wavelength", "below any beamline"),
        ('"pixel1": 7.5e-05', '"pixel1": 1e-12', "Detector_config", "below any detector"),
        ("Rot2: -0.021", "Rot2: 1e300", "Rot2", "more than a turn"),
        # Python's float reads 0_08 as 8 (digit grouping; pyFAI takes it so): a typo of 0.08 was 8 m
        ("Distance: 0.05", "Distance: 0_05", "Distance", "underscore"),
        ('"pixel1": 7.5e-05', '"pixel1": "7_5e-05"', "Detector_config", "underscore"),
        ('"max_shape": [40, 56]', '"max_shape": [40]', "Detector_config", "max_shape"),
        ('"pixel1": 7.5e-05', '"pixel1": 7.5e-05, "splineFile": "d.spline"', "Detector_config", "spline"),
        # pyFAI reads a binning as 2x the pixels: taken as the unbinned detector it was another geometry
        ('"pixel1": 7.5e-05', '"pixel1": 7.5e-05, "binning": [2, 2]', "Detector_config", "binning"),
        ("poni_version: 2.1", "poni_version: 4", "poni_version", "version 4"),
        ("Detector: Detector", "Detector: Xpad_flat", "Detector", "Xpad_flat"),
        ("Detector: Detector\n", "", "Detector", "missing"),
        ("Wavelength: 1e-10", "Wavelength: 1e-10\nParallax: True", "Parallax", "parallax"),
        ("Wavelength: 1e-10", "Wavelength: 1e-10\nParallax: maybe", "Parallax", "True or False"),
    ],
)
def test_malformed_file_names_the_key(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    text = _good(tmp_path)
    assert old in text
    path = tmp_path / "bad.poni"
    path.write_text(text.replace(old, new))
    with pytest.raises(PoniError, match=words) as caught:
        read_poni_file(path)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert isinstance(caught.value, ValueError)


def test_binned_named_detector_and_wrong_shape_refused(tmp_path: Path) -> None:
    path = _write(_integrator(detector_factory(NAMED)), tmp_path / "p.poni")
    text = path.read_text()
    path.write_text(text.replace('"pixel1": 0.000172', '"pixel1": 0.000344'))
    with pytest.raises(PoniError, match="binned") as caught:
        read_poni_file(path)
    assert caught.value.key == "Detector_config"
    path.write_text(text)
    with pytest.raises(PoniError, match=r"\(407, 487\).*\(40, 56\)") as caught:
        read_poni_file(path).check_shape(SHAPE)
    assert caught.value.key == "Detector"


def test_pixels_under_a_named_detector_whose_pyfai_class_takes_none_are_refused(tmp_path: Path) -> None:
    """An outside probe: a generic Detector's config (100 x 75 um pixels, 300 x 400) under "Detector:
    FReLoN" was taken as written, while pyFAI, whose FReLoN class takes no pixel size or shape, ignores
    them and integrates 50 um pixels on 2048 x 2048: the radial axis 43% apart. Refused, naming them; a
    FReLoN file pyFAI writes (no such keys) is read as pyFAI reads it."""
    generic = _write(_integrator(Detector(1e-4, 7.5e-5, max_shape=(300, 400))), tmp_path / "g.poni")
    text = generic.read_text()
    assert "Detector: Detector" in text
    frelon = tmp_path / "frelon.poni"
    frelon.write_text(text.replace("Detector: Detector", "Detector: FReLoN"))
    with pytest.raises(PoniError, match=r"pixel1, pixel2, max_shape given for FReLoN.*pyFAI ignores them"):
        read_poni_file(frelon)
    written = _write(_integrator(detector_factory("FReLoN")), tmp_path / "own.poni")
    poni = read_poni_file(written)
    reference = pyFAI.load(str(written))
    assert (poni.geometry.pixel1, poni.geometry.pixel2) == (
        reference.detector.pixel1,
        reference.detector.pixel2,
    )
    assert poni.detector.max_shape == tuple(reference.detector.max_shape)


def test_missing_file_is_a_poni_error(tmp_path: Path) -> None:
    with pytest.raises(PoniError, match="cannot read"):
        read_poni_file(tmp_path / os.sep.join(["no", "such.poni"]))


# ---- direct beam ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rots",
    [
        (0.0, 0.0, 0.0),
        (0.012, -0.021, 0.03),
        (-0.2, 0.15, 1.0),
        (0.0, 0.3, 0.0),
        (1e-9, 0.0, 0.0),
        (0.4, 0.0, 0.0),
    ],
)
def test_direct_beam_equals_pyfai_fit2d(rots: tuple[float, float, float]) -> None:
    rot1, rot2, rot3 = rots
    detector = Detector(pixel1=75e-6, pixel2=80e-6, max_shape=SHAPE)
    ai = _integrator(detector, rot1=rot1, rot2=rot2, rot3=rot3)
    f2d = ai.getFit2D()
    g = Geometry(**{**TILTED, "rot1": rot1, "rot2": rot2, "rot3": rot3}, pixel1=75e-6, pixel2=80e-6)
    x, y = direct_beam(g)
    # same formulas in the same order; 1e-9 px allows for libm differences in cos/acos
    assert x == pytest.approx(f2d["centerX"], abs=1e-9)
    assert y == pytest.approx(f2d["centerY"], abs=1e-9)


@pytest.mark.parametrize("text", ["", "\n\n", "hello world\n", "a: 1\nb: 2\n", "# Calibrant: LaB6\n"])
def test_a_file_that_is_no_poni_says_so(tmp_path: Path, text: str) -> None:
    """An empty or garbage file said "PixelSize1: a generic Detector needs pixel1 and pixel2" (an outside
    probe): the first key that happened to be missing, not what was wrong."""
    path = tmp_path / "x.poni"
    path.write_text(text)
    with pytest.raises(PoniError, match=r"not a pyFAI \.poni file") as caught:
        read_poni_file(path)
    assert caught.value.key == "file"
