"""A powder run's reduced file with a cake: two NeXus applications, one per entry, each accepted by
nexusformat's ``validate_application`` (what ``nxvalidate -a`` runs) without errors or warnings about
its own groups: ``/entry`` is NXazint1d (the profiles), ``/entry_2d`` is NXazint2d (the cakes), and the
cake's axes and edges agree with pyFAI's ``integrate2d`` (same bins, centres within 1e-9 of a bin), and
so do its intensities and Poisson errors (pyFAI ``error_model="poisson"``, histogram method: 1e-6 relative,
float32 storage of float64 sums).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from edge.config import ReductionSettings
from edge.modes import Corrections, RunContext, make_stage
from edge.store import ReducedWriter
from edge.store._reduced import ROW_BYTES
from kernels import Geometry, get_backend

SHAPE = (48, 64)
BINS, CAKE = 40, 18
GEOMETRY = Geometry(dist=0.1, poni1=0.002, poni2=0.0025, wavelength=1e-10, pixel1=75e-6, pixel2=75e-6)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.poisson(50, SHAPE).astype(np.uint16) for _ in range(3)]


def _reduced_file(tmp_path: Path, cake_bins: int) -> Path:
    params = ReductionSettings(mode="powder", bins=BINS, cake_bins=cake_bins)
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, BINS, "2th_deg", params))
    writer = ReducedWriter(tmp_path, "run1", stage, 10)
    for frame, pixels in enumerate(_frames()):
        result = stage.process(pixels, frame, 0, float("nan"))
        writer.add(frame, "stored", "data", result.row, result.products)
    closed = writer.finish()
    assert closed is not None
    return closed.path


def _validate(path: Path, application: str, entry: str) -> tuple[int, list[str]]:
    from nexusformat.nexus.validate import logger, validate_application

    collect = _Collect()
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        _warnings, errors = validate_application(str(path), path=entry, application=application)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    problems = [r.getMessage() for r in collect.records if r.levelno >= logging.WARNING]
    return errors, problems


def test_profiles_and_cake_are_each_their_own_application(tmp_path: Path) -> None:
    path = _reduced_file(tmp_path, CAKE)
    with h5py.File(path, "r") as f:
        assert f["/entry/definition"][()] == b"NXazint1d"
        assert f["/entry_2d/definition"][()] == b"NXazint2d"
        assert "reduced_2d" not in f["/entry"]  # one definition per entry: no cake under the 1D one
        assert f["/entry_2d"].attrs["default"] == "reduced"
        assert f["/entry_2d/reduced/I"].shape == (3, CAKE, BINS)
        assert f["/entry_2d/reduction/program"][()] == b"edge"
    for application, entry in (("NXazint1d", "/entry"), ("NXazint2d", "/entry_2d")):
        errors, problems = _validate(path, application, entry)
        assert errors == 0, (application, problems)
        # the other entry's shapes never leak into this one's symbols (nRad, nEta)
        assert not [p for p in problems if "nRad" in p or "nEta" in p or "nImg" in p], (application, problems)


def test_the_reduced_file_carries_the_geometry_as_a_poni_file(tmp_path: Path) -> None:
    """An outside pyFAI probe: the reduced file (all that goes upstream with upstream.forward = reduced)
    held no geometry, so its profiles' radial axis could not be recomputed from it."""
    from kernels import read_poni_file

    path = _reduced_file(tmp_path, CAKE)
    with h5py.File(path, "r") as f:
        for entry in ("/entry", "/entry_2d"):
            text = f[f"{entry}/instrument/detector/pyfai_poni/poni_file"][()].decode()
            poni = tmp_path / "run.poni"
            poni.write_text(text)
            assert read_poni_file(poni).geometry == GEOMETRY
            assert tuple(f[f"{entry}/instrument/detector/pyfai_poni/max_shape"][()]) == SHAPE


def test_without_a_cake_the_file_has_one_entry(tmp_path: Path) -> None:
    with h5py.File(_reduced_file(tmp_path, 0), "r") as f:
        assert [name for name in f if f[name].attrs.get("NX_class") == "NXentry"] == ["entry"]


