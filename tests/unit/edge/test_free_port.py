"""The demo's (and the tests') loopback ports: free, never handed out twice, and outside the range the
kernel takes outgoing connections' source ports from (so none can take a port before it is bound)."""

from __future__ import annotations

import os
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


def test_edge_port_range_narrows_the_choice(monkeypatch) -> None:
    import pytest

    from edge.errors import ConfigError

    monkeypatch.setenv("EDGE_PORT_RANGE", "12000-12999")
    ports = [free_port() for _ in range(30)]
    assert all(12000 <= port <= 12999 for port in ports), ports
    for bad in ("12000", "x-y", "12000-12100", "100-5000", "12000-65000"):
        monkeypatch.setenv("EDGE_PORT_RANGE", bad)
        with pytest.raises(ConfigError, match="EDGE_PORT_RANGE"):
            free_port()


def test_test_workers_pick_from_disjoint_slices(monkeypatch) -> None:
    """tests/conftest.py gives each xdist worker its own slice (two workers once took one port)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("root_conftest", Path(__file__).parents[2] / "conftest.py")
    assert spec is not None and spec.loader is not None
    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.delenv("EDGE_PORT_RANGE", raising=False)
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        first, last = (int(part) for part in os.environ["EDGE_PORT_RANGE"].split("-"))
        slices.append(range(first, last + 1))
        assert all(first <= free_port() <= last for _ in range(10))
    assert not set(slices[0]) & set(slices[1])


def test_no_port_a_browser_refuses_to_open(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Chromium refuses 10080 (ERR_UNSAFE_PORT): a browser test's dashboard picked there never opened."""
    import edge.demo as demo

    monkeypatch.setenv("EDGE_PORT_RANGE", "10080-11079")
    # (after it, the next port that is free: 10081 was taken once, by something else on the machine)
    draws = iter([10080, 10080, *range(10081, 11080)])
    monkeypatch.setattr(demo.secrets.SystemRandom, "randint", lambda self, a, b: next(draws))
    port = free_port()
    assert 10081 <= port <= 11079
