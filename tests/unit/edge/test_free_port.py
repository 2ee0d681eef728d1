"""The demo's (and the tests') loopback ports: free, never handed out twice, and outside the range the
kernel takes outgoing connections' source ports from (so none can take a port before it is bound)."""

from __future__ import annotations

import socket

from edge.demo import _ephemeral_range, _port_is_free, free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    assert 0 < low <= high
    ports = [free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    if low >= 11000:  # room below the range (Linux's default starts at 32768)
        assert all(10000 <= port < low for port in ports), ports
    for port in ports[:5]:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", port))


def test_a_port_in_use_for_tcp_or_udp_is_not_free() -> None:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        port = free_port()
        assert _port_is_free(port)
        with socket.socket(socket.AF_INET, kind) as held:
            held.bind(("127.0.0.1", port))
            assert not _port_is_free(port)
