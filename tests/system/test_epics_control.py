"""System tests: the control system drives the appliance through its PVs (issue 4).

Separate processes on 127.0.0.1, as at a beamline: ``edge sim --ioc`` (the simulated detector: caproto
camera IOC + ZeroMQ frame stream), ``edge run`` with ``epics.enabled`` (the daemon and its softioc IOC,
which drives the camera through pyepics), and ``edge pull``. This process is a pure pyepics client
(plus one caproto client with another user name, for access security). Fresh PV prefixes, ports and
store per test; every process is killed at teardown. Loopback recipe: ``docs/epics.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from edgeprocs import free_port

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT
ACF = SRC / "edge" / "data" / "edge.acf"
START_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(180)


#: a count for a whole array: pyepics asks for at most the channel's element count
WHOLE = 1 << 24


class _FreshGets:
    """pyepics, with ``caget`` asking the IOC now (``use_monitor=False``), as the ``caget`` tool does.

    pyepics' own default answers from its monitor cache, and a monitor update may arrive just after the
    put's completion that caused it (CA orders them on no common queue): a read right after a put would
    sometimes see the value before it.

    A string is read whole: pyepics asks for as many characters as its monitor last saw, so a long string
    that had just grown from "" read as its first character until the monitor caught up (a CI failure: a
    run uid read as "4").
    """

    def __getattr__(self, name: str) -> Any:
        import epics

        return getattr(epics, name)

    def caget(self, pvname: str, **kw: Any) -> Any:
        import epics

        kw.setdefault("use_monitor", False)
        if kw.get("as_string") and not kw["use_monitor"]:
            kw.setdefault("count", WHOLE)
        return epics.caget(pvname, **kw)


def _epics() -> Any:
    return _FreshGets()


def _state_is(epics: Any, pv: str, state: str) -> bool:
    """Whether ``pv`` reads ``state``; a read that times out (pyepics warns) is "not yet": under load a
    read of the enum's strings has been seen to take more than its 5 s while a detector reconnects."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return bool(epics.caget(pv, as_string=True, timeout=1) == state)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy and return its value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _read_line(proc: subprocess.Popen[bytes], deadline: float, startswith: str) -> str:
    """Read stdout lines of ``proc`` until one starts with ``startswith``."""
    assert proc.stdout is not None
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.decode(errors="replace").startswith(startswith):
                    return line.decode()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line {startswith!r} in time (got {buf!r})")
            if sel.select(timeout=min(remaining, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"process exited with {proc.wait()} before {startswith!r}")
                buf += chunk


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Stack:
    """``edge sim --ioc``, ``edge run`` (IOC enabled) and ``edge pull`` as child processes."""

    def __init__(self, tmp_path: Path, sim_port: int, edge_port: int, acf: Path | None) -> None:
        tag = uuid.uuid4().hex[:8].upper()
        self.cam_prefix = f"T{tag}:cam1:"
        self.prefix = f"E{tag}:"
        self.tmp_path = tmp_path
        self.sim_port = sim_port
        self.edge_port = edge_port
        stream, upstream, api = free_port(), free_port(), free_port()
        self.api = f"http://127.0.0.1:{api}"
        self.settings = [
            f'sim.endpoint="tcp://127.0.0.1:{stream}"',
            f'stream.endpoint="tcp://127.0.0.1:{stream}"',
            f'upstream.endpoint="tcp://127.0.0.1:{upstream}"',
            f'pull.endpoint="tcp://127.0.0.1:{upstream}"',
            f"api.port={api}",
            f'store.path="{tmp_path / "store"}"',
            f'pull.output="{tmp_path / "upstream"}"',
            "detector.height=256",
            "detector.width=256",
            "geometry.poni1=0.0096",
            "geometry.poni2=0.0096",
            'reduction.backend="numpy"',
            "reduction.bins=200",
            "store.file_seconds=0.5",
            "epics.enabled=true",
            f'epics.prefix="{self.prefix}"',
            f'epics.detector_prefix="{self.cam_prefix}"',
        ]
        if acf is not None:
            self.settings.append(f'epics.acf_file="{acf}"')
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
        env.update(
            EPICS_CA_AUTO_ADDR_LIST="NO",
            EPICS_CAS_INTF_ADDR_LIST="127.0.0.1",
            EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
            EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1",
        )
        env.update(extra)
        return env

    def _start(
        self, name: str, argv: list[str], env: dict[str, str], capture: bool = False
    ) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "edge", *argv, "--log-level", "WARNING"]
        for item in self.settings:
            cmd += ["--set", item]
        with open(self.tmp_path / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if capture else log, stderr=log)
        self.procs[name] = proc
        return proc

    def start_sim(self) -> None:
        env = self._env(EPICS_CA_SERVER_PORT=str(self.sim_port))
        proc = self._start("sim", ["sim", "--ioc"], env, capture=True)
        try:
            _read_line(proc, time.monotonic() + START_TIMEOUT, f"READY {self.cam_prefix}")
        except (TimeoutError, RuntimeError) as error:
            pytest.fail(f"simulator did not start: {error}\n{self.log('sim')}")

    def start_daemon(self, idle: bool = True) -> None:
        """Start ``edge run``; wait for its API and (``idle``) for its IOC to see the camera Idle."""
        env = self._env(
            EPICS_CA_ADDR_LIST=f"127.0.0.1:{self.sim_port}", EPICS_CAS_SERVER_PORT=str(self.edge_port)
        )
        proc = self._start("daemon", ["run"], env)

        def api_up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"daemon exited with {proc.returncode}\n{self.log('daemon')}")
            try:
                return bool(self.status())
            except OSError:
                return False

        wait_until(api_up, START_TIMEOUT, "the daemon's API", interval=0.2)
        if not idle:
            return
        epics = _epics()
        wait_until(
            lambda: _state_is(epics, self.prefix + "DetectorState_RBV", "Idle"),
            START_TIMEOUT,
            f"the appliance IOC to see the detector Idle\n{self.log('daemon')}",
        )

    def start_pull(self) -> None:
        self._start("pull", ["pull"], self._env())

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        for name in ("sim", "pull", "daemon"):
            self.kill(name)

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def status(self) -> dict[str, Any]:
        return dict(_get_json(self.api + "/api/status"))

    def run(self, run_uid: str) -> dict[str, Any]:
        return dict(_get_json(f"{self.api}/api/runs/{run_uid}"))


