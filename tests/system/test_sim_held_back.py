"""System test: the simulator counts the time a consumer holds it back, a send still blocked included.

``edge sim`` as a process with nobody reading its stream: the very first send (the series header)
blocks for good. Its progress lines must show the held-back time growing while the send is still
blocked, and after SIGINT its summary must count the whole wait, although no send ever completed.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest
from edgeprocs import EdgeStack

pytestmark = pytest.mark.timeout(60)


def _lines(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    """stderr lines of ``proc`` until one says it was held back for at least 1.5 s (or the deadline)."""
    assert proc.stderr is not None
    lines: list[str] = []
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines += [line.decode(errors="replace") for line in done]
                held = [
                    float(m.group(1)) for line in lines if (m := re.search(r"held back ([0-9.]+) s", line))
                ]
                if held and held[-1] >= 1.5:
                    return lines
    pytest.fail(f"no progress line held back >= 1.5 s: {lines}")


def test_a_send_still_blocked_counts_as_held_back(tmp_path: Path) -> None:
    stack = EdgeStack(tmp_path, ["sim.rate_hz=100"])
    started = time.monotonic()
    sim = stack.start("sim", "--frames", "0", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = _lines(sim, time.monotonic() + 30)
        assert all("0 frames sent" in line for line in lines if "held back" in line)  # still the first send
        sim.send_signal(signal.SIGINT)
        out, _ = sim.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        stack.stop_all()
        if sim.stderr is not None:
            sim.stderr.close()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames_sent"] == 0 and summary["stopped_early"] is True
    assert summary["end_sent"] is False  # held back: the series stays open until the next one starts
    # everything after the sender was up was spent waiting for a consumer: header, then the series end
    assert summary["seconds_held_back"] >= 1.5
    assert summary["seconds_held_back"] <= elapsed + 0.5


def test_a_stop_while_the_simulator_starts_ends_it_with_its_account(tmp_path: Path) -> None:
    """An outside probe: a demo's Ctrl-C while its simulator still imported ended the simulator with a
    KeyboardInterrupt traceback (the demo then called it the simulator's crash). The simulator notes a
    SIGINT from its first moment, as the daemon does, and stops with its summary: nothing sent."""
    stack = EdgeStack(tmp_path, ["sim.rate_hz=100"])
    sim = stack.start("sim", "--frames", "50", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.15)  # still importing (about a second)
        sim.send_signal(signal.SIGINT)
        out, err = sim.communicate(timeout=30)
    finally:
        stack.stop_all()
    assert sim.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames_sent"] == 0 and summary["stopped_early"] is True
