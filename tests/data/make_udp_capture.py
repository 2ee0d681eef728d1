"""Regenerate ``udp_capture_v1.bin``: a small 2 x 2-module UDP stream with injected faults.

Run from the repository root: ``PYTHONPATH=src python tests/data/make_udp_capture.py``. The file is a
capture container (``docs/wire-formats.md``): ``b"EDGUCAP1"`` then ``<u32 length><datagram>`` records.
Frames 1..19 are sent except frame 9 (a frame-number jump); a replay that expects frames 1..20 also
sees frame 20 lost at the series end. ``test_udp_codec.py`` pins the resulting counters.
"""

from __future__ import annotations

import json
from pathlib import Path

from firmware_bridge.udp_codec import DetectorGeometry, encode_capture
from hw_sim.udp_packets import FaultPlan, apply_faults, random_frames

GEOMETRY = DetectorGeometry(
    module_rows=16, module_cols=32, grid_rows=2, grid_cols=2, gap_pixels=2, payload_bytes=256
)
PLAN = FaultPlan(loss=0.03, reorder=0.1, duplicate=0.03, corrupt=0.03, seed=2024)
FRAMES = [n for n in range(1, 20) if n != 9]


def main() -> None:
    stream = apply_faults(GEOMETRY, random_frames(GEOMETRY, FRAMES, seed=7), PLAN)
    out = Path(__file__).with_name("udp_capture_v1.bin")
    out.write_bytes(encode_capture(stream.packets))
    truth = stream.truth
    truth.frames_lost.append(20)  # the replay expects the series to run to frame 20
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(stream.packets)} packets)")
    print(
        json.dumps(
            {
                "expected_counters": truth.expected_counters(),
                "frames_lost": truth.frames_lost,
                "frames_incomplete": truth.frames_incomplete,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
