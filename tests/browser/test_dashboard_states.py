"""The dashboard in states a live demo rarely reaches, against the real web app and a scripted appliance.

Each test sets facts on a :class:`scripted.ScriptedView` (alarms and the upstream outlook are derived by
the real ``edge.alarms`` and ``edge.upstream.outlook``) and checks what a scientist sees: a clean run
after a faulty one shows no stale alarm; acknowledging works with the token and is refused without it
(switching the next run's mode too, and not while a run is open);
an upstream outage says "stalled" with one ETA everywhere; the image's timestamp advances while frames
come and stops (and says so) when they stop; the header says "offline" within 5 s of the appliance
going away and is live again when it comes back; a troubled appliance's alarms, in words, clear when it
is healthy again; the runs filter; a tomography product; /docs and /redoc without a network.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cdp_browser import Browser
from scripted import CLEAN, FAULTY, ScriptedRun, ScriptedView, run_files, serve

pytestmark = pytest.mark.browser

TOKEN = "s3cret-token"
LOSS = {
    "first_frame": 120,
    "last_frame": 199,
    "reason": "frame_number_gap",
    "detail": "80 frames never arrived",
    "at": 1_790_000_010.0,
    "partial": False,
}


def texts(browser: Browser, selector: str) -> list[str]:
    return browser.evaluate(
        f"[...document.querySelectorAll({selector!r})].map(e => (e.innerText ?? e.textContent).replace(/\\s+/g, ' ').trim())"
    )


def faulty_run(current: bool = True) -> ScriptedRun:
    now = time.time()
    return ScriptedRun(FAULTY, now - 600, None if current else now - 300, None if current else "fail",
                       run_files(FAULTY, 2, 1), [dict(LOSS)])  # fmt: skip


def clean_run() -> ScriptedRun:
    return ScriptedRun(CLEAN, time.time() - 10, None, None, run_files(CLEAN, 1, 0), [])


@pytest.fixture
def view() -> ScriptedView:
    return ScriptedView()


@pytest.fixture
def url(view: ScriptedView) -> Iterator[str]:
    with serve(view, token=TOKEN) as (address, _server):
        yield address


def live(browser: Browser, url: str) -> None:
    browser.goto(url)
    browser.wait_for("window.edgeDashboard?.link === 'live'", 10, "the first status push")


def test_a_clean_run_after_a_faulty_one_shows_no_stale_alarm(
    url: str, view: ScriptedView, browser: Browser, screenshot_dir: Path
) -> None:
    view.add_run(faulty_run(current=True), current=True)
    live(browser, url)
    alarm = browser.wait_for(
        "document.querySelector('#alarms li.error')?.innerText || ''", 10, "the faulty run's loss alarm"
    )
    assert "Run 0b5e7c2a: 80 frames lost (1 loss record)" in alarm and "run 0b5e7c2a" in alarm
    assert texts(browser, "#c-run-lost") == ["80"]

    # the faulty run ends; a clean one starts: its page has no alarm, the old losses stay in history
    view.add_run(faulty_run(current=False))
    view.add_run(clean_run(), current=True)
    browser.wait_for("document.querySelectorAll('#alarms li').length === 0", 10, "the stale alarm to go")
    browser.wait_for("document.getElementById('c-run-lost').textContent === '0'", 10, "this run's count")
    assert texts(browser, "#c-all-lost") == ["80"]  # all time still says it, with its scope
    # blanks a serial run dropped by policy: their own row, counted in no loss and raising no alarm
    blanks = clean_run()
    blanks.vetoed, blanks.mode = 37, "serial"
    view.add_run(blanks, current=True)
    browser.wait_for("document.getElementById('c-run-vetoed').textContent === '37'", 10, "this run's vetoed")
    assert texts(browser, "#c-all-vetoed") == ["37"] and texts(browser, "#c-run-lost") == ["0"]
    assert browser.evaluate("document.querySelectorAll('#alarms li').length") == 0
    assert "7d41c9e0" in texts(browser, "#scope-run")[0]
    row = f"document.querySelector('#runs tr[data-run=\"{FAULTY}\"]')?.innerText || ''"
    browser.wait_for(f"({row}).includes('fail')", 10, "the faulty run's row, ended")  # refreshed within 3 s
    assert "80" in browser.evaluate(row)
    browser.screenshot(screenshot_dir / "dashboard-clean-after-faulty.png", full_page=True)


def test_acknowledging_needs_the_token(url: str, view: ScriptedView, browser: Browser) -> None:
    view.add_run(faulty_run(current=True), current=True)
    live(browser, url)
    alarm_id = f"run:{FAULTY}:lost"
    button = f'#alarms li[data-alarm="{alarm_id}"] button.ack'
    browser.wait_for(f"!!document.querySelector({button!r})", 10, "the acknowledge button")

    # no token in this browser: refused, and the alarm is not acknowledged on the appliance
    browser.click(button)
    message = browser.wait_for(
        "document.querySelector('#alarms li .ack-msg')?.textContent || ''", 10, "the refusal"
    )
    assert "refused" in message and "token" in message
    assert [a["acknowledged"] for a in view.alarms() if a["id"] == alarm_id] == [False]

    # a wrong token: refused too
    browser.click("#token-toggle")
    browser.evaluate("document.getElementById('token-input').value = 'wrong'")
    browser.click("#token-save")
    browser.click(button)
    browser.wait_for(
        "(document.querySelector('#alarms li .ack-msg')?.textContent || '').includes('wrong')",
        10,
        "a refusal",
    )
    assert [a["acknowledged"] for a in view.alarms() if a["id"] == alarm_id] == [False]

    # the right token, entered in the page and kept in this browser's storage: acknowledged
    browser.evaluate(f"document.getElementById('token-input').value = {TOKEN!r}")
    browser.click("#token-save")
    assert browser.evaluate("localStorage.getItem('edge.apiToken')") == TOKEN
    # by the keyboard: the button focused, Enter
    assert browser.evaluate(f"(() => {{ document.querySelector({button!r}).focus(); return true; }})()")
    browser.press("Enter")
    browser.wait_for(
        f"document.querySelector('#alarms li[data-alarm=\"{alarm_id}\"]')?.classList.contains('acknowledged')",
        10,
        "the alarm acknowledged",
    )
    assert [a["acknowledged"] for a in view.alarms() if a["id"] == alarm_id] == [True]
    # the keyboard stays on the alarm (the list is drawn anew: it fell to the page's start, a probe)
    assert browser.evaluate("document.activeElement.dataset.alarm") == alarm_id
    # the next push still lists it (its condition holds), acknowledged, with no button
    browser.wait_for(
        f"!document.querySelector({button!r}) && document.querySelector('#alarms li.acknowledged')"
        ".textContent.includes('acknowledged')",
        10,
        "the acknowledged alarm after a push",
    )


def test_a_token_handed_over_in_the_address_is_kept_and_hidden(url: str, browser: Browser) -> None:
    """`edge demo` opens the dashboard as URL/#token=...: the page keeps it and drops it from the address."""
    live(browser, url + f"#token={TOKEN}")
    assert browser.evaluate("localStorage.getItem('edge.apiToken')") == TOKEN
    assert TOKEN not in browser.evaluate("location.href")
    # checked once with the appliance (GET /api/token), which accepts it
    browser.wait_for(
        "document.getElementById('token-toggle').textContent === 'token \u2713'", 10, "the token accepted"
    )


