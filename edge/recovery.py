"""Bring the store and the ledger back into agreement after the daemon died (``kill -9``, power loss).

Runs once at start, before any thread. What it does, in order:

1. A ``NAME.h5.part`` (a file open at the crash) is moved to ``STORE/quarantine/``: never deleted,
   never forwarded, and never left where a reader would take it for data.
2. A closed ``NAME.h5`` that the ledger does not know (renamed just before the crash) is salvaged:
   its frame numbers are read back and it is recorded and forwarded like any other file; so is a
   reduced file (``RUN_reduced_NNNNN.nxs``: its span and vetoed rows read from its frame table) or a
   ``RUN.geom``. A file verified upstream and gone (retention deleted it; the crash came before its
   purge was recorded) is recorded purged.
3. Every run without an end is ended with exit status ``fail``; the frames it expected that are in
   no file (the data files' own frame numbers, not their first-to-last spans: a serial run dropping
   blanks stores frames with gaps), not vetoed in a closed reduced file's frame table, and in no loss
   record get loss records, reason ``daemon_crash`` (they were in memory, or had not arrived). The
   vetoed frames found are the run's ``frames_vetoed``. The frames its data files hold that no reduced
   file's frame table lists (their rows were in memory) get a reduced file of their own,
   ``recovered_after_crash``: a frame table of those frames, disposition ``stored`` (their products stay
   in the data files), so the upstream copy still accounts for each of them. Its Bluesky documents are
   written with a RunStop saying ``fail``.

Later, when frames of a series arrive whose start this daemon never saw (the detector went on through
the restart), the frame source opens a run "resumed after restart" for the rest of the series, and
`resume_interrupted` links it to the run the restart interrupted: the frames between the last one that
run accounts for and the first one the new run got become loss records of the interrupted run, reason
``daemon_restart``, so a series of unknown length is still ``sent = stored + lost``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (filter 32008, to open salvaged files)
import numpy as np

from edge.ledger import PARTIAL_LOSS_REASONS, run_config
from edge.recorder import RunRecorder
from edge.store import DISPOSITION_CODES, ReducedWriter, contents

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


def _own_first_frame(run: dict[str, Any]) -> int:
    """The first frame a run accounts for: a run resumed after a restart, or a UDP run going on after a
    pause, starts at its ``first_frame`` (the frames before it belong to the run it continues, stored
    or lost there), and so does a UDP acquisition whose numbers went on from an earlier one's (the
    numbers before it are no frame of its; one going on after a pause recorded 0..49 lost there); any
    other run at 0."""
    first = run_config(run.get("config")).get("first_frame")
    return first if isinstance(first, int) and not isinstance(first, bool) and first > 0 else 0


def _not_own(run: dict[str, Any], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``covered``, plus the frames before the run's own first frame (`_own_first_frame`)."""
    first = _own_first_frame(run)
    return [*covered, (0, first - 1)] if first > 0 else covered


def empty_report() -> dict[str, Any]:
    """A recovery's report before it has done anything (`recover` fills one in)."""
    return {"quarantined": [], "salvaged": [], "runs_failed": [], "frames_lost": 0, "continuations_lost": {}}


