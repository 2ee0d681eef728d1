"""System tests: the field's own tools drive the appliance without glue (issue 13, acceptance 1).

Real processes on 127.0.0.1, as in ``test_epics_control``: ``edge sim --ioc`` (the simulated camera,
``cam1:``) and ``edge run`` (the daemon and its IOC, ``HDF1:``). This process is the beamline: a Bluesky
RunEngine with stock ophyd-async (``adcore.ADBaseIO`` on the simulator's camera, ``ADWriterFactory.hdf``
on the appliance's ``HDF1:``), the shipped `edge.bluesky.EdgeDetector`, classic ophyd's ``HDF5Plugin``,
and pyepics for ``caput -c``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ophyd  # noqa: F401  (before pyepics starts libca: one CA library for ophyd, aioca and pyepics)
import pytest
from test_epics_control import ACF, Stack, _epics, wait_until

pytestmark = pytest.mark.timeout(180)

POINTS = 3
_ENGINES: list[Any] = []


@pytest.fixture
def stack(tmp_path: Path, ca_port: int, edge_ca_port: int) -> Iterator[Stack]:
    """Simulator and daemon (ACF loaded), running; both stopped at teardown."""
    s = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    try:
        s.start_sim()
        s.start_daemon()
        yield s
    finally:
        s.stop()


def _frames(path: Path) -> tuple[int, ...]:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle-LZ4 filter)

    with h5py.File(path, "r") as h5:
        data = h5["/entry/data/data"]
        assert int(data[data.shape[0] - 1].sum()) > 0  # the chunks decompress to a real frame
        return tuple(data.shape)


def _count(detector: Any) -> list[tuple[str, dict[str, Any]]]:
    """``bp.count([detector], num=POINTS)`` in a fresh RunEngine; its documents."""
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd_async.plan_stubs import ensure_connected

    if not _ENGINES:  # one RunEngine (and event loop) for the session: CA channels live on its loop
        _ENGINES.append(RunEngine({}, call_returns_result=True))
    engine = _ENGINES[0]
    docs: list[tuple[str, dict[str, Any]]] = []
    token = engine.subscribe(lambda name, doc: docs.append((name, doc)))
    try:
        engine(ensure_connected(detector, timeout=10))  # every signal of the stock classes, or it raises
        engine(bp.count([detector], num=POINTS))
    finally:
        engine.unsubscribe(token)
    return docs


def _check_resources(stack: Stack, docs: list[tuple[str, dict[str, Any]]], capture_dir: Path) -> str:
    """The plan's stream resources point at the file the appliance wrote, with as many frames as the
    stream data say; that file is the capture's whole run (no rollover). Returns the run's uid."""
    epics = _epics()
    p = stack.prefix
    resources = [doc for name, doc in docs if name == "stream_resource"]
    data = [
        doc for name, doc in docs if name == "stream_datum" and doc["stream_resource"] == resources[0]["uid"]
    ]
    events = [doc for name, doc in docs if name == "event"]
    assert len(resources) == 1 and len(events) == POINTS
    resource = resources[0]
    assert (
        resource["mimetype"] == "application/x-hdf5"
        and resource["parameters"]["dataset"] == "/entry/data/data"
    )
    path = Path(resource["uri"].removeprefix("file://localhost").removeprefix("file://"))
    assert path.parent == capture_dir
    wait_until(lambda: epics.caget(p + "HDF1:Capture_RBV") == 0, 10, "Capture_RBV back to 0")
    wait_until(path.exists, 10, f"{path} written")
    declared = sum(d["indices"]["stop"] - d["indices"]["start"] for d in data)
    shape = _frames(path)
    assert declared == POINTS == shape[0], (declared, shape)
    assert epics.caget(p + "HDF1:NumCaptured_RBV") == POINTS
    assert epics.caget(p + "HDF1:FullFileName_RBV", as_string=True) == str(path)
    run_uid = epics.caget(p + "RunUid_RBV", as_string=True)
    run = stack.run(run_uid)
    files = [f["path"] for f in run["files"] if f["path"].endswith(".h5")]
    assert files == [str(path)], files  # the capture is the run: one file across the acquisitions
    assert run["exit_status"] == "success" and run["losses"] == []
    return run_uid


def test_bluesky_count_with_stock_ophyd_async(stack: Stack) -> None:
    """Acceptance 1: ``bp.count`` on stock adcore (driver on ``cam1:``, ``ADHDFWriter`` on ``HDF1:``),
    then on the shipped `EdgeDetector`; then classic ophyd's ``HDF5Plugin`` stages and unstages."""
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider
    from ophyd_async.epics import adcore
    from ophyd_async.epics.adsimdetector import SimDetectorTriggerLogic

    from edge.bluesky import EdgeDetector

    # a directory that does not exist yet: the provider's create_dir_depth goes to CreateDirectory, and
    # the FilePath put makes it, as areaDetector does (an outside probe: prepare failed, "doesn't exist")
    capture_dir = stack.tmp_path / "store" / "bluesky"
    provider = StaticPathProvider(UUIDFilenameProvider(), capture_dir, create_dir_depth=-1)
    driver = adcore.ADBaseIO(stack.cam_prefix)
    stock = adcore.AreaDetector(
        driver,
        stack.prefix,
        adcore.ADWriterFactory.hdf(provider),
        acquire_logic=adcore.ADAcquireLogic(driver),
        trigger_logic=SimDetectorTriggerLogic(driver),
        name="stock",
    )
    first = _check_resources(stack, _count(stock), capture_dir)

    shipped = EdgeDetector(stack.cam_prefix.removesuffix("cam1:"), stack.prefix, provider, name="edge")
    docs = _count(shipped)
    second = _check_resources(stack, docs, capture_dir)
    assert second != first
    config = next(doc for name, doc in docs if name == "descriptor")["configuration"]["edge"]["data"]
    assert config["edge-appliance-run_uid"] == second  # the descriptor names the appliance's run
    from bluesky.run_engine import call_in_bluesky_event_loop

    status = shipped.appliance  # the appliance's counters, read as a plan would (a powder run: no hits)
    assert call_in_bluesky_event_loop(status.lost_frames.get_value()) == 0
    assert call_in_bluesky_event_loop(status.vetoed_frames.get_value()) == 0
    assert call_in_bluesky_event_loop(status.hit_rate.get_value()) == 0.0

    # the appliance's own prefix as the areaDetector driver: its Acquire drives the detector
    own_driver = adcore.ADBaseIO(stack.prefix)
    own = adcore.AreaDetector(
        own_driver,
        stack.prefix,
        adcore.ADWriterFactory.hdf(provider),
        acquire_logic=adcore.ADAcquireLogic(own_driver),
        trigger_logic=SimDetectorTriggerLogic(own_driver),
        name="own",
    )
    third = _check_resources(stack, _count(own), capture_dir)
    assert third not in (first, second)
    # the setpoints' ranges as ophyd-async describes them: from the read PV, X_RBV (an outside probe
    # found no limits there, the range on X alone)
    from edge.pv_table import MAX_IMAGES, MAX_PERIOD_S

    for signal, (low, high) in (
        (own_driver.num_images, (1, MAX_IMAGES)),
        (own_driver.acquire_period, (0.0, MAX_PERIOD_S)),
    ):
        described = next(iter(call_in_bluesky_event_loop(signal.describe()).values()))
        limits = described.get("limits", {})
        assert limits.get("control") == {"low": low, "high": high}, described
        assert limits.get("display") == {"low": low, "high": high}, described

    # classic ophyd: the whole HDF5Plugin stage signature (enable, blocking callbacks, plugin type)
    from ophyd.areadetector.plugins import HDF5Plugin

    plugin = HDF5Plugin(stack.prefix + "HDF1:", name="hdf1")
    plugin.wait_for_connection(all_signals=True, timeout=20)  # every PV the class declares
    assert plugin.plugin_type.get() == "NDFileHDF5"
    plugin.stage()
    assert plugin.enable.get() == "Enable" and plugin.blocking_callbacks.get(as_string=True) == "Yes"
    plugin.unstage()
    assert plugin.blocking_callbacks.get(as_string=True) == "No"


