"""The PONI file the settings name (``reduction.poni_file``), read once and checked against the frames.

kernels reads the file (``kernels.read_poni_file``) and raises its own ``PoniError`` naming the key in
the file; here that becomes a ConfigError that also names the setting, so a bad file refuses the start
with one line saying which file, which key and what is wrong.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.errors import ConfigError
from kernels import Geometry, Poni, PoniError, read_poni_bytes

if TYPE_CHECKING:
    from edge.config import Settings


def load_poni(path: Path, frame_shape: tuple[int, int] | None = None) -> Poni:
    """Read ``path``; refuse (ConfigError) a malformed file or a detector of another shape than the frames."""
    return load_poni_hashed(path, frame_shape)[0]


def load_poni_hashed(path: Path, frame_shape: tuple[int, int] | None = None) -> tuple[Poni, str]:
    """`load_poni`, and the sha256 of the bytes the geometry came from (read once: a file replaced
    between two reads gave a run one file's geometry and the other's checksum, an outside probe)."""
    try:
        poni, data = read_poni_bytes(path)
        if frame_shape is not None:
            poni.check_shape(frame_shape)
    except PoniError as error:
        raise ConfigError(f"reduction.poni_file = {str(path)!r}: {error}") from None
    return poni, hashlib.sha256(data).hexdigest()


def settings_geometry(settings: Settings) -> Geometry:
    """The geometry of the settings: ``reduction.poni_file``'s when one is named, else ``geometry.*``.
    The daemon reduces with it and the simulator draws with it, so that one settings file gives both the
    same beam centre (an outside probe: the simulator drew its rings and spots about the default PONI, a
    corner of its 512^2 frames, and serial mode called every frame a hit)."""
    if settings.reduction.poni_file is not None:
        return load_poni(settings.reduction.poni_file).geometry
    return Geometry(**settings.geometry.model_dump())


def combined_mask(poni: Poni | None, mask: np.ndarray | None) -> np.ndarray | None:
    """The detector's own mask (pyFAI's module gaps) with ``reduction.mask_file`` added to it."""
    own = None if poni is None else poni.mask()
    if own is None:
        return mask
    return own if mask is None else (own | mask)
