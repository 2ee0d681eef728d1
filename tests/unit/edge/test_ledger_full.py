"""A ledger whose disk is full (SQLite's ``max_page_count`` makes it so here: the same "database or disk
is full" error a full filesystem gives): nothing raises into a daemon thread, nothing is forgotten.

The recorder holds what it cannot write, merged, and writes it in order once space returns; a refused
transaction leaves the connection usable; the forwarder counts a refused acknowledgement and the chunk
goes again."""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from pathlib import Path

import pytest
import zmq

from edge.diskguard import DiskGuard
from edge.durable import file_checksums
from edge.held_journal import HeldJournal
from edge.ledger import Ledger
from edge.recorder import RunRecorder
from edge.upstream import protocol as p
from edge.upstream.forwarder import Forwarder
from edge.where import where_report


def _cap(ledger: Ledger) -> None:
    """No page more: every write that needs one fails as on a full disk."""
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count={pages}")


def _uncap(ledger: Ledger) -> None:
    ledger._db.execute("PRAGMA max_page_count=1073741823")


def _journaled_recorder(tmp_path: Path, store: Path) -> tuple[Ledger, HeldJournal, DiskGuard, RunRecorder]:
    """A ledger, its held-records journal, a disk guard and a run recorder writing to ``store``."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    journal = HeldJournal(tmp_path / "ledger.held")
    assert journal.make()
    guard = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 0, 0, clock=Clock())
    return (
        ledger,
        journal,
        guard,
        RunRecorder(ledger, store, chunk_bytes=1 << 20, disk=guard, journal=journal),
    )


def _fill(ledger: Ledger, run_uid: str) -> None:
    """Use up the pages the ledger has free (big rows, then ever smaller ones), so that the next record
    of any size needs a new page."""
    frame = 10_000_000
    for size in (2000, 500, 100, 20, 0):
        for _ in range(10_000):
            frame += 2
            try:
                ledger.record_loss(run_uid, frame, frame, "filler", "x" * size)
            except sqlite3.OperationalError:
                break
        else:
            raise AssertionError("the capped ledger never filled")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_refused_transaction_is_rolled_back_and_the_ledger_goes_on(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, 10, "{}")
    path = tmp_path / "f.h5"
    path.write_bytes(b"x" * 4096)
    size, digest, chunks = file_checksums(path, 1024)
    _cap(ledger)
    _fill(ledger, "filler-run")
    try:
        ledger.file_stored("run", path.name, path, size, digest, (0, 3, 4), chunks * 200)
    except sqlite3.OperationalError as error:
        assert "full" in str(error)
    else:
        raise AssertionError("the full ledger took the file")
    assert not ledger._db.in_transaction
    _uncap(ledger)
    ledger.file_stored("run", path.name, path, size, digest, (0, 3, 4), chunks)
    assert [f["name"] for f in ledger.files("run")] == ["f.h5"]
    ledger.close()


def test_records_a_full_ledger_refuses_are_held_merged_and_made_when_space_returns(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    clock = Clock()
    guard = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 0, 0, clock=clock)
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20, disk=guard)
    uid = recorder.open_run("r", series=1, frames_expected=8, config={"shape": [4, 4], "type": "uint16"})
    _cap(ledger)
    _fill(ledger, "filler-run")
    for frame in range(8):  # a frame at a time, as a full disk loses them
        recorder.loss(uid, frame, frame, "disk_full", "the disk is full: not written")
    recorder.close_run(uid, frames_stored=0, exit_status="success")
    assert guard.full
    assert recorder.held() == 2  # one merged loss record, and the run's end
    assert ledger.losses(uid) == [] and ledger.run(uid)["ended_at"] is None
    assert recorder.counts["runs_failed_all_lost"] == 1  # the held losses count: every frame was lost
    # the run view says it ended (the ledger alone would call it running)
    assert recorder.held_end(uid) == "fail"
    report = where_report(ledger, uid, held_end=recorder.held_end(uid))
    assert report["state"] == "fail (ended; the disk is full: the ledger records it when space returns)"
    assert report["held_end"] == "fail"  # what `edge where` asks the daemon's API for
    recorder.retry_pending()  # still full (re-measured at most every 0.1 s): nothing is tried
    assert recorder.held() == 2
    _uncap(ledger)
    clock.now += 2.0
    assert not guard.check()
    recorder.retry_pending()
    assert recorder.held() == 0
    (loss,) = ledger.losses(uid)
    assert (loss["first_frame"], loss["last_frame"], loss["reason"]) == (0, 7, "disk_full")
    assert ledger.run(uid)["exit_status"] == "fail"
    assert recorder.held_end(uid) is None and where_report(ledger, uid)["state"] == "fail"
    assert ledger.run_totals(uid)["frames_lost"] == 8
    assert (tmp_path / "store" / uid / f"{uid}.documents.jsonl").is_file()  # written after the records
    ledger.close()


def test_an_acknowledgement_the_full_ledger_refuses_is_counted_and_the_chunk_goes_again(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, 1, "{}")
    path = tmp_path / "run_00000.h5"
    path.write_bytes(bytes(range(256)) * 12)
    size, digest, chunks = file_checksums(path, 1)  # a chunk per byte: acknowledgements to fill pages with
    ledger.file_stored("run", path.name, path, size, digest, (0, 0, 1), chunks)
    ids = [int(r["id"]) for r in ledger._rows("SELECT id FROM chunks ORDER BY id")]
    context = zmq.Context()
    forwarder = Forwarder("tcp://127.0.0.1:0", ledger, context, resend_seconds=1.0)
    session = forwarder.session
    peer = b"peer"
    session.receive(peer, [bytes(f) for f in p.encode(p.Hello("hpc", 1))], 0.0)
    (chunk,) = [o.message for o in session.tick(0.0) if isinstance(o.message, p.Chunk)]
    _cap(ledger)
    for chunk_id, (_, _, checksum) in zip(ids[1:], chunks[1:], strict=True):  # another consumer's
        try:
            ledger.chunk_acked("filler", chunk_id, checksum)
        except sqlite3.OperationalError:
            break
    else:
        raise AssertionError("the capped ledger never filled")
    with forwarder._ledger_full():  # what the forwarder's loop does with each message and tick
        session.receive(peer, [bytes(f) for f in p.encode(p.Ack(chunk.chunk_id, chunk.checksum))], 0.5)
    assert session.stats["ledger_writes_refused_disk_full"] == 1
    _uncap(ledger)
    again = [o.message for o in session.tick(5.0) if isinstance(o.message, p.Chunk)]
    assert [c.chunk_id for c in again] == [chunk.chunk_id]  # not recorded: it goes again
    session.receive(peer, [bytes(f) for f in p.encode(p.Ack(chunk.chunk_id, chunk.checksum))], 5.5)
    assert session.stats["chunks_acked"] == 1
    context.term()
    ledger.close()


def test_a_refused_acknowledgement_gives_up_the_reserve_pauses_sending_and_says_whose_disk_is_full(
    tmp_path: Path,
) -> None:
    """An outside probe, the appliance's disk really full with the pull client connected: only the
    recorder gave up the ledger's reserve, so the consumers' acknowledgements (the writes that let files
    be purged) were refused for good, every chunk went out again at once (114 GB in two minutes, nothing
    ever verified), and the alarm blamed the HPC side's client. The forwarder now gives up the reserve
    (the next acknowledgement is recorded), sends nothing for a second after a refusal, and the outlook
    says the appliance's own disk is full."""
    from edge.upstream.outlook import upstream_outlook

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, 1, "{}")
    path = tmp_path / "run_00000.h5"
    path.write_bytes(bytes(range(256)) * 12)
    size, digest, chunks = file_checksums(path, 1)
    ledger.file_stored("run", path.name, path, size, digest, (0, 0, 1), chunks)
    ids = [int(r["id"]) for r in ledger._rows("SELECT id FROM chunks ORDER BY id")]
    reserve = tmp_path / "ledger.reserve"
    disk = DiskGuard(tmp_path, reserve, 4096, 0)
    assert disk.make_reserve() and reserve.exists()
    now = [0.0]
    context = zmq.Context()
    forwarder = Forwarder(
        "tcp://127.0.0.1:0", ledger, context, resend_seconds=1.0, disk=disk, clock=lambda: now[0]
    )
    session = forwarder.session
    session.receive(b"peer", [bytes(f) for f in p.encode(p.Hello("hpc", 1))], 0.0)
    (chunk,) = [o.message for o in session.tick(0.0) if isinstance(o.message, p.Chunk)]
    _cap(ledger)
    for chunk_id, (_, _, checksum) in zip(ids[1:], chunks[1:], strict=True):
        try:
            ledger.chunk_acked("filler", chunk_id, checksum)
        except sqlite3.OperationalError:
            break
    with forwarder._ledger_full():
        session.receive(b"peer", [bytes(f) for f in p.encode(p.Ack(chunk.chunk_id, chunk.checksum))], 0.5)
    assert not reserve.exists() and session.stats["ledger_reserve_released"] == 1 and disk.full
    assert forwarder._pause_until == pytest.approx(1.0)  # the loop ticks no chunk out before
    counters = forwarder.counters()
    assert counters["ledger_refusing"] is True

    class Pending:
        required_consumers = ("hpc",)

        def verified_rate(self, window: float, now: float) -> float:
            return 0.0

        def oldest_unverified_at(self) -> float | None:
            return 0.0

    outlook = upstream_outlook(Pending(), size, counters, 1.0)
    assert outlook["state"] == "stalled" and "the appliance's own disk is full" in outlook["reason"]
    # refused again and again (no reserve left to give): the pauses double, up to 30 s
    pauses = []
    for _ in range(7):
        now[0] = forwarder._pause_until
        with forwarder._ledger_full():
            session.receive(
                b"peer", [bytes(f) for f in p.encode(p.Ack(chunk.chunk_id, chunk.checksum))], now[0]
            )
        pauses.append(forwarder._pause_until - now[0])
    assert pauses == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert forwarder.counters()["ledger_refusing"] is True
    now[0] += 61.0
    assert forwarder.counters()["ledger_refusing"] is False
    # paused, the consumer still hears heartbeats (an outside probe: the silent appliance had its pull
    # client reconnect every 6 s, "a second connection took the name over"), and the pause ends as soon
    # as the disk guard sees the space back (delivery stalled 20 s after the disk had room)
    with forwarder._ledger_full():
        session.receive(b"peer", [bytes(f) for f in p.encode(p.Ack(chunk.chunk_id, chunk.checksum))], now[0])
    assert forwarder._paused() is True and disk.full  # (re-measured at most every RECHECK_SECONDS)
    beats = session.heartbeats(now[0] + 10.0)
    assert [type(o.message) for o in beats] == [p.Heartbeat]
    _uncap(ledger)
    time.sleep(0.2)  # the guard's recheck interval: the real disk has room
    assert forwarder._paused() is False and not disk.full
    assert forwarder.counters()["ledger_refusing"] is False
    context.term()
    ledger.close()


