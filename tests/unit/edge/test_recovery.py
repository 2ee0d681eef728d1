"""A series resumed after a restart: the interrupted run's account changes after its documents were
written, so it gets a second revision of them (the first one may already be upstream; it is never
rewritten). Real ledger (SQLite) and recorder on a temporary store; no daemon."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from edge.documents import documents_name
from edge.ledger import Ledger
from edge.recorder import RunRecorder
from edge.recovery import resume_interrupted
from edge.store._files import frame_ranges_json


def _stop(path: Path) -> dict:
    return next(doc for name, doc in map(json.loads, path.read_text().splitlines()) if name == "stop")


class _Rows:
    """A reduced file layout with a frame table only (what the tests need of a mode)."""

    definition = "NXmx"
    reference = "test"

    def settings_record(self) -> dict:
        return {"mode": "test"}

    def write_products(self, entry: object, products: list) -> None:
        pass

    def write_reduced(self, entry: object, products: list) -> None:
        pass


def test_a_resumed_series_gives_the_interrupted_run_a_second_revision_of_its_documents(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-a", series=7, frames_expected=None, config={"shape": [4, 4]})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..29")
    recorder.register_file(run_uid, data, (0, 29, 30))
    recorder.close_run(run_uid, 30, "abort")  # a daemon stopped mid-series ends its run abort
    first = tmp_path / run_uid / documents_name(run_uid)
    assert _stop(first)["edge_accounting"] == {
        "revision": 1,
        "mode": None,
        "frames_stored": 30,
        "frames_vetoed": 0,
        "frames_lost": 0,
        "frames_not_acquired": 0,
        "losses": [],
    }
    written = first.read_bytes()

    link = resume_interrupted(recorder, {}, series=7, first_frame=50)  # frames 30..49 came while it was down

    assert link == {"resumes_run": run_uid}
    assert first.read_bytes() == written  # never rewritten
    second = tmp_path / run_uid / documents_name(run_uid, 2)
    account = _stop(second)["edge_accounting"]
    assert account["revision"] == 2 and account["frames_stored"] == 30 and account["frames_lost"] == 20
    assert account["continued_at_frame"] == 50 and "frames_continued" not in account  # (length unknown)
    assert [loss[:3] for loss in account["losses"]] == [[30, 49, "daemon_restart"]]
    kinds = [(f["name"], f["kind"]) for f in ledger.files(run_uid)]
    assert kinds[-2:] == [(first.name, "documents"), (second.name, "documents")]  # both forwarded


def _cut_run(
    tmp_path: Path, uid: str, series: int, expected: int, stored: int, reason: str, status: str
) -> tuple[Ledger, RunRecorder, str]:
    """A run of ``expected`` frames that stored the first ``stored`` (one file) and ended ``status`` with
    the rest recorded lost for ``reason``."""
    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, uid, series, expected, stored)
    recorder.loss(run_uid, stored, expected - 1, reason, "cut")
    recorder.close_run(run_uid, stored, status)
    return ledger, recorder, run_uid


def test_a_series_cut_by_a_stop_says_in_each_run_s_account_where_its_frames_went(tmp_path: Path) -> None:
    """An outside HPC-side probe: a SIGTERM at frame 133 of 300, the series resumed after the restart.
    The interrupted run's newest documents said 133 stored, 0 lost of 300 (its receiver_stopped records
    handed over), the resumed run's 167 stored of 300, and neither account added up alone. The
    interrupted run's now says where the series went on (``continued_at_frame``, ``frames_continued``),
    the resumed run's where it took over (``resumed_at_frame``)."""
    from edge.documents import run_documents

    ledger, recorder, run_uid = _cut_run(tmp_path, "run-c", 4, 300, 133, "receiver_stopped", "abort")

    assert resume_interrupted(recorder, {}, series=4, first_frame=133) == {"resumes_run": run_uid}

    account = _stop(tmp_path / run_uid / documents_name(run_uid, 2))["edge_accounting"]
    assert account["frames_lost"] == 0 and account["losses"] == []
    assert (account["continued_at_frame"], account["frames_continued"]) == (133, 167)
    assert account["frames_stored"] + account["frames_vetoed"] + account["frames_lost"] + 167 == 300
    config = {"shape": [4, 4], "resumed_after_restart": True, "first_frame": 133, "resumes_run": run_uid}
    resumed = recorder.open_run("run-d", series=4, frames_expected=300, config=config)
    (_name, stop), *_ = [
        d for d in run_documents(ledger.run(resumed), [], [], (4, 4), "success") if d[0] == "stop"
    ]
    assert stop["edge_accounting"]["resumed_at_frame"] == 133  # it accounts for 133..299


def test_a_udp_acquisition_gone_on_after_a_pause_says_so_in_the_ended_run_s_account(tmp_path: Path) -> None:
    """The same for a UDP acquisition that a silence split (``udp.idle_seconds``): the run it ended
    says where it went on, so its own account adds up upstream."""
    from edge.recovery import continue_after_pause

    _ledger, recorder, run_uid = _cut_run(tmp_path, "udp-a", 0, 100, 50, "series_end", "fail")

    assert continue_after_pause(recorder, run_uid, 50, "udp-b") == 50

    account = _stop(tmp_path / run_uid / documents_name(run_uid, 2))["edge_accounting"]
    assert (account["frames_stored"], account["frames_lost"]) == (50, 0)
    assert (account["continued_at_frame"], account["frames_continued"]) == (50, 50)


def test_a_series_resumed_where_it_stopped_changes_no_account(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-b", series=3, frames_expected=None, config={})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..9")
    recorder.register_file(run_uid, data, (0, 9, 10))
    recorder.close_run(run_uid, 10, "fail")
    resume_interrupted(recorder, {"runs_failed": [run_uid]}, series=3, first_frame=10)
    assert sorted(p.name for p in (tmp_path / run_uid).glob("*.documents*.jsonl")) == [
        documents_name(run_uid)
    ]


def test_a_series_resumed_past_frames_a_run_refused_is_not_that_run_s(tmp_path: Path) -> None:
    """An outside chaos probe: a series resumed at frame 127 after a kill on a full disk was linked to an
    earlier run of series 1 refused whole (run_refused 0..399: its series had gone past 127), the run it
    really continued being in the journal still; the frames were counted in both. A run that refused the
    frame a series resumes at is not the one it continues."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    older = recorder.open_run("cut-earlier", series=1, frames_expected=300, config={})
    recorder.close_run(older, 0, "abort")  # cut by an earlier restart at frame 0: a candidate
    refused = recorder.open_run("refused", series=1, frames_expected=400, config={})
    recorder.close_run(refused, 0, "abort")
    recorder.loss(refused, 0, 399, "run_refused", "the disk is full")
    linked = resume_interrupted(recorder, {"runs_failed": []}, series=1, first_frame=127)
    # not the refused run (how far its series got is not known), nor the older one of the same series
    # number: the refused run came after it, so its series was over (a later probe's resumed series was
    # linked to such an older run, its frames taken from there)
    assert linked["resumes_run"] is None
    assert [(r["first_frame"], r["last_frame"]) for r in ledger.losses(refused)] == [(0, 399)]
    assert ledger.losses(older) == []


def test_a_series_refused_on_a_full_disk_that_goes_on_after_a_restart_continues_its_refused_run(
    tmp_path: Path,
) -> None:
    """An outside chaos probe: a series refused at its start (a full disk: its 200 announced frames
    recorded lost at once), a clean stop at frame 76, and a restart while the detector went on: the new
    run stored 77..199, which stayed recorded lost in the refused run too. The refused run kept how far
    its series got (its dropped images): the resumed run continues it and takes its frames from 77."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    earlier = recorder.open_run("R6", series=8, frames_expected=100, config={})
    recorder.close_run(earlier, 0, "abort")  # an older run of the same series number, cut by a restart
    refused = recorder.open_run("R8", series=8, frames_expected=200, config={})
    recorder.close_run(refused, 0, "abort")  # (a refused run is closed at once)
    recorder.loss(refused, 0, 199, "run_refused", "the disk is full")
    for frame in range(77):  # its images, dropped as they came
        recorder.refused_frame_seen(refused, frame)
    recorder.write_progress(now=1e9)
    linked = resume_interrupted(recorder, {"runs_failed": []}, series=8, first_frame=77)
    assert linked["resumes_run"] == refused
    assert [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(refused)] == [
        (0, 76, "run_refused")
    ]
    assert ledger.losses(earlier) == []  # the older run of the number is left alone
    # resumed at a frame the refused series had already sent: another acquisition, not its continuation
    assert resume_interrupted(recorder, {"runs_failed": []}, series=8, first_frame=30)["resumes_run"] is None


def _crashed_with_rows_of_half(recorder: RunRecorder, root: Path, name: str) -> str:
    """An open powder run of 12 frames (the daemon died during it): frames 0..9 in two data files, the
    rows of 0..4 in a reduced file (those of 5..9 were in memory). Returns its uid."""
    import h5py
    import numpy as np

    from edge.store import ReducedWriter

    run_uid = recorder.open_run(name, series=5, frames_expected=12, config={}, mode="powder")
    directory = root / run_uid
    directory.mkdir()
    for index, frames in enumerate((range(0, 5), range(5, 10))):
        path = directory / f"{run_uid}_{index:05d}.h5"
        with h5py.File(path, "w") as handle:
            handle["/entry/data/frame_number"] = np.asarray(list(frames), np.int64)
        recorder.register_file(run_uid, path, (frames[0], frames[-1], len(frames)))
    writer = ReducedWriter(directory, run_uid, _Rows(), frames_per_file=100)
    for frame in range(5):  # the rows written before the crash: frames 0..4
        writer.add(frame, "stored", "data", {}, {})
    recorder.file_closed(writer.finish())
    return run_uid


