"""Tests for the UDP packet codec and frame assembler: layout, policy, loss accounting, replay."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.udp_codec import (
    HEADER_SIZE,
    MAGIC,
    REJECT_REASONS,
    DetectorGeometry,
    Event,
    FrameAssembled,
    FramesLost,
    PacketRejected,
    UdpFrameAssembler,
    decode_header,
    encode_capture,
    encode_packet,
    iter_capture,
    packetize_frame,
)
from hw_sim.udp_packets import FaultPlan, apply_faults, random_frames

CAPTURE = Path(__file__).parents[2] / "data" / "udp_capture_v1.bin"

# 2 x 2 modules of 4 x 6 pixels, 5 pixels per packet: 5 packets per module (the last carries 4).
SMALL = DetectorGeometry(
    module_rows=4, module_cols=6, grid_rows=2, grid_cols=2, gap_pixels=2, payload_bytes=10
)


def frames_of(events: list[Event]) -> dict[int, FrameAssembled]:
    return {e.frame_number: e for e in events if isinstance(e, FrameAssembled)}


def lost_of(events: list[Event]) -> list[int]:
    return [n for e in events if isinstance(e, FramesLost) for n in range(e.first, e.last + 1)]


def feed_all(asm: UdpFrameAssembler, packets: list[bytes], now: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for p in packets:
        events += asm.feed(p, now)
    return events


def pixel_mask(geometry: DetectorGeometry, missing: set[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    """Oracle: the assembled-shape mask of the pixels carried by the given (module, packet) pairs."""
    mask = np.zeros(geometry.frame_shape, dtype=bool)
    for module, pidx in missing:
        flat = np.zeros(geometry.module_pixels, dtype=bool)
        start, stop = geometry.packet_pixel_range(pidx)
        flat[start:stop] = True
        mask[geometry.module_slices(module)] |= flat.reshape(geometry.module_shape)
    return mask


def frame(n: int, geometry: DetectorGeometry = SMALL) -> npt.NDArray[Any]:
    return random_frames(geometry, [n], seed=n)[0][1]


# ----------------------------------------------------------------------------------- format, geometry


def test_header_is_40_bytes_little_endian_with_documented_offsets() -> None:
    packet = encode_packet(
        module_id=0x0102,
        frame_number=0x1122334455667788,
        packet_index=0x0A0B0C0D,
        packets_per_frame=0x20,
        module_row=3,
        module_col=4,
        timestamp_ns=0x0102030405060708,
        payload=b"\xaa\xbb",
        flags=0x80,
    )
    assert HEADER_SIZE == 40
    assert packet[0:4] == b"EDGU"
    assert packet[4] == 1 and packet[5] == 0x80
    assert packet[6:8] == b"\x02\x01"
    assert packet[8:16] == bytes.fromhex("8877665544332211")
    assert packet[16:20] == bytes.fromhex("0d0c0b0a")
    assert packet[20:24] == bytes.fromhex("20000000")
    assert packet[24:26] == b"\x03\x00" and packet[26:28] == b"\x04\x00"
    assert packet[28:36] == bytes.fromhex("0807060504030201")
    assert packet[36:40] == b"\x02\x00\x00\x00"
    assert packet[40:] == b"\xaa\xbb"
    header = decode_header(packet)
    assert (header.module_id, header.frame_number, header.packet_index) == (
        0x0102,
        0x1122334455667788,
        0x0A0B0C0D,
    )
    assert (header.payload_length, header.flags, header.magic) == (2, 0x80, MAGIC)
    with pytest.raises(ValueError, match="shorter"):
        decode_header(packet[:39])


def test_geometry_derived_shapes_and_packet_ranges() -> None:
    assert SMALL.frame_shape == (10, 14)
    assert SMALL.raw_shape == (8, 12)
    assert SMALL.pixels_per_packet == 5
    assert SMALL.packets_per_module_frame == 5
    assert SMALL.packets_per_frame == 20
    assert SMALL.packet_pixel_range(4) == (20, 24)
    assert SMALL.packet_payload_size(4) == 8
    assert SMALL.module_slices(3) == (slice(6, 10), slice(8, 14))
    assert SMALL.module_slices(3, gaps=False) == (slice(4, 8), slice(6, 12))
    jungfrau_like = DetectorGeometry()
    assert jungfrau_like.packets_per_module_frame == 128
    assert jungfrau_like.frame_shape == (512, 1024)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"module_rows": 0}, "module_rows"),
        ({"gap_pixels": -1}, "gap_pixels"),
        ({"payload_bytes": 7}, "multiple"),
        ({"dtype": "<f4"}, "integer"),
        ({"grid_cols": 70000}, "uint16"),
    ],
)
def test_geometry_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DetectorGeometry(**kwargs)


def test_packetize_accepts_raw_gapped_and_stacked_frames_alike() -> None:
    raw = frame(1)
    gapped = SMALL.insert_gaps(raw)
    stack = SMALL.split_modules(raw)
    assert packetize_frame(SMALL, 1, raw, 5) == packetize_frame(SMALL, 1, gapped, 5)
    assert packetize_frame(SMALL, 1, raw, 5) == packetize_frame(SMALL, 1, stack, 5)
    with pytest.raises(ValueError, match="shape"):
        packetize_frame(SMALL, 1, np.zeros((3, 3), np.uint16))


def test_capture_container_roundtrip_and_malformed() -> None:
    packets = [b"", b"abc", bytes(range(256))]
    blob = encode_capture(packets)
    assert blob[:8] == b"EDGUCAP1" and blob[8:12] == b"\x00\x00\x00\x00"
    assert list(iter_capture(blob)) == packets
    with pytest.raises(ValueError, match="magic"):
        list(iter_capture(b"NOTACAP!"))
    with pytest.raises(ValueError, match="truncated"):
        list(iter_capture(blob[:-1]))
    with pytest.raises(ValueError, match="truncated"):
        list(iter_capture(blob[:10]))


# ----------------------------------------------------------------------------------- assembly policy


def test_complete_frame_is_bit_exact_with_zero_gaps_and_is_emitted_at_once() -> None:
    asm = UdpFrameAssembler(SMALL)
    raw = frame(7)
    packets = packetize_frame(SMALL, 7, raw, timestamp_ns=123)
    events = feed_all(asm, packets[:-1])
    assert events == []
    events = asm.feed(packets[-1])
    assert len(events) == 1
    (done,) = events
    assert isinstance(done, FrameAssembled)
    assert done.complete and done.missing_mask is None
    assert done.frame_number == 7 and done.timestamp_ns == 123
    assert (done.packets_received, done.packets_expected) == (20, 20)
    assert done.data.dtype == np.uint16 and done.data.shape == SMALL.frame_shape
    np.testing.assert_array_equal(done.data, SMALL.insert_gaps(raw))
    assert not done.data[4:6, :].any() and not done.data[:, 6:8].any()
    assert asm.counters["frames_complete"] == 1 and asm.counters["packets_accepted"] == 20


def test_out_of_order_packets_across_modules_assemble_exactly() -> None:
    asm = UdpFrameAssembler(SMALL)
    packets = packetize_frame(SMALL, 0, frame(0)) + packetize_frame(SMALL, 1, frame(1))
    random.Random(3).shuffle(packets)
    got = frames_of(feed_all(asm, packets))
    assert sorted(got) == [0, 1]
    for n in (0, 1):
        np.testing.assert_array_equal(got[n].data, SMALL.insert_gaps(frame(n)))


def test_duplicates_are_counted_and_ignored_before_and_after_emission() -> None:
    asm = UdpFrameAssembler(SMALL)
    packets = packetize_frame(SMALL, 0, frame(0))
    events = feed_all(asm, [packets[0], packets[0], *packets[1:], packets[5]])
    assert len(frames_of(events)) == 1
    c = asm.counters
    assert (c["packets_received"], c["packets_accepted"], c["packets_duplicate"]) == (22, 20, 2)
    assert c["packets_late"] == 0


def test_missing_packets_give_incomplete_frame_when_window_passes() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2)
    f0 = packetize_frame(SMALL, 0, frame(0))
    dropped = {3, 12}  # module 0 packet 3, module 2 packet 2
    events = feed_all(asm, [p for i, p in enumerate(f0) if i not in dropped])
    events += feed_all(asm, packetize_frame(SMALL, 1, frame(1))[:1])
    assert frames_of(events) == {}, "frame 1 is only 1 frame ahead: frame 0 may still complete"
    events = asm.feed(packetize_frame(SMALL, 2, frame(2))[0])
    (inc,) = frames_of(events).values()
    assert inc.frame_number == 0 and not inc.complete
    assert (inc.packets_received, inc.packets_expected) == (18, 20)
    expected_mask = pixel_mask(SMALL, {(0, 3), (2, 2)})
    assert inc.missing_mask is not None
    np.testing.assert_array_equal(inc.missing_mask, expected_mask)
    full = SMALL.insert_gaps(frame(0))
    np.testing.assert_array_equal(inc.data[~expected_mask], full[~expected_mask])
    assert not inc.data[expected_mask].any()
    c = asm.counters
    assert (c["frames_incomplete"], c["packets_missing"]) == (1, 2)


def test_late_packet_for_emitted_frame_is_counted_late_and_dropped() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=1)
    f0 = packetize_frame(SMALL, 0, frame(0))
    feed_all(asm, f0[1:])
    feed_all(asm, packetize_frame(SMALL, 1, frame(1))[:1])  # finalises frame 0 (window 1)
    assert asm.feed(f0[0]) == []
    assert asm.feed(f0[1]) == []  # received before emission: a duplicate, not late
    c = asm.counters
    assert (c["packets_late"], c["packets_duplicate"], c["frames_incomplete"]) == (1, 1, 1)


def test_late_packet_beyond_history_is_late() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=1, history_frames=0)
    f0 = packetize_frame(SMALL, 0, frame(0))
    feed_all(asm, f0)
    feed_all(asm, packetize_frame(SMALL, 5, frame(5))[:2])  # a jump, confirmed by its second packet
    asm.feed(f0[0])
    assert asm.counters["packets_late"] == 1


def test_an_acquisition_resumed_at_a_frame_counts_from_it() -> None:
    """`begin_at` (a UDP run resumed after a restart): frames below it are an earlier run's, never lost
    here, and a packet of one is late; the receiver stopping reports the rest with its own reason."""
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2, expected_first_frame=None)
    first = feed_all(asm, packetize_frame(SMALL, 40, frame(40))[:1])
    assert asm.highest_frame == 40
    asm.begin_at(40)
    events = feed_all(asm, packetize_frame(SMALL, 40, frame(40))[1:])
    events += feed_all(asm, packetize_frame(SMALL, 39, frame(39))[:1])  # the interrupted run's frame
    assert list(frames_of(first + events)) == [40] and lost_of(events) == []
    assert asm.counters["packets_late"] == 1
    events = asm.close(expected_last_frame=42, reason="receiver_stopped")
    assert events == [FramesLost(41, 42, "receiver_stopped")]
    with pytest.raises(RuntimeError):
        asm.begin_at(0)  # frames were finalised: too late to move the start


def test_the_documented_packet_decodes_to_its_fields() -> None:
    """docs/wire-formats.md's worked example, as bytes written by hand from the table, not our encoder."""
    packet = bytes.fromhex(
        "45 44 47 55 01 00 03 00 07 00 00 00 00 00 00 00"
        "02 00 00 00 03 00 00 00 01 00 01 00 7b ca 9a 3b"
        "00 00 00 00 08 00 00 00 01 00 02 00 02 01 ff ff"
    )
    header = decode_header(packet)
    assert (header.module_id, header.frame_number, header.packet_index, header.packets_per_frame) == (
        3,
        7,
        2,
        3,
    )
    assert (header.module_row, header.module_col, header.timestamp_ns) == (1, 1, 1_000_000_123)
    assert header.payload_length == 8 and header.header_version == 1
    assert np.frombuffer(packet[HEADER_SIZE:], "<u2").tolist() == [1, 2, 258, 65535]


