"""The dashboard's live feed and the app's extras: one producer whatever the number of subscribers,
bounded queues, Server-Sent Events on the wire; alarm acknowledgement behind the token; /docs and /redoc
with no CDN; a favicon; HEAD answered where GET is."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from fastapi.testclient import TestClient

from edge.alarms import AlarmBook, current_alarms
from edge.config import load_settings
from webui import create_app
from webui.live import LiveFeed


class View:
    def __init__(self) -> None:
        self.reads = 0
        self.received = 0
        self.alarm_book = AlarmBook()
        self.lost = 80

    def status(self) -> dict[str, Any]:
        self.reads += 1
        self.received += 10
        doc: dict[str, Any] = {
            "server_time": 1000.0 + self.reads,
            "frames": {"received": self.received},
            "ring": {"slots": 8, "fill": 2},
            "ledger": {"bytes_pending": 5},
            "disk": {"percent": 12.5},
            "counts": {"run": {"run_uid": "run-1", "frames_lost": self.lost, "loss_records": 1}},
        }
        doc["alarms"] = self.alarm_book.annotate(current_alarms(doc))
        return doc

    def runs(self) -> list[dict[str, Any]]:
        return []

    def newest_runs(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self.runs(), key=lambda row: row.get("started_at") or 0.0, reverse=True)[:limit]

    def run(self, run_uid: str) -> dict[str, Any]:
        raise NotImplementedError

    def latest_profile(self) -> None:
        return None

    def latest_preview(self) -> dict[str, Any]:
        return {"frame": 1, "run_uid": "run-1", "received_at": 999.0, "pixels_b64": ""}


def events(chunks: list[bytes]) -> list[tuple[str, Any]]:
    out = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_one_producer_serves_every_subscriber() -> None:
    view = View()
    feed = LiveFeed(
        view.status, view.latest_preview, status_seconds=0.05, preview_seconds=0.01, wall_clock=lambda: 1000.5
    )

    async def watch(n: int) -> list[list[bytes]]:
        streams = [feed.stream() for _ in range(n)]
        got: list[list[bytes]] = [[] for _ in range(n)]
        for _ in range(6):  # retry, trends, then status and preview events as they come
            for i, stream in enumerate(streams):
                got[i].append(await asyncio.wait_for(anext(stream), 5))
        assert feed.subscribers == n
        for stream in streams:
            await stream.aclose()
        return got

    got = asyncio.run(watch(5))
    assert got[0][0] == b"retry: 1000\n\n"
    for chunks in got:
        kinds = [kind for kind, _ in events(chunks)]
        assert kinds[0] == "trends" and "status" in kinds and "preview" in kinds
    # five subscribers, and the view was read once per tick, not once per subscriber
    assert view.reads == feed.reads["status"] <= 6
    status = next(data for kind, data in events(got[0]) if kind == "status")
    assert status["status"]["frames"]["received"] > 0 and set(status["trend"]) >= {"frame_rate", "ring_fill"}
    preview = next(data for kind, data in events(got[0]) if kind == "preview")
    assert preview["age_seconds"] == 1.5
    assert feed.subscribers == 0


def test_the_live_image_rate_is_shared_by_all_pages() -> None:
    feed = LiveFeed(lambda: {}, lambda: None)
    assert feed.preview_interval() == 0.1  # nobody yet, or one page: ten images a second
    feed._subscribers.update(asyncio.Queue() for _ in range(5))
    assert feed.preview_interval() == 0.5  # five pages: two a second each, ten in all


def test_trend_samples_rate_from_the_received_counter() -> None:
    times = iter([0.0, 1.0, 9.0])
    feed = LiveFeed(lambda: {}, lambda: None, clock=lambda: next(times), wall_clock=lambda: 5.0)
    assert feed._trend({"frames": {"received": 100}})["frame_rate"] is None  # one sample: no rate yet
    assert feed._trend(
        {"frames": {"received": 150}, "ring": {"slots": 4, "fill": 1}, "server_time": 7.0}
    ) == {
        "t": 7.0,
        "frame_rate": 50.0,
        "ring_fill": 0.25,
        "backlog_bytes": None,
        "disk_percent": None,
    }
    # nobody watched for a while: a rate over the gap would be a made-up average
    assert feed._trend({"frames": {"received": 400}})["frame_rate"] is None


def client(token: str | None = "s3cret") -> tuple[TestClient, View]:
    view = View()
    overrides = [] if token is None else [f'api.token="{token}"']
    return TestClient(create_app(load_settings(overrides=overrides), view)), view


def test_acknowledging_an_alarm_needs_the_token() -> None:
    http, view = client()
    alarm = "run:run-1:lost"
    assert [a["id"] for a in http.get("/api/alarms").json()] == [alarm]
    assert http.post(f"/api/alarms/{alarm}/ack").status_code == 401
    assert http.post(f"/api/alarms/{alarm}/ack", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = http.post(f"/api/alarms/{alarm}/ack", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["acknowledged"] is True
    assert http.get("/api/alarms").json()[0]["acknowledged"] is True
    missing = http.post("/api/alarms/run:other:lost/ack", headers={"Authorization": "Bearer s3cret"})
    assert missing.status_code == 404
    view.lost = 0  # the condition clears: the alarm and its acknowledgement go
    assert http.get("/api/alarms").json() == []
    disabled, _ = client(token=None)
    assert disabled.post(f"/api/alarms/{alarm}/ack").status_code == 403


def test_a_token_is_checked_without_a_write() -> None:
    """GET /api/token answers what a write would (204, 401, 403) and changes nothing."""
    http, _ = client()
    assert http.get("/api/token", headers={"Authorization": "Bearer s3cret"}).status_code == 204
    assert http.head("/api/token", headers={"Authorization": "Bearer s3cret"}).status_code == 204
    wrong = http.get("/api/token", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert http.get("/api/token").status_code == 401
    assert http.get("/api/alarms").json()[0]["acknowledged"] is False  # nothing was written
    disabled, _ = client(token=None)
    assert disabled.get("/api/token", headers={"Authorization": "Bearer s3cret"}).status_code == 403


def test_docs_and_redoc_load_nothing_from_outside() -> None:
    http, _ = client()
    for page in ("/docs", "/redoc"):
        html = http.get(page).text
        urls = re.findall(r'(?:src|href)="([^"]+)"|url: ?\'([^\']+)\'', html)
        flat = [u for pair in urls for u in pair if u]
        assert flat and all(u.startswith("/") for u in flat), (page, flat)
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
        for asset in re.findall(r'"(/docs-assets/[^"]+)"', html):
            response = http.get(asset)
            assert response.status_code == 200 and len(response.content) > 10_000, asset


def test_favicon_and_head_answered_where_get_is() -> None:
    http, _ = client()
    icon = http.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    for path in (
        "/",
        "/api/status",
        "/static/dashboard.js",
        "/favicon.ico",
        "/docs",
        "/api/events",
        "/metrics",
    ):
        head = http.head(path)
        assert head.status_code == 200, path
        assert head.content == b"", path
    get = http.get("/static/dashboard.js")
    assert http.head("/static/dashboard.js").headers["content-length"] == get.headers["content-length"]
    assert http.head("/api/events").headers["content-type"].startswith("text/event-stream")
    assert http.head("/nope").status_code == 404


def test_trends_are_sampled_while_no_page_watches() -> None:
    import threading
    import time

    view = View()
    feed = LiveFeed(view.status, view.latest_preview)
    stop = threading.Event()
    feed.sample_in_background(stop, seconds=0.02)
    deadline = time.monotonic() + 10
    while len(feed.history) < 3 and time.monotonic() < deadline:
        stop.wait(0.02)  # waiting on a condition with a deadline, not a fixed sleep
    stop.set()
    assert len(feed.history) >= 3 and view.reads >= 3
    # the page that opens later gets them as its first event
    chunks: list[bytes] = []

    async def first_events() -> None:
        stream = feed.stream()
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 2:
                break
        await stream.aclose()

    asyncio.run(first_events())
    (name, history), *_ = events(chunks)
    assert name == "trends" and len(history) >= 3


def test_trends_sampled_while_no_page_watches_carry_the_frame_rate() -> None:
    import threading
    import time

    # samples every 0.2 s while nobody watches, far apart compared with the watched interval (0.02 s):
    # each is still a rate over the interval since the previous one, not a gap
    view = View()
    feed = LiveFeed(view.status, view.latest_preview, status_seconds=0.02)
    stop = threading.Event()
    feed.sample_in_background(stop, seconds=0.2)
    deadline = time.monotonic() + 10
    while len(feed.history) < 3 and time.monotonic() < deadline:
        stop.wait(0.02)
    stop.set()
    samples = list(feed.history)
    assert len(samples) >= 3
    assert samples[0]["frame_rate"] is None  # the first sample has nothing to compare with
    assert all(s["frame_rate"] is not None and s["frame_rate"] > 0 for s in samples[1:]), samples


def test_a_stream_ends_after_the_status_that_says_the_daemon_is_stopping() -> None:
    """The daemon's stop: the stream's last event says ``stopping`` and the stream ends by itself (it
    was cut by uvicorn's 2 s shutdown timeout, with an error in the log)."""
    stopping = {"now": False}

    def status() -> dict[str, Any]:
        return {"appliance": {"stopping": stopping["now"]}, "frames": {"received": 1}}

    feed = LiveFeed(status, lambda: None, status_seconds=0.02)

    async def watch() -> list[bytes]:
        got: list[bytes] = []
        async for chunk in feed.stream():
            got.append(chunk)
            if len(got) == 4:
                stopping["now"] = True
            assert len(got) < 50, "the stream did not end"
        return got

    got = asyncio.run(asyncio.wait_for(watch(), 10))
    statuses = [data["status"]["appliance"]["stopping"] for kind, data in events(got) if kind == "status"]
    assert statuses[0] is False and statuses[-1] is True and statuses.count(True) == 1


def test_close_ends_every_open_stream_from_another_thread() -> None:
    """A server about to stop ends its streams itself (a stream left open is cut by the shutdown
    timeout and its connection is never closed cleanly)."""
    import threading

    feed = LiveFeed(lambda: {"frames": {"received": 1}}, lambda: None, status_seconds=0.05)

    async def watch() -> int:
        streams = [feed.stream() for _ in range(3)]
        for stream in streams:
            await anext(stream)  # subscribed
        threading.Timer(0.2, feed.close).start()
        counts = []
        for stream in streams:
            n = 0
            async for _chunk in stream:
                n += 1
                assert n < 100, "the stream did not end"
            counts.append(n)
        return len(counts)

    assert asyncio.run(asyncio.wait_for(watch(), 10)) == 3
    assert feed.subscribers == 0


def test_a_page_that_connects_later_gets_the_frame_s_age_as_of_now() -> None:
    """An outside probe: the first preview a new page got carried the server_time of its push, minutes
    old, so ``age_seconds`` under-reported the frame's age by as much."""
    view = View()
    wall = [1000.5]
    feed = LiveFeed(
        view.status,
        view.latest_preview,
        status_seconds=0.05,
        preview_seconds=0.01,
        wall_clock=lambda: wall[0],
    )

    async def first_preview() -> dict[str, Any]:
        stream = feed.stream()
        try:
            for _ in range(8):
                chunk = await asyncio.wait_for(anext(stream), 5)
                found = [data for kind, data in events([chunk]) if kind == "preview"]
                if found:
                    return found[0]
        finally:
            await stream.aclose()
        raise AssertionError("no preview")

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        first = await first_preview()
        wall[0] = 1160.5  # the same frame, 160 s later, to a page that connects now
        stream = feed.stream()  # (the feed is still producing for nobody: start a watcher to replay)
        await stream.aclose()
        return first, await first_preview()

    first, later = asyncio.run(both())
    assert first["age_seconds"] == 1.5 and first["server_time"] == 1000.5
    assert later["server_time"] == 1160.5 and later["age_seconds"] == 161.5


def test_event_streams_leave_a_quarter_of_the_connections_for_requests() -> None:
    """An outside API probe: 16 live event streams under ``api.max_connections = 16`` shut out every
    status poll and metrics scrape for as long as they stayed open. Streams beyond the cap less a
    quarter (at least 4) are refused 503 with Retry-After, counted in the status."""
    from edge.http_guard import REFUSED, event_stream_limit

    assert event_stream_limit(16) == 12 and event_stream_limit(8) == 4 and event_stream_limit(512) == 384
    settings = load_settings(overrides=["api.max_connections=16"])
    http = TestClient(create_app(settings, View()))
    feed = http.app.state.live_feed  # type: ignore[attr-defined]
    for _ in range(12):  # twelve pages watching
        feed._subscribers.add(asyncio.Queue())
    before = REFUSED["event_streams"]
    busy = http.get("/api/events")
    assert busy.status_code == 503 and busy.json()["error"] == "busy", busy.text
    assert busy.headers["Retry-After"] == "5" and "12 live event streams" in busy.json()["detail"]
    assert busy.headers["Connection"] == "close"  # not kept alive: its connection is freed at once
    assert REFUSED["event_streams"] == before + 1
    assert http.get("/api/status").status_code == 200
