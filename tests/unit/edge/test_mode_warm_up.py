"""A mode chosen between runs (PV or REST) has its kernels loaded at once, not on the next run's first frame."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from edge.appliance import Appliance
from edge.config import load_settings


def test_a_mode_change_loads_the_new_modes_kernels_in_the_background(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        overrides=[
            f'store.path="{tmp_path / "store"}"',
            "detector.height=64",
            "detector.width=64",
            "ring.slots=2",
            'reduction.backend="numpy"',
            'reduction.mode="powder"',
            'upstream.endpoint="tcp://127.0.0.1:0"',
        ]
    )
    appliance = Appliance(settings)
    try:
        with caplog.at_level(logging.INFO, logger="edge.pipeline"):
            appliance.reduction.update({"mode": "serial"})
            deadline = time.monotonic() + 60
            while any(t.name == "mode-warm-up" for t in threading.enumerate()):
                assert time.monotonic() < deadline, "the warm-up thread did not end"
                time.sleep(0.05)
        assert any("mode serial: kernels ready" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        appliance.stop()
