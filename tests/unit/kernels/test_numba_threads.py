"""The numba backend's per-thread thread count: what ``limit_threads`` sets is what its kernels split by."""

from __future__ import annotations

import threading

import numba

from kernels import _numba_backend


def test_limit_threads_sets_this_threads_task_count_only() -> None:
    seen: dict[str, int] = {}

    def limited() -> None:
        _numba_backend.limit_threads(1)
        seen["limited"] = _numba_backend._chunks()
        seen["numba"] = numba.get_num_threads()

    def unlimited() -> None:
        seen["other"] = _numba_backend._chunks()

    for target in (limited, unlimited):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert seen["limited"] == seen["numba"] == 1
    assert seen["other"] == max(1, numba.config.NUMBA_NUM_THREADS)
