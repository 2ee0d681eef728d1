"""A tomography scan resumed after a daemon restart: the resumed run takes the darks, flats and projections
that the run it continues stored (``RunRecorder.earlier_parts`` finds them, ``TomoStage`` reads them), and
a file of that part it cannot use is named, never a crash."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from edge.config import ReductionSettings
from edge.ledger import Ledger
from edge.modes import EarlierParts, RunContext, make_stage
from edge.modes._tomo import _EarlierScan
from edge.recorder import RunRecorder
from edge.store import RunFileWriter, RunMetadata
from kernels import Geometry, compress_chunk, get_backend

SHAPE = (16, 24)
GEOMETRY = Geometry(dist=0.1, poni1=0.0006, poni2=0.0009, wavelength=1e-10)
ANGLES = np.linspace(0.0, 180.0, 12, endpoint=False)


def _frame(key: int, k: int) -> np.ndarray:
    """A dark (20), a flat (1000) or projection ``k`` (at ``ANGLES[k]``), varying along its columns."""
    if key == 2:
        return np.full(SHAPE, 20, np.uint16)
    if key == 1:
        return np.full(SHAPE, 1000, np.uint16)
    columns = np.arange(SHAPE[1])
    line = 1000 - 300 * np.exp(-(((columns - 8 - 4 * np.sin(np.radians(ANGLES[k]))) / 3.0) ** 2))
    return np.broadcast_to(line, SHAPE).astype(np.uint16)


def _params() -> ReductionSettings:
    return ReductionSettings(mode="tomo", tomo={"slices": [5], "center": 11.5})  # type: ignore[arg-type]


def _write(directory: Path, name: str, frames: list[tuple[int, int, float]]) -> Path:
    """A data file as the pipeline writes it: frames (number, key, angle) with their NXtomo products;
    projection ``k`` is frame ``4 + k``."""
    stage = make_stage(RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", _params()))
    meta = RunMetadata(GEOMETRY, "sim", 2, "2026-12-03T00:00:00+00:00", {"frame_time": 0.01})
    writer = RunFileWriter(directory, name, f"{name}_00000.h5", 0, SHAPE, "uint16", len(frames), stage, meta)
    for number, key, angle in frames:
        pixels = _frame(key, number - 4)
        writer.write(number, compress_chunk(pixels), stage.process(pixels, number, key, angle).products)
    return writer.close().path


def test_a_resumed_scan_is_normalised_and_reconstructed_with_the_part_stored_before(tmp_path: Path) -> None:
    nan = float("nan")
    earlier = [(0, 2, nan), (1, 2, nan), (2, 1, nan), (3, 1, nan)] + [(4 + k, 0, ANGLES[k]) for k in range(5)]
    earlier.append((9, 0, nan))  # a projection without an angle: stored with NaN, never back-projected
    first = _write(tmp_path, "first", earlier)
    with h5py.File(first, "r") as handle:  # darks, flats and the projection sent without one keep NaN
        stored = handle["/entry/sample/rotation_angle"][:]
    assert np.isnan(stored[:4]).all() and np.isnan(stored[-1])
    broken = tmp_path / "broken_00001.h5"
    broken.write_bytes(b"not an HDF5 file")
    other = tmp_path / "other_00000.h5"
    with h5py.File(other, "w") as handle:  # a file of frames of another shape: skipped, named
        handle["/entry/data/data"] = np.zeros((1, 4, 4), np.uint16)
    parts = EarlierParts(("first",), (first, broken, other), missing=1)
    ctx = RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", _params(), earlier=parts)
    stage = make_stage(ctx)
    stage.earlier._thread.join(10)  # type: ignore[attr-defined]  # (it reads while the run goes on)
    for k in range(5, len(ANGLES)):  # the rest of the scan, in the resumed run
        stage.process(_frame(0, k), 4 + k, 0, float(ANGLES[k]))
    # two earlier projections went with each of the run's: all of them are in the live slice already
    assert stage.reconstructor.n_seen == len(ANGLES)  # type: ignore[attr-defined]
    live = stage.live()
    assert live is not None and (live["darks"], live["projections"]) == (0, len(ANGLES) - 5)
    assert live["inherited"] == {
        "runs": ["first"],
        "darks": 2,
        "flats": 2,
        "projections": 5,
        "files_unusable": 2,
    }
    assert live["slice"]["projections"] == live["slice"]["projections_in_slice"] == len(ANGLES)
    products = stage.finish()
    # the live slice after the run's end (an outside dashboard probe: the inherited ones counted twice)
    after = stage.live()
    assert after is not None and after["slice"]["projections"] == after["slice"]["projections_in_slice"]
    assert after["slice"]["projections"] == len(ANGLES)

    assert (products["darks_inherited"], products["flats_inherited"]) == (2, 2)
    assert (products["darks"], products["flats"]) == (0, 0)  # this run's own
    assert products["projections_inherited"] == 5 and products["projections"] == len(ANGLES) - 5
    assert products["projections_inherited_without_angle"] == 1
    assert products["inherited_from_runs"] == "first" and products["inherited_files_not_local"] == 1
    unusable = products["inherited_files_unusable"]
    assert "broken_00001.h5" in unusable and "other_00000.h5" in unusable and "first" not in unusable
    assert products["flat_field"] == (
        "applied: (projection - mean dark) / (mean flat - mean dark) (with the 2 darks and 2 flats stored in"
        " run first)"
    )
    np.testing.assert_array_equal(products["rotation_angle"], ANGLES)  # in the scan's order
    sinogram = np.stack([-np.log((_frame(0, k)[5] - 20.0) / 980.0) for k in range(len(ANGLES))])
    reference = get_backend("numpy").fbp(sinogram.astype(np.float32), ANGLES, center=11.5)
    assert np.max(np.abs(products["slices"][0] - reference)) <= 1e-4 * np.max(np.abs(reference))


def test_the_recorder_finds_the_chain_of_runs_a_resumed_run_continues(tmp_path: Path) -> None:
    """raw <- a <- b <- c, each resuming the one before after a restart; a and b were tomography runs."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20)
    raw = recorder.open_run("raw", 1, None, {}, "raw")
    a = recorder.open_run("a", 1, None, {"resumed_after_restart": True, "resumes_run": raw}, "tomo")
    b = recorder.open_run("b", 1, None, {"resumed_after_restart": True, "resumes_run": a}, "tomo")
    recorder.open_run("c", 1, None, {"resumed_after_restart": True, "resumes_run": b}, "tomo")
    paths = {}
    for run, name, first in ((a, "a_00001", 10), (a, "a_00000", 0), (b, "b_00000", 20), (b, "b_00001", 30)):
        path = tmp_path / "store" / run / f"{name}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
        paths[name] = path
        recorder.register_file(run, path, (first, first + 9, 10))
    reduced = tmp_path / "store" / a / "a_reduced.nxs"
    reduced.write_bytes(b"y")
    recorder.register_file(a, reduced, (-1, -1, 0), "reduced")
    paths["b_00001"].unlink()  # gone from the disk
    runs, files, missing = recorder.earlier_parts(b, "tomo")  # as far back as the runs were tomo
    assert runs == ["a", "b"]
    assert files == [paths["a_00000"], paths["a_00001"], paths["b_00000"]]  # data only, in frame order
    assert missing == 1
    assert recorder.earlier_parts(a, "tomo") == (["a"], [paths["a_00000"], paths["a_00001"]], 0)
    assert recorder.earlier_parts(b)[0] == ["raw", "a", "b"]  # any mode
    assert recorder.earlier_parts(b, "serial") == ([], [], 0)
    assert json.loads(ledger.run("c")["config"])["resumes_run"] == "b"
    ledger.close()


