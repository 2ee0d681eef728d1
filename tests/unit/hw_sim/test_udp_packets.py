"""Tests for the simulator's UDP fault injection ground truth and the loopback sender."""

from __future__ import annotations

import itertools
import socket
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.udp_codec import (
    HEADER_SIZE,
    DetectorGeometry,
    FrameAssembled,
    PacketRejected,
    UdpFrameAssembler,
    decode_header,
    packetize_frame,
)
from hw_sim.udp_packets import CORRUPTIONS, FaultPlan, UdpFrameSender, apply_faults, random_frames

GEOM = DetectorGeometry(
    module_rows=4, module_cols=8, grid_rows=1, grid_cols=2, gap_pixels=3, payload_bytes=16
)
FRAMES = random_frames(GEOM, range(5, 15), seed=1)


def clean_packets() -> list[bytes]:
    return [p for n, f in FRAMES for p in packetize_frame(GEOM, n, f, n * 1_000_000)]


def test_fault_plan_validates_probabilities() -> None:
    with pytest.raises(ValueError, match="loss"):
        FaultPlan(loss=1.5)
    with pytest.raises(ValueError, match="reorder"):
        FaultPlan(reorder=-0.1)


def test_no_faults_is_the_plain_packet_stream() -> None:
    stream = apply_faults(GEOM, FRAMES)
    assert stream.packets == clean_packets()
    truth = stream.truth
    assert truth.frames_complete == list(range(5, 15))
    assert truth.frames_incomplete == [] and truth.frames_lost == []
    assert (truth.first_frame, truth.last_frame, truth.packets_sent) == (5, 14, 10 * GEOM.packets_per_frame)
    assert truth.expected_counters()["packets_accepted"] == 10 * GEOM.packets_per_frame


def test_total_loss_loses_every_frame() -> None:
    stream = apply_faults(GEOM, FRAMES, FaultPlan(loss=1.0))
    assert stream.packets == []
    assert stream.truth.frames_lost == list(range(5, 15))
    assert stream.truth.expected_counters()["packets_missing"] == 10 * GEOM.packets_per_frame


def test_skipped_frame_numbers_are_lost_and_order_is_enforced() -> None:
    frames = [FRAMES[0], (9, FRAMES[1][1]), (10, FRAMES[2][1])]
    truth = apply_faults(GEOM, frames).truth
    assert truth.frames_lost == [6, 7, 8]
    with pytest.raises(ValueError, match="increase"):
        apply_faults(GEOM, [FRAMES[1], FRAMES[0]])


def test_full_duplication_sends_every_packet_twice() -> None:
    stream = apply_faults(GEOM, FRAMES, FaultPlan(duplicate=1.0, seed=3))
    assert Counter(stream.packets) == Counter({p: 2 for p in clean_packets()})
    assert sum(len(v) for v in stream.truth.duplicated.values()) == len(clean_packets())


def test_every_corruption_is_rejected_for_its_recorded_reason() -> None:
    stream = apply_faults(GEOM, FRAMES, FaultPlan(corrupt=1.0, seed=4))
    truth = stream.truth
    assert set(truth.rejections) == set(CORRUPTIONS)
    asm = UdpFrameAssembler(GEOM)
    reasons = Counter()
    for packet in stream.packets:
        (event,) = asm.feed(packet)
        assert isinstance(event, PacketRejected)
        reasons[event.reason] += 1
    assert dict(reasons) == truth.rejections
    assert truth.frames_lost == list(range(5, 15))


def test_corruption_touches_only_the_named_field() -> None:
    stream = apply_faults(GEOM, FRAMES[:1], FaultPlan(corrupt=1.0, seed=5))
    clean = clean_packets()[: GEOM.packets_per_frame]
    corrupted = stream.truth.corrupted[5]
    for i, (original, damaged) in enumerate(zip(clean, stream.packets, strict=True)):
        reason = corrupted[divmod(i, GEOM.packets_per_module_frame)]
        if reason == "length_mismatch":
            assert damaged[:HEADER_SIZE] == original[:HEADER_SIZE] and len(damaged) < len(original)
        elif reason == "bad_magic":
            assert damaged[4:] == original[4:] and damaged[:4] != original[:4]
        else:
            a, b = decode_header(original), decode_header(damaged)
            changed = {k for k in vars(a) if getattr(a, k) != getattr(b, k)}
            field = {
                "bad_version": "header_version",
                "module_out_of_range": "module_id",
                "packets_per_frame_mismatch": "packets_per_frame",
                "packet_index_out_of_range": "packet_index",
            }[reason]
            assert changed == {field}


