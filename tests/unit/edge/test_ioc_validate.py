"""The appliance IOC's put checks that depend on its state, without softioc (stand-in records)."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge.config import EpicsSettings, ReductionSettings
from edge.ioc import ApplianceIOC
from edge.pv_input import ALARM_SOFT
from edge.pv_table import PVS
from edge.reduction_control import ReductionControl

BY_NAME = {spec.name: spec for spec in PVS}


class _Record:
    def __init__(self) -> None:
        self.value: Any = None

    def set(self, value: Any, **_: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


class _Device:
    """What softioc hands ``validate``: the record's device support, whose alarm the IOC raises."""

    def __init__(self) -> None:
        self._record = SimpleNamespace(NSEV=0, NSTA=0)

    def process_severity(self, record: Any, severity: int, alarm: int) -> None:
        if severity > record.NSEV:
            record.NSEV, record.NSTA = severity, alarm


class _Setup:
    def __init__(self) -> None:
        self.open_run: str | None = None
        self.refusal: str | None = None
        self.reduction = ReductionControl(
            ReductionSettings(), open_run=lambda: self.open_run, frame_shape=(256, 512)
        )
        view = SimpleNamespace(
            frame_format=SimpleNamespace(shape=(256, 512)), store_path=lambda: Path("/data/store")
        )
        self.ioc = ApplianceIOC(
            view,  # type: ignore[arg-type]
            EpicsSettings(),
            loop=None,  # type: ignore[arg-type]
            end_open_series=lambda reason: None,
            reduction=self.reduction,
            refusal=lambda: self.refusal,
        )
        self.ioc.records = {spec.name: _Record() for spec in PVS}

    def put(self, name: str, value: Any) -> tuple[bool, _Device]:
        device = _Device()
        return self.ioc._validate(BY_NAME[name], device, value), device

    @property
    def message(self) -> str:
        return str(self.ioc.records["StatusMessage_RBV"].value)


@pytest.fixture
def setup() -> _Setup:
    return _Setup()


def test_acquire_is_refused_while_the_store_refuses_runs(setup: _Setup) -> None:
    assert setup.put("Acquire", 1)[0]
    setup.refusal = "local store above its high-water mark (90%) with data not yet verified upstream"
    taken, device = setup.put("Acquire", 1)
    assert not taken and (device._record.NSEV, device._record.NSTA) == (1, ALARM_SOFT)
    assert setup.message.startswith(
        "Refused Acquire = 1 (Acquire): run refused: local store above its high-water mark"
    )
    assert setup.put("Acquire", 0)[0]  # an abort is never refused


def test_a_capture_is_not_opened_while_the_store_refuses_runs(setup: _Setup) -> None:
    """An outside probe: Capture 1 was taken in silence with runs refused; its frames were refused, and
    its close blamed the stream's endpoint."""
    setup.refusal = "local store above its high-water mark (90%) with data not yet verified upstream"
    taken, device = setup.put("HDF1:Capture", 1)
    assert not taken and (device._record.NSEV, device._record.NSTA) == (1, ALARM_SOFT)
    assert "capture not opened: runs are refused: local store above its high-water mark" in setup.message
    assert setup.put("HDF1:Capture", 0)[0]  # closing is never refused


def test_mode_between_runs_is_applied_and_during_a_run_refused(setup: _Setup) -> None:
    assert setup.put("Mode", 3)[0]
    assert setup.reduction.current().mode == "tomo"
    setup.open_run = "run-1"
    taken, device = setup.put("Mode", 0)
    assert not taken and device._record.NSEV == 1
    assert "run run-1 is open" in setup.message
    assert setup.reduction.current().mode == "tomo"
    assert not setup.put("Mode", 7)[0] and "index 7" in setup.message


def test_reduction_parameters_go_through_the_control(setup: _Setup) -> None:
    assert setup.put("Reduction:Roi", "0:16:0:16;100:120:30:90")[0]
    assert setup.reduction.parameters()["roi"] == [[0, 16, 0, 16], [100, 120, 30, 90]]
    assert not setup.put("Reduction:Roi", "0:999:0:16")[0] and "256x512 frame" in setup.message
    assert not setup.put("Reduction:Roi", "nonsense")[0]
    assert setup.put("Reduction:TomoSlices", "10,200")[0]
    assert setup.reduction.parameters()["tomo"]["slices"] == [10, 200]
    assert not setup.put("Reduction:TomoSlices", "300")[0]  # beyond the 256 rows
    assert setup.put("Reduction:TomoCenter", math.nan)[0]
    assert setup.reduction.parameters()["tomo"]["center"] is None
    assert setup.put("Reduction:TomoCenter", 255.5)[0]
    assert setup.reduction.parameters()["tomo"]["center"] == 255.5
    # the angles of projections that come without one (an EPICS-driven scan), NaN: none given
    assert setup.put("Reduction:TomoAngleStart", -90.0)[0] and setup.put("Reduction:TomoAngleStep", 0.5)[0]
    tomo = setup.reduction.parameters()["tomo"]
    assert (tomo["angle_start"], tomo["angle_step"]) == (-90.0, 0.5)
    assert setup.put("Reduction:TomoAngleStep", math.nan)[0]
    assert setup.reduction.parameters()["tomo"]["angle_step"] is None
    assert not setup.put("Reduction:TomoAngleStep", 400.0)[0]  # beyond a turn
    assert setup.put("Reduction:MinPeaks", 3)[0] and setup.reduction.parameters()["serial"]["min_peaks"] == 3
    assert not setup.put("Reduction:MinSnr", 0.0)[0]  # gt=0: the settings model refuses the bound
    setup.open_run = "run-2"
    assert not setup.put("Reduction:MinPeaks", 4)[0] and "is open" in setup.message


