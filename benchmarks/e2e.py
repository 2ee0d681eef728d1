"""End to end: ZeroMQ ingest -> reduce -> compress -> HDF5 -> acknowledged upstream, real processes.

Runs ``edge demo --frames N`` unpaced (the simulator sends as fast as the appliance takes frames, so
backpressure sets the rate), then reads the ledger: the rate is raw bytes of frames *verified upstream*
over the time from the run's start to the last file's verification. The ceiling is bitshuffle-LZ4
compression alone of the same frames in this process (one thread, as the pipeline does it), measured
in the same run. Correctness in the same run: every frame delivered, none lost. Target
(BENCHMARKS.md): >= 1 GB/s sustained for 60 s with zero loss and >= 0.5x the compress-only ceiling.

    python benchmarks/e2e.py [--frames N] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from hw_sim.frames import PowderFrames
from kernels import Geometry, compress_chunk


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edge-e2e-"))
    settings = [
        f'sim.endpoint="tcp://127.0.0.1:{_port()}"',
        f'upstream.endpoint="tcp://127.0.0.1:{_port()}"',
        f"api.port={_port()}",
        "sim.rate_hz=1000000",
        "store.frames_per_file=200",
        "store.chunk_bytes=16777216",
    ]
    argv_demo = [
        sys.executable,
        "-m",
        "edge",
        "demo",
        "--frames",
        str(args.frames),
        "--json",
        "--workdir",
        str(work),
    ]
    for item in settings:
        argv_demo += ["--set", item]
    done = subprocess.run(argv_demo, capture_output=True, text=True, timeout=3600)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    with sqlite3.connect(work / "store" / "ledger.sqlite") as db:
        started = db.execute("SELECT started_at FROM runs WHERE run_uid=?", (summary["run_uid"],)).fetchone()[
            0
        ]
        last_verified = db.execute(
            "SELECT MAX(verified_at) FROM files WHERE run_uid=? AND name LIKE '%.h5'", (summary["run_uid"],)
        ).fetchone()[0]
    frame_bytes = 1024 * 1024 * 2
    seconds = last_verified - started
    e2e = summary["frames_delivered"] * frame_bytes / seconds
    source = PowderFrames((1024, 1024), Geometry())
    frames = [source.frame(n) for n in range(32)]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for frame in frames:
            compress_chunk(frame)
        times.append(time.perf_counter() - t0)
    ceiling = len(frames) * frame_bytes / statistics.median(times)
    ok = summary["frames_delivered"] == args.frames and summary["frames_lost"] == 0
    row = {
        "workload": f"end to end 1024^2 uint16 x {args.frames}, ZMQ -> HDF5 -> verified upstream (GB/s)",
        "ours": round(e2e / 1e9, 3),
        "reference": round(ceiling / 1e9, 3),
        "reference_name": "bitshuffle-LZ4 compress alone, one thread",
        "ratio": round(e2e / ceiling, 3),
        "seconds": round(seconds, 1),
        "target": ">= 1 GB/s for 60 s and >= 0.5x",
        "target_met": bool(e2e >= 1e9 and seconds >= 60 and e2e / ceiling >= 0.5 and ok),
        "check": "every frame delivered upstream, none lost",
        "check_passed": ok,
    }
    if args.json:
        print(json.dumps({"rows": [row]}))
    else:
        for key, value in row.items():
            print(f"{key:>15}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