def test_a_fly_scan_with_stock_ophyd_async(stack: Stack) -> None:
    """A fly scan as a beamline writes one (stage, prepare for 12 frames, kickoff, collect while
    completing), twice: each time one file of 12 frames, its stream resource and data saying so. (An
    outside probe's plan without ``wait=True`` on stage raced prepare: docs/bluesky.md shows the plan.)"""
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from ophyd_async.core import DetectorTrigger, StaticPathProvider, TriggerInfo, UUIDFilenameProvider
    from ophyd_async.epics import adcore
    from ophyd_async.epics.adsimdetector import SimDetectorTriggerLogic
    from ophyd_async.plan_stubs import ensure_connected

    capture_dir = stack.tmp_path / "store" / "fly"
    capture_dir.mkdir()
    driver = adcore.ADBaseIO(stack.cam_prefix)
    det = adcore.AreaDetector(
        driver,
        stack.prefix,
        adcore.ADWriterFactory.hdf(StaticPathProvider(UUIDFilenameProvider(), capture_dir)),
        acquire_logic=adcore.ADAcquireLogic(driver),
        trigger_logic=SimDetectorTriggerLogic(driver),
        name="fly",
    )

    def fly(frames: int, det: Any = det):  # type: ignore[no-untyped-def]
        yield from bps.stage(det, wait=True)
        yield from bps.open_run()
        info = TriggerInfo(number_of_events=frames, trigger=DetectorTrigger.INTERNAL, livetime=0.01)
        yield from bps.prepare(det, info, wait=True)
        yield from bps.declare_stream(det, name="primary", collect=True)
        yield from bps.kickoff(det, wait=True)
        yield from bps.collect_while_completing(flyers=[det], dets=[det], flush_period=0.5)
        yield from bps.close_run()
        yield from bps.unstage(det, wait=True)

    if not _ENGINES:
        _ENGINES.append(RunEngine({}, call_returns_result=True))
    engine = _ENGINES[0]
    engine(ensure_connected(det, timeout=10))
    for _ in range(2):
        docs: list[tuple[str, dict[str, Any]]] = []
        token = engine.subscribe(lambda name, doc: docs.append((name, doc)))  # noqa: B023
        try:
            engine(fly(12))
            message = _epics().caget(stack.prefix + "StatusMessage_RBV", as_string=True, use_monitor=False)
        finally:
            engine.unsubscribe(token)
        (resource,) = [doc for name, doc in docs if name == "stream_resource"]
        data = [doc for name, doc in docs if name == "stream_datum"]
        assert sum(d["indices"]["stop"] - d["indices"]["start"] for d in data) == 12
        path = Path(resource["uri"].removeprefix("file://localhost"))
        assert path.parent == capture_dir and _frames(path)[0] == 12
        epics = _epics()
        run = stack.run(epics.caget(stack.prefix + "RunUid_RBV", as_string=True))
        assert run["exit_status"] == "success" and run["frames_stored"] == 12 and run["losses"] == []
        # the plan is over: the message said so at once, not at the next refresh (an outside probe's plan
        # logged "Acquiring: a series started at the camera" as its end)
        assert "ended: 12 frames received" in message, message

    # the shipped EdgeDetector's descriptor names the run its frames are in: read between the Capture 1
    # and the first frame, it named the previous run (an outside probe, every fly scan)
    from ophyd_async.core import StaticPathProvider as Provider

    from edge.bluesky import EdgeDetector

    shipped = EdgeDetector(
        stack.cam_prefix.removesuffix("cam1:"),
        stack.prefix,
        Provider(UUIDFilenameProvider(), capture_dir),
        name="edge",
    )
    engine(ensure_connected(shipped, timeout=10))
    docs = []
    token = engine.subscribe(lambda name, doc: docs.append((name, doc)))
    try:
        engine(fly(5, shipped))
    finally:
        engine.unsubscribe(token)
    (resource,) = [doc for name, doc in docs if name == "stream_resource"]
    path = Path(resource["uri"].removeprefix("file://localhost"))
    config = next(doc for name, doc in docs if name == "descriptor")["configuration"]["edge"]["data"]
    run = stack.run(config["edge-appliance-run_uid"])
    assert [f["path"] for f in run["files"] if f["path"].endswith(".h5")] == [str(path)], run["files"]


