"""End to end: ZeroMQ ingest -> reduce -> compress -> HDF5 -> acknowledged upstream, real processes.

Runs ``edge demo --frames N`` unpaced (the simulator sends as fast as the appliance takes frames, so
backpressure sets the rate), then reads the ledger: the rate is raw bytes of frames *verified upstream*
over the time from the run's start to the last file's verification. A short probe run first sizes N so
the measured run lasts ``--seconds`` (60 by default, as BENCHMARKS.md asks).

The ceiling is measured in the same run, as the lowest of three raw-frame rates: the disk's fsynced
sequential write rate times the compression ratio of the run's own stored frames (every compressed
byte is written there once); bitshuffle-LZ4 compression alone of the same kind of frames on every core
(before and after the run, the better kept); and the CPU: the cores divided by the whole appliance's CPU
seconds per frame in the run (simulator, daemon and pull client share the cores here). Correctness in
the same run: every frame sent is delivered and verified upstream by checksum, none lost.

CPU is reported per frame over the measured window (the run's start to its last verification; start-up,
imports and JIT compilation are outside it, and reported apart as whole-process figures), per process and
per daemon thread. Threads are told apart by their OS names, which a ``sitecustomize`` this script puts
on the children's ``PYTHONPATH`` sets from the Python thread names (``prctl``); with ``--profile DIR``
the same shim also writes one cProfile file (CPU time, ``time.thread_time``) per thread of every
process (slower: not a measured run).

The HPC side runs on this machine too. So that its disk does not compete with the appliance's (a real
centre stores on its own), the pull client writes to ``--upstream-dir`` (``/dev/shm`` when it has
room), and this script plays the centre's archive: files the ledger says were verified are removed
from there while the run goes on. The appliance's store stays on disk under a quota, and its
retention purges verified files as it would at a beamline.

    python benchmarks/e2e.py [--seconds 60] [--frames N] [--json] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per frame, as the daemon compresses

from edge.demo import exit_on_sigterm, free_port
from hw_sim.frames import PowderFrames
from kernels import Geometry, compress_chunk

FRAME_BYTES = 1024 * 1024 * 2
ROLES = ("run", "sim", "pull")
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: put on the children's PYTHONPATH: names each Python thread at the OS level (so /proc tells threads
#: apart) and, with EDGE_E2E_PROFILE set, profiles every thread into that directory
SITECUSTOMIZE = r"""
import ctypes, os, threading, time

_run = threading.Thread.run
_dir = os.environ.get("EDGE_E2E_PROFILE")
try:
    _prctl = ctypes.CDLL(None).prctl
except (OSError, AttributeError):
    _prctl = None


def _role():
    try:
        argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
    except OSError:
        return "python"
    for arg in argv[3:5]:
        if arg in (b"run", b"sim", b"pull", b"demo"):
            return arg.decode()
    return "python"


def _dump(profile, name):
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    profile.dump_stats(os.path.join(_dir, f"{_role()}-{os.getpid()}-{safe}-{threading.get_native_id()}.prof"))


def run(self):
    if _prctl is not None:
        _prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME, this thread only
    if not _dir:
        return _run(self)
    import cProfile

    profile = cProfile.Profile(time.thread_time)  # CPU time of this thread
    profile.enable()
    try:
        return _run(self)
    finally:
        profile.disable()
        _dump(profile, self.name)


threading.Thread.run = run
if _dir and _role() != "python":
    import atexit, cProfile

    _main = cProfile.Profile(time.thread_time)
    _main.enable()

    def _finish():
        _main.disable()
        _dump(_main, "main")

    atexit.register(_finish)
