"""Run bookkeeping in one place: runs opened and closed, files registered, losses, run documents.

The receiver (through the ring sink), the pipeline and crash recovery are each handed this recorder
instead of a back-reference to the appliance; it is the only writer of run bookkeeping to the ledger.
Every loss goes through `loss`, so every drop is both a ledger record and a counted event.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

from edge.diskguard import DiskGuard, is_no_space
from edge.documents import run_documents, write_documents
from edge.durable import drop_cached, file_checksums
from edge.held_journal import HeldJournal
from edge.ledger import NOT_ACQUIRED_REASONS, PARTIAL_LOSS_REASONS, Ledger
from edge.logs import lost
from edge.store import ClosedFile

#: the run uids taken as they come: one file-name component (they name the run's files and directories,
#: here and upstream), 1 to 128 of ``A-Z a-z 0-9 . _ -``, not starting with a dot; any other is replaced
RUN_UID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

log = logging.getLogger(__name__)

#: a held loss record that grows frame by frame (a full disk losing every frame) is rewritten to the
#: journal at most this often: a crash meanwhile leaves its newest frames to the recovery (``daemon_crash``)
JOURNAL_MERGES_SECONDS = 1.0
#: how often the open run's highest frame received is written to the ledger (``write_progress``)
PROGRESS_SECONDS = 0.2
SEEN_BEFORE_KEPT = 64  # runs moved on from whose highest frame waits for their end


class RunRecorder:
    """Writes a run's bookkeeping to the ledger; reads nothing but what it needs to write."""

    def __init__(
        self,
        ledger: Ledger,
        store_root: Path,
        chunk_bytes: int,
        forward: str = "all",
        disk: DiskGuard | None = None,
        journal: HeldJournal | None = None,
    ) -> None:
        self.ledger = ledger
        self.disk = disk
        # where held records are kept as they are held: a stop or a crash does not lose them
        self.journal = journal
        self._pending_documents: dict[str, str] = {}  # run -> exit status, not written (disk full)
        # ledger writes a full disk refused even after the reserve was given up (a competing writer took
        # it, or there was none): held here in order, written first when space returns
        self._held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._not_journaled = 0  # held records the journal had no room for, as last counted
        self._journaled_at = float("-inf")  # when the held records were last written to the journal
        self._journal_dirty = False  # the journal holds entries (cleared once nothing is held)
        self._held_lock = threading.RLock()
        # files a full disk refused, made later: (what, how, of which run)
        self._deferred: list[tuple[str, Callable[[], Any], str | None]] = []
        self.store_root = store_root
        self.chunk_bytes = chunk_bytes
        self.forward = forward  # upstream.forward: all, reduced or hits
        self._modes: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # files_closed, runs_opened, runs_closed, losses by reason
        # the highest frame received into the open run, (run uid, frame), set by the receiving thread
        # (memory only) and written to the ledger by the writing thread every PROGRESS_SECONDS
        self._seen: tuple[str, int] | None = None
        self._seen_written: tuple[str, int] | None = None
        self._seen_at = float("-inf")
        # the highest frame of runs the receiver has moved on from, until their end is recorded (a next
        # series' first frame came before the run's end: its frames_seen was 0, an outside probe)
        self._seen_before: dict[str, int] = {}
        self._refused_runs: set[str] = set()  # refused runs whose series' frames are seen (dropped)

    # -- a run's progress -------------------------------------------------------------------------------
    def frame_seen(self, run_uid: str, frame: int) -> None:
        """A frame received into ``run_uid`` (the receiving thread, every frame: memory only)."""
        seen = self._seen
        if seen is not None and seen[0] != run_uid:
            if len(self._seen_before) >= SEEN_BEFORE_KEPT:  # (runs never closed: the oldest forgotten)
                del self._seen_before[next(iter(self._seen_before))]
            self._seen_before[seen[0]] = seen[1]
        if seen is None or seen[0] != run_uid or frame > seen[1]:
            self._seen = (run_uid, frame)

    def refused_frame_seen(self, run_uid: str, frame: int) -> None:
        """An image of a refused run's series, dropped (the receiving thread: memory, as `frame_seen`): how
        far its series got here is kept (`write_progress`), so a series resumed after a restart past it is
        known for that run's continuation, whose frames its refusal recorded lost up front."""
        if run_uid not in self._refused_runs:
            if len(self._refused_runs) >= SEEN_BEFORE_KEPT:
                self._refused_runs.pop()
            self._refused_runs.add(run_uid)
        self.frame_seen(run_uid, frame)

    def write_progress(self, now: float | None = None) -> None:
        """The open run's highest frame received, to the ledger, at most every ``PROGRESS_SECONDS`` and
        when it changed (the writing thread). After a crash, recovery accounts up to it a run whose
        series did not announce its length: its frames received were in no record (an outside probe:
        5 frames received, a kill -9, the run "0 stored, 0 lost"). A full ledger skips it (counted)."""
        seen = self._seen
        now = time.monotonic() if now is None else now
        if seen is None or seen == self._seen_written or now - self._seen_at < PROGRESS_SECONDS:
            return
        self._seen_at, self._seen_written = now, seen
        try:
            if seen[0] in self._refused_runs:  # (closed at its refusal: `refused_frame_seen`)
                self.ledger.refused_run_seen(*seen)
            else:
                self.ledger.run_seen(*seen)
        except sqlite3.OperationalError:  # a full disk: the next one goes when space returns
            self._count("progress_writes_skipped")

    # -- runs ------------------------------------------------------------------------------------------
    def run_length(self, run_uid: str, frames_expected: int) -> None:
        """The run's length, announced by a series start that came after its first images."""
        self._ledger_write(self.ledger.run_length, run_uid, frames_expected)

    def run_named(self, run_uid: str, detector_uid: str) -> None:
        """The uid a series start gave, learnt after the run opened from its images: kept as the run's
        ``detector_run_uid`` (one it has already stays)."""
        self._ledger_write(self.ledger.run_named, run_uid, detector_uid)

    def series_offset(self, run_uid: str, series: int, offset: int, length: int | None = None) -> None:
        """A capture's run took detector series ``series`` (of ``length`` frames, when announced), its
        frame numbers shifted by ``offset`` (`Ledger.run_series_offset`)."""
        self._ledger_write(self.ledger.run_series_offset, run_uid, series, offset, length)

    def note(self, run_uid: str, key: str, text: str) -> None:
        """Something the pipeline learnt of the run as it started, kept in its record (`Ledger.run_note`)."""
        self._ledger_write(self.ledger.run_note, run_uid, key, text)

    def continued_at(self, run_uid: str, frame: int) -> None:
        """The run's series went on in a run resumed after a restart from ``frame``
        (`Ledger.run_continued_at`)."""
        self._ledger_write(self.ledger.run_continued_at, run_uid, frame)

    def continuation_lost(self, run_uid: str) -> None:
        """The run its series went on in after a restart was never recorded
        (`Ledger.run_continuation_lost`)."""
        self._ledger_write(self.ledger.run_continuation_lost, run_uid)

    def open_run(
        self,
        run_uid: str | None,
        series: int,
        frames_expected: int | None,
        config: dict[str, Any],
        mode: str | None = None,
    ) -> str:
        """Record a new run; returns its uid (a fresh one when ``run_uid`` is missing, already used, or not
        a `RUN_UID` name: it names files and directories, here and upstream, so ``../x`` or ``a/b`` from a
        detector must never reach a path; the detector's id is kept as ``detector_run_uid``)."""
        uid = str(run_uid or uuid.uuid4())
        if not RUN_UID.fullmatch(uid):
            given, uid = uid, str(uuid.uuid4())
            log.warning("run uid %r from the detector is not a file name: the run is %s", given[:200], uid)
            refused: dict[str, Any] = {
                "detector_run_uid": given[:1024],
                "detector_run_uid_refused": "not a file name",
            }
            if len(given) > 1024:  # its first 1024 characters, and what identifies the whole
                whole = given.encode("utf-8", "surrogatepass")
                refused |= {
                    "detector_run_uid_bytes": len(whole),
                    "detector_run_uid_sha256": sha256(whole).hexdigest(),
                }
            # the config's run_uid is the run's: the detector's (up to megabytes of it) is not copied twice
            config = {**config, **refused, "run_uid": uid}
            self._count("run_uids_replaced")
        for key in ("header_fields_ignored", "header_fields_truncated"):
            for _ in config.get(key) or ():
                self._count(key)
        text = json.dumps(config)
        try:  # a full disk holds the record (the run is then refused: its frames become losses)
            self._ledger_write(self.ledger.run_started, uid, series, frames_expected, text, mode)
        except Exception as error:  # a repeated run uid: keep the data under a fresh one, and say whose
            given, uid = uid, str(uuid.uuid4())
            why = "the ledger already holds a run of that uid" if "UNIQUE" in str(error) else str(error)
            log.warning(
                "run uid %s not taken (%s): the run is recorded as %s (`edge where %s` names both)",
                given,
                why,
                uid,
                given,
            )
            refused = {"detector_run_uid": given, "detector_run_uid_refused": "already a run's uid"}
            self._count("run_uids_replaced")
            self.ledger.run_started(uid, series, frames_expected, json.dumps({**config, **refused}), mode)
        self._modes[uid] = mode
        self._count("runs_opened")
        if self.forward == "hits" and mode not in (None, "serial"):
            log.warning(
                "upstream.forward = hits forwards only serial mode's hits: run %s is %s, its data files stay"
                " on the appliance (its products and documents go upstream)",
                uid,
                mode,
            )
        return uid

    def close_run(self, run_uid: str, frames_stored: int, exit_status: str, frames_vetoed: int = 0) -> None:
        """The run ended (``success``, ``abort`` or ``fail``): record it and store its documents.

        A series the detector ended with ``success`` in which not one frame was stored or vetoed, but frames
        were lost, ends ``fail`` (counted as ``runs_failed_all_lost``): its RunStop's ``reason`` names the
        losses, and no reader takes it for a good run with nothing in it."""
        if exit_status == "success" and frames_stored == 0 and frames_vetoed == 0:
            losses = self.ledger.losses(run_uid)
            lost = [r for r in losses if not r.get("partial") and not r.get("not_acquired")]
            aside = PARTIAL_LOSS_REASONS + NOT_ACQUIRED_REASONS
            lost += [r for r in self.held_losses(run_uid) if r["reason"] not in aside]
            if lost:
                exit_status = "fail"
                self._count("runs_failed_all_lost")
                reasons = ", ".join(sorted({str(r["reason"]) for r in lost}))
                log.error(
                    "run %s: every frame of the series was lost (%s); the run ends fail", run_uid, reasons
                )
        seen = self._seen
        before = self._seen_before.pop(run_uid, None)
        if before is not None and (seen is None or seen[0] != run_uid):
            seen = (run_uid, before)
        if seen is not None and seen[0] == run_uid and seen != self._seen_written:
            # the highest frame received, exact as the run ends (it lagged by up to PROGRESS_SECONDS:
            # an outside probe read frames_seen 4 of a run that stored 0..9, null of one of 2 frames)
            self._seen_written = seen
            self._ledger_write(self.ledger.run_seen, *seen)
        self._ledger_write(self.ledger.run_ended, run_uid, exit_status, frames_stored, frames_vetoed)
        self.documents_when_possible(run_uid, exit_status)
        self._count("runs_closed")

    def retry_pending(self) -> None:
        """Write what a full disk held back (ledger records, then run documents), once there is room."""
        if not self._write_held():
            return
        while self._deferred:
            what, task, _run = self._deferred[0]
            try:
                task()
            except Exception as error:
                if self.disk is not None and self.disk.note_error(error):
                    return
                log.exception("%s, deferred while the disk was full, failed", what)
                self._count("deferred_writes_failed")
            else:
                log.warning("%s, deferred while the disk was full, is written", what)
            self._deferred.pop(0)
            self._journal_held()  # (its run no longer needs the next start to reopen it)
        for run_uid, exit_status in list(self._pending_documents.items()):
            try:
                self.write_documents(run_uid, exit_status)
            except Exception as error:
                if self.disk is not None and self.disk.note_error(error):
                    return
                raise
            del self._pending_documents[run_uid]
            self._journal_held()

    def when_space_returns(self, what: str, task: Callable[[], Any], run_uid: str | None = None) -> None:
        """A file the full disk refused (``what`` it is, for the log; of run ``run_uid``) is written by
        ``task`` once space returns, before any run's documents (they list it)."""
        log.error("%s: not written (disk full); it will be when space returns", what)
        self._deferred.append((what, task, run_uid))
        self._count("writes_deferred")
        self._journal_held()  # (its run reopened by the next start, if this daemon is killed meanwhile)

    def _ledger_write(self, write: Callable[..., Any], *args: Any) -> None:
        """A ledger write that survives a full disk: the reserve is given up and the write retried; if
        that fails too (no reserve, or another writer took its space) the write is held, in order with
        every later one, and made when space returns (`retry_pending`). A daemon killed meanwhile loses
        the held records, not the frames: its restart's recovery accounts for the run's frames again."""
        with self._held_lock:
            if self._held:
                self._hold(write, args)
                return
            try:
                write(*args)
                return
            except sqlite3.OperationalError as error:
                if self.disk is None or not self.disk.note_error(error):
                    raise
                if self.disk.release_reserve():
                    try:
                        write(*args)
                        return
                    except sqlite3.OperationalError as again:
                        if not is_no_space(again):
                            raise
                self._hold(write, args)

    def _hold(self, write: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not self._held:
            log.error("the ledger cannot write (disk full): its records are held until space returns")
        elif write == self.ledger.record_loss and self._held[-1][0] == write:
            run_uid, first, last, reason, detail = args
            held_run, held_first, held_last, held_reason, held_detail = self._held[-1][1]
            if (held_run, held_reason, held_detail) == (run_uid, reason, detail) and held_last + 1 == first:
                self._held[-1] = (write, (run_uid, held_first, last, reason, detail))  # one record, longer
                if time.monotonic() - self._journaled_at >= JOURNAL_MERGES_SECONDS:  # (not a sync a frame)
                    self._journal_held()
                return
        self._held.append((write, args))
        self._count("ledger_writes_held")
        self._journal_held()

    def hold(self, entries: list[tuple[str, list[Any]]]) -> None:
        """Records a stopped daemon held back that the full disk refuses again at this start (see
        `edge.held_journal.replay`): held, in order, ahead of any this daemon holds."""
        with self._held_lock:
            self._held[:0] = [(getattr(self.ledger, name), tuple(args)) for name, args in entries]
            self._count("ledger_writes_held", len(entries))
            self._journal_held()

    def _journal_held(self, extra: list[tuple[str, list[Any]]] | None = None) -> None:
        """Keep the held records (and ``extra`` ones), then the runs whose documents wait (``documents``:
        written by the next start after its recovery), in the journal, as they are now. A run with a file
        deferred until space returns (`when_space_returns`: its frame table, say, held in memory) is
        kept as ``run_reopened``: killed meanwhile, the next start's recovery finds the run open and
        writes what it can of it again, as after a clean stop (`give_up_held`). (An outside probe: a kill
        during a full-disk recovery lost a crashed run's recovered frame table for good, 920 stored
        frames in no table upstream.)"""
        if self.journal is None:
            return
        with self._held_lock:
            entries = [(getattr(w, "__name__", "?"), list(a)) for w, a in self._held] + (extra or [])
            deferred_runs = dict.fromkeys(run for _what, _task, run in self._deferred if run is not None)
        entries += [("run_reopened", [run_uid]) for run_uid in deferred_runs]
        entries += [("documents", [uid, status]) for uid, status in list(self._pending_documents.items())]
        if not entries:
            if self._journal_dirty:  # (nothing held any more: an empty journal, once)
                self.journal.clear()
                self._journal_dirty, self._not_journaled = False, 0
            return
        self._journal_dirty = True
        self._journaled_at = time.monotonic()
        missing = len(entries) - self.journal.keep(entries)
        if missing > self._not_journaled:  # (counted once each: the list is kept whole every time)
            self._count("ledger_writes_not_journaled", missing - self._not_journaled)
        self._not_journaled = missing

    def _write_held(self) -> bool:
        """Make the held ledger writes, oldest first; False if the disk refuses again."""
        with self._held_lock:
            made = taken = 0  # written; taken off the list (written, or failed for good)
            while self._held:
                write, args = self._held[0]
                try:
                    write(*args)
                except sqlite3.OperationalError as error:
                    if self.disk is not None and self.disk.note_error(error):
                        if taken:  # (those taken are not kept twice: a crash replays the rest)
                            self._journal_held()
                        return False
                    self._write_failed_late(write, args, error)
                except sqlite3.DatabaseError as error:  # a uid taken meanwhile, say: logged, not retried
                    self._write_failed_late(write, args, error)
                else:
                    self._count("ledger_writes_made_late")
                    made += 1
                self._held.pop(0)
                taken += 1
            if taken:
                self._journal_held()  # (what is left: runs whose documents wait, if any)
            if made:
                log.warning("wrote %d ledger record(s) held back through a full disk", made)
            return True

    def _write_failed_late(self, write: Callable[..., Any], args: tuple[Any, ...], error: Exception) -> None:
        self._count("ledger_writes_failed_late")
        name = getattr(write, "__name__", "?")
        log.error("a ledger write held through a full disk failed when made: %s%r: %s", name, args, error)

    def give_up_held(self) -> None:
        """At shutdown: a last try at what a full disk held back; what still cannot be written is logged,
        record by record (the log is then its only trace: the next start's recovery finds the run open
        and accounts for its frames again, as ``daemon_crash``)."""
        try:
            self.retry_pending()
        except Exception:
            log.exception("writing what the full disk held back failed at shutdown")
        with self._held_lock:
            held, deferred = list(self._held), [what for what, _task, _run in self._deferred]
            runs = {run for _what, _task, run in self._deferred if run is not None}
        documents = sorted(self._pending_documents)
        if not (held or deferred or documents):
            return
        log.error(
            "stopping with %d ledger record(s), %d file(s) and %d run document set(s) the full disk held"
            " back, not written",
            len(held),
            len(deferred),
            len(documents),
        )
        each = {"each": True}  # every one in the log, before "stopped" (summed, the last came after it)
        for write, args in held:
            name = getattr(write, "__name__", "?")
            log.error("not written: %s%r", name, tuple(str(a)[:200] for a in args), extra=each)
        for what in deferred:
            log.error("not written: %s", what, extra=each)
        for run_uid in documents:
            log.error("not written: run %s documents", run_uid, extra=each)
        # the runs this clean stop ended (their end held, or to be reopened for the recovery): the status
        # each ended with, noted before any is reopened, so that the next start's recovery finishes them
        # with it rather than as crashed ("fail", a crash alarm: an outside chaos probe, twice)
        ends = {str(args[0]): str(args[1]) for write, args in held if write == self.ledger.run_ended}
        notes: list[tuple[str, list[Any]]] = []
        for run_uid in sorted(runs | set(documents) | set(ends)):
            status = ends.get(run_uid) or self._exit_status(run_uid)
            if status is None or status == "fail":
                continue
            try:
                if run_uid in ends:  # its start may be held too: the note comes after the held records
                    raise LookupError(run_uid)
                self.ledger.run_note(run_uid, "stopped_cleanly", status)
            except Exception:  # the full disk: in the journal, ahead of the reopening
                notes.append(("run_note", [run_uid, "stopped_cleanly", status]))
        unopened = [
            run_uid for run_uid in sorted(runs | set(documents)) if not self._reopen_for_recovery(run_uid)
        ]
        with self._held_lock:  # kept for the next start, the runs to reopen after their records
            self._journal_held([*notes, *(("run_reopened", [run_uid]) for run_uid in unopened)])
        if self.journal is not None and self.journal.usable and not self._not_journaled:
            log.error(
                "the records not written are kept in %s: the next start writes them to the ledger before"
                " its recovery",
                self.journal.path,
            )

    def _exit_status(self, run_uid: str) -> str | None:
        """The run's exit status in the ledger (None: open, or unknown)."""
        try:
            status = self.ledger.run(run_uid).get("exit_status")
        except Exception:
            return None
        return None if status is None else str(status)

    def held_note(self, run_uid: str, key: str) -> str | None:
        """The newest note ``key`` of the run that a full disk holds back (None: none held)."""
        with self._held_lock:
            notes = [a[2] for w, a in self._held if w == self.ledger.run_note and a[:2] == (run_uid, key)]
        return str(notes[-1]) if notes else None

    def _reopen_for_recovery(self, run_uid: str) -> bool:
        """A run whose reduced file or documents were never written: its end is taken back in the ledger,
        so that the next start's recovery finds it open and accounts for its frames (stored ones in a
        recovered frame table, those only the lost rows told of as ``daemon_crash``) and writes its
        documents. Ended in the ledger, recovery passed it by: its frame table and documents never went
        upstream, and its vetoed blanks were in no record (an outside probe: a clean stop on a full
        disk)."""
        try:
            run = self.ledger.run(run_uid)
            if run.get("ended_at") is None:
                return True  # open still (its end held too): recovery finds it so
            self.ledger.run_reopened(run_uid)
        except Exception as error:
            log.error("run %s could not be reopened for the next start's recovery: %s", run_uid, error)
            return False
        log.error(
            "run %s reopened in the ledger: the next start's recovery accounts for its frames and writes"
            " its frame table and documents",
            run_uid,
        )
        return True

    def held(self) -> int:
        """How many ledger writes wait for space."""
        with self._held_lock:
            return len(self._held)

    def held_losses(self, run_uid: str) -> list[dict[str, Any]]:
        """The run's loss records held back, in the shape of the ledger's."""
        keys = ("run_uid", "first_frame", "last_frame", "reason", "detail")
        with self._held_lock:
            held = [a for w, a in self._held if w == self.ledger.record_loss and a[0] == run_uid]
        return [dict(zip(keys, args, strict=True)) for args in held]

    def held_end(self, run_uid: str) -> str | None:
        """The exit status of the run's end, when a full disk holds that record back (None otherwise):
        the run has ended, the ledger does not say so yet."""
        with self._held_lock:
            ends = [a[1] for w, a in self._held if w == self.ledger.run_ended and a[0] == run_uid]
        return str(ends[-1]) if ends else None

    def hand_over_losses(self, run_uid: str, reason: str, from_frame: int) -> int:
        """Take frames ``from_frame`` and later out of the run's loss records of ``reason``, in the
        ledger and among those held while the disk is full (recovery's, written after a crash on a full
        disk): another run accounts for them now. Returns how many frames."""
        frames = 0
        with self._held_lock:
            kept: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
            for write, args in self._held:
                if write == self.ledger.record_loss and args[0] == run_uid and args[3] == reason:
                    uid, first, last, why, detail = args
                    if last >= from_frame:
                        frames += last - max(first, from_frame) + 1
                        if first >= from_frame:
                            continue
                        args = (uid, first, from_frame - 1, why, detail)
                kept.append((write, args))
            self._held[:] = kept
            if not self._held:
                try:
                    return frames + self.ledger.hand_over_losses(run_uid, reason, from_frame)
                except sqlite3.OperationalError as error:
                    if self.disk is None or not self.disk.note_error(error):
                        raise
            # the ledger's rows change when space returns, in order after what is held before them
            frames += sum(
                int(r["last_frame"]) - max(int(r["first_frame"]), from_frame) + 1
                for r in self.ledger.losses(run_uid)
                if r["reason"] == reason and int(r["last_frame"]) >= from_frame
            )
            self._hold(self.ledger.hand_over_losses, (run_uid, reason, from_frame))
        return frames

    def documents_when_possible(self, run_uid: str, exit_status: str) -> None:
        """The run's documents (a new revision when it has some): now, or when space returns while the
        disk is full (`retry_pending`): they list what the ledger holds and the files to come."""
        if self.held() or self._deferred:
            self._pending_documents[run_uid] = exit_status
            self._journal_held()  # (a kill meanwhile lost them: an outside probe, two runs undocumented)
            log.error("run %s: documents wait until the ledger can write again (disk full)", run_uid)
            return
        try:
            self.write_documents(run_uid, exit_status)
        except Exception as error:
            if self.disk is None or not self.disk.note_error(error):
                raise
            self._pending_documents[run_uid] = exit_status  # written when space returns
            self._journal_held()
            log.error("run %s: documents not written (disk full); they will be when space returns", run_uid)

    def write_documents(self, run_uid: str, exit_status: str) -> None:
        """RunStart..RunStop for the run, as a file that is stored and forwarded like the data."""
        run = self.ledger.run(run_uid)
        config = json.loads(run.get("config") or "{}")
        shape = config.get("shape")
        files = self.ledger.files(run_uid)
        revision = 1 + sum(1 for f in files if f.get("kind") == "documents")  # earlier ones stay as sent
        docs = run_documents(
            run,
            [f for f in files if f.get("kind") != "documents"],
            self.ledger.losses(run_uid),
            (int(shape[1]), int(shape[0])) if shape else None,
            exit_status,
            revision,
        )
        path = write_documents(self.store_root / run_uid, run_uid, docs, revision)
        self.register_file(run_uid, path, (-1, -1, 0), "documents")

    # -- files -----------------------------------------------------------------------------------------
    def file_closed(self, closed: ClosedFile) -> None:
        """A data file was finished (fsynced and renamed): checksum it and register it with its chunks."""
        frames = (closed.first_frame, closed.last_frame, closed.n_frames)
        self.register_file(
            closed.run_uid, closed.path, frames, closed.kind, closed.holds, closed.vetoed, closed.frame_ranges
        )
        self._count("files_closed")

    def stays_local(self, run_uid: str, kind: str) -> bool:
        """Whether a file of this kind is never forwarded under ``upstream.forward``.

        The run's reduced files and documents always go upstream (they prove every frame's fate);
        ``reduced`` keeps raw frames local, ``hits`` forwards only the frames of serial hits.
        """
        if kind in ("reduced", "documents") or self.forward == "all":
            return False
        if self.forward == "hits":
            if run_uid not in self._modes:
                self._modes[run_uid] = self.ledger.run(run_uid).get("mode")
            return not (kind == "data" and self._modes[run_uid] == "serial")
        return True

    def register_file(
        self,
        run_uid: str,
        path: Path,
        frames: tuple[int, int, int],
        kind: str = "data",
        holds: str | None = None,
        vetoed: int | None = None,
        frame_ranges: str | None = None,
    ) -> None:
        """Checksum a closed file and record it, with its transfer chunks, in one transaction."""
        size, digest, chunks = file_checksums(path, self.chunk_bytes)
        local = self.stays_local(run_uid, kind)
        self._ledger_write(
            self.ledger.file_stored,
            run_uid,
            path.name,
            path,
            size,
            digest,
            frames,
            chunks,
            kind,
            local,
            holds,
            vetoed,
            frame_ranges,
        )
        if local:  # never forwarded: nothing reads it again soon
            drop_cached(path)

    def earlier_parts(
        self, run_uid: str, mode: str | None = None, limit: int = 64
    ) -> tuple[list[str], list[Path], int]:
        """What a run resumed after a restart continues: ``run_uid`` (the interrupted run) and the runs it
        continued in turn (``resumes_run``, at most ``limit``; with ``mode``, only as far back as they were
        reduced in that mode), oldest first; their data files still on
        local disk, in frame order; and how many of their data files are not (purged after upstream
        verification or retired by policy, or gone). A stage that needs the series' earlier frames (a
        tomography scan's darks, flats and projections) reads them there."""
        runs: list[str] = []
        uid: str | None = run_uid
        while uid and uid not in runs and len(runs) < limit:
            try:
                run = self.ledger.run(uid)
                config = json.loads(run.get("config") or "{}")
            except Exception:  # an unknown run: the chain ends here
                break
            if mode is not None and run.get("mode") != mode:  # its files hold no such products
                break
            runs.append(uid)
            uid = config.get("resumes_run")
        runs.reverse()
        files: list[Path] = []
        missing = 0
        for uid in runs:
            data = [f for f in self.ledger.files(uid) if f.get("kind") == "data"]
            for f in sorted(data, key=lambda f: (int(f["first_frame"]), int(f["id"]))):
                path = Path(f["path"])
                if f["state"] == "purged" or not path.is_file():
                    missing += 1
                else:
                    files.append(path)
        return runs, files, missing

    # -- losses ----------------------------------------------------------------------------------------
    def loss(self, run_uid: str | None, first: int, last: int, reason: str, detail: str = "") -> None:
        """Frames ``first..last`` of the run will never be stored: a loss record with the reason."""
        self._ledger_write(self.ledger.record_loss, run_uid, first, last, reason, detail)
        log.warning("frames %d..%d lost: %s %s", first, last, reason, detail, extra=lost(first, last, reason))
        self._count(f"frames_lost_{reason}", last - first + 1)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
