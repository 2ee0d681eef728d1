"""The appliance's own EPICS IOC (pythonSoftIOC): run control, counters, writer, upstream and disk PVs.

The control system drives the appliance the areaDetector way: ``$(P)$(R)Name`` records, setpoint ``X``
with readback ``X_RBV``, and ``Acquire`` as a busy record whose put-completion (``caput -c``, pyepics
``caput(..., wait=True)``) returns only when the run is over: the detector (driven through
`firmware_bridge.detector_control.DetectorControl`) has taken ``NumImages`` frames and the appliance has
stored every one of them, or accounted for the missing ones with a loss record. The IOC runs on the
daemon's asyncio loop (``AsyncioDispatcher(loop=...)``), which is passed in; `iocInit` happens once per
process. Counters are copied from `ApplianceView.status` every `REFRESH_SECONDS`; views read counters,
they never infer them. The PV table (`edge.pv_table.PVS`, re-exported here) is the single source of the
records, of the checks every put meets (`edge.pv_input`: a bad put is refused with a MINOR alarm and
the reason in ``StatusMessage_RBV``; read-only records take no writes) and of ``docs/pvs.md``
(`edge.pvdocs`). The packaged access-security file is loaded unless ``epics.acf_file`` names another.
softioc and pyepics are imported only when the IOC starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import getpass
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge import pv_input
from edge.config import EpicsSettings, ReductionSettings
from edge.errors import ConfigError, Refused
from edge.pv_table import (
    AD_DATA_TYPES,
    ALARM_FIELDS,
    AUTOSAVED,
    DETECTOR_STATES,
    ENUM_SEVERITIES,
    LONG_STRING,
    MODES,
    PVS,
    TEMP_SUFFIX,
    PvSpec,
)
from edge.setpoint_autosave import SetpointAutosave
from firmware_bridge.areadetector import FRAME_TYPES, TRIGGER_MODES

if TYPE_CHECKING:
    from edge.reduction_control import ReductionControl
    from edge.view import ApplianceView

__all__ = ["DEFAULT_ACF", "MODES", "PVS", "ApplianceIOC", "CaptureControl", "PvSpec", "capture_file"]

log = logging.getLogger(__name__)

FILE_NUMBER_MAX = 2**31 - 1  # HDF1:FileNumber is an EPICS long
#: Unix time of the EPICS epoch (1990-01-01 UTC): ``EpicsTSSec_RBV`` counts from it
POSIX_TIME_AT_EPICS_EPOCH = 631_152_000

#: Seconds between copies of the appliance's counters into the readback records.
REFRESH_SECONDS = 0.5
#: How long the stream must be quiet, after the detector went away mid-run, before the run is ended.
STREAM_QUIET_SECONDS = 1.0
#: The ACF shipped with the package, loaded unless ``epics.acf_file`` names another: everyone reads,
#: only ``$(USER)`` (the daemon's user) writes; group READONLY (every ``*In`` record) takes no writes.
DEFAULT_ACF = Path(__file__).with_name("data") / "edge.acf"
#: Access-security groups: read-only records, and ``Acquire`` while the store refuses new runs.
ASG_READONLY = "READONLY"
ASG_DEFAULT = "DEFAULT"

_SETPOINTS = frozenset(spec.name for spec in PVS if spec.writable)
#: a setpoint's accepted range by its readback's name: the readback shows it too (ophyd-async describes a
#: signal by its read PV, ``X_RBV``: with the range on ``X`` alone a Bluesky client saw no limits)
_READBACK_LIMITS = {
    f"{spec.name}_RBV": spec.limits
    for spec in PVS
    if spec.writable and spec.limits is not None and spec.kind in ("aOut", "longOut")
}
#: areaDetector chunk settings: kept, but their readbacks read the files' real chunk (`IOC._chunking`)
_CHUNKING = ("HDF1:NumFramesChunks", "HDF1:NumRowChunks", "HDF1:NumColChunks")
_ioc_started = False


#: the EGU of the profile's radial axis per ``reduction.unit``
RADIAL_EGU = {"2th_deg": "deg", "2th_rad": "rad", "q_nm^-1": "nm^-1", "q_A^-1": "A^-1"}


class CaptureControl(Protocol):
    """Where the IOC opens and closes an areaDetector capture (`edge.appliance.RingSink` in the daemon)."""

    def open_capture(self, path: Path) -> str: ...

    def close_capture(self) -> str | None: ...

    def capture(self) -> dict[str, Any]: ...

    def mark_abort(self) -> None: ...

    def set_armed(self, armed: bool) -> None: ...

    def watch_detector(
        self, state: Callable[[], str], images_taken: Callable[[], int | None] | None = None
    ) -> None: ...


#: Seconds a closed capture may take to finish its file before ``Capture_RBV`` is cleared all the same.
CAPTURE_CLOSE_SECONDS = 60.0
#: how ``WriteMessage`` ends for a FilePath that does not exist while CreateDirectory is 0
NO_DIRECTORY_MADE = " (CreateDirectory 0 makes none)"
_TEMPLATE_FIELD = re.compile(r"%(?!%)[-#0 +]*\d*(?:\.\d+)?[diouxXsfeEgG]")
_FIELD_SIZES = re.compile(r"\d+")
#: Bytes a capture's full file name may take: ``FullFileName_RBV`` holds them (areaDetector's 256 with
#: its NUL), and a field's width or precision above it could only make a name that does not fit.
FILE_NAME_BYTES = LONG_STRING - 1


def capture_file(template: str, directory: str, name: str, number: int) -> Path:
    """The file an areaDetector ``FileTemplate`` names (``%s%s.h5``: path then name; a third field, the
    file number). Raises ValueError for a template that takes other fields, a field wider than a file
    name may be, or a name longer than ``FILE_NAME_BYTES`` (checked before it is made: ``%999999999d``
    would build a gigabyte)."""
    fields = _TEMPLATE_FIELD.findall(template)
    path_and_name = len(fields) in (2, 3) and fields[0].endswith("s") and fields[1].endswith("s")
    if not path_and_name or (len(fields) == 3 and fields[2][-1] not in "diouxX"):
        raise ValueError(f"FileTemplate {template!r} must take %s (path), %s (name) and optionally %d")
    for field in fields:
        if any(int(size) > FILE_NAME_BYTES for size in _FIELD_SIZES.findall(field)):
            raise ValueError(
                f"FileTemplate {template!r}: {field} is wider than a file name ({FILE_NAME_BYTES} bytes)"
            )
    values: tuple[Any, ...] = (directory, name) if len(fields) == 2 else (directory, name, number)
    try:
        made = template % values
    except (TypeError, ValueError) as error:
        raise ValueError(f"FileTemplate {template!r}: {error}") from None
    size = len(made.encode("utf-8", "surrogateescape"))
    if size > FILE_NAME_BYTES:
        raise ValueError(
            f"FileTemplate {template!r} makes a file name of {size} bytes from FilePath and FileName;"
            f" FullFileName_RBV takes {FILE_NAME_BYTES}"
        )
    return Path(made)


def path_refusal(path: Path, roots: list[Path]) -> str | None:
    """Why ``path`` (a directory or a file in one) is outside every allowed root, or None."""
    try:
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError) as error:
        return f"not a usable path ({error})"
    for root in roots:
        if resolved == root.resolve() or resolved.is_relative_to(root.resolve()):
            return None
    return f"{path} is outside store.roots (default store.path): {', '.join(str(r) for r in roots)}"


def make_directory(path: Path, depth: int) -> str | None:
    """Create ``path``'s missing directories as areaDetector's ``CreateDirectory`` says, or say why not
    (None: ``path`` is a directory now). 0 creates none; negative: at most that many directories at the
    end of the path are created; positive: at least that many directories from the root must exist
    already (1 creates everything below the root's first level)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return None
    if depth == 0:
        return f"{path} does not exist (CreateDirectory 0)"
    existing, missing = path, 0
    while not existing.exists():
        existing, missing = existing.parent, missing + 1
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if depth < 0 and missing > -depth:
        return f"{path}: {missing} directories are missing; CreateDirectory {depth} creates at most {-depth}"
    levels = len(existing.parts) - 1  # directories below the root that exist
    if depth > 0 and levels < depth:
        return (
            f"{path}: CreateDirectory {depth} needs the path's first {depth} directories to exist;"
            f" {existing} is {levels} deep"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create {path}: {error.strerror or error}"
    return None


def _retention_state(retention: dict[str, Any]) -> int:
    """0 ok, 1 pressure (the store refuses new runs: unverified data above the high-water mark), 2 full
    (the store has no room left for more than its headroom: writing waits or fails)."""
    headroom = int(retention.get("headroom_bytes", 0))
    capacity = int(retention.get("capacity_bytes", 0))
    full = (capacity and int(retention.get("store_bytes", 0)) >= capacity - headroom) or (
        "disk_free_bytes" in retention and int(retention["disk_free_bytes"]) <= headroom
    )
    if full:
        return 2
    return 1 if retention.get("accepting_runs") is False else 0


def _directory(path: str) -> str:
    """``path`` as areaDetector reads a ``FilePath`` back: ending in ``/`` (it adds one)."""
    return _fit(path if path.endswith("/") else path + "/")


def _fit(text: str, size: int = LONG_STRING - 1) -> str:
    """``text`` cut to at most ``size`` bytes of UTF-8 (a long string record's room)."""
    return text.encode("utf-8", errors="replace")[:size].decode("utf-8", errors="ignore")


#: the longest a ``Mode`` or ``Reduction:*`` put waits for the next run's kernels before it completes
KERNELS_READY_SECONDS = 120.0
#: reduction parameters whose None a PV shows (and takes) as NaN
NULLABLE_PARAMS = frozenset({"tomo.center", "tomo.angle_start", "tomo.angle_step"})


class ApplianceIOC:
    """The appliance's PVs on the daemon's loop, and the detector they drive.

    Parameters
    ----------
    appliance:
        The running appliance (its status, ledger and store are read; nothing is written but the
        end of a series the detector left open).
    settings:
        ``epics`` settings: prefix, detector prefix and the ACF file (`DEFAULT_ACF` when unset).
    loop:
        The running asyncio loop (uvicorn's in the daemon); records' callbacks and the detector
        client run on it.
    reduction:
        The reduction parameters of the next run (`ReductionControl`): ``Mode`` and the
        ``Reduction:`` setpoints go through it; None serves them without effect (tests of the IOC).
    refusal:
        Why a new run would be refused now (the store's retention), or None: an ``Acquire`` put is
        refused with that reason instead of arming the detector.
    autosave:
        The JSON file that keeps the `AUTOSAVED` setpoints across a restart (`SetpointAutosave`:
        ``STORE/setpoints.json`` in the daemon), or None: they start at their defaults every time.
    """

    def __init__(
        self,
        view: ApplianceView,
        settings: EpicsSettings,
        *,
        loop: asyncio.AbstractEventLoop,
        end_open_series: Callable[[str], None],
        reduction: ReductionControl | None = None,
        refusal: Callable[[], str | None] | None = None,
        capture: CaptureControl | None = None,
        autosave: Path | None = None,
    ) -> None:
        self.view = view
        self._autosave = SetpointAutosave(autosave, (spec for spec in PVS if spec.name in AUTOSAVED))
        self._restored: dict[str, Any] = {}  # the saved setpoints taken back at start
        self.capture = capture
        self._capturing = False
        self._capture_close = asyncio.Event()
        self._capture_task: asyncio.Task[None] | None = None  # the open (or last) capture's watch
        self._capture_closing = False  # the open capture's file is being finished (Capture_RBV still 1)
        self._write_message = ""
        self.reduction = reduction
        self.refusal = refusal or (lambda: None)
        self._runs_refused: str | None = None  # the store's reason while Acquire is write-protected
        self.refused_puts = 0
        self.end_open_series = end_open_series
        self.settings = settings
        self.prefix = settings.prefix
        self.loop = loop
        self.records: dict[str, Any] = {}
        self.control: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._acquiring = False
        self._run_ended: asyncio.Event | None = None  # set when the current (or last) run has ended
        # from a run's end until its busy record has finished processing (a few ms): a 1 then is taken
        # and starts the next run once the record is free (``_start_next``), as areaDetector takes a 1
        # as soon as Acquire_RBV reads Done
        self._finishing = False
        self._start_next = False
        self._resetting = False  # the IOC itself is setting Acquire back to 0 at a run's end
        self._run_gen = 0  # runs started: a finished run's follow-up (``_after_run``) knows when it is stale
        # a client's 0 during a run (or as it starts): the run aborts. Kept apart from Acquire's value,
        # which the IOC itself resets at each run's end, and whose reset may land after a client's next 1
        self._abort_flag = False
        self._start_accepted = False  # AcquireBusy took a start (``_starts_run``); its processing runs it
        self._counter_offset = 0
        self._hdf_counter_offset = 0  # HDF1:ArrayCounter's, set apart from the driver's ArrayCounter
        self._dropped_total = 0  # frames the receiver dropped, as the last refresh saw them
        self._dropped_offset = 0  # HDF1:DroppedArrays counts from its last put (0 resets it)
        self._reordered_total = 0  # frames the receiver stored after later ones, as the last refresh saw
        self._reordered_offset = 0  # HDF1:DisorderedArrays counts from its last put (0 resets it)
        self._frames_received = 0
        # the series started before this appliance's Acquire armed the detector (None: none armed yet);
        # while no newer one has started, its acquisition has taken no frame
        self._acquisition_series: int | None = None
        self._camera_series_shown: tuple[int, bool] | None = None  # (series, open) last said in words
        self._own_series = 0  # series started up to the end of this appliance's last Acquire
        self._last_rate_sample: tuple[float, int] | None = None
        self._run_uid: str | None = None
        # (current run, the run whose files are shown, its capture's file when it is a capture a restart cut)
        self._file_run_of: tuple[str, str, str | None] | None = None
        # (the run current when a capture closed with no frame, that capture's file): shown until a run begins
        self._empty_capture: tuple[str, str] | None = None
        self._message = ""
        # Acquires whose camera took its frames while no series came on the stream: how many, and the
        # newest (until an Acquire's frames come): its frames are in no run, so said, not just a message
        self._without_frames = 0
        self._last_without_frames: dict[str, Any] | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._camera_state: str | None = None  # the camera's last state seen (`_detector_changed`)
        self._camera_connected: bool | None = None  # its connection as last seen (`_detector_changed`)
        # ends a series a camera lost mid-series had started at the camera (`_end_series_of_lost_camera`)
        self._lost_camera_task: asyncio.Task[None] | None = None
        # a capture's file not finished when its close gave up (CAPTURE_CLOSE_SECONDS): WriteStatus says
        # Write Error until the next capture opens (its put completed with "Write OK" beside the message)
        self._capture_unfinished = False
        self._shown = threading.local()  # the records set inside `_shown_now`, per thread
        self._reduction_shown: dict[str, Any] | None = None  # the parameters the setpoints last showed
        # per reduction record, whether the put `_validate` took last changed the parameters
        self._put_changed: dict[str, bool] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Build the records, load the ACF, `iocInit` on the loop, and open the detector channels."""
        global _ioc_started
        if _ioc_started:
            raise RuntimeError("the appliance IOC can be started once per process (iocInit)")
        _ioc_started = True
        import epicscorelibs.path

        # pyepics must use the libca the IOC runs on (one CA library per process)
        os.environ.setdefault("PYEPICS_LIBCA", os.path.join(epicscorelibs.path.lib_path, "libca.so"))
        from softioc import asyncio_dispatcher, builder, imports, softioc

        from firmware_bridge.detector_control import DetectorControl

        builder.SetSimpleRecordNames(self.prefix, "")
        # the setpoints saved before a restart: the records start with them, before a client gets in
        self._restored = self._autosave.restore(self._restore_refusal)
        for spec in PVS:
            self.records[spec.name] = self._build(builder, spec)
        builder.LoadDatabase()
        self._load_acf(imports, self.settings.acf_file or DEFAULT_ACF)
        dispatcher = asyncio_dispatcher.AsyncioDispatcher(loop=self.loop)
        softioc.iocInit(dispatcher, enable_pva=False)
        self.control = DetectorControl(self.settings.detector_prefix, loop=self.loop)
        self.control.open()
        self._remove_listener = self.control.add_listener(self._detector_changed)
        if self.capture is not None:
            control = self.control
            self.capture.watch_detector(lambda: control.state, lambda: control.images_taken)
        self._set_message("Idle")
        self._show_static()
        self._show_restored()
        self._show_detector()
        self._spawn(self._refresh_forever(), "edge-ioc-refresh")
        self.view.attach_detector(self.detector_status)
        log.info("appliance IOC serving %s (detector %s)", self.prefix, self.settings.detector_prefix)

    def _show_restored(self) -> None:
        """The restored setpoints' readbacks (and what follows them), as a put's. NumImages first: it
        sets NumCapture too, whose own saved value then wins, setpoint and readback (after a restart
        they read 7 and 5, an outside probe, NumImages restored after NumCapture's value)."""
        with self._shown_now():
            for name in sorted(AUTOSAVED, key=lambda n: n != "NumImages"):
                if name not in self._restored:
                    continue
                if name == "HDF1:NumCapture":
                    self._set(name, int(self._restored[name]))
                self._on_setpoint(name, self._restored[name])

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None]:
        """A task on the IOC's loop, cancelled by ``stop`` and forgotten once done (on the loop's thread)."""
        task: asyncio.Task[None] = self.loop.create_task(work, name=name)
        self._tasks.append(task)
        task.add_done_callback(lambda done: self._tasks.remove(done) if done in self._tasks else None)
        return task

    def stop(self) -> None:
        """Stop refreshing and drop the detector channels (the IOC itself lives until the process ends)."""
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        if self._remove_listener is not None:
            self._remove_listener()
        if self.control is not None:
            self.control.close()

    @staticmethod
    def _load_acf(imports: Any, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"epics.acf_file {path} does not exist")
        substitutions = f"USER={getpass.getuser()},HOST={socket.gethostname()}"
        imports.dbCore.asSetSubstitutions.argtypes = (imports.auto_encode,)
        imports.dbCore.asSetFilename.argtypes = (imports.auto_encode,)
        imports.dbCore.asSetSubstitutions(substitutions)
        imports.dbCore.asSetFilename(str(path))
        log.info("access security from %s (%s)", path, substitutions)

    def _build(self, builder: Any, spec: PvSpec) -> Any:
        kw: dict[str, Any] = {"DESC": spec.doc[:40].split(".")[0][:40]}
        kw.update(spec.fields)
        kw.update(ALARM_FIELDS.get(spec.name, {}))
        if spec.units:
            kw["EGU"] = (
                RADIAL_EGU.get(self.view.settings.reduction.unit, "")
                if spec.units == "radial"
                else spec.units
            )
        if not spec.writable:  # no CA writes: no write access (the ACF's READONLY), and DISP if another ACF
            kw.update(ASG=ASG_READONLY, DISP=1)
        make = getattr(builder, spec.kind)
        # a refresh sets every readback each REFRESH_SECONDS: post a value to monitors only when it
        # changed (softioc's longIn posts every set, MDEL -1; waveforms and strings post by default too)
        if spec.kind == "longIn":
            kw.setdefault("MDEL", 0)
        if spec.kind in ("WaveformIn", "longStringIn", "longStringOut", "stringIn", "stringOut"):
            kw.setdefault("MPST", "On Change")
            kw.setdefault("APST", "On Change")
        if spec.name == "AcquireBusy":  # an output record, so that it can hold a put-completion (blocking)
            make = builder.boolOut
            kw.update(
                initial_value=0,
                always_update=True,
                blocking=True,
                on_update=self._on_acquire_busy,
                validate=lambda _device, _value: self._starts_run(),
            )
        if spec.name == "AcquireAbortBusy":  # the same, for a 0's completion; its forward link goes on
            make = builder.boolOut
            kw.update(
                initial_value=0,
                always_update=True,
                blocking=True,
                on_update=self._on_acquire_abort_busy,
                validate=lambda _device, _value: self._holds_abort(),
                FLNK=self.prefix + "AcquireBusy",
            )
        if spec.kind in ("boolIn", "boolOut"):
            severities = ENUM_SEVERITIES.get(spec.name, {})
            kw["ZNAM"], kw["ONAM"] = spec.choices
            if spec.choices[0] in severities:
                kw["ZSV"] = severities[spec.choices[0]]
            if spec.choices[1] in severities:
                kw["OSV"] = severities[spec.choices[1]]
        if spec.kind in ("mbbIn", "mbbOut"):
            severities = ENUM_SEVERITIES.get(spec.name, {})
            options = [(c, severities[c]) if c in severities else c for c in spec.choices]
            return make(spec.name, *options, **kw, **self._out_kw(spec))
        if spec.kind in ("longStringIn", "longStringOut"):
            kw["length"] = int(spec.length)
        if spec.kind == "WaveformIn":
            kw["length"] = self._length(spec)
            kw["datatype"] = np.int16 if spec.ca_type.startswith("short") else np.float64
            if kw["datatype"] is np.float64:
                kw.setdefault("PREC", 4)  # a profile's radial axis in degrees is not whole numbers
        if spec.kind in ("aIn", "aOut"):
            kw.setdefault("PREC", 3)
        if spec.kind in ("aOut", "longOut") and spec.limits is not None:
            # the accepted range as display limits (what a display tool and ophyd's `limits` show), and
            # so as a longout's control limits (it falls back to LOPR/HOPR without DRVL/DRVH, which would
            # clamp an out-of-range put instead of refusing it)
            number = int if spec.kind == "longOut" else float
            kw["LOPR"], kw["HOPR"] = (number(limit) for limit in spec.limits)
            if spec.kind == "aOut":
                # an ao's control limits are its drive limits only: set one double beyond the range each
                # side, so that clients read the range (to an ulp) and an out-of-range put, clamped there
                # by the record, still reaches the checks outside the range and is refused (HWLIMIT)
                kw["DRVL"], kw["DRVH"] = pv_input.drive_limits(spec)
        shown = _READBACK_LIMITS.get(spec.name) if spec.kind in ("aIn", "longIn") else None
        if shown is not None:  # an input record's control and display limits are both LOPR/HOPR
            number = int if spec.kind == "longIn" else float
            kw["LOPR"], kw["HOPR"] = (number(limit) for limit in shown)
        if spec.initial is not None and not spec.writable:
            kw["initial_value"] = spec.initial
        restored = self._restored.get(spec.name.removesuffix("_RBV")) if spec.name.endswith("_RBV") else None
        if restored is not None:  # a restored setpoint's readback starts as it does
            kw["initial_value"] = _directory(restored) if spec.name == "HDF1:FilePath_RBV" else restored
        return make(spec.name, **kw, **self._out_kw(spec))

    def _length(self, spec: PvSpec) -> int:
        if spec.length == "bins":
            return int(self.view.settings.reduction.bins)
        if spec.length == "preview":
            height, width = self.view.frame_format.preview_shape
            return height * width
        return int(spec.length)

    def _out_kw(self, spec: PvSpec) -> dict[str, Any]:
        """Initial values, validation and callbacks of the setpoints."""
        if not spec.writable:
            return {}
        validate = lambda device, value, spec=spec: self._validate(spec, device, value)  # noqa: E731
        if spec.name == "Acquire":
            # not blocking itself: its forward link processes AcquireAbortBusy (which holds the completion
            # of a 0 until the aborted run has ended) and that one's AcquireBusy (which holds the completion
            # of a 1 until the run is over), while Acquire stays free to take a 0 (a put-callback to a
            # record that is busy would wait for it). As areaDetector's busy record.
            return {
                "initial_value": 0,
                "always_update": True,
                "validate": validate,
                "on_update": self._on_acquire_put,
                "FLNK": self.prefix + "AcquireAbortBusy",
            }
        initial: dict[str, Any] = {
            "NumImages": 1,
            "AcquirePeriod": 0.05,
            "Mode": MODES.index(self._parameters()["mode"]),
            "ArrayCounter": 0,
            "HDF1:FilePath": str(self.view.store_path()),
            "HDF1:FileName": "",
            "HDF1:Capture": 0,
            "HDF1:NumCapture": 1,
            # one chunk is one whole frame, as the readbacks say
            "HDF1:NumRowChunks": self.view.frame_format.height,
            "HDF1:NumColChunks": self.view.frame_format.width,
        }
        value = self._param_value(spec) if spec.param else initial.get(spec.name, spec.initial)
        value = self._restored.get(spec.name, value)
        if isinstance(spec.only, str):
            value = self._frame_only(spec)
        on_update: Callable[[Any], Any] = lambda value, name=spec.name: self._apply_setpoint(name, value)  # noqa: E731
        if spec.name == "HDF1:Capture":
            on_update = self._on_capture_put
        elif spec.name == "Mode" or spec.name.startswith("Reduction:"):
            on_update = lambda value, name=spec.name: self._on_reduction_put(name, value)  # noqa: E731
        return {
            "initial_value": value,
            "always_update": True,
            # a put with completion returns once the value is applied and its readback shows it
            "blocking": True,
            "validate": validate,
            "on_update": on_update,
        }

    async def _capture_closed(self) -> None:
        """Wait (bounded) until the open capture, if any, has closed and ``Capture_RBV`` is 0."""
        task = self._capture_task
        if self._capturing and task is not None:
            with contextlib.suppress(Exception):  # (its own failures are logged and shown by the task)
                await asyncio.wait_for(asyncio.shield(task), CAPTURE_CLOSE_SECONDS + 5)

    async def _on_capture_put(self, value: Any) -> None:
        """``HDF1:Capture``: 1 opens a capture; 0 closes it, and its put completes once the file is
        finished and ``Capture_RBV`` is 0 (as every setpoint's completion waits for its readback)."""
        closing = not int(value) and self._capturing
        self._apply_setpoint("HDF1:Capture", value)
        if closing:
            await self._capture_closed()

    async def _on_reduction_put(self, name: str, value: Any) -> None:
        """``Mode`` and ``Reduction:*``: applied at once; the put completes once the next run's kernels
        are loaded (at most ``KERNELS_READY_SECONDS``), as areaDetector's puts complete when done. An
        install's first use of a mode compiles them (tens of seconds): a plan started on the put's
        completion had its frames wait in the ring meanwhile and timed out on ``NumCaptured_RBV`` with
        no PV saying why (an outside probe). ``StatusMessage_RBV`` says so while it waits."""
        # a put that changed nothing (one queued behind another's completion, taken after the run it
        # preceded: an outside probe's acquisition's "Acquisition completed" became "serial mode ready")
        # waits as any does, and says nothing. (Its value was taken by `_validate`, just before.)
        unchanged = not self._put_changed.pop(name, True)
        self._apply_setpoint(name, value)
        started = time.monotonic()
        said = -1
        # a run started meanwhile (an Acquire 1 right after a put not waited for) has messages of its own:
        # this put's then stays quiet (an outside probe read "Preparing serial mode: its kernels are loading
        # (50 s)" after the run had been reduced and completed, never "Acquisition completed")
        run_before = self._run_gen
        while await asyncio.to_thread(self.view.kernels_loading):
            quiet = unchanged or self._run_gen != run_before or self._run_busy()
            waited = time.monotonic() - started
            if waited >= KERNELS_READY_SECONDS:
                if not quiet:
                    self._set_message(
                        f"{name} applied; the kernels still load after {waited:.0f} s"
                        " (the next run's frames wait)"
                    )
                return
            if int(waited) != said and not quiet:
                said = int(waited)
                mode = self._parameters()["mode"]
                self._set_message(f"Preparing {mode} mode: its kernels are loading ({said} s)")
            await asyncio.sleep(0.1)
        if unchanged or self._run_gen != run_before or self._run_busy():
            return
        if said >= 0 or name == "Mode":  # (a mode whose kernels were loaded already is ready at once:
            # its put said nothing, the message before it left standing; an outside probe)
            self._set_message(f"{self._parameters()['mode']} mode ready")

    # --- setpoints -----------------------------------------------------------------------------
    def _validate(self, spec: PvSpec, device: Any, value: Any) -> bool:
        """softioc's ``validate``: refuse a bad put before it is taken (on the CA server's thread).

        A refused put leaves the setpoint at its last good value with a MINOR alarm (the status says
        what kind of refusal: STATE, WRITE, HWLIMIT, SOFT) until the next good put, and the reason in
        ``StatusMessage_RBV``. The put itself completes: CA has no way to fail a put callback once the
        value is written, so clients read the alarm and the message (see ``docs/epics.md``). The
        message and the readbacks a refusal sets hold their values before the put returns.
        """
        with self._shown_now():
            return self._take_put(spec, device, value)

    def _take_put(self, spec: PvSpec, device: Any, value: Any) -> bool:
        """True when ``value`` may be taken; else the refusal is shown (alarm, messages) and False."""
        try:
            refused = pv_input.refusal(spec, value, self._frame_only(spec)) or self._state_refusal(
                spec, value
            )
        except Exception as error:  # a check that fails refuses the put; the IOC carries on
            log.exception("checking a put to %s failed", spec.name)
            refused = (f"cannot check the value ({type(error).__name__})", pv_input.ALARM_SOFT)
        if refused is None:
            return True
        reason, status = refused
        self.refused_puts += 1
        with contextlib.suppress(AttributeError):  # (a stand-in record in unit tests has no alarm)
            device.process_severity(device._record, 1, status)  # MINOR, shown when the record finishes
        # ascii(): a value's non-ASCII characters shown escaped (a client reading the message as Latin-1
        # showed a put's undecodable bytes, U+FFFD, as mojibake)
        shown = ascii(value[:40] + "...") if isinstance(value, str) and len(value) > 40 else ascii(value)
        clamped = pv_input.clamped_side(spec, value)
        if clamped is not None:  # the ao record held the put at its drive limit: say what the put was
            shown = f"a value {clamped}"
        if spec.choices and isinstance(value, int) and 0 <= value < len(spec.choices):
            shown = f"{value} ({spec.choices[value]})"  # an enum's index, and the state it names
        self._set_message(f"Refused {spec.name} = {shown}: {reason}")
        if spec.name.startswith("HDF1:"):  # areaDetector clients read the writer's own message
            self._set_write_message(f"Refused {spec.name}: {reason}")
            if spec.name == "HDF1:FilePath":
                self._set("HDF1:FilePathExists_RBV", 0)
        log.info("refused a put of %s to %s: %s", shown, spec.name, reason)
        return False

    def _chunking(self, name: str) -> int:
        """The files' real chunk along ``name``'s axis: one whole frame (whatever the setpoint holds; a
        client such as ophyd-async states the readback's chunk shape in its StreamResource)."""
        fmt = self.view.frame_format
        return {"HDF1:NumFramesChunks": 1, "HDF1:NumRowChunks": fmt.height, "HDF1:NumColChunks": fmt.width}[
            name
        ]

    def _frame_only(self, spec: PvSpec) -> int | None:
        """The one value of a PV that takes only the frame's own width, height or pixel type."""
        if not isinstance(spec.only, str):
            return None
        fmt = self.view.frame_format
        return {"width": fmt.width, "height": fmt.height, "data_type": _ad_data_type(fmt.dtype)}[spec.only]

    def _state_refusal(self, spec: PvSpec, value: Any) -> tuple[str, int] | None:
        """Why a well-formed put cannot be taken now (the appliance's state), or None. Applies a
        reduction parameter (for the next run) when it is accepted."""
        soft = pv_input.ALARM_SOFT
        if spec.name == "Acquire":
            if not int(value) and self._run_busy():
                if not self._finishing:
                    self._abort_flag = True  # (the IOC's own reset at a run's end comes while finishing)
                if self._start_next and not self._resetting:  # a client's later 0 takes back that 1
                    log.info("Acquire 0: the next run a 1 was to start once this one ended does not start")
                    self._start_next = False
            if int(value) and self._run_busy():
                if (self._finishing and not self._acquiring) or self._abort_flag:
                    # the run has ended (Acquire_RBV reads Done) and its put is completing, or a client's
                    # 0 is ending it (a "stop" then "start"): the busy record would ignore this 1's
                    # forward link, so the run starts once the record is free, as areaDetector starts again
                    if self._abort_flag and not self._start_next:
                        log.info("Acquire 1 while the aborted run ends: the next run starts after it")
                    self._start_next = True
                    return None
                # the busy record already holds the running put: a forward link to it would be ignored
                # and this put would complete at once, as if a run had ended
                return "already acquiring: this put starts no run (put 0 to abort the one going)", soft
            if int(value):
                reason = self.refusal()
                if reason is not None:
                    return f"run refused: {reason}", soft
                if self.control is not None and not self.control.connected:  # nothing to arm: say so
                    return "not started: the detector is disconnected (DetectorState_RBV)", soft
                series_open = getattr(self.view, "series_open", None)  # (a unit test's stand-in view)
                if series_open is not None and series_open():
                    # a series open that this IOC did not start (another client at the camera, or one
                    # from before a restart of the daemon): arming now would rewrite it mid-series
                    return (
                        "not started: the detector is sending a series this appliance did not start;"
                        " wait for it to end, or put 0 to stop it",
                        soft,
                    )
            return None
        if spec.name == "HDF1:Capture" and int(value) and not self._capturing:
            # runs are refused (a full store): its frames would be too. It opened in silence, and its
            # close blamed the stream's endpoint for frames the refusal had recorded lost (an outside probe)
            reason = self.refusal()
            if reason is not None:
                return f"capture not opened: runs are refused: {reason}", soft
        if spec.name == "HDF1:FilePath":
            reason = path_refusal(Path(str(value) or "."), self._roots())
            return None if reason is None else (reason, soft)
        if spec.name == "HDF1:TempSuffix" and str(value) != TEMP_SUFFIX:
            return (
                f"{TEMP_SUFFIX} only: every file is written as NAME{TEMP_SUFFIX} and renamed once complete",
                soft,
            )
        if spec.name == "HDF1:FileTemplate":
            try:  # (its fields and their widths: the name it makes is checked when a capture opens)
                capture_file(str(value), "", "", 0)
            except ValueError as error:
                return str(error), soft
            return None
        if spec.name == "HDF1:Capture":
            if int(value) and self._capturing and self._capture_ending():
                # a 1 now would be taken as "already capturing" and then dropped when the file closes
                return "the last capture is still closing: put Capture 1 again once Capture_RBV is 0", soft
            return self._capture_refusal() if int(value) and not self._capturing else None
        if spec.name == "Mode":
            return self._update_reduction({"mode": MODES[int(value)]}, spec.name)
        if spec.param:
            try:
                change = self._param_change(spec.param, value)
            except ValueError as error:
                return str(error), soft
            return self._update_reduction(change, spec.name)
        return None

    def _run_busy(self) -> bool:
        """True while a run holds ``AcquireBusy`` (from its start until its put has completed)."""
        return self._acquiring or self._busy("AcquireBusy")

    def _capture_path(self) -> Path:
        """The next capture's file: ``FileTemplate`` of ``FilePath`` (with a trailing ``/``, as areaDetector
        adds one), ``FileName`` and ``FileNumber``."""
        directory = str(self.records["HDF1:FilePath_RBV"].get())
        return capture_file(
            str(self.records["HDF1:FileTemplate_RBV"].get()),
            directory if directory.endswith("/") else directory + "/",
            str(self.records["HDF1:FileName_RBV"].get()),
            int(self.records["HDF1:FileNumber_RBV"].get()),
        )

    def _roots(self) -> list[Path]:
        """Where ``HDF1:FilePath`` may point: ``store.roots`` (default the store path)."""
        settings = getattr(self.view, "settings", None)  # (a stand-in view in unit tests has none)
        return settings.store.allowed_roots() if settings is not None else [self.view.store_path()]

    def _capture_ending(self) -> bool:
        """True while the open capture is closing: a ``Capture`` 0 put, its ``NumCapture`` reached, or its
        run ended by an aborted series (the watch sees it within 50 ms), until ``Capture_RBV`` is 0."""
        if self._capture_closing or self._capture_close.is_set():
            return True
        return self.capture is not None and self.capture.capture()["path"] is None

    def _capture_refusal(self) -> tuple[str, int] | None:
        """Why ``Capture`` 1 cannot open a capture now, or None."""
        soft = pv_input.ALARM_SOFT
        if self.capture is None:
            return "captures need the running appliance", soft
        series_open = getattr(self.view, "series_open", None)  # (a unit test's stand-in view)
        if self._run_busy() or (series_open is not None and series_open()):
            # the series going is already its own run, in its own file: a capture takes whole series, so
            # this one would wait for the next and, closed before one came, write nothing at all
            return "a series is being acquired: open the capture before Acquire 1 (or once it ends)", soft
        try:
            path = self._capture_path()
        except ValueError as error:
            return str(error), soft
        if not str(self.records["HDF1:FileName_RBV"].get()):
            return "FileName is empty", soft
        reason = path_refusal(path, self._roots())
        if reason is not None:
            return reason, soft
        try:
            if path.exists():
                return f"{path} exists (a capture never overwrites a file)", soft
            part = path.with_name(path.name + ".part")
            if part.exists():  # the only copy of a crashed capture's frames (recorded lost): kept
                return f"{part.name} exists, left by a capture a crash cut short: move it aside", soft
            if not path.parent.is_dir() and not int(self.records["HDF1:CreateDirectory"].get()):
                return f"{path.parent} does not exist (CreateDirectory 0)", soft
        except (OSError, ValueError) as error:
            return f"not a usable path ({error})", soft
        return None

    def _start_capture(self) -> None:
        path = self._capture_path()
        if not path.parent.is_dir():
            reason = make_directory(path.parent, int(self.records["HDF1:CreateDirectory"].get()))
            if reason is not None:
                raise ValueError(reason)
        assert self.capture is not None
        self._capture_unfinished = False  # (a new file: the last one's error is said in its run's record)
        # the run the capture's frames will be in, named now: a fly scan's descriptor (read between this
        # put and its first frame) named the previous run (an outside probe)
        before = str(self.records["RunUid_RBV"].get())
        planned = self.capture.open_capture(path)
        self._set("RunUid_RBV", _fit(planned))
        self._capturing = True
        self._capture_close.clear()
        self._set("HDF1:Capture_RBV", 1)
        self._set("HDF1:NumCaptured_RBV", 0)
        self._set("HDF1:FullFileName_RBV", _fit(str(path)))
        # its directory is there and written to: so FilePathExists_RBV says, also when a refused FilePath
        # since (one outside the roots) had set it to No, FilePath_RBV unchanged (an outside probe)
        self._set("HDF1:FilePathExists_RBV", 1)
        self._set_write_message("")
        if int(self.records["HDF1:AutoIncrement_RBV"].get()):  # as areaDetector: once the file is opened
            number = int(self.records["HDF1:FileNumber_RBV"].get()) + 1
            if number > FILE_NUMBER_MAX:  # a long's last value: kept, never wrapped to a negative one
                self._set_write_message(f"FileNumber stays at {FILE_NUMBER_MAX}, the largest it takes")
            else:
                self._set("HDF1:FileNumber", number)
                self._set("HDF1:FileNumber_RBV", number)
                self._save_setpoints()
        counter = self._camera_counter()
        self._capture_task = self._spawn(self._watch_capture(path, before, counter), "edge-ioc-capture")
        log.info("capture opened: %s", path)

    async def _watch_capture(
        self, path: Path, uid_before: str = "", counter_before: int | None = None
    ) -> None:
        """Follow the open capture: frames written, its ``NumCapture`` limit, its close (``Capture`` 0, or
        the detector aborting its run), and clear ``Capture_RBV`` once its file is finished. A capture
        closed before any frame came made no run and no file: ``RunUid_RBV`` goes back to ``uid_before``
        (it named the run the capture's frames would have been in) and ``WriteMessage`` says so."""
        assert self.capture is not None
        run_uid: str | None = None
        try:
            while not self._capture_close.is_set():
                state = self.capture.capture()
                if state["path"] is None:  # the run ended with an aborted series: so did the capture
                    break
                if state["run_uid"] is not None and state["run_uid"] != run_uid:
                    run_uid = self._run_uid = state["run_uid"]
                    self._last_without_frames = None  # frames come again
                    self._set("RunUid_RBV", run_uid)
                writing, frames = self.view.writer_run()
                if run_uid is not None and writing == run_uid:
                    self._set("HDF1:NumCaptured_RBV", frames)
                    limit = int(self.records["HDF1:NumCapture_RBV"].get())
                    if limit and frames >= limit:
                        break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._capture_close.wait(), 0.05)
            self._capture_closing = True
            run_uid = await asyncio.to_thread(self.capture.close_capture) or run_uid
            deadline = time.monotonic() + CAPTURE_CLOSE_SECONDS
            while run_uid is not None and time.monotonic() < deadline:
                totals = await asyncio.to_thread(self.view.run_totals, run_uid)
                if totals is not None:
                    self._set("HDF1:NumCaptured_RBV", int(totals["frames_stored"]))
                    break
                await asyncio.sleep(0.05)
            else:
                if run_uid is not None:
                    self._capture_unfinished = True
                    self._set("HDF1:WriteStatus", 1)
                    self._set_write_message(f"{path} not finished after {CAPTURE_CLOSE_SECONDS:.0f} s")
            if run_uid is None:
                self._set("RunUid_RBV", uid_before)
                self._empty_capture = (uid_before, str(path))
                counter = self._camera_counter()
                if counter is not None and counter_before is not None and counter > counter_before:
                    await asyncio.sleep(0.5)  # (the camera's last frames' count may still be on its way)
                    counter = max(counter, self._camera_counter() or 0)
                taken = None if counter is None or counter_before is None else counter - counter_before
                if taken is not None and taken > 0:
                    # the camera took frames meanwhile (a plan triggering it at its own PVs) and none came
                    # on the stream: said, counted and an alarm, as for an Acquire's (an outside probe's
                    # fly scan of 10 such frames left no trace but the capture's message)
                    self._note_without_frames({"frames_taken": taken, "capture": str(path)})
                    log.warning(
                        "capture %s: the camera took %d frame(s), none came on the stream", path, taken
                    )
                    refused = self.refusal()
                    self._set_write_message(
                        f"capture closed before any frame came: the camera took {taken} frame(s), none"
                        + (
                            f" stored: runs are refused ({refused}), its frames recorded lost (run_refused)"
                            if refused is not None
                            else " reached the stream (stream.endpoint not the detector's?)"
                        )
                        + f"; no run, no file {path.name}"
                    )
                else:
                    self._set_write_message(
                        f"capture closed before any frame came: no run, no file {path.name}"
                    )
        finally:
            self._capturing = self._capture_closing = False
            self.records["HDF1:Capture"].set(0, process=False)
            try:  # the series' end in StatusMessage_RBV before Capture_RBV says done, not at the next
                self._show_acquisition()  # refresh (an outside probe logged "Acquiring" after its plan)
            except Exception:  # (the view going away at shutdown) the refresh says it later
                log.debug("showing the acquisition at a capture's close failed", exc_info=True)
            self._set("HDF1:Capture_RBV", 0)
            log.info("capture closed: %s (run %s)", path, run_uid)

    def _set_write_message(self, message: str) -> None:
        self._write_message = _fit(message)
        self._set("HDF1:WriteMessage", self._write_message)

    def _update_reduction(self, change: dict[str, Any], name: str) -> tuple[str, int] | None:
        if self.reduction is None:
            return None
        if "mode" in change:
            reason = self.reduction.check_mode(change["mode"])
            if reason is not None:
                return reason, pv_input.ALARM_SOFT
        before = self.reduction.parameters()
        try:
            self.reduction.update(change)
        except (Refused, ConfigError) as error:
            text = " ".join(str(error).replace("invalid configuration:", "").split())
            return text, pv_input.ALARM_SOFT
        # whether this put changed anything, for its completion (`_on_reduction_put`, next on the record)
        self._put_changed[name] = self.reduction.parameters() != before
        return None

    def _param_change(self, param: str, value: Any) -> dict[str, Any]:
        """``{"serial": {"min_peaks": 12}}`` from a put to the PV of ``serial.min_peaks``."""
        # (boxes and rows outside the frame are refused by the reduction control, as for REST)
        if param == "roi":
            parsed: Any = pv_input.parse_roi(str(value))
        elif param == "tomo.slices":
            parsed = pv_input.parse_rows(str(value))
        elif param in NULLABLE_PARAMS:
            parsed = None if math.isnan(float(value)) else float(value) + 0.0  # (-0.0 is 0)
        elif param in ("cake_bins", "serial.min_peaks"):
            parsed = int(value)
        else:
            parsed = float(value) + 0.0  # (-0.0 + 0.0 is 0.0: a put of -0.0 is shown and saved as 0)
        section, _, key = param.rpartition(".")
        return {section: {key: parsed}} if section else {key: parsed}

    def _parameters(self) -> dict[str, Any]:
        if self.reduction is not None:
            return self.reduction.parameters()
        return ReductionSettings().model_dump(mode="json")

    def _param_value(self, spec: PvSpec, parameters: dict[str, Any] | None = None) -> Any:
        """The value of ``spec``'s reduction parameter, as its PV shows it."""
        value: Any = parameters if parameters is not None else self._parameters()
        for key in spec.param.split("."):
            value = value[key]
        if spec.param == "roi":
            return pv_input.format_roi(value)
        if spec.param == "tomo.slices":
            return pv_input.format_rows(value)
        if spec.param in NULLABLE_PARAMS:
            return math.nan if value is None else float(value)
        return value

    def _apply_setpoint(self, name: str, value: Any) -> None:
        """softioc's ``on_update`` of a setpoint: its readbacks hold the value before the put completes,
        and an `AUTOSAVED` one is saved (kept across a restart). A put of -0.0 is 0: the setpoint is
        written back as 0.0, so no readback or saved value reads "-0" (an outside probe)."""
        if isinstance(value, float) and value == 0.0 and math.copysign(1.0, value) < 0:
            value = 0.0
            with contextlib.suppress(Exception):  # (a stand-in record of a unit test)
                self.records[name].set(value, process=False)
        with self._shown_now():
            self._on_setpoint(name, value)
        if name in AUTOSAVED:
            self._save_setpoints()

    def _save_setpoints(self) -> None:
        """Save every `AUTOSAVED` setpoint's accepted value (`SetpointAutosave`; unchanged: not rewritten)."""
        try:
            self._autosave.save({name: self.records[name].get() for name in AUTOSAVED})
        except Exception:  # a put never fails on its autosave; the value applies
            log.exception("saving the setpoints failed")

    def _restore_refusal(self, spec: PvSpec, value: Any) -> str | None:
        """Why a saved value of ``spec`` is refused now: the checks a put meets (limits, choices, lengths,
        ``FilePath`` inside ``store.roots``, ``FileTemplate``'s fields), or None."""
        refused = pv_input.refusal(spec, value, self._frame_only(spec)) or self._state_refusal(spec, value)
        return None if refused is None else refused[0]

    def _on_setpoint(self, name: str, value: Any) -> None:
        if name == "NumImages":
            self._set("NumImages_RBV", int(value))
            if not self._capturing:  # (an open capture spans several acquisitions: its count stays)
                self._set("HDF1:NumCapture", int(value))
                self._set("HDF1:NumCapture_RBV", int(value))
        elif name == "AcquirePeriod":
            self._set("AcquirePeriod_RBV", float(value))
        elif name == "ArrayCounter":
            self._counter_offset = self._frames_received - int(value)
            self._set("ArrayCounter_RBV", int(value))
        elif name == "HDF1:DroppedArrays":
            self._dropped_offset = self._dropped_total - int(value)
            self._set("HDF1:DroppedArrays_RBV", int(value))
        elif name == "HDF1:DisorderedArrays":
            self._reordered_offset = self._reordered_total - int(value)
            self._set("HDF1:DisorderedArrays_RBV", int(value))
        elif name == "HDF1:ArrayCounter":
            self._hdf_counter_offset = self._frames_received - int(value)
            self._set("HDF1:ArrayCounter_RBV", int(value))
        elif name == "HDF1:FilePath":
            self._set("HDF1:FilePath_RBV", _directory(str(value)))
            # as areaDetector: a non-zero CreateDirectory makes the directory when FilePath is processed
            # (stock ophyd-async sets CreateDirectory, then FilePath, then asks FilePathExists_RBV)
            depth = int(self.records["HDF1:CreateDirectory"].get())
            message = ""
            if depth and not os.path.isdir(str(value)):
                message = make_directory(Path(str(value)), depth) or ""
                if not message:
                    log.info("FilePath %s created (CreateDirectory %d)", value, depth)
            usable = os.path.isdir(str(value)) and os.access(str(value), os.W_OK)
            self._set("HDF1:FilePathExists_RBV", int(usable))
            if message:
                message = f"FilePath not created: {message}"
            elif not usable:
                # why FilePathExists_RBV reads 0, said now: a client that checks it before Capture (stock
                # ophyd-async) stops with a generic error, and the reason came only with a Capture 1 (an
                # outside probe)
                why = "is not a writable directory" if os.path.exists(str(value)) else "does not exist"
                message = f"FilePath {_directory(str(value))} {why}" + (
                    "" if depth or os.path.exists(str(value)) else NO_DIRECTORY_MADE
                )
            self._set_write_message(message)
        elif name == "HDF1:CreateDirectory":
            self._set("HDF1:CreateDirectory_RBV", int(value))
            said = str(self.records["HDF1:WriteMessage"].get())
            if int(value) and said.endswith(NO_DIRECTORY_MADE):  # (that reason no longer holds)
                self._set_write_message(
                    f"{said[: -len(NO_DIRECTORY_MADE)]}: CreateDirectory {int(value)} makes it at Capture 1"
                )
        elif name == "HDF1:Capture":
            if int(value) and not self._capturing:
                try:
                    self._start_capture()
                except Exception as error:  # (a directory that cannot be made): the put is answered
                    log.warning("opening a capture failed: %s", error)
                    self._set_write_message(f"Capture not opened: {error}")
                    self.records["HDF1:Capture"].set(0, process=False)
            elif int(value):  # (areaDetector ignores it too; said here, not silent: an outside probe)
                name_now = str(self.records["HDF1:FullFileName_RBV"].get())
                self._set_write_message(f"Capture 1 while capturing: the open capture goes on ({name_now})")
            elif self._capturing:
                self._capture_close.set()
        elif name == "HDF1:FileName":
            self._set("HDF1:FileName_RBV", str(value))
        elif name == "HDF1:NumCapture":
            self._set("HDF1:NumCapture_RBV", int(value))
        elif name == "Mode" or name.startswith("Reduction:"):
            self._show_reduction(self._parameters())
        elif name in _CHUNKING:  # kept, but the readback reads the chunk the files have
            self._set(f"{name}_RBV", self._chunking(name))
        elif f"{name}_RBV" in self.records:  # an areaDetector writer setting, kept and shown back
            self._set(f"{name}_RBV", value)

    def _show_reduction(self, parameters: dict[str, Any]) -> None:
        """The accepted reduction parameters in ``Mode_RBV`` and the ``Reduction:*_RBV`` records; when they
        changed (a put here, or ``PUT /api/reduction``), in the setpoints too, so that ``Mode`` and
        ``Reduction:*`` never show a value other than what the next run takes."""
        changed = parameters != self._reduction_shown
        if changed:
            self._reduction_shown = copy.deepcopy(parameters)
        self._set("Mode_RBV", MODES.index(parameters["mode"]))
        if changed:
            self._set("Mode", MODES.index(parameters["mode"]))
        for spec in PVS:
            if spec.param:
                value = self._param_value(spec, parameters)
                self._set(f"{spec.name}_RBV", value)
                if changed:
                    self._set(spec.name, value)

    def _set(self, name: str, value: Any, *, severity: int = 0, alarm: int = 0) -> None:
        """Show ``value`` in a record (a setpoint is updated without processing it)."""
        record = self.records[name]
        if name in _SETPOINTS:
            record.set(value, process=False)
        else:
            record.set(value, severity=severity, alarm=alarm if severity else 0)
            shown = getattr(self._shown, "names", None)
            if shown is not None:
                shown.add(name)

    @contextlib.contextmanager
    def _shown_now(self) -> Iterator[None]:
        """The readbacks set inside hold their new values when this exits.

        softioc's ``set`` on an input record only queues the record for a scan thread (two or more of
        them, in any order), so a client reading it right after a put completed could get the old value.
        Processing each one here (a put to its ``PROC`` field, done in this thread) makes the put's
        completion mean what docs/epics.md says: the readback shows the value.
        """
        outer = getattr(self._shown, "names", None)
        names: set[str] = set()
        self._shown.names = names
        try:
            yield
        finally:
            self._shown.names = outer
            if outer is not None:
                outer |= names
            else:
                for name in names:
                    try:
                        self.records[name].set_field("PROC", 1)
                    except AttributeError:  # a stand-in record of a unit test
                        pass
                    except Exception:  # the value still arrives, from the scan thread
                        log.exception("processing %s failed", name)

    def _set_message(self, message: str) -> None:
        self._message = message
        self._set("StatusMessage_RBV", _fit(message))

    # --- Acquire: the busy record --------------------------------------------------------------
    def _on_acquire_put(self, value: Any) -> None:
        """``Acquire`` was written: a 0 during a run is an abort (the run sees it); a 1 starts the run when
        the forward link processes ``AcquireBusy``."""
        if not int(value) and self._acquiring:
            log.info("Acquire 0: aborting the run")
        elif not int(value) and self.control is not None and self.control.state == "Acquire":
            # no run of ours, but the camera acquires (a series from before a restart, or another
            # client's): a 0 here stops it, as the operator asked
            log.info("Acquire 0: stopping the detector's series this appliance did not start")
            self.loop.call_soon_threadsafe(lambda: self._spawn(self._stop_detector(), "edge-ioc-stop"))

    async def _stop_detector(self) -> None:
        try:
            await self.control.stop()
        except Exception as error:  # the camera went away meanwhile: say so, the IOC goes on
            log.warning("stopping the detector failed: %s", error)
            self._set_message(f"Stopping the detector failed: {error}")

    def _holds_abort(self) -> bool:
        """Whether ``AcquireAbortBusy``, processed by ``Acquire``'s forward link, is to hold a put: only a
        0 while a run goes (or is starting). Otherwise its processing ends at once, and its forward link
        reaches ``AcquireBusy`` at once: held for a 0 with no run, it made a client's 1 sent right after
        (without completion) find it busy, so the 1's link was ignored and its put completed at once,
        while the 0's link went on to start the run."""
        try:
            return not int(self.records["Acquire"].get()) and self._run_busy() and not self._finishing
        except Exception:  # the put must not fail on a read
            return True

    async def _on_acquire_abort_busy(self, value: Any) -> None:
        """``AcquireAbortBusy`` processed by ``Acquire``'s forward link: a 0 during a run completes when
        the run has ended (its forward link then finds ``AcquireBusy`` idle or still finishing). A 0 as a
        run starts (its busy record taken, its task not yet going) waits for it to begin, then end."""
        deadline = time.monotonic() + 2.0
        while not self._acquiring and self._busy("AcquireBusy") and not self._finishing:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.002)
        ended = self._run_ended
        if self._acquiring and self._abort_requested() and ended is not None:
            await ended.wait()

    def _starts_run(self) -> bool:
        """Whether ``AcquireBusy``, processed by a forward link, is to hold a put: only when ``Acquire`` is
        1 and no run is going. Otherwise its processing ends at once (no ``PACT``). A reset of
        ``Acquire`` to 0 at a run's end reaches it through ``AcquireAbortBusy``'s link, in EPICS's
        callback thread, possibly after the run's put has completed: held, even for a no-op, it made a
        client's next 1, sent as soon as its put returned, find it busy ("already acquiring", no run)."""
        try:
            starts = bool(int(self.records["Acquire"].get())) and not self._acquiring
        except Exception:  # the put must not fail on a read: let the run's own checks decide
            starts = True
        if starts:
            self._abort_flag = False  # a 0 from now on aborts this run
            self._start_accepted = True
        return starts

    async def _on_acquire_busy(self, value: Any) -> None:
        """``AcquireBusy`` processed by ``Acquire``'s forward link: run when it took a start (``Acquire``
        was 1 then: read again now, it may already show the IOC's reset of the last run's end)."""
        if self._start_accepted:
            self._start_accepted = False
            await self._on_acquire(1)

    async def _on_acquire(self, value: Any) -> None:
        """Run one acquisition; return (completing the put) only when it is over."""
        if not int(value) or self._acquiring:
            return  # 0 while idle: nothing to abort (an abort during a run is seen by the run itself)
        self._acquiring = True
        self._run_gen += 1
        self._finishing = False
        self._start_next = False  # a 1 taken while the last run finished: this is its run
        if self.capture is not None:  # from now on Mode and the reduction parameters belong to this run
            self.capture.set_armed(True)
        self._run_ended = asyncio.Event()  # a 0's put-completion waits for it (AcquireAbortBusy)
        self._run_uid = None  # the refresh shows no file counts of the last run while this one starts
        self._acquisition_series = self._series_frames()[0]
        self._set("Acquire_RBV", 1)
        try:
            await self._acquisition()
        except Exception as error:  # the put must complete whatever happened
            log.exception("acquisition failed")
            self._set_message(f"Acquisition failed: {error}")
        finally:
            self._own_series = self._series_frames()[0]  # its series, and any before it, said in words
            self._finishing = True  # before _acquiring goes: a 1 is never refused as "already acquiring"
            self._acquiring = False
            if self.capture is not None:
                self.capture.set_armed(False)
            # the readbacks as the run left them, before the put completes (not up to 0.5 s later)
            sample = None
            with contextlib.suppress(Exception):
                sample = await asyncio.to_thread(self._sample)
            with self._shown_now():
                if sample is not None:
                    with contextlib.suppress(Exception):
                        self._show_status(sample[0], sample[1], sample[4])
                self._show_acquisition()
                self._set("Acquire_RBV", 0)
            self._run_ended.set()  # an abort's put completes (once this task yields)
            # processed, so that monitors see it (Acquire is no longer the busy record: nothing else posts
            # it). Its forward link processes AcquireAbortBusy unless a client's 0 holds it already; if
            # it does, wait for that processing to end before this put completes: a client's next 1,
            # sent as soon as it returns, found AcquireAbortBusy busy, so its forward link was ignored
            # and its put completed at once; the reset's link then reached AcquireBusy with that 1 in
            # Acquire and started a run no put waited for (and the client's next 1 was refused).
            held = self._busy("AcquireAbortBusy")
            self._resetting = True  # (its validation is no client's 0: a 1 taken meanwhile stands)
            try:
                self.records["Acquire"].set(0)
            finally:
                self._resetting = False
            if not held:
                await self._abort_busy_done()
            # softioc may still write the client's 1 back when the busy processing ends: reset once more
            # after (before that processing ends, so never over the next put of a client that waits for
            # this one's completion)
            asyncio.get_running_loop().call_soon(lambda: self.records["Acquire"].set(0, process=False))
            self._spawn(self._after_run(self._run_gen), "edge-ioc-next")

    async def _after_run(self, run: int, timeout: float = 2.0) -> None:
        """Once the run's busy record has finished processing (its put completed), start the next run
        if a client put 1 while it finished (without completion, as ophyd's ``SingleTrigger`` does on
        seeing ``Acquire_RBV`` go to Done)."""
        await asyncio.sleep(0)  # the run's own task returns first
        deadline = time.monotonic() + timeout
        while self._busy("AcquireBusy") and time.monotonic() < deadline and self._run_gen == run:
            await asyncio.sleep(0.002)
        if self._run_gen != run:  # the next run has started (and owns these flags)
            return
        self._finishing = False
        if not self._start_next:
            return
        self._start_next = False
        if self._acquiring:  # a run started meanwhile (a 1 once the record was free): it is the next one
            return
        if not await self._last_run_over(run):
            return
        log.info("Acquire 1 taken as the last run finished: starting the next run")
        if int(self.records["Acquire"].get()) != 1:
            self.records["Acquire"].set(1, process=False)
        self.records["AcquireBusy"].set(1)  # processed: it holds no put, and runs _on_acquire

    async def _last_run_over(self, run: int) -> bool:
        """Before a 1 taken while the last run finished starts the next run: wait until that run has
        ended in the ledger (inside an open capture, whose run goes on, not that) and its series is
        closed (an acquisition that ended without its run accounted for, e.g. on an error, must not have
        the next series start inside it). Given up, saying so, after ``epics.run_grace_seconds``; False
        also when another run has started meanwhile."""
        last = self._run_uid
        deadline = time.monotonic() + self.settings.run_grace_seconds
        while True:
            if self._run_gen != run or self._acquiring:
                return False
            # (an open capture's run goes on across its acquisitions: only its series must have closed)
            ended = (
                last is None
                or self._capturing
                or await asyncio.to_thread(self.view.run_totals, last) is not None
            )
            series_open = getattr(self.view, "series_open", None)  # (a unit test's stand-in view)
            if ended and not (series_open is not None and series_open()):
                return True
            if time.monotonic() > deadline:
                log.warning("Acquire 1 taken as run %s ended: not started, that run has not ended", last)
                self._set_message(f"Next run not started: run {last} has not ended")
                return False
            await asyncio.sleep(0.05)

    def _busy(self, name: str) -> bool:
        """True while the record ``name`` is processing (``PACT``): a forward link to it is ignored."""
        try:
            return str(self.records[name].get_field("PACT")) != "0"
        except (AttributeError, KeyError):  # a stand-in record of a unit test
            return False

    async def _abort_busy_done(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until ``AcquireAbortBusy`` has finished processing (its ``on_update`` runs on
        this loop, its completion in EPICS's callback thread)."""
        deadline = time.monotonic() + timeout
        while self._busy("AcquireAbortBusy"):
            if time.monotonic() > deadline:
                log.warning("AcquireAbortBusy still busy %.1f s after the run ended", timeout)
                return
            await asyncio.sleep(0.002)

    def _abort_requested(self) -> bool:
        """True once a client has written ``Acquire`` = 0 during this run (``_abort_flag``)."""
        return self._abort_flag

    async def _acquisition(self) -> None:
        control = self.control
        num_images = max(1, int(self.records["NumImages_RBV"].get()))
        period = max(0.0, float(self.records["AcquirePeriod_RBV"].get()))
        if not control.connected:
            self._set_message("Not started: detector disconnected")
            return
        # inside an open capture (HDF1:Capture 1) this acquisition adds to the capture's run, which goes on
        capturing = self._capturing and self.capture is not None
        capture_base = self.view.writer_run()[1] if capturing else 0
        if not capturing:
            self._set("HDF1:NumCaptured_RBV", 0)
        started = time.time()
        self._set_message("Arming detector")
        exposure = max(0.0, float(self.records["AcquireTime_RBV"].get()))
        await control.arm(
            num_images,
            period,
            exposure or None,  # 0: the whole period
            trigger_mode=TRIGGER_MODES[int(self.records["TriggerMode_RBV"].get())],
            frame_type=FRAME_TYPES[int(self.records["FrameType_RBV"].get())],
        )
        done = await control.start()
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, whatever happens
        try:
            await self._follow_run(control, done, num_images, started, capturing, capture_base)
        except BaseException:
            # a failure of ours while the camera acquires (the ledger unreadable, a bug): the put completes
            # with the failure said, and the camera is stopped, not left sending frames no run waits for
            with contextlib.suppress(Exception):
                if control.connected and not done.done():
                    await control.stop()
            raise

    async def _follow_run(
        self, control: Any, done: Any, num_images: int, started: float, capturing: bool, capture_base: int
    ) -> None:
        """The camera started: follow the run until it is accounted for (or given up, or aborted)."""
        from firmware_bridge.detector_control import DetectorControlError, DetectorDisconnectedError

        self._set_message("Acquiring")
        # no deadline while the camera acquires (external triggers may take as long as they take; an
        # Acquire 0 aborts) nor while the appliance still works on the run's frames (received, processed,
        # a mode's kernels loading); epics.run_grace_seconds after the last of these, the run is given up
        progress: tuple[float, tuple[Any, ...]] = (time.monotonic(), ())
        run_uid: str | None = None
        aborted = detector_lost = False
        quiet_since: tuple[float, int] | None = None
        capture_quiet: tuple[float, Any] | None = None
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            working = (not done.done(), self.view.progress())
            if working != progress[1] or working[0] or working[1][-1]:  # (the last: warm-ups running)
                progress = (now, working)
            elif now - progress[0] >= self.settings.run_grace_seconds:
                break
            if run_uid is None:
                if capturing and self.capture is not None:
                    run_uid = self.capture.capture()["run_uid"]
                if run_uid is None:
                    run_uid = await asyncio.to_thread(self._new_run_since, started)
                if run_uid is not None:
                    self._run_uid = run_uid
                    self._last_without_frames = None  # frames come again
                    self._set("RunUid_RBV", run_uid)
            if not aborted and not detector_lost and self._abort_requested():
                aborted = True
                self._set_message("Aborting")
                if self.capture is not None:  # the run ends `abort`, whatever the detector's end says
                    self.capture.mark_abort()
                with contextlib.suppress(DetectorControlError):
                    await control.stop()
            if done.done() and not detector_lost:
                error = done.exception()
                if isinstance(error, DetectorDisconnectedError):
                    detector_lost = True
                    self._set_message("Detector disconnected during the run")
                    log.warning("detector went away during run %s", run_uid)
            if detector_lost and self.view.series_open():
                # frames still in flight may arrive: end the series only once the stream is quiet
                quiet_since, quiet = self._stream_quiet(quiet_since)
                if quiet:
                    self.end_open_series("detector_disconnected")
            if capturing and run_uid is not None and done.done():
                writing, frames = self.view.writer_run()
                if writing != run_uid:  # the capture's run ended (NumCapture reached, Capture 0): its count
                    totals = await asyncio.to_thread(self.view.run_totals, run_uid)
                    frames = int(totals["frames_stored"]) if totals is not None else capture_base
                taken = frames - capture_base
                now = time.monotonic()
                # quiet: nothing written, received or processed, no mode's kernels loading (a capture in a
                # mode whose kernels loaded for its first frame completed with 0 frames added) and no frame
                # received and not yet written (in CI a capture in serial mode, its kernels compiled from
                # an empty cache, once completed with 0 frames added)
                moving = (frames, working[1])
                waiting = working[1][-1] or self.view.frames_in_flight()
                if capture_quiet is None or capture_quiet[1] != moving or waiting:
                    capture_quiet = (now, moving)
                if detector_lost and self.view.series_open():
                    continue  # the series ends (its missing frames recorded lost) once the stream is quiet
                if taken >= num_images or aborted or now - capture_quiet[0] >= STREAM_QUIET_SECONDS:
                    if detector_lost:  # said so: "completed" was read of a capture whose camera had died
                        rest = num_images - taken
                        lost = (
                            f"; the other {rest} of the {num_images} armed recorded lost" if rest > 0 else ""
                        )
                        self._set_message(f"Detector disconnected: {taken} frames added to the capture{lost}")
                        return
                    if aborted:  # the abort ends the capture's run and the capture: Acquire 0 completes
                        # once Capture_RBV is 0 (a Capture 1 put right after it was taken as "already
                        # capturing" by the closing capture, and dropped: an outside probe)
                        await self._capture_closed()
                        writing = self.view.writer_run()[0]
                    if writing == run_uid or not aborted:
                        verb = "aborted" if aborted else "completed"
                        self._set_message(f"Acquisition {verb}: {taken} frames added to the capture")
                    else:  # an abort ends the capture's run: the writer has moved on, its count with it
                        self._set_message("Acquisition aborted: the capture's run ended (abort)")
                    return
                continue
            if run_uid is not None and done.done():
                accounted = await asyncio.to_thread(self._accounted, run_uid)
                if accounted is not None:
                    stored, lost, status = accounted
                    self._set("HDF1:NumCaptured_RBV", stored)
                    if lost:
                        self._set_message(f"Run ended: {stored} frames stored, {lost} lost")
                    elif aborted or status == "abort":  # (or stopped at the camera, by another client:
                        # "completed" was said of a run the ledger ended abort, an outside probe)
                        self._set_message(f"Acquisition aborted: {stored} frames stored")
                    else:
                        self._set_message(f"Acquisition completed: {stored} frames stored")
                    return
            if run_uid is None and done.done() and detector_lost:
                self._set_message("Detector disconnected before the run began")
                return
        with contextlib.suppress(DetectorControlError):
            if control.connected and not done.done():
                await control.stop()
        grace = self.settings.run_grace_seconds
        if run_uid is None and not detector_lost:
            # the camera took its frames and no series came on the stream (the stream's endpoint not the
            # detector's, its link down): the put completed on a message only, the frames in no run and
            # no record (an outside probe). Said as an alarm and a counter until an Acquire's frames come;
            # the detector may still hold them and send them later, then stored as a run of their own
            self._note_without_frames(
                {
                    "frames_armed": num_images,
                    "grace_seconds": grace,
                    "aborted": aborted,  # (stopped by an Acquire 0: the camera took fewer than armed)
                }
            )
            log.warning(
                "Acquire: the detector took its %d frame(s) but no series came on the stream in %g s",
                num_images,
                grace,
            )
            took = "was aborted" if aborted else f"took its {num_images} frame(s)"
            self._set_message(
                f"No frame came: the detector {took}, no series reached the stream in"
                f" {grace:g} s (stream.endpoint not the detector's? its link down?)"
            )
            return
        self._set_message(f"Run not accounted for {grace:g} s after the last frame moved")

    def _note_without_frames(self, what: dict[str, Any]) -> None:
        """The camera took frames and none came on the stream: counted, and the newest kept (shown in
        ``GET /api/status`` and as an alarm until frames come)."""
        self._without_frames += 1
        self._last_without_frames = {"at": time.time(), **what}

    def _camera_counter(self) -> int | None:
        """The camera's ``ArrayCounter_RBV`` now (None: no camera, or not connected)."""
        control = self.control
        if control is None:
            return None
        try:
            status = control.status()
            return int(status.array_counter) if status.connected else None
        except Exception:  # (a camera going away meanwhile: no count to compare)
            return None

    def _new_run_since(self, started: float) -> str | None:
        """The uid of the first run the ledger started at or after ``started``."""
        for run in self.view.runs():
            if run["started_at"] >= started - 0.001:
                return str(run["run_uid"])
        return None

    def _accounted(self, run_uid: str) -> tuple[int, int, str | None] | None:
        """(frames stored, frames lost, exit status) once the run has ended in the ledger, else None."""
        totals = self.view.run_totals(run_uid)
        if totals is None:
            return None
        return int(totals["frames_stored"]), int(totals["frames_lost"]), totals.get("exit_status")

    # --- readbacks -----------------------------------------------------------------------------
    def detector_status(self) -> dict[str, Any]:
        """The detector as the appliance sees it (for ``GET /api/status``)."""
        control = self.control
        if control is None:
            return {"prefix": self.settings.detector_prefix, "connected": False, "state": "Disconnected"}
        status = control.status()
        return {
            "prefix": self.settings.detector_prefix,
            "connected": status.connected,
            "state": status.state,
            "array_counter": status.array_counter,
            "disconnects": status.disconnects,
            "reconnects": status.reconnects,
            "acquiring": self._acquiring,
            "message": self._message,
            "acquires_without_frames": self._without_frames,
            "last_without_frames": self._last_without_frames,
        }

    def _detector_changed(self, status: Any) -> None:
        """The camera's state or counters changed (on the loop). When it goes to ``Aborted`` (stopped at
        the camera itself, e.g. a Bluesky driver on the camera's prefix), the open series ends ``abort``
        as after the appliance's own ``Acquire`` 0: its frames the camera never took are not lost."""
        state = status.state
        if state == "Aborted" and self._camera_state not in (None, "Aborted") and self.capture is not None:
            log.info("the detector was aborted at the camera: the open series ends abort")
            self.capture.mark_abort()
        self._camera_state = state
        connected = bool(status.connected)
        if (
            self._camera_connected
            and not connected
            and not self._acquiring
            and self._lost_camera_task is None
        ):
            # an Acquire here watches its own series; one started at the camera (a plan on its prefix)
            # is ended here, or it stayed open: its capture's Capture 0 gave up after 60 s, "Write OK",
            # the run open with no end, the next capture refused (an outside probe)
            with contextlib.suppress(RuntimeError):  # (no loop running: a unit test's stand-in)
                self._lost_camera_task = asyncio.get_running_loop().create_task(
                    self._end_series_of_lost_camera()
                )
        self._camera_connected = connected
        self._show_detector()

    def _stream_quiet(self, since: tuple[float, int] | None) -> tuple[tuple[float, int], bool]:
        """(when the stream's count of frames received last moved, with that count; whether it has not
        moved for ``STREAM_QUIET_SECONDS``): frames in flight may still come after a camera is gone."""
        received = self.view.frames_received()
        now = time.monotonic()
        if since is None or since[1] != received:
            return (now, received), False
        return since, now - since[0] >= STREAM_QUIET_SECONDS

    async def _end_series_of_lost_camera(self) -> None:
        """The camera went away while a series was open: once the stream is quiet (frames in flight may
        still come) and the camera still away, the series ends ``fail``, its frames not received recorded
        lost ``detector_disconnected`` (a capture's run and the capture end with it)."""
        try:
            since: tuple[float, int] | None = None
            while self.control is not None and not self.control.connected and self.view.series_open():
                if self._acquiring:  # an Acquire here took it over: it watches the series itself
                    return
                since, quiet = self._stream_quiet(since)
                if quiet:
                    log.warning(
                        "the detector went away during a series started at the camera: the series ends"
                    )
                    self.end_open_series("detector_disconnected")
                    self._set_message(
                        "Detector disconnected during the series: it ended (its frames not"
                        " received recorded lost, detector_disconnected)"
                    )
                    return
                await asyncio.sleep(0.1)
        finally:
            self._lost_camera_task = None

    def _show_detector(self) -> None:
        state = self.control.state if self.control is not None else "Disconnected"
        if state not in DETECTOR_STATES:  # not known yet, or outside areaDetector's list
            state = "Error" if str(state).startswith("Unknown(") else "Initializing"
        index = DETECTOR_STATES.index(state)
        self._set("DetectorState_RBV", index)
        self._set("DetectorConnected_RBV", int(bool(self.control is not None and self.control.connected)))

    def _show_static(self) -> None:
        settings = self.view.settings
        geometry = self.view.geometry
        self._set("HDF1:FilePath_RBV", _directory(str(self.view.store_path())))
        self._set("NumImages_RBV", 1)
        self._set("HDF1:NumCapture_RBV", 1)
        self._set("AcquirePeriod_RBV", 0.05)
        self._set("QueueSize_RBV", int(settings.ring.slots))
        self._set("Reduction:Backend_RBV", str(self.view.backend_name)[:39])
        self._set("Reduction:BeamCenterX_RBV", float(geometry.poni2 / geometry.pixel2))
        self._set("Reduction:BeamCenterY_RBV", float(geometry.poni1 / geometry.pixel1))
        self._set("Reduction:Distance_RBV", float(geometry.dist))
        self._set("Reduction:Wavelength_RBV", float(geometry.wavelength))
        self._set("Reduction:Bins_RBV", int(settings.reduction.bins))
        self._set("Reduction:Unit_RBV", settings.reduction.unit)
        poni = settings.reduction.poni_file
        self._set("Reduction:PoniFile_RBV", "" if poni is None else _fit(str(poni)))
        fmt = self.view.frame_format
        for prefix in ("HDF1:", ""):  # the writer's and the driver's sizes and pixel type
            for name, size in (
                ("X_RBV", fmt.width),
                ("Y_RBV", fmt.height),
                ("0_RBV", fmt.width),
                ("1_RBV", fmt.height),
            ):
                self._set(f"{prefix}ArraySize{name}", size)
        self._set("SerialNumber_RBV", socket.gethostname()[:39])
        for name, size in (
            ("X_RBV", fmt.width),
            ("Y_RBV", fmt.height),
            ("0_RBV", fmt.width),
            ("1_RBV", fmt.height),
            ("0", fmt.width),
            ("1", fmt.height),
        ):
            self._set(f"HDF1:ArraySize{name}", size)
        self._set("HDF1:DataType_RBV", _ad_data_type(fmt.dtype))
        self._set("DataType_RBV", _ad_data_type(fmt.dtype))
        for spec in PVS:  # SizeX, SizeY, DataType: the frame's own
            if isinstance(spec.only, str) and f"{spec.name}_RBV" in self.records:
                self._set(f"{spec.name}_RBV", self._frame_only(spec))
        self._set("MaxSizeX_RBV", fmt.width)
        self._set("MaxSizeY_RBV", fmt.height)
        self._set("ArraySize_RBV", fmt.nbytes)
        self._set("HDF1:ArraySize_RBV", fmt.nbytes)
        self._set("TemperatureActual", math.nan)  # not measured
        store = self.view.store_path()
        self._set("HDF1:FilePathExists_RBV", int(store.is_dir() and os.access(store, os.W_OK)))
        for spec in PVS:  # the writer settings the appliance keeps: their readbacks start as they do
            if spec.writable and spec.initial is not None and f"{spec.name}_RBV" in self.records:
                self._set(f"{spec.name}_RBV", spec.initial)
        for name in _CHUNKING:  # one chunk is one whole frame
            self._set(f"{name}_RBV", self._chunking(name))
        dimensions = np.array([fmt.width, fmt.height] + [0] * 8, dtype=np.int16)
        for name in ("HDF1:Dimensions", "HDF1:Dimensions_RBV"):
            self._set(name, dimensions)
        for i in range(len(dimensions)):  # areaDetector's one-element views of Dimensions
            for rbv in ("", "_RBV"):
                self._set(f"HDF1:Dim{i}SA{rbv}", dimensions[i : i + 1])
        slots = int(settings.ring.slots)
        self._set("HDF1:QueueFreeLow", max(1, slots // 10))
        self._set("HDF1:QueueUseHIGH", int(slots * 0.8))
        self._set("HDF1:QueueUseHIHI", int(slots * 0.95))
        height, width = self.view.frame_format.preview_shape
        self._set("Image1:ArraySize0_RBV", width)
        self._set("Image1:ArraySize1_RBV", height)

    async def _refresh_forever(self) -> None:
        while True:
            try:
                status, run_files, refusal, parameters, tally = await asyncio.to_thread(self._sample)
                self._show_status(status, run_files, tally)
                self._show_refusal(refusal)
                self._settle_acquire()
                self._show_reduction(parameters)
                self._show_profile()
            except asyncio.CancelledError:
                raise
            except Exception:  # a view must not die of one bad sample
                log.exception("IOC refresh failed")
            await asyncio.sleep(REFRESH_SECONDS)

    def _sample(
        self,
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None, dict[str, Any], dict[str, Any] | None]:
        """The appliance's status, the files of the current run, why a run would be refused now, the
        next run's reduction parameters and the newest run's mode figures (blocking: run in a thread)."""
        status = self.view.status()
        run_uid = self._run_uid
        current = ((status.get("counts") or {}).get("run") or {}).get("run_uid")
        if current and not self._acquiring and not self._capturing:
            # the current (or last) run, whoever started it (RunUid_RBV names it): its files give
            # NumCaptured_RBV and FullFileName_RBV, not this IOC's own last run's (an outside probe read
            # a new camera-started run's uid beside the count of an earlier scan)
            run_uid = self._file_run(str(current))
        files = self.view.run_files(run_uid) if run_uid is not None else []
        tally = self.view.product_tally()
        return status, files, self.refusal(), self._parameters(), tally

    def _file_run(self, current: str) -> str:
        """The run whose files ``NumCaptured_RBV`` and ``FullFileName_RBV`` show while no acquisition or
        capture of this IOC is going: the current one, or, when it continues a capture cut by a restart,
        that capture (`ApplianceView.capture_continued`, which also gives a capture's file). The resumed
        frames are in the store's own files, not the capture's: counted beside the capture's file, they
        were stream datums past its end (an outside probe: ophyd-async's fly scan through a restart made
        54 datums against a file of 46 frames). (Blocking: in a thread.)"""
        known = self._file_run_of
        if known is None or known[0] != current:
            capture = self.view.capture_continued(current)
            known = self._file_run_of = (current, *(capture or (current, None)))
        return known[1]

    def _settle_acquire(self) -> None:
        """``Acquire`` back to 0 if softioc wrote a client's 1 back after the run's put completed (the reset
        in `_on_acquire` can lose that race under load); never while the record is busy with a put."""
        record = self.records["Acquire"]
        busy = [self.records[name] for name in ("Acquire", "AcquireBusy", "AcquireAbortBusy")]
        if self._acquiring or any(str(r.get_field("PACT")) != "0" for r in busy):
            return
        if record.get_field("VAL") not in ("0", "Done"):
            record.set(0)  # processed, so that monitors see it

    def _show_refusal(self, reason: str | None) -> None:
        """While the store refuses new runs, ``Acquire`` takes no writes (so a put fails at the client:
        pyepics raises ``Write access denied``) and ``StatusMessage_RBV`` says why. A run already going
        can still be aborted: the record is only closed while idle. `_validate` refuses the put too, for
        the moment between a refusal starting and this refresh seeing it (and under another ACF)."""
        # nor while a series goes that a client started at the camera (a capture's, whose own file may
        # push the store past its mark): closing Acquire then processed it with its 0, which stopped the
        # camera and booked the frames it never took "not acquired (Acquire 0)" (an outside probe)
        series_open = getattr(self.view, "series_open", None)  # (a unit test's stand-in view has none)
        going = bool(series_open()) if callable(series_open) else False
        # ... nor while the camera acquires a series whose frames the appliance does not take (a start
        # that waits for the last daemon's held records has no reader): closing or opening Acquire then
        # processed its 0 and stopped the camera mid-series (an outside probe: 973 frames not acquired).
        # Its access is left as it is until the series is over
        if going or (self.control is not None and self.control.state == "Acquire" and not self._acquiring):
            return
        closed = reason is not None and not self._acquiring
        if closed == (self._runs_refused is not None) and (not closed or reason == self._runs_refused):
            return
        self.records["Acquire"].set_field("ASG", ASG_READONLY if closed else ASG_DEFAULT)
        if closed:
            log.warning("new runs refused: %s", reason)
            self._set_message(f"Runs refused: {reason}")
        elif self._runs_refused is not None:
            log.info("new runs accepted again")
            if not self._acquiring:
                self._set_message("Idle")
        self._runs_refused = reason if closed else None

    def _show_status(
        self, status: dict[str, Any], run_files: list[dict[str, Any]], tally: dict[str, Any] | None = None
    ) -> None:
        from softioc import alarm

        receiver = status["receiver"]
        received = int(receiver.get("frames_received", 0))
        self._frames_received = received
        self._set("ArrayCounter_RBV", received - self._counter_offset)
        now = time.monotonic()
        if self._last_rate_sample is not None and now > self._last_rate_sample[0]:
            rate = (received - self._last_rate_sample[1]) / (now - self._last_rate_sample[0])
            self._set("ArrayRate_RBV", max(0.0, rate))
            self._set("HDF1:ArrayRate_RBV", max(0.0, rate))
        self._last_rate_sample = (now, received)
        self._show_acquisition()
        dropped = sum(int(v) for k, v in receiver.items() if k.startswith("frames_dropped"))
        self._set("DroppedArrays_RBV", dropped)
        self._dropped_total = dropped
        shown = dropped - self._dropped_offset  # since the last put to HDF1:DroppedArrays (0 resets it)
        self._set("HDF1:DroppedArrays_RBV", shown)
        if self.records["HDF1:DroppedArrays"].get() != shown:  # as areaDetector's plugin writes it back
            self.records["HDF1:DroppedArrays"].set(shown, process=False)
        self._reordered_total = int(receiver.get("frames_reordered", 0))
        shown = self._reordered_total - self._reordered_offset  # since the last put (0 resets it)
        self._set("HDF1:DisorderedArrays_RBV", shown)
        if self.records["HDF1:DisorderedArrays"].get() != shown:
            self.records["HDF1:DisorderedArrays"].set(shown, process=False)
        frames = status["frames"]
        self._set("LostFrames_RBV", int(frames["lost"]))
        self._set("VetoedFrames_RBV", int(frames.get("vetoed", 0)))
        tally = tally or {}  # the newest run's mode figures; 0 where its mode has none
        self._set("Reduction:Hits_RBV", int(tally.get("hits", 0)))
        self._set("Reduction:HitRate_RBV", 100.0 * float(tally.get("hit_rate", 0.0)))
        self._set("Reduction:SlicesDone_RBV", int(tally.get("slices_done", 0)))
        self._set("LossRecords_RBV", int(frames["loss_records"]))
        ring = status["ring"]
        free = int(ring["free"])
        slots = int(ring["slots"])
        low = free < max(1, slots // 10)
        self._set("QueueFree_RBV", free, severity=alarm.MINOR_ALARM if low else 0, alarm=alarm.LOW_ALARM)
        self._set("HDF1:QueueFree", free)
        self._set("HDF1:QueueUse", slots - free)
        self._set("HDF1:NumQueuedArrays", slots - free)
        self._set("QueueFill_RBV", 100.0 * int(ring["fill"]) / max(1, slots))
        pipeline = status["pipeline"]
        raw, packed = int(pipeline.get("bytes_raw", 0)), int(pipeline.get("bytes_compressed", 0))
        self._set("Codec1:CompFactor_RBV", raw / packed if packed else 0.0)
        # frames a bug lost, those of files that could not be finished (a directory gone read-only), and
        # those a full disk kept from their files (it read "Write OK" beside 126 such; an outside probe)
        failed = (
            int(pipeline.get("frames_failed", 0))
            + int(pipeline.get("frames_file_not_finished", 0))
            + int(pipeline.get("frames_lost_disk_full", 0))
        )
        self._set("HDF1:WriteStatus", int(failed > 0 or self._capture_unfinished))
        self._set(
            "HDF1:WriteMessage", f"{failed} frame(s) failed to store" if failed else self._write_message
        )
        newest = self.view.newest_frame()
        self._set("HDF1:UniqueId_RBV", 0 if newest is None else int(newest))
        self._set("UniqueId_RBV", 0 if newest is None else int(newest))
        self._set("HDF1:ArrayCounter_RBV", received - self._hdf_counter_offset)
        if not self._capturing:  # a capture's own task shows it (Capture_RBV, NumCaptured_RBV, its file)
            self._set("HDF1:Capture_RBV", int(pipeline.get("run") is not None))
        self._set("HDF1:FilesClosed_RBV", int(status["store"]["files_closed"]))
        current = (status.get("counts") or {}).get("run") or {}
        if current.get("run_uid") and not self._acquiring and not self._capturing:
            # the current (or last) run, whoever started it (the detector's own series too); an
            # acquisition or a capture of this IOC shows its run itself
            self._set("RunUid_RBV", _fit(str(current["run_uid"])))
        empty = self._empty_capture
        if empty is not None and empty[0] != (current.get("run_uid") or ""):
            empty = self._empty_capture = None  # a run began since
        if not self._capturing and empty is not None:
            # a capture closed before any frame came: its file (never made) and 0, until a run begins
            # (the refresh showed the previous scan's file and count: a client making datums from them
            # would name another scan's file, an outside probe)
            self._set("HDF1:FullFileName_RBV", _fit(empty[1]))
            self._set("HDF1:NumCaptured_RBV", 0)
        elif not self._capturing and (run_files or current.get("run_uid")):
            # frames of the run in closed files: 0 for a run whose first file is still open
            self._set("HDF1:NumCaptured_RBV", sum(int(f["n_frames"]) for f in run_files))
        if not self._capturing and empty is None:
            data_files = [f for f in run_files if str(f["path"]).endswith(".h5")]  # not the run's documents
            shown = self._file_run_of
            if data_files:
                self._set("HDF1:FullFileName_RBV", _fit(str(data_files[-1]["path"])))
            elif shown is not None and shown[0] == current.get("run_uid") and shown[2]:
                # a capture a kill cut: its file was never finished (its .part stays, `edge where` names
                # it), but it is still the file its StreamResource names (an outside probe read "")
                self._set("HDF1:FullFileName_RBV", _fit(shown[2]))
        ledger = status["ledger"]
        upstream = status["upstream"]
        connected = [c for c in upstream.get("consumers", []) if c.get("connected")]
        pending = int(ledger.get("bytes_pending", 0))
        state = 0 if not connected else (2 if pending else 1)
        self._set("Upstream:State_RBV", state)
        self._set("Upstream:PendingBytes_RBV", float(pending))
        acked = [int(c["last_chunk_acked"] or 0) for c in ledger.get("consumers", [])]
        self._set("Upstream:LastAckedSeq_RBV", max(acked, default=0))
        self._set("Upstream:Consumers_RBV", len(connected))
        names = ",".join(str(c["consumer"]) for c in upstream.get("consumers", []))
        self._set("Upstream:ConsumerNames_RBV", _fit(names))
        disk = status["disk"]
        percent = float(disk["percent"])
        self._set("Disk:FreeBytes_RBV", float(disk["free"]))
        self._set("Disk:UsedPercent_RBV", percent)
        self._set("Disk:RetentionState_RBV", _retention_state(status.get("retention") or {}))

    def _show_camera_series(self, starts: int, received: int) -> None:
        """``StatusMessage_RBV`` for a series this appliance's Acquire did not start (a client at the
        camera's own PVs, as during a capture): said once as it starts and once as it ends, so that the
        message is not the last Acquire's any more (messages of puts in between stay until then)."""
        if self._acquiring or starts <= self._own_series:  # none since this appliance's last Acquire's
            return
        series_open = getattr(self.view, "series_open", None)
        going = bool(series_open()) if series_open is not None else False
        if self._camera_series_shown == (starts, going):
            return
        if going:
            self._set_message("Acquiring: a series started at the camera")
        else:
            self._set_message(f"Acquisition started at the camera ended: {received} frames received")
        self._camera_series_shown = (starts, going)

    def _series_frames(self) -> tuple[int, int]:
        frames = getattr(self.view, "series_frames", None)  # (a unit test's stand-in view has none)
        return (0, 0) if frames is None else frames()  # type: ignore[no-any-return]

    def _show_acquisition(self) -> None:
        """``NumImagesCounter_RBV``, ``NumExposuresCounter_RBV`` and ``TimeRemaining_RBV`` of the current
        (or last) acquisition: the frames received in the detector's newest series, whoever started it
        (this appliance's Acquire, or a client at the camera's own PVs, as with a capture), and 0 from an
        Acquire here until its series starts. (Counting from this appliance's last Acquire added every
        camera-driven acquisition after it to the count.)"""
        starts, received = self._series_frames()
        taken = 0 if self._acquiring and starts == self._acquisition_series else received
        self._show_camera_series(starts, received)
        self._set("NumImagesCounter_RBV", taken)
        self._set("NumExposuresCounter_RBV", min(1, taken))
        left = max(0, int(self.records["NumImages_RBV"].get()) - taken) if self._acquiring else 0
        self._set("TimeRemaining_RBV", left * float(self.records["AcquirePeriod_RBV"].get()))

    def _show_profile(self) -> None:
        latest = self.view.latest_profile_arrays()
        if latest is not None:
            radial, profile, frames = latest
            self._set("Profile1:Radial_RBV", np.asarray(radial, dtype=np.float64))
            self._set("Profile1:Intensity_RBV", np.asarray(profile, dtype=np.float64))
            self._set("Profile1:UniqueId_RBV", frames)
        newest = self.view.latest_preview_frame()
        if newest is not None and newest[1].get("received_at"):
            received_at = float(newest[1]["received_at"])
            self._set("HDF1:TimeStamp_RBV", received_at)
            # as an EPICS time stamp (seconds since 1990-01-01 UTC, and nanoseconds)
            seconds, nanoseconds = divmod(round((received_at - POSIX_TIME_AT_EPICS_EPOCH) * 1e9), 10**9)
            self._set("HDF1:EpicsTSSec_RBV", int(seconds))
            self._set("HDF1:EpicsTSNsec_RBV", int(nanoseconds))
        latest_preview = self.view.latest_preview_pixels()
        if latest_preview is not None:
            preview = np.clip(latest_preview, 0, 32767).astype(np.int16).ravel()
            self._set("Image1:ArrayData", preview)


def _ad_data_type(dtype: str) -> int:
    """areaDetector's ``DataType`` index of a NumPy dtype name (UInt16 for one it has no name for)."""
    names = {"int8": "Int8", "uint8": "UInt8", "int16": "Int16", "uint16": "UInt16", "int32": "Int32"}
    names.update({"uint32": "UInt32", "float32": "Float32", "float64": "Float64"})
    return AD_DATA_TYPES.index(names.get(dtype, "UInt16"))