"""


def _port() -> int:
    return free_port()  # below the ephemeral range: no outgoing connection takes it meanwhile


def compress_ceiling(frames: list[Any]) -> tuple[float, float]:
    """(bytes per second, compression ratio) of compress_chunk alone over ``frames`` on every core (one
    frame per thread, as the daemon compresses), median of 5."""
    times = []
    compressed = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(compress_chunk, frames))  # warm-up
        for _ in range(5):
            t0 = time.perf_counter()
            compressed = sum(len(chunk) for chunk in pool.map(compress_chunk, frames))
            times.append(time.perf_counter() - t0)
    return len(frames) * FRAME_BYTES / statistics.median(times), len(frames) * FRAME_BYTES / compressed


def disk_write_rate(directory: Path, nbytes: int = 512 << 20, segment: int = 64 << 20) -> float:
    """Bytes per second of one sequential write in ``directory``, fsynced every ``segment`` bytes and
    its pages then handed back to the kernel, as the appliance hands back a file's once it is confirmed
    upstream (``edge.store.drop_cached``). Written without that, the page cache grows by every byte and
    this VM's fresh pages cost the writer ~10 us each: the probe measured memory, 0.2-0.6 GB/s, not the
    disk."""
    block = os.urandom(8 << 20)
    path = directory / "disk-probe.bin"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for k in range(nbytes // len(block)):
            os.write(fd, block)
            if (k + 1) * len(block) % segment == 0:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return nbytes / seconds


def store_cpu_per_byte(directory: Path, nbytes: int = 256 << 20, chunk: int = 4 << 20) -> float:
    """Seconds of this thread's CPU (user + system) per byte to store fresh bytes in ``directory`` as the
    pull client does (4 MiB ``pwrite`` calls at increasing offsets into a new file): the kernel's page
    allocation and copy, a floor under the pull client's CPU per frame that no change of ours removes."""
    block = os.urandom(chunk)
    path = directory / "store-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.thread_time()
        for k in range(nbytes // chunk):
            os.pwrite(fd, block, k * chunk)
        seconds = time.thread_time() - start
    finally:
        os.close(fd)
        path.unlink()
    return seconds / nbytes


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


def _thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (OS thread name, CPU seconds user + system) for every thread of ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def _machine_times() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat (all cores)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


class CpuSampler(threading.Thread):
    """CPU seconds of the demo's daemon (``run``), simulator and pull client, per process and per thread,
    sampled with the wall-clock time so a window can be cut out afterwards (they exit before the demo)."""

    def __init__(self, demo_pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.demo = psutil.Process(demo_pid)
        self.period = period
        self.stop = threading.Event()
        # role -> [(time, process CPU seconds, {tid: (name, seconds)})]
        self.samples: dict[str, list[tuple[float, float, dict[int, tuple[str, float]]]]] = {}
        self.machine: list[tuple[float, float, float]] = []  # (time, busy CPU seconds, steal seconds)
        # (time, GPU busy %, GPU memory used bytes) from NVML, on a machine with an NVIDIA GPU
        self.gpu: list[tuple[float, float, float]] = []
        self._nvml = _nvml_handle()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.machine.append((time.time(), *_machine_times()))
            if self._nvml is not None:
                self.gpu.append((time.time(), *_gpu_sample(self._nvml)))
            try:
                children = self.demo.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    argv = child.cmdline()
                    now = time.time()
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                role = next((a for a in ROLES if a in argv[3:5]), None)
                if role is not None:
                    threads = _thread_times(child.pid)
                    self.samples.setdefault(role, []).append((now, times.user + times.system, threads))

    def gpu_window(self, start: float, end: float) -> dict[str, Any] | None:
        """The GPU's share of the window: its mean busy percentage (NVML's utilisation, the fraction of
        time a kernel ran) and the most device memory in use; None without an NVIDIA GPU."""
        inside = [s for s in self.gpu if start <= s[0] <= end and s[1] == s[1]]  # NaN: a failed read
        if not inside:
            return None
        return {
            "gpu_busy_percent_mean": round(statistics.fmean(s[1] for s in inside), 1),
            "gpu_busy_percent_max": round(max(s[1] for s in inside), 1),
            "gpu_memory_used_GB_max": round(max(s[2] for s in inside) / 1e9, 2),
            "gpu_samples": len(inside),
        }

    def machine_window(self, start: float, end: float) -> tuple[float, float]:
        """Busy and stolen CPU seconds of the whole machine (every process) between ``start`` and ``end``."""
        first = min(self.machine, key=lambda s: abs(s[0] - start))
        last = min(self.machine, key=lambda s: abs(s[0] - end))
        return last[1] - first[1], last[2] - first[2]

    def whole(self) -> dict[str, float]:
        """Each process's CPU seconds from its start to its last sample."""
        return {role: s[-1][1] for role, s in self.samples.items() if s}

    def window(self, start: float, end: float) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """CPU seconds between ``start`` and ``end`` (wall clock): per process, and per thread name.

        A thread counts from the sample nearest ``start`` (or from 0 when it began later) to its last
        sample up to the one nearest ``end`` (a thread that ended earlier keeps what it used)."""
        processes: dict[str, float] = {}
        threads: dict[str, dict[str, float]] = {}
        for role, samples in self.samples.items():
            first = _at(samples, start)
            last = _at(samples, end)
            if first is None or last is None:
                continue
            processes[role] = last[1] - first[1]
            main = _pid_of(samples)
            ends: dict[int, tuple[str, float]] = {}
            for sample in samples:
                if first[0] <= sample[0] <= last[0]:
                    ends.update(sample[2])
            names: dict[str, float] = {}
            for tid, (name, seconds) in ends.items():
                before = first[2].get(tid, (name, 0.0))[1]
                label = "main" if tid == main else name
                names[label] = names.get(label, 0.0) + seconds - before
            threads[role] = names
        return processes, threads


def _nvml_handle() -> Any:
    """NVML's handle of GPU 0 (nvidia-ml-py), or None where there is no NVIDIA GPU or no NVML."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # no library, no driver or no device: no GPU figures
        return None


def _gpu_sample(handle: Any) -> tuple[float, float]:
    import pynvml  # type: ignore[import-not-found]

    try:
        rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # a failed read is a missing sample
        return float("nan"), float("nan")
    return float(rates.gpu), float(memory.used)


def _pid_of(samples: list[tuple[float, float, dict[int, tuple[str, float]]]]) -> int:
    return min(samples[0][2]) if samples and samples[0][2] else -1


def _at(
    samples: list[tuple[float, float, dict[int, tuple[str, float]]]], when: float
) -> tuple[float, float, dict[int, tuple[str, float]]] | None:
    """The sample nearest ``when`` (the period bounds the error)."""
    if not samples:
        return None
    return min(samples, key=lambda s: abs(s[0] - when))


def run_demo(
    frames: int, work: Path, upstream: Path, quota: int, env: dict[str, str], extra: list[str] | None = None
) -> dict[str, Any]:
    """One bounded demo (``extra``: more ``--set`` settings, after the script's own); returns its summary
    with the measured window, frames delivered, the run's stored bytes and the CPU sampler."""
    settings = [
        f'sim.endpoint="tcp://127.0.0.1:{_port()}"',
        f'upstream.endpoint="tcp://127.0.0.1:{_port()}"',
        f"api.port={_port()}",
        "sim.rate_hz=1000000",
        "store.frames_per_file=200",
        "store.chunk_bytes=16777216",
        f"retention.quota_bytes={quota}",
        f'pull.output="{upstream}"',
        *(extra or []),
    ]
    argv = [sys.executable, "-m", "edge", "demo", "--frames", str(frames), "--json", "--workdir", str(work)]
    argv += ["--timeout", str(max(600, frames // 20))]
    for item in settings:
        argv += ["--set", item]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
        uid = summary["run_uid"]
        started = db.execute("SELECT started_at FROM runs WHERE run_uid=?", (uid,)).fetchone()[0]
        last_verified, stored_bytes = db.execute(
            "SELECT MAX(verified_at), SUM(size) FROM files WHERE run_uid=? AND name LIKE '%.h5'", (uid,)
        ).fetchone()
    return {
        "summary": summary,
        "started": started,
        "ended": last_verified,
        "seconds": last_verified - started,
        "delivered": int(summary["frames_delivered"]),
        "stored_bytes": int(stored_bytes or 0),
        "sampler": sampler,
    }


def _per_frame(seconds: dict[str, float], frames: int) -> dict[str, float]:
    return {k: round(1e3 * v / max(frames, 1), 3) for k, v in sorted(seconds.items())}


def _thread_group(name: str) -> str:
    """Daemon thread name -> stage (pool workers' numbered names folded into one)."""
    for prefix in ("compress", "file-closer", "ZMQbg", "numba", "asyncio"):
        if name.startswith(prefix):
            return prefix
    return name


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()  # a kill stops the processes this started
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the measured run should last")
    parser.add_argument(
        "--frames", type=int, default=0, help="frames of the measured run (0: sized by a probe)"
    )
    parser.add_argument("--probe-frames", type=int, default=1000)
    parser.add_argument("--upstream-dir", type=Path, default=None)
    parser.add_argument("--quota-gb", type=float, default=6.0, help="the local store's quota")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile files per thread here")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the appliance (as `edge demo --set`), e.g. reduction.backend=gpu on a lent GPU"
        " machine; repeatable",
    )
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
    shim = work / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH", "")) if p)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        env["EDGE_E2E_PROFILE"] = str(args.profile.resolve())
    quota = int(args.quota_gb * (1 << 30))
    source = PowderFrames((1024, 1024), Geometry())  # the simulator's default frames (sim.seed, sim.pool)
    frames = [source.frame(n) for n in range(32)]
    try:
        compress_before, ratio_probe = compress_ceiling(frames)
        disk = disk_write_rate(work)
        store_cost = store_cpu_per_byte(upstream)
        n_frames = args.frames
        if not n_frames:
            probe = run_demo(args.probe_frames, work / "probe", upstream, quota, env, args.settings)
            rate = probe["delivered"] / probe["seconds"]
            n_frames = max(args.probe_frames, int(rate * args.seconds * 1.15))  # warm runs go faster
        run = run_demo(n_frames, work / "run", upstream, quota, env, args.settings)
        compress_after, _ = compress_ceiling(frames)
    finally:
        shutil.rmtree(upstream, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    summary, seconds, delivered = run["summary"], run["seconds"], run["delivered"]
    sampler: CpuSampler = run["sampler"]
    cpu, threads = sampler.window(run["started"], run["ended"])
    whole = sampler.whole()
    cores = os.cpu_count() or 1
    ratio = delivered * FRAME_BYTES / run["stored_bytes"] if run["stored_bytes"] else ratio_probe
    cpu_per_frame_s = sum(cpu.values()) / max(delivered, 1)
    busy, steal = sampler.machine_window(run["started"], run["ended"])
    ceilings = {
        "disk": disk * ratio,
        "compress": max(compress_before, compress_after),
        "cpu": cores / cpu_per_frame_s * FRAME_BYTES if cpu_per_frame_s else float("inf"),
    }
    binding = min(ceilings, key=lambda k: ceilings[k])
    ceiling = ceilings[binding]
    e2e = delivered * FRAME_BYTES / seconds
    daemon_threads: dict[str, float] = {}
    for name, value in threads.get("run", {}).items():
        group = _thread_group(name)
        daemon_threads[group] = daemon_threads.get(group, 0.0) + value
    per_frame = _per_frame(cpu, delivered)
    ok = delivered == n_frames and summary["frames_lost"] == 0 and summary["frames_sent"] == n_frames
    # a run asked for one backend that fell back to another measured the other: not the figure asked for
    asked = next((v.split("=", 1)[1] for v in args.settings if v.startswith("reduction.backend=")), None)
    backend_ok = asked is None or summary.get("backend") == asked.strip("\"'")
    ok = ok and backend_ok
    met = {
        "rate >= 0.6 GB/s": e2e >= 0.6e9,
        "ratio to the ceiling >= 0.7": e2e / ceiling >= 0.7,
        "daemon <= 4 ms/frame": per_frame.get("run", 1e9) <= 4.0,
        "pull <= 0.7 ms/frame": per_frame.get("pull", 1e9) <= 0.7,
        f"{args.seconds:.0f} s": seconds >= 0.9 * args.seconds,
    }
    row = {
        "workload": f"end to end 1024^2 uint16 x {n_frames}, ZMQ -> HDF5 -> verified upstream (GB/s)",
        "ours": round(e2e / 1e9, 3),
        "reference": round(ceiling / 1e9, 3),
        "reference_name": f"the ceiling measured in the same run: {binding} (lowest of disk, compress, cpu)",
        "ratio": round(e2e / ceiling, 3),
        "ceilings_GBps": {k: round(v / 1e9, 3) for k, v in ceilings.items()},
        "ceiling_binding": binding,
        "settings": args.settings,
        "backend": summary.get("backend"),
        "backend_degraded_from": summary.get("backend_degraded_from", []),
        "ring_pinned_bytes": summary.get("ring_pinned_bytes", 0),
        "gpu": sampler.gpu_window(run["started"], run["ended"]),
        "compression_ratio": round(ratio, 3),
        "seconds": round(seconds, 1),
        "frames_per_second": round(delivered / seconds, 1),
        "cpu_ms_per_frame": per_frame,
        "cpu_ms_per_frame_total": round(1e3 * cpu_per_frame_s, 3),
        "cpu_ms_per_frame_daemon_threads": _per_frame(daemon_threads, delivered),
        "cpu_ms_per_frame_pull_threads": _per_frame(threads.get("pull", {}), delivered),
        "cpu_ms_per_frame_sim_threads": _per_frame(threads.get("sim", {}), delivered),
        "cpu_seconds_whole_process": {k: round(v, 2) for k, v in sorted(whole.items())},
        "cpu_window": "from the run's start to its last file's verification (ledger times)",
        "cores": cores,
        # how much of the machine the run had: the appliance's CPU over the window, and everything else
        # running meanwhile (other users' jobs, this script, the demo)
        "cores_busy_appliance": round(sum(cpu.values()) / seconds, 2),
        "cores_busy_others": round(max(busy - sum(cpu.values()), 0.0) / seconds, 2),
        "cores_stolen_by_hypervisor": round(steal / seconds, 2),
        "disk_write_GBps": round(disk / 1e9, 3),
        # the kernel's CPU to store one frame's compressed bytes in the upstream directory (tmpfs here):
        # part of the pull client's CPU per frame that is the work itself
        "pull_store_floor_ms_per_frame": round(1e3 * store_cost * FRAME_BYTES / ratio, 3),
        "disk_needed_GBps_at_1GBps": round(1 / ratio, 3),
        "compress_alone_GBps": [round(compress_before / 1e9, 3), round(compress_after / 1e9, 3)],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "target": ">= 0.6 GB/s and >= 0.7x the ceiling for 60 s; daemon <= 4 ms, pull <= 0.7 ms CPU/frame",
        "targets": met,
        "target_met": bool(all(met.values()) and ok),
        "check": f"{delivered} of {n_frames} frames verified upstream, {summary['frames_lost']} lost"
        + ("" if backend_ok else f"; backend {asked} asked for, {summary.get('backend')} ran"),
        "check_passed": ok,
    }
    if args.json:
        print(json.dumps({"rows": [row]}))
    else:
        for key, value in row.items():
            print(f"{key:>32}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