@pytest.fixture
def stack(tmp_path: Path, ca_port: int, edge_ca_port: int) -> Iterator[Stack]:
    """Simulator, daemon (ACF loaded) and pull client, running; all stopped at teardown."""
    s = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    try:
        s.start_sim()
        s.start_daemon()
        s.start_pull()
        yield s
    finally:
        s.stop()


def _put(stack: Stack, name: str, value: Any, timeout: float = 10.0) -> None:
    assert _epics().caput(stack.prefix + name, value, wait=True, timeout=timeout) == 1, f"put {name}"


def _frames_in_files(paths: list[str]) -> int:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle-LZ4 filter)

    frames = 0
    for path in paths:
        with h5py.File(path, "r") as h5:
            data = h5["entry/data/data"]
            frames += int(data.shape[0])
            assert int(data[data.shape[0] - 1].sum()) > 0  # the chunks decompress
    return frames


# --- acceptance 1: caput Acquire with completion runs NumImages frames into HDF5 ---------------------
def test_acquire_with_completion_stores_num_images(stack: Stack) -> None:
    epics = _epics()
    p = stack.prefix
    _put(stack, "NumImages", 20)
    _put(stack, "AcquirePeriod", 0.02)
    _put(stack, "AcquireTime", 0.015)
    assert epics.caget(p + "NumImages_RBV") == 20
    started = time.monotonic()
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=90) == 1
    assert time.monotonic() - started >= 20 * 0.02
    assert epics.caget(p + "HDF1:NumCaptured_RBV") == 20
    assert epics.caget(p + "Acquire_RBV") == 0
    wait_until(lambda: epics.caget(p + "Acquire") == 0, 5, "Acquire back to 0 after completion")
    message = epics.caget(p + "StatusMessage_RBV", as_string=True)
    assert message == "Acquisition completed: 20 frames stored", message
    run_uid = epics.caget(p + "RunUid_RBV", as_string=True)
    run = stack.run(run_uid)
    assert run["ended_at"] is not None and run["losses"] == []
    paths = [f["path"] for f in run["files"] if f["path"].endswith(".h5")]
    assert _frames_in_files(paths) == 20
    # the exposure and period went to the camera, into its series header, and from it into the files
    import h5py

    with h5py.File(paths[0], "r") as h5:
        detector = h5["entry/instrument/detector"]
        assert detector["frame_time"][()] == pytest.approx(0.02)
        assert detector["count_time"][()] == pytest.approx(0.015)
    # counters are refreshed periodically: wait for them, then they agree with the file
    wait_until(lambda: epics.caget(p + "ArrayCounter_RBV") == 20, 5, "ArrayCounter_RBV == 20")
    # the file name follows at the next refresh after the file is registered (ArrayCounter may be
    # 20 from an earlier refresh, before the last file closed)
    wait_until(
        lambda: epics.caget(p + "HDF1:FullFileName_RBV", as_string=True) == paths[-1],
        5,
        "HDF1:FullFileName_RBV names the last data file",
    )
    assert epics.caget(p + "HDF1:FilePath_RBV", as_string=True) == f"{stack.tmp_path / 'store'}/"
    assert epics.caget(p + "Codec1:CompFactor_RBV") > 1.0
    assert epics.caget(p + "LostFrames_RBV") == 0
    profile = epics.caget(p + "Profile1:Intensity_RBV")
    assert len(profile) == 200 and float(profile.max()) > 0
    # the radial axis in its unit, with decimals (a display showed 0 1 1 2 ... without PREC)
    radial = epics.get_pv(p + "Profile1:Radial_RBV", form="ctrl")
    assert radial.wait_for_connection(timeout=10)
    meta = radial.get_ctrlvars(timeout=5)
    assert (meta["units"], meta["precision"]) == ("deg", 4), meta
    # the live image: every pixel of this 256 x 256 detector (128 KiB, over CA's old 16 KiB default)
    assert (epics.caget(p + "Image1:ArraySize0_RBV"), epics.caget(p + "Image1:ArraySize1_RBV")) == (256, 256)
    image = epics.caget(p + "Image1:ArrayData")
    assert image is not None and len(image) == 256 * 256 and int(image.max()) > 0
    assert stack.status()["detector"]["state"] == "Idle"
    # the pull client is a consumer; data flows upstream
    wait_until(lambda: epics.caget(p + "Upstream:Consumers_RBV") >= 1, 20, "a connected consumer")


# --- acceptance 3: the detector IOC killed mid-run ---------------------------------------------------
def _serial_stack(tmp_path: Path, ca_port: int, edge_ca_port: int, *settings: str) -> Stack:
    """A started simulator (spots) and daemon in serial mode with blanks dropped."""
    stack = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    stack.settings += ['reduction.mode="serial"', 'store.blanks="drop"', 'sim.mode="spots"', *settings]
    try:
        stack.start_sim()
        stack.start_daemon()
    except BaseException:
        stack.stop()
        raise
    return stack