@settings(max_examples=100, deadline=None)
@given(
    loss=st.floats(0, 0.5),
    reorder=st.floats(0, 1),
    duplicate=st.floats(0, 0.5),
    corrupt=st.floats(0, 0.3),
    seed=st.integers(0, 2**31),
)
def test_ground_truth_is_consistent_and_reorder_respects_the_two_frame_barrier(
    loss: float, reorder: float, duplicate: float, corrupt: float, seed: int
) -> None:
    plan = FaultPlan(loss, reorder, duplicate, corrupt, seed)
    stream = apply_faults(GEOM, FRAMES, plan)
    truth = stream.truth
    # Same seed without reordering: the same datagrams, in send order.
    unordered = apply_faults(GEOM, FRAMES, FaultPlan(loss, 0.0, duplicate, corrupt, seed))
    assert Counter(stream.packets) == Counter(unordered.packets)
    # No datagram of frame N comes after one of frame >= N + 2.
    highest = -1
    for packet in stream.packets:
        number = decode_header(packet).frame_number
        assert number > highest - 2
        highest = max(highest, number)
    # Every sent packet has exactly one fate.
    for n in range(5, 15):
        dropped, corrupted = truth.dropped.get(n, set()), set(truth.corrupted.get(n, {}))
        assert not dropped & corrupted
        assert not set(truth.duplicated.get(n, [])) & (dropped | corrupted)
        intact = GEOM.packets_per_frame - len(truth.missing(n))
        where = (
            truth.frames_complete
            if intact == GEOM.packets_per_frame
            else truth.frames_incomplete
            if intact
            else truth.frames_lost
        )
        assert n in where
    counters = truth.expected_counters()
    assert counters["packets_received"] == len(stream.packets)
    assert counters["packets_received"] == (
        counters["packets_accepted"] + counters["packets_duplicate"] + counters["packets_rejected"]
    )


def test_same_seed_same_stream() -> None:
    plan = FaultPlan(0.1, 0.3, 0.1, 0.1, seed=42)
    assert apply_faults(GEOM, FRAMES, plan).packets == apply_faults(GEOM, FRAMES, plan).packets
    other = FaultPlan(0.1, 0.3, 0.1, 0.1, seed=43)
    assert apply_faults(GEOM, FRAMES, plan).packets != apply_faults(GEOM, FRAMES, other).packets


def test_sender_refuses_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        UdpFrameSender(GEOM, 9999, host="10.0.0.1")
    with pytest.raises(ValueError, match="rate_hz"):
        UdpFrameSender(GEOM, 9999, rate_hz=0)


def test_sender_paces_frames_with_the_injected_clock() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(dt: float) -> None:
        sleeps.append(dt)
        now[0] += dt

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        with UdpFrameSender(GEOM, port, rate_hz=10.0, clock=lambda: now[0], sleep=sleep) as sender:
            sender.send_frames(FRAMES[:3])
            assert sender.packets_sent == 3 * GEOM.packets_per_frame
    assert sleeps == pytest.approx([0.1, 0.1])


