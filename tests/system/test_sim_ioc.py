"""System tests: the simulator's camera IOC (a subprocess on 127.0.0.1) seen through pyepics and ophyd.

pyepics reads its address list once, when libca starts, so the CA client side of this process uses
one loopback port for the whole session (`ca_port`, from ``conftest.py``); each test starts its own IOC process on that
port with a fresh PV prefix and kills it afterwards. The recipe is in ``docs/epics.md``.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_epics_control import _epics

SRC = Path(__file__).resolve().parents[2]
IOC_START_TIMEOUT = 20.0

pytestmark = pytest.mark.timeout(120)


# --- processes ------------------------------------------------------------------------------------
class IocProcess:
    """``python -m hw_sim.ioc`` as a child process, restartable on the same port and prefix."""

    def __init__(self, prefix: str, port: int, log_path: Path, extra: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.port = port
        self.log_path = log_path
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the IOC and return once it prints its READY line."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
        cmd = [
            *(sys.executable, "-m", "hw_sim.ioc", "--prefix", self.prefix, "--port", str(self.port), "-v"),
            *self.extra,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        line = _read_line(self.proc, time.monotonic() + IOC_START_TIMEOUT)
        assert line.startswith(f"READY {self.prefix}"), f"IOC said {line!r}; log:\n{self.log()}"

    def stop(self) -> None:
        """Terminate the IOC (kill if it lingers) and reap it."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def log(self) -> str:
        """The IOC's stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """Read one line of ``proc``'s stdout, giving up at ``deadline`` or if it exits."""
    assert proc.stdout is not None
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"IOC printed no line in time (got {buf!r})")
            if sel.select(timeout=min(remaining, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"IOC exited with {proc.wait()} before READY (got {buf!r})")
                buf += chunk
    return buf.split(b"\n", 1)[0].decode()


@pytest.fixture
def cam_prefix() -> str:
    """A PV prefix no other test (or stale IOC) uses."""
    return f"T{uuid.uuid4().hex[:8].upper()}:cam1:"


@pytest.fixture
def sim_ioc(ca_port: int, cam_prefix: str, tmp_path: Path) -> Iterator[IocProcess]:
    """A running camera IOC on the session's CA port; stopped at teardown."""
    ioc = IocProcess(cam_prefix, ca_port, tmp_path / "ioc.log")
    try:
        ioc.start()
        yield ioc
    finally:
        ioc.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Async `wait_until`; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# --- the IOC through pyepics ----------------------------------------------------------------------
def test_every_served_pv_answers_caget(sim_ioc: IocProcess) -> None:
    from hw_sim.ioc import SimCamIOC

    epics = _epics()
    names = [*SimCamIOC(sim_ioc.prefix).pvdb, f"{sim_ioc.prefix}DataType_RBV.DISA"]
    values = epics.caget_many(names, connection_timeout=10.0, timeout=10.0)
    missing = [name for name, value in zip(names, values, strict=True) if value is None]
    assert not missing, f"no answer from {missing}"
    p = sim_ioc.prefix
    assert epics.caget(p + "DetectorState_RBV", as_string=True) == "Idle"
    assert epics.caget(p + "Model_RBV") == "SimCam"
    assert epics.caget(p + "MaxSizeX_RBV") == 1024
    assert epics.caget(p + "DataType_RBV", as_string=True) == "UInt16"
    assert epics.caget(p + "ArraySize_RBV") == 1024 * 1024 * 2
    assert epics.caget(p + "StatusMessage_RBV", as_string=True) == "Idle"


def test_setpoint_updates_readback(sim_ioc: IocProcess) -> None:
    epics = _epics()
    p = sim_ioc.prefix
    assert epics.caput(p + "SizeX", 512, wait=True, timeout=5) == 1
    assert epics.caput(p + "DataType", "Float32", wait=True, timeout=5) == 1
    assert epics.caput(p + "NDAttributesFile", "/data/" + "x" * 80 + ".xml", wait=True, timeout=5) == 1
    assert epics.caget(p + "SizeX_RBV") == 512
    assert epics.caget(p + "ArraySizeX_RBV") == 512
    assert epics.caget(p + "ArraySize_RBV") == 512 * 1024 * 4
    assert epics.caget(p + "NDAttributesFile", as_string=True) == "/data/" + "x" * 80 + ".xml"
    # the simulated hardware clamps a size beyond the sensor, as a driver would
    epics.caput(p + "SizeY", 4096, wait=True, timeout=5)
    assert epics.caget(p + "SizeY_RBV") == 1024


def test_acquire_put_completion_waits_for_the_frames(sim_ioc: IocProcess) -> None:
    epics = _epics()
    p = sim_ioc.prefix
    states: list[str] = []
    # form="ctrl" so that monitor updates carry the enum strings (char_value "Acquire", not "1")
    state_pv = epics.PV(
        p + "DetectorState_RBV", form="ctrl", callback=lambda char_value, **_: states.append(char_value)
    )
    try:
        assert state_pv.wait_for_connection(timeout=10)
        settings = (("ImageMode", 1), ("NumImages", 5), ("AcquireTime", 0.01), ("AcquirePeriod", 0.1))
        for name, value in settings:
            assert epics.caput(p + name, value, wait=True, timeout=5) == 1
        start = time.monotonic()
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=20) == 1
        elapsed = time.monotonic() - start
        assert elapsed >= 0.45, f"put completed after {elapsed:.3f} s, before 5 frames of 0.1 s"
        assert elapsed < 10
        assert epics.caget(p + "ArrayCounter_RBV") == 5
        assert epics.caget(p + "NumImagesCounter_RBV") == 5
        assert epics.caget(p + "Acquire") == 0
        assert epics.caget(p + "Acquire_RBV") == 0
        assert epics.caget(p + "DetectorState_RBV", as_string=True) == "Idle"
        wait_until(lambda: "Acquire" in states and states[-1] == "Idle", 5, "state monitor to see the run")
    finally:
        state_pv.disconnect()