def test_a_part_that_takes_too_long_to_read_is_left_out_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's end waits for the reading thread at most READ_SECONDS (a file on a hung disk must not
    hold the run's products for ever): what was not read by then is left out, and the product says so."""
    nan = float("nan")
    first = _write(tmp_path, "first", [(0, 2, nan), (1, 1, nan)] + [(4 + k, 0, ANGLES[k]) for k in range(3)])
    release = threading.Event()
    read = _EarlierScan._read

    def slow(self: _EarlierScan, planned: Any) -> None:
        release.wait(10)
        read(self, planned)

    monkeypatch.setattr(_EarlierScan, "_read", slow)
    monkeypatch.setattr(_EarlierScan, "READ_SECONDS", 0.2)
    parts = EarlierParts(("first",), (first,))
    stage = make_stage(
        RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", _params(), earlier=parts)
    )
    for k in range(3, len(ANGLES)):
        stage.process(_frame(0, k), 4 + k, 0, float(ANGLES[k]))
    products = stage.finish()
    release.set()  # the thread reads now, and publishes nothing: the run's end no longer waits for it
    assert products["projections_inherited"] == 0 and products["darks_inherited"] == 1
    assert "still reading after 0.2 s" in products["inherited_files_unusable"]
    assert products["rotation_angle"].tolist() == ANGLES[3:].tolist()
    stage.earlier._thread.join(10)  # type: ignore[attr-defined]
    assert stage.earlier.angles == []  # type: ignore[attr-defined]