def test_frames_stored_before_a_crash_without_rows_get_a_recovered_frame_table(tmp_path: Path) -> None:
    """kill -9 mid-run: the reduced rows of the frames since the last reduced file were in memory. The
    frames are in data files; recovery lists them in a reduced file of their own, disposition stored."""
    import h5py

    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = _crashed_with_rows_of_half(recorder, tmp_path, "run-c")
    directory = tmp_path / run_uid

    report = recover(recorder, tmp_path)  # frames 10, 11 never came: daemon_crash

    assert report["frame_rows_recovered"] == {run_uid: 5}
    recovered = directory / f"{run_uid}_reduced_00001.nxs"
    with h5py.File(recovered, "r") as handle:
        assert list(handle["/entry/frames/frame_number"][:]) == [5, 6, 7, 8, 9]
        assert list(handle["/entry/frames/disposition"][:]) == [0] * 5
        assert handle["/entry"].attrs["recovered_after_crash"]
    kinds = {f["name"]: f["kind"] for f in ledger.files(run_uid)}
    assert kinds[recovered.name] == "reduced"  # registered: it goes upstream with the rest
    assert [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)] == [
        (10, 11, "daemon_crash")
    ]
    stop = _stop(directory / documents_name(run_uid))["edge_accounting"]
    assert (stop["frames_stored"], stop["frames_lost"]) == (10, 2)


def _open_run_with_one_file(
    tmp_path: Path, name: str, series: int, expected: int, stored: int
) -> tuple[Ledger, RunRecorder, str]:
    """An open run (the daemon died during it) of ``expected`` frames with one data file of frames
    0..stored-1."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run(name, series=series, frames_expected=expected, config={"shape": [4, 4]})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(f"frames 0..{stored - 1}".encode())
    recorder.register_file(run_uid, data, (0, stored - 1, stored))
    return ledger, recorder, run_uid


def _serial_run_with_blanks_dropped(
    tmp_path: Path, name: str, register_reduced: bool = True
) -> tuple[Ledger, RunRecorder, str]:
    """A serial run of 24 frames cut by a crash: hits 0, 3, 4, 8 and 12, 13, 17 in two data files (gaps
    where the blanks were dropped), a closed reduced file listing frames 0..9 (1, 2, 5, 6, 7, 9 vetoed);
    the rows of 10..19 were in memory, 20..23 never came."""
    import h5py
    import numpy as np

    from edge.store import ReducedWriter

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run(name, series=9, frames_expected=24, config={}, mode="serial")
    directory = tmp_path / run_uid
    directory.mkdir()
    hits = [0, 3, 4, 8, 12, 13, 17]
    for index, frames in enumerate((hits[:4], hits[4:])):
        path = directory / f"{run_uid}_{index:05d}.h5"
        with h5py.File(path, "w") as handle:
            handle["/entry/data/frame_number"] = np.asarray(frames, np.int64)
        recorder.register_file(run_uid, path, (frames[0], frames[-1], len(frames)))
    writer = ReducedWriter(directory, run_uid, _Rows(), frames_per_file=100)
    for frame in range(10):
        writer.add(frame, "stored" if frame in hits else "vetoed", "data", {}, {})
    closed = writer.finish()
    if register_reduced:  # else: finished just before the crash, not yet in the ledger
        recorder.file_closed(closed)
    return ledger, recorder, run_uid


def test_a_serial_run_keeping_its_blanks_says_no_vetoed_blank_is_among_its_crash_losses(
    tmp_path: Path,
) -> None:
    """An outside probe: a serial run with ``store.blanks = keep`` (nothing vetoed) cut by a kill had its
    ``daemon_crash`` record say "blanks the mode vetoed ... among them". The run records the policy it ran
    with (``store_blanks``), and only a run that dropped its blanks says so."""
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run(
        "kept", series=3, frames_expected=10, config={"store_blanks": "keep"}, mode="serial"
    )
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..4")
    recorder.register_file(run_uid, data, (0, 4, 5))
    recover(recorder, tmp_path)
    (loss,) = ledger.losses(run_uid)
    assert (loss["first_frame"], loss["last_frame"], loss["reason"]) == (5, 9, "daemon_crash")
    assert "vetoed" not in loss["detail"] and loss["detail"].startswith("held in memory"), loss["detail"]
    ledger.close()


def test_a_serial_run_dropping_blanks_is_whole_after_a_crash(tmp_path: Path) -> None:
    """kill -9 in serial mode with ``store.blanks = drop``: the data files hold the hits only (gaps where
    the blanks were), a closed reduced file lists frames 0..9 with their blanks vetoed, and the rows of
    frames 10..19 were in memory. Each of the 24 frames announced gets one disposition: stored (in a
    file), vetoed (in the closed frame table), or lost ``daemon_crash`` (the blanks whose rows were in
    memory, and the frames that never came). Recovery used to count a data file's first-to-last span as
    stored, so the blanks inside it had no disposition at all, and the run said 0 vetoed."""

    from edge.recovery import recover

    ledger, recorder, run_uid = _serial_run_with_blanks_dropped(tmp_path, "run-d")
    directory = tmp_path / run_uid
    (directory / f"{run_uid}.geom").write_text("; CrystFEL geometry\n")  # registered as reduced too
    recorder.register_file(run_uid, directory / f"{run_uid}.geom", (-1, -1, 0), "reduced")

    recover(recorder, tmp_path)

    losses = [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)]
    # 10, 11, 14, 15, 16, 18, 19: blanks whose rows were in memory; 20..23 never came
    assert losses == [(10, 11, "daemon_crash"), (14, 16, "daemon_crash"), (18, 23, "daemon_crash")]
    # and their records say so (an outside probe read only of a half-written hit file they were never in)
    assert all("blanks the mode vetoed" in r["detail"] for r in ledger.losses(run_uid)), ledger.losses(
        run_uid
    )
    totals = ledger.run_totals(run_uid)
    assert (totals["frames_stored"], totals["frames_vetoed"], totals["frames_lost"]) == (7, 6, 11)
    stop = _stop(directory / documents_name(run_uid))["edge_accounting"]
    assert stop["frames_stored"] + stop["frames_vetoed"] + stop["frames_lost"] == 24

    # the detector went on through the restart: frames from 30 belong to a new run, 24..29 were sent
    # while the daemon was down; the vetoed blanks are not counted again as lost
    resume_interrupted(recorder, {"runs_failed": [run_uid]}, series=9, first_frame=30)
    totals = ledger.run_totals(run_uid)
    assert (totals["frames_stored"], totals["frames_vetoed"], totals["frames_lost"]) == (7, 6, 17)


@pytest.mark.parametrize(
    ("purged", "count_kept", "recorded"),
    [
        (("_reduced_00000.nxs",), True, True),
        (("_00000.h5", "_reduced_00000.nxs"), True, True),
        (("_reduced_00000.nxs",), False, True),
        (("_00000.h5", "_reduced_00000.nxs"), False, True),
        (("_00000.h5", "_reduced_00000.nxs"), True, False),
    ],
)
def test_files_purged_before_a_crash_are_accounted_from_the_ledger_without_an_error(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    purged: tuple[str, ...],
    count_kept: bool,
    recorded: bool,
) -> None:
    """An outside probe: a short retention purged a running run's verified files, then kill -9: recovery
    logged an ERROR "cannot read /entry/data/frame_number of ... No such file" for each purged file. As
    in the test above (blanks dropped, gaps in the data files), but the closed frame table (and the
    first data file) were verified and purged: the same frames are accounted, and nothing is logged as
    an error. The ledger keeps how many frames each reduced file vetoed (schema 7): with the data file
    purged too, its 6 vetoed blanks used to go uncounted (sent != stored + vetoed + lost). A ledger row
    from before (``count_kept`` False) is worked out from the other files, where they still tell. And
    a file deleted by retention whose purge the crash kept from being recorded (``recorded`` False:
    "verified", gone; an outside probe saw its frames recorded lost) is recorded purged, and the same."""

    from edge.recovery import recover

    ledger, recorder, run_uid = _serial_run_with_blanks_dropped(tmp_path, "run-p")
    for row in ledger.files(run_uid):
        if row["name"].endswith(purged):
            assert ledger.file_verified("hpc", row["id"], row["size"], row["checksum"])
            if recorded:
                ledger.file_purged(row["id"])
            Path(row["path"]).unlink()
        if row["name"].endswith("_reduced_00000.nxs"):
            assert row["frames_vetoed"] == 6
            if not count_kept:  # a ledger from before schema 7: no count, no frame ranges
                with ledger._transaction() as db:
                    db.execute(
                        "UPDATE files SET frames_vetoed=NULL, frame_ranges=NULL WHERE run_uid=?", (run_uid,)
                    )

    with caplog.at_level(logging.WARNING, logger="edge.recovery"):
        recover(recorder, tmp_path)

    assert not [r.message for r in caplog.records if "cannot read" in r.message]
    losses = [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)]
    assert losses == [(10, 11, "daemon_crash"), (14, 16, "daemon_crash"), (18, 23, "daemon_crash")]
    assert {r["state"] for r in ledger.files(run_uid) if r["name"].endswith(purged)} == {"purged"}
    totals = ledger.run_totals(run_uid)
    if count_kept or len(purged) == 1:
        # the blanks the purged frame table vetoed (1, 2, 5, 6, 7, 9) are still counted: from the
        # ledger's count, or as the frames of its span in no data file and no loss record
        assert (totals["frames_stored"], totals["frames_vetoed"], totals["frames_lost"]) == (7, 6, 11)
        assert not any("vetoed cannot be counted" in r.message for r in caplog.records)
    else:  # with the data file's frame numbers gone too they cannot be told apart, and it says so
        assert (totals["frames_stored"], totals["frames_vetoed"], totals["frames_lost"]) == (7, 0, 11)
        assert any("vetoed cannot be counted" in r.message for r in caplog.records)


def test_a_file_purged_while_its_rows_waited_in_memory_gets_them_recovered(tmp_path: Path) -> None:
    """An outside serial chaos probe: on a full disk the frame table's rows wait in memory; retention
    purged a verified blank file (frames 61, 63, 65, 66) meanwhile, then kill -9. Recovery made rows only
    from the files still here: the 4 frames, stored and delivered upstream, were in no frame table. A
    purged file's rows come from the ledger (its ``frame_ranges``, or its span)."""
    import h5py
    import numpy as np

    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-w", series=6, frames_expected=8, config={}, mode="serial")
    directory = tmp_path / run_uid
    directory.mkdir()
    for name, frames, kind in (("_00000.h5", [0, 2, 4], "data"), ("_blank_00000.h5", [1, 3, 5, 6], "blank")):
        path = directory / f"{run_uid}{name}"
        with h5py.File(path, "w") as handle:
            handle["/entry/data/frame_number"] = np.asarray(frames, np.int64)
        recorder.register_file(
            run_uid, path, (frames[0], frames[-1], len(frames)), kind, frame_ranges=frame_ranges_json(frames)
        )
    blank = next(r for r in ledger.files(run_uid) if r["kind"] == "blank")
    assert ledger.file_verified("hpc", blank["id"], blank["size"], blank["checksum"])
    ledger.file_purged(blank["id"])
    Path(blank["path"]).unlink()

    recover(recorder, tmp_path)  # frame 7 never came: daemon_crash

    recovered = directory / f"{run_uid}_reduced_00000.nxs"
    with h5py.File(recovered, "r") as handle:
        numbers, streams = handle["/entry/frames/frame_number"][:].tolist(), handle["/entry/frames/stream"][:]
        rows = dict(zip(numbers, streams, strict=True))
    assert sorted(rows) == [0, 1, 2, 3, 4, 5, 6]
    assert {frame for frame, stream in rows.items() if stream == b"blank"} == {1, 3, 5, 6}


