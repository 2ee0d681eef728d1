"""What a fresh install gets: the locked versions, and a wheel that holds every package and its data.

An editable install from the tree hides packaging mistakes (a data file that is not package data still
loads from the checkout), so the wheel is built and its member list checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PACKAGES = ("edge", "firmware_bridge", "kernels", "webui", "hw_sim")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def test_installed_versions_are_the_locked_ones() -> None:
    pins = _locked()
    assert len(pins) > 50, "requirements.lock looks empty"
    # only the environment's own site-packages: setuptools puts its vendored copies (packaging,
    # platformdirs, ...) on sys.path once something imports it, and those are not installs
    site_dirs = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=site_dirs)}
    # every runtime and dev dependency of edge is pinned and installed at its pinned version
    required = [
        _canonical(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])
        for req in metadata.requires("edge") or []
        if "extra ==" not in req or 'extra == "dev"' in req
    ]
    assert required, "edge's requirements could not be read"
    missing = [name for name in required if name not in pins]
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    wrong = {
        name: (installed.get(name), version)
        for name, version in pins.items()
        if name in installed and installed[name] != version
    }
    assert not wrong, f"installed != locked (installed, locked): {wrong}; reinstall with `make clean test`"


@pytest.mark.slow
def test_wheel_holds_every_package_and_its_data(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=170,
    )
    (wheel,) = tmp_path.glob("edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, f"{package} missing from the wheel"
        sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert sources <= names, f"modules missing from the wheel: {sorted(sources - names)}"
    for data in (
        "edge/data/edge.acf",
        "webui/static/index.html",
        "webui/static/dashboard.js",
        "webui/static/dashboard.css",
    ):
        assert data in names, f"{data} is not package data"
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
