"""Tomography, peak finding, ROI statistics and preview: one test body per kernel, every backend.

Oracles: ``skimage.transform.iradon`` for filtered back-projection (max |ours - skimage| <= 1e-4 of the
image's peak), simulated Bragg spots with known positions for peak finding, ``scipy.ndimage.label`` for
connected components, and the NumPy backend for everything else.
"""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np
import pytest

import kernels
from kernels import get_backend
from kernels._peaks import kernel_frame

BACKENDS = ["numpy", "numba", "gpu"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> kernels.Backend:
    if request.param == "gpu" and os.environ.get("EDGE_TEST_GPU") != "1":
        pytest.skip("the GPU backend runs in test_gpu_simulator.py (CUDA simulator) or with EDGE_TEST_GPU=1")
    try:
        return get_backend(request.param)
    except kernels.BackendUnavailable as error:
        pytest.skip(str(error))


def _small(backend: kernels.Backend) -> bool:
    return backend.name == "gpu" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# ---- tomography --------------------------------------------------------------------------------------


def _phantom_sinogram(
    n: int, n_angles: int, circle: bool, radius: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("skimage")
    from skimage.data import shepp_logan_phantom
    from skimage.transform import radon, resize

    image = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    if circle:
        yy, xx = np.mgrid[:n, :n] - n // 2
        image = image * (xx**2 + yy**2 <= (n // 2 - 1 if radius is None else radius) ** 2)
    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    return radon(image, theta, circle=circle).T, theta  # ours is (n_angles, n_detector)


@pytest.mark.parametrize("circle", [True, False])
@pytest.mark.parametrize("filter_name", ["ramp", "shepp-logan", "cosine", "hamming", "hann"])
def test_fbp_matches_skimage_iradon(backend: kernels.Backend, filter_name: str, circle: bool) -> None:
    from skimage.transform import iradon

    n, n_angles = (16, 10) if _small(backend) else (48, 40)
    sino, theta = _phantom_sinogram(n, n_angles, circle)
    ref = iradon(sino.T, theta, filter_name=filter_name, interpolation="linear", circle=circle)
    ours = backend.fbp(sino, theta, filter_name=filter_name, circle=circle)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    worst = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    assert worst <= 1e-4, f"max |ours - skimage| / max |skimage| = {worst:.2e}"


def test_fbp_output_size_and_center(backend: kernels.Backend) -> None:
    from skimage.transform import iradon

    n, n_angles = (16, 8) if _small(backend) else (40, 30)
    sino, theta = _phantom_sinogram(n, n_angles, True)
    ref = iradon(sino.T, theta, output_size=n - 6, circle=True)
    ours = backend.fbp(sino, theta, output_size=n - 6)
    assert float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref))) <= 1e-4
    # a rotation axis 3 pixels right of the middle: shift the data, say where the axis is
    sino, theta = _phantom_sinogram(n, n_angles, True, radius=n // 4)
    shifted = np.zeros_like(sino)
    shifted[:, 3:] = sino[:, :-3]
    moved = backend.fbp(shifted, theta, center=n // 2 + 3)
    plain = backend.fbp(sino, theta)
    assert float(np.max(np.abs(moved - plain)) / np.max(np.abs(plain))) <= 1e-4


def test_flat_field_and_minus_log(backend: kernels.Backend) -> None:
    rng = np.random.default_rng(2)
    dark = rng.uniform(90, 110, (6, 7)).astype(np.float32)
    flat = dark + rng.uniform(900, 1100, (6, 7)).astype(np.float32)
    transmission = rng.uniform(0.05, 1.0, (3, 6, 7))
    raw = (dark + transmission * (flat - dark)).astype(np.uint16)
    raw[0, 0, 0] = 0  # below dark: clamped before the log
    out = np.empty(raw.shape, np.float32)
    backend.flat_field(raw, dark, flat, out)
    expected = -np.log(np.maximum((raw - dark.astype(np.float64)) / (flat - dark), 1e-6))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    linear = backend.flat_field(raw, dark, flat, np.empty_like(out), minus_log=False)
    np.testing.assert_allclose(linear, (raw - dark.astype(np.float64)) / (flat - dark), rtol=1e-5, atol=1e-6)


def test_flat_field_of_a_dead_pixel_is_no_attenuation(backend: kernels.Backend) -> None:
    """A pixel whose flat equals its dark (dead: 0 in both), or a NaN in the frame, has no measure of
    the sample: transmission 1, line integral 0, so a reconstructed slice through it stays finite."""
    dark = np.full((4, 5), 100.0, np.float32)
    flat = np.full((4, 5), 1100.0, np.float32)
    dark[1, 2] = flat[1, 2] = 0.0  # dead
    dark[2, 3], flat[2, 3] = 500.0, 400.0  # flat below dark: no use either
    raw = np.full((2, 4, 5), 600.0, np.float32)
    raw[1, 0, 0] = np.nan
    out = backend.flat_field(raw, dark, flat, np.empty(raw.shape, np.float32))
    assert np.all(np.isfinite(out))
    assert out[0, 1, 2] == 0 and out[0, 2, 3] == 0 and out[1, 0, 0] == 0
    np.testing.assert_allclose(out[0, 0, 0], -np.log(0.5), rtol=1e-6)
    linear = backend.flat_field(raw, dark, flat, np.empty(raw.shape, np.float32), minus_log=False)
    assert linear[0, 1, 2] == 1 and linear[1, 0, 0] == 1
    if _small(backend):
        return
    # a reconstruction through the dead pixel's column is finite (it was NaN everywhere)
    n = 32
    sino, theta = _phantom_sinogram(n, 16, True)
    projections = 100.0 + np.exp(-sino[:, None, :] / sino.max()) * 1000.0
    projections = np.repeat(projections, 2, axis=1).astype(np.float32)
    dark, flat = np.full((2, n), 100.0, np.float32), np.full((2, n), 1100.0, np.float32)
    dark[0, n // 2] = flat[0, n // 2] = 0.0
    stream = backend.streaming_reconstructor(n, [0], dark=dark, flat=flat)
    for k in range(len(theta)):
        stream.add(projections[k], theta[k])
    assert np.all(np.isfinite(stream.slices()[0]))


def test_streaming_reconstruction_equals_batch(backend: kernels.Backend) -> None:
    n, n_angles = (12, 6) if _small(backend) else (32, 24)
    sino, theta = _phantom_sinogram(n, n_angles, True)
    rng = np.random.default_rng(0)
    # projections (n_angles, rows, cols) whose rows 1 and 3 hold the sinogram, raw with dark and flat
    dark = np.full((5, n), 100.0, np.float32)
    flat = np.full((5, n), 4100.0, np.float32)
    line_integrals = np.repeat(sino[:, None, :] / sino.max(), 5, axis=1)
    line_integrals[:, 3] *= 0.5
    projections = dark + np.exp(-line_integrals) * (flat - dark)
    stream = backend.streaming_reconstructor(n, [1, 3], dark=dark, flat=flat)
    order = rng.permutation(n_angles)  # projections may arrive in any order
    for k in order:
        stream.add(projections[k], theta[k])
    assert stream.n_seen == n_angles
    normalised = backend.flat_field(projections, dark, flat, np.empty(projections.shape, np.float32))
    sinograms = kernels.assemble_sinograms(normalised, [1, 3])
    assert sinograms.shape == (2, n_angles, n)
    for k in range(2):
        batch = backend.fbp(sinograms[k], theta)
        np.testing.assert_allclose(stream.slices()[k], batch, rtol=0, atol=1e-5 * np.abs(batch).max())


@pytest.mark.parametrize("batch", [1, 5])
def test_streaming_batches_hold_projections_until_slices(backend: kernels.Backend, batch: int) -> None:
    n, n_angles = (12, 7) if _small(backend) else (32, 13)
    sino, theta = _phantom_sinogram(n, n_angles, True)
    stream = backend.streaming_reconstructor(n, [0], batch=batch, pair_window=0)  # no waiting for mirrors
    for k in range(n_angles):
        stream.add(sino[k][None, :], theta[k])
    # full batches are back-projected as they fill; the live view adds the held ones to a copy
    done = n_angles - n_angles % batch
    assert stream.n_seen == n_angles and stream.n_projected == done
    full = backend.fbp(sino, theta)
    np.testing.assert_allclose(stream.partial_slices()[0], full, rtol=0, atol=1e-5 * np.abs(full).max())
    assert stream.n_projected == done  # the live view took nothing out of waiting
    np.testing.assert_allclose(stream.slices()[0], full, rtol=0, atol=1e-5 * np.abs(full).max())
    assert stream.n_projected == n_angles


@pytest.mark.parametrize("window", [256, 3])
def test_streaming_waits_for_mirrored_projections(backend: kernels.Backend, window: int) -> None:
    n, n_angles = (12, 8) if _small(backend) else (32, 24)
    sino, theta = _phantom_sinogram(n, n_angles, True)  # k * 180 / n_angles: k and n_angles - k mirror
    stream = backend.streaming_reconstructor(n, [0], batch=4, pair_window=window)
    half = n_angles // 2
    for k in range(half):  # 0 up to 90 degrees: nothing to pair with yet
        stream.add(sino[k][None, :], theta[k])
    # every projection waits for its mirror, unless more than the window wait (the oldest go on alone)
    assert stream.n_projected == max(0, half - window) // 4 * 4  # whole batches of the ones gone on
    # the live view is not blank meanwhile: it shows the first half, held or not
    first = backend.fbp(sino[:half], theta[:half])
    np.testing.assert_allclose(stream.partial_slices()[0], first, rtol=0, atol=1e-5 * np.abs(first).max())
    for k in range(half, n_angles):
        stream.add(sino[k][None, :], theta[k])
    assert stream.n_seen == n_angles
    full = backend.fbp(sino, theta)
    np.testing.assert_allclose(stream.slices()[0], full, rtol=0, atol=1e-5 * np.abs(full).max())
    assert stream.n_projected == n_angles


def test_center_estimated_from_0_and_180_degrees() -> None:
    sino, theta = _phantom_sinogram(64, 2, False)  # angles 0 and 90
    from skimage.data import shepp_logan_phantom
    from skimage.transform import radon, resize

    image = resize(shepp_logan_phantom(), (64, 64), anti_aliasing=True)
    pair = radon(image, np.array([0.0, 180.0]), circle=False).T
    n = pair.shape[1]
    assert abs(kernels.estimate_center(pair[0], pair[1]) - n // 2) <= 0.1
    for shift in (-5, 4):
        moved = np.roll(pair, shift, axis=1)
        assert abs(kernels.estimate_center(moved[0], moved[1]) - (n // 2 + shift)) <= 0.1
    assert (
        abs(kernels.estimate_center_from_sinogram(np.roll(pair, 4, axis=1), [0, 180]) - (n // 2 + 4)) <= 0.1
    )
    assert sino.shape[0] == 2 and theta.size == 2


def _blob_projection(n: int, axis: float, theta_deg: float, blobs: list[tuple[float, ...]]) -> np.ndarray:
    """Exact line integrals at pixel centres 0..n-1 of Gaussian blobs (x, y, sigma, amplitude) about a
    rotation axis at pixel position ``axis``: a phantom whose axis is known to any fraction of a pixel."""
    t = np.arange(n) - axis
    theta = np.deg2rad(theta_deg)
    out = np.zeros(n)
    for x, y, sigma, amplitude in blobs:
        u = x * np.cos(theta) + y * np.sin(theta)
        out += amplitude * np.sqrt(2 * np.pi) * sigma * np.exp(-0.5 * ((t - u) / sigma) ** 2)
    return out


@pytest.mark.parametrize("axis", [40.0, 50.25, 60.0, 60.3, 61.25, 63.6, 64.0, 70.75, 80.5])
def test_center_estimate_has_no_bias_towards_the_detector_centre(axis: float) -> None:
    """An outside tomography probe: the axis came out 0.25 px towards the detector's centre (60.0 read
    60.25, 64.0 read 63.75), a cross-correlation peak pulled by its shrinking overlap. Noise-free, the
    estimate is now within 0.01 px; with noise and an offset, within 0.1 px."""
    rng = np.random.default_rng(1)
    blobs = [
        (rng.uniform(-25, 25), rng.uniform(-25, 25), rng.uniform(2, 8), rng.uniform(0.5, 2)) for _ in range(6)
    ]
    p0, p180 = _blob_projection(128, axis, 0.0, blobs), _blob_projection(128, axis, 180.0, blobs)
    assert abs(kernels.estimate_center(p0, p180) - axis) <= 0.01
    noise = np.random.default_rng(int(axis * 100))
    noisy = [p + 1.0 + noise.normal(0, 0.5, p.size) for p in (p0, p180)]
    assert abs(kernels.estimate_center(*noisy) - axis) <= 0.1
    assert np.isnan(kernels.estimate_center(np.ones(128), np.ones(128)))  # flat: no axis to tell


def test_fbp_rejects_bad_input() -> None:
    backend = get_backend("numpy")
    with pytest.raises(ValueError, match="filter"):
        backend.fbp(np.zeros((4, 8)), filter_name="cosine-ish")
    with pytest.raises(ValueError, match="angles"):
        backend.fbp(np.zeros((4, 8)), theta=[0, 1])
    with pytest.raises(ValueError, match="2-D"):
        backend.fbp(np.zeros(8))


# ---- peak finding ----------------------------------------------------------------------------------


def simulate_spots(
    shape: tuple[int, int], n_spots: int, seed: int, sigma: float = 10.0, background: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise (``sigma``) on a flat background plus Gaussian spots (width 1 px) whose brightest
    pixel is 6 to 40 sigma above the background, at least 12 px apart. Returns (frame, true positions)."""
    rng = np.random.default_rng(seed)
    frame = rng.normal(background, sigma, shape)
    spots: list[tuple[float, float]] = []
    while len(spots) < n_spots:
        r, c = rng.uniform(4, shape[0] - 4), rng.uniform(4, shape[1] - 4)
        if all((r - a) ** 2 + (c - b) ** 2 > 144 for a, b in spots):
            spots.append((r, c))
    for r, c in spots:
        r0, c0 = int(r) - 3, int(c) - 3
        yy, xx = np.mgrid[r0 : r0 + 7, c0 : c0 + 7]
        blob = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 2.0)
        frame[r0 : r0 + 7, c0 : c0 + 7] += rng.uniform(6, 40) * sigma * blob / blob.max()
    return frame.astype(np.float32), np.array(spots)


def recall_precision(found: kernels.Peaks, truth: np.ndarray, tolerance: float = 1.5) -> tuple[float, float]:
    if len(found) == 0:
        return 0.0, 1.0
    positions = np.stack([found.row, found.col], axis=1)
    d = np.hypot(*(positions[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    recall = float(np.mean(d.min(axis=0) <= tolerance))
    precision = float(np.mean(d.min(axis=1) <= tolerance))
    return recall, precision


def test_peak_finder_finds_simulated_spots(backend: kernels.Backend) -> None:
    shape, n_spots = ((48, 64), 6) if _small(backend) else ((256, 320), 60)
    recalls, precisions = [], []
    for seed in range(3):
        frame, truth = simulate_spots(shape, n_spots, seed)
        finder = backend.peak_finder(shape, min_snr=5.0, min_pixels=2, max_pixels=60, min_peaks=n_spots // 2)
        peaks = finder.find(frame)
        recall, precision = recall_precision(peaks, truth)
        recalls.append(recall)
        precisions.append(precision)
        assert finder.is_hit(frame)
        assert np.all(peaks.n_pixels >= 2) and np.all(peaks.snr > 0)
    assert np.mean(recalls) >= 0.99 and np.mean(precisions) >= 0.99, (recalls, precisions)


def weak_spots(
    shape: tuple[int, int], n_spots: int, seed: int, snr: tuple[float, float], background: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson frames (uint16) of a flat ``background`` with Gaussian spots (sigma 1 px, integrated over
    each pixel) whose ideal SNR ``I / sqrt(I + background * 4 pi)`` is uniform in ``snr``, at least 10 px
    apart: faint spots whose flux spreads over several pixels. Returns (frame, true positions)."""
    from scipy.special import erf

    rng = np.random.default_rng(seed)
    expected = np.full(shape, background)
    spots: list[tuple[float, float]] = []
    while len(spots) < n_spots:
        r, c = rng.uniform(6, shape[0] - 7), rng.uniform(6, shape[1] - 7)
        if all((r - a) ** 2 + (c - b) ** 2 > 100 for a, b in spots):
            spots.append((r, c))
    for r, c in spots:
        s = rng.uniform(*snr)
        intensity = (s * s + s * np.sqrt(s * s + 16 * np.pi * background)) / 2
        r0, c0 = round(r) - 5, round(c) - 5
        rows = np.diff(erf((np.arange(r0, r0 + 12) - 0.5 - r) / np.sqrt(2))) / 2
        cols = np.diff(erf((np.arange(c0, c0 + 12) - 0.5 - c) / np.sqrt(2))) / 2
        expected[r0 : r0 + 11, c0 : c0 + 11] += intensity * np.outer(rows, cols)
    return rng.poisson(expected).astype(np.uint16), np.array(spots)


def test_peak_finder_finds_faint_spots_a_pixel_threshold_misses(backend: kernels.Backend) -> None:
    """Spots of ideal SNR 7-10 whose brightest pixel is only 3-5 sigma up: the 3x3 box sums find them
    (a 5-sigma per-pixel threshold with 2 pixels finds about two thirds)."""
    pytest.importorskip("scipy")
    shape, n_spots = ((48, 64), 6) if _small(backend) else ((256, 256), 60)
    recalls, precisions = [], []
    for seed in range(3):
        frame, truth = weak_spots(shape, n_spots, seed, snr=(7.0, 10.0))
        peaks = backend.peak_finder(shape).find(frame)  # the defaults: box SNR 5, 2-200 px
        recall, precision = recall_precision(peaks, truth)
        recalls.append(recall)
        precisions.append(precision)
    assert np.mean(recalls) >= 0.97 and np.mean(precisions) >= 0.99, (recalls, precisions)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((17, 23), np.float32), ((13, 150), np.float32), ((13, 150), np.uint16)],
    ids=["narrow", "wide", "wide-uint16"],
)
def test_peak_candidates_are_the_box_sums_above_the_ring_noise(
    backend: kernels.Backend, shape: tuple[int, int], dtype: type
) -> None:
    """``find_candidates`` against its definition, pixel by pixel: frame edges, masked, NaN and inf
    pixels (left out of the boxes), a ring without noise (never a candidate), the ADC threshold. The
    wide frames span several of the numba kernel's column blocks, with the mask, the non-finite pixels
    and the rings crossing block borders."""
    rng = np.random.default_rng(21)
    frame = rng.normal(50.0, 5.0, shape)
    frame[rng.random(shape) < 0.08] += 60.0
    width = shape[1]
    if dtype == np.float32:
        frame[4, 5], frame[9, 0], frame[12, width - 3] = np.nan, np.inf, -np.inf
        if width > 64:
            frame[2, 63], frame[3, 64] = np.nan, np.inf  # either side of a block border
    frame = frame.astype(dtype)
    ring_width = -(-width // 4)
    rings = (np.arange(width)[None, :] // ring_width + np.zeros((shape[0], 1), int)).astype(np.uint16)  # 4
    rings[6:8, 3:9] = 4  # masked: the sentinel (n_rings)
    rings[9:11, 60:70] = 4
    mean = np.array([50.0, 48.0, 52.0, 50.0])
    sigma = np.array([5.0, 6.0, 0.0, 4.0])
    module = backend.module
    for min_snr, adc in [(3.0, 0.0), (1.5, 0.0), (1.5, 57.0)]:
        got = module.find_candidates(frame, rings, mean, sigma, min_snr, adc)
        want = []
        for i in range(shape[0]):
            for j in range(shape[1]):
                box = [
                    float(frame[a, b])
                    for a in range(max(0, i - 1), min(shape[0], i + 2))
                    for b in range(max(0, j - 1), min(shape[1], j + 2))
                    if rings[a, b] < 4 and np.isfinite(frame[a, b])
                ]
                if rings[i, j] == 4 or not np.isfinite(frame[i, j]) or sigma[rings[i, j]] == 0:
                    continue
                n, total = len(box), sum(box)
                mu, sd = mean[rings[i, j]], sigma[rings[i, j]]
                if total - n * mu > min_snr * sd * np.sqrt(n) * (1 + 1e-12) and total > n * adc:
                    want.append(i * shape[1] + j)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_a_lone_hot_pixel_is_no_peak_unless_single_pixel_peaks_are_asked_for(
    backend: kernels.Backend,
) -> None:
    """A hot pixel (or zinger) makes a 3x3 component of box candidates; with ``min_pixels`` >= 2 it is
    dropped as peakfinder8's pixel count drops it, while a spot of two bright pixels, and a sharp spot
    with one neighbour above background, stay; ``min_pixels`` = 1 keeps the hot pixel."""
    shape = (48, 64) if _small(backend) else (128, 160)
    rng = np.random.default_rng(5)
    frame = rng.poisson(10.0, shape).astype(np.float32)
    frame[20, 30] = 60_000.0  # hot pixel
    frame[20, 50] = 55.0  # a barely hot one: 14 sigma up, its box only just a candidate
    frame[35, 20:22] = 400.0  # a two-pixel spot
    frame[10, 12], frame[11, 12] = 900.0, 60.0  # a sharp spot, one neighbour 15 sigma up
    # a hot pixel with a neighbour above the clipping bound by chance (Poisson noise: 1 in ~35 frames had
    # one; an outside probe's hot pixel was a 9-pixel peak in those frames only)
    frame[30, 45], frame[31, 45] = 60_000.0, 21.0

    def near(peaks: kernels.Peaks, row: float, col: float) -> int:
        return int(np.sum(np.hypot(peaks.row - row, peaks.col - col) < 1.5))

    peaks = backend.peak_finder(shape, min_snr=5.0).find(frame)
    assert near(peaks, 20, 30) == 0 and near(peaks, 20, 50) == 0 and near(peaks, 30, 45) == 0
    assert near(peaks, 35, 20.5) == 1 and near(peaks, 10.1, 12) == 1
    every = backend.peak_finder(shape, min_snr=5.0, min_pixels=1).find(frame)
    assert near(every, 20, 30) == 1 and near(every, 20, 50) == 1  # both hot pixels are components
    assert every.n_pixels[np.hypot(every.row - 20, every.col - 30) < 0.5][0] == 9  # its 3x3 box centres
    reference = get_backend("numpy").peak_finder(shape, min_snr=5.0).find(frame)
    np.testing.assert_allclose(np.sort(peaks.row), np.sort(reference.row), rtol=1e-9)


def test_the_compiled_lone_pixel_rule_equals_the_numpy_rule(backend: kernels.Backend) -> None:
    """The numba and GPU backends' ``lone_peaks`` against ``PeakFinder``'s NumPy rule on the same peaks:
    hot, barely hot and spread pixels, peaks on the frame's edges and corners and on masked pixels,
    neighbours that are NaN or inf, and positions that round half-way (the GPU backend reads only the
    5x5 pixels around each peak: the edges and corners check its windows)."""
    if backend.name == "numpy":
        pytest.skip("the NumPy rule is the reference")
    shape = (40, 56)
    rng = np.random.default_rng(8)
    frame = rng.poisson(10.0, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[15:18, 30:34] = True
    rows = rng.uniform(-0.5, shape[0] - 0.5, 300)
    cols = rng.uniform(-0.5, shape[1] - 0.5, 300)
    rows[:6], cols[:6] = [0, 0, 39, 39, 16, 20.5], [0, 55, 0, 55, 31, 7.5]  # corners, masked, half-way
    for r, c in zip(rows[::10], cols[::10], strict=True):
        frame[int(np.rint(r)), int(np.rint(c))] = rng.choice([60.0, 200.0, 5000.0])
    frame[22, 40], frame[22, 41], frame[23, 40] = 5000.0, np.nan, np.inf
    frame[5, 5], frame[5, 6] = -np.inf, 3000.0
    rows[6:9], cols[6:9] = [22, 22.2, 5], [40, 40.4, 5.6]
    for (r, c), side in (((30, 10), 17.0), ((30, 20), 16.0)):  # the centre's share of the box ~0.76, ~0.85
        frame[r - 1 : r + 2, c - 1 : c + 2] = 10.0
        frame[r, c] = 100.0
        frame[r - 1, c] = frame[r + 1, c] = frame[r, c - 1] = frame[r, c + 1] = side
    rows[9:11], cols[9:11] = [30, 30], [10, 20]
    finder = backend.peak_finder(shape, mask=mask)
    numpy_finder = get_backend("numpy").peak_finder(shape, mask=mask)
    mean, sigma = numpy_finder.background(np.where(np.isfinite(frame), frame, 10.0))
    zeros = np.zeros(rows.size)
    peaks = kernels.Peaks(rows, cols, zeros + 1.0, zeros.astype(np.int64) + 2, zeros, zeros)
    got = finder._without_lone_pixels(finder._kernel_input(frame), mean, sigma, peaks)
    want = numpy_finder._without_lone_pixels(frame, mean, sigma, peaks)
    assert 0 < len(want) < len(peaks)  # some dropped, some kept
    np.testing.assert_array_equal(got.row, want.row)
    np.testing.assert_array_equal(got.col, want.col)


def test_peak_finding_on_the_device_never_copies_the_frame_back(
    backend: kernels.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU backend finds peaks on a frame in device memory without copying it back: what returns
    to the host (per-ring sums, the candidates and their values, 5x5 windows around the peaks) is a
    small fraction of the frame, and the peaks equal the reference's."""
    if backend.name != "gpu":
        pytest.skip("the GPU backend's own test")
    from numba import cuda

    import kernels._peaks

    shape = (48, 64)
    frame, _truth = simulate_spots(shape, 6, seed=3)
    frame[20, 30] = 60_000.0  # a hot pixel: the lone-pixel rule runs and drops it
    kwargs = {"min_snr": 5.0, "min_pixels": 2, "max_pixels": 60}
    want = get_backend("numpy").peak_finder(shape, **kwargs).find(frame)
    finder = backend.peak_finder(shape, **kwargs)
    device_frame = cuda.to_device(frame)
    device_type = type(device_frame)
    copy_to_host = device_type.copy_to_host
    copied: list[int] = []

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        copied.append(int(self.nbytes))
        return copy_to_host(self, *args, **kwargs)

    def never(array: Any) -> np.ndarray:
        raise AssertionError("the frame was copied to the host")

    monkeypatch.setattr(device_type, "copy_to_host", counted)
    monkeypatch.setattr(kernels._peaks, "_on_host", never)
    got = finder.find(device_frame)
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got.row, want.row, rtol=1e-9)
    np.testing.assert_allclose(got.intensity, want.intensity, rtol=1e-9)
    assert copied and max(copied) <= frame.nbytes // 4, (copied, frame.nbytes)


def test_a_spot_in_a_ring_of_constant_background_is_found_not_its_neighbours(
    backend: kernels.Backend,
) -> None:
    """A ring whose background is one value throughout has sigma 0: found by the clean-room API client as
    peaks of negative intensity beside the spot (its neighbours' boxes reached it; the spot's own ring
    could hold no candidate) and the spot missing. Its noise is now Poisson's, and no peak has an
    intensity <= 0."""
    shape = (48, 48) if _small(backend) else (96, 96)
    rng = np.random.default_rng(3)
    centre = (shape[0] - 1) / 2
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    ring = np.floor(np.hypot(yy - centre, xx - centre)).astype(int)
    frame = rng.poisson(10, shape).astype(np.float32)
    radius = shape[0] // 3
    frame[ring == radius] = 10.0
    ys, xs = np.nonzero(ring == radius)
    y, x = int(ys[5]), int(xs[5])
    frame[y, x], frame[y, x + 1] = 1000.0, 600.0  # a spot of two pixels (one alone is a hot pixel)
    peaks = backend.peak_finder(shape).find(frame)
    assert len(peaks) == 1 and np.all(peaks.intensity > 0), (peaks.row, peaks.col, peaks.intensity)
    assert abs(peaks.row[0] - y) < 1 and abs(peaks.col[0] - (x + 0.4)) < 1
    assert 1400 < peaks.intensity[0] < 1700


def test_peak_finder_equals_reference_and_scipy_labels(backend: kernels.Backend) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    shape = (40, 52) if _small(backend) else (120, 140)
    frame, _ = simulate_spots(shape, 8, seed=7)
    frame[10, 10:14] = 1e4  # a bar: one component, its 3x3 boxes (3 rows x 6 columns)
    mask = np.zeros(shape, dtype=bool)
    mask[30:34, :] = True
    kwargs = {"min_snr": 4.0, "min_pixels": 1, "max_pixels": 100, "mask": mask}
    ours = backend.peak_finder(shape, **kwargs).find(frame)
    reference = get_backend("numpy").peak_finder(shape, **kwargs)
    ref = reference.find(frame)
    assert len(ours) == len(ref)
    np.testing.assert_array_equal(ours.n_pixels, ref.n_pixels)
    np.testing.assert_allclose(ours.row, ref.row, rtol=1e-9)
    np.testing.assert_allclose(ours.col, ref.col, rtol=1e-9)
    np.testing.assert_allclose(ours.intensity, ref.intensity, rtol=1e-9)
    # components of the candidate image, as scipy sums the 3x3 boxes and labels them (8-connectivity)
    mean, sigma = reference.background(frame)
    live = ~mask & np.isfinite(frame)
    box = np.ones((3, 3))
    total = ndimage.correlate(np.where(live, frame, 0.0).astype(np.float64), box, mode="constant")
    count = ndimage.correlate(live.astype(np.float64), box, mode="constant")
    ring = np.minimum(reference.rings, mean.size - 1)
    candidate = live & (total - count * mean[ring] > 4.0 * sigma[ring] * np.sqrt(count))
    labels, count = ndimage.label(candidate, structure=box)
    assert count == len(ref)
    sizes = np.bincount(labels.ravel())[1:]
    np.testing.assert_array_equal(np.sort(sizes), np.sort(ref.n_pixels))
    assert not np.any((ref.row >= 29.5) & (ref.row <= 33.5) & (ref.n_pixels == 1) & (ref.max_value < 1e3))


def test_peak_finder_over_a_series_equals_reference(backend: kernels.Backend) -> None:
    """One finder over a series (the numba backend learns from each frame where to look in the next),
    with NaN and inf pixels and a frame much brighter than the last: every frame as the reference."""
    shape = (40, 52) if _small(backend) else (160, 200)
    kwargs = {"min_snr": 4.0, "min_pixels": 1, "max_pixels": 100, "min_peaks": 1}
    finder = backend.peak_finder(shape, **kwargs)
    for seed in range(5):
        frame, _ = simulate_spots(shape, 6, seed=seed)
        if seed == 2:
            frame[5, 7], frame[20, 30], frame[33, 3] = np.nan, np.inf, np.nan
        if seed == 3:
            frame *= 0.5  # every ring's bound falls below what the last frame suggested
        if seed == 4:
            frame += np.random.default_rng(9).normal(0, 40, shape).astype(np.float32)
        ours = finder.find(frame)
        ref = get_backend("numpy").peak_finder(shape, **kwargs).find(frame)
        mean, sigma = finder.background(frame)
        ref_mean, ref_sigma = get_backend("numpy").peak_finder(shape, **kwargs).background(frame)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-9)
        np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-7)
        assert len(ours) == len(ref) > 0, seed
        np.testing.assert_array_equal(ours.n_pixels, ref.n_pixels)
        np.testing.assert_allclose(ours.row, ref.row, rtol=1e-9)
        np.testing.assert_allclose(ours.intensity, ref.intensity, rtol=1e-9)


class _StepByStep:
    """The numba backend less its one-call ``find_peaks``: ``PeakFinder.find`` then calls its steps in turn."""

    def __init__(self) -> None:
        self.module = type("Steps", (), {})()
        numba_module = get_backend("numba").module
        for name in dir(numba_module):
            if name != "find_peaks" and not name.startswith("__"):
                setattr(self.module, name, getattr(numba_module, name))


def test_the_one_call_finder_equals_its_steps_one_by_one() -> None:
    """numba's ``find_peaks`` against the driver calling the same compiled steps one by one, over a
    series that takes every branch: NaN and inf pixels, a frame darker than the last, one far brighter
    (the summing pass's listing overflows and the clipped pass scans), a block of more box candidates
    than the first guess at their number (found again with room for all), a flat frame (sigma 0)."""
    shape = (200, 240)  # on 2 numba threads: 8 listing streams of 6000 pixels, each one's room 4096
    kwargs: dict[str, Any] = {"min_snr": 4.0, "min_pixels": 2, "max_pixels": 100}
    module = get_backend("numba").module
    before = numba.get_num_threads()
    module.limit_threads(2)
    try:
        _compare_one_call_and_steps(shape, kwargs)
    finally:
        module.limit_threads(before)


def _compare_one_call_and_steps(shape: tuple[int, int], kwargs: dict[str, Any]) -> None:
    one_call = get_backend("numba").peak_finder(shape, **kwargs)
    steps = kernels.PeakFinder(_StepByStep(), shape, **kwargs)  # type: ignore[arg-type]
    assert hasattr(get_backend("numba").module, "find_peaks") and not hasattr(
        steps.backend.module, "find_peaks"
    )
    frames = []
    for seed in range(3):
        frame, _ = simulate_spots(shape, 6, seed=seed)
        frames.append(frame)
    frames[1][5, 7], frames[1][20, 30], frames[1][33, 3] = np.nan, np.inf, np.nan
    frames.append(frames[2] * 0.5)
    frames.append(frames[3] + 500.0)
    block = frames[0].copy()
    block[:75, :75] += 1e4
    frames.append(block)
    frames.append(np.full(shape, 100.0, np.float32))
    frames.append(frames[0])
    for k, frame in enumerate(frames):
        frame = frame.astype(np.float32)
        ours, theirs = one_call.find(frame), steps.find(frame)
        for name in ("row", "col", "intensity", "n_pixels", "max_value", "snr"):
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=f"{k} {name}")
        np.testing.assert_array_equal(one_call._guess, steps._guess, err_msg=str(k))
        if k == 3:  # the next frame's pixels are all above this one's guess: too many to list
            values = (frames[4].astype(np.float32)).ravel()
            assert (
                steps.backend.module.ring_moments_listing(values, steps.rings.ravel(), steps._guess)[2]
                is None
            )
        if k == 5:  # the block: more candidates than the first room for them
            mean, sigma = steps.background(frame)
            sigma = np.where(sigma > 0, sigma, np.sqrt(np.maximum(mean, 0.0)))
            found = steps.backend.module.find_candidates(frame, steps.rings, mean, sigma, 4.0, 0.0)
            assert found.size > 4096
    assert sum(len(one_call.find(f.astype(np.float32))) for f in frames[:3]) > 0


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int16])
def test_peak_finder_on_integer_frames_equals_reference(backend: kernels.Backend, dtype: type) -> None:
    """Integer frames (numba sums narrow integers in integers): over a series with a mask, a saturated
    block and a frame much darker than the last, the background, the candidates and the peaks equal the
    reference's."""
    shape = (48, 64) if _small(backend) else (150, 190)
    mask = np.zeros(shape, dtype=bool)
    mask[20:23, 30:90] = True
    mask[:, 5] = True
    kwargs = {"min_snr": 4.0, "min_pixels": 1, "max_pixels": 100, "min_peaks": 1, "mask": mask}
    finder = backend.peak_finder(shape, **kwargs)
    reference = get_backend("numpy").peak_finder(shape, **kwargs)
    top = np.iinfo(dtype).max
    for seed in range(4):
        frame, _ = weak_spots(shape, 12, seed, snr=(6.0, 30.0), background=[10.0, 10.0, 2.0, 40.0][seed])
        frame = np.minimum(frame, top).astype(dtype)
        if seed == 1:
            frame[40:43, 50:53] = top
        ours, ref = finder.find(frame), reference.find(frame)
        mean, sigma = finder.background(frame)
        ref_mean, ref_sigma = reference.background(frame)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
        np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-9, atol=1e-12)
        wide = kernel_frame(frame)  # uint8 and int16 reach the kernels widened (exactly): as the finder does
        got = backend.module.find_candidates(wide, finder.rings, ref_mean, ref_sigma, 4.0, 0.0)
        want = get_backend("numpy").module.find_candidates(frame, finder.rings, ref_mean, ref_sigma, 4.0, 0.0)
        np.testing.assert_array_equal(got, want)
        assert len(ours) == len(ref) > 0, seed
        np.testing.assert_array_equal(ours.n_pixels, ref.n_pixels)
        np.testing.assert_allclose(ours.row, ref.row, rtol=1e-9)
        np.testing.assert_allclose(ours.intensity, ref.intensity, rtol=1e-9)


def test_blank_frame_is_not_a_hit(backend: kernels.Backend) -> None:
    shape = (32, 40) if _small(backend) else (128, 128)
    frame = np.random.default_rng(3).normal(100.0, 10.0, shape).astype(np.float32)
    finder = backend.peak_finder(shape, min_snr=5.0, min_pixels=2, min_peaks=3)
    assert len(finder.find(frame)) <= 1
    assert not finder.is_hit(frame)
    assert kernels.classify_hit(finder.find(frame), 0)


def test_peak_finder_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="min_pixels"):
        get_backend("numpy").peak_finder((8, 8), min_pixels=5, max_pixels=2)
    finder = get_backend("numpy").peak_finder((8, 8))
    with pytest.raises(ValueError, match="shape"):
        finder.find(np.zeros((4, 4)))


# ---- ROI statistics and preview ------------------------------------------------------------------------


def test_roi_stats(backend: kernels.Backend) -> None:
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 1000, (30, 40)).astype(np.uint16)
    circle = np.hypot(*np.ogrid[-15:15, -20:20]) < 6
    rois = kernels.RoiSet(
        frame.shape, rectangles=[(2, 10, 3, 20), (25, 50, 35, 60), (5, 5, 1, 9)], masks=[circle]
    )
    stats = backend.roi_stats(frame, rois)
    values = [frame[2:10, 3:20], frame[25:30, 35:40], frame[5:5, 1:9], frame[circle]]
    np.testing.assert_array_equal(stats.count, [v.size for v in values])
    np.testing.assert_array_equal(stats.sum, [v.astype(np.float64).sum() for v in values])
    np.testing.assert_array_equal(stats.max[[0, 1, 3]], [v.max() for i, v in enumerate(values) if i != 2])
    assert stats.max[2] == -np.inf and np.isnan(stats.mean[2])
    np.testing.assert_allclose(stats.mean[[0, 1, 3]], [values[i].mean() for i in (0, 1, 3)])


@pytest.mark.parametrize("log", [True, False])
def test_preview_bins_and_scales_to_8_bit(backend: kernels.Backend, log: bool) -> None:
    rng = np.random.default_rng(5)
    frame = rng.poisson(30, (35, 42)).astype(np.uint16)
    frame[3, 5] = 60000
    binned = backend.bin_frame(frame, 4)
    expected = frame[:32, :40].reshape(8, 4, 10, 4).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(binned, expected.astype(np.float32))
    image = backend.preview(frame, 4, log=log)
    reference = get_backend("numpy").preview(frame, 4, log=log)
    assert image.dtype == np.uint8 and image.shape == (8, 10)
    assert int(np.max(np.abs(image.astype(int) - reference.astype(int)))) <= 1
    assert image.max() == 255 and image.min() == 0
    fixed = backend.preview(frame, 2, log=False, lo=0.0, hi=60.0)
    assert fixed.shape == (17, 21) and fixed[1, 2] == 255


@pytest.mark.parametrize(
    ("dtype", "want"),
    [
        (np.uint8, np.uint16),
        (np.int8, np.float32),
        (np.int16, np.float32),
        (np.uint16, np.uint16),
        (np.float32, np.float32),
    ],
)
def test_kernel_frame_is_read_only_contiguous_and_widens_rare_dtypes_exactly(dtype: type, want: type) -> None:
    """The peak kernels see one array type per dtype (a writable and a read-only frame would compile every
    kernel twice); the caller's frame is left as it was."""
    lo, hi = (np.iinfo(dtype).min, np.iinfo(dtype).max) if np.dtype(dtype).kind in "ui" else (-1e3, 1e3)
    frame = np.linspace(lo, hi, 64 * 48).reshape(64, 48).astype(dtype)[:, ::2]  # not contiguous
    seen = kernel_frame(frame)
    assert seen.dtype == want and seen.flags.c_contiguous and not seen.flags.writeable
    np.testing.assert_array_equal(seen.astype(np.float64), frame.astype(np.float64))
    assert frame.flags.writeable
    contiguous = np.ascontiguousarray(frame)
    if dtype in (np.uint16, np.float32):  # no copy when nothing needs changing
        assert np.shares_memory(kernel_frame(contiguous), contiguous)


def test_pixels_excluded_from_one_frame_integrate_as_if_masked(backend: kernels.Backend) -> None:
    """A UDP frame's missing packets (`excluded`): its profile and cake are those of an integrator that
    masks them, with every correction on; the next frame is integrated whole again."""
    from kernels import Geometry

    shape = (48, 40)
    geometry = Geometry(dist=0.05, poni1=0.0021, poni2=0.0017, wavelength=1e-10, pixel1=1e-4, pixel2=1e-4)
    rng = np.random.default_rng(3)
    frame = rng.poisson(50, shape).astype(np.uint16)
    mask = np.zeros(shape, bool)
    mask[0, :] = True
    excluded = np.zeros(shape, bool)
    excluded[10:13, 5:30] = True  # a lost packet's pixels
    frame[excluded] = 0
    options = {
        "dark": rng.uniform(0, 2, shape).astype(np.float32),
        "flat": rng.uniform(0.8, 1.2, shape).astype(np.float32),
        "correct_solid_angle": True,
        "polarization_factor": 0.95,
        "error_model": "poisson",
    }
    b = backend
    whole = b.integrator(geometry, shape, 30, mask=mask, **options)
    reference = b.integrator(geometry, shape, 30, mask=mask | excluded, **options)
    got, want = whole.integrate_full(frame, excluded), reference.integrate_full(frame)
    for name in ("intensity", "sigma", "std", "sum_signal", "sum_normalization", "count"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-9, err_msg=name
        )
    assert not np.allclose(whole.integrate_full(frame).intensity, want.intensity)  # zeros pulled it down
    np.testing.assert_array_equal(whole.integrate_full(frame).count, whole.count)  # nothing kept
    cake = b.integrator2d(geometry, shape, 20, 12, mask=mask, **options)
    cake_reference = b.integrator2d(geometry, shape, 20, 12, mask=mask | excluded, **options)
    np.testing.assert_allclose(
        cake.integrate_full(frame, excluded).intensity,
        cake_reference.integrate_full(frame).intensity,
        rtol=1e-9,
    )


def test_nan_pixels_are_left_out_of_peak_finding_as_masked_ones_are(backend: kernels.Backend) -> None:
    """An incomplete frame's missing pixels reach the finder as NaN: the rings' backgrounds and the
    peaks are those of a finder that masks them (zeros there pulled the backgrounds down)."""
    shape = (64, 64)
    rng = np.random.default_rng(1)
    frame = rng.poisson(20, shape).astype(np.float32)
    for r, c in [(20, 40), (50, 50), (10, 12)]:
        frame[r - 1 : r + 2, c - 1 : c + 2] += 400
    missing = np.zeros(shape, bool)
    missing[40:46, :] = True
    holey = frame.copy()
    holey[missing] = np.nan
    finder = backend.peak_finder(shape, min_snr=5, min_peaks=1)
    masked = backend.peak_finder(shape, mask=missing, min_snr=5, min_peaks=1)
    # the rings of both are the same (a mask that left a ring too thin would merge it with another)
    assert finder.n_rings == masked.n_rings
    assert (finder.rings[~missing] == masked.rings[~missing]).all()
    mean, sigma = finder.background(holey)
    want_mean, want_sigma = masked.background(frame)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-5)
    got, want = finder.find(holey), masked.find(frame)
    assert len(got) == len(want) == 3
    np.testing.assert_allclose(sorted(got.row), sorted(want.row), rtol=1e-6)
    np.testing.assert_allclose(sorted(got.intensity), sorted(want.intensity), rtol=1e-5)


def test_every_filter_the_settings_offer_is_one_the_kernel_takes() -> None:
    """``reduction.tomo.filter`` offered cosine and hamming, which the kernel did not have: every
    projection of a scan was lost with a pipeline error (an outside tomography probe)."""
    import typing

    from edge.config import TomoSettings
    from kernels._tomo import FILTERS

    offered = typing.get_args(TomoSettings.model_fields["filter"].annotation)
    assert offered and set(offered) <= set(FILTERS)
    for name in offered:
        assert kernels.fourier_filter(8, name).shape == (8,)


def test_thin_rings_are_merged_until_each_has_enough_pixels() -> None:
    from kernels._peaks import MIN_RING_PIXELS, merged_rings

    shape = (200, 300)
    mask = np.zeros(shape, bool)
    mask[:, 120:124] = True  # a module gap through the beam centre
    finder = get_backend("numpy").peak_finder(shape, center=(30.2, 121.7), mask=mask)
    rings = finder.rings
    assert (rings[mask] == finder.n_rings).all()
    counts = np.bincount(rings[~mask], minlength=finder.n_rings)
    assert counts.min() >= MIN_RING_PIXELS  # the beam centre's, the corners' and the gap's rings merged
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    radius = np.hypot(yy - 30.2, xx - 121.7)[~mask]
    order = np.argsort(radius, kind="stable")
    assert (np.diff(rings[~mask][order].astype(np.int64)) >= 0).all()  # numbered outwards, each a band
    assert finder.n_rings > 200  # only the thin ones merged: most stay one pixel wide
    # a frame too small for one ring of enough pixels is one ring; a fully masked one has none live
    ring, n = merged_rings(np.arange(10).reshape(2, 5))
    assert n == 1 and (ring == 0).all()
    ring, n = merged_rings(np.full((2, 5), -1))
    assert n == 1 and (ring == 1).all()


@pytest.mark.parametrize("name", ["numpy", "numba"])  # (the GPU's finder takes the same ring map and
def test_no_peaks_at_the_beam_centre_or_the_corners_from_thin_rings(name: str) -> None:  # measure_listed)
    """An outside probe's frames of spots on a radial background (a generic detector's PONI, a mask) held
    'peaks' of SNR about 1 at the beam centre and in a frame corner, one with its centroid off the frame:
    rings of 1-10 pixels gave backgrounds no box could be compared with, and the centroid, weighted by
    value - mean, ran off its pixels when that summed to nearly nothing. Every peak found is a spot, or
    one of the rare fluctuations of the noise a 5-sigma box finds, which holds a few sigma in its own
    pixels (the thin rings' 'peaks' held about 1)."""
    shape = (512, 512)
    cy, cx = 152.57, 106.22  # the probe's PONI's beam centre (pyFAI's getFit2D)
    mask = np.zeros(shape, bool)
    mask[:, 400:420] = True
    finder = get_backend(name).peak_finder(
        shape, center=(cy - 0.5, cx - 0.5), mask=mask, min_snr=5, min_peaks=1
    )
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    radius = np.hypot(yy - cy, xx - cx)
    found = spots = 0
    noise: list[float] = []
    for trial in range(40):
        image = rng.poisson(5 + 200 * np.exp(-radius / 80.0) + (trial % 4) * 10 * np.exp(-radius / 400))
        image = image.astype(np.float64)
        centres = rng.uniform(20, 490, (3, 2))
        for y0, x0 in centres:
            image += 800 * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / 2.0) / (2 * np.pi)
        peaks = finder.find(image.astype(np.uint16))
        assert ((peaks.row >= 0) & (peaks.row <= 511) & (peaks.col >= 0) & (peaks.col <= 511)).all()
        for row, col, snr in zip(peaks.row, peaks.col, peaks.snr, strict=True):
            # (a spot half under the mask is found at its edge, up to 3 px off)
            if np.hypot(centres[:, 0] - row, centres[:, 1] - col).min() < 3.0:
                found += 1
            else:
                noise.append(float(snr))
        spots += int(((centres[:, 1] < 398) | (centres[:, 1] > 421)).sum())
    assert found >= spots  # every spot clear of the mask found (and ones at its edge)
    assert len(noise) <= 3 and min(noise, default=np.inf) > 3.0, noise  # 40 frames of 2.6e5 boxes


def test_a_peak_s_centroid_lies_among_its_pixels() -> None:
    """The centroid is weighted by the positive terms of value - mean: weighted by the signed ones, a
    component of one pixel 2 above its ring and one 1.9 below it (intensity 0.1) sat 19 pixels off."""
    width = 8
    candidates = np.array([2 * width + 3, 2 * width + 4], np.int64)  # (2, 3) and (2, 4)
    values = np.array([12.0, 8.1])
    rings = np.zeros(2, np.int64)
    mean, sigma = np.array([10.0]), np.array([1.0])
    row, col, intensity, *_ = get_backend("numba").module.measure_listed(
        values, rings, candidates, mean, sigma, width, 2, 200
    )
    assert intensity == pytest.approx([0.1]) and (row, col) == ([2.0], [3.0])
    frame = np.zeros((4, width))
    frame.flat[candidates] = values
    _first, _n, total, weight, row_sum, col_sum, *_ = get_backend("numpy").module.label_peaks(
        frame, np.zeros((4, width), np.int64), candidates, mean, width
    )
    assert total == pytest.approx([0.1]) and (row_sum / weight, col_sum / weight) == ([2.0], [3.0])


def test_more_clipping_passes_find_a_weak_spot_on_a_ring_with_a_saturated_one() -> None:
    """An outside probe: a saturated reflection left its ring's sigma inflated after the default 2 passes,
    hiding every weak spot at that radius; ``iterations`` (the daemon's ``serial.clip_iterations``) more
    passes bring the ring's sigma back to the noise's, and the weak spot is found."""
    shape = (256, 256)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[: shape[0], : shape[1]]

    def spot(y0: float, x0: float, total: float, s: float) -> np.ndarray:
        return total * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)

    image = rng.poisson(20.0, shape) + spot(227.5, 127.5, 400_000, 1.2) + spot(27.5, 127.5, 300, 1.0)
    frame = np.minimum(image, 30_000).astype(np.uint16)  # the bright one saturates
    found = {}
    for passes in (2, 5):
        peaks = get_backend("numba").peak_finder(shape, iterations=passes, min_peaks=1).find(frame)
        found[passes] = sorted(float(row) for row in peaks.row)
    assert len(found[2]) == 1 and abs(found[2][0] - 227.5) < 1, found  # the saturated one only
    assert len(found[5]) == 2 and abs(found[5][0] - 27.5) < 1 and abs(found[5][1] - 227.5) < 1, found


