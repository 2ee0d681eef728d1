"""Retention with its time and concurrency passed in: a fake clock and an executor the test runs by hand.

The pressure check answers at once from its last result, asks the executor for a fresh one only when
that result is ``PRESSURE_RECHECK_S`` old (by the clock it was given), never has two checks queued, and
keeps the last answer, counted, when a check fails. File ages follow the wall clock it was given, and
the fill forecast the monotonic one. No sleeps, no threads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import edge.retention as retention_module
from edge.config import RetentionSettings
from edge.ledger import Ledger
from edge.retention import PRESSURE_RECHECK_S, Retention


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ManualExecutor(Executor):
    """Queues submitted work; the test runs it when it chooses."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.queue.append((fn, args))
        return Future()

    def run_all(self) -> int:
        ran = 0
        while self.queue:
            fn, args = self.queue.pop(0)
            fn(*args)
            ran += 1
        return ran


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, None, "{}")
    yield ledger
    ledger.close()


def store_file(ledger: Ledger, tmp_path: Path, name: str, size: int, verified: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes(b"x" * size)
    file_id = ledger.file_stored("run", name, path, size, "sum", (0, 0, 1), [(0, size, "c")])
    if verified:
        chunk = ledger.pending_chunks("hpc", [], 1)[0]
        ledger.chunk_acked("hpc", chunk["id"], chunk["checksum"])
        assert ledger.file_verified("hpc", file_id, size, "sum")
    return path


def test_the_pressure_check_follows_the_store_by_the_clock_it_is_given(
    ledger: Ledger, tmp_path: Path
) -> None:
    clock, executor = FakeClock(), ManualExecutor()
    settings = RetentionSettings(quota_bytes=10_000 + 64, headroom_bytes=64)
    retention = Retention(ledger, tmp_path, settings, clock=clock, executor=executor)
    assert retention.under_pressure() is False  # computed in place the first time
    store_file(ledger, tmp_path, "big.h5", 20_000)
    clock.now += PRESSURE_RECHECK_S / 2
    assert retention.under_pressure() is False and executor.queue == []  # too recent to ask again
    clock.now += PRESSURE_RECHECK_S / 2
    for _ in range(5):  # the last answer stands while one check is queued, and only one is queued
        assert retention.under_pressure() is False
    assert executor.run_all() == 1
    assert retention.under_pressure() is True
    assert executor.queue == []  # the fresh answer is not old yet


def test_a_failing_check_keeps_the_last_answer_and_is_counted(ledger: Ledger, tmp_path: Path) -> None:
    clock, executor = FakeClock(), ManualExecutor()
    retention = Retention(
        ledger,
        tmp_path,
        RetentionSettings(quota_bytes=10_000 + 64, headroom_bytes=64),
        clock=clock,
        executor=executor,
    )
    store_file(ledger, tmp_path, "big.h5", 20_000)
    assert retention.under_pressure() is True
    ledger.close()  # the ledger closing at shutdown, say
    clock.now += PRESSURE_RECHECK_S
    assert retention.under_pressure() is True
    executor.run_all()  # raises nothing
    assert retention.stats["pressure_check_errors"] == 1
    assert retention.under_pressure() is True
    clock.now += PRESSURE_RECHECK_S
    retention.under_pressure()
    assert len(executor.queue) == 1  # a failed check does not stop the next one


def test_files_age_by_the_wall_clock_it_is_given(ledger: Ledger, tmp_path: Path) -> None:
    wall = FakeClock(now=0.0)
    settings = RetentionSettings(max_age_seconds=3600)
    retention = Retention(ledger, tmp_path, settings, wall_clock=wall, executor=ManualExecutor())
    old = store_file(ledger, tmp_path, "old.h5", 100, verified=True)
    unverified = store_file(ledger, tmp_path, "new.h5", 100)
    verified_at = ledger.files()[0]["verified_at"]
    wall.now = verified_at + 3599
    assert retention.purge_once() == 0 and old.exists()
    wall.now = verified_at + 3601
    assert retention.purge_once() == 1
    assert not old.exists() and unverified.exists()  # never anything not verified
    assert [f["state"] for f in ledger.files()] == ["purged", "stored"]


def test_the_fill_forecast_uses_the_monotonic_clock(ledger: Ledger, tmp_path: Path) -> None:
    clock = FakeClock()
    settings = RetentionSettings(quota_bytes=100_064, headroom_bytes=64)
    retention = Retention(ledger, tmp_path, settings, clock=clock, executor=ManualExecutor())
    retention.run_pass()
    assert retention.forecast_seconds() is None  # one sample: no rate yet
    store_file(ledger, tmp_path, "a.h5", 10_000)
    clock.now += 10.0
    retention.run_pass()
    # 10 kB in 10 s = 1 kB/s; 90 kB left under the quota (the disk has more free) -> 90 s
    assert retention.forecast_seconds() == pytest.approx(90.0)
    assert retention.status()["full_in_seconds"] == pytest.approx(90.0)


def test_the_fill_forecast_counts_only_data_retention_may_not_delete(ledger: Ledger, tmp_path: Path) -> None:
    """A dashboard probe saw "full in 27 s" in red while every file was verified upstream: the forecast
    took every byte written as filling the store, though retention purges verified files for room."""
    clock = FakeClock()
    settings = RetentionSettings(quota_bytes=100_064, headroom_bytes=64)
    retention = Retention(ledger, tmp_path, settings, clock=clock, executor=ManualExecutor())
    retention.run_pass()
    store_file(ledger, tmp_path, "a.h5", 40_000, verified=True)
    clock.now += 10.0
    retention.run_pass()
    assert retention.forecast_seconds() is None  # written and verified at once: nothing that stays grows
    store_file(ledger, tmp_path, "b.h5", 20_000)  # not verified: it stays until the consumer confirms it
    clock.now += 10.0
    retention.run_pass()
    # 20 kB in 20 s = 1 kB/s; 80 kB of room under the quota counting the verified 40 kB as room -> 80 s
    assert retention.forecast_seconds() == pytest.approx(80.0)
    # writing stops, nothing verified: not filling once nothing grew for 10 s (an outside probe read "full
    # in 8.4 s" on an idle appliance: the window's rate went on after the run had ended)
    for _ in range(11):
        clock.now += 1.0
        retention.run_pass()
    assert retention.forecast_seconds() is None


def test_a_refused_run_says_the_sizes_in_units_people_read(ledger: Ledger, tmp_path: Path) -> None:
    settings = RetentionSettings(quota_bytes=3 * 2**30, headroom_bytes=0, high_water=0.5)
    retention = Retention(ledger, tmp_path, settings, executor=ManualExecutor())
    path = tmp_path / "big.h5"
    path.write_bytes(b"x")  # the ledger's size is what the policy reads
    ledger.file_stored("run", "big.h5", path, 2 * 2**30, "sum", (0, 0, 1), [(0, 2 * 2**30, "c")])
    refusal = retention.refusal()
    assert refusal is not None and "(2.0 GiB of 3.0 GiB)" in refusal, refusal
    # the status says why at once, not at the next pass of the policy (an outside dashboard probe read
    # "accepting_runs": false beside "alarm": null)
    status = retention.status()
    assert status["accepting_runs"] is False and status["alarm"] == refusal
    # with a headroom, the size it may fill is said to be the store's less that (an outside probe read
    # "of 3.0 GiB" beside the dashboard's store size)
    settings = RetentionSettings(quota_bytes=3 * 2**30 + 2**30, headroom_bytes=2**30, high_water=0.5)
    refusal = Retention(ledger, tmp_path, settings, executor=ManualExecutor()).refusal()
    assert (
        refusal is not None and "(2.0 GiB of 3.0 GiB: the store's 4.0 GiB less 1.0 GiB headroom)" in refusal
    )


def test_the_status_says_where_new_runs_are_refused_and_the_refusal_names_who_must_confirm(
    tmp_path: Path,
) -> None:
    """Outside dashboard probes: "6.7 MiB left in the store" with 2.4 MiB left before the refusal (the
    high-water mark of what the store may fill), and "waiting for the HPC consumer" when the required
    consumer was "tape"."""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("tape",))
    ledger.run_started("run", 1, None, "{}")
    settings = RetentionSettings(quota_bytes=3 * 2**30 + 2**30, headroom_bytes=2**30, high_water=0.5)
    retention = Retention(ledger, tmp_path, settings, executor=ManualExecutor())
    assert retention.status()["refuse_at_bytes"] == int(3 * 2**30 * 0.5)
    path = tmp_path / "big.h5"
    path.write_bytes(b"x")
    ledger.file_stored("run", "big.h5", path, 2 * 2**30, "sum", (0, 0, 1), [(0, 2 * 2**30, "c")])
    refusal = retention.refusal()
    assert refusal is not None and "waiting for the required consumer (tape) to confirm it" in refusal
    ledger.close()


