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


@pytest.mark.gpu
def test_gpu_backend_under_cuda_simulator() -> None:
    pytest.importorskip("numba.cuda")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "EDGE_TEST_GPU": "1"}
    env.pop("EDGE_BACKEND", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(HERE / "test_kernels.py"),
            str(HERE / "test_reduction_kernels.py"),
            "-q",
            "-k",
            "gpu and not missing_gpu",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::numba.core.errors.NumbaPerformanceWarning",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=HERE.parents[2],
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.split("\n")[-2], done.stdout[-2000:]
