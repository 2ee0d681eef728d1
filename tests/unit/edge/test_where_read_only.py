"""``edge where`` on a store its user may not write: a read-only mount, or the store of a daemon run as
another user. It read the ledger by opening it for writing, and said "cannot be opened ... If it is
damaged ..." (exit 2) for a ledger that was whole and closed (SQLite could not make the ``-shm`` file it
reads a write-ahead-log ledger with). It now reads such a ledger without writing. A ledger held open (its
``-shm`` there already) was read before too: that test guards it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import ConfigError, NotFound
from edge.ledger import Ledger


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a writable store directory, the same directory bind-mounted read-only). CI runs as root and can
    mount; there a failed mount is a failure, not a skip."""
    store, view = tmp_path / "store", tmp_path / "view"
    store.mkdir()
    view.mkdir()
    steps = [
        ["mount", "--bind", str(store), str(view)],
        ["mount", "-o", "remount,ro,bind", str(view)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI must be able to bind-mount read-only for this test: {done.stderr.strip()}")
            pytest.skip(f"cannot bind-mount read-only here (needs root): {done.stderr.strip()}")
    try:
        yield store, view
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)


def where(view: Path, run: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "where", run, "--json", "--set", f'store.path="{view}"'],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_where_reads_a_cleanly_closed_ledger_on_a_read_only_mount(read_only_view: tuple[Path, Path]) -> None:
    store, view = read_only_view
    ledger = Ledger(store / "ledger.sqlite")
    ledger.run_started("run-closed", 1, 10, "{}", "raw")
    ledger.record_loss("run-closed", 7, 9, "stream_gap", "three frames never came")
    ledger.run_ended("run-closed", "ok", 7)
    ledger.close()
    assert not (store / "ledger.sqlite-wal").exists()  # whole in its one file

    done = where(view, "run-closed")
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["run_uid"] == "run-closed" and report["frames_lost"] == 3
    assert sorted(os.listdir(store)) == ["ledger.sqlite"]  # nothing written beside it


def test_where_reads_the_records_a_running_daemon_holds_in_its_write_ahead_log(
    read_only_view: tuple[Path, Path],
) -> None:
    store, view = read_only_view
    ledger = Ledger(store / "ledger.sqlite")  # held open, as the daemon holds it
    try:
        ledger.run_started("run-open", 2, 5, "{}", "serial")
        assert (store / "ledger.sqlite-wal").stat().st_size > 0  # the run is in the log, not yet the file

        done = where(view, "run-open")
        assert done.returncode == 0, done.stderr + done.stdout
        report = json.loads(done.stdout)
        assert report["run_uid"] == "run-open" and report["mode"] == "serial"
        assert report["frames_expected"] == 5
    finally:
        ledger.close()


def test_a_read_only_ledger_refuses_to_write_and_an_older_schema_is_said(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    reader = Ledger(path, read_only=True)
    try:
        assert reader.runs() == []
        with pytest.raises(Exception, match="readonly"):
            reader.run_started("run-x", 1, 1, "{}", "raw")
    finally:
        reader.close()
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"schema version 3.*cannot be brought up to date read-only"):
        Ledger(path, read_only=True)


def test_a_write_ahead_log_without_its_shared_memory_file_on_a_read_only_mount_says_what_to_do(
    read_only_view: tuple[Path, Path], tmp_path: Path
) -> None:
    """A store copied after a kill -9 (the write-ahead log kept, its ``-shm`` not) and mounted read-only:
    SQLite cannot read it there, and the advice was only "run this as the daemon's user", which a
    read-only mount refuses too. It says to copy the two files somewhere writable; that copy reads."""
    import shutil

    store, view = read_only_view
    live = tmp_path / "live"
    live.mkdir()
    ledger = Ledger(live / "ledger.sqlite")
    try:
        ledger.run_started("run-killed", 3, 4, "{}", "raw")
        for name in ("ledger.sqlite", "ledger.sqlite-wal"):  # (no -shm: as a copy of a killed store)
            shutil.copy(live / name, store / name)
    finally:
        ledger.close()
    done = where(view, "run-killed")
    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert "copy ledger.sqlite and ledger.sqlite-wal to a directory you may write" in error, error
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):
        shutil.copy(view / name, copy / name)
    reading = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "where",
            "run-killed",
            "--json",
            "--set",
            f'ledger.path="{copy / "ledger.sqlite"}"',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reading.returncode == 0, reading.stderr
    assert json.loads(reading.stdout)["run_uid"] == "run-killed"


