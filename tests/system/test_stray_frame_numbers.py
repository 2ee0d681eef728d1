"""Stray frame numbers from outside (issue 12, hole 1): the real daemon rejects and counts them.

A 30-frame run, over UDP and over the ZeroMQ stream, with three well-formed packets/messages whose frame
number is 1e9, 2**63 and 2**64-1 sent in the middle. The daemon must reject each as
``frame_number_out_of_range`` and count it, keep every one of the 30 real frames and record no loss for
the strays (before the bound, 1e9 declared ~1e9 frames lost and the real frames after it "late", and a
number >= 2**63 killed the UDP reader with an OverflowError from SQLite).

The senders are written here from ``docs/wire-formats.md`` field by field (``struct`` and JSON), not
with the project's own encoders, so they test the format as an outside sender reads it.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import zmq
from edgeprocs import EdgeStack, free_port, get_json, wait_for

FRAMES = 30
STRAYS = (10**9, 2**63, 2**64 - 1)
STRAY_AFTER = (10, 15, 20)  # the real frame after which each stray is sent

# docs/wire-formats.md, section 1: magic, header_version, flags, module_id, frame_number, packet_index,
# packets_per_frame, module_row, module_col, timestamp_ns, payload_length; little-endian, packed
UDP_HEADER = "<4sBBHQIIHHQI"
MODULE_ROWS, MODULE_COLS, GRID_COLS, PAYLOAD_BYTES = 16, 32, 2, 256
PACKETS_PER_MODULE = MODULE_ROWS * MODULE_COLS * 2 // PAYLOAD_BYTES  # uint16 pixels


def udp_frame(frame_number: int) -> list[bytes]:
    """Every datagram of one frame: both modules, row-major pixels cut into 256-byte payloads."""
    datagrams = []
    for module in range(GRID_COLS):
        pixels = np.full(MODULE_ROWS * MODULE_COLS, (frame_number + module) % 60000, dtype="<u2")
        data = pixels.tobytes()
        for index in range(PACKETS_PER_MODULE):
            payload = data[index * PAYLOAD_BYTES : (index + 1) * PAYLOAD_BYTES]
            header = struct.pack(
                UDP_HEADER,
                b"EDGU",
                1,  # header_version
                0,  # flags
                module,
                frame_number,
                index,
                PACKETS_PER_MODULE,
                0,  # module_row
                module,  # module_col
                1_000_000 * (frame_number % 2**40),  # timestamp_ns
                len(payload),
            )
            datagrams.append(header + payload)
    return datagrams


def stored_frame_numbers(store: Path, run: dict[str, Any]) -> list[int]:
    """Frame numbers in the run's HDF5 files (``/entry/data/frame_number``), in storage order."""
    numbers: list[int] = []
    for row in run["files"]:
        path = Path(row["path"])
        if path.suffix != ".h5":  # the run's event-model documents are a file of their own
            continue
        with h5py.File(path if path.is_absolute() else store / path, "r") as handle:
            numbers += [int(n) for n in handle["/entry/data/frame_number"][:]]
    return numbers


def finished_run(stack: EdgeStack) -> dict[str, Any]:
    def ended() -> Any:
        runs = get_json(stack.url + "/api/runs")
        return runs and runs[-1]["ended_at"] is not None and runs[-1]

    row = wait_for(ended, 30, "the run to end")
    return wait_for(
        lambda: (r := stack.run(row["run_uid"]))["files"] and r, 30, "the run's files in the ledger"
    )


