"""Bring the store and the ledger back into agreement after the daemon died (``kill -9``, power loss).

Runs once at start, before any thread. What it does, in order:

1. A ``NAME.h5.part`` (a file open at the crash) is moved to ``STORE/quarantine/``: never deleted,
   never forwarded, and never left where a reader would take it for data.
2. A closed ``NAME.h5`` that the ledger does not know (renamed just before the crash) is salvaged:
   its frame numbers are read back and it is recorded and forwarded like any other file.
3. Every run without an end is ended with exit status ``fail``; the frames it expected that are in
   no file and no loss record get one loss record, reason ``daemon_crash`` (they were in memory, or
   had not arrived). The frames its data files hold that no reduced file's frame table lists (their
   rows were in memory) get a reduced file of their own, ``recovered_after_crash``: a frame table of
   those frames, disposition ``stored`` (their products stay in the data files), so the upstream copy
   still accounts for each of them. Its Bluesky documents are written with a RunStop saying ``fail``.

Later, when frames of a series arrive whose start this daemon never saw (the detector went on through
the restart), the frame source opens a run "resumed after restart" for the rest of the series, and
`resume_interrupted` links it to the run the restart interrupted: the frames between the last one that
run accounts for and the first one the new run got become loss records of the interrupted run, reason
``daemon_restart``, so a series of unknown length is still ``sent = stored + lost``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (filter 32008, to open salvaged files)
import numpy as np

from edge.recorder import RunRecorder
from edge.store import ReducedWriter

log = logging.getLogger(__name__)


def _missing_ranges(expected: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sub-ranges of ``0..expected-1`` not inside any of ``covered`` (inclusive ranges)."""
    gaps: list[tuple[int, int]] = []
    cursor = 0
    for first, last in sorted(covered):
        if first > cursor:
            gaps.append((cursor, min(first, expected) - 1))
        cursor = max(cursor, last + 1)
        if cursor >= expected:
            break
    if cursor < expected:
        gaps.append((cursor, expected - 1))
    return [(a, b) for a, b in gaps if a <= b]


def recover(recorder: RunRecorder, root: Path) -> dict[str, Any]:
    """Run the recovery steps above through the run recorder; return what was done (also logged)."""
    ledger = recorder.ledger
    report: dict[str, Any] = {"quarantined": [], "salvaged": [], "runs_failed": [], "frames_lost": 0}
    for part in sorted(root.glob("*/*.part")):
        target = root / "quarantine" / part.parent.name / part.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), target)
        report["quarantined"].append(str(target))
        log.warning("moved %s, open at the crash, to %s", part.name, target)
    known = {row["path"] for row in ledger.files()}
    runs = {row["run_uid"] for row in ledger.runs()}
    for path in sorted(root.glob("*/*.h5")):
        if str(path) in known or path.parent.name not in runs:
            continue
        try:
            with h5py.File(path, "r") as handle:
                numbers = [int(n) for n in handle["/entry/data/frame_number"][:]]
        except (OSError, KeyError) as error:
            log.error("cannot salvage %s: %s", path, error)
            continue
        frames = (min(numbers), max(numbers), len(numbers)) if numbers else (-1, -1, 0)
        recorder.register_file(path.parent.name, path, frames)
        report["salvaged"].append(str(path))
        log.warning("salvaged %s (%d frames), closed just before the crash", path.name, len(numbers))
    for run in ledger.runs():
        if run["ended_at"] is not None:
            continue
        run_uid = run["run_uid"]
        files = [f for f in ledger.files(run_uid) if f["n_frames"] > 0]
        covered = [(f["first_frame"], f["last_frame"]) for f in files]
        covered += [(r["first_frame"], r["last_frame"]) for r in ledger.losses(run_uid)]
        expected = run["frames_expected"]
        if expected is None:  # the detector did not say; account up to the last frame we know of
            expected = max((last for _, last in covered), default=-1) + 1
            log.warning(
                "run %s did not announce its length; frames after %d cannot be accounted", run_uid, expected
            )
        for first, last in _missing_ranges(int(expected), covered):
            recorder.loss(
                run_uid,
                first,
                last,
                "daemon_crash",
                "held in memory or not yet received when the daemon died",
            )
            report["frames_lost"] += last - first + 1
        recovered = _recover_frame_table(recorder, root, run_uid, str(run.get("mode") or ""))
        if recovered:
            report.setdefault("frame_rows_recovered", {})[run_uid] = recovered
        stored = sum(f["n_frames"] for f in files)
        recorder.close_run(run_uid, stored, "fail")
        report["runs_failed"].append(run_uid)
        log.error("run %s ended by a crash: %d frames stored, marked failed", run_uid, stored)
    if any(report[k] for k in ("quarantined", "salvaged", "runs_failed")):
        log.warning("recovery: %s", json.dumps(report))
    return report