def test_capture_spans_acquisitions_in_one_file(stack: Stack) -> None:
    """Capture 1, two runs of the appliance's own Acquire (3 frames each), Capture 0: one file, named by
    FileTemplate with FileNumber (then incremented), holding the 6 frames numbered on across both."""
    import h5py
    import hdf5plugin  # noqa: F401

    epics = _epics()
    p = stack.prefix

    def put(name: str, value: Any) -> None:
        assert epics.caput(p + name, value, wait=True, timeout=30) == 1, name

    directory = stack.tmp_path / "store" / "caps"  # does not exist yet: CreateDirectory makes it
    put("HDF1:FilePath", str(directory))
    assert epics.caget(p + "HDF1:FilePathExists_RBV") == 0
    put("HDF1:CreateDirectory", 1)
    put("HDF1:FileName", "scan")
    put("HDF1:FileTemplate", "%s%s_%3.3d.h5")
    put("HDF1:FileNumber", 7)
    put("HDF1:AutoIncrement", 1)
    put("HDF1:NumCapture", 0)
    put("HDF1:Capture", 1)
    assert epics.caget(p + "HDF1:Capture_RBV") == 1
    expected = directory / "scan_007.h5"
    assert epics.caget(p + "HDF1:FullFileName_RBV", as_string=True) == str(expected)
    put("NumImages", 3)
    put("AcquirePeriod", 0.02)
    put("HDF1:NumCapture", 0)  # (NumImages sets NumCapture, as before)
    for taken in (3, 6):
        put("Acquire", 1)
        wait_until(
            lambda taken=taken: epics.caget(p + "HDF1:NumCaptured_RBV") == taken, 10, f"{taken} captured"
        )
        assert epics.caget(p + "HDF1:Capture_RBV") == 1
    put("HDF1:Capture", 0)
    # Capture_RBV follows once the file is finished, checksummed and registered (about a second on a quiet
    # machine; the deadline is generous because this is a correctness test, not a timing one)
    wait_until(
        lambda: epics.caget(p + "HDF1:Capture_RBV") == 0, 15.0, "Capture_RBV 0 once the file is closed"
    )
    assert expected.exists() and not list(directory.glob("*.part"))
    with h5py.File(expected, "r") as h5:
        assert h5["/entry/data/data"].shape == (6, 256, 256)
        assert list(h5["/entry/data/frame_number"][()]) == [0, 1, 2, 3, 4, 5]
    assert epics.caget(p + "HDF1:FileNumber_RBV") == 8
    run = stack.run(epics.caget(p + "RunUid_RBV", as_string=True))
    assert run["exit_status"] == "success" and run["frames_stored"] == 6 and run["losses"] == []
    # where each detector series lies in the run: a series a restart cuts is found in it (and not taken
    # for a new series whose earlier frames no run holds)
    config = run["config"] if isinstance(run["config"], dict) else json.loads(run["config"])
    assert sorted(config["capture_series"].values()) == [0, 3], config.get("capture_series")
    # the next Capture 1 would overwrite nothing: FileNumber moved on; an existing file is refused
    put("HDF1:FileNumber", 7)
    epics.caput(p + "HDF1:Capture", 1, wait=True, timeout=5)
    assert epics.caget(p + "HDF1:Capture_RBV") == 0
    assert "exists" in epics.caget(p + "HDF1:WriteMessage", as_string=True)
    # ... and so is one whose .part a crash left (an outside probe: the next capture of that name
    # truncated it, the only copy of the crashed run's frames, without a word)
    leftover = directory / "scan_020.h5.part"
    leftover.write_bytes(b"frames of a capture a crash cut short")
    put("HDF1:FileNumber", 20)
    epics.caput(p + "HDF1:Capture", 1, wait=True, timeout=5)
    assert epics.caget(p + "HDF1:Capture_RBV") == 0
    assert "crash" in epics.caget(p + "HDF1:WriteMessage", as_string=True)
    assert leftover.read_bytes() == b"frames of a capture a crash cut short"
    # at a long's largest value FileNumber stays (an EPICS long would wrap to -2147483648), and says so
    put("HDF1:FileNumber", 2**31 - 1)
    put("HDF1:Capture", 1)
    put("Acquire", 1)
    put("HDF1:Capture", 0)
    wait_until(lambda: epics.caget(p + "HDF1:Capture_RBV") == 0, 15.0, "the capture at the largest number")
    assert (directory / "scan_2147483647.h5").exists()
    assert epics.caget(p + "HDF1:FileNumber_RBV") == 2**31 - 1 == epics.caget(p + "HDF1:FileNumber")
    assert "stays at 2147483647" in epics.caget(p + "HDF1:WriteMessage", as_string=True)


