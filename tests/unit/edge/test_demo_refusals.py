"""``edge demo`` and ``edge sim`` refuse what they cannot do before starting anything: a tomography
scan over a transport that carries no image key or angle, a negative frame count, a timeout of 0
(a technician's probe saw each start every process first, or be accepted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["demo", "--mode", "tomo", "--transport", "udp"],
            "sim.mode = 'tomo' needs stream.transport = 'zmq'",
        ),
        (["demo", "--mode", "tomo", "--set", 'stream.format="stream2"'], "frames carry no image key"),
        (
            ["sim", "--set", 'sim.mode="tomo"', "--set", 'stream.transport="udp"'],
            "nothing would be reconstructed",
        ),
        (["demo", "--frames", "-1"], "-1 is negative"),
        (["demo", "--timeout", "0"], "must be a finite number of seconds above 0"),
        (["demo", "--timeout", "nan"], "must be a finite number of seconds above 0"),
    ],
)
def test_refused_before_anything_starts(tmp_path: Path, argv: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge", *argv, *(["--workdir", str(tmp_path)] if argv[0] == "demo" else [])],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "logs").exists()  # nothing was started
