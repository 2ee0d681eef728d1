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
        ([b'{"v": 2, "type": "ack", "chunk_id": 1}'], 'lacks field "checksum"'),
        ([b'{"v": 2, "type": "ack", "chunk_id": "1", "checksum": "x"}'], 'chunk_id = "1" is not an integer'),
        ([b'{"v": 2, "type": "credit", "n": true}'], "n = true is not an integer"),
        ([b'{"v": 2.0, "type": "heartbeat"}'], "protocol version 2.0"),
        ([b'{"v": true, "type": "heartbeat"}'], "protocol version true"),
        ([b'{"v": 2, "type": "heartbeat", "pad": "' + b"x" * (64 << 10) + b'"}'], "at most 65536"),
        # a list or an object as the type (unhashable: it raised TypeError)
        ([b'{"v": 2, "type": []}'], "unknown message type"),
        ([b'{"v": 2, "type": {"a": 1}}'], 'unknown message type {"a": 1}'),
        # the peer's value is quoted as JSON, cut
        ([b'{"v": null, "type": "ack"}'], "protocol version null;"),
        ([b'{"v": 2, "type": "' + b"y" * 500 + b'"}'], 'unknown message type "y{76}\\.\\.\\.$'),
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


HEARTBEAT = '{"v": 2, "type": "heartbeat"}'


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_a_header_in_utf16_or_utf32_is_refused_as_not_utf8(encoding: str) -> None:
    """Headers are UTF-8 (docs/upstream.md, section 1.4); json.loads(bytes) would guess the others."""
    with pytest.raises(RemoteProtocolError, match="header is not UTF-8"):
        p.decode([HEARTBEAT.encode(encoding)])


def test_a_header_in_utf8_with_or_without_a_byte_order_mark_is_read() -> None:
    for raw in (
        HEARTBEAT.encode(),
        HEARTBEAT.encode("utf-8-sig"),
        b'{"v":2,"type":"nack","chunk_id":1,"reason":"\xc3\xa9"}',
    ):
        message, _payload = p.decode([raw])
        assert isinstance(message, (p.Heartbeat, p.Nack))


@pytest.mark.parametrize("number", ["9" * 4301, "-" + "9" * 4301, "1" * 60_000])
def test_a_number_too_long_is_refused_in_the_protocols_words(number: str) -> None:
    """Python refuses to convert more than 4300 digits; its advice (sys.set_int_max_str_digits) is for
    whoever runs the interpreter, not for a peer."""
    with pytest.raises(RemoteProtocolError) as raised:
        p.decode([f'{{"v": 2, "type": "credit", "n": {number}}}'.encode()])
    assert str(raised.value) == "header holds a number too long (more than 4300 digits)"


def test_a_number_of_4300_digits_is_read() -> None:
    message, _payload = p.decode([f'{{"v": 2, "type": "credit", "n": {"9" * 4300}}}'.encode()])
    assert message == p.Credit(int("9" * 4300))


@pytest.mark.parametrize(
    ("stored_path", "problem"),
    [
        ("", None),
        ("/hpc/upstream/run/run_00000.h5", None),
        ("/hpc/caf\u00e9/r\u00e9sum\u00e9.h5", None),  # non-ASCII letters are fine
        ("/" + "a" * 4095, None),  # MAX_STORED_PATH, documented in docs/upstream.md
        ("/" + "a" * 4096, "at most 4096"),
        ("run/run_00000.h5", "not an absolute path"),
        ("./x", "not an absolute path"),
        ("C:\\data\\x.h5", "not an absolute path"),
        ("/hpc/x.h5\nverified by everyone", "control characters"),
        ("/hpc/\x1b[2J\x1b[31mx.h5", "control characters"),
        ("/hpc/x\x00.h5", "control characters"),
        ("/hpc/x\x7f.h5", "control characters"),
        ("/hpc/x\x9b31m.h5", "control characters"),  # C1 CSI: an escape on some terminals
        ("/hpc/x\t.h5", "control characters"),
        (b"/hpc/x.h5", "not a string"),
        (None, "not a string"),
    ],
)
def test_stored_path_problem(stored_path: object, problem: str | None) -> None:
    found = p.stored_path_problem(stored_path)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and found.startswith("file_verified.stored_path")


def test_a_stored_path_that_is_not_a_string_is_malformed() -> None:
    header = b'{"v": 2, "type": "file_verified", "file_id": 1, "size": 1, "checksum": "x", "stored_path": 7}'
    with pytest.raises(RemoteProtocolError, match="stored_path = 7 is not a string"):
        p.decode([header])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*p.MESSAGES, "", "nope"]) | _JSON,
    st.dictionaries(
        st.sampled_from(
            ["consumer", "credit", "n", "chunk_id", "file_id", "checksum", "stored_path", "size", "reason"]
        ),
        _JSON,
        max_size=5,
    ),
)
def test_fuzz_json_headers_only_raise_remote_protocol_error(kind: object, members: dict[str, object]) -> None:
    """Well-formed JSON with any type and members: decoded, or refused with RemoteProtocolError."""
    header = json.dumps({"v": p.VERSION, "type": kind, **members}).encode()
    with contextlib.suppress(RemoteProtocolError):
        p.decode([header])


@pytest.mark.parametrize(
    "header",
    [
        b'{"v":2,"type":"file_verified","file_id":5,"size":1,"checksum":"ab","stored_path":"/x/\\ud800y"}',
        b'{"v":2,"type":"nack","chunk_id":1,"reason":"\\udfff LONE"}',
        b'{"v":2,"type":"hello","consumer":"\\ud83d","credit":1}',
    ],
)
def test_a_lone_utf16_surrogate_in_a_string_is_refused(header: bytes) -> None:
    """An outside probe: JSON's \\ud800 escape decodes to half a surrogate pair, which no UTF-8 writer
    takes. In a stored_path it crashed the forwarder (SQLite) until the daemon exited; in a nack's reason
    it made /api/status answer 500 until the daemon restarted."""
    with pytest.raises(RemoteProtocolError, match="lone UTF-16 surrogate"):
        p.decode([header])
    escaped_pair = b'{"v":2,"type":"nack","chunk_id":1,"reason":"\\ud83d\\ude00"}'  # a whole pair is text
    message, _ = p.decode([escaped_pair])
    assert isinstance(message, p.Nack) and message.reason == "\U0001f600"


def test_printable_escapes_what_would_forge_a_log_line_or_rewrite_a_terminal() -> None:
    assert p.printable("x\n2026-12-04 CRITICAL forged\x1b[31m") == "x\\x0a2026-12-04 CRITICAL forged\\x1b[31m"
    assert p.printable("a" * 500) == "a" * 200
