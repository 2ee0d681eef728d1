"""Kernel benchmarks: ours against the field's reference on the same data, in the same run.

Run ``python benchmarks/kernels.py [--json] [--quick] [--backend numba]``. Every row is a ratio taken
in this process with the two timings interleaved (BENCHMARKS.md): warm-up first, then the median of
``--repeats`` runs each, cycling over several frame buffers so caches do not flatter either side.
Every row carries the correctness check that went with it; a fast wrong answer does not count.
The ``e2e``, ``preview`` and ``modes`` groups run the whole appliance (``benchmarks/e2e.py``, about 2.5
minutes, ``benchmarks/preview_latency.py`` and ``benchmarks/modes.py``: each reduction mode beside raw
mode) and add their rows to the same table.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# bitshuffle's, pyFAI's and numba's OpenMP read these when first loaded: pin them (unless set) first.
# Threads that wait passively: with the default (spin), on 2 cores shared with other work, a spinning
# pool thread keeps its sibling off a core and numba's 2 ms kernels took 5-10x longer (2026-12-01).
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import kernels

GROUPS = ("integrate", "correct", "compress", "fbp", "peaks", "e2e", "preview", "modes", "ingest")
SHAPE = (2048, 2048)
NPT = 1000
BUFFERS = 4
GEOMETRY = kernels.Geometry(
    dist=0.15, poni1=0.0765, poni2=0.0790, rot1=0.004, rot2=-0.003, rot3=0.0, wavelength=0.7e-10
)


@dataclass
class Row:
    workload: str
    ours: float
    reference: float
    unit: str
    ratio: float
    target: str
    target_met: bool
    check: str
    check_passed: bool
    spread: str


def interleaved(
    ours: Callable[[int], object], reference: Callable[[int], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds per call for each side, alternating calls, after one warm-up call each. Which side goes
    first alternates too: the second call of a round finds the round's input in the cache."""
    ours(0)
    reference(0)
    t_ours: list[float] = []
    t_ref: list[float] = []
    for k in range(repeats):
        pair = ((ours, t_ours), (reference, t_ref))
        for fn, times in pair if k % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            fn(k)
            times.append(time.perf_counter() - start)
    return t_ours, t_ref


def spread(times: Sequence[float]) -> str:
    med = statistics.median(times)
    return f"{(min(times) / med - 1) * 100:+.0f}%/{(max(times) / med - 1) * 100:+.0f}%"


def ring_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Powder rings on a Poisson background, uint16, like hw_sim's frames."""
    rng = np.random.default_rng(seed)
    tth = np.degrees(GEOMETRY.tth(SHAPE))
    rings = sum(np.exp(-((tth - c) ** 2) / 0.02) for c in (8.0, 11.3, 13.9, 16.0, 19.7))
    mean = 20.0 + 400.0 * rings
    return [rng.poisson(mean).astype(np.uint16) for _ in range(count)]


def detector_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, 1020:1030] = True  # module gap
    mask[510:518, :] = True
    mask[1530:1538, :] = True
    mask[1000:1100, 900:1000] = True  # beamstop shadow
    return mask


def rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-30)))


def copy_rate() -> tuple[Callable[[int], object], Callable[[list[float]], float]]:
    """np.copyto of 256 MiB float32 (two sources, one destination) and its rate from the times, in
    bytes moved (read + written) per second: the machine's memory bandwidth as a copy sees it."""
    src = [np.ones(64 * 2**20, np.float32) for _ in range(2)]
    dst = np.empty_like(src[0])

    def copy(k: int) -> None:
        np.copyto(dst, src[k % 2])

    return copy, lambda times: 2 * dst.nbytes / statistics.median(times)


def pyfai_cpu_engines(ai: Any, opts: dict[str, Any]) -> dict[str, Callable[[np.ndarray], object]]:
    """pyFAI's no-split 1D CPU engines: integrate1d's cython ones and integrate1d_legacy's CSR and LUT."""
    engines: dict[str, Callable[[np.ndarray], object]] = {}
    for algo in ("histogram", "csr", "csc", "lut"):
        method = ("no", algo, "cython")
        engines[f"integrate1d {method}"] = lambda f, m=method: ai.integrate1d(f, NPT, method=m, **opts)
    for algo in ("csr", "lut"):
        method = ("no", algo, "cython")
        engines[f"integrate1d_legacy {method}"] = lambda f, m=method: ai.integrate1d_legacy(
            f, NPT, method=m, correctSolidAngle=True, **opts
        )
    return engines


