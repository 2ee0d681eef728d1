"""Fuzzing the REST API with schemathesis: no 5xx, every response matches its declared schema and
content type, and every error body is small, whatever the path, query and headers.

Two targets: the app that ``webui.create_app`` builds around a real (unstarted) ``Appliance`` whose
ledger on a temporary directory holds a run with a file and loss records (huge frame numbers
included), and the same app around a stand-in view whose reads fail in every way a view can (the
domain errors, and an unexpected exception). ``make test`` runs a few examples per operation;
``make fuzz`` runs many (``EDGE_API_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from edge.config import load_settings
from edge.errors import ConfigError, NotFound, Refused
from webui import create_app
from webui.app import MAX_ERROR_BODY

EXAMPLES = int(os.environ.get("EDGE_API_FUZZ_EXAMPLES", "15"))
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 50,  # the short run in make test is the same every time
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def appliance_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from edge.appliance import Appliance

    root = tmp_path_factory.mktemp("appliance")
    config = load_settings(
        overrides=[
            f'store.path="{root / "store"}"',
            'upstream.endpoint="tcp://127.0.0.1:0"',
            "detector.height=32",
            "detector.width=32",
            "ring.slots=2",
            'reduction.backend="numpy"',
            "reduction.bins=16",
        ]
    )
    appliance = Appliance(config)
    ledger = appliance.ledger
    ledger.run_started("run-1", 1, 10, "{}")
    data = root / "store" / "run-1_00000.h5"
    data.write_bytes(b"x" * 100)
    ledger.file_stored("run-1", data.name, data, 100, "sum", (0, 9, 10), [(0, 100, "c")])
    ledger.record_loss("run-1", 10, 12, "frame_number_gap", "frames never arrived")
    ledger.record_loss("run-1", 2**63, 2**64 - 1, "frame_number_gap")  # clamped by the ledger
    ledger.run_ended("run-1", "success", 10)
    try:
        yield create_app(config, appliance.view)
    finally:
        appliance.stop()


class FailingView:
    """Every read fails with a domain error, each with a long message."""

    def status(self) -> dict[str, Any]:
        raise Refused("full " * 50_000)

    def runs(self) -> list[dict[str, Any]]:
        raise ConfigError("bad " * 50_000)

    def newest_runs(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self.runs(), key=lambda row: row.get("started_at") or 0.0, reverse=True)[:limit]

    def runs_page(self, limit: int | None, offset: int) -> tuple[list[dict[str, Any]], int]:
        return self.runs(), 0

    def run(self, run_uid: str) -> dict[str, Any]:
        raise NotFound(f"no run {run_uid!r} in the ledger")

    def latest_profile(self) -> dict[str, Any] | None:
        raise Refused("r" * 50_000)

    def latest_preview(self) -> dict[str, Any] | None:
        return None

    def product(self) -> dict[str, Any] | None:
        raise Refused("p" * 50_000)


@pytest.fixture(scope="module")
def failing_app() -> Any:
    return create_app(load_settings(), FailingView())


def assert_error_body_capped(case: Any, response: Any) -> None:
    if response.status_code >= 400:
        assert len(response.content) <= MAX_ERROR_BODY, (
            case.path,
            response.status_code,
            len(response.content),
        )


def fuzz(app: Any) -> int:
    """Run every operation of ``app``'s OpenAPI schema on generated requests; returns the operations."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call()
            case.validate_response(response, checks=CHECKS)
            assert_error_body_capped(case, response)

        check()
    return len(operations)


def test_api_of_a_real_appliance(appliance_app: Any) -> None:
    assert fuzz(appliance_app) >= 7  # status, runs, run-summaries, one run, profile, preview, page, ...


def test_api_when_every_read_fails(failing_app: Any) -> None:
    assert fuzz(failing_app) >= 7


class BrokenView(FailingView):
    def status(self) -> dict[str, Any]:
        raise RuntimeError("secret " * 10_000)  # a bug in a view


def test_an_unexpected_error_is_a_short_500_without_the_message() -> None:
    client = TestClient(create_app(load_settings(), BrokenView()), raise_server_exceptions=False)
    response = client.get("/api/status")
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "RuntimeError"}


def test_long_inputs_get_short_errors(failing_app: Any) -> None:
    client = TestClient(failing_app)
    long = client.get("/api/runs/" + "a" * 20_000)
    assert long.status_code == 404 and len(long.content) <= MAX_ERROR_BODY
    assert long.json()["error"] == "not_found"
    bad = client.get("/api/run-summaries", params={"limit": "9" * 5000})
    assert bad.status_code == 422 and len(bad.content) <= MAX_ERROR_BODY
    assert bad.json()["error"] == "bad_request"


def test_runs_come_a_page_at_a_time_with_the_total(small_settings) -> None:  # type: ignore[no-untyped-def]
    """``/api/runs`` was the whole history in one answer (a ledger of months of runs: megabytes). With
    ``limit``/``offset`` it is one page, oldest first, and ``X-Total-Count`` says how many there are;
    without either it is the whole history, as before."""
    from fastapi.testclient import TestClient

    from edge.appliance import Appliance

    config = small_settings()
    appliance = Appliance(config)
    try:
        for n in range(5):
            appliance.ledger.run_started(f"run-{n}", n, 10, "{}")
        client = TestClient(create_app(config, appliance.view))
        whole = client.get("/api/runs")
        assert [r["run_uid"] for r in whole.json()] == [f"run-{n}" for n in range(5)]
        assert "x-total-count" not in whole.headers
        page = client.get("/api/runs", params={"limit": "2", "offset": "1"})
        assert [r["run_uid"] for r in page.json()] == ["run-1", "run-2"]
        assert page.headers["x-total-count"] == "5"
        rest = client.get("/api/runs", params={"offset": "3"})
        assert [r["run_uid"] for r in rest.json()] == ["run-3", "run-4"]
        assert client.get("/api/runs", params={"offset": "9"}).json() == []
        for bad in ({"limit": "0"}, {"limit": "10001"}, {"limit": "1.0"}, {"offset": "-1"}):
            assert client.get("/api/runs", params=bad).status_code == 422, bad
    finally:
        appliance.stop()
