"""End to end: ZeroMQ ingest -> reduce -> compress -> HDF5 -> acknowledged upstream, real processes.

Runs ``edge demo --frames N`` unpaced (the simulator sends as fast as the appliance takes frames, so
backpressure sets the rate), then reads the ledger: the rate is raw bytes of frames *verified upstream*
over the time from the run's start to the last file's verification. A short probe run first sizes N so
the measured run lasts ``--seconds`` (60 by default, as BENCHMARKS.md asks).

The ceiling is bitshuffle-LZ4 compression alone of the same frames in this process, on every core,
measured before and after the run (the better figure is kept). Correctness in the same run: every
frame sent is delivered and verified upstream by checksum, none lost.

The HPC side runs on this machine too. So that its disk does not compete with the appliance's (a real
centre stores on its own), the pull client writes to ``--upstream-dir`` (``/dev/shm`` when it has
room), and this script plays the centre's archive: files the ledger says were verified are removed
from there while the run goes on. The appliance's store stays on disk under a quota, and its
retention purges verified files as it would at a beamline. The disk's own sequential write rate
(with fsync) is measured too and printed, since every compressed byte is written there once.

    python benchmarks/e2e.py [--seconds 60] [--frames N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from hw_sim.frames import PowderFrames
from kernels import Geometry, compress_chunk

FRAME_BYTES = 1024 * 1024 * 2


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def compress_ceiling(frames: list[Any]) -> tuple[float, float]:
    """(bytes per second, compression ratio) of compress_chunk alone over ``frames``, median of 5."""
    times = []
    compressed = 0
    for _ in range(5):
        t0 = time.perf_counter()
        compressed = sum(len(compress_chunk(frame)) for frame in frames)
        times.append(time.perf_counter() - t0)
    return len(frames) * FRAME_BYTES / statistics.median(times), len(frames) * FRAME_BYTES / compressed


def disk_write_rate(directory: Path, nbytes: int = 512 << 20) -> float:
    """Bytes per second of one sequential write with fsync, in ``directory``."""
    block = os.urandom(8 << 20)
    path = directory / "disk-probe.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(nbytes // len(block)):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return nbytes / seconds


class Archive(threading.Thread):
    """The HPC centre's archive: removes upstream copies of files the ledger says were verified."""

    def __init__(self, ledger: Path, upstream: Path) -> None:
        super().__init__(daemon=True)
        self.ledger, self.upstream = ledger, upstream
        self.stop = threading.Event()
        self.removed = 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            if not self.ledger.exists():
                continue
            try:
                with sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=1) as db:
                    rows = db.execute(
                        "SELECT run_uid, name FROM files WHERE verified_at IS NOT NULL AND name LIKE '%.h5'"
                    ).fetchall()
            except sqlite3.Error:
                continue
            for run_uid, name in rows:
                path = self.upstream / run_uid / name
                if path.exists():
                    path.unlink()
                    self.removed += 1


class CpuSampler(threading.Thread):
    """CPU seconds (user + system) of the demo's daemon, simulator and pull client; the last sample of
    each is kept, since they exit before the demo does."""

    def __init__(self, demo_pid: int) -> None:
        super().__init__(daemon=True)
        self.demo = psutil.Process(demo_pid)
        self.stop = threading.Event()
        self.cpu: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                children = self.demo.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    argv = child.cmdline()
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                name = next((a for a in ("run", "sim", "pull") if a in argv[3:5]), None)
                if name is not None:
                    self.cpu[name] = max(self.cpu.get(name, 0.0), times.user + times.system)


