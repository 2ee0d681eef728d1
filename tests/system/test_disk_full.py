"""A disk that really fills (issue 12, hole 3): a small tmpfs holds the store and the ledger.

Frames that cannot be written become ``disk_full`` loss records, the open file is quarantined, the
alarm is raised, a new run is refused, writing resumes by itself when space returns, and SIGTERM stays
prompt. CI runs as root and can mount; there a failed mount is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgeprocs import EdgeStack, wait_for

pytestmark = pytest.mark.timeout(180)

DISK_MIB = 48
# raw frames of 256^2 in files of 10: a run of a few MiB fills a disk left nearly full
SMALL_RAW_RUN = [
    "detector.height=256",
    "detector.width=256",
    "store.frames_per_file=10",
    "store.file_seconds=600",
    'reduction.mode="raw"',
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must be able to mount a tmpfs for this test: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(ballast: Path, leave: int) -> None:
    """Take the disk holding ``ballast`` (allocated, not sparse) until ``leave`` bytes are free."""
    disk = os.statvfs(ballast.parent)
    with open(ballast, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, disk.f_bavail * disk.f_frsize - leave)


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
        status = stack.status()
        assert status["store"]["disk_full"]["full"], status["store"]
        assert any(a["source"] == "condition:disk_full" for a in status["alarms"]), status["alarms"]
        assert list((store / "quarantine").rglob("*.part")) or totals["frames_lost_by_reason"]["disk_full"]
        # while the disk is full a new run is refused, its frames recorded with the reason
        second, sent2 = _send(stack, 5)
        refused = _ended(stack, second)
        assert refused["exit_status"] == "abort" and refused["totals"]["frames_lost"] == sent2
        assert "disk is full" in refused["losses"][0]["detail"]
        # space returns: writing resumes by itself, no restart
        ballast.unlink()
        wait_for(lambda: not stack.status()["store"]["disk_full"]["full"], 30, "the disk-full state to clear")
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