def test_single_mode_takes_one_frame(sim_ioc: IocProcess) -> None:
    epics = _epics()
    p = sim_ioc.prefix
    epics.caput(p + "ImageMode", "Single", wait=True, timeout=5)
    epics.caput(p + "NumImages", 50, wait=True, timeout=5)
    epics.caput(p + "AcquirePeriod", 0.01, wait=True, timeout=5)
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=10) == 1
    assert epics.caget(p + "ArrayCounter_RBV") == 1


def test_acquire_zero_aborts_and_completes_the_pending_put(sim_ioc: IocProcess) -> None:
    epics = _epics()
    p = sim_ioc.prefix
    epics.caput(p + "ImageMode", "Continuous", wait=True, timeout=5)
    epics.caput(p + "AcquirePeriod", 0.02, wait=True, timeout=5)
    completed = threading.Event()
    acquire = epics.PV(p + "Acquire")
    try:
        assert acquire.wait_for_connection(timeout=10)
        acquire.put(1, callback=lambda **_: completed.set())
        wait_until(lambda: (epics.caget(p + "ArrayCounter_RBV") or 0) >= 3, 10, "three frames")
        assert not completed.is_set(), "a continuous acquisition completed by itself"
        assert epics.caput(p + "Acquire", 0, wait=True, timeout=10) == 1
        assert completed.wait(timeout=5), "the put of Acquire=1 did not complete after the abort"
        assert epics.caget(p + "DetectorState_RBV", as_string=True) == "Aborted"
        assert epics.caget(p + "Acquire_RBV") == 0
        assert epics.caget(p + "StatusMessage_RBV", as_string=True) == "Acquisition aborted"
    finally:
        acquire.disconnect()


# --- ophyd ----------------------------------------------------------------------------------------
def test_ophyd_sim_detector_cam_connects_and_acquires(sim_ioc: IocProcess) -> None:
    pytest.importorskip("ophyd")
    from ophyd.areadetector.cam import SimDetectorCam

    cam = SimDetectorCam(sim_ioc.prefix, name="cam")
    try:
        cam.wait_for_connection(all_signals=True, timeout=20)
        cam.image_mode.set(cam.ImageMode.MULTIPLE).wait(timeout=5)
        cam.num_images.set(3).wait(timeout=5)
        cam.acquire_period.set(0.05).wait(timeout=5)
        cam.acquire.put_complete = True
        cam.acquire.set(1).wait(timeout=20)
        assert cam.array_counter.get() == 3
        assert cam.detector_state.get(as_string=True) == "Idle"
        assert cam.read_configuration()["cam_num_images"]["value"] == 3
    finally:
        cam.destroy()