def recover(recorder: RunRecorder, root: Path) -> dict[str, Any]:
    """Run the recovery steps above through the run recorder; return what was done (also logged)."""
    ledger = recorder.ledger
    report = empty_report()
    quarantine = root / "quarantine"  # (RunStore sets its open files aside there too, STORE/quarantine/RUN/)
    half_written: dict[str, list[str]] = {}  # run -> its files quarantined now (named in its crash's losses)
    # an open capture's file stays where it is, in the store too (a plan's scans directory under it): the
    # plan's documents and `edge where` (capture_left) name that path; quarantined, it was named nowhere
    captures = _open_captures(ledger)
    for run_uid, part in captures.values():
        if part.exists():
            half_written.setdefault(run_uid, []).append(f"{part}, the capture's file, left where it was")
    left_earlier = _captures_left(ledger)  # and those an earlier crash left: they stay too (a second
    # kill moved the first one's into quarantine/, its records naming the path it had left)
    for part in sorted(root.glob("*/*.part")):
        if os.path.realpath(part) in captures or os.path.realpath(part) in left_earlier:
            continue
        target = quarantine / part.parent.name / part.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), target)
        report["quarantined"].append(str(target))
        half_written.setdefault(part.parent.name, []).append(
            f"moved to quarantine/{part.parent.name}/{part.name}"
        )
        log.warning("moved %s, half-written (open at a crash, or not finished), to %s", part.name, target)
    for empty in sorted(quarantine.glob("*/")):  # (none when the directory is not there)
        # a run's quarantine directory is made when it opens; one a crash left empty is no news
        with contextlib.suppress(OSError):
            empty.rmdir()
    known = {row["path"] for row in ledger.files()}
    runs = {row["run_uid"] for row in ledger.runs()}
    for path in sorted(root.glob("*/*.h5")):
        if str(path) in known or path.parent.name not in runs:
            continue
        try:
            with h5py.File(path, "r") as handle:
                numbers = [int(n) for n in handle["/entry/data/frame_number"][:]]
                kind = str(handle["/entry"].attrs.get("file_kind", "data"))  # (a serial run's blanks)
        except (OSError, KeyError) as error:
            log.error("cannot salvage %s: %s", path, error)
            continue
        frames = (min(numbers), max(numbers), len(numbers)) if numbers else (-1, -1, 0)
        recorder.register_file(path.parent.name, path, frames, "blank" if kind == "blank" else "data")
        report["salvaged"].append(str(path))
        log.warning("salvaged %s (%d frames), closed just before the crash", path.name, len(numbers))
    # a run's reduced file (frame table, products) or CrystFEL geometry finished just before the crash,
    # not yet in the ledger: recorded and forwarded like any other (an outside probe: a reduced file of
    # 46 vetoed blanks stayed in the store for good, in no record, its frames recorded lost)
    for path in sorted([*root.glob("*/*_reduced_*.nxs"), *root.glob("*/*.geom")]):
        if str(path) in known or path.parent.name not in runs:
            continue
        try:
            frames, held, vetoed = _reduced_file_facts(path)
        except (OSError, KeyError, ValueError) as error:
            log.error("cannot salvage %s: %s", path, error)
            continue
        recorder.register_file(path.parent.name, path, frames, "reduced", held, vetoed)
        report["salvaged"].append(str(path))
        log.warning("salvaged %s, a reduced file closed just before the crash", path.name)
    for run in ledger.runs():
        if run["ended_at"] is not None:
            continue
        run_uid = run["run_uid"]
        _purges_unrecorded(recorder, run_uid)
        files = [f for f in ledger.files(run_uid) if f["n_frames"] > 0]
        vetoed, vetoed_purged = _vetoed_frames(recorder, run_uid)
        covered = _accounted(recorder, run_uid, vetoed)
        expected = run["frames_expected"]
        if expected is None:  # an areaDetector capture's run: its series' announced lengths, where each
            # lies in it (its frames sent while the daemon was down were in no record; an outside probe)
            expected = _capture_end(run)
        if expected is None:  # the detector did not say; account up to the last frame we know of: the
            # highest received (written every 0.2 s while the run was open) or recorded, partial records
            # too: a frame kept with packets missing came (an outside probe: frames 256 and 259 had such
            # records, the account stopped at 255, and 257 and 258 had no record at all)
            seen = run.get("frames_seen")
            kept_incomplete = [
                int(r["last_frame"])
                for r in [*ledger.losses(run_uid), *recorder.held_losses(run_uid)]
                if r["reason"] in PARTIAL_LOSS_REASONS
            ]
            expected = (
                max(
                    max((last for _, last in covered), default=-1),
                    max(kept_incomplete, default=-1),
                    -1 if seen is None else int(seen),
                )
                + 1
            )
            log.warning(
                "run %s did not announce its length: accounted up to frame %d, the last it is known to have"
                " received (frames received in the last 0.2 s before the crash may be in no record)",
                run_uid,
                expected - 1,
            )
        went_on = run_config(run.get("config")).get("continued_at_frame")
        if isinstance(went_on, int) and not isinstance(went_on, bool) and 0 <= went_on < int(expected):
            # its series went on in a run resumed after a restart, which took its frames from there (a run
            # the journal reopened for this recovery, its frame table deferred by a full disk: accounted to
            # its end again, those frames were lost here and stored there, an outside chaos probe; a
            # continuation never recorded is accounted below, `_continuations_unrecorded`)
            expected = went_on
        crashed = 0
        # a serial run's vetoed blanks live only as frame-table rows until its reduced file is written:
        # those not yet written are among them (an outside probe read the quarantined hit file named in
        # the records of blanks that were never in it)
        held = (
            "held in memory (blanks the mode vetoed, whose frame-table rows were not yet written, among them)"
            if str(run.get("mode") or "") == "serial"
            # (a run that kept its blanks vetoed none: an outside probe read of vetoed blanks there)
            and run_config(run.get("config")).get("store_blanks", "drop") == "drop"
            else "held in memory"
        )
        clean = _stopped_cleanly(recorder, run)
        reason, detail = "daemon_crash", f"{held} or not yet received when the daemon died"
        if clean is not None:  # no crash: a clean stop, whose records (a serial run's frame-table rows of
            # vetoed blanks, say) a full disk held in memory
            reason, detail = "disk_full", f"{held} when the daemon stopped cleanly on a full disk"
        if half_written.get(run_uid):  # (an outside probe: hits written into the file the crash left
            # half-written read as if never received)
            detail = (
                f"{held}, written into a file the crash left half-written ("
                f"{'; '.join(half_written[run_uid])}), or not yet received when the daemon died"
            )[:500]
        for first, last in _missing_ranges(int(expected), _not_own(run, covered)):
            recorder.loss(run_uid, first, last, reason, detail)
            crashed += last - first + 1
        if (
            crashed and clean is None
        ):  # the per-second "lost N frames" line counts them all: say which of them may come back
            log.warning(
                "run %s: %d frames recorded lost (daemon_crash) at this start; if its series goes on, the run"
                ' that resumes it takes back the frames it still receives ("frames handed over")',
                run_uid,
                crashed,
            )
        # with those an earlier start recorded before it was killed (its report went with it: an outside
        # probe read "1 run marked failed" and no frame lost, of a run with 350 lost to the crash)
        recorded = sum(
            int(r["last_frame"]) - int(r["first_frame"]) + 1
            for r in recorder.ledger.losses(run_uid)
            if r["reason"] == "daemon_crash"
        )
        if clean is None:
            report["frames_lost"] += max(crashed, recorded)
        mode = str(run.get("mode") or "")
        try:
            recovered = _recover_frame_table(recorder, root, run_uid, mode)
        except Exception as error:  # a full disk: the frame table is written when space returns
            if recorder.disk is None or not recorder.disk.note_error(error):
                raise
            recovered = 0
            table = partial(_recover_frame_table, recorder, root, run_uid, mode)
            recorder.when_space_returns(f"run {run_uid}: the recovered frame table", table, run_uid)
            report.setdefault("frame_tables_deferred", []).append(run_uid)
        if recovered:
            report.setdefault("frame_rows_recovered", {})[run_uid] = recovered
        stored = sum(f["n_frames"] for f in files)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        if clean is not None:  # a clean stop ended it; a full disk held its records (no crash)
            recorder.note(
                run_uid,
                "ended_by_recovery",
                f"the daemon stopped cleanly ({clean}) while a full disk held back the run's records; the"
                f" start of {when} finished them: {stored} frames stored, {int(vetoed.size) + vetoed_purged}"
                f" vetoed, {crashed} recorded lost then (disk_full: their records were held in memory)",
            )
            # its end as the stop made it, unless frames whose records were in memory are lost now
            status = clean if crashed == 0 else "fail"
            recorder.close_run(run_uid, stored, status, int(vetoed.size) + vetoed_purged)
            report.setdefault("runs_finished_after_clean_stop", []).append(run_uid)
            log.warning(
                "run %s, ended by a clean stop (%s) whose records a full disk held back: finished (%s), %d"
                " frames stored, %d vetoed, %d lost (disk_full)",
                run_uid,
                clean,
                status,
                stored,
                vetoed.size + vetoed_purged,
                crashed,
            )
            continue
        recorder.note(
            run_uid,
            "ended_by_recovery",
            f"the daemon stopped during the run; the start of {when} ended it: {stored} frames stored,"
            f" {int(vetoed.size) + vetoed_purged} vetoed, {max(crashed, recorded)} recorded lost to the crash"
            " then (a series that went on after the restart takes back those it received: the run's"
            " totals say what stays lost)",
        )
        recorder.close_run(run_uid, stored, "fail", int(vetoed.size) + vetoed_purged)
        report["runs_failed"].append(run_uid)
        log.error(
            "run %s ended by a crash: %d frames stored, %d vetoed, marked failed",
            run_uid,
            stored,
            vetoed.size + vetoed_purged,
        )
    _continuations_unrecorded(recorder, report)
    if any(report[k] for k in ("quarantined", "salvaged", "runs_failed", "continuations_lost")):
        log.warning(
            "recovery: %s (frames_lost: the interrupted runs' frames in no file, recorded lost for now; a"
            " series the detector goes on with resumes in a run that takes back those it receives)",
            json.dumps(report),
        )
    return report