def assert_run_intact(stack: EdgeStack, run: dict[str, Any]) -> None:
    assert run["losses"] == [], run["losses"]
    assert sum(f["n_frames"] for f in run["files"]) == FRAMES
    assert sorted(stored_frame_numbers(stack.store, run)) == list(range(FRAMES))
    assert stack.status()["frames"]["lost"] == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_udp_stray_frame_numbers_are_rejected_and_counted(tmp_path: Path) -> None:
    udp_port = free_port()
    stack = EdgeStack(
        tmp_path,
        [
            'stream.transport="udp"',
            f"udp.port={udp_port}",
            f"udp.frames_per_run={FRAMES}",
            f"udp.module_rows={MODULE_ROWS}",
            f"udp.module_cols={MODULE_COLS}",
            "udp.grid_rows=1",
            f"udp.grid_cols={GRID_COLS}",
            f"udp.payload_bytes={PAYLOAD_BYTES}",
            "udp.idle_seconds=1.0",
            "store.frames_per_file=10",
            "reduction.bins=20",
        ],
    )
    try:
        stack.start_daemon()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for frame in range(FRAMES):
                for datagram in udp_frame(frame):
                    sender.sendto(datagram, ("127.0.0.1", udp_port))
                if frame in STRAY_AFTER:
                    stray = STRAYS[STRAY_AFTER.index(frame)]
                    sender.sendto(udp_frame(stray)[0], ("127.0.0.1", udp_port))
                # one frame at a time through the kernel's buffer: wait until the reader has it
                wait_for(
                    lambda n=frame: stack.status()["receiver"].get("frames_received", 0) >= n + 1,
                    10,
                    f"frame {frame} received",
                    interval=0.01,
                )
        run = finished_run(stack)
        assembler = stack.status()["receiver"]["assembler"]
        assert assembler["packets_rejected_frame_number_out_of_range"] == len(STRAYS)
        assert assembler["frames_complete"] == FRAMES
        assert assembler["frames_lost"] == 0 and assembler["packets_late"] == 0
        assert_run_intact(stack, run)
        assert stack.status()["receiver"].get("reader_crashes", 0) == 0

        # strays while no run is open are counted and open no run (which, with frames_per_run set,
        # would otherwise be a run of 30 frames lost)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(udp_frame(2**64 - 1)[0], ("127.0.0.1", udp_port))
            sender.sendto(b"NOPE" + udp_frame(1)[0][4:], ("127.0.0.1", udp_port))
        wait_for(
            lambda: stack.status()["receiver"]["assembler"]["packets_rejected"] == len(STRAYS) + 2,
            10,
            "the two strays counted",
        )
        receiver = stack.status()["receiver"]
        assert receiver["assembler"]["packets_rejected_bad_magic"] == 1
        assert receiver["series"] is None
        assert len(get_json(stack.url + "/api/runs")) == 1
        assert stack.status()["frames"]["lost"] == 0
    finally:
        stack.stop_all()


def stream_json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def stream_image(series: int, frame: int, height: int, width: int) -> list[bytes]:
    """The 4 parts of an image message (docs/wire-formats.md, section 2), raw uint16 pixels."""
    pixels = np.full((height, width), frame % 60000, dtype="<u2").tobytes()
    return [
        stream_json({"htype": "dimage-1.0", "series": series, "frame": frame, "hash": ""}),
        stream_json(
            {
                "htype": "dimage_d-1.0",
                "shape": [width, height],
                "type": "uint16",
                "encoding": "<",
                "size": len(pixels),
            }
        ),
        pixels,
        stream_json({"htype": "dconfig-1.0", "start_time": frame, "stop_time": frame + 1, "real_time": 1}),
    ]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_stream_stray_frame_numbers_are_rejected_and_counted(tmp_path: Path) -> None:
    height, width = 32, 48
    stack = EdgeStack(
        tmp_path,
        [
            f"detector.height={height}",
            f"detector.width={width}",
            "store.frames_per_file=10",
            "reduction.bins=20",
        ],
    )
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 5000
    push.bind(f"tcp://127.0.0.1:{stack.stream_port}")
    try:
        stack.start_daemon()
        series = 7
        push.send_multipart(
            [
                stream_json({"htype": "dheader-1.0", "series": series, "header_detail": "basic"}),
                stream_json(
                    {
                        "htype": "dconfig-edge-1.0",
                        "shape": [width, height],
                        "type": "uint16",
                        "run_uid": f"stray-{free_port()}",
                        "frames_expected": FRAMES,
                    }
                ),
            ]
        )
        for frame in range(FRAMES):
            push.send_multipart(stream_image(series, frame, height, width))
            if frame in STRAY_AFTER:
                push.send_multipart(stream_image(series, STRAYS[STRAY_AFTER.index(frame)], height, width))
        push.send_multipart([stream_json({"htype": "dseries_end-1.0", "series": series})])
        run = finished_run(stack)
        receiver = stack.status()["receiver"]
        assert receiver["frame_number_out_of_range"] == len(STRAYS)
        assert receiver["frames_received"] == FRAMES
        assert receiver.get("frames_gap", 0) == 0 and receiver.get("reader_crashes", 0) == 0
        assert_run_intact(stack, run)
    finally:
        stack.stop_all()
        push.close(0)
        context.term()
