"""``docs/api.md`` names every route the app serves and every metric family with its own HELP text, so a
route or a metric added without its documentation fails here."""

from __future__ import annotations

from pathlib import Path

from fastapi.routing import APIRoute
from test_reduction_api import View  # the same stand-in view

from edge.config import load_settings
from webui import create_app
from webui.metrics import HELP

DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"


def test_every_route_is_documented() -> None:
    text = DOC.read_text()
    app = create_app(load_settings(), View())
    paths = {route.path for route in app.routes if isinstance(route, APIRoute)} | {"/openapi.json"}
    missing = sorted(path for path in paths if f"`{path}" not in text)
    assert not missing, f"routes missing from docs/api.md: {missing}"


def test_every_metric_with_its_own_help_is_documented() -> None:
    text = DOC.read_text()
    missing = sorted(f"edge_{key}" for key in HELP if f"edge_{key}" not in text)
    assert not missing, f"metrics missing from docs/api.md: {missing}"
