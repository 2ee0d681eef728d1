"""``edge sim``: run the simulated detector from the command line (the edge CLI parses the settings)."""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq

from firmware_bridge.udp_codec import DetectorGeometry
from hw_sim.physics import make_source
from hw_sim.stream2_sender import Stream2Faults, send_series_stream2
from hw_sim.udp_packets import FaultPlan, UdpFrameSender, apply_faults
from hw_sim.zmq_sender import SendSummary, StreamFaults, ZmqFrameSender

__all__ = ["Stream2Faults", "StreamFaults", "run_sim", "run_sim_ioc", "run_sim_udp"]
from kernels import Geometry

# the simulated detector's sensor, sent in its series header as a real one does (NXmx needs both; DIALS
# refuses a detector of unknown material): silicon, 450 um, as an EIGER2 X
SENSOR = {"sensor_material": "Si", "sensor_thickness": 450e-6}


READOUT_DEAD_TIME = 100e-9  # seconds between exposures, as a continuously read-out pixel detector


def series_config(
    seed: int, pool: int, geometry: dict[str, Any], mode: str, rate_hz: float = 0.0
) -> dict[str, Any]:
    """What the simulator's series header says of itself: its seed, pattern pool, geometry, name, sensor,
    and, when it sends at a set rate, its frame and count time (DECTRIS's ``frame_time``, ``count_time``)."""
    config: dict[str, Any] = {
        "seed": seed,
        "pool": pool,
        "geometry": geometry,
        "detector": f"edge-sim {mode}",
        "mode": mode,
        **SENSOR,
    }
    if rate_hz > 0:
        config["frame_time"] = 1.0 / rate_hz
        config["count_time"] = max(config["frame_time"] - READOUT_DEAD_TIME, config["frame_time"] / 2)
    return config


def _progress(summary: SendSummary) -> None:
    rate = summary.frames_sent / summary.seconds if summary.seconds else 0.0
    end = "\r" if sys.stderr.isatty() else "\n"
    sys.stderr.write(
        f"sim: series {summary.series}: {summary.frames_sent} frames sent, {rate:.1f} frames/s,"
        f" held back {summary.seconds_held_back:.1f} s{end}"
    )
    sys.stderr.flush()


IMAGE_KEYS = {"projection": 0, "flat": 1, "dark": 2}  # NXtomo's image_key


def frame_meta(source: Any) -> Callable[[int], dict[str, Any]] | None:
    """Per-frame fields of the image message: tomography frames carry their image key and angle."""
    if getattr(source, "mode", None) != "tomo":
        return None

    def meta(number: int) -> dict[str, Any]:
        truth = source.frame_truth(number)
        fields: dict[str, Any] = {"image_key": IMAGE_KEYS[truth.kind]}
        if truth.angle_deg is not None:
            fields["rotation_angle"] = truth.angle_deg
        return fields

    return meta


def spots_truth(source: Any, sent: int) -> dict[str, Any]:
    """The spots mode's truth for frames ``0 .. sent - 1`` (frame n shows pattern n % pool): the hit
    frames as ``[first, last]`` ranges, and how many spots each hit holds (``spots_per_hit``, in the
    order of the hit frames)."""
    patterns = source.truth.patterns
    hits = [n for n in range(sent) if patterns[n % len(patterns)].hit]
    ranges: list[list[int]] = []
    for n in hits:
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return {
        "hit_fraction": source.truth.hit_fraction,
        "hits": len(hits),
        "hit_frames": ranges,
        "spots_per_hit": [len(patterns[n % len(patterns)].spots) for n in hits],
    }


def _prepare(source: Any, frames: int, pool: int) -> None:
    """Draw the noise realisations before the series starts (a detector is ready when armed), so the
    first frames leave at the chosen rate instead of waiting on Poisson draws. Each frame is seeded on
    its own and NumPy's generators let go of the GIL while drawing: the frames are drawn on every core
    (a spots series draws a pattern per frame, ~20 ms each at 512^2)."""
    numbers = range(min(pool, frames) if frames else pool)
    with ThreadPoolExecutor(max_workers=max(1, min(len(numbers), os.cpu_count() or 1))) as draw:
        for _ in draw.map(source.frame, numbers):
            pass


