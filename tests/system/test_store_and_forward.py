"""Nothing lost: store-and-forward across consumer outages, corruption in transit, two consumers, quotas."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from edgeprocs import EdgeStack, get_json, wait_for
from test_walking_skeleton import upstream_frames

from edge.documents import documents_name

pytestmark = pytest.mark.slow


def sim_run(stack: EdgeStack, frames: int, run_uid: str) -> dict[str, Any]:
    sim = stack.start("sim", "--frames", str(frames), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
    out, _ = sim.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def run_verified(stack: EdgeStack, run_uid: str, frames: int) -> bool:
    run = stack.run(run_uid)
    return (
        run["ended_at"] is not None
        and bool(run["files"])
        and all(f["state"] in ("verified", "purged") for f in run["files"])
        and sum(f["n_frames"] for f in run["files"]) == frames
    )


def ledger_rows(stack: EdgeStack, sql: str) -> list[tuple]:
    with sqlite3.connect(stack.store / "ledger.sqlite") as db:
        return db.execute(sql).fetchall()


def test_corrupted_chunks_are_detected_resent_and_end_byte_identical(tmp_path: Path) -> None:
    stack = EdgeStack(
        tmp_path,
        [
            "upstream.corrupt=0.3",
            "upstream.resend_seconds=2",  # a chunk rejected twice waits this long before it goes again
            "store.chunk_bytes=65536",
            "store.frames_per_file=20",
            "store.file_seconds=600",
            "sim.rate_hz=80",
            "reduction.bins=100",
        ],
    )
    run_uid = str(uuid.uuid4())
    try:
        stack.start_daemon()
        stack.start("pull")
        assert sim_run(stack, 40, run_uid)["frames_sent"] == 40
        wait_for(lambda: run_verified(stack, run_uid, 40), 120, "the run verified upstream")
        upstream = stack.status()["upstream"]
    finally:
        stack.stop_all()
    assert upstream["chunks_corrupted_injected"] >= 3
    assert upstream["chunks_nacked"] == upstream["chunks_corrupted_injected"]  # every one detected
    local = sorted((stack.store / run_uid).glob("*.h5"))
    assert len(local) == 2
    for path in local:
        assert (stack.upstream / run_uid / path.name).read_bytes() == path.read_bytes()


def test_consumer_down_for_part_of_a_run_loses_nothing_and_nothing_is_purged_unverified(
    tmp_path: Path,
) -> None:
    frames = 120
    stack = EdgeStack(
        tmp_path,
        [
            "sim.rate_hz=40",
            "store.frames_per_file=20",
            "store.file_seconds=600",
            "reduction.bins=100",
            "retention.max_age_seconds=0.3",
            "retention.interval_seconds=0.2",
        ],
    )
    run_uid = str(uuid.uuid4())
    try:
        stack.start_daemon()
        pull = stack.start("pull")
        sim = stack.start(
            "sim", "--frames", str(frames), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE
        )
        wait_for(
            lambda: stack.status()["ledger"]["files"].get("verified", 0) >= 1, 60, "a first file verified"
        )
        pull.send_signal(signal.SIGTERM)  # the HPC side goes away in the middle of the run
        pull.wait(20)
        wait_for(
            lambda: stack.status()["ledger"]["files"].get("stored", 0) >= 2, 60, "files piling up unverified"
        )
        # while the consumer is away: unverified files stay on disk, only verified ones may go
        unverified = ledger_rows(stack, "SELECT path FROM files WHERE state IN ('stored','forwarded')")
        assert unverified and all(Path(p).exists() for (p,) in unverified)
        stack.start("pull")
        sim.communicate(timeout=120)
        wait_for(
            lambda: run_verified(stack, run_uid, frames),
            120,
            "everything verified after the consumer returned",
        )
        wait_for(
            # the data files, the run's reduced file and its documents
            lambda: stack.status()["retention"].get("files_purged", 0) == frames // 20 + 2,
            30,
            "verified files purged",
        )
        status = stack.status()
        assert status["frames"]["lost"] == 0
        assert status["frames"]["delivered"] == frames  # purged files were verified: still delivered
    finally:
        stack.stop_all()
    purged = ledger_rows(stack, "SELECT verified_at, purged_at, path FROM files")
    assert len(purged) == frames // 20 + 2  # and the run's reduced file and documents
    for verified_at, purged_at, path in purged:
        assert verified_at is not None and purged_at is not None and verified_at <= purged_at
        assert not Path(path).exists()
    assert sorted(upstream_frames(stack.upstream / run_uid)) == list(range(frames))


def test_two_consumers_keep_their_own_cursors_and_purge_waits_for_both(tmp_path: Path) -> None:
    frames = 60
    archive_dir = tmp_path / "archive"
    stack = EdgeStack(
        tmp_path,
        [
            'upstream.required_consumers=["hpc", "archive"]',
            "sim.rate_hz=60",
            "store.frames_per_file=20",
            "store.file_seconds=600",
            "reduction.bins=100",
            "retention.max_age_seconds=0.1",
            "retention.interval_seconds=0.2",
        ],
    )
    run_uid = str(uuid.uuid4())
    try:
        stack.start_daemon()
        stack.start("pull")  # consumer "hpc"
        assert sim_run(stack, frames, run_uid)["frames_sent"] == frames

        def hpc_has_all() -> bool:
            acks = ledger_rows(stack, "SELECT COUNT(*) FROM file_acks WHERE consumer='hpc'")[0][0]
            return acks == frames // 20 + 2  # data files, reduced file, documents

        wait_for(hpc_has_all, 60, "the hpc consumer to verify every file")
        status = stack.status()
        assert status["ledger"]["files"] == {"forwarded": 5}  # 3 + reduced + documents; archive has none yet
        assert status["retention"].get("files_purged", 0) == 0
        assert all(p.exists() for p in (stack.store / run_uid).glob("*.h5"))
        archive = stack.start("pull", "--consumer", "archive", "--output", str(archive_dir))
        wait_for(lambda: run_verified(stack, run_uid, frames), 60, "both consumers verified")
        wait_for(
            lambda: stack.status()["retention"].get("files_purged", 0) == 5, 30, "purge after both verified"
        )
        consumers = {c["consumer"]: c["chunks_acked"] for c in stack.status()["ledger"]["consumers"]}
        assert set(consumers) == {"hpc", "archive"} and consumers["hpc"] == consumers["archive"]
        archive.send_signal(signal.SIGTERM)
    finally:
        stack.stop_all()
    assert sorted(upstream_frames(stack.upstream / run_uid)) == list(range(frames))
    assert sorted(upstream_frames(archive_dir / run_uid)) == list(range(frames))


def test_full_quota_refuses_a_run_deletes_nothing_unverified_and_recovers(tmp_path: Path) -> None:
    stack = EdgeStack(
        tmp_path,
        [
            "detector.height=512",
            "detector.width=512",
            "sim.rate_hz=100",
            "store.frames_per_file=10",
            "store.file_seconds=600",
            "reduction.bins=100",
            "retention.quota_bytes=8000000",
            "retention.headroom_bytes=0",
            "retention.high_water=0.5",
            "retention.low_water=0.25",
            "retention.interval_seconds=0.2",
        ],
    )
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    try:
        stack.start_daemon()
        sim_run(stack, 30, first)  # no consumer yet: all of it stays unverified
        wait_for(
            lambda: stack.run(first)["ended_at"] and stack.status()["retention"]["alarm"], 60, "the alarm"
        )
        retention = stack.status()["retention"]
        assert not retention["accepting_runs"] and "not yet verified" in retention["alarm"]
        assert retention["unverified_bytes"] > 4_000_000
        sim_run(stack, 10, second)
        # its documents twice: when it was refused (its RunStop), and at its series' end with the frames
        # it lost (its first RunStop counted none: upstream, sent = stored + vetoed + lost failed)
        refused = wait_for(
            lambda: len((r := stack.run(second))["files"]) == 2 and r, 30, "the refused run's account"
        )
        assert refused["exit_status"] == "abort"
        assert [f["name"] for f in refused["files"]] == [documents_name(second), documents_name(second, 2)]
        assert [(r["first_frame"], r["last_frame"], r["reason"]) for r in refused["losses"]] == [
            (0, 9, "run_refused")
        ]
        assert "not yet verified" in refused["losses"][0]["detail"]
        assert all(Path(f["path"]).exists() for f in stack.run(first)["files"])  # nothing unverified deleted
        stack.start("pull")
        wait_for(lambda: run_verified(stack, first, 30), 60, "the first run verified")
        wait_for(lambda: stack.status()["retention"]["accepting_runs"], 30, "purging to free space")
        wait_for(lambda: stack.status()["retention"].get("files_purged", 0) >= 1, 30, "verified files purged")
        # a pass purges file after file: the status may be read between two of them
        wait_for(lambda: stack.status()["retention"]["store_bytes"] < 4_000_000, 30, "the store below 4 MB")
        sim_run(stack, 10, third)
        wait_for(lambda: run_verified(stack, third, 10), 60, "acquisition resumed and delivered")
        runs = {r["run_uid"]: r["exit_status"] for r in get_json(stack.url + "/api/runs")}
        assert runs == {first: "success", second: "abort", third: "success"}
        revised = stack.upstream / second / documents_name(second, 2)
        wait_for(revised.exists, 60, "the refused run's revised documents upstream")
    finally:
        stack.stop_all()
    assert sorted(upstream_frames(stack.upstream / first)) == list(range(30))
    # the refused run's account from the upstream copy alone: its newest RunStop counts its 10 frames
    newest = (stack.upstream / second / documents_name(second, 2)).read_text().splitlines()
    stop = next(doc for name, doc in map(json.loads, newest) if name == "stop")
    assert stop["edge_accounting"]["frames_lost"] == 10 and stop["edge_accounting"]["frames_stored"] == 0
    for verified_at, purged_at in ledger_rows(
        stack, "SELECT verified_at, purged_at FROM files WHERE purged_at"
    ):
        assert verified_at is not None and verified_at <= purged_at


def test_daemon_killed_mid_run_restarts_consistent(tmp_path: Path) -> None:
    import h5py
    import hdf5plugin  # noqa: F401

    frames = 200
    stack = EdgeStack(
        tmp_path,
        [
            "sim.rate_hz=50",
            "store.frames_per_file=20",
            "store.file_seconds=600",
            "store.file_seconds=600",
            "reduction.bins=100",
        ],
    )
    run_uid = str(uuid.uuid4())
    try:
        daemon = stack.start_daemon()
        stack.start("pull")
        sim = stack.start(
            "sim", "--frames", str(frames), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE
        )
        wait_for(
            lambda: stack.status()["ledger"]["files"].get("verified", 0) >= 2, 60, "some files delivered"
        )
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        stack.procs.remove(daemon)
        stack.start_daemon()  # same store, same ledger
        recovery = stack.status()["appliance"]["recovery"]
        assert recovery["runs_failed"] == [run_uid]
        sim.communicate(timeout=120)

        def accounted() -> dict[str, Any] | None:
            run = stack.run(run_uid)
            data = [f for f in run["files"] if f["name"].endswith(".h5")]
            if not all(f["state"] == "verified" for f in run["files"]):
                return None
            return run if data else None

        run = wait_for(accounted, 90, "every stored file of the crashed run delivered")
        # the rest of the series, sent after the restart, is a run of its own "resumed after restart"
        resumed = wait_for(
            lambda: [
                r
                for (uid,) in ledger_rows(stack, "SELECT run_uid FROM runs WHERE ended_at IS NOT NULL")
                if uid != run_uid
                and (r := stack.run(uid))["files"]
                and all(f["state"] == "verified" for f in r["files"])
            ],
            90,
            "the resumed run ended and delivered",
        )[0]
        run = stack.run(run_uid)
    finally:
        stack.stop_all()
    assert run["exit_status"] == "fail"
    assert json.loads(resumed["config"])["resumes_run"] == run_uid
    delivered = upstream_frames(stack.upstream / run_uid)
    delivered_after = upstream_frames(stack.upstream / resumed["run_uid"])
    lost: set[int] = set()
    for record in run["losses"] + resumed["losses"]:
        lost.update(range(record["first_frame"], record["last_frame"] + 1))
    assert {r["reason"] for r in run["losses"]} <= {"daemon_crash", "daemon_restart"}
    assert not (set(delivered) & lost) and not (set(delivered_after) & (lost | set(delivered)))
    # every frame delivered (by the crashed run or the resumed one) or covered by a loss record, once
    assert set(delivered) | set(delivered_after) | lost == set(range(frames))
    for path in stack.store.rglob("*.h5"):  # every file left in the store opens
        with h5py.File(path, "r") as handle:
            assert handle["/entry/data/data"].shape[0] == len(handle["/entry/data/frame_number"])
    docs = [
        json.loads(line)
        for line in (stack.upstream / run_uid / f"{run_uid}.documents.jsonl").read_text().splitlines()
    ]
    assert docs[-1][0] == "stop" and docs[-1][1]["exit_status"] == "fail"
    # from the upstream copy alone: the reduced files' frame tables list every frame the crashed run
    # stored (the rows that were in memory at the crash come back as a recovered table)
    listed: list[int] = []
    for path in sorted((stack.upstream / run_uid).glob(f"{run_uid}_reduced_*.nxs")):
        with h5py.File(path, "r") as handle:
            listed += [int(n) for n in handle["/entry/frames/frame_number"][:]]
    assert sorted(listed) == sorted(delivered)
    # the ledger agrees with the disk: every file it lists as on disk exists with its checksum
    for name, path, size in ledger_rows(stack, "SELECT name, path, size FROM files WHERE state != 'purged'"):
        assert Path(path).stat().st_size == size, name


def test_daemon_stopped_mid_run_accounts_for_every_frame(tmp_path: Path) -> None:
    frames = 200
    stack = EdgeStack(
        tmp_path,
        [
            "sim.rate_hz=40",
            "store.frames_per_file=20",
            "store.file_seconds=600",
            "store.file_seconds=600",
            "reduction.bins=50",
        ],
    )
    run_uid = str(uuid.uuid4())
    try:
        daemon = stack.start_daemon()
        stack.start("sim", "--frames", str(frames), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
        wait_for(lambda: stack.status()["ledger"]["files"].get("stored", 0) >= 1, 60, "a file stored")
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(60) == 0
    finally:
        stack.stop_all()
    exit_status = ledger_rows(stack, f"SELECT exit_status FROM runs WHERE run_uid='{run_uid}'")[0][0]
    assert exit_status == "abort"
    covered: set[int] = set()
    for first, last in ledger_rows(
        stack, f"SELECT first_frame, last_frame FROM losses WHERE run_uid='{run_uid}'"
    ):
        covered.update(range(first, last + 1))
    stored = set()
    for path in (stack.store / run_uid).glob("*.h5"):
        import h5py
        import hdf5plugin  # noqa: F401

        with h5py.File(path) as handle:
            stored.update(int(n) for n in handle["/entry/data/frame_number"][:])
    assert stored and not (stored & covered)
    assert stored | covered == set(range(frames))
    reasons = {r for (r,) in ledger_rows(stack, f"SELECT reason FROM losses WHERE run_uid='{run_uid}'")}
    assert "receiver_stopped" in reasons
