"""Logging as settings: text or JSON lines, repeated events summed, no traceback for an expected refusal.

Every ``edge`` process calls :func:`configure` once with ``log.level`` and ``log.format``; SIGHUP calls
:meth:`LogSetup.reconfigure` with new values. Two things keep the log readable for an operator:

- a loss is logged with ``extra={"lost_frames": n, "reason": why}`` and is never printed on its own:
  :class:`RepeatSummary` sums losses and prints one line per window, "lost 37 frames in 1 s
  (frame_number_gap: 30, ring_full: 7)" (the detail of each loss is in the ledger). Any other warning
  repeated more than ``burst`` times in a window is shown ``burst`` times and then counted;
- an exception that is an expected refusal (:class:`edge.errors.Refused`, :class:`ConfigError`) is
  logged as its message, without a traceback.

JSON lines (``log.format = "json"``) carry the time, level, logger, message, thread and any ``extra``
fields, one object per line, for journald or an ELK pipeline.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from edge.errors import ConfigError, Refused
from edge.ledger import NOT_ACQUIRED_REASONS, PARTIAL_LOSS_REASONS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXPECTED_REFUSALS: tuple[type[BaseException], ...] = (Refused, ConfigError)
# attributes every LogRecord has; anything else on a record came from ``extra=`` and goes into JSON
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def lost(first: int, last: int, reason: str) -> dict[str, Any]:
    """``extra=`` for a loss warning: :class:`RepeatSummary` sums it into the per-window line."""
    return {"lost_frames": last - first + 1, "reason": reason}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, thread, extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format {fmt!r}: text or json")


class RepeatSummary(logging.Filter):
    """Sums losses and repeated warnings per window instead of passing each one on.

    Pure bookkeeping with the clock passed in: :meth:`filter` decides per record, :meth:`flush` returns
    the summary records of the window that just ended (a :class:`LogSetup` thread calls it).
    """

    def __init__(self, window: float = 1.0, burst: int = 3, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._losses: Counter[str] = Counter()
        self._losses_since: float | None = None
        self._seen: Counter[tuple[str, str]] = Counter()  # (logger, message template) -> count this window
        self._held: dict[tuple[str, str], _Held] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_edge_summary", False) or getattr(record, "each", False):
            return True  # (``extra={"each": True}``: a line that must never be summed, e.g. a record lost)
        _drop_expected_traceback(record)
        lost = getattr(record, "lost_frames", None)
        if lost is not None:
            with self._lock:
                if self._losses_since is None:
                    self._losses_since = self.clock()
                self._losses[str(getattr(record, "reason", "unknown"))] += int(lost)
            return False
        if record.levelno < logging.WARNING or record.exc_info:
            return True
        key = (record.name, str(record.msg))
        with self._lock:
            self._seen[key] += 1
            if self._seen[key] <= self.burst:
                return True
            held = self._held.get(key)
            if held is None:
                self._held[key] = _Held(record, self.clock(), 1)
            else:
                held.last, held.count = record, held.count + 1
        return False

    def flush(self) -> list[logging.LogRecord]:
        """Summary records for what was held back since the last flush; resets the window."""
        now = self.clock()
        with self._lock:
            losses, since, held = self._losses, self._losses_since, self._held
            self._losses, self._losses_since = Counter(), None
            self._seen, self._held = Counter(), {}
        out: list[logging.LogRecord] = []
        if losses:
            out.append(_loss_summary(losses, _seconds(now - (now if since is None else since))))
        for (name, _template), item in held.items():
            # the held lines share their template, not their words: the last is shown, named so
            message = (
                f"{item.last.getMessage()} (the last of {item.count} more lines like"
                f" {_template_text(str(item.last.msg))!r} in {_seconds(now - item.since)} s)"
            )
            out.append(_summary(name, item.last.levelno, message, repeated=item.count))
        return out


_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[a-zA-Z%]")


def _template_text(template: str) -> str:
    """A logging template as a reader sees the shared shape of its lines: each ``%s``/``%g``/``%d``
    (what differs from line to line) as ``…``, ``%%`` as ``%`` (an outside probe read "retired %s
    (never forwarded, older than ... = %g)" in journalctl as an unfinished line)."""
    return _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else "…", template)


#: Loss records a restart writes for the frames of the runs a crash interrupted that are in no file:
#: lost for sure only if the detector's series does not go on; a resumed series' new run takes back
#: those it still receives (`edge.recovery.resume_interrupted` logs how many, and the run's count then)
PROVISIONAL_LOSS_REASONS = ("daemon_crash",)


