"""Datagrams the kernel drops at the UDP socket (its receive buffer full while the appliance falls
behind) are counted (``socket_drops``) and named in the loss records of frames that went missing
meanwhile: an outside probe's run stalled behind a compile, the socket overflowed, and the lost frames
were recorded only as "no packet of these frames arrived", blaming the detector."""

from __future__ import annotations

import socket
import sys
from typing import Any

import pytest

from firmware_bridge.udp_codec import DetectorGeometry, FramesLost
from firmware_bridge.udp_reader import UdpSource, socket_drops

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/udp is Linux's")

GEOMETRY = DetectorGeometry(module_rows=4, module_cols=6, grid_rows=1, grid_cols=2, payload_bytes=16)


class _Sink:
    def __init__(self) -> None:
        self.losses: list[tuple[int, int, str, str]] = []

    def lost(self, first: int, last: int, reason: str, detail: str) -> None:
        self.losses.append((first, last, reason, detail))


def _overflow(port: int) -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        payload = bytes(1400)
        for _ in range(2000):  # far more than a small receive buffer holds: nothing reads meanwhile
            sender.sendto(payload, ("127.0.0.1", port))
    finally:
        sender.close()


def test_the_kernel_s_drops_at_a_full_socket_are_read_back() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        assert socket_drops(sock) == 0
        _overflow(sock.getsockname()[1])
        dropped = socket_drops(sock)
        assert dropped is not None and dropped > 0
    finally:
        sock.close()


def test_frames_lost_while_the_socket_overflowed_say_so() -> None:
    sink: Any = _Sink()
    source = UdpSource("127.0.0.1", 0, GEOMETRY, sink=sink, rcvbuf_bytes=4096)
    try:
        source._handle([FramesLost(3, 5, "series_end")])
        assert sink.losses[-1][3] == "no packet of these frames arrived"
        _overflow(source.address[1])
        assert source.counters()["socket_drops"] > 0
        source._handle([FramesLost(7, 7, "series_end")])
        first, last, reason, detail = sink.losses[-1]
        assert (first, last, reason) == (7, 7, "series_end")
        assert detail.startswith("no packet of these frames arrived; the kernel dropped ")
        assert "receive buffer overflowed" in detail
    finally:
        source._sock.close()
