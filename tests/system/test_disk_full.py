"""A disk that really fills (issue 12, hole 3): a small tmpfs holds the store and the ledger.

Frames that cannot be written become ``disk_full`` loss records, the open file is quarantined, the
alarm is raised, a new run is refused, writing resumes by itself when space returns, and SIGTERM stays
prompt. CI runs as root and can mount; there a failed mount is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (filter 32008 for reading back)
import pytest
from edgeprocs import EdgeStack, fill_up, free_port, get_json, wait_for

pytestmark = pytest.mark.timeout(180)

# raw frames of 256^2 in files of 10: a run of a few MiB fills a disk left nearly full
SMALL_RAW_RUN = [
    "detector.height=256",
    "detector.width=256",
    "store.frames_per_file=10",
    "store.file_seconds=600",
    'reduction.mode="raw"',
]


def _fill(ballast: Path, leave: int) -> None:
    """Take the disk holding ``ballast`` (allocated, not sparse) until ``leave`` bytes are free."""
    disk = os.statvfs(ballast.parent)
    with open(ballast, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, disk.f_bavail * disk.f_frsize - leave)


def _no_wal_slack(store: Path) -> None:
    """Empty the ledger's write-ahead log, so that its next write must take new blocks. SQLite reuses a
    checkpointed log from its start: with up to 1000 pages of it left, the ledger's records on a full
    disk may all fit there (they are then written, not held, and the test has nothing to see)."""
    db = sqlite3.connect(store / "ledger.sqlite", timeout=10)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.close()
    assert busy == 0, "the daemon kept the ledger's log busy"


def _start_logged(stack: EdgeStack, log: Path) -> subprocess.Popen[str]:
    """The daemon, its stderr in ``log`` (read at the end for tracebacks; shown if it fails to start)."""
    with open(log, "w") as sink:
        try:
            return stack.start_daemon(stderr=sink)
        except AssertionError as error:
            raise AssertionError(f"{error}: {log.read_text()[-3000:]}") from None


def _our_tracebacks(log: str) -> list[str]:
    """Tracebacks through this project's code in a daemon's stderr. h5py's own "Exception ignored in
    ObjectID.__dealloc__" (HDF5 cannot release an object of a file a full disk kept it from closing) is
    HDF5's noise, not a failure of ours."""
    blocks = log.split("Traceback (most recent call last):")[1:]
    return [b[:2000] for b in blocks if "/edge/" in b or "/firmware_bridge/" in b or "/kernels/" in b]