def test_h5py_s_runtime_error_for_a_full_disk_is_lack_of_space() -> None:
    """h5py raises RuntimeError, not OSError, when HDF5's flush or close meets ENOSPC: it is a full disk
    (the file's frames are lost as ``disk_full`` and writing stops), not an unexplained close failure."""
    from edge.diskguard import is_no_space

    error = RuntimeError(
        "Unable to flush file (file write failed: time = Fri Dec  4 06:32:02 2026\n, filename = 'x.h5.part',"
        " file descriptor = 25, errno = 28, error message = 'No space left on device', buf = 0x7f)"
    )
    assert is_no_space(error)
    assert not is_no_space(RuntimeError("Unable to flush file (bad object)"))


def test_a_resume_threshold_beyond_the_disk_is_capped_at_a_quarter_of_it(tmp_path: Path) -> None:
    """ledger.resume_free_bytes larger than the store's disk could never be free again after it filled:
    writing would never resume. It is capped at a quarter of the disk (and the start says so)."""
    import psutil

    total = psutil.disk_usage(str(tmp_path)).total
    guard = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 0, 10 * total)
    assert guard.resume_bytes == total // 4
    assert DiskGuard(tmp_path, tmp_path / "r2", 0, 1 << 20).resume_bytes == 1 << 20


