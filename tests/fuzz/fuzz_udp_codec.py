"""Fuzz the UDP frame assembler: no input may raise, and the counters must stay self-consistent.

Mutation fuzzer seeded with valid datagrams (bit flips, byte overwrites, truncation, extension,
header fields set to extreme values, splices, random blobs), fed through long-lived assemblers with
random policies. Run standalone for a long campaign::

    PYTHONPATH=src python tests/fuzz/fuzz_udp_codec.py --runs 100000 --seed 1

``tests/unit/firmware_bridge/test_udp_fuzz_short.py`` runs a short campaign as an ordinary test.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from firmware_bridge.udp_codec import (
    HEADER_FORMAT,
    HEADER_SIZE,
    DetectorGeometry,
    FrameAssembled,
    FramesLost,
    PacketRejected,
    UdpFrameAssembler,
    packetize_frame,
)

GEOMETRY = DetectorGeometry(
    module_rows=3, module_cols=5, grid_rows=2, grid_cols=1, gap_pixels=1, payload_bytes=8
)
_HEADER = struct.Struct(HEADER_FORMAT)
# Field index -> maximum value, for header-field mutations (skipping the magic at index 0).
_U8, _U16, _U32, _U64 = 0xFF, 0xFFFF, 2**32 - 1, 2**64 - 1
_FIELD_MAX = {1: _U8, 2: _U8, 3: _U16, 4: _U64, 5: _U32, 6: _U32, 7: _U16, 8: _U16, 9: _U64, 10: _U32}


def _detector(rng: random.Random) -> Iterator[bytes]:
    """Endless valid datagrams: frames in order with the odd jump, packets shuffled within a frame."""
    frame = np.arange(np.prod(GEOMETRY.raw_shape), dtype=np.uint16).reshape(GEOMETRY.raw_shape)
    number = rng.randrange(3)
    while True:
        packets = packetize_frame(GEOMETRY, number, frame + number, number)
        if rng.random() < 0.5:
            rng.shuffle(packets)
        yield from packets
        number += rng.choice([1, 1, 1, 1, 2, 4])


def mutate(packet: bytes, corpus: list[bytes], rng: random.Random) -> bytes:
    """Return a damaged variant of ``packet``."""
    data = bytearray(packet)
    op = rng.randrange(9)
    if op == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1 and data:
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif op == 2:
        del data[rng.randrange(len(data) + 1) :]
    elif op == 3:
        data += rng.randbytes(rng.randrange(1, 64))
    elif op == 4 and len(data) >= HEADER_SIZE:
        fields = list(_HEADER.unpack_from(data))
        index = rng.choice(list(_FIELD_MAX))
        fields[index] = rng.choice([0, 1, _FIELD_MAX[index], rng.randint(0, _FIELD_MAX[index])])
        data[:HEADER_SIZE] = _HEADER.pack(*fields)
    elif op == 5:
        other = rng.choice(corpus)
        cut = rng.randrange(min(len(data), len(other)) + 1)
        data = data[:cut] + other[cut:]
    elif op == 6:
        data = bytearray(rng.randbytes(rng.randrange(0, 120)))
    elif op == 7:
        return packet  # an intact packet: keeps the state machine busy assembling
    # op == 8 (and the no-op branches above for empty data): leave as is
    return bytes(data)


def _check(asm: UdpFrameAssembler, events: list[object]) -> None:
    c = asm.counters
    assert c["packets_received"] == (
        c["packets_accepted"]
        + c["packets_duplicate"]
        + c["packets_late"]
        + c["packets_rejected"]
        + c["packets_held"]
    ), c
    assert c["packets_rejected"] == sum(asm.rejections.values()), c
    for event in events:
        assert isinstance(event, FrameAssembled | FramesLost | PacketRejected), event
        if isinstance(event, FrameAssembled):
            assert event.data.shape == GEOMETRY.frame_shape
            assert (event.missing_mask is None) == event.complete
            assert 0 < event.packets_received <= event.packets_expected
        elif isinstance(event, FramesLost):
            assert event.first <= event.last


def _check_closed(asm: UdpFrameAssembler) -> None:
    c = asm.counters
    settled = c["frames_complete"] + c["frames_incomplete"] + c["frames_lost"]
    assert c["packets_accepted"] + c["packets_missing"] == settled * GEOMETRY.packets_per_frame, c


def _new_assembler(rng: random.Random) -> UdpFrameAssembler:
    return UdpFrameAssembler(
        GEOMETRY,
        frame_timeout_frames=rng.randint(1, 5),
        frame_timeout_s=rng.choice([None, 0.0, 0.5, 3.0]),
        expected_first_frame=rng.choice([None, 0, 2]),
        history_frames=rng.choice([0, 2, 256]),
        max_frame_jump=rng.choice([None, 1, 10, 1000]),
    )


def run_fuzz(runs: int, seed: int = 0) -> int:
    """Feed ``runs`` inputs; raise ``AssertionError`` (or the escaping exception) on a failure."""
    rng = random.Random(seed)
    detector = _detector(rng)
    recent: deque[bytes] = deque(maxlen=64)  # replayed as duplicates / late packets
    corpus: list[bytes] = [next(detector)]  # mutated inputs worth mutating again
    asm = _new_assembler(rng)
    now = 0.0
    for i in range(runs):
        roll = rng.random()
        if roll < 0.55:
            packet = next(detector)
            recent.append(packet)
        elif roll < 0.65:
            packet = rng.choice(recent) if recent else next(detector)
        else:
            packet = mutate(rng.choice([*recent, *corpus[-8:]]), corpus, rng)
            if rng.random() < 0.05:
                corpus.append(packet)
                if len(corpus) > 500:
                    corpus.pop(rng.randrange(len(corpus)))
        now += rng.random() * 0.2
        feed_input: bytes | bytearray | memoryview = packet
        if i % 7 == 0:
            feed_input = memoryview(bytearray(packet))
        events: list[object] = list(asm.feed(feed_input, now))
        if rng.random() < 0.02:
            events += asm.flush(now)
        _check(asm, events)
        if rng.random() < 0.002 or i == runs - 1:
            last = rng.choice([None, None, 50, 2**64])
            _check(asm, list(asm.close(expected_last_frame=last)))
            _check_closed(asm)
            asm = _new_assembler(rng)
            detector = _detector(rng)  # a new series starts from low frame numbers again
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(f"fuzzing UdpFrameAssembler: {args.runs} inputs, seed {args.seed}", flush=True)
    run_fuzz(args.runs, args.seed)
    print(f"ok: {args.runs} inputs in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