def run_demo(
    frames: int, work: Path, upstream: Path, quota: int
) -> tuple[dict[str, Any], float, int, dict[str, float]]:
    """One bounded demo; returns (its summary, the measured seconds, frames delivered, CPU seconds of the
    daemon, simulator and pull client)."""
    settings = [
        f'sim.endpoint="tcp://127.0.0.1:{_port()}"',
        f'upstream.endpoint="tcp://127.0.0.1:{_port()}"',
        f"api.port={_port()}",
        "sim.rate_hz=1000000",
        "store.frames_per_file=200",
        "store.chunk_bytes=16777216",
        f"retention.quota_bytes={quota}",
        f'pull.output="{upstream}"',
    ]
    argv = [sys.executable, "-m", "edge", "demo", "--frames", str(frames), "--json", "--workdir", str(work)]
    argv += ["--timeout", str(max(600, frames // 20))]
    for item in settings:
        argv += ["--set", item]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    archive = Archive(work / "store" / "ledger.sqlite", upstream)
    sampler = CpuSampler(demo.pid)
    for thread in (archive, sampler):
        thread.start()
    try:
        out, err = demo.communicate(timeout=7200)
    finally:
        for thread in (archive, sampler):
            thread.stop.set()
            thread.join()
    if demo.returncode not in (0, 1) or not out.strip():
        raise RuntimeError(f"edge demo failed ({demo.returncode}): {err[-2000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    with sqlite3.connect(work / "store" / "ledger.sqlite") as db:
        started = db.execute("SELECT started_at FROM runs WHERE run_uid=?", (summary["run_uid"],)).fetchone()[
            0
        ]
        last_verified = db.execute(
            "SELECT MAX(verified_at) FROM files WHERE run_uid=? AND name LIKE '%.h5'", (summary["run_uid"],)
        ).fetchone()[0]
    return summary, last_verified - started, int(summary["frames_delivered"]), sampler.cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the measured run should last")
    parser.add_argument(
        "--frames", type=int, default=0, help="frames of the measured run (0: sized by a probe)"
    )
    parser.add_argument("--probe-frames", type=int, default=1000)
    parser.add_argument("--upstream-dir", type=Path, default=None)
    parser.add_argument("--quota-gb", type=float, default=6.0, help="the local store's quota")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edge-e2e-"))
    shm = Path("/dev/shm")
    if args.upstream_dir is not None:
        upstream_root = args.upstream_dir
    elif shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30:
        upstream_root = shm
    else:
        upstream_root = work
    upstream = Path(tempfile.mkdtemp(prefix="edge-e2e-upstream-", dir=upstream_root))
    quota = int(args.quota_gb * (1 << 30))
    source = PowderFrames((1024, 1024), Geometry())
    frames = [source.frame(n) for n in range(32)]
    try:
        ceiling_before, ratio = compress_ceiling(frames)
        disk = disk_write_rate(work)
        n_frames = args.frames
        if not n_frames:
            probe = run_demo(args.probe_frames, work / "probe", upstream, quota)
            probe_seconds, probe_delivered = probe[1], probe[2]
            n_frames = max(args.probe_frames, int(probe_delivered / probe_seconds * args.seconds * 1.05))
        summary, seconds, delivered, cpu = run_demo(n_frames, work / "run", upstream, quota)
        ceiling_after, _ = compress_ceiling(frames)
    finally:
        shutil.rmtree(upstream, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    ceiling = max(ceiling_before, ceiling_after)
    e2e = delivered * FRAME_BYTES / seconds
    ok = delivered == n_frames and summary["frames_lost"] == 0 and summary["frames_sent"] == n_frames
    row = {
        "workload": f"end to end 1024^2 uint16 x {n_frames}, ZMQ -> HDF5 -> verified upstream (GB/s)",
        "ours": round(e2e / 1e9, 3),
        "reference": round(ceiling / 1e9, 3),
        "reference_name": f"bitshuffle-LZ4 compress alone, all cores (ratio {ratio:.2f})",
        "ratio": round(e2e / ceiling, 3),
        "seconds": round(seconds, 1),
        "frames_per_second": round(delivered / seconds, 1),
        "cpu_ms_per_frame": {name: round(1e3 * t / max(delivered, 1), 2) for name, t in sorted(cpu.items())},
        "cores": os.cpu_count(),
        "disk_write_GBps": round(disk / 1e9, 3),
        "disk_needed_GBps_at_1GBps": round(1 / ratio, 3),
        "target": ">= 1 GB/s for 60 s and >= 0.5x",
        "target_met": bool(e2e >= 1e9 and seconds >= 60 and e2e / ceiling >= 0.5 and ok),
        "check": f"{delivered} of {n_frames} frames verified upstream, {summary['frames_lost']} lost",
        "check_passed": ok,
    }
    if args.json:
        print(json.dumps({"rows": [row]}))
    else:
        for key, value in row.items():
            print(f"{key:>26}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
