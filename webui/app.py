"""FastAPI app factory. Domain errors become HTTP errors here and nowhere else.

Serves the REST views the dashboard polls (status, runs, one run's where-is-my-data report, the
latest profile and preview), a per-run summary for the dashboard's runs table, Prometheus text, and
the dashboard itself: plain HTML, CSS and JavaScript from ``webui/static`` (no build step, no CDN).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import Counter
from importlib import resources
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from edge.errors import ConfigError, NotFound, Refused, Unauthorized, WritesDisabled
from edge.http_guard import count_refusal, event_stream_limit, refused_stream
from webui.auth import writer
from webui.live import LiveFeed
from webui.metrics import add_metrics_route

#: Files of the dashboard besides the page itself, with their media types.
STATIC_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: Swagger UI and ReDoc for /docs and /redoc, from the fastapi-offline package (no CDN).
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
}


class HeadAsGet:
    """ASGI middleware: a HEAD request is answered as its GET would be, headers only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = False

        async def headers_only(message: dict[str, Any]) -> None:
            nonlocal done
            if message["type"] == "http.response.body":
                if not done:
                    done = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app({**scope, "method": "GET", "edge.head": True}, receive, headers_only)


class CountRefusals:
    """ASGI middleware: every API request answered 4xx is counted (``edge.http_guard.REQUESTS_REFUSED``;
    status ``appliance.api_requests_refused``): a refused write leaves a counter, not only its reply."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope["method"])

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                count_refusal(method, int(message["status"]))
            await send(message)

        await self.app(scope, receive, counted)


#: Error bodies are at most this many bytes: a long path or query is never echoed back in full.
MAX_ERROR_BODY = 1024
MAX_RUNS_PAGE = 10_000  # runs in one page of /api/runs (?limit=)
MAX_OFFSET = 10**18 - 1  # runs skipped (?offset=): what SQLite's OFFSET takes
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


MAX_BODY_BYTES = 64 * 1024  # a write's body: the reduction parameters are a few hundred bytes
BODY_SECONDS = 10.0  # a write's body must be all in this long after its headers


class BadBody(Exception):
    """A write's body that is not one JSON object (422), too long (413), or too slow to come (408)."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.status = status


def _whole(text: str, name: str, low: int, high: int) -> int:
    """Query parameter ``name``: the digits of a whole number from ``low`` to ``high`` (pydantic's int
    took ``1.0`` and `` 5``; a pattern's refusal quoted the regular expression, not the range)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 18 and low <= int(text) <= high):
        message = f"Input should be a whole number from {low} to {high}"
        raise RequestValidationError([{"loc": ("query", name), "msg": message, "type": "value_error"}])
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refused when a key appears twice (the last one silently won)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        twice = next(key for n, (key, _) in enumerate(pairs) if key in (k for k, _ in pairs[:n]))
        raise ValueError(f"the key {twice[:40]!r} appears twice in one object")
    return value


#: the most digits an integer of a write's body may have: no setting holds more than 2^64 (20 digits), and
#: Python's own limit (4300) answered with advice about its interpreter
MAX_INTEGER_DIGITS = 100


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise ValueError(f"an integer of {digits} digits, more than any setting holds")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond a double")
    return value


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, read after the token check: at most `MAX_BODY_BYTES`,
    ``application/json`` (or ``application/*+json``), UTF-8, finite numbers only, no key twice in one
    object."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))):
        raise BadBody(f"body: send JSON with Content-Type: application/json (got {kind or 'none'!r})")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        # said up front: refused at once, not waited for (a client that will not send it all timed out)
        raise BadBody(f"body: over {MAX_BODY_BYTES} bytes (Content-Length {declared[:24]})", 413)
    body = bytearray()

    async def read() -> None:
        async for part in request.stream():
            body.extend(part)
            if len(body) > MAX_BODY_BYTES:
                raise BadBody(f"body: over {MAX_BODY_BYTES} bytes", 413)

    try:  # a body of a few KiB comes at once: one still coming after BODY_SECONDS is not waited for
        await asyncio.wait_for(read(), BODY_SECONDS)
    except TimeoutError:
        raise BadBody(f"body: not all sent within {BODY_SECONDS:g} s", 408) from None
    except ClientDisconnect:  # gone before its body was all sent: answered (to no one), not a traceback
        raise BadBody("body: the client went away before it was all sent", 400) from None
    try:
        value = json.loads(
            bytes(body).decode("utf-8"),
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_integer,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:  # (Python's words are about its interpreter: "maximum recursion depth")
        raise BadBody("body: not JSON (RecursionError: nested deeper than the reader follows)") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise BadBody(f"body: not JSON ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(value, dict):
        raise BadBody(f"body: a JSON object is needed, not {type(value).__name__}")
    if _has_lone_surrogate(value):  # (JSON's \ud800 alone: no UTF-8 text, nothing to store or answer)
        raise BadBody("body: a string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape alone)")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (a key included) holds half of a UTF-16 surrogate pair."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= c <= "\udfff" for c in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _error(kind: str, detail: str, status: int) -> JSONResponse:
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 3] + "..."
    # at most MAX_ERROR_BODY bytes as sent: a character may take up to 6 (a control character's \u
    # escape) or 4 (UTF-8), so the detail is cut further by what is over
    while (over := len(JSONResponse({"error": kind, "detail": detail}).body) - MAX_ERROR_BODY) > 0:
        detail = detail[: max(0, len(detail) - over - 3)] + "..."
    return JSONResponse({"error": kind, "detail": detail}, status_code=status)


class ApplianceView(Protocol):
    """What the web UI reads from the appliance."""

    def status(self) -> dict[str, Any]: ...

    def runs(self) -> list[dict[str, Any]]: ...

    def newest_runs(self, limit: int) -> list[dict[str, Any]]: ...

    def runs_page(self, limit: int | None, offset: int) -> tuple[list[dict[str, Any]], int]: ...

    def run(self, run_uid: str) -> dict[str, Any]: ...

    def latest_profile(self) -> dict[str, Any] | None: ...

    def latest_preview(self) -> dict[str, Any] | None: ...

    def product(self) -> dict[str, Any] | None: ...


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
        "mode": detail.get("mode") or _run_mode(where.get("config", detail.get("config"))),
        # the uid the detector gave it, when the run was recorded under another (the page's filter finds
        # a run by it: a probe's repeated detector uid found only the first run)
        "name": where.get("detector_uid")
        if where.get("detector_uid") not in (None, detail["run_uid"])
        else None,
    }


def _run_mode(config: Any) -> str | None:
    """The run's reduction mode from its recorded config (a dict or its JSON), when it names one
    (``reduction.mode``; a top-level ``mode`` may be the detector's or simulator's, so it is not read)."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return None
    if not isinstance(config, dict):
        return None
    reduction = config.get("reduction")
    if isinstance(reduction, dict) and isinstance(reduction.get("mode"), str):
        return str(reduction["mode"])
    return None