def test_frame_number_jump_reports_lost_range() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2)
    feed_all(asm, packetize_frame(SMALL, 10, frame(10)))
    events = feed_all(asm, packetize_frame(SMALL, 14, frame(14)))
    # Frame 14 settles every frame <= 12; frame 13 is still inside the window and may yet arrive.
    assert [e for e in events if isinstance(e, FramesLost)] == [FramesLost(11, 12, "frame_number_jump")]
    assert events[0] == FramesLost(11, 12) and events[0].count == 2
    events = feed_all(asm, packetize_frame(SMALL, 16, frame(16))[:1])
    assert events == [FramesLost(13, 13)]
    events = asm.close(expected_last_frame=18)
    assert [e for e in events if isinstance(e, FramesLost)] == [
        FramesLost(15, 15, "frame_number_jump"),
        FramesLost(17, 18, "series_end"),
    ]
    c = asm.counters
    assert (c["frames_complete"], c["frames_incomplete"], c["frames_lost"]) == (2, 1, 6)
    assert c["packets_accepted"] + c["packets_missing"] == 9 * SMALL.packets_per_frame


def _renumbered_ppf(packet: bytes, packets_per_frame: int) -> bytes:
    h = decode_header(packet)
    return encode_packet(
        module_id=h.module_id,
        frame_number=h.frame_number,
        packet_index=h.packet_index,
        packets_per_frame=packets_per_frame,
        module_row=h.module_row,
        module_col=h.module_col,
        timestamp_ns=h.timestamp_ns,
        payload=packet[HEADER_SIZE:],
    )


