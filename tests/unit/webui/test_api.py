"""The web API against a stand-in appliance view: routes, error mapping, Prometheus text."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from edge.config import load_settings
from edge.errors import NotFound
from webui import create_app


class View:
    def status(self) -> dict[str, Any]:
        return {"frames": {"received": 3, "lost": 0}, "ring": {"fill": 1, "policy": "block"}, "ok": True}

    def runs(self) -> list[dict[str, Any]]:
        return [{"run_uid": "r1"}]

    def newest_runs(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self.runs(), key=lambda row: row.get("started_at") or 0.0, reverse=True)[:limit]

    def run(self, run_uid: str) -> dict[str, Any]:
        if run_uid != "r1":
            raise NotFound(f"no run {run_uid!r} in the ledger")
        return {"run_uid": "r1", "files": []}

    def latest_profile(self) -> dict[str, Any] | None:
        return None

    def latest_preview(self) -> dict[str, Any] | None:
        return None


def client() -> TestClient:
    return TestClient(create_app(load_settings(), View()))


def test_status_runs_and_page() -> None:
    c = client()
    assert c.get("/api/status").json()["frames"]["received"] == 3
    assert c.get("/api/runs").json() == [{"run_uid": "r1"}]
    assert c.get("/api/runs/r1").json()["run_uid"] == "r1"
    assert "edge appliance" in c.get("/").text


def test_domain_errors_map_to_http() -> None:
    c = client()
    response = c.get("/api/runs/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no run 'nope' in the ledger"}
    assert c.get("/api/profile").status_code == 404


def test_metrics_are_prometheus_text() -> None:
    text = client().get("/metrics").text
    assert 'edge_frames_total{stage="received"} 3.0' in text  # webui/metrics.py, see test_metrics.py
    assert "edge_ring_fill 1.0" in text and "edge_ok 1.0" in text
    assert 'edge_ring_info{policy="block"} 1.0' in text  # strings are labels of an _info gauge, not values


def test_every_error_has_the_same_body_even_from_the_router() -> None:
    c = client()
    unknown = c.get("/api/nothing")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "not_found", "detail": "Not Found"}
    wrong_method = c.delete("/api/status")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    assert wrong_method.json() == {"error": "method_not_allowed", "detail": "Method Not Allowed"}
    assert c.options("/api/runs").json()["error"] == "method_not_allowed"  # no CORS preflight either
    # the live image is of the newest frame received (raw mode too), not of a reduced one
    assert c.get("/api/preview").json() == {"error": "not_found", "detail": "no frame has been received yet"}