def _continuations_unrecorded(recorder: RunRecorder, report: dict[str, Any]) -> None:
    """Runs whose series a restart's reader resumed in a new run, their frames from there handed over to
    it, and the daemon died before that run was recorded (an outside probe: a kill -9 2.5 s after a
    restart; the interrupted run's records of frames 26..39 gone, no run holding them, 14 frames in no
    record). Their frames from where the series went on, in no record now, are recorded lost
    (``daemon_crash``) in the run itself, whose account counts to its end again
    (``continuation_lost_at_frame``): ``report["continuations_lost"]`` {run: frames}."""
    ledger = recorder.ledger
    for run_uid, frame in ledger.continuations_unrecorded():
        recorder.continuation_lost(run_uid)
        run = ledger.run(run_uid)
        expected = run["frames_expected"] or _capture_end(run)
        if expected is None:  # its length unknown: up to the last frame it is known to have received
            seen = run.get("frames_seen")
            expected = max(frame, 0 if seen is None else int(seen) + 1)
        before = int(ledger.run_totals(run_uid)["frames_lost"])
        _unaccounted_before(
            recorder,
            run,
            int(expected),
            "daemon_crash",
            f"its series went on at frame {frame} after a restart, in a run the daemon died before it was"
            " recorded: these frames are in no file",
        )
        lost = int(ledger.run_totals(run_uid)["frames_lost"]) - before
        report["continuations_lost"][run_uid] = lost
        report["frames_lost"] += lost
        recorder.documents_when_possible(run_uid, str(run["exit_status"] or "fail"))
        log.error(
            "run %s: its series went on at frame %d after a restart in a run that was never recorded (the"
            " daemon died first): %d frames of it are recorded lost (daemon_crash)",
            run_uid,
            frame,
            lost,
        )


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


def _stopped_cleanly(recorder: RunRecorder, run: dict[str, Any]) -> str | None:
    """The exit status a clean stop ended the run with, when a full disk held its records back (the
    ``stopped_cleanly`` note, in the ledger or still held; or its held end): None for a crash."""
    run_uid = str(run["run_uid"])
    status = (
        run_config(run.get("config")).get("stopped_cleanly")
        or recorder.held_note(run_uid, "stopped_cleanly")
        or recorder.held_end(run_uid)
    )
    return str(status) if status and status != "fail" else None


def _ranges_of(numbers: np.ndarray) -> list[tuple[int, int]]:
    """Frame numbers as sorted inclusive ``(first, last)`` runs of consecutive numbers."""
    unique = np.unique(np.asarray(numbers, np.int64))
    if unique.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(unique) != 1)
    firsts = np.concatenate((unique[:1], unique[breaks + 1]))
    lasts = np.concatenate((unique[breaks], unique[-1:]))
    return list(zip(firsts.tolist(), lasts.tolist(), strict=True))


def _purges_unrecorded(recorder: RunRecorder, run_uid: str) -> None:
    """The run's files verified upstream and gone from the local disk: retention deletes a verified file,
    then records it purged; the crash came between the two (or the full ledger held the record back).
    Recorded purged now, so the accounting takes each as a purged file (an outside probe: their frames,
    verified upstream, were read as none and recorded lost, daemon_crash)."""
    for f in recorder.ledger.files(run_uid):
        if _verified_and_gone(f):
            try:
                recorder.ledger.file_purged(int(f["id"]))
            except sqlite3.OperationalError as error:  # a full disk: accounted as purged all the same
                log.error("%s: its purge cannot be recorded now (%s)", f["name"], error)
                continue
            log.warning(
                "%s was verified upstream and deleted here (retention) just before the crash: recorded"
                " purged",
                f["name"],
            )


def _reduced_file_facts(path: Path) -> tuple[tuple[int, int, int], str | None, int | None]:
    """A reduced file's span (``(first, last, 0)``: it holds no frames), what it holds and its vetoed rows,
    read from the file; a ``.geom`` holds none of them."""
    if path.suffix != ".nxs":
        return (-1, -1, 0), None, None
    with h5py.File(path, "r") as handle:
        table = handle["/entry/frames"]
        numbers = np.asarray(table["frame_number"][:], np.int64)
        vetoed = int(np.count_nonzero(np.asarray(table["disposition"][:]) == DISPOSITION_CODES["vetoed"]))
        held = contents(handle)
    span = (int(numbers.min()), int(numbers.max()), 0) if numbers.size else (-1, -1, 0)
    return span, held, vetoed


def _frame_ranges(f: dict[str, Any]) -> list[tuple[int, int]] | None:
    """A file's ``frame_ranges`` from the ledger (data: its frames, when not its whole span; reduced:
    its vetoed frames), None when not recorded (a file recorded before schema 7, or a whole span)."""
    text = f.get("frame_ranges")
    if not text:
        return None
    try:
        return [(int(a), int(b)) for a, b in json.loads(text)]
    except (TypeError, ValueError):
        return None