def _send(stack: EdgeStack, frames: int) -> tuple[str, int]:
    run_uid = str(uuid.uuid4())
    sim = stack.start("sim", "--frames", str(frames), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
    out, _ = sim.communicate(timeout=90)
    return run_uid, int(json.loads(out.strip().splitlines()[-1])["frames_sent"])


def _ended(stack: EdgeStack, run_uid: str) -> dict:
    return wait_for(lambda: (run := stack.run(run_uid))["ended_at"] and run, 60, f"run {run_uid} to end")


def test_a_full_disk_is_a_state_with_losses_an_alarm_and_recovery(tmp_path: Path, small_disk: Path) -> None:
    store = small_disk / "store"
    stack = EdgeStack(
        tmp_path,
        [
            *SMALL_RAW_RUN,
            "ledger.reserve_bytes=2097152",
            "ledger.resume_free_bytes=16777216",
            "retention.headroom_bytes=0",
            "sim.rate_hz=100",
            "sim.pool=8",
        ],
    )
    stack.store = store
    stack.overrides.append(f'store.path="{store}"')
    ballast = small_disk / "ballast.bin"
    daemon = stack.start_daemon()
    try:
        _fill(ballast, 3 << 20)  # about 3 MiB left: room for a few files of frames, not for the run
        first, sent = _send(stack, 150)
        run = _ended(stack, first)
        totals = run["totals"]
        assert totals["frames_stored"] + totals["frames_lost"] == sent, totals
        assert totals["frames_lost_by_reason"].get("disk_full", 0) > 0, totals
        # the run's row too: the frames of a file quarantined when the disk filled are losses, not stored
        assert run["frames_stored"] == totals["frames_stored"], (run["frames_stored"], totals)
        status = stack.status()
        assert status["store"]["disk_full"]["full"], status["store"]
        assert any(a["source"] == "condition:disk_full" for a in status["alarms"]), status["alarms"]
        # new runs are refused, and the status says so (it read accepting_runs true: an outside probe),
        # with what to do; the alarm is the disk-full one, not a second storage one
        assert status["retention"]["accepting_runs"] is False, status["retention"]
        assert "the upstream confirming files lets retention purge them" in status["retention"]["refusal"]
        assert not any(a["source"] == "condition:storage" for a in status["alarms"]), status["alarms"]
        assert list((store / "quarantine").rglob("*.part")) or totals["frames_lost_by_reason"]["disk_full"]
        # while the disk is full a new run is refused, its frames recorded with the reason
        second, sent2 = _send(stack, 5)
        refused = _ended(stack, second)
        assert refused["exit_status"] == "abort" and refused["totals"]["frames_lost"] == sent2
        assert "disk is full" in refused["losses"][0]["detail"]
        # space returns: writing resumes by itself, no restart
        ballast.unlink()
        wait_for(lambda: not stack.status()["store"]["disk_full"]["full"], 30, "the disk-full state to clear")
        assert stack.status()["retention"]["accepting_runs"] is True
        third, sent3 = _send(stack, 20)
        assert _ended(stack, third)["totals"]["frames_stored"] == sent3
        assert not any(a["source"] == "condition:disk_full" for a in stack.status()["alarms"])
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(5) == 0  # prompt: a deadline of 5 s (TimeoutExpired fails the test)
    finally:
        stack.stop_all()


def test_a_full_disk_on_the_hpc_side_holds_delivery_back_and_loses_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    """The consumer's disk fills mid-run: `edge pull` keeps running, refuses the chunks it cannot
    write (counted on both sides, never acknowledged), and once space returns every file arrives
    byte-identical, with nothing lost."""
    upstream = small_disk / "upstream"
    stack = EdgeStack(
        tmp_path,
        [
            *SMALL_RAW_RUN,
            "store.chunk_bytes=65536",
            "upstream.resend_seconds=1",  # a chunk refused twice waits this long before it goes again
            "sim.rate_hz=200",
            "sim.pool=8",
        ],
    )
    stack.upstream = upstream
    ballast = small_disk / "ballast.bin"
    _fill(ballast, 512 << 10)  # about half a MiB left: room for a file or two, not the run
    try:
        stack.start_daemon()
        pull = stack.start("pull")
        run_uid, sent = _send(stack, 60)
        wait_for(lambda: stack.status()["upstream"].get("chunks_nacked", 0) >= 3, 60, "chunks refused")
        assert pull.poll() is None  # a full disk is not the end of the client
        (consumer,) = stack.status()["upstream"]["consumers"]  # the appliance says why, in its words
        assert "No space left" in consumer["last_refusal"] and consumer["chunks_refused"] >= 3
        assert not _verified_all(stack, run_uid)
        ballast.unlink()  # the HPC side makes room
        wait_for(lambda: _verified_all(stack, run_uid), 90, "every file verified once there is room")
        run = stack.run(run_uid)
        assert run["totals"]["frames_stored"] == sent and run["totals"]["frames_lost"] == 0
        assert pull.poll() is None
    finally:
        stack.stop_all()
    local = sorted((stack.store / run_uid).glob("*.h5"))
    assert local
    for path in local:
        assert (upstream / run_uid / path.name).read_bytes() == path.read_bytes()
    assert not list(upstream.rglob("*.part"))


def _verified_all(stack: EdgeStack, run_uid: str) -> bool:
    run = stack.run(run_uid)
    return run["ended_at"] is not None and all(f["state"] == "verified" for f in run["files"])


def test_a_ledger_that_cannot_write_holds_its_records_until_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    """No reserve (or a competing writer took the space the reserve gave back): the ledger's own writes
    fail. The daemon keeps running, holds what it must record, writes it once space returns (the frames
    of a full disk in a few merged records, not one per frame), and stops cleanly. The default
    ledger.resume_free_bytes (64 MiB) is more than this 48 MiB disk: writing resumes at a quarter of it.
    Nothing half-written stays in the run's directory, and the frame table lists every stored frame."""
    store = small_disk / "store"
    stack = EdgeStack(
        tmp_path,
        [
            *SMALL_RAW_RUN,
            "ledger.reserve_bytes=0",
            "retention.headroom_bytes=0",
            "sim.rate_hz=100",
            "sim.pool=8",
        ],
    )
    stack.store = store
    ballast = small_disk / "ballast.bin"
    log = tmp_path / "daemon.log"
    daemon = _start_logged(stack, log)
    try:
        # a run that starts on the full disk: not even its start can be recorded; it is refused, held
        # (the log emptied first: a checkpointed one had room for these records, and then nothing was
        # held, a CI failure)
        _no_wal_slack(store)
        _fill(ballast, 0)
        refused, sent = _send(stack, 50)
        wait_for(lambda: stack.status()["store"]["ledger_writes_held"] > 0, 30, "ledger writes held")
        assert stack.status()["store"]["disk_full"]["full"]
        ballast.unlink()
        run = _ended(stack, refused)
        assert run["exit_status"] == "abort" and run["totals"]["frames_lost"] == sent, run["totals"]
        assert len(run["losses"]) == 1, run["losses"]  # one record for the frames, not a row each
        wait_for(lambda: not stack.status()["store"]["disk_full"]["full"], 30, "space to return")
        # a run the disk fills under: its frames' and files' records are held, then made
        run_uid = str(uuid.uuid4())
        sim = stack.start("sim", "--frames", "400", "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
        wait_for(lambda: stack.status()["frames"]["stored"] >= 20, 30, "frames stored")
        _no_wal_slack(store)
        fill_up(ballast)
        wait_for(lambda: stack.status()["store"]["ledger_writes_held"] > 0, 30, "ledger writes held")
        assert daemon.poll() is None
        ballast.unlink()
        out, _ = sim.communicate(timeout=90)
        sent = int(json.loads(out.strip().splitlines()[-1])["frames_sent"])
        run = _ended(stack, run_uid)
        totals = run["totals"]
        assert totals["frames_stored"] + totals["frames_lost"] == sent, totals
        assert totals["frames_lost_by_reason"].get("disk_full", 0) > 0, totals
        assert len(run["losses"]) < 10, run["losses"]  # merged ranges, not a row per frame
        assert stack.status()["store"]["ledger_writes_held"] == 0
        assert [a for a in stack.status()["alarms"] if a["source"].startswith("thread:")] == []
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        stack.stop_all()
    assert list(store.glob("*/*.part")) == []  # set aside in quarantine, or removed: no "crash" next start
    stored, listed = set(), set()
    for path in (store / run_uid).glob(f"{run_uid}_0*.h5"):
        with h5py.File(path, "r") as handle:
            stored.update(handle["/entry/data/frame_number"][:].tolist())
    for path in (store / run_uid).glob(f"{run_uid}_reduced_*.nxs"):
        with h5py.File(path, "r") as handle:
            listed.update(handle["/entry/frames/frame_number"][:].tolist())
    assert len(stored) == totals["frames_stored"] and stored <= listed  # rows kept while the disk was full
    assert _our_tracebacks(log.read_text()) == []


def _small_stack(tmp_path: Path, small_disk: Path) -> EdgeStack:
    """Raw runs at 50 Hz into a store on the small disk, no reserve or headroom kept."""
    stack = EdgeStack(
        tmp_path,
        [
            *SMALL_RAW_RUN,
            "ledger.reserve_bytes=0",
            "ledger.resume_free_bytes=4194304",
            "retention.headroom_bytes=0",
            "sim.rate_hz=50",
        ],
    )
    stack.store = small_disk / "store"
    return stack


def _killed_mid_series(stack: EdgeStack, run_uid: str) -> subprocess.Popen[str]:
    """The daemon started, a series of 100 000 frames going, the daemon killed (kill -9) once 20 of its
    frames are stored; the simulator, still sending."""
    daemon = stack.start_daemon()
    sim = stack.start("sim", "--frames", "100000", "--run-uid", run_uid)
    wait_for(lambda: stack.status()["frames"]["stored"] >= 20, 60, "frames stored")
    daemon.kill()
    daemon.wait()
    return sim


def test_a_daemon_started_on_a_full_disk_comes_up_and_recovers_once_there_is_room(
    tmp_path: Path, small_disk: Path
) -> None:
    """kill -9 mid-run, the disk fills, the daemon is started again: it comes up (no crash loop) with
    the disk-full state shown, and the interrupted run is accounted for once space returns."""
    stack, ballast = _small_stack(tmp_path, small_disk), small_disk / "ballast.bin"
    run_uid = str(uuid.uuid4())
    try:
        sim = _killed_mid_series(stack, run_uid)
        sim.kill()
        sim.wait()
        fill_up(ballast)
        log = tmp_path / "again.log"
        again = _start_logged(stack, log)
        assert stack.status()["store"]["disk_full"]["full"]
        ballast.unlink()
        run = _ended(stack, run_uid)
        totals = run["totals"]
        assert totals["frames_stored"] > 0 and totals["frames_lost_by_reason"]["daemon_crash"] > 0
        assert totals["frames_stored"] + totals["frames_lost"] == 100_000  # the series' announced length
        again.send_signal(signal.SIGTERM)
        assert again.wait(10) == 0
    finally:
        stack.stop_all()
    assert _our_tracebacks(log.read_text()) == []


def test_a_series_resumed_on_a_full_disk_goes_on_and_is_stored_once_there_is_room(
    tmp_path: Path, small_disk: Path
) -> None:
    """An outside probe: kill -9 with the disk full and the detector going on; the restarted daemon
    refused the resumed series as a new run (all its frames lost, ``run_refused``) and it stayed refused
    after space returned. A series already going is not a new run: it goes on, and once there is room
    its frames are stored again, no restart, no new series."""
    stack, ballast = _small_stack(tmp_path, small_disk), small_disk / "ballast.bin"
    run_uid = str(uuid.uuid4())
    try:
        sim = _killed_mid_series(stack, run_uid)
        fill_up(ballast)  # the detector goes on sending into a full disk
        log = tmp_path / "again.log"
        again = _start_logged(stack, log)
        assert stack.status()["store"]["disk_full"]["full"]
        resumed = wait_for(
            lambda: (uid := stack.status()["pipeline"].get("run")) and uid != run_uid and uid,
            60,
            "the resumed run open",
        )
        ballast.unlink()  # (the ledger holds the run's records until then)
        stored = wait_for(
            lambda: (n := stack.run(resumed)["frames_stored"]) >= 20 and n,
            60,
            "the resumed run's frames stored",
        )
        assert stored >= 20 and stack.run(resumed)["exit_status"] is None  # going on, not refused
        sim.kill()
        sim.wait()
        again.send_signal(signal.SIGTERM)
        assert again.wait(10) == 0
    finally:
        stack.stop_all()
    assert _our_tracebacks(log.read_text()) == []


def test_two_kills_on_a_disk_that_stays_full_leave_each_frame_one_disposition(
    tmp_path: Path, small_disk: Path
) -> None:
    """An outside chaos probe: kill -9 while the full disk held the ledger's records, a restart on the
    still-full disk, kill -9 again, a restart, then space. The second start ran its recovery on a ledger
    without the records the first start held (its own recovery's, its resumed run's), and when space
    returned both accounts were written: frames lost in two runs, stored in one and lost in another, a run
    left open (3371 dispositions for 2500 frames). A start whose predecessor's held records the disk
    refuses again now waits for them (status, alarm, runs refused) and recovers once they are written."""
    stack, ballast = _small_stack(tmp_path, small_disk), small_disk / "ballast.bin"
    stack.overrides += ["detector.height=128", "detector.width=128"]  # (the series fits once space returns)
    store = stack.store
    run_uid = str(uuid.uuid4())
    try:
        daemon = stack.start_daemon()
        sim = stack.start("sim", "--frames", "1500", "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
        wait_for(lambda: stack.status()["frames"]["stored"] >= 20, 60, "frames stored")
        _no_wal_slack(store)
        fill_up(ballast)
        wait_for(lambda: stack.status()["store"]["ledger_writes_held"] > 0, 30, "ledger writes held")
        daemon.kill()
        daemon.wait()
        for attempt in ("first", "second"):
            again = _start_logged(stack, tmp_path / f"{attempt}.log")
            status = stack.status()
            assert status["appliance"]["recovery_waits_for_held_records"] > 0, attempt
            assert status["appliance"]["recovery"]["runs_failed"] == [], attempt  # (not run yet)
            assert "daemon:recovery_waits" in {a["source"] for a in status["alarms"]}, attempt
            assert stack.run(run_uid)["where"]["state"] == "interrupted", attempt  # (not "running")
            assert status["counts"]["run"]["run_uid"] == run_uid, attempt
            assert status["counts"]["run"]["active"] is False, attempt  # (cut, not being received)
            if attempt == "first":
                again.kill()
                again.wait()
        ballast.unlink()
        wait_for(
            lambda: stack.status()["appliance"]["recovery_waits_for_held_records"] == 0, 30, "the recovery"
        )
        out, _ = sim.communicate(timeout=120)
        sent = int(json.loads(out.strip().splitlines()[-1])["frames_sent"])
        runs = wait_for(
            lambda: (rows := get_json(stack.url + "/api/runs")) and all(r["ended_at"] for r in rows) and rows,
            60,
            "every run ended",
        )
        totals = [stack.run(r["run_uid"])["totals"] for r in runs]
        accounted = sum(t["frames_stored"] + t["frames_vetoed"] + t["frames_lost"] for t in totals)
        assert accounted == sent, (sent, [(r["run_uid"], t) for r, t in zip(runs, totals, strict=True)])
        assert stack.run(run_uid)["totals"]["frames_lost_by_reason"].get("daemon_crash", 0) > 0
        again.send_signal(signal.SIGTERM)
        assert again.wait(10) == 0
    finally:
        stack.stop_all()
    assert _our_tracebacks((tmp_path / "second.log").read_text()) == []


def test_a_consumer_disk_too_small_for_every_file_finishes_the_ones_it_has_room_for(small_disk: Path) -> None:
    """An outside probe: on a small consumer disk the chunks of several files came in turn, each file
    half written (sparse) when the disk filled, and none could ever finish. ``edge pull`` now takes a
    file's whole space at its first chunk: a file that fits finishes, one that does not is refused
    from its first chunk (``nack``, sent again later) and holds no space."""
    import xxhash
    import zmq

    from edge.durable import checksum_bytes
    from edge.upstream import protocol as p
    from edge.upstream.pull import PullClient

    size, step = 1 << 20, 256 << 10
    data = {name: os.urandom(size) for name in ("a.h5", "b.h5")}
    output = small_disk / "upstream"
    output.mkdir()
    _fill(small_disk / "ballast.bin", size + size // 2)  # room for one and a half files
    client = PullClient("tcp://127.0.0.1:1", "hpc", output, 8, zmq.Context.instance())
    replies: dict[str, list[p.Message]] = {name: [] for name in data}
    for index, offset in enumerate(range(0, size, step)):  # the two files' chunks in turn
        for file_id, (name, content) in enumerate(data.items()):
            piece = content[offset : offset + step]
            chunk = p.Chunk(
                10 * file_id + index,
                file_id,
                "run-1",
                name,
                size,
                index,
                4,
                offset,
                step,
                checksum_bytes(piece),
            )
            replies[name] += client._handle(p.encode(chunk, piece))
        client._sync()
    assert all(isinstance(r, p.Ack) for r in replies["a.h5"]), replies["a.h5"]
    assert all(isinstance(r, p.Nack) and "No space left" in r.reason for r in replies["b.h5"]), replies[
        "b.h5"
    ]
    assert not (output / "run-1" / "b.h5.part").exists()
    whole = xxhash.xxh3_128_hexdigest(data["a.h5"])
    (verified,) = client._handle(p.encode(p.FileComplete(0, "run-1", "a.h5", size, whole)))
    assert isinstance(verified, p.FileVerified) and verified.checksum == whole
    assert (output / "run-1" / "a.h5").read_bytes() == data["a.h5"]
    assert client.stats["write_errors"] == 4 and client.stats["files_verified"] == 1


def test_edge_pull_waits_for_a_full_output_and_starts_once_it_has_room(
    tmp_path: Path, small_disk: Path
) -> None:
    """An outside probe: ``edge pull`` into a full filesystem said it waits for it, then at its first
    retry (5 s on) that "another edge pull" used the directory, and exited 2: its first try, failing to
    write its pid into the lock file, had kept the lock. It waits, and starts once the disk has room."""
    import sys
    import time

    ballast = small_disk / "ballast.bin"
    output = small_disk / "upstream"
    output.mkdir()
    fill_up(ballast)
    pull = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "pull",
            "--set",
            f'pull.output="{output}"',
            "--set",
            f'pull.endpoint="tcp://127.0.0.1:{free_port()}"',
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pull.stderr is not None
        line = pull.stderr.readline()
        assert "yet: [Errno 28]" in line and "waiting for it" in line, line
        time.sleep(7)  # past its first retry, the disk still full
        assert pull.poll() is None, pull.stderr.read()
        ballast.unlink()
        line = pull.stderr.readline()  # (the next retry's: at most 5 s on)
        assert line.startswith("pull: consumer"), line
        pull.terminate()
        assert pull.wait(30) == 0
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
        if pull.stderr is not None:
            pull.stderr.close()
