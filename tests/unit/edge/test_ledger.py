"""The ledger's running totals equal a scan of its tables after any sequence of operations, a ledger
from before the totals existed gets them on open, and the forwarder's and retention's queries ask only
for what is pending, not for the whole history."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from pathlib import Path

import pytest

from edge.config import RetentionSettings
from edge.ledger import Ledger
from edge.retention import PRESSURE_RECHECK_S, Retention
from edge.where import where_report


def scanned(path: Path) -> dict[str, object]:
    """What the totals must say, by scanning the tables."""
    with sqlite3.connect(path) as db:
        files = dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
        frames = dict(db.execute("SELECT state, SUM(n_frames) FROM files GROUP BY state").fetchall())
        chunks = dict(db.execute("SELECT state, COUNT(*) FROM chunks GROUP BY state").fetchall())
        sizes = dict(db.execute("SELECT state, SUM(size) FROM files GROUP BY state").fetchall())
        acks = {
            consumer: [count, last]
            for consumer, count, last in db.execute(
                "SELECT consumer, COUNT(*), MAX(chunk_id) FROM chunk_acks GROUP BY consumer"
            )
        }
        # a purged file's chunk rows were replaced by their counts (``files.chunk_record``)
        for (record,) in db.execute("SELECT chunk_record FROM files WHERE chunk_record IS NOT NULL"):
            for consumer, (count, last) in json.loads(record)["acked"].items():
                total = acks.setdefault(consumer, [0, last])
                total[0] += count
                total[1] = max(total[1], last)
    return {
        "files": files,
        "frames": frames,
        "chunks": chunks,
        "total": sum(v for k, v in sizes.items() if k != "purged"),
        "verified": sizes.get("verified", 0),
        "acks": [(consumer, *acks[consumer]) for consumer in sorted(acks)],
    }


def from_totals(ledger: Ledger) -> dict[str, object]:
    summary = ledger.summary()
    usage = ledger.store_usage()
    return {
        "files": summary["files"],
        "frames": summary["frames_by_state"],
        "chunks": summary["chunks"],
        "total": usage["total"],
        "verified": usage["verified"],
        "acks": [(c["consumer"], c["chunks_acked"], c["last_chunk_acked"]) for c in summary["consumers"]],
    }


def test_totals_follow_every_operation(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, required_consumers=("hpc", "tape"))
    ledger.run_started("run", 1, None, "{}")
    rng = random.Random(3)
    for n in range(40):
        chunks = [(k * 10, 10, f"c{n}-{k}") for k in range(rng.randint(1, 4))]
        ledger.file_stored(
            "run", f"f{n}.h5", tmp_path / f"f{n}.h5", 10 * len(chunks), f"x{n}", (n, n, 5), chunks
        )
        for consumer in ("hpc", "tape"):
            pending = ledger.pending_chunks(consumer, [], 3)
            ledger.chunks_sent([row["id"] for row in pending])
            for row in pending[: rng.randint(0, len(pending))]:
                ledger.chunk_acked(consumer, row["id"], row["checksum"])
            for row in ledger.files_ready_to_verify(consumer):
                ledger.file_verified(consumer, row["id"], row["size"], row["checksum"])
        for row in ledger.purgeable_files(limit=rng.randint(0, 2)):
            ledger.file_purged(row["id"])
        assert from_totals(ledger) == scanned(path), n
    states = from_totals(ledger)["files"]
    assert isinstance(states, dict) and {"verified", "purged"} <= set(states)
    ledger.close()


def _store_verify_purge(ledger: Ledger, tmp_path: Path, name: str) -> list[int]:
    """One file of two chunks stored, acknowledged, verified and purged; returns its chunk ids."""
    file_id = ledger.file_stored(
        "run", name, tmp_path / name, 20, name, (0, 0, 1), [(0, 10, "a"), (10, 10, "b")]
    )
    pending = [row for row in ledger.pending_chunks("hpc", [], 8) if row["file_id"] == file_id]
    for row in pending:
        ledger.chunk_acked("hpc", row["id"], row["checksum"])
    for row in ledger.files_ready_to_verify("hpc"):
        assert ledger.file_verified("hpc", row["id"], row["size"], row["checksum"])
    for row in ledger.purgeable_files():
        ledger.file_purged(row["id"])
    return [int(row["id"]) for row in pending]


def test_a_chunk_id_is_never_given_twice_not_even_after_a_purge(tmp_path: Path) -> None:
    """The upstream protocol names chunks by id: a purged chunk's id must not name the next chunk."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, None, "{}")
    first = _store_verify_purge(ledger, tmp_path, "f0.h5")
    assert ledger.pending_chunks("hpc", [], 8) == []  # every chunk row gone with the purge
    second = _store_verify_purge(ledger, tmp_path, "f1.h5")
    assert min(second) > max(first)
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.sqlite")  # and across restarts
    third = _store_verify_purge(reopened, tmp_path, "f2.h5")
    assert min(third) > max(second)
    reopened.close()