def _verified_and_gone(f: dict[str, Any]) -> bool:
    """A file verified upstream and no longer on the local disk: purged, its record not written."""
    return bool(f["state"] == "verified" and not Path(f["path"]).exists())


def _vetoed_in_purged(recorder: RunRecorder, run_uid: str, table: dict[str, Any]) -> np.ndarray:
    """The frames a purged frame table listed as vetoed, worked out from the ledger: every frame of its
    span had a row (a frame without one is a recorded loss), so those of the span neither stored in a data
    or blank file nor recorded lost. When a data file over the span is purged too and had gaps (its frame
    numbers are gone with it), they cannot be told: none is returned, and a warning says so."""
    first, last = int(table["first_frame"]), int(table["last_frame"])
    if not 0 <= first <= last:
        return np.empty(0, np.int64)
    left = np.ones(last - first + 1, bool)
    for f in recorder.ledger.files(run_uid):
        n, a, b = int(f["n_frames"]), int(f["first_frame"]), int(f["last_frame"])
        if f.get("kind") not in ("data", "blank") or n <= 0 or b < first or a > last:
            continue
        if n == b - a + 1:
            left[max(a, first) - first : min(b, last) - first + 1] = False
        elif f["state"] == "purged" or _verified_and_gone(f):
            log.warning(
                "run %s: the frames %s vetoed cannot be counted: it and %s (stored frames with gaps) were"
                " purged before the crash; both are upstream",
                run_uid,
                table["name"],
                f["name"],
            )
            return np.empty(0, np.int64)
        else:
            numbers = np.asarray(_frame_numbers(Path(f["path"]), "/entry/data/frame_number"), np.int64)
            numbers = numbers[(numbers >= first) & (numbers <= last)]
            left[numbers - first] = False
    for loss in recorder.ledger.losses(run_uid):
        a, b = max(int(loss["first_frame"]), first), min(int(loss["last_frame"]), last)
        if a <= b:
            left[a - first : b - first + 1] = False
    return np.flatnonzero(left).astype(np.int64) + first


def _vetoed_frames(recorder: RunRecorder, run_uid: str) -> tuple[np.ndarray, int]:
    """The run's frames its closed reduced files list as vetoed (a blank dropped by policy), and how many
    more its purged reduced files listed whose numbers are not worked out: the ledger kept their count
    (``files.frames_vetoed``), and a purged file's span is accounted as a whole (``_accounted``)."""
    found = [np.empty(0, np.int64)]
    counted = 0
    for f in recorder.ledger.files(run_uid):
        if f.get("kind") != "reduced" or not str(f["name"]).endswith(".nxs"):
            continue
        if f["state"] == "purged" or _verified_and_gone(f):  # verified upstream, deleted here on purpose
            ranges = _frame_ranges(f)
            if ranges is not None:  # the ledger kept them
                found += [np.arange(a, b + 1, dtype=np.int64) for a, b in ranges]
            elif f.get("frames_vetoed") is not None:
                counted += int(f["frames_vetoed"])
            else:  # recorded before the ledger kept the count: worked out from the other files
                found.append(_vetoed_in_purged(recorder, run_uid, f))
            continue
        try:
            with h5py.File(f["path"], "r") as handle:
                table = handle["/entry/frames"]
                numbers = np.asarray(table["frame_number"][:], np.int64)
                found.append(numbers[np.asarray(table["disposition"][:]) == DISPOSITION_CODES["vetoed"]])
        except (OSError, KeyError) as error:
            log.error("cannot read the frame table of %s: %s", f["path"], error)
    return np.unique(np.concatenate(found)), counted


def _accounted(recorder: RunRecorder, run_uid: str, vetoed: np.ndarray) -> list[tuple[int, int]]:
    """The frames of the run with a disposition on disk or in the ledger, as inclusive ranges: in a data
    file (its own frame numbers where the file has gaps), vetoed (``vetoed``), or in a loss record."""
    covered: list[tuple[int, int]] = []
    for f in recorder.ledger.files(run_uid):
        n, first, last = int(f["n_frames"]), int(f["first_frame"]), int(f["last_frame"])
        if (f["state"] == "purged" or _verified_and_gone(f)) and 0 <= first <= last:
            # verified upstream and deleted here on purpose (a short retention during a long run): its
            # frame numbers cannot be read any more; the ledger keeps them (`frame_ranges`): a gappy data
            # file's frames, a frame table's vetoed ones (its span proves nothing: the rows of stored
            # frames whose file was still open waited for the next table; an outside probe's hits in a
            # file the full disk quarantined, their records held and lost with a kill -9, were in none).
            # Recorded before the ledger kept them: the span, as each frame in it had a disposition
            ranges = _frame_ranges(f)
            if f.get("kind") == "reduced" and ranges is not None:
                continue  # its vetoed frames are in ``vetoed`` (`_vetoed_frames`)
            covered += ranges if ranges is not None else [(first, last)]
            continue
        if n <= 0:
            continue
        if n == last - first + 1:  # no gap: its span is its frames
            covered.append((first, last))
        else:
            covered += _ranges_of(np.asarray(_frame_numbers(Path(f["path"]), "/entry/data/frame_number")))
    covered += _ranges_of(vetoed)
    # a partial loss (a UDP frame kept with packets missing) says the frame was stored, not where: in a
    # file the crash quarantined it is in no account (an outside probe: 40 such frames had only their
    # incomplete_frame record, neither stored nor lost)
    losses = [*recorder.ledger.losses(run_uid), *recorder.held_losses(run_uid)]
    whole = [r for r in losses if r["reason"] not in PARTIAL_LOSS_REASONS]
    covered += [(r["first_frame"], r["last_frame"]) for r in whole]
    return covered


def _frame_numbers(path: Path, dataset: str) -> list[int]:
    try:
        with h5py.File(path, "r") as handle:
            return [int(n) for n in np.asarray(handle[dataset][:]).ravel()]
    except (OSError, KeyError) as error:
        log.error("cannot read %s of %s: %s", dataset, path, error)
        return []