def _half_full_store(tmp_path: Path, required: tuple[str, ...]) -> tuple[Ledger, Retention]:
    """A ledger requiring ``required`` with run ``run`` open, and a 4 GiB store (1 GiB headroom) that
    refuses new runs at half: 2 GiB unverified reach it."""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=required)
    ledger.run_started("run", 1, None, "{}")
    settings = RetentionSettings(quota_bytes=4 * 2**30, headroom_bytes=2**30, high_water=0.5)
    return ledger, Retention(ledger, tmp_path, settings, executor=ManualExecutor())


def test_a_store_filled_by_files_never_forwarded_says_so_not_waiting_for_the_consumer(tmp_path: Path) -> None:
    """An outside probe (upstream.forward = reduced, retention.unforwarded = keep, a quota): new runs were
    refused "data not yet verified upstream ...; waiting for the required consumer (hpc) to confirm it"
    while the outlook said every stored file was verified: the raw files never forwarded filled the store,
    and no consumer could free them. The refusal names them apart, with what frees them, and the status
    counts them (``local_bytes``)."""
    ledger, retention = _half_full_store(tmp_path, ("hpc",))
    path, size = tmp_path / "raw.h5", 2 * 2**30
    path.write_bytes(b"x")
    ledger.file_stored("run", "raw.h5", path, size, "sum", (0, 0, 1), [(0, size, "c")], "data", True)
    refusal = retention.refusal()
    assert refusal is not None and "2.0 GiB never forwarded (upstream.forward), kept local" in refusal
    assert "larger quota" in refusal and "waiting for" not in refusal
    status = retention.status()
    assert status["local_bytes"] == size and status["unverified_bytes"] == size
    small = tmp_path / "reduced.nxs"
    small.write_bytes(b"x")
    ledger.file_stored("run", "reduced.nxs", small, 2**20, "sum", (0, 0, 1), [(0, 2**20, "c")], "reduced")
    refusal = retention.refusal()
    assert refusal is not None and "1.0 MiB waiting for the required consumer (hpc) to confirm it" in refusal
    policy = RetentionSettings(
        quota_bytes=4 * 2**30, headroom_bytes=2**30, high_water=0.5, unforwarded="purge_after_days"
    )
    retiring = Retention(ledger, tmp_path, policy, executor=ManualExecutor())
    assert "until retention.unforwarded_days = 30 retires them" in (retiring.refusal() or "")
    ledger.close()


