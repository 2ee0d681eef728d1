"""The dashboard against the real stack: simulator -> daemon -> pull, in headless Chromium.

What a beamline scientist sees: the frame counter moving, a drawn live image whose timestamp advances,
the profile plot with its axis unit, the run in the runs table, and after clicking it where each file
is on the appliance and on the HPC side (the pull client's own path) and who confirmed it, plus the loss
the simulator injected; and "offline" within 5 s of the daemon stopping. The tests share one stack;
the last one stops the daemon.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cdp_browser import Browser
from edgeprocs import EdgeStack, wait_for

pytestmark = pytest.mark.browser

#: JavaScript: the number a counter tile shows (thousands separators removed), or -1.
COUNTER = "(() => {{ const n = parseInt(document.getElementById({id!r}).textContent.replace(/,/g, ''), 10); return Number.isFinite(n) ? n : -1; }})()"

#: JavaScript: how many distinct colours the live-image canvas shows (1 when blank).
CANVAS_COLOURS = """(() => {
  const c = document.getElementById("preview");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return document.getElementById("preview-empty").hidden ? seen.size : 0;
})()"""


@dataclass
class LiveStack:
    stack: EdgeStack
    daemon: subprocess.Popen[str]
    run_uid: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[LiveStack]:
    """Daemon, pull client and a simulator that drops ~10 % of frames (seeded), on loopback."""
    stack = EdgeStack(
        tmp_path_factory.mktemp("live"),
        [
            "sim.rate_hz=10",
            "sim.loss=0.1",
            "store.frames_per_file=10",
            "detector.height=512",
            "detector.width=512",
            "reduction.bins=300",
        ],
    )
    run_uid = str(uuid.uuid4())
    try:
        daemon = stack.start_daemon()
        stack.start("pull")
        stack.start("sim", "--run-uid", run_uid)
        wait_for(lambda: stack.status()["frames"]["received"] > 0, 60, "frames reaching the daemon")
        yield LiveStack(stack, daemon, run_uid)
    finally:
        stack.stop_all()


def test_live_frames_image_profile_and_where_the_run_is(
    live: LiveStack, browser: Browser, screenshot_dir: Path
) -> None:
    stack, run_uid = live.stack, live.run_uid
    browser.goto(stack.url + "/")
    assert browser.evaluate("document.title") == "edge appliance"

    # counters and rate from /api/status
    browser.wait_for(COUNTER.format(id="c-daemon-received") + " > 0", 20, "the frame counter above 0")
    browser.wait_for(
        "parseFloat(document.getElementById('frame-rate').textContent) > 0", 20, "a frame rate above 0"
    )
    assert browser.evaluate("document.getElementById('link-state').textContent") == "live"
    assert "slots in use" in browser.evaluate("document.getElementById('ring-fill').textContent")
    assert "% used (" in browser.evaluate("document.getElementById('disk-used').textContent")
    assert browser.evaluate("document.getElementById('unreachable').hidden") is True

    # the live image is drawn with a colormap, not blank
    colours = browser.wait_for(CANVAS_COLOURS + " > 16", 20, "a drawn live image")
    assert colours, "the canvas shows a single colour"
    caption = browser.evaluate("document.getElementById('preview-caption').textContent")
    assert caption.startswith("frame ") and run_uid[:8] in caption
    # the frame's time advances while the run goes on (the simulator sends 10 frames/s)
    received = "Number(document.getElementById('preview-received').dataset.receivedAt)"
    first = browser.wait_for(received, 10, "the frame's time")
    browser.wait_for(f"{received} > {first}", 10, "a newer frame's time")

    # the profile is a line with axes and its unit
    points = browser.wait_for(
        "[...document.querySelectorAll('#profile polyline.trace')].reduce((n, l) => n + l.points.numberOfItems, 0)",
        20,
        "the profile plot",
    )
    assert points > 100  # 300 bins, minus any without pixels
    assert browser.evaluate("document.getElementById('profile-xlabel').textContent") == "2θ (degrees)"
    assert "intensity" in browser.evaluate("document.getElementById('profile-ylabel').textContent")

    # the injected loss shows as an alarm (the simulator's loss is seeded; the first gap comes early)
    browser.wait_for(COUNTER.format(id="c-run-lost") + " > 0", 30, "this run's lost frames counted")
    browser.wait_for(COUNTER.format(id="c-run-received") + " > 0", 10, "this run's received frames counted")
    alarms = browser.wait_for(
        "[...document.querySelectorAll('#alarms li.error')].map(li => li.textContent).join('\\n')",
        10,
        "a loss alarm",
    )
    assert "frames lost" in alarms

    # the run appears in the runs table; once a file is verified upstream it says so
    row = f'#runs tr[data-run="{run_uid}"]'
    browser.wait_for(
        f"document.querySelector({row!r})?.textContent.includes('verified') || false",
        30,
        "the run's row with a verified file",
    )
    assert browser.evaluate(f"document.querySelector({row!r}).textContent").startswith(run_uid[:8])

    # clicking the run shows where its data is
    browser.click(row)
    first_file = stack.store / run_uid / f"{run_uid}_00000.h5"
    paths = browser.wait_for(
        "[...document.querySelectorAll('#where-files td.paths:not(.upstream-copy) .path')].map(e => e.title)",
        10,
        "the run's file paths",
    )
    assert str(first_file) in paths
    assert all(path.startswith(str(stack.store / run_uid)) for path in paths)
    # the HPC-side copy: the path the pull client stored the first file at, as it acknowledged it
    copies = browser.wait_for(
        "[...document.querySelectorAll('#where-files td.upstream-copy .path')].map(e => e.title)",
        10,
        "the upstream copies",
    )
    assert any(c.endswith(f"/{run_uid}/{first_file.name}") for c in copies), copies
    assert browser.evaluate("document.getElementById('where-summary').textContent").startswith(
        f"{len(paths)} file(s):"
    )
    where_text = browser.evaluate("document.getElementById('where').textContent")
    assert "hpc" in where_text  # confirmed by the pull client
    assert "xxh3-128:" in where_text
    losses = browser.wait_for(
        "document.getElementById('where-losses')?.textContent || ''", 15, "the run's loss records"
    )
    assert "frame_number_gap" in losses and "LOST" in losses
    assert browser.evaluate("location.hash") == f"#run={run_uid}"

    browser.evaluate("window.scrollTo(0, 0)")
    shot = browser.screenshot(screenshot_dir / "dashboard-live.png")
    browser.screenshot(screenshot_dir / "dashboard-live-full.png", full_page=True)
    print(f"dashboard screenshots: {shot} and {shot.with_name('dashboard-live-full.png')}")


def test_banner_when_the_appliance_stops_answering(live: LiveStack, browser: Browser) -> None:
    browser.goto(live.stack.url + "/")
    browser.wait_for(COUNTER.format(id="c-daemon-received") + " > 0", 20, "the frame counter above 0")
    browser.wait_for("window.edgeDashboard?.link === 'live'", 10, "the live stream")
    received = browser.evaluate(COUNTER.format(id="c-daemon-received"))

    # Ctrl-C: the daemon closes its web API first (its live streams within 2 s), then drains and
    # closes its files (the fixture's teardown waits for that); the page must say "offline" in 5 s
    live.daemon.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    browser.wait_for(
        "document.getElementById('link-state').textContent.startsWith('offline')", 5, "offline within 5 s"
    )
    assert time.monotonic() - stopped < 5
    banner = browser.evaluate("document.getElementById('unreachable').textContent")
    assert "Cannot reach the appliance" in banner and "Retrying" in banner
    assert browser.evaluate("document.getElementById('main').classList.contains('stale')")
    assert browser.evaluate("document.getElementById('run-state').className") == "pill unknown"
    assert browser.evaluate(COUNTER.format(id="c-daemon-received")) >= received  # last values stay
