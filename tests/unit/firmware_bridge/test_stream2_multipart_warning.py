"""Multipart messages into the Stream V2 reader, over a real ZeroMQ PUSH -> PULL on loopback: what the
JSON-format sender (``edge sim``'s default) sends. Each is dropped and counted; the reader logs what it
likely means (the first, then every 100th) and ``condition:receiver`` counts them with the decoder's
rejections."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import zmq

from edge.alarms import current_alarms
from firmware_bridge.stream2_reader import Stream2Source
from firmware_bridge.zmq_reader import MULTIPART_LOG_EVERY


class Sink:
    """A FrameSink that must never be given anything: no multipart message is a frame."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the sink was called: {name}")


def test_multipart_messages_are_logged_rate_limited_and_raise_the_receiver_alarm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = 2 * MULTIPART_LOG_EVERY + 50
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = Stream2Source(f"tcp://127.0.0.1:{port}", Sink(), context)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="firmware_bridge.zmq_reader")
    reader.start()
    try:
        assert current_alarms({"receiver": reader.counters()}) == []
        for number in range(sent):  # a v1 image: JSON header, data header, data
            push.send_multipart([b'{"htype":"dimage-1.0","series":1,"frame":%d}' % number, b"{}", b"\0" * 8])
        push.send(b'{"htype":"dseries_end-1.0","series":1}')  # single-part: the CBOR decoder rejects it
        deadline = time.monotonic() + 10
        while reader.counters()["codec"].get("messages", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        counters = reader.counters()
    finally:
        reader.stop()
        push.close(0)
        context.term()
    assert counters["messages_multipart_rejected"] == sent
    assert counters["errors"] == {"malformed_cbor": 1}
    (alarm,) = current_alarms({"receiver": counters})
    assert alarm["id"] == "condition:receiver"
    assert alarm["message"].startswith(f"Receiver errors: malformed_cbor 1, multipart {sent} (multipart: ")
    assert "check stream.format" in alarm["message"]
    lines = [r.getMessage() for r in caplog.records if "multipart message(s)" in r.getMessage()]
    # the first, then one as each multiple of 100 is passed (however many one look counted)
    assert len(lines) == 3, lines
    assert all(
        line.startswith("rejected ") and f"from tcp://127.0.0.1:{port} so far" in line for line in lines
    )
    assert [int(line.split()[1]) // MULTIPART_LOG_EVERY for line in lines] == [0, 1, 2]
    assert all("speaks the JSON multipart format into this Stream V2 receiver" in line for line in lines)
    assert all("check stream.format on both sides" in line for line in lines)