def test_capture_outside_store_roots_is_refused(stack: Stack) -> None:
    """A FilePath outside ``store.roots`` is refused with a clear WriteMessage and nothing is written."""
    epics = _epics()
    p = stack.prefix
    outside = stack.tmp_path / "outside"
    outside.mkdir()
    epics.caput(p + "HDF1:FilePath", str(outside) + "/", wait=True, timeout=5)
    message = epics.caget(p + "HDF1:WriteMessage", as_string=True)
    assert "outside store.roots" in message, message
    assert epics.caget(p + "HDF1:FilePathExists_RBV") == 0
    assert epics.caget(p + "HDF1:FilePath_RBV", as_string=True) == f"{stack.tmp_path / 'store'}/"
    good = stack.tmp_path / "store" / "ok"
    good.mkdir()
    epics.caput(p + "HDF1:FilePath", str(good) + "/", wait=True, timeout=5)
    assert epics.caget(p + "HDF1:FilePathExists_RBV") == 1
    epics.caput(p + "HDF1:FilePath", str(good / "missing") + "/", wait=True, timeout=5)
    assert epics.caget(p + "HDF1:FilePathExists_RBV") == 0
    # a completed put means its readbacks show it, every time (softioc alone only queues them for a scan
    # thread: a third of these reads were stale before)
    stale = []
    for i in range(100):
        epics.caput(p + "HDF1:FilePath", str(outside) + "/", wait=True, timeout=5)
        refused = (
            epics.caget(p + "HDF1:FilePathExists_RBV"),
            epics.caget(p + "HDF1:WriteMessage", as_string=True),
        )
        epics.caput(p + "HDF1:FilePath", str(good) + "/", wait=True, timeout=5)
        epics.caput(p + "NumImages", 10 + i, wait=True, timeout=5)
        taken = epics.caget(p + "HDF1:FilePathExists_RBV"), epics.caget(p + "NumImages_RBV")
        if refused[0] != 0 or "outside store.roots" not in refused[1] or taken != (1, 10 + i):
            stale.append((i, refused, taken))
    assert stale == []
    assert list(outside.iterdir()) == []
    # refused again (FilePath_RBV stays the good one), then a capture opens there: its readback says the
    # directory is there (it read No for the whole capture: an outside probe)
    epics.caput(p + "HDF1:FilePath", str(outside) + "/", wait=True, timeout=5)
    assert epics.caget(p + "HDF1:FilePathExists_RBV") == 0
    epics.caput(p + "HDF1:FileName", "exists", wait=True, timeout=5)
    assert epics.caput(p + "HDF1:Capture", 1, wait=True, timeout=10) == 1
    assert epics.caget(p + "HDF1:Capture_RBV") == 1
    assert epics.caget(p + "HDF1:FilePathExists_RBV") == 1
    assert epics.caput(p + "HDF1:Capture", 0, wait=True, timeout=30) == 1