def test_store_path_is_fixed(setup: _Setup) -> None:
    assert setup.put("HDF1:FilePath", "/data/store/")[0]
    assert not setup.put("HDF1:FilePath", "/elsewhere")[0] and "store.path" in setup.message


def test_a_long_message_fits_the_record(setup: _Setup) -> None:
    setup.put("HDF1:FileName", "é" * 200)  # refused; the message quoting it stays within 255 bytes
    assert len(setup.message.encode()) <= 255


class _Camera:
    """A connected camera whose acquisition never ends by itself (it waits for ``stop``)."""

    connected = True

    def __init__(self) -> None:
        self.stopped = False
        self._done: asyncio.Future[None] | None = None

    async def arm(self, *_: Any, **__: Any) -> None:
        pass

    async def start(self) -> asyncio.Future[None]:
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    async def stop(self) -> None:
        self.stopped = True
        assert self._done is not None
        self._done.set_result(None)


def test_a_failure_while_the_camera_acquires_stops_the_camera(setup: _Setup) -> None:
    # a failure of the appliance's own while it follows a run (here: its view of the ledger raising) left
    # the camera acquiring, sending frames no run waited for; the put completes with the failure said
    for name, value in (("NumImages_RBV", 10), ("AcquirePeriod_RBV", 0.1), ("AcquireTime_RBV", 0.0)):
        setup.ioc.records[name].value = value
    for name in ("TriggerMode_RBV", "FrameType_RBV"):
        setup.ioc.records[name].value = 0
    for record in setup.ioc.records.values():
        record.get = lambda record=record: record.value  # type: ignore[attr-defined]
    camera = _Camera()
    setup.ioc.control = camera

    def broken() -> Any:
        raise OSError("ledger unreadable")

    setup.ioc.view.progress = broken
    setup.ioc.view.writer_run = lambda: (None, 0)
    with pytest.raises(OSError, match="ledger unreadable"):
        asyncio.run(setup.ioc._acquisition())
    assert camera.stopped


def test_create_directory_follows_area_detector_s_depth_rule(tmp_path: Path) -> None:
    """areaDetector's CreateDirectory: 0 makes nothing; -N at most N directories at the path's end; +N
    the path's first N directories from the root must exist already."""
    from edge.ioc import make_directory

    base = tmp_path / "w"
    base.mkdir()
    assert "CreateDirectory 0" in (make_directory(base / "a", 0) or "")
    assert "2 directories are missing; CreateDirectory -1 creates at most 1" in (
        make_directory(base / "a" / "b", -1) or ""
    )
    assert not (base / "a").exists()
    assert make_directory(base / "a" / "b", -2) is None and (base / "a" / "b").is_dir()
    levels = len(base.parts) - 1
    assert f"is {levels} deep" in (make_directory(base / "c", levels + 1) or "")
    assert make_directory(base / "c" / "d", levels) is None and (base / "c" / "d").is_dir()
    assert make_directory(base / "c", -1) is None  # there already
    (base / "f").write_text("")
    assert "is not a directory" in (make_directory(base / "f" / "g", -5) or "")


def test_a_file_path_put_makes_its_directory_when_create_directory_says_so(
    setup: _Setup, tmp_path: Path
) -> None:
    """Stock ophyd-async puts CreateDirectory, then FilePath, then reads FilePathExists_RBV: areaDetector
    makes the directory when FilePath is processed (an outside probe: prepare failed, "doesn't exist")."""
    records = setup.ioc.records
    records["HDF1:CreateDirectory"].value = 0
    setup.ioc._on_setpoint("HDF1:FilePath", str(tmp_path / "new") + "/")
    assert records["HDF1:FilePathExists_RBV"].value == 0 and not (tmp_path / "new").exists()
    # and why, at once (an outside probe: a client checking FilePathExists_RBV saw no reason anywhere)
    said = str(records["HDF1:WriteMessage"].value)
    assert "new/ does not exist (CreateDirectory 0 makes none)" in said, said
    (tmp_path / "locked").mkdir(mode=0o500)
    if not os.access(tmp_path / "locked", os.W_OK):  # (root may write anywhere)
        setup.ioc._on_setpoint("HDF1:FilePath", str(tmp_path / "locked") + "/")
        assert "locked/ is not a writable directory" in str(records["HDF1:WriteMessage"].value)
    # CreateDirectory put since: the reason no longer says it makes none (an outside probe read it stale)
    setup.ioc._on_setpoint("HDF1:FilePath", str(tmp_path / "new") + "/")
    setup.ioc._on_setpoint("HDF1:CreateDirectory", -1)
    said = str(records["HDF1:WriteMessage"].value)
    assert said.endswith("new/ does not exist: CreateDirectory -1 makes it at Capture 1"), said
    records["HDF1:CreateDirectory"].value = -1
    setup.ioc._on_setpoint("HDF1:FilePath", str(tmp_path / "new") + "/")
    assert records["HDF1:FilePathExists_RBV"].value == 1 and (tmp_path / "new").is_dir()
    setup.ioc._on_setpoint("HDF1:FilePath", str(tmp_path / "x" / "y") + "/")  # two missing: refused
    assert records["HDF1:FilePathExists_RBV"].value == 0 and not (tmp_path / "x").exists()
    assert "FilePath not created" in str(records["HDF1:WriteMessage"].value)


