"""Live event streams against the real server: at most three quarters of ``api.max_connections`` (all but
4 at least); one more is answered 503 and its connection closed, so status polls and metrics scrapes are
answered however many pages watch (an outside probe: 16 streams under a cap of 16 shut them out; then
refused streams kept alive took the room kept for requests until the keep-alive timeout)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from edgeprocs import EdgeStack

pytestmark = pytest.mark.timeout(90)


def _open_stream(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def test_refused_event_streams_are_closed_and_requests_are_still_answered(tmp_path: Path) -> None:
    stack = EdgeStack(tmp_path, ["api.max_connections=8", "detector.height=32", "detector.width=32"])
    streams: list[socket.socket] = []
    try:
        stack.start_daemon()
        for _ in range(4):  # 8 less 4 kept for requests
            sock, head = _open_stream(stack.api_port)
            assert head.startswith(b"HTTP/1.1 200"), head[:80]
            streams.append(sock)
        refused = []
        for _ in range(3):
            sock, head = _open_stream(stack.api_port)
            assert head.startswith(b"HTTP/1.1 503"), head[:80]
            assert b"retry-after: 5" in head.lower()
            rest = b""
            sock.settimeout(2.0)  # well under the server's keep-alive timeout (5 s): closed, not idle
            while chunk := sock.recv(4096):  # the server closes it after the body: recv ends
                rest += chunk
            assert b'"error":"busy"' in head + rest
            refused.append(sock)
        for _ in range(3):  # the refused ones held nothing: requests are answered
            assert httpx.get(f"{stack.url}/api/status", timeout=5).status_code == 200
            assert httpx.get(f"{stack.url}/metrics", timeout=5).status_code == 200
        status = httpx.get(f"{stack.url}/api/status", timeout=5).json()
        assert status["appliance"]["api_event_streams_refused"] == 3
        for sock in refused:
            sock.close()
    finally:
        for sock in streams:
            sock.close()
        stack.stop_all()


def test_a_burst_of_event_streams_opened_at_once_keeps_to_the_limit(tmp_path: Path) -> None:
    """An outside probe: 14 streams opened in one burst under a limit of 12 were all let through (each
    request looked before any stream had begun). Admitted streams count from their admission."""
    stack = EdgeStack(tmp_path, ["api.max_connections=16", "detector.height=32", "detector.width=32"])
    socks: list[socket.socket] = []
    try:
        stack.start_daemon()
        for _ in range(16):  # sent together, the heads read afterwards
            sock = socket.create_connection(("127.0.0.1", stack.api_port), timeout=10)
            sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(sock)
        heads = []
        for sock in socks:
            head = b""
            while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
                head += chunk
            heads.append(head[:12])
        assert heads.count(b"HTTP/1.1 200") == 12 and heads.count(b"HTTP/1.1 503") == 4, heads
        status = httpx.get(f"{stack.url}/api/status", timeout=5).json()
        assert status["appliance"]["api_event_streams_refused"] == 4
    finally:
        for sock in socks:
            sock.close()
        stack.stop_all()
