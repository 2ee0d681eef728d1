"""``edge demo``'s terminal: component logs go to files, a dead component is named and ends the demo
non-zero, and Ctrl-C stops the simulator first and delivers every stored file before the summary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the bitshuffle filter for reading back)
import psutil
import pytest
from edgeprocs import get_json, loopback_overrides, wait_for

SMALL = ["detector.height=256", "detector.width=256", "reduction.bins=100"]


def _start_demo(workdir: Path, *flags: str, overrides: list[str]) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "edge", "demo", "--workdir", str(workdir), *flags]
    for item in [*overrides, *SMALL]:
        argv += ["--set", item]
    api_port = next(item.split("=")[1] for item in overrides if item.startswith("api.port="))
    with open(workdir.parent / f"{workdir.name}-demo.err", "w") as err:  # the child keeps its own copy
        demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    return demo, f"http://127.0.0.1:{api_port}"


def _children(demo: subprocess.Popen[str]) -> dict[str, psutil.Process]:
    found = {}
    for child in psutil.Process(demo.pid).children(recursive=True):
        command = " ".join(child.cmdline())
        for role in ("run", "pull", "sim"):
            if f"-m edge {role} " in command:
                found[role] = child
    return found


def _cleanup(demo: subprocess.Popen[str], children: list[psutil.Process]) -> None:
    if demo.poll() is None:
        demo.kill()
        demo.wait()
    for child in children:  # never leave components behind, even when the test failed
        if child.is_running():
            child.kill()
    demo.stdout.close()


def test_a_component_killed_inside_the_demo_ends_it_non_zero_naming_it(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo, url = _start_demo(workdir, "--rate", "20", "--json", overrides=loopback_overrides())
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: get_json(url + "/api/status")["frames"]["received"] >= 5, 90, "frames flowing")
        roles = wait_for(lambda: _children(demo) if len(_children(demo)) == 3 else None, 30, "3 components")
        children = list(roles.values())
        roles["run"].kill()  # the daemon dies under the demo
        assert demo.wait(60) != 0
        # --json still ends with one JSON object, saying why (a script reading the last line found none)
        account = json.loads(demo.stdout.read().strip().splitlines()[-1])
        assert account["error"] == "daemon exited unexpectedly (killed by SIGKILL)", account
        assert account["logs"] == str(workdir / "logs")
        # and what is known by then: the run (to find with edge where) and what the simulator sent (an
        # outside probe read null for both beside a run with 300 frames stored)
        assert account["run_uid"] and isinstance(account["frames_sent"], int), account
        assert account["frames_sent"] >= 5
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {alive}"
    finally:
        _cleanup(demo, children)
    err = (tmp_path / "demo-demo.err").read_text()
    assert "edge demo: daemon exited unexpectedly (killed by SIGKILL)" in err, err[-3000:]
    assert f"last lines of {workdir / 'logs' / 'daemon.log'}" in err
    assert "appliance started" in err  # the tail of the daemon's own log, shown where the user looks
    for name in ("daemon", "pull", "sim"):
        assert (workdir / "logs" / f"{name}.log").stat().st_size > 0, name


def _frames_in(directory: Path) -> dict[int, str]:
    seen: dict[int, str] = {}
    for path in sorted(directory.glob("*.h5")):
        with h5py.File(path, "r") as handle:
            for number in handle["/entry/data/frame_number"][:]:
                assert int(number) not in seen, f"frame {number} twice"
                seen[int(number)] = path.name
    return seen


@pytest.mark.parametrize("announced", [0, 5000])
def test_ctrl_c_stops_the_simulator_first_and_delivers_every_stored_file(
    tmp_path: Path, announced: int
) -> None:
    """Also with ``--frames N``: the frames the series announced and the simulator never sent are recorded
    lost by the appliance (missing at the series' end), said as ``frames_not_sent``, and the stop is no
    failure (an outside probe's single Ctrl-C ended with exit 1 and no ``error``)."""
    workdir = tmp_path / "demo"
    overrides = [*loopback_overrides(), "store.frames_per_file=25", "store.file_seconds=600"]
    demo, url = _start_demo(
        workdir, "--rate", "50", "--frames", str(announced), "--json", overrides=overrides
    )
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: get_json(url + "/api/status")["frames"]["stored"] >= 50, 90, "two files stored")
        children = list(_children(demo).values())
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=90)
        assert demo.returncode == 0, (tmp_path / "demo-demo.err").read_text()[-3000:]
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {alive}"
    finally:
        _cleanup(demo, children)
    summary = json.loads(out.strip().splitlines()[-1])  # the same summary as a bounded --json run
    assert summary["sim"]["stopped_early"] is True and summary["stopped"] == "Ctrl-C"
    sent = summary["frames_sent"]
    assert sent >= 50
    assert summary["frames_stored"] == summary["frames_delivered"] == sent
    assert summary["frames_lost"] == summary["frames_not_sent"] == max(0, announced - sent), summary
    run = summary["run_uid"]
    stored = _frames_in(workdir / "store" / run)
    delivered = _frames_in(workdir / "upstream" / run)
    assert sorted(stored) == sorted(delivered) == list(range(sent))
    assert sorted(p.name for p in (workdir / "upstream" / run).glob("*.h5")) == sorted(
        p.name for p in (workdir / "store" / run).glob("*.h5")
    )
    err = (tmp_path / "demo-demo.err").read_text()
    assert "stopping the simulator" in err
    assert "sim: streaming" not in err  # the components' logs are in their files, not on the terminal
    assert "sim: streaming" in (workdir / "logs" / "sim.log").read_text()


