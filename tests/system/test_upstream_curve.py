"""CurveZMQ on the upstream link: a consumer with a known key pulls; one without keys gets nothing, and\na known key under another consumer name than its own is refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from edgeprocs import EdgeStack, wait_for

pytestmark = pytest.mark.slow


def test_curve_admits_known_consumers_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("appliance", "hpc"):
        done = subprocess.run(
            [sys.executable, "-m", "edge", "keys", str(keys / name), name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert (keys / name / f"{name}.key_secret").stat().st_mode & 0o777 == 0o600  # its owner's only
    (keys / "clients").mkdir()
    (keys / "clients" / "hpc.key").write_bytes((keys / "hpc" / "hpc.key").read_bytes())
    stack = EdgeStack(
        tmp_path,
        [
            f'upstream.curve_secret_file="{keys / "appliance" / "appliance.key_secret"}"',
            f'upstream.curve_clients_dir="{keys / "clients"}"',
            "sim.rate_hz=100",
            "store.frames_per_file=10",
            "store.file_seconds=600",
            "reduction.bins=50",
        ],
    )
    run_uid = str(uuid.uuid4())
    try:
        stack.start_daemon()
        intruder = stack.start("pull", "--consumer", "intruder", "--output", str(tmp_path / "intruder"))
        sim = stack.start("sim", "--frames", "20", "--run-uid", run_uid, "--json", stdout=subprocess.PIPE)
        sim.communicate(timeout=60)
        wait_for(lambda: stack.status()["ledger"]["files"].get("stored", 0) >= 2, 30, "files stored")
        assert stack.status()["upstream"]["consumers"] == []  # the keyless client never got in
        # and is counted (an outside probe: a client without keys left no trace on the appliance)
        wait_for(
            lambda: stack.status()["upstream"]["curve_handshakes_without_curve"] >= 1, 30, "the keyless count"
        )
        hpc_keys = (
            "--set",
            f'pull.curve_secret_file="{keys / "hpc" / "hpc.key_secret"}"',
            "--set",
            f'pull.curve_server_file="{keys / "appliance" / "appliance.key"}"',
        )
        # hpc's key speaks for hpc only: under another name it is refused
        impostor = stack.start(
            "pull", "--consumer", "mirror", "--output", str(tmp_path / "mirror"), *hpc_keys
        )
        wait_for(lambda: stack.status()["upstream"].get("names_refused_by_key", 0) >= 1, 30, "the refusal")
        impostor.terminate()
        impostor.wait(timeout=30)
        stack.start("pull", *hpc_keys)
        wait_for(
            lambda: all(f["state"] == "verified" for f in stack.run(run_uid)["files"]),
            60,
            "delivery over CURVE",
        )
        assert intruder.poll() is None and not list((tmp_path / "intruder").rglob("*.h5"))
        # a client the appliance never lets in still stops at once when asked (its sends never block)
        intruder.send_signal(signal.SIGINT)
        assert intruder.wait(timeout=10) == 0
        assert [c["consumer"] for c in stack.status()["upstream"]["consumers"]] == ["hpc"]
        assert not list((tmp_path / "mirror").rglob("*.h5"))
    finally:
        stack.stop_all()
    assert len(list((tmp_path / "upstream" / run_uid).glob("*.h5"))) == 2
