"""``tomo``: NXtomo image keys; darks and flats averaged, projections normalised (-log), chosen rows
reconstructed while they arrive (streaming FBP); the slices are a run product.
"""

from __future__ import annotations

import base64
import bisect
import logging
import math
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from edge.modes._stage import EarlierParts, FrameResult, RunContext, _CorrectedStage
from kernels import estimate_center, fourier_filter, near_opposite_projections, opposite_projections
from kernels._numpy_backend import FLAT_FIELD_FLOOR

log = logging.getLogger(__name__)


#: the least correlation coefficient of two projections 180 degrees apart, one mirrored about the axis
#: estimated, for that estimate to stand: rows through the sample agree at ~1.0, rows of air only (their
#: noise) at 0.2-0.4 at whatever shift is best (an outside probe's axis came out 19.5 for a true 67)
AXIS_MIN_CORRELATION = 0.5


def _axis_from(lines_0: np.ndarray, lines_180: np.ndarray) -> float:
    """The rotation axis from two projections' chosen rows 180 degrees apart, summed over the rows: a
    sum of parallel projections is the projection of the summed slices, mirrored as each one is, and a
    row of air (a slice above the sample) adds nothing but its noise, where estimating from the first
    row alone put the axis 91 px off when that row was air (an outside probe). NaN when they do not agree
    (`AXIS_MIN_CORRELATION`): every chosen row is air."""
    return float(
        estimate_center(
            np.sum(lines_0, axis=0), np.sum(lines_180, axis=0), min_correlation=AXIS_MIN_CORRELATION
        )
    )


class _EarlierScan:
    """The part of a tomography scan stored before a daemon restart cut it (``RunContext.earlier``), for
    the run that resumes the scan: its darks and flats summed at once (the projections' normalisation
    needs their means before the first projection arrives), its projections' chosen rows read on a
    thread of their own while the run goes on, and back-projected with the run's own at its end. A file
    that cannot be read is skipped and named in ``errors``; nothing here stops the run."""

    def __init__(self, earlier: EarlierParts, shape: tuple[int, int], rows: list[int]) -> None:
        self.parts = earlier
        self.rows = rows
        self.darks = self.flats = 0
        # the earlier runs whose files held darks or flats (named in ``flat_field``: a probe read the
        # darks and flats "stored in run A, B" where B held projections only)
        self.reference_runs: list[str] = []
        self.dark_sum = np.zeros(shape, np.float64)
        self.flat_sum = np.zeros(shape, np.float64)
        self.errors: list[str] = []
        self.lines: list[np.ndarray] = []  # per projection read: its chosen rows, as stored (float32)
        self.angles: list[float] = []
        self.planned = 0  # projections listed in the readable files (read on the thread)
        self.without_angle = 0  # stored projections without an angle (NaN): not back-projected
        # (frame number, angle) of the last projection stored (the highest frame number): where the given
        # angles of the resumed part go on from (None: no projection, or a file without frame numbers)
        self.last_projection: tuple[int, float] | None = None
        # darks and flats stored after that projection: no projection's place (an outside probe's dark and
        # flat stored after the last projection before a restart shifted every later angle by two steps)
        self.keys_after_last = 0
        dark_flat_frames: list[np.ndarray] = []
        planned: list[tuple[Path, np.ndarray, np.ndarray]] = []
        for path in earlier.files:
            try:
                with h5py.File(path, "r") as handle:
                    data = handle["/entry/data/data"]
                    if tuple(data.shape[1:]) != tuple(shape):
                        raise ValueError(f"frames of {tuple(data.shape[1:])}, this run's are {tuple(shape)}")
                    keys = np.asarray(handle["/entry/instrument/detector/image_key"][:], np.int64)
                    angles = np.asarray(handle["/entry/sample/rotation_angle"][:], np.float64)
                    if keys.size != data.shape[0] or angles.size != data.shape[0]:
                        raise ValueError("image_key or rotation_angle does not list every frame")
                    for key, total in ((2, self.dark_sum), (1, self.flat_sum)):
                        for i in np.flatnonzero(keys == key):
                            total += data[int(i)]
                    self.darks += int(np.count_nonzero(keys == 2))
                    self.flats += int(np.count_nonzero(keys == 1))
                    # a run's files are in the store's directory named by its uid (a capture's file,
                    # anywhere: all the runs then)
                    held = [path.parent.name] if path.parent.name in earlier.runs else list(earlier.runs)
                    if np.any((keys == 1) | (keys == 2)):
                        self.reference_runs += [r for r in held if r not in self.reference_runs]
                    numbers = np.asarray(handle["/entry/data/frame_number"][:], np.int64)
                    if numbers.size == keys.size:
                        dark_flat_frames.append(numbers[(keys == 1) | (keys == 2)])
                    shot = np.flatnonzero(keys == 0)
                    if shot.size and numbers.size == keys.size:
                        last = int(shot[np.argmax(numbers[shot])])
                        if self.last_projection is None or int(numbers[last]) > self.last_projection[0]:
                            self.last_projection = (int(numbers[last]), float(angles[last]))
                    projections = np.flatnonzero((keys == 0) & np.isfinite(angles))
                    self.without_angle += int(np.count_nonzero(keys == 0)) - int(projections.size)
                    planned.append((path, projections, angles[projections]))
                    self.planned += int(projections.size)
            except Exception as error:  # a file not as this stage writes them: its frames are not used
                self._error(path, error)
        if self.last_projection is not None:
            last = self.last_projection[0]
            self.keys_after_last = sum(int(np.count_nonzero(frames > last)) for frames in dark_flat_frames)
        self._lock = threading.Lock()  # the reading thread publishes whole files under it
        self._abandoned = False  # the run's end stopped waiting: the thread publishes nothing more
        self._thread = threading.Thread(target=self._read, args=(planned,), name="tomo-earlier", daemon=True)
        self._thread.start()

    def _error(self, path: Path, error: BaseException) -> None:
        self.errors.append(f"{path.name}: {str(error)[:200]}")
        log.error("tomography run: the earlier part's file %s cannot be used (%s)", path, error)

    def _read(self, planned: list[tuple[Path, np.ndarray, np.ndarray]]) -> None:
        for path, projections, angles in planned:
            try:
                with h5py.File(path, "r") as handle:
                    data = handle["/entry/data/data"]
                    lines = [np.asarray(data[int(i)][self.rows], np.float32) for i in projections]
            except Exception as error:
                self._error(path, error)
                continue
            with self._lock:
                if self._abandoned:
                    return
                self.lines.extend(lines)
                self.angles.extend(float(a) for a in angles)

    READ_SECONDS = 600.0  # the longest the run's end waits for the reading thread

    def projections(self) -> tuple[list[np.ndarray], list[float]]:
        """The earlier projections' rows and angles, in frame order (waits for the reading thread, at most
        READ_SECONDS: a file that hangs leaves out what was not read by then, and says so)."""
        self._thread.join(self.READ_SECONDS)
        with self._lock:
            self._abandoned = True
            if self._thread.is_alive():
                self.errors.append(f"still reading after {self.READ_SECONDS:g} s: the rest left out")
                log.error("tomography run: the earlier part's projections still reading; the rest left out")
            return list(self.lines), list(self.angles)

    def read_so_far(self, start: int, most: int) -> tuple[list[np.ndarray], list[float]]:
        """Up to ``most`` projections already read, from the ``start``-th on (without waiting)."""
        with self._lock:
            stop = min(len(self.angles), start + most)
            return self.lines[start:stop], self.angles[start:stop]

    def record(self) -> dict[str, Any]:
        """What the run product says about the part it took over."""
        record: dict[str, Any] = {
            "inherited_from_runs": ", ".join(self.parts.runs),
            "darks_inherited": self.darks,
            "flats_inherited": self.flats,
            "projections_inherited": len(self.angles),
            "projections_inherited_without_angle": self.without_angle,
            "inherited_files_not_local": self.parts.missing,
        }
        if self.errors:
            record["inherited_files_unusable"] = "; ".join(self.errors)
        return record