#: a data file's per-frame columns that a frame table row repeats: (dataset, the row's field, its type)
_ROW_COLUMNS = (
    ("/entry/result_1/is_hit", "is_hit", bool),  # serial: the CXI peak table's columns
    ("/entry/result_1/nPeaksFound", "n_peaks", int),
    ("/entry/instrument/detector/image_key", "image_key", int),  # tomo: NXtomo's
    ("/entry/sample/rotation_angle", "rotation_angle", float),
)


def _stored_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(frame number, frame table fields) of each frame of a data file: its hit flag and peak count
    (serial), its image key and angle (tomo), where the file holds them one per frame (a file closed
    before a crash does; one recovered from a crash holds frames only). Recovered rows lacked them: a
    hit read upstream as a frame of no hit and no peaks."""
    try:
        with h5py.File(path, "r") as handle:
            numbers = [int(n) for n in np.asarray(handle["/entry/data/frame_number"][:]).ravel()]
            columns = []
            for dataset, field, kind in _ROW_COLUMNS:
                values = handle.get(dataset)
                if isinstance(values, h5py.Dataset) and values.shape == (len(numbers),):
                    columns.append((field, kind, values[:].tolist()))
    except (OSError, KeyError) as error:
        log.error("cannot read /entry/data/frame_number of %s: %s", path, error)
        return []
    return [(n, {field: kind(v[k]) for field, kind, v in columns}) for k, n in enumerate(numbers)]


def _recover_frame_table(recorder: RunRecorder, root: Path, run_uid: str, mode: str) -> int:
    """A reduced file listing the frames of the run's data files that no reduced file lists; returns
    how many rows it holds (0: nothing was missing, or no data file could be read)."""
    files = recorder.ledger.files(run_uid)
    listed: set[int] = set()
    reduced_names = []
    for f in files:
        if f.get("kind") == "reduced" and str(f["name"]).endswith(".nxs"):  # not CrystFEL's .geom
            reduced_names.append(str(f["name"]))
            if f["state"] == "purged":  # verified upstream and deleted here: it listed its span's frames
                listed.update(range(int(f["first_frame"]), int(f["last_frame"]) + 1))
            else:
                listed.update(_frame_numbers(Path(f["path"]), "/entry/frames/frame_number"))
    rows: list[tuple[int, str, dict[str, Any]]] = []
    for f in files:
        if f.get("kind") not in ("data", "blank") or int(f["n_frames"]) <= 0:
            continue
        stream = str(f["kind"])
        if f["state"] == "purged" or _verified_and_gone(f):
            # verified upstream and deleted here while its rows waited in memory (a full disk holds the
            # frame table back): its frames are the ledger's (`frame_ranges`, or its whole span). They
            # were in no table upstream, an outside probe's 4 blanks (the file itself delivered)
            first, last = int(f["first_frame"]), int(f["last_frame"])
            ranges = _frame_ranges(f) or ([(first, last)] if 0 <= first <= last else [])
            rows += [(n, stream, {}) for a, b in ranges for n in range(a, b + 1) if n not in listed]
        else:
            rows += [(n, stream, row) for n, row in _stored_rows(Path(f["path"])) if n not in listed]
    if not rows:
        return 0
    if mode == "serial":  # a serial file holds hits (data) or blanks: that much its kind says of a frame
        for _n, stream, row in rows:  # whose file is gone or has no peak table; its peak count: -1
            row.setdefault("is_hit", stream == "data")
            row.setdefault("n_peaks", -1)
    writer = ReducedWriter(root / run_uid, run_uid, _RecoveredRows(mode), frames_per_file=len(rows))
    taken = {int(name.rsplit("_", 1)[-1].split(".")[0]) for name in reduced_names if name.endswith(".nxs")}
    while (root / run_uid / f"{run_uid}_reduced_{writer.files:05d}.nxs").exists() or writer.files in taken:
        writer.files += 1
    for frame, stream, row in sorted(rows, key=lambda r: r[0]):
        writer.add(frame, "stored", stream, row, {})
    closed = writer.finish()
    if closed is not None:
        recorder.file_closed(closed)
        log.warning("run %s: %d frames' rows recovered into %s", run_uid, len(rows), closed.name)
    return len(rows)


def _newest_udp_run(ledger: Any) -> dict[str, Any] | None:
    """The ledger's newest run when it was a UDP run (None otherwise, or with no run)."""
    runs = ledger.runs()
    if not runs:
        return None
    newest = max(runs, key=lambda r: (r["started_at"], r["run_uid"]))
    return dict(newest) if _is_udp(newest) else None


def _is_udp(run: dict[str, Any]) -> bool:
    """Whether a ledger run came over UDP (its config's ``transport``)."""
    return bool(run_config(run.get("config")).get("transport") == "udp")


def udp_series_before(ledger: Any) -> int:
    """The highest series number of the ledger's UDP runs (0: none). UDP packets carry no series: the
    daemon numbers its UDP runs, and a restarted one goes on from here (it began at 1 again, an outside
    probe: two runs of series 1, the resumed one read as if it were the first acquisition's)."""
    series = [int(r["series"]) for r in ledger.runs() if _is_udp(r) and isinstance(r.get("series"), int)]
    return max(series, default=0)


def _highest_stored(ledger: Any, run_uid: str) -> int:
    """The highest frame in a run's data (or blank) files, at least 0."""
    data = [f for f in ledger.files(run_uid) if f.get("kind") in ("data", "blank")]
    return max([0, *(int(f["last_frame"]) for f in data)])


def udp_armed_last(run: dict[str, Any]) -> int | None:
    """A UDP run's last armed frame: ``armed_from`` (its config; 0 when not there) + ``frames_expected``
    - 1, or None when its length is unknown."""
    expected = run.get("frames_expected")
    if not isinstance(expected, int) or expected <= 0:
        return None
    armed_from = run_config(run.get("config")).get("armed_from", 0)
    armed_from = armed_from if isinstance(armed_from, int) and not isinstance(armed_from, bool) else 0
    return armed_from + expected - 1