def test_a_serial_run_s_hits_and_vetoed_blanks_are_readbacks(
    tmp_path: Path, ca_port: int, edge_ca_port: int
) -> None:
    """``VetoedFrames_RBV`` beside ``LostFrames_RBV``, and the run's hits and hit rate, as the ledger and
    the mode count them: a beamline's control system sees what serial mode keeps and drops."""
    stack = _serial_stack(tmp_path, ca_port, edge_ca_port, "sim.hit_fraction=0.5")
    epics = _epics()
    p = stack.prefix
    try:
        _put(stack, "NumImages", 40)
        _put(stack, "AcquirePeriod", 0.02)
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=90) == 1
        run = stack.run(epics.caget(p + "RunUid_RBV", as_string=True))
        totals = run["totals"]
        hits, vetoed = totals["frames_stored"], totals["frames_vetoed"]
        assert hits + vetoed + totals["frames_lost"] == 40 and hits and vetoed, totals
        wait_until(lambda: epics.caget(p + "VetoedFrames_RBV") == vetoed, 5, "VetoedFrames_RBV")
        assert epics.caget(p + "Reduction:Hits_RBV") == hits
        assert abs(epics.caget(p + "Reduction:HitRate_RBV") - 100 * hits / 40) < 1e-6
        assert epics.caget(p + "Reduction:SlicesDone_RBV") == 0
        assert epics.caget(p + "LostFrames_RBV") == 0  # a vetoed blank is never a loss
    finally:
        stack.stop()


@contextlib.contextmanager
def _acquiring_long(stack: Stack) -> Iterator[threading.Event]:
    """An acquisition of 100,000 frames at 50 Hz started with a put of ``Acquire`` 1 that waits for its
    completion (set in the event yielded)."""
    _put(stack, "NumImages", 100_000)
    _put(stack, "AcquirePeriod", 0.02)
    completed = threading.Event()
    acquire = _epics().PV(stack.prefix + "Acquire")
    try:
        assert acquire.wait_for_connection(timeout=10)
        acquire.put(1, callback=lambda **_: completed.set())
        yield completed
    finally:
        acquire.disconnect()


def test_detector_killed_mid_run_disconnects_records_loss_and_recovers(stack: Stack) -> None:
    epics = _epics()
    p = stack.prefix
    with _acquiring_long(stack) as completed:
        wait_until(lambda: (epics.caget(p + "ArrayCounter_RBV") or 0) >= 5, 20, "frames arriving")
        run_uid = wait_until(lambda: epics.caget(p + "RunUid_RBV", as_string=True), 5, "the run uid")
        assert not completed.is_set()
        stack.kill("sim", signal.SIGKILL)
        killed = time.monotonic()
        wait_until(
            lambda: epics.caget(p + "DetectorState_RBV", as_string=True) == "Disconnected",
            5,
            "Disconnected PV",
        )
        wait_until(lambda: stack.status()["detector"]["state"] == "Disconnected", 5, "Disconnected in REST")
        assert time.monotonic() - killed < 5
        severity = epics.PV(p + "DetectorState_RBV", form="ctrl").get_with_metadata(timeout=5)["severity"]
        assert severity == 2  # MAJOR
        assert completed.wait(timeout=30), "the put of Acquire did not complete after the detector died"
        run = stack.run(run_uid)
        assert run["ended_at"] is not None
        assert run["exit_status"] == "fail"
        reasons = {loss["reason"] for loss in run["losses"]}
        assert "detector_disconnected" in reasons, run["losses"]
        stored = sum(f["n_frames"] for f in run["files"])
        lost = sum(r["last_frame"] - r["first_frame"] + 1 for r in run["losses"])
        assert stored + lost == 100_000
        assert epics.caget(p + "LostFrames_RBV", timeout=5) is not None
        assert "lost" in epics.caget(p + "StatusMessage_RBV", as_string=True)
    # a start while the detector is gone: refused at once with an alarm and the reason (it completed
    # with no alarm before, "Not started" in the message only)
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=10) == 1
    meta = epics.PV(p + "Acquire", form="ctrl").get_with_metadata(timeout=5, use_monitor=False)
    assert (meta["severity"], meta["status"]) == (1, 15), meta  # MINOR SOFT
    message = epics.caget(p + "StatusMessage_RBV", as_string=True, use_monitor=False)
    assert "the detector is disconnected" in message, message
    assert epics.caget(p + "Acquire_RBV", use_monitor=False) == 0

    # the detector returns: the appliance reconnects (libca's search back-off: ~5-10 s) and runs again
    stack.start_sim()
    wait_until(lambda: _state_is(epics, p + "DetectorState_RBV", "Idle"), 60, "reconnection")
    assert stack.status()["detector"]["reconnects"] == 1
    _put(stack, "NumImages", 3)
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=60) == 1
    assert epics.caget(p + "HDF1:NumCaptured_RBV") == 3


def test_a_camera_killed_inside_a_capture_says_so_not_completed(stack: Stack) -> None:
    """An outside probe: the camera IOC killed inside an open HDF1 capture ended the capture's file and
    recorded the frames it never sent lost, but ``StatusMessage_RBV`` read "Acquisition completed: 39
    frames added to the capture"; an operator reading only the PV took the run for a good one."""
    epics = _epics()
    p = stack.prefix
    _put(stack, "HDF1:FileName", "cut")
    _put(stack, "HDF1:NumCapture", 0)
    _put(stack, "HDF1:Capture", 1)
    with _acquiring_long(stack) as completed:
        wait_until(lambda: (epics.caget(p + "HDF1:NumCaptured_RBV") or 0) >= 5, 30, "frames captured")
        stack.kill("sim", signal.SIGKILL)
        assert completed.wait(timeout=30), "the put of Acquire did not complete after the camera died"
    message = epics.caget(p + "StatusMessage_RBV", as_string=True, use_monitor=False)
    assert message.startswith("Detector disconnected:") and "recorded lost" in message, message
    run_uid = epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False)
    run = wait_until(lambda: (r := stack.run(run_uid))["ended_at"] is not None and r, 30, "the run's end")
    assert "detector_disconnected" in {loss["reason"] for loss in run["losses"]}, run["losses"]


