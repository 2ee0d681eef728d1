"""Compile (or load from numba's cache) every reduction mode's kernels, at low priority.

``make test`` starts this in the background beside pytest. In a fresh clone numba's
cache is empty and compiling the modes' kernels takes about two minutes of one core on the 2-core CI
machine (the serial peak finder most of it); without this, that time falls on whichever tests first
reduce a frame, one after the other. Started at the session's beginning with ``nice``, the compiling
fills the cores the tests leave idle while they wait on their subprocesses, and every later process
(test, daemon) loads the kernels from the cache. Nothing here asserts anything: a kernel that fails to
compile fails in its own test.

    python tests/precompile_kernels.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = (64, 64)


def main() -> int:
    os.nice(10)  # the tests come first: this takes only what they leave
    started = time.perf_counter()
    from edge.config import ReductionSettings
    from edge.modes import RunContext, warm_up
    from firmware_bridge.hdf5_chunks import warm_up_check
    from kernels import Geometry, get_backend

    warm_up_check()
    backend = get_backend("numba")
    geometry = Geometry(dist=0.05, poni1=32 * 75e-6, poni2=32 * 75e-6, wavelength=1e-10)
    for dtype in ("uint16", "uint32"):
        for mode in ("powder", "serial", "tomo"):
            settings = ReductionSettings(
                mode=mode, roi=[(4, 16, 4, 16)], cake_bins=6 if mode == "powder" else 0
            )
            warm_up(RunContext(backend, geometry, SHAPE, 24, "2th_deg", settings), dtype)
    print(f"precompile_kernels: ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