def test_what_a_full_disk_still_holds_at_shutdown_is_logged_record_by_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    guard = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 0, 0, clock=Clock())
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20, disk=guard)
    uid = recorder.open_run("r", series=1, frames_expected=4, config={"shape": [4, 4]})
    _cap(ledger)
    _fill(ledger, "filler-run")
    recorder.loss(uid, 0, 3, "disk_full", "the disk is full: not written")
    recorder.close_run(uid, frames_stored=0, exit_status="success")
    with caplog.at_level(logging.ERROR, logger="edge.recorder"):
        recorder.give_up_held()
    text = caplog.text
    assert "stopping with 2 ledger record(s), 0 file(s) and 1 run document set(s)" in text
    assert "not written: record_loss('r', '0', '3', 'disk_full'" in text
    assert "not written: run r documents" in text
    _uncap(ledger)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.recorder"):
        recorder.give_up_held()  # space is back: written (and said so), nothing left to report
    assert recorder.held() == 0 and ledger.run(uid)["ended_at"] is not None
    assert "wrote 2 ledger record(s) held back through a full disk" in caplog.text
    ledger.close()


def test_space_that_comes_back_is_seen_within_a_tenth_of_a_second(tmp_path: Path) -> None:
    """An outside chaos probe: another process filled the disk, retention purged at once, yet writing
    resumed only a second later (the free space re-measured once a second): ~300 frames lost meanwhile."""
    clock = Clock()
    guard = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 0, 0, clock=clock)
    assert guard.note_error(OSError(errno.ENOSPC, "No space left on device"))
    assert guard.check()  # just noted: not measured again yet
    clock.now += 0.15
    assert not guard.check()  # (this disk has room): writing resumes


