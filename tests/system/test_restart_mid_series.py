"""System test: the daemon killed in the middle of a series of unknown length (issue 12, hole 2).

Real processes: ``edge run`` and ``edge sim --frames 0`` (no announced length) on loopback. The daemon
is killed with SIGKILL mid-series and started again on the same store while the simulator goes on. The
rest of the series must become a run of its own, "resumed after restart" and linked to the interrupted
run, whose missing frames are loss records: sent = stored + lost over the two runs, every frame once.
While the daemon is down, ``edge where`` calls the open run "interrupted", not "running". A tomography
scan cut so keeps its reconstruction: the resumed run's slices are of every projection stored.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (filter 32008 for reading back)
import numpy as np
import pytest
from edgeprocs import EdgeStack, free_port, wait_for

from kernels import get_backend

pytestmark = pytest.mark.timeout(150)


def _runs(stack: EdgeStack) -> list[dict[str, Any]]:
    with sqlite3.connect(stack.store / "ledger.sqlite") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started_at").fetchall()]


def _where(stack: EdgeStack, run_uid: str) -> str:
    proc = stack.start("where", run_uid, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _cut_mid_series(stack: EdgeStack, sig: int, frames: int = 0) -> subprocess.Popen[str]:
    """Start the daemon and a simulator of ``frames`` (0: unbounded); once 30 frames are in, stop the
    daemon with ``sig``. Returns the simulator, still sending."""
    daemon = stack.start_daemon()
    sim = stack.start("sim", "--frames", str(frames), "--json", stdout=subprocess.PIPE)
    wait_for(lambda: stack.status()["receiver"].get("frames_received", 0) >= 30, 60, "frames arriving")
    daemon.send_signal(sig)
    daemon.wait(20)
    stack.procs.remove(daemon)
    return sim


def _small_stack(tmp_path: Path, *settings: str) -> EdgeStack:
    """A daemon for 64x64 frames from a simulator at 40 frames/s, with ``settings`` on top."""
    return EdgeStack(tmp_path, ["detector.height=64", "detector.width=64", "sim.rate_hz=40", *settings])


def _each_frame_once(parts: list[set[int]], sent: int, context: object) -> None:
    """Every frame sent has exactly one disposition across ``parts`` (stored or lost, in either run)."""
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not a & b, context
    assert set().union(*parts) == set(range(sent)), (sent, context)


def _frames(run: dict[str, Any]) -> tuple[set[int], set[int]]:
    """(frames in the run's data files, frames in its loss records); each frame counted once."""
    stored: set[int] = set()
    lost: set[int] = set()
    for f in run["files"]:
        if f["name"].endswith(".h5") and f["n_frames"]:
            first, last = f["frames"] if f.get("frames") else (f["first_frame"], f["last_frame"])
            assert last - first + 1 == f["n_frames"], f  # frames arrive in order here: files are contiguous
            assert not stored & set(range(first, last + 1))
            stored.update(range(first, last + 1))
    for loss in run["losses"]:
        frames = set(range(loss["first_frame"], loss["last_frame"] + 1))
        assert not lost & frames, run["losses"]
        lost |= frames
    return stored, lost


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_daemon_killed_mid_series_of_unknown_length_resumes_in_a_linked_run(tmp_path: Path, sig: int) -> None:
    stack = EdgeStack(
        tmp_path,
        [
            "detector.height=128",
            "detector.width=128",
            "sim.rate_hz=40",
            "store.frames_per_file=10",
            "store.file_seconds=0.5",
            'reduction.mode="raw"',
            'reduction.backend="numpy"',
            "reduction.bins=50",
        ],
    )
    try:
        sim = _cut_mid_series(stack, sig)
        (interrupted,) = _runs(stack)
        first_uid = interrupted["run_uid"]
        assert interrupted["frames_expected"] is None
        if sig == signal.SIGKILL:  # the daemon died: the open run is interrupted, not running
            assert interrupted["ended_at"] is None
            text = _where(stack, first_uid)
            assert "exit status: interrupted" in text, text

        stack.start_daemon()  # same store and ledger; the simulator kept going (held back meanwhile)
        if sig == signal.SIGKILL:
            assert stack.status()["appliance"]["recovery"]["runs_failed"] == [first_uid]
        resumed = wait_for(lambda: len(runs := _runs(stack)) == 2 and runs[1], 60, "the resumed run")
        second_uid = resumed["run_uid"]
        wait_for(
            lambda: stack.status()["receiver"].get("frames_received", 0) >= 30, 60, "frames after restart"
        )
        sim.send_signal(signal.SIGINT)  # the detector ends the series
        out, _ = sim.communicate(timeout=60)
        sent = json.loads(out.strip().splitlines()[-1])["frames_sent"]
        wait_for(lambda: stack.run(second_uid)["ended_at"] is not None, 60, "the resumed run ended")
        status = stack.status()
        first, second = stack.run(first_uid), stack.run(second_uid)
        text = _where(stack, second_uid)
        first_text = _where(stack, first_uid)
    finally:
        stack.stop_all()

    receiver = status["receiver"]
    assert receiver.get("series_adopted") == 1
    assert receiver.get("frames_outside_series", 0) == 0
    config = _config(second)
    assert config["resumed_after_restart"] is True and config["resumes_run"] == first_uid
    assert "resumed after restart" in text and first_uid in text
    # each run names the other: `edge where` and the API's where report (the dashboard links them)
    assert f"its series continues in run {second_uid}" in first_text
    assert (first["where"]["continued_by"], first["where"]["resumes_run"]) == ([second_uid], None)
    assert (second["where"]["resumes_run"], second["where"]["continued_by"]) == (first_uid, [])
    assert second["where"]["resumed_at_frame"] == config["first_frame"] > 0
    assert first["exit_status"] == ("fail" if sig == signal.SIGKILL else "abort")
    assert second["exit_status"] == "success"

    stored_a, lost_a = _frames(first)
    stored_b, lost_b = _frames(second)
    reasons = {"daemon_crash", "daemon_restart", "receiver_stopped", "shutdown"}
    assert {r["reason"] for r in first["losses"]} <= reasons, first["losses"]
    assert all(r["reason"] for r in second["losses"])
    _each_frame_once([stored_a, lost_a, stored_b, lost_b], sent, (first["losses"], second["losses"]))
    assert len(stored_a) > 0 and len(stored_b) > 0
    # the interrupted run's documents (forwarded upstream) tell the same account: when the resumed series
    # added daemon_restart losses after they were written, a second revision says so
    revisions = sorted((stack.store / first_uid).glob(f"{first_uid}.documents*.jsonl"))
    restarted = any(r["reason"] == "daemon_restart" for r in first["losses"])
    names = [f"{first_uid}.documents.jsonl"] + ([f"{first_uid}.documents.r2.jsonl"] if restarted else [])
    assert [p.name for p in revisions] == names
    stop = next(
        doc for name, doc in map(json.loads, revisions[-1].read_text().splitlines()) if name == "stop"
    )
    account = stop["edge_accounting"]
    assert account["revision"] == len(names)
    assert (account["frames_stored"], account["frames_lost"]) == (len(stored_a), len(lost_a))


@pytest.mark.parametrize(
    ("sig", "armed"),
    [(signal.SIGKILL, 0), (signal.SIGTERM, 0), (signal.SIGKILL, 300), (signal.SIGTERM, 300)],
    ids=["kill-9", "sigterm", "kill-9-armed", "sigterm-armed"],
)
def test_a_udp_acquisition_cut_by_a_restart_resumes_in_a_linked_run(
    tmp_path: Path, sig: int, armed: int
) -> None:
    """UDP carries no series: the daemon's first run after a restart whose first frame comes after the
    interrupted UDP run's frames continues it, from that frame. Before, the new run counted every earlier
    frame as a gap: frames stored in the first run were also lost in the second. With the armed length
    known (``udp.frames_per_run``), the interrupted run's records of the frames still to come are handed
    to the resumed run: no frame is lost in one run and stored in the other."""
    stack = EdgeStack(
        tmp_path,
        [
            'stream.transport="udp"',
            f"udp.port={free_port()}",
            f"udp.frames_per_run={armed}",
            "udp.idle_seconds=1.0",
            "sim.rate_hz=40",
            "store.frames_per_file=10",
            "store.file_seconds=0.5",
            'reduction.mode="raw"',
        ],
    )
    try:
        sim = _cut_mid_series(stack, sig, armed)
        stack.start_daemon()  # the detector kept sending meanwhile: those packets met a closed port
        resumed = wait_for(lambda: len(runs := _runs(stack)) == 2 and runs[1], 60, "the resumed run")
        wait_for(
            lambda: stack.status()["receiver"].get("frames_received", 0) >= 30, 60, "frames after restart"
        )
        if not armed:  # the detector stops; the run ends when it has been silent
            sim.send_signal(signal.SIGINT)
        out, _ = sim.communicate(timeout=60)  # (armed: every armed frame sent)
        sent = json.loads(out.strip().splitlines()[-1])["frames_sent"]
        first_uid, second_uid = _runs(stack)[0]["run_uid"], resumed["run_uid"]
        wait_for(lambda: stack.run(second_uid)["ended_at"] is not None, 60, "the resumed run ended")
        first, second = stack.run(first_uid), stack.run(second_uid)
        status = stack.status()
    finally:
        stack.stop_all()

    assert status["receiver"].get("series_resumed") == 1
    config = _config(second)
    assert config["resumed_after_restart"] is True and config["resumes_run"] == first_uid
    # the daemon numbers UDP runs on from the ledger's (a restarted one began at 1 again: two runs of
    # series 1, an outside probe)
    assert second["series"] == first["series"] + 1, (first["series"], second["series"])
    assert first["exit_status"] == ("fail" if sig == signal.SIGKILL else "abort")
    # UDP on a loaded machine may lose a frame mid-file (the kernel's buffer overflows): the stored
    # frames are read from the files, not taken as each file's range
    stored_a, lost_a = _stored_frames(stack, first_uid), _lost_frames(first)
    stored_b, lost_b = _stored_frames(stack, second_uid), _lost_frames(second)
    assert {r["reason"] for r in first["losses"]} <= {
        "daemon_crash",
        "daemon_restart",
        "receiver_stopped",
        "shutdown",
        "frame_number_jump",
        "incomplete_frame",
    }
    assert min(stored_b) == config["first_frame"] > max(stored_a)
    _each_frame_once([stored_a, lost_a, stored_b, lost_b], sent, (first["losses"], second["losses"]))
    if armed:
        assert sent == armed and second["exit_status"] == "success"


def _config(run: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded config (the API gives it as a JSON string)."""
    config = run["config"]
    return json.loads(config) if isinstance(config, str) else config


def _stored_frames(stack: EdgeStack, run_uid: str) -> set[int]:
    numbers: set[int] = set()
    for path in (stack.store / run_uid).glob(f"{run_uid}_0*.h5"):
        with h5py.File(path, "r") as handle:
            numbers.update(int(n) for n in handle["/entry/data/frame_number"][:])
    return numbers


def _lost_frames(run: dict[str, Any]) -> set[int]:
    """Frames of whole-frame loss records (a partial loss is a stored frame with pixels missing)."""
    lost: set[int] = set()
    for loss in run["losses"]:
        if not loss["partial"]:
            frames = set(range(loss["first_frame"], loss["last_frame"] + 1))
            assert not lost & frames, run["losses"]
            lost |= frames
    return lost


@pytest.mark.parametrize("ledger", ["the same", "another", "a link to it", "a hard link to it"])
def test_a_second_daemon_on_the_same_store_refuses_to_start(tmp_path: Path, ledger: str) -> None:
    """``edge run`` twice on one store: the second exits 2 naming the first's pid, before touching the
    store (its crash recovery would end the first's open run and move its open files away). Also when
    it names another ``ledger.path``: an outside probe's second daemon started, and its recovery moved
    the first's open file to quarantine (11 frames lost)."""
    stack = EdgeStack(
        tmp_path,
        ["detector.height=64", "detector.width=64", "sim.rate_hz=40", 'reduction.mode="raw"'],
    )
    try:
        first = stack.start_daemon()
        sim = stack.start("sim", "--frames", "0", stdout=subprocess.DEVNULL)
        wait_for(lambda: stack.status()["receiver"].get("frames_received", 0) >= 10, 60, "frames arriving")
        other: list[str] = []
        if ledger == "another":
            other = ["--set", f'ledger.path="{tmp_path / "other.sqlite"}"']
        elif ledger in ("a link to it", "a hard link to it"):  # (and another store: a probe's second
            # daemon served the first's ledger)
            link = tmp_path / "link.sqlite"
            if ledger == "a link to it":
                link.symlink_to(stack.store / "ledger.sqlite")
            else:
                os.link(stack.store / "ledger.sqlite", link)
            other = ["--set", f'ledger.path="{link}"', "--set", f'store.path="{tmp_path / "store-b"}"']
        second = stack.start("run", *other, stderr=subprocess.PIPE)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        if ledger == "a hard link to it":  # (a lock file of its own beside the link: the file's is held)
            assert "holds the ledger file" in err and not (tmp_path / "store-b").exists(), err
        else:
            assert f"another daemon (pid {first.pid})" in err, err
        if ledger == "another":  # refused before it made anything (its ledger, its lock file)
            assert "uses the store" in err and not list(tmp_path.glob("other.sqlite*")), err
        if ledger == "a link to it":
            assert "serves the ledger" in err and not (tmp_path / "store-b").exists(), err
        (run,) = _runs(stack)
        assert run["ended_at"] is None  # the first daemon's run goes on, untouched
        received = stack.status()["receiver"]["frames_received"]
        wait_for(
            lambda: stack.status()["receiver"]["frames_received"] > received, 30, "frames still arriving"
        )
        # nothing set aside (the first daemon makes its open run's quarantine directory, empty)
        assert not [p for p in (stack.store / "quarantine").rglob("*") if p.is_file()]
        sim.send_signal(signal.SIGINT)
        sim.wait(60)
    finally:
        stack.stop_all()


def test_a_tomography_scan_cut_by_a_daemon_kill_is_reconstructed_from_both_parts(tmp_path: Path) -> None:
    """kill -9 mid-scan (darks and flats stored, projections arriving): the run that resumes the scan
    normalises its projections with the darks and flats stored before the kill, and its slices are the
    filtered back-projection of every projection stored in either run (those lost in the crash are
    absent), equal to NumPy's FBP of the stored frames."""
    stack = EdgeStack(
        tmp_path,
        [
            "detector.height=64",
            "detector.width=64",
            "store.frames_per_file=10",
            "store.file_seconds=0.5",
            'reduction.mode="tomo"',
            "reduction.tomo.slices=[20, 32]",
            "reduction.tomo.center=31.5",
            'reduction.backend="numba"',
            'sim.mode="tomo"',
            "sim.tomo_angles=90",
            "sim.tomo_darks=5",
            "sim.tomo_flats=5",
            "sim.rate_hz=40",
        ],
    )
    try:
        daemon = stack.start_daemon()
        sim = stack.start("sim", "--frames", "100", "--json", stdout=subprocess.PIPE)
        wait_for(
            lambda: stack.status()["receiver"].get("frames_received", 0) >= 40, 60, "projections arriving"
        )
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(20)
        stack.procs.remove(daemon)
        stack.start_daemon()
        out, _ = sim.communicate(timeout=120)
        sent = json.loads(out.strip().splitlines()[-1])["frames_sent"]
        resumed = wait_for(
            lambda: len(r := _runs(stack)) == 2 and r[1]["ended_at"] and r[1], 60, "resumed run"
        )
        first_uid, second_uid = _runs(stack)[0]["run_uid"], resumed["run_uid"]
        wait_for(lambda: list((stack.store / second_uid).glob("*_reduced_*.nxs")), 30, "its reduced file")
    finally:
        stack.stop_all()
    assert sent == 100

    def stored(run_uid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frames, keys, angles = [], [], []
        for path in sorted((stack.store / run_uid).glob(f"{run_uid}_0*.h5")):
            with h5py.File(path, "r") as handle:
                frames.append(handle["/entry/data/data"][:].astype(np.float64))
                keys.append(handle["/entry/instrument/detector/image_key"][:])
                angles.append(handle["/entry/sample/rotation_angle"][:])
        return np.concatenate(frames), np.concatenate(keys), np.concatenate(angles)

    frames_a, keys_a, angles_a = stored(first_uid)
    frames_b, keys_b, angles_b = stored(second_uid)
    assert np.count_nonzero(keys_a == 2) == 5 and np.count_nonzero(keys_a == 1) == 5
    assert not np.any(keys_b != 0)  # the resumed part holds projections only
    (reduced,) = sorted((stack.store / second_uid).glob("*_reduced_*.nxs"))
    with h5py.File(reduced, "r") as handle:
        group = handle["/entry/reconstruction"]
        record = {k: group[k][()] for k in group if group[k].ndim == 0}
        slices, rows = group["slices"][:], group["rows"][:]
        assert group["slices"].attrs["units"] == "1/pixel"  # normalised: darks and flats were applied
    assert record["flat_field"].decode().startswith("applied") and first_uid in record["flat_field"].decode()
    assert (record["darks_inherited"], record["flats_inherited"]) == (5, 5)
    assert record["projections_inherited"] == np.count_nonzero(keys_a == 0) > 0
    assert record["projections"] == len(keys_b) > 0
    assert record["inherited_from_runs"].decode() == first_uid
    frames = np.concatenate([frames_a, frames_b])
    keys, angles = np.concatenate([keys_a, keys_b]), np.concatenate([angles_a, angles_b])
    dark, flat = frames[keys == 2].mean(axis=0), frames[keys == 1].mean(axis=0)
    numpy = get_backend("numpy")
    for k, row in enumerate(rows):
        transmission = (frames[keys == 0][:, row, :] - dark[row]) / (flat[row] - dark[row])
        sinogram = -np.log(np.maximum(transmission, 1e-6))
        reference = numpy.fbp(sinogram.astype(np.float32), angles[keys == 0], center=31.5)
        assert np.max(np.abs(slices[k] - reference)) <= 1e-4 * np.max(np.abs(reference))


@pytest.mark.parametrize("armed", [0, 120], ids=["length-unknown", "armed"])
def test_a_udp_acquisition_that_pauses_goes_on_in_a_linked_run_each_frame_once(
    tmp_path: Path, armed: int
) -> None:
    """A UDP sender silent for longer than ``udp.idle_seconds`` in the middle of its frames (``--stall``)
    ends its run; when it carries on counting, the next run continues that one from its first frame.
    Before, the second run counted from 0 and recorded the frames the first had stored as lost
    (``frame_number_jump``), while the first recorded the second's as ``series_end``: 2x the frames
    sent had a disposition (an outside technician's probe)."""
    stack = EdgeStack(
        tmp_path,
        [
            'stream.transport="udp"',
            f"udp.port={free_port()}",
            f"udp.frames_per_run={armed}",
            "udp.idle_seconds=0.5",
            "detector.height=64",
            "detector.width=64",
            "store.frames_per_file=20",
            'reduction.mode="raw"',
        ],
    )
    try:
        stack.start_daemon()
        sim = stack.start(
            "sim", "--frames", "120", "--rate", "100", "--stall", "1.5", "--json", stdout=subprocess.PIPE
        )
        out, _ = sim.communicate(timeout=60)
        sent = json.loads(out.strip().splitlines()[-1])["frames_sent"]
        wait_for(
            lambda: len(runs := _runs(stack)) == 2 and all(r["ended_at"] for r in runs), 60, "two runs ended"
        )
        first_uid, second_uid = (r["run_uid"] for r in _runs(stack))
        first, second = stack.run(first_uid), stack.run(second_uid)
        status = stack.status()
        text = _where(stack, second_uid)
    finally:
        stack.stop_all()

    assert status["receiver"].get("series_continued_after_pause") == 1
    config = _config(second)
    assert config["resumed_after_pause"] is True and config["resumes_run"] == first_uid
    assert f"resumed after a pause at frame {config['first_frame']}: continues run {first_uid}" in text
    stored_a, lost_a = _stored_frames(stack, first_uid), _lost_frames(first)
    stored_b, lost_b = _stored_frames(stack, second_uid), _lost_frames(second)
    assert min(stored_b) == config["first_frame"] > max(stored_a)
    assert not [r for r in second["losses"] if r["last_frame"] < config["first_frame"]], second["losses"]
    _each_frame_once([stored_a, lost_a, stored_b, lost_b], sent, (first["losses"], second["losses"]))
    # every frame sent has its one disposition (UDP on loopback may drop one: then it is a loss record)
    assert stored_a | lost_a | stored_b | lost_b >= set(range(sent))
    assert first["exit_status"] == second["exit_status"] == "success"
    if armed:  # the first run's tail, recorded lost and then the second run's, is not lost by the count
        assert status["receiver"]["frames_handed_over"] == armed - config["first_frame"]
        assert status["receiver"].get("frames_lost", 0) == len(lost_a) + len(lost_b)


def _udp_stack(tmp_path: Path, armed: int) -> tuple[EdgeStack, Callable[[range], None]]:
    """A raw-mode UDP stack (``udp.frames_per_run`` = ``armed``, silence of 0.5 s ends a run) of the
    layout of ``test_stray_frame_numbers``, and a sender of our own (docs/wire-formats.md, 8 packets a
    frame) that waits for each frame to be received."""
    from test_stray_frame_numbers import GRID_COLS, MODULE_COLS, MODULE_ROWS, PAYLOAD_BYTES, udp_frame

    udp_port = free_port()
    stack = EdgeStack(
        tmp_path,
        [
            'stream.transport="udp"',
            f"udp.port={udp_port}",
            f"udp.frames_per_run={armed}",
            f"udp.module_rows={MODULE_ROWS}",
            f"udp.module_cols={MODULE_COLS}",
            "udp.grid_rows=1",
            f"udp.grid_cols={GRID_COLS}",
            f"udp.payload_bytes={PAYLOAD_BYTES}",
            "udp.idle_seconds=0.5",
            "store.frames_per_file=10",
            'reduction.mode="raw"',
        ],
    )

    def send(frames: range) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            before = stack.status()["receiver"].get("frames_received", 0)
            for frame in frames:
                for datagram in udp_frame(frame):
                    sender.sendto(datagram, ("127.0.0.1", udp_port))
                target = before + frame - frames.start + 1
                wait_for(
                    lambda n=target: stack.status()["receiver"].get("frames_received", 0) >= n,
                    10,
                    f"frame {frame} received",
                    interval=0.01,
                )

    return stack, send


def _killed_in_the_pause_after(stack: EdgeStack, send: Callable[[range], None], frames: range) -> None:
    """The daemon started, ``frames`` sent, silence ending their run, the daemon killed (kill -9) in the
    pause that follows."""
    daemon = stack.start_daemon()
    send(frames)
    wait_for(lambda: (runs := _runs(stack)) and runs[0]["ended_at"], 30, "silence ending the run")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(20)
    stack.procs.remove(daemon)


@pytest.mark.parametrize("armed", [0, 60], ids=["length-unknown", "armed"])
def test_a_udp_acquisition_that_pauses_across_a_daemon_restart_goes_on_in_a_linked_run(
    tmp_path: Path, armed: int
) -> None:
    """An outside probe: silence ended the run, the daemon was killed and restarted during the pause,
    and the sender went on counting. The new run was not linked (the pause was remembered in memory
    only): it recorded the first run's frames lost, the first run kept the second's as ``series_end``,
    every frame twice. The ledger's newest run (a UDP run ended ``success`` short of its frames) is
    now that run. Frames are sent by a sender of our own (docs/wire-formats.md), 8 packets each."""
    stack, send = _udp_stack(tmp_path, armed)

    try:
        _killed_in_the_pause_after(stack, send, range(0, 30))
        stack.start_daemon()  # during the pause
        send(range(30, 60))
        wait_for(
            lambda: len(runs := _runs(stack)) == 2 and all(r["ended_at"] for r in runs), 60, "two runs ended"
        )
        first_uid, second_uid = (r["run_uid"] for r in _runs(stack))
        first, second = stack.run(first_uid), stack.run(second_uid)
        status = stack.status()
    finally:
        stack.stop_all()

    assert status["receiver"].get("series_continued_after_pause") == 1
    config = _config(second)
    assert config["resumed_after_pause"] is True and config["resumes_run"] == first_uid
    assert config["first_frame"] == 30
    stored_a, lost_a = _stored_frames(stack, first_uid), _lost_frames(first)
    stored_b, lost_b = _stored_frames(stack, second_uid), _lost_frames(second)
    _each_frame_once([stored_a, lost_a, stored_b, lost_b], 60, (first["losses"], second["losses"]))
    assert stored_a | lost_a | stored_b | lost_b == set(range(60))
    if armed:  # the receiver's count of frames lost says what the ledger says: none
        assert status["receiver"].get("frames_lost", 0) == len(lost_b)


@pytest.mark.parametrize("armed", [0, 30], ids=["length-unknown", "every-armed-frame-came"])
def test_a_copy_of_the_last_frames_after_a_restart_in_the_pause_opens_no_run(
    tmp_path: Path, armed: int
) -> None:
    """An outside probe: silence ended the run, the daemon was restarted during the pause, and the last
    3 frames came again byte for byte (timestamps included): the restarted daemon, which had forgotten
    the run's timestamps, opened a run of them, stored them twice and recorded frames 0..26 of it lost,
    never sent. The run's last timestamps are kept beside the ledger: the copies are counted late. So
    after a run whose every armed frame came (another probe: a run of 4 copies, 36 frames lost)."""
    from test_stray_frame_numbers import udp_frame

    stack, send = _udp_stack(tmp_path, armed)
    try:
        _killed_in_the_pause_after(stack, send, range(0, 30))
        stack.start_daemon()  # during the pause
        port = int(next(s.split("=")[1] for s in stack.overrides if s.startswith("udp.port=")))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for frame in range(27, 30):
                for datagram in udp_frame(frame):
                    sender.sendto(datagram, ("127.0.0.1", port))
        wait_for(
            lambda: stack.status()["receiver"].get("packets_straggling", 0) >= 3 * len(udp_frame(27)),
            20,
            "the copies counted late",
        )
        time.sleep(1.5)  # silence again (udp.idle_seconds 0.5): still no run of them
        runs = _runs(stack)
        losses = stack.run(runs[0]["run_uid"])["losses"]
    finally:
        stack.stop_all()
    assert len(runs) == 1, runs
    assert losses == []


def test_an_acquisition_armed_before_a_restart_in_its_pause_keeps_its_frames_without_frames_per_run(
    tmp_path: Path,
) -> None:
    """An outside probe: ``udp.frames_per_run`` 50, frames 0..29, silence, a kill -9 and a restart
    without ``frames_per_run``, then 30..39: the run before's ``series_end`` records of 30..49 were
    handed over to a run that knew no armed frames, and 40..49, never sent, were in no record. The run
    that goes on is armed for the acquisition's frames, as the run before was."""
    stack, send = _udp_stack(tmp_path, 50)
    try:
        _killed_in_the_pause_after(stack, send, range(0, 30))
        stack.overrides.remove("udp.frames_per_run=50")
        stack.start_daemon()  # during the pause, udp.frames_per_run unset
        send(range(30, 40))
        wait_for(
            lambda: len(runs := _runs(stack)) == 2 and all(r["ended_at"] for r in runs), 60, "two runs ended"
        )
        first_uid, second_uid = (r["run_uid"] for r in _runs(stack))
        first, second = stack.run(first_uid), stack.run(second_uid)
    finally:
        stack.stop_all()
    assert _config(second)["resumes_run"] == first_uid and second["frames_expected"] == 50
    stored_a, lost_a = _stored_frames(stack, first_uid), _lost_frames(first)
    stored_b, lost_b = _stored_frames(stack, second_uid), _lost_frames(second)
    _each_frame_once([stored_a, lost_a, stored_b, lost_b], 50, (first["losses"], second["losses"]))
    assert lost_b == set(range(40, 50)), second["losses"]


def test_an_acquisition_whose_numbers_went_on_goes_on_across_a_restart_in_its_pause(tmp_path: Path) -> None:
    """``udp.frames_per_run`` 20: frames 0..19 (a whole acquisition), then 50..54 (a new acquisition whose
    numbers go on, armed for 50..69), silence, a daemon kill -9 and restart in it, then 55..69. The
    restarted daemon knew the armed frames only as 0..19: the first run after it was another new
    acquisition, and 55..69 were both its frames and the run before's ``series_end`` records. From the
    ledger (``armed_from``) it goes on in the same acquisition: each frame one disposition."""
    stack, send = _udp_stack(tmp_path, 20)

    def ended(count: int) -> list[dict[str, Any]]:
        return wait_for(
            lambda: len(runs := _runs(stack)) == count and all(r["ended_at"] for r in runs) and runs,
            60,
            f"{count} runs ended",
        )

    try:
        daemon = stack.start_daemon()
        send(range(0, 20))
        ended(1)
        send(range(50, 55))
        ended(2)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(20)
        stack.procs.remove(daemon)
        stack.start_daemon()  # during the pause
        send(range(55, 70))
        uids = [r["run_uid"] for r in ended(3)]
        runs = [stack.run(uid) for uid in uids]
    finally:
        stack.stop_all()

    configs = [_config(run) for run in runs]
    assert configs[1]["armed_from"] == 50 and configs[1]["first_frame"] == 50
    assert configs[2]["resumed_after_pause"] is True and configs[2]["resumes_run"] == uids[1]
    assert configs[2]["first_frame"] == 55 and configs[2]["armed_from"] == 50
    parts = [
        part
        for run, uid in zip(runs, uids, strict=True)
        for part in (_stored_frames(stack, uid), _lost_frames(run))
    ]
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not a & b, [
                [(x["first_frame"], x["last_frame"], x["reason"], x["detail"][:150]) for x in run["losses"]]
                for run in runs
            ]
    assert set().union(*parts) == set(range(20)) | set(range(50, 70)), [run["losses"] for run in runs]


def test_a_series_of_known_length_killed_twice_accounts_every_frame_once(tmp_path: Path) -> None:
    """An outside chaos probe: a JSON series of 300 frames, the daemon killed (-9) twice, the second
    time in the run resumed after the first. The resumed run had no length of its own (it saw no header),
    so recovery could not account its tail ("frames after 259 cannot be accounted"): 41 frames had no
    disposition. It now takes the series' length from the run it continues."""
    stack = _small_stack(
        tmp_path,
        "store.frames_per_file=10",
        "store.file_seconds=0.5",
        'reduction.mode="raw"',
        'reduction.backend="numpy"',
        "reduction.bins=50",
    )
    frames = 160
    try:
        sim = _cut_mid_series(stack, signal.SIGKILL, frames)
        daemon = stack.start_daemon()
        wait_for(lambda: len(_runs(stack)) == 2, 60, "the resumed run")
        wait_for(lambda: stack.status()["receiver"].get("frames_received", 0) >= 20, 60, "frames resumed")
        daemon.send_signal(signal.SIGKILL)  # the second time, in the resumed run
        daemon.wait(20)
        stack.procs.remove(daemon)
        sim.send_signal(signal.SIGINT)  # the detector stops early: its end waits for a receiver
        stack.start_daemon()
        out, _ = sim.communicate(timeout=120)
        # what the stopped detector still held (its end, perhaps frames) reaches the new daemon, or not
        wait_for(lambda: stack.status()["receiver"].get("messages", 0) or True, 10, "the new daemon")
        time.sleep(3.0)
        runs = wait_for(lambda: (r := _runs(stack)) and all(x["ended_at"] for x in r) and r, 60, "runs ended")
        details = [stack.run(r["run_uid"]) for r in runs]
    finally:
        stack.stop_all()
    assert json.loads(out.strip().splitlines()[-1])["frames_sent"] < frames  # (stopped early)
    assert _config(details[1])["resumes_run"] == runs[0]["run_uid"]
    assert details[1]["frames_expected"] == frames  # the series' length, from the run it continues
    parts = []
    for run in details:
        parts += [_stored_frames(stack, run["run_uid"]), _lost_frames(run)]
    # every frame of the announced series, sent or not (those never sent: missing at its end), once
    _each_frame_once(parts, frames, [r["losses"] for r in details])
    assert set().union(*parts) == set(range(frames)), [r["losses"] for r in details]


def _table_rows(stack: EdgeStack, run: dict[str, Any]) -> dict[int, list[int]]:
    """Frame number -> the dispositions the run's reduced files' frame tables give it."""
    rows: dict[int, list[int]] = {}
    for f in run["files"]:
        if f["name"].endswith(".nxs"):
            with h5py.File(stack.store / run["run_uid"] / f["name"], "r") as h5:
                table = h5["/entry/frames"]
                for n, d in zip(table["frame_number"][:], table["disposition"][:], strict=True):
                    rows.setdefault(int(n), []).append(int(d))
    return rows


def test_a_frame_table_never_says_stored_for_a_frame_a_crash_lost(tmp_path: Path) -> None:
    """An outside chaos probe: a reduced file written every few seconds listed the frames of the data
    file still open as stored (disposition 0); the kill then quarantined that file, and the run's
    documents recorded the same frames lost (daemon_crash). The upstream copy said both. A stored
    frame's row now waits until its data file is closed; recovery lists the frames of files closed but
    not yet in a table."""
    stack = _small_stack(
        tmp_path,
        "store.frames_per_file=1000",  # the data file stays open until the kill
        "store.file_seconds=600",
        "store.reduced_file_seconds=0.2",  # while the table is written every 0.2 s
        'reduction.mode="raw"',
    )
    frames = 120
    try:
        sim = _cut_mid_series(stack, signal.SIGKILL, frames)
        stack.start_daemon()
        out, _ = sim.communicate(timeout=120)
        runs = wait_for(
            lambda: len(r := _runs(stack)) == 2 and all(x["ended_at"] for x in r) and r, 60, "runs ended"
        )
        details = [stack.run(r["run_uid"]) for r in runs]
    finally:
        stack.stop_all()
    assert json.loads(out.strip().splitlines()[-1])["frames_sent"] == frames
    first = details[0]
    assert any(loss["reason"] == "daemon_crash" for loss in first["losses"]), first["losses"]
    parts = []
    for run in details:
        stored, lost = _stored_frames(stack, run["run_uid"]), _lost_frames(run)
        rows = _table_rows(stack, run)
        said_stored = {n for n, d in rows.items() if 0 in d}
        assert not said_stored & lost, sorted(said_stored & lost)[:10]
        assert said_stored == stored, (sorted(said_stored - stored)[:10], sorted(stored - said_stored)[:10])
        assert all(len(d) == 1 for d in rows.values())  # one row per frame
        parts += [stored, lost]
    _each_frame_once(parts, frames, [r["losses"] for r in details])


def test_a_series_resumed_in_another_mode_says_so(tmp_path: Path) -> None:
    """An outside chaos probe restarted the daemon with another reduction mode mid-series: the resumed
    run went on in the new mode without a word. It now says so (log, and ``resumed_in_other_mode``)."""
    stack = _small_stack(
        tmp_path,
        "store.frames_per_file=10",
        'reduction.mode="raw"',
    )
    try:
        sim = _cut_mid_series(stack, signal.SIGKILL, 120)
        stack.start_daemon("--set", 'reduction.mode="powder"', "--set", "reduction.bins=50")
        sim.communicate(timeout=120)
        runs = wait_for(
            lambda: len(r := _runs(stack)) == 2 and all(x["ended_at"] for x in r) and r, 60, "runs ended"
        )
        second = stack.run(runs[1]["run_uid"])
    finally:
        stack.stop_all()
    config = _config(second)
    assert config["resumes_run"] == runs[0]["run_uid"] and config["resumed_in_other_mode"] == "raw"
    # the other settings that shape its products, each named (an outside probe's min_peaks changed halfway
    # through a series, said nowhere on the run)
    assert config["resumed_with_other_settings"] == {"bins": [1000, 50]}, config[
        "resumed_with_other_settings"
    ]


def test_frames_received_before_a_crash_of_a_series_that_never_goes_on_are_accounted(tmp_path: Path) -> None:
    """A series of unknown length, its frames in no closed file yet, the daemon killed, and the detector
    never sends again: the run was "0 stored, 0 lost", the frames it had received in no record (an outside
    probe). The open run's highest frame received is in the ledger (every 0.2 s), so recovery records the
    frames up to it lost: every frame received is stored or lost."""
    stack = _small_stack(
        tmp_path, "store.frames_per_file=1000", "store.file_seconds=3600", 'reduction.mode="raw"'
    )
    try:
        daemon = stack.start_daemon()
        sim = stack.start("sim", "--frames", "0", stdout=subprocess.PIPE)
        wait_for(lambda: stack.status()["receiver"].get("frames_received", 0) >= 12, 60, "frames arriving")
        sim.send_signal(signal.SIGSTOP)  # the detector stops sending, never ends its series
        time.sleep(1.0)  # (the receiver takes what was on its way; the ledger has its progress)
        received = stack.status()["receiver"]["frames_received"]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(20)
        stack.procs.remove(daemon)
        sim.kill()
        (interrupted,) = _runs(stack)
        uid = interrupted["run_uid"]
        assert interrupted["frames_expected"] is None and interrupted["frames_seen"] == received - 1
        stack.start_daemon()
        run = stack.run(uid)
    finally:
        stack.stop_all()
    assert run["exit_status"] == "fail"
    stored, lost = _frames(run)
    assert not stored & lost
    assert stored | lost == set(range(received)), (received, run["losses"], run["files"])
    assert {loss["reason"] for loss in run["losses"]} == {"daemon_crash"}
