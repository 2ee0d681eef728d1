"""Fuzz the Stream V2 (CBOR) codec and the chunk decoder behind it: no input may crash or raise.

Mutation fuzzer seeded with the three recorded captures' messages (bit flips, truncations, appended
bytes, random blobs, CBOR field replacements, spliced messages, corrupted compressed chunks). Every
image that decodes has its pixels asked for and its chunk checked: only ``ChunkError`` may come out
(``bitshuffle.decompress_lz4`` itself would crash the process on some of these inputs). Long campaign::

    .venv/bin/python tests/fuzz/fuzz_stream2_codec.py --runs 100000 --seed 1

``tests/unit/firmware_bridge/test_stream2_fuzz_short.py`` runs a short campaign as an ordinary test.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import random
import sys
import time
from pathlib import Path
from typing import Any

import cbor2

from firmware_bridge.hdf5_chunks import ChunkError
from firmware_bridge.stream2_codec import Stream2Codec, Stream2Image, Stream2Start

DATA = Path(__file__).parents[1] / "data"
_spec = importlib.util.spec_from_file_location("make_stream2_capture", DATA / "make_stream2_capture.py")
_capture = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_capture)  # type: ignore[union-attr]
SEEDS: list[bytes] = [
    message
    for name in ("stream2_bslz4_u16_2ch.bin", "stream2_lz4_u32.bin", "stream2_raw.bin")
    for message in _capture.iter_capture((DATA / name).read_bytes())
]
# the start message each seed belongs to, so a mutated image meets a codec in its own series
START_OF: list[int] = []
for _index, _message in enumerate(SEEDS):
    _is_start = cbor2.loads(_message).get("type") == "start"
    START_OF.append(_index if _is_start else START_OF[-1])
ODD_VALUES: list[Any] = [
    None,
    -1,
    0,
    2**64 - 1,
    1.5,
    float("nan"),
    "x",
    b"",
    [],
    {},
    [1],
    [0, 0],
    [1, 2, 3],
    True,
    "bslz4",
    cbor2.CBORTag(40, [[1, 1], cbor2.CBORTag(69, b"\x00\x00")]),
    cbor2.CBORTag(56500, ["bslz4", 2, b"\x00" * 12]),
    cbor2.CBORTag(56500, ["lz4", 0, b"\x00\x00\x00\x00\x00\x00\x00\x08\x00\x00\x00\x04"]),
    cbor2.CBORTag(70, b"\x00" * 8),
    cbor2.CBORTag(12345, None),
]


def _mutate_value(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """Replace one thing somewhere inside a decoded CBOR value."""
    if depth > 6 or rng.random() < 0.2:
        return rng.choice(ODD_VALUES)
    if isinstance(value, cbor2.CBORTag):
        if rng.random() < 0.3:
            return cbor2.CBORTag(rng.choice([40, 64, 65, 69, 70, 85, 56500, 55799, 1040]), value.value)
        return cbor2.CBORTag(value.tag, _mutate_value(value.value, rng, depth + 1))
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        out = dict(value)
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = _mutate_value(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        out_list[i] = _mutate_value(out_list[i], rng, depth + 1)
        return out_list
    if isinstance(value, bytes) and value:
        data = bytearray(value)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        return bytes(data)
    return rng.choice(ODD_VALUES)


def _plain(value: Any) -> Any:
    """Decoded CBOR (frozendicts, tuples) as mutable dicts and lists, tags kept."""
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _plain(value.value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _corrupt_chunk(message: bytes, rng: random.Random) -> bytes:
    """Damage the compressed bytes inside an image message and nothing else (the CBOR stays valid)."""
    value = _plain(cbor2.loads(message))
    data = value.get("data") if isinstance(value, dict) else None
    if not isinstance(data, dict) or not data:
        return message
    name = rng.choice(list(data))
    dims, typed = data[name].value
    content = typed.value
    if isinstance(content, cbor2.CBORTag):  # tag 56500 [algorithm, elem_size, chunk]
        algorithm, elem, chunk = content.value
    else:
        algorithm, elem, chunk = "", 0, content
    blob = bytearray(chunk)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(blob) + 1)
        blob[i : i + rng.randint(1, 8)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    if rng.random() < 0.2:
        blob = blob[: rng.randrange(len(blob) + 1)]
    if algorithm:
        content = cbor2.CBORTag(content.tag, [algorithm, elem, bytes(blob)])
    else:
        content = bytes(blob)
    data[name] = cbor2.CBORTag(40, [dims, cbor2.CBORTag(typed.tag, content)])
    return cbor2.dumps(value)


def mutate(message: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(7)
    if choice == 0 and message:
        data = bytearray(message)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 1:
        return message[: rng.randrange(len(message) + 1)]
    if choice == 2:
        return message + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    if choice == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    if choice in (4, 5):
        try:
            value = _plain(cbor2.loads(message))
            return cbor2.dumps(_mutate_value(value, rng))
        except (cbor2.CBORError, ValueError, TypeError, OverflowError):
            return message
    if choice == 6 and rng.random() < 0.5:
        return _corrupt_chunk(message, rng)
    other = rng.choice(SEEDS)
    cut = rng.randrange(len(message) + 1)
    return message[:cut] + other[rng.randrange(len(other) + 1) :]


def run(runs: int, seed: int) -> int:
    rng = random.Random(seed)
    codec = Stream2Codec()
    images = 0
    for _ in range(runs):
        index = rng.randrange(len(SEEDS))
        message = SEEDS[index]
        if rng.random() < 0.5:
            codec.feed(SEEDS[START_OF[index]])  # a series of the seed's own kind is open
        if rng.random() < 0.9:
            message = mutate(message, rng)
        for event in codec.feed(message):
            if isinstance(event, Stream2Image):
                images += 1
                for array in event.channels.values():
                    for call in (array.pixels, array.check, lambda a=array: a.check(sample=2)):
                        with contextlib.suppress(ChunkError):
                            call()
    # still in step: a clean start message must decode
    (event,) = codec.feed(SEEDS[0])
    if not isinstance(event, Stream2Start):
        raise AssertionError(f"codec out of step after fuzzing: {event}")
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    images = run(args.runs, args.seed)
    print(
        f"stream2 codec: {args.runs} messages ({images} images decoded or checked) in "
        f"{time.perf_counter() - started:.1f} s, no crash"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