def test_a_serial_run_opened_on_a_full_disk_writes_its_geometry_file_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: a serial run resumed on a full disk raised out of the run's opening ("pipeline
    failed writing slot 0" and a traceback), left an empty ``.geom.part`` and never got its CrystFEL
    geometry file. Now no .part is left, and the file is written and registered once space returns."""
    import os
    from types import SimpleNamespace

    from edge.config import ReductionSettings
    from edge.modes import RunContext, make_stage
    from edge.pipeline import Pipeline
    from kernels import Geometry, get_backend

    ledger = Ledger(tmp_path / "ledger.sqlite")
    disk = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 4096, 0)
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20, disk=disk)
    uid = recorder.open_run("run-s", series=1, frames_expected=4, config={}, mode="serial")
    (tmp_path / uid).mkdir()
    ctx = RunContext(
        get_backend("numpy"), Geometry(), (32, 32), 10, "2th_deg", ReductionSettings(mode="serial")
    )
    stage = make_stage(ctx)
    full = OSError(errno.ENOSPC, "No space left on device")

    def no_space(fd: int) -> None:
        raise full

    pipeline = SimpleNamespace(disk=disk, recorder=recorder, _store=SimpleNamespace(directory=tmp_path / uid))
    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", no_space)
        Pipeline._write_run_files(pipeline, stage, uid)  # type: ignore[arg-type]
    assert list((tmp_path / uid).iterdir()) == []  # no empty .part behind
    assert disk.full and not [f for f in ledger.files(uid) if f["name"].endswith(".geom")]
    recorder.retry_pending()  # (what the recorder does once the disk has room again)
    assert len([f for f in ledger.files(uid) if f["name"].endswith(".geom")]) == 1
    assert (tmp_path / uid / f"{uid}.geom").read_text().startswith("; CrystFEL geometry")
    ledger.close()


def test_frames_held_for_room_wait_for_the_disk_guard_to_see_it_too() -> None:
    """An outside probe: frames held back while the store was full went on the moment retention saw
    room, while the disk guard (full since a write met ENOSPC, measuring again every 0.1 s) still said
    full: 646 held frames became disk_full losses in 78 ms. The hold now lasts until the guard agrees
    (bounded: a guard that never does lets them go after RESUME_WAIT_SECONDS)."""
    import threading
    import time
    from types import SimpleNamespace

    from edge.pipeline import RESUME_WAIT_SECONDS, Pipeline

    checks = iter([False, True, True, True])  # retention: full, then room
    full_for = [3]

    def guard_check() -> bool:
        full_for[0] -= 1
        return full_for[0] >= 0

    held = SimpleNamespace(
        may_write=lambda: next(checks, True),
        disk=SimpleNamespace(check=guard_check),
        _stop=threading.Event(),
    )
    Pipeline._wait_for_room(held)  # type: ignore[arg-type]
    assert full_for[0] == -1  # it asked the guard until it said "room"
    stuck = SimpleNamespace(
        may_write=lambda: True, disk=SimpleNamespace(check=lambda: True), _stop=threading.Event()
    )
    started = time.monotonic()
    Pipeline._wait_for_room(stuck)  # type: ignore[arg-type]
    assert RESUME_WAIT_SECONDS <= time.monotonic() - started < RESUME_WAIT_SECONDS + 1.0


def test_a_start_with_neither_reserve_nor_headroom_says_a_full_disk_cannot_free_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no ledger reserve and no headroom a disk that fills leaves no room to record the
    confirmations that let files be purged (an outside probe: it stayed full): the start says so."""
    from edge.appliance import Appliance
    from edge.config import load_settings

    def start(reserve: int) -> str:
        caplog.clear()
        config = load_settings(
            overrides=[
                f'store.path="{tmp_path / f"store{reserve}"}"',
                'upstream.endpoint="tcp://127.0.0.1:0"',
                "detector.height=32",
                "detector.width=32",
                "ring.slots=2",
                'reduction.backend="numpy"',
                f"ledger.reserve_bytes={reserve}",
                "retention.headroom_bytes=0",
            ]
        )
        with caplog.at_level(logging.WARNING, logger="edge.appliance"):
            Appliance(config).stop()
        return caplog.text

    assert "are both 0: a disk that fills" in start(0)
    assert "are both 0" not in start(1 << 20)


