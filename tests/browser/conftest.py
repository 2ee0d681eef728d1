"""Fixtures for the dashboard's browser tests: headless Chromium, and where screenshots go.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); without it every browser test is
skipped with the reason. ``EDGE_CHROMIUM`` names another executable. The real appliance stack comes
from ``tests/system/edgeprocs.py``, shared with the system tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))  # edgeprocs

from cdp_browser import Browser, find_chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable, or a skip saying how to get one."""
    path = find_chromium()
    if path is None:
        pytest.skip(
            "headless Chromium not found: install Debian's chromium (apt-get install chromium) "
            "or set EDGE_CHROMIUM to a Chromium executable"
        )
    return path


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    """A fresh headless Chromium with a 1280x800 page and its own profile; closed after the test."""
    instance = Browser(chromium, tmp_path / "chromium-profile", width=1280, height=800)
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests leave screenshots of the dashboard for a person to look at."""
    return tmp_path_factory.mktemp("dashboard-screenshots")
