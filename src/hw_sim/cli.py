"""``edge sim``: run the simulated detector from the command line (the edge CLI parses the settings)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import uuid
from typing import Any

import zmq

from hw_sim.frames import PowderFrames
from hw_sim.zmq_sender import SendSummary, ZmqFrameSender
from kernels import Geometry


def _progress(summary: SendSummary) -> None:
    rate = summary.frames_sent / summary.seconds if summary.seconds else 0.0
    end = "\r" if sys.stderr.isatty() else "\n"
    sys.stderr.write(
        f"sim: series {summary.series}: {summary.frames_sent} frames sent, {rate:.1f} frames/s{end}"
    )
    sys.stderr.flush()


def run_sim(
    endpoint: str,
    shape: tuple[int, int],
    dtype: str,
    geometry: dict[str, float],
    frames: int,
    rate_hz: float,
    seed: int,
    pool: int,
    encoding: str,
    series: int,
    as_json: bool,
    run_uid: str | None = None,
) -> dict[str, Any]:
    """Send one series of powder frames and return (and print) the summary."""
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    source = PowderFrames(shape, Geometry(**geometry), seed=seed, pool=pool, dtype=dtype)
    context = zmq.Context()
    sender = ZmqFrameSender(endpoint, context)
    sys.stderr.write(
        f"sim: streaming on {sender.endpoint} ({frames or 'unbounded'} frames at {rate_hz} Hz)\n"
    )
    config = {"seed": seed, "pool": pool, "geometry": geometry, "detector": "edge-sim powder"}
    summary = sender.send_series(
        source.frame, frames, rate_hz, series, run_uid or str(uuid.uuid4()), config, stop, encoding, _progress
    )
    sender.close()
    context.term()
    result = summary.as_dict()
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"sim: sent {summary.frames_sent} frames in {summary.seconds:.1f} s "
            f"({result['rate_hz_achieved']} frames/s), series {series}, run {summary.run_uid}",
            flush=True,
        )
    return result


def run_sim_ioc(
    prefix: str,
    endpoint: str,
    shape: tuple[int, int],
    dtype: str,
    geometry: dict[str, float],
    seed: int,
    pool: int,
    encoding: str,
    series: int,
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
    source = PowderFrames(shape, Geometry(**geometry), seed=seed, pool=pool, dtype=dtype)
    config = {"seed": seed, "pool": pool, "geometry": geometry, "detector": "edge-sim powder"}
    stats = run_detector(
        prefix=prefix,
        endpoint=endpoint,
        frame=source.frame,
        port=port,
        interface=interface,
        first_series=series,
        encoding=encoding,
        config=config,
    )
    sys.stderr.write(f"sim: detector stopped: {json.dumps(stats)}\n")
    return stats