def test_a_resumed_run_that_crashes_too_accounts_only_for_its_own_frames(tmp_path: Path) -> None:
    """A second crash in the same series: the resumed run (from frame 164 on) left open is ended by the
    next start's recovery, which must not record frames 0..163 as its daemon_crash losses (they are the
    first run's, stored or lost there); nor does the next resume hand them over."""
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    config = {"shape": [4, 4], "resumed_after_restart": True, "first_frame": 164}
    run_uid = recorder.open_run("run-r", series=9, frames_expected=None, config=config)
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 164..503")
    recorder.register_file(run_uid, data, (164, 503, 340))
    report = recover(recorder, tmp_path)  # the daemon died with the run open
    assert report["frames_lost"] == 0
    assert [(row["first_frame"], row["reason"]) for row in ledger.losses(run_uid)] == []
    resume_interrupted(recorder, report, series=9, first_frame=518)
    losses = [(row["first_frame"], row["last_frame"], row["reason"]) for row in ledger.losses(run_uid)]
    assert losses == [(504, 517, "daemon_restart")]


def test_recovery_s_unaccounted_frames_drop_by_those_a_resumed_run_takes_over(tmp_path: Path) -> None:
    """A crash in a series of known length: recovery records the frames after the last stored as
    daemon_crash and counts them (the dashboard's "frames recorded lost (daemon_crash)"); a resumed run takes those
    from its first frame on, and the count says what is still unaccounted for."""
    from edge.recovery import recover

    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, "run-c", 3, 100, 30)
    report = recover(recorder, tmp_path)  # the daemon died: run-c is open
    assert report["frames_lost"] == 70
    resume_interrupted(recorder, report, series=3, first_frame=40)
    assert report["frames_lost"] == 10 and report["frames_handed_over"] == 60  # 30..39 stay lost
    assert ledger.run_totals(run_uid)["frames_lost"] == 10


def test_each_reduced_file_says_what_it_holds_read_from_the_file(tmp_path: Path) -> None:
    """An outside tomography probe: every reduced file of a scan said it held the slices; only the last
    one does (and a run a crash ended has none). What a file holds is read from it as it is written."""
    from edge.store import ReducedWriter
    from edge.where import where_report

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-t", series=6, frames_expected=4, config={}, mode="tomo")
    directory = tmp_path / run_uid
    directory.mkdir()
    writer = ReducedWriter(directory, run_uid, _Rows(), frames_per_file=2)
    for frame in range(4):
        writer.add(frame, "stored", "data", {}, {})
        if writer.full():
            recorder.file_closed(writer.finish())
    recorder.file_closed(writer.finish({"slices": [[[0.0]]], "rows": [0]}))
    holds = {f["name"]: f["holds"] for f in where_report(ledger, run_uid)["files"]}
    assert holds == {
        f"{run_uid}_reduced_00000.nxs": "frame table: /entry/frames",
        f"{run_uid}_reduced_00001.nxs": "frame table: /entry/frames",
        f"{run_uid}_reduced_00002.nxs": "slices: /entry/reconstruction (sinograms beside them)",
    }


def test_a_stored_frame_s_row_waits_for_its_data_file_and_a_lost_one_never_says_stored(
    tmp_path: Path,
) -> None:
    from edge.store import ReducedWriter

    writer = ReducedWriter(tmp_path, "run-w", _Rows(), frames_per_file=2, wait_for_data_files=True)
    for frame in range(4):
        writer.add(frame, "stored", "data", {}, {})
    writer.add(4, "vetoed", "data", {}, {})
    assert not writer.full()  # one row ready (the vetoed one), two needed
    writer.frames_durable([0, 1])  # their data file was closed (the store's closing thread says so)
    writer.frames_lost([2, 3])  # theirs was set aside: loss records
    assert writer.full()
    closed = writer.finish()
    assert closed is not None and writer.rows == [] and writer.counts == {"stored": 2, "vetoed": 1}
    import h5py

    with h5py.File(closed.path, "r") as handle:
        assert list(handle["/entry/frames/frame_number"][:]) == [0, 1, 4]


def test_rows_never_say_stored_before_their_file_closes_however_many_wait(tmp_path: Path) -> None:
    """An outside probe: beyond 10 000 waiting rows they were written as stored all the same, and a
    crash then lost the frames (store.frames_per_file 30 000). The pipeline now closes the open files
    early instead (``waiting``); the writer itself never forces a row."""
    from edge.store import MAX_WAITING_ROWS, ReducedWriter

    writer = ReducedWriter(tmp_path, "run-m", _Rows(), frames_per_file=1000, wait_for_data_files=True)
    for frame in range(MAX_WAITING_ROWS + 5):
        writer.add(frame, "stored", "data", {}, {})
    assert writer.waiting == MAX_WAITING_ROWS + 5 and not writer.full()
    assert writer.finish() is None and len(writer.rows) == MAX_WAITING_ROWS + 5


def test_a_crash_recovered_on_a_full_disk_is_continued_and_hands_over_its_held_losses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside chaos probe: the daemon killed with the disk full (the ledger's reserve already used),
    restarted on it while the series went on. Recovery's writes (the run's end, its daemon_crash
    records) were held in memory: the resumed run found no interrupted run ("continues run unknown"),
    and every frame after the resume was lost twice (daemon_crash there, run_refused in the new run).
    Over UDP the interrupted run's new documents raised ENOSPC in the reader thread, which died. Now the
    held end counts, the held records are handed over, and the documents wait for space."""
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-f", series=3, frames_expected=100, config={"shape": [4, 4]})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..29")
    recorder.register_file(run_uid, data, (0, 29, 30))
    recorder._hold(lambda: None, ())  # the disk is full: the ledger's writes are held from here on
    report = recover(recorder, tmp_path)
    assert ledger.run(run_uid)["ended_at"] is None and ledger.losses(run_uid) == []  # all held
    assert [(r["first_frame"], r["last_frame"]) for r in recorder.held_losses(run_uid)] == [(30, 99)]

    with caplog.at_level(logging.WARNING, logger="edge.recovery"):
        link = resume_interrupted(recorder, report, series=3, first_frame=40)

    assert link == {"resumes_run": run_uid}
    assert [(r["first_frame"], r["last_frame"]) for r in recorder.held_losses(run_uid)] == [(30, 39)]
    # the resume's line counts the held records too (it said "now counts 0 frames lost")
    assert any("now counts 10 frames lost" in r.getMessage() for r in caplog.records), caplog.text
    assert report["frames_lost"] == 10 and report["frames_handed_over"] == 60
    assert not list((tmp_path / run_uid).glob("*.documents*.jsonl"))  # waiting for space, not raised
    recorder.retry_pending()  # space returns
    losses = [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)]
    assert losses == [(30, 39, "daemon_crash")]
    assert ledger.run_totals(run_uid)["frames_lost"] == 10
    assert list((tmp_path / run_uid).glob("*.documents*.jsonl"))


def test_the_restart_s_loss_line_says_what_a_resumed_series_may_take_back_and_the_resume_what_stays_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside kill -9 probe: the restarted daemon logged "lost 1900 frames (daemon_crash: 1900)" while
    the ledger then said 108 lost (the resumed run took back the rest). The per-second line now says the
    1900 are recorded lost for now and may come back; the resume says how many came back and what stays."""
    from edge.logs import RepeatSummary
    from edge.recovery import recover

    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, "run-k", 8, 2000, 100)
    with caplog.at_level(logging.INFO):
        report = recover(recorder, tmp_path)  # the daemon died: run-k is open
    summary = RepeatSummary(window=1.0, clock=lambda: 0.0)  # the daemon's handler filter, fed the records
    for record in caplog.records:
        summary.filter(record)
    lines = [record.getMessage() for record in summary.flush()]
    assert len(lines) == 1 and lines[0].startswith("1900 recorded lost for now (daemon_crash: 1900"), lines
    assert "lost 1900 frames" not in lines[0] and "takes back those it still receives" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.recovery"):
        resume_interrupted(recorder, report, series=8, first_frame=208)
    assert ledger.run_totals(run_uid)["frames_lost"] == 108
    assert (
        f"1792 frames handed over of those recorded lost at the restart; run {run_uid} now counts 108 frames lost"
        in (caplog.text)
    )


