"""The simulator's three modes: determinism, shapes, and frames that agree with their ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hw_sim.frames import PowderFrames, beamstop_mask
from hw_sim.physics import (
    MODES,
    EllipsoidPhantom,
    SimFrameSource,
    SpotFrames,
    TomoFrames,
    make_source,
    mode_options,
)
from kernels import Geometry, get_backend

SHAPE = (96, 128)
GEOMETRY = Geometry(poni1=48 * 75e-6, poni2=64 * 75e-6)


def _source(mode: str, **options: object) -> SimFrameSource:
    if mode == "tomo":
        options = {"n_angles": 12, "n_darks": 2, "n_flats": 2, **options}
    return make_source(mode, SHAPE, GEOMETRY, seed=5, pool=8, **options)


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_frames(mode: str) -> None:
    a, b = _source(mode), _source(mode)
    assert a.mode == mode
    for n in (0, 3, 7, 13):
        frame = a.frame(n)
        assert frame.shape == SHAPE
        assert frame.dtype == np.uint16 == a.dtype
        assert not frame.flags.writeable
        np.testing.assert_array_equal(frame, b.frame(n))
    other = make_source(mode, SHAPE, GEOMETRY, seed=6, pool=8, **({"n_angles": 12} if mode == "tomo" else {}))
    assert (other.frame(3) != a.frame(3)).any()


@pytest.mark.parametrize("mode", MODES)
def test_dead_pixels_and_gaps_read_zero(mode: str) -> None:
    source = _source(mode, dead_fraction=0.005, module_shape=(46, 62), gap_pixels=2)
    mask = source.mask  # type: ignore[attr-defined]
    assert mask[46:48].all() and mask[:, 62:64].all()
    for n in range(6):
        assert not source.frame(n)[mask].any()
        assert not source.expected_frame(n)[mask].any()


def test_factory_options() -> None:
    assert "hit_fraction" in mode_options("spots")
    assert "n_angles" in mode_options("tomo")
    assert mode_options("rings")["calibrant"] == "CeO2"
    with pytest.raises(ValueError, match="unknown simulator mode"):
        make_source("laue", SHAPE)
    with pytest.raises(ValueError, match="no option n_angles"):
        make_source("spots", SHAPE, n_angles=3)
    with pytest.raises(ValueError, match="unknown calibrant"):
        make_source("rings", SHAPE, calibrant="quartz")


def test_rings_mode_is_powder_frames() -> None:
    source = make_source("rings", SHAPE, GEOMETRY, seed=5, pool=8)
    np.testing.assert_array_equal(source.frame(2), PowderFrames(SHAPE, GEOMETRY, seed=5, pool=8).frame(2))
    si = make_source("rings", SHAPE, GEOMETRY, calibrant="Si")
    assert si.frame_truth(0).tth_deg != source.frame_truth(0).tth_deg


# -- spots ------------------------------------------------------------------------------------------


def test_hit_fraction_is_exact_over_the_pool() -> None:
    spots = SpotFrames((64, 64), GEOMETRY, pool=20, hit_fraction=0.25, spots_per_hit=3)
    hits = [spots.frame_truth(n).hit for n in range(20)]
    assert sum(hits) == 5 == round(spots.truth.hit_fraction * 20)
    assert [spots.frame_truth(n + 20).hit for n in range(20)] == hits
    for n in range(20):
        truth = spots.frame_truth(n)
        assert truth.hit == bool(truth.spots)
        if not truth.hit:
            np.testing.assert_array_equal(spots.expected_frame(n), spots.background)


def test_spot_centroids_and_intensities_match_truth_on_noiseless_frames() -> None:
    spots = SpotFrames(
        SHAPE, GEOMETRY, seed=11, pool=6, hit_fraction=1.0, spots_per_hit=15, spot_sigma_px=1.3,
        min_separation_px=20,
    )  # fmt: skip
    checked = 0
    for n in range(6):
        signal = spots.expected_frame(n) - spots.background
        truth = spots.frame_truth(n)
        assert truth.hit
        for spot in truth.spots:
            r0, c0 = round(spot.row), round(spot.col)
            window = signal[r0 - 7 : r0 + 8, c0 - 7 : c0 + 8]
            rows, cols = np.mgrid[r0 - 7 : r0 + 8, c0 - 7 : c0 + 8]
            total = window.sum()
            assert total == pytest.approx(spot.intensity, rel=1e-3)
            assert abs((window * rows).sum() / total - spot.row) < 0.05
            assert abs((window * cols).sum() / total - spot.col) < 0.05
            assert spot.snr > 0
            checked += 1
    assert checked >= 20


def test_spots_avoid_the_beamstop_and_each_other() -> None:
    spots = SpotFrames(SHAPE, GEOMETRY, pool=4, hit_fraction=1.0, spots_per_hit=20, spot_sigma_px=1.0)
    stop = beamstop_mask(SHAPE, GEOMETRY)
    for n in range(4):
        signal = spots.expected_frame(n) - spots.background
        assert not signal[stop].any()
        centres = np.array([(s.row, s.col) for s in spots.frame_truth(n).spots])
        distances = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
        assert distances[~np.eye(len(centres), dtype=bool)].min() >= 8.0


def test_noisy_spot_counts_are_poisson_around_truth() -> None:
    spots = SpotFrames(SHAPE, GEOMETRY, pool=2, hit_fraction=1.0, spots_per_hit=10, mean_intensity=5000)
    frame = spots.frame(0).astype(np.float64)
    for spot in spots.frame_truth(0).spots:
        r0, c0 = round(spot.row), round(spot.col)
        box = (slice(r0 - 5, r0 + 6), slice(c0 - 5, c0 + 6))
        measured = frame[box].sum() - spots.background[box].sum()
        sigma = math.sqrt(spot.intensity + spots.background[box].sum())
        assert abs(measured - spot.intensity) < 6 * sigma + 1


# -- tomography -------------------------------------------------------------------------------------


def _tomo(**options: object) -> TomoFrames:
    defaults: dict[str, object] = {"n_angles": 12, "n_darks": 2, "n_flats": 3, "n_flats_end": 1}
    return TomoFrames((24, 64), seed=3, **{**defaults, **options})


def test_tomo_scan_sequence() -> None:
    tomo = _tomo()
    assert tomo.truth.kinds == ("dark",) * 2 + ("flat",) * 3 + ("projection",) * 12 + ("flat",)
    assert tomo.scan_length == 18
    assert tomo.truth.angles_deg == pytest.approx(list(np.arange(12) * 15.0))
    first = tomo.frame_truth(5)
    assert (first.kind, first.angle_deg, first.projection) == ("projection", 0.0, 0)
    assert tomo.frame_truth(16).angle_deg == 165.0
    assert tomo.frame_truth(17).kind == "flat" and tomo.frame_truth(17).angle_deg is None
    assert tomo.frame_truth(18 + 6) == tomo.frame_truth(6)
    np.testing.assert_array_equal(tomo.frame(18 + 6), tomo.frame(6))


def test_tomo_frames_follow_beer_lambert() -> None:
    tomo = _tomo()
    dark, flat = tomo.truth.dark, tomo.truth.flat
    np.testing.assert_allclose(tomo.expected_frame(0), dark)
    np.testing.assert_allclose(tomo.expected_frame(2), flat + dark)
    for n in range(5, 17):
        info = tomo.frame_truth(n)
        assert info.angle_deg is not None
        measured = -np.log((tomo.expected_frame(n) - dark) / flat)
        truth = tomo.truth.phantom.line_integrals(info.angle_deg)
        np.testing.assert_allclose(measured, truth, atol=1e-9)
    assert max(tomo.truth.phantom.line_integrals(a).max() for a in (0.0, 90.0)) == pytest.approx(2.0)
    # Noise is Poisson around the expectation: the mean over the dark and flat frames is unbiased.
    darks = np.stack([tomo.frame(n) for n in (0, 1)]).astype(np.float64)
    assert darks.mean() == pytest.approx(dark.mean(), rel=0.01)
    assert tomo.frame(3).mean() == pytest.approx((flat + dark).mean(), rel=0.01)


def test_tomo_line_integrals_match_the_phantom_slices() -> None:
    phantom = EllipsoidPhantom((16, 96), mu_per_pixel=0.01, axis_col=48)
    z = ((16 - 1) / 2 - np.arange(16)) / 8
    for row in (4, 8, 11):
        image = phantom.slice(row)
        # The slice's exact mass: each ellipsoid's cross-section is an ellipse of area pi a b k^2.
        k2 = [1 - ((z[row] - e.z0) / e.c) ** 2 for e in phantom.ellipsoids]
        mass = sum(
            e.value * 0.01 * math.pi * e.a * e.b * phantom.scale**2 * k
            for e, k in zip(phantom.ellipsoids, k2, strict=True)
            if k > 0
        )
        assert image.sum() == pytest.approx(mass, rel=0.01)
        # At 0 degrees a ray is a column of the slice image.
        np.testing.assert_allclose(phantom.line_integrals(0.0)[row], image.sum(axis=0), atol=0.03)
        for angle in (0.0, 33.0, 90.0, 151.0):
            assert phantom.line_integrals(angle)[row].sum() == pytest.approx(mass, rel=0.01)


def test_tomo_line_integrals_match_skimage_radon() -> None:
    transform = pytest.importorskip("skimage.transform")
    phantom = EllipsoidPhantom((8, 96), mu_per_pixel=0.01, axis_col=48)
    angles = [0.0, 20.0, 45.0, 100.0, 170.0]
    sinogram = transform.radon(phantom.slice(4), theta=angles, circle=True)
    for k, angle in enumerate(angles):
        analytic = phantom.line_integrals(angle)[4]
        assert np.abs(sinogram[:, k] - analytic).mean() < 0.02 * analytic.max()


def test_tomo_reconstruction_from_noisy_frames_recovers_the_phantom_slice() -> None:
    backend = get_backend("numpy")
    tomo = TomoFrames((8, 64), n_angles=90, n_darks=4, n_flats=4)
    frames = np.stack([tomo.frame(n) for n in range(tomo.scan_length)]).astype(np.float32)
    kinds = np.array(tomo.truth.kinds)
    dark = frames[kinds == "dark"].mean(axis=0)
    flat = frames[kinds == "flat"].mean(axis=0)
    projections = frames[kinds == "projection"]
    line_integrals = backend.flat_field(projections, dark, flat, np.empty_like(projections))
    row = 4
    slice_ = backend.fbp(line_integrals[:, row, :], theta=tomo.truth.angles_deg)
    truth = tomo.truth.phantom.slice(row)
    assert slice_.shape == truth.shape
    assert np.corrcoef(slice_.ravel(), truth.ravel())[0, 1] > 0.9


def test_peak_finder_sees_the_true_spots() -> None:
    spots = SpotFrames(SHAPE, GEOMETRY, pool=2, hit_fraction=1.0, spots_per_hit=12, mean_intensity=4000)
    truth = [s for s in spots.frame_truth(0).spots if s.snr > 20]
    finder = get_backend("numpy").peak_finder(SHAPE, center=(48 - 0.5, 64 - 0.5), mask=spots.beamstop)
    peaks = finder.find(spots.frame(0))
    found = np.column_stack([peaks.row, peaks.col])
    assert len(truth) >= 5
    for spot in truth:  # the finder centroids only the pixels above its threshold, and noise moves them
        assert np.hypot(*(found - (spot.row, spot.col)).T).min() < 1.0


def test_tomo_without_cache_gives_the_same_frames() -> None:
    cached, uncached = _tomo(), _tomo(cache_bytes=0)
    for n in (0, 4, 9):
        np.testing.assert_array_equal(cached.frame(n), uncached.frame(n))
    assert not uncached._draws


@pytest.mark.parametrize("mode", ["rings", "spots", "tomo"])
def test_frames_drawn_before_a_series_on_every_core_equal_frames_drawn_one_by_one(mode: str) -> None:
    """`edge sim` draws a series' frames before it starts, on a thread per core: each frame is seeded on
    its own, so the pixels are those of drawing them one by one."""
    from hw_sim.cli import _prepare

    geometry = Geometry(dist=0.05, poni1=24 * 75e-6, poni2=24 * 75e-6, wavelength=1e-10)
    kwargs = {"n_angles": 8, "n_darks": 2, "n_flats": 2} if mode == "tomo" else {}
    ahead, one_by_one = (make_source(mode, (48, 48), geometry, seed=9, pool=24, **kwargs) for _ in range(2))
    _prepare(ahead, 24, 24)
    for number in range(24):
        np.testing.assert_array_equal(ahead.frame(number), one_by_one.frame(number))


def test_the_simulator_s_account_names_the_hit_frames_it_sent() -> None:
    """An outside serial probe: ``edge sim --json`` in spots mode said nothing of which frames were hits,
    so the appliance's decisions could be checked only by importing the simulator."""
    from hw_sim.cli import spots_truth

    source = make_source("spots", (64, 64), seed=9, pool=40, hit_fraction=0.3)
    truth = spots_truth(source, 50)  # frames 40..49 show patterns 0..9 again
    hits = [n for first, last in truth["hit_frames"] for n in range(first, last + 1)]
    expected = [n for n in range(50) if source.truth.patterns[n % 40].hit]
    assert hits == expected and truth["hits"] == len(expected) > 0
    assert truth["spots_per_hit"] == [len(source.truth.patterns[n % 40].spots) for n in expected]
    assert all(count > 0 for count in truth["spots_per_hit"])
