"""The systemd units in systemd/: systemd itself accepts them, they carry the service contract (notify,
watchdog, restart, hardening), the example settings load, and `make install-units` stages them.

``systemd-analyze verify`` checks that ExecStart's binary exists, so each unit is rendered with ExecStart
pointing at this venv's ``edge``. It reports bad values on stderr with exit status 0, so any line naming
the unit fails the test. Without ``systemd-analyze`` the verify test is skipped, except in CI
(``CI=true``), where ``.ci/run`` installs it and a skip would hide a broken unit.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("edge.service", "edge-pull.service", "edge-sim.service")
INSTALLED_EDGE = "/opt/edge/venv/bin/edge"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(ROOT / "systemd" / name)
    return parser


def _values(name: str, key: str) -> list[str]:
    """Every value of a (repeatable) [Service] key."""
    values = []
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        if line.startswith(f"{key}="):
            values += line.split("=", 1)[1].split()
    return values


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze missing in CI (.ci/run installs the systemd package)")
        pytest.skip("systemd-analyze not installed")
    return found


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    edge = Path(sys.executable).parent / "edge"
    assert edge.exists(), f"{edge}: the venv's edge entry point (pip install -e .)"
    text = (ROOT / "systemd" / name).read_text()
    assert f"ExecStart={INSTALLED_EDGE} " in text
    rendered = tmp_path / name
    rendered.write_text(text.replace(INSTALLED_EDGE, str(edge)))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(rendered)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in done.stderr.splitlines() if name in line]
    assert done.returncode == 0 and not complaints, done.stderr


def test_edge_service_is_a_hardened_notify_service_with_a_watchdog() -> None:
    service = _unit("edge.service")["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["User"] == "edge" and service["Group"] == "edge"
    assert service["LimitMEMLOCK"] == "infinity"  # pinned host memory for the GPU
    assert "--config /etc/edge/edge.toml" in service["ExecStart"]
    assert "edge run" in service["ExecStart"]
    sysusers = (ROOT / "systemd" / "edge.sysusers.conf").read_text()
    assert any(line.split()[:2] == ["u", "edge"] for line in sysusers.splitlines() if line.strip())


def test_the_other_units_run_the_pull_client_and_the_simulator() -> None:
    assert "edge pull --config /etc/edge/edge.toml" in _unit("edge-pull.service")["Service"]["ExecStart"]
    assert "edge sim --config /etc/edge/edge.toml" in _unit("edge-sim.service")["Service"]["ExecStart"]
    for name in ("edge-pull.service", "edge-sim.service"):
        service = _unit(name)["Service"]
        assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
        assert service["User"] == "edge"
    assert "Install" not in _unit("edge-sim.service")  # a technician starts it; never at boot


@pytest.mark.parametrize("name", UNITS)
def test_a_refusal_is_not_restarted(name: str) -> None:
    """Exit status 2 is a refusal (bad settings, a held lock or port, edge pull's name taken over): with
    Restart=on-failure alone, systemd started a pull client told its name was taken over 5 s later, and
    the two took the name from each other in turn (an outside probe)."""
    service = _unit(name)["Service"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"


def test_example_settings_load_and_write_only_where_the_units_allow() -> None:
    settings = load_settings(ROOT / "systemd" / "edge.toml")
    store_dirs = [Path(p) for p in _values("edge.service", "ReadWritePaths")]
    assert any(settings.store.path.is_relative_to(d) for d in store_dirs), (settings.store.path, store_dirs)
    pull_dirs = [Path(p) for p in _values("edge-pull.service", "ReadWritePaths")]
    assert any(settings.pull.output.is_relative_to(d) for d in pull_dirs), (settings.pull.output, pull_dirs)
    assert settings.log.format == "json"


def test_make_install_units_stages_units_config_and_user(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    done = subprocess.run(
        ["make", "--no-print-directory", "install-units", f"DESTDIR={tmp_path}", "PREFIX=/srv/edge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for name in UNITS:
        text = (tmp_path / "etc/systemd/system" / name).read_text()
        assert "ExecStart=/srv/edge/venv/bin/edge " in text
    assert (tmp_path / "etc/edge/edge.toml").read_text() == (ROOT / "systemd/edge.toml").read_text()
    assert (tmp_path / "usr/lib/sysusers.d/edge.conf").exists()
    # an operator's edited settings survive a reinstall
    (tmp_path / "etc/edge/edge.toml").write_text("# edited\n")
    subprocess.run(
        ["make", "--no-print-directory", "install-units", f"DESTDIR={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert (tmp_path / "etc/edge/edge.toml").read_text() == "# edited\n"
