"""Detector control: arm and start an areaDetector-style camera over Channel Access (pyepics).

`DetectorControl` talks to the camera driver at a PV prefix such as ``SIM:cam1:``. It arms a run
(``NumImages``, ``ImageMode`` Multiple, ``AcquirePeriod``, ``AcquireTime``, ``TriggerMode``), starts it
with a put-completion on the ``Acquire`` busy record, and follows ``DetectorState_RBV`` and
``ArrayCounter_RBV`` through CA monitors. Connection callbacks tell it when the IOC goes away
(``state == "Disconnected"``); libca re-finds the IOC when it returns and the client counts the
reconnection. All bookkeeping happens on the asyncio loop given to the constructor: pyepics callbacks
(which run on libca's thread) are handed over with ``loop.call_soon_threadsafe``, and blocking pyepics
calls run in an executor, so the caller's loop never blocks.

pyepics reads ``EPICS_CA_ADDR_LIST`` / ``EPICS_CA_AUTO_ADDR_LIST`` once, when libca starts (the first
CA call in the process); see ``docs/epics.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import epics

__all__ = [
    "DETECTOR_STATES",
    "IMAGE_MODES",
    "TRIGGER_MODES",
    "DetectorControl",
    "DetectorControlError",
    "DetectorDisconnectedError",
    "DetectorPutError",
    "DetectorStatus",
    "DetectorTimeoutError",
]

from firmware_bridge.areadetector import DETECTOR_STATES, FRAME_TYPES, IMAGE_MODES, TRIGGER_MODES

log = logging.getLogger(__name__)


#: State reported while the IOC is unreachable (also areaDetector's name for it).
DISCONNECTED = "Disconnected"
#: State reported when connected but no ``DetectorState_RBV`` value has arrived yet.
UNKNOWN = "Unknown"

# attribute -> PV suffix; the monitored ones feed `state` and `array_counter`
_SETPOINTS = {
    "acquire": "Acquire",
    "num_images": "NumImages",
    "image_mode": "ImageMode",
    "trigger_mode": "TriggerMode",
    "acquire_period": "AcquirePeriod",
    "acquire_time": "AcquireTime",
}
#: settings some cameras lack (an Eiger driver has no FrameType): opened, never waited for
_OPTIONAL = {"frame_type": "FrameType"}
OPTIONAL_WAIT_SECONDS = 1.0  # how long a put needing an optional PV waits for it to connect
_MONITORED = {
    "detector_state": "DetectorState_RBV",
    "array_counter": "ArrayCounter_RBV",
}
#: followed by monitor but never waited for: the images the camera took in its current (or last)
#: acquisition, which tells a camera stopped short (it went Idle before NumImages) from a complete one
_IMAGES_TAKEN = "NumImagesCounter_RBV"


# libca status codes (caerr.h): success, and "channel disconnected" given to pending put callbacks
_ECA_NORMAL = 1
_ECA_DISCONN = 192


def _on_put_event(args: Any) -> None:
    """libca put-callback trampoline: pass libca's status to the Python callable given as ``usr``."""
    callback = args.usr
    callback(int(args.status))


_PUT_EVENT = epics.dbr.make_callback(_on_put_event, epics.dbr.event_handler_args)


def _put_with_status_callback(
    pv: epics.PV, value: int, on_done: Callable[[int], None], keep_alive: set[Callable[[int], None]]
) -> int:
    """Put a scalar with a put-callback that receives libca's completion status; returns libca's status.

    pyepics' own ``put(callback=...)`` drops the status, and libca also calls a pending put callback,
    with ``ECA_DISCONN``, when the channel disconnects (before the connection callback): through
    pyepics a lost IOC would look like a completed acquisition. Runs in an executor thread.
    """
    epics.ca.use_initial_context()
    if not pv.wait_for_connection(timeout=1.0):
        return _ECA_DISCONN
    chid = pv.chid
    ftype = epics.ca.field_type(chid)
    data = (epics.dbr.Map[ftype] * 1)()
    data[0] = value

    def fire(status: int) -> None:
        keep_alive.discard(fire)
        on_done(status)

    keep_alive.add(fire)
    ret = int(epics.ca.libca.ca_array_put_callback(ftype, 1, chid, data, _PUT_EVENT, ctypes.py_object(fire)))
    if ret != _ECA_NORMAL:
        keep_alive.discard(fire)
        return ret
    epics.ca.flush_io()
    return ret