def test_a_camera_killed_inside_a_capture_it_started_itself_ends_the_series_and_the_capture_closes(
    stack: Stack,
) -> None:
    """An outside probe (a plan on the camera's own prefix): the camera IOC killed mid-series inside an
    open capture left the series open: Capture 0 gave up after 60 s with "Write OK", the run stayed open
    with no end, and the next capture was refused ("a series is being acquired"). The series ends once
    the stream is quiet, its frames not received lost (detector_disconnected), and the capture closes."""
    epics = _epics()
    p = stack.prefix
    run_uid = _capturing_a_camera_series(stack, "camcut", 100_000, "the camera's run")
    wait_until(lambda: (epics.caget(p + "HDF1:NumCaptured_RBV") or 0) >= 5, 30, "frames captured")
    stack.kill("sim", signal.SIGKILL)
    run = wait_until(lambda: (r := stack.run(run_uid))["ended_at"] is not None and r, 30, "the run's end")
    assert "detector_disconnected" in {loss["reason"] for loss in run["losses"]}, run["losses"]
    started = time.monotonic()
    assert epics.caput(p + "HDF1:Capture", 0, wait=True, timeout=30) == 1
    assert time.monotonic() - started < 20  # the file finished, not the 60 s give-up
    assert epics.caget(p + "HDF1:Capture_RBV", use_monitor=False) == 0
    assert epics.caget(p + "HDF1:WriteStatus", use_monitor=False) == 0


# --- acceptance 4 and 5: access security, and every documented PV answers ----------------------------
def test_acf_refuses_a_write_from_a_user_it_does_not_list(stack: Stack) -> None:
    from caproto.threading.client import Context

    epics = _epics()
    p = stack.prefix
    _put(stack, "NumImages", 7)  # this process runs as the daemon's user: listed in the ACF
    ctx = Context(client_name="intruder")
    try:
        (pv,) = ctx.get_pvs(p + "NumImages")
        pv.wait_for_connection(timeout=10)
        assert pv.read(timeout=5).data[0] == 7  # reading is allowed
        assert "WRITE" not in str(pv.channel.access_rights)
        try:
            response = pv.write([99], wait=True, timeout=5)
        except Exception as error:  # caproto may raise on the server's refusal
            refusal = str(error)
        else:
            refusal = str(response)
        assert "NOWTACCESS" in refusal or "access" in refusal.lower(), refusal
    finally:
        ctx.disconnect()
    assert epics.caget(p + "NumImages_RBV") == 7
    assert epics.caget(p + "NumImages") == 7


def test_every_pv_in_docs_answers_caget(stack: Stack) -> None:
    epics = _epics()
    # every Channel Access PV; the pvAccess section's live image (p4p) is not one
    text, pva, _ = (ROOT / "docs" / "pvs.md").read_text().partition("## pvAccess live image")
    assert pva, "docs/pvs.md has no pvAccess section"
    names = [stack.prefix + name for name in re.findall(r"^\| `EDGE:([^`]+)`", text, flags=re.MULTILINE)]
    assert len(names) > 50
    values = epics.caget_many(names, connection_timeout=10.0, timeout=10.0)
    missing = [name for name, value in zip(names, values, strict=True) if value is None]
    assert not missing, f"no answer from {missing}"


def _camera_started_directly(stack: Stack, frames: int, what: str) -> str:
    """Start the camera at its own prefix (a driver on the camera's PVs), ``frames`` at 100 Hz; returns
    the run the appliance opened for its series."""
    epics, cam = _epics(), stack.cam_prefix
    assert epics.caput(cam + "NumImages", frames, wait=True, timeout=10) == 1
    assert epics.caput(cam + "AcquirePeriod", 0.01, wait=True, timeout=10) == 1
    assert epics.caput(cam + "Acquire", 1, wait=False) == 1
    wait_until(lambda: stack.status()["appliance"]["run_uid"] is not None, 20, what)
    run_uid = str(stack.status()["appliance"]["run_uid"])
    # RunUid_RBV names it too, though no Acquire of the appliance's started it (it stayed empty)
    wait_until(lambda: epics.caget(stack.prefix + "RunUid_RBV", as_string=True) == run_uid, 5, "RunUid_RBV")
    return run_uid


def _capturing_a_camera_series(stack: Stack, name: str, frames: int, what: str) -> str:
    """A capture named ``name`` opened (no NumCapture limit), and ``frames`` started at the camera's own
    prefix (`_camera_started_directly`): returns the capture's run."""
    _put(stack, "HDF1:FileName", name)
    _put(stack, "HDF1:NumCapture", 0)
    _put(stack, "HDF1:Capture", 1)
    return _camera_started_directly(stack, frames, what)


def test_a_camera_that_goes_straight_to_idle_when_stopped_ends_the_run_abort(
    tmp_path: Path, ca_port: int, edge_ca_port: int
) -> None:
    """Drivers differ in what a camera stopped mid-acquisition reports: some say Aborted, others
    (ADSimDetector, for one) go straight to Idle. A control-room probe saw the Idle kind's run end
    ``success`` with every frame it never took "lost" (a MAJOR alarm). Now the camera's
    NumImagesCounter_RBV tells: it took exactly the frames that came, short of its NumImages."""
    stack = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    stack.settings.append('sim.stopped_state="Idle"')
    try:
        stack.start_sim()
        stack.start_daemon()
        epics = _epics()
        cam = stack.cam_prefix
        run_uid = _camera_started_directly(stack, 600, "the camera's run")
        wait_until(lambda: (epics.caget(cam + "NumImagesCounter_RBV") or 0) >= 20, 20, "frames taken")
        assert epics.caput(cam + "Acquire", 0, wait=True, timeout=30) == 1  # stopped at the camera
        assert epics.caget(cam + "DetectorState_RBV", as_string=True, use_monitor=False) == "Idle"
        run = wait_until(lambda: (r := stack.run(run_uid))["ended_at"] is not None and r, 30, "the run's end")
        assert run["exit_status"] == "abort", (run["losses"], run["totals"])
        totals = run["totals"]
        taken = int(epics.caget(cam + "NumImagesCounter_RBV", use_monitor=False))
        assert totals["frames_lost"] == 0 and totals["frames_not_acquired"] == 600 - taken, (taken, totals)
        assert totals["frames_stored"] == taken, (taken, totals)
        assert [r["reason"] for r in run["losses"]] == ["aborted"], run["losses"]
        # the count beside RunUid_RBV is that run's, though no Acquire of the appliance's started it (an
        # outside probe read a camera-started run's uid beside the frame count of an earlier scan)
        p = stack.prefix
        wait_until(lambda: epics.caget(p + "HDF1:NumCaptured_RBV", use_monitor=False) == taken, 10, "count")
        assert epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False) == run_uid
        assert run_uid in epics.caget(p + "HDF1:FullFileName_RBV", as_string=True, use_monitor=False)
    finally:
        stack.stop()