def paused_udp_run(ledger: Any) -> tuple[dict[str, Any], int] | None:
    """The UDP run that silence ended before this daemon started, and the highest frame it stored: the
    daemon's first UDP run continues it when its first frame comes after those (and below the armed
    length), as a run the daemon saw end by silence would (`UdpSource`; a daemon restarted during a
    pause forgot that). The ledger's newest run qualifies when it was a UDP run that ended ``success``:
    a run ends so only after ``udp.idle_seconds`` of silence, also one whose armed frames all came (the
    daemon that saw it end tells what follows it the same way: a copy of its last frames counted late,
    a first frame beyond its armed ones a new acquisition whose numbers go on; a restart forgot that
    and took a copy of its last 4 frames for a run of its own, frames 0..35 recorded lost: an outside
    probe). None otherwise."""
    newest = _newest_udp_run(ledger)
    if newest is None or newest["ended_at"] is None or newest["exit_status"] != "success":
        return None
    return newest, _highest_stored(ledger, newest["run_uid"])


def interrupted_udp_run(ledger: Any, report: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """The UDP run a restart may have cut short, and the highest frame it stored (at least 0).

    UDP carries no series identity and packets keep coming while the daemon is down, so only the
    ledger's newest run qualifies, when it was a UDP run that recovery ended after a crash or that ended
    ``abort``/``fail`` (a stop while frames still came): the daemon's first UDP run then continues it if
    its first frame comes after every frame that run stored (a new acquisition starts its numbers again).
    """
    newest = _newest_udp_run(ledger)
    failed = set(report.get("runs_failed") or [])
    if newest is None or not (newest["run_uid"] in failed or newest["exit_status"] in ("abort", "fail")):
        return None
    # and every frame it received, stored or not (its file half-written at the crash): an acquisition
    # that goes on after the restart goes on beyond those. A run whose 30 frames were all in its
    # quarantined file stored none, so the next acquisition's frame 1 was taken for its continuation, its
    # frame 0 for a late packet of it (an outside probe: two acquisitions merged, one frame in no record)
    seen = newest.get("frames_seen")
    received = int(seen) if isinstance(seen, int) else 0
    return newest, max(_highest_stored(ledger, newest["run_uid"]), received)


def _unaccounted_before(
    recorder: RunRecorder, run: dict[str, Any], first_frame: int, reason: str, detail: str
) -> int:
    """Loss records (``reason``) of ``run`` for its frames before ``first_frame`` that it accounts for
    nowhere (no file, no veto, no loss record): the frames between it and the run that continues it.
    Returns how many records were written."""
    run_uid = run["run_uid"]
    covered = _accounted(recorder, run_uid, _vetoed_frames(recorder, run_uid)[0])
    added = 0
    for first, last in _missing_ranges(first_frame, _not_own(run, covered)):
        added += 1
        recorder.loss(run_uid, first, last, reason, detail)
    return added


def _capture_end(run: dict[str, Any]) -> int | None:
    """For an areaDetector capture's run: one past the last frame of its camera series as they announced
    their lengths (``capture_series`` offsets, ``capture_series_length``); None when none did."""
    config = run_config(run.get("config"))
    offsets, lengths = config.get("capture_series") or {}, config.get("capture_series_length") or {}
    if not isinstance(offsets, dict) or not isinstance(lengths, dict):
        return None
    ends = [
        int(offsets[series]) + int(length)
        for series, length in lengths.items()
        if isinstance(offsets.get(series), int) and isinstance(length, int) and length > 0
    ]
    return max(ends) if ends else None


def _captures_left(ledger: Any) -> set[str]:
    """The real paths of the ``.part`` files of every run's capture (``capture_file``): one a crash left
    stays where it is for good, as the run's records say."""
    return {os.path.realpath(f"{target}.part") for target in ledger.capture_files()}


def _open_captures(ledger: Any) -> dict[str, tuple[str, Path]]:
    """The ``.part`` files of the captures of runs not ended (``capture_file`` in their config), by their
    real path: (the run, the path as recorded)."""
    found: dict[str, tuple[str, Path]] = {}
    for run in ledger.runs_open():
        target = run_config(run.get("config")).get("capture_file")
        if isinstance(target, str) and target:
            part = Path(f"{target}.part")
            found[os.path.realpath(part)] = (str(run["run_uid"]), part)
    return found


SHOWN_SECONDS = 60.0  # a daemon up this long has shown its recovery alarm (and logged it)
SHOWN_RETRY_SECONDS = 10.0  # how often a start that could not keep that (a full disk) tries again


class UnseenRecoveries:
    """Since when crash recoveries may have gone unseen, kept beside the ledger (``recovery.unseen``).

    A daemon killed during (or just after) its crash recovery took the recovery's alarm with it: the next
    start found the runs already ended and said nothing, a run with 1,181 frames recorded lost and no
    ``daemon:recovery`` alarm (an outside chaos probe). The file holds a time: runs a recovery failed at
    or after it are named again by the next start (`note_earlier`). A daemon moves it to now once it has
    run `SHOWN_SECONDS`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def begin(self) -> float:
        """The time kept by the last daemon (which had not yet run `SHOWN_SECONDS`, or did since then),
        or now, kept, when there is none."""
        now = time.time()
        try:
            since = float(self.path.read_text(encoding="ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            since = math.nan
        if math.isfinite(since) and since <= now:
            return since
        self._keep(now)
        return now

    def shown(self) -> bool:
        """This daemon has run long enough: the recoveries so far have been shown. False when that could
        not be kept (a full disk)."""
        return self._keep(time.time())

    def shown_after(self, seconds: float, retry: float = SHOWN_RETRY_SECONDS) -> threading.Event:
        """`shown` once ``seconds`` have passed, on a thread of its own, tried again every ``retry``
        seconds while it cannot be kept (on a full disk it failed once, and every later start named runs
        this daemon had shown for minutes: an outside chaos probe). Set the event returned to cancel."""
        cancel = threading.Event()

        def mark() -> None:
            if cancel.wait(seconds):
                return
            while not self.shown():
                if cancel.wait(retry):
                    return

        threading.Thread(target=mark, name="recovery-shown", daemon=True).start()
        return cancel

    def _keep(self, when: float) -> bool:
        part = self.path.with_name(self.path.name + ".part")
        try:
            part.write_text(f"{when!r}\n", encoding="ascii")
            os.replace(part, self.path)
            return True
        except OSError as error:  # (a full disk: tried again by `shown_after`; said once)
            part.unlink(missing_ok=True)
            if not self._warned:
                log.warning("cannot keep %s: %s", self.path, error)
                self._warned = True
            return False

    _warned = False  # a failure to keep the file was logged


def note_earlier(ledger: Any, report: dict[str, Any], since: float) -> None:
    """Add to ``report`` the runs a recovery failed since ``since`` that it did not fail itself (a start
    killed before its recovery was seen: `UnseenRecoveries`), and their frames still recorded lost
    (``earlier_runs_failed``, ``earlier_frames_lost``): the ``daemon:recovery`` alarm names them."""
    own = set(report.get("runs_failed") or [])
    earlier = [row for row in ledger.runs_crashed_since(since) if row[0] not in own]
    if earlier:
        report["earlier_runs_failed"] = [uid for uid, _, _ in earlier]
        report["earlier_frames_lost"] = sum(lost for _, lost, _ in earlier)
        # when: each later start that ends within a minute names them again, and an operator read a
        # crash minutes old, two starts back, as a fresh one (an outside chaos probe)
        report["earlier_failed_at"] = min(at for _, _, at in earlier)
        log.warning(
            "recovery: %d run(s) failed by an earlier start that ended within %.0f s of its recovery (its"
            " alarm may not have been seen): %s (%d frames recorded lost to the crash)",
            len(earlier),
            SHOWN_SECONDS,
            ", ".join(uid for uid, _, _ in earlier),
            report["earlier_frames_lost"],
        )


def _interrupted_runs(
    ledger: Any, report: dict[str, Any], series: int, transport: str | None = None
) -> list[dict[str, Any]]:
    """The runs a series resumed after a restart may continue (`resume_interrupted`)."""
    failed = set(report.get("runs_failed") or [])
    if transport == "udp":
        udp = interrupted_udp_run(ledger, report)
        return [udp[0]] if udp is not None else []
    return [
        r
        for r in ledger.runs()
        if (int(r["series"]) == series or _series_offset(r, series) is not None)
        # (recovery's end of a run may be held in memory, the disk full: it is ended all the same)
        and (r["ended_at"] is not None or r["run_uid"] in failed)
        and (r["run_uid"] in failed or r["exit_status"] in ("abort", "fail"))
    ]


def _refused_through(ledger: Any, run_uid: str, frame: int) -> bool:
    """Whether the run refused ``frame`` already (a ``run_refused`` loss covers it): its series went past
    that frame while this daemon's predecessor was up, so a series resumed there is not that run's. An
    outside probe: a resumed series was linked to an earlier run refused whole on the full disk (the run
    it continued was in the journal still, the disk full), and its frames were counted in both."""
    return any(
        r["reason"] == "run_refused" and int(r["first_frame"]) <= frame <= int(r["last_frame"])
        for r in ledger.losses(run_uid)
    )


def _newest_of_series(ledger: Any, series: int) -> str | None:
    """The uid of the newest run (by start) of detector series ``series``, whatever its end."""
    runs = [r for r in ledger.runs() if int(r["series"]) == series or _series_offset(r, series) is not None]
    return str(max(runs, key=lambda r: r["started_at"])["run_uid"]) if runs else None


def _refusal_cut(run: dict[str, Any], frame: int) -> bool:
    """Whether ``run``, refused whole at its start (its announced frames recorded lost then, ``run_refused``),
    is the run a series resumed at ``frame`` continues: its series got no further than before ``frame``
    here (``frames_seen``, kept as its dropped images came) and announced more. Its frames from ``frame``
    on are not lost, then: the resumed run takes them. Unknown how far it got (a run recorded before
    this was kept), it is not: a series resumed past frames a refused run had seen is another (an
    outside probe's, the run it continued held in the journal on a full disk)."""
    seen, expected = run.get("frames_seen"), run.get("frames_expected")
    return seen is not None and int(seen) < frame and (expected is None or frame < int(expected))


def _series_offset(run: dict[str, Any], series: int) -> int | None:
    """Where detector series ``series`` lies in a capture's run, which takes every series from Capture 1
    to Capture 0 (its frame n is the run's n + offset: ``capture_series`` in the run's config); None
    when the run took no such series that way. A resumed series was looked for by the run's own series
    number only, the first of the capture: one cut later was taken for a new series (an outside probe,
    ophyd v1 scans: its frames stored in the capture counted lost in the new run too)."""
    offsets = run_config(run.get("config")).get("capture_series")
    try:
        offset = offsets.get(str(int(series))) if isinstance(offsets, dict) else None
    except (TypeError, ValueError):
        return None
    return int(offset) if isinstance(offset, int) and not isinstance(offset, bool) else None


def was_interrupted(ledger: Any, report: dict[str, Any], series: int, uid: str | None = None) -> bool:
    """Whether a run of ``series`` was cut by a restart (a run a series seen without its start may
    continue): the stream readers ask it before taking an image far beyond frame 0 for one. With
    ``uid`` (a start's run uid): whether such a run is the one it names, by its uid or the detector's
    uid it was recorded under."""
    runs = _interrupted_runs(ledger, report, series)
    if uid is None:
        return bool(runs)
    return any(uid in (r["run_uid"], _detector_uid(r)) for r in runs)


def interrupted_shape(ledger: Any, report: dict[str, Any], series: int) -> tuple[tuple[int, int], str] | None:
    """The frame shape (rows, columns) and pixel type of the newest run of ``series`` a restart may have
    cut, as its series' start gave them: a series resumed from its images keeps them, whatever its first
    image after the restart is (an outside probe: a wrong-size first image set the resumed run's shape,
    and every good frame after it was lost as wrong_shape). None when no such run is known or its record
    names no shape."""
    runs = _interrupted_runs(ledger, report, series)
    if not runs:
        return None
    config = run_config(max(runs, key=lambda r: r["started_at"]).get("config"))
    shape, dtype = config.get("shape"), config.get("type")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        or not isinstance(dtype, str)
    ):
        return None
    return (int(shape[1]), int(shape[0])), dtype


def _detector_uid(run: dict[str, Any]) -> str | None:
    """The uid the detector gave a run recorded under another (``detector_run_uid`` in its config)."""
    named = run_config(run.get("config")).get("detector_run_uid")
    return named if isinstance(named, str) else None


def resume_interrupted(
    recorder: RunRecorder,
    report: dict[str, Any],
    series: int,
    first_frame: int,
    transport: str | None = None,
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
    run of the series is known). A UDP series (``transport``) has no number of its own: the interrupted
    run is `interrupted_udp_run`'s.
    """
    ledger = recorder.ledger
    failed = set(report.get("runs_failed") or [])
    candidates = _interrupted_runs(ledger, report, series, transport)
    if transport != "udp" and candidates:
        # only the series' newest run can have been cut by this restart: one before it saw the series
        # number used again after it (an outside probe's series resumed in a run refused by a full disk
        # was linked to an older, unrelated run of the same number, its frames taken from there)
        newest = _newest_of_series(ledger, series)
        candidates = [r for r in candidates if newest is None or r["run_uid"] == newest]
    candidates = [
        r
        for r in candidates
        if not _refused_through(ledger, r["run_uid"], first_frame + (_series_offset(r, series) or 0))
        or _refusal_cut(r, first_frame + (_series_offset(r, series) or 0))
    ]
    if not candidates:
        log.warning("series %d resumed at frame %d: no interrupted run of it is known", series, first_frame)
        return {"resumes_run": None}
    interrupted = max(candidates, key=lambda r: r["started_at"])
    run_uid = interrupted["run_uid"]
    series_frame, first_frame = first_frame, first_frame + (_series_offset(interrupted, series) or 0)
    recorder.continued_at(run_uid, first_frame)  # (its account, below, says where the rest went)
    crashed = recorder.hand_over_losses(run_uid, "daemon_crash", first_frame)
    handed = crashed + recorder.hand_over_losses(run_uid, "receiver_stopped", first_frame)
    # a series refused whole at its start (a full disk) had its announced frames recorded lost then: those
    # the detector goes on sending after the restart are the new run's (counted in both before)
    handed += recorder.hand_over_losses(run_uid, "run_refused", first_frame)
    went_on = report.get("continuations_lost") or {}
    if crashed and (run_uid in failed or run_uid in went_on):  # recovery's count of frames unaccounted
        # for: these are, now (a run whose continuation a crash lost too: its records from this start's
        # recovery; the alarm and status kept 439 of which 29 stayed lost, an outside probe)
        report["frames_lost"] = max(0, int(report.get("frames_lost") or 0) - crashed)
        report["frames_handed_over"] = int(report.get("frames_handed_over") or 0) + crashed
        if run_uid in went_on:
            went_on[run_uid] = max(0, int(went_on[run_uid]) - crashed)
    elif crashed and run_uid in (report.get("earlier_runs_failed") or []):
        report["earlier_frames_lost"] = max(0, int(report.get("earlier_frames_lost") or 0) - crashed)
    added = _unaccounted_before(
        recorder,
        interrupted,
        first_frame,
        "daemon_restart",
        f"sent while the daemon was down, or received before it died and in no finished file (held in"
        f" memory, or written into a file it left half-written); series {series} resumed at frame"
        f" {series_frame} in a new run",
    )
    if handed or added:  # its documents (written when it ended) no longer tell its account: a new revision
        recorder.documents_when_possible(run_uid, str(ledger.run(run_uid)["exit_status"] or "fail"))
    try:  # what is lost for sure, now that the series is known to go on: in the ledger, and held for it
        # while the disk is full (an outside probe read "now counts 0" of a run that counted 172)
        held = sum(
            int(r["last_frame"]) - int(r["first_frame"]) + 1
            for r in recorder.held_losses(run_uid)
            if r["reason"] not in PARTIAL_LOSS_REASONS
        )
        lost: int | str = int(ledger.run_totals(run_uid)["frames_lost"]) + held
    except Exception:  # (its records held while the disk is full): not known yet
        lost = "an unknown number of"
    log.warning(
        "series %d resumed after a restart at frame %d: a new run continues run %s (%d frames handed over"
        " of those recorded lost at the restart; run %s now counts %s frames lost)",
        series,
        series_frame,
        run_uid,
        handed,
        run_uid,
        lost,
    )
    return {"resumes_run": run_uid}


def continue_after_pause(recorder: RunRecorder, run_uid: str, first_frame: int, new_run: str) -> int:
    """A UDP acquisition that went on at ``first_frame`` after a silence that ended run ``run_uid``
    (``udp.idle_seconds``), in run ``new_run``: each frame keeps one disposition. The frames from
    ``first_frame`` on are the new run's, so the ``series_end`` records ``run_uid`` wrote for them (with
    ``udp.frames_per_run`` set) are handed over; the frames before it that ``run_uid`` does not account
    for never arrived, and become its loss records ``frame_number_jump``. Called once ``run_uid`` is
    closed (its files registered); its documents get a new revision when its account changed. Returns
    the frames handed over."""
    ledger = recorder.ledger
    recorder.continued_at(run_uid, first_frame)  # (its account says where the rest went)
    run = ledger.run(run_uid)
    handed = ledger.hand_over_losses(run_uid, "series_end", first_frame)
    added = _unaccounted_before(
        recorder,
        run,
        first_frame,
        "frame_number_jump",
        f"no packet of these frames arrived; the detector was silent for longer than udp.idle_seconds"
        f" and went on at frame {first_frame}, in run {new_run}",
    )
    if (handed or added) and run.get("ended_at") is not None:
        recorder.write_documents(run_uid, str(ledger.run(run_uid)["exit_status"]))
    log.warning(
        "UDP acquisition went on after a pause at frame %d: run %s continues run %s (%d frames handed over)",
        first_frame,
        new_run,
        run_uid,
        handed,
    )
    return handed
