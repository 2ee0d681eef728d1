"""The reduction mode over REST between runs (token-protected), refused during a run; `edge where`
and `/api/runs/{id}` show the mode, its settings, the dispositions and which files stay local."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from edgeprocs import EdgeStack, loopback_overrides, run_bounded_demo, wait_for

pytestmark = pytest.mark.timeout(150)

TOKEN = "s3cret-token"


def test_mode_switches_between_runs_and_is_refused_during_one(tmp_path: Path) -> None:
    stack = EdgeStack(
        tmp_path,
        [
            "detector.height=128",
            "detector.width=128",
            "geometry.poni1=0.0048",
            "geometry.poni2=0.0048",
            "store.frames_per_file=50",
            'upstream.forward="reduced"',
            "sim.rate_hz=50",
        ],
    )
    url = stack.url
    try:
        stack.start_daemon("--set", f'api.token="{TOKEN}"')
        stack.start("pull")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/api/reduction").json()["mode"] == "powder"
        # writes need the token: none is 401 (the daemon has one configured), a wrong one too
        assert httpx.put(f"{url}/api/reduction", json={"mode": "serial"}).status_code == 401
        wrong = httpx.put(
            f"{url}/api/reduction", json={"mode": "serial"}, headers={"Authorization": "Bearer x"}
        )
        assert wrong.status_code == 401
        bad = httpx.put(f"{url}/api/reduction", json={"mode": "saxs"}, headers=auth)
        assert bad.status_code == 400 and "reduction.mode" in bad.json()["detail"]
        fixed = httpx.put(f"{url}/api/reduction", json={"backend": "numpy"}, headers=auth)
        assert fixed.status_code == 400 and "cannot change while the daemon runs" in fixed.json()["detail"]
        ok = httpx.put(
            f"{url}/api/reduction", json={"mode": "serial", "serial": {"min_peaks": 3}}, headers=auth
        )
        assert (
            ok.status_code == 200 and ok.json()["mode"] == "serial" and ok.json()["serial"]["min_peaks"] == 3
        )
        # during a run the change is refused with the reason, and the run keeps its mode
        run_uid = str(uuid.uuid4())
        sim = stack.start("sim", "--frames", "150", "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
        wait_for(lambda: stack.status()["appliance"]["run_uid"] == run_uid, 30, "the run to open")
        refused = httpx.put(f"{url}/api/reduction", json={"mode": "tomo"}, headers=auth)
        assert refused.status_code == 409 and run_uid in refused.json()["detail"], refused.text
        sim.communicate(timeout=60)
        run = wait_for(
            lambda: (r := stack.run(run_uid))["ended_at"] and not r["where"]["bytes_pending"] and r,
            60,
            "run end",
        )
    finally:
        stack.stop_all()
    where = run["where"]
    assert where["mode"] == "serial" and where["reduction"]["serial"]["min_peaks"] == 3
    assert where["upstream_forward"] == "reduced"
    totals = run["totals"]
    assert totals["frames_stored"] + totals["frames_vetoed"] + totals["frames_lost"] == 150
    local = [f for f in where["files"] if f["local_only"]]
    assert local and all(f["kind"] in ("data", "blank") for f in local)
    assert all("upstream.forward = reduced" in f["why_local"] for f in local)
    assert {f["kind"] for f in where["files"] if not f["local_only"]} == {"reduced", "documents"}
    # the same from the command line, which reads the ledger (works with the daemon down)
    shown = subprocess.run(
        [sys.executable, "-m", "edge", "where", run_uid, *stack.settings_args(), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(shown.stdout)
    assert report["mode"] == "serial" and report["files_local_only"] == len(local)
    text = subprocess.run(
        [sys.executable, "-m", "edge", "where", run_uid, *stack.settings_args()],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "mode: serial" in text and "stay on the appliance" in text


def test_demo_runs_a_mode_and_its_summary_says_what_became_of_every_frame(tmp_path: Path) -> None:
    summary = run_bounded_demo(
        tmp_path,
        90,
        ["--mode", "serial", "--rate", "60"],
        [
            *loopback_overrides(),
            "detector.height=128",
            "detector.width=128",
            "geometry.poni1=0.0048",
            "geometry.poni2=0.0048",
            'store.blanks="drop"',
            'upstream.forward="hits"',
            "reduction.serial.min_peaks=5",
        ],
    )
    assert summary["mode"] == "serial"
    assert summary["frames_stored"] + summary["frames_vetoed"] + summary["frames_lost"] == 90
    assert summary["frames_vetoed"] > 0 and 0.0 < summary["hit_rate"] < 1.0
    assert summary["frames_stored"] == round(summary["hit_rate"] * 90)
    assert summary["bytes_upstream"] > 0 and summary["slices_reconstructed"] == 0
    assert "#token=" in summary["dashboard"]
