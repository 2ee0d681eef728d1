"""The powder mode's reduction with dark, flat, mask, solid angle and polarisation equals pyFAI."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import ReductionSettings, load_settings
from edge.errors import ConfigError
from edge.modes import Corrections as Calibration
from edge.modes import PowderStage, RunContext, SerialStage
from kernels import Geometry, get_backend

SHAPE = (96, 128)
GEOMETRY = Geometry(dist=0.05, poni1=0.0036, poni2=0.0050, rot1=0.01, rot2=-0.02, wavelength=1e-10)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_reduction_matches_pyfai_with_every_correction(backend: str) -> None:
    pyfai = pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector

    rng = np.random.default_rng(4)
    raw = rng.poisson(80, SHAPE).astype(np.uint16)
    dark = rng.uniform(0, 5, SHAPE).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 30:60] = True
    cal = Calibration(dark, flat, mask, solid_angle=True, polarization=0.9)
    stage = PowderStage(
        RunContext(
            get_backend(backend), GEOMETRY, SHAPE, 50, "2th_deg", ReductionSettings(mode="powder"), cal
        )
    )
    g = GEOMETRY
    ai = pyfai.load(
        {
            "dist": g.dist,
            "poni1": g.poni1,
            "poni2": g.poni2,
            "rot1": g.rot1,
            "rot2": g.rot2,
            "rot3": g.rot3,
            "wavelength": g.wavelength,
            "detector": Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=SHAPE),
        }
    )
    ref = ai.integrate1d(
        raw,
        50,
        unit="2th_deg",
        method=("no", "histogram", "cython"),
        mask=mask,
        dark=dark,
        flat=flat,
        correctSolidAngle=True,
        polarization_factor=0.9,
    )
    result = stage.process(raw, 0, 0, float("nan"))
    # pyFAI's own results differ by an ulp across CPUs and versions: 1e-6 relative
    np.testing.assert_allclose(stage.radial, ref.radial, rtol=1e-9)
    np.testing.assert_allclose(result.products["I"], ref.intensity, rtol=1e-6)
    sigma = ai.integrate1d(
        raw,
        50,
        unit="2th_deg",
        method=("no", "histogram", "cython"),
        mask=mask,
        dark=dark,
        flat=flat,
        correctSolidAngle=True,
        polarization_factor=0.9,
        error_model="poisson",
    ).sigma
    np.testing.assert_allclose(result.products["I_errors"], sigma, rtol=1e-6)
    record = stage.settings_record()
    assert record["dark_applied"] and record["flat_applied"] and record["mask_applied"]
    assert record["solid_angle_applied"] and record["polarization_factor"] == 0.9


def test_the_reduced_profiles_carry_the_mask_they_left_out(tmp_path) -> None:
    """The pixels a powder run left out of its profiles (the mask, and a flat's unusable pixels) are in
    the reduced file beside the correction flags: a reader upstream holding the products only can
    reintegrate or check them (before, only ``mask_applied`` said a mask had been used)."""
    import h5py

    mask = np.zeros(SHAPE, bool)
    mask[10:20, 30:60] = True
    flat = np.ones(SHAPE, np.float32)
    flat[50, 50] = 0.0  # unusable: left out as well
    params = ReductionSettings(mode="powder")
    stage = PowderStage(
        RunContext(
            get_backend("numpy"), GEOMETRY, SHAPE, 50, "2th_deg", params, Calibration(None, flat, mask)
        )
    )
    products = [stage.process(np.full(SHAPE, 7, np.uint16), 0, 0, float("nan")).products]
    with h5py.File(tmp_path / "r.nxs", "w") as handle:
        stage.write_products(handle.create_group("entry"), products)
    with h5py.File(tmp_path / "r.nxs", "r") as handle:
        stored = handle["/entry/reduced/corrections/mask"][()]
    expected = mask.copy()
    expected[50, 50] = True
    assert stored.dtype == np.uint8 and np.array_equal(stored.astype(bool), expected)
    plain = PowderStage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 50, "2th_deg", params))
    with h5py.File(tmp_path / "p.nxs", "w") as handle:
        plain.write_products(handle.create_group("entry"), products)
        assert "mask" not in handle["/entry/reduced/corrections"]  # nothing left out: no image


def test_calibration_files_are_checked_at_start(tmp_path) -> None:
    from edge.appliance import load_calibration

    good = tmp_path / "mask.npy"
    np.save(good, np.zeros((1024, 1024), bool))
    assert load_calibration(load_settings(overrides=[f'reduction.mask_file="{good}"'])).mask.shape == (
        1024,
        1024,
    )
    # the dark and flat files a powder run used are recorded with their checksums (an outside probe
    # could not tell from the files which images had been applied, only that some had)
    import hashlib

    dark, flat = tmp_path / "dark.npy", tmp_path / "flat.npy"
    np.save(dark, np.full((1024, 1024), 3, np.float32))
    np.save(flat, np.ones((1024, 1024), np.float32))
    # and the mask file too (an outside probe: a JSON-stream run recorded its path only, nowhere its
    # checksum), in powder and serial mode alike
    overrides = [f'reduction.{k}_file="{p}"' for k, p in (("dark", dark), ("flat", flat), ("mask", good))]
    cal = load_calibration(load_settings(overrides=overrides))
    params = ReductionSettings(mode="powder")
    ctx = RunContext(get_backend("numpy"), Geometry(), (1024, 1024), 20, "2th_deg", params, cal)
    record = PowderStage(ctx).settings_record()
    for name, path in (("dark", dark), ("flat", flat), ("mask", good)):
        assert record[f"{name}_file"] == str(path)
        assert record[f"{name}_file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    serial = SerialStage(
        RunContext(get_backend("numpy"), Geometry(), (1024, 1024), 20, "2th_deg", params, cal)
    )
    assert serial.settings_record()["mask_file_sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert record["calibration_files_changed"] is None
    # a mask file written over while the daemon runs: the next run still uses the loaded one (a restart
    # applies it) and its record says so (an outside probe: it named the file beside a checksum that was
    # not the file's any more, and nothing was logged)
    edited = np.zeros((1024, 1024), bool)
    edited[0, 0] = True
    np.save(good, edited)
    later = PowderStage(ctx).settings_record()
    assert later["mask_file_sha256"] == record["mask_file_sha256"]
    changed = later["calibration_files_changed"]
    # both checksums in full (an outside probe read 16-digit prefixes)
    assert changed == (
        f"mask {good}: now sha256 {hashlib.sha256(good.read_bytes()).hexdigest()},"
        f" loaded sha256 {record['mask_file_sha256']}"
    )
    # the calibration file too, and the mask the run applied (an outside pyFAI probe: nothing in the
    # files named the .poni used, nor checksummed the combined mask), and the backend
    from kernels import poni_text

    poni = tmp_path / "beamline.poni"
    poni.write_text(poni_text(Geometry(dist=0.2), (1024, 1024)))
    cal = load_calibration(load_settings(overrides=[*overrides, f'reduction.poni_file="{poni}"']))
    ctx = RunContext(get_backend("numpy"), Geometry(dist=0.2), (1024, 1024), 20, "2th_deg", params, cal)
    record = PowderStage(ctx).settings_record()
    assert record["poni_file"] == str(poni)
    assert record["poni_file_sha256"] == hashlib.sha256(poni.read_bytes()).hexdigest()
    assert record["mask_sha256"] == hashlib.sha256(np.packbits(cal.mask)).hexdigest()
    assert record["backend"] == "numpy"
    wrong = tmp_path / "small.npy"
    np.save(wrong, np.zeros((10, 10)))
    with pytest.raises(
        ConfigError, match=r"reduction.dark_file = .*image is \(10, 10\), frames are \(1024, 1024\)"
    ):
        load_calibration(load_settings(overrides=[f'reduction.dark_file="{wrong}"']))
    with pytest.raises(ConfigError, match=r"cannot read a \.npy image"):
        load_calibration(load_settings(overrides=[f'reduction.flat_file="{tmp_path / "missing.npy"}"']))
    text = tmp_path / "flat.txt"
    text.write_text("1 2 3\n")  # numpy's own message said "pickled (object) data"
    with pytest.raises(ConfigError, match=r"not a NumPy file: it does not start with NumPy's \.npy header"):
        load_calibration(load_settings(overrides=[f'reduction.flat_file="{text}"']))
    # files that are no numeric image: each a clear error at start, never a crash mid-run
    archive = tmp_path / "dark.npz"
    np.savez(archive, dark=np.zeros((1024, 1024)))
    with pytest.raises(ConfigError, match=r"an \.npz archive, not one \.npy image"):
        load_calibration(load_settings(overrides=[f'reduction.dark_file="{archive}"']))
    for name, image in (("text", np.full((1024, 1024), "x")), ("complex", np.zeros((1024, 1024), complex))):
        path = tmp_path / f"{name}.npy"
        np.save(path, image)
        with pytest.raises(ConfigError, match=r"reduction.flat_file = .*pixels of type .*, not numbers"):
            load_calibration(load_settings(overrides=[f'reduction.flat_file="{path}"']))
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"cannot read a \.npy image"):
        load_calibration(load_settings(overrides=[f'reduction.mask_file="{empty}"']))
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match=r"cannot read a \.npy image"):  # never unpickled
        load_calibration(load_settings(overrides=[f'reduction.dark_file="{pickled}"']))


def test_a_mask_and_flat_that_leave_no_pixel_refuse_the_start(tmp_path) -> None:
    """An outside probe: a mask of NaNs (nonzero: every pixel out) or a flat field of zeros ran, and every
    profile came out 0 with nothing in the log. Each now refuses the start, saying which file and how
    many pixels; a mask and a flat that leave one pixel between them start."""
    from edge.appliance import load_calibration

    shape = (1024, 1024)
    nan_mask, zero_flat = tmp_path / "nan.npy", tmp_path / "flat0.npy"
    np.save(nan_mask, np.full(shape, np.nan))
    np.save(zero_flat, np.zeros(shape, np.float32))
    with pytest.raises(
        ConfigError, match=r"no pixel is left to reduce: the mask \(reduction.mask_file\) excludes 1048576 of"
    ):
        load_calibration(load_settings(overrides=[f'reduction.mask_file="{nan_mask}"']))
    with pytest.raises(
        ConfigError, match=r"reduction.flat_file is zero, negative or not finite at 1048576 of"
    ):
        load_calibration(load_settings(overrides=[f'reduction.flat_file="{zero_flat}"']))
    # half masked, the other half's flat unusable: nothing left between them, and both are named
    half, other = np.zeros(shape, bool), np.ones(shape, np.float32)
    half[:512] = True
    other[512:] = -1.0
    np.save(tmp_path / "half.npy", half)
    np.save(tmp_path / "other.npy", other)
    both = [
        f'reduction.mask_file="{tmp_path / "half.npy"}"',
        f'reduction.flat_file="{tmp_path / "other.npy"}"',
    ]
    with pytest.raises(
        ConfigError, match=r"excludes 524288 of 1048576 pixels; reduction.flat_file .* 524288 of"
    ):
        load_calibration(load_settings(overrides=both))
    other[600, 7] = 2.0  # one pixel left
    np.save(tmp_path / "other.npy", other)
    assert load_calibration(load_settings(overrides=both)).mask.sum() == 524288


def test_the_udp_layout_s_module_gaps_are_masked_never_reduced_as_zero_counts(tmp_path) -> None:
    """UDP frames have blank gap rows/columns between modules (always 0: no sensor there). They are in the
    run's mask, with a mask file's pixels, so no profile averages them in as zero counts."""
    from edge.appliance import load_calibration

    udp = [
        'stream.transport="udp"',
        "udp.module_rows=8",
        "udp.module_cols=6",
        "udp.grid_rows=2",
        "udp.grid_cols=2",
        "udp.gap_pixels=2",
    ]
    mask = load_calibration(load_settings(overrides=udp)).mask
    assert mask is not None and mask.shape == (18, 14)
    gap_rows, gap_cols = [8, 9], [6, 7]
    expected = np.zeros((18, 14), bool)
    expected[gap_rows, :] = True
    expected[:, gap_cols] = True
    assert np.array_equal(mask, expected)
    own = np.zeros((18, 14), bool)
    own[0, 0] = True
    np.save(tmp_path / "m.npy", own)
    both = load_calibration(
        load_settings(overrides=[*udp, f'reduction.mask_file="{tmp_path / "m.npy"}"'])
    ).mask
    assert both is not None and np.array_equal(both, expected | own)
    assert load_calibration(load_settings(overrides=[*udp[:-1], "udp.gap_pixels=0"])).mask is None
    from edge.appliance import detector_gaps  # the files tell gaps (NXmx bit 0) from the mask file's

    gaps = detector_gaps(load_settings(overrides=[*udp, f'reduction.mask_file="{tmp_path / "m.npy"}"']))
    assert gaps is not None and np.array_equal(gaps, expected)
    assert detector_gaps(load_settings(overrides=[*udp[:-1], "udp.gap_pixels=0"])) is None


def test_a_dark_pixel_that_is_not_finite_is_left_out_as_masked(tmp_path) -> None:
    """An outside probe: a dark image with one NaN was accepted without a word and made one bin of every
    profile NaN. As a flat's, such a pixel is left out as masked, and the dark is finite everywhere."""
    from edge.appliance import load_calibration

    dark = np.zeros((1024, 1024), np.float32)
    dark[10, 10] = np.nan
    dark[20, 30] = np.inf
    path = tmp_path / "dark.npy"
    np.save(path, dark)
    cal = load_calibration(load_settings(overrides=[f'reduction.dark_file="{path}"']))
    assert cal.mask is not None and cal.mask[10, 10] and cal.mask[20, 30]
    assert int(np.count_nonzero(cal.mask)) == 2
    assert np.isfinite(cal.dark).all()
