"""glibc malloc settings for the processes that move frames: the daemon, the pull client, the simulator.

libzmq allocates every received message of more than a few kilobytes with ``malloc`` on its I/O thread,
and the thread that takes the message frees it. With glibc's defaults a 2 MiB frame or a 4 MiB chunk
lands near the dynamic thresholds: freed heap tops are trimmed back to the kernel and mapped again for
the next message, and every new page is a page fault and a page the kernel zeroes before the socket's
bytes are copied into it. A fixed mmap threshold of 32 MiB (the most glibc allows for a thread's heap)
and a trim threshold of 128 MiB keep those pages mapped from one message to the next: receiving a
2 MiB message on loopback took 0.34-0.39 ms of CPU instead of 0.46-0.51 (20-25 page faults a message
down to 1-2; ``benchmarks/results/malloc-2026-12-02.txt``). The cost is memory: up to the trim
threshold of freed memory per heap stays with the process, which at most holds what its peak held.

That is why the threads share two heaps (arenas) instead of glibc's eight per core: each heap keeps its
own freed pages, and with the default a daemon's resident memory went on rising (+61 MB/h over a
20-minute soak outside systemd, with Python's own allocations flat); the systemd units always ran with
``MALLOC_ARENA_MAX=2`` and stayed flat (``benchmarks/soak.py``). Now ``edge run`` / ``pull`` / ``sim``
take two heaps however they are started.

An explicit setting wins: a parameter set through ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
or ``GLIBC_TUNABLES`` is left as it is. On a C library other than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 32 << 20  # bytes; glibc refuses more than half a thread heap's 64 MiB
TRIM_THRESHOLD = 128 << 20  # bytes of free memory a heap keeps at its top before giving it back
ARENA_MAX = 2  # heaps the threads share (glibc's default: eight per core, each keeping its own free pages)

# mallopt parameter numbers (glibc's malloc.h), with the environment variable and tunable that also set them
_PARAMETERS = {
    "mmap_threshold": (-3, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),
    "trim_threshold": (-1, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),
    "arena_max": (-8, "MALLOC_ARENA_MAX", ARENA_MAX),
}


def tune_malloc(environ: dict[str, str] | None = None) -> dict[str, int]:
    """Apply the settings above to this process; returns what was set (name -> bytes), empty when none."""
    env = os.environ if environ is None else environ
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator has no such knobs
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    tunables = env.get("GLIBC_TUNABLES", "")
    applied: dict[str, int] = {}
    for name, (parameter, variable, value) in _PARAMETERS.items():
        if variable in env or f"glibc.malloc.{name}" in tunables:
            continue
        if mallopt(parameter, value) == 1:
            applied[name] = value
    return applied