class ReductionWriter(Protocol):
    """Changes the next run's reduction parameters (edge.reduction_control.ReductionControl)."""

    def parameters(self) -> dict[str, Any]: ...

    def update(self, changes: dict[str, Any]) -> dict[str, Any]: ...


def create_app(
    settings: Any,
    appliance: ApplianceView,
    reduction: ReductionWriter | None = None,
    trends_until: threading.Event | None = None,
) -> FastAPI:
    """The web application for one appliance."""
    app = FastAPI(title="edge", version="0.1.0", responses=_ERRORS, docs_url=None, redoc_url=None)
    app.add_middleware(HeadAsGet)
    app.add_middleware(CountRefusals)  # (outermost: a HEAD counts as the request it was)
    can_write = writer(settings.api.token)
    feed = LiveFeed(appliance.status, lambda: appliance.latest_preview())  # read when someone watches
    app.state.live_feed = feed
    if trends_until is not None:  # the daemon: trends are sampled even while no page is open
        feed.sample_in_background(trends_until)

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

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        # the router's own answers (no such path, a method the path does not take): the same body as ours
        kinds = {404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(error.status_code, "bad_request" if error.status_code < 500 else "internal_error")
        response = _error(kind, str(error.detail), error.status_code)
        response.headers.update(error.headers or {})  # 405 says which methods the path takes (Allow)
        return response

    @app.exception_handler(BadBody)
    async def _bad_body(request: Request, error: BadBody) -> JSONResponse:
        kind = {413: "too_large", 408: "timeout"}.get(error.status, "bad_request")
        return _error(kind, str(error), error.status)

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
    def runs(
        response: Response,
        limit: str | None = Query(None, description=f"1..{MAX_RUNS_PAGE}"),
        offset: str | None = Query(None, description=f"runs skipped, oldest first: 0..{MAX_OFFSET}"),
    ) -> list[dict[str, Any]]:
        """Every run, oldest first; with ``limit`` and/or ``offset``, one page of them, and the number
        of runs in the ``X-Total-Count`` header (a months-old ledger's whole history is a big answer)."""
        if limit is None and offset is None:
            return appliance.runs()
        count = None if limit is None else _whole(limit, "limit", 1, MAX_RUNS_PAGE)
        skip = 0 if offset is None else _whole(offset, "offset", 0, MAX_OFFSET)
        rows, total = appliance.runs_page(count, skip)
        response.headers["X-Total-Count"] = str(total)
        return rows

    @app.get("/api/run-summaries")
    def run_summaries(
        limit: str = Query("20", description="1..500"),
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` runs, newest first, each with file counts by state, losses and what is
        pending upstream (one where-report per run, so the dashboard asks for a few)."""
        count = _whole(limit, "limit", 1, 500)
        summaries = []
        for row in appliance.newest_runs(count):  # (an outside soak: sorting every run made it O(history))
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
            raise NotFound("no frame has been received yet")
        return latest

    @app.get("/api/reduction")
    def reduction_parameters() -> dict[str, Any]:
        """The reduction mode and per-run parameters the next run will use."""
        if reduction is None:
            raise NotFound("this appliance has no reduction control")
        return reduction.parameters()

    @app.put(
        "/api/reduction",
        dependencies=[Depends(can_write)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
            }
        },
        responses={413: {"model": ErrorBody, "description": f"body over {MAX_BODY_BYTES} bytes"}},
    )
    async def set_reduction(request: Request) -> dict[str, Any]:
        """Change the next run's reduction (``mode``, ``cake_bins``, ``roi``, ``serial``, ``tomo``; the
        last two may be partial). Needs the bearer token; refused (409) while a run is open; a bad value
        is 400 naming the key."""
        changes = await _json_object(request)  # read only once the token was checked (the dependency)
        if reduction is None:
            raise NotFound("this appliance has no reduction control")
        return await run_in_threadpool(reduction.update, changes)

    @app.get("/api/product")
    def product() -> dict[str, Any]:
        """The current mode's live product: profile/cake (powder), hit rate and newest hit with its
        peaks (serial), reconstructed slice (tomo)."""
        latest = appliance.product()
        if latest is None:
            raise NotFound("no run has started since the daemon did")
        return latest

    @app.get("/api/alarms")
    def alarms() -> list[dict[str, Any]]:
        """Active alarms (edge/alarms.py): id, scope (run/condition/daemon), severity, message, since,
        acknowledged."""
        return list(appliance.status().get("alarms", []))

    @app.post("/api/alarms/{alarm_id}/ack", dependencies=[Depends(can_write)])
    def acknowledge(alarm_id: str) -> dict[str, Any]:
        """Acknowledge an active alarm (needs the bearer token); it stays listed while its condition holds."""
        appliance.status()  # the alarm book learns what is active now
        book = getattr(appliance, "alarm_book", None)
        if book is None:
            raise NotFound("this appliance keeps no alarm acknowledgements")
        return dict(book.acknowledge(alarm_id))

    @app.get(
        "/api/token",
        dependencies=[Depends(can_write)],
        status_code=204,
        response_class=Response,
        responses={204: {"description": "the token sent would be accepted for a write"}},
    )
    def check_token() -> Response:
        """Whether the bearer token sent would be accepted for a write, changing nothing: 204, else 401
        (403 when writes are disabled). The dashboard checks a token once when it gets it."""
        return Response(status_code=204)

    @app.get("/api/trends")
    def trends() -> list[dict[str, Any]]:
        """Trend samples (frame rate, ring fill, backlog, disk use), taken while a dashboard watched."""
        return list(feed.history)

    stream_limit = event_stream_limit(settings.api.max_connections)

    @app.get("/api/events", include_in_schema=False)
    def events(request: Request) -> Response:
        """Server-Sent Events for the dashboard (webui/live.py): status once a second, the live image.
        At most `event_stream_limit` at once: the rest of ``api.max_connections`` stays for requests."""
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.scope.get("edge.head"):
            return Response(media_type="text/event-stream", headers=headers)
        if not feed.admit(stream_limit):
            refused_stream(stream_limit)
            busy = _error(
                "busy",
                f"{stream_limit} live event streams are open, the most api.max_connections"
                f" ({settings.api.max_connections}) allows: the rest are kept for requests (status, metrics);"
                " try again later",
                503,
            )
            busy.headers["Retry-After"] = "5"
            # and closed: kept alive, the refused clients' connections took the room kept for requests
            # (an outside probe: status polls reset for 6 s, until the keep-alive timeout)
            busy.headers["Connection"] = "close"
            return busy
        return StreamingResponse(feed.stream(), media_type="text/event-stream", headers=headers)

    add_metrics_route(app, appliance.status)  # Prometheus text, webui/metrics.py

    static = resources.files("webui").joinpath("static")
    page = static.joinpath("index.html").read_text()
    assets = {name: static.joinpath(name).read_bytes() for name in STATIC_ASSETS}
    no_cache = {"Cache-Control": "no-cache"}
    docs_static = resources.files("fastapi_offline").joinpath("static")
    docs_assets: dict[str, bytes] = {}
    favicon = "/static/favicon.svg"

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="edge API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url=favicon,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="edge API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            raise NotFound(f"no documentation file {name!r}")
        if name not in docs_assets:
            docs_assets[name] = docs_static.joinpath(name).read_bytes()
        return Response(docs_assets[name], media_type=DOCS_ASSETS[name])

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon_ico() -> Response:
        return Response(assets["favicon.svg"], media_type=STATIC_ASSETS["favicon.svg"])

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
