"""Dashboards never slow ingest: the daemon's CPU per frame with 0 and with 5 live subscribers, one run.

Starts the daemon (``edge run``), the pull client and a paced simulator (``edge sim``, endless), lets
the run warm up, then alternates phases of ``--phase`` seconds without and with ``--subscribers``
Server-Sent Event clients on ``/api/events`` (plain HTTP clients reading the stream, as many pages
would; not browsers), for ``--cycles`` cycles, all in the same run. Per phase: the daemon process's
CPU seconds (user + system, psutil) over the frames it received in the phase (``/api/status`` read once
at each phase boundary, the same in both kinds of phase). Alternating cancels slow drift (the ledger
growing, other work on the machine). The verdict compares the mean CPU per frame with subscribers to
the mean without: within ``--tolerance`` (5 %) passes.

    python benchmarks/dashboard_subscribers.py [--phase 20] [--cycles 2] [--rate 50] [--json]

Results go to ``benchmarks/results/dashboard-subscribers.{json,txt}``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from edge.demo import exit_on_sigterm, free_port

RESULTS = Path(__file__).resolve().parent / "results"


def _port() -> int:
    return free_port()  # below the ephemeral range: no outgoing connection takes it meanwhile


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/api/status", timeout=10) as response:
        return dict(json.loads(response.read()))


class Subscriber(threading.Thread):
    """One live-update client: reads /api/events until stopped, counting the events."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.events = 0
        self.bytes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("GET", "/api/events", headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200, response.status
        while not self.stop.is_set():
            line = response.fp.readline()
            if not line:
                break
            self.bytes += len(line)
            if line.startswith(b"event:"):
                self.events += 1
        conn.close()


def main() -> int:
    exit_on_sigterm()  # a kill stops the processes this started
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--cycles", type=int, default=2, help="(0 subscribers, N subscribers) pairs")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50.0, help="simulated frames per second")
    parser.add_argument("--size", type=int, default=512, help="frame height and width")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="edge-dash-bench-"))
    stream, upstream, api = _port(), _port(), _port()
    settings = [
        f'sim.endpoint="tcp://127.0.0.1:{stream}"',
        f'stream.endpoint="tcp://127.0.0.1:{stream}"',
        f'upstream.endpoint="tcp://127.0.0.1:{upstream}"',
        f'pull.endpoint="tcp://127.0.0.1:{upstream}"',
        f"api.port={api}",
        f'store.path="{root / "store"}"',
        f'pull.output="{root / "upstream"}"',
        f"sim.rate_hz={args.rate}",
        "sim.frames=0",
        f"detector.height={args.size}",
        f"detector.width={args.size}",
    ]
    common = ["--log-level", "WARNING"]
    for item in settings:
        common += ["--set", item]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    url = f"http://127.0.0.1:{api}"
    phases: list[dict[str, Any]] = []
    try:
        procs["daemon"] = subprocess.Popen([sys.executable, "-m", "edge", "run", *common], env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                _status(url)
                break
            except OSError:
                if procs["daemon"].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not come up") from None
                time.sleep(0.2)
        procs["pull"] = subprocess.Popen([sys.executable, "-m", "edge", "pull", *common], env=env)
        procs["sim"] = subprocess.Popen([sys.executable, "-m", "edge", "sim", *common], env=env)
        daemon = psutil.Process(procs["daemon"].pid)
        time.sleep(args.warmup)  # the run settles (a benchmark's warm-up, not a synchronisation)
        run_uid = _status(url)["appliance"]["run_uid"]
        for cycle in range(args.cycles):
            for watchers in (0, args.subscribers):
                subs = [Subscriber(api) for _ in range(watchers)]
                for sub in subs:
                    sub.start()
                time.sleep(min(2.0, args.phase / 5))  # the subscribers connect before the phase counts
                before = _status(url)["frames"]["received"]
                cpu0 = daemon.cpu_times()
                t0 = time.monotonic()
                time.sleep(args.phase)
                cpu1 = daemon.cpu_times()
                after = _status(url)
                elapsed = time.monotonic() - t0
                for sub in subs:
                    sub.stop.set()
                for sub in subs:
                    sub.join(10)
                frames = after["frames"]["received"] - before
                cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
                phases.append(
                    {
                        "cycle": cycle,
                        "subscribers": watchers,
                        "seconds": round(elapsed, 2),
                        "frames": frames,
                        "cpu_seconds": round(cpu, 3),
                        "cpu_ms_per_frame": round(1000 * cpu / max(frames, 1), 3),
                        "events_per_subscriber": [s.events for s in subs],
                        "same_run": after["appliance"]["run_uid"] == run_uid,
                    }
                )
    finally:
        for name in ("sim", "pull", "daemon"):
            proc = procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def mean(watchers: int) -> float:
        rows = [p for p in phases if p["subscribers"] == watchers]
        return sum(p["cpu_seconds"] for p in rows) * 1000 / max(1, sum(p["frames"] for p in rows))

    quiet, watched = mean(0), mean(args.subscribers)
    ratio = watched / quiet if quiet else float("nan")
    report = {
        "rate_hz": args.rate,
        "frame": [args.size, args.size],
        "phase_seconds": args.phase,
        "subscribers": args.subscribers,
        "phases": phases,
        "cpu_ms_per_frame_0": round(quiet, 3),
        "cpu_ms_per_frame_n": round(watched, 3),
        "ratio": round(ratio, 4),
        "all_in_one_run": all(p["same_run"] for p in phases),
        "subscribers_got_events": all(
            all(e > 0 for e in p["events_per_subscriber"]) for p in phases if p["subscribers"]
        ),
        "within_tolerance": abs(ratio - 1) <= args.tolerance,
        "tolerance": args.tolerance,
    }
    lines = [
        f"daemon CPU per frame, {args.size}x{args.size} at {args.rate:g} frames/s,"
        f" phases of {args.phase:g} s:",
        *(
            f"  cycle {p['cycle']} {p['subscribers']} subscribers: {p['frames']} frames, "
            f"{p['cpu_seconds']:.2f} CPU s, {p['cpu_ms_per_frame']:.3f} ms/frame,"
            f" events {p['events_per_subscriber']}"
            for p in phases
        ),
        f"  mean: {quiet:.3f} ms/frame with 0, {watched:.3f} ms/frame with {args.subscribers} subscribers"
        f" (ratio {ratio:.3f}; within {args.tolerance:.0%}: {report['within_tolerance']};"
        f" one run: {report['all_in_one_run']})",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dashboard-subscribers.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "dashboard-subscribers.txt").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0 if report["within_tolerance"] and report["subscribers_got_events"] else 1


if __name__ == "__main__":
    sys.exit(main())