# --- DetectorControl ------------------------------------------------------------------------------
def test_detector_control_connect_times_out_without_an_ioc(ca_port: int, cam_prefix: str) -> None:
    from firmware_bridge.detector_control import DetectorControl, DetectorTimeoutError

    async def scenario() -> None:
        control = DetectorControl(cam_prefix, loop=asyncio.get_running_loop())
        try:
            with pytest.raises(DetectorTimeoutError):
                await control.connect(timeout=0.5)
            assert control.state == "Disconnected"
            assert not control.connected
        finally:
            control.close()

    asyncio.run(scenario())


def test_detector_control_runs_follows_and_survives_an_ioc_restart(sim_ioc: IocProcess) -> None:
    from firmware_bridge.detector_control import DetectorControl, DetectorDisconnectedError

    async def scenario() -> None:
        control = DetectorControl(sim_ioc.prefix, loop=asyncio.get_running_loop())
        try:
            await control.connect(timeout=10)
            await wait_until_async(lambda: control.state == "Idle", 5, "state Idle")
            await control.acquire(num_images=4, acquire_period=0.05, timeout=20)
            # the put-completion may overtake the last monitor updates: wait for them
            await wait_until_async(lambda: control.array_counter == 4, 5, "ArrayCounter_RBV == 4")
            await wait_until_async(lambda: control.state == "Idle", 5, "state Idle after the run")

            # a long run, then the IOC dies under it
            await control.arm(num_images=10_000, acquire_period=0.05)
            done = await control.start()
            await wait_until_async(lambda: control.state == "Acquire", 5, "state Acquire")
            sim_ioc.stop()
            took = await wait_until_async(lambda: control.state == "Disconnected", 5, "Disconnected")
            assert took < 5
            assert control.disconnects == 1
            assert not control.connected
            with pytest.raises(DetectorDisconnectedError):
                await asyncio.wait_for(done, 5)

            sim_ioc.start()
            # libca re-finds the IOC on its search back-off schedule (no caRepeater): ~5-10 s here
            await wait_until_async(lambda: control.connected, 60, "reconnection")
            assert control.reconnects == 1
            await wait_until_async(lambda: control.state == "Idle", 5, "state Idle after restart")
            await control.acquire(num_images=2, acquire_period=0.05, timeout=20)
            await wait_until_async(lambda: control.array_counter == 2, 5, "ArrayCounter_RBV == 2")
            status = control.status()
            assert (status.disconnects, status.reconnects) == (1, 1)
        finally:
            control.close()

    asyncio.run(scenario())


def test_detector_control_frame_type_on_a_camera_without_it(
    ca_port: int, cam_prefix: str, tmp_path: Path
) -> None:
    """A camera whose driver has no ``FrameType`` (an Eiger's) takes Normal frames (nothing is put) and
    refuses a dark or flat with the reason; one that has it gets the type put."""
    from firmware_bridge.detector_control import DetectorControl, DetectorPutError

    async def scenario(prefix: str, has_frame_type: bool) -> None:
        control = DetectorControl(prefix, loop=asyncio.get_running_loop())
        try:
            await control.connect(timeout=10)
            await control.arm(num_images=2, acquire_period=0.05, frame_type="Normal")
            if has_frame_type:
                await control.arm(num_images=2, acquire_period=0.05, frame_type="Background")
                assert _epics().caget(prefix + "FrameType_RBV", as_string=True) == "Background"
            else:
                with pytest.raises(
                    DetectorPutError, match="FrameType: the camera has none; cannot take FlatField"
                ):
                    await control.arm(num_images=2, acquire_period=0.05, frame_type="FlatField")
            await control.acquire(num_images=2, acquire_period=0.05, timeout=20)  # the camera still runs
        finally:
            control.close()

    without = IocProcess(cam_prefix, ca_port, tmp_path / "without.log", extra=("--without", "FrameType"))
    without.start()
    try:
        assert _epics().caget(cam_prefix + "FrameType", connection_timeout=1.0) is None  # not served
        asyncio.run(scenario(cam_prefix, has_frame_type=False))
    finally:
        without.stop()
    other = cam_prefix.replace("cam1", "cam2")
    with_it = IocProcess(other, ca_port, tmp_path / "with.log")
    with_it.start()
    try:
        asyncio.run(scenario(other, has_frame_type=True))
    finally:
        with_it.stop()
