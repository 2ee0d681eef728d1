"""Data-plane threads that never die quietly.

Every long-running thread of the appliance (reader, pipeline stages, forwarder, retention) is started
through `Supervisor.spawn`. Its work function is called with a ``checkpoint`` it calls once per loop
(cheap: a counter). An unexpected exception is logged with its traceback, counted, reported through
``on_error`` (an alarm the views show) and the work is started again after a short backoff, up to
``max_restarts`` times; after that the thread is ``dead`` and ``on_exhausted`` tells the daemon to exit
non-zero so the service manager restarts it. Every thread's state is in `states` (``/api/status``,
the watchdog).

For tests, ``inject`` (``supervision.inject_error = "NAME:N"``) raises `InjectedFault` at thread NAME's
Nth checkpoint, once: a real exception inside the real loop; ``"NAME:N:hang"`` blocks the thread there
instead (alive, no error, no progress) until the daemon stops: a wedged data plane for the watchdog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Checkpoint = Callable[[], None]
Work = Callable[[Checkpoint], None]


class InjectedFault(RuntimeError):
    """Raised on purpose by a checkpoint (``supervision.inject_error``), to test supervision."""


def parse_injection(text: str) -> tuple[str, int, str] | None:
    """``"NAME:N"`` -> (NAME, N, "error"); ``"NAME:N:hang"`` -> (NAME, N, "hang"); empty -> None."""
    if not text:
        return None
    name, _, rest = text.partition(":")
    count, _, kind = rest.partition(":")
    return name.strip(), max(1, int(count or 1)), (kind or "error")


@dataclass
class ThreadRecord:
    """One supervised thread's state, as the views show it."""

    name: str
    state: str = "starting"  # running, restarting, stopped (returned), dead (out of restarts)
    restarts: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    checkpoints: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


class Supervisor:
    """Starts supervised threads; see the module docstring."""

    def __init__(
        self,
        *,
        max_restarts: int = 3,
        backoff_seconds: float = 0.5,
        on_error: Callable[[str, BaseException], None] | None = None,
        on_exhausted: Callable[[str, BaseException], None] | None = None,
        inject: tuple[str, int, str] | None = None,
    ) -> None:
        self.max_restarts = max_restarts
        self.backoff_seconds = backoff_seconds
        self.on_error = on_error
        self.on_exhausted = on_exhausted
        self._inject = inject
        self._lock = threading.Lock()
        self._records: dict[str, ThreadRecord] = {}
        self._stopping = threading.Event()

    def spawn(self, name: str, work: Work) -> threading.Thread:
        """Start ``work(checkpoint)`` on a daemon thread named ``name``, supervised."""
        record = ThreadRecord(name)
        with self._lock:
            self._records[name] = record
        thread = threading.Thread(target=self._supervise, args=(record, work), name=name, daemon=True)
        record.thread = thread
        thread.start()
        return thread

    def stopping(self) -> None:
        """The daemon is stopping: threads that return now are ``stopped``; none is restarted."""
        self._stopping.set()

    def states(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: record.view() for name, record in self._records.items()}

    def healthy(self) -> bool:
        """No thread is dead or between restarts."""
        with self._lock:
            return all(r.state in ("running", "stopped", "starting") for r in self._records.values())

    # -- the wrapper each thread runs ---------------------------------------------------------------------
    def _checkpoint(self, record: ThreadRecord) -> Checkpoint:
        def checkpoint() -> None:
            record.checkpoints += 1
            inject = self._inject
            if inject is not None and inject[0] == record.name and record.checkpoints >= inject[1]:
                self._inject = None
                if inject[2] == "hang":  # a wedged thread: alive, no error, no progress, until stopping
                    log.warning("thread %s hangs on purpose (supervision.inject_error)", record.name)
                    self._stopping.wait()
                    return
                raise InjectedFault(f"injected error in thread {record.name} (supervision.inject_error)")

        return checkpoint

    def _supervise(self, record: ThreadRecord, work: Work) -> None:
        while True:
            record.state = "running"
            try:
                work(self._checkpoint(record))
            except Exception as error:
                record.errors += 1
                record.last_error = repr(error)[:300]
                record.last_error_at = time.time()
                log.error("thread %s failed: %r", record.name, error, exc_info=error)
                self._report(self.on_error, record.name, error)
                if self._stopping.is_set():
                    record.state = "stopped"
                    return
                if record.restarts >= self.max_restarts:
                    record.state = "dead"
                    log.critical(
                        "thread %s failed %d times (restarts exhausted): the daemon must restart",
                        record.name,
                        record.errors,
                    )
                    self._report(self.on_exhausted, record.name, error)
                    return
                record.restarts += 1
                record.state = "restarting"
                log.warning(
                    "restarting thread %s (%d of %d)", record.name, record.restarts, self.max_restarts
                )
                if self._stopping.wait(self.backoff_seconds):
                    record.state = "stopped"
                    return
                continue
            record.state = "stopped"
            return

    @staticmethod
    def _report(
        callback: Callable[[str, BaseException], None] | None, name: str, error: BaseException
    ) -> None:
        if callback is None:
            return
        try:
            callback(name, error)
        except Exception:  # a report must not kill the supervisor
            log.exception("reporting the failure of thread %s failed", name)
