"""Ingest rates: our UDP and ZeroMQ readers into the shared-memory ring, beside a bare receive loop.

The sender runs in another process (as the detector would). For each transport the same traffic is
received twice, interleaved: once by a bare socket loop that only counts (the ceiling Python can
reach here), once by our reader feeding the real ring (with a consumer thread releasing slots).
Prints a table; ``--json`` writes one object. Correctness in the same run: every frame accounted
for (received + recorded loss = sent) and the ring's frames bit-exact with what was sent.

    python benchmarks/ingest.py [--json] [--frames N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

# benchmarks/kernels.py would shadow the kernels package: drop this folder from the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import zmq

from edge.ring import FrameRing
from firmware_bridge.hdf5_chunks import decode_bslz4
from firmware_bridge.source import FLAG_CHUNK, FrameHeader
from firmware_bridge.stream2_reader import Stream2Source
from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from firmware_bridge.udp_codec import DetectorGeometry, packetize_frame
from firmware_bridge.udp_reader import UdpSource
from firmware_bridge.zmq_reader import ZmqStreamSource

UDP_GEOMETRY = DetectorGeometry(
    module_rows=256, module_cols=256, grid_rows=1, grid_cols=2, payload_bytes=8192
)
STREAM_SHAPE = (1024, 1024)


def _frames(shape: tuple[int, int], count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.poisson(20, shape).astype(np.uint16) for _ in range(count)]


# -- senders (child processes) --------------------------------------------------------------------
def _udp_sender(port: int, frames: int, ready: Any, go: Any) -> None:
    pool = _frames(UDP_GEOMETRY.raw_shape, 4)
    packets = [packetize_frame(UDP_GEOMETRY, n, pool[n % 4]) for n in range(frames)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ready.set()
    go.wait()
    for frame_packets in packets:
        for packet in frame_packets:
            sock.sendto(packet, ("127.0.0.1", port))
        time.sleep(0.0005)  # a detector paces frames; this keeps loopback from dropping in bursts
    sock.close()


# -- a sink that is the real ring, drained by a thread -------------------------------------------
class RingSink:
    def __init__(self, slot_bytes: int) -> None:
        self.ring = FrameRing(64, max(slot_bytes, 65536), "block")
        self.lost_frames = 0
        self.ended = threading.Event()
        self.frames = 0
        self.checked = 0
        self.bad = 0
        self.reference: list[np.ndarray] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set() or not self.ring.drained():
            slot = self.ring.next_ready(0.05)
            if slot is None:
                continue
            if int(slot.header["kind"]) == 1:
                self.frames += 1
                if self.reference and self.frames % 16 == 1:
                    pixels = slot.array()
                    if int(slot.header["flags"]) & FLAG_CHUNK:  # passed through: decode to compare
                        pixels = decode_bslz4(slot.payload, pixels.shape, pixels.dtype)
                    expected = self.reference[int(slot.header["frame"]) % len(self.reference)]
                    self.checked += 1
                    self.bad += int(not np.array_equal(pixels.reshape(expected.shape), expected))
            self.ring.release(slot)

    def claim(self, nbytes: int):
        return self.ring.claim(nbytes)

    def publish(self, slot, header: FrameHeader) -> None:
        self.ring.publish(slot, header, header.nbytes or None)

    def abandon(self, slot) -> None:
        self.ring.abandon(slot)

    def series_start(self, series: int, config: dict[str, Any]) -> None:
        pass

    def series_end(self, series: int, exit_status: str = "success") -> None:
        self.ended.set()

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        if reason != "incomplete_frame":  # an incomplete frame is delivered (flagged), not lost
            self.lost_frames += last - first + 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.ring.close()


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- measurements -----------------------------------------------------------------------------------
def udp_bare(frames: int) -> dict[str, float]:
    port = _free_port(socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.5)
    ready, go = mp.Event(), mp.Event()
    proc = mp.Process(target=_udp_sender, args=(port, frames, ready, go))
    proc.start()
    ready.wait(60)
    buffer = bytearray(65536)
    expected = frames * UDP_GEOMETRY.packets_per_frame
    count = nbytes = 0
    go.set()
    started = None
    while count < expected:
        try:
            n = sock.recv_into(buffer)
        except TimeoutError:
            break
        started = started or time.perf_counter()
        count += 1
        nbytes += n
    seconds = time.perf_counter() - (started or time.perf_counter())
    proc.join()
    sock.close()
    return {"packets": count, "expected": expected, "seconds": seconds, "bytes": nbytes}


def udp_ours(frames: int) -> dict[str, float]:
    port = _free_port(socket.SOCK_DGRAM)
    height, width = UDP_GEOMETRY.frame_shape
    sink = RingSink(height * width * 2)
    source = UdpSource("127.0.0.1", port, UDP_GEOMETRY, sink, frames_per_run=frames, idle_seconds=0.5)
    source.start()
    ready, go = mp.Event(), mp.Event()
    proc = mp.Process(target=_udp_sender, args=(port, frames, ready, go))
    proc.start()
    ready.wait(60)
    go.set()
    started = time.perf_counter()
    # the run ends (and the tail is accounted) once the detector has been silent for idle_seconds
    while source.counters()["series"] is not None or not sink.ended.is_set():
        if time.perf_counter() - started > 120:
            break
        time.sleep(0.001)
    seconds = time.perf_counter() - started - source.idle_seconds
    proc.join()
    counters = source.counters()
    source.stop()
    sink.close()
    packets = counters["assembler"].get("packets_received", 0)
    return {
        "packets": packets,
        "expected": frames * UDP_GEOMETRY.packets_per_frame,
        "seconds": seconds,
        "bytes": packets * (UDP_GEOMETRY.payload_bytes + 40),
        "frames": sink.frames,
        "lost": sink.lost_frames,
    }


def zmq_bare(frames: int) -> dict[str, float]:
    context = zmq.Context()
    port = _free_port(socket.SOCK_STREAM)
    proc = mp.Process(target=_zmq_sender_bind, args=(port, frames))
    proc.start()
    pull = context.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{port}")
    images = nbytes = 0
    started = None
    while True:
        parts = pull.recv_multipart(copy=False)
        started = started or time.perf_counter()
        if len(parts) == 4:
            images += 1
            nbytes += len(parts[2].buffer)
        elif b"dseries_end" in parts[0].bytes:
            break
    seconds = time.perf_counter() - started
    proc.join()
    pull.close(0)
    context.term()
    return {"frames": images, "seconds": seconds, "bytes": nbytes}


def zmq_ours(frames: int) -> dict[str, float]:
    context = zmq.Context()
    port = _free_port(socket.SOCK_STREAM)
    sink = RingSink(STREAM_SHAPE[0] * STREAM_SHAPE[1] * 2)
    sink.reference = _frames(STREAM_SHAPE, 4)
    # like a DECTRIS detector, the sender binds and our reader connects
    proc = mp.Process(target=_zmq_sender_bind, args=(port, frames))
    proc.start()
    source = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
    source.start()
    started = None
    while not sink.ended.wait(0.001):
        if started is None and sink.frames:
            started = time.perf_counter()
    seconds = time.perf_counter() - (started or time.perf_counter())
    proc.join()
    counters = source.counters()
    source.stop()
    sink.close()
    context.term()
    return {
        "frames": counters.get("frames_received", 0),
        "seconds": seconds,
        "bytes": counters.get("bytes_received", 0),
        "lost": sink.lost_frames,
        "checked": sink.checked,
        "bad": sink.bad,
    }


def _zmq_sender_bind(port: int, frames: int) -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.sndhwm = 64
    push.bind(f"tcp://127.0.0.1:{port}")
    pool = _frames(STREAM_SHAPE, 4)
    push.send_multipart(encode_series_start(1, STREAM_SHAPE, "uint16", frames_expected=frames))
    for n in range(frames):
        push.send_multipart(
            encode_image(1, n, STREAM_SHAPE, "uint16", memoryview(pool[n % 4]).cast("B")), copy=False
        )
    push.send_multipart(encode_series_end(1))
    push.close(linger=-1)
    context.term()


def _stream2_sender_bind(port: int, frames: int) -> None:
    """A Stream V2 detector: start, ``frames`` bslz4 images (4 distinct payloads, compressed once), end."""
    from hw_sim.stream2_sender import encode_end, encode_image, encode_start
    from kernels import compress_chunk

    chunks = [compress_chunk(frame) for frame in _frames(STREAM_SHAPE, 4)]
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.sndhwm = 64
    push.bind(f"tcp://127.0.0.1:{port}")
    push.send(encode_start(1, "bench", STREAM_SHAPE, "uint16", frames, {}))
    for n in range(frames):
        push.send(encode_image(1, "bench", n, STREAM_SHAPE, "uint16", chunks[n % 4], 0), copy=False)
    push.send(encode_end(1, "bench"))
    push.close(linger=-1)
    context.term()


def stream2_bare(frames: int) -> dict[str, float]:
    context = zmq.Context()
    port = _free_port(socket.SOCK_STREAM)
    proc = mp.Process(target=_stream2_sender_bind, args=(port, frames))
    proc.start()
    pull = context.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{port}")
    images = nbytes = 0
    started = None
    while True:
        message = pull.recv(copy=False)
        started = started or time.perf_counter()
        size = len(message.buffer)
        if size > 4096:
            images += 1
            nbytes += size
        elif b"end" in message.bytes and b"start" not in message.bytes:
            break
    seconds = time.perf_counter() - started
    proc.join()
    pull.close(0)
    context.term()
    return {"frames": images, "seconds": seconds, "bytes": nbytes}


def stream2_ours(frames: int, pass_through: bool = False) -> dict[str, float]:
    context = zmq.Context()
    port = _free_port(socket.SOCK_STREAM)
    sink = RingSink(STREAM_SHAPE[0] * STREAM_SHAPE[1] * 2)
    sink.reference = _frames(STREAM_SHAPE, 4)
    proc = mp.Process(target=_stream2_sender_bind, args=(port, frames))
    proc.start()
    source = Stream2Source(f"tcp://127.0.0.1:{port}", sink, context, pass_through=pass_through)
    source.start()
    started = None
    while not sink.ended.wait(0.001):
        if started is None and sink.frames:
            started = time.perf_counter()
    seconds = time.perf_counter() - (started or time.perf_counter())
    proc.join()
    counters = source.counters()
    source.stop()
    sink.close()
    context.term()
    return {
        "frames": counters.get("frames_received", 0),
        "seconds": seconds,
        "bytes": counters.get("bytes_received", 0),
        "lost": sink.lost_frames,
        "checked": sink.checked,
        "bad": sink.bad,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    mp.set_start_method("spawn", force=True)
    results: dict[str, list[dict[str, float]]] = {
        "udp_bare": [],
        "udp_ours": [],
        "zmq_bare": [],
        "zmq_ours": [],
        "stream2_bare": [],
        "stream2_ours": [],
        "stream2_pass": [],
    }
    for _ in range(args.repeats):  # interleaved so drift hits both sides alike
        results["udp_bare"].append(udp_bare(args.frames))
        results["udp_ours"].append(udp_ours(args.frames))
        results["zmq_bare"].append(zmq_bare(args.frames))
        results["zmq_ours"].append(zmq_ours(args.frames))
        results["stream2_bare"].append(stream2_bare(args.frames))
        results["stream2_ours"].append(stream2_ours(args.frames))
        results["stream2_pass"].append(stream2_ours(args.frames, pass_through=True))

    def rate(rows: list[dict[str, float]], key: str) -> tuple[float, float]:
        values = [r[key] / r["seconds"] for r in rows if r["seconds"] > 0]
        return statistics.median(values), (max(values) - min(values)) if values else 0.0

    udp_bare_pps, udp_bare_spread = rate(results["udp_bare"], "packets")
    udp_ours_pps, udp_ours_spread = rate(results["udp_ours"], "packets")
    zmq_bare_bps, zmq_bare_spread = rate(results["zmq_bare"], "bytes")
    zmq_ours_bps, zmq_ours_spread = rate(results["zmq_ours"], "bytes")
    s2_bare_fps, s2_bare_spread = rate(results["stream2_bare"], "frames")
    s2_ours_fps, s2_ours_spread = rate(results["stream2_ours"], "frames")
    s2_pass_fps, s2_pass_spread = rate(results["stream2_pass"], "frames")
    for row in results["udp_ours"]:
        print(
            f"udp run: {row['frames']} frames delivered, {row['lost']} lost of {args.frames}", file=sys.stderr
        )
    for name in ("stream2_ours", "stream2_pass"):
        for row in results[name]:
            print(
                f"{name} run: {row['frames']} frames delivered, {row['lost']} lost of {args.frames}, "
                f"{row['checked']} checked, {row['bad']} differ",
                file=sys.stderr,
            )
    udp_accounted = all(r["frames"] + r["lost"] == args.frames for r in results["udp_ours"])
    zmq_accounted = all(r["frames"] + r["lost"] == args.frames and r["bad"] == 0 for r in results["zmq_ours"])
    s2_accounted = all(
        r["frames"] + r["lost"] == args.frames and r["bad"] == 0 and r["checked"] > 0
        for r in results["stream2_ours"] + results["stream2_pass"]
    )
    rows = [
        {
            "workload": f"UDP ingest, {UDP_GEOMETRY.packets_per_frame} x 8 KiB packets/frame (packets/s)",
            "ours": round(udp_ours_pps),
            "reference": round(udp_bare_pps),
            "reference_name": "bare recv_into loop",
            "ratio": round(udp_ours_pps / udp_bare_pps, 3),
            "spread": [round(udp_ours_spread), round(udp_bare_spread)],
            "gb_per_s": round(udp_ours_pps * UDP_GEOMETRY.payload_bytes / 1e9, 3),
            "check": "frames received + recorded lost == sent",
            "check_passed": udp_accounted,
        },
        {
            "workload": "ZeroMQ stream ingest, 1024x1024 uint16 (GB/s)",
            "ours": round(zmq_ours_bps / 1e9, 3),
            "reference": round(zmq_bare_bps / 1e9, 3),
            "reference_name": "bare recv_multipart(copy=False) loop",
            "ratio": round(zmq_ours_bps / zmq_bare_bps, 3),
            "spread": [round(zmq_ours_spread / 1e9, 3), round(zmq_bare_spread / 1e9, 3)],
            "check": "every frame accounted for; sampled ring frames bit-exact",
            "check_passed": zmq_accounted,
        },
        {
            "workload": "Stream V2 (CBOR, bslz4) ingest, 1024x1024 uint16, decoded into the ring (frames/s)",
            "ours": round(s2_ours_fps, 1),
            "reference": round(s2_bare_fps, 1),
            "reference_name": "bare recv(copy=False) loop",
            "ratio": round(s2_ours_fps / s2_bare_fps, 3),
            "spread": [round(s2_ours_spread, 1), round(s2_bare_spread, 1)],
            "check": "every frame accounted for; sampled ring frames bit-exact",
            "check_passed": s2_accounted,
        },
        {
            "workload": "Stream V2 pass-through: same images, 4 blocks checked, kept compressed (frames/s)",
            "ours": round(s2_pass_fps, 1),
            "reference": round(s2_bare_fps, 1),
            "reference_name": "bare recv(copy=False) loop",
            "ratio": round(s2_pass_fps / s2_bare_fps, 3),
            "spread": [round(s2_pass_spread, 1), round(s2_bare_spread, 1)],
            "check": "every frame accounted for; sampled ring chunks decode bit-exact",
            "check_passed": s2_accounted,
        },
    ]
    if args.json:
        print(json.dumps({"rows": rows, "frames": args.frames, "repeats": args.repeats}))
    else:
        print(f"{'workload':<62} {'ours':>10} {'bare':>10} {'ratio':>6}  check")
        for row in rows:
            print(
                f"{row['workload']:<62} {row['ours']:>10} {row['reference']:>10} {row['ratio']:>6}  "
                f"{'ok' if row['check_passed'] else 'FAILED'}: {row['check']}"
            )
    return 0 if udp_accounted and zmq_accounted and s2_accounted else 1


if __name__ == "__main__":
    sys.exit(main())
