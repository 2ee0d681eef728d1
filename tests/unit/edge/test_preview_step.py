"""The live preview's step: every pixel of a small detector, at most 512 pixels a side of a large one."""

from __future__ import annotations

import pytest

from edge.frame_format import FrameFormat, preview_step


@pytest.mark.parametrize(
    ("shape", "step", "preview"),
    [
        ((32, 32), 1, (32, 32)),
        ((512, 512), 1, (512, 512)),
        ((514, 1030), 3, (172, 344)),  # a JUNGFRAU module: the long side decides
        ((1024, 1024), 2, (512, 512)),
        ((2167, 2070), 5, (434, 414)),  # an EIGER2 4M
        ((4096, 4096), 8, (512, 512)),
        ((1, 100_000), 196, (1, 511)),  # a strip detector
    ],
)
def test_the_preview_keeps_every_pixel_up_to_512_a_side(
    shape: tuple[int, int], step: int, preview: tuple[int, int]
) -> None:
    assert preview_step(*shape) == step
    assert FrameFormat(*shape, "uint16").preview_shape == preview
    assert max(FrameFormat(*shape, "uint16").preview_shape) <= 512
