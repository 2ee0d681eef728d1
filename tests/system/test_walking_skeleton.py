"""The whole data path with real processes: simulator -> daemon -> HDF5 -> upstream pull."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the bitshuffle filter for reading back)
import numpy as np
import pytest
from edgeprocs import EdgeStack, get_json, loopback_overrides, run_bounded_demo, wait_for

from edge.config import load_settings
from hw_sim.frames import PowderFrames
from kernels import Geometry, get_backend


def upstream_frames(directory: Path) -> dict[int, tuple[Path, int]]:
    """Every frame number found in the upstream files, mapped to (file, index); fails on duplicates."""
    seen: dict[int, tuple[Path, int]] = {}
    for path in sorted(directory.glob("*.h5")):
        with h5py.File(path, "r") as handle:
            for index, number in enumerate(handle["/entry/data/frame_number"][:]):
                assert int(number) not in seen, (
                    f"frame {number} delivered twice ({seen.get(int(number))}, {path})"
                )
                seen[int(number)] = (path, index)
    return seen


@pytest.mark.slow
def test_demo_delivers_every_frame_verified(tmp_path: Path) -> None:
    frames = 500
    overrides = [
        *loopback_overrides(),
        "sim.rate_hz=250",
        "store.frames_per_file=100",
        "store.file_seconds=600",  # files roll over by count only, so their number is known
        "reduction.bins=500",
    ]
    summary = run_bounded_demo(tmp_path, frames, [], overrides)
    assert summary["frames_sent"] == frames
    assert summary["frames_received"] == frames
    assert summary["frames_stored"] == frames
    assert summary["frames_delivered"] == frames
    assert summary["frames_lost"] == 0 and summary["loss_records"] == 0
    assert set(summary) >= {
        "frames_sent",
        "frames_received",
        "frames_stored",
        "frames_delivered",
        "frames_lost",
        "loss_records",
        "seconds",
    }

    # every upstream frame equals the simulator's seeded frame, and each arrived exactly once
    settings = load_settings(overrides=overrides)
    run_dir = tmp_path / "upstream" / summary["run_uid"]
    found = upstream_frames(run_dir)
    assert sorted(found) == list(range(frames))
    geometry = Geometry(**settings.geometry.model_dump())
    shape = settings.detector.shape
    sim = PowderFrames(shape, geometry, seed=settings.sim.seed, pool=settings.sim.pool)
    reference = get_backend("numpy")
    integrator = reference.integrator(geometry, shape, settings.reduction.bins)
    dark = np.zeros(shape, np.float32)
    gain = np.ones(shape, np.float32)
    scratch = np.empty(shape, np.float32)
    for path in sorted(run_dir.glob("*.h5")):
        with h5py.File(path, "r") as handle:
            data = handle["/entry/data/data"]
            numbers = handle["/entry/data/frame_number"][:]
            profiles = handle["/entry/reduced/profile"][:]
            np.testing.assert_allclose(handle["/entry/reduced/radial"][:], integrator.radial, rtol=1e-12)
            for index, number in enumerate(numbers):
                pixels = data[index]
                expected = sim.frame(int(number))
                assert np.array_equal(pixels, expected), f"frame {number} pixels differ"
                if index % 10 == 0:  # the NumPy reduction is slow; a sample of every file suffices
                    profile = integrator.integrate(reference.correct(expected, dark, gain, scratch))
                    np.testing.assert_allclose(profiles[index], profile, rtol=1e-9, atol=1e-9)
            # NXmx essentials, with the geometry the profiles were computed with
            assert handle["/entry/definition"][()] == b"NXmx"
            det = handle["/entry/instrument/detector"]
            assert det["distance"][()] == geometry.dist and det["data"].shape == data.shape
            assert det["beam_center_x"][()] == geometry.poni2 / geometry.pixel2
            assert (
                abs(handle["/entry/instrument/beam/incident_wavelength"][()] - geometry.wavelength * 1e10)
                < 1e-12
            )
            assert handle["/entry"].attrs["frames_expected"] == frames
            assert handle["/entry"].attrs["frames_written"] == len(numbers)
        # the upstream file is byte-identical to the appliance's
        local = tmp_path / "store" / summary["run_uid"] / path.name
        assert local.read_bytes() == path.read_bytes()

    # the ledger says every file and chunk is verified and nothing is lost
    with sqlite3.connect(tmp_path / "store" / "ledger.sqlite") as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM chunks GROUP BY state").fetchall())
        files = dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
        run = db.execute("SELECT exit_status, frames_stored FROM runs WHERE run_uid=?", (summary["run_uid"],))
        assert run.fetchone() == ("success", frames)
    assert set(states) == {"verified"} and states["verified"] >= 5
    # the HDF5 data files, the run's reduced file (frame table, products) and its Bluesky documents
    assert files == {"verified": frames // 100 + 2}
    docs = [
        json.loads(line)
        for line in (run_dir / f"{summary['run_uid']}.documents.jsonl").read_text().splitlines()
    ]
    assert [name for name, _ in docs] == ["start", "descriptor"] + ["stream_resource", "stream_datum"] * 5 + [
        "stop"
    ]
    assert docs[-1][1]["exit_status"] == "success" and docs[-1][1]["num_events"] == {"primary": frames}
    assert not list((tmp_path / "upstream").rglob("*.part"))

    # where is my data? answered from the ledger, by a prefix of the run uid, daemon or not
    store_flag = ["--set", f'store.path="{tmp_path / "store"}"']
    where = subprocess.run(
        [sys.executable, "-m", "edge", "where", summary["run_uid"][:8], "--json", *store_flag],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    report = json.loads(where.stdout)
    assert report["run_uid"] == summary["run_uid"] and report["exit_status"] == "success"
    assert (report["frames_stored"], report["frames_delivered"], report["frames_lost"]) == (frames, frames, 0)
    assert report["bytes_pending"] == 0 and report["eta_seconds"] == 0.0
    assert all(f["verified_by"].keys() == {"hpc"} and f["on_local_disk"] for f in report["files"])
    text = subprocess.run(
        [sys.executable, "-m", "edge", "where", summary["run_uid"], *store_flag],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "confirmed by hpc" in text and str(tmp_path / "store" / summary["run_uid"]) in text
    missing = subprocess.run(
        [sys.executable, "-m", "edge", "where", "no-such-run", *store_flag],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "no run 'no-such-run'" in missing.stderr


@pytest.mark.slow
def test_pull_killed_mid_run_resumes_and_delivers_each_frame_once(tmp_path: Path) -> None:
    frames = 240
    stack = EdgeStack(
        tmp_path,
        ["sim.rate_hz=60", "store.frames_per_file=20", "store.chunk_bytes=65536", "reduction.bins=200"],
    )
    run_uid = str(uuid.uuid4())
    try:
        stack.start_daemon()
        pull = stack.start("pull")
        sim = stack.start(
            "sim", "--frames", str(frames), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE
        )
        wait_for(
            lambda: stack.status()["upstream"].get("chunks_acked", 0) >= 30, 120, "30 chunks acknowledged"
        )
        pull.send_signal(signal.SIGKILL)
        pull.wait(10)
        acked_before = stack.status()["upstream"]["chunks_acked"]
        stack.start("pull")
        out, _ = sim.communicate(timeout=180)
        assert json.loads(out.strip().splitlines()[-1])["frames_sent"] == frames

        def delivered() -> bool:
            run = stack.run(run_uid)
            done = run["ended_at"] is not None and all(f["state"] == "verified" for f in run["files"])
            return done and sum(f["n_frames"] for f in run["files"]) == frames

        wait_for(delivered, 180, "every file of the run verified")
        status = stack.status()
        where = stack.run(run_uid)["where"]
        assert where["bytes_pending"] == 0 and where["frames_delivered"] == frames
        assert status["upstream"]["consumer_reconnects"] >= 1
        assert status["upstream"]["chunks_acked"] > acked_before
        assert status["frames"]["lost"] == 0
    finally:
        stack.stop_all()
    found = upstream_frames(tmp_path / "upstream" / run_uid)
    assert sorted(found) == list(range(frames))
    assert not list((tmp_path / "upstream").rglob("*.part"))


def test_status_counts_the_newest_run_after_runs_nobody_watched(tmp_path: Path) -> None:
    """``counts.run`` in ``/api/status`` is the open run, else the one that started last, even when no
    status was asked while the later runs went by."""
    stack = EdgeStack(tmp_path, ["detector.height=64", "detector.width=64", 'reduction.mode="raw"'])
    try:
        stack.start_daemon()
        first = stack.status()["counts"]["run"]["run_uid"]
        assert first is None  # no run yet
        uids = []
        for frames in (3, 5):
            sim = stack.start("sim", "--frames", str(frames), stdout=subprocess.DEVNULL)
            assert sim.wait(60) == 0
            runs = wait_for(
                lambda: [
                    r for r in get_json(stack.url + "/api/runs") if r["run_uid"] not in uids and r["ended_at"]
                ],
                60,
                "the run to end",
            )
            uids.append(runs[0]["run_uid"])
            assert stack.status()["counts"]["run"]["run_uid"] == uids[-1]  # watched after it ended
        run = stack.status()["counts"]["run"]
        assert run["run_uid"] == uids[1] and run["active"] is False
        assert run["frames_stored"] == 5
        assert run["frames_received"] == 5  # this daemon's receiver counted the run's own frames
        daemon = stack.procs[0]
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(30) == 0
        stack.start_daemon()
        assert "frames_received" not in stack.status()["counts"]["run"]  # not counted by this daemon
    finally:
        stack.stop_all()
