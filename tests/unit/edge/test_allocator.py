"""glibc malloc settings (edge/allocator.py): both applied when nothing is explicit, and an explicit
setting (environment variable or glibc tunable) left as it is. Their effect is measured, not tested:
``benchmarks/results/malloc-2026-12-02.txt``."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from edge.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, tune_malloc


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


pytestmark = pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")


def test_both_thresholds_are_set_when_nothing_is_explicit() -> None:
    assert tune_malloc({}) == {"mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}


@pytest.mark.parametrize(
    ("environ", "left"),
    [
        ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "trim_threshold"),
        ({"MALLOC_MMAP_THRESHOLD_": "1000000"}, "mmap_threshold"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, "trim_threshold"),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1000000:glibc.malloc.arena_max=2"},
            "mmap_threshold",
        ),
    ],
)
def test_an_explicit_setting_wins(environ: dict[str, str], left: str) -> None:
    applied = tune_malloc(environ)
    assert left not in applied
    assert len(applied) == 1


def test_the_settings_hold_in_a_process_that_then_moves_big_buffers() -> None:
    # glibc takes both values (mallopt answers 1) and the process still allocates, frees and reuses
    # buffers of a frame's size and above the threshold
    code = (
        "import numpy as np\n"
        "from edge.allocator import tune_malloc\n"
        "applied = tune_malloc({})\n"
        "for size in (2 << 20, 40 << 20, 2 << 20):\n"
        "    a = np.ones(size, np.uint8); assert int(a.sum()) == size; del a\n"
        "print(sorted(applied))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['mmap_threshold', 'trim_threshold']"
