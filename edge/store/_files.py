"""One rollover data file: written as ``NAME.h5.part`` by direct chunk writes, finished (flushed, closed,
fsynced) and renamed to ``NAME.h5``; never a half-written file under a final name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008 with HDF5)
import numpy as np

from edge.durable import fsync_dir
from edge.h5template import H5Template
from edge.store._metadata import NxmxTemplate, RunMetadata, _write_nxmx, _write_nxtomo
from kernels import hdf5_filter_options

log = logging.getLogger(__name__)


#: how often an open file's metadata (its groups' and datasets' headers, the index of the chunks written
#: so far) is flushed to the file: a file a crash leaves half-written then reads back (after
#: ``h5clear -s``) up to its last flush. Unflushed, HDF5 held every header in memory, and such a file
#: read nothing at all ("bad object header version number")
FLUSH_SECONDS = 1.0

#: set when HDF5 could not close a file (a full disk under its flush): the library keeps it half-open,
#: and its own clean-up at interpreter exit then crashes, so ``edge run`` exits without it
HDF5_UNCLOSED = threading.Event()


@dataclass(frozen=True)
class ClosedFile:
    run_uid: str
    name: str
    path: Path
    first_frame: int
    last_frame: int
    n_frames: int
    kind: str = "data"  # data (kept frames), blank (serial blanks kept locally), reduced (products)
    holds: str | None = None  # a reduced file: which products it holds and where in it (`edge where`)
    vetoed: int | None = None  # a reduced file: the frames its frame table lists as vetoed
    # JSON [[first, last], ...]: a data file's frames when they are not its whole span; a reduced file's
    # vetoed frames (the ledger's ``files.frame_ranges``)
    frame_ranges: str | None = None


def frame_ranges_json(frames: Iterable[int]) -> str:
    """Frame numbers as JSON ``[[first, last], ...]``, consecutive numbers merged, in order."""
    ranges: list[list[int]] = []
    for frame in sorted(set(frames)):
        if ranges and frame == ranges[-1][1] + 1:
            ranges[-1][1] = frame
        else:
            ranges.append([frame, frame])
    return json.dumps(ranges, separators=(",", ":"))


class ProductLayout(Protocol):
    """How a reduction mode lays out its products in a file (edge.modes stages implement it)."""

    definition: str  # the NeXus application definition of the data files: NXmx or NXtomo
    reference: str  # what the reduction's algorithm is, for /entry/reduction/reference

    def settings_record(self) -> dict[str, Any]: ...

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None: ...

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None: ...


def _write_reduction_record(entry: h5py.Group, layout: ProductLayout) -> None:
    """Every setting that shaped the products, readable from the file alone: ``/entry/reduction``, copied
    from the record's template (`_record_template`), and the file's own ``date``."""
    record = layout.settings_record()
    text = json.dumps(record, sort_keys=True, default=str)
    with _TEMPLATES_LOCK:
        _record_template(layout.reference, record, text).copy_into(entry, "reduction")
    entry["reduction"].create_dataset("date", data=datetime.now(UTC).isoformat(timespec="seconds"))


#: reduction records written once, by their text, and copied into each file of their runs: some 30 small
#: datasets written one by one cost about 5 ms of CPU a file, the copy about 0.5 ms
_TEMPLATES: dict[str, H5Template] = {}
_TEMPLATES_LOCK = threading.Lock()
MAX_RECORD_TEMPLATES = 8


def _record_template(reference: str, record: dict[str, Any], text: str) -> H5Template:
    """The template holding ``reduction`` for ``record`` (all but its date); the newest few are kept."""
    key = f"{reference}\0{text}"
    template = _TEMPLATES.pop(key, None)
    if template is None:
        template = H5Template(
            lambda root: _fill_record(root.create_group("reduction"), reference, record, text)
        )
        while len(_TEMPLATES) >= MAX_RECORD_TEMPLATES:
            _TEMPLATES.pop(next(iter(_TEMPLATES))).close()
    _TEMPLATES[key] = template  # (the newest last)
    return template


def _fill_record(group: h5py.Group, reference: str, record: dict[str, Any], text: str) -> None:
    from edge import __version__

    group.attrs["NX_class"] = "NXprocess"
    group.create_dataset("program", data="edge")
    group.create_dataset("version", data=__version__)
    group.create_dataset("reference", data=reference)
    group.create_dataset("mode", data=str(record.get("mode", "")))
    group.create_dataset("settings_json", data=text)
    inputs = group.create_group("input")  # one field per setting (NXparameters); lists and None as JSON
    inputs.attrs["NX_class"] = "NXparameters"
    for field, value in sorted(record.items()):
        plain = isinstance(value, bool | int | float | str) and not (
            isinstance(value, float) and math.isnan(value)
        )
        inputs.create_dataset(field, data=value if plain else json.dumps(value, default=str))


class RunFileWriter:
    """One open rollover file of a run: frames as direct chunks, their products beside them."""

    def __init__(
        self,
        directory: Path,
        run_uid: str,
        name: str,
        index: int,
        shape: tuple[int, int],
        dtype: str,
        capacity: int,
        layout: ProductLayout,
        meta: RunMetadata | None = None,
        kind: str = "data",
        nxmx: NxmxTemplate | None = None,
    ) -> None:
        self.run_uid = run_uid
        self.name = name
        self.kind = kind
        self.final_path = directory / self.name
        self.part_path = directory / (self.name + ".part")
        self.capacity = capacity
        self.layout = layout
        self.opened_at = time.monotonic()
        self.written_at = self.opened_at  # its newest frame's (`RunStore.tick`: a file whose frames pause)
        self.frames: list[int] = []
        self.flags: list[int] = []
        self._products: list[dict[str, Any]] = []
        try:
            self._h5 = h5py.File(self.part_path, "w", libver="latest", rdcc_nbytes=0)
        except BaseException:  # (a full disk) never a 0-byte .part left for the next start to call a crash's
            self.part_path.unlink(missing_ok=True)
            raise
        try:
            entry = self._h5.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "data"
            entry.attrs["run_uid"] = run_uid
            entry.attrs["file_index"] = index
            entry.attrs["file_kind"] = kind
            if meta is not None and layout.definition == "NXmx" and nxmx is not None:
                nxmx.write(entry)  # the run's metadata, written once (see NxmxTemplate)
            elif meta is not None and layout.definition == "NXmx":
                _write_nxmx(entry, meta, shape, dtype)
            elif meta is not None and layout.definition == "NXtomo":
                _write_nxtomo(entry, meta)
            elif meta is not None:
                self._h5.attrs["default"] = "entry"
                entry.create_dataset("definition", data=layout.definition)
                entry.create_dataset("start_time", data=meta.start_time)
            _write_reduction_record(entry, layout)
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            data.attrs["axes"] = ["frame_number", ".", "."]
            data.attrs["frame_number_indices"] = 0
            # the frames' numbers as far as flushed, then whole at the end: a file a crash leaves
            # half-written says which frames its rows hold (an outside probe: a quarantined file had its
            # pixels only, no way to tell which projections they were)
            self._numbers = data.create_dataset(
                "frame_number", shape=(0,), maxshape=(None,), chunks=(4096,), dtype=np.int64
            )
            data.attrs["interpretation"] = "image"  # a stack of images (silx, nexpy show frames)
            self._data = data.create_dataset(
                "data",
                shape=(capacity, *shape),
                maxshape=(None, *shape),
                chunks=(1, *shape),
                dtype=dtype,
                **hdf5_filter_options(),  # type: ignore[arg-type]
            )
            self._data.attrs["units"] = "counts"
            entry.attrs["frames_flushed"] = 0
            self._h5.flush()
        except BaseException:  # the metadata did not fit (a full disk): nothing of the file stays
            _abandon(self._h5, self.part_path)
            raise
        self._flushed_at = time.monotonic()

    def __len__(self) -> int:
        return len(self.frames)

    def write(self, frame: int, chunk: bytes, products: dict[str, Any], flags: int = 0) -> None:
        self._data.id.write_direct_chunk((len(self.frames), 0, 0), chunk)
        self.frames.append(frame)
        self.flags.append(flags)
        self._products.append(products)
        now = self.written_at = time.monotonic()
        if now - self._flushed_at >= FLUSH_SECONDS:
            self._flush(now)

    def _flush(self, now: float) -> None:
        """The file's metadata to the file, with how many of its frames that covers (``frames_flushed``:
        rows past it read as 0 from a file a crash left open, their chunks not indexed yet)."""
        self._write_numbers()
        self._h5["entry"].attrs["frames_flushed"] = len(self.frames)
        self._h5.flush()
        self._flushed_at = now

    def _write_numbers(self) -> None:
        """``frame_number`` up to the frames written so far (the rows not written yet)."""
        done, n = self._numbers.shape[0], len(self.frames)
        if n > done:
            self._numbers.resize(n, axis=0)
            self._numbers[done:n] = np.asarray(self.frames[done:n], dtype=np.int64)

    def close(self) -> ClosedFile:
        """Finish the file, fsync it, and rename it to its final name."""
        n = len(self.frames)
        self._data.resize(n, axis=0)
        entry = self._h5["entry"]
        end_time = datetime.now(UTC).isoformat()
        entry.create_dataset("end_time", data=end_time)
        if "definition" in entry:  # NXmx requires it; once the file is closed the estimate is the end
            entry.create_dataset("end_time_estimated", data=end_time)
        entry.attrs["frames_written"] = n
        entry.attrs["frames_flushed"] = n
        self._write_numbers()
        flags = entry["data"].create_dataset("frame_flags", data=np.asarray(self.flags, dtype=np.uint32))
        flags.attrs["meaning"] = "0 complete, 1 incomplete (packets missing; their pixels are 0), 2 corrupt"
        self.layout.write_products(entry, self._products)
        _finish_file(self._h5, self.part_path, self.final_path)
        # the lowest and highest frame numbers (a frame overtaken by later ones is stored where it comes)
        first = min(self.frames, default=-1)
        last = max(self.frames, default=-1)
        gappy = n and n != last - first + 1
        ranges = frame_ranges_json(self.frames) if gappy else None
        return ClosedFile(
            self.run_uid, self.name, self.final_path, first, last, n, self.kind, frame_ranges=ranges
        )

    def discard(self) -> None:
        self._h5.close()
        self.part_path.unlink(missing_ok=True)


def _close_as_far_as_possible(h5: h5py.File, name: str) -> None:
    """Close a file that could not be finished. A full disk under HDF5's flush makes the close fail and
    the library keep the file half-open: logged, and noted (`HDF5_UNCLOSED`)."""
    try:
        h5.close()
    except Exception as error:
        HDF5_UNCLOSED.set()
        log.warning("closing %s on a full disk failed: %s", name, error)


def _abandon(h5: h5py.File, part: Path) -> None:
    """Close a file that could not be finished, as far as HDF5 can, and remove its ``.part``."""
    _close_as_far_as_possible(h5, part.name)
    part.unlink(missing_ok=True)


def _finish_file(h5: h5py.File, part_path: Path, final_path: Path) -> None:
    """Flush and close, fsync, rename to the final name, fsync the directory."""
    h5.flush()
    h5.close()
    fd = os.open(part_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part_path, final_path)
    fsync_dir(final_path.parent)


#: the frame table's disposition codes (``/entry/frames/disposition`` in a run's reduced files)