def test_cake_axes_and_edges_are_pyfais(tmp_path: Path) -> None:
    pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    g = GEOMETRY
    ai = AzimuthalIntegrator(
        dist=g.dist,
        poni1=g.poni1,
        poni2=g.poni2,
        wavelength=g.wavelength,
        detector=Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=SHAPE),
    )
    frame = _frames()[0].astype(np.float64)
    theirs = ai.integrate2d(
        frame,
        BINS,
        CAKE,
        unit="2th_deg",
        method=("no", "histogram", "cython"),
        error_model="poisson",
        correctSolidAngle=False,
    )
    with h5py.File(_reduced_file(tmp_path, CAKE), "r") as f:
        cake = f["/entry_2d/reduced"]
        intensity, errors = cake["I"][0].astype(np.float64), cake["I_errors"][0].astype(np.float64)
        assert cake["I_errors"].attrs["long_name"] == "estimated intensity error"
        radial, azimuthal = cake["radial_axis"][:], cake["azimuthal_axis"][:]
        radial_edges, azimuthal_edges = cake["radial_axis_edges"][:], cake["azimuthal_axis_edges"][:]
        assert cake["azimuthal_axis_edges"].attrs["units"] == "deg"
        # pyFAI's name of the axis, as the radial one carries its own (chi, as integrate2d's)
        assert cake["azimuthal_axis"].attrs["pyfai_unit"] == "chi_deg"
        assert cake["azimuthal_axis_edges"].attrs["pyfai_unit"] == "chi_deg"
    radial_step = (radial[-1] - radial[0]) / (BINS - 1)
    azimuthal_step = (azimuthal[-1] - azimuthal[0]) / (CAKE - 1)
    np.testing.assert_allclose(radial, theirs.radial, rtol=0, atol=1e-9 * radial_step * BINS)
    np.testing.assert_allclose(azimuthal, theirs.azimuthal, rtol=0, atol=1e-9 * azimuthal_step * CAKE)
    # each centre halfway between its edges, the edges evenly spaced
    np.testing.assert_allclose((radial_edges[1:] + radial_edges[:-1]) / 2, radial, rtol=1e-12)
    np.testing.assert_allclose((azimuthal_edges[1:] + azimuthal_edges[:-1]) / 2, azimuthal, rtol=0, atol=1e-9)
    filled = theirs.count > 0 if getattr(theirs, "count", None) is not None else theirs.intensity != 0
    np.testing.assert_allclose(intensity[filled], theirs.intensity[filled], rtol=1e-6)
    np.testing.assert_allclose(errors[filled], theirs.sigma[filled], rtol=1e-6)


def test_a_reduced_file_is_finished_once_its_ready_rows_reach_its_byte_bound(tmp_path: Path) -> None:
    """The rows' products are held in memory and written whole: past ``max_bytes`` of ready rows the
    file is finished (the appliance's bound is a quarter of the store's headroom, test_ledger_full);
    rows of stored frames whose data file is still open wait, whatever they hold, and stay counted."""
    params = ReductionSettings(mode="powder", bins=BINS)
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, BINS, "2th_deg", params))
    result = stage.process(_frames()[0], 0, 0, float("nan"))
    each = ROW_BYTES + sum(v.nbytes for v in result.products.values() if isinstance(v, np.ndarray))
    assert each > ROW_BYTES + 2 * BINS * 4  # the profile and its errors at least
    writer = ReducedWriter(tmp_path, "r", stage, 1000, max_bytes=10 * each, wait_for_data_files=True)
    for frame in range(30):
        writer.add(frame, "stored", "data", result.row, result.products)
    assert writer.bytes == 30 * each and not writer.full()  # all wait for their data file
    writer.frames_durable(range(9))
    assert not writer.full()  # 9 ready rows: under the bound
    writer.frames_durable([9])
    assert writer.full()  # 10 reach it
    closed = writer.finish()
    assert closed is not None and (closed.first_frame, closed.last_frame) == (0, 9)
    assert writer.bytes == 20 * each and not writer.full()
    with h5py.File(closed.path) as h5:
        assert h5["/entry/frames/frame_number"][()].tolist() == list(range(10))


def test_a_run_s_reduced_files_alone_reproduce_profiles_made_with_a_dark_and_a_flat(tmp_path: Path) -> None:
    """An outside powder probe: the reduced files named the dark and flat files (local paths) and their
    checksums, not their images, so the upstream copy could not reproduce a profile made with them. The
    run's first reduced file holds both images; pyFAI given only what the files hold (the PONI text, the
    mask, the dark and the flat) reproduces every profile (relative 1e-6)."""
    pytest.importorskip("pyFAI")
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    rng = np.random.default_rng(11)
    dark = rng.uniform(1, 5, SHAPE).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, SHAPE).astype(np.float32)
    flat[3, 4] = 0  # a pixel the flat makes unusable: left out, in the stored mask
    cal = Corrections(dark=dark, flat=flat, files={"dark": ("/beamline/dark.npy", "ab" * 32)})
    params = ReductionSettings(mode="powder", bins=BINS)
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, BINS, "2th_deg", params, cal))
    writer = ReducedWriter(tmp_path, "run1", stage, 2)
    paths = []
    for frame, pixels in enumerate(_frames()):
        result = stage.process(pixels, frame, 0, float("nan"))
        writer.add(frame, "stored", "data", result.row, result.products)
        if writer.full():
            paths.append(writer.finish().path)  # type: ignore[union-attr]
    paths.append(writer.finish().path)  # type: ignore[union-attr]
    assert len(paths) == 2
    with h5py.File(paths[0], "r") as f:
        corrections = f["/entry/reduced/corrections"]
        stored_dark, stored_flat = corrections["dark"][()], corrections["flat"][()]
        assert corrections["dark"].attrs["file"] == "/beamline/dark.npy"
        assert corrections["dark"].attrs["file_sha256"] == "ab" * 32
        mask = corrections["mask"][()]
        poni = tmp_path / "run.poni"
        poni.write_text(f["/entry/instrument/detector/pyfai_poni/poni_file"][()].decode())
        profiles = [f["/entry/reduced/I"][k] for k in range(2)]
    with h5py.File(paths[1], "r") as f:  # written once a run, not into every file
        assert "dark" not in f["/entry/reduced/corrections"] and "flat" not in f["/entry/reduced/corrections"]
        profiles.append(f["/entry/reduced/I"][0])
    np.testing.assert_array_equal(stored_dark, dark)
    np.testing.assert_array_equal(stored_flat, flat)
    ai = AzimuthalIntegrator()
    ai.load(str(poni))
    for frame, ours in zip(_frames(), profiles, strict=True):
        theirs = ai.integrate1d(
            frame.astype(np.float64),
            BINS,
            unit="2th_deg",
            method=("no", "histogram", "cython"),
            mask=mask,
            dark=stored_dark,
            flat=stored_flat,
            correctSolidAngle=False,
        )
        filled = theirs.count > 0 if getattr(theirs, "count", None) is not None else theirs.intensity != 0
        np.testing.assert_allclose(ours[filled], theirs.intensity[filled], rtol=1e-6)


