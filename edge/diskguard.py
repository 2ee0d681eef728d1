"""Disk full as a state of the appliance, not a crash.

When a write fails for lack of space (ENOSPC, EDQUOT, or SQLite's "database or disk is full") the
guard turns ``full``: the pipeline stops trying to write, every frame that arrives becomes a loss
record (``disk_full``), the open file is quarantined with its frames recorded as lost, new runs are
refused, and an alarm is shown. Once the free space is back above ``resume_bytes`` (checked at most
once a second), writing resumes by itself, without a restart.

So that losses can always be recorded, a reserve file of ``reserve_bytes`` is kept beside the ledger
(``ledger.reserve``, preallocated): when the ledger itself cannot write, the reserve is given up and
the write retried; it is put back when space returns.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("no space left", "disk is full", "errno = 28", "quota exceeded")


RECHECK_SECONDS = 0.1  # how often a full disk's free space is measured again


def is_no_space(error: BaseException) -> bool:
    """Whether ``error`` says the filesystem is out of space (OS, HDF5 via h5py, or SQLite)."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return True
    if isinstance(error, sqlite3.OperationalError | OSError | RuntimeError):  # h5py: RuntimeError too
        text = str(error).lower()
        return any(marker in text for marker in NO_SPACE_TEXT)
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and is_no_space(cause)


def brief(error: BaseException, limit: int = 160) -> str:
    """An error's text on one line, at most ``limit`` characters, for alarms and loss records. HDF5's
    messages run over several lines and name the file deep inside; cut as they came they read
    "filename = '/tmp/cha)". The text is collapsed to one line and, when cut, ends with "...", and an
    ``errno`` says its meaning first ("No space left on device")."""
    text = " ".join(str(error).split())
    code = getattr(error, "errno", None)
    if isinstance(code, int) and code > 0:
        meaning = os.strerror(code)
        if meaning not in text[:60]:  # (HDF5 says it deep inside, past where it is cut)
            text = f"{meaning}: {text}" if text else meaning
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text or type(error).__name__


class DiskGuard:
    """Knows whether the store's filesystem is full, and keeps the ledger's reserve."""

    def __init__(
        self,
        store: Path,
        reserve_path: Path,
        reserve_bytes: int,
        resume_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.reserve_path = reserve_path
        self.reserve_bytes = reserve_bytes
        self.resume_bytes = max(resume_bytes, 2 * reserve_bytes)
        quarter = psutil.disk_usage(str(store)).total // 4
        if 0 < quarter < self.resume_bytes:  # else a full disk could never have that much free again
            log.warning(
                "ledger.resume_free_bytes (%d, with twice the reserve) is more than a quarter of the store's"
                " disk (%d bytes): after a full disk, writing resumes once %d bytes are free",
                self.resume_bytes,
                4 * quarter,
                quarter,
            )
            self.resume_bytes = quarter
        self.clock = clock
        self._lock = threading.Lock()
        self.full = False
        self.since: float | None = None
        self.episodes = 0
        self.reason = ""
        self._checked_at = 0.0
        error = self._reserve()
        if error is not None and is_no_space(error):
            # A start on a full disk (after a kill -9 there) with no room for the reserve: writing would
            # take the last free bytes, and then the upstream's confirmations could not be recorded, so
            # retention could never purge and the disk never free itself (an outside chaos probe: stuck
            # until the operator made room). It starts full: frames are loss records until space returns.
            self.full = True
            self.since = time.time()
            self.episodes += 1
            self.reason = (
                f"the store's disk has no room for the ledger's {self.reserve_bytes}-byte reserve"
                f" ({psutil.disk_usage(str(store)).free} bytes free at start)"
            )
            log.error(
                "disk full at start: %s; frames become loss records until %d bytes are free (what is left"
                " is kept for the ledger, to record the upstream's confirmations and let retention purge)",
                self.reason,
                self.resume_bytes,
            )
            self._checked_at = self.clock()

    # -- the ledger's reserve -----------------------------------------------------------------------------
    def make_reserve(self) -> bool:
        """Create (or re-create) the reserve file; False if there is no room for it now."""
        return self._reserve() is None

    def _reserve(self) -> OSError | None:
        """`make_reserve`, returning why it could not (None: made, or none wanted)."""
        if self.reserve_bytes <= 0 or self.reserve_path.exists():
            return None
        try:
            fd = os.open(self.reserve_path, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            return None
        except OSError as error:
            self.reserve_path.unlink(missing_ok=True)
            log.warning(
                "cannot reserve %d bytes for the ledger at %s: %s",
                self.reserve_bytes,
                self.reserve_path,
                error,
            )
            return error

    def release_reserve(self) -> bool:
        """Give up the reserve so the ledger can write; True if there was one to give."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "released the ledger's %d-byte reserve to record what the full disk lost", self.reserve_bytes
        )
        return True

    # -- full / not full --------------------------------------------------------------------------------
    def note_error(self, error: BaseException) -> bool:
        """Called with a failed write's error; True (and the guard is full) if it was lack of space."""
        if not is_no_space(error):
            return False
        with self._lock:
            if not self.full:
                self.full = True
                self.since = time.time()
                self.episodes += 1
                self.reason = f"the store's disk is full ({brief(error)})"
                log.error("disk full: %s; frames become loss records until space returns", self.reason)
            self._checked_at = self.clock()
        return True

    def check(self) -> bool:
        """Whether the disk is (still) full; re-measured at most every ``RECHECK_SECONDS`` while it is
        (a statvfs: once a second let ~300 frames become losses after the space was back, an outside
        chaos probe)."""
        if not self.full:
            return False
        now = self.clock()
        with self._lock:
            if now - self._checked_at < RECHECK_SECONDS:
                return True
            self._checked_at = now
            free = psutil.disk_usage(str(self.store)).free
            if free < self.resume_bytes:
                return True
            self.full = False
            self.reason = ""
        self.make_reserve()
        log.warning("disk space is back (%d bytes free): writing resumes", free)
        return False

    def refusal(self) -> str | None:
        """Why a new run cannot start now, or None."""
        if self.check():
            # what to do, not only the first error (a probe read a minutes-old HDF5 message cut mid-path)
            return (
                f"the store's disk is full (since {time.strftime('%H:%M:%S', time.localtime(self.since))});"
                f" new runs are refused until {self.resume_bytes} bytes are free there: the upstream"
                " confirming files lets retention purge them, or make room on that disk"
            )
        return None

    def status(self) -> dict[str, Any]:
        return {
            "full": self.full,
            "since": self.since,
            "episodes": self.episodes,
            "reason": self.reason,
            "reserve_bytes": self.reserve_bytes if self.reserve_path.exists() else 0,
        }