class _RecoveredRows:
    """The layout of a reduced file written by recovery: a frame table and nothing else."""

    definition = "NXmx"
    reference = "none: frame rows recovered after a crash; the frames' products are in the data files"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def settings_record(self) -> dict[str, Any]:
        return {"mode": self.mode, "recovered_after_crash": True}

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        entry.attrs["recovered_after_crash"] = True

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        self.write_products(entry, products)


def _frame_numbers(path: Path, dataset: str) -> list[int]:
    try:
        with h5py.File(path, "r") as handle:
            return [int(n) for n in np.asarray(handle[dataset][:]).ravel()]
    except (OSError, KeyError) as error:
        log.error("cannot read %s of %s: %s", dataset, path, error)
        return []


def _recover_frame_table(recorder: RunRecorder, root: Path, run_uid: str, mode: str) -> int:
    """A reduced file listing the frames of the run's data files that no reduced file lists; returns
    how many rows it holds (0: nothing was missing, or no data file could be read)."""
    files = recorder.ledger.files(run_uid)
    listed: set[int] = set()
    reduced_names = []
    for f in files:
        if f.get("kind") == "reduced":
            reduced_names.append(str(f["name"]))
            listed.update(_frame_numbers(Path(f["path"]), "/entry/frames/frame_number"))
    rows: list[tuple[int, str]] = []
    for f in files:
        if f.get("kind") in ("data", "blank") and int(f["n_frames"]) > 0:
            numbers = _frame_numbers(Path(f["path"]), "/entry/data/frame_number")
            rows += [(n, str(f["kind"])) for n in numbers if n not in listed]
    if not rows:
        return 0
    writer = ReducedWriter(root / run_uid, run_uid, _RecoveredRows(mode), frames_per_file=len(rows))
    taken = {int(name.rsplit("_", 1)[-1].split(".")[0]) for name in reduced_names if name.endswith(".nxs")}
    while (root / run_uid / f"{run_uid}_reduced_{writer.files:05d}.nxs").exists() or writer.files in taken:
        writer.files += 1
    for frame, stream in sorted(rows):
        writer.add(frame, "stored", stream, {}, {})
    closed = writer.finish()
    if closed is not None:
        recorder.file_closed(closed)
        log.warning("run %s: %d frames' rows recovered into %s", run_uid, len(rows), closed.name)
    return len(rows)


def resume_interrupted(
    recorder: RunRecorder, report: dict[str, Any], series: int, first_frame: int
) -> dict[str, Any]:
    """Link a run resumed after a restart (series ``series`` from ``first_frame``) to the interrupted run.

    The interrupted run is the newest run of the same series that recovery (``report``) ended after a
    crash, or that ended with ``abort``/``fail`` (a daemon stopped by SIGTERM ends its open run with
    ``abort``); a run that ended with ``success`` saw its series end. Each frame keeps exactly one
    disposition: frames before ``first_frame`` that the interrupted run does not account for (in a file
    or a loss record) were sent while the daemon was down or died with it, and become one loss record of
    that run, reason ``daemon_restart``; frames from ``first_frame`` on belong to the new run, so the
    ``daemon_crash`` / ``receiver_stopped`` records written for them (a series of known length) are
    handed over. Returns what the new run records in its config: the link (None when no interrupted
    run of the series is known).
    """
    ledger = recorder.ledger
    failed = set(report.get("runs_failed") or [])
    candidates = [
        r
        for r in ledger.runs()
        if int(r["series"]) == series
        and r["ended_at"] is not None
        and (r["run_uid"] in failed or r["exit_status"] in ("abort", "fail"))
    ]
    if not candidates:
        log.warning("series %d resumed at frame %d: no interrupted run of it is known", series, first_frame)
        return {"resumes_run": None}
    run_uid = max(candidates, key=lambda r: r["started_at"])["run_uid"]
    handed = sum(
        ledger.hand_over_losses(run_uid, r, first_frame) for r in ("daemon_crash", "receiver_stopped")
    )
    covered = [(f["first_frame"], f["last_frame"]) for f in ledger.files(run_uid) if f["n_frames"] > 0]
    covered += [(r["first_frame"], r["last_frame"]) for r in ledger.losses(run_uid)]
    added = 0
    for first, last in _missing_ranges(first_frame, covered):
        added += 1
        recorder.loss(
            run_uid,
            first,
            last,
            "daemon_restart",
            f"sent while the daemon was down, or held in memory when it died; series {series} resumed at"
            f" frame {first_frame} in a new run",
        )
    if handed or added:  # its documents (written when it ended) no longer tell its account: a new revision
        recorder.write_documents(run_uid, str(ledger.run(run_uid)["exit_status"]))
    log.warning(
        "series %d resumed after a restart at frame %d: a new run continues run %s (%d frames handed over)",
        series,
        first_frame,
        run_uid,
        handed,
    )
    return {"resumes_run": run_uid}
