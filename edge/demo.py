"""``edge demo``: the simulator, the daemon, an upstream pull client and the dashboard, on 127.0.0.1.

Each component runs as its own process, exactly as it would on a beamline, configured from the same
settings. With ``--frames N`` the demo sends one bounded series, waits until every frame is delivered
upstream (or accounted for as lost) and prints a summary; otherwise it streams until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from edge.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_or_free(port: int) -> int:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _endpoint_port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Components:
    """The demo's child processes; stops them all, in order, whatever happens."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, argv: list[str], capture: bool = False) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", *argv],
            stdout=subprocess.PIPE if capture else sys.stderr,  # our stdout carries only the summary
            text=True,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops children in order
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 30.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in ("sim", "pull", "daemon"):
            self.stop(name)


def _wait(predicate: Any, timeout: float, what: str, procs: Components) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.procs.items():
            if name != "sim" and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_demo(args: argparse.Namespace, settings: Settings, flags: list[str] | None = None) -> int:
    """Run the demo; ``flags`` are the settings its own flags set (transport, faults), for every child."""
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stream_port = _port_or_free(_endpoint_port(settings.sim.endpoint))
    upstream_port = _port_or_free(_endpoint_port(settings.upstream.endpoint))
    api_port = _port_or_free(settings.api.port)
    udp_port = _port_or_free(settings.udp.port)
    udp = settings.stream.transport == "udp"
    base = [
        f'sim.endpoint="tcp://127.0.0.1:{stream_port}"',
        f'stream.endpoint="tcp://127.0.0.1:{stream_port}"',
        f'upstream.endpoint="tcp://127.0.0.1:{upstream_port}"',
        f'pull.endpoint="tcp://127.0.0.1:{upstream_port}"',
        f"api.port={api_port}",
        f"udp.port={udp_port}",
        f'store.path="{workdir / "store"}"',
        f'pull.output="{workdir / "upstream"}"',
    ]
    common: list[str] = ["--log-level", "WARNING"]
    if args.config is not None:
        common += ["--config", str(args.config)]
    for item in [*base, *args.overrides, *(flags or [])]:
        common += ["--set", item]
    if udp and args.frames:  # the control system arms the detector for N frames
        common += ["--set", f"udp.frames_per_run={args.frames}"]
    url = f"http://127.0.0.1:{api_port}"
    run_uid = str(uuid.uuid4())
    procs = Components()
    started = time.monotonic()

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)  # `kill` stops the components as Ctrl-C does
    try:
        procs.start("daemon", ["run", *common])
        _wait(lambda: get_json(url + "/api/status"), 120, "the daemon's API", procs)
        procs.start("pull", ["pull", *common])
        sim_argv = ["sim", *common, "--frames", str(args.frames), "--run-uid", run_uid, "--json"]
        sim = procs.start("sim", sim_argv, capture=True)
        print(
            f"edge demo: dashboard {url}/  (data in {workdir})",
            file=sys.stderr if args.json else sys.stdout,
            flush=True,
        )
        if args.frames == 0:
            try:
                while all(p.poll() is None for p in procs.procs.values()):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                print("edge demo: stopping", flush=True)
            return 0
        out, _ = sim.communicate(timeout=args.timeout)
        sent = json.loads(out.strip().splitlines()[-1])
        frames_sent = int(sent["frames_sent"])

        if udp:  # UDP carries no run uid: the daemon names the run it opened
            runs = _wait(lambda: get_json(url + "/api/runs"), 60, "the UDP run to open", procs)
            run_uid = runs[-1]["run_uid"]

        def settled() -> dict[str, Any] | None:
            run = get_json(f"{url}/api/runs/{run_uid}")
            if run.get("ended_at") is None:
                return None
            totals = run["totals"]  # the ledger's accounting (Ledger.run_totals), read, not recounted
            stored, delivered = totals["frames_stored"], totals["frames_delivered"]
            lost = totals["frames_lost"]
            if delivered + lost < frames_sent or delivered < stored:
                return None
            incomplete = totals["frames_incomplete"]
            records = totals["loss_records"]
            return {
                "stored": stored,
                "delivered": delivered,
                "lost": lost,
                "incomplete": incomplete,
                "records": records,
            }

        result = _wait(settled, args.timeout, "every frame to be delivered upstream", procs)
        status = get_json(url + "/api/status")
        summary = {
            "frames_sent": frames_sent,
            "frames_received": int(status["receiver"].get("frames_received", 0)),
            "frames_stored": result["stored"],
            "frames_delivered": result["delivered"],
            "frames_lost": result["lost"],
            "frames_incomplete": result["incomplete"],
            "loss_records": result["records"],
            "seconds": round(time.monotonic() - started, 3),
            "run_uid": run_uid,
            "transport": settings.stream.transport,
            "sim": sent,
            "dashboard": url + "/",
            "store": str(workdir / "store"),
            "upstream": str(workdir / "upstream"),
        }
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            for key, value in summary.items():
                print(f"{key:>18}: {value}")
        return 0 if summary["frames_delivered"] + summary["frames_lost"] == frames_sent else 1
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()