def _flat_field_after_projections_only(tmp_path: Path, with_a_flat: bool) -> str:
    """``flat_field`` of a run resuming a scan whose earlier run ("first") stored projections only, the run
    itself taking a flat (``with_a_flat``) or none, then the rest of the projections."""
    first = _write(tmp_path, "first", [(4 + k, 0, ANGLES[k]) for k in range(2)])  # projections only
    ctx = RunContext(
        get_backend("numpy"),
        GEOMETRY,
        SHAPE,
        16,
        "2th_deg",
        _params(),
        earlier=EarlierParts(("first",), (first,)),
    )
    stage = make_stage(ctx)
    stage.earlier._thread.join(10)  # type: ignore[attr-defined]
    if with_a_flat:
        stage.process(_frame(1, 0), 0, 1, float("nan"))
    for k in range(2, len(ANGLES)):
        stage.process(_frame(0, k), 4 + k, 0, float(ANGLES[k]))
    return str(stage.finish()["flat_field"])


def test_a_resumed_scan_whose_earlier_part_stored_no_darks_or_flats_credits_it_with_none(
    tmp_path: Path,
) -> None:
    """An outside chaos probe: a run killed during its darks stored none of them (they were in its
    quarantined file, recorded lost); the resumed run's 9 flats were its own, yet ``flat_field`` said
    "with those stored in run ...", sending a user to look for darks and flats that do not exist."""
    text = _flat_field_after_projections_only(tmp_path, with_a_flat=True)
    assert text.startswith("applied without darks: projection / mean flat") and "stored in run" not in text


def test_a_resumed_scan_with_no_dark_or_flat_at_all_names_the_runs_it_began_in(tmp_path: Path) -> None:
    """An outside probe: a scan whose darks and flats were lost with a crash (its first file quarantined)
    said "not applied: no darks and flats before the first projection" in the run resuming it, as if the
    scan had none; it names the runs the scan began in, whose loss records hold them."""
    text = _flat_field_after_projections_only(tmp_path, with_a_flat=False)
    assert text.startswith("not applied: no darks and flats"), text
    assert "none in the runs the scan began in, first" in text and "daemon_crash" in text


def test_the_darks_and_flats_are_credited_to_the_run_that_stored_them(tmp_path: Path) -> None:
    """An outside probe: a scan cut by two crashes (run A stored the darks, flats and projections, run B
    projections only); the third run's ``flat_field`` said the darks and flats were "stored in run A,
    B". Each run's files are in the store's directory named by its uid: only A is named."""
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    nan = float("nan")
    first = _write(
        tmp_path / "A", "A", [(0, 2, nan), (1, 1, nan)] + [(4 + k, 0, ANGLES[k]) for k in range(3)]
    )
    second = _write(tmp_path / "B", "B", [(4 + k, 0, ANGLES[k]) for k in range(3, 6)])
    parts = EarlierParts(("A", "B"), (first, second))
    stage = make_stage(
        RunContext(get_backend("numpy"), GEOMETRY, SHAPE, 16, "2th_deg", _params(), earlier=parts)
    )
    stage.earlier._thread.join(10)  # type: ignore[attr-defined]
    for k in range(6, len(ANGLES)):
        stage.process(_frame(0, k), 4 + k, 0, float(ANGLES[k]))
    text = stage.finish()["flat_field"]
    assert text.endswith("(with the 1 darks and 1 flats stored in run A)"), text
