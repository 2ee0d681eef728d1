"""The dashboard in states a live demo rarely reaches, against the real web app and a scripted view.

A storage alarm, a disconnected detector, lost and incomplete frames, a recovery after a crash, a
vanished consumer, a purged file, and no frame yet (``/api/preview`` and ``/api/profile`` answer 404):
each must be on screen in words, and must go away when the appliance is healthy again. The web app is
``webui.create_app`` served by uvicorn on loopback, so the page, its routes and the 404 handling are
the real ones; only the appliance behind them is scripted.
"""

from __future__ import annotations

import base64
import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cdp_browser import Browser
from edgeprocs import free_port, wait_for

from edge.config import load_settings
from edge.errors import NotFound
from webui import create_app

pytestmark = pytest.mark.browser

RUN = "0b5e7c2a-6f1d-4c1e-9a57-3d2f8e1c4b90"
STORE = "/data/edge/store"

TROUBLED_STATUS: dict[str, Any] = {
    "appliance": {
        "uptime_seconds": 120.0,
        "stopping": False,
        "run_uid": None,
        "recovery": {
            "quarantined": [f"{STORE}/{RUN}/{RUN}_00002.h5.part"],
            "salvaged": [],
            "runs_failed": [RUN],
            "frames_lost": 5,
        },
    },
    "frames": {
        "received": 1234,
        "stored": 1200,
        "delivered": 1100,
        "lost": 7,
        "incomplete": 2,
        "loss_records": 3,
    },
    "receiver": {"endpoint": "tcp://127.0.0.1:5560", "messages": 1240, "series_started": 1, "errors": {}},
    "ring": {"slots": 64, "fill": 60, "max_fill": 64, "policy": "block", "dropped": 0, "full_waits": 12},
    "pipeline": {"backend": "numba", "backend_degraded_from": ["gpu"], "frames_processed": 1200},
    "store": {"path": STORE, "files_closed": 12},
    "ledger": {"bytes_pending": 5_000_000_000, "consumers": [{"consumer": "hpc", "chunks_acked": 10}]},
    "upstream": {
        "bytes_sent": 1_000_000,
        "files_verified": 11,
        "consumers": [
            {"consumer": "hpc", "credit": 0, "in_flight": 3, "seconds_since_seen": 42.0, "connected": False}
        ],
    },
    "retention": {
        "capacity_bytes": 10_000_000_000,
        "store_bytes": 9_950_000_000,
        "unverified_bytes": 9_900_000_000,
        "verified_bytes": 50_000_000,
        "full_in_seconds": 600.0,
        "alarm": "store holds 9.9 GB not yet verified upstream, above its high water mark",
        "accepting_runs": False,
    },
    "disk": {"total": 20_000_000_000, "used": 19_000_000_000, "free": 1_000_000_000, "percent": 95.0},
    "detector": {"enabled": True, "prefix": "SIM:cam1:", "connected": False, "state": "Disconnected"},
}

HEALTHY_STATUS: dict[str, Any] = copy.deepcopy(TROUBLED_STATUS)
HEALTHY_STATUS["appliance"]["recovery"] = {
    "quarantined": [],
    "salvaged": [],
    "runs_failed": [],
    "frames_lost": 0,
}
HEALTHY_STATUS["frames"].update(lost=0, incomplete=0, loss_records=0)
HEALTHY_STATUS["upstream"]["consumers"][0].update(connected=True, credit=8, seconds_since_seen=0.1)
HEALTHY_STATUS["retention"].update(alarm=None, accepting_runs=True, unverified_bytes=0, full_in_seconds=None)
HEALTHY_STATUS["detector"].update(connected=True, state="Idle")

FILES = [
    {
        "name": f"{RUN}_00000.h5",
        "path": f"{STORE}/{RUN}/{RUN}_00000.h5",
        "on_local_disk": False,
        "size": 104_857_600,
        "checksum": "xxh3-128:0123456789abcdef0123456789abcdef",
        "frames": [0, 99],
        "n_frames": 100,
        "state": "purged",
        "verified_by": {"hpc": 1_790_000_000.0},
        "chunks_acked": {"hpc": 25},
        "purged_at": 1_790_000_500.0,
    },
    {
        "name": f"{RUN}_00001.h5",
        "path": f"{STORE}/{RUN}/{RUN}_00001.h5",
        "on_local_disk": True,
        "size": 52_428_800,
        "checksum": "xxh3-128:fedcba9876543210fedcba9876543210",
        "frames": [100, 149],
        "n_frames": 50,
        "state": "stored",
        "verified_by": {},
        "chunks_acked": {},
        "purged_at": None,
    },
]
LOSSES = [
    {
        "first_frame": 120,
        "last_frame": 120,
        "reason": "incomplete_frame",
        "detail": "3 of 16 packets missing",
        "at": 1_790_000_010.0,
        "partial": True,
    },
    {
        "first_frame": 150,
        "last_frame": 154,
        "reason": "daemon_crash",
        "detail": "frames in the ring at the crash",
        "at": 1_790_000_020.0,
        "partial": False,
    },
]


