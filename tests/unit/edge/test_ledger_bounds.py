"""Numbers from outside cannot break the ledger: a loss range beyond SQLite's 64-bit INTEGER is clamped
and says so (instead of an OverflowError in the reader thread that reports it), and the loss totals a
status view reads never overflow, however large the recorded ranges (issue 12, hole 1)."""

from __future__ import annotations

from pathlib import Path

from edge.ledger import Ledger

INT64_MAX = 2**63 - 1


def test_out_of_range_frame_numbers_are_clamped_and_explained(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("run", 1, None, "{}")
        ledger.record_loss("run", 2**63, 2**64 - 1, "frame_number_gap", "frames never arrived")
        ledger.record_loss("run", -5, 3, "series_end")
        first, second = ledger.losses("run")
        assert (first["first_frame"], first["last_frame"]) == (INT64_MAX, INT64_MAX)
        assert "out of range" in first["detail"] and str(2**64 - 1) in first["detail"]
        assert first["detail"].endswith("frames never arrived")
        assert (second["first_frame"], second["last_frame"]) == (0, 3)
    finally:
        ledger.close()


def test_loss_totals_do_not_overflow_int64(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("run", 1, None, "{}")
        for _ in range(3):  # each range alone fits in int64; their sum does not
            ledger.record_loss("run", 0, INT64_MAX - 1, "frame_number_gap")
        ledger.record_loss("run", 5, 5, "incomplete_frame")
        summary = ledger.summary()
        assert summary["frames_lost"] == 3 * INT64_MAX and isinstance(summary["frames_lost"], int)
        assert summary["loss_records"] == 4 and summary["frames_incomplete"] == 1
    finally:
        ledger.close()


def test_small_loss_totals_stay_exact(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("run", 1, None, "{}")
        ledger.record_loss("run", 10, 19, "frame_number_gap")
        ledger.record_loss("run", 2**52, 2**52 + 2, "ring_full")
        assert ledger.summary()["frames_lost"] == 13
    finally:
        ledger.close()


def test_incomplete_frames_are_counted_as_frames_not_records(tmp_path: Path) -> None:
    """A docs-walk probe: ``frames.incomplete`` read 34 where 51 frames were stored with pixels missing
    (the summary counted loss records, a record covering a range of frames); the run's totals said 51."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("run", 1, None, "{}")
        ledger.record_loss("run", 11, 13, "incomplete_frame")
        ledger.record_loss("run", 20, 20, "incomplete_frame")
        ledger.record_loss("run", 30, 31, "frame_number_gap")
        summary = ledger.summary()
        assert summary["frames_incomplete"] == 4 == ledger.run_totals("run")["frames_incomplete"]
        assert summary["frames_lost"] == 2 and summary["loss_records"] == 3
    finally:
        ledger.close()


def test_loss_totals_are_exact_for_frame_numbers_past_2_to_the_53(tmp_path: Path) -> None:
    """An outside probe (``udp.max_frame_jump = 2**62``): a float sum put /api/status 20 frames too high."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("run", 1, None, "{}")
        ledger.record_loss("run", 7, 2**62 + 12, "frame_number_jump")
        ledger.record_loss("run", 2**62 + 14, 2**62 + 14, "frame_number_gap")
        assert ledger.summary()["frames_lost"] == 2**62 + 6 + 1
    finally:
        ledger.close()