def test_a_ledger_of_reusable_chunk_ids_is_rebuilt_keeping_every_id(tmp_path: Path) -> None:
    """A version 3 ledger (chunk ids as plain rowids) migrates: its rows and ids kept, new ids above every
    id it still knows was given, acknowledged ones included."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.run_started("run", 1, None, "{}")
    gone = _store_verify_purge(ledger, tmp_path, "f0.h5")  # ids 1, 2: acked, then purged
    ledger.file_stored("run", "f1.h5", tmp_path / "f1.h5", 10, "x", (1, 1, 1), [(0, 10, "c")])
    (kept,) = ledger.pending_chunks("hpc", [], 8)
    ledger.close()
    with sqlite3.connect(path) as db:  # as version 3 left it: the same table without AUTOINCREMENT
        db.execute("PRAGMA foreign_keys=OFF")
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name='chunks'").fetchone()
        db.execute(
            re.sub(r"CREATE TABLE (IF NOT EXISTS )?chunks", "CREATE TABLE chunks_v3", sql).replace(
                "AUTOINCREMENT", ""
            )
        )
        db.execute("INSERT INTO chunks_v3 SELECT * FROM chunks")
        db.execute("DROP TABLE chunks")
        db.execute("ALTER TABLE chunks_v3 RENAME TO chunks")
        db.execute("DELETE FROM sqlite_sequence")
        db.execute("PRAGMA user_version = 3")
    with sqlite3.connect(path) as db:
        assert (
            "AUTOINCREMENT"
            not in db.execute("SELECT sql FROM sqlite_master WHERE name='chunks'").fetchone()[0]
        )
        db.execute("DELETE FROM chunks WHERE id=?", (kept["id"],))  # the newest row gone: plain rowids reuse
        db.execute(
            "INSERT INTO chunks SELECT * FROM (SELECT ?, ?, 0, 0, 10, 'c', 'stored')",
            (kept["id"], kept["file_id"]),
        )
    migrated = Ledger(path)
    assert migrated.migrated_from == 3
    (row,) = migrated.pending_chunks("hpc", [], 8)
    assert row["id"] == kept["id"] and row["checksum"] == "c"
    assert migrated.chunk_ack_counts("run")  # the purged file's record kept
    new = _store_verify_purge(migrated, tmp_path, "f2.h5")
    assert min(new) > max([*gone, kept["id"]])
    assert from_totals(migrated) == scanned(path)  # the totals' triggers are back on the rebuilt table
    migrated.close()


def test_a_ledger_from_before_the_totals_gets_them_on_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.run_started("run", 1, None, "{}")
    for n in range(5):
        ledger.file_stored("run", f"f{n}.h5", tmp_path / f"f{n}.h5", 100, "x", (n, n, 7), [(0, 100, "c")])
    ledger.close()
    with sqlite3.connect(path) as db:  # as an older release left it: no totals, no triggers
        for name in ("file_totals", "chunk_totals", "ack_totals"):
            db.execute(f"DROP TABLE {name}")
        for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            db.execute(f"DROP TRIGGER {trigger}")
    reopened = Ledger(path)
    assert from_totals(reopened) == scanned(path)
    assert reopened.summary()["frames_stored"] == 35
    reopened.close()


def test_retention_purges_down_to_the_low_water_mark_in_batches(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, None, "{}")
    for n in range(600):
        f = tmp_path / f"f{n}.h5"
        f.write_bytes(b"x" * 1000)
        file_id = ledger.file_stored("run", f.name, f, 1000, "x", (n, n, 1), [(0, 1000, "c")])
        chunk = ledger.pending_chunks("hpc", [], 1)[0]
        ledger.chunk_acked("hpc", chunk["id"], chunk["checksum"])
        if n < 550:  # the newest 50 are not verified yet
            ledger.file_verified("hpc", file_id, 1000, "x")
    settings = RetentionSettings(quota_bytes=600_000 + 64, headroom_bytes=64, high_water=0.9, low_water=0.5)
    retention = Retention(ledger, tmp_path, settings)
    purged = retention.purge_once()
    assert purged == 300  # 600 kB in the store, down to 300 kB: the 300 oldest verified files
    assert ledger.store_usage()["total"] == 300_000
    assert sorted(int(p.stem[1:]) for p in tmp_path.glob("f*.h5")) == list(range(300, 600))
    assert retention.purge_once() == 0
    ledger.close()


def test_pressure_check_answers_at_once_and_follows_the_store(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, None, "{}")
    settings = RetentionSettings(quota_bytes=10_000 + 64, headroom_bytes=64)
    retention = Retention(ledger, tmp_path, settings)
    assert retention.under_pressure() is False  # computed in place the first time
    ledger.file_stored("run", "big.h5", tmp_path / "big.h5", 20_000, "x", (0, 9, 10), [(0, 20_000, "c")])
    deadline = time.monotonic() + 10
    while not retention.under_pressure():  # refreshed off-thread, never waiting on the ledger
        assert time.monotonic() < deadline, "the pressure check never saw the full store"
        time.sleep(0.05)
    ledger.close()
    time.sleep(PRESSURE_RECHECK_S + 0.05)
    assert retention.under_pressure() is True  # a failing refresh keeps the last answer...
    deadline = time.monotonic() + 10
    while not retention.stats.get("pressure_check_errors"):  # ...and is counted, not raised
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_confirmation_never_makes_a_local_file_purgeable_or_revives_a_purged_one(tmp_path: Path) -> None:
    """A consumer's file_verified for a file that was never forwarded is refused; a repeat that arrives
    after the file was purged changes nothing; a consumer listed twice is waited for once."""
    from edge.errors import NotFound

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc", "hpc"))
    assert ledger.required_consumers == ("hpc",)
    ledger.run_started("run", 1, None, "{}")
    local = ledger.file_stored(
        "run", "local.h5", tmp_path / "l.h5", 10, "sum", (0, 0, 1), [(0, 10, "c")], "data", True
    )
    try:
        ledger.file_verified("hpc", local, 10, "sum")
        raise AssertionError("a local file was confirmed")
    except NotFound:
        pass
    assert [f["state"] for f in ledger.files("run")] == ["local"]
    sent = ledger.file_stored("run", "sent.h5", tmp_path / "s.h5", 10, "s2", (1, 1, 1), [(0, 10, "c2")])
    assert ledger.file_verified("hpc", sent, 10, "s2")
    ledger.file_purged(sent)
    assert ledger.file_verified("hpc", sent, 10, "s2")  # a late repeat: still a match, nothing changes
    assert {f["name"]: f["state"] for f in ledger.files("run")} == {"local.h5": "local", "sent.h5": "purged"}
    ledger.close()


@pytest.mark.parametrize(
    ("key", "method", "index"),
    [
        ("detector_run_uid", "runs_named_by_detector", "runs_by_detector_uid"),
        ("resumes_run", "runs_resuming", "runs_by_resumed"),
    ],
)
def test_runs_named_in_other_runs_configs_are_found_through_an_index(
    tmp_path: Path, key: str, method: str, index: str
) -> None:
    """The where report (refreshed by the dashboard) asks these for every run shown: an index lookup on
    the config's ``detector_run_uid`` / ``resumes_run``, never a scan of every run's config; a config
    that is not JSON neither breaks the index nor matches."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("a", 1, 2, json.dumps({key: "x"}))
    ledger.run_started("b", 2, 2, "not json")
    ledger.run_started("c", 3, 2, json.dumps({key: "x"}))
    ledger.run_started("d", 4, 2, json.dumps({key: "y"}))
    asked: list[str] = []
    ledger._db.set_trace_callback(asked.append)
    assert getattr(ledger, method)("x") == ["a", "c"]
    ledger._db.set_trace_callback(None)
    (query,) = [q for q in asked if key in q]
    plan = " ".join(str(row[3]) for row in ledger._db.execute("EXPLAIN QUERY PLAN " + query))
    assert f"USING INDEX {index}" in plan, plan
    ledger.close()


