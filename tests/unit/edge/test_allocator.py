"""glibc malloc settings (edge/allocator.py): each applied when nothing is explicit, and an explicit
setting (environment variable or glibc tunable) left as it is. Their effect is measured, not tested:
``benchmarks/results/malloc-2026-12-02.txt``."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from edge.allocator import ARENA_MAX, MMAP_THRESHOLD, TRIM_THRESHOLD, tune_malloc


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


pytestmark = pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")


def test_every_setting_is_made_when_nothing_is_explicit() -> None:
    assert tune_malloc({}) == {
        "mmap_threshold": MMAP_THRESHOLD,
        "trim_threshold": TRIM_THRESHOLD,
        "arena_max": ARENA_MAX,
    }


@pytest.mark.parametrize(
    ("environ", "left"),
    [
        ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, {"trim_threshold"}),
        ({"MALLOC_MMAP_THRESHOLD_": "1000000"}, {"mmap_threshold"}),
        ({"MALLOC_ARENA_MAX": "4"}, {"arena_max"}),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, {"trim_threshold"}),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1000000:glibc.malloc.arena_max=4"},
            {"mmap_threshold", "arena_max"},
        ),
    ],
)
def test_an_explicit_setting_wins(environ: dict[str, str], left: set[str]) -> None:
    applied = tune_malloc(environ)
    assert set(applied) == {"mmap_threshold", "trim_threshold", "arena_max"} - left


def test_the_threads_share_two_heaps() -> None:
    # eight threads allocating at once: glibc gives them heaps of their own unless told otherwise
    # (its malloc_stats prints one "Arena N:" block per heap)
    code = (
        "import ctypes, sys, threading\n"
        "from edge.allocator import tune_malloc\n"
        "if sys.argv[1] == 'tuned':\n"
        "    tune_malloc({})\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.malloc.argtypes = [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "together = threading.Barrier(8)\n"
        "def work():\n"
        "    together.wait()\n"
        "    for _ in range(2000):\n"
        "        for block in [libc.malloc(4096) for _ in range(20)]:\n"
        "            libc.free(block)\n"
        "threads = [threading.Thread(target=work) for _ in range(8)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "libc.malloc_stats()\n"
    )
    heaps = {}
    for how in ("default", "tuned"):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX" and k != "GLIBC_TUNABLES"}
        done = subprocess.run(
            [sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        heaps[how] = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    assert heaps["tuned"] == ARENA_MAX < heaps["default"]


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
    assert done.stdout.strip() == "['arena_max', 'mmap_threshold', 'trim_threshold']"
