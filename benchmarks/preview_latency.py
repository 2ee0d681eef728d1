"""Frame to dashboard preview latency: from the detector's timestamp to the preview a browser receives.

Starts ``edge demo`` (simulator, daemon, pull client) with the simulator at full rate (``--rate 0``:
unpaced, as fast as the appliance takes frames, so the appliance is saturated and backpressure sets
the rate; or a rate in Hz), then subscribes to ``/api/events`` as the dashboard does (Server-Sent
Events; the live image is pushed when a new frame is there, at most every ``webui.live.PREVIEW_SECONDS``)
and, for each preview pushed, takes ``now - detector_timestamp_ns`` (the simulator stamps each image
with its wall-clock send time; all on one machine, one clock). Also shown: how much of that is the
frame's way to the receiver (``received_at``) and how old the preview was when pushed. Target
(BENCHMARKS.md): < 200 ms at full rate, taken here as the 95th percentile. ``--json`` prints one object.

    python benchmarks/preview_latency.py [--rate HZ] [--seconds S] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from edge.demo import exit_on_sigterm, free_port


def _port() -> int:
    return free_port()  # below the ephemeral range: no outgoing connection takes it meanwhile


def frames_received(status_url: str) -> int:
    with urllib.request.urlopen(status_url, timeout=5) as response:
        return int(json.loads(response.read())["frames"]["received"])


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()  # a kill stops the processes this started
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.0, help="frames/s; 0 = full rate (unpaced)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    api = _port()
    work = Path(tempfile.mkdtemp(prefix="edge-latency-"))
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "demo",
            "--workdir",
            str(work),
            "--rate",
            str(args.rate or 1_000_000),
            "--set",
            f"api.port={api}",
            "--set",
            f'sim.endpoint="tcp://127.0.0.1:{_port()}"',
            "--set",
            f'upstream.endpoint="tcp://127.0.0.1:{_port()}"',
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{api}/api/preview"
    status_url = f"http://127.0.0.1:{api}/api/status"
    received: list[tuple[float, int]] = []  # (when, frames the receiver had) at the window's ends
    latencies: list[float] = []
    arrival: list[float] = []  # detector timestamp -> the receiver has the frame
    pushed: list[float] = []  # the receiver has the frame -> the appliance pushes its preview
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # wait for the first frame
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        events = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
        events.request("GET", "/api/events", headers={"Accept": "text/event-stream"})
        stream = events.getresponse()
        stop = time.monotonic() + args.seconds
        received.append((time.monotonic(), frames_received(status_url)))
        kind = ""
        while time.monotonic() < stop:
            line = stream.fp.readline()
            if line.startswith(b"event: "):
                kind = line[7:].strip().decode()
            elif line.startswith(b"data: ") and kind == "preview":
                now_ns = time.time_ns()
                preview = json.loads(line[6:])
                if preview.get("detector_timestamp_ns"):
                    latencies.append((now_ns - preview["detector_timestamp_ns"]) / 1e6)
                    arrival.append((preview["received_at"] * 1e9 - preview["detector_timestamp_ns"]) / 1e6)
                    pushed.append(preview["age_seconds"] * 1e3)
        events.close()
        received.append((time.monotonic(), frames_received(status_url)))
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(120)
        shutil.rmtree(work, ignore_errors=True)  # a full-rate run stores gigabytes
    latencies.sort()
    rate = (received[1][1] - received[0][1]) / (received[1][0] - received[0][0])
    rate_name = f"{args.rate:g} frames/s" if args.rate else "full rate"
    result = {
        "workload": f"frame to dashboard preview at {rate_name} (ms)",
        "frames_per_second": round(rate, 1),
        "median_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "max_ms": round(latencies[-1], 1),
        "samples": len(latencies),
        "median_arrival_ms": round(statistics.median(arrival), 1),
        "median_push_ms": round(statistics.median(pushed), 1),
        "target": "< 200 ms",
        "target_met": latencies[int(0.95 * (len(latencies) - 1))] < 200,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k:>12}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