def test_the_newest_runs_come_from_an_index_walk_not_every_run(tmp_path: Path) -> None:
    """An outside soak: ``/api/run-summaries?limit=20`` read every run and sorted them (9 ms at 21 runs,
    18 ms at 99, growing with the history): the newest come from the start-time index, newest first."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for n in range(30):
        ledger.run_started(f"run-{n}", n, 2, "{}")
    asked: list[str] = []
    ledger._db.set_trace_callback(asked.append)
    assert [row["run_uid"] for row in ledger.newest_runs(3)] == ["run-29", "run-28", "run-27"]
    ledger._db.set_trace_callback(None)
    (query,) = [q for q in asked if "FROM runs" in q]
    plan = " ".join(str(row[3]) for row in ledger._db.execute("EXPLAIN QUERY PLAN " + query))
    assert "USING INDEX runs_by_start" in plan and "TEMP B-TREE" not in plan, plan
    ledger.close()


def _stored_and_confirmed(ledger: Ledger, tmp_path: Path, name: str, consumers: tuple[str, ...]) -> int:
    (tmp_path / name).write_bytes(b"x" * 10)  # on the disk as stored (a pending file missing has no ETA)
    file_id = ledger.file_stored("run", name, tmp_path / name, 10, name, (0, 0, 1), [(0, 10, name)])
    for consumer in consumers:
        for row in ledger.pending_chunks(consumer, [], 8):
            if row["file_id"] == file_id:
                ledger.chunks_sent([row["id"]])
                ledger.chunk_acked(consumer, row["id"], row["checksum"])
        assert ledger.file_verified(consumer, file_id, 10, name)
    return file_id


def test_a_required_consumer_added_later_holds_back_what_it_never_confirmed(tmp_path: Path) -> None:
    """A chaos probe: restarted with ``required_consumers = ["hpc", "tape"]``, the appliance purged files
    only hpc had confirmed (their state said ``verified``, from the hpc-only start). Taken off again,
    files both had been waiting for stayed ``forwarded`` forever, never purgeable."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, required_consumers=("hpc",))
    ledger.run_started("run", 1, None, "{}")
    hpc_only = _stored_and_confirmed(ledger, tmp_path, "a.h5", ("hpc",))
    assert [f["id"] for f in ledger.purgeable_files(limit=10)] == [hpc_only]
    ledger.close()

    ledger = Ledger(path, required_consumers=("hpc", "tape"))  # tape required from now on
    assert ledger.reconcile_verified() == {"reopened": 1, "verified": 0}
    assert ledger.purgeable_files(limit=10) == []  # tape has not confirmed it: never purged
    assert [r["file_id"] for r in ledger.pending_chunks("tape", [], 8)] == [hpc_only]  # tape is sent it
    assert ledger.pending_chunks("hpc", [], 8) == []  # hpc is not sent it again
    both = _stored_and_confirmed(ledger, tmp_path, "b.h5", ("hpc",))  # waits for tape
    assert ledger.purgeable_files(limit=10) == []
    # `edge where` counts as verified upstream what every required consumer confirmed (it said "2
    # verified upstream ..., 2 pending" of the same two files)
    summary = where_report(ledger, "run")["summary"]
    assert "0 verified upstream" in summary and "2 pending (2 confirmed by some required" in summary, summary
    assert "0 verified upstream, " in summary  # no folder named for copies not yet verified (a probe)
    assert from_totals(ledger) == scanned(path)
    ledger.close()

    reader = Ledger(path, required_consumers=("hpc",))  # `edge where` with other settings: reads only
    assert sorted(f["state"] for f in reader.files()) == ["forwarded", "forwarded"]
    reader.close()
    ledger = Ledger(path, required_consumers=("hpc",))  # tape no longer required
    assert ledger.reconcile_verified() == {"reopened": 0, "verified": 2}
    assert sorted(f["id"] for f in ledger.purgeable_files(limit=10)) == [hpc_only, both]
    assert from_totals(ledger) == scanned(path)
    ledger.close()
    again = Ledger(path, required_consumers=("hpc",))
    assert again.reconcile_verified() == {"reopened": 0, "verified": 0}  # nothing to change on a restart
    again.close()