def test_a_series_stopped_at_the_camera_ends_abort_and_one_the_appliance_did_not_start_blocks_a_start(
    stack: Stack,
) -> None:
    """Two holes an outside control-room probe found: (1) a camera aborted at its own prefix (a Bluesky
    driver on the camera) inside an HDF1 capture ended the run ``success`` with the frames it never took
    lost, and left the capture open; (2) after a daemon restart mid-series the appliance's Acquire 1
    re-armed the still-acquiring camera mid-series and waited 30 s for a run that never came."""
    epics = _epics()
    p, cam = stack.prefix, stack.cam_prefix
    assert epics.caput(p + "HDF1:FileName", "camabort", wait=True, timeout=10) == 1
    assert epics.caput(p + "HDF1:NumCapture", 0, wait=True, timeout=10) == 1  # 0: until Capture 0
    assert epics.caput(p + "HDF1:Capture", 1, wait=True, timeout=10) == 1
    run_uid = _camera_started_directly(stack, 600, "the capture's run open")
    wait_until(lambda: (epics.caget(p + "HDF1:NumCaptured_RBV") or 0) >= 20, 20, "frames captured")
    assert epics.caput(cam + "Acquire", 0, wait=True, timeout=30) == 1  # stopped at the camera
    wait_until(lambda: epics.caget(p + "HDF1:Capture_RBV", use_monitor=False) == 0, 30, "the capture ended")
    run = wait_until(lambda: (r := stack.run(run_uid))["ended_at"] is not None and r, 30, "the run's end")
    assert run["exit_status"] == "abort", (run["losses"], run["totals"], run.get("config"))
    totals = run["totals"]
    assert totals["frames_lost"] == 0 and totals["frames_not_acquired"] > 0, totals
    assert totals["frames_stored"] + totals["frames_not_acquired"] == 600, totals

    # a series the appliance did not start is going: its Acquire 1 is refused at once, its 0 stops it
    assert epics.caput(cam + "NumImages", 100_000, wait=True, timeout=10) == 1
    assert epics.caput(cam + "Acquire", 1, wait=False) == 1
    wait_until(lambda: stack.status()["appliance"]["run_uid"] not in (None, run_uid), 20, "the camera's run")
    other = stack.status()["appliance"]["run_uid"]
    wait_until(  # said once as the IOC sees the series start: the refusal's message comes after it
        lambda: (
            "started at the camera" in epics.caget(p + "StatusMessage_RBV", as_string=True, use_monitor=False)
        ),
        20,
        "the camera's series said",
    )
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=10) == 1
    meta = epics.PV(p + "Acquire", form="ctrl").get_with_metadata(timeout=5, use_monitor=False)
    assert (meta["severity"], meta["status"]) == (1, 15), meta  # MINOR SOFT
    message = epics.caget(p + "StatusMessage_RBV", as_string=True, use_monitor=False)
    assert "did not start" in message, message
    assert epics.caget(cam + "NumImages_RBV", use_monitor=False) == 100_000  # not re-armed mid-series
    # nor is a capture opened while that series goes: it is its own run and file already (the capture
    # waited for a next series and, closed before one came, wrote nothing)
    assert epics.caput(p + "HDF1:Capture", 1, wait=True, timeout=10) == 1
    meta = epics.PV(p + "HDF1:Capture", form="ctrl").get_with_metadata(timeout=5, use_monitor=False)
    assert (meta["severity"], meta["status"], meta["value"]) == (1, 15, 0), meta
    message = epics.caget(p + "HDF1:WriteMessage", as_string=True, use_monitor=False)
    assert "being acquired" in message, message
    assert epics.caput(p + "Acquire", 0, wait=True, timeout=10) == 1  # stops the camera's series
    run = wait_until(lambda: (r := stack.run(other))["ended_at"] is not None and r, 30, "that run's end")
    assert run["exit_status"] == "abort" and run["totals"]["frames_lost"] == 0, run
    assert stack.procs["daemon"].poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_after_a_restart_mid_capture_num_captured_counts_the_capture_s_file_not_the_resumed_run(
    stack: Stack, sig: int
) -> None:
    """An outside probe: an ophyd-async fly scan through a daemon restart made stream datums of 54 frames
    against a capture file of 46: after the restart ``NumCaptured_RBV`` counted the resumed run's frames
    (in the store's own files) beside the capture's file. It now counts the capture's file, which
    ``FullFileName_RBV`` names; ``RunUid_RBV`` names the resumed run. After a kill the file was never
    finished: 0 frames in it, and ``FullFileName_RBV`` still names it (it read "", another probe), its
    ``.part`` left where it was and named by `edge where`."""
    epics = _epics()
    p = stack.prefix
    _put(stack, "HDF1:FileName", "cut")
    _put(stack, "HDF1:NumCapture", 0)
    _put(stack, "HDF1:Capture", 1)
    capture_run = _camera_started_directly(stack, 1500, "the capture's run open")
    wait_until(lambda: (epics.caget(p + "HDF1:NumCaptured_RBV") or 0) >= 20, 30, "frames captured")
    stack.kill("daemon", sig)
    stack.start_daemon(idle=False)
    resumed = wait_until(
        lambda: (uid := stack.status()["appliance"]["run_uid"]) not in (None, capture_run) and uid,
        60,
        "the resumed run",
    )
    wait_until(  # some of the resumed run's frames are in closed files
        lambda: any(f["n_frames"] for f in stack.run(resumed)["files"]), 60, "the resumed run's files"
    )
    time.sleep(1.5)  # (the IOC's refresh)
    interrupted = stack.run(capture_run)
    assert interrupted["ended_at"] is not None
    in_file = sum(int(f["n_frames"]) for f in interrupted["files"] if str(f["path"]).endswith(".h5"))
    assert in_file >= 20 if sig == signal.SIGTERM else in_file == 0
    # (the restarted IOC's channel, connected anew: a read that times out while the resumed run's kernels
    # compile, on a loaded 2-core machine, is "not yet", as `_state_is` takes it; CI saw one once)
    captured = wait_until(
        lambda: (
            (value := epics.caget(p + "HDF1:NumCaptured_RBV", use_monitor=False)) is not None and (value,)
        ),
        30,
        "NumCaptured_RBV to answer after the restart",
    )[0]
    assert captured == in_file
    left = interrupted["where"]["capture_left"]
    assert (left is None) if sig == signal.SIGTERM else left["path"].endswith("cut.h5.part"), left
    assert "cut" in epics.caget(p + "HDF1:FullFileName_RBV", as_string=True, use_monitor=False)
    assert epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False) == resumed
    assert epics.caput(stack.cam_prefix + "Acquire", 0, wait=True, timeout=30) == 1


