"""Stream V2 pass-through counters, in process: the receiver's ``frames_passed_through`` counts the
images it handed on as received, the pipeline's those it stored so. A vetoed blank (serial mode,
``store.blanks = "drop"``) is handed on but never stored: an outside probe saw the pipeline count it
(53 counted, 41 stored). Messages are built here from docs/wire-formats.md."""

from __future__ import annotations

from pathlib import Path

import cbor2
import numpy as np
from edgeprocs import in_process_appliance, wait_for

from kernels import compress_chunk

SHAPE = (32, 48)


def _messages(frames: int) -> list[bytes]:
    common = {"series_id": 1, "series_unique_id": "blanks"}
    start = {"type": "start", **common, "channels": ["threshold_1"], "image_dtype": "uint16",
             "image_size_x": SHAPE[1], "image_size_y": SHAPE[0], "number_of_images": frames}  # fmt: skip
    chunk = bytes(compress_chunk(np.zeros(SHAPE, np.uint16)))  # blank: no peaks
    typed = cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, chunk]))])
    images = [
        {"type": "image", **common, "image_id": n, "data": {"threshold_1": typed}} for n in range(frames)
    ]
    return [cbor2.dumps(m) for m in (start, *images, {"type": "end", **common})]


def test_vetoed_pass_through_images_are_not_counted_as_stored_as_received(tmp_path: Path) -> None:
    frames = 6
    overrides = ('stream.format="stream2"', 'reduction.mode="serial"', 'store.blanks="drop"')
    with in_process_appliance(tmp_path, SHAPE, *overrides) as (appliance, push, _settings):
        for message in _messages(frames):
            push.send(message)
        wait_for(lambda: appliance.view.run("blanks").get("exit_status"), 30, "the run's end")
        run = appliance.view.run("blanks")
        status = appliance.view.status()
    assert run["totals"]["frames_vetoed"] == frames and run["totals"]["frames_stored"] == 0
    assert status["receiver"]["frames_passed_through"] == frames  # handed on as received
    assert status["pipeline"].get("frames_passed_through", 0) == 0  # none stored
