"""FastAPI app factory. Domain errors become HTTP errors here and nowhere else."""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from edge.errors import ConfigError, NotFound, Refused


class ApplianceView(Protocol):
    """What the web UI reads from the appliance."""

    def status(self) -> dict[str, Any]: ...

    def runs(self) -> list[dict[str, Any]]: ...

    def run(self, run_uid: str) -> dict[str, Any]: ...

    def latest_profile(self) -> dict[str, Any] | None: ...

    def latest_preview(self) -> dict[str, Any] | None: ...


def _metrics(status: dict[str, Any]) -> str:
    lines: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float):
            name = "edge_" + prefix
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {value}")
        elif isinstance(value, dict):
            for key, item in value.items():
                safe = "".join(ch if ch.isalnum() else "_" for ch in str(key))
                walk(f"{prefix}_{safe}" if prefix else safe, item)

    walk("", status)
    return "\n".join(lines) + "\n"


def create_app(settings: Any, appliance: ApplianceView) -> FastAPI:
    """The web application for one appliance."""
    app = FastAPI(title="edge", version="0.1.0")

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"error": "not_found", "detail": str(error)}, status_code=404)

    @app.exception_handler(ConfigError)
    async def _bad_config(request: Request, error: ConfigError) -> JSONResponse:
        return JSONResponse({"error": "bad_request", "detail": str(error)}, status_code=400)

    @app.exception_handler(Refused)
    async def _refused(request: Request, error: Refused) -> JSONResponse:
        return JSONResponse({"error": "refused", "detail": str(error)}, status_code=409)

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        return appliance.status()

    @app.get("/api/runs")
    def runs() -> list[dict[str, Any]]:
        return appliance.runs()

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

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return _metrics(appliance.status())

    page = resources.files("webui").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    return app
