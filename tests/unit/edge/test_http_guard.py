"""The API's connection guard (``edge.http_guard``) on a real uvicorn server over loopback: a client
that never finishes its request headers is closed after ``header_seconds``, connections beyond
``max_connections`` are closed as they open, and neither a request being answered (a slow streamed
response) nor a normal client is touched. An outside probe held 20,000 half-sent requests open and the
daemon ran out of file descriptors."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from edge.demo import free_port
from edge.http_guard import REFUSED, guarded_protocol

MAX, HEADER_SECONDS = 8, 0.5


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    if scope["path"] == "/slow":  # a stream longer than the header deadline, as /api/events is
        for _ in range(4):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.4)
    await send({"type": "http.response.body", "body": b"ok\n"})


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
        http=guarded_protocol(MAX, HEADER_SECONDS),
    )  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _get(port: int, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_request_whose_headers_never_finish_is_closed(server: int) -> None:
    before = REFUSED["header_timeout"]
    with socket.create_connection(("127.0.0.1", server), timeout=5) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert b"ok\n" in _get(server)  # meanwhile others are answered
        assert _closed_within(slow, HEADER_SECONDS + 2)
    assert REFUSED["header_timeout"] == before + 1


def test_a_slow_streamed_response_is_not_cut(server: int) -> None:
    answer = _get(server, "/slow")  # 1.6 s of ticks, over three header deadlines
    assert answer.count(b"tick") == 4 and b"ok\n" in answer


def test_connections_beyond_the_cap_are_closed_as_they_open(server: int) -> None:
    before = REFUSED["over_limit"]
    held = [socket.create_connection(("127.0.0.1", server), timeout=5) for _ in range(MAX)]
    try:
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", server), timeout=5) as extra:
            assert _closed_within(extra, 1.0)
        assert REFUSED["over_limit"] == before + 1
    finally:
        for sock in held:
            sock.close()
    time.sleep(HEADER_SECONDS)
    assert b"ok\n" in _get(server)  # room again once they closed