class ScriptedView:
    """An appliance view whose answers the test sets; the same interface as ``edge.appliance``."""

    def __init__(self) -> None:
        self.status_doc = TROUBLED_STATUS
        self.preview: dict[str, Any] | None = None
        self.profile: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        return self.status_doc

    def runs(self) -> list[dict[str, Any]]:
        return [{"run_uid": RUN, "started_at": 1_789_999_000.0}]

    def run(self, run_uid: str) -> dict[str, Any]:
        if run_uid != RUN:
            raise NotFound(f"no run {run_uid!r} in the ledger")
        where = {
            "run_uid": RUN,
            "exit_status": "fail",
            "started_at": 1_789_999_000.0,
            "ended_at": 1_790_000_030.0,
            "frames_expected": 200,
            "frames_stored": 150,
            "frames_delivered": 100,
            "frames_lost": 5,
            "required_consumers": ["hpc"],
            "bytes_pending": 52_428_800,
            "upstream_rate_bytes_per_s": 0.0,
            "eta_seconds": None,
            "files": FILES,
            "losses": LOSSES,
        }
        return {"run_uid": RUN, "exit_status": "fail", "started_at": 1_789_999_000.0, "where": where}

    def latest_profile(self) -> dict[str, Any] | None:
        return self.profile

    def latest_preview(self) -> dict[str, Any] | None:
        return self.preview


@pytest.fixture
def view() -> ScriptedView:
    return ScriptedView()


@pytest.fixture
def url(view: ScriptedView, chromium: str) -> Iterator[str]:
    """The real web app on a loopback port, served by uvicorn on a thread of this process."""
    port = free_port()
    config = uvicorn.Config(
        create_app(load_settings(), view), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 15, "the web app to listen")
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(15)


def texts(browser: Browser, selector: str) -> list[str]:
    return browser.evaluate(
        f"[...document.querySelectorAll({selector!r})].map(e => (e.innerText ?? e.textContent).replace(/\\s+/g, ' ').trim())"
    )


def test_alarms_placeholders_and_a_failed_run(
    url: str, view: ScriptedView, browser: Browser, screenshot_dir: Path
) -> None:
    browser.goto(url)
    browser.wait_for("document.querySelectorAll('#alarms li').length >= 6", 10, "the alarms")
    errors = " | ".join(texts(browser, "#alarms li.error"))
    assert "Storage alarm: store holds 9.9 GB not yet verified" in errors
    assert "Detector disconnected (SIM:cam1:)" in errors
    assert "7 frames lost (3 loss records)" in errors
    warnings = " | ".join(texts(browser, "#alarms li.warn"))
    assert "Recovered after a crash: 1 run(s) marked failed (0b5e7c2a)" in warnings
    assert "1 half-written file(s) quarantined" in warnings and "5 frames unaccounted for" in warnings
    assert "2 frames incomplete" in warnings
    assert "No upstream consumer connected" in warnings

    # no frame yet: the panels say so, and a 404 is not an outage
    assert browser.evaluate("document.getElementById('preview-empty').hidden") is False
    assert browser.evaluate("document.getElementById('profile-empty').hidden") is False
    assert "waiting for the first frame" in browser.evaluate(
        "document.getElementById('preview-empty').textContent"
    )
    assert browser.evaluate("document.getElementById('unreachable').hidden") is True

    # the tiles in words
    assert texts(browser, "#store-accepting") == ["REFUSED"]
    assert texts(browser, "#detector-state") == ["Disconnected (SIM:cam1:)"]
    assert texts(browser, "#store-full-in") == ["10 min"]
    assert texts(browser, "#ring-fill") == ["60 of 64 slots in use"]
    assert "gone 42 s" in texts(browser, "#consumers tbody tr")[0]
    assert texts(browser, "#upstream-pending") == ["4.66 GiB"]

    # the failed run, and where its data is: one file only upstream, one still local, and the losses
    browser.wait_for(f"!!document.querySelector('#runs tr[data-run=\"{RUN}\"]')", 10, "the run's row")
    row = texts(browser, f'#runs tr[data-run="{RUN}"]')[0]
    assert row.startswith("0b5e7c2a") and "fail" in row and "1 purged" in row and "1 stored" in row
    browser.click(f'#runs tr[data-run="{RUN}"]')
    browser.wait_for("!!document.getElementById('where-files')", 10, "the where report")
    files = texts(browser, "#where-files tbody tr")
    assert (
        "(purged locally)" in files[0] and f"{STORE}/{RUN}/{RUN}_00000.h5" in files[0] and "hpc" in files[0]
    )
    assert "(purged locally)" not in files[1] and "nobody yet" in files[1]
    losses = texts(browser, "#where-losses tbody tr")
    assert losses[0].startswith("incomplete 120\u2013120") and "incomplete_frame" in losses[0]
    assert losses[1].startswith("LOST 150\u2013154 5 daemon_crash")
    summary = browser.evaluate("document.querySelector('#where .summary').textContent")
    assert "5 lost" in summary and "expected 200" in summary and "50.0 MiB" in summary
    browser.screenshot(screenshot_dir / "dashboard-alarms.png", full_page=True)

    # healthy again, with a first frame: the alarms go, the image and the profile appear
    view.status_doc = HEALTHY_STATUS
    view.preview = {
        "frame": 7,
        "run_uid": RUN,
        "processed_at": 1_790_000_000.0,
        "height": 16,
        "width": 32,
        "pixels_b64": base64.b64encode(
            bytes((x * 8 + y * 4) % 256 for y in range(16) for x in range(32))
        ).decode(),
    }
    view.profile = {
        "unit": "q_nm^-1",
        "radial": [0.1 * i for i in range(1, 51)],
        "intensity": [float(i % 7) for i in range(50)],
    }
    browser.wait_for("document.querySelectorAll('#alarms li').length === 0", 10, "the alarms to clear")
    browser.wait_for("document.getElementById('preview-empty').hidden", 10, "the live image")
    assert browser.evaluate(
        "[document.getElementById('preview').width, document.getElementById('preview').height]"
    ) == [32, 16]
    browser.wait_for("!!document.getElementById('profile-xlabel')", 10, "the profile plot")
    assert texts(browser, "#profile-xlabel") == ["q (nm⁻¹)"]
    assert texts(browser, "#detector-state") == ["Idle (SIM:cam1:)"]
    assert texts(browser, "#store-accepting") == ["accepted"]
