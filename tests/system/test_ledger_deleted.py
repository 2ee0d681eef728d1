"""The ledger's file deleted or replaced under a running daemon (an outside probe: no alarm, the daemon
went on writing into the deleted file, and the next start began an empty ledger, every run forgotten)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import zmq
from edgeprocs import in_process_appliance, wait_for

from edge.ledger import Ledger

SHAPE = (16, 16)


def _series(push: zmq.Socket, uid: str, frames: int, series: int) -> None:
    """One JSON v1 series of ``frames`` uint16 frames (docs/wire-formats.md)."""
    config = {"htype": "dconfig-edge-1.0", "shape": [SHAPE[1], SHAPE[0]], "type": "uint16"}
    config |= {"run_uid": uid, "frames_expected": frames}
    push.send_multipart(
        [json.dumps({"htype": "dheader-1.0", "series": series}).encode(), json.dumps(config).encode()]
    )
    for n in range(frames):
        pixels = bytes(2 * SHAPE[0] * SHAPE[1])
        head = {"htype": "dimage-1.0", "series": series, "frame": n, "hash": ""}
        data = {"htype": "dimage_d-1.0", "shape": [SHAPE[1], SHAPE[0]], "type": "uint16", "encoding": "<"}
        data["size"] = len(pixels)
        timing = {"htype": "dconfig-1.0", "start_time": 0, "stop_time": 1, "real_time": 1}
        push.send_multipart(
            [json.dumps(head).encode(), json.dumps(data).encode(), pixels, json.dumps(timing).encode()]
        )
    push.send_multipart([json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()])


def test_a_ledger_deleted_under_the_daemon_is_written_back_with_every_record(tmp_path: Path) -> None:
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, settings):
        _series(push, "before", 3, 1)
        wait_for(
            lambda: appliance.view.run("before")["totals"]["frames_stored"] == 3, 20, "the first run stored"
        )
        path = settings.ledger_path
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            (path.parent / name).unlink(missing_ok=True)
        status = appliance.view.status()
        assert status["store"]["ledger_gone"] is None and status["store"]["ledger_restored"] == 1
        (alarm,) = [a for a in status["alarms"] if a["id"] == "condition:ledger_restored"]
        assert alarm["severity"] == "minor"
        _series(push, "after", 2, 2)  # and the records go on into the file written back
        wait_for(
            lambda: appliance.view.run("after")["totals"]["frames_stored"] == 2, 20, "the second run stored"
        )
        reader = Ledger(path, read_only=True)
        try:
            assert {r["run_uid"] for r in reader.runs()} == {"before", "after"}
            assert reader.run_totals("after")["frames_stored"] == 2
        finally:
            reader.close()


def test_another_file_put_in_the_ledgers_place_is_a_major_alarm_and_left_alone(tmp_path: Path) -> None:
    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, settings):
        path = settings.ledger_path
        path.unlink()
        path.write_bytes(b"someone else's file")
        time.sleep(0.01)
        status = appliance.view.status()
        assert status["store"]["ledger_gone"] == "replaced by another file"
        (alarm,) = [a for a in status["alarms"] if a["id"] == "condition:ledger"]
        assert alarm["severity"] == "major" and "replaced by another file" in alarm["message"]
        assert path.read_bytes() == b"someone else's file"
        _series(push, "kept", 2, 1)
        wait_for(lambda: appliance.view.run("kept")["totals"]["frames_stored"] == 2, 20, "a run stored")
    # stopped: the records it wrote are kept beside the other file, not dropped with the open ledger
    assert path.read_bytes() == b"someone else's file"
    reader = Ledger(path.with_name(path.name + ".open-copy"), read_only=True)
    try:
        assert reader.run_totals("kept")["frames_stored"] == 2
    finally:
        reader.close()