def bench_integration(backend: kernels.Backend, frames: list[np.ndarray], repeats: int) -> list[Row]:
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    g = GEOMETRY
    mask = detector_mask()
    ai = AzimuthalIntegrator(
        dist=g.dist,
        poni1=g.poni1,
        poni2=g.poni2,
        rot1=g.rot1,
        rot2=g.rot2,
        rot3=g.rot3,
        wavelength=g.wavelength,
        detector=Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=SHAPE),
    )
    opts: dict[str, Any] = {"unit": "2th_deg", "mask": mask, "polarization_factor": 0.99}
    integrator = backend.integrator(
        g, SHAPE, NPT, unit="2th_deg", mask=mask, correct_solid_angle=True, polarization_factor=0.99
    )
    n = len(frames)
    rows = []

    def ours(k: int) -> np.ndarray:
        return integrator.integrate(frames[k % n])

    def histogram(k: int) -> object:
        return ai.integrate1d(frames[k % n], NPT, method=("no", "histogram", "cython"), **opts)

    ref = histogram(0)
    worst = rel_diff(ours(0), ref.intensity)
    same_bins = bool(np.array_equal(integrator.count, ref.count))
    t_ours, t_ref = interleaved(ours, histogram, repeats)
    fps, ref_fps = 1 / statistics.median(t_ours), 1 / statistics.median(t_ref)
    check = f"max rel diff {worst:.1e} <= 1e-6, counts equal (pyFAI histogram engine, same geometry and mask)"
    ok = worst <= 1e-6 and same_bins
    rows.append(
        Row(
            "integrate 2048^2 uint16 -> 1000 bins vs pyFAI integrate1d (no, histogram, cython)",
            fps,
            ref_fps,
            "frames/s",
            fps / ref_fps,
            ">= 50x",
            fps / ref_fps >= 50,
            check,
            ok,
            spread(t_ours),
        )
    )

    # pyFAI's fastest CPU engine on this machine: each timed (median of 3 after a warm-up), the fastest
    # then interleaved with ours
    engines = pyfai_cpu_engines(ai, opts)
    logging.getLogger("pyFAI").setLevel(logging.ERROR)  # integrate1d_legacy logs a deprecation per call
    quick: dict[str, float] = {}
    for name, engine in engines.items():
        engine(frames[0])  # warm-up: builds the sparse matrix or look-up table
        times = []
        for k in range(3):
            start = time.perf_counter()
            engine(frames[k % n])
            times.append(time.perf_counter() - start)
        quick[name] = statistics.median(times)
    fastest = min(quick, key=lambda name: quick[name])
    t_ours, t_ref = interleaved(ours, lambda k: engines[fastest](frames[k % n]), repeats)
    fps, ref_fps = 1 / statistics.median(t_ours), 1 / statistics.median(t_ref)
    others = ", ".join(
        f"{name.split(' ', 1)[1]}{'' if 'legacy' not in name else ' legacy'} {1 / t:.0f}"
        for name, t in quick.items()
    )
    rows.append(
        Row(
            f"integrate 2048^2 -> 1000 bins vs pyFAI's fastest CPU engine here: {fastest}",
            fps,
            ref_fps,
            "frames/s",
            fps / ref_fps,
            ">= 8x",
            fps / ref_fps >= 8,
            f"{check}; pyFAI CPU engines, frames/s: {others}",
            ok,
            spread(t_ours),
        )
    )

    # the memory-bandwidth bound: the bytes the kernel must read per frame (the frame and the bin index)
    # at the copy rate of np.copyto measured now, interleaved with ours
    copy, rate_of = copy_rate()
    t_ours, t_copy = interleaved(ours, copy, repeats)
    rate = rate_of(t_copy)
    must_read = frames[0].nbytes + integrator.bins.nbytes
    bound_fps = rate / must_read
    fps = 1 / statistics.median(t_ours)
    rows.append(
        Row(
            "integrate 2048^2 -> 1000 bins vs the memory-bandwidth bound (frames/s if only reading)",
            fps,
            bound_fps,
            "frames/s",
            fps / bound_fps,
            ">= 0.7x",
            fps / bound_fps >= 0.7,
            f"bound = {must_read / 1e6:.1f} MB read per frame ({frames[0].dtype} frame + "
            f"{integrator.bins.dtype} bin index) / {rate / 1e9:.1f} GB/s np.copyto 256 MiB (read + write)"
            f" = {1e3 / bound_fps:.2f} ms; {check}",
            ok,
            spread(t_ours),
        )
    )
    return rows


