"""The command line at its edges: a simulator whose endpoint another one holds, and `edge where` read
by a pipe that closes early. One line and an exit status, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from edgeprocs import EdgeStack

from edge.ledger import Ledger


def test_a_second_simulator_on_a_taken_endpoint_says_so_and_exits_2(tmp_path: Path) -> None:
    stack = EdgeStack(tmp_path, ["sim.rate_hz=5", "detector.height=16", "detector.width=16"])
    try:
        first = stack.start("sim", "--frames", "0", stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # bound
        assert first.poll() is None
        second = stack.start("sim", "--frames", "1", stderr=subprocess.PIPE)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert "edge sim: cannot send" in err and "another simulator or sender has it" in err, err
        assert "Traceback" not in err, err
    finally:
        stack.stop_all()


def test_edge_where_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ledger = Ledger(store / "ledger.sqlite")
    ledger.run_started("run-1", 1, 100_000, "{}")
    for frame in range(0, 20_000, 2):  # a long report: many loss ranges
        ledger.record_loss("run-1", frame, frame, f"reason_{frame % 7}", "x")
    ledger.run_ended("run-1", "fail", 0)
    ledger.close()
    command = [sys.executable, "-m", "edge", "where", "run-1", "--set", f'store.path="{store}"']
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