def test_a_run_s_eta_is_none_while_delivery_is_stalled(tmp_path: Path) -> None:
    """An outside probe: with the required ``tape`` stopped, `edge where` and the runs table said "ETA 8
    s" for data that could not be verified, beside the outlook's "stalled". With a stall named (the
    daemon's `outlook.stall`), the report has no ETA and says why."""
    from edge.upstream.outlook import stall
    from edge.where import render

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc", "tape"))
    ledger.run_started("run", 1, None, "{}")
    _stored_and_confirmed(ledger, tmp_path, "old.h5", ("hpc", "tape"))  # a verified rate to go by
    _stored_and_confirmed(ledger, tmp_path, "a.h5", ("hpc",))  # waits for tape
    flowing = where_report(ledger, "run")
    assert flowing["bytes_pending"] > 0 and flowing["eta_seconds"] is not None
    consumers = {
        "consumers": [{"consumer": "hpc", "connected": True}, {"consumer": "tape", "connected": False}]
    }
    why = stall(["hpc", "tape"], consumers)
    assert why == "a required consumer not connected: tape must pull"
    report = where_report(ledger, "run", stalled=why)
    assert report["eta_seconds"] is None and report["upstream_stalled"] == why
    assert "(stalled: a required consumer not connected: tape must pull)" in render(report)
    assert stall(["hpc"], consumers) is None
    assert "ledger cannot record" in str(stall(["hpc"], {**consumers, "ledger_refusing": True}))
    # a required consumer refusing chunks (its disk full) and held back for it: "ETA 30 s" before
    refusing = {"consumer": "hpc", "connected": True, "last_refusal": "No space left on device"}
    refusing |= {"seconds_since_refusal": 1.0}
    assert stall(["hpc"], {"consumers": [refusing]}) is None  # (one refusal, not held back: still going)
    why = stall(["hpc"], {"consumers": [{**refusing, "held_back": True}]})
    assert why == "consumer refusing chunks (hpc: No space left on device)"
    # held back, it is a stall however old its last refusal: the pause before its next chunk grows past
    # the 30 s a refusal counts as recent (an outside probe read "delivering" 30 s into a pause)
    old_refusal = {**refusing, "held_back": True, "seconds_since_refusal": 45.0}
    assert stall(["hpc"], {"consumers": [old_refusal]}) == why
    taking = {**refusing, "held_back": False, "refused_in_a_row": 0, "seconds_since_refusal": 600.0}
    assert stall(["hpc"], {"consumers": [taking]}) is None
    ledger.close()


