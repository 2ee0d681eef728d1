"""The field's own readers open what the appliance writes: an outsider's check, not our code's.

One daemon runs one short run of each reduction mode (raw, powder, serial, tomo; the mode switched
between runs over REST, as a beamline does), fed by the real simulator. Then:

- silx (what ``silx view`` does when a scientist opens a file): every NXdata group is valid, and the
  ``@default`` chain from the file root reaches an NXdata whose signal has the shape of the run;
- fabio (how pyFAI, Dioptas and friends load Eiger-like HDF5): the data files' frames, with their shape,
  type and count, equal to h5py + hdf5plugin reads of the same frames;
- dxchange's Data Exchange layout (tomopy's loaders read these names with h5py): ``/exchange/data``,
  ``data_white``, ``data_dark`` and ``theta`` hold the scan's projections, flats, darks and angles.

The detector is not square, so a reader that swapped the axes would be caught.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fabio
import h5py
import hdf5plugin  # noqa: F401  (filter 32008 for the reference reads)
import httpx
import numpy as np
import pytest
import silx.io
from edgeprocs import EdgeStack, wait_for
from silx.io import nxdata

pytestmark = pytest.mark.timeout(150)

HEIGHT, WIDTH = 48, 64
PIXEL = 75e-6
BINS, CAKE_BINS = 40, 12
TOKEN = "field-readers-token"
TOMO = {"angles": 10, "darks": 2, "flats": 3}


@dataclass(frozen=True)
class ModeRun:
    """One run's files in the store, and how many frames the simulator sent for it."""

    mode: str
    run_uid: str
    sent: int
    directory: Path

    def data_files(self) -> list[Path]:
        """The files of raw frames (NXmx, or NXtomo in tomography): kept frames and kept blanks."""
        return sorted(p for p in self.directory.glob("*.h5") if "_reduced_" not in p.name)

    def reduced_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.run_uid}_reduced_*.nxs"))


#: mode -> (the next run's reduction over REST, the simulator's settings, frames sent)
PLAN: dict[str, tuple[dict[str, Any], list[str], int]] = {
    "raw": ({"mode": "raw"}, [], 5),
    "powder": (
        {"mode": "powder", "cake_bins": CAKE_BINS, "roi": [[10, 30, 20, 40]]},
        [],
        6,
    ),
    "serial": ({"mode": "serial"}, ['sim.mode="spots"', "sim.hit_fraction=0.5"], 16),
    "tomo": (
        {"mode": "tomo"},
        [
            'sim.mode="tomo"',
            f"sim.tomo_angles={TOMO['angles']}",
            f"sim.tomo_darks={TOMO['darks']}",
            f"sim.tomo_flats={TOMO['flats']}",
        ],
        sum(TOMO.values()),
    ),
}


def _run(stack: EdgeStack, frames: int, sim_settings: list[str]) -> tuple[str, int]:
    run_uid = str(uuid.uuid4())
    extra = [arg for item in sim_settings for arg in ("--set", item)]
    sim = stack.start(
        "sim", "--frames", str(frames), "--run-uid", run_uid, "--json", *extra, stdout=subprocess.PIPE
    )
    out, _ = sim.communicate(timeout=60)
    sent = int(json.loads(out.strip().splitlines()[-1])["frames_sent"])

    def ended() -> bool:
        run = stack.run(run_uid)
        totals = run["totals"]
        accounted = totals["frames_stored"] + totals["frames_vetoed"] + totals["frames_lost"]
        return run["ended_at"] is not None and accounted >= sent  # its files are closed by then

    wait_for(ended, 60, f"run {run_uid} to end with every frame accounted for")
    return run_uid, sent


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModeRun]:
    """One run of every mode through the real daemon and simulator; the files stay in the store."""
    root = tmp_path_factory.mktemp("field-readers")
    stack = EdgeStack(
        root,
        [
            f"detector.height={HEIGHT}",
            f"detector.width={WIDTH}",
            f"geometry.poni1={HEIGHT / 2 * PIXEL}",
            f"geometry.poni2={WIDTH / 2 * PIXEL}",
            f"reduction.bins={BINS}",
            'reduction.mode="raw"',
            'reduction.backend="numpy"',  # the layout does not depend on the backend; no JIT to wait for
            "store.frames_per_file=100",
            "store.file_seconds=600",
            "sim.rate_hz=100",
        ],
    )
    done: dict[str, ModeRun] = {}
    try:
        stack.start_daemon("--set", f'api.token="{TOKEN}"')
        for mode, (reduction, sim_settings, frames) in PLAN.items():
            answer = httpx.put(
                f"{stack.url}/api/reduction",
                json=reduction,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            run_uid, sent = _run(stack, frames, sim_settings)
            assert sent == frames
            done[mode] = ModeRun(mode, run_uid, sent, stack.store / run_uid)
    finally:
        stack.stop_all()
    return done


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _nxdata_groups(h5file: Any) -> dict[str, Any]:
    """Every group of the file whose NX_class is NXdata, by path."""
    found: dict[str, Any] = {}

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Group) and _text(item.attrs.get("NX_class")) == "NXdata":
            found["/" + name] = item

    h5file.visititems(visit)
    return found


