"""``edge bench --json`` hands every flag to benchmarks/kernels.py and prints the documented object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_edge_bench_json_prints_rows_with_their_checks() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge", "bench", "--json", "--repeats", "2", "--only", "correct"],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)["rows"]
    assert len(rows) == 1
    keys = {"workload", "ours", "reference", "ratio", "target", "target_met", "check", "check_passed"}
    assert keys <= set(rows[0])
    assert rows[0]["check_passed"] is True  # equal to the NumPy reference, in the same run


def test_a_killed_benchmark_stops_what_it_started() -> None:
    """``kill`` of a benchmark left its daemon, pull client and simulator running (Python's default
    SIGTERM ends at once, skipping ``finally``): the benchmarks call ``exit_on_sigterm`` first."""
    import signal

    code = (
        "import time\n"
        "from edge.demo import exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        "try:\n"
        "    print('started', flush=True)\n"
        "    time.sleep(60)\n"
        "finally:\n"
        "    print('stopped what it started', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "stopped what it started" and proc.returncode == 128 + signal.SIGTERM
    for name in ("modes", "e2e", "ingest", "soak", "preview_latency", "dashboard_subscribers"):
        text = (ROOT / "benchmarks" / f"{name}.py").read_text()
        assert "    exit_on_sigterm()" in text, name
