"""``edge demo`` as ``make demo`` runs it: prints the dashboard URL, serves the page, stops cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
from edgeprocs import free_port, get_json, wait_for


def test_demo_prints_dashboard_url_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    argv = [sys.executable, "-m", "edge", "demo", "--workdir", str(tmp_path), "--rate", "5"]
    for item in (
        f'sim.endpoint="tcp://127.0.0.1:{ports[0]}"',
        f'upstream.endpoint="tcp://127.0.0.1:{ports[1]}"',
        f"api.port={ports[2]}",
    ):
        argv += ["--set", item]
    log = open(tmp_path / "demo.log", "w")  # noqa: SIM115 - closed in finally
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    children: list[psutil.Process] = []
    try:
        line = ""
        while "dashboard" not in line:
            line = demo.stdout.readline()
            assert line, (
                "demo ended without printing the dashboard URL:\n"
                + (tmp_path / "demo.log").read_text()[-3000:]
            )
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert url == f"http://127.0.0.1:{ports[2]}/"
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "edge appliance" in page
        wait_for(lambda: get_json(url + "api/status")["frames"]["received"] >= 3, 60, "frames flowing")
        children = psutil.Process(demo.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in children]
        for role in ("edge run", "edge pull", "edge sim"):  # (plus multiprocessing's resource tracker)
            assert any(role in command for command in commands), commands
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {alive}"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for child in children:  # never leave components behind, even when the test failed
            if child.is_running():
                child.kill()
        demo.stdout.close()
        log.close()
