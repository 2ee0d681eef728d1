"""Suite-wide: numba's kernels compiled in the background while the first tests run (see
``tests/precompile_kernels.py``). Only for a run of many tests; ``EDGE_TEST_PRECOMPILE=0`` turns it off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PRECOMPILE = Path(__file__).with_name("precompile_kernels.py")
MIN_ITEMS = 100  # a single test or one file does not start it
_background: subprocess.Popen[bytes] | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _background
    if os.environ.get("EDGE_TEST_PRECOMPILE", "1") == "0" or len(session.items) < MIN_ITEMS:
        return
    _background = subprocess.Popen(
        [sys.executable, str(PRECOMPILE)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _background is not None and _background.poll() is None:
        _background.terminate()
        _background.wait(timeout=30)
