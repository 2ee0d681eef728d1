"""Two processes filling numba's cache at once (kernels._numba_cache), on real processes and files.

Each child compiles one cached function for its own signature. A rendezvous inside numba's save makes the
race certain instead of rare: a child about to write the index waits until the other has arrived at its
save (inside it, or waiting for the lock) and then a little longer, so that without the lock both have read
the index before either writes it. A third process then loads both signatures from the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KERNEL = """
import numba

@numba.njit(cache=True)
def twice(x):
    return x + x
"""

CHILD = """
import os, sys, time, pathlib
sys.path.insert(0, sys.argv[1])
locked, me, other, kind = sys.argv[2] == "locked", sys.argv[3], sys.argv[4], sys.argv[5]
from numba.core import caching
if locked:
    from kernels._numba_cache import serialise_cache_writes
    serialise_cache_writes()
cls = caching.IndexDataCacheFile
save, save_index = cls.save, cls._save_index

def arrive(self, key, data):  # outside the lock: the other child sees this one arrive
    pathlib.Path(me).touch()
    save(self, key, data)

def meet(self, overloads):  # the index has been read: wait for the other, then let it read too
    deadline = time.monotonic() + 60
    while not os.path.exists(other) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    save_index(self, overloads)

cls.save, cls._save_index = arrive, meet
import numpy as np
import racy
print(racy.twice(np.int64(3) if kind == "int" else np.float64(3.5)))
"""

LOADER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import racy
values = [float(racy.twice(np.int64(3))), float(racy.twice(np.float64(3.5)))]
print(json.dumps({"values": values, "hits": sum(racy.twice.stats.cache_hits.values())}))
"""


def _fill_at_once(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    """Two children compile ``racy.twice`` for int64 and float64 at once; then a third one loads both."""
    (tmp_path / "racy.py").write_text(textwrap.dedent(KERNEL))
    child, loader = tmp_path / "child.py", tmp_path / "loader.py"
    child.write_text(CHILD)
    loader.write_text(LOADER)
    a, b = str(tmp_path / "a.arrived"), str(tmp_path / "b.arrived")
    children = [
        subprocess.Popen(
            [sys.executable, str(child), str(tmp_path), how, me, other, kind], stdout=subprocess.PIPE
        )
        for me, other, kind in ((a, b, "int"), (b, a, "float"))
    ]
    outputs = [p.communicate(timeout=120)[0].decode().strip() for p in children]
    assert [p.returncode for p in children] == [0, 0]
    assert outputs == ["6", "7.0"]
    return subprocess.run(
        [sys.executable, str(loader), str(tmp_path)], capture_output=True, timeout=120, text=True
    )


def test_two_processes_compiling_one_kernel_at_once_leave_a_cache_a_third_loads_whole(tmp_path: Path) -> None:
    done = _fill_at_once(tmp_path, "locked")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"values": [6.0, 7.0], "hits": 2}  # both from the cache, each right


@pytest.mark.skipif(sys.platform != "linux", reason="the race is shown on Linux")
def test_without_the_lock_numba_loses_one_of_them(tmp_path: Path) -> None:
    """The control: numba's own save still races (issue #4807), so the test above tests something. When
    this fails, numba has fixed it and ``serialise_cache_writes`` can go."""
    done = _fill_at_once(tmp_path, "unlocked")
    assert done.returncode != 0 or json.loads(done.stdout) != {"values": [6.0, 7.0], "hits": 2}
