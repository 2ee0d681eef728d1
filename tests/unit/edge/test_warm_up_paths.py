"""``edge.modes.warm_up`` loads every kernel a run's frames take, so that no frame waits for a compile.

An outside probe's UDP serial run on a fresh install: the first incomplete frame (its missing pixels as
NaN, the kernels' float path) compiled the peak finder again, 24 s, while the UDP socket overflowed and
whole frames were lost. Checked in a fresh process (whatever this one loaded before would hide it): after ``warm_up``, frames
with and without missing pixels add no signature to any numba kernel (a kernel loaded from numba's
cache adds one too, so the check does not depend on the cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import sys
import numba
import numpy as np
from numba.core.registry import CPUDispatcher
import kernels._numba_backend as nb
from edge.config import ReductionSettings
from edge.modes import RunContext, make_stage, warm_up
from kernels import Geometry, get_backend

mode = sys.argv[1]
side = 48
geometry = Geometry(dist=0.05, poni1=side / 2 * 75e-6, poni2=side / 2 * 75e-6, wavelength=1e-10)
params = ReductionSettings(mode=mode, roi=[[4, 4, 8, 8]])
ctx = RunContext(get_backend("numba"), geometry, (side, side), 24, "2th_deg", params)
warm_up(ctx, "uint16")

def compiled():
    return {name: len(d.signatures) for name, d in vars(nb).items() if isinstance(d, CPUDispatcher)}

before = compiled()
stage = make_stage(ctx)
frame = np.full((side, side), 10, np.uint16)
frame[10:13, 10:13] = 300
missing = np.zeros((side, side), bool)
missing[5, :7] = True
stage.process(frame, 0, 0, 10.0)
stage.process(frame, 1, 0, 20.0, missing)
stage.finish()
after = compiled()
grew = {name: (before.get(name, 0), n) for name, n in after.items() if n != before.get(name, 0)}
print("GREW", grew)
sys.exit(1 if grew else 0)
"""


@pytest.mark.parametrize("mode", ["serial", "powder", "tomo"])
def test_after_warm_up_no_frame_compiles_a_kernel(mode: str) -> None:
    root = Path(__file__).parents[3]
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=600, env=env, cwd=root
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
