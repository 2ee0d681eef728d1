"""``edge sim`` hands the simulated frames' own options (spots' hit fraction, the tomography scan) to
every transport: a technician's probe saw UDP ignore them (hit rate 0.32 for ``hit_fraction = 0.8``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import hw_sim.cli
from edge.cli import _run_sim
from edge.config import load_settings


@pytest.mark.parametrize(
    ("transport", "mode", "setting", "expected"),
    [
        ("udp", "spots", "sim.hit_fraction=0.8", {"hit_fraction": 0.8}),
        (
            "udp",
            "tomo",
            "sim.tomo_angles=90",
            {
                "n_angles": 90,
                "n_darks": 10,
                "n_flats": 10,
                "n_flats_end": 0,
                "start_deg": 0.0,
                "range_deg": 180.0,
                "turns": 1,
                "axis_offset_px": 0.0,
            },
        ),
        ("ioc", "spots", "sim.hit_fraction=0.1", {"hit_fraction": 0.1}),
    ],
)
def test_every_transport_gets_the_mode_s_options(
    monkeypatch: pytest.MonkeyPatch, transport: str, mode: str, setting: str, expected: dict[str, Any]
) -> None:
    seen: dict[str, Any] = {}

    def capture(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(hw_sim.cli, "run_sim_udp", capture)
    monkeypatch.setattr(hw_sim.cli, "run_sim_ioc", capture)
    overrides = [f'sim.mode="{mode}"', setting] + ([] if transport == "ioc" else ['stream.transport="udp"'])
    args = argparse.Namespace(ioc=transport == "ioc", json=True)
    assert _run_sim(load_settings(None, overrides), args) == 0
    assert seen["options"] == expected


def test_the_simulator_draws_about_the_poni_file_the_daemon_reduces_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An outside probe: ``edge sim`` given the daemon's settings file drew about ``geometry.*`` (the
    default PONI, a corner of its 512^2 frames) while the daemon took ``reduction.poni_file``: serial
    mode then called every frame a hit."""
    pyfai = pytest.importorskip("pyFAI.integrator.azimuthal")
    poni = tmp_path / "cal.poni"
    pyfai.AzimuthalIntegrator(
        dist=0.08, poni1=0.0195, poni2=0.0188, wavelength=1e-10, pixel1=75e-6, pixel2=75e-6
    ).write(str(poni))
    seen: dict[str, Any] = {}

    def capture(**kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(hw_sim.cli, "run_sim_udp", capture)
    overrides = ['stream.transport="udp"', f'reduction.poni_file="{poni}"']
    assert _run_sim(load_settings(None, overrides), argparse.Namespace(ioc=False, json=True)) == 0
    assert (seen["geometry"]["dist"], seen["geometry"]["poni1"], seen["geometry"]["poni2"]) == pytest.approx(
        (0.08, 0.0195, 0.0188)
    )
