"""Rollover files finished on a closer thread: in order, all registered before the run closes, and a
file that cannot be finished becomes one loss record per frame, never a silent gap."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from edge.config import ReductionSettings
from edge.durable import drop_cached
from edge.ledger import Ledger
from edge.modes import ModeStage, RunContext
from edge.recorder import RunRecorder
from edge.store import ClosedFile, RunStore
from kernels import Geometry, compress_chunk, decompress_chunk, get_backend

SHAPE = (16, 24)
#: the raw mode's layout: frames only, no products
RAW = ModeStage(
    RunContext(get_backend("numpy"), Geometry(), SHAPE, 4, "2th_deg", ReductionSettings(mode="raw"))
)


def _store(root: Path, closer: ThreadPoolExecutor, on_closed, on_failed) -> RunStore:  # type: ignore[no-untyped-def]
    return RunStore(
        root,
        "run-1",
        SHAPE,
        "uint16",
        frames_per_file=3,
        file_seconds=3600,
        layout=RAW,
        on_closed=on_closed,
        closer=closer,
        on_close_failed=on_failed,
    )


def test_files_are_finished_in_order_before_the_run_closes(tmp_path: Path) -> None:
    frames = [np.full(SHAPE, n, np.uint16) for n in range(8)]
    closed: list[ClosedFile] = []
    threads: set[str] = set()

    def on_closed(item: ClosedFile) -> None:
        threads.add(threading.current_thread().name)
        closed.append(item)

    with ThreadPoolExecutor(1, thread_name_prefix="closer") as closer:
        store = _store(tmp_path, closer, on_closed, None)
        for n, frame in enumerate(frames):
            store.write(n, compress_chunk(frame), {})
        store.close()
        assert [c.n_frames for c in closed] == [3, 3, 2]  # all three registered when close() returns
    assert threads and all(name.startswith("closer") for name in threads)
    assert [(c.first_frame, c.last_frame) for c in closed] == [(0, 2), (3, 5), (6, 7)]
    for item in closed:
        with h5py.File(item.path) as f:
            data = f["entry/data/data"]
            for k, n in enumerate(f["entry/data/frame_number"][()]):
                np.testing.assert_array_equal(data[k], frames[n])
                chunk = data.id.read_direct_chunk((k, 0, 0))[1]
                np.testing.assert_array_equal(decompress_chunk(chunk, SHAPE, "uint16"), frames[n])
    assert not list(tmp_path.rglob("*.part"))


def test_a_file_that_cannot_be_finished_is_a_loss_per_frame(tmp_path: Path) -> None:
    lost: list[tuple[str, list[int], str]] = []
    calls = {"n": 0}

    def on_closed(item: ClosedFile) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("ledger disk full")

    with ThreadPoolExecutor(1) as closer:
        store = _store(
            tmp_path, closer, on_closed, lambda run, frames, error: lost.append((run, frames, str(error)))
        )
        for n in range(7):
            store.write(10 + n, compress_chunk(np.zeros(SHAPE, np.uint16)), {})
        store.close()
    assert lost == [("run-1", [13, 14, 15], "ledger disk full")]


def test_without_a_closer_failures_raise(tmp_path: Path) -> None:
    def on_closed(item: ClosedFile) -> None:
        raise OSError("no")

    store = RunStore(tmp_path, "run-2", SHAPE, "uint16", 2, 3600, RAW, on_closed)
    store.write(0, compress_chunk(np.zeros(SHAPE, np.uint16)), {})
    with pytest.raises(OSError):
        store.write(1, compress_chunk(np.zeros(SHAPE, np.uint16)), {})


def test_a_config_too_large_for_the_run_record_keeps_digests_of_its_largest_header_fields() -> None:
    from edge.store import bounded_config

    big = {"image": "y" * 600_000}
    config = {
        "shape": [4, 4],
        "type": "uint16",
        "reduction": {"mode": "raw", "note": "z" * 700_000},  # the appliance's own: never replaced
        "stream2": {"channel": "threshold_1", "user_data": big, "metadata": {"arm_date": "2026"}},
        "x_vendor": "x" * 500_000,
    }
    out, replaced = bounded_config(config, limit=1_300_000)
    assert replaced == ["stream2.user_data"]  # the largest header value first, then it fits
    assert out["stream2"]["channel"] == "threshold_1" and out["stream2"]["metadata"] == {"arm_date": "2026"}
    assert out["stream2"]["user_data"]["bytes"] == len(json.dumps(big))
    assert out["reduction"] == config["reduction"] and config["stream2"]["user_data"] is big  # not mutated
    out, replaced = bounded_config(config, limit=100_000)
    assert replaced == ["stream2.user_data", "x_vendor"]  # as far as header fields go
    small = {"shape": [4, 4], "x": 1}
    assert bounded_config(small) == (small, [])


def test_a_settled_file_hands_its_pages_back_to_the_kernel(
    tmp_path: Path, resident_bytes: Callable[[Path], int]
) -> None:
    """``drop_cached`` empties a written, fsynced file's page cache (its bytes stay on disk); a file
    gone meanwhile is answered False, never an error."""
    path = tmp_path / "settled.h5"
    data = np.random.default_rng(1).integers(0, 255, 4 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    assert resident_bytes(path) > len(data) // 2  # just written: in the page cache
    assert drop_cached(path)
    assert resident_bytes(path) < len(data) // 8
    assert path.read_bytes() == data
    assert not drop_cached(tmp_path / "purged.h5")


def test_a_file_kept_only_here_hands_its_pages_back_once_recorded(
    tmp_path: Path, resident_bytes: Callable[[Path], int]
) -> None:
    """Under ``upstream.forward = reduced`` raw frames never go upstream: once checksummed and recorded,
    their file's pages are handed back; a reduced file, which the forwarder reads next, keeps them."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20, forward="reduced")
    uid = recorder.open_run("run-1", series=1, frames_expected=2, config={"shape": [4, 4]})
    written = {}
    for kind in ("data", "reduced"):
        path = tmp_path / f"{kind}.h5"
        with open(path, "wb") as handle:
            handle.write(os.urandom(1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
        recorder.register_file(uid, path, (0, 0, 1), kind)
        written[kind] = resident_bytes(path)
    assert written == {"data": 0, "reduced": 1 << 20}
    assert [f["state"] for f in ledger.files(uid)] == ["local", "stored"]
    ledger.close()


def test_every_file_carries_the_whole_reduction_record_with_its_own_date(tmp_path: Path) -> None:
    """The record is copied from an in-memory template (5 ms of CPU a file written field by field): each
    file still holds every field, the NeXus classes, the settings as JSON, and the date it was made."""
    from edge.store._files import _write_reduction_record

    stage = ModeStage(
        RunContext(get_backend("numpy"), Geometry(), SHAPE, 4, "2th_deg", ReductionSettings(mode="powder"))
    )
    record = stage.settings_record()
    for name in ("a.h5", "b.h5"):
        with h5py.File(tmp_path / name, "w") as handle:
            _write_reduction_record(handle.create_group("entry"), stage)
    for name in ("a.h5", "b.h5"):
        with h5py.File(tmp_path / name) as handle:
            group = handle["/entry/reduction"]
            assert (
                group.attrs["NX_class"] == "NXprocess" and group["input"].attrs["NX_class"] == "NXparameters"
            )
            assert group["program"][()] == b"edge" and group["mode"][()].decode() == record["mode"]
            assert group["date"][()].decode().startswith("20")
            assert json.loads(group["settings_json"][()]) == json.loads(json.dumps(record, default=str))
            assert sorted(group["input"]) == sorted(record)


def test_a_file_given_up_on_a_full_disk_is_set_aside_in_a_quarantine_made_while_there_was_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chaos probe: on a full disk the run's quarantine directory could not be made, and the file that
    could not be finished was removed instead of set aside. It is made when the run opens (removed at
    its end when nothing went there)."""
    import errno
    from pathlib import Path as PathType

    with ThreadPoolExecutor(1) as closer:
        store = _store(tmp_path, closer, lambda item: None, lambda run, frames, error: None)
        quarantine = tmp_path / "quarantine" / "run-1"
        assert quarantine.is_dir()
        store.write(0, compress_chunk(np.zeros(SHAPE, np.uint16)), {})

        def no_space(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device", str(self))

        with monkeypatch.context() as full:
            full.setattr(PathType, "mkdir", no_space)  # the disk is full: no directory can be made
            assert [frames for frames, _where in store.quarantine_open()] == [[0]]
        store.close()
    assert [p.name for p in quarantine.iterdir()] == ["run-1_00000.h5.part"]  # set aside, kept

    with ThreadPoolExecutor(1) as closer:  # a run with nothing set aside leaves no empty directory
        clean = RunStore(tmp_path, "run-2", SHAPE, "uint16", 3, 3600, RAW, lambda item: None, closer=closer)
        clean.write(0, compress_chunk(np.zeros(SHAPE, np.uint16)), {})
        clean.close()
    assert not (tmp_path / "quarantine" / "run-2").exists()


def test_a_stream_that_pauses_on_its_own_has_its_old_file_finished_while_others_go_on(tmp_path: Path) -> None:
    """An outside probe (serial, blanks dropped, 20 frames/s, hits 0.3): the hits file filled to 100
    frames over ~17 s, and a crash took every hit of it, quarantined with the open file. ``file_seconds``
    finished files only at a pause of the whole stream, never while blanks kept coming. A stream quiet
    for ``quiet`` seconds has its file finished once it is ``file_seconds`` old; a stream that keeps
    getting frames is not cut."""
    import time

    closed: list[str] = []
    store = RunStore(
        tmp_path, "run-3", SHAPE, "uint16", 100, 0.2, RAW, lambda item: closed.append(item.path.name)
    )
    chunk = compress_chunk(np.zeros(SHAPE, np.uint16))
    store.write(0, chunk, {}, stream="hits")
    for frame in range(1, 7):  # the other stream goes on, a frame every 0.05 s
        store.write(frame, chunk, {}, stream="data")
        time.sleep(0.05)
    store.write(7, chunk, {}, stream="data")
    store.tick(quiet=0.1)
    assert closed == ["run-3_hits_00000.h5"]  # the quiet one, old enough; "data" had a frame just now
    time.sleep(0.15)
    store.tick(quiet=0.1)
    assert closed == ["run-3_hits_00000.h5", "run-3_00000.h5"]
    store.close()


def test_a_stream_that_paused_has_its_old_file_finished_at_its_next_frame(tmp_path: Path) -> None:
    """An outside probe: serial's hits paused 0.2-0.4 s at a time among blanks, but the check for a
    pause came once a second and found hits just then: the hits file stayed open the whole run, and a
    crash took every hit. A stream's next frame after a pause of `PAUSE_SECONDS` finishes its file
    (once ``file_seconds`` old) before it is written, whenever the pause was."""
    import time

    closed: list[str] = []
    store = RunStore(
        tmp_path, "run-4", SHAPE, "uint16", 100, 0.2, RAW, lambda item: closed.append(item.path.name)
    )
    chunk = compress_chunk(np.zeros(SHAPE, np.uint16))
    store.write(0, chunk, {}, stream="hits")
    time.sleep(0.25)  # old enough, and a pause
    store.write(1, chunk, {}, stream="hits")
    assert closed == ["run-4_hits_00000.h5"]  # finished before frame 1, no tick needed
    store.write(2, chunk, {}, stream="hits")  # no pause (and too young): the same file
    assert closed == ["run-4_hits_00000.h5"]
    store.close()
    assert closed == ["run-4_hits_00000.h5", "run-4_hits_00001.h5"]


def test_a_file_that_can_be_neither_finished_nor_set_aside_nor_removed_is_still_a_loss_per_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: a capture's directory made immutable (``chattr +i``) mid-capture. Finishing the
    file failed at its rename, setting it aside failed, and removing it failed too: that last error left
    the closer before the frames were recorded lost, and the run ended "success", 20 frames in no
    record. Every step may fail; the frames are loss records all the same, the ``.part`` left in place."""
    import errno

    lost: list[tuple[str, list[int], str]] = []
    with ThreadPoolExecutor(1) as closer:
        store = _store(
            tmp_path,
            closer,
            lambda item: None,
            lambda run, frames, error: lost.append((run, frames, str(error))),
        )
        store.write(0, compress_chunk(np.zeros(SHAPE, np.uint16)), {})
        store.write(1, compress_chunk(np.zeros(SHAPE, np.uint16)), {})

        def not_permitted(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise PermissionError(errno.EPERM, "Operation not permitted")

        with monkeypatch.context() as immutable:  # (the directory: no entry renamed or removed)
            immutable.setattr(os, "replace", not_permitted)
            immutable.setattr(Path, "unlink", not_permitted)
            store.close()
    assert [(run, frames) for run, frames, _ in lost] == [("run-1", [0, 1])]
    assert "Operation not permitted" in lost[0][2]
    assert (tmp_path / "run-1" / "run-1_00000.h5.part").exists()  # left in place, under no final name
    assert store.frames_stored == 0


def test_a_capture_s_file_given_up_on_a_full_disk_stays_where_the_capture_put_it(tmp_path: Path) -> None:
    """An outside chaos probe: a capture's directory on another filesystem than the store's; the disk
    filled, the ``.part`` could not be renamed into STORE/quarantine (another device) and was then
    deleted, the only copy of 100 frames, while the loss records said "in a file quarantined". A
    capture's file stays where the capture put it, and so does any file that cannot be moved."""
    capture = tmp_path / "elsewhere" / "scan.h5"
    capture.parent.mkdir()
    with ThreadPoolExecutor(1) as closer:
        store = RunStore(
            tmp_path / "store", "run-c", SHAPE, "uint16", 10, 3600, RAW, lambda item: None,
            closer=closer, data_path=capture,
        )  # fmt: skip
        store.write(0, compress_chunk(np.zeros(SHAPE, np.uint16)), {})
        store.write(1, compress_chunk(np.zeros(SHAPE, np.uint16)), {})
        ((frames, where),) = store.quarantine_open()
        store.close()
    assert frames == [0, 1] and where == Path(f"{capture}.part") and where.exists()
    # and no later frame goes into a new file of its name (which truncated it: an outside probe)
    assert store.capture_given_up == where
    assert not (tmp_path / "store" / "quarantine" / "run-c").exists()
