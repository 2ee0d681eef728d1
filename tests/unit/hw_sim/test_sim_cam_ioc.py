"""Unit tests for the camera IOC's behaviour (no network): puts go straight to the caproto PV objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from hw_sim.ioc import CamHooks, SimCamIOC


class Recorder:
    """Hooks that record what the IOC told them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []

    def hooks(self) -> CamHooks:
        async def on_frame(index: int) -> None:  # a coroutine hook, as a ZMQ sender might be
            self.events.append(("frame", index))

        return CamHooks(
            on_acquire_start=lambda n: self.events.append(("start", n)),
            on_frame=on_frame,
            on_acquire_stop=lambda: self.events.append(("stop", None)),
        )


async def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def _configure(ioc: SimCamIOC, mode: str, num_images: int, period: float) -> None:
    await ioc.image_mode.write(mode)
    await ioc.num_images.write(num_images)
    await ioc.acquire_time.write(0.0)
    await ioc.acquire_period.write(period)


def test_multiple_mode_runs_hooks_in_order_and_returns_to_idle() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        ioc = SimCamIOC("U:cam1:", recorder.hooks())
        await _configure(ioc, "Multiple", 3, 0.005)
        await ioc.acquire.write("Acquire")  # returns when the run is over, like a put with completion
        assert recorder.events == [("start", 3), ("frame", 0), ("frame", 1), ("frame", 2), ("stop", None)]
        assert ioc.frames_acquired == 3
        assert ioc.num_images_counter.value == 3
        assert ioc.detector_state.value == "Idle"
        assert ioc.acquire.value == "Done"
        assert ioc.acquire_rbv.value == "Done"
        assert not ioc.acquiring

    asyncio.run(scenario())


def test_put_of_zero_aborts_a_continuous_run() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        ioc = SimCamIOC("U:cam1:", recorder.hooks())
        await _configure(ioc, "Continuous", 1, 0.005)
        run = asyncio.create_task(ioc.acquire.write("Acquire"))
        await _wait_until(lambda: ioc.frames_acquired >= 2)
        assert ioc.acquire.value == "Acquire"
        assert ioc.detector_state.value == "Acquire"
        await ioc.acquire.write("Done")
        await asyncio.wait_for(run, 5)
        assert ioc.detector_state.value == "Aborted"
        assert ioc.status_message.value == "Acquisition aborted"
        assert recorder.events[0] == ("start", 0)
        assert recorder.events[-1] == ("stop", None)
        assert [e for e in recorder.events if e[0] == "stop"] == [("stop", None)]

    asyncio.run(scenario())


def test_a_failing_hook_is_counted_and_the_run_goes_on() -> None:
    def broken(index: int) -> None:
        raise RuntimeError("sink gone")

    async def scenario() -> None:
        ioc = SimCamIOC("U:cam1:", CamHooks(on_frame=broken))
        await _configure(ioc, "Multiple", 2, 0.002)
        await ioc.acquire.write("Acquire")
        assert ioc.frames_acquired == 2
        assert ioc.hook_errors == 2

    asyncio.run(scenario())


def test_settings_follow_puts_and_are_clamped_like_hardware() -> None:
    async def scenario() -> None:
        ioc = SimCamIOC("U:cam1:", max_size=(256, 128), data_type="UInt32")
        assert ioc.max_size_x.value == 256
        assert ioc.array_size.value == 256 * 128 * 4
        await ioc.size_x.write(1000)
        await ioc.bin_y.write(2)
        await ioc.data_type.write("Float64")
        await ioc.num_images.write(0)
        settings = ioc.settings()
        assert (settings.size_x, settings.size_y, settings.bin_y) == (256, 128, 2)
        assert settings.data_type == "Float64"
        assert settings.num_images == 1
        assert (ioc.array_size_x.value, ioc.array_size_y.value) == (256, 64)
        assert ioc.array_size.value == 256 * 64 * 8

    asyncio.run(scenario())


def test_rejects_an_unknown_data_type() -> None:
    with pytest.raises(ValueError, match="data_type"):
        SimCamIOC("U:cam1:", data_type="Int12")


def test_a_refused_beacon_is_one_warning_line_naming_carepeater_and_the_rest_are_dropped() -> None:
    """Without a CA repeater caproto logs a traceback per beacon, advising beacon settings that are
    already right: the first becomes one warning that says what is missing, the rest are dropped."""
    import logging
    import sys

    from hw_sim.ioc import _FirstBeaconErrorOnly

    def record() -> logging.LogRecord:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            exc_info = sys.exc_info()
        return logging.LogRecord(
            "caproto.ctx",
            logging.ERROR,
            __file__,
            1,
            "Failed to send beacon to %r. Try setting EPICS_CAS_AUTO_BEACON_ADDR_LIST=no and ...",
            (("127.0.0.1", 5065),),
            exc_info,
        )

    beacons = _FirstBeaconErrorOnly()
    first = record()
    assert beacons.filter(first)
    text = logging.Formatter("%(levelname)s %(message)s").format(first)
    assert text.startswith("WARNING CA beacons to 127.0.0.1:5065 are refused"), text
    assert "caRepeater" in text and "Traceback" not in text
    assert not beacons.filter(record())
    other = logging.LogRecord("caproto.ctx", logging.INFO, __file__, 1, "Server startup complete.", (), None)
    assert beacons.filter(other)