def test_a_reduced_file_s_bound_is_a_quarter_of_the_store_s_headroom(small_settings) -> None:  # type: ignore[no-untyped-def]
    """A reduced file is written whole when it is finished: on a store keeping 4 MiB free, 3-7 MB
    files failed to close for lack of space while the disk still had room, their frames' rows lost (an
    outside chaos probe). The appliance bounds them by a quarter of the headroom (the writer's side:
    test_azint_files)."""
    from edge.appliance import Appliance
    from edge.pipeline import REDUCED_FILE_BYTES, reduced_file_bytes

    assert reduced_file_bytes(4 << 20) == 1 << 20
    assert reduced_file_bytes(64 << 20) == 16 << 20
    assert reduced_file_bytes(1 << 40) == REDUCED_FILE_BYTES
    assert reduced_file_bytes(0) == REDUCED_FILE_BYTES  # no headroom: memory's bound only
    assert reduced_file_bytes(1 << 10) == 1 << 20  # never a file per frame

    appliance = Appliance(small_settings(f"retention.headroom_bytes={8 << 20}"))
    try:
        assert appliance.pipeline.reduced_file_bytes == reduced_file_bytes(appliance.retention.headroom())
        assert appliance.pipeline.reduced_file_bytes == 2 << 20
    finally:
        appliance.stop()