def test_bursts_keep_the_average_rate() -> None:
    """A technician's probe: over UDP ``--burst 10`` at 50 Hz sent 475 frames/s (each period sent ten
    frames' worth). Bursts of N frames now come every N periods: the same average rate."""
    now = [100.0]
    sleeps: list[float] = []

    def sleep(dt: float) -> None:
        sleeps.append(dt)
        now[0] += dt

    packets = [p for n, f in FRAMES[:6] for p in packetize_frame(GEOM, n, f, n * 1_000_000)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        with UdpFrameSender(
            GEOM, rx.getsockname()[1], rate_hz=10.0, clock=lambda: now[0], sleep=sleep
        ) as sender:
            sender.send_packets(packets, burst=3)  # six frames: two bursts of three, 0.3 s apart
    assert sleeps == pytest.approx([0.3])


def test_sender_reaches_an_assembler_over_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5.0)
        with UdpFrameSender(GEOM, rx.getsockname()[1]) as sender:
            truth = sender.send_frames(FRAMES[:3], FaultPlan(loss=0.1, duplicate=0.1, seed=9))
        expected = truth.expected_counters()
        asm = UdpFrameAssembler(GEOM, frame_timeout_frames=2, expected_first_frame=5)
        events = []
        for _ in range(expected["packets_received"]):
            events += asm.feed(rx.recv(65536))
        events += asm.close(expected_last_frame=7)
    assert {k: v for k, v in asm.counters.items() if k in expected} == expected
    assert {e.frame_number for e in events if isinstance(e, FrameAssembled)} == set(
        truth.frames_complete + truth.frames_incomplete
    )


@pytest.mark.parametrize("plan", [FaultPlan(), FaultPlan(loss=0.3, duplicate=0.3, reorder=0.3, seed=4)])
def test_pacing_follows_frame_numbers_whatever_the_faults(plan: FaultPlan) -> None:
    """A technician's probe: pacing counted packets, so lost packets sped the frames up and duplicates
    slowed them down. Frames now go out by their number: 6 frames at 10 Hz take 0.5 s with or without
    faults, also when sent in two calls, and a stall between the calls is not caught up afterwards."""
    now = [100.0]
    sent_at: list[float] = []

    def sleep(dt: float) -> None:
        now[0] += dt

    stream = apply_faults(GEOM, FRAMES[:6], plan)
    half = len(stream.packets) // 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        with UdpFrameSender(
            GEOM, rx.getsockname()[1], rate_hz=10.0, clock=lambda: now[0], sleep=sleep
        ) as sender:
            sender.send_packets(stream.packets[:half])
            sent_at.append(now[0])
            sender.hold(2.0)  # a stall: 2 s with nothing sent
            sender.send_packets(stream.packets[half:])
    assert now[0] == pytest.approx(100.0 + 0.5 + 2.0)
    assert sent_at[0] < 100.0 + 0.5


@pytest.mark.parametrize("fault", [("--loss", "0.02"), ("--reorder", "0.3")])
def test_the_simulator_s_stall_falls_between_two_frames(fault: tuple[str, str]) -> None:
    """An outside chaos probe: ``edge sim --transport udp --stall 3 --loss 0.02`` paused half-way through
    a batch's packets, inside a frame: the receiver's run ended on a frame cut in two, and the rest of it
    began a new acquisition (every frame then had two dispositions). A detector pauses between frames.
    With ``--reorder`` a packet of the frame after the pause went before it (another probe: a frame the
    truth called complete was stored incomplete): no packet crosses the pause."""
    import struct
    import subprocess
    import sys
    import time

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(3.0)  # longer than the stall: a timeout is the series' end
    port = receiver.getsockname()[1]
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "sim",
            *("--set", 'stream.transport="udp"', "--set", f"udp.port={port}"),
            *("--set", "udp.grid_cols=1", "--frames", "40", "--rate", "400", "--stall", "0.8"),
            *fault,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    arrivals: list[tuple[float, int]] = []
    try:
        while True:
            try:
                packet = receiver.recv(65536)
            except TimeoutError:
                break
            arrivals.append((time.monotonic(), struct.unpack_from("<Q", packet, 8)[0]))
    finally:
        receiver.close()
        sim.communicate(timeout=60)
    gaps = [(b[0] - a[0], i) for i, (a, b) in enumerate(itertools.pairwise(arrivals), start=1)]
    longest, at = max(gaps)
    assert longest >= 0.5, longest  # the stall
    before, after = {f for _, f in arrivals[:at]}, {f for _, f in arrivals[at:]}
    assert max(before) < min(after), (sorted(before)[-3:], sorted(after)[:3])
