"""Settings for every test process, before any test runs.

Under pytest-xdist each worker (and every daemon, simulator or demo it starts, by inheritance) picks its
loopback ports from its own slice of `edge.demo.free_port`'s range (``EDGE_PORT_RANGE``): a port is
chosen free and bound a moment later, and two workers choosing from one range would now and then both
take the same port in between.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.demo import _LOWEST_PORT, _ephemeral_range


def _port_slice() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2 or "EDGE_PORT_RANGE" in os.environ:
        return
    index = int(worker[2:])
    size = (_ephemeral_range()[0] - _LOWEST_PORT) // count
    if size < 1000:  # no room for slices: the whole range, as without workers
        return
    first = _LOWEST_PORT + index * size
    os.environ["EDGE_PORT_RANGE"] = f"{first}-{first + size - 1}"


_port_slice()


@pytest.fixture
def small_settings(tmp_path: Path) -> Callable[..., Any]:
    """Settings of a small appliance for in-process tests: a 32x32 detector, a store under ``tmp_path``,
    two ring slots, NumPy kernels and the upstream on a free port; ``extra`` overrides (as ``--set``)."""
    from edge.config import load_settings

    def make(*extra: str) -> Any:
        return load_settings(
            overrides=[
                f'store.path="{tmp_path / "store"}"',
                'upstream.endpoint="tcp://127.0.0.1:0"',
                "detector.height=32",
                "detector.width=32",
                "ring.slots=2",
                'reduction.backend="numpy"',
                *extra,
            ]
        )

    return make