def test_the_refusal_names_the_required_consumers_still_to_confirm_and_those_done(tmp_path: Path) -> None:
    """An outside dashboard probe: "waiting for the required consumers (hpc, tape) to confirm it" with
    every file confirmed by hpc, tape never connected: the scientist could not tell whether the HPC
    centre had the data."""
    ledger, retention = _half_full_store(tmp_path, ("hpc", "tape"))
    path, size = tmp_path / "big.h5", 2 * 2**30
    path.write_bytes(b"x")
    file_id = ledger.file_stored("run", "big.h5", path, size, "sum", (0, 0, 1), [(0, size, "c")])
    assert "waiting for the required consumers (hpc, tape) to confirm it" in (retention.refusal() or "")
    chunk = ledger.pending_chunks("hpc", [], 1)[0]
    ledger.chunk_acked("hpc", chunk["id"], chunk["checksum"])
    ledger.file_verified("hpc", file_id, size, "sum")
    refusal = retention.refusal() or ""
    assert "waiting for the required consumer (tape) to confirm it (hpc has confirmed all of it)" in refusal
    ledger.close()


def test_stop_shuts_its_own_executor_and_later_checks_keep_the_last_answer(
    ledger: Ledger, tmp_path: Path
) -> None:
    clock = FakeClock()
    retention = Retention(ledger, tmp_path, RetentionSettings(), clock=clock)
    assert retention.under_pressure() is False
    retention.stop()
    clock.now += PRESSURE_RECHECK_S
    assert retention.under_pressure() is False  # the executor refuses work; nothing raised


