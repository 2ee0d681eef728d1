"""``edge demo`` and ``edge sim`` refuse what they cannot do before starting anything: a tomography
scan over a transport that carries no image key or angle, a fault the carrier does not inject, a negative
frame count, a timeout of 0 (a technician's probe saw each start every process first, or be accepted)."""

from __future__ import annotations

import json
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
        # a fault the carrier cannot inject is refused, never left out without a word
        (["demo", "--reorder", "0.1"], "sim.reorder: not a fault stream.format = 'json' can inject"),
        (
            ["sim", "--set", 'stream.format="stream2"', "--burst", "4"],
            "sim.burst: not a fault stream.format = 'stream2' can inject",
        ),
        (["sim", "--set", "sim.truncate=0.1"], "it injects: sim.loss, sim.duplicate"),
        (["sim", "--ioc", "--loss", "0.1"], "not a fault edge sim --ioc can inject (it injects: none"),
        (["sim", "--transport", "udp", "--set", "sim.missing_end=true"], "sim.missing_end: not a fault UDP"),
        (["sim", "--transport", "udp", "--format", "stream2"], "is a format of the ZeroMQ stream"),
        # UDP carries no run uid: the flag was taken without a word, and --json had none
        (["sim", "--transport", "udp", "--run-uid", "x1"], "UDP packets carry no run uid"),
        (["keys", "never-made", "bad/name"], "key name 'bad/name': 1 to 64 letters"),
        (
            ["demo", "--format", "stream2", "--set", "sim.missing_end=true"],
            "sim.missing_end never ends the series, and the demo waits for its run to end",
        ),
        # a bad value given by a flag names the flag beside the setting it sets
        (["sim", "--modules", "0"], "udp.grid_cols = 0 (--modules): Input should be greater than"),
        (["sim", "--rate", "-1"], "sim.rate_hz = -1.0 (--rate): Input should be greater than 0"),
        (["demo", "--burst", "-2"], "sim.burst = -2 (--burst): "),
        # ...and only the flag: it had also been said to come from "--set pull.consumer" (an outside probe)
        (
            ["pull", "--consumer", "bad name!"],
            "pull.consumer = 'bad name!' (--consumer): String should match",
        ),
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
    assert "(from --set" not in result.stderr, result.stderr[-2000:]  # a flag was used, not --set
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_a_refused_json_demo_still_prints_one_json_object(tmp_path: Path) -> None:
    """An outside probe: ``edge demo --mode tomo --format stream2 --json`` (angles given) was refused
    with a line on stderr only; a script reading the last line of stdout found nothing."""
    argv = [
        "demo",
        "--mode",
        "tomo",
        "--set",
        'stream.format="stream2"',
        "--json",
        "--workdir",
        str(tmp_path),
    ]
    argv += ["--set", "reduction.tomo.angle_start=0", "--set", "reduction.tomo.angle_step=1"]
    result = subprocess.run(
        [sys.executable, "-m", "edge", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert (
        "frames carry no image key" in answer["error"]
        and "the simulator's darks and flats" in answer["error"]
    )
    assert answer["run_uid"] is None


def test_a_demo_whose_daemon_refuses_to_start_says_the_daemons_reason(tmp_path: Path) -> None:
    """An outside probe: a second demo on a workdir whose store another daemon serves ended with the
    JSON error "daemon exited unexpectedly (status 2)" alone; the daemon's reason was in its log only."""
    from edge.daemon_lock import DaemonLock
    from edge.demo import free_port

    lock = DaemonLock(tmp_path / "store" / "ledger.sqlite")  # as the first demo's daemon holds it
    assert lock.acquire()
    try:
        stream, upstream, api, udp = (free_port() for _ in range(4))
        overrides = [
            f'sim.endpoint="tcp://127.0.0.1:{stream}"',
            f'upstream.endpoint="tcp://127.0.0.1:{upstream}"',
            f"api.port={api}",
            f"udp.port={udp}",
        ]
        argv = ["demo", "--frames", "5", "--json", "--workdir", str(tmp_path)]
        for item in overrides:
            argv += ["--set", item]
        result = subprocess.run(
            [sys.executable, "-m", "edge", *argv], capture_output=True, text=True, timeout=180, cwd=ROOT
        )
    finally:
        lock.release()
    assert result.returncode != 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["error"].startswith(
        "daemon exited unexpectedly (status 2): cannot start: another daemon"
    ), answer
    assert "serves the ledger" in answer["error"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["sim", "--frames", "5", "--reorder", "0.1", "--json"], "not a fault"),
        (["sim", "--json", "--set", "udp.port=-1"], "udp.port = -1"),
        (["demo", "--json", "--set", "udp.port=-1"], "udp.port = -1"),
        (["where", "x", "--json", "--set", "udp.port=-1"], "udp.port = -1"),
        # a flag argparse itself refuses (an outside probe: stdout empty)
        (["demo", "--frames", "-5", "--json"], "argument --frames: -5 is negative"),
        (["demo", "--timeout", "0", "--json"], "argument --timeout"),
        # a UDP layout over the ZeroMQ stream (an outside probe: taken without a word)
        (["demo", "--modules", "2", "--json"], "--modules 2 lays out the UDP detector's modules"),
        (["sim", "--modules", "2", "--json"], "it changes nothing: add --transport udp"),
    ],
)
def test_a_command_refused_before_it_ran_still_prints_one_json_object(
    tmp_path: Path, argv: list[str], says: str
) -> None:
    """An outside technician: ``edge sim --reorder 0.1 --json`` on the JSON stream was refused with a
    line on stderr and nothing on stdout (a script parsing it got empty input); a bad setting did the
    same for sim, demo and where."""
    extra = ["--workdir", str(tmp_path)] if argv[0] == "demo" else []
    result = subprocess.run(
        [sys.executable, "-m", "edge", *argv, *extra], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    answer = json.loads(lines[0])
    assert says in answer["error"] and answer["run_uid"] is None, answer
    assert says in result.stderr  # (and said where a person looks)


@pytest.mark.parametrize("command", ["demo", "keys"])
def test_a_regular_file_where_a_directory_goes_is_one_line(tmp_path: Path, command: str) -> None:
    """An outside probe: `edge demo --workdir FILE` ended in a traceback (no JSON despite --json), and
    `edge keys FILE name` said only "[Errno 17] File exists"."""
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    argv = (
        ["demo", "--workdir", str(afile), "--frames", "5", "--json"]
        if command == "demo"
        else ["keys", str(afile), "srv"]
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert ("cannot hold the demo's files" if command == "demo" else "is not a directory") in result.stderr
    if command == "demo":
        assert "cannot hold" in json.loads(result.stdout.strip().splitlines()[-1])["error"]