def test_an_interrupted_run_says_so_and_names_its_half_written_file(tmp_path: Path) -> None:
    """An outside probe: with the daemon down after a kill -9, ``edge where`` said "0 frame(s) lost, 0
    pending" of a run whose frames after 40 were in a ``.part`` file or nowhere: read as all safe. It
    says the run is interrupted, that its frames after those stored are in no record until the daemon
    starts again, and names the half-written file."""
    from edge.where import render, where_report

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("killed", 1, 200, "{}", "raw")
        (tmp_path / "killed").mkdir()
        (tmp_path / "killed" / "killed_00002.h5.part").write_bytes(b"x" * 64)
        report = where_report(ledger, "killed", daemon_running=False, store=tmp_path)
        running = where_report(ledger, "killed", daemon_running=True, store=tmp_path)
    finally:
        ledger.close()
    assert report["state"] == "interrupted"
    assert report["half_written"] == [{"path": str(tmp_path / "killed" / "killed_00002.h5.part"), "size": 64}]
    text = render(report)
    assert "INTERRUPTED: no daemon serves this ledger" in text and "half-written" in text, text
    assert running["half_written"] == [] and "INTERRUPTED" not in render(running)  # (its file is open)


def test_a_file_whose_frames_are_a_sparse_span_shows_their_count() -> None:
    """An outside probe: a serial hits file's row read "frames 7..55" for 18 hits: taken for 49 frames."""
    from edge.where import _frames_text

    assert _frames_text([7, 55], 18) == "18 frames, 7..55"
    assert _frames_text([0, 99], 100) == "frames 0..99" and _frames_text(None, 0) == "no frames"


def test_an_ended_run_with_a_file_left_half_written_names_it(tmp_path: Path) -> None:
    """An outside probe: a run whose directory was made immutable ended ``fail`` with every frame a
    ``file_close_failed`` record, and its ``.part`` (all 200 frames) stayed in the run directory, named
    by nothing until a restart set it aside."""
    from edge.where import render, where_report

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("stuck", 1, 2, "{}", "raw")
        ledger.record_loss("stuck", 0, 1, "file_close_failed", "finishing the file failed: EPERM")
        ledger.run_ended("stuck", "fail", 0)
        (tmp_path / "stuck").mkdir()
        (tmp_path / "stuck" / "stuck_00000.h5.part").write_bytes(b"x" * 32)
        report = where_report(ledger, "stuck", daemon_running=True, store=tmp_path)
    finally:
        ledger.close()
    assert [item["size"] for item in report["half_written"]] == [32]
    assert "half-written" in render(report) and "INTERRUPTED" not in render(report)


def test_a_run_is_found_by_the_index_of_uids_not_by_reading_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: each ``/api/runs/{id}`` and ``edge where`` read every run's row (its config too)
    to match a prefix, so every answer slowed down with each run the ledger kept (1,476 runs: 17 ms a
    run report, 4 s for 500 summaries). The uid is looked up in the ledger's index."""
    from edge.where import resolve_run, runs_beginning

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        for n in range(30):
            ledger.run_started(f"6a3644a8-{n:04d}", n, 1, "{}", "raw")
        ledger.run_started("Beam-X", 31, 1, "{}", "raw")

        def every_run(*args: object, **kwargs: object) -> None:
            raise AssertionError("read every run")

        monkeypatch.setattr(Ledger, "runs", every_run)
        assert resolve_run(ledger, "6a3644a8-0007") == "6a3644a8-0007"
        assert resolve_run(ledger, "beam") == "Beam-X"  # letter case aside
        with pytest.raises(NotFound, match=r"matches more than 10 runs \(6a3644a8-0000, .*, \.\.\.\)"):
            resolve_run(ledger, "6a3644a8")
        with pytest.raises(NotFound, match=r"no run 'zz' in the ledger \(31 runs known\)"):
            resolve_run(ledger, "zz")
        assert runs_beginning(ledger, "6a3644a8-000") == [f"6a3644a8-000{n}" for n in range(10)]
    finally:
        ledger.close()


def test_where_leaves_a_crashed_daemon_s_ledger_and_its_write_ahead_log_as_they_are(tmp_path: Path) -> None:
    """An outside admin probe: after a crash `edge where` (its store writable) opened the ledger to write,
    and its close folded the write-ahead log into the ledger file: the file changed under a reader, the
    ``-wal`` and ``-shm`` gone. It reads without writing now, as the README says."""
    import hashlib

    store = tmp_path / "store"
    crash = (
        "import os, sys; from edge.ledger import Ledger; ledger = Ledger(__import__('pathlib').Path(sys.argv[1]));"
        " ledger.run_started('run-crashed', 3, 5, '{}', 'raw'); os._exit(0)"  # killed: never closed
    )
    subprocess.run([sys.executable, "-c", crash, str(store / "ledger.sqlite")], check=True, timeout=60)
    wal = store / "ledger.sqlite-wal"
    assert wal.stat().st_size > 0
    before = hashlib.sha256((store / "ledger.sqlite").read_bytes()).hexdigest()
    done = where(store, "run-crashed")
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["frames_expected"] == 5
    assert hashlib.sha256((store / "ledger.sqlite").read_bytes()).hexdigest() == before
    assert wal.exists() and wal.stat().st_size > 0
