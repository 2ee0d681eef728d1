"""The upstream protocol's typed messages: round trip, and a clear error for anything malformed."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import RemoteProtocolError
from edge.upstream import protocol as p


def test_round_trip_every_message_type() -> None:
    samples = [
        p.Hello("hpc", 8),
        p.Welcome("edge", "xxh3-128"),
        p.Credit(4),
        p.Chunk(1, 2, "run", "run_00000.h5", 100, 0, 1, 0, 100, "abc"),
        p.Ack(1, "abc"),
        p.Nack(1, "checksum"),
        p.FileComplete(2, "run", "run_00000.h5", 100, "def"),
        p.FileVerified(2, 100, "def", "/hpc/out/run/run_00000.h5"),
        p.Heartbeat(),
        p.Error("bad"),
    ]
    assert {type(m) for m in samples} == set(p.MESSAGES.values())
    for message in samples:
        frames = p.encode(message, b"payload" if isinstance(message, p.Chunk) else None)
        decoded, _payload = p.decode([bytes(f) for f in frames])
        assert decoded == message
        assert json.loads(frames[0])["v"] == p.VERSION


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "0 frames"),
        ([b"{", b"", b""], "3 frames"),
        ([b"nope"], "not JSON"),
        ([b"[]"], "not a JSON object"),
        # valid JSON nested past Python's recursion limit, inside the header's size limit
        ([b"[" * 30_000 + b"]" * 30_000], "nested too deep"),
        ([b'{"a":' * 10_000 + b"1" + b"}" * 10_000], "nested too deep"),
        ([b'{"v": 99, "type": "ack"}'], "protocol version 99"),
        # a version 1 peer (FileVerified without stored_path) is told which version this end speaks
        ([b'{"v": 1, "type": "file_verified", "file_id": 1, "size": 1, "checksum": "x"}'], "speaks 2"),
        ([b'{"v": 2, "type": "file_verified", "file_id": 1, "size": 1, "checksum": "x"}'], "stored_path"),
        ([b'{"v": 2, "type": "launch"}'], "unknown message type"),
        ([b'{"v": 2, "type": "ack", "chunk_id": 1}'], "lacks field 'checksum'"),
        ([b'{"v": 2, "type": "ack", "chunk_id": "1", "checksum": "x"}'], "is not int"),
        ([b'{"v": 2, "type": "credit", "n": true}'], "is not int"),
        ([b'{"v": 2.0, "type": "heartbeat"}'], "protocol version 2.0"),
        ([b'{"v": true, "type": "heartbeat"}'], "protocol version True"),
        ([b'{"v": 2, "type": "heartbeat", "pad": "' + b"x" * (64 << 10) + b'"}'], "at most 65536"),
    ],
)
def test_malformed_messages_raise_remote_protocol_error(frames: list[bytes], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        p.decode(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=0, max_size=3))
def test_fuzz_decode_only_raises_remote_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        p.decode(frames)