def test_was_interrupted_names_the_series_a_restart_cut(tmp_path: Path) -> None:
    """What the stream readers ask before taking an image far beyond frame 0 for a series resumed after
    a restart: a run of that series ended abort or fail (or recovery failed it)."""
    from edge.recovery import was_interrupted

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("cut", 5, None, "{}")
    ledger.run_ended("cut", "abort", 0)
    ledger.run_started("fine", 6, None, "{}")
    ledger.run_ended("fine", "success", 0)
    ledger.run_started("crashed", 7, None, "{}")  # no end: recovery failed it
    assert was_interrupted(ledger, {}, 5)
    assert not was_interrupted(ledger, {}, 6) and not was_interrupted(ledger, {}, 8)
    assert was_interrupted(ledger, {"runs_failed": ["crashed"]}, 7) and not was_interrupted(ledger, {}, 7)
    ledger.close()


def test_a_crashed_run_of_unknown_length_is_accounted_up_to_the_last_frame_it_received(
    tmp_path: Path,
) -> None:
    """A series that never said its length, five frames received, none in a closed file, kill -9, and
    the series does not go on: the run was "0 stored, 0 lost", its frames in no record (an outside
    probe). The open run's highest frame received is in the ledger (every 0.2 s at most), and recovery
    records the frames up to it lost (``daemon_crash``)."""
    from edge.recorder import PROGRESS_SECONDS
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-u", series=72, frames_expected=None, config={})
    for frame in range(3):  # the receiving thread: memory only
        recorder.frame_seen(run_uid, frame)
    assert ledger.run(run_uid)["frames_seen"] is None
    recorder.write_progress(100.0)  # the writing thread
    assert ledger.run(run_uid)["frames_seen"] == 2
    recorder.frame_seen(run_uid, 4)
    recorder.frame_seen(run_uid, 3)  # (never lowered)
    recorder.write_progress(100.0 + PROGRESS_SECONDS / 2)  # too soon: not written
    assert ledger.run(run_uid)["frames_seen"] == 2
    recorder.write_progress(100.0 + PROGRESS_SECONDS)
    assert ledger.run(run_uid)["frames_seen"] == 4
    # a run that ends has its exact highest frame, however soon (it lagged by up to 0.2 s: a probe)
    other = recorder.open_run("run-v", series=73, frames_expected=None, config={})
    for frame in range(10):
        recorder.frame_seen(other, frame)
    recorder.close_run(other, 10, "success")
    assert ledger.run(other)["frames_seen"] == 9
    # the next series' first frame received before a run's end is recorded (back to back: its end goes
    # through the ring after frames the receiver has moved on from): still exact (it was 0, a probe)
    third = recorder.open_run("run-w", series=74, frames_expected=None, config={})
    for frame in range(6):
        recorder.frame_seen(third, frame)
    fourth = recorder.open_run("run-x", series=75, frames_expected=None, config={})
    recorder.frame_seen(fourth, 0)
    recorder.close_run(third, 6, "success")
    assert ledger.run(third)["frames_seen"] == 5
    recorder.close_run(fourth, 1, "success")
    assert ledger.run(fourth)["frames_seen"] == 0
    ledger.close()

    ledger = Ledger(tmp_path / "ledger.sqlite")  # the restart
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    report = recover(recorder, tmp_path)
    assert report["frames_lost"] == 5
    assert [(loss["first_frame"], loss["last_frame"], loss["reason"]) for loss in ledger.losses(run_uid)] == [
        (0, 4, "daemon_crash")
    ]
    assert ledger.run(run_uid)["exit_status"] == "fail"


def test_recovery_removes_the_empty_quarantine_directories_a_crash_left(tmp_path: Path) -> None:
    """A run's quarantine directory is made when it opens and removed at its end when empty; a crash left
    it behind, empty (an outside chaos probe: clutter beside the real quarantined files)."""
    from edge.recovery import recover

    (tmp_path / "quarantine" / "run-x").mkdir(parents=True)
    kept = tmp_path / "quarantine" / "run-y" / "run-y_00000.h5.part"
    kept.parent.mkdir()
    kept.write_bytes(b"half")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)
    ledger.close()
    assert not (tmp_path / "quarantine" / "run-x").exists() and kept.read_bytes() == b"half"


def test_a_frame_kept_incomplete_in_a_file_the_crash_left_unfinished_is_recorded_lost(tmp_path: Path) -> None:
    """An outside probe (UDP, kill -9): frames received with packets missing have a partial loss record
    (``incomplete_frame``: kept, flagged) as they arrive; those in the file the crash left unfinished
    (quarantined, never stored) had only that record: recovery took it as their account, and 40 frames
    were neither stored nor lost. A partial record accounts for no frame: they are ``daemon_crash``."""
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-u", series=1, frames_expected=10, config={"shape": [4, 4]})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..4")
    recorder.register_file(run_uid, data, (0, 4, 5))
    detail = "each frame 1 of 32 packets missing; kept, flagged incomplete"
    recorder.loss(run_uid, 3, 3, "incomplete_frame", detail)  # stored (in the closed file)
    recorder.loss(run_uid, 6, 7, "incomplete_frame", detail)  # in the file the crash left unfinished

    recover(recorder, tmp_path)

    losses = [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)]
    assert (5, 9, "daemon_crash") in losses, losses
    totals = ledger.run_totals(run_uid)
    assert (totals["frames_stored"], totals["frames_lost"]) == (5, 5), totals


def test_a_run_of_unknown_length_is_accounted_up_to_its_last_frame_kept_incomplete(tmp_path: Path) -> None:
    """An outside chaos probe (UDP, length unknown, kill -9): recovery accounted up to frame 255, the last
    received it knew of, but frames 256 and 259 had been received (their partial records, kept with
    packets missing, came as they arrived, in the file the crash left unfinished): 256..259 were in no
    account, 257 and 258 without any record. A partial record proves its frame came: the account goes
    up to it."""
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-v", series=1, frames_expected=None, config={"shape": [4, 4]})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..4")
    recorder.register_file(run_uid, data, (0, 4, 5))
    detail = "each frame 1 of 32 packets missing; kept, flagged incomplete"
    recorder.loss(run_uid, 6, 6, "incomplete_frame", detail)  # in the file the crash left unfinished
    recorder.loss(run_uid, 9, 9, "incomplete_frame", detail)

    recover(recorder, tmp_path)

    losses = [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)]
    assert (5, 9, "daemon_crash") in losses, losses
    totals = ledger.run_totals(run_uid)
    assert (totals["frames_stored"], totals["frames_lost"]) == (5, 5), totals


def test_a_reduced_file_finished_just_before_the_crash_is_salvaged_with_its_vetoed_frames(
    tmp_path: Path,
) -> None:
    """An outside probe: a reduced file (46 vetoed blanks) finished just before a kill -9, not yet in the
    ledger, stayed in the store for good, in no record, and its frames were recorded lost. Recovery
    records it (forwarded like any other), and its vetoed frames are the run's vetoed frames. A blank
    file closed so is salvaged as a blank file, not a data file."""
    import h5py
    import numpy as np

    from edge.recovery import recover

    ledger, recorder, run_uid = _serial_run_with_blanks_dropped(tmp_path, "run-s", register_reduced=False)
    blank = tmp_path / run_uid / f"{run_uid}_blank_00000.h5"
    with h5py.File(blank, "w") as handle:
        handle.create_group("entry").attrs["file_kind"] = "blank"
        handle["/entry/data/frame_number"] = np.asarray([20], np.int64)

    report = recover(recorder, tmp_path)

    names = {Path(p).name for p in report["salvaged"]}
    assert names == {f"{run_uid}_reduced_00000.nxs", blank.name}, report
    kinds = {r["name"]: r["kind"] for r in ledger.files(run_uid)}
    assert kinds[f"{run_uid}_reduced_00000.nxs"] == "reduced" and kinds[blank.name] == "blank"
    totals = ledger.run_totals(run_uid)
    # 7 hits and the blank 20 stored, 1, 2, 5, 6, 7, 9 vetoed; 10, 11, 14..16, 18, 19, 21..23 lost
    assert (totals["frames_stored"], totals["frames_vetoed"], totals["frames_lost"]) == (8, 6, 10), totals