def test_a_late_start_s_length_and_uid_go_into_the_run_s_config(tmp_path: Path) -> None:
    """The run opened from its images learns its length and the start's uid later: both in its config
    too (an outside probe: the row said 5 frames, the config none, and the uid was findable nowhere)."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("fresh", 21, None, json.dumps({"resumed_after_restart": True}))
    ledger.run_length("fresh", 5)
    ledger.run_named("fresh", "s6-uid")
    ledger.run_named("fresh", "another")  # one it has stays
    run = ledger.run("fresh")
    config = json.loads(run["config"])
    assert run["frames_expected"] == 5 and config["frames_expected"] == 5
    assert config["detector_run_uid"] == "s6-uid" and ledger.runs_named_by_detector("s6-uid") == ["fresh"]
    ledger.close()


def test_where_names_where_the_series_of_a_run_the_detector_uid_also_names_went_on(tmp_path: Path) -> None:
    """A first-day probe: the detector reused uid "scan" (kept by the first run; the second recorded
    under a fresh uid), and the second run's series went on after a restart in a third run; `edge where
    scan` named the second run but not the third, found only by asking again."""
    import json

    from edge.where import render

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("scan", 1, None, "{}")
    ledger.run_started("fresh-1", 2, None, json.dumps({"detector_run_uid": "scan"}))
    ledger.run_started("fresh-2", 2, None, json.dumps({"resumes_run": "fresh-1"}))
    report = where_report(ledger, "scan")
    assert report["detector_uid_also_names"] == ["fresh-1"]
    assert report["also_named_continued_by"] == {"fresh-1": ["fresh-2"]}
    assert "also names run fresh-1 (its series went on in run fresh-2)" in render(report)
    ledger.close()


def test_a_run_not_ended_counts_the_vetoed_blanks_its_closed_reduced_files_list(tmp_path: Path) -> None:
    """An outside chaos probe: serial with blanks dropped, killed mid-series; `edge where` with the daemon
    down read 0 vetoed while the run's closed reduced files listed 163 (the run's count is written at
    its end). A run not ended counts what its closed reduced files list; an ended run its own count."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("run", 1, None, "{}")
    ledger.file_stored("run", "a.h5", tmp_path / "a.h5", 10, "x", (0, 3, 4), [])
    for name, vetoed in (("run_reduced_00000.nxs", 100), ("run_reduced_00001.nxs", 63)):
        ledger.file_stored("run", name, tmp_path / name, 10, "x", (-1, -1, 0), [], "reduced", vetoed=vetoed)
    assert ledger.run_totals("run")["frames_vetoed"] == 163
    ledger.run_ended("run", "fail", 4, 170)  # (the recovery counts the rows it recovered too)
    assert ledger.run_totals("run")["frames_vetoed"] == 170
    ledger.close()


def test_the_outlook_names_only_the_missing_consumers_that_owe_a_confirmation(tmp_path: Path) -> None:
    """An outside data-manager probe: hpc had confirmed every file, tape never connected; with neither
    connected the outlook (its alarm, `edge where`) read "hpc, tape must pull" while the storage alarm
    rightly named tape alone. Now only tape, hpc said to have confirmed all of it."""
    from edge.upstream.outlook import stall, upstream_outlook

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc", "tape"))
    ledger.run_started("run", 1, None, "{}")
    _stored_and_confirmed(ledger, tmp_path, "a.h5", ("hpc",))
    nobody: dict[str, list[object]] = {"consumers": []}
    outlook = upstream_outlook(ledger, 10, nobody, time.time())
    assert outlook["state"] == "stalled"
    assert outlook["reason"].startswith("no consumer connected: tape must pull"), outlook["reason"]
    assert "hpc, not connected, has confirmed all of it" in outlook["reason"]
    said = stall(["hpc", "tape"], nobody, ledger.consumers_owing)
    assert said is not None and "tape must pull" in said and "hpc" not in said
    ledger.close()
