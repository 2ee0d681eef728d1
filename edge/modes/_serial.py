"""``serial``: peakfinder8-style peaks and a hit classifier; a CXI peak table aligned with the frames;
blanks in their own files or vetoed.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from edge.frame_format import preview_image, preview_step
from edge.modes._stage import STREAM_BLANK, FrameResult, RunContext, _CorrectedStage, frame_row
from edge.nxmx import crystfel_panel
from kernels import direct_beam_in_image


class SerialStage(_CorrectedStage):
    """Peaks (peakfinder8-style) and hits; a CXI peak table CrystFEL reads with ``peak_list_type = cxi``."""

    name = "serial"
    excludes_dummies = True
    reference = (
        "peakfinder8-style spot finding: per-ring background by iterative sigma clipping, 3x3 box "
        "candidates above min_snr, connected components (Barty et al., J. Appl. Cryst. 47 (2014) 1118)"
    )
    RECENT_SECONDS = 300.0
    HIT_IMAGE_SECONDS = 0.5  # a hit's subsampled image is kept at least this often (a copy per hit),
    HIT_IMAGE_HITS = 4  # and at least every this many hits: a burst of hits within 0.5 s (frames held
    # while kernels loaded) kept only its first, the page's "latest hit 77" beside the image of frame 1
    PEAK_CHUNK = 64  # peak table columns per HDF5 chunk (see write_products)

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        p = ctx.params.serial
        ctx.corrections.check_calibration(ctx.shape)  # (its beam centre is for the calibrated detector)
        # rings of equal background are centred on the direct beam, in the frames' own pixels (the sensor's
        # frame put them ~350 columns off for an orientation 2 PONI: noise found as peaks, every frame a hit)
        x, y = direct_beam_in_image(ctx.geometry, ctx.shape)
        self.finder = ctx.backend.peak_finder(
            ctx.shape,
            center=(y - 0.5, x - 0.5),  # pixel index units: pixel (i, j) is centred at (i + 0.5, j + 0.5)
            mask=ctx.corrections.mask,
            min_snr=p.min_snr,
            adc_threshold=p.adc_threshold,
            min_pixels=p.min_pixels,
            max_pixels=p.max_pixels,
            min_peaks=p.min_peaks,
            iterations=p.clip_iterations,
        )
        self.min_peaks = p.min_peaks
        self.max_peaks = p.max_peaks
        self.hits = 0
        self.vetoed = 0
        self._latest_hit: tuple[int, dict[str, Any]] | None = None
        # the newest hit whose pixels were kept (subsampled as the live image): the dashboard circles its
        # peaks on its own frame, not on whatever frame the live image shows then
        self._hit_image: tuple[int, dict[str, Any], np.ndarray] | None = None
        self._hit_image_doc: tuple[int, dict[str, Any]] | None = None
        self._image_kept_at = 0.0
        self._hits_not_kept = 0  # hits since the last kept image (frames analysed at once: roughly)
        self._step = preview_step(*ctx.shape)
        self._recent: deque[tuple[float, int, int]] = deque()  # (time, frames, hits) once a second
        self._last: tuple[float, int, int] | None = None  # the same, at the newest frame

    independent = True

    def analyse(
        self, raw: np.ndarray | None, missing: np.ndarray | None = None
    ) -> tuple[Any, dict[str, np.ndarray] | None]:
        # the finder's only state is a guess learnt from the frame before, which speeds its search and
        # never changes its answer: frames analysed at once find what they would one by one. A frame's
        # missing pixels reach it as NaN, which it leaves out as it does masked pixels (its zeros would
        # pull the rings' backgrounds down and make background pixels candidates)
        assert raw is not None
        frame = raw
        if missing is not None:
            frame = raw.astype(np.float32)
            frame[missing] = np.nan
        peaks = self.finder.find(frame)
        image = None
        now = time.monotonic()
        if len(peaks) >= self.min_peaks:
            if (
                now - self._image_kept_at >= self.HIT_IMAGE_SECONDS
                or self._hits_not_kept >= self.HIT_IMAGE_HITS
            ):
                self._image_kept_at = now  # (frames analysed at once may both keep one: harmless)
                self._hits_not_kept = 0
                image = np.array(raw[:: self._step, :: self._step])  # a copy: the ring slot is reused
            else:
                self._hits_not_kept += 1
        return peaks, self._roi_stats(raw, missing), image

    def fold(self, analysis: Any, frame: int, image_key: int, angle: float) -> FrameResult:
        peaks, roi, image = analysis
        self.frames += 1
        n = len(peaks)
        hit = n >= self.min_peaks
        # more peaks than the table holds: the strongest max_peaks, in the finder's (row-major) order (the
        # first ones kept dropped strong spots in the frame's lower rows for weak ones above them)
        keep = slice(None) if n <= self.max_peaks else self._strongest(peaks.intensity)
        table = {
            "nPeaks": n,
            "peakXPosRaw": np.asarray(peaks.col[keep], np.float32),
            "peakYPosRaw": np.asarray(peaks.row[keep], np.float32),
            "peakTotalIntensity": np.asarray(peaks.intensity[keep], np.float32),
            "peakNPixels": np.asarray(peaks.n_pixels[keep], np.float32),
            "peakSNR": np.asarray(peaks.snr[keep], np.float32),
            "is_hit": hit,
        }
        row = {**frame_row(image_key, angle), "is_hit": hit, "n_peaks": n}
        if hit:
            self.hits += 1
            self._latest_hit = (frame, table)  # made into the live view's list only when asked for
            if image is not None:
                self._hit_image = (frame, table, image)
            result = FrameResult(products={"peaks": table}, row=row)
        elif self.ctx.store_blanks == "drop":
            self.vetoed += 1
            result = FrameResult(keep=False, products={"peaks": table}, row=row)
        else:
            result = FrameResult(stream=STREAM_BLANK, products={"peaks": table}, row=row)
        self._sample()
        return self._with_roi(roi, result)

    def _strongest(self, intensity: np.ndarray) -> np.ndarray:
        """The indices of the ``max_peaks`` largest intensities (ties: the earlier peak), ascending."""
        order = np.argsort(-np.asarray(intensity, np.float64), kind="stable")
        return np.sort(order[: self.max_peaks])

    def tally(self) -> dict[str, float]:
        rate = self.hits / self.frames if self.frames else 0.0
        return {"frames": self.frames, "hits": self.hits, "vetoed": self.vetoed, "hit_rate": rate}

    def _sample(self) -> None:
        now = time.time()
        self._last = (now, self.frames, self.hits)  # the newest frame's tally (``live``'s last point)
        if not self._recent or now - self._recent[-1][0] >= 1.0:
            self._recent.append((now, self.frames, self.hits))
            while self._recent and now - self._recent[0][0] > self.RECENT_SECONDS:
                self._recent.popleft()

    def settings_record(self) -> dict[str, Any]:
        return {
            **super().settings_record(),
            **self.ctx.params.serial.model_dump(),
            "blanks": self.ctx.store_blanks,
            **self._mask_file_record(),
            **self._dummy_record(),
        }

    def write_products(self, entry: h5py.Group, products: list[dict[str, Any]]) -> None:
        super().write_products(entry, products)
        n, width = len(products), self.max_peaks
        result = entry.create_group("result_1")
        result.attrs["NX_class"] = "NXcollection"
        rows = "/entry/data/data" if "data" in entry else "/entry/frames (vetoed blanks included)"
        result.attrs["meaning"] = (
            f"CXI peak list, one row per frame of {rows} (CrystFEL peak_list_type = cxi)"
        )
        peaks = [p["peaks"] for p in products]
        found = np.asarray([p["nPeaks"] for p in peaks], np.int32)
        # nPeaks counts the table's entries, at most max_peaks wide (Cheetah's convention: CrystFEL reads
        # nPeaks entries of each row); how many the finder found, when more, is nPeaksFound
        result.create_dataset("nPeaks", data=np.minimum(found, width)).attrs["meaning"] = (
            f"peaks listed in this row's columns (at most max_peaks = {width}); all found: nPeaksFound"
        )
        result.create_dataset("nPeaksFound", data=found)
        result.create_dataset("is_hit", data=np.asarray([p["is_hit"] for p in peaks], bool))
        # The tables are (frames, max_peaks), zero-padded. Stored in chunks of PEAK_CHUNK columns, only
        # the columns some frame fills are written: HDF5 allocates no chunk never written and reads it
        # back as the fill value 0, so a reader sees the whole padded table, and the padding is neither
        # built nor compressed (hits hold tens of peaks; the table is hundreds wide).
        used = min(width, int(max((p["peakXPosRaw"].size for p in peaks), default=0)))
        chunks = (max(1, n), min(width, self.PEAK_CHUNK))
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakNPixels", "peakSNR"):
            data = result.create_dataset(
                name, (n, width), np.float32, chunks=chunks, compression="gzip", shuffle=True, fillvalue=0
            )
            if used:
                table = np.zeros((n, used), np.float32)
                for i, p in enumerate(peaks):
                    values = p[name]
                    table[i, : values.size] = values
                data[:, :used] = table
        index = "pixels, as an index: the centre of pixel (0, 0) is at 0"
        result["peakXPosRaw"].attrs["meaning"] = f"fast-scan (column) position, {index}"
        result["peakYPosRaw"].attrs["meaning"] = f"slow-scan (row) position, {index}"
        for name in ("peakXPosRaw", "peakYPosRaw"):
            result[name].attrs["units"] = "pixel"

    def run_files(self, directory: Path, run_uid: str) -> list[Path]:
        """``RUN.geom``: the detector as CrystFEL's geometry file describes it, reading the data files'
        frames and their CXI peak tables (``peak_list_type = cxi``).

        The panel is the NXmx chain evaluated (``edge.nxmx.crystfel_panel``): orientation and tilts
        included, so a pixel lands where pyFAI puts it. Peak positions in the tables are pixel indices
        (the centre of pixel (0, 0) at 0, 0), which CrystFEL's default half-pixel shift expects."""
        g = self.ctx.geometry
        height, width = self.ctx.shape
        x, y = direct_beam_in_image(g, self.ctx.shape)
        panel = crystfel_panel(g, self.ctx.shape)
        energy_ev = 12398.419843 / (g.wavelength * 1e10)

        def vector(v: tuple[float, float, float]) -> str:
            return f"{v[0]:+.12f}x {v[1]:+.12f}y {v[2]:+.12f}z"

        text = f"""; CrystFEL geometry written by edge for run {run_uid}
; pyFAI geometry: dist {g.dist} m, poni1 {g.poni1} m, poni2 {g.poni2} m, rot1 {g.rot1}, rot2 {g.rot2},
; rot3 {g.rot3} rad, orientation {g.orientation}; the direct beam at ({x:.3f}, {y:.3f}) pixels (fast,
; slow) of the stored frames, from the outer corner of their pixel (0, 0)
; peak tables: positions are pixel indices, so keep CrystFEL's default half-pixel shift
; clen in metres, written without a unit as older parsers (CrystFEL 0.9, cfelpyutils) read it
; fs/ss have z components for a tilted detector: CrystFEL uses them, cfelpyutils' compute_pix_maps does not
adu_per_photon = 1
photon_energy = {energy_ev:.3f}
clen = {panel.clen:.9f}
res = {panel.res:.6f}
data = /entry/data/data
; NXmx pixel_mask in every data file (bit 0 gaps, bit 8 the mask file): any bit set is a bad pixel
mask = /entry/instrument/detector/pixel_mask
mask_good = 0x0
mask_bad = 0xffffffff
peak_list = /entry/result_1
peak_list_type = cxi
dim0 = %
dim1 = ss
dim2 = fs

panel0/min_fs = 0
panel0/max_fs = {width - 1}
panel0/min_ss = 0
panel0/max_ss = {height - 1}
panel0/corner_x = {panel.corner_x:.12f}
panel0/corner_y = {panel.corner_y:.12f}
panel0/coffset = 0
panel0/fs = {vector(panel.fs)}
panel0/ss = {vector(panel.ss)}
"""
        path = directory / f"{run_uid}.geom"
        part = path.with_name(path.name + ".part")
        try:
            with open(part, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(part, path)
        except BaseException:  # a full disk: no empty .part left behind (the caller writes it again)
            part.unlink(missing_ok=True)
            raise
        return [path]

    def live(self) -> dict[str, Any] | None:
        recent = list(self._recent)
        last = self._last
        if recent and last is not None and last[1] > recent[-1][1]:
            # and the frames since the newest sample, as of the newest frame: a run shorter than a second
            # (a burst after the kernels loaded) had one sample and no rate to draw (an outside probe)
            recent.append(last)
        series = []
        for (_, f0, h0), (t1, f1, h1) in itertools.pairwise(recent):
            frames = f1 - f0
            series.append({"t": t1, "hit_rate": (h1 - h0) / frames if frames else 0.0})
        return {**self.tally(), "recent": series, "latest_hit": self.latest_hit, "hit_image": self.hit_image}

    @property
    def hit_image(self) -> dict[str, Any] | None:
        """The newest hit whose pixels were kept (at most every ``HIT_IMAGE_SECONDS``): its frame, its
        peaks as ``latest_hit`` gives them, and its image subsampled and scaled as the live image
        (``detector_height``/``detector_width`` its full size)."""
        kept = self._hit_image
        if kept is None:
            return None
        frame, table, image = kept
        cached = self._hit_image_doc
        if cached is not None and cached[0] == frame:
            return cached[1]
        height, width = self.ctx.shape
        doc = {
            "frame": frame,
            "peaks": _peak_list(table),
            "detector_height": height,
            "detector_width": width,
            **preview_image(image),
        }
        self._hit_image_doc = (frame, doc)
        return doc

    @property
    def latest_hit(self) -> dict[str, Any] | None:
        """The newest hit: its frame number and its peaks as ``[x, y, intensity]`` (x the fast-scan axis)."""
        if self._latest_hit is None:
            return None
        frame, table = self._latest_hit
        return {"frame": frame, "peaks": _peak_list(table)}


def _peak_list(table: dict[str, Any]) -> list[list[float]]:
    """A peak table's peaks as ``[x, y, intensity]`` (x the fast-scan axis)."""
    columns = (table["peakXPosRaw"], table["peakYPosRaw"], table["peakTotalIntensity"])
    return np.stack(columns, axis=-1).astype(float).tolist()
