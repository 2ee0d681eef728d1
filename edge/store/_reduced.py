"""A run's reduced files: the frame table (every frame's disposition) and the mode's products."""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008 with HDF5)
import numpy as np

from edge.store._files import (
    ClosedFile,
    ProductLayout,
    _abandon,
    _finish_file,
    _write_reduction_record,
    frame_ranges_json,
)
from kernels import hdf5_filter_options

log = logging.getLogger(__name__)


DISPOSITION_CODES = {"stored": 0, "vetoed": 1}
#: frames in the open files at most: at this many the pipeline closes them early, so the stored rows
#: waiting for their files to close stay bounded and never say "stored" before (an areaDetector capture,
#: one file that cannot roll, is the exception: its rows wait to its end)
MAX_WAITING_ROWS = 10_000


class ReducedWriter:
    """A run's reduced files: the frame table and every frame's products, stored or vetoed.

    These travel upstream under every ``upstream.forward`` policy, so ``sent = stored + vetoed + lost``
    can be proven from the upstream copy alone (lost frames are in the run's documents). A file is
    finished every ``frames_per_file`` frames (memory stays bounded) and at the run's end, when the
    mode's run products (e.g. tomography slices) go into the last one.

    With ``wait_for_data_files`` (the pipeline's), a stored frame's row says "stored" only once the data
    file holding it is closed under its final name (``frames_durable``, from the run's store): until then
    the row waits for a later reduced file.
    A frame whose file was set aside instead (a crash, a full disk, a failed close: its frames are loss
    records) never gets a "stored" row (``frames_lost``). Before, a reduced file written while the data
    file was still open said "stored" upstream for frames the run's documents then recorded lost.
    """

    def __init__(
        self,
        directory: Path,
        run_uid: str,
        layout: ProductLayout,
        frames_per_file: int,
        seconds: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
        wait_for_data_files: bool = False,
        max_bytes: int = 0,
    ) -> None:
        self.directory = directory
        self.run_uid = run_uid
        self.layout = layout
        self.frames_per_file = max(1, frames_per_file)
        self.seconds = seconds
        self.clock = clock
        self._since: float | None = None  # when the first row of the file being gathered came
        self.files = 0
        self.rows: list[dict[str, Any]] = []
        self.products: list[dict[str, Any]] = []
        self.counts = {"stored": 0, "vetoed": 0}
        # the products' bytes held for the next file (written whole when it is finished), and the bound
        # on them (0: none): the file is finished once its ready rows reach it, so a reduced file never
        # outgrows the store's headroom (an outside chaos probe: 3-7 MB files failed to close on a disk
        # whose headroom was 4 MiB, their frames' rows lost) nor holds a cake run's memory for long
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        # stored frames among ``rows`` whose data file is not closed yet (the writing thread's), and what
        # the store's closing thread has said about files since (frames durable, or lost)
        self._waiting: set[int] = set()
        self._wait = wait_for_data_files  # False: no store tells of its files (rows are ready at once)
        self._settled: queue.SimpleQueue[tuple[bool, list[int]]] = queue.SimpleQueue()

    def add(
        self, frame: int, disposition: str, stream: str, row: dict[str, Any], products: dict[str, Any]
    ) -> None:
        self.counts[disposition] += 1
        if not self.rows:
            self._since = self.clock()
        self.rows.append({"frame_number": frame, "disposition": disposition, "stream": stream, **row})
        self.products.append(products)
        self.bytes += _row_bytes(products)
        if disposition == "stored" and self._wait:
            self._waiting.add(frame)

    @property
    def waiting(self) -> int:
        """Stored rows waiting for their data files to close."""
        return len(self._waiting)

    def frames_durable(self, frames: Iterable[int]) -> None:
        """The data file holding ``frames`` is closed under its final name (any thread)."""
        self._settled.put((True, list(frames)))

    def frames_lost(self, frames: Iterable[int]) -> None:
        """The data file holding ``frames`` was set aside: they are loss records, not stored (any
        thread)."""
        self._settled.put((False, list(frames)))

    def _settle(self) -> None:
        while True:
            try:
                durable, frames = self._settled.get_nowait()
            except queue.Empty:
                return
            if durable:
                self._waiting.difference_update(frames)
                continue
            gone = self._waiting.intersection(frames)
            if not gone:
                continue
            self._waiting -= gone
            keep = [
                k
                for k, r in enumerate(self.rows)
                if not (r["disposition"] == "stored" and r["frame_number"] in gone)
            ]
            self.counts["stored"] -= len(self.rows) - len(keep)
            self.rows = [self.rows[k] for k in keep]
            self.products = [self.products[k] for k in keep]
            self.bytes = sum(map(_row_bytes, self.products))

    def full(self) -> bool:
        """Time to finish the file: ``frames_per_file`` rows ready to write (stored frames wait for
        their data file), or its first row ``seconds`` ago (a crash then leaves at most that long of
        rows, e.g. vetoed blanks, unrecorded)."""
        self._settle()
        ready = len(self.rows) - len(self._waiting)
        if ready >= self.frames_per_file:
            return True
        # the ready rows' share of the bytes held (a run's rows are alike: the same products' shapes)
        if self.max_bytes and ready > 0 and self.bytes * ready >= self.max_bytes * len(self.rows):
            return True
        started = self._since is not None and self.clock() - self._since >= self.seconds
        return ready > 0 and started

    def finish(self, run_products: dict[str, Any] | None = None, closing: bool = False) -> ClosedFile | None:
        """Write the frames gathered so far whose rows are ready (and ``run_products``) to the next
        reduced file; rows of stored frames whose data file is not closed yet stay for the next one.
        ``closing`` (the run's end, its store closed): every row left."""
        self._settle()
        if self._waiting and closing:  # every file of the run was closed or set aside: nothing should wait
            log.error(
                "run %s: %d stored frames' files were never reported closed; their rows are written",
                self.run_uid,
                len(self._waiting),
            )
            self._waiting.clear()
        waiting = [r["disposition"] == "stored" and r["frame_number"] in self._waiting for r in self.rows]
        later_rows = [r for r, w in zip(self.rows, waiting, strict=True) if w]
        later_products = [p for p, w in zip(self.products, waiting, strict=True) if w]
        if later_rows:
            self.rows = [r for r, w in zip(self.rows, waiting, strict=True) if not w]
            self.products = [p for p, w in zip(self.products, waiting, strict=True) if not w]
        if not self.rows and not run_products:
            self.rows, self.products = later_rows, later_products
            return None
        name = f"{self.run_uid}_reduced_{self.files:05d}.nxs"
        final, part = self.directory / name, self.directory / (name + ".part")
        try:
            h5 = h5py.File(part, "w", libver="latest")
        except BaseException:  # (a full disk) never a 0-byte .part left for the next start to call a crash's
            part.unlink(missing_ok=True)
            self.rows, self.products = self.rows + later_rows, self.products + later_products  # kept
            raise
        try:
            entry = h5.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["run_uid"] = self.run_uid
            entry.attrs["file_kind"] = "reduced"
            entry.attrs["file_index"] = self.files  # (a powder run's first file holds its dark and flat)
            h5.attrs["default"] = "entry"
            _write_reduction_record(entry, self.layout)
            self._write_frames(entry)
            if self.rows:
                self.layout.write_reduced(entry, self.products)
            if run_products:
                _write_run_products(entry, run_products)
            if "default" not in entry.attrs and "n_peaks" in entry["frames"]:
                _peaks_plot(entry)
            if "default" not in entry.attrs:  # raw, or rows with no product: the dispositions
                _frames_plot(entry, "disposition")
            holds = contents(h5)
            _finish_file(h5, part, final)
        except BaseException:
            _abandon(h5, part)
            self.rows, self.products = self.rows + later_rows, self.products + later_products  # kept
            raise
        numbers = [int(r["frame_number"]) for r in self.rows]
        closed = ClosedFile(
            self.run_uid,
            name,
            final,
            min(numbers, default=-1),
            max(numbers, default=-1),
            0,  # a reduced file holds no raw frames: its frames are counted in the data files
            "reduced",
            holds,
            sum(r["disposition"] == "vetoed" for r in self.rows),
            frame_ranges_json(int(r["frame_number"]) for r in self.rows if r["disposition"] == "vetoed"),
        )
        self.files += 1
        self.rows, self.products = later_rows, later_products
        self.bytes = sum(map(_row_bytes, later_products))
        self._since = self.clock() if later_rows else None
        return closed

    def _write_frames(self, entry: h5py.Group) -> None:
        table = entry.create_group("frames")
        table.attrs["NX_class"] = "NXcollection"
        table.attrs["meaning"] = (
            "one row per frame that reached the pipeline: disposition 0 stored, 1 vetoed (by the mode's"
            " policy); lost frames are the run's loss records (documents file)"
        )
        rows = self.rows
        table.create_dataset("frame_number", data=np.asarray([r["frame_number"] for r in rows], np.int64))
        table.create_dataset(
            "disposition", data=np.asarray([DISPOSITION_CODES[r["disposition"]] for r in rows], np.int8)
        )
        table.create_dataset("stream", data=[str(r["stream"]) for r in rows], dtype=h5py.string_dtype())
        for name, dtype in (("image_key", np.int8), ("is_hit", bool), ("n_peaks", np.int32)):
            if any(name in r for r in rows):
                table.create_dataset(name, data=np.asarray([r.get(name, 0) for r in rows], dtype))
        if any("rotation_angle" in r for r in rows):
            angles = [r.get("rotation_angle", np.nan) for r in rows]
            table.create_dataset("rotation_angle", data=np.asarray(angles, np.float64)).attrs["units"] = "deg"
        if any("roi_sum" in r for r in rows):
            table.create_dataset("roi_sum", data=np.asarray([r["roi_sum"] for r in rows], np.float64))