def _frames_by_fabio(path: Path) -> tuple[str, int, tuple[int, ...], str, list[np.ndarray]]:
    with fabio.open(str(path)) as image:
        frames = [np.array(frame.data) for frame in image.frames()]
        return type(image).__name__, image.nframes, image.shape, str(image.dtype), frames


@pytest.mark.parametrize("mode", list(PLAN))
def test_silx_calls_every_nxdata_valid_and_its_default_plot_has_the_runs_shape(
    runs: dict[str, ModeRun], mode: str
) -> None:
    run = runs[mode]
    # what silx view plots when the file is opened: the NXdata that @default leads to, by its signal shape
    defaults: dict[str, tuple[str, tuple[int, ...]] | None] = {}
    for path in run.data_files() + run.reduced_files():
        with silx.io.open(str(path)) as h5file:
            groups = _nxdata_groups(h5file)
            for name, group in groups.items():
                assert nxdata.is_valid_nxdata(group), (path.name, name, nxdata.NXdata(group).issues)
                parsed = nxdata.NXdata(group)
                # each axis silx puts on a dimension of the signal is as long as that dimension (or is
                # its bin edges, one longer)
                for dim, axis in enumerate(parsed.axes):
                    if axis is not None:
                        assert len(axis) in (parsed.signal.shape[dim], parsed.signal.shape[dim] + 1), (
                            path.name,
                            name,
                            parsed.axes_dataset_names,
                            parsed.signal.shape,
                        )
            default = nxdata.get_default(h5file)
            if groups:  # a file with something to plot says which
                assert default is not None, (path.name, sorted(groups), dict(h5file.attrs))
            defaults[path.name] = (
                None
                if default is None
                else (default.group.name, tuple(default.signal.shape), default.interpretation)
            )
            if mode == "powder":
                profile = nxdata.NXdata(h5file["/entry/reduced"])
                assert profile.axes_dataset_names == [None, "radial_axis"]
                assert profile.interpretation == "spectrum"
                # data files keep the cake beside the profiles; a reduced file holds it in an NXazint2d
                # entry of its own
                cake_path = "/entry_2d/reduced" if "_reduced_" in path.name else "/entry/reduced_2d"
                cake = nxdata.NXdata(h5file[cake_path])
                assert cake.axes_dataset_names == [None, "azimuthal_axis", "radial_axis"]
                assert cake.signal.shape == (run.sent, CAKE_BINS, BINS)
                assert cake.interpretation == "image"  # NXazint2d's attributes
                assert cake.signal.attrs["long_name"] == "intensity"
                assert cake.signal.attrs["units"] == "arbitrary units"
                assert h5file[cake_path + "/azimuthal_axis"].attrs["long_name"] == "azimuthal bin center"
    uid = run.run_uid
    stored = {name: plot for name, plot in defaults.items() if "_reduced_" not in name}
    # every data file's default plot is its stack of frames, and together they hold every frame sent
    assert all(d is not None and d[0] == "/entry/data" for d in stored.values()), defaults
    assert all(d is not None and d[1][1:] == (HEIGHT, WIDTH) for d in stored.values()), defaults
    assert all(d is not None and d[2] == "image" for d in stored.values()), defaults  # a stack of images
    assert sum(d[1][0] for d in stored.values() if d is not None) == run.sent, defaults
    if mode == "serial":  # hits and kept blanks in files of their own
        assert sorted(stored) == [f"{uid}_00000.h5", f"{uid}_blank_00000.h5"], defaults
    else:
        assert sorted(stored) == [f"{uid}_00000.h5"], defaults
    reduced = {name: plot for name, plot in defaults.items() if "_reduced_" in name}
    expected_reduced = {
        "raw": ("/entry/disposition_per_frame", (run.sent,)),  # a frame table only: each frame's fate
        "serial": ("/entry/peaks_per_frame", (run.sent,)),  # peaks found in each frame, hits and blanks
        "powder": ("/entry/reduced", (run.sent, BINS)),  # the profiles, one per frame
        "tomo": ("/entry/reconstruction", (1, WIDTH, WIDTH)),  # the slice of the centre row
    }[mode]
    assert {name: plot and plot[:2] for name, plot in reduced.items()} == {
        f"{uid}_reduced_00000.nxs": expected_reduced
    }