@pytest.mark.parametrize(
    ("unit", "units"), [("2th_deg", "deg"), ("2th_rad", "rad"), ("q_nm^-1", "1/nm"), ("q_A^-1", "1/angstrom")]
)
def test_a_tilted_run_s_file_alone_reproduces_profile_and_cake_with_pyfai_s_default_ranges(
    tmp_path: Path, unit: str, units: str
) -> None:
    """An outside powder probe found 1e-3 apart in two bins of a profile (6% in a cake bin) after passing
    the stored edges to pyFAI as ``radial_range``: pyFAI then computes each bin by other arithmetic, and a
    pixel on an edge moves to its neighbour. The README says to leave the ranges at their defaults; from
    the file alone (its PONI text and mask), with rotations, non-square pixels, solid angle and
    polarisation, profile and cake then agree within 1e-6 relative, counts and all; in each of pyFAI's
    units the daemon takes (an outside probe expected ``q_A^-1``: it was refused), the axis named and
    in its NeXus units."""
    pytest.importorskip("pyFAI")
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    shape, bins, cake = (96, 80), 300, 36
    geometry = Geometry(
        dist=0.08, poni1=0.0048, poni2=0.0052, rot1=0.03, rot2=-0.02, rot3=0.4,
        wavelength=0.8e-10, pixel1=100e-6, pixel2=120e-6,
    )  # fmt: skip
    params = ReductionSettings(mode="powder", bins=bins, cake_bins=cake, unit=unit)
    mask = np.zeros(shape, bool)
    mask[40:50, 10:30] = True
    stage = make_stage(
        RunContext(
            get_backend("numba"),
            geometry,
            shape,
            bins,
            unit,
            params,
            Corrections(mask=mask, solid_angle=True, polarization=0.95),
        )
    )
    writer = ReducedWriter(tmp_path, "run1", stage, 10)
    frame = np.random.default_rng(3).poisson(100, shape).astype(np.uint16)
    result = stage.process(frame, 0, 0, float("nan"))
    writer.add(0, "stored", "data", result.row, result.products)
    closed = writer.finish()
    assert closed is not None
    with h5py.File(closed.path, "r") as f:
        poni = tmp_path / "run.poni"
        poni.write_text(f["/entry/instrument/detector/pyfai_poni/poni_file"][()].decode())
        stored_mask = f["/entry/reduced/corrections/mask"][()]
        profile = f["/entry/reduced/I"][0].astype(np.float64)
        caked = f["/entry_2d/reduced/I"][0].astype(np.float64)
        radial = f["/entry/reduced/radial_axis"]
        assert (radial.attrs["units"], radial.attrs["pyfai_unit"]) == (units, unit)
        centres = radial[()]
    ai = AzimuthalIntegrator()
    ai.load(str(poni))
    method = ("no", "histogram", "cython")
    pixels = frame.astype(np.float64)
    one = ai.integrate1d(pixels, bins, unit=unit, method=method, mask=stored_mask, polarization_factor=0.95)
    two = ai.integrate2d(
        pixels, bins, cake, unit=unit, method=method, mask=stored_mask, polarization_factor=0.95
    )
    filled = one.count > 0
    np.testing.assert_allclose(profile[filled], one.intensity[filled], rtol=1e-6)
    np.testing.assert_array_equal(profile[~filled] == 0, True)
    np.testing.assert_allclose(caked, two.intensity, rtol=1e-6, atol=0)
    np.testing.assert_allclose(centres, one.radial, rtol=1e-9)
