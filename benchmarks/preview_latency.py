"""Frame to dashboard preview latency: from the detector's timestamp to the preview a browser fetches.

Starts ``edge demo`` (simulator, daemon, pull client) at ``--rate``, then fetches ``/api/preview`` as a
dashboard does and, for each new frame seen, takes ``now - detector_timestamp_ns`` (the simulator
stamps each image with its wall-clock send time; all on one machine, one clock). Target
(BENCHMARKS.md): < 200 ms at full rate. Prints median, 95th percentile and max; ``--json`` for one object.

    python benchmarks/preview_latency.py [--rate HZ] [--seconds S] [--json]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
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
            str(args.rate),
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
    latencies: list[float] = []
    seen = -1
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # wait for the first frame
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        stop = time.monotonic() + args.seconds
        while time.monotonic() < stop:
            with urllib.request.urlopen(url, timeout=2) as response:
                preview = json.loads(response.read())
            now_ns = time.time_ns()
            if preview["frame"] != seen and preview.get("detector_timestamp_ns"):
                seen = preview["frame"]
                latencies.append((now_ns - preview["detector_timestamp_ns"]) / 1e6)
            time.sleep(0.05)  # a dashboard polls; 20 Hz is faster than any screen needs
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(120)
    latencies.sort()
    result = {
        "workload": f"frame to dashboard preview at {args.rate:g} frames/s (ms)",
        "median_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "max_ms": round(latencies[-1], 1),
        "samples": len(latencies),
        "target": "< 200 ms",
        "target_met": latencies[int(0.95 * (len(latencies) - 1))] < 200,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k:>12}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
