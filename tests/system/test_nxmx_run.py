"""A run through the real daemon writes NXmx that nexusformat's validator accepts, with what the
detector's series header said (count_time, frame_time, sensor) and the PONI's geometry and mask."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from edgeprocs import in_process_appliance, wait_for

from edge.nxmx import pyfai_from_nxmx
from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start

pytest.importorskip("pyFAI")
from pyFAI.detectors import Detector
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

SHAPE = (40, 48)


def test_daemon_run_writes_valid_nxmx(tmp_path: Path) -> None:
    from nexusformat.nexus.validate import logger, validate_application

    detector = Detector(pixel1=75e-6, pixel2=75e-6, max_shape=SHAPE, orientation=2)
    ai = AzimuthalIntegrator(
        dist=0.08,
        poni1=0.0011,
        poni2=0.0017,
        rot1=0.03,
        rot2=-0.02,
        rot3=0.05,
        wavelength=1e-10,
        detector=detector,
    )
    ai.write(str(tmp_path / "calib.poni"))
    mask = np.zeros(SHAPE, dtype=bool)
    mask[5, :] = True
    np.save(tmp_path / "mask.npy", mask)
    calibration = (
        f'reduction.poni_file="{tmp_path / "calib.poni"}"',
        f'reduction.mask_file="{tmp_path / "mask.npy"}"',
    )
    with in_process_appliance(tmp_path, SHAPE, *calibration) as (_appliance, push, _settings):
        header = {
            "count_time": 0.0095,
            "frame_time": 0.01,
            "sensor_material": "CdTe",
            "sensor_thickness": 1e-3,
        }
        push.send_multipart(
            encode_series_start(1, SHAPE, "uint16", run_uid="nx-run", frames_expected=3, **header)
        )
        for frame in range(3):
            data = np.full(SHAPE, frame + 1, np.uint16).tobytes()
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", data))
        push.send_multipart(encode_series_end(1))
        path = tmp_path / "store" / "nx-run" / "nx-run_00000.h5"
        wait_for(path.exists, 30, "the run's file")
    logger.setLevel(logging.WARNING)
    _, errors = validate_application(str(path), application="NXmx")
    assert errors == 0
    with h5py.File(path) as f:
        det = f["entry/instrument/detector"]
        assert det["count_time"][()] == 0.0095 and det["frame_time"][()] == 0.01
        assert det["sensor_material"][()] == b"CdTe" and det["sensor_thickness"][()] == 1e-3
        np.testing.assert_array_equal(det["pixel_mask"][()] != 0, mask)
        rebuilt = pyfai_from_nxmx(f)
        assert f["entry/data/data"].shape == (3, *SHAPE)
    for key in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength"):
        assert abs(rebuilt[key] - getattr(ai, key)) <= 1e-6, key
    assert rebuilt["orientation"] == 2
