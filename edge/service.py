"""Telling the service manager how the appliance is: sd_notify by hand, and a watchdog fed by progress.

systemd (``Type=notify``) passes ``NOTIFY_SOCKET``, a unix datagram socket (a leading ``@`` means the
abstract namespace); each datagram is newline-separated ``KEY=VALUE`` lines. We send ``READY=1`` once
every stage runs, ``STATUS=`` lines with rate and backlog, ``RELOADING=1``/``STOPPING=1`` around a
reload and a stop, and ``WATCHDOG=1`` only while the data plane is healthy. With ``WatchdogSec=`` set,
systemd passes ``WATCHDOG_USEC`` and restarts a service that stays silent that long.

Healthy means: no data-plane thread is dead (out of restarts), and work that is pending (frames in the
ring or pipeline, chunks awaiting upstream) has made progress (a frame persisted, a chunk acknowledged)
within half the watchdog interval. An idle appliance with nothing pending is healthy. The decision is
pure (:class:`ProgressWatchdog`, the clock passed in); :class:`ServiceReporter` is the thin thread that
asks the appliance and speaks to the socket.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

STATUS_PERIOD = 2.0  # seconds between STATUS lines (and watchdog checks when the interval is long)


def notify_address(value: str) -> str | bytes:
    """The ``AF_UNIX`` address ``NOTIFY_SOCKET`` names: a path, or an abstract name for ``@name``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify datagrams; does nothing when the process was not started by a service manager."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; False (and a debug line) if it could not be sent."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, notify_address(self.address))
            except OSError as error:  # the manager went away: the service goes on, unmanaged
                log.debug("sd_notify %r failed: %s", lines, error)
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds systemd allows between ``WATCHDOG=1``, or None when no watchdog is asked of this process."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and int(owner) != (os.getpid() if pid is None else pid):
        return None  # meant for another process (our parent passed its environment on)
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str = ""


class ProgressWatchdog:
    """Decides, from the appliance's liveness report, whether it may tell systemd it is alive.

    ``liveness`` is ``{"pending": int, "progress": int, "threads": {name: {"state", "restarts"}}}``:
    ``progress`` grows whenever a frame is persisted or a chunk acknowledged. Pending work with no
    progress for ``stall_after`` seconds (half the watchdog interval) is a stall; so is a dead thread.
    """

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._progress: int | None = None
        self._since = 0.0  # when progress last moved, or the appliance was last idle

    def assess(self, liveness: Mapping[str, Any], now: float) -> Verdict:
        threads = liveness.get("threads") or {}
        dead = sorted(name for name, info in threads.items() if info.get("state") == "dead")
        pending = int(liveness.get("pending", 0))
        progress = int(liveness.get("progress", 0))
        if self._progress is None or progress != self._progress or pending == 0:
            self._progress = progress
            self._since = now
        if dead:
            return Verdict(False, f"data-plane thread dead: {', '.join(dead)}")
        stalled_for = now - self._since
        if pending > 0 and stalled_for >= self.stall_after:
            return Verdict(False, f"stalled: {pending} pending, no progress for {stalled_for:.1f} s")
        return Verdict(True)