ROW_BYTES = 48  # a row of the frame table: frame number, disposition, stream, key, hit, peaks, angle, sum


def _row_bytes(products: dict[str, Any]) -> int:
    """Bytes a frame's row and products take in a reduced file, uncompressed (an upper bound)."""
    return ROW_BYTES + sum(v.nbytes for v in products.values() if isinstance(v, np.ndarray))


#: the products a reduced file may hold, where, and how `edge where` names them (in this order)
PRODUCT_PLACES = (
    ("/entry/reconstruction", "slices: /entry/reconstruction (sinograms beside them)"),
    ("/entry/reduced", "profiles: /entry/reduced"),
    ("/entry_2d/reduced", "cake: /entry_2d/reduced"),
    ("/entry/result_1", "peak tables: /entry/result_1"),
)


def contents(h5: h5py.File) -> str:
    """What a reduced file holds and where, read from the file itself: only the last file of a
    tomography run holds its slices, and a file written by recovery only a frame table."""
    held = [text for place, text in PRODUCT_PLACES if place in h5]
    frames = h5.get("/entry/frames/frame_number")
    if frames is not None and frames.shape[0]:
        held.append("frame table: /entry/frames")
    return "; ".join(held) or "the reduction record only"


def _peaks_plot(entry: h5py.Group) -> None:
    """Serial: peaks per frame against the frame number, the entry's default plot (what a NeXus reader
    such as silx view shows on opening the file); links to the frame table's columns, not copies."""
    _frames_plot(entry, "n_peaks", "peaks_per_frame")


