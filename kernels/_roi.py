"""ROI statistics (sum, mean, max, count over rectangles and masks) and the 8-bit dashboard preview.

A :class:`RoiSet` is built once from rectangles ``(row0, row1, col0, col1)`` (half-open) and/or boolean
masks; each ROI is kept as its bounding box plus, for masks, the mask cropped to that box, so a small
ROI never walks the whole frame. ROIs may overlap. The preview bins the frame by an integer factor
(mean per block, float64 sums), then maps ``[lo, hi]`` (default the binned min and max) to 0-255,
linearly or as ``log1p(x - lo) / log1p(hi - lo)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kernels._registry import Backend


@dataclass
class RoiStats:
    """One value per ROI, in the order the :class:`RoiSet` was given them (rectangles, then masks)."""

    sum: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    count: np.ndarray


class RoiSet:
    """Rectangles and masks on frames of one shape."""

    def __init__(
        self,
        shape: tuple[int, int],
        rectangles: Any = (),
        masks: Any = (),
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        boxes: list[tuple[int, int, int, int]] = []
        offsets: list[int] = []
        pieces: list[np.ndarray] = []
        used = 0
        for r0, r1, c0, c1 in rectangles:
            r0, r1 = max(0, int(r0)), min(self.shape[0], int(r1))
            c0, c1 = max(0, int(c0)), min(self.shape[1], int(c1))
            boxes.append((r0, max(r0, r1), c0, max(c0, c1)))
            offsets.append(-1)
        for mask in masks:
            m = np.asarray(mask, dtype=bool)
            if m.shape != self.shape:
                raise ValueError(f"ROI mask shape {m.shape} differs from frame shape {self.shape}")
            rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
            if rows.size == 0:
                boxes.append((0, 0, 0, 0))
                offsets.append(-1)
                continue
            box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
            crop = np.ascontiguousarray(m[box[0] : box[1], box[2] : box[3]]).ravel()
            boxes.append(box)
            offsets.append(used)
            pieces.append(crop)
            used += crop.size
        self.boxes = np.array(boxes, dtype=np.int64).reshape(-1, 4)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.masks = np.concatenate(pieces) if pieces else np.zeros(1, dtype=bool)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def roi_stats(backend: Backend, frame: Any, rois: RoiSet) -> RoiStats:
    if tuple(frame.shape) != rois.shape:
        raise ValueError(f"frame shape {tuple(frame.shape)} differs from ROI shape {rois.shape}")
    sums, counts, peaks = backend.module.roi_stats(frame, rois.boxes, rois.offsets, rois.masks)
    mean = np.full(len(rois), np.nan)
    np.divide(sums, counts, out=mean, where=counts > 0)
    return RoiStats(sums, mean, peaks, counts)


def preview(
    backend: Backend,
    frame: Any,
    factor: int = 4,
    log: bool = True,
    lo: float | None = None,
    hi: float | None = None,
) -> np.ndarray:
    if factor < 1:
        raise ValueError(f"binning factor must be >= 1, got {factor}")
    binned = backend.module.bin_frame(frame, int(factor))
    finite = binned[np.isfinite(binned)]
    lo = float(finite.min()) if lo is None and finite.size else (0.0 if lo is None else float(lo))
    hi = float(finite.max()) if hi is None and finite.size else (1.0 if hi is None else float(hi))
    return backend.module.to_uint8(binned, lo, hi, log)