def test_frames_whose_every_packet_was_rejected_are_lost_for_that_reason() -> None:
    """An outside sender: frames 11..12 sent with another packets_per_frame, every packet rejected. Their
    loss record said "no packet of these frames had arrived" (network loss), not the rejection that the
    operator can fix. Frame 13 lost outright keeps its own reason, and a frame that came in part (one
    packet rejected) is stored incomplete, not lost."""
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2)
    feed_all(asm, packetize_frame(SMALL, 10, frame(10)))
    bad = [
        _renumbered_ppf(p, SMALL.packets_per_frame + 1)
        for n in (11, 12)
        for p in packetize_frame(SMALL, n, frame(n))
    ]
    events = feed_all(asm, bad)
    assert {e.reason for e in events if isinstance(e, PacketRejected)} == {"packets_per_frame_mismatch"}
    partial = packetize_frame(SMALL, 14, frame(14))
    events += feed_all(asm, [_renumbered_ppf(partial[0], 1), *partial[1:]])
    events += feed_all(asm, packetize_frame(SMALL, 17, frame(17)))
    per_frame = SMALL.packets_per_frame
    assert [e for e in events if isinstance(e, FramesLost)] == [
        FramesLost(11, 12, "packets_rejected", (("packets_per_frame_mismatch", 2 * per_frame),)),
        FramesLost(13, 13, "frame_number_jump"),
        FramesLost(15, 15, "frame_number_jump"),
    ]
    assert 14 in frames_of(events) and not frames_of(events)[14].complete
    assert asm.counters["frames_lost"] == 4


