"""Ledger records a full disk held back, kept where a stop or a crash does not lose them.

When the store's disk is full and even the ledger's reserve is gone (another process took the space, or
there was none), the recorder holds the ledger's records in memory until space returns
(`edge.recorder.RunRecorder`). A daemon stopped or killed meanwhile lost them: a run refused on the full
disk had no row at all, and no recovery could account for its frames (an outside chaos probe: 30 frames
in no record, `edge where` "no run in the ledger"). This file, beside the ledger, is allocated (written
with zeros) at start, so that writing into it later needs no new space on the file systems the store
uses (ext4, XFS, tmpfs; a copy-on-write one may still refuse): the held records are written into it as
they are held, and the next start writes them to the ledger before its recovery runs.

Layout: ``MAGIC`` (8 bytes), the length of what follows (8 bytes, little-endian), then JSON: a list of
``[ledger method, [arguments]]`` in the order they were made. A length of 0: nothing held.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.ledger import Ledger

log = logging.getLogger(__name__)

MAGIC = b"EDGEHELD"
HEADER = struct.Struct("<8sQ")
CAPACITY = 256 * 1024  # bytes: some thousand records (a run's start, end and losses are three)

#: the ledger methods a held record may name (anything else in the file is not replayed)
JOURNALED = frozenset(
    {
        "run_started",
        "run_ended",
        "run_seen",
        "run_length",
        "run_named",
        "run_series_offset",
        "run_continued_at",
        "run_continuation_lost",
        "run_note",
        "run_reopened",
        "record_loss",
        "file_stored",
        "hand_over_losses",
    }
)
#: not a ledger write: a run whose documents waited for space (the recorder writes them after recovery)
DOCUMENTS = "documents"


class HeldJournal:
    """The held records' file: `keep` what is held now, `clear` once it is written, `read` at start."""

    def __init__(self, path: Path, capacity: int = CAPACITY) -> None:
        self.path = path
        self.capacity = capacity
        self.usable = False  # allocated: records can be kept
        self.dropped = 0  # records held that did not fit (the newest), at the last `keep`

    def make(self) -> bool:
        """Allocate the file (zeros written, not a sparse file) unless it is there at its size already;
        False (logged) when there is no room for it now."""
        try:
            if self.path.exists() and self.path.stat().st_size >= self.capacity:
                self.usable = True
                return True
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                size = os.fstat(fd).st_size
                os.pwrite(fd, bytes(self.capacity - size), size)  # (what it holds already is kept)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            log.warning("cannot allocate %s for records a full disk holds back: %s", self.path, error)
            return False
        self.usable = True
        return True

    def keep(self, entries: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Write ``entries`` (oldest first; as many as fit, whole) over what the file held; returns how
        many were kept, 0 when the file is not usable or the write failed (logged)."""
        if not self.usable:
            return 0
        room = self.capacity - HEADER.size
        encoded: list[bytes] = []
        used = 2  # the list's brackets
        for name, args in entries:
            item = json.dumps([name, list(args)], default=str).encode()
            if used + len(item) + 1 > room:
                break
            encoded.append(item)
            used += len(item) + 1
        self.dropped = len(entries) - len(encoded)
        body = b"[" + b",".join(encoded) + b"]"
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, body, HEADER.size)
                os.fsync(fd)
                os.pwrite(fd, HEADER.pack(MAGIC, len(body)), 0)  # after the body: never a torn list
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            log.error("cannot keep the held records in %s: %s", self.path, error)
            return 0
        return len(encoded)

    def clear(self) -> None:
        """Nothing held (the file stays allocated)."""
        if not self.path.exists():
            return
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, HEADER.pack(MAGIC, 0), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            log.error("cannot clear %s: %s", self.path, error)

    def read(self) -> list[tuple[str, list[Any]]]:
        """The records kept, in order; [] when none (or the file is missing or unreadable: logged)."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(HEADER.size)
                if len(head) < HEADER.size:
                    return []
                magic, length = HEADER.unpack(head)
                if magic != MAGIC or length == 0:
                    return []
                if length > self.capacity:
                    raise ValueError(f"a length of {length} bytes")
                items = json.loads(f.read(length))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            log.error("the held records in %s cannot be read (%s): they are not written", self.path, error)
            return []
        return [
            (str(item[0]), list(item[1]))
            for item in items
            if isinstance(item, list) and len(item) == 2 and isinstance(item[1], list)
        ]


def replay(
    ledger: Ledger, journal: HeldJournal
) -> tuple[int, list[tuple[str, list[Any]]], list[tuple[str, str]]]:
    """Write the records a stopped (or killed) daemon held back to the ledger, in order, before its
    recovery runs. Returns how many were written, those the disk refused again (from the first one
    refused on: the caller holds them, in order), and the runs whose documents waited for space (run,
    exit status: the caller writes them after its recovery); a record that fails otherwise (a run
    written after all) is logged and passed by."""
    import sqlite3

    from edge.diskguard import is_no_space

    entries = journal.read()
    reopened = {str(args[0]) for name, args in entries if name == "run_reopened" and args}
    documents = [  # (a run reopened for the recovery gets its documents from it, once)
        (str(args[0]), str(args[1]))
        for name, args in entries
        if name == DOCUMENTS and len(args) == 2 and str(args[0]) not in reopened
    ]
    entries = [(name, args) for name, args in entries if name != DOCUMENTS]
    written = 0
    for n, (name, args) in enumerate(entries):
        if name not in JOURNALED:
            log.error("held record %r in %s is not one this edge writes: passed by", name, journal.path)
            continue
        if name == "file_stored" and len(args) > 2:
            args = [*args[:2], Path(str(args[2])), *args[3:]]
        try:
            getattr(ledger, name)(*args)
        except sqlite3.OperationalError as error:
            if is_no_space(error):
                log.warning(
                    "%d ledger record(s) the last daemon held back through a full disk wait in %s: the disk"
                    " is still full (they are written, and the log says so, when space returns)",
                    len(entries) - n,
                    journal.path,
                )
                return written, entries[n:], documents
            log.error("held record %s%r could not be written: %s", name, tuple(args)[:4], error)
        except Exception as error:
            log.error("held record %s%r could not be written: %s", name, tuple(args)[:4], error)
        else:
            written += 1
    if entries:
        log.warning(
            "wrote %d ledger record(s) the last daemon held back through a full disk (%s)",
            written,
            journal.path,
        )
    if documents:
        log.warning(
            "%d run(s) whose documents the last daemon could not write (disk full) get them after the"
            " recovery: %s",
            len(documents),
            ", ".join(uid for uid, _status in documents),
        )
    journal.clear()
    return written, [], documents