def _loss_summary(losses: Counter[str], seconds: str) -> logging.LogRecord:
    """ "lost 37 frames in 1 s (frame_number_gap: 30, ring_full: 7), 5 incomplete (incomplete_frame: 5)"."""
    aside = PARTIAL_LOSS_REASONS + NOT_ACQUIRED_REASONS + PROVISIONAL_LOSS_REASONS
    whole = Counter({r: n for r, n in losses.items() if r not in aside})
    partial = Counter({r: n for r, n in losses.items() if r in PARTIAL_LOSS_REASONS})
    never = Counter({r: n for r, n in losses.items() if r in NOT_ACQUIRED_REASONS})
    provisional = Counter({r: n for r, n in losses.items() if r in PROVISIONAL_LOSS_REASONS})
    parts = []
    if whole:
        total = sum(whole.values())
        parts.append(f"lost {total} frame{'s' if total != 1 else ''} in {seconds} s ({_reasons(whole)})")
    if provisional:
        total = sum(provisional.values())
        text = (
            f"{total} recorded lost for now ({_reasons(provisional)}: frames of runs the crash interrupted,"
            " in no file; a series the detector goes on with resumes in a new run that takes back those it"
            " still receives, and the log then says how many and what stays lost)"
        )
        parts.append(text if parts else f"{text} in {seconds} s")
    if partial:
        total = sum(partial.values())
        text = f"{total} incomplete (pixels missing, frames kept) ({_reasons(partial)})"
        parts.append(text if parts else f"{text} in {seconds} s")
    if never:
        total = sum(never.values())
        text = f"{total} not acquired (the detector never took them: {_reasons(never)})"
        parts.append(text if parts else f"{text} in {seconds} s")
    return _summary(
        "edge.losses",
        logging.WARNING,
        ", ".join(parts),
        lost_frames_total=sum(whole.values()),
        provisional_lost_frames_total=sum(provisional.values()),
        incomplete_frames_total=sum(partial.values()),
        reasons=dict(losses),
    )


def _reasons(counts: Counter[str]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counts.most_common())


class _Held:
    __slots__ = ("count", "last", "since")

    def __init__(self, last: logging.LogRecord, since: float, count: int) -> None:
        self.last, self.since, self.count = last, since, count


def _seconds(span: float) -> str:
    return f"{max(1, round(span))}"


def _summary(name: str, level: int, message: str, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 0, message, None, None)
    record._edge_summary = True
    record.__dict__.update(fields)
    return record


def _drop_expected_traceback(record: logging.LogRecord) -> None:
    """An expected refusal says why in one line; a traceback would read as a crash."""
    if not record.exc_info or not isinstance(record.exc_info[1], EXPECTED_REFUSALS):
        return
    error = record.exc_info[1]
    record.msg = f"{record.getMessage()}: {error}"
    record.args = None
    record.exc_info = None
    record.exc_text = None


class LogSetup:
    """The handler this process logs through, its summary filter and the thread that flushes it."""

    def __init__(self, stream: TextIO, window: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.handler = logging.StreamHandler(stream)
        self.summary = RepeatSummary(window=window, clock=clock)
        self.handler.addFilter(self.summary)
        self.level = "INFO"
        self.format = "text"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconfigure(self, level: str, fmt: str) -> list[str]:
        """Apply a level and a format; returns what changed, e.g. ``["log.level: INFO -> DEBUG"]``."""
        changed = []
        if level != self.level:
            changed.append(f"log.level: {self.level} -> {level}")
        if fmt != self.format:
            changed.append(f"log.format: {self.format} -> {fmt}")
        self.handler.setFormatter(make_formatter(fmt))
        logging.getLogger().setLevel(level)
        self.level, self.format = level, fmt
        return changed

    def emit_summaries(self) -> None:
        for record in self.summary.flush():
            if record.levelno >= logging.getLogger().level:
                self.handler.handle(record)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._flush_loop, name="log-summary", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.summary.window):
            self.emit_summaries()

    def close(self) -> None:
        self._stop.set()
        self.emit_summaries()
        self.handler.flush()


_current: LogSetup | None = None


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> LogSetup:
    """Route the root logger through one handler with the summary filter; call once per process."""
    global _current
    root = logging.getLogger()
    if _current is not None:
        root.removeHandler(_current.handler)
        _current.close()
    setup = LogSetup(stream if stream is not None else sys.stderr)
    setup.reconfigure(level, fmt)
    root.addHandler(setup.handler)
    setup.start()
    _current = setup
    sys.unraisablehook = _unraisable
    return setup


_unraisable_count = 0


def _unraisable(unraisable: Any) -> None:
    """An exception Python cannot raise (in a destructor, e.g. h5py releasing an object on a full disk:
    "Exception ignored in ... ObjectID.__dealloc__ ... errno 28") becomes one log line, the first and
    then every 100th (the traceback at DEBUG), instead of a traceback on stderr that reads as a crash (an
    outside probe counted several per full disk)."""
    global _unraisable_count
    _unraisable_count += 1
    if _unraisable_count > 1 and _unraisable_count % 100:
        return
    error = unraisable.exc_value
    where = unraisable.err_msg or "Exception ignored in"
    log = logging.getLogger("edge.unraisable")
    log.warning(
        "%s %.200r: %s: %s (%d such so far; logged the first, then every 100th)",
        where,
        unraisable.object,
        type(error).__name__ if error is not None else unraisable.exc_type.__name__,
        error,
        _unraisable_count,
        exc_info=(unraisable.exc_type, error, unraisable.exc_traceback)
        if log.isEnabledFor(logging.DEBUG)
        else None,
    )