def test_a_run_whose_files_cannot_be_opened_on_a_full_disk_is_its_frames_loss_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chaos probe: a daemon restarted on a full disk could not make the resumed run's directory; the
    writer logged "pipeline failed writing slot 0", the guard stayed "not full", each frame became a
    pipeline_error loss of no run, the run stayed open in the ledger, and the next start recorded the
    same frames again as a crash's. Now the guard turns full, the frames are disk_full losses of that
    run, and the run ends when its series does."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    import edge.pipeline as pipeline_module
    from edge.config import ReductionSettings
    from edge.modes import RunContext, make_stage
    from edge.pipeline import Pipeline, _Work
    from edge.ring import FrameRing
    from kernels import Geometry, get_backend

    ledger = Ledger(tmp_path / "ledger.sqlite")
    disk = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 4096, 0)
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20, disk=disk)
    uid = recorder.open_run("run-f", series=1, frames_expected=3, config={}, mode="raw")
    backend = get_backend("numpy")
    ring = FrameRing(2, 32 * 32 * 2)
    try:
        pipeline = Pipeline(ring, backend, Geometry(), tmp_path, 10, "2th_deg", 10, 2.0, recorder, disk=disk)
        stage = make_stage(
            RunContext(backend, Geometry(), (32, 32), 10, "2th_deg", ReductionSettings(mode="raw"))
        )

        def no_space(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / uid))

        monkeypatch.setattr(pipeline_module, "RunStore", no_space)
        record = {"run_uid": uid, "height": 32, "width": 32, "dtype": "uint16"}
        pipeline._write(_Work(SimpleNamespace(), "open", record=record, stage=stage))  # type: ignore[arg-type]
        assert disk.full and pipeline.stats["runs_not_opened"] == 1
        for frame in range(3):
            chunk: Future[bytes] = Future()
            slot = SimpleNamespace(header={"frame": frame})
            pipeline._write(_Work(slot, "frame", chunk=chunk, result=SimpleNamespace()))  # type: ignore[arg-type]
        pipeline._write(_Work(SimpleNamespace(), "close", record={"exit_status": "success"}))  # type: ignore[arg-type]
    finally:
        ring.close()
    assert [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(uid)] == [
        (0, 2, "disk_full")
    ]
    run = ledger.run(uid)
    assert run["ended_at"] is not None and run["exit_status"] == "fail"  # every frame lost
    assert [r for r in ledger.losses(None) if r.get("run_uid") in (None, "")] == []
    ledger.close()


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_a_run_whose_start_the_full_disk_held_is_in_the_ledger_after_a_stop_and_a_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, end: str
) -> None:
    """An outside chaos probe: the reserve gone (another process took it), a run refused on the full disk
    had its start, end, loss record and documents held in memory; a clean stop logged them and the run
    was in no record after the restart ("no run in the ledger"), its 30 frames accounted nowhere. The
    held records are kept in the journal beside the ledger as they are held; the next start writes them
    before its recovery, which ends the run with its documents. Killed instead (no stop), the runs whose
    documents waited in memory are in the journal too (a second probe: two runs never documented)."""
    from edge.held_journal import HeldJournal, replay
    from edge.recovery import recover

    store = tmp_path / "store"
    ledger, _journal, _guard, recorder = _journaled_recorder(tmp_path, store)
    _cap(ledger)
    _fill(ledger, "filler-run")
    for n in range(10_000):  # and the runs table's free room (its pages are apart from the losses')
        try:
            ledger.run_started(f"filler-{n}", 0, None, "{}")
        except sqlite3.OperationalError:
            break
    uid = recorder.open_run("refused", series=4, frames_expected=30, config={"shape": [4, 4]})
    recorder.loss(uid, 0, 29, "run_refused", "the disk is full")
    recorder.close_run(uid, frames_stored=0, exit_status="abort")
    assert recorder.held() == 3
    if end == "stop":
        with caplog.at_level(logging.ERROR, logger="edge.recorder"):
            recorder.give_up_held()  # the clean stop, the disk still full
        assert "the next start writes them to the ledger" in caplog.text
    ledger.close()  # (killed: nothing more happens)

    ledger = Ledger(tmp_path / "ledger.sqlite")  # the next start, space back
    written, refused, documents = replay(ledger, HeldJournal(tmp_path / "ledger.held"))
    # start, loss, end (and at a stop, the status it stopped with and the end taken back for recovery)
    assert (written, refused) == (5 if end == "stop" else 3, [])
    # killed, the run's documents that waited in memory are in the journal too; stopped, the run was
    # reopened for the recovery, which writes them (once)
    assert documents == ([] if end == "stop" else [(uid, "abort")])
    restarted = RunRecorder(ledger, store, chunk_bytes=1 << 20)
    recover(restarted, store)
    for run_uid, status in documents:  # (as the daemon's start does after its recovery)
        restarted.documents_when_possible(run_uid, status)
    run = ledger.run(uid)
    assert run["ended_at"] is not None and run["frames_expected"] == 30
    assert run["exit_status"] == "abort"  # a clean stop's end, either way: no crash
    totals = ledger.run_totals(uid)
    assert totals["frames_stored"] == 0 and totals["frames_lost"] == 30, totals
    assert [r["reason"] for r in ledger.losses(uid)] == ["run_refused"]
    assert (store / uid / f"{uid}.documents.jsonl").is_file()
    assert not (store / uid / f"{uid}.documents.r2.jsonl").exists()
    assert HeldJournal(tmp_path / "ledger.held").read() == []  # written once: cleared
    ledger.close()