def test_a_tail_whose_every_packet_was_rejected_is_lost_even_with_the_length_unknown() -> None:
    """An outside probe: frames 0..5 good, 6 and 7 every packet rejected, then silence (the series' length
    unknown): the run ended with 6 frames stored and no record of 6 and 7, though their packets came. A
    rejected stray far beyond them is no frame of the run."""
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2)
    events = [e for n in range(6) for e in feed_all(asm, packetize_frame(SMALL, n, frame(n)))]
    bad = [_renumbered_ppf(p, 1) for n in (6, 7, 40) for p in packetize_frame(SMALL, n, frame(n))]
    events += feed_all(asm, bad)
    lost = [e for e in asm.close() if isinstance(e, FramesLost)]
    assert lost == [
        FramesLost(6, 7, "packets_rejected", (("packets_per_frame_mismatch", 2 * SMALL.packets_per_frame),))
    ]
    assert sorted(frames_of(events)) == list(range(6))


def test_a_frame_beyond_the_armed_ones_whose_every_packet_was_rejected_is_lost() -> None:
    """An outside probe, a run armed for 10 frames (udp.frames_per_run): frames 0..10 good (10 is beyond
    them, stored all the same), frame 11 every packet rejected: its packets came, yet it had no record."""
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2)
    events = [e for n in range(11) for e in feed_all(asm, packetize_frame(SMALL, n, frame(n)))]
    events += feed_all(asm, [_renumbered_ppf(p, 1) for p in packetize_frame(SMALL, 11, frame(11))])
    lost = [e for e in asm.close(expected_last_frame=9) if isinstance(e, FramesLost)]
    assert lost == [
        FramesLost(11, 11, "packets_rejected", (("packets_per_frame_mismatch", SMALL.packets_per_frame),))
    ]
    assert sorted(frames_of(events)) == list(range(11))