def test_a_capture_killed_after_its_last_series_still_names_its_file(stack: Stack) -> None:
    """An outside probe: a capture whose camera series had ended, the daemon then killed (no Capture 0):
    after the restart ``FullFileName_RBV`` read "" (no series went on, so no resumed run pointed back to
    the capture). It names the capture's file, unfinished (0 frames in it; its .part left beside it)."""
    epics = _epics()
    p = stack.prefix
    capture_run = _capturing_a_camera_series(stack, "ended", 20, "the capture's run open")
    wait_until(lambda: (epics.caget(p + "HDF1:NumCaptured_RBV") or 0) >= 20, 30, "the series written")
    stack.kill("daemon", signal.SIGKILL)
    stack.start_daemon()
    wait_until(lambda: stack.run(capture_run)["ended_at"] is not None, 30, "the recovery's end of the run")
    time.sleep(1.5)  # (the IOC's refresh)
    assert epics.caget(p + "HDF1:FullFileName_RBV", as_string=True, use_monitor=False).endswith("ended.h5")
    assert epics.caget(p + "HDF1:NumCaptured_RBV", use_monitor=False) == 0
    assert stack.run(capture_run)["where"]["capture_left"]["path"].endswith("ended.h5.part")


def test_a_capture_names_its_run_at_once_and_one_closed_before_any_frame_names_none(stack: Stack) -> None:
    """``RunUid_RBV`` names the capture's run from ``Capture`` 1 on (a fly scan's descriptor, read before
    its first frame, named the previous run: an outside probe); a capture closed before any frame came
    made no run, and ``RunUid_RBV`` goes back to the run it named before."""
    epics = _epics()
    p = stack.prefix
    _put(stack, "NumImages", 2)
    _put(stack, "AcquirePeriod", 0.01)
    _put(stack, "Acquire", 1, timeout=60)
    before = epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False)
    assert stack.run(before)["frames_stored"] == 2
    _put(stack, "HDF1:FileName", "empty")
    _put(stack, "HDF1:NumCapture", 0)
    _put(stack, "HDF1:Capture", 1)
    planned = epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False)
    assert planned not in ("", before)
    _put(stack, "HDF1:Capture", 0, timeout=30)
    assert epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False) == before
    message = epics.caget(p + "HDF1:WriteMessage", as_string=True, use_monitor=False)
    assert "before any frame came" in message, message
    time.sleep(1.5)  # (the IOC's refresh: it showed the previous scan's file and count, a probe)
    assert epics.caget(p + "HDF1:NumCaptured_RBV", use_monitor=False) == 0
    assert epics.caget(p + "HDF1:FullFileName_RBV", as_string=True, use_monitor=False).endswith("empty.h5")
    _put(stack, "HDF1:Capture", 1)  # the next capture's run is named at its Capture 1 and holds its frames
    planned = epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False)
    _put(stack, "HDF1:Capture", 1)  # again: the open capture goes on, and says so (it was silent)
    message = epics.caget(p + "HDF1:WriteMessage", as_string=True, use_monitor=False)
    assert message.startswith("Capture 1 while capturing: the open capture goes on") and "empty" in message
    assert epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False) == planned
    _put(stack, "Acquire", 1, timeout=60)
    _put(stack, "HDF1:Capture", 0, timeout=30)
    run = stack.run(planned)
    assert run["frames_stored"] == 2 and any(str(f["path"]).endswith("empty.h5") for f in run["files"])