def test_a_wrong_token_in_the_address_is_shown_refused_at_once(url: str, browser: Browser) -> None:
    """A wrong token handed over as #token=nope showed "token ✓": the scientist learnt only at a write
    that it was refused. The page checks it when it gets it, and the header says it is refused."""
    live(browser, url + "#token=nope")
    browser.wait_for(
        "document.getElementById('token-toggle').textContent === 'token \u2717 refused'", 10, "the refusal"
    )
    assert "refuses" in browser.evaluate("document.getElementById('token-toggle').title")
    # the right one, entered in the page, is checked as it is saved
    browser.click("#token-toggle")
    browser.evaluate(f"document.getElementById('token-input').value = {TOKEN!r}")
    browser.click("#token-save")
    browser.wait_for(
        "document.getElementById('token-toggle').textContent === 'token \u2713'", 10, "the token accepted"
    )
    # one no header can carry (beyond Latin-1): refused at once, not "unchecked" for good (a re-probe)
    if browser.evaluate("document.getElementById('token-form').hidden"):
        browser.click("#token-toggle")
    browser.evaluate("document.getElementById('token-input').value = 'caf\u00e9\u2603'")
    browser.click("#token-save")
    browser.wait_for(
        "document.getElementById('token-toggle').textContent === 'token \u2717 refused'", 10, "the refusal"
    )
    assert "cannot be sent" in browser.evaluate("document.getElementById('token-toggle').title")


