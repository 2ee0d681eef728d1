"""One test body per kernel, run against every backend that loads here.

pyFAI, bitshuffle and h5py + hdf5plugin are the oracles; the NumPy backend is the oracle for the others.
The GPU backend runs here when a GPU (or numba's CUDA simulator, see test_gpu_simulator.py) is present.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import Geometry, get_backend, make_gain

BACKENDS = ["numpy", "numba", "gpu"]
SHAPE = (40, 56)
GEOMETRY = Geometry(
    dist=0.05, poni1=0.0017, poni2=0.0022, rot1=0.012, rot2=-0.021, rot3=0.03, wavelength=1.0e-10
)
UNITS = ["2th_deg", "q_nm^-1"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> kernels.Backend:
    if request.param == "gpu" and os.environ.get("EDGE_TEST_GPU") != "1":
        pytest.skip("the GPU backend runs in test_gpu_simulator.py (CUDA simulator) or with EDGE_TEST_GPU=1")
    try:
        return get_backend(request.param)
    except kernels.BackendUnavailable as error:
        pytest.skip(str(error))


def _frames(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.poisson(200, SHAPE).astype(np.uint16)
    raw[3, 4] = 0  # a zero count exercises Poisson's max(1, raw)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:4, :] = True
    mask[-6:, -9:] = True  # covers the pixels nearest the PONI: range edges differ in 1D and 2D
    mask[20, 30] = True
    return {
        "raw": raw,
        "dark": rng.uniform(0.0, 5.0, SHAPE).astype(np.float32),
        "flat": rng.uniform(0.8, 1.2, SHAPE).astype(np.float32),
        "mask": mask,
    }


def _pyfai_integrator():  # type: ignore[no-untyped-def]
    pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    g = GEOMETRY
    detector = Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=SHAPE)
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


def _assert_rel(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-6) -> None:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    scale = np.maximum(np.abs(ref), 1e-30)
    worst = float(np.max(np.abs(ours - ref) / scale, initial=0.0))
    assert worst <= rtol, f"worst relative difference {worst:.3g}"


# ---- corrections -----------------------------------------------------------------------------------


def test_correct_equals_reference(backend: kernels.Backend) -> None:
    f = _frames()
    gain = make_gain(SHAPE, flat=f["flat"], mask=f["mask"])
    out = np.empty(SHAPE, dtype=np.float32)
    expected = kernels.get_backend("numpy").correct(f["raw"], f["dark"], gain, np.empty_like(out))
    result = backend.correct(f["raw"], f["dark"], gain, out)
    assert result is out
    np.testing.assert_array_equal(out, expected)
    assert np.all(out[f["mask"]] == 0)


def test_make_gain_zeroes_masked_dead_and_bad_flat() -> None:
    flat = np.array([[2.0, 0.0], [np.nan, 4.0]], dtype=np.float32)
    dead = np.array([[False, False], [False, True]])
    gain = make_gain((2, 2), flat=flat, dead=dead)
    np.testing.assert_array_equal(gain, np.array([[0.5, 0.0], [0.0, 0.0]], dtype=np.float32))


def test_jungfrau_three_gain_conversion(backend: kernels.Backend) -> None:
    rng = np.random.default_rng(3)
    adc = rng.integers(0, 0x4000, SHAPE, dtype=np.uint16)
    code = rng.choice(np.array([0, 1, 3, 2], dtype=np.uint16), SHAPE, p=[0.6, 0.25, 0.1, 0.05])
    raw = (code << 14 | adc).astype(np.uint16)
    pedestal = rng.uniform(1000, 3000, (3, *SHAPE)).astype(np.float32)
    gain = np.stack([np.full(SHAPE, v, np.float32) for v in (40.0, -1.5, -0.1)])
    out = np.empty(SHAPE, dtype=np.float32)
    backend.jungfrau_convert(raw, pedestal, gain, out)
    stage = np.select([code == 0, code == 1, code == 3], [0, 1, 2], -1)
    i, j = np.nonzero(stage >= 0)
    s = stage[i, j]
    expected = (adc[i, j].astype(np.float32) - pedestal[s, i, j]) / gain[s, i, j]
    np.testing.assert_array_equal(out[i, j], expected)
    assert np.all(out[stage < 0] == 0)


def test_histogram_sums_per_bin(backend: kernels.Backend) -> None:
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 10, SHAPE).astype(np.float32)
    bins = rng.integers(0, 13, SHAPE).astype(np.int32)  # 12 is the masked sentinel
    expected = np.array([values[bins == b].astype(np.float64).sum() for b in range(12)])
    np.testing.assert_allclose(backend.histogram(values, bins, 12), expected, rtol=1e-12)


@pytest.mark.parametrize("pixels", [65537, 65538])
def test_bin_sums_of_saturated_uint16_frames_are_exact(backend: kernels.Backend, pixels: int) -> None:
    # 65537 pixels at 65535 is the most a 32-bit accumulator holds; one more needs a wider one
    values = np.full((2, pixels), 65535, dtype=np.uint16)
    values[1, :7] = [0, 1, 2, 3, 4, 5, 6]
    bins = np.zeros((2, pixels), dtype=np.uint16)
    bins[1] = 1
    bins[1, :3] = 2  # the dropped sentinel
    summer = backend.module.BinSummer(bins, 2)
    sums, variance = summer(values, True)
    plain, _ = summer(values, False)
    expected = [65535.0 * pixels, 65535.0 * (pixels - 7) + 3 + 4 + 5 + 6]
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(sums, expected)
    np.testing.assert_array_equal(variance, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
def test_bin_sums_variance_is_exact_on_either_path_as_pixels_below_1_come_and_go(dtype: type) -> None:
    """numba sums the Poisson variance max(1, v) of an integer frame with few pixels below 1 as the signal
    plus 1 - v of those pixels; a frame with many of them switches the next frame back to summing max(1, v)
    itself. Either way the sums equal NumPy's, exactly (negative values included)."""
    rng = np.random.default_rng(11)
    shape = (96, 130)
    bins = rng.integers(0, 41, shape).astype(np.uint16)  # 40 bins and the dropped sentinel
    ours = get_backend("numba").module.BinSummer(bins, 40)
    reference = get_backend("numpy").module.BinSummer(bins, 40)
    paths = []
    for mean in (30.0, 0.4, 0.4, 30.0, 6.0, 30.0):  # few, many, many, few, few pixels below 1
        frame = rng.poisson(mean, shape).astype(dtype)
        if dtype == np.int32:
            frame[rng.random(shape) < 0.01] = -7  # below 1 too: max(1, v) = 1
        paths.append(ours.few_low)
        sums, variance = ours(frame, True)
        want, want_variance = reference(frame, True)
        np.testing.assert_array_equal(sums, want)
        np.testing.assert_array_equal(variance, want_variance)
    assert paths == [True, True, False, False, True, True]


