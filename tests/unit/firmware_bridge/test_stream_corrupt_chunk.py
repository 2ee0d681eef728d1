"""A corrupt bitshuffle-LZ4 chunk on the JSON frame stream is a loss record, not a dead daemon.

``bitshuffle.decompress_lz4`` trusts the 4-byte block sizes inside a chunk: a size of 2**31 or more
makes it read out of bounds and the process dies with SIGSEGV. The reader decodes wire chunks with the
bounds-checked ``firmware_bridge.hdf5_chunks.decode_bslz4`` instead. The reader runs in a child
process so that a regression fails this test instead of killing the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, struct, threading
import numpy as np
import zmq
from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from firmware_bridge.zmq_reader import ZmqStreamSource
from kernels import compress_chunk

class Sink:
    def __init__(self):
        self.frames, self.losses, self.ended = [], [], threading.Event()
    def claim(self, nbytes):
        class Slot:
            buffer = memoryview(bytearray(nbytes))
        return Slot()
    def publish(self, slot, header):
        self.frames.append(header.frame)
    def abandon(self, slot):
        pass
    def series_start(self, series, config):
        return None
    def series_length(self, series, frames_expected):
        pass

    def series_end(self, series, exit_status="success", why=""):
        self.ended.set()
    def lost(self, first, last, reason, detail=""):
        self.losses.append([first, last, reason])

shape = (64, 96)
pixels = np.random.default_rng(0).poisson(30, shape).astype(np.uint16)
good = compress_chunk(pixels)
bad = bytearray(good)
bad[12:16] = struct.pack(">I", 0x80000000)  # the first block claims 2 GiB
context = zmq.Context()
push = context.socket(zmq.PUSH)
port = push.bind_to_random_port("tcp://127.0.0.1")
sink = Sink()
reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context)
reader.start()
push.send_multipart(encode_series_start(1, shape, "uint16", frames_expected=2))
push.send_multipart(encode_image(1, 0, shape, "uint16", bytes(bad), "bs16-lz4<"))
push.send_multipart(encode_image(1, 1, shape, "uint16", good, "bs16-lz4<"))
push.send_multipart(encode_series_end(1))
ended = sink.ended.wait(10)
reader.stop()
push.close(0)
context.term()
print(json.dumps({"ended": ended, "frames": sink.frames, "losses": sink.losses}))
"""


def test_a_chunk_claiming_a_huge_block_is_lost_not_fatal() -> None:
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"reader process died ({result.returncode}): {result.stderr[-2000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"ended": True, "frames": [1], "losses": [[0, 0, "stream_undecodable"]]}
