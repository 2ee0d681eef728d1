"""``docs/settings.md`` is generated from `edge.config.Settings`; this fails when the committed file is stale
or a key is missing from it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from edge.config import Settings
from edge.settingsdocs import render

DOC = Path(__file__).resolve().parents[3] / "docs" / "settings.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_docs_settings_md_is_up_to_date_and_lists_every_key() -> None:
    text = DOC.read_text()
    assert text == render(), "docs/settings.md is stale: run `edge settingsdocs > docs/settings.md`"
    missing = [key for key in _keys(Settings) if f"| `{key}` |" not in text]
    assert not missing and len(_keys(Settings)) > 100
