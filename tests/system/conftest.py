"""Loopback Channel Access for the system tests: one client address list for the whole session.

pyepics reads ``EPICS_CA_ADDR_LIST`` once, when libca starts, so this conftest picks two loopback ports
before any test touches libca: `ca_port` for simulator camera IOCs (caproto) and `edge_ca_port` for the
appliance's own IOC (softioc). Both are in the address list, so this process's pyepics finds PVs on
either; each test uses fresh PV prefixes and kills the servers it started. See ``docs/epics.md``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.demo import free_port as demo_free_port


def free_port(exclude: tuple[int, ...] = ()) -> int:
    """A port free for both UDP and TCP on loopback, below the kernel's ephemeral range (``edge.demo``).

    Checked by binding without SO_REUSEADDR/SO_REUSEPORT on purpose: caproto binds its UDP search socket
    with SO_REUSEPORT, and two servers sharing a UDP port would each see only some of the searches.
    """
    for _ in range(50):
        port = demo_free_port()
        if port not in exclude:
            return port
    raise RuntimeError("no free loopback port found")


def _session_ca_ports() -> tuple[int, int]:
    sim = free_port()
    edge = free_port((sim,))
    os.environ["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{sim} 127.0.0.1:{edge}"
    os.environ["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    return sim, edge


# before any test can start libca (collection imports this module first)
_SIM_CA_PORT, _EDGE_CA_PORT = _session_ca_ports()


@pytest.fixture(scope="session")
def ca_port() -> int:
    """The loopback CA port for simulator camera IOCs; in this process's ``EPICS_CA_ADDR_LIST``."""
    return _SIM_CA_PORT


@pytest.fixture(scope="session")
def edge_ca_port() -> int:
    """The loopback CA port for the appliance's IOC; in this process's ``EPICS_CA_ADDR_LIST``."""
    return _EDGE_CA_PORT


@pytest.fixture
def idle_stack(tmp_path: Path, ca_port: int, edge_ca_port: int) -> Iterator[object]:
    """Simulator and daemon with its IOC (the packaged ACF, loaded by default), running; no pull client.
    Stopped at teardown. (``test_epics_control.Stack``.)"""
    from test_epics_control import Stack

    s = Stack(tmp_path, ca_port, edge_ca_port, acf=None)
    try:
        s.start_sim()
        s.start_daemon()
        yield s
    finally:
        s.stop()


SMALL_DISK_MIB = 48


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SMALL_DISK_MIB mounted for the test: a disk that really fills. CI runs as root and can
    mount; there a failed mount is a failure, not a skip."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_MIB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must be able to mount a tmpfs for this test: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
