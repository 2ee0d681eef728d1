"""Fixtures the appliance's unit tests share."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


def _resident_bytes(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[0])


@pytest.fixture
def resident_bytes() -> Callable[[Path], int]:
    """Bytes of a file in the page cache, as util-linux's ``fincore`` reads them (mincore)."""
    return _resident_bytes