def test_a_token_or_a_run_pasted_into_an_open_tab_is_taken_without_a_reload(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    """A link pasted into the tab that already shows the dashboard changes only the address's #part, and
    the page does not reload: #token= stayed in the address, unstored and unchecked, and #run= opened
    nothing (an outside probe). The page takes both as they come."""
    live(browser, url)
    browser.evaluate("location.hash = '#token=nope'")
    browser.wait_for(
        "document.getElementById('token-toggle').textContent === 'token \u2717 refused'", 10, "the refusal"
    )
    assert "nope" not in browser.evaluate("location.href")
    browser.evaluate(f"location.hash = '#token={TOKEN}'")
    browser.wait_for(
        "document.getElementById('token-toggle').textContent === 'token \u2713'", 10, "the token accepted"
    )
    assert browser.evaluate("localStorage.getItem('edge.apiToken')") == TOKEN
    assert TOKEN not in browser.evaluate("location.href")
    run = clean_run()
    # a file kept on the appliance says why in words on the page (it was a hover title: no use on a phone)
    run.files[0] = {
        **run.files[0],
        "state": "local",
        "local_only": True,
        "why_local": "upstream.forward = reduced",
    }
    view.add_run(run)
    uid = run.run_uid
    browser.evaluate(f"location.hash = '#run={uid}'")
    browser.wait_for(
        f"!document.getElementById('where-card').hidden"
        f" && document.getElementById('where-run').textContent === {uid!r}",
        10,
        "the run's where view",
    )
    browser.wait_for(
        "[...document.querySelectorAll('#where-card .why-local')].some((e) => e.textContent ==="
        " 'upstream.forward = reduced') && document.getElementById('where-card').textContent.includes("
        "'nobody (never sent upstream)')",
        10,
        "why the file stays local, in words",
    )


def test_a_token_entered_while_offline_stays_unchecked(view: ScriptedView, browser: Browser) -> None:
    """No answer, no verdict: a token given while the appliance is unreachable is neither ✓ nor ✗, and
    is checked once the appliance answers again."""
    with serve(view, token=TOKEN) as (url, server):
        live(browser, url)
        server.should_exit = True
        browser.wait_for(
            "document.getElementById('link-state').textContent.startsWith('offline')", 20, "offline"
        )
    browser.click("#token-toggle")
    browser.evaluate("document.getElementById('token-input').value = 'nope'")
    browser.click("#token-save")
    browser.wait_for(
        "document.getElementById('token-msg').textContent.includes('not checked')", 10, "unchecked"
    )
    assert texts(browser, "#token-toggle") == ["token \u2026"]
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with serve(view, token=TOKEN, port=port):
        browser.wait_for("window.edgeDashboard.link === 'live'", 15, "the page to reconnect")
        browser.wait_for(
            "document.getElementById('token-toggle').textContent === 'token \u2717 refused'", 10, "refused"
        )


def test_switching_the_mode_needs_the_token_and_waits_for_the_run_to_end(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    view.add_run(clean_run(), current=True)
    live(browser, url)
    browser.wait_for("!document.getElementById('mode-form').hidden", 10, "the mode switch")
    assert browser.evaluate("document.getElementById('mode-select').value") == "powder"
    browser.evaluate("document.getElementById('mode-select').value = 'serial'")
    browser.click("#mode-set")
    browser.wait_for(
        "document.getElementById('mode-msg').textContent.includes('token')", 10, "no token: refused"
    )
    assert view.reduction["mode"] == "powder"
    browser.evaluate(f"localStorage.setItem('edge.apiToken', {TOKEN!r})")
    browser.evaluate("document.getElementById('mode-select').value = 'serial'")
    browser.click("#mode-set")
    browser.wait_for(
        "document.getElementById('mode-msg').textContent.includes('is open')", 10, "a run is open"
    )
    assert view.reduction["mode"] == "powder"
    view.add_run(clean_run())  # the run ends
    browser.evaluate("document.getElementById('mode-select').value = 'serial'")
    browser.click("#mode-set")
    browser.wait_for(
        "document.getElementById('mode-msg').textContent === 'the next run reduces in serial mode'",
        10,
        "the switch",
    )
    assert view.reduction["mode"] == "serial"


def test_an_upstream_outage_shows_stalled_and_one_eta(
    url: str, view: ScriptedView, browser: Browser, screenshot_dir: Path
) -> None:
    view.add_run(faulty_run(current=False))
    view.base["ledger"]["bytes_pending"] = 5 * 2**30
    view.base["upstream"]["consumers"][0].update(connected=False, credit=0, seconds_since_seen=42.0)
    view.base["upstream"]["bytes_sent"] = 10 * 2**30
    view.ledger.rate = 1e6  # files were verified in the window, before the consumer went
    view.ledger.oldest = time.time() - 7200
    live(browser, url)
    browser.wait_for("document.getElementById('upstream-state').textContent === 'stalled'", 10, "stalled")
    browser.wait_for(f"!!document.querySelector('#runs tr[data-run=\"{FAULTY}\"]')", 10, "the runs table")
    browser.click(f'#runs tr[data-run="{FAULTY}"]')
    browser.wait_for("!!document.getElementById('where-files')", 10, "the where report")
    etas = texts(browser, ".eta")
    assert len(etas) == 3  # header, upstream card, where report: the same one ETA
    assert set(etas) == {"stalled: no consumer connected"}
    assert texts(browser, "#upstream-sending") == ["nothing (no consumer connected)"]
    assert texts(browser, "#upstream-lag") == ["2.0 h"]
    assert "Upstream stalled: no consumer connected: hpc must pull" in " ".join(texts(browser, "#alarms li"))
    browser.screenshot(screenshot_dir / "dashboard-upstream-outage.png", full_page=True)

    # the consumer comes back: one ETA again, computed by the appliance, shown everywhere the same
    view.base["upstream"]["consumers"][0].update(connected=True, credit=8, seconds_since_seen=0.2)
    browser.wait_for(
        "document.getElementById('upstream-state').textContent === 'delivering'", 10, "delivering"
    )
    browser.wait_for(
        "!document.querySelector('#alarms li[data-alarm=\"condition:upstream\"]')",
        10,
        "the outage alarm to clear",
    )
    etas = texts(browser, ".eta")
    assert len(set(etas)) == 1 and etas[0] == "1.5 h", etas  # 5 GiB at 1 MB/s
    # a pending file deleted by hand: no ETA, and why (it read "waiting for the first verified file")
    view.base["upstream"]["unreadable_files"] = [{"path": "/store/r/r_00001.h5", "error": "No such file"}]
    browser.wait_for("document.querySelector('.eta').textContent.startsWith('no ETA')", 10, "no ETA said")
    assert set(texts(browser, ".eta")) == {"no ETA: 1 stored file(s) missing or changed locally"}
    view.base["upstream"]["unreadable_files"] = []
    browser.wait_for("document.querySelector('.eta').textContent === '1.5 h'", 10, "the ETA back")

    # connected, but refusing what it cannot write: the consumers table says why, in its words
    reason = "cannot write it here: No space left on device"
    view.base["upstream"]["consumers"][0].update(
        chunks_refused=12, last_refusal=reason, seconds_since_refusal=3.0
    )
    browser.wait_for("document.querySelector('#consumers .warn') !== null", 10, "the refusal shown")
    assert texts(browser, "#consumers .warn") == [f"refusing: {reason}"]
    view.ledger.rate = 0.0  # and nothing verified any more: a stall, named for what it is
    browser.wait_for("document.getElementById('upstream-state').textContent === 'stalled'", 10, "stalled")
    assert set(texts(browser, ".eta")) == {"stalled: consumer refusing"}
    assert texts(browser, "#upstream-sending") == ["nothing (consumer refusing)"]
    assert "No space left on device" in " ".join(texts(browser, "#alarms li"))
    view.ledger.rate = 1e6
    view.base["upstream"]["consumers"][0].update(seconds_since_refusal=300.0)  # long ago: not shown
    browser.wait_for("document.querySelector('#consumers .warn') === null", 10, "an old refusal hidden")

    # hpc pulling, a second required consumer away: named, not "no consumer connected" (an outside probe
    # read that as the HPC link down)
    view.ledger.required_consumers = ("hpc", "tape")
    browser.wait_for("document.getElementById('upstream-state').textContent === 'stalled'", 10, "stalled")
    assert set(texts(browser, ".eta")) == {"stalled: tape not connected"}
    assert texts(browser, "#upstream-sending") == ["nothing (tape not connected)"]
    # while hpc still takes data, what goes out is shown (a probe read "nothing" beside it all going)
    for _ in range(40):
        view.base["upstream"]["bytes_sent"] += 2**20
        if texts(browser, "#upstream-sending")[0].endswith("/s"):
            break
        time.sleep(0.25)
    assert texts(browser, "#upstream-sending")[0].endswith("/s"), texts(browser, "#upstream-sending")
    view.ledger.required_consumers = ("hpc",)

    # a daemon restarted, the consumer not back yet: known only from the ledger's acknowledgements (an
    # outside probe read "never seen" beside "10 acked all time")
    view.base["upstream"]["consumers"] = []
    browser.wait_for(
        "document.querySelector('#consumers tbody td:nth-child(2)').innerText === 'not since start'",
        10,
        "the consumer known from the ledger",
    )


def test_the_image_timestamp_advances_with_frames_and_stops_when_they_stop(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    view.add_run(clean_run(), current=True)
    view.new_frame(1)
    live(browser, url)
    received = "document.getElementById('preview-received').dataset.receivedAt"
    first = float(browser.wait_for(received, 10, "the first frame's time"))
    assert "frame 1 of run 7d41c9e0" in texts(browser, "#preview-caption")[0]
    assert texts(browser, "#preview-detector-time")[0].startswith("detector t = 0.010 s")
    seen = [first]
    for frame in (2, 3):
        view.new_frame(frame)
        seen.append(
            float(browser.wait_for(f"Number({received}) > {seen[-1]} && {received}", 10, f"frame {frame}"))
        )
    assert seen == sorted(seen) and len(set(seen)) == 3
    assert texts(browser, "#preview-caption") == ["frame 3 of run 7d41c9e0"]
    age = browser.evaluate("document.getElementById('preview-age').textContent")
    assert "ago" in age and "no new frame" not in age

    # frames stop: the timestamp stays, the age grows and the caption says no new frame came
    browser.wait_for(
        "document.getElementById('preview-age').textContent.includes('no new frame')",
        10,
        "the frozen-image mark",
    )
    assert float(browser.evaluate(received)) == seen[-1]
    assert browser.evaluate("document.getElementById('preview-age').className") == "frozen"

    # an incomplete frame is marked as such
    view.new_frame(4, incomplete=True)
    browser.wait_for("!!document.getElementById('preview-incomplete')", 10, "the incomplete-frame mark")


def test_offline_when_the_appliance_stops(view: ScriptedView, browser: Browser) -> None:
    """The page says offline once no status has come for OFFLINE_MS (4 s) or its stream broke and a
    probe failed. No wall-clock bound is asserted here (a loaded CI machine stretches the server's own
    shutdown): the budget below is generous, and what the page shows once offline is what is checked."""
    view.add_run(clean_run(), current=True)
    view.new_frame(1)
    with serve(view) as (url, server):
        live(browser, url)
        browser.wait_for(
            "document.getElementById('run-state').className === 'pill acquiring'", 10, "acquiring"
        )
        server.should_exit = True
        browser.wait_for(
            "document.getElementById('link-state').textContent.startsWith('offline')", 20, "offline"
        )
    # nothing on the page still claims to be live: the run badge is greyed, the rate is gone
    assert texts(browser, "#run-state") == ["last seen acquiring run 7d41c9e0"]
    assert browser.evaluate("document.getElementById('run-state').className") == "pill unknown"
    assert texts(browser, "#frame-rate") == ["\u2013"]  # an en dash: no figure
    banner = texts(browser, "#unreachable")[0]
    assert "Cannot reach the appliance" in banner and "Retrying" in banner
    assert browser.evaluate("document.getElementById('main').classList.contains('stale')")

    # the appliance comes back on the same address: the page reconnects by itself and is live again
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with serve(view, port=port):
        browser.wait_for("window.edgeDashboard.link === 'live'", 15, "the page to reconnect")
        assert browser.evaluate("document.getElementById('unreachable').hidden") is True
        assert texts(browser, "#run-state") == ["acquiring run 7d41c9e0"]


def test_runs_filter_by_name_date_mode_and_state(url: str, view: ScriptedView, browser: Browser) -> None:
    now = time.time()
    view.add_run(ScriptedRun(FAULTY, now - 86400 * 3, now - 86400 * 3 + 60, "fail", run_files(FAULTY, 1, 1),
                             [dict(LOSS)], mode="serial"))  # fmt: skip
    view.add_run(
        ScriptedRun(CLEAN, now - 30, None, None, run_files(CLEAN, 1, 0), [], mode="powder"), current=True
    )
    live(browser, url)
    rows = "[...document.querySelectorAll('#runs tbody tr[data-run]')].map(r => r.dataset.run)"
    browser.wait_for(f"{rows}.length === 2", 10, "both runs")

    def choose(field: str, value: str) -> list[str]:
        browser.evaluate(
            f"(() => {{ const el = document.getElementById({field!r}); el.value = {value!r};"
            " el.dispatchEvent(new Event('input')); })()"
        )
        return list(browser.evaluate(rows))

    assert choose("filter-name", "7d41") == [CLEAN]
    assert choose("filter-name", "") == [CLEAN, FAULTY]  # newest first
    assert choose("filter-mode", "serial") == [FAULTY]
    assert choose("filter-mode", "") == [CLEAN, FAULTY]
    assert choose("filter-state", "running") == [CLEAN]
    assert choose("filter-state", "lost") == [FAULTY]
    assert choose("filter-state", "") == [CLEAN, FAULTY]
    today = browser.evaluate(  # the browser's local date, as the date picker gives it
        "(() => { const d = new Date(); const p = (n) => String(n).padStart(2, '0');"
        " return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`; })()"
    )
    assert choose("filter-date", today) == [CLEAN]
    assert texts(browser, "#runs-count") == ["1 of 2 runs"]
    assert choose("filter-name", "nothing-like-this") == []
    assert texts(browser, "#runs tbody td") == ["no run matches the filter"]


def test_a_run_opens_from_the_keyboard_and_one_run_is_counted_as_one(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    """A dashboard probe: the runs table opened only with a mouse (rows took no focus), and one run
    was counted "1 runs"."""
    files = run_files(CLEAN, 1, 0)
    reduced = {
        **files[0],
        "name": f"{CLEAN}_reduced_00000.nxs",
        "frames": None,
        "n_frames": 0,
        "kind": "reduced",
    }
    view.add_run(ScriptedRun(CLEAN, time.time() - 30, None, None, [*files, reduced], []), current=True)
    live(browser, url)
    browser.wait_for("document.querySelectorAll('#runs tbody tr[data-run]').length === 1", 10, "the run")
    assert texts(browser, "#runs-count") == ["1 run"]
    # the table says how old it is: it lags the live cards by up to its refresh period
    (age,) = texts(browser, "#runs-age")
    assert re.fullmatch(r"· as of \d\d:\d\d:\d\d", age), age
    assert browser.evaluate("document.getElementById('where-card').hidden")
    focused = browser.evaluate(
        "(() => { const row = document.querySelector('#runs tbody tr[data-run]'); row.focus();"
        " return document.activeElement === row; })()"
    )
    assert focused, "a run's row takes the keyboard focus"
    # the table is rebuilt as the ledger changes: the focused row keeps the focus (it fell back to the
    # page's start at every refresh, an outside probe's)
    before = browser.evaluate("window.edgeDashboard.runsFetchedAt")
    view.base["ledger"]["frames_stored"] = int(view.base["ledger"].get("frames_stored") or 0) + 1
    browser.wait_for(f"window.edgeDashboard.runsFetchedAt > {before}", 15, "the runs table asked again")
    time.sleep(1.0)  # (its answer drawn)
    assert browser.evaluate("document.activeElement.dataset.run") == CLEAN, "the row lost the focus"
    browser.press("Enter")
    browser.wait_for(f"document.getElementById('where-run').textContent === '{CLEAN}'", 10, "the run opened")
    assert not browser.evaluate("document.getElementById('where-card').hidden")
    assert browser.evaluate("document.activeElement.id") == "where-card"  # the keyboard goes there next
    # a file without raw frames says what it holds (it read "metadata" for a reduced products file)
    cells = "[...document.querySelectorAll('#where-files tbody tr td:nth-child(5)')].map(e => e.textContent)"
    frames = browser.wait_for(f"{cells}.length === 2 && {cells}", 10, "the run's files")
    assert frames == ["0\u201399", "reduced"], frames
    # in view (it opened at the screen's foot, its files below it, an outside probe); Escape closes it
    # and the keyboard is back on the run's row (it fell to the page's start)
    top, bottom, height = browser.evaluate(
        "(() => { const r = document.getElementById('where-card').getBoundingClientRect();"
        " return [r.top, r.bottom, window.innerHeight]; })()"
    )
    assert top >= 0 and (bottom <= height + 1 or top < 20), (top, bottom, height)  # whole, or from its top
    browser.press("Escape")
    browser.wait_for("document.getElementById('where-card').hidden", 10, "the panel closed")
    assert browser.evaluate("document.activeElement.dataset.run") == CLEAN, "focus not back on the row"


def test_a_profile_bin_without_pixels_is_a_gap_not_a_zero(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    """A dashboard probe: on the linear scale, bins no pixel fell in (behind the beamstop, past the
    corners) were drawn as measured zeros, dips that look like absent rings."""
    view.add_run(ScriptedRun(CLEAN, time.time() - 30, None, None, run_files(CLEAN, 1, 0), []), current=True)
    radial = [0.5 + i for i in range(40)]
    count = [0 if 15 <= i < 20 else 30 for i in range(40)]  # five bins with no pixel
    intensity = [0.0 if c == 0 else 100.0 + i for i, c in enumerate(count)]
    view.profile = {"unit": "2th_deg", "radial": radial, "intensity": intensity, "count": count,
                    "frames_processed": 1}  # fmt: skip
    live(browser, url)
    lines = "[...document.querySelectorAll('#profile polyline.trace')].map(l => l.points.numberOfItems)"
    assert browser.wait_for(f"{lines}.length === 2 && {lines}", 10, "the profile in two pieces") == [15, 20]
    assert texts(browser, "#profile-caption") == ["40 bins, 5 with no pixel"]
    # the y axis starts at 0 on the linear scale: the gap's zeros are not what pulled it there
    lowest = "Math.max(...[...document.querySelectorAll('#profile polyline.trace')].flatMap(l => [...l.points].map(p => p.y)))"
    bottom = browser.evaluate(lowest)
    assert bottom < browser.evaluate("document.getElementById('profile').clientHeight") - 42 - 1


FETCH_404S = """
window.__404s = [];
const realFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await realFetch(...args);
  if (response.status === 404) window.__404s.push(String(args[0]));
  return response;
};
"""


def test_no_404_before_the_first_frame_and_a_restarted_daemon_s_frame_goes(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    """A dashboard probe: the page asked for /api/profile and /api/product on every status push before
    the daemon's first frame (404s filling the console), and after a daemon restart it kept showing the
    old daemon's frame and profile until reloaded."""
    browser.page("Page.addScriptToEvaluateOnNewDocument", {"source": FETCH_404S})
    view.add_run(ScriptedRun(CLEAN, time.time() - 30, None, None, run_files(CLEAN, 1, 0), []), current=True)
    live(browser, url)
    pushes = "window.edgeDashboard.lastStatusMs"
    first = browser.evaluate(pushes)
    browser.wait_for(f"{pushes} > {first} + 2500", 10, "three more status pushes")
    assert browser.evaluate("window.__404s") == []
    # a frame and a powder profile: shown
    view.new_frame(3, CLEAN)
    view.profile = {"unit": "2th_deg", "radial": [1.0, 2.0, 3.0], "intensity": [5.0, 6.0, 7.0],
                    "count": [4, 4, 4], "frames_processed": 1}  # fmt: skip
    browser.wait_for("document.getElementById('preview-empty').hidden", 10, "the frame")
    browser.wait_for("document.getElementById('profile-empty').hidden", 10, "the profile")
    # the daemon restarts: it has no frame, no profile and no product yet
    view.preview = view.profile = None
    view.received = 0
    view.started_at = time.time()
    browser.wait_for("!document.getElementById('preview-empty').hidden", 10, "the old frame gone")
    assert browser.evaluate("document.getElementById('profile-empty').hidden") is False
    assert texts(browser, "#product-empty") == ["no reduction product yet"]
    # ...and the old frame's times with it (an outside probe: "taken 06:33:32 · 45 s ago", frozen)
    for caption in ("#preview-received", "#preview-age", "#preview-detector-time"):
        assert texts(browser, caption) in ([], [""]), caption
    assert texts(browser, "#profile-title") == ["Reduced profile"]


def test_a_tomography_product_shows_slices_and_the_slice(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    pixels = base64.b64encode(bytes(range(256)) * 16).decode()  # 64 x 64
    view.product_doc = {
        "mode": "tomo",
        "run_uid": CLEAN,
        "powder": None,
        "serial": None,
        "tomo": {
            "projections": 180,
            "darks": 10,
            "flats": 10,
            "slices_done": 3,
            # a real slice's attenuation per pixel is small: the range read "(-0.0 - 0.0)" at one decimal
            "slice": {
                "row": 32,
                "height": 64,
                "width": 64,
                "pixels_b64": pixels,
                "min": -0.0060,
                "max": 0.0373,
                "center": 35.25,
                "center_source": "estimated from the projections at 0 and 180 degrees",
                "projections": 180,
                "projections_in_slice": 150,
            },
            # resumed after a daemon restart: the part stored before it counts too
            "inherited": {"runs": [FAULTY], "darks": 10, "flats": 10, "projections": 95, "files_unusable": 1},
        },
    }
    view.add_run(clean_run(), current=True)
    view.new_frame(1)  # frames are reduced: the page asks for the product
    view.base["pipeline"]["frames_processed"] = 1
    live(browser, url)
    browser.wait_for("!document.getElementById('wide-slice').hidden", 10, "the reconstructed slice")
    assert texts(browser, "#product-mode") == ["tomo"]
    assert texts(browser, "#slices-done") == ["3"]
    shown = browser.evaluate("document.getElementById('product-body').innerText")
    assert "values -0.006 to 0.0373 per pixel" in shown, shown
    # the axis it is about, and how far it has caught up after the axis moved mid-scan
    assert texts(browser, "#slice-axis") == [
        "rotation axis at column 35.25 (estimated from the projections at 0 and 180 degrees); 150 of 180 projections in it"
    ]
    assert texts(browser, "#tomo-inherited") == [
        f"95 projections, 10 darks, 10 flats of run {FAULTY[:8]} (1 file(s) unreadable)"
    ]
    # large, in the card a powder run's profile has: a tomography run has no profile
    assert texts(browser, "#profile-title") == ["Reconstructed slice"]
    wide = browser.evaluate(
        "(() => { const c = document.getElementById('wide-slice'); const r = c.getBoundingClientRect();"
        " return [c.hidden, c.width, c.height, r.height, document.getElementById('profile-empty').hidden]; })()"
    )
    assert wide[:3] == [False, 64, 64] and wide[3] >= 200 and wide[4] is True, wide
    # its colour bar, labelled with the slice's own values (it had none: colours of unknown meaning)
    assert browser.evaluate("document.getElementById('slice-scale').hidden") is False
    assert texts(browser, "#slice-lo") == ["-0.006"] and texts(browser, "#slice-hi") == ["0.0373"]
    painted = browser.evaluate(
        "(() => { const d = document.getElementById('slice-colorbar').getContext('2d')"
        ".getImageData(255, 0, 1, 1).data; return d[0] + d[1] + d[2]; })()"
    )
    assert painted > 0, painted


def test_a_troubled_appliance_in_words_and_healthy_again(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    view.base["retention"].update(
        alarm="store holds 9.9 GB not yet verified upstream, above its high water mark",
        accepting_runs=False,
        store_bytes=9_950_000_000,
        unverified_bytes=9_900_000_000,
        full_in_seconds=600.0,
    )
    view.base["detector"].update(connected=False, state="Disconnected")
    view.base["appliance"]["recovery"] = {
        "quarantined": ["/data/edge/store/x.h5.part"],
        "salvaged": [],
        "runs_failed": [FAULTY],
        "frames_lost": 5,
    }
    live(browser, url)
    browser.wait_for("document.querySelectorAll('#alarms li').length >= 3", 10, "the alarms")
    errors = " | ".join(texts(browser, "#alarms li.error"))
    assert "Storage alarm: store holds 9.9 GB not yet verified" in errors
    assert "Detector disconnected (SIM:cam1:)" in errors
    # frames lost to the crash: the recovery alarm is major (as a run's losses are)
    assert "since daemon start" in errors
    assert "Recovered after a crash: 1 run(s) marked failed (0b5e7c2a)" in errors
    assert (
        "1 half-written file(s) quarantined" in errors and "5 frames recorded lost (daemon_crash)" in errors
    )
    # no frame yet: the panels say so, and a 404 is not an outage
    assert browser.evaluate("document.getElementById('preview-empty').hidden") is False
    assert browser.evaluate("document.getElementById('profile-empty').hidden") is False
    assert texts(browser, "#product-empty") == ["no reduction product yet"]
    assert browser.evaluate("document.getElementById('unreachable').hidden") is True
    assert texts(browser, "#store-accepting") == ["REFUSED"]
    assert texts(browser, "#store-full-in") == ["10 min"]
    # full now: not "not filling" (the API's 0.0; null is "not growing"), in red
    view.base["retention"].update(full_in_seconds=0.0)
    browser.wait_for("document.getElementById('store-full-in').textContent === 'full now'", 10, "full now")
    assert "bad" in browser.evaluate("document.getElementById('store-full-in').className")
    view.base["retention"].update(full_in_seconds=600.0)

    # healthy again: the alarms go
    view.base["retention"].update(alarm=None, accepting_runs=True)
    view.base["detector"].update(connected=True, state="Idle")
    view.base["appliance"]["recovery"] = {}
    browser.wait_for("document.querySelectorAll('#alarms li').length === 0", 10, "the alarms to clear")
    assert texts(browser, "#detector-state") == ["Idle (SIM:cam1:)"]


def test_api_docs_render_from_the_appliance_alone(url: str, browser: Browser) -> None:
    """/docs (Swagger UI) and /redoc draw the API from assets the appliance serves itself (no CDN)."""
    browser.goto(url + "docs")
    assert browser.wait_for("document.querySelectorAll('.opblock').length", 20, "Swagger UI's operations") > 5
    browser.goto(url + "redoc")
    assert browser.wait_for("document.querySelectorAll('li[data-item-id]').length", 20, "ReDoc's menu") > 5
    icon = browser.evaluate("document.querySelector('link[rel*=icon]')?.href || ''")
    assert icon.startswith(url)


def test_a_run_whose_series_is_over_but_still_being_written_is_not_idle(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    """An outside probe: with the store at its quota, the series over and 45 frames waiting in the ring,
    the header said "idle" while the run was open."""
    view.add_run(ScriptedRun(CLEAN, time.time() - 30, None, None, run_files(CLEAN, 1, 0), []), current=False)
    view.finishing = True
    live(browser, url)
    browser.wait_for(
        "document.getElementById('run-state').textContent.startsWith('finishing')", 10, "finishing"
    )
    assert texts(browser, "#run-state") == [f"finishing run {CLEAN[:8]}"]


def test_the_hit_rate_chart_says_how_old_its_last_sample_is(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    """An outside probe: 72 s after a serial run ended its last sample was drawn at "now" ("now 47.4 %"
    beside the run's "30.0 % hits"). The axis says how old the last sample is once it is old."""
    now = time.time()
    view.add_run(
        ScriptedRun(CLEAN, now - 300, now - 72, "success", run_files(CLEAN, 1, 0), []), current=False
    )
    view.product_doc = {
        "mode": "serial",
        "run_uid": CLEAN,
        "powder": None,
        "tomo": None,
        "serial": {
            "frames": 300,
            "hits": 90,
            "hit_rate": 0.3,
            "recent": [{"t": now - 132 + i, "hit_rate": 0.3} for i in range(61)],
            "latest_hit": None,
        },
    }
    live(browser, url)
    browser.wait_for("document.getElementById('wide-hits').dataset.endLabel !== undefined", 10, "the chart")
    label = browser.evaluate("document.getElementById('wide-hits').dataset.endLabel")
    assert label.endswith(" ago") and label != "now", label
    # its value is one second's hits, not the run's rate (an outside probe read "now 66.7 %" as that)
    assert browser.evaluate("document.getElementById('wide-hits').dataset.lastLabel") == "last second"


def test_a_new_run_s_mode_shows_before_its_first_frame_is_reduced(
    url: str, view: ScriptedView, browser: Browser
) -> None:
    """An outside probe: a serial run started right after a powder one; for the 30 s its kernels took to
    load (no frame reduced), the Mode card said "powder" with the old run and the large card kept its
    profile, while /api/product already named the serial run. A new run asks for the product again."""
    now = time.time()
    view.add_run(ScriptedRun(FAULTY, now - 300, now - 60, "success", run_files(FAULTY, 1, 0), []))
    view.product_doc = {"mode": "powder", "run_uid": FAULTY, "powder": {}, "serial": None, "tomo": None}
    live(browser, url)
    browser.wait_for("document.getElementById('product-mode').textContent === 'powder'", 10, "powder")
    view.add_run(ScriptedRun(CLEAN, time.time(), None, None, [], [], mode="serial"), current=True)
    serial = {"frames": 0, "hits": 0, "hit_rate": 0.0, "recent": [], "latest_hit": None}
    view.product_doc = {"mode": "serial", "run_uid": CLEAN, "powder": None, "serial": serial, "tomo": None}
    view.base["pipeline"]["product_run"] = CLEAN  # the pipeline began the run (its kernels loading)
    browser.wait_for("document.getElementById('product-mode').textContent === 'serial'", 10, "the new mode")


def test_a_hit_rate_of_one_sample_is_drawn_as_a_dot(url: str, view: ScriptedView, browser: Browser) -> None:
    """An outside probe: a serial run's 200 frames reduced in one burst after its kernels loaded gave the
    hit-rate chart one sample, and it drew nothing beside "last second 30.2 %"."""
    now = time.time()
    view.add_run(
        ScriptedRun(CLEAN, now - 20, None, None, run_files(CLEAN, 1, 0), [], mode="serial"), current=True
    )
    serial = {"frames": 200, "hits": 60, "hit_rate": 0.3, "recent": [{"t": now - 1, "hit_rate": 0.302}]}
    view.product_doc = {"mode": "serial", "run_uid": CLEAN, "powder": None, "tomo": None, "serial": serial}
    live(browser, url)
    browser.wait_for("document.getElementById('wide-hits').dataset.dots !== undefined", 10, "the chart")
    assert browser.evaluate("document.getElementById('wide-hits').dataset.dots") == "1"