class DetectorControlError(Exception):
    """Root of the errors raised by `DetectorControl`."""


class DetectorDisconnectedError(DetectorControlError, ConnectionError):
    """The detector IOC is not connected (or went away while a command was pending)."""


class DetectorTimeoutError(DetectorControlError, TimeoutError):
    """The detector did not connect or answer within the deadline."""


class DetectorPutError(DetectorControlError):
    """The IOC did not accept or complete a put."""


@dataclass(frozen=True)
class DetectorStatus:
    """A snapshot of what the client knows about the detector."""

    connected: bool
    state: str
    array_counter: int | None
    disconnects: int
    reconnects: int


StatusListener = Callable[[DetectorStatus], None]


class DetectorControl:
    """Client for an areaDetector camera driver: arm, start, stop, and follow its state.

    Parameters
    ----------
    prefix:
        The camera's PV prefix including the trailing colon, e.g. ``"SIM:cam1:"``.
    loop:
        The asyncio loop that owns this object; every callback and listener runs on it.
    executor:
        Where blocking pyepics calls run (``None``: the loop's default executor).
    put_timeout:
        Seconds to wait for a setting put to complete.

    Read `connected`, `state`, `array_counter` and the counters from the loop's thread.
    """

    def __init__(
        self,
        prefix: str,
        *,
        loop: asyncio.AbstractEventLoop,
        executor: Executor | None = None,
        put_timeout: float = 5.0,
    ) -> None:
        self.prefix = prefix
        self._loop = loop
        self._executor = executor
        self._put_timeout = put_timeout
        self._pvs: dict[str, epics.PV] = {}
        self._optional: dict[str, epics.PV] = {}
        self._connected_pvs: set[str] = set()
        self._connected = False
        self._ever_connected = False
        self._connected_event = asyncio.Event()
        self._state_value: int | None = None
        self._array_counter: int | None = None
        self._images_taken: int | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._put_callbacks: set[Callable[[int], None]] = set()  # alive until libca calls them
        self._listeners: list[StatusListener] = []
        self._closed = False
        #: Times the IOC connection was lost.
        self.disconnects = 0
        #: Times the IOC connection came back after a loss.
        self.reconnects = 0

    # --- views ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while every PV this client uses is connected."""
        return self._connected

    @property
    def state(self) -> str:
        """``DetectorState_RBV`` as text, ``"Disconnected"`` while the IOC is unreachable."""
        if not self._connected:
            return DISCONNECTED
        value = self._state_value
        if value is None:
            return UNKNOWN
        return DETECTOR_STATES[value] if 0 <= value < len(DETECTOR_STATES) else f"{UNKNOWN}({value})"

    @property
    def array_counter(self) -> int | None:
        """Last ``ArrayCounter_RBV`` seen (kept while disconnected), ``None`` before the first."""
        return self._array_counter

    @property
    def images_taken(self) -> int | None:
        """Last ``NumImagesCounter_RBV`` seen: the images of the camera's current (or last) acquisition;
        ``None`` before the first (or for a camera without it)."""
        return self._images_taken

    def status(self) -> DetectorStatus:
        """A snapshot of connection, state and counters."""
        return DetectorStatus(
            connected=self._connected,
            state=self.state,
            array_counter=self._array_counter,
            disconnects=self.disconnects,
            reconnects=self.reconnects,
        )

    def add_listener(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(status)`` on the loop after every change; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    # --- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Create the channels (non-blocking); libca connects them, now or whenever the IOC appears."""
        if self._closed:
            raise DetectorControlError("DetectorControl is closed")
        if self._pvs:
            return
        for suffix in _SETPOINTS.values():
            self._pvs[suffix] = epics.PV(
                self.prefix + suffix,
                form="native",
                auto_monitor=False,
                connection_callback=self._on_connection_ca,
            )
        for suffix in _OPTIONAL.values():
            self._optional[suffix] = epics.PV(self.prefix + suffix, form="native", auto_monitor=False)
        self._optional[_IMAGES_TAKEN] = epics.PV(
            self.prefix + _IMAGES_TAKEN, form="native", auto_monitor=True, callback=self._on_monitor_ca
        )
        for suffix in _MONITORED.values():
            self._pvs[suffix] = epics.PV(
                self.prefix + suffix,
                form="native",
                auto_monitor=True,
                callback=self._on_monitor_ca,
                connection_callback=self._on_connection_ca,
            )

    async def connect(self, timeout: float = 5.0) -> None:
        """Open the channels and wait until all are connected.

        Raises `DetectorTimeoutError` if they are not within ``timeout`` s; the channels stay open,
        so the client still connects when the IOC appears later.
        """
        self.open()
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except TimeoutError as error:
            missing = sorted(set(self._pvs) - self._connected_pvs)
            raise DetectorTimeoutError(
                f"{self.prefix}: not connected after {timeout} s (missing {', '.join(missing)})"
            ) from error

    def close(self) -> None:
        """Drop the channels and fail pending commands. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for pv in [*self._pvs.values(), *self._optional.values()]:
            pv.disconnect()
        self._pvs.clear()
        self._optional.clear()
        self._connected_pvs.clear()
        self._connected = False
        self._connected_event.clear()
        self._fail_pending(DetectorControlError("DetectorControl closed"))

    async def __aenter__(self) -> DetectorControl:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # --- commands ------------------------------------------------------------------------------
    async def arm(
        self,
        num_images: int,
        acquire_period: float,
        acquire_time: float | None = None,
        *,
        trigger_mode: str = "Internal",
        frame_type: str | None = None,
    ) -> None:
        """Configure a run of ``num_images`` frames in Multiple mode, one per ``acquire_period`` s.

        ``acquire_time`` defaults to ``acquire_period``. Each put waits for completion. ``frame_type``
        (one of `FRAME_TYPES`) is put to the camera's ``FrameType`` when it has one; a camera without
        it takes ``Normal`` (nothing is put) and refuses another (`DetectorPutError`).
        """
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, not {num_images}")
        if acquire_period < 0:
            raise ValueError(f"acquire_period must be >= 0, not {acquire_period}")
        if trigger_mode not in TRIGGER_MODES:
            raise ValueError(f"trigger_mode must be one of {TRIGGER_MODES}, not {trigger_mode!r}")
        if frame_type is not None and frame_type not in FRAME_TYPES:
            raise ValueError(f"frame_type must be one of {FRAME_TYPES}, not {frame_type!r}")
        exposure = acquire_period if acquire_time is None else acquire_time
        if exposure < 0:
            raise ValueError(f"acquire_time must be >= 0, not {exposure}")
        self._require_connected()
        # enums are written by index: pyepics would otherwise fetch enum strings with a blocking get
        for suffix, value in (
            ("ImageMode", IMAGE_MODES.index("Multiple")),
            ("TriggerMode", TRIGGER_MODES.index(trigger_mode)),
            ("NumImages", int(num_images)),
            ("AcquireTime", float(exposure)),
            ("AcquirePeriod", float(acquire_period)),
        ):
            await self._put_wait(suffix, value)
        if frame_type is not None:
            frame_pv = self._optional.get("FrameType")
            if frame_pv is not None and not frame_pv.connected and frame_type != "Normal":
                # its search may still be answering (the other channels waited, this one does not): a
                # moment for it before saying the camera has none
                await self._loop.run_in_executor(
                    self._executor, lambda: frame_pv.wait_for_connection(timeout=OPTIONAL_WAIT_SECONDS)
                )
            if frame_pv is not None and frame_pv.connected:
                await self._put_wait("FrameType", FRAME_TYPES.index(frame_type))
            elif frame_type != "Normal":
                raise DetectorPutError(
                    f"{self.prefix}FrameType: the camera has none; cannot take {frame_type}"
                )

    async def start(self) -> asyncio.Future[None]:
        """Put ``Acquire`` = 1 with put-completion; return a future that resolves when the IOC completes it.

        The IOC completes the put when the acquisition ends (all frames taken, or aborted by `stop`).
        The future fails with `DetectorDisconnectedError` if the IOC goes away first.
        """
        self._require_connected()
        done: asyncio.Future[None] = self._loop.create_future()
        self._pending.add(done)
        done.add_done_callback(self._pending.discard)

        pv = self._pvs["Acquire"]

        def completed(status: int) -> None:  # libca thread
            self._call_on_loop(self._put_completed, done, status)

        ret = await self._loop.run_in_executor(
            self._executor, _put_with_status_callback, pv, 1, completed, self._put_callbacks
        )
        if ret != _ECA_NORMAL:
            error = DetectorPutError(f"{pv.pvname}: put of 1 refused: {epics.ca.message(ret)}")
            if not done.done():
                done.set_exception(error)
            raise error
        return done

    async def stop(self) -> None:
        """Put ``Acquire`` = 0 (abort) and wait until the IOC has stopped."""
        self._require_connected()
        await self._put_wait("Acquire", 0)

    async def acquire(
        self,
        num_images: int,
        acquire_period: float,
        acquire_time: float | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Arm, start, and wait for the acquisition to finish.

        ``timeout`` defaults to the nominal run time plus 10 s; on timeout the run is aborted and
        `DetectorTimeoutError` raised.
        """
        await self.arm(num_images, acquire_period, acquire_time)
        done = await self.start()
        if timeout is None:
            timeout = num_images * max(acquire_period, acquire_time or 0.0) + 10.0
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError as error:
            if self._connected:
                await self.stop()
            raise DetectorTimeoutError(f"{self.prefix}: acquisition not done after {timeout} s") from error

    # --- internals: loop side ------------------------------------------------------------------
    def _require_connected(self) -> None:
        if self._closed:
            raise DetectorControlError("DetectorControl is closed")
        if not self._connected:
            raise DetectorDisconnectedError(f"{self.prefix}: detector IOC not connected")

    async def _put_wait(self, suffix: str, value: float) -> None:
        pv = self._pvs.get(suffix) or self._optional[suffix]
        timeout = self._put_timeout
        ret = await self._loop.run_in_executor(
            self._executor, lambda: pv.put(value, wait=True, timeout=timeout)
        )
        if ret is None:
            raise DetectorDisconnectedError(f"{pv.pvname}: not connected")
        if ret < 0:
            raise DetectorTimeoutError(f"{pv.pvname}: put of {value!r} not completed within {timeout} s")

    def _put_completed(self, done: asyncio.Future[None], status: int) -> None:
        if done.done():
            return
        if status == _ECA_NORMAL:
            done.set_result(None)
        elif status == _ECA_DISCONN:
            done.set_exception(DetectorDisconnectedError(f"{self.prefix}: IOC went away during the run"))
        else:
            message = epics.ca.message(status)
            done.set_exception(DetectorPutError(f"{self.prefix}Acquire: put failed: {message}"))

    def _fail_pending(self, error: Exception) -> None:
        for done in list(self._pending):
            if not done.done():
                done.set_exception(error)
        self._pending.clear()

    def _connection_changed(self, pvname: str, conn: bool) -> None:
        if self._closed:
            return
        suffix = pvname[len(self.prefix) :]
        if conn:
            self._connected_pvs.add(suffix)
        else:
            self._connected_pvs.discard(suffix)
        now_connected = bool(self._pvs) and self._connected_pvs == set(self._pvs)
        if now_connected == self._connected:
            return
        self._connected = now_connected
        if now_connected:
            if self._ever_connected:
                self.reconnects += 1
                log.warning("%s: detector IOC reconnected (%d reconnects)", self.prefix, self.reconnects)
            else:
                log.info("%s: detector IOC connected", self.prefix)
            self._ever_connected = True
            self._connected_event.set()
        else:
            self.disconnects += 1
            self._connected_event.clear()
            log.warning("%s: detector IOC disconnected (%s)", self.prefix, pvname)
            self._fail_pending(DetectorDisconnectedError(f"{self.prefix}: detector IOC disconnected"))
        self._notify()

    def _value_changed(self, pvname: str, value: Any) -> None:
        if self._closed:
            return
        suffix = pvname[len(self.prefix) :]
        try:
            number = int(value)
        except (TypeError, ValueError):
            log.warning("%s: unexpected value %r", pvname, value)
            return
        if suffix == _IMAGES_TAKEN:  # read when asked (a series ended short), not a status change
            self._images_taken = number
            return
        if suffix == _MONITORED["detector_state"]:
            self._state_value = number
        elif suffix == _MONITORED["array_counter"]:
            self._array_counter = number
        self._notify()

    def _notify(self) -> None:
        status = self.status()
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                log.exception("%s: status listener %r raised", self.prefix, listener)

    # --- internals: libca thread side ----------------------------------------------------------
    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connection_ca(self, pvname: str = "", conn: bool = False, **_: Any) -> None:
        self._call_on_loop(self._connection_changed, pvname, bool(conn))

    def _on_monitor_ca(self, pvname: str = "", value: Any = None, **_: Any) -> None:
        self._call_on_loop(self._value_changed, pvname, value)
