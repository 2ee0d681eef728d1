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


def _settings(tmp_path: Path, poni: Path, mask: Path | None = None):  # type: ignore[no-untyped-def]
    from edge.config import load_settings

    overrides = [
        f'store.path="{tmp_path / "store"}"',
        "detector.height=407",
        "detector.width=487",
        "ring.slots=2",
        'reduction.backend="numpy"',
        f'reduction.poni_file="{poni}"',
        'upstream.endpoint="tcp://127.0.0.1:0"',
    ]
    if mask is not None:
        overrides.append(f'reduction.mask_file="{mask}"')
    return load_settings(overrides=overrides)


def test_the_daemon_refuses_a_malformed_poni_before_anything_runs(tmp_path: Path) -> None:
    from edge.appliance import Appliance

    path = _poni(tmp_path)
    path.write_text(path.read_text().replace('"orientation": 3', '"orientation": 7'))
    with pytest.raises(ConfigError, match=r"reduction\.poni_file = .*: Detector_config: orientation = 7"):
        Appliance(_settings(tmp_path, path))
    assert not (tmp_path / "store").exists()  # refused before the store, ledger or ring were made


def test_the_daemon_uses_the_poni_detector_and_its_mask(tmp_path: Path) -> None:
    from edge.appliance import Appliance

    user = np.zeros((407, 487), dtype=bool)
    user[:3, :3] = True
    np.save(tmp_path / "mask.npy", user)
    ai = AzimuthalIntegrator(
        dist=0.1,
        poni1=0.03,
        poni2=0.04,
        rot1=0.02,
        wavelength=1e-10,
        detector=detector_factory("Pilatus200k", {"orientation": 2}),
    )
    ai.write(str(tmp_path / "calib.poni"))
    appliance = Appliance(_settings(tmp_path, tmp_path / "calib.poni", tmp_path / "mask.npy"))
    try:
        assert appliance.geometry.orientation == 2 and appliance.geometry.pixel1 == 172e-6
        own = detector_factory("Pilatus200k").mask.astype(bool)
        np.testing.assert_array_equal(appliance.pipeline.calibration.mask, own | user)
    finally:
        appliance.stop()


@pytest.mark.parametrize("mode", ["powder", "serial"])
def test_a_series_of_another_shape_than_the_calibration_names_the_calibration_and_files_keep_its_shape(
    tmp_path: Path, mode: str
) -> None:
    """An outside probe: a series of frames of another shape than the PONI's detector made the powder
    mode refuse naming the mask ("mask image is (512, 512)"), when the calibration is what disagrees, and
    the run's raw file relabelled the calibration with the frames' shape (a ``max_shape`` pyFAI never
    saved). The refusal names the calibration; the file keeps its shape and says it did not apply."""
    import h5py

    from edge.config import ReductionSettings
    from edge.modes import RunContext, make_stage
    from edge.modes._stage import Corrections
    from edge.nxmx import write_pyfai_poni
    from kernels import Geometry, get_backend

    calibration = Corrections(
        mask=np.zeros((32, 32), bool), files={"poni": ("/cal/a.poni", "0" * 64)}, poni_shape=(32, 32)
    )
    ctx = RunContext(
        get_backend("numpy"), Geometry(), (16, 24), 10, "2th_deg", ReductionSettings(mode=mode), calibration
    )
    with pytest.raises(ValueError, match=r"the calibration /cal/a.poni is for a detector of \(32, 32\)"):
        make_stage(ctx)
    with h5py.File(tmp_path / "raw.h5", "w") as handle:
        write_pyfai_poni(handle.create_group("detector"), Geometry(), (32, 32), frames=(16, 24))
        poni = handle["detector/pyfai_poni"]
        assert poni["max_shape"][()].tolist() == [32, 32]
        assert '"max_shape": [32, 32]' in poni["poni_file"][()].decode()
        assert "these frames are (16, 24)" in poni.attrs["note"]


def test_a_poni_file_replaced_while_the_daemon_starts_gives_the_geometry_of_the_checksum_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: the .poni replaced (by rename) while the daemon started; it read the file twice,
    hashing the first and reducing with the second: a run's record named a calibration it did not use.
    The geometry and its sha256 come from one read."""
    import hashlib

    import edge.appliance as appliance_module
    from edge.appliance import Appliance
    from kernels import Geometry, poni_text

    first = tmp_path / "calib.poni"
    first.write_text(poni_text(Geometry(dist=0.05), (407, 487)))
    said = hashlib.sha256(first.read_bytes()).hexdigest()
    other = poni_text(Geometry(dist=0.08), (407, 487))
    real = appliance_module.load_calibration

    def replaced_after_loading(*args: object, **kwargs: object) -> object:
        loaded = real(*args, **kwargs)  # type: ignore[arg-type]
        first.write_text(other)  # pyFAI-calib2 saved a new calibration right then
        return loaded

    monkeypatch.setattr(appliance_module, "load_calibration", replaced_after_loading)
    appliance = Appliance(_settings(tmp_path, first))
    try:
        assert appliance.geometry.dist == 0.05
        assert appliance.pipeline.calibration.files["poni"] == (str(first), said)
    finally:
        appliance.stop()


def test_calibration_files_changed_into_ones_the_next_start_refuses_raise_an_alarm(tmp_path: Path) -> None:
    """An outside probe: a mask replaced by one of the wrong shape (and a .poni with an absurd distance)
    while the daemon ran: nothing said so until, after a kill -9 mid-series, every restart refused to
    start and the rest of the series was lost. The daemon checks them when they change, and says so."""
    from edge.alarms import current_alarms
    from edge.appliance import CalibrationWatch
    from edge.frame_format import frame_format

    mask = tmp_path / "mask.npy"
    np.save(mask, np.zeros((407, 487), dtype=bool))
    settings = _settings(tmp_path, _poni(tmp_path), mask)
    watch = CalibrationWatch(settings, frame_format(settings))
    assert watch.problem() is None
    np.save(mask, np.zeros((64, 128), dtype=bool))
    problem = watch.problem()
    assert problem is not None and "image is (64, 128), frames are (407, 487)" in problem, problem
    alarms = current_alarms({"appliance": {"calibration_refused_at_next_start": problem}})
    (alarm,) = [a for a in alarms if a["id"] == "condition:calibration"]
    assert alarm["severity"] == "major" and "would refuse the next start" in alarm["message"]
    np.save(mask, np.zeros((407, 487), dtype=bool))  # restored
    assert watch.problem() is None
