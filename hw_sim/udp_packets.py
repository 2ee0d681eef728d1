"""Simulated detector UDP output: packetize frames, inject network faults, record exact ground truth.

:func:`apply_faults` turns a sequence of ``(frame_number, frame)`` into the datagrams a real module
would send (:func:`firmware_bridge.udp_codec.packetize_frame`) and then damages that stream the way a
network does -- loss, reordering, duplication, corruption -- under a seeded :class:`FaultPlan`. It
returns the datagrams together with a :class:`GroundTruth` that says exactly what was done to every
packet, so tests can demand that the receiver's counters match it to the packet.

:class:`UdpFrameSender` sends such streams to a receiver on 127.0.0.1 with plain ``sendto``.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bridge.udp_codec import (
    HEADER_FORMAT,
    HEADER_SIZE,
    HEADER_VERSION,
    REJECT_BAD_MAGIC,
    REJECT_BAD_VERSION,
    REJECT_LENGTH_MISMATCH,
    REJECT_MODULE_OUT_OF_RANGE,
    REJECT_PACKET_INDEX_OUT_OF_RANGE,
    REJECT_PACKETS_PER_FRAME_MISMATCH,
    DetectorGeometry,
    packetize_frame,
)

__all__ = [
    "CORRUPTIONS",
    "FaultPlan",
    "FaultedStream",
    "GroundTruth",
    "PacketKey",
    "UdpFrameSender",
    "apply_faults",
    "random_frames",
]

#: (module_id, packet_index) of a packet within a frame.
PacketKey = tuple[int, int]

#: Corruptions the simulator applies, each named by the rejection reason the receiver must report.
CORRUPTIONS: tuple[str, ...] = (
    REJECT_BAD_MAGIC,
    REJECT_BAD_VERSION,
    REJECT_LENGTH_MISMATCH,
    REJECT_MODULE_OUT_OF_RANGE,
    REJECT_PACKETS_PER_FRAME_MISMATCH,
    REJECT_PACKET_INDEX_OUT_OF_RANGE,
)

_HEADER = struct.Struct(HEADER_FORMAT)
_FRAME = struct.Struct("<Q")  # the header's frame_number, at byte 8 (docs/wire-formats.md)
_FRAME_AT = 8
_LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class FaultPlan:
    """Per-packet fault probabilities and the seed that makes them reproducible.

    Each packet the detector sends is independently *lost* with probability ``loss``; otherwise
    *corrupted* with probability ``corrupt`` (a header/length fault the receiver must reject); otherwise
    delivered, and then also *duplicated* (one extra intact copy) with probability ``duplicate``. Every
    datagram on the wire (copies and corrupted ones included) is *reordered* with probability
    ``reorder``: delayed to a random later position, but never behind a packet of frame number
    ``>= its frame + 2``. An assembler with ``frame_timeout_frames >= 2`` therefore never sees a late
    packet from this plan, which is what lets the ground truth be exact.
    """

    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultPlan.{name} must be within [0, 1], got {value}")


@dataclass
class GroundTruth:
    """Exactly what :func:`apply_faults` did, per frame, keyed by ``(module_id, packet_index)``.

    ``frames_lost`` covers frames of which no intact packet was sent, including frame numbers skipped
    between consecutive input frames (a frame-number jump).
    """

    packets_per_frame: int
    first_frame: int | None = None
    last_frame: int | None = None
    packets_sent: int = 0
    reordered: int = 0
    dropped: dict[int, set[PacketKey]] = field(default_factory=dict)
    corrupted: dict[int, dict[PacketKey, str]] = field(default_factory=dict)
    duplicated: dict[int, list[PacketKey]] = field(default_factory=dict)
    frames_complete: list[int] = field(default_factory=list)
    frames_incomplete: list[int] = field(default_factory=list)
    frames_lost: list[int] = field(default_factory=list)

    def missing(self, frame_number: int) -> set[PacketKey]:
        """Packets of a frame the receiver can never get intact (dropped or corrupted)."""
        return self.dropped.get(frame_number, set()) | set(self.corrupted.get(frame_number, {}))

    @property
    def rejections(self) -> dict[str, int]:
        """Corrupted packets by the rejection reason they must produce."""
        out: dict[str, int] = {}
        for per_frame in self.corrupted.values():
            for reason in per_frame.values():
                out[reason] = out.get(reason, 0) + 1
        return out

    def expected_counters(self) -> dict[str, int]:
        """Counters a receiver must end with (assembler window >= 2 frames, first and last frame known).

        Keys follow :attr:`firmware_bridge.udp_codec.UdpFrameAssembler.counters`; rejected packets per
        reason appear as ``packets_rejected_<reason>`` for the reasons that occurred.
        """
        n_dropped = sum(len(v) for v in self.dropped.values())
        n_corrupt = sum(len(v) for v in self.corrupted.values())
        n_dup = sum(len(v) for v in self.duplicated.values())
        frames_seen = len(self.frames_complete) + len(self.frames_incomplete)
        out = {
            "packets_received": self.packets_sent - n_dropped + n_dup,
            "packets_accepted": frames_seen * self.packets_per_frame
            - sum(len(self.missing(n)) for n in self.frames_incomplete),
            "packets_duplicate": n_dup,
            "packets_late": 0,
            "packets_rejected": n_corrupt,
            "packets_missing": sum(len(self.missing(n)) for n in self.frames_incomplete)
            + len(self.frames_lost) * self.packets_per_frame,
            "frames_complete": len(self.frames_complete),
            "frames_incomplete": len(self.frames_incomplete),
            "frames_lost": len(self.frames_lost),
        }
        for reason, n in self.rejections.items():
            out[f"packets_rejected_{reason}"] = n
        return out


@dataclass
class FaultedStream:
    """The datagrams as they appear on the wire, and what was done to them."""

    packets: list[bytes]
    truth: GroundTruth


@dataclass
class _Datagram:
    sort_key: float
    frame_number: int
    data: bytes


def apply_faults(
    geometry: DetectorGeometry,
    frames: Iterable[tuple[int, npt.NDArray[Any]]],
    plan: FaultPlan | None = None,
    *,
    timestamp_ns: Callable[[int], int] | None = None,
) -> FaultedStream:
    """Packetize ``frames`` (strictly increasing frame numbers) and apply ``plan``'s faults.

    ``timestamp_ns(frame_number)`` gives each frame's header timestamp (default: frame number x 1 ms).
    """
    plan = plan or FaultPlan()
    rng = random.Random(plan.seed)
    ppm = geometry.packets_per_module_frame
    truth = GroundTruth(packets_per_frame=geometry.packets_per_frame)
    wire: list[_Datagram] = []
    previous: int | None = None
    for frame_number, frame in frames:
        if previous is not None and frame_number <= previous:
            raise ValueError(f"frame numbers must increase: {frame_number} after {previous}")
        if previous is not None:
            truth.frames_lost.extend(range(previous + 1, frame_number))  # never sent
        if truth.first_frame is None:
            truth.first_frame = frame_number
        previous = frame_number
        ts = timestamp_ns(frame_number) if timestamp_ns else frame_number * 1_000_000
        intact = 0
        for i, packet in enumerate(packetize_frame(geometry, frame_number, frame, ts)):
            key = divmod(i, ppm)
            truth.packets_sent += 1
            if rng.random() < plan.loss:
                truth.dropped.setdefault(frame_number, set()).add(key)
                continue
            if rng.random() < plan.corrupt:
                reason = rng.choice(CORRUPTIONS)
                truth.corrupted.setdefault(frame_number, {})[key] = reason
                wire.append(_Datagram(len(wire), frame_number, _corrupt(packet, reason, geometry, rng)))
                continue
            intact += 1
            wire.append(_Datagram(len(wire), frame_number, packet))
            if rng.random() < plan.duplicate:
                truth.duplicated.setdefault(frame_number, []).append(key)
                wire.append(_Datagram(len(wire), frame_number, packet))
        if intact == geometry.packets_per_frame:
            truth.frames_complete.append(frame_number)
        elif intact:
            truth.frames_incomplete.append(frame_number)
        else:
            truth.frames_lost.append(frame_number)
    truth.last_frame = previous
    truth.frames_lost.sort()
    truth.reordered = _reorder(wire, plan.reorder, rng)
    return FaultedStream([d.data for d in wire], truth)


def _reorder(wire: list[_Datagram], probability: float, rng: random.Random) -> int:
    """Delay datagrams in place, never behind a datagram of frame ``>= own + 2``; returns how many."""
    if probability <= 0.0 or not wire:
        return 0
    # Sort keys start as send positions.
    # barrier[i]: position of the first datagram (in send order) whose frame is >= frame[i] + 2.
    barrier = [len(wire)] * len(wire)
    j = 0
    for i, d in enumerate(wire):
        while j < len(wire) and wire[j].frame_number < d.frame_number + 2:
            j += 1
        barrier[i] = j
    moved = 0
    for i, d in enumerate(wire):
        if rng.random() < probability and barrier[i] - i > 1:
            # Keys only ever grow, so a delayed barrier datagram stays behind this one too.
            d.sort_key = rng.randrange(i + 1, barrier[i]) + 0.5  # just after datagram k, i < k < barrier
            moved += 1
    wire.sort(key=lambda d: d.sort_key)
    return moved


def _corrupt(packet: bytes, reason: str, geometry: DetectorGeometry, rng: random.Random) -> bytes:
    """Damage one header field (or the length) so that the receiver must reject it for ``reason``."""
    fields = list(_HEADER.unpack_from(packet))
    payload = packet[HEADER_SIZE:]
    ppm = geometry.packets_per_module_frame
    if reason == REJECT_BAD_MAGIC:
        fields[0] = bytes(b ^ 0xFF for b in fields[0])
    elif reason == REJECT_BAD_VERSION:
        fields[1] = rng.choice([v for v in range(256) if v != HEADER_VERSION])
    elif reason == REJECT_LENGTH_MISMATCH:
        payload = payload[: rng.randrange(len(payload))]
    elif reason == REJECT_MODULE_OUT_OF_RANGE:
        fields[3] = rng.randrange(geometry.n_modules, 0x10000)
    elif reason == REJECT_PACKETS_PER_FRAME_MISMATCH:
        fields[6] = rng.choice([ppm - 1, ppm + 1 + rng.randrange(1000)])
    elif reason == REJECT_PACKET_INDEX_OUT_OF_RANGE:
        fields[5] = ppm + rng.randrange(1000)
    else:
        raise ValueError(f"unknown corruption {reason!r}")
    return _HEADER.pack(*fields) + payload


class UdpFrameSender:
    """Send simulated detector packets to a receiver on 127.0.0.1 with plain ``sendto``.

    ``rate_hz`` paces whole frames (``None``: as fast as the socket allows). The clock and sleep
    functions are passed in so tests can drive pacing without real waiting.
    """

    def __init__(
        self,
        geometry: DetectorGeometry,
        port: int,
        host: str = _LOCALHOST,
        rate_hz: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if host != _LOCALHOST:
            raise ValueError(f"UdpFrameSender only sends to {_LOCALHOST}, got {host!r}")
        if rate_hz is not None and rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        if not 0 < port < 0x10000:
            raise ValueError(f"port must be within 1..65535, got {port}")
        self.geometry = geometry
        self.address = (host, port)
        self.rate_hz = rate_hz
        self._clock = clock
        self._sleep = sleep
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.packets_sent = 0
        self._schedule: tuple[float, int] | None = None  # (when, frame number): what pacing counts from

    def send_packets(self, packets: Sequence[bytes], burst: int = 0) -> int:
        """Send datagrams in order, paced by the frame number each carries, as a detector sends frames:
        frame ``f`` goes out ``(f - first) / rate_hz`` after the first frame sent; with ``burst`` N, N
        frames at once every ``N / rate_hz`` (the same average rate, in bursts). Lost, duplicated or
        reordered packets change no frame's time, and a run sent in several calls keeps one schedule."""
        every = max(1, burst)
        for packet in packets:
            if self.rate_hz is not None and len(packet) >= _FRAME_AT + _FRAME.size:
                frame = _FRAME.unpack_from(packet, _FRAME_AT)[0]
                if self._schedule is None:
                    self._schedule = (self._clock(), frame)
                start, first = self._schedule
                due = start + max(0, frame - first) // every * every / self.rate_hz
                delay = due - self._clock()
                if delay > 0:
                    self._sleep(delay)
            self._sock.sendto(packet, self.address)
            self.packets_sent += 1
        return len(packets)

    def hold(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (an injected stall); the frames after it keep the rate, they do
        not catch up."""
        self._sleep(seconds)
        if self._schedule is not None:
            start, first = self._schedule
            self._schedule = (start + seconds, first)

    def send_frames(
        self, frames: Iterable[tuple[int, npt.NDArray[Any]]], plan: FaultPlan | None = None
    ) -> GroundTruth:
        """Packetize, apply ``plan`` (default: no faults), send, and return the ground truth."""
        stream = apply_faults(self.geometry, frames, plan)
        self.send_packets(stream.packets)
        return stream.truth

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> UdpFrameSender:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def random_frames(
    geometry: DetectorGeometry, frame_numbers: Iterable[int], seed: int = 0
) -> list[tuple[int, npt.NDArray[Any]]]:
    """Frames of uniformly random pixels in the raw (gapless) shape, for tests and captures."""
    rng = np.random.default_rng(seed)
    dt = geometry.wire_dtype
    info = np.iinfo(dt)
    return [
        (n, rng.integers(info.min, info.max, size=geometry.raw_shape, dtype=dt, endpoint=True))
        for n in frame_numbers
    ]