@pytest.mark.parametrize(
    ("angles", "expected"),
    [
        (np.arange(0.0, 180.0, 3.0), (0, 59, 1, -1.0)),  # 177 against -3, extrapolated from 0 and 3
        (np.arange(0.0, -180.0, -3.0), (0, 59, 1, -1.0)),  # descending: -177 against 3
        (np.arange(0.0, 180.0, 6.0), None),  # 174 is 6 degrees short: beyond 5
        (np.array([0.0, 90.0]), None),  # too few
    ],
)
def test_near_opposite_projections_stand_in_for_a_missing_mirror(
    angles: np.ndarray, expected: tuple[int, int, int, float] | None
) -> None:
    from kernels import near_opposite_projections

    assert near_opposite_projections(angles) == expected


def test_a_mirror_interpolated_between_two_projections_gives_the_axis() -> None:
    """Projections at 1.5-degree offsets from a 180 partner, 4 degrees apart: the one at 181.5 - 180
    interpolated between 0 and 4 (w = 0.375) against the one at 181.5 gives the axis of a blob phantom."""
    from kernels import estimate_center, near_opposite_projections

    n, axis = 96, 50.3
    x = np.arange(n)
    blobs = [(-20.0, 7.0, 3.0, 1.0), (12.0, -15.0, 2.0, 0.6), (5.0, 25.0, 4.0, 0.8)]

    def projection(theta: float) -> np.ndarray:
        t = np.radians(theta)
        return sum(
            a * np.exp(-(((x - (bx * np.cos(t) + by * np.sin(t) + axis)) / s) ** 2) / 2)
            for bx, by, s, a in blobs
        )

    angles = np.array([0.0, 4.0, 8.0, 181.5])
    i, j, k, w = near_opposite_projections(angles)  # type: ignore[misc]
    assert (i, j) == (0, 3) and k == 1 and w == pytest.approx(0.375)
    p = [projection(a) for a in angles]
    assert abs(estimate_center(p[i] + w * (p[k] - p[i]), p[j]) - axis) < 0.1
