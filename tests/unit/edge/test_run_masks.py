"""RunMasks: a run's reduction mask is the settings' mask OR the detector's (nonzero = bad), recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edge.run_masks import RunMasks, mask_sha256


def test_detector_mask_or_mask_file_with_the_record(tmp_path: Path) -> None:
    file_mask = np.zeros((4, 5), bool)
    file_mask[0, 0] = True
    path = tmp_path / "mask.npy"
    np.save(path, file_mask)
    detector = np.zeros((4, 5), np.uint32)
    detector[3, 4] = 1 << 3  # any nonzero value is bad, whatever its bit
    detector[0, 0] = 1  # also in the file's mask: counted once in the union
    masks = RunMasks(file_mask, mask_file=path)
    combined, record = masks.combine(detector, {"channel": "threshold_1"})
    assert combined is not None
    assert sorted(zip(*np.nonzero(combined), strict=True)) == [(0, 0), (3, 4)]
    settings, from_detector = record["sources"]
    assert settings["mask_file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert settings["masked_pixels"] == 1 and settings["sha256"] == mask_sha256(file_mask)
    assert from_detector["channel"] == "threshold_1" and from_detector["masked_pixels"] == 2
    assert record["masked_pixels"] == 2 and record["sha256"] == mask_sha256(combined)
    assert record["geometry_source"] == "geometry settings"
    assert masks.settings_mask is not None and not masks.settings_mask[3, 4]  # the settings' is not changed


def test_without_a_settings_mask_the_detector_mask_alone_and_runs_are_kept_apart() -> None:
    masks = RunMasks(poni_file=Path("calib.poni"))
    detector = np.zeros((2, 2), np.uint32)
    detector[1, 0] = 7
    combined, record = masks.combine(detector)
    assert combined is not None and combined.tolist() == [[False, False], [True, False]]
    assert [s["source"] for s in record["sources"]] == ["detector"]
    assert record["geometry_source"] == "reduction.poni_file"
    masks.put("run-a", combined)
    assert masks.take("run-b") is None
    taken = masks.take("run-a")
    assert taken is not None and taken.tolist() == combined.tolist()
    assert masks.take("run-a") is None  # taken once


def test_no_mask_anywhere_records_nothing_masked() -> None:
    combined, record = RunMasks().combine(None)
    assert combined is None and record["sources"] == [] and "masked_pixels" not in record


def test_a_detector_mask_of_another_shape_is_refused() -> None:
    masks = RunMasks(np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="pixel mask"):
        masks.combine(np.zeros((5, 4), np.uint32))