def test_acquire_zero_with_completion_aborts(stack: Stack) -> None:
    """``caput -c Acquire 0`` (what ophyd does) aborts a run; the run ends ``abort``."""
    epics = _epics()
    p = stack.prefix
    assert epics.caput(p + "NumImages", 1000, wait=True, timeout=5) == 1
    assert epics.caput(p + "AcquirePeriod", 0.02, wait=True, timeout=5) == 1
    done: list[float] = []
    acquire = epics.PV(p + "Acquire")
    assert acquire.wait_for_connection(5)
    acquire.put(1, wait=False, use_complete=True, callback=lambda **_: done.append(time.monotonic()))
    wait_until(lambda: epics.caget(p + "DetectorState_RBV", as_string=True) == "Acquire", 20, "the run going")
    wait_until(lambda: epics.caget(p + "ArrayCounter_RBV") > 5, 20, "frames arriving")
    # `caput -c Acquire 0` from another client (a put-callback on the run's own channel would wait for the
    # run's put-callback first: the CA server serialises put-callbacks per channel)
    from caproto.threading.client import Context

    context = Context()
    try:
        (other,) = context.get_pvs(p + "Acquire")
        other.wait_for_connection(timeout=10)
        started = time.monotonic()
        other.write([0], wait=True, timeout=10)  # raises if the put-callback does not complete in 10 s
        assert time.monotonic() - started < 5
    finally:
        context.disconnect()
    wait_until(lambda: done, 20, "the run's own put to complete")
    assert done[0] - started < 15
    run_uid = epics.caget(p + "RunUid_RBV", as_string=True)
    run = wait_until(lambda: (r := stack.run(run_uid))["ended_at"] and r, 20, "the run to end")
    assert run["exit_status"] == "abort", run
    assert run["frames_stored"] < 1000
    assert epics.caget(p + "Acquire_RBV") == 0