def bench_correction(backend: kernels.Backend, frames: list[np.ndarray], repeats: int) -> Row:
    rng = np.random.default_rng(1)
    dark = rng.uniform(0, 10, SHAPE).astype(np.float32)
    gain = kernels.make_gain(SHAPE, flat=rng.uniform(0.9, 1.1, SHAPE), mask=detector_mask())
    outs = [np.empty(SHAPE, np.float32) for _ in frames]
    n = len(frames)
    expected = kernels.get_backend("numpy").correct(frames[0], dark, gain, np.empty(SHAPE, np.float32))
    got = backend.correct(frames[0], dark, gain, outs[0])
    ok = bool(np.array_equal(got, expected))
    copy_src = [np.ones(64 * 2**20, np.float32) for _ in range(2)]  # 256 MiB each
    copy_dst = np.empty_like(copy_src[0])
    t_ours, t_ref = interleaved(
        lambda k: backend.correct(frames[k % n], dark, gain, outs[k % n]),
        lambda k: np.copyto(copy_dst, copy_src[k % 2]),
        repeats,
    )
    moved = frames[0].nbytes + dark.nbytes + gain.nbytes + outs[0].nbytes
    ours = moved / statistics.median(t_ours) / 1e9
    ref = 2 * copy_dst.nbytes / statistics.median(t_ref) / 1e9
    return Row(
        "dark/flat/mask correction 2048^2 uint16 -> float32 vs np.copyto 256 MiB",
        ours,
        ref,
        "GB/s",
        ours / ref,
        ">= 0.8x",
        ours / ref >= 0.8,
        "equal to the NumPy reference",
        ok,
        spread(t_ours),
    )


def _filter_chunks(frames: list[np.ndarray]) -> list[bytes]:
    import h5py
    import hdf5plugin

    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset(
            "x", data=np.stack(frames), chunks=(1, *frames[0].shape), **hdf5plugin.Bitshuffle(cname="lz4")
        )
        return [ds.id.read_direct_chunk((i, 0, 0))[1] for i in range(len(frames))]


