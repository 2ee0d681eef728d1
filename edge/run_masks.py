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

A frame can also have pixels of its own to leave out: a UDP frame kept with packets missing has 0 where
they were. The sink keeps that frame's mask (:meth:`RunMasks.put_missing`) and the reducing thread takes
it for that frame (:meth:`RunMasks.take_missing`), so its profile, cake and ROI means leave those pixels
out instead of averaging them in as zero counts. At most ``MAX_MISSING`` frames' masks wait at once;
one more is not kept (counted ``missing_masks_not_kept``; that frame is reduced with its zeros).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_MISSING = 256  # frames whose missing-pixel masks wait for the reducing thread at once


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
        self._missing: dict[tuple[str, int], np.ndarray] = {}
        self.stats: Counter[str] = Counter()
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

    def put_missing(self, run_uid: str, frame: int, missing: np.ndarray) -> None:
        """Keep the pixels frame ``frame`` of the run lacks until the reducing thread takes them."""
        with self._lock:
            if len(self._missing) >= MAX_MISSING:
                self.stats["missing_masks_not_kept"] += 1
                if self.stats["missing_masks_not_kept"] == 1:
                    log.warning(
                        "more than %d incomplete frames wait to be reduced: frame %d is reduced with its"
                        " missing pixels as zeros (counted in missing_masks_not_kept)",
                        MAX_MISSING,
                        frame,
                    )
                return
            self._missing[(run_uid, frame)] = np.asarray(missing, bool)
            self.stats["missing_masks_kept"] += 1

    def take_missing(self, run_uid: str | None, frame: int) -> np.ndarray | None:
        """The pixels frame ``frame`` lacks (forgotten once taken), or None: none kept for it."""
        with self._lock:
            return self._missing.pop((str(run_uid), frame), None)

    def forget_missing(self, run_uid: str) -> None:
        """Drop what a run's frames left behind (frames that never reached a stage: vetoed, refused)."""
        with self._lock:
            for key in [k for k in self._missing if k[0] == run_uid]:
                del self._missing[key]

    def discard(self, run_uid: str) -> None:
        """Forget a run's mask (the run was refused: no stage will take it)."""
        self.take(run_uid)
