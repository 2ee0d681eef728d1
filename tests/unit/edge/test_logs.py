"""Logs an operator can act on: losses summed per window, repeats counted, JSON lines, refusals
without a traceback. The summary filter runs on a clock the test moves."""

from __future__ import annotations

import io
import json
import logging

import pytest

from edge.errors import Refused
from edge.logs import JsonFormatter, LogSetup, RepeatSummary, lost


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> tuple[logging.Logger, io.StringIO, LogSetup, _Clock]:
    clock = _Clock()
    stream = io.StringIO()
    setup = LogSetup(stream, clock=clock)
    setup.reconfigure("INFO", "text")
    logger = logging.getLogger("edge.test_logs")
    logger.propagate = False
    logger.addHandler(setup.handler)
    root_level = logging.getLogger().level
    yield logger, stream, setup, clock
    logger.removeHandler(setup.handler)
    logger.propagate = True
    logging.getLogger().setLevel(root_level)


def test_losses_become_one_line_per_window_with_reasons(logged) -> None:
    logger, stream, setup, clock = logged
    for frame in range(30):
        logger.warning(
            "frames %d..%d lost: %s",
            frame,
            frame,
            "frame_number_gap",
            extra=lost(frame, frame, "frame_number_gap"),
        )
    logger.warning("frames %d..%d lost: %s", 40, 46, "ring_full", extra=lost(40, 46, "ring_full"))
    assert stream.getvalue() == ""  # nothing one by one
    clock.now = 1.0
    setup.emit_summaries()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("lost 37 frames in 1 s (frame_number_gap: 30, ring_full: 7)")
    setup.emit_summaries()  # a quiet window says nothing
    assert len(stream.getvalue().splitlines()) == 1


def test_a_repeated_warning_is_shown_a_few_times_then_counted(logged) -> None:
    logger, stream, setup, clock = logged
    for n in range(10):
        logger.warning("rejected stream message: %s", f"corrupt {n}")
    logger.warning("something else")
    assert len(stream.getvalue().splitlines()) == 4  # three of the repeats, and the other one
    clock.now = 2.0
    setup.emit_summaries()
    last = stream.getvalue().splitlines()[-1]
    # an outside probe: "bad_field frame=-1 (and 14 more like it)" held 14 lines of other reasons; the
    # summary says the 7 share the log line, and shows the last of them
    assert (
        "rejected stream message: corrupt 9 (the last of 7 more lines like 'rejected stream message: …' in 2 s)"
        in last
    )
    logger.warning("rejected stream message: %s", "again")  # a new window shows it again
    assert stream.getvalue().splitlines()[-1].endswith("rejected stream message: again")


def test_a_line_marked_each_is_never_summed(logged) -> None:
    """An outside chaos probe: of the records a stop could not write, the fourth "not written" line was
    held by the summary and came after "stopped", as "(the last of 1 more lines like 'not written:
    %s%r')". Lines marked ``each`` all go, at once."""
    logger, stream, _setup, _clock = logged
    for n in range(6):
        logger.error("not written: %s%r", "record_loss", (str(n),), extra={"each": True})
    assert len(stream.getvalue().splitlines()) == 6


def test_an_expected_refusal_has_no_traceback_but_a_bug_does(logged) -> None:
    logger, stream, _setup, _clock = logged
    try:
        raise Refused("local store full of data not yet verified upstream")
    except Refused:
        logger.exception("acquisition failed")
    assert (
        stream.getvalue()
        .strip()
        .endswith("acquisition failed: local store full of data not yet verified upstream")
    )
    assert "Traceback" not in stream.getvalue()
    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError:
        logger.exception("pipeline failed")
    assert "Traceback" in stream.getvalue()


def test_json_lines_carry_level_logger_message_and_extras(logged) -> None:
    logger, stream, setup, clock = logged
    setup.reconfigure("INFO", "json")
    logger.info("consumer %s connected", "hpc", extra={"consumer": "hpc"})
    logger.warning("frames %d..%d lost", 1, 4, extra=lost(1, 4, "ring_full"))
    clock.now = 1.0
    setup.emit_summaries()
    first, summary = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "edge.test_logs"
    assert first["message"] == "consumer hpc connected" and first["consumer"] == "hpc"
    assert first["time"].endswith("+00:00")
    assert summary["message"] == "lost 4 frames in 1 s (ring_full: 4)"
    assert summary["reasons"] == {"ring_full": 4} and summary["lost_frames_total"] == 4


def test_level_changes_apply_at_once(logged) -> None:
    logger, stream, setup, _clock = logged
    assert setup.reconfigure("WARNING", "text") == ["log.level: INFO -> WARNING"]
    logger.info("hidden")
    assert stream.getvalue() == ""
    setup.reconfigure("INFO", "text")


def test_json_formatter_keeps_tracebacks_of_bugs() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "boom", None, __import__("sys").exc_info()
        )
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in doc["traceback"]


def test_summary_filter_alone_on_a_clock() -> None:
    clock = _Clock()
    summary = RepeatSummary(window=1.0, burst=1, clock=clock)
    record = logging.LogRecord("edge", logging.WARNING, __file__, 1, "x %s", ("a",), None)
    assert summary.filter(record)
    assert not summary.filter(logging.LogRecord("edge", logging.WARNING, __file__, 1, "x %s", ("b",), None))
    clock.now = 3.0
    (out,) = summary.flush()
    assert out.getMessage() == "x b (the last of 1 more lines like 'x …' in 3 s)"
    # every kind of placeholder reads as what differs, never as a template (an outside probe's journal)
    template = "retired %s (days = %g, %5.1f%% of %d)"
    for _ in range(3):
        summary.filter(
            logging.LogRecord("edge", logging.WARNING, __file__, 1, template, ("f", 1e-4, 5.0, 3), None)
        )
    (out,) = summary.flush()
    assert out.getMessage().endswith("more lines like 'retired … (days = …, …% of …)' in 1 s)"), (
        out.getMessage()
    )


def test_incomplete_frames_are_summed_apart_from_lost_ones(logged) -> None:
    logger, stream, setup, clock = logged
    logger.warning("lost", extra=lost(0, 0, "frame_number_gap"))
    logger.warning("incomplete", extra=lost(5, 5, "incomplete_frame"))
    logger.warning("incomplete", extra=lost(6, 6, "incomplete_frame"))
    clock.now = 1.0
    setup.emit_summaries()
    assert (
        stream.getvalue()
        .strip()
        .endswith(
            "lost 1 frame in 1 s (frame_number_gap: 1), 2 incomplete (pixels missing, frames kept)"
            " (incomplete_frame: 2)"
        )
    )