def _read_back_through_hdf5(chunks: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    """Write ``chunks`` with write_direct_chunk into a filter-32008 dataset, read it through h5py."""
    import h5py
    import hdf5plugin  # noqa: F401 - registers the bitshuffle filter with HDF5

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        ds = f.create_dataset(
            "x",
            shape=(len(chunks), *shape),
            dtype=np.uint16,
            chunks=(1, *shape),
            **kernels.hdf5_filter_options(),
        )
        for i, chunk in enumerate(chunks):
            ds.id.write_direct_chunk((i, 0, 0), chunk)
    with h5py.File(buffer, "r") as f:
        return np.asarray(f["x"][()])


def bench_compression(frames: list[np.ndarray], repeats: int) -> list[Row]:
    import bitshuffle

    n = len(frames)
    chunks = [kernels.compress_chunk(f) for f in frames]
    identical = chunks == _filter_chunks(frames)
    restored = all(
        np.array_equal(kernels.decompress_chunk(c, SHAPE, np.uint16), f)
        for c, f in zip(chunks, frames, strict=True)
    )
    read_back = bool(np.array_equal(_read_back_through_hdf5(chunks, SHAPE), np.stack(frames)))
    ok = identical and restored and read_back
    check = (
        f"chunks identical to h5py+hdf5plugin filter 32008: {identical}; file written with write_direct_chunk"
        f" reads back through h5py + hdf5plugin: {read_back}; decompress round-trips: {restored}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} for both"
    )
    t_ours, t_ref = interleaved(
        lambda k: kernels.compress_chunk(frames[k % n]),
        lambda k: bitshuffle.compress_lz4(frames[k % n], 0),
        repeats,
    )
    nbytes = frames[0].nbytes
    ours, ref = nbytes / statistics.median(t_ours) / 1e9, nbytes / statistics.median(t_ref) / 1e9
    ratio_c = nbytes * n / sum(len(c) for c in chunks)
    rows = [
        Row(
            f"bitshuffle-LZ4 chunk 2048^2 uint16 (ratio {ratio_c:.2f}) vs bitshuffle.compress_lz4",
            ours,
            ref,
            "GB/s",
            ours / ref,
            ">= 0.97x",
            ours / ref >= 0.97,
            check,
            ok,
            spread(t_ours),
        )
    ]
    with ThreadPoolExecutor(2) as pool:
        t_ours, t_ref = interleaved(
            lambda k: kernels.compress_chunks(frames, pool),
            lambda k: [bitshuffle.compress_lz4(f, 0) for f in frames],
            max(3, repeats // 2),
        )
        threaded_same = kernels.compress_chunks(frames, pool) == chunks
    ours, ref = nbytes * n / statistics.median(t_ours) / 1e9, nbytes * n / statistics.median(t_ref) / 1e9
    rows.append(
        Row(
            f"{n} chunks on 2 threads (compress_chunks) vs serial bitshuffle.compress_lz4",
            ours,
            ref,
            "GB/s",
            ours / ref,
            "(info)",
            True,
            "same bytes as one at a time",
            threaded_same,
            spread(t_ours),
        )
    )
    return rows


# ---- tomography --------------------------------------------------------------------------------------

# Modified Shepp-Logan (Toft): density, semi-axes a, b, centre x0, y0 (unit disc), rotation in degrees
SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def shepp_logan_sinogram(n_det: int, theta_deg: np.ndarray) -> np.ndarray:
    """Exact line integrals of the Shepp-Logan ellipses, ``(n_angles, n_det)``, axis at ``n_det // 2``.

    The phantom fills the inscribed circle (radius ``n_det / 2`` pixels); analytic, so a 1024-wide,
    900-angle sinogram takes a second instead of skimage ``radon``'s minutes.
    """
    scale = n_det / 2
    s = (np.arange(n_det) - n_det // 2)[None, :] / scale
    theta = np.deg2rad(theta_deg)[:, None]
    sino = np.zeros((theta.size, n_det))
    for density, a, b, x0, y0, phi in SHEPP_LOGAN:
        rel = s - (x0 * np.cos(theta) + y0 * np.sin(theta))
        a2 = (a * np.cos(theta - np.deg2rad(phi))) ** 2 + (b * np.sin(theta - np.deg2rad(phi))) ** 2
        inside = np.clip(a2 - rel**2, 0, None)
        sino += 2 * density * a * b * np.sqrt(inside) / a2
    return sino * scale


def bench_fbp(backend: kernels.Backend, repeats: int, size: int = 1024, n_angles: int = 900) -> list[Row]:
    from skimage.transform import iradon

    theta = np.linspace(0, 180, n_angles, endpoint=False)
    sino = shepp_logan_sinogram(size, theta)
    sinos = [sino, sino * 0.5]  # two buffers
    ours = backend.fbp(sino, theta)  # compiles
    ref = iradon(sino.T, theta, filter_name="ramp", interpolation="linear", circle=True)
    worst = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    t_ours: list[float] = []
    t_ref: list[float] = []
    for k in range(repeats):
        start = time.perf_counter()
        backend.fbp(sinos[k % 2], theta)
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        iradon(sinos[k % 2].T, theta, filter_name="ramp", interpolation="linear", circle=True)
        t_ref.append(time.perf_counter() - start)
    med_ours, med_ref = statistics.median(t_ours), statistics.median(t_ref)
    rows = [
        Row(
            f"FBP {size}^2, {n_angles} angles, ramp, linear vs skimage iradon",
            med_ours,
            med_ref,
            "s/slice",
            med_ref / med_ours,
            ">= 20x",
            med_ref / med_ours >= 20,
            f"max|ours-skimage|/max|skimage| {worst:.1e} <= 1e-4 (Shepp-Logan)",
            worst <= 1e-4,
            spread(t_ours),
        )
    ]
    try:
        import astra
    except ImportError:
        rows.append(
            Row(
                f"FBP {size}^2 vs astra-toolbox CPU FBP: astra not importable here (the bench extra)",
                med_ours,
                0.0,
                "s/slice",
                0.0,
                ">= 15x",
                False,
                "not measured: astra-toolbox is not installed in this environment",
                True,
                "-",
            )
        )
        return rows
    rows.append(bench_fbp_astra(astra, backend, sinos, theta, ours, max(2, min(3, repeats))))
    return rows


def astra_fbp(astra: Any, sino: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """astra-toolbox's CPU FBP (Ram-Lak, linear projector) of our sinogram, in our image frame.

    astra puts the rotation axis and the image centre at ``(n - 1) / 2``, we (as skimage) at ``n // 2``:
    one zero detector column and one more image row and column make the two coincide (0.2% more work
    for astra), then the extra row and column are cut off.
    """
    n_angles, size = sino.shape
    n = size + 1
    padded = np.zeros((n_angles, n))
    padded[:, :size] = sino
    vol = astra.create_vol_geom(n, n)
    proj = astra.create_proj_geom("parallel", 1.0, n, np.deg2rad(theta))
    projector = astra.create_projector("linear", proj, vol)
    sino_id = astra.data2d.create("-sino", proj, padded)
    rec_id = astra.data2d.create("-vol", vol)
    cfg = astra.astra_dict("FBP")
    cfg.update(ReconstructionDataId=rec_id, ProjectionDataId=sino_id, ProjectorId=projector)
    cfg["option"] = {"FilterType": "ram-lak"}
    algorithm = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(algorithm)
        return np.asarray(astra.data2d.get(rec_id))[:size, :size]
    finally:
        astra.algorithm.delete(algorithm)
        astra.data2d.delete([sino_id, rec_id])
        astra.projector.delete(projector)


def bench_fbp_astra(
    astra: Any,
    backend: kernels.Backend,
    sinos: list[np.ndarray],
    theta: np.ndarray,
    ours: np.ndarray,
    repeats: int,
) -> Row:
    size = sinos[0].shape[1]
    theirs = astra_fbp(astra, sinos[0], theta)
    corr = float(np.corrcoef(theirs.ravel(), ours.ravel())[0, 1])
    yy, xx = np.ogrid[:size, :size]
    inner = np.hypot(yy - size // 2, xx - size // 2) < size // 2 - 2
    rms = float(np.sqrt(np.mean((theirs - ours)[inner] ** 2)) / np.max(np.abs(ours)))
    t_ours, t_ref = interleaved(
        lambda k: backend.fbp(sinos[k % 2], theta), lambda k: astra_fbp(astra, sinos[k % 2], theta), repeats
    )
    med_ours, med_ref = statistics.median(t_ours), statistics.median(t_ref)
    return Row(
        f"FBP {size}^2, {theta.size} angles, ramp vs astra-toolbox {astra.__version__} CPU FBP (Ram-Lak)",
        med_ours,
        med_ref,
        "s/slice",
        med_ref / med_ours,
        ">= 15x",
        med_ref / med_ours >= 15,
        f"same image: correlation {corr:.4f} >= 0.99, rms difference {rms:.1e} of the peak (the two ramp"
        " filters are discretised differently)",
        corr >= 0.99,
        spread(t_ours),
    )


# ---- peak finding ------------------------------------------------------------------------------------


def bragg_frames(
    count: int, n_spots: int = 150, sigma: float = 10.0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """2048^2 float32 frames: Gaussian noise (sigma 10 on 100) plus Gaussian spots (1 px wide) whose
    brightest pixel is 6-40 sigma up, >= 12 px apart; returns the frames and the true spot positions."""
    rng = np.random.default_rng(11)
    frames, truths = [], []
    for _ in range(count):
        frame = rng.normal(100.0, sigma, SHAPE).astype(np.float32)
        spots = rng.uniform(8, SHAPE[0] - 8, (4 * n_spots, 2))
        keep: list[np.ndarray] = []
        for spot in spots:
            if len(keep) == n_spots:
                break
            if all(np.sum((spot - other) ** 2) > 144 for other in keep):
                keep.append(spot)
        for r, c in keep:
            r0, c0 = int(r) - 3, int(c) - 3
            yy, xx = np.mgrid[r0 : r0 + 7, c0 : c0 + 7]
            blob = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 2.0)
            frame[r0 : r0 + 7, c0 : c0 + 7] += rng.uniform(6, 40) * sigma * blob / blob.max()
        frames.append(frame)
        truths.append(np.array(keep))
    return frames, truths


def bench_peaks(backend: kernels.Backend, repeats: int) -> Row:
    frames, truths = bragg_frames(BUFFERS)
    # min_snr: the 3x3 box sum's excess over its ring's background, in sigma of that sum (kernels/_peaks.py)
    settings: dict[str, Any] = {"min_snr": 5.0, "min_pixels": 2, "max_pixels": 60, "min_peaks": 20}
    finder = backend.peak_finder(SHAPE, **settings)
    reference = kernels.get_backend("numpy").peak_finder(SHAPE, **settings)
    hits, found_true, n_true, true_found, n_found = 0, 0, 0, 0, 0
    for frame, truth in zip(frames, truths, strict=True):
        peaks = finder.find(frame)
        hits += finder.is_hit(frame)
        pos = np.stack([peaks.row, peaks.col], axis=1)
        d = np.sqrt(((pos[:, None, :] - truth[None, :, :]) ** 2).sum(axis=2))
        found_true += int(np.sum(d.min(axis=0) <= 1.5))
        n_true += truth.shape[0]
        true_found += int(np.sum(d.min(axis=1) <= 1.5))
        n_found += len(peaks)
    recall, precision = found_true / n_true, true_found / max(n_found, 1)
    n = len(frames)
    t_ours, t_ref = interleaved(
        lambda k: finder.find(frames[k % n]), lambda k: reference.find(frames[k % n]), max(3, repeats // 2)
    )
    fps, ref_fps = 1 / statistics.median(t_ours), 1 / statistics.median(t_ref)
    return Row(
        "peak finding 2048^2 float32 (ring background, box SNR 5, 2-60 px) vs our NumPy reference",
        fps,
        ref_fps,
        "frames/s",
        fps / ref_fps,
        ">= 200 fr/s",
        fps >= 200,
        f"recall {recall:.3f}, precision {precision:.3f} >= .99 ({n_true} spots 6-40 sigma), hits {hits}/{n}",
        recall >= 0.99 and precision >= 0.99 and hits == n,
        spread(t_ours),
    )


# ---- whole-system rows: the appliance's processes, from their own scripts ---------------------------------


def _script(name: str, *args: str) -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, str(here / name), "--json", *args], capture_output=True, text=True, timeout=3600
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{name} printed nothing ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def bench_end_to_end(quick: bool) -> Row:
    row = _script("e2e.py", "--seconds", "20" if quick else "60")["rows"][0]
    cpu = ", ".join(f"{k} {v} ms" for k, v in row["cpu_ms_per_frame"].items())
    return Row(
        row["workload"],
        row["ours"],
        row["reference"],
        "GB/s",
        row["ratio"],
        row["target"],
        row["target_met"],
        f"{row['check']}; {row['seconds']} s at {row['frames_per_second']} frames/s; CPU per frame: {cpu} "
        f"({row['cores']} cores); disk writes {row['disk_write_GBps']} GB/s with fsync, 1 GB/s of frames "
        f"needs {row['disk_needed_GBps_at_1GBps']} GB/s",
        row["check_passed"],
        f"{row['seconds']} s",
    )


def bench_preview() -> Row:
    row = _script("preview_latency.py", "--seconds", "20")
    return Row(
        f"frame to dashboard preview at full rate ({row['frames_per_second']} frames/s), 95th percentile",
        row["p95_ms"],
        200.0,
        "ms",
        row["p95_ms"] / 200.0,
        "< 200 ms",
        row["target_met"],
        f"median {row['median_ms']} ms (to the receiver {row['median_arrival_ms']} ms, receiver to push "
        f"{row['median_push_ms']} ms), max {row['max_ms']} ms, {row['samples']} frames seen",
        row["samples"] > 0,
        f"max {row['max_ms']} ms",
    )


def bench_modes(quick: bool) -> list[Row]:
    """Each reduction mode in the daemon beside raw mode of the same run (benchmarks/modes.py)."""
    rows = _script("modes.py", *(["--frames", "1000", "--pairs", "3"] if quick else []))["rows"]
    return [
        Row(
            row["workload"],
            row["ours"],
            row["reference"],
            "frames/s",
            row["ratio"],
            row["target"],
            row["target_met"],
            f"{row['check']}; reference: {row['reference_name']}",
            row["check_passed"],
            "-",
        )
        for row in rows
    ]


def bench_ingest(quick: bool) -> list[Row]:
    """Ingest (benchmarks/ingest.py): the readers beside bare receive loops, and the whole daemon with the
    JSON stream beside Stream V2 pass-through in the same run (CPU per frame, end-to-end rate, ceiling)."""
    args = ["--daemon-frames", "300" if quick else "400", "--daemon-repeats", "5" if quick else "9"]
    rows = _script("ingest.py", *args, *(["--skip-readers"] if quick else ["--repeats", "5"]))["rows"]
    return [
        Row(
            row["workload"],
            row["ours"],
            row["reference"],
            row.get("unit", "-"),
            row["ratio"],
            row.get("target", "-"),
            bool(row.get("target_met", True)),
            f"{row['check']}; reference: {row['reference_name']}",
            row["check_passed"],
            str(row.get("spread", "-")),
        )
        for row in rows
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (5)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--backend", default="numba", choices=["numba", "numpy", "gpu", "auto"])
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run (default all: {','.join(GROUPS)})",
    )
    args = parser.parse_args(argv)
    only = {group.strip() for group in args.only.split(",") if group.strip()}
    unknown = sorted(only - set(GROUPS))
    if unknown or not only:
        parser.error(
            f"--only {args.only!r}: unknown group(s) {', '.join(unknown) or '(none given)'};"
            f" the groups: {', '.join(GROUPS)}"
        )
    repeats = args.repeats or (5 if args.quick else 9)

    import numba

    threads = os.cpu_count() or 1
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    backend = kernels.get_backend(args.backend)
    info = {
        "backend": backend.name,
        "numba_threads": numba.get_num_threads(),
        "omp_threads (pyFAI, bitshuffle)": os.environ.get("OMP_NUM_THREADS", f"unset ({threads} cores)"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "fft_workers (scipy.fft, FBP filter)": threads,
        "repeats": repeats,
        "buffers": BUFFERS,
    }
    frames = ring_frames(BUFFERS)
    rows: list[Row] = []
    if "integrate" in only:
        rows.extend(bench_integration(backend, frames, repeats))
    if "correct" in only:
        rows.append(bench_correction(backend, frames, repeats))
    if "compress" in only:
        rows.extend(bench_compression(frames, repeats))
    if "fbp" in only:
        rows.extend(bench_fbp(backend, 3 if args.quick else 5))
    if "peaks" in only:
        rows.append(bench_peaks(backend, repeats))
    whole: tuple[tuple[str, Callable[[], list[Row]]], ...] = (
        ("e2e", lambda: [bench_end_to_end(args.quick)]),
        ("preview", lambda: [bench_preview()]),
        ("modes", lambda: bench_modes(args.quick)),
        ("ingest", lambda: bench_ingest(args.quick)),
    )
    for group, bench in whole:
        if group in only:
            try:
                rows.extend(bench())
            except Exception as error:  # a whole-system run that failed is a failed row, not a lost table
                rows.append(
                    Row(f"{group}: the run failed", 0, 0, "-", 0, "-", False, repr(error)[:300], False, "-")
                )
    try:
        info["numba_threading_layer"] = numba.threading_layer()  # known once a parallel kernel ran
    except ValueError:
        info["numba_threading_layer"] = numba.config.THREADING_LAYER
    report = json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1)
    if args.json_out is not None:
        args.json_out.write_text(report + "\n")
    if args.json:
        print(report)
    else:
        print("  ".join(f"{k}={v}" for k, v in info.items()))
        print(
            f"{'workload':<84} {'ours':>9} {'ref':>9} {'unit':<8} {'ratio':>7} {'target':>8} {'met':>4}"
            "  check"
        )
        for r in rows:
            met = "-" if r.target == "-" else ("yes" if r.target_met else "NO")  # a row with no target
            print(
                f"{r.workload:<84} {r.ours:9.2f} {r.reference:9.2f} {r.unit:<8} {r.ratio:7.2f} {r.target:>8} "
                f"{met:>4}  {'PASS' if r.check_passed else 'FAIL'} {r.check} "
                f"[spread {r.spread}]"
            )
    return 0 if all(r.check_passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