def test_hits_of_a_quarantined_file_inside_a_purged_frame_table_s_span_are_recorded_lost(
    tmp_path: Path,
) -> None:
    """An outside probe (serial, blanks dropped, full disk with no ledger reserve, kill -9): the open hits
    file was quarantined when the disk filled, its disk_full records held in memory and lost with the
    kill; the frame table listing the blanks around those hits (their rows waited for their file) was
    verified and purged. Recovery took the purged table's span as accounted: the hits were in no record.
    The ledger keeps a purged file's frames (``frame_ranges``: a gappy data file's, a table's vetoed
    ones), so only those are accounted, and the hits are ``daemon_crash``."""
    import h5py
    import numpy as np

    from edge.recovery import recover
    from edge.store import ReducedWriter

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-q", series=5, frames_expected=16, config={}, mode="serial")
    directory = tmp_path / run_uid
    directory.mkdir()
    hits = [0, 3, 4, 8]
    data = directory / f"{run_uid}_00000.h5"
    with h5py.File(data, "w") as handle:
        handle["/entry/data/frame_number"] = np.asarray(hits, np.int64)
    recorder.register_file(run_uid, data, (0, 8, 4), frame_ranges="[[0,0],[3,4],[8,8]]")
    writer = ReducedWriter(directory, run_uid, _Rows(), frames_per_file=100)
    for frame in [*range(10), 13, 14]:  # hits 10..12: their rows wait for their file, quarantined
        writer.add(frame, "stored" if frame in hits else "vetoed", "data", {}, {})
    recorder.file_closed(writer.finish())
    for row in ledger.files(run_uid):  # both verified upstream and purged here
        assert ledger.file_verified("hpc", row["id"], row["size"], row["checksum"])
        ledger.file_purged(row["id"])
        Path(row["path"]).unlink()

    recover(recorder, tmp_path)

    losses = [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)]
    assert losses == [(10, 12, "daemon_crash"), (15, 15, "daemon_crash")], losses
    totals = ledger.run_totals(run_uid)
    assert (totals["frames_stored"], totals["frames_vetoed"], totals["frames_lost"]) == (4, 8, 4), totals


def test_recovered_rows_take_each_frame_s_hit_flag_peaks_key_and_angle_from_its_data_file(
    tmp_path: Path,
) -> None:
    """Rows recovered after a crash had the frame number, disposition and stream only: upstream, a hit
    whose row was recovered read as a frame with no hit flag and no peak count. They take the data
    file's own per-frame columns; a serial frame of a file that is gone gets its hit flag from its
    stream and -1 peaks (not known)."""
    import h5py
    import numpy as np

    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-h", series=4, frames_expected=7, config={}, mode="serial")
    directory = tmp_path / run_uid
    directory.mkdir()
    hits = directory / f"{run_uid}_00000.h5"
    with h5py.File(hits, "w") as handle:
        handle["/entry/data/frame_number"] = np.asarray([0, 2, 4], np.int64)
        handle["/entry/result_1/is_hit"] = np.asarray([True, True, True])
        handle["/entry/result_1/nPeaksFound"] = np.asarray([12, 40, 15], np.int32)
    recorder.register_file(run_uid, hits, (0, 4, 3), "data", frame_ranges=frame_ranges_json([0, 2, 4]))
    blanks = directory / f"{run_uid}_blank_00000.h5"
    with h5py.File(blanks, "w") as handle:
        handle["/entry/data/frame_number"] = np.asarray([1, 3], np.int64)
    recorder.register_file(run_uid, blanks, (1, 3, 2), "blank", frame_ranges=frame_ranges_json([1, 3]))
    blank = next(r for r in ledger.files(run_uid) if r["kind"] == "blank")
    assert ledger.file_verified("hpc", blank["id"], blank["size"], blank["checksum"])
    ledger.file_purged(blank["id"])
    blanks.unlink()

    recover(recorder, tmp_path)

    with h5py.File(directory / f"{run_uid}_reduced_00000.nxs", "r") as handle:
        table = handle["/entry/frames"]
        rows = {
            int(n): (bool(h), int(p))
            for n, h, p in zip(table["frame_number"][:], table["is_hit"][:], table["n_peaks"][:], strict=True)
        }
    assert rows == {0: (True, 12), 1: (False, -1), 2: (True, 40), 3: (False, -1), 4: (True, 15)}


def test_recovered_tomo_rows_keep_each_frame_s_image_key_and_angle(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-t", series=5, frames_expected=4, config={}, mode="tomo")
    directory = tmp_path / run_uid
    directory.mkdir()
    path = directory / f"{run_uid}_00000.h5"
    with h5py.File(path, "w") as handle:
        handle["/entry/data/frame_number"] = np.arange(4, dtype=np.int64)
        handle["/entry/instrument/detector/image_key"] = np.asarray([2, 1, 0, 0], np.int8)
        handle["/entry/sample/rotation_angle"] = np.asarray([0.0, 0.0, 0.5, 1.0])
    recorder.register_file(run_uid, path, (0, 3, 4), "data")

    recover(recorder, tmp_path)

    with h5py.File(directory / f"{run_uid}_reduced_00000.nxs", "r") as handle:
        table = handle["/entry/frames"]
        assert table["image_key"][:].tolist() == [2, 1, 0, 0]
        assert table["rotation_angle"][:].tolist() == [0.0, 0.0, 0.5, 1.0]
        assert "is_hit" not in table


def test_a_series_cut_inside_a_capture_resumes_the_capture_s_run(tmp_path: Path) -> None:
    """An outside probe (stock ophyd v1: one capture per scan, a camera series per point): a SIGTERM
    during the third point. The capture's run held series 1..3 (frames 0..21, series 3's frames 0..1 as
    20..21) and recorded 22..29 lost (``receiver_stopped``). The camera went on with series 3 from frame
    2 after the restart: no run of series 3 was known (the capture's run is recorded under its first
    series), so the new run recorded series frames 0..1 as a gap although the capture holds them, and
    the capture's run kept 22..29 as lost although the new run stores them. The capture's run records
    where each series it took lies; a resumed series finds it there."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("capture", series=1, frames_expected=None, config={"capture_file": "x.h5"})
    for series, offset in ((1, 0), (2, 10), (3, 20)):
        recorder.series_offset(run_uid, series, offset, 10 if series == 3 else None)
    recorded = json.loads(ledger.run(run_uid)["config"])
    assert recorded["capture_series"] == {"1": 0, "2": 10, "3": 20}
    assert recorded["capture_series_length"] == {"3": 10}  # announced lengths only
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..21")
    recorder.register_file(run_uid, data, (0, 21, 22))
    recorder.loss(run_uid, 22, 29, "receiver_stopped", "the daemon stopped")
    recorder.close_run(run_uid, 22, "abort")

    link = resume_interrupted(recorder, {}, series=3, first_frame=2)

    assert link == {"resumes_run": run_uid}
    assert ledger.losses(run_uid) == []  # 22..29 are the new run's (series 3's 2..9)
    # and a series the capture never took is no continuation of it
    assert resume_interrupted(recorder, {}, series=4, first_frame=2) == {"resumes_run": None}


def test_a_run_whose_reduced_file_a_full_disk_held_at_a_clean_stop_is_recovered_at_the_next_start(
    tmp_path: Path,
) -> None:
    """An outside serial chaos probe: a run ended (in the ledger) while the disk was full, then a clean
    stop. Its reduced file (frame table, products) and documents were never written and only logged;
    the next start's recovery passed the ended run by, so neither ever went upstream and its vetoed
    blanks were in no record. The stop takes the run's end back; recovery then accounts for it."""
    import errno

    import h5py
    import numpy as np

    from edge.diskguard import DiskGuard
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    disk = DiskGuard(tmp_path, tmp_path / "reserve", 0, 0)
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20, disk=disk)
    run_uid = recorder.open_run("run-f", series=8, frames_expected=10, config={}, mode="serial")
    directory = tmp_path / run_uid
    directory.mkdir()
    path = directory / f"{run_uid}_00000.h5"
    with h5py.File(path, "w") as handle:
        handle["/entry/data/frame_number"] = np.asarray([0, 3, 6], np.int64)
    recorder.register_file(run_uid, path, (0, 6, 3), "data", frame_ranges=frame_ranges_json([0, 3, 6]))

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    recorder.when_space_returns(f"run {run_uid}: its reduced file (frame table, products)", full, run_uid)
    recorder.close_run(run_uid, 3, "success", 7)  # 7 blanks vetoed: their rows were in that file
    assert ledger.run(run_uid)["ended_at"] is not None

    recorder.give_up_held()  # the clean stop, the disk still full

    assert ledger.run(run_uid)["ended_at"] is None  # for the next start's recovery
    restarted = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    report = recover(restarted, tmp_path)
    # a clean stop, no crash (it read "ended by a crash", a crash alarm: an outside chaos probe): the
    # blanks whose rows the full disk held in memory are lost to it
    assert report["runs_failed"] == [] and report["runs_finished_after_clean_stop"] == [run_uid]
    assert report["frames_lost"] == 0
    lost = [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)]
    assert lost == [(1, 2, "disk_full"), (4, 5, "disk_full"), (7, 9, "disk_full")]
    assert all("stopped cleanly on a full disk" in r["detail"] for r in ledger.losses(run_uid))
    assert ledger.run(run_uid)["exit_status"] == "fail"  # frames lost
    assert "stopped cleanly (success)" in json.loads(ledger.run(run_uid)["config"])["ended_by_recovery"]
    with h5py.File(directory / f"{run_uid}_reduced_00000.nxs", "r") as handle:
        assert handle["/entry/frames/frame_number"][:].tolist() == [0, 3, 6]
    assert (directory / documents_name(run_uid)).exists()


