"""A consumer is outside the appliance, so nothing it sends is trusted: a message part larger than any
the upstream protocol has (a consumer sends headers only, docs/upstream.md) is refused by ZeroMQ before
it is buffered (MAXMSGSIZE), its connection dropped, and the forwarder goes on serving the others."""

from __future__ import annotations

import time
from pathlib import Path

import zmq
from edgeprocs import in_process_appliance

from edge.upstream import protocol as p
from edge.upstream.forwarder import MAX_INBOUND_BYTES


def _hello(
    context: zmq.Context, endpoint: str, consumer: str, first: bytes | None = None
) -> list[type[p.Message]]:
    """Connect as ``consumer``, send ``first`` (if any) then a Hello; the kinds of the appliance's answers
    up to its Welcome."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    answers: list[type[p.Message]] = []
    try:
        if first is not None:
            sock.send(first)
        sock.send_multipart(p.encode(p.Hello(consumer, 4)))
        while p.Welcome not in answers:
            assert sock.poll(5000), f"no Welcome for {consumer}'s Hello, only {answers}"
            message, _payload = p.decode(sock.recv_multipart())
            answers.append(type(message))
        return answers
    finally:
        sock.close(0)


def test_an_oversized_part_never_reaches_the_forwarder_which_serves_on(tmp_path: Path) -> None:
    with in_process_appliance(tmp_path, (8, 8)) as (appliance, _push, _settings):
        endpoint = appliance.forwarder.bound_endpoint
        context = zmq.Context()
        try:
            # the oversized part is dropped with its connection, never buffered whole nor decoded:
            # without the limit it would reach the protocol and be refused there, a protocol error
            hostile = context.socket(zmq.DEALER)
            hostile.linger = 0
            hostile.connect(endpoint)
            hostile.send(b"x" * (MAX_INBOUND_BYTES + 1))
            time.sleep(1.5)
            hostile.close(0)
            assert appliance.forwarder.counters().get("protocol_errors", 0) == 0
            assert _hello(context, endpoint, "hpc") == [p.Welcome]
            # at the limit: it arrives, and the protocol refuses it (a header is at most 64 KiB)
            assert _hello(context, endpoint, "edge-case", b"{" * MAX_INBOUND_BYTES) == [p.Error, p.Welcome]
            assert appliance.forwarder.counters()["protocol_errors"] == 1
        finally:
            context.term()