def test_a_clean_stop_on_a_full_disk_is_no_crash_at_a_start_on_a_disk_still_full(tmp_path: Path) -> None:
    """An outside chaos probe: SIGTERM while the disk was full held the run's end (``abort``) back; the
    next start, the disk still full, could not write it either, and its recovery found the run open: "run
    ... ended by a crash, marked failed", a crash alarm, RunStop ``fail``. The end the stop held says it
    was a clean stop: recovery finishes the run with it."""
    import json

    from edge.held_journal import HeldJournal, replay
    from edge.recovery import recover

    store = tmp_path / "store"
    ledger, journal, guard, recorder = _journaled_recorder(tmp_path, store)
    uid = recorder.open_run("stopped", series=6, frames_expected=8, config={"shape": [4, 4]})
    data = store / uid / f"{uid}_00000.h5"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"frames 0..4")
    recorder.register_file(uid, data, (0, 4, 5))
    _cap(ledger)
    _fill(ledger, "filler-run")
    recorder.loss(uid, 5, 7, "receiver_stopped", "the daemon stopped")
    recorder.close_run(uid, frames_stored=5, exit_status="abort")
    assert recorder.held_end(uid) == "abort"
    recorder.give_up_held()  # the clean stop, the disk still full
    ledger.close()

    ledger = Ledger(tmp_path / "ledger.sqlite")  # the next start, the disk still full
    _cap(ledger)
    _written, refused, _documents = replay(ledger, HeldJournal(tmp_path / "ledger.held"))
    assert refused, "the disk was to be still full"
    restarted = RunRecorder(ledger, store, chunk_bytes=1 << 20, disk=guard, journal=journal)
    restarted.hold(refused)
    report = recover(restarted, store)
    assert report["runs_failed"] == [] and report["runs_finished_after_clean_stop"] == [uid], report
    assert report["frames_lost"] == 0
    _uncap(ledger)  # space returns: what was held is written
    restarted.retry_pending()
    run = ledger.run(uid)
    assert run["exit_status"] == "abort", run
    assert "stopped cleanly (abort)" in json.loads(run["config"])["ended_by_recovery"]
    assert [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(uid)] == [
        (5, 7, "receiver_stopped")
    ]
    assert ledger.runs_crashed_since(0.0) == []
    ledger.close()


def test_the_held_journal_keeps_what_fits_and_reads_nothing_from_a_damaged_file(tmp_path: Path) -> None:
    from edge.held_journal import HEADER, HeldJournal

    journal = HeldJournal(tmp_path / "ledger.held", capacity=HEADER.size + 200)
    assert journal.make() and (tmp_path / "ledger.held").stat().st_size == HEADER.size + 200
    entries = [("record_loss", ["r", n, n, "disk_full", "x" * 20]) for n in range(10)]
    kept = journal.keep(entries)
    assert 0 < kept < 10 and journal.dropped == 10 - kept
    assert [args[1] for _name, args in journal.read()] == list(range(kept))  # the oldest, whole
    with open(tmp_path / "ledger.held", "r+b") as f:
        f.seek(HEADER.size)
        f.write(b"{not json")
    assert journal.read() == []
    journal.clear()
    assert journal.read() == []