def test_edge_where_says_which_frames_of_an_interrupted_run_went_on_in_the_run_that_resumed_it(
    tmp_path: Path,
) -> None:
    """An outside newcomer's probe read "110 stored, 0 vetoed, 0 lost (expected 600)" of a run whose
    series went on in another run after a SIGTERM as 490 frames unaccounted for."""
    from edge.where import render, where_report

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    first = recorder.open_run("run-a", series=3, frames_expected=600, config={"shape": [4, 4]})
    data = tmp_path / first / f"{first}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..109")
    recorder.register_file(first, data, (0, 109, 110))
    recorder.close_run(first, 110, "abort")
    config = {"shape": [4, 4], "resumed_after_restart": True, "first_frame": 110, "resumes_run": first}
    later = recorder.open_run(None, series=3, frames_expected=None, config=config)

    report = where_report(ledger, first, store=tmp_path)

    assert report["continued_by"] == [later] and report["continued_at_frame"] == 110
    text = render(report)
    assert f"expected 600; frames 110..599 went on in run {later}" in text, text
    # and in the JSON, each half adds up alone (an outside probe's script read 110 of 600 as a fault)
    assert (report["frames_continued"], report["frames_this_run"]) == (490, 110)
    assert report["frames_stored"] + report["frames_lost"] == report["frames_this_run"]
    resumed = where_report(ledger, later, store=tmp_path)
    assert (resumed["frames_continued"], resumed["frames_this_run"]) == (0, 490)


def test_edge_where_says_what_a_capture_s_run_was_to_account_for(tmp_path: Path) -> None:
    """A capture's run has no announced length (its client ends it with Capture 0): "expected unknown"
    beside its losses read as a fault (an outside probe)."""
    from edge.where import render, where_report

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("cap", series=2, frames_expected=None, config={"capture_file": "/d/x.h5"})
    recorder.close_run(run_uid, 0, "abort")
    text = render(where_report(ledger, run_uid, store=tmp_path))
    assert "expected: as many as the capture took, across its series (Capture 0 ends it)" in text, text


def test_edge_where_names_a_capture_s_part_file_a_crash_left_and_its_detector_uid_plainly(
    tmp_path: Path,
) -> None:
    """Outside probes: after a kill -9 mid-capture `edge where` said the capture's frames were lost and
    never named the `.part` a crash left beside the capture's file (outside the store, where recovery
    does not look: the only copy); and every capture's run said its detector uid "was not a file name"
    (the capture's run is named at its Capture 1)."""
    from edge.where import render, where_report

    capture = tmp_path / "scans" / "fly.h5"
    capture.parent.mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    config = {"capture_file": str(capture), "detector_run_uid": "0b7e6a1c-1111-2222-3333-444455556666"}
    run_uid = recorder.open_run("cap-1", series=2, frames_expected=None, config=config)
    Path(f"{capture}.part").write_bytes(b"x" * 1234)
    assert where_report(ledger, run_uid, store=tmp_path)["capture_left"] is None  # open: being written
    recorder.close_run(run_uid, 0, "fail")
    report = where_report(ledger, run_uid, store=tmp_path)
    assert report["capture_left"] == {"path": f"{capture}.part", "size": 1234}
    text = render(report)
    assert f"left at a crash {capture}.part  (1234 bytes, the capture's file open when" in text, text
    assert "was not a file name" not in text and "named at its Capture 1" in text, text


def _started_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> tuple[Ledger, RunRecorder, str, dict]:
    """A run killed mid-run (`_crashed_with_rows_of_half`), then the first start after it, on a full disk:
    its recovery defers the run's recovered frame table until space returns (kept in the held journal).
    Returns that start's ledger, recorder, the run's uid and the recovery's report."""
    import errno

    from edge import recovery
    from edge.diskguard import DiskGuard
    from edge.held_journal import HeldJournal

    ledger = Ledger(tmp_path / "ledger.sqlite")
    journal = HeldJournal(tmp_path / "ledger.held")
    assert journal.make()
    run_uid = _crashed_with_rows_of_half(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path, name)
    ledger.close()  # killed mid-run

    ledger = Ledger(tmp_path / "ledger.sqlite")
    disk = DiskGuard(tmp_path, tmp_path / "reserve", 0, 0)
    starting = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20, disk=disk, journal=journal)

    def no_space(self: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(recovery.ReducedWriter, "finish", no_space)
        report = recovery.recover(starting, tmp_path)
    assert report["frame_tables_deferred"] == [run_uid] and report["runs_failed"] == [run_uid]
    return ledger, starting, run_uid, report


def test_a_kill_while_a_recovered_frame_table_waits_for_space_recovers_it_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside chaos probe: a start after a crash, on a full disk, deferred the crashed run's
    recovered frame table (in memory, until space returns) and marked the run failed; killed again, the
    next start found the run ended and passed it by: 920 stored frames in no frame table, upstream or
    here, and nothing said so. The deferral is kept in the held journal as the run to reopen: the next
    start's recovery writes the table."""
    import h5py

    from edge import recovery
    from edge.held_journal import HeldJournal, replay

    # the first start after the crash: the disk is full, the recovered frame table waits for space
    ledger, _starting, run_uid, _report = _started_on_a_full_disk(tmp_path, monkeypatch, "run-k")
    directory = tmp_path / run_uid
    assert ledger.run(run_uid)["ended_at"] is not None
    ledger.close()  # killed again before space returned

    ledger = Ledger(tmp_path / "ledger.sqlite")  # the next start, space back
    replay(ledger, HeldJournal(tmp_path / "ledger.held"))
    assert ledger.run(run_uid)["ended_at"] is None  # reopened for the recovery
    report = recovery.recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)
    assert report["frame_rows_recovered"] == {run_uid: 5}
    recovered = [f for f in ledger.files(run_uid) if f["name"].endswith(".nxs")][-1]
    with h5py.File(recovered["path"], "r") as handle:
        assert list(handle["/entry/frames/frame_number"][:]) == [5, 6, 7, 8, 9]
    assert [(r["first_frame"], r["last_frame"], r["reason"]) for r in ledger.losses(run_uid)] == [
        (10, 11, "daemon_crash")
    ]  # (once: the second recovery records no loss twice)
    stop = _stop(directory / documents_name(run_uid))["edge_accounting"]
    assert (stop["frames_stored"], stop["frames_lost"]) == (10, 2)
    ledger.close()


def test_a_run_reopened_for_its_deferred_frame_table_keeps_the_frames_its_series_went_on_with_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside chaos probe: the start after a crash deferred the crashed run's frame table (a full
    disk), the series went on in a run resumed after that restart (the frames from there handed over to
    it), and the daemon was killed. The next start reopened the run for its frame table and accounted it
    to its announced end again, past ``continued_at_frame``: those frames lost in it and stored in the run
    that resumed it (2352 dispositions for 1200 frames). A run's account ends where its series went on."""
    from edge import recovery
    from edge.held_journal import HeldJournal, replay

    # the first start after it: its frame table waits for room
    ledger, starting, run_uid, report = _started_on_a_full_disk(tmp_path, monkeypatch, "run-g")
    # the series goes on at frame 11: a run resumed after the restart takes it from there
    assert resume_interrupted(starting, report, series=5, first_frame=11) == {"resumes_run": run_uid}
    config = {"resumed_after_restart": True, "first_frame": 11, "resumes_run": run_uid}
    resumed = starting.open_run("run-h", series=5, frames_expected=12, config=config, mode="powder")
    starting.close_run(resumed, 1, "success")
    assert [(r["first_frame"], r["last_frame"]) for r in ledger.losses(run_uid)] == [(10, 10)]
    ledger.close()  # killed before space returned

    ledger = Ledger(tmp_path / "ledger.sqlite")  # the next start, space back
    replay(ledger, HeldJournal(tmp_path / "ledger.held"))
    assert ledger.run(run_uid)["ended_at"] is None  # reopened for its frame table
    recovery.recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)
    assert [(r["first_frame"], r["last_frame"]) for r in ledger.losses(run_uid)] == [(10, 10)]
    totals = ledger.run_totals(run_uid)
    assert totals["frames_stored"] + totals["frames_lost"] == 11, totals  # its frames 0..10; 11 went on
    ledger.close()


def test_a_deferred_file_written_once_space_returns_leaves_no_run_to_reopen(tmp_path: Path) -> None:
    """The journal's reopening of a run with a deferred file lasts only while the file waits."""
    from edge.held_journal import HeldJournal

    ledger = Ledger(tmp_path / "ledger.sqlite")
    journal = HeldJournal(tmp_path / "ledger.held")
    assert journal.make()
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20, journal=journal)
    run_uid = recorder.open_run("run-d", series=1, frames_expected=1, config={})
    written: list[str] = []
    recorder.when_space_returns(f"run {run_uid}: a file", lambda: written.append("x"), run_uid)
    assert ("run_reopened", [run_uid]) in journal.read()
    recorder.retry_pending()
    assert written == ["x"] and journal.read() == []
    ledger.close()


