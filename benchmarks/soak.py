"""Soak: the whole appliance for N minutes at a steady rate, with retention purging, sampled per minute.

Starts the daemon (``edge run``), the HPC pull client (``edge pull``) and the simulator (``edge sim``,
unbounded, paced) as separate processes on 127.0.0.1, as ``edge demo`` does, with a store quota and a
maximum age so that retention purges verified files all the time. The pull client's copies are removed
a while after they were verified (this script plays the centre's archive, so the disk does not fill).

Every ``--sample-seconds`` (60) it records, per process: resident memory (RSS), open file descriptors
other than the HDF5 files being written (they come and go as files roll over; counted apart) and threads,
each the fewest seen in ten looks a tenth of a second apart (a short-lived helper thread at the sampling
instant is not a leak, a leak raises the floor); the ledger's database and WAL sizes, the daemon's
frame counts and the files retention purged. At the end it checks the issue's acceptance: each
process's RSS at the last sample <= 1.05x its RSS at minute 2 (after warm-up: numba compiled, pools
filled, caches sized), descriptors and threads unchanged from minute 2, and no frame lost. Results go
to ``benchmarks/results/`` as JSON and a text table.

The processes share two malloc arenas (``edge/allocator.py`` sets it at start, as the systemd units'
``MALLOC_ARENA_MAX=2`` does): with glibc's default (eight arenas per core) two of three 10-minute runs
here saw one process's RSS step up ~10% after minute 2 and stay there; the one run with two arenas
stayed flat. Set ``MALLOC_ARENA_MAX`` to run with another value (an explicit value wins).

    python benchmarks/soak.py [--minutes 10] [--rate 20] [--sample-seconds 60]
    make soak                       # the same, 10 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from edge.demo import exit_on_sigterm, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROLES = ("daemon", "pull", "sim")
ARCHIVE_AFTER_SECONDS = 120.0  # upstream copies older than this are "archived" (removed)


def _port() -> int:
    return free_port()  # below the ephemeral range: no outgoing connection takes it meanwhile


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"soak: timed out after {timeout:.0f} s waiting for {what}")


DATA_SUFFIXES = (".h5", ".part")  # files being written come and go as files roll over


def _process_figures(proc: psutil.Process, looks: int = 10, gap: float = 0.1) -> dict[str, int]:
    """RSS; descriptors other than the data files being written (``fds``, and ``data_files`` apart), and
    threads: the fewest seen in ``looks`` quick looks, so a short-lived helper thread or a socket being
    reconnected at the sampling instant is not a leak, while a leak raises the floor."""
    fds, data, threads = [], [], []
    for _ in range(looks):
        with proc.oneshot():
            open_data = sum(1 for f in proc.open_files() if f.path.endswith(DATA_SUFFIXES))
            fds.append(proc.num_fds() - open_data)
            data.append(open_data)
            threads.append(proc.num_threads())
        time.sleep(gap)
    return {
        "rss": proc.memory_info().rss,
        "fds": min(fds),
        "fds_max": max(fds),
        "data_files_max": max(data),
        "threads": min(threads),
    }


def _ledger_bytes(store: Path) -> dict[str, int]:
    """The ledger's database and its write-ahead log, apart (a WAL that never shrinks is a finding)."""
    sizes = {}
    for key, name in (("db", "ledger.sqlite"), ("wal", "ledger.sqlite-wal")):
        path = store / name
        sizes[key] = path.stat().st_size if path.exists() else 0
    return sizes


def _archive(upstream: Path, now: float) -> int:
    """Remove upstream copies verified (renamed to their final name) more than a while ago."""
    removed = 0
    for path in upstream.glob("*/*"):
        if path.suffix == ".part" or not path.is_file():
            continue
        try:
            if now - path.stat().st_mtime > ARCHIVE_AFTER_SECONDS:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _slope(samples: list[dict[str, Any]], role: str) -> float:
    """Least-squares RSS growth in MB per minute: a leak keeps a slope, a warm-up step does not."""
    if len(samples) < 2:
        return 0.0
    xs = [s["minute"] for s in samples]
    ys = [s["processes"][role]["rss"] / 2**20 for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 3) if den else 0.0