def test_acquire_0_inside_a_capture_completes_once_the_capture_closed_and_a_next_capture_opens(
    stack: Stack,
) -> None:
    """An outside probe: inside an open capture, ``caput -c Acquire 0`` returned while the capture's run
    was still ending (``Capture_RBV`` 1 for another second); the ``Capture 1`` that followed was taken
    as "already capturing", then dropped when that capture closed: no file, no refusal, and the next
    acquisition's frames in a run of their own. The abort ends the capture (docs/bluesky.md): the 0
    completes once it has, and the next capture opens."""
    epics = _epics()
    p = stack.prefix
    _put(stack, "HDF1:FileName", "capx")
    _put(stack, "HDF1:NumCapture", 0)
    _put(stack, "NumImages", 2000)
    _put(stack, "AcquirePeriod", 0.01)
    _put(stack, "HDF1:Capture", 1)
    assert epics.caput(p + "Acquire", 1, wait=False) == 1
    wait_until(
        lambda: (epics.caget(p + "HDF1:NumCaptured_RBV", use_monitor=False) or 0) >= 5, 30, "frames captured"
    )
    _put(stack, "Acquire", 0, timeout=30)
    assert epics.caget(p + "HDF1:Capture_RBV", use_monitor=False) == 0  # closed as the 0 completes
    _put(stack, "HDF1:FileName", "capy")
    _put(stack, "HDF1:Capture", 1)
    meta = epics.PV(p + "HDF1:Capture", form="ctrl").get_with_metadata(timeout=5, use_monitor=False)
    assert meta["severity"] == 0, (meta, epics.caget(p + "HDF1:WriteMessage", as_string=True))
    assert epics.caget(p + "HDF1:Capture_RBV", use_monitor=False) == 1
    assert "capy" in epics.caget(p + "HDF1:FullFileName_RBV", as_string=True, use_monitor=False)
    time.sleep(1.5)  # (the old capture's close came about a second after the 0 and took this one along)
    assert epics.caget(p + "HDF1:Capture_RBV", use_monitor=False) == 1
    _put(stack, "HDF1:Capture", 0, timeout=30)
    assert epics.caget(p + "HDF1:Capture_RBV", use_monitor=False) == 0
    assert stack.procs["daemon"].poll() is None


@pytest.mark.parametrize("after", [0.15, 0.8])
def test_a_stop_while_the_camera_ioc_starts_ends_it(
    tmp_path: Path, ca_port: int, edge_ca_port: int, after: float
) -> None:
    """An outside probe: ``edge sim --ioc`` signalled in its first second (a ``Ctrl-C`` while it started)
    noted the signal and never acted on it: the IOC ran on. It ends now, exit 0, saying so."""
    stack = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    try:
        proc = stack._start(
            "sim", ["sim", "--ioc"], stack._env(EPICS_CA_SERVER_PORT=str(ca_port)), capture=True
        )
        time.sleep(after)  # still importing, or setting up the IOC
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the camera IOC ran on after a SIGINT {after} s in\n{stack.log('sim')}")
        assert proc.returncode == 0, stack.log("sim")
        assert "Traceback" not in stack.log("sim")
    finally:
        stack.stop()


def test_a_run_longer_than_its_nominal_length_completes_when_its_frames_are_in(
    tmp_path: Path, ca_port: int, edge_ca_port: int
) -> None:
    """An outside probe: with ``AcquirePeriod`` 0 ("as fast as it can") the put gave the run up
    NumImages x AcquirePeriod + 30 s after it began, though frames kept coming: the camera was stopped,
    the run ended ``abort``. The put now waits while the camera acquires and while frames move; here
    the grace is 2 s and the run takes longer."""
    epics = _epics()
    stack = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    stack.settings.append("epics.run_grace_seconds=2")
    try:
        stack.start_sim()
        stack.start_daemon()
        p = stack.prefix
        _put(stack, "NumImages", 60)
        _put(stack, "AcquirePeriod", 0)
        _put(stack, "AcquireTime", 0.06)  # frames come every 60 ms: about 3.6 s of acquisition
        started = time.monotonic()
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=90) == 1
        assert time.monotonic() - started > 3
        message = epics.caget(p + "StatusMessage_RBV", as_string=True)
        assert message == "Acquisition completed: 60 frames stored", message
        run = stack.run(epics.caget(p + "RunUid_RBV", as_string=True))
        assert run["exit_status"] == "success" and run["losses"] == []
    finally:
        stack.stop()


def test_an_acquire_whose_frames_never_came_raises_an_alarm_until_frames_come(
    tmp_path: Path, ca_port: int, edge_ca_port: int
) -> None:
    """An outside probe: the daemon's stream endpoint not the detector's, an Acquire's camera took its
    frames and none reached the appliance: the put completed after the grace on a message only ("Run not
    accounted for"), the frames in no run, no record and no alarm. It says so, counts it and raises a
    major alarm that stays up until an Acquire's frames come."""
    epics = _epics()
    stack = Stack(tmp_path, ca_port, edge_ca_port, ACF)
    stack.settings.append("epics.run_grace_seconds=2")
    try:
        stack.start_sim()  # (on the stream endpoint of the settings so far)
        elsewhere = f"tcp://127.0.0.1:{free_port()}"
        stack.settings.append(f'stream.endpoint="{elsewhere}"')  # the daemon's
        stack.start_daemon()
        p = stack.prefix
        _put(stack, "NumImages", 3)
        _put(stack, "AcquirePeriod", 0.01)
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=60) == 1
        message = epics.caget(p + "StatusMessage_RBV", as_string=True)
        assert message.startswith("No frame came: the detector took its 3 frame(s)"), message
        status = stack.status()
        assert status["detector"]["acquires_without_frames"] == 1
        assert status["detector"]["last_without_frames"]["frames_armed"] == 3
        (alarm,) = [a for a in status["alarms"] if a["id"] == "condition:acquire_without_frames"]
        assert alarm["severity"] == "major" and "no series came on the stream" in alarm["message"]
        assert _get_json(stack.api + "/api/runs") == []
        # aborted meanwhile (an outside probe: "Run not accounted for", counted nowhere)
        _put(stack, "NumImages", 400)
        _put(stack, "AcquirePeriod", 0.02)
        assert epics.caput(p + "Acquire", 1, wait=False) == 1
        time.sleep(1.0)
        assert epics.caput(p + "Acquire", 0, wait=False) == 1
        wait_until(lambda: epics.caget(p + "Acquire_RBV") == 0, 30, "the Acquire done")
        message = epics.caget(p + "StatusMessage_RBV", as_string=True)
        assert message.startswith("No frame came: the detector was aborted"), message
        detector = stack.status()["detector"]
        assert detector["acquires_without_frames"] == 2 and detector["last_without_frames"]["aborted"] is True
        # a capture, the camera triggered at its own PVs (as ophyd-async does): its frames never come
        _put(stack, "HDF1:FileName", "nowhere")
        _put(stack, "HDF1:NumCapture", 0)
        _put(stack, "HDF1:Capture", 1)
        cam = stack.cam_prefix
        assert epics.caput(cam + "NumImages", 4, wait=True, timeout=10) == 1
        assert epics.caput(cam + "Acquire", 1, wait=True, timeout=30) == 1
        _put(stack, "HDF1:Capture", 0, timeout=30)
        message = epics.caget(p + "HDF1:WriteMessage", as_string=True)
        assert "the camera took 4 frame(s), none reached the stream" in message, message
        detector = stack.status()["detector"]
        assert (
            detector["acquires_without_frames"] == 3 and detector["last_without_frames"]["frames_taken"] == 4
        )
        # the detector's stream moved to where the daemon listens: the next Acquire's frames come
        stack.kill("sim")
        stack.settings.append(f'sim.endpoint="{elsewhere}"')
        stack.start_sim()
        wait_until(lambda: stack.status()["detector"].get("state") == "Idle", 30, "the camera back")
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=60) == 1
        status = stack.status()
        assert status["detector"]["last_without_frames"] is None
        assert status["detector"]["acquires_without_frames"] == 3  # (a count since the daemon started)
        assert not [a for a in status["alarms"] if a["id"] == "condition:acquire_without_frames"]
        assert [r["frames_expected"] for r in _get_json(stack.api + "/api/runs")] == [400]
    finally:
        stack.stop()