def _frames_plot(entry: h5py.Group, column: str, name: str | None = None) -> None:
    """A column of the frame table against the frame number, as the entry's default NXdata (links)."""
    group = entry.create_group(name or f"{column}_per_frame")
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = column
    group.attrs["axes"] = ["frame_number"]
    group.attrs["interpretation"] = "spectrum"
    group[column] = entry[f"frames/{column}"]
    group["frame_number"] = entry["frames/frame_number"]
    entry.attrs["default"] = group.name.rsplit("/", 1)[-1]


def _write_run_products(entry: h5py.Group, products: dict[str, Any]) -> None:
    """Products of the whole run (tomography: slices, sinograms, mean dark and flat).

    The slices are the entry's default plot: NeXus readers (silx view, nexpy) follow the file's
    ``@default`` to the entry and the entry's to this NXdata.
    """
    group = entry.create_group("reconstruction")
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "slices"
    if "rows" in products:  # one slice per detector row reconstructed
        group.attrs["axes"] = ["rows", ".", "."]
        group.attrs["rows_indices"] = 0
    entry.attrs["default"] = "reconstruction"
    for key, value in products.items():
        if isinstance(value, str):
            group.create_dataset(key, data=value)
            continue
        array = np.asarray(value)
        if array.ndim >= 2:
            # bitshuffle-LZ4, as the frames (the same plugin reads both): gzip took ~0.14 s of every 8 MB
            # of sinograms at the run's end, a tenth of a tomography benchmark run; about the same size
            group.create_dataset(key, data=array, **hdf5_filter_options())  # type: ignore[arg-type]
        else:
            group.create_dataset(key, data=array)
    for name in ("rotation_angle", "angle_step", "largest_angle_step", "angle_range"):
        if name in group:
            group[name].attrs["units"] = "deg"
    for name in ("center", "rows"):  # detector columns and rows
        if name in group:
            group[name].attrs["units"] = "pixel"
    for name in ("x_pixel_size", "y_pixel_size"):  # the detector's pixel pitch (NXdetector's names)
        if name in group:
            group[name].attrs["units"] = "m"
    flat_field = str(products.get("flat_field", ""))
    normalised = flat_field.startswith("applied")
    # what the sinograms hold: without flats, the projections less the mean dark when darks were used
    # (the stage's flat_field says so), else the counts
    quantity = (
        "-log(transmission)"
        if normalised
        else "-log(projection - mean dark)"
        if "-log(projection - mean dark)" in flat_field
        else "-log(counts)"
    )
    if "slices" in group:
        # filtered back-projection of -log(transmission) on a grid of detector pixels: the linear
        # attenuation coefficient per pixel (divide by x_pixel_size for 1/m); without a flat field,
        # of -log(counts) or -log(projection - mean dark): relative values only
        group["slices"].attrs["long_name"] = (
            "linear attenuation coefficient (per pixel length)" if normalised else f"FBP of {quantity}"
        )
        group["slices"].attrs["units"] = "1/pixel" if normalised else "arbitrary units"
    if "sinograms" in group:
        group["sinograms"].attrs["long_name"] = quantity
        if not normalised:  # a transmission's log has no unit
            group["sinograms"].attrs["units"] = "arbitrary units"
    for name in ("dark_mean", "flat_mean"):
        if name in group:
            group[name].attrs["units"] = "counts"