def test_expected_first_frame_reports_frames_lost_before_the_first_packet() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2, expected_first_frame=0)
    events = feed_all(asm, packetize_frame(SMALL, 3, frame(3)))
    events += asm.close()
    assert lost_of(events) == [0, 1, 2]


def test_without_expected_first_frame_the_first_frame_seen_may_arrive_late() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2)
    f1 = packetize_frame(SMALL, 1, frame(1))
    f2 = packetize_frame(SMALL, 2, frame(2))
    events = feed_all(asm, [f2[0], f1[0], *f1[1:], *f2[1:]])
    assert sorted(frames_of(events)) == [1, 2]
    assert asm.counters["frames_lost"] == 0 and asm.counters["packets_late"] == 0


def test_huge_frame_jump_is_cheap_and_exact() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=3)
    feed_all(asm, packetize_frame(SMALL, 0, frame(0))[:3])
    far = packetize_frame(SMALL, 2**63, frame(0))
    assert asm.feed(far[0]) == [] and asm.counters["packets_held"] == 1  # a jump: held until confirmed
    events = asm.feed(far[1])
    assert [e.frame_number for e in events if isinstance(e, FrameAssembled)] == [0]
    assert [e for e in events if isinstance(e, FramesLost)] == [FramesLost(1, 2**63 - 3)]
    assert asm.counters["frames_lost"] == 2**63 - 3


def test_max_frame_jump_rejects_a_runaway_frame_number() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2, max_frame_jump=100)
    feed_all(asm, packetize_frame(SMALL, 0, frame(0))[:3])
    (event,) = asm.feed(packetize_frame(SMALL, 2**40, frame(0))[0])
    assert event == PacketRejected("frame_number_out_of_range", 2**40)
    events = feed_all(asm, packetize_frame(SMALL, 100, frame(1)))
    assert [e.frame_number for e in events if isinstance(e, FrameAssembled)] == [0, 100]
    assert asm.counters["packets_rejected_frame_number_out_of_range"] == 1
    asm = UdpFrameAssembler(SMALL, max_frame_jump=5, expected_first_frame=10)
    assert asm.feed(packetize_frame(SMALL, 16, frame(0))[0]) == [
        PacketRejected("frame_number_out_of_range", 16)
    ]


def test_time_based_timeout_finalises_on_flush_and_feed() -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=100, frame_timeout_s=1.0)
    f0 = packetize_frame(SMALL, 0, frame(0))
    feed_all(asm, f0[:5], now=10.0)
    assert asm.flush(10.9) == []
    assert asm.pending_frames == [0]
    (inc,) = asm.flush(11.0)
    assert isinstance(inc, FrameAssembled) and not inc.complete and inc.packets_received == 5
    feed_all(asm, packetize_frame(SMALL, 1, frame(1))[:1], now=20.0)
    events = asm.feed(packetize_frame(SMALL, 2, frame(2))[0], now=21.5)
    assert [e.frame_number for e in events if isinstance(e, FrameAssembled)] == [1]
    assert asm.pending_frames == [2]
    assert UdpFrameAssembler(SMALL).flush(1e9) == []


def test_close_finalises_pending_and_stays_usable() -> None:
    asm = UdpFrameAssembler(SMALL)
    f0 = packetize_frame(SMALL, 0, frame(0))
    feed_all(asm, f0[:4])
    (inc,) = asm.close()
    assert isinstance(inc, FrameAssembled) and not inc.complete
    assert asm.close() == []
    asm.feed(f0[10])
    assert asm.counters["packets_late"] == 1
    assert UdpFrameAssembler(SMALL).close(expected_last_frame=5) == []


