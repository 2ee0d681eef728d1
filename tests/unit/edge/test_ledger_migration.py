"""Upgrades: a ledger written by the previous schema (version 1: no kind, mode, vetoed or stored path)
opens in place, keeps every record, and reports the version it migrated from."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.ledger import SCHEMA, SCHEMA_VERSION, Ledger


def _old_ledger(path: Path) -> None:
    """A ledger exactly as the previous schema wrote it (its tables, one run, file and loss)."""
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.execute("INSERT INTO runs (run_uid, series, started_at, config) VALUES ('r1', 1, 1.0, '{}')")
        db.execute(
            "INSERT INTO files (run_uid, name, path, size, checksum, first_frame, last_frame, n_frames,"
            " state, stored_at) VALUES ('r1', 'r1_00000.h5', '/x/r1_00000.h5', 10, 'ab', 0, 4, 5, 'stored', 2.0)"
        )
        db.execute(
            "INSERT INTO losses (run_uid, first_frame, last_frame, reason, at) VALUES ('r1', 5, 6, 'gap', 3.0)"
        )
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 0


def test_an_older_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _old_ledger(path)
    ledger = Ledger(path)
    assert ledger.migrated_from == 0
    (row,) = ledger.files("r1")
    assert row["kind"] == "data" and row["state"] == "stored" and row["n_frames"] == 5
    totals = ledger.run_totals("r1")
    assert totals["frames_stored"] == 5 and totals["frames_lost"] == 2 and totals["frames_vetoed"] == 0
    ledger.run_ended("r1", "success", 5, frames_vetoed=3)
    assert ledger.run_totals("r1")["frames_vetoed"] == 3
    ledger.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    again = Ledger(path)
    assert again.migrated_from is None  # already current: nothing to do
    again.close()


def test_a_newer_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this edge"):
        Ledger(path)
