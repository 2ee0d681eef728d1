"""``reduction.poni_file``: a bad file refuses the start naming the setting and the key; masks combine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.poni import combined_mask, load_poni

pytest.importorskip("pyFAI")
from pyFAI.detectors import detector_factory
from pyFAI.integrator.azimuthal import AzimuthalIntegrator


def _poni(tmp_path: Path, name: str = "Pilatus200k") -> Path:
    ai = AzimuthalIntegrator(
        dist=0.1, poni1=0.03, poni2=0.04, wavelength=1e-10, detector=detector_factory(name)
    )
    path = tmp_path / "calib.poni"
    ai.write(str(path))
    return path


def test_malformed_poni_refuses_naming_setting_and_key(tmp_path: Path) -> None:
    path = _poni(tmp_path)
    path.write_text(path.read_text().replace("Poni2: 0.04", "Poni2: 4 cm"))
    with pytest.raises(
        ConfigError, match=r"reduction\.poni_file = .*calib\.poni'?: Poni2: '4 cm' is not a number"
    ):
        load_poni(path, (407, 487))


def test_detector_of_another_shape_refuses(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"reduction\.poni_file.*Detector: Pilatus200k is \(407, 487\)"):
        load_poni(_poni(tmp_path), (1024, 1024))


def test_detector_mask_and_mask_file_combine(tmp_path: Path) -> None:
    poni = load_poni(_poni(tmp_path), (407, 487))
    own = detector_factory("Pilatus200k").mask.astype(bool)
    user = np.zeros((407, 487), dtype=bool)
    user[0, 0] = True
    np.testing.assert_array_equal(combined_mask(poni, user), own | user)
    np.testing.assert_array_equal(combined_mask(poni, None), own)
    assert combined_mask(None, user) is user
    generic = load_poni(_poni(tmp_path, "Perkin"))
    assert combined_mask(generic, None) is None