@pytest.mark.parametrize("mode", list(PLAN))
def test_fabio_reads_the_frames_h5py_reads(runs: dict[str, ModeRun], mode: str) -> None:
    run = runs[mode]
    total = 0
    for path in run.data_files():
        kind, nframes, shape, dtype, frames = _frames_by_fabio(path)
        assert kind == "EigerImage", (path.name, kind)
        assert shape == (HEIGHT, WIDTH) and dtype == "uint16", (path.name, shape, dtype)
        with h5py.File(path, "r") as handle:
            reference = handle["/entry/data/data"][:]
            detector = handle["/entry/instrument/detector"]  # the simulator's sensor, from its header
            sensor = [detector[k][()] for k in ("sensor_material", "sensor_thickness") if k in detector]
        assert sensor == ([] if mode == "tomo" else [b"Si", 450e-6]), (path.name, sensor)  # NXmx: DIALS
        assert nframes == len(reference) > 0, path.name
        for index, frame in enumerate(frames):
            assert frame.shape == (HEIGHT, WIDTH) and frame.dtype == np.uint16
            np.testing.assert_array_equal(frame, reference[index])  # integers: bit for bit
        total += nframes
    assert total == run.sent


def test_tomo_data_exchange_names_hold_the_scan_as_dxchange_reads_it(runs: dict[str, ModeRun]) -> None:
    run = runs["tomo"]
    (path,) = run.data_files()
    with h5py.File(path, "r") as handle:
        exchange = handle["/exchange"]
        data, white, dark = exchange["data"][:], exchange["data_white"][:], exchange["data_dark"][:]
        theta = exchange["theta"][:]
        theta_units = _text(exchange["theta"].attrs.get("units"))
        keys = handle["/entry/instrument/detector/image_key"][:]  # NXtomo: 0 projection, 1 flat, 2 dark
    assert data.shape == (TOMO["angles"], HEIGHT, WIDTH)
    assert white.shape == (TOMO["flats"], HEIGHT, WIDTH)
    assert dark.shape == (TOMO["darks"], HEIGHT, WIDTH)
    # dxchange reads theta in degrees (its APS readers convert with deg2rad): one per projection, a scan
    # over 180 degrees
    assert theta.shape == (TOMO["angles"],) and theta_units == "deg"
    assert np.all(np.diff(theta) > 0) and theta[0] >= 0 and theta[-1] < 180
    # the names are views of the stored frames, in the order fabio sees them
    _, _, _, _, frames = _frames_by_fabio(path)
    stack = np.stack(frames)
    np.testing.assert_array_equal(data, stack[keys == 0])
    np.testing.assert_array_equal(white, stack[keys == 1])
    np.testing.assert_array_equal(dark, stack[keys == 2])
    # the slices' grid in metres from the reduced file alone (forwarded without the data files under
    # upstream.forward=reduced): the detector's pixel pitch beside them, as the data files give it
    with h5py.File(path, "r") as handle:
        pitch = [handle[f"/entry/instrument/detector/{k}_pixel_size"][()] for k in "xy"]
    (reduced,) = run.directory.glob("*_reduced_*.nxs")
    with h5py.File(reduced, "r") as handle:
        group = handle["/entry/reconstruction"]
        assert [group[f"{k}_pixel_size"][()] for k in "xy"] == pitch == [PIXEL, PIXEL]
        assert [_text(group[f"{k}_pixel_size"].attrs.get("units")) for k in "xy"] == ["m", "m"]