def test_accepts_bytearray_and_memoryviews_including_non_contiguous() -> None:
    packets = packetize_frame(SMALL, 0, frame(0))
    asm = UdpFrameAssembler(SMALL)
    events: list[Event] = []
    for i, p in enumerate(packets):
        if i % 3 == 0:
            events += asm.feed(bytearray(p))
        elif i % 3 == 1:
            events += asm.feed(memoryview(p))
        else:
            doubled = np.repeat(np.frombuffer(p, np.uint8), 2)
            events += asm.feed(memoryview(doubled)[::2])
    (done,) = frames_of(events).values()
    np.testing.assert_array_equal(done.data, SMALL.insert_gaps(frame(0)))
    odd = memoryview(np.zeros(30, np.uint16))
    assert asm.feed(odd) == [PacketRejected("bad_magic")]


def _packet(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "module_id": 1,
        "frame_number": 5,
        "packet_index": 2,
        "packets_per_frame": 5,
        "module_row": 0,
        "module_col": 1,
        "timestamp_ns": 0,
        "payload": bytes(10),
    }
    fields.update(overrides)
    return encode_packet(**fields)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"EDGU\x01", "short_packet"),
        (_packet(magic=b"SLSD"), "bad_magic"),
        (_packet(header_version=2), "bad_version"),
        (_packet()[:-1], "length_mismatch"),
        (_packet() + b"\x00", "length_mismatch"),
        (_packet(module_id=4, module_row=2, module_col=0), "module_out_of_range"),
        (_packet(module_col=0), "module_position_mismatch"),
        (_packet(packets_per_frame=128), "packets_per_frame_mismatch"),
        (_packet(packet_index=5), "packet_index_out_of_range"),
        (_packet(packet_index=4), "bad_payload_size"),
        (_packet(payload=bytes(8192)), "bad_payload_size"),
    ],
)
def test_rejections_are_named_and_counted(packet: bytes, reason: str) -> None:
    asm = UdpFrameAssembler(SMALL)
    (event,) = asm.feed(packet)
    assert isinstance(event, PacketRejected) and event.reason == reason
    c = asm.counters
    assert c["packets_rejected"] == 1 and c[f"packets_rejected_{reason}"] == 1
    assert asm.rejections == {r: int(r == reason) for r in REJECT_REASONS}
    assert c["packets_accepted"] == 0 and asm.pending_frames == []


def test_constructor_validates_policy() -> None:
    with pytest.raises(ValueError, match="frame_timeout_frames"):
        UdpFrameAssembler(SMALL, frame_timeout_frames=0)
    with pytest.raises(ValueError, match="frame_timeout_s"):
        UdpFrameAssembler(SMALL, frame_timeout_s=-1.0)
    with pytest.raises(ValueError, match="history_frames"):
        UdpFrameAssembler(SMALL, history_frames=-1)
    with pytest.raises(ValueError, match="max_frame_jump"):
        UdpFrameAssembler(SMALL, max_frame_jump=0)


# ------------------------------------------------------------------------------------- property tests


def _check_counter_identities(asm: UdpFrameAssembler) -> None:
    c = asm.counters
    assert c["packets_received"] == (
        c["packets_accepted"]
        + c["packets_duplicate"]
        + c["packets_late"]
        + c["packets_rejected"]
        + c["packets_held"]
    )
    assert c["packets_rejected"] == sum(asm.rejections.values())