def test_moving_the_daemons_stream_endpoint_moves_the_simulators_too(tmp_path: Path) -> None:
    """A README probe: `edge demo --set stream.endpoint=...` (the daemon's end of the frames) left the
    simulator on its default 5560 and the daemon waiting on the other port: nothing arrived, the demo
    hung. Both ends follow the one that was moved."""
    from edgeprocs import free_port, run_bounded_demo

    overrides = [item for item in loopback_overrides() if not item.startswith("sim.endpoint")]
    overrides.append(f'stream.endpoint="tcp://127.0.0.1:{free_port()}"')
    summary = run_bounded_demo(tmp_path / "demo", 20, [], [*overrides, *SMALL], timeout=240)
    assert summary["frames_sent"] == summary["frames_stored"] == 20 and summary["frames_lost"] == 0


@pytest.mark.parametrize("api", ["taken", "0"])
def test_a_taken_or_any_api_port_given_to_the_demo_is_one_it_can_reach(tmp_path: Path, api: str) -> None:
    """An outside probe: `edge demo --set api.port=P` with P taken ended with the daemon's "cannot
    listen" (the --set given again after the free port the demo chose), and `--set api.port=0` hung for
    good (the daemon took a port the demo never learnt). The demo picks a free one and says so."""
    import socket

    from edgeprocs import free_port, run_bounded_demo

    overrides = [item for item in loopback_overrides() if not item.startswith("api.port")]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        port = listener.getsockname()[1] if api == "taken" else 0
        summary = run_bounded_demo(
            tmp_path / "demo", 20, [], [*overrides, *SMALL, f"api.port={port}"], timeout=240
        )
    assert summary["frames_sent"] == summary["frames_stored"] == 20 and summary["frames_lost"] == 0


def test_ctrl_c_while_the_daemon_starts_still_ends_with_a_json_account(tmp_path: Path) -> None:
    """An outside probe: Ctrl-C while the daemon started (its kernels loading) ended a --json demo with
    exit 130 and nothing on stdout. It says why, in one JSON object, as any demo that did not finish."""
    workdir = tmp_path / "demo"
    demo, _url = _start_demo(workdir, "--json", overrides=loopback_overrides())
    try:
        time.sleep(0.5)  # (the daemon takes seconds to answer: still starting)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(120) == 130
        account = json.loads(demo.stdout.read().strip().splitlines()[-1])
    finally:
        _cleanup(demo, [])
    assert account["error"] == "stopped (Ctrl-C) while the daemon started and loaded its kernels", account
    assert account["run_uid"] is None and account["frames_sent"] is None
    # each component's log is appended to, this demo's part marked (earlier demos' logs stay)
    assert (workdir / "logs" / "daemon.log").read_text().startswith("--- edge demo (pid ")


def test_a_ctrl_c_while_the_demo_itself_starts_is_its_stopped_account(tmp_path: Path) -> None:
    """An outside probe: a Ctrl-C in the demo's first half second (still importing) ended it with a
    KeyboardInterrupt traceback and nothing on stdout. It is noted from the first moment, as the daemon's
    and the simulator's are: one JSON object saying when it stopped, exit 130, no traceback."""
    workdir = tmp_path / "demo"
    demo, _url = _start_demo(workdir, "--json", "--frames", "50", overrides=loopback_overrides())
    try:
        time.sleep(0.1)  # importing (about a second)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(120) == 130
        account = json.loads(demo.stdout.read().strip().splitlines()[-1])
        assert account["error"].startswith("stopped (Ctrl-C)"), account
    finally:
        _cleanup(demo, list(_children(demo).values()) if demo.poll() is None else [])
    err = (tmp_path / "demo-demo.err").read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
