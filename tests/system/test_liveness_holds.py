"""The service watchdog's view of waiting that a restart would not cure (``ApplianceView.liveness``).

Two outside probes: with a second required consumer away, the idle appliance whose connected consumer
had confirmed everything was called stalled (the watchdog withheld: systemd would restart it over and
over while the HPC side's second consumer is down); and a mode's first kernel compile (74 s on a busy
machine), its run's frames waiting in the ring, came within 5 s of the watchdog's kill."""

from __future__ import annotations

import time
from pathlib import Path

from edgeprocs import in_process_appliance


def test_a_mode_whose_kernels_load_holds_its_frames_back_not_stalled(tmp_path: Path) -> None:
    with in_process_appliance(tmp_path, (16, 16)) as (appliance, _push, _settings):
        pipeline, view = appliance.pipeline, appliance.view
        assert view.liveness()["held_back"] is None
        pipeline._warm_ups[-1] = ("serial", time.monotonic(), 0)  # a first compile going on
        try:
            live = view.liveness()
            assert live["held_back"] and "kernels are loading (serial)" in live["held_back"]
            pipeline._warm_ups[-1] = ("serial", time.monotonic() - 601, 0)  # ... for 10 minutes: a stall
            assert view.liveness()["held_back"] is None
        finally:
            del pipeline._warm_ups[-1]


def test_chunks_only_an_absent_consumer_owes_are_not_pending_work(tmp_path: Path) -> None:
    """``hpc`` connected and has confirmed every file; ``tape``, also required, is away: nothing the
    appliance could move now is waiting."""
    with in_process_appliance(tmp_path, (16, 16), 'upstream.required_consumers=["hpc", "tape"]') as (
        appliance,
        _push,
        _settings,
    ):
        ledger, view = appliance.ledger, appliance.view
        path = tmp_path / "store" / "r1" / "r1_00000.h5"
        path.parent.mkdir(parents=True)
        path.write_bytes(bytes(4096))
        from edge.durable import file_checksums

        size, digest, chunks = file_checksums(path, 1024)
        ledger.run_started("r1", 1, 1, "{}")
        ledger.file_stored("r1", path.name, path, size, digest, (0, 0, 1), chunks)
        (row,) = ledger.files("r1")
        connected = {"consumers": [{"consumer": "hpc", "connected": True}]}
        appliance.forwarder.counters = lambda: (
            connected
        )  # (the hpc client's connection, as the forwarder says)
        assert view.liveness()["pending"] == 4  # hpc owes its confirmation: its chunks are pending
        assert ledger.file_verified("hpc", row["id"], row["size"], row["checksum"], "/hpc/r1_00000.h5")
        assert view.liveness()["pending"] == 0  # only tape owes: it is away
