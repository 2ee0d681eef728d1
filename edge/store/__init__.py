"""The local HDF5 store: one directory per run, rollover files closed and renamed atomically.

Frames arrive already compressed as filter-32008 chunks and are written with ``write_direct_chunk``, so
compression happens once. A file is written as ``NAME.h5.part`` and renamed to ``NAME.h5`` only after it
is closed and fsynced: a crash leaves complete ``.h5`` files plus at most one ``.part`` per run, never a
half-written file under a final name. (We chose rollover files over SWMR: every closed file is a
self-contained unit to checksum, forward and purge, and readers never see a file that is still open.)
Closed files are checksummed (xxh3-128: ~10x faster than SHA-256 and ample against corruption; this is
not a security boundary) and recorded in the ledger with their transfer chunks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from edge.diskguard import is_no_space
from edge.store._files import (
    HDF5_UNCLOSED,
    ClosedFile,
    ProductLayout,
    RunFileWriter,
    _close_as_far_as_possible,
)
from edge.store._metadata import NxmxTemplate, RunMetadata, bounded_config, series_metadata
from edge.store._reduced import DISPOSITION_CODES, MAX_WAITING_ROWS, ReducedWriter, contents

__all__ = [
    "CAPTURE_CAPACITY",
    "DISPOSITION_CODES",
    "HDF5_UNCLOSED",
    "MAX_WAITING_ROWS",
    "ClosedFile",
    "ProductLayout",
    "ReducedWriter",
    "RunFileWriter",
    "RunMetadata",
    "RunStore",
    "bounded_config",
    "contents",
    "series_metadata",
]

#: Frames one capture file can take (its dataset grows into this extent; chunks are allocated as written).
CAPTURE_CAPACITY = 10_000_000
#: a stream of a run's files with no frame this long has paused: its file, open longer than
#: ``file_seconds``, is finished then (`RunStore.write`, `RunStore.tick`)
PAUSE_SECONDS = 0.1

log = logging.getLogger(__name__)


class RunStore:
    """Writes one run's frames into rollover files under ``root/run_uid/``, one series of files per
    stream (``data``; ``blank`` for serial blanks kept locally)."""

    def __init__(
        self,
        root: Path,
        run_uid: str,
        shape: tuple[int, int],
        dtype: str,
        frames_per_file: int,
        file_seconds: float,
        layout: ProductLayout,
        on_closed: Callable[[ClosedFile], None],
        meta: RunMetadata | None = None,
        closer: Executor | None = None,
        on_close_failed: Callable[[str, list[int], BaseException], None] | None = None,
        data_path: Path | None = None,
        on_durable: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.directory = root / run_uid
        self.directory.mkdir(parents=True, exist_ok=True)
        # the run's quarantine directory, made now while there is room: on a full disk, making it failed
        # and the file that could not be finished was removed instead of set aside (an outside chaos
        # probe); removed again at the run's end when nothing went there
        self._quarantine = root / "quarantine" / run_uid
        self._quarantine.mkdir(parents=True, exist_ok=True)
        self.run_uid = run_uid
        #: an areaDetector capture's file (HDF1:FileTemplate): every data frame of the run goes into this one
        #: file (no rollover); reduced products and documents stay under the run's directory
        self.data_path = data_path
        if data_path is not None:
            frames_per_file, file_seconds = CAPTURE_CAPACITY, math.inf
        self.shape = shape
        self.dtype = dtype
        self.frames_per_file = frames_per_file
        self.file_seconds = file_seconds
        self.layout = layout
        self.meta = meta
        self.on_closed = on_closed
        self.files_closed = 0
        self.frames_written = 0
        # frames written into files that were then given up (quarantined, not finished, not registered):
        # their loss records hold them, so they are not the run's stored frames (`frames_stored`)
        self.frames_given_up = 0
        # an areaDetector capture's file given up (its disk full), left where it is: no later frame is
        # written there (a new file of its name truncated it: 123 frames gone; an outside probe)
        self.capture_given_up: Path | None = None
        self._current: dict[str, RunFileWriter] = {}
        self._indices: dict[str, int] = {}
        # with a ``closer``, full files are finished there, in order, while the next one fills; a file
        # that cannot be finished goes to ``on_close_failed`` with its frames (without one, it raises)
        self._closer = closer
        self._on_close_failed = on_close_failed
        self._closing: list[Future[None]] = []
        self._nxmx: NxmxTemplate | None = None
        # told the frames of each file once it is closed under its final name and registered (their
        # reduced rows may say "stored" from then on)
        self._on_durable = on_durable

    def _nxmx_template(self) -> NxmxTemplate | None:
        """The run's NXmx metadata to copy into each file (made with the first file)."""
        if self._nxmx is None and self.meta is not None and self.layout.definition == "NXmx":
            self._nxmx = NxmxTemplate(self.meta, self.shape, self.dtype)
        return self._nxmx

    def _name(self, stream: str, index: int) -> str:
        if stream == "data" and self.data_path is not None:
            return self.data_path.name
        if stream == "data":
            return f"{self.run_uid}_{index:05d}.h5"
        return f"{self.run_uid}_{stream}_{index:05d}.h5"

    def write(
        self, frame: int, chunk: bytes, products: dict[str, Any], flags: int = 0, stream: str = "data"
    ) -> None:
        current = self._current.get(stream)
        if current is not None:
            now = time.monotonic()
            if now - current.opened_at >= self.file_seconds and now - current.written_at >= PAUSE_SECONDS:
                # its frames paused since its last one: finished now, before this frame, as `tick` would
                # in the pause (which it looks for only now and then: serial's hits, pausing for 0.2-0.4 s
                # among blanks, kept their file open for the whole run, and a crash took every hit with
                # it: an outside probe)
                self.roll(stream)
                current = None
        if current is None:
            index = self._indices.get(stream, 0)
            self._indices[stream] = index + 1
            data_path = self.data_path if stream == "data" else None
            current = RunFileWriter(
                self.directory if data_path is None else data_path.parent,
                self.run_uid,
                self._name(stream, index),
                index,
                self.shape,
                self.dtype,
                self.frames_per_file,
                self.layout,
                self.meta,
                stream,
                self._nxmx_template(),
            )
            self._current[stream] = current
        current.write(frame, chunk, products, flags)
        self.frames_written += 1
        if len(current) >= self.frames_per_file:
            self.roll(stream)

    def open_bytes(self) -> int:
        """Bytes of the run's files open for writing now (any thread: a file closing meanwhile counts 0)."""
        total = 0
        for writer in list(self._current.values()):
            with contextlib.suppress(OSError):
                total += os.path.getsize(writer.part_path)
        return total

    @property
    def frames_stored(self) -> int:
        """Frames written into files not given up: what the run's row says it stored."""
        return self.frames_written - self.frames_given_up

    def open_frames(self) -> int:
        """Frames written into the files open now (every stream's)."""
        return sum(len(current) for current in self._current.values())

    def tick(self, quiet: float = 0.0) -> None:
        """Close each open file that has been open longer than ``file_seconds`` and has had no frame
        for ``quiet`` seconds (0: the stream as a whole pauses now). With ``quiet``, while frames keep
        coming: a stream that pauses on its own (serial's hits among blanks) has its file finished, as
        a pause of the whole stream would (a crash took every hit of the last 100, ~17 s of them, with
        the open hit file, an outside probe)."""
        now = time.monotonic()
        for stream, current in list(self._current.items()):
            if now - current.opened_at >= self.file_seconds and now - current.written_at >= quiet:
                self.roll(stream)

    def roll(self, stream: str | None = None) -> None:
        """Finish the open file of ``stream`` (of every stream when None)."""
        streams = list(self._current) if stream is None else [stream]
        for name in streams:
            current = self._current.pop(name, None)
            if current is None:
                continue
            if len(current) == 0:
                current.discard()
                continue
            self.files_closed += 1
            if self._closer is None:
                self.on_closed(current.close())
                if self._on_durable is not None:
                    self._on_durable(list(current.frames))
                continue
            self._closing = [f for f in self._closing if not f.done()]
            self._closing.append(self._closer.submit(self._finish, current))

    def _finish(self, current: RunFileWriter) -> None:
        try:
            closed = current.close()
        except Exception as error:
            if is_no_space(error):  # expected on a full disk: one line, the frames become disk_full losses
                log.error("finishing %s failed: the disk is full (%s)", current.name, str(error)[:160])
            else:
                log.exception("finishing %s failed", current.name)
            self._set_aside(current)  # now, here: not when a half-closed HDF5 file is collected, anywhere
            self.frames_given_up += len(current.frames)
            if self._on_close_failed is None:
                raise
            self._on_close_failed(self.run_uid, list(current.frames), error)
            return
        try:
            self.on_closed(closed)
        except Exception as error:  # finished, but not registered: its frames are recorded lost
            log.exception("registering %s failed", current.name)
            self.frames_given_up += len(current.frames)
            if self._on_close_failed is None:
                raise
            self._on_close_failed(self.run_uid, list(current.frames), error)
            return
        if self._on_durable is not None:
            self._on_durable(list(current.frames))

    def quarantine_open(self) -> list[tuple[list[int], Path]]:
        """Give up the open files (the disk is full): each ``.part`` moves to ``STORE/quarantine/RUN/``
        (a rename, which needs no space), never under a final name; a capture's stays where it is. Returns
        each file's frame numbers and where its ``.part`` is now."""
        abandoned: list[tuple[list[int], Path]] = []
        for stream in list(self._current):
            current = self._current.pop(stream)
            self.frames_given_up += len(current.frames)
            abandoned.append((list(current.frames), self._set_aside(current)))
        return abandoned

    def _set_aside(self, current: RunFileWriter) -> Path:
        """Close a file that cannot be finished (as far as HDF5 can) and move its ``.part`` to
        ``STORE/quarantine/RUN/`` (a rename, which needs no space), never under a final name; returns where
        it is now. An areaDetector capture's file stays where the capture put it, as after a crash (moved
        to another filesystem it failed, and was then deleted: an outside probe's only copy of 100
        frames), and so does any file that cannot be moved: it is never deleted."""
        _close_as_far_as_possible(current._h5, current.name)  # the .part is set aside all the same
        if current.part_path.parent != self.directory:  # a capture's own directory
            log.error("%s left where it is, half-written, under no final name", current.part_path)
            self.capture_given_up = current.part_path
            return current.part_path
        target = self._quarantine / current.part_path.name
        try:
            if not target.parent.is_dir():  # (made when the run opened: gone since?)
                target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(current.part_path, target)
        except OSError as error:  # never raised from here: the file's frames must still become loss
            # records (an outside probe's capture into a directory made immutable ended "success", 20
            # frames in no record); never deleted either: it stays there, the next start moves it
            log.error(
                "cannot quarantine %s (%s): it stays there, under no final name", current.part_path, error
            )
            return current.part_path
        return target

    def close(self) -> None:
        """Finish the open files and wait until every file of the run is finished and registered."""
        self.roll()
        for pending in self._closing:
            pending.result()
        self._closing = []
        with contextlib.suppress(OSError):  # not empty: a file was set aside there (kept)
            self._quarantine.rmdir()
        if self._nxmx is not None:
            self._nxmx.close()
            self._nxmx = None
