"""GPU kernel figures on a lent machine: ``PYTHONPATH=src python3 benchmarks/gpu.py [--json]``.

Self-contained (numpy, numba-cuda, cupy; no pyFAI/bitshuffle) and short (well under 3 minutes). It
reports, with the device named: integration 2048^2 -> 1000 bins (and a 500 x 360 cake) in frames/s
with the frame already on the device, the host-to-device copy of a frame timed apart from the kernel,
the kernel's achieved fraction of the device-to-device copy bandwidth measured in the same run (once
with a launch and a synchronisation per frame, numba's host-side launch cost included, and once with
the launch queue kept full, the device's own time per frame by CUDA events), the correction kernel
likewise, peak finding 2048^2 (frame on the device, and from host memory) and filtered back-projection
1024^2 x 900 angles, and the same work on the numba CPU backend; each row carries its correctness check
against the NumPy reference (FBP: against the numba backend) computed in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

# numba-cuda releases older than NumPy 2.4 still register np.row_stack (removed in 2.4); alias it
# back before numba.cuda loads, as the lent machine pairs those two.
if "row_stack" not in np.__dict__:
    np.row_stack = np.vstack  # type: ignore[attr-defined]

import kernels

SHAPE = (2048, 2048)
NPT = 1000
GEOMETRY = kernels.Geometry(
    dist=0.15, poni1=0.0765, poni2=0.0790, rot1=0.004, rot2=-0.003, wavelength=0.7e-10
)


SPIN_US = 40_000  # how long the spin kernel keeps the GPU busy while launches are queued


def _make_spin() -> Any:
    from numba import cuda

    @cuda.jit
    def spin(microseconds):  # pragma: no cover - device
        for _ in range(microseconds):
            cuda.nanosleep(1000)

    return spin


def timed(fn: Callable[[int], Any], repeats: int, sync: Callable[[], None]) -> list[float]:
    fn(0)
    sync()
    out = []
    for k in range(repeats):
        start = time.perf_counter()
        fn(k)
        sync()
        out.append(time.perf_counter() - start)
    return out


def queued(launch: Callable[[int], Any], n: int, spin: Any) -> tuple[float, float]:
    """(device seconds, host seconds) per launch with the launch queue kept full: a spin kernel keeps
    the GPU busy while the host enqueues ``n`` launches, so CUDA events around them time the kernels
    back to back, without the host's launch cost or the synchronisation latency in between."""
    from numba import cuda

    start, end = cuda.event(), cuda.event()
    spin[1, 1](SPIN_US)
    start.record()
    t0 = time.perf_counter()
    for k in range(n):
        launch(k)
    host = (time.perf_counter() - t0) / n
    ran_dry = start.query()  # the GPU finished spinning before the last launch was queued
    end.record()
    end.synchronize()
    if ran_dry:
        raise RuntimeError(f"queueing {n} launches ({host * n * 1e3:.1f} ms) outlasted the spin kernel")
    return start.elapsed_time(end) / 1e3 / n, host


def events_per_call(call: Callable[[Any], Any], n: int, rounds: int) -> float:
    """Seconds per ``call(stream)`` on the device: ``n`` asynchronous calls back to back on one stream
    between two CUDA events, after one warm-up round; the best (shortest) of ``rounds``."""
    from numba import cuda

    stream = cuda.stream()
    best = float("inf")
    for _ in range(rounds + 1):
        start, end = cuda.event(), cuda.event()
        start.record(stream)
        for _ in range(n):
            call(stream)
        end.record(stream)
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / n)
    return best


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def fed_row(
    label: str, integ_gpu: Any, integ_ref: Any, frames: list[np.ndarray], h2d: float, depth: int = 0
) -> dict[str, Any]:
    """Frames from a page-locked ring of 8 slots through the integrator's feed (``submit_full``: copy on one
    stream overlapping the previous frame's kernel on another, sums back asynchronously), as the
    daemon's pipeline drives it: each frame started, collected two frames later. The yardstick: the
    pinned host-to-device copy of one frame measured in this run (the goal: >= 0.7x its frame rate)."""
    from kernels import _gpu_backend as g

    slots = 8
    ring = np.empty((slots, *SHAPE), np.uint16)
    for k in range(slots):
        ring[k] = frames[k % len(frames)]
    n = 400 if not g.simulated() else 4
    with g.pin_host(ring):
        check = integ_gpu.submit_full(ring[1])()
        worst = rel(check.intensity, integ_ref.integrate(ring[1]))
        start = time.perf_counter()
        waiting: list[Any] = []
        for k in range(n):
            waiting.append(integ_gpu.submit_full(ring[k % slots]))
            if len(waiting) > max(2, depth):
                waiting.pop(0)()
        for collect in waiting:
            collect()
        rate = n / (time.perf_counter() - start)
    return {
        "workload": f"{label}, GPU fed from a pinned ring (copy overlapping kernels)"
        + (f", {depth} frames in flight" if depth else ""),
        "value": rate,
        "unit": "frames/s",
        "check": f"max rel diff vs NumPy {worst:.1e}",
        "note": f"{rate * h2d:.2f}x the pinned H2D frame rate of this run, back to back "
        f"({1 / h2d:.0f} frames/s); goal >= 0.7x",
    }