geometries = st.builds(
    DetectorGeometry,
    module_rows=st.integers(1, 5),
    module_cols=st.integers(1, 7),
    grid_rows=st.integers(1, 2),
    grid_cols=st.integers(1, 3),
    gap_pixels=st.integers(0, 3),
    dtype=st.sampled_from(["<u2", "<u1", "<u4"]),
    payload_bytes=st.sampled_from([4, 8, 12, 16, 64]),
)
plans = st.builds(
    FaultPlan,
    loss=st.sampled_from([0.0, 0.05, 0.3, 0.9]),
    reorder=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    duplicate=st.sampled_from([0.0, 0.1, 0.5]),
    corrupt=st.sampled_from([0.0, 0.05, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    geometry=geometries,
    plan=plans,
    first=st.integers(0, 2**40),
    steps=st.lists(st.integers(1, 3), min_size=0, max_size=10),
    window=st.integers(2, 5),
)
def test_counters_match_fault_ground_truth_exactly(
    geometry: DetectorGeometry, plan: FaultPlan, first: int, steps: list[int], window: int
) -> None:
    numbers = [first]
    for step in steps:
        numbers.append(numbers[-1] + step)
    inputs = dict(random_frames(geometry, numbers, seed=plan.seed % 1000))
    stream = apply_faults(geometry, inputs.items(), plan)
    truth = stream.truth
    asm = UdpFrameAssembler(geometry, frame_timeout_frames=window, expected_first_frame=first)
    events = feed_all(asm, stream.packets)
    _check_counter_identities(asm)
    events += asm.close(expected_last_frame=numbers[-1])
    _check_counter_identities(asm)

    expected = truth.expected_counters()
    counters = asm.counters
    for key, value in counters.items():
        assert value == expected.get(key, 0), key
    assert counters["packets_accepted"] + counters["packets_missing"] == (
        len(range(first, numbers[-1] + 1)) * geometry.packets_per_frame
    )

    emitted = frames_of(events)
    assert len(emitted) == len([e for e in events if isinstance(e, FrameAssembled)]), "emitted twice"
    assert sorted(n for n, f in emitted.items() if f.complete) == truth.frames_complete
    assert sorted(n for n, f in emitted.items() if not f.complete) == truth.frames_incomplete
    assert sorted(lost_of(events)) == truth.frames_lost
    rejected = [e.reason for e in events if isinstance(e, PacketRejected)]
    assert len(rejected) == counters["packets_rejected"]

    for n, f in emitted.items():
        full = geometry.insert_gaps(inputs[n])
        if f.complete:
            assert f.missing_mask is None
            np.testing.assert_array_equal(f.data, full)
        else:
            mask = pixel_mask(geometry, truth.missing(n))
            assert f.missing_mask is not None
            np.testing.assert_array_equal(f.missing_mask, mask)
            np.testing.assert_array_equal(f.data[~mask], full[~mask])
            assert not f.data[mask].any()
            assert f.packets_received == geometry.packets_per_frame - len(truth.missing(n))


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.binary(max_size=120), max_size=20), window=st.integers(1, 4))
def test_no_exception_escapes_feed_for_arbitrary_bytes(data: list[bytes], window: int) -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=window, frame_timeout_s=0.5)
    for i, blob in enumerate(data):
        asm.feed(blob, now=float(i))
        asm.feed(MAGIC + blob, now=float(i))
    asm.close()
    _check_counter_identities(asm)


header_fields = st.fixed_dictionaries(
    {
        "module_id": st.integers(0, 0xFFFF),
        "frame_number": st.one_of(st.integers(0, 20), st.integers(0, 2**64 - 1)),
        "packet_index": st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)),
        "packets_per_frame": st.one_of(st.just(5), st.integers(0, 2**32 - 1)),
        "module_row": st.integers(0, 2),
        "module_col": st.integers(0, 2),
        "timestamp_ns": st.integers(0, 2**64 - 1),
        "payload": st.binary(max_size=12),
        "flags": st.integers(0, 255),
        "header_version": st.sampled_from([0, 1, 1, 1, 255]),
    }
)


@settings(max_examples=200, deadline=None)
@given(st.lists(header_fields, max_size=30))
def test_no_exception_escapes_feed_for_wellformed_headers_with_any_values(
    packets: list[dict[str, Any]],
) -> None:
    asm = UdpFrameAssembler(SMALL, frame_timeout_frames=2)
    for fields in packets:
        for event in asm.feed(encode_packet(**fields)):
            if isinstance(event, FrameAssembled):
                assert event.data.shape == SMALL.frame_shape
                assert (event.missing_mask is None) == event.complete
    asm.close()
    _check_counter_identities(asm)
    c = asm.counters
    assert (
        c["packets_accepted"] + c["packets_missing"]
        == (c["frames_complete"] + c["frames_incomplete"] + c["frames_lost"]) * SMALL.packets_per_frame
    )


