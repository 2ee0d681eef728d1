"""The NTNDArray the pvAccess image PV posts, built from a view's preview (no server: the Value itself).

An outside probe read a 1024 x 1024 detector's image as ``size 512, fullSize 512, binning 1`` (the
preview's decimation said nowhere but in the attributes), ``dataTimeStamp`` 0 (1970 in a viewer that reads
it, as areaDetector's plugin fills it), and an empty image before the first frame without the detector's
size."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from edge.pva import PvaImageServer


class _View:
    frame_format = SimpleNamespace(height=1024, width=1024)

    def __init__(self) -> None:
        self.latest: Any = None

    def latest_preview_frame(self) -> Any:
        return self.latest


class _Posted:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def post(self, value: Any) -> None:
        self.values.append(value)


def test_the_image_says_its_decimation_its_time_and_the_detector_size() -> None:
    from p4p.nt import NTNDArray

    view = _View()
    loop = asyncio.new_event_loop()
    try:
        server = PvaImageServer(view, "T:Pva1:Image", 5.0, loop=loop)  # type: ignore[arg-type]
    finally:
        loop.close()  # (not run: only the Value is built here)
    server._nt = NTNDArray()
    server._pv = posted = _Posted()
    received = time.time()
    preview = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)  # every 2nd pixel of 1024 x 1024
    view.latest = (preview, {"frame": 7, "run_uid": "run-a", "received_at": received})
    assert server.post_newest()
    (value,) = posted.values
    dims = [{k: d[k] for k in ("size", "offset", "fullSize", "binning")} for d in value["dimension"]]
    assert dims == [{"size": 512, "offset": 0, "fullSize": 1024, "binning": 2}] * 2
    stamp = value["dataTimeStamp"]
    assert abs(int(stamp["secondsPastEpoch"]) + int(stamp["nanoseconds"]) * 1e-9 - received) < 1e-6
    attributes = {a["name"]: a["value"] for a in value["attribute"]}
    assert attributes["DetectorHeight"] == attributes["DetectorWidth"] == 1024
    assert attributes["FrameNumber"] == 7 and attributes["ColorMode"] == 0


def test_the_empty_image_before_the_first_frame_gives_the_detector_size_in_its_dimensions() -> None:
    """An outside probe: the empty image (0 x 0, ``uniqueId`` 0) had ``fullSize`` 0 in both dimensions,
    while docs/pvs.md says each dimension carries the detector's ``fullSize``."""
    from p4p.nt import NTNDArray

    loop = asyncio.new_event_loop()
    try:
        server = PvaImageServer(_View(), "T:Pva1:Image", 5.0, loop=loop)  # type: ignore[arg-type]
    finally:
        loop.close()
    server._nt = NTNDArray()
    value = server._empty_value()
    assert int(value["uniqueId"]) == 0
    dims = [{k: d[k] for k in ("size", "fullSize", "binning")} for d in value["dimension"]]
    assert dims == [{"size": 0, "fullSize": 1024, "binning": 2}] * 2
    attributes = {a["name"]: a["value"] for a in value["attribute"]}
    assert attributes["DetectorHeight"] == attributes["DetectorWidth"] == 1024
