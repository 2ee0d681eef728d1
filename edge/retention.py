"""Retention: keep the store inside its quota by purging verified files, and never anything else.

Only files whose every required consumer returned the checksum (ledger state ``verified``) are ever
deleted: oldest first, when the store is above its high water mark (until it is below the low one) or
when older than ``max_age_seconds``. When the store is full of data not yet verified the appliance
raises an alarm, applies backpressure (the pipeline waits, the ring fills, the detector stream is
held back) and refuses new runs with the reason, keeping ``headroom_bytes`` free so that open files
can always be closed. A forecast says when the local disk would be full at the current write rate.

Time and concurrency are passed in: a ``clock`` (monotonic seconds) for the pressure check's age and
the forecast, a ``wall_clock`` for file ages, and an ``executor`` that runs the off-thread pressure
check (by default one worker thread that :meth:`Retention.stop` shuts down), so tests drive it with a
fake clock and a synchronous executor instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from edge.config import RetentionSettings
from edge.diskguard import is_no_space
from edge.ledger import Ledger
from firmware_bridge.source import Checkpoint, Spawner, plain_spawn

log = logging.getLogger(__name__)

PRESSURE_RECHECK_S = 0.2
#: seconds without growth after which the store is "not filling" (``forecast_seconds``)
STILL_SECONDS = 10.0
FREE_RECHECK_S = 0.01  # the disk's free space, asked before every frame, is measured this often at most
PURGE_BATCH = 256  # verified files asked of the ledger at a time while purging down to the low water mark
COMPACT_BATCH = 64  # purged files of an older ledger whose chunk rows are dropped per retention pass


def _disk_size(root: Path) -> int:
    """The size of the disk holding ``root`` that can hold data: what is used and what is free (to an
    unprivileged writer), as ``df`` counts its percentage; not the file system's nominal size, which
    holds blocks reserved or never available (a 252 GiB volume of which 102 GiB could hold data: the
    store's capacity read 252 GiB beside the disk bar's 101, its high-water mark out of reach, an
    outside probe)."""
    usage = psutil.disk_usage(str(root))
    return int(usage.used + usage.free)


class Retention:
    """Runs the purge policy on its own thread and answers "may a run start / may we write?"."""

    def __init__(
        self,
        ledger: Ledger,
        root: Path,
        settings: RetentionSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
        disk_low_bytes: int = 0,
    ) -> None:
        self.ledger = ledger
        # below this much free space on the store's disk (and below the headroom) the disk's own count
        # of what is in use decides the fill (``filled``): the daemon passes what its disk guard needs
        # free to resume writing
        self.root = root
        self.settings = settings
        self._disk_total = _disk_size(root)
        if settings.quota_bytes > self._disk_total > 0:
            log.warning(
                "retention.quota_bytes (%d) is more than the store's whole disk (%d bytes): the disk's size"
                " is the store's capacity instead",
                settings.quota_bytes,
                self._disk_total,
            )
        if self.headroom() < settings.headroom_bytes:
            log.warning(
                "retention.headroom_bytes (%d) is more than a quarter of the store's %s (%d bytes): %d bytes"
                " are kept free instead (else no run could ever start)",
                settings.headroom_bytes,
                "quota" if self._quota() else "disk",
                self._quota() or self._disk_total,
                self.headroom(),
            )
        self.disk_low_bytes = max(disk_low_bytes, self.headroom())
        self.clock = clock
        self.wall_clock = wall_clock
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(1, thread_name_prefix="pressure-check")
        self.stats: Counter[str] = Counter()
        self._unrecorded: set[int] = set()  # files deleted whose purge the full ledger could not record
        self._unrecorded_logged = 0.0
        self._compacted = False  # True once no purged file keeps chunk rows (`Ledger.compact_purged`)
        self.alarm: str | None = None
        # the newest purge that failed, until one succeeds: with the store full, writing waits for room
        # that only purging makes, so the alarm says why none comes
        self.purge_error: str | None = None
        self._samples: deque[tuple[float, int]] = deque(maxlen=120)
        self._stop = threading.Event()
        # set when writing is held back and verified files could make room: the next pass runs now,
        # not after interval_seconds (the pipeline waits for it, the ring filling meanwhile)
        self._purge_now = threading.Event()
        self._hurried_at = float("-inf")  # when the disk's low free space last woke the purge
        self._free_measured: tuple[float, int] | None = None  # (monotonic time, bytes): `_disk_free_recent`
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: bytes of the files open for writing now (the pipeline's, set once it exists): in `usage`
        self.open_bytes: Callable[[], int] = lambda: 0
        self._pressure: tuple[float, bool] | None = None  # (when, answer) of the last under_pressure
        # the last under_pressure answered at once from the disk's free space (at or below the headroom):
        # ``writing_held`` read false meanwhile, and the disk-full alarm "recorded lost" of frames held
        # back (an outside probe)
        self._held_by_disk = False
        self._refreshing = threading.Event()

    # -- policy ---------------------------------------------------------------------------------------
    def headroom(self) -> int:
        """``retention.headroom_bytes``, at most a quarter of the quota (or of the disk): a headroom of the
        default 64 MiB on a 55 MB disk left no room for any run ("0 B of 0 B", an outside probe)."""
        size = self._quota() or self._disk_total
        return min(self.settings.headroom_bytes, size // 4) if size > 0 else self.settings.headroom_bytes

    def _quota(self) -> int:
        """``retention.quota_bytes``, at most the disk's size (a quota of 2^64 bytes on a 270 GB disk was
        reported as the capacity, its high-water mark never reached: an outside probe); 0: none."""
        quota = self.settings.quota_bytes
        return min(quota, self._disk_total) if quota and self._disk_total > 0 else quota

    def capacity(self) -> int:
        """Bytes the store may use: the quota (at most the disk's size), or the disk's size (`_disk_size`)."""
        if self.settings.quota_bytes:
            return self._quota()
        return _disk_size(self.root)

    def usage(self) -> dict[str, int]:
        """The ledger's count of the store's files (`Ledger.store_usage`) with the files open for writing
        now (``open``, in ``total`` and ``unverified``): the ledger knows a file once it is closed, and a
        capture's one file, open across a whole scan, took the store to 165% of its quota with new runs
        still accepted (an outside probe). Holding writing back (`under_pressure`) counts closed files
        only: an open file is finished by the frames it would hold back."""
        used = dict(self.ledger.store_usage())
        try:
            opened = max(0, int(self.open_bytes()))
        except Exception:  # (a file closing meanwhile, say): counted at the next look
            opened = 0
        used["open"] = opened
        used["total"] += opened
        used["unverified"] += opened
        return used

    def _disk_free(self) -> int:
        """Bytes free on the store's file system (for an unprivileged writer)."""
        return int(psutil.disk_usage(str(self.root)).free)

    def _disk_free_recent(self) -> int:
        """``_disk_free`` measured at most every ``FREE_RECHECK_S``: asked before every frame, a statvfs
        each time cost ~0.2 ms of the frame thread's time in a busy daemon (the call lets the GIL go and
        waits to take it back behind the other threads; a py-spy profile of the serial benchmark). In
        10 ms a detector writing 6 GB/s fills the default headroom (64 MiB)."""
        now = time.monotonic()
        measured = self._free_measured
        if measured is None or now - measured[0] >= FREE_RECHECK_S:
            measured = self._free_measured = (now, self._disk_free())
        return measured[1]

    def filled(self, used: dict[str, int]) -> int:
        """How full the store is for the policy: its files' bytes (the ledger's); or, once the disk
        holding it has less than ``disk_low_bytes`` free, at least the capacity less that free space.
        The ledger knows only the store's files; the disk also holds the ledger and its journal, its
        reserve, quarantined files and whatever else shares the file system. Without this, a disk
        filled by those could stay full for good: below the high water mark by the ledger's count,
        nothing verified was purged, and writing never resumed."""
        free = self._disk_free()
        if free >= self.disk_low_bytes:
            return int(used["total"])
        return max(int(used["total"]), self.capacity() - free)

    def _confirmers(self) -> str:
        """Who must confirm data before it is verified: the required consumers that have not confirmed
        all of it, by name, and those that have (an outside probe read "waiting for (hpc, tape)" with
        hpc's confirmations all in, tape never connected): "the required consumer (tape) to confirm it
        (hpc has confirmed all of it)"."""
        names = list(getattr(self.ledger, "required_consumers", ()) or ())
        if not names:
            return "the HPC consumer to confirm it"
        owing = self.ledger.consumers_owing(names) or names
        done = [name for name in names if name not in owing]
        said = f"the required consumer{'' if len(owing) == 1 else 's'} ({', '.join(owing)}) to confirm it"
        if done:
            said += f" ({', '.join(done)} {'has' if len(done) == 1 else 'have'} confirmed all of it)"
        return said

    def _limit(self) -> int:
        """Bytes the store may fill before it is under pressure (capacity minus the headroom)."""
        return max(0, self.capacity() - self.headroom())

    def refusal(self) -> str | None:
        """Why a new run must be refused now, or None."""
        used = self.usage()
        limit = self._limit()
        if used["unverified"] >= limit * self.settings.high_water:
            # "full" only when it is: at the high-water mark there is still room, but it is kept for runs
            # already going until the consumer has verified what is waiting
            state = (
                "full of"
                if used["total"] >= limit
                else f"above its high-water mark ({self.settings.high_water:.0%}) with"
            )
            # the store's size less the headroom, said so (an outside probe read "of 123.0 MiB" beside the
            # dashboard's "the store's 124 MiB")
            headroom = self.headroom()
            capacity = _size(self.capacity())
            less = f": the store's {capacity} less {_size(headroom)} headroom" if headroom else ""
            local = int(used.get("local", 0))
            if not local:
                return (
                    f"local store {state} data not yet verified upstream ({_size(used['unverified'])} of"
                    f" {_size(limit)}{less}); waiting for {self._confirmers()}"
                )
            # files never forwarded (upstream.forward) are no consumer's to free: said so, apart (an outside
            # probe: refused "waiting for hpc", the outlook saying every stored file was verified)
            waiting = used["unverified"] - local
            upstream = f", {_size(waiting)} waiting for {self._confirmers()}" if waiting else ""
            freed_by = (
                f"until retention.unforwarded_days = {self.settings.unforwarded_days:g} retires them"
                if self.settings.unforwarded == "purge_after_days"
                else "with retention.unforwarded = keep only a larger quota or moving them away frees it"
            )
            return (
                f"local store {state} data it may not delete ({_size(used['unverified'])} of {_size(limit)}"
                f"{less}): {_size(local)} never forwarded (upstream.forward), kept local ({freed_by})"
                f"{upstream}"
            )
        if used["verified"] > 0 and self.purge_error is not None and self.filled(used) >= limit:
            return (
                f"local store full ({_size(used['total'])} of {_size(limit)}) and its verified files"
                f" cannot be deleted ({self.purge_error}): writing waits for room"
            )
        if used["verified"] == 0 and self.filled(used) >= limit:
            # the disk itself is full (of what the ledger does not count) and nothing can be purged
            free = self._disk_free()
            return (
                f"the disk holding the local store is full to the headroom kept free ({_size(free)} free,"
                f" headroom {_size(self.headroom())}; the store's closed files are {_size(used['total'])},"
                " the rest is its open and quarantined files, the ledger and other files on that file"
                " system) and nothing verified upstream is left to purge"
            )
        return None

    def under_pressure(self) -> bool:
        """True while writing more would eat into the headroom: the store, or the disk holding it, is
        full. Verified files do not lift it: they are room only once purged (writing resumed the moment
        one file was verified, then filled the headroom at the detector's rate before the next retention
        pass deleted anything: a full disk and frames lost). While they exist the purge runs at once.

        Asked before every frame, so it never waits on the ledger: the answer is recomputed (two
        ledger queries and a disk query) on the executor when older than ``PRESSURE_RECHECK_S``, and
        the last answer stands meanwhile. Usage counts closed files only, which change a few times a
        second. The first call computes it in place.

        The disk's own free space is asked every time (a statvfs, microseconds): at or below the
        headroom, writing waits at once. Between two recomputed answers (0.2 s and the pipeline's
        queue) a detector writing 30 MB/s filled an 8 MiB headroom, open files and the ledger's
        journal not being in the ledger's count, and frames were lost to a full disk while the pull
        client kept up (an outside chaos probe).
        """
        headroom = self.headroom()
        if headroom > 0 and self._disk_free_recent() <= headroom:  # (0: none kept: on to ENOSPC)
            self._held_by_disk = True  # (said by ``writing_held``, as the recomputed answer is)
            now = self.clock()
            if now - self._hurried_at >= PRESSURE_RECHECK_S:  # verified files may make the room
                self._hurried_at = now
                self._purge_now.set()
            return True
        self._held_by_disk = False
        cached = self._pressure
        if cached is None:
            return self._refresh_pressure()
        if self.clock() - cached[0] >= PRESSURE_RECHECK_S and not self._refreshing.is_set():
            self._refreshing.set()
            try:
                self._executor.submit(self._refresh_in_background)
            except RuntimeError:  # the executor is shut down (stopping): the last answer stands
                self._refreshing.clear()
        return self._pressure[1] if self._pressure is not None else cached[1]

    def _refresh_in_background(self) -> None:
        try:
            self._refresh_pressure()
        except Exception as error:  # the ledger closing at shutdown, say: keep the last answer, count it
            self.stats["pressure_check_errors"] += 1
            log.warning("store pressure check failed (%s); keeping the last answer", error)

    def _refresh_pressure(self) -> bool:
        try:
            # the closed files only: an open file counted here held back the very frames that would
            # finish it, and nothing could ever verify it (a store at its quota stalled for good)
            used = self.ledger.store_usage()
            pressed = self.filled(used) >= self._limit()
            self._pressure = (self.clock(), pressed)
            if pressed and used["verified"] > 0:
                self.stats["purges_hurried"] += 1
                self._purge_now.set()
            return pressed
        finally:
            self._refreshing.clear()

    def purge_once(self, now: float | None = None) -> int:
        """Purge what the policy allows; returns the number of files purged.

        Asks the ledger only for the files it may purge now (older than the maximum age, and the oldest
        verified ones, a batch at a time, while above the high water mark), never the whole history.
        """
        now = self.wall_clock() if now is None else now
        self._record_held_purges()
        used = self.usage()
        limit = self._limit()
        high = limit * self.settings.high_water
        low = limit * self.settings.low_water
        target = used["total"] - low if used["total"] > high else 0
        free = self._disk_free()
        if free < self.disk_low_bytes:  # the disk itself is full (see `filled`): make twice that room
            target = max(target, 2 * self.disk_low_bytes - free)
        purged = 0
        if self.settings.max_age_seconds:
            for row in self.ledger.purgeable_files(verified_before=now - self.settings.max_age_seconds):
                if int(row["id"]) in self._unrecorded:  # deleted already; its record waits
                    continue
                if self._purge(row):
                    target -= row["size"]
                    purged += 1
        if self.settings.unforwarded == "purge_after_days":
            purged += self._retire_unforwarded(now)
        while target > 0:
            batch = self.ledger.purgeable_files(limit=PURGE_BATCH)
            done = 0
            for row in batch:
                if target <= 0:
                    break
                if int(row["id"]) in self._unrecorded:  # deleted already; its record waits
                    continue
                if self._purge(row):
                    target -= row["size"]
                    done += 1
            purged += done
            if done == 0:  # nothing verified left, or nothing could be deleted: try again next pass
                break
        self._update_alarm()
        return purged

    def _purge(self, row: dict[str, Any]) -> bool:
        """Delete one verified file and mark it purged; False (counted, logged) if it cannot be deleted."""
        path = Path(row["path"])
        try:
            size = path.stat().st_size  # what deleting it frees (a file truncated by hand: less than stored)
            path.unlink()
            gone = False
        except FileNotFoundError:  # deleted by hand (or its disk gone) before: no room made by this purge
            gone, size = True, 0
        except OSError as error:
            self.stats["purge_errors"] += 1
            self.purge_error = f"cannot delete {path}: {error.strerror or error}"
            log.error("cannot purge %s: %s", path, error)
            return False
        self.purge_error = None
        if not self._record_purged(int(row["id"])):
            self._unrecorded.add(int(row["id"]))  # gone from the disk; recorded when the ledger can
        self.stats["files_purged"] += 1
        if gone:  # (its purge was logged with its bytes, as if it had made room: an outside probe)
            self.stats["files_purged_already_gone"] += 1
            log.warning("purged %s (verified upstream): it was already gone from the local disk", path.name)
            return True
        self.stats["bytes_purged"] += size
        if size != row["size"]:  # (it said the stored size, room it did not make: an outside probe)
            log.warning(
                "purged %s (verified upstream): %d bytes on the disk, %d when stored (changed by hand)",
                path.name,
                size,
                row["size"],
            )
            return True
        log.info("purged %s (verified upstream, %d bytes)", path.name, size)
        return True

    def _record_purged(self, file_id: int) -> bool:
        """Mark a deleted file purged in the ledger; False when the full disk refuses the write (counted,
        logged at most once a minute; `purge` tries again first thing each pass). Before, the refusal
        raised out of the pass: the file was gone, still "verified" in the ledger, every pass after it
        retried that row first and failed (a traceback every half second), and the other verified files
        were never purged, so the disk stayed full (an outside probe, headroom 0 and no reserve)."""
        try:
            self.ledger.file_purged(file_id)
        except sqlite3.OperationalError as error:
            if not is_no_space(error):
                raise
            self.stats["purges_unrecorded_disk_full"] += 1
            if self.clock() >= self._unrecorded_logged:
                self._unrecorded_logged = self.clock() + 60.0
                log.error(
                    "the ledger cannot record purged files (disk full): %s; the files are deleted, each is"
                    " recorded purged once the ledger can write",
                    error,
                )
            return False
        return True

    def _record_held_purges(self) -> None:
        """Record the purges a full disk kept the ledger from recording, oldest first."""
        for file_id in sorted(self._unrecorded):
            if not self._record_purged(file_id):
                return
            self._unrecorded.discard(file_id)

    def _retire_unforwarded(self, now: float) -> int:
        """Files never forwarded (``upstream.forward``), older than ``unforwarded_days``: deleted, and each
        one logged and marked purged in the ledger (never silently)."""
        retired = 0
        for row in self.ledger.local_files(now - self.settings.unforwarded_days * 86400.0, PURGE_BATCH):
            path = Path(row["path"])
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                self.stats["purge_errors"] += 1
                log.error("cannot retire %s: %s", path, error)
                continue
            self.ledger.file_retired(row["id"])
            self.stats["files_retired_unforwarded"] += 1
            self.stats["bytes_purged"] += row["size"]
            log.warning(
                "retired %s (never forwarded, older than retention.unforwarded_days = %g)",
                path.name,
                self.settings.unforwarded_days,
            )
            retired += 1
        return retired

    def _update_alarm(self) -> None:
        reason = self.refusal()
        if reason and not self.alarm:
            log.error("ALARM: %s", reason)
            self.stats["alarms"] += 1
        elif self.alarm and not reason:
            log.warning("alarm cleared: store below its high water mark")
        self.alarm = reason

    # -- thread ---------------------------------------------------------------------------------------
    def start(self, spawn: Spawner = plain_spawn) -> None:
        """Run the policy every ``interval_seconds`` on a thread started by ``spawn`` (supervised)."""
        self._thread = spawn("retention", self._run)

    def stop(self) -> None:
        self._stop.set()
        self._purge_now.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, checkpoint: Checkpoint) -> None:
        while True:
            self._purge_now.wait(self.settings.interval_seconds)
            self._purge_now.clear()
            if self._stop.is_set():
                return
            checkpoint()
            self.run_pass()

    def run_pass(self) -> None:
        """One pass of the policy (what the thread does every ``interval_seconds``): purge, sample."""
        try:
            self.purge_once()
            if not self._compacted:  # a ledger from an older edge: its purged files' chunk rows, in batches
                done = self.ledger.compact_purged(COMPACT_BATCH)
                self.stats["files_compacted"] += done
                self._compacted = done < COMPACT_BATCH
            self._samples.append((self.clock(), self.usage()["unverified"]))
        except Exception:  # keep the policy running, loudly
            log.exception("retention pass failed")
            self.stats["retention_errors"] += 1

    # -- views ----------------------------------------------------------------------------------------
    def forecast_seconds(self) -> float | None:
        """Seconds until the store is full of data retention may not delete (not yet verified upstream,
        or kept local), at the rate that data grew over the last two minutes (written minus verified);
        None while it is not growing. Verified files count as room: retention purges them for space.

        The growth is that of the low points, the least unverified data of the window's first and last
        quarters: while the consumer keeps up, unverified data comes and goes a file at a time, and two
        single samples (the window's ends) caught it once at 0 and once at a file's size: "full in 3
        days" flickered on a store that was not filling (an outside dashboard probe)."""
        samples = list(self._samples)
        if len(samples) < 2:
            return None
        # not growing now: nothing in the last STILL_SECONDS above the least of the STILL_SECONDS before
        # (a run that ended with its data not yet verified: "full in 8.4 s" on an idle appliance, an
        # outside probe; the two-minute window's rate goes on for a minute and more after writing stops)
        newest = samples[-1][0]
        recent = [b for t, b in samples if t > newest - STILL_SECONDS]
        before = [b for t, b in samples if newest - 2 * STILL_SECONDS < t <= newest - STILL_SECONDS]
        if before and max(recent) <= min(before):
            return None
        k = max(1, len(samples) // 4)
        t0, b0 = samples[0][0], min(b for _, b in samples[:k])
        t1, b1 = samples[-k][0], min(b for _, b in samples[-k:])
        rate = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        if rate <= 0:
            return None
        used = self.usage()
        free = min(
            self._disk_free() + used["verified"],
            max(0, self._limit() - used["unverified"]),
        )
        return free / rate

    def status(self) -> dict[str, Any]:
        used = self.usage()
        forecast = self.forecast_seconds()
        # the reason as of now, as ``accepting_runs``: the pass that logs it runs every interval_seconds,
        # and between the two a refused store read "alarm": null (an outside dashboard probe)
        refusal = self.refusal()
        disk = psutil.disk_usage(str(self.root))
        return {
            "capacity_bytes": self.capacity(),
            "headroom_bytes": self.headroom(),  # as kept (at most a quarter of the quota or disk)
            # unverified data at which new runs are refused (the high-water mark of what the store may
            # fill): the dashboard's "left" (an outside probe read 6.7 MiB left with 2.4 MiB to refusal)
            "refuse_at_bytes": int(self._limit() * self.settings.high_water),
            "store_bytes": used["total"],
            # of them, in files open for writing now (a capture's file, open across its scan)
            "open_bytes": int(used.get("open", 0)),
            "unverified_bytes": used["unverified"],
            # of them, files never forwarded (upstream.forward): no consumer's confirmation frees them
            "local_bytes": int(used.get("local", 0)),
            "verified_bytes": used["verified"],
            "disk_free_bytes": disk.free,
            "disk_percent": disk.percent,
            "full_in_seconds": None if forecast is None else round(forecast, 1),
            "alarm": refusal,
            "accepting_runs": refusal is None,
            # the last answer writing was given: it waits for room (the ring, then the detector, held
            # back) rather than meet a full disk
            "writing_held": self._held_by_disk or bool(self._pressure is not None and self._pressure[1]),
            **{k: int(v) for k, v in self.stats.items()},
        }


def _size(n: int) -> str:
    """Bytes for people, in the dashboard's binary units: 1.2 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def directory_bytes(path: Path) -> int:
    """Bytes actually on disk under ``path`` (for checks; the policy uses the ledger)."""
    return sum(
        entry.stat().st_size for entry in path.rglob("*") if entry.is_file() and not os.path.islink(entry)
    )