@pytest.mark.parametrize(("size", "circle", "axis"), [(33, False, 23.0), (34, True, 24.5), (31, True, 21.0)])
def test_backprojection_of_mirrored_and_lone_angles_equals_reference(
    size: int, circle: bool, axis: float
) -> None:
    # theta and 180 - theta share one detector position per pixel (the mirrored column): pairs of
    # them, pairs left over from a group of four, lone angles and an angle past 180 must all add up
    rng = np.random.default_rng(3)
    degrees = np.concatenate(
        ([0.0, 90.0, 200.0, 33.3], [10, 170, 20, 160, 30, 150, 40, 140, 50, 130, 61, 119])
    )
    filtered = rng.normal(size=(degrees.size, 48)).astype(np.float32)
    expected = get_backend("numpy").module.backproject(
        filtered, np.deg2rad(degrees), axis, circle, np.zeros((size, size), np.float32)
    )
    got = get_backend("numba").module.backproject(
        filtered, np.deg2rad(degrees), axis, circle, np.zeros((size, size), np.float32)
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# ---- azimuthal integration ---------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_integrate1d_matches_pyfai(backend: kernels.Backend, unit: str) -> None:
    f = _frames()
    ai = _pyfai_integrator()
    npt = 37
    ref = ai.integrate1d(
        f["raw"],
        npt,
        unit=unit,
        method=("no", "histogram", "cython"),
        mask=f["mask"],
        dark=f["dark"],
        flat=f["flat"],
        polarization_factor=0.95,
        error_model="poisson",
    )
    integrator = backend.integrator(
        GEOMETRY,
        SHAPE,
        npt,
        unit=unit,
        mask=f["mask"],
        dark=f["dark"],
        flat=f["flat"],
        correct_solid_angle=True,
        polarization_factor=0.95,
        error_model="poisson",
    )
    ours = integrator.integrate_full(f["raw"])
    np.testing.assert_array_equal(ours.count, ref.count)
    _assert_rel(ours.radial, ref.radial, 1e-9)
    _assert_rel(ours.intensity, ref.intensity)
    _assert_rel(ours.sigma, ref.sigma)
    _assert_rel(ours.sum_normalization, ref.sum_normalization)
    _assert_rel(integrator.integrate(f["raw"]), ref.intensity)


@pytest.mark.parametrize("unit", UNITS)
def test_integrate2d_matches_pyfai(backend: kernels.Backend, unit: str) -> None:
    f = _frames(1)
    ai = _pyfai_integrator()
    ref = ai.integrate2d(
        f["raw"],
        17,
        24,
        unit=unit,
        method=("no", "histogram", "cython"),
        mask=f["mask"],
        dark=f["dark"],
        flat=f["flat"],
        polarization_factor=-0.5,
        error_model="poisson",
    )
    integrator = backend.integrator2d(
        GEOMETRY,
        SHAPE,
        17,
        24,
        unit=unit,
        mask=f["mask"],
        dark=f["dark"],
        flat=f["flat"],
        correct_solid_angle=True,
        polarization_factor=-0.5,
        error_model="poisson",
    )
    ours = integrator.integrate_full(f["raw"])
    assert ours.intensity.shape == (24, 17)
    np.testing.assert_array_equal(ours.count, ref.count)
    _assert_rel(ours.radial, ref.radial, 1e-9)
    assert ours.azimuthal is not None
    np.testing.assert_allclose(ours.azimuthal, ref.azimuthal, rtol=0, atol=1e-9)
    _assert_rel(ours.intensity, ref.intensity)
    _assert_rel(ours.sigma, ref.sigma)


def test_integrate_defaults_give_mean_per_bin(backend: kernels.Backend) -> None:
    f = _frames(2)
    values = f["raw"].astype(np.float32)
    integrator = backend.integrator(GEOMETRY, SHAPE, 11, unit="q_nm^-1", mask=f["mask"])
    profile = integrator.integrate(values)
    bins = integrator.bins.astype(np.int64)
    expected = np.zeros(11)
    for b in range(11):
        chosen = values[bins == b]
        if chosen.size:
            expected[b] = chosen.astype(np.float64).mean()
    _assert_rel(profile, expected, 1e-12)
    assert integrator.radial.shape == (11,)


def test_integrator_rejects_bad_input() -> None:
    backend = get_backend("numpy")
    with pytest.raises(ValueError, match="unit"):
        backend.integrator(GEOMETRY, SHAPE, 10, unit="r_mm")
    with pytest.raises(ValueError, match="error_model"):
        backend.integrator(GEOMETRY, SHAPE, 10, error_model="azimuthal")
    integrator = backend.integrator(GEOMETRY, SHAPE, 10)
    with pytest.raises(ValueError, match="shape"):
        integrator.integrate(np.zeros((3, 3)))


def test_geometry_matches_pyfai_and_reads_its_poni(tmp_path: Path) -> None:
    ai = _pyfai_integrator()
    path = tmp_path / "calib.poni"
    ai.save(str(path))
    geometry = kernels.read_poni(path)
    assert geometry == GEOMETRY
    # the same float64 formulas, but pyFAI may evaluate them in another order (Cython, numexpr, its
    # version): equal to a few ulps, never bit for bit across versions and CPUs
    np.testing.assert_allclose(
        geometry.tth(SHAPE), ai.center_array(SHAPE, unit="2th_deg", scale=False), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        geometry.chi(SHAPE), ai.center_array(SHAPE, unit="chi_rad", scale=False), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(geometry.solid_angle(SHAPE), ai.solidAngleArray(SHAPE), rtol=1e-7)
    np.testing.assert_allclose(geometry.polarization(SHAPE, 0.9), ai.polarization(SHAPE, 0.9), rtol=1e-6)


# ---- compression ----------------------------------------------------------------------------------


def _ring_frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    r = np.hypot(*np.meshgrid(np.arange(64) - 30.0, np.arange(48) - 20.0, indexing="xy"))
    return [
        (rng.poisson(20 + 200 * np.exp(-((r - 15 - k) ** 2) / 4))).astype(np.uint16) for k in range(count)
    ]


def test_chunks_are_byte_identical_to_hdf5_filter_and_read_back(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    frames = _ring_frames(4)
    shape = frames[0].shape
    with ThreadPoolExecutor(2) as pool:
        chunks = kernels.compress_chunks(frames, pool)
    assert chunks == kernels.compress_chunks(frames)
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        filtered = f.create_dataset(
            "filtered", data=np.stack(frames), chunks=(1, *shape), **hdf5plugin.Bitshuffle(cname="lz4")
        )
        direct = f.create_dataset(
            "direct",
            shape=(len(frames), *shape),
            dtype=np.uint16,
            chunks=(1, *shape),
            **kernels.hdf5_filter_options(),
        )
        for i, chunk in enumerate(chunks):
            assert filtered.id.read_direct_chunk((i, 0, 0))[1] == chunk
            direct.id.write_direct_chunk((i, 0, 0), chunk)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["direct"][()], np.stack(frames))
    with ThreadPoolExecutor(2) as pool:
        back = kernels.decompress_chunks(chunks, shape, np.uint16, pool)
    for frame, restored in zip(frames, back, strict=True):
        np.testing.assert_array_equal(restored, frame)


def test_decompress_rejects_wrong_shape() -> None:
    chunk = kernels.compress_chunk(_ring_frames(1)[0])
    with pytest.raises(ValueError, match="needs"):
        kernels.decompress_chunk(chunk, (10, 10), np.uint16)
    with pytest.raises(ValueError, match="header"):
        kernels.decompress_chunk(b"abc", (10, 10), np.uint16)


# ---- registry --------------------------------------------------------------------------------------


def test_import_touches_neither_gpu_nor_bitshuffle() -> None:
    code = "import sys, kernels; print(sorted(m for m in ('numba.cuda', 'cupy', 'bitshuffle') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_missing_gpu_says_how_to_install_and_auto_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or "gpu" in kernels.available_backends():
        pytest.skip("a GPU (or the simulator) is available here")
    with pytest.raises(kernels.BackendUnavailable, match=r"pip install 'edge\[gpu\]'"):
        get_backend("gpu")
    with caplog.at_level(logging.INFO, logger="kernels._registry"):
        chosen = get_backend("auto")
    assert chosen.name == "numba"
    assert chosen.degraded_from == ["gpu"]
    # said, at INFO: "auto" on a machine without a GPU is the usual case, not a warning at every start
    (record,) = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert record.levelno == logging.INFO


def test_edge_backend_environment_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_BACKEND", "numpy")
    assert get_backend().name == "numpy"
    monkeypatch.setenv("EDGE_BACKEND", "nonsense")
    with pytest.raises(kernels.BackendUnavailable, match="unknown"):
        get_backend()
