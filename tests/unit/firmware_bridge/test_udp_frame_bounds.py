"""The UDP assembler's frame-number bound, as the appliance runs it (``expected_first_frame=0`` and a
``max_frame_jump``): strays are rejected and counted without a gap, and no accepted frame number is ever
beyond 2**63 - 1, however large the configured jump (issue 12, hole 1)."""

from __future__ import annotations

import numpy as np

from firmware_bridge.udp_codec import (
    DetectorGeometry,
    FrameAssembled,
    FramesLost,
    PacketRejected,
    UdpFrameAssembler,
    packetize_frame,
)

GEOMETRY = DetectorGeometry(module_rows=4, module_cols=6, grid_rows=1, grid_cols=2, payload_bytes=16)


def packets(frame: int) -> list[bytes]:
    return packetize_frame(GEOMETRY, frame, np.full(GEOMETRY.raw_shape, frame % 1000))


def test_strays_in_a_run_are_rejected_counted_and_leave_the_run_intact() -> None:
    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=1000)
    events = []
    for frame in range(30):
        events += [e for p in packets(frame) for e in asm.feed(p)]
        if frame in (10, 15, 20):
            events += asm.feed(packets({10: 10**9, 15: 2**63, 20: 2**64 - 1}[frame])[0])
    events += asm.close(expected_last_frame=29)
    assert [e.frame_number for e in events if isinstance(e, FrameAssembled)] == list(range(30))
    assert [e.frame_number for e in events if isinstance(e, PacketRejected)] == [10**9, 2**63, 2**64 - 1]
    assert not [e for e in events if isinstance(e, FramesLost)]
    counters = asm.counters
    assert counters["packets_rejected_frame_number_out_of_range"] == 3
    assert counters["frames_lost"] == counters["packets_late"] == 0


def test_a_stray_as_the_first_packet_is_measured_from_frame_0() -> None:
    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=1000)
    assert asm.feed(packets(1001)[0]) == [PacketRejected("frame_number_out_of_range", 1001)]
    # within the bound: held until a second packet near it confirms it, then the frames it skips are a
    # real gap (W = 4 frames still open)
    assert asm.feed(packets(1000)[0]) == [] and asm.counters["packets_held"] == 1
    assert asm.feed(packets(1000)[1]) == [FramesLost(0, 996, "frame_number_jump")]


def test_no_frame_number_beyond_int64_is_accepted_whatever_the_jump() -> None:
    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=2**62)
    assert asm.feed(packets(2**62)[0]) == []  # held: a jump no other packet confirmed yet
    assert asm.feed(packets(2**62)[1]) == [FramesLost(0, 2**62 - 4, "frame_number_jump")]
    assert asm.feed(packets(2**63)[0]) == [PacketRejected("frame_number_out_of_range", 2**63)]
    assert asm.feed(packets(2**63 - 1)[0]) != [PacketRejected("frame_number_out_of_range", 2**63 - 1)]


def test_the_readers_assembler_counters_are_all_there_before_the_first_packet() -> None:
    """docs/api.md 3.3: every key present, at 0, before any datagram (it was ``{}`` until the first)."""
    from firmware_bridge.udp_reader import UdpSource

    source = UdpSource("127.0.0.1", 0, GEOMETRY, sink=None)  # type: ignore[arg-type]
    try:
        assembler = source.counters()["assembler"]
    finally:
        source.stop()
    assert assembler["packets_received"] == 0 and assembler["frames_lost"] == 0
    expected = UdpFrameAssembler(GEOMETRY).counters
    assert set(assembler) == set(expected) and not any(assembler.values())


def _run(asm: UdpFrameAssembler, sequence: list[bytes]) -> list[object]:
    return [e for p in sequence for e in asm.feed(p)]


def test_one_stray_packet_within_the_bound_declares_nothing_lost() -> None:
    """An outside sender: one packet of frame 500009 in the middle of a run (within max_frame_jump)
    recorded 499 999 frames lost, the real frames after it late, and a frame never sent stored. A jump
    is now believed only when another packet near it confirms it: the stray is rejected, counted."""
    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=1_000_000)
    events = _run(asm, [p for frame in range(10) for p in packets(frame)])
    events += _run(asm, [packets(500_009)[0]])
    events += _run(asm, [p for frame in range(10, 30) for p in packets(frame)])
    events += asm.close(expected_last_frame=29)
    assert [e.frame_number for e in events if isinstance(e, FrameAssembled)] == list(range(30))
    assert not [e for e in events if isinstance(e, FramesLost)]
    assert [e for e in events if isinstance(e, PacketRejected)] == [
        PacketRejected("frame_number_unconfirmed", 500_009)
    ]
    counters = asm.counters
    assert counters["packets_late"] == counters["frames_lost"] == counters["packets_held"] == 0
    assert counters["packets_rejected_frame_number_unconfirmed"] == 1


def test_a_real_jump_is_confirmed_by_the_next_packet_and_its_frames_recorded_lost() -> None:
    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=1_000_000)
    events = _run(asm, [p for frame in range(3) for p in packets(frame)])
    first, *rest = packets(100)
    assert asm.feed(first) == [] and asm.counters["packets_held"] == 1
    assert asm.feed(first) == [] and asm.counters["packets_duplicate"] == 1  # a copy confirms nothing
    events = _run(asm, rest)
    assert [e for e in events if isinstance(e, FramesLost)] == [FramesLost(3, 96, "frame_number_jump")]
    assert [e.frame_number for e in events if isinstance(e, FrameAssembled)] == [100]
    assert asm.counters["packets_held"] == 0


def test_a_packet_far_ahead_of_its_frames_is_taken_when_they_catch_up() -> None:
    """Reordered by more than the window: held, then taken as the frames before it arrive (before, it
    declared them lost and their packets late)."""
    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=1_000_000)
    early = packets(12)
    events = _run(asm, [*packets(0), early[0]])
    events += _run(asm, [p for frame in range(1, 12) for p in packets(frame)] + early[1:])
    events += asm.close(expected_last_frame=12)
    assert sorted(e.frame_number for e in events if isinstance(e, FrameAssembled)) == list(range(13))
    assert not [e for e in events if isinstance(e, FramesLost | PacketRejected)]


def test_at_close_a_held_packet_is_taken_within_the_series_and_rejected_beyond() -> None:
    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=1_000_000)
    _run(asm, [*packets(0), packets(20)[0]])
    events = asm.close(expected_last_frame=25)
    lost = [n for e in events if isinstance(e, FramesLost) for n in range(e.first, e.last + 1)]
    assert lost == [*range(1, 20), *range(21, 26)]
    assert [e.frame_number for e in events if isinstance(e, FrameAssembled)] == [20]

    asm = UdpFrameAssembler(GEOMETRY, expected_first_frame=0, max_frame_jump=1_000_000)
    _run(asm, [*packets(0), packets(20)[0]])
    events = asm.close()
    assert PacketRejected("frame_number_unconfirmed", 20) in events
    assert not [e for e in events if isinstance(e, FramesLost)]