def test_a_given_executor_is_left_running_by_stop(ledger: Ledger, tmp_path: Path) -> None:
    class Tracking(ManualExecutor):
        shut = False

        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            self.shut = True

    executor = Tracking()
    retention = Retention(ledger, tmp_path, RetentionSettings(), executor=executor)
    retention.stop()
    assert executor.shut is False  # whoever passed it in owns it


def test_files_never_forwarded_are_kept_or_retired_only_by_the_stated_policy(
    ledger: Ledger, tmp_path: Path
) -> None:
    wall = FakeClock(now=0.0)
    local = tmp_path / "local.h5"
    local.write_bytes(b"x" * 100)
    ledger.file_stored("run", "local.h5", local, 100, "sum", (0, 0, 1), [(0, 100, "c")], "data", True)
    unverified = store_file(ledger, tmp_path, "pending.h5", 100)
    stored_at = ledger.files()[0]["stored_at"]
    keep = Retention(ledger, tmp_path, RetentionSettings(), wall_clock=wall, executor=ManualExecutor())
    wall.now = stored_at + 10 * 365 * 86400
    assert keep.purge_once() == 0 and local.exists()  # "keep": never, however old
    policy = RetentionSettings(unforwarded="purge_after_days", unforwarded_days=2)
    retire = Retention(ledger, tmp_path, policy, wall_clock=wall, executor=ManualExecutor())
    wall.now = stored_at + 1.9 * 86400
    assert retire.purge_once() == 0 and local.exists()
    wall.now = stored_at + 2.1 * 86400
    assert retire.purge_once() == 1 and not local.exists() and unverified.exists()
    assert [f["state"] for f in ledger.files()] == ["purged", "stored"]
    assert retire.stats["files_retired_unforwarded"] == 1
    # retired, never sent: not delivered, no upstream bytes (an outside probe saw the run's totals and
    # `edge where` say its never-forwarded files had gone upstream, and their reason gone)
    from edge.where import render, where_report

    totals = ledger.run_totals("run")
    # (bytes_upstream: the files that go upstream, here the one still pending)
    assert (totals["frames_delivered"], totals["bytes_upstream"]) == (0, 100), totals
    assert totals["files_retired_unforwarded"] == 1
    summary = ledger.summary()
    assert summary["frames_verified"] == 0 and summary["frames_retired_unforwarded"] == 1
    assert Ledger(ledger.path).summary()["frames_retired_unforwarded"] == 1  # (counted again at open)
    report = where_report(ledger, "run")
    (retired,) = [f for f in report["files"] if f["name"] == "local.h5"]
    assert retired["local_only"] and "never sent upstream" in retired["why_local"]
    text = render(report)
    assert "retired locally, never sent upstream" in text and "0 verified upstream" in text, text
    # and the summary counts it, on neither side now (an outside probe: counted nowhere, "0 lost")
    assert "1 retired unforwarded (on neither side now)" in text.splitlines()[1], text


class _Disk:
    """psutil.disk_usage of a file system the test fills at will."""

    def __init__(self, total: int, free: int) -> None:
        self.total, self.free = total, free

    def __call__(self, path: str) -> Any:
        used = self.total - self.free
        return SimpleNamespace(total=self.total, used=used, free=self.free, percent=100.0 * used / self.total)


