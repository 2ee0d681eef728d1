"""A named detector's invalid pixels (pyFAI's "dummy" value) stay out of the daemon's products.

A DECTRIS detector writes all ones into a pixel it cannot measure (pyFAI: ``DUMMY = -2``,
``DELTA_DUMMY = 1.5``, cast into the frame's type: 65533-65535 in uint16). pyFAI leaves those pixels out
of every integration of a frame from a detector that declares a dummy; the appliance, given the same
``.poni`` file, must store the profile pyFAI computes from the stored frame (an outside probe found up
to 6.5% low bins). Through the real appliance in this process, frames from a ZeroMQ PUSH peer, the
profile read back from the file with h5py and compared with pyFAI's on the frame read back beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (reads the stored frame back)
import numpy as np
import pytest
from edgeprocs import in_process_appliance, wait_for

from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start

pyFAI = pytest.importorskip("pyFAI")
from pyFAI.detectors import detector_factory  # noqa: E402
from pyFAI.integrator.azimuthal import AzimuthalIntegrator  # noqa: E402

NAME = "Pilatus100k"
BINS = 40


def test_a_pilatus_frame_s_dead_pixels_are_left_out_of_its_profile_as_pyfai_does(tmp_path: Path) -> None:
    detector = detector_factory(NAME)
    shape = tuple(detector.max_shape)
    ai = AzimuthalIntegrator(
        dist=0.1, poni1=0.015, poni2=0.04, rot1=0.01, wavelength=1e-10, detector=detector
    )
    poni = tmp_path / "pilatus.poni"
    ai.write(str(poni))
    rng = np.random.default_rng(11)
    frames = []
    for k in range(3):
        frame = rng.poisson(200, shape).astype(np.uint16)
        dead = rng.choice(frame.size, frame.size // 40, replace=False)
        frame.ravel()[dead] = np.uint16(65535 - k)  # all ones and the two below: invalid, as pyFAI reads it
        frames.append(frame)
    overrides = (f'reduction.poni_file="{poni}"', 'reduction.mode="powder"', f"reduction.bins={BINS}")
    with in_process_appliance(tmp_path, shape, *overrides) as (appliance, push, _settings):
        push.send_multipart(encode_series_start(1, shape, "uint16", run_uid="dead", frames_expected=3))
        for number, frame in enumerate(frames):
            push.send_multipart(encode_image(1, number, shape, "uint16", frame.tobytes()))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.view.run("dead").get("exit_status"), 30, "the run's end")
        counters = dict(appliance.pipeline.stats)
    assert counters["frames_with_dummy_pixels"] == 3
    assert counters["dummy_pixels_left_out"] == sum(int((f >= 65533).sum()) for f in frames)
    (path,) = sorted((tmp_path / "store" / "dead").glob("dead_0*.h5"))
    with h5py.File(path, "r") as f:
        stored = f["/entry/data/data"][:]
        profiles = f["/entry/reduced/I"][:]
        record = json.loads(f["/entry/reduction/settings_json"][()])
    np.testing.assert_array_equal(stored, np.stack(frames))  # the frames themselves are stored unchanged
    for frame, profile in zip(stored, profiles, strict=True):
        # pyFAI with its defaults takes the detector's mask and dummy; no solid angle, as edge's default.
        # pyFAI sums in its own order (float32 in places): 1e-6 relative, far below Poisson noise
        ref = ai.integrate1d(
            frame, BINS, unit="2th_deg", method=("no", "histogram", "cython"), correctSolidAngle=False
        )
        np.testing.assert_allclose(profile, ref.intensity, rtol=1e-6)
    assert (record["dummy"], record["delta_dummy"]) == (65534.0, 1.5)  # the file says what it left out