def test_display_fields_fit_the_values(stack: Stack) -> None:
    """PREC and EGU: a wavelength of 1e-10 m reads with significant digits (not 0.000)."""
    import epics as pyepics

    pv = pyepics.PV(stack.prefix + "Reduction:Wavelength_RBV", form="ctrl")
    assert pv.wait_for_connection(5)
    ctrl = pv.get_ctrlvars()
    value = pv.get()
    assert ctrl["units"] == "m"
    shown = f"{value:.{ctrl['precision']}f}"
    assert float(shown) != 0.0 and abs(float(shown) - value) / value < 1e-3, shown


def test_bluesky_count_with_stock_classic_ophyd(stack: Stack) -> None:
    """Classic ophyd's ``SingleTrigger`` + ``DetectorBase`` with a stock ``AreaDetectorCam`` on the
    appliance's own prefix: every PV the class declares connects, ``bp.count`` takes its frames and
    the descriptor carries the cam's configuration; a setting the appliance does not have is refused."""
    import bluesky.plans as bp
    from ophyd import Component
    from ophyd.areadetector import DetectorBase, SingleTrigger
    from ophyd.areadetector.cam import AreaDetectorCam

    class Classic(SingleTrigger, DetectorBase):
        cam = Component(AreaDetectorCam, "")

    epics = _epics()
    p = stack.prefix
    detector = Classic(p, name="classic")
    try:
        detector.wait_for_connection(all_signals=True, timeout=30)  # every PV the stock classes declare
        cam = detector.cam
        assert cam.max_size.max_size_x.get() == 256 and cam.max_size.max_size_y.get() == 256
        assert cam.array_size_bytes.get() == 256 * 256 * 2
        assert cam.data_type.get(as_string=True) == "UInt16"
        cam.num_images.set(2).wait(timeout=10)
        cam.acquire_period.set(0.02).wait(timeout=10)
        if not _ENGINES:
            from bluesky import RunEngine

            _ENGINES.append(RunEngine({}, call_returns_result=True))
        engine = _ENGINES[0]
        docs: list[tuple[str, dict[str, Any]]] = []
        token = engine.subscribe(lambda name, doc: docs.append((name, doc)))
        try:
            engine(bp.count([detector], num=2))
        finally:
            engine.unsubscribe(token)
        events = [doc for name, doc in docs if name == "event"]
        assert len(events) == 2
        config = next(doc for name, doc in docs if name == "descriptor")["configuration"]["classic"]["data"]
        assert config["classic_cam_num_images"] == 2
        assert config["classic_cam_num_exposures"] == 1
        assert config["classic_cam_trigger_mode"] == 0
        assert cam.num_images_counter.get() == 2
        assert cam.time_remaining.get() == 0.0
        # what the appliance does not have is refused with a reason, never silently taken
        assert epics.caput(p + "BinX", 2, wait=True, timeout=10) == 1
        assert epics.caget(p + "BinX_RBV") == 1
        assert "BinX" in epics.caget(p + "StatusMessage_RBV", as_string=True)
        assert epics.caput(p + "SizeX", 100, wait=True, timeout=10) == 1
        assert epics.caget(p + "SizeX_RBV") == 256
        assert epics.caput(p + "ArrayCallbacks", 0, wait=True, timeout=10) == 1
        assert epics.caget(p + "ArrayCallbacks_RBV") == 1
        assert "never stops" in epics.caget(p + "StatusMessage_RBV", as_string=True)
        assert epics.caput(p + "SizeX", 256, wait=True, timeout=10) == 1  # the one size it has is taken
        assert epics.caget(p + "SizeX.SEVR") == 0
        # FrameType and TriggerMode are the camera's at the next Acquire (a flat field here)
        assert epics.caput(p + "FrameType", "FlatField", wait=True, timeout=10) == 1
        assert epics.caput(p + "NumImages", 1, wait=True, timeout=10) == 1
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=30) == 1
        assert epics.caget(stack.cam_prefix + "FrameType_RBV", as_string=True) == "FlatField"
        assert epics.caget(stack.cam_prefix + "TriggerMode_RBV", as_string=True) == "Internal"
        assert cam.num_images_counter.get() == 1
        # read right after the put completed: the readbacks are the run's, not half a second behind
        assert epics.caget(p + "UniqueId_RBV") == 0  # the newest frame's own number (one frame, 0)
        assert epics.caget(p + "HDF1:Capture_RBV") == 0
        assert epics.caget(p + "SDKVersion_RBV", as_string=True).startswith("edge ")
        assert epics.caget(p + "HDF1:NumRowChunks") == epics.caget(p + "HDF1:NumRowChunks_RBV") == 256
        # a chunk setting is kept, but its readback reads the files' real chunk (an outside probe: 2 frames
        # of 257 rows read back, and ophyd-async's StreamResource stated a chunk the files do not have)
        assert epics.caput(p + "HDF1:NumFramesChunks", 2, wait=True, timeout=10) == 1
        assert epics.caput(p + "HDF1:NumRowChunks", 257, wait=True, timeout=10) == 1
        assert epics.caget(p + "HDF1:NumRowChunks") == 257
        assert (
            epics.caget(p + "HDF1:NumFramesChunks_RBV") == 1
            and epics.caget(p + "HDF1:NumRowChunks_RBV") == 256
        )
        assert epics.caput(p + "HDF1:ArrayCounter", 0, wait=True, timeout=10) == 1
        time.sleep(1.2)  # two refreshes of the readbacks: the reset holds
        assert epics.caget(p + "HDF1:ArrayCounter_RBV") == 0
    finally:
        detector.destroy()