def test_a_restored_num_capture_keeps_its_own_value_beside_num_images(setup: _Setup) -> None:
    """NumImages sets NumCapture when it is put; restored after a restart it overwrote the saved
    NumCapture's setpoint, which then read 7 beside its readback's 5 (an outside probe)."""
    records = setup.ioc.records
    setup.ioc._restored = {"HDF1:NumCapture": 5, "NumImages": 7}
    setup.ioc._show_restored()
    assert records["NumImages_RBV"].value == 7
    assert (records["HDF1:NumCapture"].value, records["HDF1:NumCapture_RBV"].value) == (5, 5)


class _AcquireRecord(_Record):
    """``Acquire``, keeping the access security groups the IOC gave it (``ASG``), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.asg: list[str] = []

    def set_field(self, name: str, value: str) -> None:
        self.asg.append(value)


def test_acquire_is_not_closed_while_a_series_started_at_the_camera_goes(setup: _Setup) -> None:
    """An outside probe: a capture's own file pushed the store past its high-water mark while the camera
    (started at its own prefix) acquired: closing Acquire processed it with its 0, which stopped the
    camera and booked 131 frames "not acquired (Acquire 0)". Acquire closes once the series has ended."""

    acquire = setup.ioc.records["Acquire"] = _AcquireRecord()
    setup.ioc._set_message = lambda message: None  # type: ignore[method-assign]
    going = [True]
    setup.ioc.view.series_open = lambda: going[0]
    setup.ioc._show_refusal("local store above its high-water mark")
    assert acquire.asg == []  # left open while the camera's series goes
    going[0] = False
    setup.ioc._show_refusal("local store above its high-water mark")
    assert acquire.asg == ["READONLY"]  # closed (read-only) once it has ended


def test_acquire_s_access_is_left_alone_while_the_camera_acquires_with_no_series_taken(setup: _Setup) -> None:
    """An outside chaos probe: a start that waited for the last daemon's held ledger records (a full
    disk) has no reader, so no series was open while the camera, started before the crash, went on:
    closing Acquire for the refusal, and opening it again once the refusal ended, processed it with its 0,
    which stopped the camera (973 frames, then 597, booked not acquired). While the camera acquires,
    Acquire's access is left as it is; it follows the refusal once the camera is idle."""

    acquire = setup.ioc.records["Acquire"] = _AcquireRecord()
    setup.ioc._set_message = lambda message: None  # type: ignore[method-assign]
    setup.ioc.view.series_open = lambda: False
    camera = SimpleNamespace(state="Acquire")
    setup.ioc.control = camera  # type: ignore[assignment]
    setup.ioc._show_refusal("3 ledger record(s) the last daemon held back ... are not written yet")
    assert acquire.asg == []  # not closed while the camera acquires
    camera.state = "Idle"
    setup.ioc._show_refusal("3 ledger record(s) the last daemon held back ... are not written yet")
    assert acquire.asg == ["READONLY"]
    camera.state = "Acquire"  # (a client at the camera's own prefix started it meanwhile)
    setup.ioc._show_refusal(None)
    assert acquire.asg == ["READONLY"]  # not opened either while it acquires: opening processed the 0
    camera.state = "Idle"
    setup.ioc._show_refusal(None)
    assert acquire.asg == ["READONLY", "DEFAULT"]


def test_a_mode_put_that_changes_nothing_leaves_the_message_standing(setup: _Setup) -> None:
    """An outside probe: a Mode put queued behind another's completion (kernels compiling) was taken after
    the acquisition it preceded had ended, and its "serial mode ready" replaced "Acquisition completed".
    A put of the value in force says nothing; one that changes the mode says it is ready."""
    setup.ioc.view.kernels_loading = lambda: False  # type: ignore[attr-defined]
    assert setup.put("Mode", 2)[0]  # (softioc: validate takes the value, then on_update completes it)
    asyncio.run(setup.ioc._on_reduction_put("Mode", 2))
    assert setup.reduction.current().mode == "serial" and setup.message == "serial mode ready"
    setup.ioc._set_message("Acquisition completed: 20 frames stored")
    assert setup.put("Mode", 2)[0]
    asyncio.run(setup.ioc._on_reduction_put("Mode", 2))
    assert setup.message == "Acquisition completed: 20 frames stored"
