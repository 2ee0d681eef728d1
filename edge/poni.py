"""The PONI file the settings name (``reduction.poni_file``), read once and checked against the frames.

kernels reads the file (``kernels.read_poni_file``) and raises its own ``PoniError`` naming the key in
the file; here that becomes a ConfigError that also names the setting, so a bad file refuses the start
with one line saying which file, which key and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import ConfigError
from kernels import Poni, PoniError, read_poni_file


def load_poni(path: Path, frame_shape: tuple[int, int] | None = None) -> Poni:
    """Read ``path``; refuse (ConfigError) a malformed file or a detector of another shape than the frames."""
    try:
        poni = read_poni_file(path)
        if frame_shape is not None:
            poni.check_shape(frame_shape)
    except PoniError as error:
        raise ConfigError(f"reduction.poni_file = {str(path)!r}: {error}") from None
    return poni


def combined_mask(poni: Poni | None, mask: np.ndarray | None) -> np.ndarray | None:
    """The detector's own mask (pyFAI's module gaps) with ``reduction.mask_file`` added to it."""
    own = None if poni is None else poni.mask()
    if own is None:
        return mask
    return own if mask is None else (own | mask)