@pytest.mark.timeout(300)
def test_a_capture_closed_by_num_capture_mid_acquisition_numbers_its_late_frames_on(stack: Stack) -> None:
    """An outside EPICS probe: NumCapture 5 with two acquisitions of 3 closed the capture mid-way through
    the second; its last frame was stored as frame 2 again ([0 1 2 3 4 2]) and the message said "0 frames
    added". The late frame is numbered on (5), the count is the acquisition's; FileNumber goes up when
    the file is named (as areaDetector's, which classic ophyd's Resource naming expects); a Capture 0
    put with completion returns once the file is there."""
    import h5py
    import hdf5plugin  # noqa: F401

    epics = _epics()
    p = stack.prefix

    def put(name: str, value: Any, timeout: float = 30) -> None:
        done = epics.caput(p + name, value, wait=True, timeout=timeout)
        if done != 1:  # what the IOC and the pipeline were doing (the log holds warnings only)
            said = epics.caget(p + "StatusMessage_RBV", as_string=True)
            pipeline = {
                k: v for k, v in stack.status()["pipeline"].items() if k in ("warming", "run", "queued")
            }
            raise AssertionError(
                f"{name}: {done}; StatusMessage {said!r}; pipeline {pipeline}; the daemon's log ends:\n"
                f"{stack.log('daemon')[-2500:]}"
            )

    directory = stack.tmp_path / "store" / "num"
    put("HDF1:FilePath", str(directory))
    put("HDF1:CreateDirectory", 1)
    put("HDF1:FileName", "num")
    put("HDF1:FileTemplate", "%s%s_%3.3d.h5")
    put("HDF1:FileNumber", 8)
    put("HDF1:AutoIncrement", 1)
    put("NumImages", 3)
    put("AcquirePeriod", 0.02)
    put("HDF1:NumCapture", 5)
    put("HDF1:Capture", 1)
    assert epics.caget(p + "HDF1:FileNumber_RBV") == 9  # raised once the file is named
    first = directory / "num_008.h5"
    # the mode's kernels loaded first: an Acquire's completion waits for its frames to be written, which
    # wait for them (twice in CI on a busy 2-core machine, past the put's 30 s; not what this tests)
    wait_until(lambda: not stack.status()["pipeline"]["warming"], 180, "the kernels loaded")
    for taken in (3, 5):  # (each put waits for its readback: an Acquire 1 at once after one ends is refused)
        # (the first may wait for the kernels a fresh install compiles, minutes on a busy CI machine)
        # (the second: a completion waits for the stream to be quiet, seconds more on a loaded machine;
        # it failed at 30 s twice in CI while outside probes loaded the machine)
        put("Acquire", 1, timeout=150 if taken == 3 else 90)
        wait_until(lambda taken=taken: epics.caget(p + "HDF1:NumCaptured_RBV") >= taken, 10, f"{taken}")
    done = "Acquisition completed: 3 frames added to the capture"
    deadline = time.monotonic() + 10  # (once in CI this timed out: say what the message read instead)
    while (
        said := epics.caget(p + "StatusMessage_RBV", as_string=True)
    ) != done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert said == done, (said, epics.caget(p + "HDF1:NumCaptured_RBV"), stack.log("daemon")[-1500:])
    wait_until(lambda: epics.caget(p + "HDF1:Capture_RBV") == 0, 15.0, "the capture closed at NumCapture")
    with h5py.File(first, "r") as h5:
        assert list(h5["/entry/data/frame_number"][()]) == [0, 1, 2, 3, 4, 5]
    # a Capture 0 with completion returns with the file finished
    put("HDF1:NumCapture", 0)
    put("HDF1:Capture", 1)
    put("Acquire", 1)
    put("HDF1:Capture", 0)
    second = directory / "num_009.h5"
    assert epics.caget(p + "HDF1:Capture_RBV") == 0 and second.exists()
    assert epics.caget(p + "HDF1:FileNumber_RBV") == 10


