"""The simulated detector's areaDetector-style camera IOC (Channel Access, served by caproto).

`SimCamIOC` is a caproto `PVGroup` that serves the PVs of an areaDetector camera driver at a prefix
such as ``SIM:cam1:``: the setpoint/readback pairs (``X`` and ``X_RBV``), ``DetectorState_RBV``,
``ArrayCounter_RBV`` and everything ophyd's classic ``SimDetectorCam`` connects to. ``Acquire`` is a
busy record: a put of 1 with put-completion (``caput(..., wait=True)``) returns only when the
acquisition of ``NumImages`` (Multiple) or one (Single) frame has finished, or when a put of 0 aborts
it. While acquiring, the IOC advances ``ArrayCounter_RBV`` every ``AcquirePeriod`` and calls the
optional `CamHooks`, so the simulator's data senders follow the IOC's state as a real detector's
would. `serve` runs it inside the caller's asyncio loop; `run_ioc` and ``python -m hw_sim.ioc`` run
it standalone. See ``docs/epics.md`` for the loopback recipe and the full PV list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from caproto import ChannelType
from caproto.asyncio.server import Context
from caproto.server import PVGroup, pvproperty

__all__ = [
    "COLOR_MODES",
    "DATA_TYPES",
    "DETECTOR_STATES",
    "IMAGE_MODES",
    "TRIGGER_MODES",
    "CamHooks",
    "CamSettings",
    "SimCamIOC",
    "main",
    "run_ioc",
    "serve",
]

from firmware_bridge.areadetector import (
    CLOSE_OPEN,
    CLOSED_OPEN,
    DETECTOR_STATES,
    DISABLE_ENABLE,
    FRAME_TYPES,
    SHUTTER_MODES,
)

log = logging.getLogger(__name__)

#: ``DataType`` choices, in areaDetector's order (NDArray ``NDDataType_t``), with bytes per element.
DATA_TYPES: dict[str, int] = {
    "Int8": 1,
    "UInt8": 1,
    "Int16": 2,
    "UInt16": 2,
    "Int32": 4,
    "UInt32": 4,
    "Int64": 8,
    "UInt64": 8,
    "Float32": 4,
    "Float64": 8,
}
IMAGE_MODES: tuple[str, ...] = ("Single", "Multiple", "Continuous")
TRIGGER_MODES: tuple[str, ...] = ("Internal", "External")
COLOR_MODES: tuple[str, ...] = ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")

_ACQUIRE = ("Done", "Acquire")
_ACQUIRE_RBV = ("Done", "Acquiring")
_NO_YES = ("No", "Yes")
_SIM_MODES = ("LinearRamp", "Peaks", "Sine", "Offset&Noise")

#: Shortest frame period the simulator keeps to (s): ``AcquirePeriod`` 0 means "as fast as this".
MIN_FRAME_PERIOD = 1e-3
#: Length of the char-array PVs that hold paths and messages (areaDetector uses 256-char waveforms).
LONG_STRING_LENGTH = 256

HookResult = Awaitable[None] | None


@dataclass(frozen=True)
class CamHooks:
    """Callbacks that let the simulator's data output follow the camera's state.

    Each may be a plain function or a coroutine function; all run on the IOC's event loop, so they
    must not block. An exception in a hook is logged and counted (`SimCamIOC.hook_errors`); the
    acquisition goes on.

    Attributes
    ----------
    on_acquire_start:
        Called with the number of frames planned (0 for Continuous mode) before the first frame.
    on_frame:
        Called with the 0-based index of the frame within the acquisition, after ``ArrayCounter_RBV``
        has advanced for it.
    on_acquire_stop:
        Called once when the acquisition ends, completed or aborted.
    """

    on_acquire_start: Callable[[int], HookResult] | None = None
    on_frame: Callable[[int], HookResult] | None = None
    on_acquire_stop: Callable[[], HookResult] | None = None


@dataclass(frozen=True)
class CamSettings:
    """A snapshot of the camera's settings, for the frame generators (what shape, type and rate)."""

    num_images: int
    image_mode: str
    trigger_mode: str
    acquire_time: float
    acquire_period: float
    size_x: int
    size_y: int
    bin_x: int
    bin_y: int
    data_type: str