def test_a_start_killed_before_its_recovery_was_seen_has_the_next_start_name_its_failed_runs(
    tmp_path: Path,
) -> None:
    """An outside chaos probe: killed during its recovery (after it had recorded the crash's losses and
    failed the run), a start took its ``daemon:recovery`` alarm with it; the next start had nothing left
    to recover and said nothing of a run with 1,181 frames recorded lost. Now the next start names the
    runs an earlier start failed since the last daemon that ran a minute, major while frames are lost."""
    from edge.alarms import current_alarms
    from edge.recovery import UnseenRecoveries, note_earlier, recover

    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, "run-u", 3, 10, 5)
    unseen = tmp_path / "recovery.unseen"
    since = UnseenRecoveries(unseen).begin()
    first = recover(recorder, tmp_path)  # this start is killed before anyone saw its alarm
    assert first["runs_failed"] == [run_uid] and first["frames_lost"] == 5

    again = UnseenRecoveries(unseen).begin()  # the next start
    assert again == since
    report = recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)
    assert report["runs_failed"] == [] and report["frames_lost"] == 0
    note_earlier(ledger, report, again)
    assert report["earlier_runs_failed"] == [run_uid] and report["earlier_frames_lost"] == 5
    (alarm,) = [
        a for a in current_alarms({"appliance": {"recovery": report}}) if a["id"] == "daemon:recovery"
    ]
    assert alarm["severity"] == "major" and "5 frames recorded lost" in alarm["message"], alarm
    # when they were failed (an outside probe read a crash minutes old, named again by each short-lived
    # start since, as a fresh one)
    ended = ledger.run(run_uid)["ended_at"]
    assert report["earlier_failed_at"] == ended
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ended))
    assert f"1 run(s) failed at {stamp} UTC by an earlier start" in alarm["message"], alarm

    UnseenRecoveries(unseen).shown()  # a daemon that ran a minute showed it: the next start does not
    later = UnseenRecoveries(unseen).begin()
    quiet = recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)
    note_earlier(ledger, quiet, later)
    assert "earlier_runs_failed" not in quiet
    assert [
        a for a in current_alarms({"appliance": {"recovery": quiet}}) if a["id"] == "daemon:recovery"
    ] == []
    ledger.close()


def test_a_recovery_counts_the_crash_losses_an_earlier_start_recorded_before_it_was_killed(
    tmp_path: Path,
) -> None:
    """An outside probe killed a start during its recovery after it had recorded a run's 350 frames lost
    (``daemon_crash``) but before it ended the run: the next start ended it, recorded nothing more, and
    its ``daemon:recovery`` alarm said "1 run(s) marked failed" and no frame lost."""
    from edge.recovery import recover

    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, "run-l", 3, 10, 5)
    recorder.loss(run_uid, 5, 9, "daemon_crash", "held in memory or not yet received when the daemon died")
    report = recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)
    assert report["runs_failed"] == [run_uid] and report["frames_lost"] == 5
    assert [(r["first_frame"], r["last_frame"]) for r in ledger.losses(run_uid)] == [(5, 9)]  # not twice
    ledger.close()


def test_a_run_failed_by_a_recovery_with_every_frame_stored_is_named_by_the_next_start(
    tmp_path: Path,
) -> None:
    """An outside chaos probe: a run whose frames were all stored when the daemon stopped (a tomography
    scan: its slices, made in memory, were what the crash took) was failed by a recovery whose daemon was
    killed within the minute; later starts named the other runs failed since, never this one (they were
    found by their ``daemon_crash`` losses, and it had none). Its record now says the recovery ended it."""
    from edge.recovery import UnseenRecoveries, note_earlier, recover

    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, "run-t", 4, 5, 5)
    unseen = tmp_path / "recovery.unseen"
    since = UnseenRecoveries(unseen).begin()
    first = recover(recorder, tmp_path)
    assert first["runs_failed"] == [run_uid] and first["frames_lost"] == 0
    note = json.loads(ledger.run(run_uid)["config"])["ended_by_recovery"]
    assert "5 frames stored" in note and "0 recorded lost to the crash" in note

    report = recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)  # the next start
    note_earlier(ledger, report, UnseenRecoveries(unseen).begin())
    assert UnseenRecoveries(unseen).begin() == since
    assert report["earlier_runs_failed"] == [run_uid] and report["earlier_frames_lost"] == 0
    ledger.close()


def test_frames_lost_to_a_crash_name_the_half_written_file_it_left(tmp_path: Path) -> None:
    """An outside upstream probe: hits received and written into the file the crash left half-written
    read "held in memory or not yet received when the daemon died" beside the quarantine line; the loss
    records now name the file moved to quarantine/."""
    from edge.recovery import recover

    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, "run-h", 5, 10, 5)
    (tmp_path / run_uid / f"{run_uid}_00001.h5.part").write_bytes(b"half")
    report = recover(recorder, tmp_path)
    assert report["frames_lost"] == 5
    (loss,) = [r for r in ledger.losses(run_uid) if r["reason"] == "daemon_crash"]
    assert f"quarantine/{run_uid}/{run_uid}_00001.h5.part" in loss["detail"], loss
    assert (tmp_path / "quarantine" / run_uid / f"{run_uid}_00001.h5.part").exists()
    ledger.close()


def test_an_open_capture_s_file_under_the_store_stays_where_it_is_and_its_losses_name_it(
    tmp_path: Path,
) -> None:
    """An outside Bluesky probe: a plan's scans directory under the store; killed mid-capture, the next
    start moved the capture's ``.part`` into quarantine/, where neither the plan's documents nor `edge
    where` (which names a capture's file left at a crash) led. It stays where it was now, named by the
    crash's loss records and by `edge where`."""
    from edge.recovery import recover
    from edge.where import where_report

    capture = tmp_path / "scans" / "fly.h5"
    capture.parent.mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("cap-2", series=3, frames_expected=8, config={"capture_file": str(capture)})
    part = Path(f"{capture}.part")
    part.write_bytes(b"x" * 99)
    stray = tmp_path / "scans" / "other.h5.part"  # a .part of no open capture: quarantined as before
    stray.write_bytes(b"y")
    report = recover(recorder, tmp_path)
    assert part.exists() and not stray.exists()
    assert report["quarantined"] == [str(tmp_path / "quarantine" / "scans" / "other.h5.part")]
    (loss,) = [r for r in ledger.losses(run_uid) if r["reason"] == "daemon_crash"]
    assert f"{part}, the capture's file, left where it was" in loss["detail"], loss
    assert where_report(ledger, run_uid, store=tmp_path)["capture_left"] == {"path": str(part), "size": 99}
    # a second crash, during another capture (an outside probe): the first one's .part stays where it is
    later = recorder.open_run("cap-3", series=4, frames_expected=8, config={"capture_file": f"{capture}-2"})
    Path(f"{capture}-2.part").write_bytes(b"z")
    again = recover(RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20), tmp_path)
    assert part.exists() and Path(f"{capture}-2.part").exists() and again["quarantined"] == []
    assert where_report(ledger, run_uid, store=tmp_path)["capture_left"] == {"path": str(part), "size": 99}
    assert later in again["runs_failed"]
    ledger.close()


def test_a_udp_run_whose_frames_were_all_in_its_half_written_file_continues_beyond_those_received(
    tmp_path: Path,
) -> None:
    """An outside UDP probe: killed in the quiet after a 30-frame acquisition, the run had stored no frame
    (all in its half-written file); the next acquisition's frame 1 was taken for its continuation and its
    frame 0 for a late packet of it. The run's continuation now comes after every frame it received."""
    from edge.recovery import interrupted_udp_run, recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("udp-q", series=11, frames_expected=300, config={"transport": "udp"})
    ledger.run_seen(run_uid, 29)
    (tmp_path / run_uid).mkdir()
    (tmp_path / run_uid / f"{run_uid}_00000.h5.part").write_bytes(b"30 frames")
    report = recover(recorder, tmp_path)
    found = interrupted_udp_run(ledger, report)
    assert found is not None and found[0]["run_uid"] == run_uid
    assert found[1] == 29  # frames 0..29 came: a frame at or below them starts another acquisition
    ledger.close()


def test_a_capture_s_series_of_announced_length_is_accounted_to_its_end_after_a_crash(tmp_path: Path) -> None:
    """An outside chaos probe: a capture's run (its length the client's, none in the run) whose camera
    series announced 200 frames, killed thrice while the camera went on: recovery accounted only up to
    the highest frame received (138); frames 139..199, sent while the daemon was down, were in no record.
    The series' announced length, where it lies in the capture's run, bounds the account."""
    from edge.recovery import recover

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("cap-len", series=2, frames_expected=None, config={"capture_file": "/x/c.h5"})
    recorder.series_offset(run_uid, 1, 0, 50)  # an earlier series of the capture: frames 0..49
    recorder.series_offset(run_uid, 2, 50, 200)  # this one: run frames 50..249
    ledger.run_seen(run_uid, 188)
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..99")
    recorder.register_file(run_uid, data, (0, 99, 100))
    report = recover(recorder, tmp_path)
    assert report["frames_lost"] == 150  # 100..249: to the end of the series the camera announced
    crashed = [
        (r["first_frame"], r["last_frame"]) for r in ledger.losses(run_uid) if r["reason"] == "daemon_crash"
    ]
    assert crashed == [(100, 249)]
    ledger.close()