def test_header_struct_is_exactly_the_documented_field_list() -> None:
    fmt = struct.Struct("<4sBBHQIIHHQI")
    assert fmt.size == HEADER_SIZE
    assert fmt.unpack(_packet()[:HEADER_SIZE])[0] == MAGIC


# ------------------------------------------------------------------------------------ recorded capture

# tests/data/make_udp_capture.py records these; the capture file is the source of truth.
CAPTURE_GEOMETRY = DetectorGeometry(
    module_rows=16, module_cols=32, grid_rows=2, grid_cols=2, gap_pixels=2, payload_bytes=256
)
CAPTURE_COUNTERS = {
    "packets_received": 289,
    "packets_accepted": 273,
    "packets_duplicate": 8,
    "packets_late": 0,
    "packets_rejected": 8,
    "packets_missing": 47,
    "frames_complete": 7,
    "frames_incomplete": 11,
    "frames_lost": 2,
    "frames_rebased": 0,
    "packets_held": 0,
    "packets_rejected_bad_magic": 4,
    "packets_rejected_bad_version": 1,
    "packets_rejected_length_mismatch": 2,
    "packets_rejected_packet_index_out_of_range": 1,
}
# (emitted frame numbers, lost frame numbers, sha256 prefix of the emitted frames' data in order)
CAPTURE_FRAMES = ([*range(1, 9), *range(10, 20)], [9, 20], "46f734c6ee07fca1")


def test_replay_recorded_capture_gives_known_counters() -> None:
    blob = CAPTURE.read_bytes()
    assert len(blob) < 200_000
    asm = UdpFrameAssembler(CAPTURE_GEOMETRY, frame_timeout_frames=2, expected_first_frame=1)
    events: list[Event] = []
    for packet in iter_capture(blob):
        events += asm.feed(packet)
    events += asm.close(expected_last_frame=20)
    assert [(e.first, e.last, e.reason) for e in events if isinstance(e, FramesLost)] == [
        (9, 9, "frame_number_jump"),
        (20, 20, "series_end"),
    ]
    counters = {k: v for k, v in asm.counters.items() if v or not k.startswith("packets_rejected_")}
    assert counters == CAPTURE_COUNTERS
    emitted = frames_of(events)
    digest = hashlib.sha256()
    for n in sorted(emitted):
        digest.update(emitted[n].data.tobytes())
    assert (sorted(emitted), lost_of(events), digest.hexdigest()[:16]) == CAPTURE_FRAMES


def test_one_packet_of_another_exposure_first_for_its_frame_does_not_outvote_the_frame() -> None:
    """An outside sender (round 4): frames 0..19, and one packet of frame 7 with another timestamp sent
    before frame 5. It set frame 7's timestamp, so frame 7's own 20 packets were "another exposure under
    the same number": a restart, the run split in two and frames 0..6 recorded lost in the second. Once
    more of a pending frame's packets agree on another timestamp than on its own, the frame is theirs:
    the odd packet is dropped (counted late), frame 7 is stored whole, and nothing restarted."""
    asm = UdpFrameAssembler(SMALL, expected_first_frame=0, max_frame_jump=1000)
    packets = {n: packetize_frame(SMALL, n, frame(n), 1_000_000 + n * 1000) for n in range(20)}
    odd = packetize_frame(SMALL, 7, frame(99), 1_000_000 + 7 * 1000 + 999)[0]
    sent = [p for n in range(5) for p in packets[n]] + [odd] + [p for n in range(5, 20) for p in packets[n]]
    events = feed_all(asm, sent)
    done = frames_of(events)
    assert sorted(done) == list(range(20)) and lost_of(events) == []
    assert not asm.restarted
    assert all(done[n].complete for n in range(20))
    alone = frames_of(feed_all(UdpFrameAssembler(SMALL), packets[7]))[7]  # frame 7's own packets
    np.testing.assert_array_equal(done[7].data, alone.data)
    assert asm.counters["packets_late"] == 1  # the odd packet
    _check_counter_identities(asm)
