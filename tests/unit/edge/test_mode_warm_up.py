"""A mode chosen between runs (PV or REST) has its kernels loaded at once, not on the next run's first frame."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from edge.appliance import Appliance
from edge.config import Settings, load_settings


def _settings(tmp_path: Path, *more: str) -> Settings:
    """A small powder appliance on the NumPy backend, nothing listening on a fixed port."""
    return load_settings(
        overrides=[
            f'store.path="{tmp_path / "store"}"',
            "detector.height=64",
            "detector.width=64",
            "ring.slots=2",
            'reduction.backend="numpy"',
            'reduction.mode="powder"',
            'upstream.endpoint="tcp://127.0.0.1:0"',
            *more,
        ]
    )


def test_a_mode_change_loads_the_new_modes_kernels_in_the_background(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
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


def test_the_configured_modes_kernels_load_at_start_while_the_appliance_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: an install's first start in serial mode compiled its kernels for 70 s inside
    ``Appliance.start``, and the API (started after it) answered nothing meanwhile, though the docs say
    ``pipeline.warming`` shows the load at start. The load runs on the warm-ups' thread: start returns
    while it goes on, and the status lists it."""
    from edge.pipeline import Pipeline

    release = threading.Event()
    original = Pipeline.warm_up

    def slow(self: Pipeline, *args: object) -> float:
        release.wait(30)  # an install's first compile
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Pipeline, "warm_up", slow)
    settings = _settings(tmp_path, 'stream.endpoint="tcp://127.0.0.1:1"')
    appliance = Appliance(settings)
    try:
        started = threading.Thread(target=appliance.start)
        started.start()
        started.join(20)
        assert not started.is_alive(), "start waited for the kernels"
        assert any(t.name == "mode-warm-up" for t in threading.enumerate())
        release.set()
    finally:
        release.set()
        appliance.stop()