def test_a_run_stopped_at_the_camera_reads_aborted(stack: Stack) -> None:
    """An outside probe: an Acquire's run stopped by another client at the camera's own ``Acquire`` ended
    ``abort`` in the ledger, while ``StatusMessage_RBV`` read "Acquisition completed"."""
    epics = _epics()
    p = stack.prefix
    _put(stack, "NumImages", 400)
    _put(stack, "AcquirePeriod", 0.02)
    assert epics.caput(p + "Acquire", 1, wait=False) == 1
    wait_until(lambda: (epics.caget(p + "ArrayCounter_RBV") or 0) >= 5, 30, "frames coming")
    assert epics.caput(stack.cam_prefix + "Acquire", 0, wait=True, timeout=10) == 1
    wait_until(lambda: epics.caget(p + "Acquire_RBV") == 0, 60, "the Acquire done")
    run = stack.run(epics.caget(p + "RunUid_RBV", as_string=True))
    assert run["exit_status"] == "abort"
    message = epics.caget(p + "StatusMessage_RBV", as_string=True)
    assert message.startswith("Acquisition aborted"), message


def test_num_images_counter_counts_each_acquisition_whoever_started_it(stack: Stack) -> None:
    """``NumImagesCounter_RBV``: the frames of the current (or last) acquisition. An outside probe: it
    counted from this appliance's last Acquire, so each acquisition a client started at the camera's own
    PVs (as ophyd-async does, with a capture open) added to it: 3, 4, 5 for three one-frame
    acquisitions after a two-frame Acquire."""
    epics = _epics()
    p, cam = stack.prefix, stack.cam_prefix
    _put(stack, "NumImages", 2)
    _put(stack, "AcquirePeriod", 0.01)
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=60) == 1
    wait_until(lambda: epics.caget(p + "NumImagesCounter_RBV", use_monitor=False) == 2, 5, "2 frames")
    assert epics.caput(p + "HDF1:FileName", "counted", wait=True, timeout=10) == 1
    assert epics.caput(p + "HDF1:NumCapture", 0, wait=True, timeout=10) == 1
    assert epics.caput(p + "HDF1:Capture", 1, wait=True, timeout=10) == 1
    assert epics.caput(cam + "NumImages", 1, wait=True, timeout=10) == 1
    assert epics.caput(cam + "AcquirePeriod", 0.01, wait=True, timeout=10) == 1
    for n in range(1, 4):
        assert epics.caput(cam + "Acquire", 1, wait=True, timeout=30) == 1
        wait_until(
            lambda n=n: epics.caget(p + "HDF1:NumCaptured_RBV", use_monitor=False) == n, 20, f"{n} captured"
        )
        time.sleep(1.2)  # two refreshes: a count that still grew would show
        assert epics.caget(p + "NumImagesCounter_RBV", use_monitor=False) == 1
        # the message is this acquisition's, not the last Acquire's "completed: 2 frames stored"
        message = epics.caget(p + "StatusMessage_RBV", as_string=True, use_monitor=False)
        assert message == "Acquisition started at the camera ended: 1 frames received", message
    assert epics.caput(p + "HDF1:Capture", 0, wait=True, timeout=30) == 1


def test_a_serial_capture_with_blanks_dropped_stores_every_frame_in_its_file(
    tmp_path: Path, ca_port: int, edge_ca_port: int
) -> None:
    """An outside chaos probe: in a capture (whose file takes every frame, blanks too) a blank's
    compression was cancelled as vetoed; when the cancel came first, the writer's wait for it raised and
    the frame became a ``pipeline_error CancelledError()`` loss (6 of 200). Every frame is stored now."""
    stack = _serial_stack(
        tmp_path, ca_port, edge_ca_port, "sim.hit_fraction=0.3", 'reduction.backend="numpy"'
    )
    epics = _epics()
    p = stack.prefix
    try:
        _put(stack, "HDF1:FileName", "serial_capture")
        _put(stack, "HDF1:NumCapture", 0)
        _put(stack, "HDF1:Capture", 1)
        run_uid = epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False)
        _put(stack, "NumImages", 120)
        _put(stack, "AcquirePeriod", 0.01)
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=120) == 1
        _put(stack, "HDF1:Capture", 0, timeout=60)
        run = stack.run(run_uid)
        assert run["losses"] == [], run["losses"]
        assert run["totals"]["frames_stored"] == 120 and run["totals"]["frames_vetoed"] == 0
        assert epics.caget(p + "HDF1:NumCaptured_RBV", use_monitor=False) == 120
    finally:
        stack.stop()
