"""Compile the numba peak finder for the frame dtypes the tests use, one process per dtype at once.

`make test` runs this before the unit tests. Otherwise both pytest workers compile the finder, the longest
compile in the suite (~45 s a dtype on one core), for the same dtypes at the same time: ~160 s of CPU
where ~90 do. numba's on-disk cache hands the result to every later process (the workers, the system
tests' daemons); kernels._numba_cache keeps two processes filling it at once from corrupting it. With a
warm cache this takes a second or two.

    python tests/warm_kernels.py            # both dtypes, in parallel
    python tests/warm_kernels.py uint16     # one, in this process
"""

from __future__ import annotations

import subprocess
import sys
import time

DTYPES = ("uint16", "float32")  # what detectors send (integer counts) and what corrections make


def warm(dtype: str) -> float:
    """Find peaks once on a small frame of ``dtype`` (every kernel of the finder runs); seconds taken."""
    import numpy as np

    from kernels import get_backend

    start = time.perf_counter()
    finder = get_backend("numba").peak_finder((64, 64), center=(32.0, 32.0))
    frame = np.full((64, 64), 10, dtype=np.dtype(dtype))
    for k in (0, 1, 2, 4, 5, 6):  # bright 3x3 blocks, none on the beam centre: every step of the finder runs
        frame[8 + 8 * k : 11 + 8 * k, 5 + 9 * k : 8 + 9 * k] = 200
    found = len(finder.find(frame))
    if found != 6:
        raise SystemExit(f"warm-up found {found} peaks in a {dtype} frame with 6")
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    if argv:
        for dtype in argv:
            print(f"numba peak finder for {dtype}: {warm(dtype):.1f} s", flush=True)
        return 0
    children = [subprocess.Popen([sys.executable, __file__, dtype]) for dtype in DTYPES]
    return max(child.wait() for child in children)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
