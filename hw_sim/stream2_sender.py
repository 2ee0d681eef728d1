"""The simulated detector speaking DECTRIS Stream V2: CBOR start/image/end messages over the ZeroMQ PUSH.

Messages follow DECTRIS's public specification (github.com/dectris/documentation, ``stream_v2``): every
message is one ZeroMQ message, a CBOR map behind the self-described tag 55799; images are RFC 8746
tag-40 arrays ``[[height, width], typed array]`` whose byte string is a DECTRIS compressed byte string
(tag 56500 ``["bslz4", elem_size, chunk]``). The chunk is ``bitshuffle.compress_lz4`` output behind
the 12-byte header of the HDF5 bitshuffle filter (``kernels.compress_chunk``), exactly what a
filter-32008 dataset stores. Faults: lost, duplicated, truncated messages, a wrong typed-array tag,
a corrupt compressed block, and a series whose end message never comes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np

from hw_sim.zmq_sender import SendSummary, ZmqFrameSender
from kernels import compress_chunk

TYPED_ARRAY_TAG = {"uint8": 64, "uint16": 69, "uint32": 70, "float32": 85}
WRONG_TAG = 65  # RFC 8746 uint16 big-endian: a tag Stream V2 never uses for images
CHANNEL = "threshold_1"


@dataclass(frozen=True)
class Stream2Faults:
    """Faults to inject into a Stream V2 series (probabilities per frame; ``missing_end`` once)."""

    loss: float = 0.0
    duplicate: float = 0.0
    bad_block: float = 0.0
    truncate: float = 0.0
    wrong_tag: float = 0.0
    missing_end: bool = False
    stall_seconds: float = 0.0
    seed: int = 0


def _message(fields: dict[str, Any]) -> bytes:
    return bytes(cbor2.dumps(cbor2.CBORTag(55799, fields)))


def _array(shape: tuple[int, ...], dtype: str, content: Any, tag: int | None = None) -> cbor2.CBORTag:
    return cbor2.CBORTag(40, [list(shape), cbor2.CBORTag(tag or TYPED_ARRAY_TAG[dtype], content)])


def geometry_fields(poni: dict[str, float]) -> dict[str, Any]:
    """DECTRIS start-message geometry from a PONI geometry (metres; beam centre in pixels)."""
    fields: dict[str, Any] = {}
    if {"poni1", "poni2", "pixel1", "pixel2"} <= poni.keys():
        fields["beam_center_x"] = poni["poni2"] / poni["pixel2"]
        fields["beam_center_y"] = poni["poni1"] / poni["pixel1"]
        fields["pixel_size_x"] = poni["pixel2"]
        fields["pixel_size_y"] = poni["pixel1"]
    if "dist" in poni:
        fields["detector_distance"] = poni["dist"]
    if poni.get("wavelength"):
        angstrom = poni["wavelength"] * 1e10
        fields["incident_wavelength"] = angstrom
        fields["incident_energy"] = 12398.419843 / angstrom
    return fields


def encode_start(
    series: int,
    unique_id: str,
    shape: tuple[int, int],
    dtype: str,
    frames: int | None,
    config: dict[str, Any],
    pixel_mask: np.ndarray | None = None,
) -> bytes:
    fields: dict[str, Any] = {
        "type": "start",
        "series_id": series,
        "series_unique_id": unique_id,
        "arm_date": cbor2.CBORTag(0, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        "channels": [CHANNEL],
        "image_size_x": shape[1],
        "image_size_y": shape[0],
        "image_dtype": dtype,
        "detector_description": str(config.get("detector", "edge-sim")),
        **{
            k: config[k]
            for k in ("sensor_material", "sensor_thickness", "count_time", "frame_time")
            if k in config
        },
        **geometry_fields(config.get("geometry", {})),
        "user_data": {"edge_sim": config},
    }
    if frames:
        fields["number_of_images"] = frames
    if pixel_mask is not None:
        mask = np.ascontiguousarray(pixel_mask, dtype="<u4")
        fields["pixel_mask"] = {CHANNEL: _array(mask.shape, "uint32", mask.tobytes())}
        fields["pixel_mask_enabled"] = True
    return _message(fields)


def encode_image(
    series: int,
    unique_id: str,
    frame: int,
    shape: tuple[int, int],
    dtype: str,
    chunk: bytes | memoryview,
    now_ns: int,
    typed_array_tag: int | None = None,
) -> bytes:
    """An image whose one channel is the bslz4 chunk ``chunk`` (HDF5 framing)."""
    itemsize = np.dtype(dtype).itemsize
    # bytes: cbor2 writes a memoryview (what compress_chunk returns) as an array of integers
    content = cbor2.CBORTag(56500, ["bslz4", itemsize, bytes(chunk)])
    data = {CHANNEL: _array(shape, dtype, content, typed_array_tag)}
    return _message(
        {
            "type": "image",
            "series_id": series,
            "series_unique_id": unique_id,
            "image_id": frame,
            "start_time": [now_ns, 1_000_000_000],
            "stop_time": [now_ns, 1_000_000_000],
            "real_time": [0, 1_000_000_000],
            "data": data,
        }
    )


def encode_end(series: int, unique_id: str) -> bytes:
    return _message({"type": "end", "series_id": series, "series_unique_id": unique_id})


def corrupt_block(chunk: bytes | memoryview) -> bytes:
    """The chunk with its first LZ4 block overwritten by bytes LZ4 cannot decode (size fields intact)."""
    (length,) = np.frombuffer(chunk[12:16], dtype=">u4")
    bad = bytearray(chunk)
    bad[16 : 16 + int(length)] = b"\xff" * int(length)
    return bytes(bad)


CHUNK_CACHE = 256  # distinct frames whose compressed chunk the simulator keeps


def send_series_stream2(
    sender: ZmqFrameSender,
    frame: Callable[[int], np.ndarray],
    frames: int,
    rate_hz: float,
    series: int,
    run_uid: str,
    config: dict[str, Any],
    stop: threading.Event,
    progress: Callable[[SendSummary], None] | None = None,
    faults: Stream2Faults | None = None,
) -> SendSummary:
    """Send one Stream V2 series; ``frames`` 0 means until ``stop`` is set. The summary's
    ``faults["truth"]`` lists the frames each fault hit (``frames_lost`` is every frame the receiver
    cannot store)."""
    faults = faults or Stream2Faults()
    rng = random.Random(faults.seed)
    hit: dict[str, list[int]] = {
        "dropped": [],
        "truncated": [],
        "wrong_tag": [],
        "bad_block": [],
        "duplicated": [],
    }
    summary = SendSummary(series, run_uid, encoding="stream2-bslz4")
    first = frame(0)
    shape = (int(first.shape[0]), int(first.shape[1]))
    dtype = str(first.dtype)
    mask = np.zeros(shape, dtype=np.uint32)
    # a detector compresses in its own hardware: the simulator compresses each distinct frame once (the
    # pool's frames come back as the same arrays), so its CPU does not compete with the receiver's
    chunks: dict[int, tuple[np.ndarray, bytes]] = {}
    start = time.perf_counter()
    if not sender._send(
        [encode_start(series, run_uid, shape, dtype, frames or None, config, mask)], stop, summary
    ):
        summary.stopped_early = True
        return summary
    period = 1.0 / rate_hz
    next_due = time.perf_counter()
    last_progress = next_due
    number = 0
    while frames == 0 or number < frames:
        if stop.is_set():
            summary.stopped_early = True
            break
        delay = next_due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing to the chosen rate, not synchronisation
        next_due += period
        if faults.stall_seconds and frames and number == frames // 2:
            time.sleep(faults.stall_seconds)  # the injected stall
            next_due = time.perf_counter() + period  # the next frame a period on (`zmq_sender`)
        pixels = frame(number)
        if rng.random() < faults.loss:
            hit["dropped"].append(number)
            summary.frames_sent += 1
            number += 1
            continue
        cached = chunks.get(id(pixels))
        if cached is None or cached[0] is not pixels:
            cached = (pixels, bytes(compress_chunk(pixels)))  # bytes: the chunk's size, not its buffer's
            if len(chunks) < CHUNK_CACHE:
                chunks[id(pixels)] = cached
        chunk = cached[1]
        # at most one damaging fault per frame, so each lost frame has exactly one true reason
        draws = [rng.random() for _ in range(3)]
        tag = None
        damaged = draws[0] < faults.bad_block or draws[1] < faults.wrong_tag
        if draws[0] < faults.bad_block:
            chunk = corrupt_block(chunk)
            hit["bad_block"].append(number)
        elif draws[1] < faults.wrong_tag:
            tag = WRONG_TAG
            hit["wrong_tag"].append(number)
        message = encode_image(series, run_uid, number, shape, dtype, chunk, time.time_ns(), tag)
        if draws[2] < faults.truncate and not damaged:
            message = message[: len(message) // 2]
            hit["truncated"].append(number)
        if not sender._send([message], stop, summary):
            summary.stopped_early = True
            break
        if rng.random() < faults.duplicate:
            hit["duplicated"].append(number)
            sender._send([message], stop, summary)
        summary.frames_sent += 1
        summary.bytes_sent += pixels.nbytes
        number += 1
        if progress is not None and time.perf_counter() - last_progress >= 1.0:
            last_progress = time.perf_counter()
            summary.seconds = last_progress - start
            progress(summary)
    if not faults.missing_end:
        end = [encode_end(series, run_uid)]
        summary.end_sent = sender._send(end, threading.Event(), summary, timeout=5.0)
        if not summary.end_sent:
            summary.stopped_early = True
    summary.seconds = time.perf_counter() - start
    lost = sorted(set(hit["dropped"] + hit["truncated"] + hit["wrong_tag"] + hit["bad_block"]))
    summary.faults = {
        **faults.__dict__,
        "truth": {
            "frames_lost": lost,
            "frames_dropped": hit["dropped"],
            "frames_truncated": hit["truncated"],
            "frames_wrong_tag": hit["wrong_tag"],
            "frames_bad_block": hit["bad_block"],
            "frames_duplicated": hit["duplicated"],
            "end_sent": summary.end_sent,
        },
    }
    return summary
