"""sd_notify by hand and the progress watchdog: datagrams on a socket the test binds, decisions on a
clock the test moves (no sleeps)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_settings
from edge.logs import LogSetup
from edge.service import (
    Notifier,
    ProgressWatchdog,
    ServiceReporter,
    apply_reload,
    changed_keys,
    notify_address,
    watchdog_interval,
)


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_reaches_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with _receiver(str(path)) as sock:
        notifier = Notifier(str(path))
        assert notifier.send("READY=1", "STATUS=hello")
        assert sock.recv(4096) == b"READY=1\nSTATUS=hello"
        notifier.close()


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"@edge-test-{uuid.uuid4()}"
    assert notify_address(name) == b"\0" + name[1:].encode()
    with _receiver(notify_address(name)) as sock:
        notifier = Notifier(name)
        assert notifier.send("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_without_a_service_manager_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.send("READY=1")


def test_a_vanished_manager_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert not notifier.send("READY=1")
    notifier.close()


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, pid=2) is None  # not ours
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def _live(pending: int, progress: int, **threads: str) -> dict[str, Any]:
    return {
        "pending": pending,
        "progress": progress,
        "threads": {name: {"state": state, "restarts": 0} for name, state in threads.items()},
    }


def test_pending_work_without_progress_for_half_the_interval_is_a_stall() -> None:
    dog = ProgressWatchdog(stall_after=5.0)
    assert dog.assess(_live(3, 10), now=0.0).healthy
    assert dog.assess(_live(3, 12), now=4.0).healthy  # progress at t=4
    assert dog.assess(_live(3, 12), now=8.9).healthy  # 4.9 s without progress
    verdict = dog.assess(_live(3, 12), now=9.0)
    assert not verdict.healthy and "stalled: 3 pending" in verdict.reason
    assert dog.assess(_live(3, 13), now=9.5).healthy  # progress again: healthy at once


def test_an_idle_appliance_is_healthy_and_a_new_backlog_is_timed_from_the_last_idle_look() -> None:
    dog = ProgressWatchdog(stall_after=5.0)
    for t in range(101):  # nothing pending, nothing moving: idle, not stalled
        assert dog.assess(_live(0, 7), now=float(t)).healthy
    assert dog.assess(_live(2, 7), now=101.0).healthy  # frames arrived since the look at t=100
    assert dog.assess(_live(2, 7), now=104.9).healthy
    assert not dog.assess(_live(2, 7), now=105.0).healthy


def test_a_dead_thread_withholds_the_watchdog_even_while_idle() -> None:
    dog = ProgressWatchdog(stall_after=5.0)
    assert dog.assess(_live(0, 1, reader="running", pipeline="restarting"), now=0.0).healthy
    verdict = dog.assess(_live(0, 1, reader="dead", pipeline="running"), now=1.0)
    assert not verdict.healthy and "reader" in verdict.reason


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Recorded(Notifier):
    def __init__(self) -> None:
        super().__init__("@recorded")
        self.sent: list[str] = []

    def send(self, *lines: str) -> bool:
        self.sent.extend(lines)
        return True


def test_reporter_sends_ready_once_then_status_and_watchdog_only_while_healthy() -> None:
    clock = _Clock()
    state = {"ready": False, "live": _live(0, 0, reader="running")}
    status = {"frames": {"received": 0, "stored": 0, "delivered": 0, "lost": 0}}
    notifier = _Recorded()
    reporter = ServiceReporter(
        notifier,
        liveness=lambda: state["live"],
        status=lambda: status,
        ready=lambda: state["ready"],
        interval=4.0,
        clock=clock,
    )
    assert reporter.tick() == []  # not every stage runs yet: nothing, not even a watchdog
    state["ready"] = True
    sent = reporter.tick()
    assert sent[0] == "READY=1" and "WATCHDOG=1" in sent
    # 20 frames/s received; none stored yet (they reach the ledger a file at a time): the rate is 20
    clock.now, status["frames"]["received"] = 2.0, 40
    state["live"] = _live(5, 40, reader="running")
    sent = reporter.tick()
    assert "READY=1" not in sent and "WATCHDOG=1" in sent
    assert any(line.startswith("STATUS=20.0 frames/s, backlog 5, stored 0") for line in sent), sent
    clock.now = 4.0  # still 5 pending, no progress for 2 s = half the interval: stalled
    sent = reporter.tick()
    assert "WATCHDOG=1" not in sent
    assert any(line.startswith("STATUS=stalled: 5 pending") for line in sent), sent
    clock.now, state["live"] = 6.0, _live(4, 41, reader="running")
    assert "WATCHDOG=1" in reporter.tick()


def test_reporter_withholds_the_watchdog_when_liveness_itself_fails() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("ledger closed")

    reporter = ServiceReporter(_Recorded(), liveness=broken, interval=4.0, clock=_Clock())
    sent = reporter.tick()
    assert "WATCHDOG=1" not in sent and any("liveness unavailable" in line for line in sent)


def test_reporter_without_watchdog_reports_status_only() -> None:
    reporter = ServiceReporter(_Recorded(), liveness=lambda: _live(0, 0), interval=None, clock=_Clock())
    sent = reporter.tick()
    assert sent[0] == "READY=1" and "WATCHDOG=1" not in sent


def test_changed_keys_names_every_differing_leaf() -> None:
    old = {"a": {"b": 1, "c": 2}, "d": 3}
    new = {"a": {"b": 1, "c": 5}, "d": 4}
    assert changed_keys(old, new) == ["a.c", "d"]


class _Appliance:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.retention = type("R", (), {"settings": settings.retention})()


def test_reload_applies_retention_and_logging_and_names_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    old = load_settings(overrides=["retention.max_age_seconds=0"])
    new = load_settings(
        overrides=[
            "retention.max_age_seconds=60",
            'log.level="DEBUG"',
            'log.format="json"',
            "ring.slots=8",
            'pull.output="/elsewhere"',
            "sim.frames=7",
        ]
    )
    appliance = _Appliance(old)
    setup = LogSetup(stream=open(os.devnull, "w"))  # noqa: SIM115 - closed below
    root_level = logging.getLogger().level
    try:
        with caplog.at_level("INFO", logger="edge.service"):
            applied = apply_reload(appliance, new, setup)
    finally:
        setup.handler.stream.close()
        logging.getLogger().setLevel(root_level)
    assert applied == ["log.format", "log.level", "retention.max_age_seconds"]
    assert appliance.retention.settings.max_age_seconds == 60
    assert (setup.level, setup.format) == ("DEBUG", "json")
    assert appliance.settings.ring.slots == old.ring.slots  # the ring is not rebuilt while running
    assert "not reloaded (restart to apply): ring.slots\n" in caplog.text + "\n"
    # the simulator's and the pull client's keys are theirs: no daemon restart applies them
    assert (
        "changed, not the daemon's (edge pull and edge sim read them): pull.output, sim.frames" in caplog.text
    )


def test_the_edge_command_catches_the_signals_before_its_heavy_imports() -> None:
    """Outside probes: a SIGHUP in ``edge run``'s first seconds killed it (exit 129), a SIGTERM exited 143,
    not 0; the handlers came with ``edge.cli``, after 0.6 s of imports. The command's entry point notes
    them first (the daemon acts on them once started), importing nothing heavy."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.argv = ['edge', 'run', '--help']\n"
        "import signal, edge.early_signals as e\n"
        "heavy = [m for m in ('edge.cli', 'edge.config', 'pydantic', 'numpy') if m in sys.modules]\n"
        "e.catch()\n"
        "import os\n"
        "os.kill(os.getpid(), signal.SIGHUP)\n"
        "print(heavy, e.NOTED)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[] [{int(signal.SIGHUP)}]"