def test_an_acquire_in_a_capture_completes_once_its_frames_are_written_while_kernels_load(
    tmp_path: Path, ca_port: int, edge_ca_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: Mode serial, Capture 1, Acquire 1 with completion. The mode's kernels loaded for
    the first frame (numba compiling them, here from an empty cache: ~25 s) and the put completed 1 s
    after the camera was done, "0 frames added to the capture", though the frames were written later
    (Bluesky reads the file as soon as the put completes). It completes once they are written."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cold-cache"))  # (the daemon inherits it)
    s = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    s.settings = [x for x in s.settings if not x.startswith("reduction.backend")]
    # (raw: no kernels load at the start, only serial's, when the Mode put below asks for them)
    s.settings += ['reduction.backend="numba"', 'reduction.mode="raw"']
    try:
        s.start_sim()
        s.start_daemon()
        epics, p = _epics(), s.prefix

        def put(name: str, value: Any) -> None:
            assert epics.caput(p + name, value, wait=True, timeout=180) == 1, name

        assert epics.caput(p + "Mode", 2, wait=False) == 1  # serial: its kernels compile now
        # the dashboard says why frames will wait (an outside probe saw a 77 s stall explained by nothing)
        wait_until(
            lambda: any(a["id"] == "condition:mode_warming:serial" for a in s.status()["alarms"]),
            30,
            "the alarm saying the serial kernels are loading",
        )
        # and so does the IOC; a put with completion completes once they are loaded (an outside probe's
        # plan, started on the put's completion, timed out on NumCaptured_RBV meanwhile)
        wait_until(
            lambda: "Preparing serial mode" in epics.caget(p + "StatusMessage_RBV", as_string=True),
            10,
            "StatusMessage_RBV saying the kernels load",
        )
        # the Mode put is not waited for: the capture and its Acquire go while the kernels load
        put("HDF1:FilePath", str(tmp_path / "store" / "caps"))
        put("HDF1:CreateDirectory", 1)
        put("HDF1:FileName", "warm")
        put("HDF1:FileTemplate", "%s%s.h5")
        put("HDF1:Capture", 1)
        put("NumImages", 3)
        put("AcquirePeriod", 0.02)
        put("Acquire", 1)
        done = "Acquisition completed: 3 frames added to the capture"
        message = epics.caget(p + "StatusMessage_RBV", as_string=True, use_monitor=False)
        assert message == done, message
        # the Mode put still completing (kernels for other frames load on) says nothing over the run's
        # end: an outside probe read "Preparing serial mode ... (50 s)", then "serial mode ready", never this
        wait_until(lambda: s.status()["pipeline"]["warming"] == [], 240, "every serial kernel loaded")
        time.sleep(0.5)  # (the Mode put's last look at the kernels comes every 0.1 s)
        message = epics.caget(p + "StatusMessage_RBV", as_string=True, use_monitor=False)
        assert message == done, message
        put("HDF1:Capture", 0)
        wait_until(lambda: epics.caget(p + "HDF1:Capture_RBV") == 0, 30, "the capture's file finished")
    finally:
        s.stop()
    # every frame in the capture's file, blanks too (the simulator's rings have no spots: a probe's plan
    # found its file never made, the frames in a blank file of the run's and no document naming it)
    import h5py
    import hdf5plugin  # noqa: F401

    with h5py.File(tmp_path / "store" / "caps" / "warm.h5", "r") as h5:
        assert list(h5["/entry/data/frame_number"][()]) == [0, 1, 2]
    assert not list((tmp_path / "store").glob("*/*_blank_*.h5"))
