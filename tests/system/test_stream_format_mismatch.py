"""A sender and a daemon set to different ``stream.format``s: the daemon logs it and raises its alarm.

An outside tester ran the daemon with ``stream.format = "stream2"`` and ``edge sim --frames 50`` with the
default JSON format: 51 messages were counted in ``messages_multipart_rejected`` (every multipart message
of the series; its single-part end is ``malformed_cbor``), yet nothing was logged and the
``condition:receiver`` alarm counted only the end message. The reverse mismatch (Stream V2 into a JSON
daemon) was logged and alarmed. Both real processes, the simulator's real ZeroMQ PUSH into the daemon's
real receiver.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from edgeprocs import EdgeStack, wait_for

FRAMES = 50


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_json_multipart_sender_into_a_stream2_daemon_is_logged_and_raises_the_receiver_alarm(
    tmp_path: Path,
) -> None:
    stack = EdgeStack(tmp_path, ["detector.height=48", "detector.width=64"])
    log = tmp_path / "daemon.log"
    try:
        with open(log, "w") as sink:
            stack.start_daemon("--set", 'stream.format="stream2"', stderr=sink)
        # the simulator on the default stream.format, json
        sim = stack.start(
            "sim", "--frames", str(FRAMES), "--rate", "200", "--json",
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = sim.communicate(timeout=120)
        assert sim.returncode == 0 and json.loads(out.strip().splitlines()[-1])["frames_sent"] == FRAMES

        def all_rejected() -> int:
            count = int(stack.status()["receiver"].get("messages_multipart_rejected", 0))
            return count if count >= FRAMES + 1 else 0  # the series start and every image

        rejected = wait_for(all_rejected, 30, "the simulator's multipart messages to be rejected")
        status = stack.status()
        assert status["receiver"].get("frames_received", 0) == 0
        (alarm,) = [a for a in status["alarms"] if a["id"] == "condition:receiver"]
        assert f"multipart {rejected}" in alarm["message"], alarm
        assert "check stream.format" in alarm["message"]
    finally:
        stack.stop_all()
    lines = [line for line in log.read_text().splitlines() if "multipart message(s)" in line]
    # logged once (the first; then every 100th), saying what to check
    assert len(lines) == 1, lines
    assert "JSON multipart format into this Stream V2 receiver" in lines[0]
    assert "check stream.format on both sides" in lines[0]
