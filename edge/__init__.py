"""The edge daemon: ingest, reduce, store and forward detector frames, and the ``edge`` CLI."""

import os

__version__ = "0.1.0"

# OpenMP threads (numba's parallel kernels, bitshuffle) sleep between parallel regions instead of spinning.
# The appliance shares its cores with its own receiving, writing and forwarding threads (and, on a small
# box, the simulator and pull client): spinning threads then steal the cores the others need, and a
# parallel region whose partner thread is descheduled waits a whole time slice (a serial-mode stage with
# two threads a frame on 2 loaded cores: 64 ms of CPU a frame spinning, 3 ms sleeping). Read by libgomp when
# it loads, so it is set here, before any kernel runs; an operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