def test_a_disk_filled_by_what_the_ledger_does_not_count_purges_verified_files(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chaos probe: a store on a small file system filled up with the ledger's own journal, its reserve
    and a quarantined file; by the ledger's count of the store's files it was below the high water mark,
    so nothing verified was purged and writing never resumed (a full disk for good)."""
    disk = _Disk(total=1_000_000, free=600_000)
    monkeypatch.setattr(retention_module.psutil, "disk_usage", disk)
    settings = RetentionSettings(headroom_bytes=50_000, high_water=0.9, low_water=0.7)
    retention = Retention(ledger, tmp_path, settings, executor=ManualExecutor())
    for n in range(4):
        store_file(ledger, tmp_path, f"v{n}.h5", 50_000, verified=True)
    assert retention.purge_once() == 0  # 200 kB of files, 400 kB in use: nothing to do
    disk.free = 20_000  # other files fill the disk: under the headroom
    # room for twice the headroom: 80 kB more, the two oldest verified files (the rest stay)
    assert retention.purge_once() == 2
    assert [(tmp_path / f"v{n}.h5").exists() for n in range(4)] == [False, False, True, True]
    # verified files remain and new runs are welcome, but the disk is still full: writing waits until
    # purging has made the room, it does not eat into the headroom meanwhile
    assert retention.refusal() is None and retention.under_pressure()
    assert retention.purge_once() == 2  # (this disk does not get the room back): the other two
    refusal = retention.refusal()
    assert refusal is not None and "the disk holding the local store is full to the headroom" in refusal
    assert "the rest is its open and quarantined files, the ledger and other files" in refusal
    retention._pressure = None
    assert retention.under_pressure()  # nothing left to purge: the detector is held back
    disk.free = 600_000  # space comes back
    retention._pressure = None
    time.sleep(retention_module.FREE_RECHECK_S)  # (the free space is measured every 10 ms at most)
    assert retention.refusal() is None and not retention.under_pressure()


def test_unverified_files_stay_however_full_the_disk(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention_module.psutil, "disk_usage", _Disk(total=1_000_000, free=1_000))
    retention = Retention(
        ledger, tmp_path, RetentionSettings(headroom_bytes=50_000), executor=ManualExecutor()
    )
    kept = store_file(ledger, tmp_path, "u.h5", 50_000)
    assert retention.purge_once() == 0 and kept.exists()


def test_writing_stays_held_back_until_verified_files_are_purged_and_the_purge_is_hurried(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An outside chaos probe: the store full of unverified data, the detector held back; the HPC consumer
    connected and the first file it verified lifted the hold at once. Writing resumed into the 8 MiB
    headroom at the detector's rate before the next retention pass (1 s later) deleted anything: the disk
    filled, and 646-947 frames were lost as disk_full. The hold now lasts until the room is made, and the
    purge does not wait for its interval."""
    settings = RetentionSettings(quota_bytes=10_064, headroom_bytes=64, interval_seconds=3600)
    retention = Retention(ledger, tmp_path, settings, executor=ManualExecutor())
    first = store_file(ledger, tmp_path, "a.h5", 6_000)
    store_file(ledger, tmp_path, "b.h5", 4_000)
    assert retention.under_pressure()  # full of unverified data
    (row, _) = ledger.files()
    chunk = ledger.pending_chunks("hpc", [], 1)[0]
    ledger.chunk_acked("hpc", chunk["id"], chunk["checksum"])
    assert ledger.file_verified("hpc", row["id"], 6_000, "sum")
    retention._pressure = None
    assert retention.under_pressure()  # verified, not yet purged: no room yet
    assert retention._purge_now.is_set() and retention.stats["purges_hurried"] == 1
    retention.start()  # the pass runs now, not after its hour
    try:
        for _ in range(200):
            if not first.exists():
                break
            time.sleep(0.01)
        assert not first.exists()
    finally:
        retention.stop()
    retention._pressure = None
    assert not retention.under_pressure()  # the room is made: writing resumes


def test_a_full_store_whose_verified_files_cannot_be_deleted_raises_the_alarm_saying_why(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Writing waits for the room purging makes; a verified file that cannot be deleted makes none, and
    without this alarm the stream was held back with no alarm at all (new runs still welcome)."""
    settings = RetentionSettings(quota_bytes=10_064, headroom_bytes=64)
    retention = Retention(ledger, tmp_path, settings, executor=ManualExecutor())
    stuck = store_file(ledger, tmp_path, "a.h5", 6_000, verified=True)
    store_file(ledger, tmp_path, "b.h5", 4_000)
    stuck.unlink()
    stuck.mkdir()  # (a directory where the file was: unlink fails, EISDIR, root or not)
    (stuck / "x").write_bytes(b"x")
    assert retention.purge_once() == 0 and retention.stats["purge_errors"] == 1
    assert retention.under_pressure()
    refusal = retention.refusal()
    assert refusal is not None and "cannot be deleted" in refusal and "a.h5" in refusal
    assert retention.alarm == refusal  # raised: the dashboard and the IOC show it
    (stuck / "x").unlink()
    stuck.rmdir()
    stuck.write_bytes(b"x" * 6_000)
    assert retention.purge_once() == 1
    retention._pressure = None
    assert retention.refusal() is None and retention.alarm is None and not retention.under_pressure()


def test_no_fill_forecast_while_the_consumer_keeps_up_a_file_at_a_time(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Unverified data comes and goes a file at a time while the consumer keeps up: the window's two
    ends caught it at 0 and at a file's size, and "full in 3 days" flickered (an outside probe)."""
    clock = FakeClock()
    settings = RetentionSettings(quota_bytes=10_000_064, headroom_bytes=64)
    retention = Retention(ledger, tmp_path, settings, clock=clock, executor=ManualExecutor())
    retention.run_pass()  # nothing unverified when the window opens
    for n in range(12):
        path = store_file(ledger, tmp_path, f"f{n}.h5", 10_000)  # written: unverified for a moment
        clock.now += 0.5
        retention.run_pass()
        if n < 11:  # verified before the next pass (the last one is still on its way at the window's end)
            row = ledger.files()[-1]
            chunk = ledger.pending_chunks("hpc", [], 1)[0]
            ledger.chunk_acked("hpc", chunk["id"], chunk["checksum"])
            assert ledger.file_verified("hpc", row["id"], 10_000, "sum")
            clock.now += 0.5
            retention.run_pass()
        assert path.exists()
    assert retention.forecast_seconds() is None
    # and a store that does fill is forecast once it has for a quarter of the window: files, none verified
    for n in range(12, 24):
        store_file(ledger, tmp_path, f"f{n}.h5", 10_000)
        clock.now += 1.0
        retention.run_pass()
    assert retention.forecast_seconds() is not None


def test_a_disk_down_to_its_headroom_holds_writing_at_once(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside chaos probe: 30 MB/s into a 96 MiB store with an 8 MiB headroom, the pull client keeping
    up; between two recomputed answers (0.2 s, and the pipeline's queue) the headroom filled, the open
    files and the ledger's journal not being in the ledger's count: ~300 frames lost to a full disk.
    The disk's free space is asked at every check now (measured every 10 ms at most)."""
    disk = _Disk(total=100_000_000, free=50_000_000)
    monkeypatch.setattr(retention_module.psutil, "disk_usage", disk)
    clock, executor = FakeClock(), ManualExecutor()
    settings = RetentionSettings(headroom_bytes=8_000_000)
    retention = Retention(ledger, tmp_path, settings, clock=clock, executor=executor)
    assert retention.under_pressure() is False  # computed in place; the answer stands 0.2 s
    disk.free = 8_000_000  # written meanwhile, down to the headroom
    assert retention.under_pressure() is False  # measured 10 ms ago at most: that answer stands
    time.sleep(retention_module.FREE_RECHECK_S)
    assert retention.under_pressure() is True and executor.queue == []  # at once, not at the next answer
    assert retention._purge_now.is_set()  # and the purge is woken (verified files may make the room)
    # and said so: writing_held read false meanwhile, the disk-full alarm "recorded lost" of frames held
    # back (an outside probe)
    assert retention.status()["writing_held"] is True
    disk.free = 9_000_000
    time.sleep(retention_module.FREE_RECHECK_S)
    assert retention.under_pressure() is False
    assert retention.status()["writing_held"] is False


def test_a_headroom_beyond_a_quarter_of_the_store_is_capped_so_runs_can_start(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe: on a 55 MB disk the default 64 MiB headroom left no room at all, and every run
    was refused "local store full of data not yet verified upstream (0 B of 0 B)" with the store empty.
    The headroom kept is at most a quarter of the quota (or disk), and the start says so."""
    settings = RetentionSettings(quota_bytes=40 << 20)  # headroom_bytes: the default 64 MiB
    with caplog.at_level("WARNING", logger="edge.retention"):
        retention = Retention(ledger, tmp_path, settings, executor=ManualExecutor())
    assert retention.headroom() == 10 << 20 and retention.refusal() is None
    assert "more than a quarter of the store's quota" in caplog.text
    assert retention.status()["headroom_bytes"] == 10 << 20
    roomy = Retention(ledger, tmp_path, RetentionSettings(quota_bytes=1 << 30), executor=ManualExecutor())
    assert roomy.headroom() == 64 << 20  # as set, where it fits


def test_purges_the_full_ledger_cannot_record_go_on_and_are_recorded_later(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe (headroom 0, no ledger reserve, the disk full): the file was deleted, then the
    ledger's "purged" mark raised "database or disk is full" out of the pass; every pass after retried
    that row first and raised again (a traceback every half second) and the other verified files were
    never purged, so the disk stayed full. Now the pass goes on deleting verified files, and the marks
    are written once the ledger can."""
    import sqlite3

    wall = FakeClock(now=0.0)
    retention = Retention(
        ledger, tmp_path, RetentionSettings(max_age_seconds=60), wall_clock=wall, executor=ManualExecutor()
    )
    paths = [store_file(ledger, tmp_path, f"f{n}.h5", 100, verified=True) for n in range(3)]
    wall.now = ledger.files()[-1]["verified_at"] + 61
    real = ledger.file_purged
    full = [True]

    def purged(file_id: int) -> None:
        if full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        real(file_id)

    monkeypatch.setattr(ledger, "file_purged", purged)
    assert retention.purge_once() == 3  # every verified file deleted: the room comes back
    assert not any(p.exists() for p in paths)
    assert [f["state"] for f in ledger.files()] == ["verified"] * 3
    assert retention.stats["purges_unrecorded_disk_full"] == 3
    assert retention.purge_once() == 0  # still full: nothing raised, nothing deleted twice
    full[0] = False
    retention.purge_once()
    assert [f["state"] for f in ledger.files()] == ["purged"] * 3


def test_a_verified_file_already_gone_is_purged_without_its_bytes_counted_as_freed(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe deleted a verified file by hand: retention then logged "purged ... (verified
    upstream, 6070109 bytes)", as if that room had been made by it. Marked purged all the same (it is
    upstream), said to have been gone, and counted apart."""
    wall = FakeClock(now=0.0)
    retention = Retention(
        ledger, tmp_path, RetentionSettings(max_age_seconds=60), wall_clock=wall, executor=ManualExecutor()
    )
    kept, gone, cut = (store_file(ledger, tmp_path, f"f{n}.h5", 100, verified=True) for n in range(3))
    gone.unlink()
    with open(cut, "r+b") as handle:  # truncated by hand: deleting it frees what is left of it
        handle.truncate(30)
    wall.now = ledger.files()[-1]["verified_at"] + 61
    with caplog.at_level(logging.INFO, logger="edge.retention"):
        assert retention.purge_once() == 3
    assert [f["state"] for f in ledger.files()] == ["purged"] * 3 and not kept.exists()
    assert retention.stats["files_purged"] == 3 and retention.stats["files_purged_already_gone"] == 1
    assert retention.stats["bytes_purged"] == 100 + 30
    assert f"purged {cut.name} (verified upstream): 30 bytes on the disk, 100 when stored" in caplog.text
    assert f"purged {gone.name} (verified upstream): it was already gone from the local disk" in caplog.text
    assert f"purged {kept.name} (verified upstream, 100 bytes)" in caplog.text


def test_a_quota_beyond_the_disk_is_the_disk_s_size_and_said_so(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A quota of 2^64 bytes on a 270 GB disk was the store's reported capacity, its high-water mark
    never reached (an outside probe): the capacity is at most the disk, and the start says so."""
    import psutil

    usage = psutil.disk_usage(str(tmp_path))
    # the disk's size is what can hold data, used and free, as df counts it: not the file system's
    # nominal size (a probe's volume was 252 GiB of which 102 could hold data: the store's capacity read
    # 252 GiB beside the disk bar's 101)
    disk = usage.used + usage.free
    assert Retention(ledger, tmp_path, RetentionSettings(), executor=ManualExecutor()).capacity() == disk
    with caplog.at_level(logging.WARNING, logger="edge.retention"):
        retention = Retention(
            ledger, tmp_path, RetentionSettings(quota_bytes=1 << 64), executor=ManualExecutor()
        )
    assert retention.capacity() == disk
    assert "is more than the store's whole disk" in caplog.text
    caplog.clear()
    within = Retention(ledger, tmp_path, RetentionSettings(quota_bytes=disk // 2), executor=ManualExecutor())
    assert within.capacity() == disk // 2 and "whole disk" not in caplog.text


def test_a_file_kept_local_by_forward_hits_in_another_mode_says_its_mode_is_why(tmp_path: Path) -> None:
    """An outside probe: a powder run under ``upstream.forward = hits`` delivered no frame, and its data
    files read only "upstream.forward = hits: data files stay on the appliance"; hits forwards serial's
    hits alone, and the run's mode is the reason."""
    from edge.where import where_report

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("powder-run", 1, 1, json.dumps({"upstream_forward": "hits"}), "powder")
        path = tmp_path / "p.h5"
        path.write_bytes(b"x" * 10)
        ledger.file_stored("powder-run", "p.h5", path, 10, "sum", (0, 0, 1), [(0, 10, "c")], "data", True)
        (row,) = where_report(ledger, "powder-run")["files"]
    finally:
        ledger.close()
    assert row["local_only"] and row["why_local"] == (
        "upstream.forward = hits forwards only serial mode's hits; this run is powder: its data files stay"
        " on the appliance"
    )


def test_files_open_for_writing_count_in_the_store(ledger: Ledger, tmp_path: Path) -> None:
    """An outside probe: a capture's one file, open across its scan, is in the ledger only once closed:
    the store went to 165% of its quota with RetentionState "ok" and new runs accepted."""
    settings = RetentionSettings(quota_bytes=6_000_000, headroom_bytes=0, high_water=0.9)
    retention = Retention(ledger, tmp_path, settings, executor=ManualExecutor())
    assert retention.refusal() is None and retention.status()["open_bytes"] == 0
    retention.open_bytes = lambda: 8_000_000  # the capture's .part so far
    said = retention.refusal()
    assert said is not None and said.startswith("local store full of data not yet verified upstream"), said
    status = retention.status()
    assert status["store_bytes"] == status["unverified_bytes"] == status["open_bytes"] == 8_000_000
    assert status["accepting_runs"] is False
    # writing is not held for it: the frames held back would be those that finish the open file (a
    # store at its quota, its one open file never closed, stalled for good)
    assert retention.under_pressure() is False

    def closing() -> int:
        raise FileNotFoundError("renamed meanwhile")

    retention.open_bytes = closing  # a file closing as it is measured: counted at the next look
    assert retention.usage()["open"] == 0
