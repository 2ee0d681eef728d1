"""Reduction changes made over REST or EPICS are kept across a restart, as areaDetector's autosave keeps
PV values, unless the settings they were made from changed (an outside chaos probe: a mode and tomography
rows set over REST were silently back to the config file's after a restart, and a crash-resumed
tomography scan then ran in another mode, its darks vetoed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edge.config import load_settings
from edge.reduction_control import ReductionControl, settings_changed


def _control(path: Path, *overrides: str) -> ReductionControl:
    settings = load_settings(overrides=list(overrides))
    return ReductionControl(settings.reduction, open_run=lambda: None, frame_shape=(256, 256), autosave=path)


def test_changes_are_restored_by_a_daemon_started_on_the_same_settings(tmp_path: Path) -> None:
    path = tmp_path / "reduction.json"
    first = _control(path, 'reduction.mode="serial"')
    assert first.restored is None and not path.exists()
    first.update({"mode": "tomo", "tomo": {"slices": [100, 128]}, "serial": {"min_peaks": 3}})
    saved = json.loads(path.read_text())
    assert saved["parameters"]["mode"] == "tomo" and saved["parameters"]["tomo"]["slices"] == [100, 128]

    again = _control(path, 'reduction.mode="serial"')
    assert again.current().mode == "tomo" and again.current().tomo.slices == [100, 128]
    assert again.current().serial.min_peaks == 3
    assert again.restored == again.parameters()


def test_settings_edited_since_win_and_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "reduction.json"
    _control(path, 'reduction.mode="serial"').update({"mode": "tomo"})
    with caplog.at_level(logging.WARNING):
        edited = _control(path, 'reduction.mode="powder"')
    assert edited.current().mode == "powder" and edited.restored is None
    assert any("the saved changes are not restored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"parameters": 3}'])
def test_a_damaged_save_is_not_restored_and_costs_no_start(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "reduction.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        control = _control(path, 'reduction.mode="serial"')
    assert control.current().mode == "serial" and control.restored is None
    assert any("not restored" in r.getMessage() for r in caplog.records)


def test_a_saved_value_no_longer_valid_here_is_not_restored(tmp_path: Path) -> None:
    """Saved for a larger frame: a tomography row outside this one is not taken back."""
    path = tmp_path / "reduction.json"
    big = ReductionControl(
        load_settings().reduction, open_run=lambda: None, frame_shape=(1024, 1024), autosave=path
    )
    big.update({"tomo": {"slices": [900]}})
    small = _control(path)
    assert small.current().tomo.slices == [] and small.restored is None


def test_a_save_superseded_by_edited_settings_never_comes_back(tmp_path: Path) -> None:
    """An outside probe: config powder, a REST change to serial, a start with the config on tomo (not
    restored: right), then the config back on powder: the old serial change came back."""
    path = tmp_path / "reduction.json"
    _control(path, 'reduction.mode="powder"').update({"mode": "serial"})
    assert _control(path, 'reduction.mode="tomo"').current().mode == "tomo" and not path.exists()
    assert _control(path, 'reduction.mode="powder"').current().mode == "powder"


def test_the_restore_names_each_parameter_it_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe read "restored ...: mode serial" alone, its min_peaks and min_snr restored too."""
    path = tmp_path / "reduction.json"
    _control(path, 'reduction.mode="serial"').update({"serial": {"min_peaks": 30, "min_snr": 4.0}})
    with caplog.at_level(logging.INFO, logger="edge.reduction_control"):
        _control(path, 'reduction.mode="serial"')
    said = [r.getMessage() for r in caplog.records if "restored the reduction changes" in r.getMessage()]
    assert len(said) == 1, said
    assert "mode serial" in said[0], said
    assert (
        "serial.min_peaks 30 (the settings' 10)" in said[0]
        and "serial.min_snr 4.0 (the settings' 5.0)" in said[0]
    )


def test_settings_changed_names_what_shapes_products_only() -> None:
    before = {"mode": "raw", "backend": "numba", "bins": 1000, "serial": {"min_peaks": 10}, "roi": []}
    after = {
        "mode": "powder",
        "backend": "auto",
        "bins": 50,
        "serial": {"min_peaks": 10},
        "roi": [[0, 0, 4, 4]],
    }
    assert settings_changed(before, after) == {"bins": [1000, 50], "roi": [[], [[0, 0, 4, 4]]]}
    assert settings_changed(before, before) == {}
    assert settings_changed({"serial": {}}, {"serial": {"max_peaks": 512}}) == {
        "serial.max_peaks": [None, 512]
    }
