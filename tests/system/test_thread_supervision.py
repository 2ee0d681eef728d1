"""No data-plane thread dies quietly (issue 12): an error injected into a thread's real loop is recorded,
shown as an alarm, and the thread restarts; a thread out of restarts makes the daemon exit non-zero.

Injection is the daemon's own `supervision.inject_error = "NAME:N"` (raise at thread NAME's Nth loop).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from edgeprocs import EdgeStack, wait_for

pytestmark = pytest.mark.timeout(150)

FRAMES = 40


def _run_series(stack: EdgeStack) -> tuple[str, int]:
    run_uid = str(uuid.uuid4())
    sim = stack.start("sim", "--frames", str(FRAMES), "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
    out, _ = sim.communicate(timeout=90)
    sent = int(json.loads(out.strip().splitlines()[-1])["frames_sent"])
    return run_uid, sent


@pytest.mark.parametrize(
    ("thread", "at"),
    [("reader", 30), ("pipeline", 15), ("pipeline-writer", 15), ("forwarder", 10), ("retention", 2)],
)
def test_a_failing_thread_is_recorded_alarmed_and_restarted(tmp_path: Path, thread: str, at: int) -> None:
    stack = EdgeStack(
        tmp_path,
        [
            "sim.rate_hz=50",
            "store.frames_per_file=10",
            "reduction.bins=100",
            f'supervision.inject_error="{thread}:{at}"',
            "supervision.restart_backoff_seconds=0.1",
        ],
    )
    try:
        stack.start_daemon()
        stack.start("pull")
        run_uid, sent = _run_series(stack)
        assert sent == FRAMES

        def settled() -> dict | None:
            run = stack.run(run_uid)
            totals = run["totals"]
            if run["ended_at"] is None or totals["frames_delivered"] + totals["frames_lost"] < sent:
                return None
            return totals

        totals = wait_for(settled, 90, "every frame delivered or recorded as lost")
        # nothing vanished: every frame sent is stored (and delivered) or a loss record with a reason
        assert totals["frames_stored"] + totals["frames_lost"] == sent, totals
        status = stack.status()
        state = status["appliance"]["threads"][thread]
        assert state["errors"] == 1 and state["restarts"] == 1, state
        assert state["state"] == "running" and "injected error" in state["last_error"], state
        alarms = [a for a in status["alarms"] if a["source"] == f"thread:{thread}"]
        assert alarms and alarms[0]["severity"] == "minor", status["alarms"]
    finally:
        stack.stop_all()


def test_a_thread_out_of_restarts_stops_the_daemon_non_zero(tmp_path: Path) -> None:
    stack = EdgeStack(
        tmp_path,
        ['supervision.inject_error="pipeline:5"', "supervision.max_restarts=0"],
    )
    try:
        daemon = stack.start("run", stderr=subprocess.PIPE)
        _, err = daemon.communicate(timeout=90)
        assert daemon.returncode == 3, err[-2000:]
        assert "thread pipeline failed" in err and "exiting with status 3" in err, err[-2000:]
    finally:
        stack.stop_all()
