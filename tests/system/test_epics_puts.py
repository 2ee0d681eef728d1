"""System tests: bad puts to the appliance's PVs are refused as ``docs/pvs.md`` says (issue 12, hole 4/5).

Real processes, as in ``test_epics_control.py`` (whose `Stack` this reuses): ``edge sim --ioc``, ``edge
run`` with its IOC and the default access-security file (no ``epics.acf_file``: the packaged one is
loaded), and this process as a stock pyepics client (plus caproto, to read the CA status a put gets).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edgeprocs import fill_up, wait_for
from test_epics_control import WHOLE, Stack, _epics, _get_json

from edge.ioc import PVS

pytestmark = pytest.mark.timeout(180)

MINOR = 1
STATE, WRITE, HW_LIMIT, SOFT = 7, 2, 11, 15


def _meta(stack: Stack, name: str) -> dict[str, Any]:
    """value (as a string for enums and long strings), severity and status of a PV."""
    epics = _epics()
    pv = epics.get_pv(stack.prefix + name, form="ctrl")
    assert pv.wait_for_connection(timeout=10), name
    meta = pv.get_with_metadata(timeout=5, as_string=True, use_monitor=False, count=WHOLE)
    assert meta is not None, name
    return {**meta, "char_value": str(meta["value"])}


def _put(stack: Stack, name: str, value: Any) -> int:
    return int(_epics().caput(stack.prefix + name, value, wait=True, timeout=10))


def _message(stack: Stack) -> str:
    return str(_epics().caget(stack.prefix + "StatusMessage_RBV", as_string=True, use_monitor=False))


def _wait_message(stack: Stack, text: str) -> str:
    return wait_for(lambda: text in (m := _message(stack)) and m, 5, f"StatusMessage_RBV saying {text!r}")


def _run_mode(run: dict[str, Any]) -> str | None:
    if run.get("mode"):
        return str(run["mode"])
    config = run.get("config")
    config = json.loads(config) if isinstance(config, str) else (config or {})
    return (config.get("reduction") or {}).get("mode")


def _assert_refused(stack: Stack, name: str, value: Any, kept: str, status: int, reason: str) -> None:
    assert (
        _put(stack, name, value) == 1
    )  # stock pyepics: the put completes (CA cannot fail it after the write)
    meta = _meta(stack, name)
    assert meta["char_value"] == kept, (name, meta)
    assert (meta["severity"], meta["status"]) == (MINOR, status), (name, meta)
    message = _wait_message(stack, f"Refused {name} = ")
    assert reason in message, message


def test_bad_puts_are_refused_with_an_alarm_a_reason_and_no_traceback(idle_stack: Stack) -> None:
    stack = idle_stack
    # enums: an index the record does not have (7: an unused mbbo state; 99: beyond any state)
    assert _meta(stack, "Mode")["char_value"] == "powder"
    _assert_refused(stack, "Mode", 7, "powder", STATE, "index 7 is not one of 0..3")
    assert _put(stack, "Mode", 99) == 1
    meta = _meta(stack, "Mode")
    assert meta["char_value"] == "powder" and meta["severity"] >= MINOR  # (the mbbo itself says INVALID)
    assert _meta(stack, "Mode_RBV")["char_value"] == "powder"
    _assert_refused(stack, "HDF1:Capture", 5, "Done", STATE, "index 5")
    _assert_refused(stack, "Acquire", 5, "Done", STATE, "index 5")
    # a good put clears the alarm
    assert _put(stack, "Mode", 0) == 1
    meta = _meta(stack, "Mode")
    assert (meta["char_value"], meta["severity"]) == ("raw", 0)
    wait_for(lambda: _meta(stack, "Mode_RBV")["char_value"] == "raw", 5, "Mode_RBV raw")
    _wait_message(stack, "raw mode ready")  # (no kernels to load: ready at once, and said so)

    # numbers out of range: refused, the last good value kept (a negative period never becomes 0)
    assert _put(stack, "AcquirePeriod", 0.02) == 1
    _assert_refused(stack, "AcquirePeriod", -1.0, "0.020000", HW_LIMIT, "outside 0..3600")
    assert _put(stack, "AcquirePeriod", float("nan")) == 1
    meta = _meta(stack, "AcquirePeriod")  # (the ao record itself adds INVALID UDF for a NaN)
    assert meta["char_value"] == "0.020000" and meta["severity"] >= MINOR, meta
    _wait_message(stack, "not a finite number")
    assert _epics().caget(stack.prefix + "AcquirePeriod_RBV") == pytest.approx(0.02)
    _assert_refused(stack, "NumImages", 0, "1", HW_LIMIT, "outside 1..10000000")
    _assert_refused(stack, "NumImages", -5, "1", HW_LIMIT, "outside 1..10000000")
    assert _epics().caget(stack.prefix + "NumImages_RBV") == 1
    # the accepted ranges are the records' display limits, as a display tool or ophyd reads them
    for name, low, high in (("NumImages", 1, 10_000_000), ("AcquirePeriod", 0, 3600)):
        meta = _meta(stack, name)
        assert (meta["lower_disp_limit"], meta["upper_disp_limit"]) == (low, high), (name, meta)

    # strings longer than the record: refused, not truncated (and no traceback in the daemon)
    assert _put(stack, "HDF1:FileName", "scan_0001") == 1
    _assert_refused(stack, "HDF1:FileName", "x" * 300, "scan_0001", WRITE, "at most 255 fit")
    wait_for(
        lambda: _epics().caget(stack.prefix + "HDF1:FileName_RBV", as_string=True) == "scan_0001",
        5,
        "FileName_RBV kept",
    )
    _assert_refused(stack, "HDF1:FilePath", "/elsewhere", str(stack.tmp_path / "store"), SOFT, "store.path")
    # a template whose field is wider than a file name: refused at the put (formatted, it built a
    # gigabyte-long name when the capture opened: a 35 s stall and 8 GB of memory)
    template = "%s%s_%999999999d.h5"
    _assert_refused(stack, "HDF1:FileTemplate", template, "%s%s.h5", SOFT, "wider than a file name")
    # a name that does not fit FullFileName_RBV: the capture is refused, saying how long it would be
    assert _put(stack, "HDF1:FileName", "n" * 250) == 1
    _assert_refused(stack, "HDF1:Capture", 1, "Done", SOFT, "FullFileName_RBV takes 255")
    assert _put(stack, "HDF1:FileName", "scan_0001") == 1
    # bytes that are not UTF-8: refused, and the message shows them escaped, in ASCII (a client reading
    # it as Latin-1 showed mojibake)
    assert _epics().caput(stack.prefix + "HDF1:FileName", b"\xff\xfe abc", wait=True, timeout=5) == 1
    message = _wait_message(stack, "Refused HDF1:FileName = ")
    assert message.isascii() and "\\ufffd" in message, message

    # what a caproto client (or `caput -c`) is told: a refused value completes normally, a read-only PV
    # is refused at the protocol level
    from caproto import AccessRights
    from caproto.threading.client import Context

    ctx = Context()
    try:
        rbv, mode = ctx.get_pvs(stack.prefix + "NumImages_RBV", stack.prefix + "Mode")
        rbv.wait_for_connection(timeout=10)
        mode.wait_for_connection(timeout=10)
        assert not rbv.channel.access_rights & AccessRights.WRITE
        assert mode.channel.access_rights & AccessRights.WRITE
        assert rbv.write([5], wait=True, timeout=5).status.name == "ECA_NOWTACCESS"
        assert mode.write([9], wait=True, timeout=5).status.name == "ECA_NORMAL"  # refused by the IOC
        assert mode.read(timeout=5).data[0] == 0
    finally:
        ctx.disconnect()

    # every read-only PV refuses writes: pyepics sees no write access and its caput raises
    epics = _epics()
    readonly = [spec.name for spec in PVS if not spec.writable]
    assert len(readonly) >= 48
    pvs = [epics.get_pv(stack.prefix + name) for name in readonly]
    for pv in pvs:
        assert pv.wait_for_connection(timeout=10), pv.pvname
    writable = [pv.pvname for pv in pvs if pv.write_access]
    assert not writable, f"read-only PVs with write access: {writable}"
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        epics.caput(stack.prefix + "NumImages_RBV", 5, wait=True, timeout=5)
    assert epics.caget(stack.prefix + "NumImages_RBV") == 1

    assert stack.procs["daemon"].poll() is None
    log = (stack.tmp_path / "daemon.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_mode_between_runs_switches_the_next_run_and_during_a_run_is_refused(idle_stack: Stack) -> None:
    stack = idle_stack
    epics = _epics()
    p = stack.prefix
    assert _put(stack, "Mode", 0) == 1  # raw
    assert _put(stack, "Reduction:MinPeaks", 3) == 1
    assert _put(stack, "Reduction:Roi", "0:16:0:16;20:40:8:24") == 1
    wait_for(lambda: epics.caget(p + "Reduction:MinPeaks_RBV", use_monitor=False) == 3, 5, "MinPeaks_RBV")
    wait_for(
        lambda: (
            epics.caget(p + "Reduction:Roi_RBV", as_string=True, use_monitor=False) == "0:16:0:16;20:40:8:24"
        ),
        5,
        "Roi_RBV",
    )
    _assert_refused(stack, "Reduction:Roi", "0:16:0", "0:16:0:16;20:40:8:24", SOFT, "is not r0:r1:c0:c1")
    _assert_refused(stack, "Reduction:Roi", "0:999:0:16", "0:16:0:16;20:40:8:24", SOFT, "256x256 frame")
    _assert_refused(stack, "Reduction:MinSnr", 0.0, "5.000", SOFT, "greater than 0")
    assert _put(stack, "Reduction:TomoCenter", float("nan")) == 1  # NaN: estimated

    assert _put(stack, "NumImages", 5) == 1
    assert _put(stack, "AcquirePeriod", 0.01) == 1
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=90) == 1
    first = stack.run(epics.caget(p + "RunUid_RBV", as_string=True))
    assert _run_mode(first) == "raw", first

    # during a run: refused with the reason, the next run's mode unchanged
    assert _put(stack, "NumImages", 100_000) == 1
    done = threading.Event()
    acquire = epics.PV(p + "Acquire")
    try:
        assert acquire.wait_for_connection(timeout=10)
        acquire.put(1, callback=lambda **_: done.set())
        wait_for(lambda: stack.status()["pipeline"].get("run") is not None, 30, "the run open")
        _assert_refused(stack, "Mode", 3, "raw", SOFT, "is open: the reduction mode changes between runs")
        _assert_refused(stack, "Reduction:MinPeaks", 7, "3", SOFT, "is open")
        assert _meta(stack, "Mode_RBV")["char_value"] == "raw"
        # a second Acquire = 1 with completion, on another channel (another client): refused at once
        # with the reason, not taken as a run that completed; the run goes on
        from caproto.threading.client import Context

        ctx = Context()
        try:
            (second,) = ctx.get_pvs(p + "Acquire")
            second.wait_for_connection(timeout=10)
            assert second.write([1], wait=True, timeout=10).status.name == "ECA_NORMAL"
        finally:
            ctx.disconnect()
        meta = _meta(stack, "Acquire")
        assert (meta["severity"], meta["status"]) == (MINOR, SOFT), meta
        assert "already acquiring" in _wait_message(stack, "Refused Acquire = 1")
        assert not done.is_set() and stack.status()["pipeline"].get("run") is not None
        epics.caput(p + "Acquire", 0)  # abort (a put of 0 with completion waits for the run's end)
        assert done.wait(60), "the aborted run's put did not complete"
    finally:
        acquire.disconnect()
    # between runs again: accepted, and the next run takes it
    wait_for(lambda: stack.status()["pipeline"].get("run") is None, 30, "the run closed")
    assert _put(stack, "Mode", 3) == 1  # tomo
    meta = _meta(stack, "Mode")
    assert (meta["char_value"], meta["severity"]) == ("tomo", 0)
    wait_for(lambda: _meta(stack, "Mode_RBV")["char_value"] == "tomo", 5, "Mode_RBV tomo")
    assert stack.procs["daemon"].poll() is None


def _assert_the_next_acquire_is_refused(stack: Stack, runs: int = 1) -> None:
    """An Acquire put fails at the client (access security: the store refuses runs), the detector is
    never armed, no further run starts (``runs`` there were before), the daemon goes on."""
    epics = _epics()
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        epics.caput(stack.prefix + "Acquire", 1, wait=True, timeout=10)
    assert epics.caget(stack.prefix + "Acquire_RBV") == 0
    assert stack.status()["detector"]["state"] == "Idle"  # never armed
    assert len(_get_json(stack.api + "/api/runs")) == runs  # no further run was started
    assert stack.procs["daemon"].poll() is None


def test_a_refused_run_fails_its_acquire_put_and_says_why(
    tmp_path: Path, ca_port: int, edge_ca_port: int
) -> None:
    """The store above its high-water mark with unverified data (no consumer): the next Acquire put
    fails at the client with the reason in StatusMessage_RBV; the state says pressure, not full."""
    stack = Stack(tmp_path, ca_port, edge_ca_port, acf=None)
    stack.settings += [
        "retention.quota_bytes=1000000000",
        "retention.headroom_bytes=0",
        "retention.high_water=0.00001",  # 10 kB of unverified data is enough
        "retention.low_water=0.000005",
        "retention.interval_seconds=0.2",
    ]
    epics = _epics()
    p = stack.prefix
    try:
        stack.start_sim()
        stack.start_daemon()
        assert _put(stack, "NumImages", 5) == 1
        assert _put(stack, "AcquirePeriod", 0.01) == 1
        assert epics.caput(p + "Acquire", 1, wait=True, timeout=90) == 1  # accepted: the store was empty
        message = _wait_message(stack, "Runs refused: local store above its high-water mark")
        assert "full" not in message, message
        assert _meta(stack, "Disk:RetentionState_RBV")["char_value"] == "pressure"
        # the alarm (recomputed on retention's own thread; None between passes) never says "full" here
        assert "full" not in (stack.status()["retention"]["alarm"] or "")
        _assert_the_next_acquire_is_refused(stack)
    finally:
        stack.stop()


def test_a_run_on_a_full_disk_fails_its_acquire_put_and_says_why(
    tmp_path: Path, ca_port: int, edge_ca_port: int, small_disk: Path
) -> None:
    """The store's disk filled (by another file, here): the next Acquire put fails at the client, the
    detector never armed, with the reason in StatusMessage_RBV, as for a store full of unverified data.
    Before, the IOC asked retention only, and retention counted only the store's files: the detector
    was armed and the whole series refused (later, only once a write had failed)."""
    stack = Stack(tmp_path, ca_port, edge_ca_port, acf=None)
    stack.settings += [
        f'store.path="{small_disk / "store"}"',
        "retention.headroom_bytes=0",
        "ledger.resume_free_bytes=4194304",
        "store.frames_per_file=2",
    ]
    try:
        stack.start_sim()
        stack.start_daemon()
        fill_up(small_disk / "ballast.bin")
        assert _put(stack, "NumImages", 5) == 1
        assert _put(stack, "AcquirePeriod", 0.01) == 1
        _wait_message(stack, "Runs refused: the disk holding the local store is full")
        _assert_the_next_acquire_is_refused(stack, runs=0)
    finally:
        stack.stop()


def test_setpoints_follow_a_change_made_over_rest(tmp_path: Path, ca_port: int, edge_ca_port: int) -> None:
    """``PUT /api/reduction`` changes what the next run takes: ``Mode`` and the ``Reduction:*`` setpoints
    show it too, not only their readbacks (a client reading the setpoint sees the next run's mode)."""
    import httpx

    stack = Stack(tmp_path, ca_port, edge_ca_port, acf=None)
    stack.settings.append('api.token="s3cret"')
    try:
        stack.start_sim()
        stack.start_daemon()
        answer = httpx.put(
            stack.api + "/api/reduction",
            json={"mode": "serial", "serial": {"min_snr": 9}},
            headers={"Authorization": "Bearer s3cret"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        for name, expected in (("Mode", "serial"), ("Reduction:MinSnr", "9.000")):
            wait_for(lambda n=name, e=expected: _meta(stack, n)["char_value"] == e, 5, f"{name} = {expected}")
            assert _meta(stack, f"{name}_RBV")["char_value"] == expected
        assert _meta(stack, "Mode")["severity"] == 0
    finally:
        stack.stop()


def test_an_idle_ioc_posts_no_value_that_did_not_change(idle_stack: Stack) -> None:
    """The refresh sets every readback every 0.5 s: monitors get a value only when it changed (a 4096²
    preview or the profile re-posted to every client twice a second would be waste)."""
    import collections
    import time

    epics = _epics()
    pvs = [epics.PV(idle_stack.prefix + spec.name, auto_monitor=True) for spec in PVS]
    for pv in pvs:
        assert pv.wait_for_connection(timeout=10), pv.pvname
    time.sleep(1.0)  # the first values of every subscription are in
    last: dict[str, Any] = {pv.pvname: (repr(pv.value), pv.severity) for pv in pvs}
    repeats: collections.Counter[str] = collections.Counter()

    def posted(pvname: str = "", value: Any = None, severity: Any = None, **_: Any) -> None:
        shown = (repr(value), severity)
        if last.get(pvname) == shown:  # (a value that changed, the free disk space say, is a post)
            repeats.update([pvname])
        last[pvname] = shown

    for pv in pvs:
        pv.add_callback(posted)
    time.sleep(2.0)  # four refreshes
    for pv in pvs:
        pv.disconnect()
    assert not repeats, f"re-posted unchanged while idle: {dict(repeats)}"


@contextlib.contextmanager
def _long_run_started(stack: Stack) -> Iterator[tuple[Any, threading.Event, str]]:
    """A run of 100,000 frames at 0.01 s (only an abort ends it in time), started by a put of 1 with a
    callback on a pyepics PV of ``Acquire``: (that PV, set when its completion comes, the run's uid)."""
    epics = _epics()
    assert _put(stack, "NumImages", 100_000) == 1
    assert _put(stack, "AcquirePeriod", 0.01) == 1
    acquire = epics.PV(stack.prefix + "Acquire")
    done = threading.Event()
    try:
        assert acquire.wait_for_connection(timeout=10)
        acquire.put(1, callback=lambda **_: done.set())
        wait_for(lambda: stack.status()["pipeline"].get("run") is not None, 30, "the run open")
        yield acquire, done, epics.caget(stack.prefix + "RunUid_RBV", as_string=True, use_monitor=False)
    finally:
        acquire.disconnect()


def test_a_stop_with_completion_returns_once_the_run_has_ended_so_the_next_start_runs(
    idle_stack: Stack,
) -> None:
    """A stop then a start, as Bluesky's disarm and the next plan's arm do: the 0 put with completion
    returned while the run was still ending, and the 1 right after it was refused "already acquiring"
    (an outside probe; the refusal's alarm then cleared as the run ended: no run, and no sign of it)."""
    stack = idle_stack
    epics = _epics()
    p = stack.prefix
    with _long_run_started(stack) as (_acquire, done, first):
        # another client (its own channel: one channel takes one put with completion at a time)
        from caproto.threading.client import Context

        ctx = Context()
        try:
            (other,) = ctx.get_pvs(p + "Acquire")
            other.wait_for_connection(timeout=10)
            # its 1 during the run: refused; the alarm outlives the run's end
            assert other.write([1], wait=True, timeout=10).status.name == "ECA_NORMAL"
            assert (_meta(stack, "Acquire")["severity"], _meta(stack, "Acquire")["status"]) == (MINOR, SOFT)
            assert not done.is_set()
            other.write([0], wait=True, timeout=60)  # the stop, with completion
            # it returned once the run had ended: its readback and its record say so already
            assert epics.caget(p + "Acquire_RBV", use_monitor=False) == 0
            aborted = stack.run(first)
            assert aborted["exit_status"] == "abort", "the stop's put returned before the run had ended"
            # the start's completion goes out with it (to another client: which arrives first is the network's)
            wait_for(done.is_set, 10, "the start's put-completion")
        finally:
            ctx.disconnect()
        assert aborted["exit_status"] == "abort"
        # the frames the detector never took say so: "aborted", not "missing at the series end"
        assert {loss["reason"] for loss in aborted["losses"]} == {"aborted"}, aborted["losses"]
        # never taken, so never sent: not lost (no "frames lost" alarm, LostFrames_RBV 0)
        totals = aborted["totals"]
        assert totals["frames_lost"] == 0 and totals["frames_not_acquired"] > 0, totals
        assert totals["frames_stored"] + totals["frames_not_acquired"] == 100_000, totals
        assert epics.caget(p + "LostFrames_RBV", use_monitor=False) == 0
        assert not [a for a in stack.status()["alarms"] if a["id"].endswith(":lost")]
        assert _meta(stack, "Acquire")["severity"] == 0  # the stop was a good put: the alarm is cleared
        assert _message(stack).startswith("Acquisition aborted: "), _message(stack)
    assert _put(stack, "NumImages", 30) == 1
    assert _put(stack, "AcquirePeriod", 0.05) == 1
    assert epics.caput(p + "Acquire", 1, wait=True, timeout=60) == 1  # the start right after the stop
    second = epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False)
    assert second != first and stack.run(second)["exit_status"] == "success"
    assert stack.run(second)["totals"]["frames_stored"] == 30
    assert stack.procs["daemon"].poll() is None


def test_dropped_arrays_counts_from_its_last_put_and_its_setpoint_follows(idle_stack: Stack) -> None:
    """An outside probe: after a put of 7 to HDF1:DroppedArrays the setpoint read 7 for minutes while its
    readback read 0. As areaDetector's plugin, a put sets the count (0 resets it) and each refresh writes
    the count back to the setpoint: the two agree."""
    import time

    epics, p = _epics(), idle_stack.prefix
    for value in (7, 0):
        assert _put(idle_stack, "HDF1:DroppedArrays", value) == 1
        time.sleep(1.2)  # two refreshes (every 0.5 s)
        assert epics.caget(p + "HDF1:DroppedArrays_RBV", use_monitor=False) == value
        assert epics.caget(p + "HDF1:DroppedArrays", use_monitor=False) == value


def test_back_to_back_starts_with_completion_each_run_as_a_count_plan_does(idle_stack: Stack) -> None:
    """Acquire 1 with completion, again as soon as it returns, as a plan counting one frame at a time
    does. At the end of a run the IOC resets ``Acquire``, whose forward link processes
    ``AcquireAbortBusy``; the run's put could complete while that was still busy, so the client's next
    1 had its forward link ignored and completed at once, and the reset's link then started a run no put
    waited for; the 1 after it was refused "already acquiring" (a few starts in 20 on a loaded machine).
    Two busy processes load the 2 cores here."""
    import subprocess
    import sys

    from caproto.threading.client import Context

    stack = idle_stack
    p = stack.prefix
    assert _put(stack, "NumImages", 1) == 1
    assert _put(stack, "AcquirePeriod", 0.0) == 1
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    ctx = Context()
    uids: list[str] = []
    refusals: list[str] = []
    try:
        acquire, uid, message = ctx.get_pvs(p + "Acquire", p + "RunUid_RBV", p + "StatusMessage_RBV")
        acquire.wait_for_connection(timeout=10)
        for _ in range(20):
            acquire.write([1], wait=True, timeout=60)
            uids.append(bytes(uid.read().data).rstrip(b"\0").decode())
            text = bytes(message.read().data).rstrip(b"\0").decode()
            if text.startswith("Refused"):
                refusals.append(text)
    finally:
        ctx.disconnect()
        for proc in load:
            proc.kill()
            proc.wait()
    assert not refusals, refusals[:3]
    assert len(set(uids)) == 20, uids
    for run_uid in uids:
        assert stack.run(run_uid)["totals"]["frames_stored"] == 1


@pytest.mark.parametrize("capture", [False, True], ids=["runs", "in-a-capture"])
def test_a_start_sent_as_acquire_rbv_goes_to_done_starts_the_next_run(
    idle_stack: Stack, capture: bool
) -> None:
    """Classic ophyd's ``SingleTrigger`` puts 1 without completion as soon as ``Acquire_RBV`` goes from
    Acquiring to Done. The readback goes to Done a few ms before the run's busy record has finished
    processing, and a 1 in between was refused "already acquiring" and started nothing (an outside
    probe: 15 of 30 refused; `bp.count` hung). Here the 1 is put from the readback's monitor callback,
    with two busy processes loading the 2 cores; every edge must start the next run. Inside an open
    capture too, whose run goes on across the acquisitions (a 1 taken as one finished must not wait for
    that run to end)."""
    import subprocess
    import sys

    from caproto.threading.client import Context

    stack, p = idle_stack, idle_stack.prefix
    assert _put(stack, "NumImages", 2) == 1
    assert _put(stack, "AcquirePeriod", 0.0) == 1
    if capture:
        for name, value in (
            ("HDF1:FilePath", str(stack.tmp_path / "store" / "caps")),
            ("HDF1:CreateDirectory", 1),
            ("HDF1:FileName", "edges"),
            ("HDF1:FileTemplate", "%s%s.h5"),
            ("HDF1:NumCapture", 0),
            ("HDF1:Capture", 1),
        ):
            assert _put(stack, name, value) == 1, name
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    ctx = Context()
    rounds = 12
    edges = threading.Semaphore(0)
    started: list[float] = []
    try:
        acquire, readback, message = ctx.get_pvs(p + "Acquire", p + "Acquire_RBV", p + "StatusMessage_RBV")
        acquire.wait_for_connection(timeout=10)
        last = [0]

        def on_readback(_sub: Any, response: Any) -> None:
            value = int(response.data[0])
            if last[0] == 1 and value == 0 and len(started) < rounds:
                acquire.write([1], wait=False)  # at once, from the monitor, as SingleTrigger does
                started.append(0.0)
                edges.release()
            last[0] = value

        sub = readback.subscribe(data_type="native")
        sub.add_callback(on_readback)
        acquire.write([1], wait=False)
        for n in range(rounds):
            assert edges.acquire(timeout=30), (
                f"round {n}: no run ended; " + bytes(message.read().data).rstrip(b"\0").decode()
            )
        wait_for(lambda: epics_rbv(stack) == 0, 30, "the last run's end")
    finally:
        ctx.disconnect()
        for proc in load:
            proc.kill()
            proc.wait()
    if capture:  # one run, every acquisition's frames in it
        assert _put(stack, "HDF1:Capture", 0) == 1
        wait_for(lambda: all(r["ended_at"] for r in _get_json(stack.api + "/api/runs")), 30, "the run's end")
        (run,) = _get_json(stack.api + "/api/runs")
        assert run["frames_stored"] == 2 * (rounds + 1) and run["exit_status"] == "success", run
        assert not _message(stack).startswith(("Refused", "Next run not started")), _message(stack)
        return
    wait_for(lambda: all(r["ended_at"] for r in _get_json(stack.api + "/api/runs")), 30, "every run's end")
    runs = [r for r in _get_json(stack.api + "/api/runs") if r["frames_expected"] == 2]
    assert len(runs) == rounds + 1, [(r["run_uid"], r["exit_status"]) for r in runs]
    assert all(r["frames_stored"] == 2 and r["exit_status"] == "success" for r in runs), runs
    assert not _message(stack).startswith("Refused"), _message(stack)


def epics_rbv(stack: Stack) -> int:
    return int(_epics().caget(stack.prefix + "Acquire_RBV", use_monitor=False))


def test_a_start_with_completion_right_after_a_stop_without_completes_at_the_run_s_end(
    idle_stack: Stack,
) -> None:
    """A 0 without completion while idle, then at once a 1 with completion (a script's "stop; start and
    wait; read the file"): the 0's processing held ``AcquireAbortBusy``, so the 1's forward link was
    ignored and its put completed in 1-3 ms while the 0's link started the run (an outside probe)."""
    import time

    from caproto.threading.client import Context

    stack, p = idle_stack, idle_stack.prefix
    assert _put(stack, "NumImages", 10) == 1
    assert _put(stack, "AcquirePeriod", 0.05) == 1
    ctx = Context()
    try:
        (acquire,) = ctx.get_pvs(p + "Acquire")
        acquire.wait_for_connection(timeout=10)
        for _ in range(3):
            acquire.write([0], wait=False)
            began = time.monotonic()
            acquire.write([1], wait=True, timeout=60)
            took = time.monotonic() - began
            assert epics_rbv(stack) == 0, f"the put completed after {took:.3f} s with the run going"
            uid = _epics().caget(p + "RunUid_RBV", as_string=True, use_monitor=False)
            run = stack.run(uid)
            assert run["ended_at"] is not None and run["totals"]["frames_stored"] == 10, run["totals"]
    finally:
        ctx.disconnect()


def test_a_start_right_after_a_stop_during_a_run_starts_the_next_run_once_it_ends(
    idle_stack: Stack,
) -> None:
    """During a run, a 0 then at once a 1, neither with completion (a panel's "stop" then "start"): the
    1 came while the aborted run was still ending and was refused as "already acquiring"; areaDetector
    stops and starts again. Now it starts the next run once the aborted one has ended."""
    import time

    stack, p = idle_stack, idle_stack.prefix
    epics = _epics()
    assert _put(stack, "NumImages", 400) == 1
    assert _put(stack, "AcquirePeriod", 0.05) == 1
    assert epics.caput(p + "Acquire", 1, wait=False) == 1
    wait_for(lambda: epics_rbv(stack) == 1, 20, "the first run going")
    first = wait_for(
        lambda: epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False) or None, 20, "its run uid"
    )
    time.sleep(0.5)
    assert epics.caput(p + "Acquire", 0, wait=False) == 1
    assert epics.caput(p + "Acquire", 1, wait=False) == 1
    second = wait_for(
        lambda: (
            (uid := epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False)) not in ("", first)
            and uid
        ),
        30,
        "a second run",
    )
    ended = stack.run(first)
    runs = [  # (what each run was when the next one showed: a CI failure once found the first still open)
        {k: r.get(k) for k in ("run_uid", "series", "started_at", "ended_at", "exit_status", "config")}
        for r in _get_json(stack.api + "/api/runs")
    ]
    assert ended["exit_status"] == "abort", f"{first=} {second=} {_message(stack)!r} {runs}"
    meta = _meta(stack, "Acquire")
    assert meta["severity"] == 0 and not _message(stack).startswith("Refused"), (meta, _message(stack))
    # stop, start, stop: the last word is a stop, so no run follows this one
    wait_for(lambda: epics_rbv(stack) == 1, 20, "the second run going")
    for value in (0, 1, 0):
        assert epics.caput(p + "Acquire", value, wait=False) == 1
    run = wait_for(lambda: (r := stack.run(second))["ended_at"] is not None and r, 30, "the second run's end")
    assert run["exit_status"] == "abort" and run["totals"]["frames_lost"] == 0, run["totals"]
    time.sleep(3)
    assert epics.caget(p + "RunUid_RBV", as_string=True, use_monitor=False) == second
    assert epics_rbv(stack) == 0