def spot_frames(count: int, n_spots: int = 150) -> list[np.ndarray]:
    """2048^2 float32: Gaussian noise (100 +- 10) and ``n_spots`` Gaussian spots 6-40 sigma up."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[-3:4, -3:4]
    frames = []
    for _ in range(count):
        frame = rng.normal(100.0, 10.0, SHAPE).astype(np.float32)
        for r, c in rng.integers(8, SHAPE[0] - 8, (n_spots, 2)):
            frame[r - 3 : r + 4, c - 3 : c + 4] += rng.uniform(60, 400) * np.exp(-(yy**2 + xx**2) / 2.0)
        frames.append(frame)
    return frames


def peak_rows(gpu: Any, cpu: Any, ref: Any, repeats: int, sync: Callable[[], None]) -> list[dict[str, Any]]:
    """Peak finding 2048^2 on the device (frame already there, and from host memory) beside the numba
    CPU backend; the check: the same peaks as the NumPy reference on one frame."""
    from numba import cuda

    settings: dict[str, Any] = {"min_snr": 5.0, "min_pixels": 2, "max_pixels": 60, "min_peaks": 20}
    frames = spot_frames(4)
    dev_frames = [cuda.to_device(f) for f in frames]
    on_gpu, on_cpu = gpu.peak_finder(SHAPE, **settings), cpu.peak_finder(SHAPE, **settings)
    want = ref.peak_finder(SHAPE, **settings).find(frames[0])
    checks = []
    for label, got in (("GPU", on_gpu.find(dev_frames[0])), ("numba", on_cpu.find(frames[0]))):
        same = len(got) == len(want) and bool(
            np.allclose(got.row, want.row, rtol=1e-9)
            and np.allclose(got.intensity, want.intensity, rtol=1e-9)
        )
        checks.append(f"{label} {len(got)} peaks, equal to NumPy's {len(want)}: {same}")
    check = "; ".join(checks)
    rows = []
    for workload, fn, wait in (
        (
            f"peak finding {SHAPE[0]}^2 float32, GPU (frame on device)",
            lambda k: on_gpu.find(dev_frames[k % 4]),
            sync,
        ),
        (
            f"peak finding {SHAPE[0]}^2 float32, GPU from host (H2D + kernels)",
            lambda k: on_gpu.find(frames[k % 4]),
            sync,
        ),
        (
            f"peak finding {SHAPE[0]}^2 float32, numba CPU backend",
            lambda k: on_cpu.find(frames[k % 4]),
            lambda: None,
        ),
    ):
        t = timed(fn, max(5, repeats // 3), wait)
        rows.append(
            {"workload": workload, "value": 1 / statistics.median(t), "unit": "frames/s", "check": check}
        )
    return rows


def fbp_rows(
    gpu: Any, cpu: Any, sync: Callable[[], None], size: int = 1024, n_angles: int = 900
) -> list[dict[str, Any]]:
    """Filtered back-projection of one 1024^2 slice from 900 angles on the device beside the numba CPU
    backend (which CI checks against skimage); the check: the two within 1e-4 of the slice's maximum."""
    theta = np.linspace(0, 180, n_angles, endpoint=False)
    # the sinogram of a centred disk of radius R: chord lengths 2 sqrt(R^2 - t^2), the same at every angle
    t = np.arange(size) - size / 2 + 0.5
    radius = size / 3
    sino = np.tile(2 * np.sqrt(np.clip(radius**2 - t**2, 0, None)), (n_angles, 1)).astype(np.float32)
    ours, theirs = gpu.fbp(sino, theta), cpu.fbp(sino, theta)
    worst = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    check = f"max|GPU - numba| / max {worst:.1e} <= 1e-4: {worst <= 1e-4}"
    rows = []
    for workload, backend, wait in (
        (f"FBP {size}^2, {n_angles} angles, GPU (from host)", gpu, sync),
        (f"FBP {size}^2, {n_angles} angles, numba CPU backend", cpu, lambda: None),
    ):
        times = timed(lambda k, b=backend: b.fbp(sino, theta), 3, wait)
        rows.append(
            {"workload": workload, "value": statistics.median(times), "unit": "s/slice", "check": check}
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--json-file", type=Path, default=None, help="also write the JSON object here")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    from numba import cuda

    gpu = kernels.get_backend("gpu")
    cpu = kernels.get_backend("numba")
    ref = kernels.get_backend("numpy")
    from kernels import _gpu_backend as g

    if g.simulated():
        name, copy_elems = "numba CUDA simulator (smoke test only)", 2**16
    else:
        raw_name = cuda.get_current_device().name
        name, copy_elems = (raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)), 2**28
    sync = cuda.synchronize
    spin = None if g.simulated() else _make_spin()
    rng = np.random.default_rng(0)
    frames = [rng.poisson(50, SHAPE).astype(np.uint16) for _ in range(4)]
    mask = np.zeros(SHAPE, bool)
    mask[:, 1020:1030] = True
    rows: list[dict[str, Any]] = []

    # device-to-device copy bandwidth, the yardstick (read + write counted): copies back to back on one
    # stream, timed by CUDA events after a warm-up (the clocks ramp up), so neither the host's call nor
    # a synchronisation is in the figure; the best of several rounds
    big = cuda.device_array(copy_elems, dtype=np.float32)
    big2 = cuda.device_array_like(big)
    d2d = 2 * big.nbytes / events_per_call(lambda st: big2.copy_to_device(big, stream=st), 8, rounds=5)
    d2d /= 1e9
    rows.append(
        {
            "workload": f"device-to-device copy {big.nbytes >> 20} MiB, back to back",
            "value": d2d,
            "unit": "GB/s",
            "check": "-",
            "note": "read + write counted; CUDA events over 8 copies, best of 5 rounds",
        }
    )

    # host-to-device copy of one frame, apart from the kernels: one copy with its call and
    # synchronisation (latency), and copies back to back from pinned memory (the bus's sustained rate,
    # the yardstick of a fed GPU)
    pinned = cuda.pinned_array(SHAPE, dtype=np.uint16)
    pinned[...] = frames[0]
    dev_frames = [cuda.to_device(f) for f in frames]
    landing = cuda.device_array(SHAPE, dtype=np.uint16)
    t = timed(lambda k: landing.copy_to_device(pinned), args.repeats, sync)
    rows.append(
        {
            "workload": "H2D copy of one 2048^2 uint16 frame (pinned), one call + synchronize",
            "value": statistics.median(t) * 1e3,
            "unit": "ms",
            "check": f"{frames[0].nbytes / statistics.median(t) / 1e9:.1f} GB/s",
        }
    )
    h2d = events_per_call(lambda st: landing.copy_to_device(pinned, stream=st), 40, rounds=3)
    rows.append(
        {
            "workload": "H2D copies of 2048^2 uint16 frames (pinned), back to back",
            "value": frames[0].nbytes / h2d / 1e9,
            "unit": "GB/s",
            "check": f"{1 / h2d:.0f} frames/s",
            "note": "CUDA events over 40 copies, best of 3 rounds: the fed path's yardstick",
        }
    )
    t = timed(lambda k: cuda.to_device(frames[k % 4]), 10, sync)
    rows.append(
        {
            "workload": "H2D copy of one frame (pageable, to_device)",
            "value": statistics.median(t) * 1e3,
            "unit": "ms",
            "check": "-",
        }
    )

    for label, make in (
        (
            "integrate 2048^2 -> 1000 bins",
            lambda b: b.integrator(
                GEOMETRY, SHAPE, NPT, mask=mask, correct_solid_angle=True, polarization_factor=0.99
            ),
        ),
        (
            "integrate2d 2048^2 -> 500 x 360",
            lambda b: b.integrator2d(GEOMETRY, SHAPE, 500, 360, mask=mask, correct_solid_angle=True),
        ),
    ):
        integ_gpu, integ_cpu, integ_ref = make(gpu), make(cpu), make(ref)
        expected = integ_ref.integrate(frames[1])
        worst = rel(integ_gpu.integrate(dev_frames[1]), expected)
        summer = integ_gpu._summer
        t = timed(lambda k, s=summer: s.sums_on_device(dev_frames[k % 4], False), args.repeats, sync)
        # bins and frame are each read once per launch
        kernel = statistics.median(t)
        moved = frames[0].nbytes + integ_gpu.bins.nbytes
        rows.append(
            {
                "workload": f"{label}, GPU kernel (frame on device)",
                "value": 1 / kernel,
                "unit": "frames/s",
                "check": f"max rel diff vs NumPy {worst:.1e}",
                "bandwidth_fraction": moved / kernel / 1e9 / d2d,
                "note": f"{moved / kernel / 1e9:.0f} GB/s read, shared-memory bins: {summer.shared}; "
                "one launch + synchronize per frame",
            }
        )
        if spin is not None:  # the simulator's events time nothing
            for with_variance in (False, True):
                device, host = queued(
                    lambda k, s=summer, v=with_variance: s.sums_on_device(dev_frames[k % 4], v), 100, spin
                )
                rows.append(
                    {
                        "workload": f"{label}, GPU kernel back to back"
                        + (" (+ Poisson variance)" if with_variance else ""),
                        "value": 1 / device,
                        "unit": "frames/s",
                        "check": "-",
                        "bandwidth_fraction": moved / device / 1e9 / d2d,
                        "note": f"{device * 1e6:.1f} us on the device per frame (CUDA events, launch "
                        f"queue kept full); the host's launch takes {host * 1e6:.1f} us; "
                        f"packed 64-bit words: {summer.packed_bins is not None}",
                    }
                )
            if summer.packed_bins is not None:  # the plain kernel beside the packed one, same frames
                g.PACKED_SUMS = False
                plain = make(gpu)._summer
                g.PACKED_SUMS = True
                same = all(
                    np.array_equal(plain(dev_frames[k], True)[i], summer(dev_frames[k], True)[i])
                    for k in range(2)
                    for i in range(2)
                )
                device, host = queued(
                    lambda k, s=plain: s.sums_on_device(dev_frames[k % 4], False), 100, spin
                )
                rows.append(
                    {
                        "workload": f"{label}, GPU kernel back to back, plain (two-byte loads)",
                        "value": 1 / device,
                        "unit": "frames/s",
                        "check": f"sums equal to the packed kernel's: {same}",
                        "bandwidth_fraction": moved / device / 1e9 / d2d,
                        "note": f"{device * 1e6:.1f} us on the device per frame",
                    }
                )
        t = timed(lambda k, i=integ_gpu: i.integrate(frames[k % 4]), 10, sync)
        rows.append(
            {
                "workload": f"{label}, GPU end to end from host (H2D + kernel + D2H)",
                "value": 1 / statistics.median(t),
                "unit": "frames/s",
                "check": "-",
            }
        )
        if label.startswith("integrate 2048"):
            rows.append(fed_row(label, integ_gpu, integ_ref, frames, h2d))
            for depth in (3, 4):  # more frames in flight than the daemon's FEED_DEPTH
                default, g.FEED_DEPTH = g.FEED_DEPTH, depth
                try:
                    rows.append(fed_row(label, make(gpu), integ_ref, frames, h2d, depth))
                finally:
                    g.FEED_DEPTH = default
        t = timed(lambda k, i=integ_cpu: i.integrate(frames[k % 4]), 10, lambda: None)
        worst_cpu = rel(integ_cpu.integrate(frames[1]), expected)
        rows.append(
            {
                "workload": f"{label}, numba CPU backend",
                "value": 1 / statistics.median(t),
                "unit": "frames/s",
                "check": f"max rel diff vs NumPy {worst_cpu:.1e}",
            }
        )

    dark = rng.uniform(0, 10, SHAPE).astype(np.float32)
    gain = kernels.make_gain(SHAPE, flat=rng.uniform(0.9, 1.1, SHAPE), mask=mask)
    d_dark, d_gain = cuda.to_device(dark), cuda.to_device(gain)
    d_out = cuda.device_array(SHAPE, dtype=np.float32)
    t = timed(lambda k: g.correct(dev_frames[k % 4], d_dark, d_gain, d_out), args.repeats, sync)
    same = np.array_equal(
        d_out.copy_to_host(),
        ref.correct(frames[(args.repeats - 1) % 4], dark, gain, np.empty(SHAPE, np.float32)),
    )
    moved = frames[0].nbytes + dark.nbytes + gain.nbytes + dark.nbytes
    kernel = statistics.median(t)
    rows.append(
        {
            "workload": "dark/flat/mask correction 2048^2, GPU kernel",
            "value": moved / kernel / 1e9,
            "unit": "GB/s",
            "check": f"equal to NumPy: {same}",
            "bandwidth_fraction": moved / kernel / 1e9 / d2d,
        }
    )

    rows.extend(peak_rows(gpu, cpu, ref, args.repeats, sync))
    rows.extend(fbp_rows(gpu, cpu, sync))

    if args.json_file is not None:
        args.json_file.write_text(json.dumps({"device": name, "rows": rows}, indent=1) + "\n")
    if args.json:
        print(json.dumps({"device": name, "rows": rows}, indent=1))
    else:
        print(f"device: {name}; bandwidth yardstick: device-to-device copy measured in this run")
        for r in rows:
            frac = f"  {r['bandwidth_fraction'] * 100:5.1f}% of copy BW" if "bandwidth_fraction" in r else ""
            print(
                f"{r['workload']:<66} {r['value']:12.2f} {r['unit']:<9}{frac}  {r['check']}  "
                f"{r.get('note', '')}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