def run_sim(
    endpoint: str,
    shape: tuple[int, int],
    dtype: str,
    geometry: dict[str, float],
    mode: str,
    frames: int,
    rate_hz: float,
    seed: int,
    pool: int,
    encoding: str,
    series: int,
    as_json: bool,
    run_uid: str | None = None,
    faults: StreamFaults | None = None,
    stream_format: str = "json",
    stream2_faults: Stream2Faults | None = None,
    options: dict[str, Any] | None = None,
    stopped_before: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Send one series of powder frames and return (and print) the summary.

    ``stream_format`` ``json`` is the DECTRIS stream v1 style message sequence; ``stream2`` is DECTRIS
    Stream V2 (CBOR, bitshuffle-LZ4 images) with ``stream2_faults`` (``encoding`` and ``faults`` apply
    to ``json`` only).

    ``--corrupt P`` (``sim.corrupt``) differs by format (README, "What runs where"). ``json``: an image
    message's data part goes out one byte shorter than its header's ``size``, so the daemon rejects the
    message and records the frame lost as ``stream_bad_size`` (``truth.frames_corrupted``). ``stream2``:
    the first LZ4 block of the image's chunk is overwritten with bytes LZ4 cannot decode, in a well-formed
    message, so the daemon's chunk check records ``stream2_bad_chunk`` (``truth.frames_bad_block``).
    The printed ``run_uid`` is the one announced, also when the daemon records the run under a fresh uid
    (one the ledger already holds): ``edge where RUN_UID`` names both.
    """
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if stopped_before is not None and stopped_before():  # asked to stop while it started
        stop.set()
    if mode == "spots" and frames:
        pool = max(pool, frames)  # every frame a distinct pattern: ground truth covers distinct frames
    source = make_source(
        mode, shape, Geometry(**geometry), seed=seed, pool=pool, dtype=dtype, **(options or {})
    )
    _prepare(source, frames, pool)
    context = zmq.Context()
    sender = ZmqFrameSender(endpoint, context)
    sys.stderr.write(
        f"sim: streaming on {sender.endpoint} ({frames or 'unbounded'} frames at {rate_hz} Hz)\n"
    )
    config = series_config(seed, pool, geometry, mode, rate_hz)
    if stream_format == "stream2":
        uid = run_uid or str(uuid.uuid4())
        summary = send_series_stream2(
            sender, source.frame, frames, rate_hz, series, uid, config, stop, _progress, stream2_faults
        )
    else:
        summary = sender.send_series(
            source.frame,
            frames,
            rate_hz,
            series,
            run_uid or str(uuid.uuid4()),
            config,
            stop,
            encoding,
            _progress,
            faults,
            meta=frame_meta(source),
        )
    result = summary.as_dict()
    axis = getattr(source, "axis_px", None)
    if axis is not None:  # a tomography scan: the truth its reconstruction is checked against
        result["tomo"] = {
            "rotation_axis_px": axis,
            "angles_deg": [source.truth.angles_deg[i] for i in (0, -1)],
        }
    if getattr(source, "mode", None) == "spots":  # serial: which frames sent are hits (an outside probe
        # rebuilt it from the simulator's code to check the appliance's hit decisions)
        result["spots"] = spots_truth(source, summary.frames_sent)
    # said before the socket closes (a Ctrl-C while the appliance held the sender back printed nothing for
    # 15 s, an outside probe's script saw no summary); with the end message not taken, the consumer takes
    # nothing: the frames still queued are not waited for (the port is free at once for the next sender)
    withheld = stream_format == "stream2" and bool(stream2_faults and stream2_faults.missing_end)  # injected
    refused = not summary.end_sent and not withheld
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"sim: sent {summary.frames_sent} frames in {summary.seconds:.1f} s "
            f"({result['rate_hz_achieved']} frames/s), series {series}, run {summary.run_uid}"
            + ("; its end message was not taken (the consumer held it back)" if refused else ""),
            flush=True,
        )
    sender.close(0 if refused else 10_000)
    context.term()
    return result


def run_sim_ioc(
    prefix: str,
    endpoint: str,
    shape: tuple[int, int],
    dtype: str,
    geometry: dict[str, float],
    mode: str,
    seed: int,
    pool: int,
    encoding: str,
    series: int,
    stream_format: str = "json",
    stopped_state: str = "Aborted",
    options: dict[str, Any] | None = None,
) -> dict[str, int]:
    """``edge sim --ioc``: the camera IOC at ``prefix`` drives the frame stream (see `hw_sim.detector`).

    The CA port and interface come from the environment (``EPICS_CA_SERVER_PORT``, default 5064;
    the first of ``EPICS_CAS_INTF_ADDR_LIST``, default 127.0.0.1), as for any caproto server.
    """
    import logging
    import os

    from hw_sim.detector import run_detector
    from hw_sim.ioc import _FirstBeaconErrorOnly

    logging.getLogger("caproto.ctx").addFilter(_FirstBeaconErrorOnly())
    port = int(os.environ.get("EPICS_CA_SERVER_PORT", "5064"))
    interface = (os.environ.get("EPICS_CAS_INTF_ADDR_LIST", "").split() or ["127.0.0.1"])[0]
    source = make_source(
        mode, shape, Geometry(**geometry), seed=seed, pool=pool, dtype=dtype, **(options or {})
    )
    config = series_config(seed, pool, geometry, mode)
    stats = run_detector(
        prefix=prefix,
        endpoint=endpoint,
        frame=source.frame,
        port=port,
        interface=interface,
        first_series=series,
        encoding=encoding,
        config=config,
        stream_format=stream_format,
        stopped_state=stopped_state,
    )
    sys.stderr.write(f"sim: detector stopped: {json.dumps(stats)}\n")
    return stats


def _udp_frame_number(packet: bytes) -> int:
    """The frame number of a UDP datagram of ours (docs/wire-formats.md section 1: a u64 at byte 8); -1
    for one cut too short to hold it (an injected fault)."""
    if len(packet) < 16:
        return -1
    return int(struct.unpack_from("<Q", packet, 8)[0])


def run_sim_udp(
    port: int,
    detector: dict[str, Any],
    geometry: dict[str, float],
    mode: str,
    frames: int,
    rate_hz: float,
    seed: int,
    pool: int,
    faults: dict[str, float],
    fault_seed: int,
    stall_seconds: float,
    burst: int,
    as_json: bool,
    batch: int = 32,
    options: dict[str, Any] | None = None,
    stopped_before: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Send powder frames as UDP packets to 127.0.0.1:``port`` with injected faults; return the truth.

    Frames are packetized and faulted in batches, so an unbounded run (``frames`` 0) uses bounded memory.
    The summary lists, frame by frame, which frames the receiver must see as lost or incomplete.
    ``--corrupt P`` damages a packet (not a frame) with probability P: one of six header or length faults
    (``hw_sim.udp_packets.CORRUPTIONS``) that the receiver rejects by reason, leaving its frame
    incomplete, or lost when none of its packets came intact.
    """
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if stopped_before is not None and stopped_before():  # asked to stop while it started
        stop.set()
    layout = DetectorGeometry(**detector)
    source = make_source(
        mode, layout.raw_shape, Geometry(**geometry), seed=seed, pool=pool, **(options or {})
    )
    _prepare(source, frames, pool)
    sender = UdpFrameSender(layout, port, rate_hz=rate_hz)
    sys.stderr.write(
        f"sim: UDP to 127.0.0.1:{port}, {layout.n_modules} modules, "
        f"{layout.packets_per_frame} packets/frame, "
        f"{frames or 'unbounded'} frames at {rate_hz} Hz, faults {faults}\n"
    )
    truth: dict[str, Any] = {
        "frames_lost": [],
        "frames_incomplete": [],
        "packets_dropped": 0,
        "packets_corrupted": 0,
        "packets_duplicated": 0,
        "packets_reordered": 0,
    }
    started = time.perf_counter()
    sent = 0
    stalled = False
    number = 0
    # each frame's exposure start on the "detector clock" (the wall clock when the acquisition began,
    # plus the frame period): another acquisition's frame of the same number has another timestamp
    began_ns = time.time_ns()
    period_ns = round(1e9 / rate_hz) if rate_hz > 0 else 1_000_000

    def exposure(frame_number: int) -> int:
        return began_ns + frame_number * period_ns

    while (frames == 0 or number < frames) and not stop.is_set():
        count = batch if frames == 0 else min(batch, frames - number)
        numbers = range(number, number + count)
        plan = FaultPlan(seed=fault_seed + number, **faults)
        stream = apply_faults(layout, [(n, source.frame(n)) for n in numbers], plan, timestamp_ns=exposure)
        packets = stream.packets
        if stall_seconds and not stalled and frames and number + count >= frames // 2:
            # between two frames (a detector pauses between frames, not inside one; inside one, the frame
            # was cut in two across the receiver's runs): every packet of the frames before the batch's
            # middle one, then the pause, then the rest, each part in its (reordered) order. No reordered
            # packet crosses the pause: one that did arrived after the receiver had ended the frame
            # (``udp.idle_seconds``), and the frame the truth called complete was stored incomplete (an
            # outside probe)
            middle = numbers[len(numbers) // 2]
            early = [packet for packet in packets if _udp_frame_number(packet) < middle]
            sender.send_packets(early, burst)
            sender.hold(stall_seconds)  # the injected stall itself
            packets = [packet for packet in packets if _udp_frame_number(packet) >= middle]
            stalled = True
        sender.send_packets(packets, burst)
        t = stream.truth
        truth["frames_lost"] += t.frames_lost
        truth["frames_incomplete"] += t.frames_incomplete
        truth["packets_dropped"] += sum(len(v) for v in t.dropped.values())
        truth["packets_corrupted"] += sum(len(v) for v in t.corrupted.values())
        truth["packets_duplicated"] += sum(len(v) for v in t.duplicated.values())
        truth["packets_reordered"] += t.reordered
        sent += count
        number += count
        _progress(SendSummary(0, "", frames_sent=sent, seconds=time.perf_counter() - started))
    sender.close()
    seconds = time.perf_counter() - started
    result = {
        "transport": "udp",
        "frames_sent": sent,
        "packets_sent": sender.packets_sent,
        "seconds": seconds,
        "rate_hz_achieved": round(sent / seconds, 2) if seconds else 0.0,
        "stopped_early": stop.is_set(),
        "faults": {**faults, "stall_seconds": stall_seconds, "burst": burst},
        "truth": truth,
    }
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"sim: sent {sent} frames ({sender.packets_sent} packets) in {seconds:.1f} s; "
            f"{len(truth['frames_lost'])} frames lost and {len(truth['frames_incomplete'])} incomplete "
            "by injected faults",
            flush=True,
        )
    return result
