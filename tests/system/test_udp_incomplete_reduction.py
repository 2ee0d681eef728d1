"""An incomplete UDP frame (a packet lost) is stored with 0 where the packet's pixels were, flagged; its
reduction leaves those pixels out as if masked, so its profile, cake and ROI mean are those of the pixels
that came, not pulled down by zeros. Real appliance in this process, real UDP datagrams on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (filter 32008 for reading back)
import numpy as np
import pytest
from edgeprocs import free_port, in_process_appliance, wait_for

from firmware_bridge.udp_codec import DetectorGeometry, packetize_frame
from hw_sim.udp_packets import UdpFrameSender

pytestmark = pytest.mark.timeout(120)

LAYOUT = DetectorGeometry(
    module_rows=32, module_cols=32, grid_rows=2, grid_cols=2, gap_pixels=2, payload_bytes=512
)
FRAMES = 5
INCOMPLETE = 1  # frame 1 loses packet 1 of module 0
LOST = (0, 1)


def _run(tmp_path: Path, counts: np.ndarray, *mode: str) -> tuple[Path, Path, dict[str, Any]]:
    """Frames 0..4 of ``counts`` over UDP, frame 1 without one packet; (the run's reduced file, store,
    the receiver's counters)."""
    port = free_port()
    overrides = [
        'stream.transport="udp"',
        f"udp.port={port}",
        "udp.module_rows=32",
        "udp.module_cols=32",
        "udp.grid_rows=2",
        "udp.grid_cols=2",
        "udp.gap_pixels=2",
        "udp.payload_bytes=512",
        f"udp.frames_per_run={FRAMES}",
        "udp.idle_seconds=0.5",
        "udp.frame_timeout_frames=2",
        *mode,
    ]
    with in_process_appliance(tmp_path, LAYOUT.frame_shape, *overrides) as (appliance, _push, _settings):
        packets: list[bytes] = []
        for n in range(FRAMES):
            frame_packets = packetize_frame(LAYOUT, n, counts)
            if n == INCOMPLETE:
                module, index = LOST
                frame_packets = [
                    p
                    for k, p in enumerate(frame_packets)
                    if k != module * LAYOUT.packets_per_module_frame + index
                ]
            packets += frame_packets
        with UdpFrameSender(LAYOUT, port) as sender:
            sender.send_packets(packets)
        store = tmp_path / "store"
        reduced_path = wait_for(lambda: next(iter(store.glob("*/*_reduced_00000.nxs")), None), 60, "the run")
        wait_for(lambda: appliance.view.status()["frames"]["stored"] == FRAMES, 30, "every frame stored")
        receiver = appliance.view.status()["receiver"]
    return reduced_path, store, receiver


def test_an_incomplete_udp_frame_is_reduced_without_its_missing_pixels(tmp_path: Path) -> None:
    counts = np.full(LAYOUT.raw_shape, 100, np.uint16)  # every pixel 100 counts
    reduced_path, store, _receiver = _run(
        tmp_path,
        counts,
        'reduction.mode="powder"',
        "reduction.cake_bins=8",
        "reduction.roi=[[0, 32, 0, 32], [40, 60, 40, 60]]",  # module 0 (the lost packet's), and another
    )
    with h5py.File(reduced_path, "r") as f:
        numbers = list(f["/entry/frames/frame_number"][:])
        profiles = f["/entry/reduced/I"][:]
        roi_mean = f["/entry/roi/mean"][:]
        cakes = f["/entry_2d/reduced/I"][:]
    (data_file,) = store.glob("*/*_00000.h5")
    with h5py.File(data_file, "r") as f:
        stored_numbers = f["/entry/data/frame_number"][:].tolist()
        flags = dict(zip(stored_numbers, f["/entry/data/frame_flags"][:].tolist(), strict=True))
        stored = f["/entry/data/data"][stored_numbers.index(INCOMPLETE)]
    assert flags[INCOMPLETE] == 1 and sum(flags.values()) == 1  # stored, flagged incomplete
    start, stop = LAYOUT.packet_pixel_range(LOST[1])
    assert (stored[LAYOUT.module_slices(LOST[0])] == 0).sum() == stop - start  # its zeros, as sent
    row = numbers.index(INCOMPLETE)
    complete = numbers.index(0)
    # a uniform 100 counts: every bin that has pixels is 100, in the incomplete frame as in a complete one
    filled = profiles[complete] > 0
    np.testing.assert_allclose(profiles[row][filled], 100.0, rtol=1e-9)
    np.testing.assert_allclose(profiles[complete][filled], 100.0, rtol=1e-9)
    np.testing.assert_allclose(roi_mean[row], [100.0, 100.0], rtol=1e-9)
    cake_filled = cakes[complete] > 0
    np.testing.assert_allclose(cakes[row][cake_filled & (cakes[row] > 0)], 100.0, rtol=1e-9)


def test_an_incomplete_udp_frame_s_peaks_are_found_as_with_its_missing_pixels_masked(tmp_path: Path) -> None:
    """Serial: the lost packet's zeros would pull the rings' backgrounds down and their spread up, and
    weak spots on those rings were missed; the finder leaves them out, as masked pixels (the oracle:
    the kernel's finder on the stored frame with them NaN, which it takes as masked: test_reduction_kernels'
    test_nan_pixels_are_left_out_of_peak_finding_as_masked_ones_are. A finder given them as a mask
    would merge the rings they thin differently, `MIN_RING_PIXELS`)."""
    from edge.config import load_settings
    from kernels import Geometry, direct_beam, get_backend

    rng = np.random.default_rng(7)
    counts = rng.poisson(100, LAYOUT.raw_shape).astype(np.uint16)
    for r, c in [(4, 25), (19, 10), (50, 50), (40, 10)]:  # two on the lost packet's rings, two not
        counts[r - 1 : r + 2, c - 1 : c + 2] += 180
    serial = ['reduction.mode="serial"', "reduction.serial.min_peaks=1", "reduction.serial.min_snr=6"]
    reduced_path, store, _receiver = _run(tmp_path, counts, *serial)
    with h5py.File(reduced_path, "r") as f:
        frames = f["/entry/frames"]
        peaks = dict(zip(frames["frame_number"][:].tolist(), frames["n_peaks"][:].tolist(), strict=True))
    (data_file,) = store.glob("*/*_00000.h5")
    with h5py.File(data_file, "r") as f:
        numbers = f["/entry/data/frame_number"][:].tolist()
        stored = f["/entry/data/data"][numbers.index(INCOMPLETE)]
    gaps = ~LAYOUT.insert_gaps(np.ones(LAYOUT.raw_shape, bool), fill=False)
    missing = np.zeros(LAYOUT.frame_shape, bool)
    start, stop = LAYOUT.packet_pixel_range(LOST[1])
    flat = np.zeros(LAYOUT.module_pixels, bool)
    flat[start:stop] = True
    missing[LAYOUT.module_slices(LOST[0])] = flat.reshape(LAYOUT.module_shape)
    settings = load_settings(overrides=serial)
    x, y = direct_beam(Geometry(**settings.geometry.model_dump()))
    p = settings.reduction.serial
    options = {
        "center": (y - 0.5, x - 0.5),
        "min_snr": p.min_snr,
        "adc_threshold": p.adc_threshold,
        "min_pixels": p.min_pixels,
        "max_pixels": p.max_pixels,
        "min_peaks": 1,
    }
    numpy = get_backend("numpy")
    finder = numpy.peak_finder(LAYOUT.frame_shape, mask=gaps, **options)
    as_masked = len(finder.find(np.where(missing, np.nan, stored.astype(np.float32))))
    as_zeros = len(finder.find(stored))
    assert as_zeros != as_masked  # the zeros do change what is found here
    assert peaks[INCOMPLETE] == as_masked, (peaks, as_masked, as_zeros)


def test_frames_beyond_the_armed_number_are_stored_and_counted(tmp_path: Path) -> None:
    counts = np.full(LAYOUT.raw_shape, 100, np.uint16)
    _reduced, store, receiver = _run(tmp_path, counts, 'reduction.mode="raw"', "udp.frames_per_run=3")
    assert receiver["frames_beyond_armed"] == FRAMES - 3  # frames 3 and 4
    (data_file,) = store.glob("*/*_00000.h5")
    with h5py.File(data_file, "r") as f:
        assert sorted(f["/entry/data/frame_number"][:].tolist()) == list(range(FRAMES))
    # the run's account takes them in: stored + lost = frames_this_run (an outside probe: 13 stored of
    # 10 armed, and frames_this_run 10)
    from edge.ledger import Ledger
    from edge.where import where_report

    ledger = Ledger(store / "ledger.sqlite")
    try:
        report = where_report(ledger, ledger.newest_run(), store=store)
    finally:
        ledger.close()
    assert report["frames_expected"] == 3 and report["frames_stored"] == FRAMES
    assert report["frames_this_run"] == FRAMES == report["frames_stored"] + report["frames_lost"]
