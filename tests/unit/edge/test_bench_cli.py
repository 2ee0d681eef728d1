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
