"""System test: the live image over pvAccess (issue 13, acceptance 5).

``edge sim --ioc`` and ``edge run`` as in ``test_epics_control``, the daemon's pvAccess server on fresh
loopback ports; this process is a p4p client, as Phoebus' image widget or a tomostream consumer would be.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edgeprocs import free_port
from test_epics_control import ACF, Stack, _epics, wait_until

pytestmark = pytest.mark.timeout(120)

FRAMES = 60
PERIOD_S = 0.05
RATE_HZ = 5.0


class PvaStack(Stack):
    """The stack with the daemon's pvAccess server on its own loopback ports."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pva_tcp = free_port()
        self.pva_udp = free_port()  # (never the same port twice in one process)
        self.settings.append(f"epics.pva_rate_hz={RATE_HZ}")

    def _env(self, **extra: str) -> dict[str, str]:
        env = super()._env(**extra)
        env.update(
            EPICS_PVAS_INTF_ADDR_LIST="127.0.0.1",
            EPICS_PVAS_SERVER_PORT=str(self.pva_tcp),
            EPICS_PVAS_BROADCAST_PORT=str(self.pva_udp),
            EPICS_PVAS_AUTO_BEACON_ADDR_LIST="NO",
            EPICS_PVAS_BEACON_ADDR_LIST="127.0.0.1",
        )
        return env


@pytest.fixture
def stack(tmp_path: Path, ca_port: int, edge_ca_port: int) -> Iterator[PvaStack]:
    s = PvaStack(tmp_path, ca_port, edge_ca_port, ACF)
    try:
        s.start_sim()
        s.start_daemon()
        yield s
    finally:
        s.stop()


def test_ntndarray_updates_during_a_run(stack: PvaStack) -> None:
    from p4p.client.thread import Context

    name = stack.prefix + "Pva1:Image"
    updates: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def on_update(value: Any) -> None:
        if isinstance(value, Exception):  # (Disconnected, before the first frame: not an image)
            return
        with lock:
            updates.append((time.monotonic(), value))

    context = Context(
        "pva",
        conf={
            "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{stack.pva_udp}",
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_NAME_SERVERS": f"127.0.0.1:{stack.pva_tcp}",
        },
        useenv=False,
        unwrap=False,
    )
    try:
        # before any frame: an empty image, not a timeout (a get timed out, as for a PV that does not exist)
        empty = context.get(name, timeout=10)
        assert int(empty["uniqueId"]) == 0 and empty["value"].size == 0
        assert {a["name"]: a["value"] for a in empty["attribute"]}["DetectorWidth"] == 256  # (the size, too)
        subscription = context.monitor(name, on_update, notify_disconnect=True)
        epics = _epics()
        assert epics.caput(stack.prefix + "NumImages", FRAMES, wait=True, timeout=5) == 1
        assert epics.caput(stack.prefix + "AcquirePeriod", PERIOD_S, wait=True, timeout=5) == 1
        started = time.monotonic()
        assert epics.caput(stack.prefix + "Acquire", 1, wait=True, timeout=60) == 1
        elapsed = time.monotonic() - started
        wait_until(lambda: len(updates) >= 3, 10, f"NTNDArray updates of {name}")
        subscription.close()
    finally:
        context.close()
    with lock:
        received = [(at, value) for at, value in updates if int(value["uniqueId"]) > 0]  # (not the empty)
    during = [value for at, value in received if started <= at <= started + elapsed]
    assert len(during) >= 3, f"{len(during)} updates during a {elapsed:.1f} s run"
    # bounded: at most RATE_HZ a second (one extra for the phase of the poster)
    assert len(received) <= math.ceil((time.monotonic() - started + 1) * RATE_HZ) + 1, len(received)
    ids = [int(value["uniqueId"]) for _, value in received]
    assert len(set(ids)) == len(ids) and ids == sorted(ids), ids
    expected = (256, 256)  # detector 256 x 256: up to 512 a side the preview is every pixel
    for _, value in received:
        dims = [int(d["size"]) for d in value["dimension"]]
        assert tuple(reversed(dims)) == expected, dims  # NTNDArray dimension[0] is x (the fast axis)
        pixels = value["value"]
        assert pixels.size == expected[0] * expected[1]
        attributes = {a["name"]: a["value"] for a in value["attribute"]}
        assert attributes["DetectorWidth"] == 256 and attributes["RunUid"]
        assert [(int(d["fullSize"]), int(d["binning"])) for d in value["dimension"]] == [(256, 1)] * 2
        assert abs(int(value["dataTimeStamp"]["secondsPastEpoch"]) - time.time()) < 120  # the frame's time
    assert any(int(value["value"].max()) > 0 for _, value in received)  # real frames, not zeros