def test_double_setpoints_publish_their_range_as_control_limits_and_still_refuse_beyond_it(
    idle_stack: Stack,
) -> None:
    """Every double setpoint with a range: its control limits are that range (0..0 before), as the long
    setpoints' are, and a put beyond either end is still refused, MINOR HWLIMIT, the last value kept
    (an ao record clamps a put at its drive limits, which are its control limits)."""
    stack = idle_stack
    doubles = [spec for spec in PVS if spec.kind == "aOut" and spec.limits is not None]
    assert {"AcquirePeriod", "AcquireTime", "Temperature", "Reduction:MinSnr"} <= {s.name for s in doubles}
    for spec in doubles:
        assert spec.limits is not None
        low, high = spec.limits
        meta = _meta(stack, spec.name)
        # one ulp of tolerance: the control limits lie one double beyond the range (pv_input.drive_limits)
        ctrl = (meta["lower_ctrl_limit"], meta["upper_ctrl_limit"])
        assert ctrl == (pytest.approx(low, rel=1e-15, abs=1e-300), pytest.approx(high, rel=1e-15)), (
            spec.name,
            meta,
        )
        assert (meta["lower_disp_limit"], meta["upper_disp_limit"]) == (low, high), (spec.name, meta)
        kept = meta["char_value"]
        for beyond in (high + max(1.0, abs(high)), low - max(1.0, abs(low)), high * 1e6 + 1e6):
            _assert_refused(stack, spec.name, beyond, kept, HW_LIMIT, f"outside {low:g}..{high:g}")
        # the range's own ends are taken (the drive limits clamp nothing inside it)
        assert _put(stack, spec.name, high) == 1
        meta = _meta(stack, spec.name)
        assert (float(meta["value"]), meta["severity"]) == (pytest.approx(high), 0), (spec.name, meta)
        if low <= 0.0 <= high:  # -0.0 (an IEEE put) is 0: shown back and saved as 0, never "-0"
            import math

            assert _put(stack, spec.name, -0.0) == 1
            shown = [
                _epics().caget(stack.prefix + spec.name + end, use_monitor=False) for end in ("", "_RBV")
            ]
            assert all(math.copysign(1.0, float(v)) > 0 for v in shown), (spec.name, shown)


def test_a_stop_without_completion_on_the_starts_own_channel_aborts_the_run(idle_stack: Stack) -> None:
    """The pattern pvs.md recommends on the channel that holds the start's put-completion: a 0 put
    WITHOUT completion on the same pyepics PV object, then wait for Acquire_RBV 0. (A 0 WITH completion
    on that channel would wait behind the 1's, as EPICS's CA server serialises a channel's
    put-completions: the run would go to its end.) The run ends ``abort`` at once."""
    stack = idle_stack
    epics = _epics()
    with _long_run_started(stack) as (acquire, done, run_uid):
        acquire.put(0, wait=False)  # same channel, no completion: taken at once
        wait_for(
            lambda: epics.caget(stack.prefix + "Acquire_RBV", use_monitor=False) == 0, 30, "Acquire_RBV 0"
        )
        wait_for(done.is_set, 10, "the start's put-completion")
    run = stack.run(run_uid)
    assert run["exit_status"] == "abort", run
    assert run["totals"]["frames_stored"] < 100_000, run["totals"]
