"""The frame format (shape, pixel type, bytes) the settings describe, defined once.

The ring's slot size, the IOC's image size and the runs' metadata all read it from here; for UDP the
detector's module layout decides the shape and the wire format the pixel type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