def _verdict(samples: list[dict[str, Any]], warm_minute: float) -> dict[str, Any]:
    """The acceptance checks: RSS growth, descriptors, threads (from the warm-up sample to the last)."""
    warm = next((s for s in samples if s["minute"] >= warm_minute), samples[0])
    last = samples[-1]
    checks: dict[str, Any] = {"from_minute": warm["minute"], "to_minute": last["minute"], "processes": {}}
    ok = True
    for role in ROLES:
        a, b = warm["processes"][role], last["processes"][role]
        growth = b["rss"] / a["rss"]
        row = {
            "rss_ratio": round(growth, 4),
            "rss_ok": growth <= 1.05,
            "rss_slope_mb_per_min_last_half": _slope(samples[len(samples) // 2 :], role),
            "fds": [a["fds"], b["fds"]],
            "fds_ok": a["fds"] == b["fds"],
            "threads": [a["threads"], b["threads"]],
            "threads_ok": a["threads"] == b["threads"],
        }
        ok = ok and row["rss_ok"] and row["fds_ok"] and row["threads_ok"]
        checks["processes"][role] = row
    checks["frames_lost"] = last["frames"]["lost"]
    checks["passed"] = ok and last["frames"]["lost"] == 0
    return checks


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"soak {report['started']}: {report['minutes']} min at {report['rate_hz']} frames/s, "
        f"{report['shape'][0]}x{report['shape'][1]} uint16, {report['machine']}",
        "command: "
        + " ".join([*(f"{k}={v}" for k, v in report.get("malloc_env", {}).items()), report["command"]]),
        "",
        f"{'min':>5} {'received':>9} {'delivered':>9} {'lost':>5} {'purged':>7} {'ledger MB':>9} "
        f"{'WAL MB':>7}  " + "  ".join(f"{r + ' RSS MB':>14} {'fds':>4} {'thr':>4}" for r in ROLES),
    ]
    for s in report["samples"]:
        cells = "  ".join(
            f"{s['processes'][r]['rss'] / 2**20:>14.1f} {s['processes'][r]['fds']:>4} "
            f"{s['processes'][r]['threads']:>4}"
            for r in ROLES
        )
        lines.append(
            f"{s['minute']:>5.1f} {s['frames']['received']:>9} {s['frames']['delivered']:>9} "
            f"{s['frames']['lost']:>5} {s['files_purged']:>7} {s['ledger_bytes']['db'] / 2**20:>9.2f} "
            f"{s['ledger_bytes']['wal'] / 2**20:>7.2f}  {cells}"
        )
    v = report["verdict"]
    lines += ["", f"from minute {v['from_minute']} to minute {v['to_minute']}:"]
    for role, row in v["processes"].items():
        lines.append(
            f"  {role:>6}: RSS x{row['rss_ratio']} ({'ok' if row['rss_ok'] else 'OVER 1.05'}; "
            f"{row['rss_slope_mb_per_min_last_half']:+.2f} MB/min over the last half), "
            f"fds {row['fds'][0]} -> {row['fds'][1]} ({'ok' if row['fds_ok'] else 'CHANGED'}), "
            f"threads {row['threads'][0]} -> {row['threads'][1]} ({'ok' if row['threads_ok'] else 'CHANGED'})"
        )
    lines.append(f"  frames lost: {v['frames_lost']}; {'PASSED' if v['passed'] else 'FAILED'}")
    return "\n".join(lines) + "\n"


def main() -> int:
    exit_on_sigterm()  # a kill stops the processes this started
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second, paced")
    parser.add_argument("--size", type=int, default=512, help="frame height and width (uint16)")
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument("--warm-minute", type=float, default=2.0, help="the baseline sample's minute")
    parser.add_argument("--quota-mb", type=int, default=256, help="store quota; retention purges to it")
    parser.add_argument("--max-age", type=float, default=60.0, help="purge verified files older than this")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory, removed after")
    parser.add_argument("--name", help="result file name stem (default soak-<minutes>min-<date>)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edge-soak-"))
    store, upstream, logs = workdir / "store", workdir / "upstream", workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stream, up, api = _port(), _port(), _port()
    settings = [
        f'sim.endpoint="tcp://127.0.0.1:{stream}"',
        f'stream.endpoint="tcp://127.0.0.1:{stream}"',
        f'upstream.endpoint="tcp://127.0.0.1:{up}"',
        f'pull.endpoint="tcp://127.0.0.1:{up}"',
        f"api.port={api}",
        f'store.path="{store}"',
        f'pull.output="{upstream}"',
        f"detector.height={args.size}",
        f"detector.width={args.size}",
        f"sim.rate_hz={args.rate}",
        "sim.frames=0",
        "store.frames_per_file=50",
        f"retention.quota_bytes={args.quota_mb << 20}",
        "retention.headroom_bytes=0",
        f"retention.max_age_seconds={args.max_age}",
    ]
    common = [arg for item in settings for arg in ("--set", item)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    handles = []
    env = dict(os.environ)  # the processes take two malloc heaps themselves (edge/allocator.py)

    def start(role: str, command: str) -> None:
        log = open(logs / f"{role}.log", "wb")  # noqa: SIM115 - closed at the end
        handles.append(log)
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", "edge", command, *common],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    url = f"http://127.0.0.1:{api}"
    samples: list[dict[str, Any]] = []
    archived = 0
    try:
        start("daemon", "run")
        _wait(lambda: _get(url + "/api/status"), 180, "the daemon's API")
        start("pull", "pull")
        start("sim", "sim")
        print(f"soak: {args.minutes} min at {args.rate} frames/s, data in {workdir}", flush=True)
        begun = time.monotonic()
        handles_ps = {role: psutil.Process(p.pid) for role, p in procs.items()}
        next_sample = begun + args.sample_seconds
        end = begun + args.minutes * 60
        while True:
            now = time.monotonic()
            for role, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"soak: {role} exited with {proc.returncode}; see {logs / role}.log")
            if now >= next_sample - 1e-6:
                archived += _archive(upstream, time.time())
                status = _get(url + "/api/status")
                sample = {
                    "minute": round((now - begun) / 60, 2),
                    "processes": {role: _process_figures(ps) for role, ps in handles_ps.items()},
                    "ledger_bytes": _ledger_bytes(store),
                    "frames": {
                        k: int(status["frames"][k]) for k in ("received", "stored", "delivered", "lost")
                    },
                    "files_purged": int(status["retention"].get("files_purged", 0)),
                    "upstream_archived": archived,
                }
                samples.append(sample)
                rss = ", ".join(f"{r} {sample['processes'][r]['rss'] / 2**20:.0f} MB" for r in ROLES)
                print(
                    f"soak: minute {sample['minute']:.1f}: received {sample['frames']['received']}, "
                    f"delivered {sample['frames']['delivered']}, lost {sample['frames']['lost']}, "
                    f"purged {sample['files_purged']}; RSS {rss}",
                    flush=True,
                )
                next_sample += args.sample_seconds
                if next_sample > end + 1e-6 and now >= end - 1e-6:
                    break
            time.sleep(max(0.0, min(next_sample - time.monotonic(), 1.0)))
    finally:
        for role in ROLES:  # the source first, then the consumer, the daemon last
            proc = procs.get(role)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for handle in handles:
            handle.close()

    report = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "minutes": args.minutes,
        "rate_hz": args.rate,
        "shape": [args.size, args.size],
        "sample_seconds": args.sample_seconds,
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "malloc_env": {k: v for k, v in env.items() if k.startswith("MALLOC_")},
        "samples": samples,
        "daemon_exit_status": procs["daemon"].returncode,
    }
    report["verdict"] = _verdict(samples, args.warm_minute)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"soak-{args.minutes:g}min-{datetime.now(UTC).date().isoformat()}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = _table(report)
    (RESULTS / f"{stem}.txt").write_text(text)
    print(text, end="")
    print(f"soak: results in {RESULTS / stem}.json and .txt", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
