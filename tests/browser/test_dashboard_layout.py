"""The dashboard's layout from a phone to a control-room wall: 390, 1024 and 1920 px wide.

A busy scripted appliance (a faulty run, a running one, the where-is-my-data report of the faulty run
open with its long paths, a live image, a profile, a serial-mode product with peaks, trend samples):
at each width nothing overflows the page sideways, no two cards overlap, the runs table stays readable
(no cell squeezed to a sliver or wrapped into a tall column), long paths are shortened with the full
path in the title and a copy button, and the live image keeps the detector's aspect ratio. Full-page
screenshots are kept in the session's screenshot folder (printed) for a person to look at.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cdp_browser import Browser
from scripted import FAULTY, HPC, STORE, ScriptedRun, ScriptedView, run_files, serve

RUNNING = "5f0c2d3e-aaaa-4bbb-8ccc-0123456789ab"

pytestmark = pytest.mark.browser

# 768: a tablet, where the runs table is wider than its card; 1800: six columns at their narrowest
WIDTHS = (390, 768, 1024, 1800, 1920)

#: JavaScript: the layout facts the test judges (page overflow, card boxes, runs-table cells, elements
#: sticking out of the page's width).
LAYOUT = """(() => {
  const doc = document.documentElement;
  const box = (el) => { const r = el.getBoundingClientRect(); return {id: el.id, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  const cards = [...document.querySelectorAll("main .card")].filter((c) => c.getClientRects().length).map(box);
  const cells = [...document.querySelectorAll("#runs tbody tr[data-run] td")].map((td) => {
    const r = td.getBoundingClientRect();
    return {label: td.dataset.label, w: r.width, h: r.height, text: td.innerText};
  });
  const sticking = [...document.querySelectorAll("body *")].filter((el) => {
    if (el.closest(".scroll-x, .preview-scroll")) return false;  // these scroll inside their card
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > doc.clientWidth + 1;
  }).map((el) => el.tagName + "#" + el.id + "." + el.className).slice(0, 10);
  return {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, cards, cells, sticking};
})()"""


def overlapping(cards: list[dict[str, float]]) -> list[tuple[str, str]]:
    """Pairs of cards whose boxes share more than a pixel of area."""
    pairs = []
    for i, a in enumerate(cards):
        for b in cards[i + 1 :]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > 1 and dy > 1:
                pairs.append((a["id"], b["id"]))
    return pairs


@pytest.fixture(scope="module")
def busy() -> Iterator[str]:
    view = ScriptedView()
    now = time.time()
    losses = [
        {
            "first_frame": 120,
            "last_frame": 199,
            "reason": "frame_number_gap",
            "detail": "80 frames never arrived",
            "at": now - 3500,
            "partial": False,
        }
    ]
    note = "left out of the files: detector=" + "'E-4M-serial-0123456789abcdef" * 5  # long, unbroken
    faulty = ScriptedRun(FAULTY, now - 3600, now - 3000, "fail", run_files(FAULTY, 3, 2), losses)
    faulty.header_notes = [note[:180]]
    faulty.also_named = [RUNNING]  # the detector sent the same run uid again: a link to that run
    faulty.continued_by = [RUNNING]  # and its series went on in that run after a daemon restart
    view.add_run(faulty)
    running = RUNNING
    resumed = ScriptedRun(running, now - 60, None, None, run_files(running, 2, 1), [], mode="serial")
    resumed.resumes_run, resumed.resumed_at_frame = FAULTY, 1200
    view.add_run(resumed, current=True)
    view.base["ledger"]["bytes_pending"] = 300 * 2**20
    view.ledger.rate = 2 * 2**20
    view.ledger.oldest = now - 95
    view.new_frame(5)
    view.profile = {
        "unit": "q_nm^-1",
        "radial": [0.1 * i for i in range(1, 201)],
        "intensity": [100.0 / (1 + ((i % 40) - 20) ** 2) + 2 for i in range(200)],
    }
    view.product_doc = {
        "mode": "serial",
        "run_uid": running,
        "powder": None,
        "tomo": None,
        "serial": {
            "frames": 400,
            "hits": 37,
            "hit_rate": 0.0925,
            "recent": [{"t": now - 60 + i, "hit_rate": 0.05 + 0.001 * i} for i in range(60)],
            "latest_hit": {"frame": 398, "peaks": [[100, 60, 900.0], [300, 200, 400.0], [450, 30, 120.0]]},
            # the newest hit kept with its pixels: a 128 x 64 image of a 512 x 256 detector, dark
            "hit_image": {
                "frame": 396,
                "peaks": [[100, 60, 900.0], [300, 200, 400.0], [450, 30, 120.0]],
                "detector_height": 256,
                "detector_width": 512,
                "height": 64,
                "width": 128,
                "scale": "log1p",
                "counts_top": 10.0,
                "pixels_b64": base64.b64encode(bytes(128 * 64)).decode("ascii"),
            },
        },
    }
    with serve(view) as (url, _server):
        yield url


@pytest.mark.parametrize("width", WIDTHS)
def test_layout_at_each_width(
    busy: str, chromium: str, tmp_path: Path, screenshot_dir: Path, width: int
) -> None:
    browser = Browser(chromium, tmp_path / "chromium-profile", width=width, height=900)
    try:
        browser.goto(busy + f"#run={FAULTY}")
        browser.wait_for("window.edgeDashboard?.link === 'live'", 10, "the first status push")
        browser.wait_for("document.querySelectorAll('#runs tr[data-run]').length === 2", 10, "the runs table")
        browser.wait_for("!!document.getElementById('where-files')", 10, "the where report")
        browser.wait_for("document.getElementById('preview-empty').hidden", 10, "the live image")
        browser.wait_for("!!document.getElementById('hit-rate')", 10, "the serial product")
        browser.wait_for("window.edgeDashboard.trends.length >= 2", 10, "two trend samples")

        layout = browser.evaluate(LAYOUT)
        assert layout["scrollWidth"] <= layout["clientWidth"], f"page overflows sideways at {width} px"
        assert layout["sticking"] == [], f"elements stick out of the page at {width} px"
        assert overlapping(layout["cards"]) == [], f"cards overlap at {width} px"
        assert all(c["x"] >= 0 and c["x"] + c["w"] <= layout["clientWidth"] + 1 for c in layout["cards"])

        # the runs table is readable: each cell at least a short word wide and at most two lines tall
        cells = layout["cells"]
        assert len(cells) == 20
        for cell in cells:
            assert cell["w"] >= 40, f"{cell} is squeezed at {width} px"
            assert cell["h"] <= 48, f"{cell} wraps into a column at {width} px"
        row = browser.evaluate(f"document.querySelector('#runs tr[data-run=\"{FAULTY}\"]').innerText")
        assert "0b5e7c2a" in row and "80" in row and "fail" in row

        # long paths: shortened on screen, whole in the title and in the copy button
        local = browser.evaluate(
            "[...document.querySelectorAll('#where-files tbody tr:first-child .path')].map(e => [e.textContent, e.title])"
        )
        full_local = f"{STORE}/{FAULTY}/{FAULTY}_00000.h5"
        full_hpc = f"{HPC}/{FAULTY}/{FAULTY}_00000.h5"
        assert [title for _, title in local] == [full_local, full_hpc]
        assert all(len(shown) < 30 and shown.endswith("_00000.h5") for shown, _ in local)
        copies = browser.evaluate(
            "[...document.querySelectorAll('#where-files button.copy')].map(b => b.dataset.copy)"
        )
        assert full_local in copies and full_hpc in copies
        summary = browser.evaluate("document.getElementById('where-summary').textContent")
        assert summary.startswith(f"3 file(s): 3 on the appliance ({STORE}/{FAULTY}), 2 verified upstream")
        # what the detector's header said that the files do not carry, as `edge where` prints it
        notes = browser.evaluate("document.getElementById('where-header-notes').innerText")
        assert notes.startswith("left out of the files: detector=")
        also = browser.evaluate("document.getElementById('where-also-named').innerText")
        assert f"also names: {RUNNING}" in also
        series = browser.evaluate("document.getElementById('where-series').innerText")
        assert f"its series continues in {RUNNING}" in series

        # the image keeps the detector's aspect ratio (a 64 x 32 preview: twice as wide as tall)
        w, h = browser.evaluate(
            "(() => { const r = document.getElementById('preview').getBoundingClientRect(); return [r.width, r.height]; })()"
        )
        assert abs(w / h - 2.0) < 0.02, (w, h)

        # a serial run has no profile: its hit rate over time fills that card, drawn at the card's size
        assert browser.evaluate("document.getElementById('profile-title').textContent") == "Hit rate"
        chart = browser.evaluate(
            "(() => { const c = document.getElementById('wide-hits'); const r = c.getBoundingClientRect();"
            " return [c.hidden, document.getElementById('profile-empty').hidden, r.width, r.height, c.width]; })()"
        )
        assert chart[:2] == [False, True] and chart[2] >= 200 and chart[3] >= 200 and chart[4] > 0, chart
        # with a value axis: round ticks labelled at the left (an outside probe could not read the rates
        # off a chart that gave only "now" and the range)
        assert browser.evaluate("window.EdgeCharts.niceTicks(0, 55.6)") == [0, 20, 40, 60]
        grey_labels = browser.evaluate(
            "(() => { const c = document.getElementById('wide-hits'); const x = c.getContext('2d');"
            " const w = Math.round(c.width * 0.08), y0 = Math.round(c.height * 0.2);"
            " const d = x.getImageData(0, y0, w, Math.round(c.height * 0.6)).data; let n = 0;"
            " for (let i = 0; i < d.length; i += 4)"
            "   if (d[i + 3] > 128 && d[i] < 150 && d[i + 2] < 170 && Math.abs(d[i] - d[i + 2]) < 40) n++;"
            " return n; })()"
        )
        assert grey_labels > 40, grey_labels  # tick labels' pixels in the left strip, mid-height

        # the newest hit kept is drawn with its own peaks circled, circles a few screen pixels across
        # however small the canvas is shown (an outside probe saw 1-pixel specks, over another frame)
        hit = browser.evaluate(HIT_RED)
        assert hit is not None, "no hit image in the Mode card"
        red, canvas_width, shown_width = hit
        # three rings of 6 screen pixels' radius: each about 2 pi r = 38 pixels of line at least
        assert red >= 3 * 30 * (canvas_width / shown_width), hit
        # its own frame and count, said to be an earlier hit than the "latest hit" row's (frame 398)
        assert "frame 396, its 3 peaks circled (the newest hit kept with its pixels)" in browser.evaluate(
            "document.querySelector('.hit-figure').innerText"
        )

        # the consumers table fits its card: no scroll bar for a few pixels over its last column
        consumers = browser.evaluate(
            "(() => { const w = document.getElementById('consumers').parentElement;"
            " return [w.scrollWidth, w.clientWidth]; })()"
        )
        assert consumers[0] <= consumers[1] + 1, consumers
        # no hole in the grid: every row of cards reaches the right edge (eleven columns' worth of cards
        # left one slot empty beside the detector card at 4 and 6 columns)
        rows_short = browser.evaluate(
            "(() => { const cards = [...document.querySelectorAll('main > section.card')]"
            ".filter(c => !c.hidden && c.offsetParent !== null); const right = Math.max(...cards.map(c =>"
            " c.getBoundingClientRect().right)); const rows = new Map(); for (const c of cards) {"
            " const r = c.getBoundingClientRect(); const top = Math.round(r.top);"
            " rows.set(top, Math.max(rows.get(top) || 0, r.right)); }"
            " return [...rows].filter(([, r]) => r < right - 2).map(([t]) => t); })()"
        )
        assert rows_short == [], rows_short
        # the disk's label adds up: its percent of used + free (root's reserved blocks are neither), not
        # of the disk's size ("45.0 % of 18.6 GiB used" beside 10.2 GiB free, a probe)
        disk = browser.evaluate("document.getElementById('disk-used').innerText")
        assert disk == "45.0\u00a0% used (8.38 GiB of 18.6 GiB)", disk  # the number and its % together
        # and its link word is whole on one line (a probe saw "conne|cted" broken over two)
        link_lines = browser.evaluate(
            "[...document.querySelectorAll('#consumers tbody td:nth-child(2) span')]"
            ".map(s => s.getClientRects().length)"
        )
        assert link_lines and max(link_lines) == 1, link_lines

        # every picture has a name a screen reader says (the colour bar and the trends had none)
        unnamed = browser.evaluate(
            "[...document.querySelectorAll('canvas')].filter(c => c.getAttribute('aria-hidden') !== 'true'"
            " && !(c.getAttribute('role') === 'img' && (c.getAttribute('aria-label') || '').trim())).map(c => c.id)"
        )
        assert unnamed == [], unnamed

        browser.evaluate("window.scrollTo(0, 0)")
        shot = browser.screenshot(screenshot_dir / f"dashboard-{width}px.png", full_page=True)
        print(f"screenshot at {width} px: {shot}")

        # the other run the detector's uid names is one click away
        browser.evaluate(f"document.querySelector('#where-also-named a[data-run=\"{RUNNING}\"]').click()")
        browser.wait_for(f"document.getElementById('where-run').textContent === '{RUNNING}'", 10, "that run")
        assert browser.evaluate("location.hash") == f"#run={RUNNING}"
        browser.wait_for("!!document.querySelector('#where-series a[data-run]')", 10, "the link back")
        series = browser.evaluate("document.getElementById('where-series').innerText")
        assert f"resumed after a daemon restart at frame 1,200; continues {FAULTY}" in series
    finally:
        browser.close()


#: JavaScript: each header cell of the runs table against the box its card shows it in (the
#: sideways-scrolling wrapper clips it), and the wrapper's own scroll sizes.
RUNS_HEADERS = """(() => {
  const wrap = document.getElementById('runs').closest('.scroll-x');
  const card = document.getElementById('runs-card').getBoundingClientRect();
  const box = wrap.getBoundingClientRect();
  const left = Math.max(card.left, box.left), right = Math.min(card.right, box.right);
  const cells = [...document.querySelectorAll('#runs thead th')].map((th) => {
    const r = th.getBoundingClientRect();
    return {text: th.innerText, left: r.left, right: r.right, inside: r.left >= left - 1 && r.right <= right + 1};
  });
  return {cells, scrollWidth: wrap.scrollWidth, clientWidth: wrap.clientWidth};
})()"""


@pytest.mark.parametrize("width", (768, 1280))
def test_every_runs_column_is_in_view(busy: str, chromium: str, tmp_path: Path, width: int) -> None:
    """At a tablet's 768 px the runs table was 781 px in a 703 px box: its last column, pending (where
    the data is), was cut off with no cue. Every header cell lies within the card's visible box."""
    browser = Browser(chromium, tmp_path / "chromium-profile", width=width, height=900)
    try:
        browser.goto(busy)
        browser.wait_for("document.querySelectorAll('#runs tr[data-run]').length === 2", 10, "the runs table")
        runs = browser.evaluate(RUNS_HEADERS)
        cut = [cell for cell in runs["cells"] if not cell["inside"]]
        assert cut == [], f"runs columns cut off at {width} px: {cut} ({runs})"
        assert runs["scrollWidth"] <= runs["clientWidth"] + 1, runs
        assert [cell["text"] for cell in runs["cells"]][-1] == "pending"
    finally:
        browser.close()


#: JavaScript: the hit image's red (peak circle) pixels, its canvas width and its width on screen.
HIT_RED = (
    "(() => { const c = document.getElementById('hit-image'); if (!c) return null;"
    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let red = 0;"
    " for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] < 120) red += 1;"
    " const r = c.getBoundingClientRect(); return [red, c.width, r.width]; })()"
)


#: JavaScript: the body text's computed font size and whether anything sticks out of the page's width.
TEXT_AND_OVERFLOW = """(() => {
  const doc = document.documentElement;
  const sticking = [...document.querySelectorAll('body *')].filter((el) => {
    if (el.closest('.scroll-x, .preview-scroll')) return false;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > doc.clientWidth + 1;
  }).map((el) => el.tagName + '#' + el.id).slice(0, 10);
  const px = (el) => parseFloat(getComputedStyle(el).fontSize);
  return {body: px(document.body), cell: px(document.querySelector('#runs tbody td')),
          scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, sticking,
          scrollHeight: doc.scrollHeight, clientHeight: doc.clientHeight};
})()"""


def test_the_page_scales_up_on_a_wall(busy: str, chromium: str, tmp_path: Path) -> None:
    """On a 3840 x 2160 wall the text stayed 12-13 px and the bottom quarter was empty: the page
    grows with the viewport above 1920 px (and looks as before at 1920 and below), the peak circles on
    the hit image with it (they stayed 6 px on an image shown twice as large), in six columns from
    1800 px, so that it all fits a 1920 x 1080 monitor's and the wall's height."""
    sizes = {}
    circles = {}
    for width, height in ((1280, 800), (1920, 1080), (2560, 1440), (3840, 2160)):
        browser = Browser(chromium, tmp_path / f"chromium-profile-{width}", width=width, height=height)
        try:
            browser.goto(busy)
            browser.wait_for("document.querySelectorAll('#runs tr[data-run]').length === 2", 10, "the runs")
            sizes[width] = facts = browser.evaluate(TEXT_AND_OVERFLOW)
            assert facts["scrollWidth"] <= facts["clientWidth"], f"page overflows sideways at {width} px"
            assert facts["sticking"] == [], f"elements stick out of the page at {width} px"
            browser.wait_for("document.getElementById('hit-image') !== null", 10, "the hit image")
            red, canvas_width, shown_width = browser.evaluate(HIT_RED)
            circles[width] = red / (canvas_width / shown_width) ** 2  # in screen pixels
        finally:
            browser.close()
    assert sizes[1920]["body"] == sizes[1280]["body"] == 14, sizes  # unchanged up to 1920 px
    # a wall is not scrolled: the whole page, runs table included, in view (an outside probe: 2561 px of
    # a 2160 px screen, the runs below its edge, with four columns, the live image's a quarter wide)
    for width in (1920, 2560, 3840):
        assert sizes[width]["scrollHeight"] <= sizes[width]["clientHeight"], (width, sizes[width])
    assert sizes[3840]["body"] >= 1.5 * sizes[1280]["body"], sizes
    assert sizes[3840]["cell"] >= 1.5 * sizes[1280]["cell"], sizes
    # a circle's red pixels grow with its radius and its line's width: 4x at twice the size
    assert circles[3840] >= 2.5 * circles[1280], circles


def _with_runs(count: int) -> tuple[ScriptedView, float]:
    """A scripted appliance with ``count`` ended runs, a minute apart, and the time it was made."""
    view = ScriptedView()
    now = time.time()
    for n in range(count):
        uid = f"{n:08x}-aaaa-4bbb-8ccc-0123456789ab"
        view.add_run(
            ScriptedRun(uid, now - 3600 + 60 * n, now - 3590 + 60 * n, "success", run_files(uid, 2, 2), [])
        )
    return view, now


def test_many_runs_and_a_store_at_its_quota_on_a_wall(chromium: str, tmp_path: Path) -> None:
    """An outside probe at 1920 x 1080: 24 runs made the page 1572 px tall (the runs table unbounded),
    and the disk bar showed the roomy disk (28 %) while the store was past its quota and new runs were
    refused. The table scrolls inside its card; the bar shows the fuller of the two, and says which."""
    view, now = _with_runs(24)
    for (
        plate
    ) in "AB":  # two names a detector gave, alike but in the middle (a probe saw both "beamtime…ion-06")
        uid = f"beamtime-2026-12-mx-lysozyme-plate-{plate}-position-06"
        view.add_run(ScriptedRun(uid, now - 30, now - 20, "success", run_files(uid, 1, 1), []))
    view.base["retention"] = {
        **view.base.get("retention", {}),
        "store_bytes": 97_000_000,
        "capacity_bytes": 120_000_000,
        "headroom_bytes": 30_000_000,
        "accepting_runs": False,
    }
    view.base["disk"] = {
        "total": 270_000_000_000,
        "used": 75_000_000_000,
        "free": 195_000_000_000,
        "percent": 27.7,
    }
    with serve(view) as (url, _server):
        browser = Browser(chromium, tmp_path / "chromium-profile", width=1920, height=1080)
        try:
            browser.goto(url)
            browser.wait_for("document.querySelectorAll('#runs tr[data-run]').length >= 26", 15, "the runs")
            facts = browser.evaluate(TEXT_AND_OVERFLOW)
            assert facts["scrollHeight"] <= facts["clientHeight"], facts
            names = browser.evaluate(
                "[...document.querySelectorAll('#runs tr[data-run] td.run-uid')].map(td => td.innerText)"
            )
            assert len(set(names)) == len(names) == 26, names  # every run told apart in the table
            assert "beamtime-2026-12-m…late-A-position-06" in names  # 49 characters: head and tail, 18 each
            # a run's short name is the alarms' (edge.alarms.short_uid): two runs a detector named alike
            # were both "beamtime" (an outside probe)
            from edge.alarms import short_uid

            for uid in ("5f0c2d3e-1b2a-4c3d-8e9f-0123456789ab", "scan-17", "beamtime-2026-mx-series-A-042"):
                assert browser.evaluate(f"window.edgeDashboard.shortUid({json.dumps(uid)})") == short_uid(uid)
            browser.wait_for(
                "document.getElementById('disk-used').innerText.includes('store')", 10, "the bar"
            )
            label = browser.evaluate("document.getElementById('disk-used').innerText")
            width = browser.evaluate("document.querySelector('#disk-bar .fill').style.width")
            # where the store is full (capacity less headroom: 75 %) marked, and red while runs are refused
            # (a probe: an orange 80.7 % beside "REFUSED", nothing saying where full was)
            bar = browser.evaluate(
                "(() => { const b = document.getElementById('disk-bar'); const m = b.querySelector('.mark');"
                " return [b.querySelector('.fill').className, m.hidden, m.style.left]; })()"
            )
            assert bar == ["fill bad", False, "calc(75% - 1px)"], bar
            # beside it not the roomy disk's free space (an outside probe read "73.2 GiB free" beside a store
            # 24 MiB from full): refused, no room is shown at all
            assert browser.evaluate("document.getElementById('disk-free').innerText") == ""
            # accepting, what is left before the refusal (another probe read "6.7 MiB left" with 2.4 MiB to it)
            view.base["retention"].update(
                accepting_runs=True, refuse_at_bytes=81_000_000, unverified_bytes=70_000_000
            )
            browser.wait_for(
                "document.getElementById('disk-free').innerText.includes('before new runs are refused')",
                10,
                "left",
            )
            left = browser.evaluate("document.getElementById('disk-free').innerText")
            assert left == "10.5 MiB left before new runs are refused", left
            # files never forwarded named apart: no consumer frees them (a probe read "waiting for hpc")
            view.base["retention"].update(local_bytes=60 * 2**20)
            browser.wait_for(
                "document.getElementById('store-unverified').innerText.includes('kept local')", 10, "local"
            )
            cell = browser.evaluate("document.getElementById('store-unverified').innerText")
            assert cell == "66.8 MiB (60.0 MiB kept local)", cell
            # (refused by retention: its own alarm, beside the disk-full one below)
            view.base["retention"].update(accepting_runs=False, alarm="the store is full of unverified data")

            # then four alarms at once: on a wide screen they go two to a row (one under the other they
            # pushed the runs below the fold at 1920 x 1080, an outside probe); the runs' first rows stay
            # in view
            view.base["store"] = {
                **view.base["store"],
                "disk_full": {"full": True, "since": now - 30, "episodes": 1, "reason": "no space left"},
            }
            view.base["detector"] = {**view.base["detector"], "connected": False, "state": "Disconnected"}
            view.base["appliance"] = {
                **view.base["appliance"],
                "threads": {"forwarder": {"state": "restarting", "errors": 3, "last_error": "OSError: x"}},
            }
            browser.wait_for("document.querySelectorAll('#alarms li').length >= 4", 15, "the alarms")
            tops = browser.evaluate(
                "[...document.querySelectorAll('#alarms li')].map(li => Math.round(li.getBoundingClientRect().top))"
            )
            assert len(set(tops)) == (len(tops) + 1) // 2, tops  # two to a row
            # the severity in words, not by colour alone (red and amber look alike to many, a probe)
            words = browser.evaluate(
                "[...document.querySelectorAll('#alarms li .severity')].map(e => e.textContent)"
            )
            assert "MAJOR" in words and len(words) == len(tops), words
            fifth = browser.evaluate(
                "document.querySelectorAll('#runs tr[data-run]')[4].getBoundingClientRect().bottom"
            )
            assert fifth <= 1080, fifth
        finally:
            browser.close()
    assert label.startswith("80.8\u00a0% of the store's"), label  # no lone "%" on a line of its own
    assert label.endswith("used, full at 75\u00a0% · new runs refused"), label
    assert width.startswith("80.8"), width


#: JavaScript: the page's height against the window's, where the runs card is, and its rows in view.
FITS = """(() => {
  const doc = document.documentElement, card = document.getElementById('runs-card').getBoundingClientRect();
  const box = document.querySelector('#runs-card .scroll-x').getBoundingClientRect();
  const rows = [...document.querySelectorAll('#runs tr[data-run]')].filter((tr) => {
    const r = tr.getBoundingClientRect(); return r.top >= box.top && r.bottom <= box.bottom + 1; }).length;
  const clipped = [...document.querySelectorAll('main > .card:not(#runs-card)')]
    .filter((c) => !c.hidden && c.scrollHeight > c.clientHeight + 1).map((c) => c.id);
  return {scrollHeight: doc.scrollHeight, clientHeight: doc.clientHeight, runsBottom: card.bottom, rows,
          alarms: document.querySelectorAll('#alarms li').length, clipped};
})()"""


def test_a_long_alarm_on_a_phone_is_three_lines_until_tapped(chromium: str, tmp_path: Path) -> None:
    """An outside probe at 390 x 844: the storage alarm wrapped to 7 lines and another to 4, 330 px of
    the screen before the live image; the two-line clamp was a wide screen's only."""
    view, _now = _with_runs(2)
    view.base["retention"] = {
        **view.base["retention"],
        "accepting_runs": False,
        "alarm": "local store full of data not yet verified upstream (389.0 MiB of 317.5 MiB: the store's"
        " 381.5 MiB less 64.0 MiB headroom); waiting for the required consumers (hpc, tape) to confirm it",
    }
    with serve(view) as (url, _server):
        browser = Browser(chromium, tmp_path / "chromium-phone", width=390, height=844)
        try:
            browser.goto(url)
            browser.wait_for("document.querySelectorAll('#alarms li').length >= 1", 15, "the alarm")
            text = "document.querySelector('#alarms li[data-alarm=\"condition:storage\"] .text')"
            lines = f"Math.round({text}.getBoundingClientRect().height / parseFloat(getComputedStyle({text}).lineHeight))"
            assert browser.evaluate(lines) == 3
            browser.evaluate(f"{text}.click()")
            assert browser.evaluate(lines) > 3
        finally:
            browser.close()


def test_the_page_fits_a_control_room_screen_with_a_square_detector_and_alarms(
    chromium: str, tmp_path: Path
) -> None:
    """An outside probe, a 256 x 256 detector in powder mode with 23 runs: the page was 1072 px tall at
    1800 x 1000, 1086 at 1920 x 1080, 2191 at 3840 x 2160, and 1244 at 1920 x 1080 with two alarms (a
    square live image makes the first row of cards taller than the scripted wide detector's; the runs
    table's 20vh and the page's bottom padding fitted no screen exactly). From 1800 px the page is the
    screen: the runs card takes what the rest leaves, its table scrolling inside it. One alarm spans
    the row (it filled the left half beside an empty hole)."""
    view, now = _with_runs(24)
    view.new_frame(5)
    assert view.preview is not None
    view.preview.update(
        detector_height=256, detector_width=256, height=32, width=32,
        pixels_b64=base64.b64encode(bytes(range(256)) * 4).decode(),
    )  # fmt: skip
    view.profile = {
        "unit": "q_nm^-1",
        "radial": [0.1 * i for i in range(1, 201)],
        "intensity": [100.0 / (1 + ((i % 40) - 20) ** 2) + 2 for i in range(200)],
    }
    calm = (view.base["store"], view.base["detector"], view.base["retention"])
    with serve(view) as (url, _server):
        for width, height in ((1800, 1000), (1920, 1080), (2560, 1440), (3840, 2160)):
            view.base["store"], view.base["detector"], view.base["retention"] = calm
            browser = Browser(chromium, tmp_path / f"chromium-{width}", width=width, height=height)
            try:
                browser.goto(url)
                browser.wait_for("document.querySelectorAll('#runs tr[data-run]').length >= 24", 15, "runs")
                browser.wait_for("document.getElementById('preview-empty').hidden", 10, "the live image")
                facts = browser.evaluate(FITS)
                assert facts["scrollHeight"] <= facts["clientHeight"], (width, facts)
                assert facts["runsBottom"] <= height and facts["rows"] >= 3, (width, facts)
                view.base["store"] = {
                    **view.base["store"],
                    "disk_full": {"full": True, "since": now - 30, "episodes": 1, "reason": "no space left"},
                }
                browser.wait_for("document.querySelectorAll('#alarms li').length === 1", 15, "one alarm")
                spans = browser.evaluate(
                    "(() => { const li = document.querySelector('#alarms li').getBoundingClientRect();"
                    " return [li.width, document.getElementById('alarms').clientWidth]; })()"
                )
                assert spans[0] >= 0.9 * spans[1], spans  # the whole row, not its left half
                view.base["detector"] = {**view.base["detector"], "connected": False, "state": "Disconnected"}
                browser.wait_for("document.querySelectorAll('#alarms li').length === 2", 15, "two alarms")
                facts = browser.evaluate(FITS)
                assert facts["scrollHeight"] <= facts["clientHeight"], (width, facts)
                assert facts["runsBottom"] <= height and facts["rows"] >= 1, (width, facts)
                # three long alarms (an outside probe at 1800 x 1000: the runs card was left its filters
                # and half a row, and the live image's colour bar was cut off): each alarm's text in two
                # lines, the whole of it on a click; no card cut short; two runs or more in view
                view.base["retention"] = {
                    **view.base["retention"],
                    "accepting_runs": False,
                    "alarm": "local store above its high-water mark (80%) with data not yet verified upstream"
                    " (130 MiB of 153 MiB); waiting for the HPC consumer to confirm it " + "and more " * 20,
                }
                browser.wait_for("document.querySelectorAll('#alarms li').length === 3", 15, "three alarms")
                facts = browser.evaluate(FITS)
                assert facts["scrollHeight"] <= facts["clientHeight"], (width, facts)
                assert facts["rows"] >= 2 and facts["clipped"] == [], (width, facts)
                text = "document.querySelector('#alarms li[data-alarm=\"condition:storage\"] .text')"
                lines = f"Math.round({text}.getBoundingClientRect().height / parseFloat(getComputedStyle({text}).lineHeight))"
                assert browser.evaluate(lines) == 2, width
                browser.evaluate(f"{text}.click()")
                assert browser.evaluate(lines) > 2, width
            finally:
                browser.close()
