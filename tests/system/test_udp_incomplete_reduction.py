"""An incomplete UDP frame (a packet lost) is stored with 0 where the packet's pixels were, flagged; its
reduction leaves those pixels out as if masked, so its profile, cake and ROI mean are those of the pixels
that came, not pulled down by zeros. Real appliance in this process, real UDP datagrams on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

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


def test_an_incomplete_udp_frame_is_reduced_without_its_missing_pixels(tmp_path: Path) -> None:
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
        'reduction.mode="powder"',
        "reduction.cake_bins=8",
        "reduction.roi=[[0, 32, 0, 32], [40, 60, 40, 60]]",  # module 0 (the lost packet's), and another
    ]
    shape = LAYOUT.frame_shape
    with in_process_appliance(tmp_path, shape, *overrides) as (appliance, _push, _settings):
        counts = np.full(LAYOUT.raw_shape, 100, np.uint16)  # every pixel 100 counts
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
