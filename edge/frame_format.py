"""The frame format (shape, pixel type, bytes) the settings describe, defined once.

The ring's slot size, the IOC's image size and the runs' metadata all read it from here; for UDP the
detector's module layout decides the shape and the wire format the pixel type.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.config import Settings
from firmware_bridge.udp_codec import DetectorGeometry


@dataclass(frozen=True)
class FrameFormat:
    """One detector frame: ``height x width`` pixels of ``dtype`` (a NumPy dtype name)."""

    height: int
    width: int
    dtype: str

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def itemsize(self) -> int:
        return int(np.dtype(self.dtype).itemsize)

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.itemsize

    @property
    def preview_shape(self) -> tuple[int, int]:
        """The live preview's shape: every ``preview_step(...)``-th pixel of the frame."""
        step = preview_step(self.height, self.width)
        return (math.ceil(self.height / step), math.ceil(self.width / step))


#: the live preview's longest side at most (the dashboard's image, EDGE:Image1, EDGE:Pva1:Image)
PREVIEW_LONG_SIDE = 512


def preview_step(height: int, width: int) -> int:
    """Take every n-th pixel for the live preview: 1 up to 512 pixels a side (nothing hidden on a small
    detector), 2 up to 1024, ..., 8 for 4096; the preview costs about one 512^2 copy per frame shown."""
    return max(1, math.ceil(max(height, width) / PREVIEW_LONG_SIDE))


def preview_image(frame: np.ndarray) -> dict[str, Any]:
    """A subsampled frame as the dashboard draws it: log1p(counts) scaled to 8 bits, 255 at the 99.5th
    percentile (``counts_top``) and above; ``pixels_b64`` row-major, one byte a pixel, base64. Negative
    counts (signed or float pixels: pedestal-subtracted, say) show as 0, NaN and inf as 0 and 255:
    ``counts_top`` stays a finite number for any pixel type."""
    counts = np.nan_to_num(frame.astype(np.float32), nan=0.0, posinf=np.finfo(np.float32).max)
    logged = np.log1p(np.maximum(counts, 0.0))
    top = float(np.percentile(logged, 99.5))
    top = top if np.isfinite(top) and top > 0 else 1.0
    image = np.clip(logged * (255.0 / top), 0, 255).astype(np.uint8)
    return {
        "scale": "log1p",
        "counts_top": round(float(np.expm1(top)), 1),
        "height": image.shape[0],
        "width": image.shape[1],
        "pixels_b64": base64.b64encode(image.tobytes()).decode("ascii"),
    }


def udp_geometry(settings: Settings) -> DetectorGeometry:
    """The UDP detector layout the settings describe."""
    udp = settings.udp
    return DetectorGeometry(
        module_rows=udp.module_rows,
        module_cols=udp.module_cols,
        grid_rows=udp.grid_rows,
        grid_cols=udp.grid_cols,
        gap_pixels=udp.gap_pixels,
        payload_bytes=udp.payload_bytes,
    )


def frame_format(settings: Settings) -> FrameFormat:
    """The format of the frames the configured source delivers."""
    if settings.stream.transport == "udp":
        geometry = udp_geometry(settings)
        height, width = geometry.frame_shape
        return FrameFormat(int(height), int(width), geometry.wire_dtype.name)
    det = settings.detector
    return FrameFormat(int(det.height), int(det.width), np.dtype(det.dtype).name)