class TomoStage(_CorrectedStage):
    """NXtomo frames; darks/flats averaged; chosen rows reconstructed while projections arrive."""

    name = "tomo"
    definition = "NXtomo"
    reference = (
        "dark/flat normalisation, -log, filtered back-projection with a ramp filter, streamed as "
        "projections arrive (Kak & Slaney, Principles of Computerized Tomographic Imaging, 1988)"
    )

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        p = ctx.params.tomo
        rows = list(dict.fromkeys(p.slices)) or [ctx.shape[0] // 2]  # a row named twice: once
        bad = [r for r in rows if not 0 <= r < ctx.shape[0]]
        if bad:
            raise ValueError(f"reduction.tomo.slices {bad} are outside the detector's {ctx.shape[0]} rows")
        self.rows = rows
        self.center = p.center
        self._notes: dict[str, str] = {}  # for the run's record (`run_notes`)
        # angles given for projections that come without one (an EPICS-driven scan), and how many got one
        given = (p.angle_start, p.angle_step)
        self.given_angles = None if None in given else (float(given[0]), float(given[1]))  # type: ignore[arg-type]
        self.angles_given = 0
        self.filter = p.filter
        fourier_filter(2, self.filter)  # a filter the kernel lacks fails here (the run stores raw frames),
        # never at each projection (every one of them lost)
        self._dark_sum = np.zeros(ctx.shape, np.float64)
        self._flat_sum = np.zeros(ctx.shape, np.float64)
        self.darks = self.flats = self.projections = self.without_angle = 0
        self.incomplete_left_out = 0  # darks and flats with pixels missing: not in the means
        self.reconstructor: Any = None
        self._used: tuple[int, int] | None = (
            None  # (darks, flats) in the means, fixed at the first projection
        )
        self._used_means: tuple[np.ndarray, np.ndarray] | None = None
        # (darks, flats) that came after the first projection and went into the final normalisation at
        # the scan's end (`_renormalised`); None: none did
        self._late_applied: tuple[int, int] | None = None
        self.angles: list[float] = []
        self.sinograms: list[np.ndarray] = []  # normalised rows of each projection, for the run product
        self._latest: np.ndarray | None = None
        self.slices_done = 0
        # a scan resumed after a restart: the darks, flats and projections stored before it was cut
        self.earlier = None if ctx.earlier is None else _EarlierScan(ctx.earlier, ctx.shape, rows)
        self._earlier_pending = self.earlier  # its projections not yet all back-projected
        # the n of reduction.tomo.angle_start + n x angle_step goes on from the projections the scan's
        # earlier part stored (a UDP scan split by a pause gave its second run's projections 0, 3, 6 ...
        # again: angles 0..45 twice, for different frames)
        self._given_from = 0 if self.earlier is None else self.earlier.planned + self.earlier.without_angle
        # ... by frame number: (n, frame) of the last projection given an angle (or the earlier part's
        # last), and the frames since that took no n (darks, flats, projections with their own angle); a
        # projection at frame f then takes n + (f - frame) - those, so frames lost between projections (a
        # crash, a dropped frame) keep their angles' places, a hole in angle_gaps, rather than shifting
        # every later projection by as many steps (an outside probe: a scan resumed after a crash that lost
        # 3 projections had every later angle 18 degrees off, and no gap said)
        self._anchor: tuple[int, int] | None = self._earlier_anchor()
        self._others_since_anchor = (
            0 if self._anchor is None or self.earlier is None else self.earlier.keys_after_last
        )
        self._earlier_lines: list[np.ndarray] = []  # those back-projected so far (normalised) ...
        self._earlier_angles: list[float] = []  # ... and their angles
        # the axis the slices are streamed about: the given centre, else the detector's centre column
        # until two projections 180 degrees apart estimate it (`_check_axis`), once, during the scan
        self._streamed_center = float(ctx.shape[1] // 2) if self.center is None else float(self.center)
        self._axis_checked = self.center is not None
        self._streamed_source: str | None = None  # how the streamed axis was estimated, once it moved
        self._wrapped: list[float] = []  # the projections' angles mod 360, sorted, until then
        #: after the axis moved: (normalised lines, angle) of the projections streamed about the old one,
        #: back-projected again about the new one a few with each projection (the rest at the scan's end)
        self._catch_up: list[tuple[np.ndarray, float]] = []

    def process(
        self,
        raw: np.ndarray | None,
        frame: int,
        image_key: int,
        angle: float,
        missing: np.ndarray | None = None,
    ) -> FrameResult:
        """A dark or flat adds to its mean; a projection's chosen rows are normalised and back-projected.
        With ``missing`` pixels, a dark or flat is left out of the means (stored, counted
        ``incomplete_left_out``), and a projection's missing pixels are line integrals of 0
        (transmission 1, as a dead pixel's) rather than -log of a zero count."""
        assert raw is not None
        self.frames += 1
        if image_key in (1, 2) and missing is not None:
            self.incomplete_left_out += 1
        elif image_key == 2:
            self.darks += 1
            self._dark_sum += raw
        elif image_key == 1:
            self.flats += 1
            self._flat_sum += raw
        if image_key in (1, 2):
            self._others_since_anchor += 1
        else:
            if math.isnan(angle) and self.given_angles is not None:  # reduction.tomo.angle_start/_step
                angle = self.given_angles[0] + self._given_index(frame) * self.given_angles[1]
                self.angles_given += 1
            else:  # (one with its own angle takes no n: the next without one takes the next n)
                self._others_since_anchor += 1
            self._project(raw, angle, missing)
        result = FrameResult(
            products={"image_key": image_key, "rotation_angle": angle},
            row={"image_key": image_key, "rotation_angle": angle},
        )
        return self._roi(raw, result, missing)

    def _earlier_anchor(self) -> tuple[int, int] | None:
        """(n, frame) of the earlier part's last projection, for the given angles of this part to go on
        from: n from its angle when that sits on the given grid, else its count of projections."""
        earlier = self.earlier
        if earlier is None or earlier.last_projection is None or self.given_angles is None:
            return None
        frame, angle = earlier.last_projection
        start, step = self.given_angles
        n = earlier.planned + earlier.without_angle - 1
        if step != 0 and math.isfinite(angle):
            place = (angle - start) / step
            if abs(place - round(place)) < 1e-6 and round(place) >= 0:
                n = round(place)
        return n, frame

    def _given_index(self, frame: int) -> int:
        """The n of reduction.tomo.angle_start + n x angle_step for a projection at ``frame``: the next
        after the last one's, plus the frames between them that did not come (lost ones); the
        first of a scan takes the earlier parts' count (0 in a scan's first run)."""
        if self._anchor is None:
            n = self._given_from
        else:
            last_n, last_frame = self._anchor
            n = last_n + max(1, frame - last_frame - self._others_since_anchor)
        self._anchor, self._others_since_anchor = (n, frame), 0
        return n

    def write_reduced(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        _CorrectedStage.write_products(self, entry, products)  # ROI statistics; the rest is run products

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        """NXtomo (image_key, sample/rotation_angle, an NXdata of links) and the Data Exchange names
        (/exchange/data, data_white, data_dark, theta) as virtual datasets over the stored frames."""
        super().write_products(entry, products)
        keys = np.asarray([p["image_key"] for p in products], np.int8)
        angles = np.asarray([p["rotation_angle"] for p in products], np.float64)
        # a frame sent without an angle keeps NaN, as in the run's frame table: a dark's or flat's 0 would
        # be an angle never measured, and a projection's would be back-projected there by a reader (the
        # live reconstruction leaves it out; so does /exchange below)
        data = entry["data"]["data"]
        instrument = entry.require_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.require_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        detector["data"] = data  # a hard link: the same dataset under NXtomo's name
        detector.create_dataset("image_key", data=keys).attrs["meaning"] = "0 projection, 1 flat, 2 dark"
        if self.center is not None:  # given (reduction.tomo.center); an estimate is known only at the end
            ds = detector.create_dataset("x_rotation_axis_pixel_position", data=float(self.center))
            ds.attrs["units"] = "pixel"
        sample = entry.require_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        if "name" not in sample:
            sample.create_dataset("name", data="unknown")
        sample.create_dataset("rotation_angle", data=angles).attrs["units"] = "deg"
        nxdata = entry["data"]
        nxdata["image_key"] = detector["image_key"]
        nxdata["rotation_angle"] = sample["rotation_angle"]
        # NeXus links: one object under both names, its @target naming the NXtomo home
        data.attrs["target"] = detector.name + "/data"
        detector["image_key"].attrs["target"] = detector.name + "/image_key"
        sample["rotation_angle"].attrs["target"] = sample.name + "/rotation_angle"
        if "implements" not in entry.file:  # Data Exchange's list of the file's top-level groups
            entry.file.create_dataset("implements", data="exchange")
        exchange = entry.file.require_group("exchange")
        exchange.attrs["note"] = (
            "this file's frames only: a scan's darks and flats are in its first file(s); read the run's"
            " files together (or its reduced file's reconstruction)"
        )
        # a projection without an angle is left out of /exchange: a Data Exchange reader back-projects
        # every frame of /exchange/data at its theta, and NaN is no angle (NXtomo's names keep it)
        usable = (keys == 0) & np.isfinite(angles)
        unlisted = int(np.count_nonzero(keys == 0)) - int(np.count_nonzero(usable))
        if unlisted:  # (a tomo run over UDP or Stream V2: no frame carries an angle, /exchange/data is empty)
            exchange.attrs["note"] = str(exchange.attrs["note"]) + (
                f"; {unlisted} projection(s) of this file came without a rotation angle and are not listed"
                " here: they are in /entry/data/data (image_key 0, rotation_angle NaN)"
            )
        for name, chosen in (("data", usable), ("data_white", keys == 1), ("data_dark", keys == 2)):
            _virtual_subset(exchange, name, data, np.flatnonzero(chosen))
        _virtual_subset(exchange, "theta", sample["rotation_angle"], np.flatnonzero(usable))
        exchange["theta"].attrs["units"] = "deg"

    def _dark_flat_counts(self) -> tuple[int, int]:
        """Darks and flats the normalisation averages: this run's and, resumed, the earlier part's."""
        if self.earlier is None:
            return self.darks, self.flats
        return self.darks + self.earlier.darks, self.flats + self.earlier.flats

    def flat_field(self) -> str:
        """What the projections' normalisation used: the scan's darks and flats that came before its first
        projection (in a scan resumed after a restart, with those of the part stored before it was cut).
        The means are fixed at the first projection, streamed from then on: darks and flats that come
        after it are stored and counted, never used, and the text says so."""
        darks, flats = self._dark_flat_counts() if self._used is None else self._used
        earlier = self.earlier
        # the earlier part's darks and flats, named only when it stored some (a run cut during its darks
        # may have stored none: its frames were in a quarantined file, recorded lost)
        taken = (
            []
            if earlier is None
            else [f"{n} {what}" for n, what in ((earlier.darks, "darks"), (earlier.flats, "flats")) if n]
        )
        inherited = (
            f" (with the {' and '.join(taken)} stored in run {', '.join(earlier.reference_runs)})"
            if earlier is not None and taken
            else ""
        )
        before = "in the scan" if self._late_applied is not None else "before the first projection"
        if darks and flats:
            text = f"applied: (projection - mean dark) / (mean flat - mean dark){inherited}"
        elif flats:
            text = f"applied without darks: projection / mean flat{inherited}; no darks {before}"
        elif darks:
            text = (
                f"not applied: no flats {before}; the slices are of -log(projection - mean dark){inherited}"
            )
        else:
            text = f"not applied: no darks and flats {before}; the slices are of -log(counts)"
            if earlier is not None:  # the scan began in runs a restart cut: theirs may be lost with them
                began = ", ".join(earlier.parts.runs)
                text += (
                    f" (none in the runs the scan began in, {began}: darks and flats of theirs lost with a"
                    " crash are in their loss records, daemon_crash)"
                )
        if not all(self._dark_flat_counts()) and earlier is None:
            # an EPICS-driven scan's darks and flats taken by Acquires of their own were runs of their own,
            # never used here, and nothing said so (an outside probe)
            text += (
                "; darks and flats of other runs are never used: take them in the same run (an"
                " areaDetector capture, HDF1:Capture, open across the scan's acquisitions; each Acquire is a"
                " run otherwise)"
            )
        if self._late_applied is not None:
            late = [
                f"{n} {name}" for n, name in zip(self._late_applied, ("darks", "flats"), strict=True) if n
            ]
            text += (
                f"; {' and '.join(late)} came after the first projection: the live slices were without"
                " them, the sinograms and final slices are normalised with every dark and flat"
            )
        elif self._used is not None:
            late_darks, late_flats = self._dark_flat_counts()[0] - darks, self._dark_flat_counts()[1] - flats
            late = [f"{n} {name}" for n, name in ((late_darks, "darks"), (late_flats, "flats")) if n]
            if late:
                text += f"; {' and '.join(late)} came after the first projection: stored, not used"
        return text

    def _renormalised(self, sinograms: np.ndarray) -> np.ndarray:
        """``sinograms`` (angles, rows, columns), normalised with the darks and flats of before the first
        projection, normalised again with every dark and flat of the scan (some came after it: flats
        taken at the scan's end, as many beamlines do). Each line integral gives back its counts
        (``exp(-L) (flat - dark) + dark`` with the means it was made with), then the backend's
        normalisation is applied with the final means. A pixel at the floor (counts at or below the dark)
        stays there, and one the first normalisation had no measure of (flat not above dark) stays 0."""
        used_dark, used_flat = (m[self.rows] for m in self._used_means)  # type: ignore[union-attr]
        final_dark, final_flat = (m[self.rows] for m in self._means())
        line = sinograms.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            span = used_flat - used_dark
            counts = np.exp(-line) * span + used_dark
        out = np.asarray(
            self.ctx.backend.flat_field(counts, final_dark, final_flat, np.empty(line.shape, np.float32)),
            np.float32,
        )
        floor = np.float32(-np.log(FLAT_FIELD_FLOOR))
        out = np.where(sinograms >= floor * (1 - 1e-6), floor, out)  # its counts were not kept: the floor
        out = np.where(span > 0, out, np.float32(0))  # no measure then: none now
        darks, flats = self._dark_flat_counts()
        self._late_applied = (darks - self._used[0], flats - self._used[1])  # type: ignore[index]
        self._used = (darks, flats)
        self._used_means = self._means()
        self.sinograms = list(out)
        return out

    def _means(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean dark and flat of those so far; with no flats, the dark + 1 (the normalisation is then
        the projection less the dark), with no darks, 0."""
        darks, flats = self._dark_flat_counts()
        dark_sum, flat_sum = self._dark_sum, self._flat_sum
        if self.earlier is not None:
            dark_sum, flat_sum = dark_sum + self.earlier.dark_sum, flat_sum + self.earlier.flat_sum
        dark = dark_sum / darks if darks else np.zeros(self.ctx.shape)
        flat = flat_sum / flats if flats else dark + 1.0
        return dark.astype(np.float32), flat.astype(np.float32)

    def _project(self, raw: np.ndarray, angle: float, missing: np.ndarray | None = None) -> None:
        self.projections += 1
        if math.isnan(angle):  # stored, but a projection at an unknown angle cannot be back-projected
            self.without_angle += 1
            return
        if self.reconstructor is None:  # darks and flats come first in a scan: their means are final
            self._start_reconstruction()
        self.angles.append(angle)
        normalised = self._normalised(raw[self.rows].astype(np.float32))
        if missing is not None:
            normalised[missing[self.rows]] = 0.0
        self.sinograms.append(normalised)
        self.reconstructor.add(normalised, angle)
        if not self._axis_checked:
            self._check_axis(angle)
        self._catch_up_some(self.CATCH_UP_PER_FRAME)
        earlier = self._earlier_pending
        if earlier is not None:  # a few of the earlier part's go with each: live, and less left for the end
            self._add_earlier(*earlier.read_so_far(len(self._earlier_angles), self.EARLIER_PER_FRAME))

    def _start_reconstruction(self) -> None:
        dark, flat = self._means()
        self._used = self._dark_flat_counts()
        self._used_means = (dark, flat)
        if not all(self._dark_flat_counts()):
            log.warning("tomography run: flat field %s", self.flat_field())
        # fed the chosen rows already normalised (once per projection, kept for the sinograms)
        self.reconstructor = self.ctx.backend.streaming_reconstructor(
            self.ctx.shape[1],
            np.arange(len(self.rows)),
            filter_name=self.filter,
            center=self.center,
        )
        self._dark, self._flat = dark[self.rows], flat[self.rows]

    #: projections streamed about the old axis back-projected again about the new one with each projection
    CATCH_UP_PER_FRAME = 2

    def _check_axis(self, angle: float) -> None:
        """Once the scan holds two projections 180 +- 2 degrees apart (the newest one and an earlier one),
        the axis is estimated from the pair `finish` would pick among those so far; an estimate more than
        `CENTER_REDO_PX` from the streamed column moves the streaming there: a new reconstruction about it,
        fed the projections so far a few at a time (`_catch_up_some`). The live slices are then about
        the estimated axis for the rest of the scan, and the scan's end redoes nothing when its estimate
        is the same (in a 360-degree scan, or one that turns past 180 degrees, the pair comes mid-scan;
        in a scan of 0 to 180 degrees only at its last projection)."""
        wrapped = angle % 360.0
        ring = self._wrapped
        if ring:
            target = (wrapped + 180.0) % 360.0
            at = bisect.bisect_left(ring, target)
            gap = min(abs((ring[k % len(ring)] - target + 180.0) % 360.0 - 180.0) for k in (at - 1, at))
            if gap <= self.PAIR_TOLERANCE_DEG:
                self._axis_checked = True
                self._wrapped = []
                self._move_axis()
                return
        bisect.insort(ring, wrapped)

    PAIR_TOLERANCE_DEG = 2.0  # as `opposite_projections`' default, which `finish` uses

    def _move_axis(self) -> None:
        """`_check_axis`'s estimate from the projections so far, and the streaming moved to it."""
        lines = [*self._earlier_lines, *self.sinograms]
        angles = [*self._earlier_angles, *self.angles]
        pair = opposite_projections(np.asarray(angles, np.float64), self.PAIR_TOLERANCE_DEG)
        if pair is None:
            return
        i, j = pair
        estimated = _axis_from(lines[i], lines[j])
        if not np.isfinite(estimated) or abs(estimated - self._streamed_center) <= self.CENTER_REDO_PX:
            return
        log.info(
            "tomography run: rotation axis estimated at column %.2f from the projections at %g and %g"
            " degrees; streaming about it from now on (%d projections back-projected again)",
            estimated,
            angles[i],
            angles[j],
            len(angles),
        )
        self._streamed_center = estimated
        self._streamed_source = f"estimated from the projections at {angles[i]:g} and {angles[j]:g} degrees"
        self.reconstructor = self.ctx.backend.streaming_reconstructor(
            self.ctx.shape[1], np.arange(len(self.rows)), filter_name=self.filter, center=estimated
        )
        self._catch_up = list(zip(lines, angles, strict=True))

    def _catch_up_some(self, most: int | None) -> None:
        """Back-project up to ``most`` (None: all) of the projections streamed about the old axis."""
        if not self._catch_up:
            return
        count = len(self._catch_up) if most is None else min(most, len(self._catch_up))
        for line, angle in self._catch_up[:count]:
            self.reconstructor.add(line, angle)
        del self._catch_up[:count]

    def _normalised(self, lines: np.ndarray) -> np.ndarray:
        """The chosen rows of one projection as -log(transmission), float32."""
        out = self.ctx.backend.flat_field(lines, self._dark, self._flat, np.empty_like(lines))
        return np.asarray(out, np.float32)

    EARLIER_PER_FRAME = 2  # earlier projections back-projected with each projection of the run
    #: the slices, streamed about the centre column, are redone about the estimated axis when it is further
    #: from that column than this (the estimate's own spread on noisy projections is a few 0.01 px)
    CENTER_REDO_PX = 0.05

    def _add_earlier(self, lines: list[np.ndarray], angles: list[float]) -> None:
        """Back-project projections of the earlier part (read, not yet normalised)."""
        if not angles:
            return
        if self.reconstructor is None:
            self._start_reconstruction()
        for line, angle in zip(lines, angles, strict=True):
            normalised = self._normalised(line)
            self.reconstructor.add(normalised, angle)
            self._earlier_lines.append(normalised)
            self._earlier_angles.append(angle)
            if not self._axis_checked:  # a pair among the earlier part's projections counts too
                self._check_axis(angle)

    def _take_earlier(self) -> None:
        """A resumed scan: the rest of the projections stored before the restart, back-projected with
        this run's (once, at the end: a few went with each of the run's projections already), and ahead
        of them in the sinograms, as they came in the scan."""
        earlier, self._earlier_pending = self._earlier_pending, None
        if earlier is None:
            return
        lines, angles = earlier.projections()
        done = len(self._earlier_angles)
        self._add_earlier(lines[done:], angles[done:])
        self.sinograms[:0] = self._earlier_lines
        self.angles[:0] = self._earlier_angles
        # now in the run's own lists: counted once (the live slice's projections were the earlier part's
        # twice after the run's end: an outside dashboard probe read 376 of 296)
        self._earlier_lines, self._earlier_angles = [], []

    def settings_record(self) -> dict[str, Any]:
        return {
            **super().settings_record(),
            "slices": self.rows,
            "center": self.center,
            "center_source": "given"
            if self.center is not None
            else "estimated from two projections 180 degrees apart (as soon as the scan has them, the"
            " slices are streamed about it; again at the scan's end, from the whole scan), else the"
            " detector centre column (n_cols // 2): the reconstruction's center_source says which",
            "filter": self.filter,
            "normalisation": "-log((projection - mean dark) / (mean flat - mean dark))",
        }

    def finish(self) -> dict[str, Any]:
        self._take_earlier()
        if self.reconstructor is None:
            if self.projections:  # (an outside probe: the scan ended with no slices and nothing said why)
                log.warning(
                    "tomography: %d projections, none with a rotation angle (a Stream V2 or UDP sender, or a"
                    " JSON one that sent none): no slices are reconstructed",
                    self.projections,
                )
            return {}
        self._catch_up_some(None)
        slices = np.asarray(self.reconstructor.slices(), np.float32)
        sinograms = np.stack(self.sinograms, axis=0)  # (angles, rows, columns)
        angles = np.asarray(self.angles, np.float64)
        redo = False
        if self._used is not None and self._dark_flat_counts() != self._used:
            sinograms = self._renormalised(sinograms)  # darks or flats came after the first projection
            redo = True
        center, source = self.center, "given"
        streamed = self._streamed_center
        if center is None:
            # streamed about the detector's centre column; with two projections 180 degrees apart the axis
            # is estimated from them and, if it differs, the slices are redone
            center = float(self.ctx.shape[1] // 2)
            pair = opposite_projections(angles)
            near = None if pair is not None else near_opposite_projections(angles)
            if pair is None and near is None:
                source = "detector centre column (n_cols // 2): no two projections 180 +- 5 degrees apart"
                # said in the run's record too, not only in the file (an outside probe: a 60-projection
                # scan in 3-degree steps was reconstructed 2 px off its axis, said in one string inside
                # the file)
                self._notes["centre_not_estimated"] = (
                    f"slices about the detector's centre column {center:g}, not an estimated axis: no two"
                    " of the scan's projections are 180 +- 5 degrees apart (a scan short of a half turn);"
                    " give reduction.tomo.center (Reduction:TomoCenter) and reconstruct from the data files"
                    " (NXtomo) if the axis is elsewhere"
                )
            else:
                if pair is not None:
                    i, j = pair
                    first = sinograms[i]
                    between = f"the projections at {angles[i]:g} and {angles[j]:g} degrees"
                else:
                    # no pair 180 +- 2 degrees apart (a half turn in 3-degree steps: 0 and 177): the one at
                    # angle j less 180, interpolated (or extrapolated) from i and its neighbour k (an
                    # outside probe's 60-projection scan came out 2 px off its axis, about the centre column)
                    assert near is not None
                    i, j, k, w = near
                    first = sinograms[i] + np.float32(w) * (sinograms[k] - sinograms[i])
                    between = (
                        f"the projections at {angles[j]:g} and {angles[j] - 180:g} degrees, the latter"
                        f" {'inter' if 0 <= w <= 1 else 'extra'}polated from those at {angles[i]:g} and"
                        f" {angles[k]:g} (no two 180 +- 2 degrees apart)"
                    )
                estimated = _axis_from(first, sinograms[j])
                source = f"detector centre column (n_cols // 2): estimated {estimated:.2f} from {between}"
                if not np.isfinite(estimated):  # the chosen rows hold no sample (air): no axis in them
                    source = (
                        f"detector centre column (n_cols // 2): {between} do not agree about any axis in"
                        f" the chosen rows {self.rows} (correlation below {AXIS_MIN_CORRELATION}: rows of"
                        " air, no sample)"
                    )
                    self._notes["centre_not_estimated"] = (
                        f"slices about the detector's centre column {center:g}, not an estimated axis: the"
                        f" chosen rows {self.rows} show no sample in {between} (rows of air, noise only);"
                        " choose rows through the sample (reduction.tomo.slices) or give"
                        " reduction.tomo.center (Reduction:TomoCenter), and reconstruct from the data"
                        " files (NXtomo)"
                    )
                if np.isfinite(estimated) and abs(estimated - center) > self.CENTER_REDO_PX:
                    center, source = estimated, f"estimated from {between}"
                    moved = self._streamed_source
                    close = 0 < abs(center - streamed) <= self.CENTER_REDO_PX
                    if moved is not None and not redo and close:
                        # the pair mid-scan (0 and 178 in 2-degree steps, say) gave nearly the same axis as
                        # the whole scan's: the slices stay about it, not redone for a few 0.01 px
                        center = streamed
                        source = f"{moved} (of the whole scan, {between} give {estimated:.3f}: within"
                        source += f" {self.CENTER_REDO_PX} px)"
        if redo or center != streamed:  # the slices again, of the final sinograms about the final axis
            slices = np.stack(
                [
                    self.ctx.backend.fbp(sinograms[:, k, :], angles, filter_name=self.filter, center=center)
                    for k in range(len(self.rows))
                ]
            ).astype(np.float32)
        self.slices_done = len(self.rows)
        self._latest = slices
        # the live product's slice is the final one now: its axis too (it named the axis streamed about,
        # a few 0.001 px from the final one when the end flats made the slices be redone)
        self._streamed_center, self._streamed_source = float(center), source
        darks, flats = self._used if self._used is not None else (0, 0)
        dark, flat = self._used_means if self._used_means is not None else self._means()
        means = {"dark_mean": dark} if darks else {}
        if flats:
            means["flat_mean"] = flat
        return {
            "slices": slices,
            "rows": np.asarray(self.rows, np.int64),
            "sinograms": np.transpose(sinograms, (1, 0, 2)),  # (rows, angles, columns)
            "rotation_angle": angles,
            **means,  # those the normalisation used
            "center": float(center),
            "center_source": source,
            # the grid the slices are on (one detector pixel a side): attenuation per pixel / x_pixel_size
            # is per metre, from the reduced file alone (forwarded without the data files under
            # upstream.forward=reduced)
            "x_pixel_size": float(self.ctx.geometry.pixel2),
            "y_pixel_size": float(self.ctx.geometry.pixel1),
            "projections": self.projections,
            "projections_without_angle": self.without_angle,
            # those that came without one and took reduction.tomo.angle_start + n x angle_step
            "projections_angle_given": self.angles_given,
            "darks": self.darks,
            "flats": self.flats,
            "darks_and_flats_incomplete": self.incomplete_left_out,  # stored, not in the means
            **angle_gaps(angles),
            "flat_field": self.flat_field(),
            **({} if self.earlier is None else self.earlier.record()),
        }

    def run_notes(self) -> dict[str, str]:
        return dict(self._notes)

    def live(self) -> dict[str, Any] | None:
        slice_doc = None
        current = self._latest
        if current is None and self.reconstructor is not None and self.projections:
            # what is back-projected so far: this runs on the API's thread while the pipeline's adds
            current = np.asarray(self.reconstructor.partial_slices(), np.float32)
        if current is not None and len(current):
            image = current[0]
            lo, hi = float(np.min(image)), float(np.max(image))
            scaled = (
                np.zeros(image.shape, np.uint8)
                if hi <= lo
                else ((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)
            )
            projections = len(self._earlier_angles) + len(self.angles)
            slice_doc = {
                "row": self.rows[0],
                # the axis it is about, and how that was found; after the axis moved mid-scan the new
                # reconstruction holds the projections before the move only once it has caught up
                "center": self._streamed_center,
                "center_source": self._streamed_source
                or ("given" if self.center is not None else "the detector's centre column"),
                "projections": projections,
                "projections_in_slice": projections - len(self._catch_up),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "pixels_b64": base64.b64encode(scaled.tobytes()).decode("ascii"),
                "min": lo,
                "max": hi,
            }
        earlier = self.earlier
        return {
            "projections": self.projections,
            # not back-projected: no angle came with them, and reduction.tomo.angle_start/angle_step gave
            # none (an EPICS-driven scan's frames carry none; its slice stayed empty, saying nothing)
            "projections_without_angle": self.without_angle,
            "projections_angle_given": self.angles_given,
            "darks": self.darks,
            "flats": self.flats,
            "slices_done": self.slices_done,
            "slice": slice_doc,
            # a scan resumed after a restart: what the part stored before it adds (its projections are
            # back-projected at the run's end)
            "inherited": None
            if earlier is None
            else {
                "runs": list(earlier.parts.runs),
                "darks": earlier.darks,
                "flats": earlier.flats,
                "projections": earlier.planned,
                "files_unusable": len(earlier.errors),
            },
        }

    def tally(self) -> dict[str, float]:
        return {
            "frames": self.frames,
            "projections": self.projections,
            "darks": self.darks,
            "flats": self.flats,
            "slices_done": self.slices_done,
        }


#: a step between neighbouring projection angles this many times the scan's usual step is a gap
GAP_STEPS = 1.5


def angle_gaps(angles: np.ndarray) -> dict[str, Any]:
    """How evenly the projections cover the scan: the usual step between neighbouring angles (the
    median, degrees), the widest step, how many steps are wider than `GAP_STEPS` usual ones (the
    projections a crash or a lost frame took away: an outside probe found a 7 degree hole in a resumed
    scan only by reading every angle), and the lowest and highest angle (not the first and last sent:
    a descending scan's range reads low to high)."""
    ordered = np.unique(np.asarray(angles, np.float64)[np.isfinite(angles)])
    if ordered.size < 3:
        return {}
    steps = np.diff(ordered)
    usual = float(np.median(steps))
    return {
        "angle_step": usual,
        "largest_angle_step": float(steps.max()),
        "angle_gaps": int(np.count_nonzero(steps > GAP_STEPS * usual)),
        # the span the projections cover, lowest to highest: a hole at either end of the scan (its first
        # part lost with a crash) is no step between them (an outside probe read angle_gaps 0 of 77-179)
        "angle_range": [float(ordered[0]), float(ordered[-1])],
    }


def _virtual_subset(group: h5py.Group, name: str, source: h5py.Dataset, indices: np.ndarray) -> None:
    """``group[name]``: a virtual dataset of the frames (or values) ``indices`` of ``source`` (no
    copy). With no frames, an empty dataset of the frames' shape: a virtual one without a source trips
    readers (nexusformat's tree walk)."""
    frame_shape = source.shape[1:]
    if not len(indices):
        group.create_dataset(name, shape=(0, *frame_shape), dtype=source.dtype)
        return
    layout = h5py.VirtualLayout(shape=(len(indices), *frame_shape), dtype=source.dtype)
    vsource = h5py.VirtualSource(".", source.name, shape=source.shape)
    # contiguous runs of frames map as one block each (a scan has darks, flats, projections in runs)
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    start = 0
    for block in np.split(indices, breaks):
        first, count = int(block[0]), len(block)
        layout[start : start + count] = vsource[first : first + count]
        start += count
    group.create_virtual_dataset(name, layout)