def _enum(value: str, strings: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    """Keyword arguments for an enum pvproperty."""
    return {"value": value, "dtype": ChannelType.ENUM, "enum_strings": tuple(strings), **kwargs}


def _readback(name: str, value: Any, **kwargs: Any) -> pvproperty:
    """A read-only PV (``*_RBV`` or a status value), written only by the IOC itself."""
    return pvproperty(name=name, value=value, read_only=True, doc=name, **kwargs)


def _long_string(name: str, value: str = "", *, read_only: bool = False) -> pvproperty:
    """A char-array PV for text longer than the 40 characters a CA ``DBR_STRING`` can carry."""
    return pvproperty(
        name=name, value=value, dtype=str, max_length=LONG_STRING_LENGTH, read_only=read_only, doc=name
    )


async def _mirror_setting(group: SimCamIOC, instance: Any, value: Any) -> Any:
    """Putter shared by every setpoint: coerce the value, then publish it on the ``_RBV`` readback."""
    suffix = instance.pvname[len(group.prefix) :]
    value = group._coerce_setting(suffix, value)
    await group.pvdb[instance.pvname + "_RBV"].write(value)
    if suffix in _GEOMETRY_SUFFIXES:
        await group._update_array_size(changed={suffix: value})
    return value


def _pair(name: str, value: Any, **kwargs: Any) -> tuple[pvproperty, pvproperty]:
    """A setpoint ``name`` and its readback ``name_RBV``; a put on the setpoint updates the readback."""
    return (
        pvproperty(name=name, value=value, put=_mirror_setting, doc=name, **kwargs),
        _readback(f"{name}_RBV", value, **kwargs),
    )


_GEOMETRY_SUFFIXES = frozenset({"SizeX", "SizeY", "BinX", "BinY", "DataType", "ColorMode"})


class SimCamIOC(PVGroup):
    """An areaDetector-style camera (``$(P)cam1:``) driven by asyncio, with hooks for the data senders.

    Parameters
    ----------
    prefix:
        PV prefix including the trailing colon, e.g. ``"SIM:cam1:"``.
    hooks:
        Callbacks fired on acquisition start, on each frame and on stop.
    max_size:
        Sensor size ``(x, y)`` in pixels; also the initial ``SizeX``/``SizeY``.
    data_type:
        Initial ``DataType`` (one of `DATA_TYPES`).
    """

    # --- acquisition control -------------------------------------------------------------------
    acquire = pvproperty(name="Acquire", doc="1 starts, 0 aborts; busy until done", **_enum("Done", _ACQUIRE))
    acquire_rbv = _readback("Acquire_RBV", **_enum("Done", _ACQUIRE_RBV))
    acquire_time, acquire_time_rbv = _pair("AcquireTime", 0.01, precision=4, units="s")
    acquire_period, acquire_period_rbv = _pair("AcquirePeriod", 0.1, precision=4, units="s")
    num_images, num_images_rbv = _pair("NumImages", 1)
    num_images_counter = _readback("NumImagesCounter_RBV", 0)
    num_exposures, num_exposures_rbv = _pair("NumExposures", 1)
    num_exposures_counter = _readback("NumExposuresCounter_RBV", 0)
    image_mode, image_mode_rbv = _pair("ImageMode", **_enum("Multiple", IMAGE_MODES))
    trigger_mode, trigger_mode_rbv = _pair("TriggerMode", **_enum("Internal", TRIGGER_MODES))
    frame_type, frame_type_rbv = _pair("FrameType", **_enum("Normal", FRAME_TYPES))
    detector_state = _readback("DetectorState_RBV", **_enum("Idle", DETECTOR_STATES))
    status_message = _long_string("StatusMessage_RBV", "Idle", read_only=True)
    time_remaining = _readback("TimeRemaining_RBV", 0.0, precision=3, units="s")
    read_status = pvproperty(name="ReadStatus", value=0, doc="ReadStatus")

    # --- counters ------------------------------------------------------------------------------
    array_counter, array_counter_rbv = _pair("ArrayCounter", 0)
    array_rate = _readback("ArrayRate_RBV", 0.0, precision=2, units="Hz")
    array_callbacks, array_callbacks_rbv = _pair("ArrayCallbacks", **_enum("Enable", DISABLE_ENABLE))

    # --- geometry and data type ----------------------------------------------------------------
    size_x, size_x_rbv = _pair("SizeX", 1024)
    size_y, size_y_rbv = _pair("SizeY", 1024)
    min_x, min_x_rbv = _pair("MinX", 0)
    min_y, min_y_rbv = _pair("MinY", 0)
    bin_x, bin_x_rbv = _pair("BinX", 1)
    bin_y, bin_y_rbv = _pair("BinY", 1)
    reverse_x, reverse_x_rbv = _pair("ReverseX", **_enum("No", _NO_YES))
    reverse_y, reverse_y_rbv = _pair("ReverseY", **_enum("No", _NO_YES))
    max_size_x = _readback("MaxSizeX_RBV", 1024)
    max_size_y = _readback("MaxSizeY_RBV", 1024)
    array_size_x = _readback("ArraySizeX_RBV", 1024)
    array_size_y = _readback("ArraySizeY_RBV", 1024)
    array_size_z = _readback("ArraySizeZ_RBV", 0)
    array_size = _readback("ArraySize_RBV", 1024 * 1024 * 2, units="bytes")
    # NDArrayBase's plugin-side sizes (ophyd-async's NDArrayBaseIO connects them on a driver too)
    array_size0 = _readback("ArraySize0_RBV", 1024)
    array_size1 = _readback("ArraySize1_RBV", 1024)
    array_size2 = _readback("ArraySize2_RBV", 0)
    unique_id = _readback("UniqueId_RBV", 0)
    data_type = pvproperty(name="DataType", put=_mirror_setting, **_enum("UInt16", DATA_TYPES))
    # an mbbi record, so that ophyd's ``DataType_RBV.DISA`` field exists
    data_type_rbv = _readback("DataType_RBV", record="mbbi", **_enum("UInt16", DATA_TYPES))
    color_mode, color_mode_rbv = _pair("ColorMode", **_enum("Mono", COLOR_MODES))
    gain, gain_rbv = _pair("Gain", 1.0)

    # --- identity and asyn/plugin plumbing -----------------------------------------------------
    manufacturer = _readback("Manufacturer_RBV", "edge hw_sim", dtype=ChannelType.STRING)
    model = _readback("Model_RBV", "SimCam", dtype=ChannelType.STRING)
    port_name = _readback("PortName_RBV", "SIM1", dtype=ChannelType.STRING)
    serial_number = _readback("SerialNumber_RBV", "SIM-0001", dtype=ChannelType.STRING)
    sdk_version = _readback("SDKVersion_RBV", "hw_sim", dtype=ChannelType.STRING)
    firmware_version = _readback("FirmwareVersion_RBV", "hw_sim", dtype=ChannelType.STRING)
    ad_core_version = _readback("ADCoreVersion_RBV", "3.12.1", dtype=ChannelType.STRING)
    driver_version = _readback("DriverVersion_RBV", "hw_sim", dtype=ChannelType.STRING)
    # ADBase's WaitForPlugins: the simulator has no plugins to wait for; stored, no behaviour
    wait_for_plugins = pvproperty(name="WaitForPlugins", doc="WaitForPlugins", **_enum("No", _NO_YES))
    asyn_io = pvproperty(name="AsynIO", value="", dtype=ChannelType.STRING, doc="asyn record stand-in")
    nd_attributes_file = _long_string("NDAttributesFile")
    string_from_server = _long_string("StringFromServer_RBV", read_only=True)
    string_to_server = _long_string("StringToServer_RBV", read_only=True)
    pool_alloc_buffers = _readback("PoolAllocBuffers", 0)
    pool_free_buffers = _readback("PoolFreeBuffers", 0)
    pool_max_buffers = _readback("PoolMaxBuffers", 0)
    pool_max_mem = _readback("PoolMaxMem", 0.0, units="MB")
    pool_used_buffers = _readback("PoolUsedBuffers", 0.0)
    pool_used_mem = _readback("PoolUsedMem", 0.0, units="MB")

    # --- shutter and temperature (stored, no behaviour) ----------------------------------------
    shutter_mode, shutter_mode_rbv = _pair("ShutterMode", **_enum("None", SHUTTER_MODES))
    shutter_control, shutter_control_rbv = _pair("ShutterControl", **_enum("Close", CLOSE_OPEN))
    shutter_open_delay, shutter_open_delay_rbv = _pair("ShutterOpenDelay", 0.0)
    shutter_close_delay, shutter_close_delay_rbv = _pair("ShutterCloseDelay", 0.0)
    shutter_control_epics = pvproperty(name="ShutterControlEPICS", **_enum("Close", CLOSE_OPEN))
    shutter_open_epics = pvproperty(name="ShutterOpenEPICS", value=1.0, doc="ShutterOpenEPICS")
    shutter_close_epics = pvproperty(name="ShutterCloseEPICS", value=0.0, doc="ShutterCloseEPICS")
    shutter_fanout = pvproperty(name="ShutterFanout", value=0, doc="ShutterFanout")
    shutter_status = _readback("ShutterStatus_RBV", **_enum("Closed", CLOSED_OPEN))
    shutter_status_epics = _readback("ShutterStatusEPICS_RBV", **_enum("Closed", CLOSED_OPEN))
    temperature, temperature_rbv = _pair("Temperature", 25.0, units="C")
    temperature_actual = pvproperty(name="TemperatureActual", value=25.0, doc="TemperatureActual")

    # --- simDetector-specific (ophyd SimDetectorCam) -------------------------------------------
    gain_red, gain_red_rbv = _pair("GainRed", 1.0)
    gain_green, gain_green_rbv = _pair("GainGreen", 1.0)
    gain_blue, gain_blue_rbv = _pair("GainBlue", 1.0)
    gain_x, gain_x_rbv = _pair("GainX", 1.0)
    gain_y, gain_y_rbv = _pair("GainY", 1.0)
    noise, noise_rbv = _pair("Noise", 0.0)
    peak_num_x, peak_num_x_rbv = _pair("PeakNumX", 1)
    peak_num_y, peak_num_y_rbv = _pair("PeakNumY", 1)
    peak_start_x, peak_start_x_rbv = _pair("PeakStartX", 0)
    peak_start_y, peak_start_y_rbv = _pair("PeakStartY", 0)
    peak_step_x, peak_step_x_rbv = _pair("PeakStepX", 1)
    peak_step_y, peak_step_y_rbv = _pair("PeakStepY", 1)
    peak_width_x, peak_width_x_rbv = _pair("PeakWidthX", 1)
    peak_width_y, peak_width_y_rbv = _pair("PeakWidthY", 1)
    peak_variation, peak_variation_rbv = _pair("PeakVariation", 0.0)
    reset, reset_rbv = _pair("Reset", 0)
    sim_mode, sim_mode_rbv = _pair("SimMode", **_enum("Peaks", _SIM_MODES))

    def __init__(
        self,
        prefix: str = "SIM:cam1:",
        hooks: CamHooks | None = None,
        *,
        max_size: tuple[int, int] = (1024, 1024),
        data_type: str = "UInt16",
        stopped_state: str = "Aborted",
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, **kwargs)
        if stopped_state not in ("Aborted", "Idle"):
            raise ValueError(f"stopped_state must be Aborted or Idle, not {stopped_state!r}")
        #: the DetectorState_RBV an acquisition stopped before its NumImages ends in
        self.stopped_state = stopped_state
        if data_type not in DATA_TYPES:
            raise ValueError(f"data_type must be one of {sorted(DATA_TYPES)}, not {data_type!r}")
        if min(max_size) < 1:
            raise ValueError(f"max_size must be positive, not {max_size!r}")
        self.hooks = hooks or CamHooks()
        #: Exceptions raised by hooks (each also logged).
        self.hook_errors = 0
        self._max_size = max_size
        self._initial_data_type = data_type
        self._acq_task: asyncio.Task[None] | None = None
        self._abort = asyncio.Event()
        # initial values that depend on constructor arguments; published at server startup
        for pv, value in (
            (self.max_size_x, max_size[0]),
            (self.max_size_y, max_size[1]),
            (self.size_x, max_size[0]),
            (self.size_x_rbv, max_size[0]),
            (self.size_y, max_size[1]),
            (self.size_y_rbv, max_size[1]),
            (self.data_type, data_type),
            (self.data_type_rbv, data_type),
        ):
            pv._data["value"] = value
        self._set_array_size_values()

    # --- public read accessors -----------------------------------------------------------------
    @property
    def acquiring(self) -> bool:
        """True while an acquisition is running."""
        return self._acq_task is not None and not self._acq_task.done()

    @property
    def frames_acquired(self) -> int:
        """Value of ``ArrayCounter_RBV``."""
        return int(self.array_counter_rbv.value)

    def settings(self) -> CamSettings:
        """The current settings, read from the readbacks."""
        return CamSettings(
            num_images=int(self.num_images_rbv.value),
            image_mode=str(self.image_mode_rbv.value),
            trigger_mode=str(self.trigger_mode_rbv.value),
            acquire_time=float(self.acquire_time_rbv.value),
            acquire_period=float(self.acquire_period_rbv.value),
            size_x=int(self.size_x_rbv.value),
            size_y=int(self.size_y_rbv.value),
            bin_x=int(self.bin_x_rbv.value),
            bin_y=int(self.bin_y_rbv.value),
            data_type=str(self.data_type_rbv.value),
        )

    # --- Acquire: the busy record --------------------------------------------------------------
    @acquire.putter
    async def acquire(self, instance: Any, value: Any) -> str:
        """Start or abort; return (completing the put) only when the acquisition is over."""
        start = value in ("Acquire", 1, "1")
        if start and not self.acquiring:
            target = self._frames_to_acquire()
            self._abort.clear()
            # show Acquire=1 while busy, without re-entering this putter
            await instance.write("Acquire", verify_value=False)
            self._acq_task = asyncio.get_running_loop().create_task(
                self._run_acquisition(target), name=f"{self.prefix}acquisition"
            )
        elif not start and self.acquiring:
            self._abort.set()
        task = self._acq_task
        if task is not None and not task.done():
            # shielded: a client that disconnects mid-put must not cancel the acquisition itself
            await asyncio.shield(task)
        return "Done"

    def _frames_to_acquire(self) -> int:
        mode = str(self.image_mode_rbv.value)
        if mode == "Single":
            return 1
        if mode == "Continuous":
            return 0
        return max(1, int(self.num_images_rbv.value))

    def timing(self) -> dict[str, float]:
        """Exposure and frame period of the next acquisition, as a DECTRIS series header names them."""
        return {"count_time": float(self.acquire_time_rbv.value), "frame_time": self._frame_period()}

    def _frame_period(self) -> float:
        return max(float(self.acquire_period_rbv.value), float(self.acquire_time_rbv.value), MIN_FRAME_PERIOD)

    async def _run_acquisition(self, target: int) -> None:
        """Produce ``target`` frames (0: until aborted), one per frame period, on deadlines."""
        loop = asyncio.get_running_loop()
        await self.num_images_counter.write(0)
        await self.acquire_rbv.write("Acquiring")
        await self.detector_state.write("Acquire")
        await self.status_message.write("Acquiring")
        await self._call_hook(self.hooks.on_acquire_start, target)
        outcome = "interrupted"  # until the loop below ends normally or by abort
        index = 0
        deadline = loop.time()
        last_frame_time: float | None = None
        try:
            while target == 0 or index < target:
                period = self._frame_period()
                deadline += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._abort.wait(), timeout=max(0.0, deadline - loop.time()))
                if self._abort.is_set():
                    break
                now = loop.time()
                await self.array_counter_rbv.write(int(self.array_counter_rbv.value) + 1)
                await self.unique_id.write(int(self.unique_id.value) + 1)
                await self.num_images_counter.write(index + 1)
                if last_frame_time is not None and now > last_frame_time:
                    await self.array_rate.write(1.0 / (now - last_frame_time))
                last_frame_time = now
                if target:
                    await self.time_remaining.write((target - index - 1) * period)
                await self._call_hook(self.hooks.on_frame, index)
                index += 1
            outcome = "aborted" if self._abort.is_set() else "completed"
        finally:
            await self.array_rate.write(0.0)
            await self.time_remaining.write(0.0)
            await self.detector_state.write("Idle" if outcome == "completed" else self.stopped_state)
            await self.status_message.write(f"Acquisition {outcome}")
            await self.acquire_rbv.write("Done")
            await self._call_hook(self.hooks.on_acquire_stop)
            log.info("%s acquisition %s after %d frame(s)", self.prefix, outcome, index)

    async def _call_hook(self, hook: Callable[..., HookResult] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.hook_errors += 1
            log.exception("%s hook %r raised", self.prefix, getattr(hook, "__name__", hook))

    # --- settings ------------------------------------------------------------------------------
    def _coerce_setting(self, suffix: str, value: Any) -> Any:
        """Clamp a setpoint to what the simulated hardware accepts (as a driver would)."""
        if suffix in ("NumImages", "NumExposures", "BinX", "BinY"):
            return max(1, int(value))
        if suffix in ("AcquireTime", "AcquirePeriod"):
            return max(0.0, float(value))
        if suffix in ("SizeX", "SizeY"):
            axis = 0 if suffix == "SizeX" else 1
            return min(max(1, int(value)), self._max_size[axis])
        if suffix == "ArrayCounter":
            return max(0, int(value))
        return value

    async def _update_array_size(self, changed: dict[str, Any]) -> None:
        x, y, z, nbytes = self._array_size(changed)
        await self.array_size_x.write(x)
        await self.array_size_y.write(y)
        await self.array_size_z.write(z)
        await self.array_size.write(nbytes)
        await self.array_size0.write(x)
        await self.array_size1.write(y)
        await self.array_size2.write(z)

    def _set_array_size_values(self) -> None:
        x, y, z, nbytes = self._array_size({})
        for pv, value in ((self.array_size_x, x), (self.array_size_y, y), (self.array_size_z, z)):
            pv._data["value"] = value
        self.array_size._data["value"] = nbytes
        for pv, value in ((self.array_size0, x), (self.array_size1, y), (self.array_size2, z)):
            pv._data["value"] = value

    def _array_size(self, changed: dict[str, Any]) -> tuple[int, int, int, int]:
        """ArraySizeX/Y/Z and bytes per array from the (possibly just changed) geometry."""

        def current(suffix: str, pv: Any) -> Any:
            return changed.get(suffix, pv.value)

        x = int(current("SizeX", self.size_x_rbv)) // int(current("BinX", self.bin_x_rbv))
        y = int(current("SizeY", self.size_y_rbv)) // int(current("BinY", self.bin_y_rbv))
        colors = 1 if current("ColorMode", self.color_mode_rbv) in ("Mono", "Bayer") else 3
        z = 0 if colors == 1 else colors
        nbytes = x * y * colors * DATA_TYPES[str(current("DataType", self.data_type_rbv))]
        return x, y, z, nbytes


def _configure_ca_server_env(port: int, interfaces: Sequence[str]) -> None:
    """Set the caproto server's environment: its port and, on loopback, beacons to loopback only.

    caproto reads its configuration from the process environment when the server context is
    created: ``EPICS_CA_SERVER_PORT`` is the UDP search port and the first TCP port tried
    (``EPICS_CAS_SERVER_PORT`` is not used by caproto).
    """
    os.environ["EPICS_CA_SERVER_PORT"] = str(port)
    os.environ["EPICS_CAS_INTF_ADDR_LIST"] = " ".join(interfaces)
    if all(intf.startswith("127.") for intf in interfaces):
        # never send beacons to the broadcast address when serving loopback only
        os.environ["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"
        os.environ["EPICS_CAS_BEACON_ADDR_LIST"] = "127.0.0.1"


async def serve(
    ioc: SimCamIOC,
    *,
    interfaces: Sequence[str] = ("127.0.0.1",),
    port: int = 5064,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``ioc`` on the running loop until cancelled.

    Parameters
    ----------
    ioc:
        The PV group to serve.
    interfaces:
        Addresses to bind (UDP search and TCP); loopback by default.
    port:
        UDP search port and first TCP port tried (caproto picks a random TCP port if it is taken).
    on_ready:
        Called with the bound TCP port once the server has started.
    """
    _configure_ca_server_env(port, interfaces)
    ctx = Context(ioc.pvdb, list(interfaces))

    async def startup_hook(async_lib: Any) -> None:
        if on_ready is not None:
            on_ready(int(ctx.port))

    await ctx.run(startup_hook=startup_hook)


def run_ioc(
    prefix: str = "SIM:cam1:",
    host_interface: str = "127.0.0.1",
    port: int = 5064,
    *,
    hooks: CamHooks | None = None,
    max_size: tuple[int, int] = (1024, 1024),
    without: Sequence[str] = (),
) -> None:
    """Run the camera IOC in its own event loop until SIGINT/SIGTERM.

    Prints ``READY <prefix> <host>:<tcp port>`` on stdout once it serves (tests wait for it).
    ``without``: setpoints not served, with their readbacks (a camera whose driver lacks them, as an
    Eiger's has no ``FrameType``).
    """

    def announce(tcp_port: int) -> None:
        print(f"READY {prefix} {host_interface}:{tcp_port}", flush=True)

    async def main_task() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        ioc = SimCamIOC(prefix, hooks, max_size=max_size)
        for suffix in without:
            for name in (prefix + suffix, prefix + suffix + "_RBV"):
                if ioc.pvdb.pop(name, None) is None and not name.endswith("_RBV"):
                    raise SystemExit(f"--without {suffix}: the simulated camera has no {name}")
        with contextlib.suppress(asyncio.CancelledError):
            await serve(ioc, interfaces=(host_interface,), port=port, on_ready=announce)

    asyncio.run(main_task())


class _FirstBeaconErrorOnly(logging.Filter):
    """Let through the first "Failed to send beacon" error of caproto's server context, as one warning
    line without its traceback; drop the rest.

    Without a CA repeater listening on the beacon port, every beacon (several a minute) is refused and
    caproto logs a traceback for each one, advising beacon settings that are already right for loopback.
    The first says what is missing; the rest are noise.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to send beacon"):
            return True
        if self._seen:
            return False
        self._seen = True
        address = record.args[0] if isinstance(record.args, tuple) and record.args else "the beacon port"
        record.msg = (
            "CA beacons to %s are refused: no CA repeater (caRepeater) listens there. Clients still find"
            " and use the PVs; run caRepeater for faster reconnects after an IOC restart (repeated"
            " failures are not logged)"
        )
        record.args = (f"{address[0]}:{address[1]}" if isinstance(address, tuple) else address,)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hw_sim.ioc``: run the simulated camera IOC standalone."""
    parser = argparse.ArgumentParser(prog="python -m hw_sim.ioc", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="SIM:cam1:", help="PV prefix, with trailing colon")
    parser.add_argument("--interface", default="127.0.0.1", help="address to serve on (default loopback)")
    parser.add_argument("--port", type=int, default=5064, help="CA server (UDP search) port")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("X", "Y"))
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="PV",
        help="a setpoint (and its _RBV) not to serve, as a driver lacking it (e.g. FrameType); repeatable",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    logging.getLogger("caproto.ctx").addFilter(_FirstBeaconErrorOnly())
    run_ioc(
        args.prefix, args.interface, args.port, max_size=(args.size[0], args.size[1]), without=args.without
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
