"""The reduction's mask for each run: the settings' mask OR the detector's own pixel mask.

The settings give a mask (``reduction.mask_file``, with the PONI detector's own mask when
``reduction.poni_file`` names one); a DECTRIS Stream V2 detector sends its pixel mask in the start
message of every series (nonzero = bad pixel, as the specification says). A run reduced from such a
series uses both: a pixel is excluded when either excludes it. Geometry is not combined: the settings'
(the PONI file, else ``geometry.*``) is the one used; the start message's is recorded only.

The receiving side calls :meth:`RunMasks.combine` when a series starts (its result is recorded with the
run: which masks went in, with checksums) and :meth:`RunMasks.put` once the run has its uid; the
pipeline's reducing thread takes the run's mask with :meth:`RunMasks.take` when it builds the run's
stage. A run with no detector mask takes nothing and is reduced with the settings' mask alone.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (a mask or PONI file as configured)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mask_sha256(mask: np.ndarray) -> str:
    """The sha256 of a boolean mask, row-major, one bit per pixel (``np.packbits``)."""
    return hashlib.sha256(np.packbits(np.ascontiguousarray(mask, dtype=bool))).hexdigest()


class RunMasks:
    """Combines the settings' mask with each run's detector mask; hands the result to the pipeline."""

    def __init__(
        self,
        settings_mask: np.ndarray | None = None,
        mask_file: Path | None = None,
        poni_file: Path | None = None,
    ) -> None:
        self.settings_mask = None if settings_mask is None else np.asarray(settings_mask, dtype=bool)
        self._settings_record: dict[str, Any] | None = None
        if self.settings_mask is not None:
            self._settings_record = {
                "source": "settings",
                "mask_file": None if mask_file is None else str(mask_file),
                "mask_file_sha256": None if mask_file is None else file_sha256(mask_file),
                "poni_file": None if poni_file is None else str(poni_file),
                "masked_pixels": int(np.count_nonzero(self.settings_mask)),
                "sha256": mask_sha256(self.settings_mask),
            }
        self.geometry_source = "reduction.poni_file" if poni_file is not None else "geometry settings"
        self._runs: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def combine(
        self, detector_mask: np.ndarray | None, detector: dict[str, Any] | None = None
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The mask a run with ``detector_mask`` (nonzero = bad) is reduced with, and its record.

        ``detector`` describes where the detector mask came from (channel, the wire checksum); the
        record lists every mask that went in with its checksum and masked pixels, and the result's.
        """
        sources: list[dict[str, Any]] = []
        combined = self.settings_mask
        if self._settings_record is not None:
            sources.append(self._settings_record)
        if detector_mask is not None:
            bad = np.asarray(detector_mask) != 0
            sources.append(
                {
                    "source": "detector",
                    **(detector or {}),
                    "masked_pixels": int(np.count_nonzero(bad)),
                    "sha256": mask_sha256(bad),
                }
            )
            if combined is not None and combined.shape != bad.shape:
                raise ValueError(f"the detector's pixel mask is {bad.shape}, the settings' {combined.shape}")
            combined = bad if combined is None else combined | bad
        record: dict[str, Any] = {
            "rule": "a pixel is excluded when any of these masks excludes it (detector: nonzero = bad)",
            "sources": sources,
            "geometry_source": self.geometry_source,
        }
        if combined is not None:
            record["masked_pixels"] = int(np.count_nonzero(combined))
            record["sha256"] = mask_sha256(combined)
        return combined, record

    def put(self, run_uid: str, mask: np.ndarray) -> None:
        """Keep ``mask`` for run ``run_uid`` until the pipeline builds the run's stage."""
        with self._lock:
            self._runs[run_uid] = mask

    def take(self, run_uid: str) -> np.ndarray | None:
        """The mask kept for ``run_uid`` (forgotten once taken), or None: the settings' mask applies."""
        with self._lock:
            return self._runs.pop(run_uid, None)

    def discard(self, run_uid: str) -> None:
        """Forget a run's mask (the run was refused: no stage will take it)."""
        self.take(run_uid)
