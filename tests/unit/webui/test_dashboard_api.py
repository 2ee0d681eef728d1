"""The dashboard's own routes: run summaries for the runs table, and the page's static files."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.config import load_settings
from edge.errors import NotFound
from edge.ledger import Ledger
from webui import create_app
from webui.app import STATIC_ASSETS, run_summary

WHERE = {
    "run_uid": "new",
    "frames_stored": 30,
    "frames_delivered": 20,
    "frames_lost": 4,
    "bytes_pending": 1000,
    "eta_seconds": 2.5,
    "files": [
        {"state": "verified", "n_frames": 10, "on_local_disk": True},
        {"state": "verified", "n_frames": 10, "on_local_disk": False},
        {"state": "stored", "n_frames": 10, "on_local_disk": True},
    ],
    "losses": [
        {"first_frame": 30, "last_frame": 32, "partial": False},
        {"first_frame": 5, "last_frame": 5, "partial": True},
    ],
}


class View:
    """Two runs in the ledger: an old one with only the ledger's totals, a new one with a where report."""

    def status(self) -> dict[str, Any]:
        return {}

    def runs(self) -> list[dict[str, Any]]:
        return [{"run_uid": "old", "started_at": 100.0}, {"run_uid": "new", "started_at": 200.0}]

    def newest_runs(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self.runs(), key=lambda row: row.get("started_at") or 0.0, reverse=True)[:limit]

    def run(self, run_uid: str) -> dict[str, Any]:
        if run_uid == "old":
            files = [{"state": "purged", "n_frames": 5}, {"state": "verified", "n_frames": 5}]
            return {
                "run_uid": "old",
                "started_at": 100.0,
                "exit_status": "success",
                "files": files,
                "losses": [],
                "totals": {"frames_stored": 10, "frames_delivered": 10, "frames_lost": 0},
            }
        if run_uid == "new":
            return {"run_uid": "new", "started_at": 200.0, "exit_status": None, "where": WHERE}
        raise NotFound(f"no run {run_uid!r} in the ledger")

    def latest_profile(self) -> dict[str, Any] | None:
        return None

    def latest_preview(self) -> dict[str, Any] | None:
        return None


def client() -> TestClient:
    return TestClient(create_app(load_settings(), View()))


def test_run_summaries_newest_first_with_counts_by_state() -> None:
    rows = client().get("/api/run-summaries").json()
    assert [row["run_uid"] for row in rows] == ["new", "old"]
    new, old = rows
    assert new["states"] == {"stored": 1, "verified": 2}
    assert (new["files"], new["files_on_local_disk"]) == (3, 2)
    assert (new["frames_stored"], new["frames_delivered"], new["frames_lost"]) == (30, 20, 4)
    assert (new["loss_records"], new["bytes_pending"], new["eta_seconds"]) == (2, 1000, 2.5)
    # without a where report the ledger's run totals are shown; nothing is recounted here
    assert old["states"] == {"purged": 1, "verified": 1}
    assert (old["files"], old["files_on_local_disk"], old["frames_delivered"]) == (2, 1, 10)
    assert old["exit_status"] == "success" and old["bytes_pending"] is None


def test_run_summaries_limit() -> None:
    c = client()
    assert [row["run_uid"] for row in c.get("/api/run-summaries?limit=1").json()] == ["new"]
    assert c.get("/api/run-summaries?limit=0").status_code == 422
    # not the digits of an integer (an outside probe: 1.0 and " 5" were taken)
    for bad in ("1.0", "%20%205", "1e3", "abc", "NaN", "501", "-1", "", "9" * 40):
        answer = c.get(f"/api/run-summaries?limit={bad}")
        assert answer.status_code == 422 and "query.limit" in answer.json()["detail"], (bad, answer.text)
        # the range, not a regular expression (an outside probe: "String should match pattern '^[0-9]{1,9}$'")
        assert "whole number from 1 to 500" in answer.json()["detail"], (bad, answer.text)
    for query in ("limit=-1", "limit=1.0", "limit=10001", "offset=-1", "offset=1e3", "limit=5&offset=x"):
        detail = c.get(f"/api/runs?{query}").json()["detail"]
        assert "whole number from" in detail and query.rsplit("&")[-1].split("=")[0] in detail, (
            query,
            detail,
        )


def test_run_summary_shows_the_ledgers_totals(tmp_path: Path) -> None:
    """Losses are counted once, by the ledger: a partial loss (frame kept) is not a lost frame."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("r", 1, 10, "{}")
    ledger.record_loss("r", 3, 7, "frame_number_gap")
    ledger.record_loss("r", 9, 9, "incomplete_frame")
    detail = {"run_uid": "r", "files": [], "losses": ledger.losses("r"), "totals": ledger.run_totals("r")}
    summary = run_summary(detail)
    assert summary["frames_lost"] == 5 and summary["loss_records"] == 2 and summary["states"] == {}
    assert detail["totals"]["frames_incomplete"] == 1
    assert detail["totals"]["frames_lost_by_reason"] == {"frame_number_gap": 5, "incomplete_frame": 1}
    ledger.close()


@pytest.mark.parametrize("name", sorted(STATIC_ASSETS))
def test_static_files_are_served(name: str) -> None:
    response = client().get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(STATIC_ASSETS[name].split(";")[0])
    assert response.headers["cache-control"] == "no-cache"
    assert response.text == resources.files("webui").joinpath("static", name).read_text()


def test_unknown_static_file_is_a_404() -> None:
    response = client().get("/static/../app.py")
    assert response.status_code == 404
    response = client().get("/static/nope.js")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_page_is_self_contained() -> None:
    """No CDN, no build step: the page loads only its own files, and they reach nothing else."""
    page = client().get("/").text
    assert "edge appliance" in page
    assert sorted(re.findall(r'(?:src|href)="([^"]+)"', page)) == [
        "/static/charts.js",
        "/static/dashboard.css",
        "/static/dashboard.js",
        "/static/favicon.svg",
    ]
    static = resources.files("webui").joinpath("static")
    for name in ["index.html", *STATIC_ASSETS]:
        # an SVG names its XML namespace with a URL; that is an identifier, never fetched
        text = static.joinpath(name).read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//cdn|@import", text), (
            f"{name} refers to something outside the appliance"
        )


def test_a_run_recorded_under_a_fresh_uid_carries_the_detector_s_name() -> None:
    """A detector's run uid sent three times: the repeats were recorded under fresh uids, and the page's
    filter found only the first run by that name (an outside probe). The summary names it."""
    from webui.app import run_summary

    renamed = run_summary({"run_uid": "a9f9b953", "where": {"detector_uid": "plate-A-position-01"}})
    assert renamed["name"] == "plate-A-position-01"
    assert run_summary({"run_uid": "scan-1", "where": {"detector_uid": "scan-1"}})["name"] is None
