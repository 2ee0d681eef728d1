"""Fuzz the ZeroMQ frame-stream codec: no input may raise, and it must stay in step afterwards.

Mutation fuzzer seeded with the recorded capture's messages (part drops, duplicates, truncations,
bit flips, JSON field replacements, random blobs, wrong "more" flags). Long campaign::

    PYTHONPATH=src python tests/fuzz/fuzz_stream_codec.py --runs 100000 --seed 1

``tests/unit/firmware_bridge/test_stream_fuzz_short.py`` runs a short campaign as an ordinary test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

from firmware_bridge.stream_codec import SeriesStart, StreamCodec, encode_series_end, encode_series_start

DATA = Path(__file__).parents[1] / "data"
_spec = importlib.util.spec_from_file_location("make_stream_capture", DATA / "make_stream_capture.py")
_capture = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_capture)  # type: ignore[union-attr]
SEEDS: list[list[bytes]] = list(_capture.iter_capture((DATA / "stream_capture_v1.bin").read_bytes()))
ODD_VALUES = [None, -1, 0, 2**63, 1.5, "x", [], {}, [1], [0, 0], [1, 2, 3], True, "bs16-lz4<", "uint64"]


def _mutate_part(part: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0 and part:
        data = bytearray(part)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 1:
        return part[: rng.randrange(len(part) + 1)]
    if choice == 2:
        return part + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    if choice == 3:
        try:
            message = json.loads(part)
        except ValueError:
            return part
        if isinstance(message, dict) and message:
            message[rng.choice(list(message))] = rng.choice(ODD_VALUES)
            return json.dumps(message).encode()
        return part
    if choice == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    return part


def mutate(message: list[bytes], rng: random.Random) -> list[tuple[bytes, bool]]:
    parts = list(message)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        if op == 0 and parts:
            i = rng.randrange(len(parts))
            parts[i] = _mutate_part(parts[i], rng)
        elif op == 1 and parts:
            del parts[rng.randrange(len(parts))]
        elif op == 2:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(rng.choice(SEEDS)))
    flags = [i < len(parts) - 1 for i in range(len(parts))]
    if flags and rng.random() < 0.1:
        i = rng.randrange(len(flags))
        flags[i] = not flags[i]
    return list(zip(parts, flags, strict=True))


def run(runs: int, seed: int) -> int:
    rng = random.Random(seed)
    codec = StreamCodec()
    for _ in range(runs):
        message = rng.choice(SEEDS)
        for part, more in mutate(message, rng) if rng.random() < 0.9 else [(p, True) for p in message]:
            size = codec.expecting_data()
            if size is not None and rng.random() < 0.5:
                codec.feed_received(rng.choice([size, len(part)]), more)
            else:
                codec.feed(part, more)
    # still in step: close whatever message is open, then a clean series start must decode
    codec.feed(b"{}", False)
    events = []
    for parts in (encode_series_end(0), encode_series_start(5, (2, 2), "uint16")):
        for i, part in enumerate(parts):
            events += codec.feed(part, i < len(parts) - 1)
    if not isinstance(events[-1], SeriesStart):
        raise AssertionError(f"codec out of step after fuzzing: {events}")
    return int(codec.counters["parts"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    parts = run(args.runs, args.seed)
    print(
        f"stream codec: {args.runs} messages ({parts} parts) in {time.perf_counter() - started:.1f} s, no crash"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
