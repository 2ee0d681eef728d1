"""FastAPI app factory. Domain errors become HTTP errors here and nowhere else.

Serves the REST views the dashboard polls (status, runs, one run's where-is-my-data report, the
latest profile and preview), a per-run summary for the dashboard's runs table, Prometheus text, and
the dashboard itself: plain HTML, CSS and JavaScript from ``webui/static`` (no build step, no CDN).
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from edge.errors import ConfigError, NotFound, Refused, Unauthorized, WritesDisabled
from webui.metrics import add_metrics_route

#: Files of the dashboard besides the page itself, with their media types.
STATIC_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


#: Error bodies are at most this many bytes: a long path or query is never echoed back in full.
MAX_ERROR_BODY = 1024
_MAX_DETAIL = 400  # characters of an error's detail; the rest is cut


class ErrorBody(BaseModel):
    """Every error the API answers: a short machine-readable kind and a capped human-readable detail."""

    error: str
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad request"),
        (401, "write without the right bearer token"),
        (403, "writes disabled: no api.token configured"),
        (404, "not found"),
        (409, "refused"),
        (422, "invalid parameters"),
        (500, "internal error"),
    )
}


def _error(kind: str, detail: str, status: int) -> JSONResponse:
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 3] + "..."
    return JSONResponse({"error": kind, "detail": detail}, status_code=status)


class ApplianceView(Protocol):
    """What the web UI reads from the appliance."""

    def status(self) -> dict[str, Any]: ...

    def runs(self) -> list[dict[str, Any]]: ...

    def run(self, run_uid: str) -> dict[str, Any]: ...

    def latest_profile(self) -> dict[str, Any] | None: ...

    def latest_preview(self) -> dict[str, Any] | None: ...


def run_summary(detail: dict[str, Any]) -> dict[str, Any]:
    """One row of the dashboard's runs table from a run's detail (``ApplianceView.run``).

    Counts are the ledger's run totals, as the detail carries them; nothing is counted or estimated here.
    """
    where = detail.get("where") or {}
    files = where.get("files", detail.get("files", []))
    losses = where.get("losses", detail.get("losses", []))
    states = Counter(str(f.get("state")) for f in files)
    totals = detail.get("totals") or where  # the ledger's run totals (Ledger.run_totals)
    stored = totals.get("frames_stored")
    delivered = totals.get("frames_delivered")
    lost = totals.get("frames_lost")
    return {
        "run_uid": detail["run_uid"],
        "started_at": detail.get("started_at"),
        "ended_at": detail.get("ended_at"),
        "exit_status": detail.get("exit_status"),
        "frames_expected": detail.get("frames_expected"),
        "frames_stored": stored,
        "frames_delivered": delivered,
        "frames_lost": lost,
        "loss_records": len(losses),
        "files": len(files),
        "files_on_local_disk": sum(1 for f in files if f.get("on_local_disk", f.get("state") != "purged")),
        "states": dict(sorted(states.items())),
        "bytes_pending": where.get("bytes_pending"),
        "eta_seconds": where.get("eta_seconds"),
    }


def create_app(settings: Any, appliance: ApplianceView) -> FastAPI:
    """The web application for one appliance."""
    app = FastAPI(title="edge", version="0.1.0", responses=_ERRORS)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, error: NotFound) -> JSONResponse:
        return _error("not_found", str(error), 404)

    @app.exception_handler(ConfigError)
    async def _bad_config(request: Request, error: ConfigError) -> JSONResponse:
        return _error("bad_request", str(error), 400)

    @app.exception_handler(Refused)
    async def _refused(request: Request, error: Refused) -> JSONResponse:
        return _error("refused", str(error), 409)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, error: Unauthorized) -> JSONResponse:
        response = _error("unauthorized", str(error), 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(WritesDisabled)
    async def _writes_disabled(request: Request, error: WritesDisabled) -> JSONResponse:
        return _error("forbidden", str(error), 403)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
            for item in error.errors()
        )
        return _error("bad_request", where, 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # a bug: the log has the traceback (uvicorn logs it); the client gets the exception's type only
        return _error("internal_error", type(error).__name__, 500)

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        return appliance.status()

    @app.get("/api/runs")
    def runs() -> list[dict[str, Any]]:
        return appliance.runs()

    @app.get("/api/run-summaries")
    def run_summaries(limit: int = Query(20, ge=1, le=500)) -> list[dict[str, Any]]:
        """The newest ``limit`` runs, newest first, each with file counts by state, losses and what is
        pending upstream (one where-report per run, so the dashboard asks for a few)."""
        rows = appliance.runs()
        newest = sorted(rows, key=lambda row: row.get("started_at") or 0.0, reverse=True)[:limit]
        summaries = []
        for row in newest:
            try:
                summaries.append(run_summary(appliance.run(row["run_uid"])))
            except NotFound:  # gone between the two reads; the next poll will not list it
                continue
        return summaries

    @app.get("/api/runs/{run_uid}")
    def run(run_uid: str) -> dict[str, Any]:
        return appliance.run(run_uid)

    @app.get("/api/profile")
    def profile() -> dict[str, Any]:
        latest = appliance.latest_profile()
        if latest is None:
            raise NotFound("no frame has been reduced yet")
        return latest

    @app.get("/api/preview")
    def preview() -> dict[str, Any]:
        latest = appliance.latest_preview()
        if latest is None:
            raise NotFound("no frame has been reduced yet")
        return latest

    add_metrics_route(app, appliance.status)  # Prometheus text, webui/metrics.py

    static = resources.files("webui").joinpath("static")
    page = static.joinpath("index.html").read_text()
    assets = {name: static.joinpath(name).read_text() for name in STATIC_ASSETS}
    no_cache = {"Cache-Control": "no-cache"}

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=no_cache)

    @app.get(
        "/static/{name}",
        responses={200: {"content": {media.split(";")[0]: {} for media in STATIC_ASSETS.values()}}},
    )
    def asset(name: str) -> Response:
        if name not in assets:
            raise NotFound(f"no dashboard file {name!r}")
        return Response(assets[name], media_type=STATIC_ASSETS[name], headers=no_cache)

    return app