def test_a_held_loss_growing_frame_by_frame_is_kept_in_the_journal_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk losing frame after frame makes one held record, longer each time: the journal is
    rewritten with it (at most every JOURNAL_MERGES_SECONDS), so a crash replays the range it reached."""
    import edge.recorder as recorder_module
    from edge.held_journal import HeldJournal

    ledger = Ledger(tmp_path / "ledger.sqlite")
    journal = HeldJournal(tmp_path / "ledger.held")
    assert journal.make()
    guard = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 0, 0, clock=Clock())
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20, disk=guard, journal=journal)
    uid = recorder.open_run("r", series=1, frames_expected=20, config={"shape": [4, 4]})
    _cap(ledger)
    _fill(ledger, "filler-run")
    monkeypatch.setattr(recorder_module, "JOURNAL_MERGES_SECONDS", 0.0)
    for frame in range(12):
        recorder.loss(uid, frame, frame, "disk_full", "the disk is full: not written")
    assert recorder.held() == 1
    assert journal.read() == [("record_loss", [uid, 0, 11, "disk_full", "the disk is full: not written"])]
    ledger.close()


def test_every_ledger_write_the_recorder_can_hold_is_one_the_journal_replays() -> None:
    """An outside probe: a start passed by two held ``hand_over_losses`` records ("not one this edge
    writes"), the frames a resumed run stored left as losses of the interrupted one. Every ledger
    method the recorder hands to ``_ledger_write`` or ``_hold`` is one the replay takes."""
    import inspect
    import re

    import edge.recorder as recorder_module
    from edge.held_journal import JOURNALED

    source = inspect.getsource(recorder_module)
    held = set(re.findall(r"_(?:ledger_write|hold)\(\s*self\.ledger\.([a-z_]+)", source))
    assert held and held <= JOURNALED, held - JOURNALED


def test_a_start_with_no_room_for_the_ledger_s_reserve_starts_full_and_resumes_once_space_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside chaos probe: killed on a full disk and started again, the daemon could not make its
    ledger reserve and went on writing frames into the last free bytes; the upstream's confirmations then
    could not be recorded, retention never purged, and the disk stayed full until the operator made room.
    A start with no room for the reserve is a full disk: nothing is written until space returns."""
    import os

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    clock = Clock()
    with monkeypatch.context() as patched:
        patched.setattr(os, "posix_fallocate", no_space)
        guard = DiskGuard(tmp_path, tmp_path / "ledger.reserve", 4096, 0, clock=clock)
    assert guard.full and "no room for the ledger's 4096-byte reserve" in guard.reason
    assert guard.status()["reserve_bytes"] == 0 and guard.refusal() is not None
    clock.now += 0.15
    assert not guard.check()  # (this disk has room): writing resumes, and the reserve is made
    assert guard.status()["reserve_bytes"] == 4096

    def denied(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as patched:  # another failure is no full disk
        patched.setattr(os, "posix_fallocate", denied)
        assert not DiskGuard(tmp_path, tmp_path / "other.reserve", 4096, 0, clock=clock).full


def test_a_ledger_that_will_not_open_on_a_full_disk_is_said_to_be_the_disk_not_a_damaged_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside chaos probe: a start on a disk with 0 bytes free said "the ledger ... cannot be opened:
    disk I/O error. If it is damaged or another file, keep it for inspection and restore it from a copy";
    the ledger was intact, and a technician following that would have moved it aside."""
    from collections import namedtuple

    import edge.ledger as ledger_module
    from edge.errors import ConfigError

    not_a_database = tmp_path / "ledger.sqlite"
    not_a_database.write_bytes(b"x" * 4096)  # (any SQLite error on opening)
    with pytest.raises(ConfigError, match="If it is damaged or another file"):
        Ledger(not_a_database)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ledger_module.shutil, "disk_usage", lambda _path: usage(10**9, 10**9, 0))
    with pytest.raises(ConfigError, match="the disk holding it is full \\(0 bytes free") as raised:
        Ledger(not_a_database)
    assert "most likely intact" in str(raised.value) and "damaged" not in str(raised.value)
