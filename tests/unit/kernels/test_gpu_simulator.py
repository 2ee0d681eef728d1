"""Run the kernel test bodies against the GPU backend under numba's CUDA simulator.

The simulator must be switched on before numba.cuda is first imported, which this pytest process may
already have done, so the GPU cases run in a fresh interpreter with NUMBA_ENABLE_CUDASIM=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _under_simulator(*args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh process with numba's CUDA simulator on (it must be set before
    numba.cuda is first imported) and the GPU backend's tests enabled."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "EDGE_TEST_GPU": "1"}
    env.pop("EDGE_BACKEND", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=170, env=env, cwd=HERE.parents[2]
    )


@pytest.mark.gpu
def test_gpu_backend_under_cuda_simulator() -> None:
    pytest.importorskip("numba.cuda")
    done = _under_simulator(
        "-m",
        "pytest",
        str(HERE / "test_kernels.py"),
        str(HERE / "test_reduction_kernels.py"),
        "-q",
        "-k",
        # uint8 and int16 frames reach the kernels widened to uint16 and float32 (``kernel_frame``), the
        # types the uint16 case and the float tests already give the GPU kernels: ~18 s of simulator
        # time for nothing new (on a real GPU, EDGE_TEST_GPU=1 runs them)
        "gpu and not missing_gpu and not (integer_frames and (uint8 or int16))",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::numba.core.errors.NumbaPerformanceWarning",
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.split("\n")[-2], done.stdout[-2000:]


BIN_SUMMER_CHECK = """
import numpy as np
from kernels import _gpu_backend as g, _numpy_backend as ref

assert g.simulated()
rng = np.random.default_rng(5)
for nbins, size, dtype, runs in [
    (12, 1961, np.float32, False),  # random bins: a flush at almost every pixel
    (40, 1961, np.uint16, True),  # runs of equal bins, as along a detector row
    (40, 1964, np.uint16, True),  # whole 64-bit words of 16-bit pixels: the packed kernel
    (7, 1964, np.uint16, False),  # the packed kernel, a flush at almost every pixel
    (g.SHARED_BINS + 952, 1961, np.float32, True),  # too many bins for shared memory: global sums
    (5, 3, np.float32, False),  # fewer pixels than one run
]:
    if runs:
        bins = np.repeat(rng.integers(0, nbins + 1, size), rng.integers(1, 12, size))[:size]
    else:
        bins = rng.integers(0, nbins + 1, size)  # nbins is the masked sentinel
    bins = bins.astype(np.int32 if nbins > 1000 else np.uint16)
    values = rng.uniform(0, 3, size).astype(dtype) if dtype == np.float32 else rng.poisson(2, size).astype(dtype)
    if dtype == np.uint16:
        values[::97] = 65535  # the top of the 16-bit range survives the unpacking
    summer, oracle = g.BinSummer(bins, nbins), ref.BinSummer(bins, nbins)
    assert summer.shared == (nbins <= g.SHARED_BINS)
    assert (summer.packed_bins is not None) == (size % 4 == 0 and nbins <= g.SHARED_BINS), (nbins, size)
    assert (summer._packed_view(g.to_device(values)) is not None) == (
        summer.packed_bins is not None and dtype == np.uint16
    )
    for with_variance in (True, False, True, True):  # the two buffer pairs take turns
        sums, variance = summer(values, with_variance)
        want, want_var = oracle(values, with_variance)
        np.testing.assert_allclose(sums, want, rtol=1e-12, atol=1e-12)
        if with_variance:
            np.testing.assert_allclose(variance, want_var, rtol=1e-12)
        else:
            assert variance is None
print("bin sums ok")
"""


@pytest.mark.gpu
def test_bin_sums_under_cuda_simulator() -> None:
    """Shared and global bin-sum kernels, partial runs, masked pixels and repeated calls vs NumPy."""
    pytest.importorskip("numba.cuda")
    done = _under_simulator("-c", BIN_SUMMER_CHECK)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "bin sums ok" in done.stdout


FEED_CHECK = """
import numpy as np
from numba import cuda
from kernels import _gpu_backend as g, _numpy_backend as ref

assert g.simulated()
rng = np.random.default_rng(6)
size, nbins = 1961, 40
bins = np.repeat(rng.integers(0, nbins + 1, size), rng.integers(1, 12, size))[:size].astype(np.uint16)
summer, oracle = g.BinSummer(bins, nbins), ref.BinSummer(bins, nbins)
ring = np.zeros((6, size), np.uint16)  # a ring of frame slots, page-locked while the feed reads it
frames = [rng.poisson(3, size).astype(np.uint16) for _ in range(6)]
with g.pin_host(ring):
    pending = []
    for k, frame in enumerate(frames):  # more frames than the feed holds, none collected yet
        with_variance = k % 3 != 1
        if k == 4:
            source = cuda.to_device(frame)  # a frame already on the device skips the copy
        else:
            ring[k] = frame
            source = ring[k]
        pending.append((k, with_variance, summer.submit(source, with_variance)))
        if k == 2:
            sums, _ = summer(frames[0], False)  # a synchronous call between submits takes its turn too
            np.testing.assert_allclose(sums, oracle(frames[0], False)[0], rtol=1e-12)
    for k, with_variance, wait in pending[::-1]:  # collected in any order, from the buffer or not
        sums, variance = wait()
        want, want_var = oracle(frames[k], with_variance)
        np.testing.assert_allclose(sums, want, rtol=1e-12)
        if with_variance:
            np.testing.assert_allclose(variance, want_var, rtol=1e-12)
        else:
            assert variance is None
        assert wait()[0] is sums  # collected once
print("feed ok")
"""


@pytest.mark.gpu
def test_frames_fed_without_waiting_equal_the_numpy_sums_under_cuda_simulator() -> None:
    """``BinSummer.submit``: frames from a page-locked ring and from the device, more than the feed
    holds in flight, with and without variance and a synchronous call between them, each collected
    in any order: every frame's sums equal NumPy's."""
    pytest.importorskip("numba.cuda")
    done = _under_simulator("-c", FEED_CHECK)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "feed ok" in done.stdout