def test_a_start_s_uid_tells_whether_it_is_the_series_a_restart_cut(tmp_path: Path) -> None:
    """A start that names a run uid continues the cut run only when it names that run (or the detector's
    uid it was recorded under): a new acquisition reusing the series number is no continuation."""
    from edge.recovery import recover, was_interrupted

    ledger, recorder, run_uid = _open_run_with_one_file(tmp_path, "cut-run", 7, 10, 5)
    report = recover(recorder, tmp_path)
    assert was_interrupted(ledger, report, 7) and was_interrupted(ledger, report, 7, run_uid)
    assert not was_interrupted(ledger, report, 7, "a-new-acquisition")
    assert not was_interrupted(ledger, report, 8)
    ledger.close()


def test_the_mark_that_recoveries_were_shown_is_tried_again_while_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside chaos probe: a daemon that ran minutes on a full disk could not move the time kept in
    ``recovery.unseen`` on (one try, at 60 s), so every later start named its recovery's runs again as
    failed by "an earlier start that ended within a minute of its recovery". It is tried until kept."""
    import errno
    import time

    import edge.recovery as recovery_module
    from edge.recovery import UnseenRecoveries

    unseen = tmp_path / "recovery.unseen"
    since = UnseenRecoveries(unseen).begin()
    replace = recovery_module.os.replace
    refusals = [3]

    def full(src: object, dst: object) -> None:
        if refusals[0] > 0:
            refusals[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(recovery_module.os, "replace", full)
    time.sleep(0.01)
    cancel = UnseenRecoveries(unseen).shown_after(0.0, retry=0.02)
    deadline = time.monotonic() + 10
    while float(unseen.read_text()) == since and time.monotonic() < deadline:
        time.sleep(0.02)
    cancel.set()
    assert refusals[0] == 0 and float(unseen.read_text()) > since
    assert not list(tmp_path.glob("*.part"))


def test_a_series_handed_over_to_a_run_never_recorded_is_accounted_at_the_next_start(tmp_path: Path) -> None:
    """An outside probe (UDP): a SIGTERM at frame 5 of 40 (receiver_stopped 5..39), a restart whose reader
    resumed the series at frame 26 and handed 26..39 over, and a kill -9 before the resuming run was
    recorded: the interrupted run's records said 5..25 lost, 26..39 were in no record and no run. The next
    start records them lost in the interrupted run, whose account counts to its end again."""
    from edge.recovery import recover

    ledger, recorder, run_uid = _cut_run(tmp_path, "run-u", 7, 40, 5, "receiver_stopped", "abort")
    # the restart's reader, up to the point where it records the resuming run (then the kill)
    recorder.continued_at(run_uid, 26)
    assert recorder.hand_over_losses(run_uid, "receiver_stopped", 26) == 14
    assert ledger.run_totals(run_uid)["frames_lost"] == 21

    report = recover(recorder, tmp_path)

    assert report["continuations_lost"] == {run_uid: 14} and report["frames_lost"] == 14
    totals = ledger.run_totals(run_uid)
    assert totals["frames_stored"] + totals["frames_lost"] == 40, totals
    crash = [r for r in ledger.losses(run_uid) if r["reason"] == "daemon_crash"]
    assert [(r["first_frame"], r["last_frame"]) for r in crash] == [(26, 39)]
    config = json.loads(ledger.run(run_uid)["config"])
    assert "continued_at_frame" not in config and config["continuation_lost_at_frame"] == 26
    # its documents say so (a new revision), and a second start finds nothing more to do
    account = _stop(tmp_path / run_uid / documents_name(run_uid, 2))["edge_accounting"]
    assert account["frames_lost"] == 35, account
    from edge.alarms import current_alarms

    (alarm,) = [
        a for a in current_alarms({"appliance": {"recovery": report}}) if a["id"] == "daemon:recovery"
    ]
    assert "1 run(s) whose series went on after a restart in a run the daemon died before" in alarm["message"]
    assert "14 frames recorded lost" in alarm["message"] and alarm["severity"] == "major", alarm
    assert recover(recorder, tmp_path)["continuations_lost"] == {}


def test_frames_a_lost_continuation_recorded_are_taken_back_by_the_run_that_resumes_it_after_all(
    tmp_path: Path,
) -> None:
    """An outside probe: a recovery recorded 439 frames of a run whose continuation a crash lost; the
    series went on after that start and a run took 410 of them back, yet the status and the alarm kept
    439. They count what stays lost, as for a crashed run's."""
    from edge.recovery import recover

    _ledger, recorder, run_uid = _cut_run(tmp_path, "run-x", 9, 40, 5, "receiver_stopped", "abort")
    recorder.continued_at(run_uid, 26)
    recorder.hand_over_losses(run_uid, "receiver_stopped", 26)
    report = recover(recorder, tmp_path)
    assert report["continuations_lost"] == {run_uid: 14} and report["frames_lost"] == 14
    assert resume_interrupted(recorder, report, series=9, first_frame=30) == {"resumes_run": run_uid}
    assert report["frames_lost"] == 4 and report["frames_handed_over"] == 10
    assert report["continuations_lost"] == {run_uid: 4}


def test_a_series_that_went_on_in_a_recorded_run_is_left_as_it_is(tmp_path: Path) -> None:
    from edge.recovery import recover

    ledger, recorder, run_uid = _cut_run(tmp_path, "run-v", 8, 40, 5, "receiver_stopped", "abort")
    assert resume_interrupted(recorder, {}, series=8, first_frame=26) == {"resumes_run": run_uid}
    config = {"shape": [4, 4], "resumed_after_restart": True, "first_frame": 26, "resumes_run": run_uid}
    resumed = recorder.open_run("run-w", series=8, frames_expected=40, config=config)
    recorder.close_run(resumed, 0, "success")
    before = ledger.losses(run_uid)
    assert recover(recorder, tmp_path)["continuations_lost"] == {}
    assert ledger.losses(run_uid) == before
    assert json.loads(ledger.run(run_uid)["config"])["continued_at_frame"] == 26


def test_what_ended_a_run_fail_is_kept_with_it_and_said_in_its_documents_and_where(tmp_path: Path) -> None:
    """An outside probe: a series of unknown length ended by the next series' start read "exit status:
    fail ... 0 frame(s) lost", its RunStop reason "", and no word why in the log or anywhere. The reader's
    why is kept with the run (``ended_because``) and said."""
    from edge.appliance import RingSink
    from edge.ring import FrameRing
    from edge.where import render, where_report

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-e", series=1, frames_expected=None, config={})
    ring = FrameRing.__new__(FrameRing)  # (a sink whose run is open: its ring is not reached here)
    sink = RingSink(ring, recorder, lambda: None)
    sink.run_uid = sink.ended_run_uid = run_uid
    sink.refused = True  # (no control record to the ring: the recorder alone is what is checked)
    sink.series_end(1, "fail", "the start of series 2 came before its end message")
    recorder.close_run(run_uid, 0, "fail")
    config = json.loads(ledger.run(run_uid)["config"])
    assert config["ended_because"] == "the start of series 2 came before its end message"
    assert _stop(tmp_path / run_uid / documents_name(run_uid))["reason"] == (
        "the start of series 2 came before its end message"
    )
    report = where_report(ledger, run_uid, store=tmp_path)
    assert report["ended_because"] == "the start of series 2 came before its end message"
    assert "exit status: fail (the start of series 2 came before its end message)" in render(report)


def test_a_series_resumed_with_other_calibration_files_names_them(tmp_path: Path) -> None:
    """An outside probe: a .poni and a mask replaced (same paths), a kill -9, the series resumed after the
    restart: its second half was reduced with the new geometry and mask, and nothing tied the change to
    the series. Each run records its calibration files' sha256; the resumed run names those that differ."""
    from edge.appliance import RingSink
    from edge.ring import FrameRing

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    reduction = {"mode": "powder", "bins": 100}
    config = {"reduction": reduction, "calibration_sha256": {"poni": "a" * 64, "mask": "c" * 64}}
    run_uid = recorder.open_run("run-p", series=2, frames_expected=300, config=config)
    recorder.close_run(run_uid, 48, "fail")
    sink = RingSink(FrameRing.__new__(FrameRing), recorder, lambda: None)
    resumed = {"resumes_run": run_uid, "calibration_sha256": {"poni": "b" * 64, "mask": "c" * 64}}
    sink._note_mode_change(resumed, reduction)
    assert resumed["resumed_with_other_settings"] == {"calibration_sha256.poni": ["a" * 64, "b" * 64]}
    same = {"resumes_run": run_uid, "calibration_sha256": {"poni": "a" * 64, "mask": "c" * 64}}
    sink._note_mode_change(same, reduction)
    assert "resumed_with_other_settings" not in same


def test_the_shape_a_resumed_series_keeps_is_its_interrupted_runs() -> None:
    from edge.recovery import interrupted_shape

    class Runs:
        def __init__(self, *runs: dict) -> None:
            self._runs = list(runs)

        def runs(self) -> list[dict]:
            return self._runs

    def run(uid: str, started: float, status: str, config: dict) -> dict:
        return {
            "run_uid": uid,
            "series": 17,
            "started_at": started,
            "ended_at": started + 1,
            "exit_status": status,
            "config": json.dumps(config),
        }

    cut = run("a", 1.0, "fail", {"shape": [64, 32], "type": "uint16"})
    assert interrupted_shape(Runs(cut), {}, 17) == ((32, 64), "uint16")  # (rows, columns)
    assert interrupted_shape(Runs(cut), {}, 18) is None
    assert (
        interrupted_shape(Runs(run("b", 1.0, "success", {"shape": [64, 32], "type": "uint16"})), {}, 17)
        is None
    )
    assert (
        interrupted_shape(Runs(run("c", 1.0, "fail", {"shape": [64, True], "type": "uint16"})), {}, 17)
        is None
    )