class StatusLine:
    """``STATUS=`` text: the receiving rate since the last line, the backlog, the totals. The rate counts
    frames received, one by one: stored frames reach the ledger a whole file at a time, so a rate of them
    read 0 between files and a burst when one closed."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def render(self, status: Mapping[str, Any] | None, liveness: Mapping[str, Any], now: float) -> str:
        parts = []
        frames = (status or {}).get("frames") or {}
        received = frames.get("received")
        if received is not None:
            rate = 0.0
            if self._last is not None and now > self._last[0]:
                rate = max(0, int(received) - self._last[1]) / (now - self._last[0])
            self._last = (now, int(received))
            parts.append(f"{rate:.1f} frames/s")
        parts.append(f"backlog {int(liveness.get('pending', 0))}")
        if liveness.get("held_back"):
            parts.append(f"held back: {liveness['held_back']}")
        for key in ("stored", "delivered", "lost"):
            if key in frames:
                parts.append(f"{key} {int(frames[key])}")
        return ", ".join(parts)


class ServiceReporter:
    """The thread that reports to systemd: READY once ``ready()``, then STATUS and WATCHDOG periodically.

    ``liveness`` and ``status`` are the appliance's views (plain callables); ``ready`` says every stage
    runs (the API is serving). Without ``NOTIFY_SOCKET`` it does nothing and starts no thread.
    """

    def __init__(
        self,
        notifier: Notifier,
        liveness: Callable[[], Mapping[str, Any]],
        status: Callable[[], Mapping[str, Any]] | None = None,
        ready: Callable[[], bool] = lambda: True,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.liveness = liveness
        self.status = status
        self.ready = ready
        self.interval = interval
        self.clock = clock
        self.watchdog = ProgressWatchdog(interval / 2) if interval else None
        self.period = min(STATUS_PERIOD, interval / 2) if interval else STATUS_PERIOD
        self.line = StatusLine()
        self.is_ready = False
        self.last_verdict = Verdict(True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[str]:
        """One round: READY when first ready, a STATUS line, WATCHDOG=1 if healthy. Returns what was sent."""
        now = self.clock()
        if not self.is_ready:
            if not self.ready():
                return []
            self.is_ready = True
            self.notifier.send("READY=1", f"MAINPID={os.getpid()}")
            sent = ["READY=1"]
        else:
            sent = []
        try:
            liveness = self.liveness()
        except Exception as error:  # the view itself failed: we cannot vouch for the data plane
            verdict = Verdict(False, f"liveness unavailable: {error}")
            liveness = {}
        else:
            verdict = self.watchdog.assess(liveness, now) if self.watchdog else Verdict(True)
        try:
            status = self.status() if self.status is not None else None
        except Exception:  # a STATUS line without totals is still a STATUS line
            status = None
        text = self.line.render(status, liveness, now)
        if not verdict.healthy:
            text = f"{verdict.reason}; {text}"
        if verdict != self.last_verdict:
            if verdict.healthy:
                log.info("data plane healthy again; watchdog resumed")
            else:
                log.error("%s; watchdog withheld (systemd restarts the service if it lasts)", verdict.reason)
        self.last_verdict = verdict
        self.notifier.send(f"STATUS={text}")
        sent.append(f"STATUS={text}")
        if self.watchdog is not None and verdict.healthy:
            self.notifier.send("WATCHDOG=1")
            sent.append("WATCHDOG=1")
        return sent

    def start(self) -> None:
        if not self.notifier.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="sd-notify", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # pragma: no cover - a bug here must not take the daemon down
                log.exception("service report failed")
            if self._stop.wait(self.period if self.is_ready else 0.1):
                return

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def reloaded(self, what: str) -> None:
        self.notifier.send("READY=1", f"STATUS=reloaded: {what}")

    def stopping(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.notifier.send("STOPPING=1", "STATUS=stopping: closing files and the ledger")


# -- SIGHUP: reload what can change while running -------------------------------------------------------
RELOADABLE = ("retention", "log")  # sections applied in place; everything else needs a restart
#: sections the daemon never reads (`edge sim`'s and `edge pull`'s, sharing the settings file): a change
#: there is theirs, and a restart of the daemon would not apply it either
OTHER_PROGRAMS = {"sim": "edge sim", "pull": "edge pull"}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``model_dump()`` trees."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def apply_reload(appliance: Any, new: Any, log_setup: Any) -> list[str]:
    """Apply the reloadable sections of ``new`` to a running appliance; log what was not reloaded.

    Retention takes effect at its next pass; ``log.level`` and ``log.format`` at once. Any other
    changed key (ports, paths, the ring, reduction) is named in a warning: it needs a restart.
    """
    old = appliance.settings
    keys = changed_keys(old.model_dump(mode="json"), new.model_dump(mode="json"))
    applied = [key for key in keys if key.split(".")[0] in RELOADABLE]
    theirs = [key for key in keys if key.split(".")[0] in OTHER_PROGRAMS]
    ignored = [key for key in keys if key.split(".")[0] not in (*RELOADABLE, *OTHER_PROGRAMS)]
    if any(key.startswith("retention.") for key in applied):
        appliance.retention.settings = new.retention
    log_setup.reconfigure(new.log.level, new.log.format)
    appliance.settings = old.model_copy(update={section: getattr(new, section) for section in RELOADABLE})
    if applied:
        log.info("reloaded: %s", ", ".join(applied))
    else:
        log.info("reload: no reloadable setting changed")
    if ignored:
        log.warning("not reloaded (restart to apply): %s", ", ".join(ignored))
    if theirs:  # (an outside probe was told to restart the daemon for pull.output)
        programs = sorted({OTHER_PROGRAMS[key.split(".")[0]] for key in theirs})
        log.info("changed, not the daemon's (%s read them): %s", " and ".join(programs), ", ".join(theirs))
    return applied
