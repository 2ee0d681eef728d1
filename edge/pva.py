"""The live image over pvAccess: the newest frame as an NTNDArray, like areaDetector's PVA plugin.

``PREFIX + "Pva1:Image"`` (``EDGE:Pva1:Image``) is served with p4p, so Phoebus' image widget, ImageJ's
EPICS plugin and tomostream-style consumers see the newest frame without the web UI. It is the receiver's
preview (every ``preview_step``-th pixel of the newest frame, at most 512 a side, not waiting for the
pipeline), posted at most
``epics.pva_rate_hz`` times a second and only when a newer frame arrived. ``uniqueId`` counts the images
posted since start (as an areaDetector driver's array counter); the frame number, run uid and full
detector size travel as NDAttributes, the receive time as ``timeStamp``. The server takes its addresses
and ports from the usual ``EPICS_PVAS_*`` variables. It reads the appliance's read-only view and nothing
else; p4p is imported only when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.frame_format import preview_step

if TYPE_CHECKING:
    from edge.view import ApplianceView

__all__ = ["PvaImageServer"]

log = logging.getLogger(__name__)


class PvaImageServer:
    """Serves the view's newest preview frame as ``name`` (NTNDArray) at most ``rate_hz`` times a second.

    Parameters
    ----------
    view:
        The appliance's read-only view (``latest_preview_frame``).
    name:
        The PV's name, e.g. ``"EDGE:Pva1:Image"``.
    rate_hz:
        Most updates per second.
    loop:
        The asyncio loop the poster runs on (the daemon's).
    """

    def __init__(
        self, view: ApplianceView, name: str, rate_hz: float, *, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.view = view
        self.name = name
        self.period = 1.0 / rate_hz
        self.loop = loop
        self.posted = 0  # images posted (their uniqueId)
        self._pv: Any = None
        self._server: Any = None
        self._nt: Any = None
        self._task: asyncio.Task[None] | None = None
        self._last: object | None = None

    def start(self) -> None:
        from p4p.nt import NTNDArray
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        self._nt = NTNDArray()
        # no nt: it takes the Values built here (with their uniqueId). Open from the start with an empty
        # image (0 x 0, uniqueId 0), as areaDetector's plugin before its first array: a get before the
        # first frame timed out, as for a PV that does not exist (an outside probe)
        self._pv = SharedPV()
        self._pv.open(self._empty_value())
        self._server = Server(providers=[{self.name: self._pv}], useenv=True)
        self._task = self.loop.create_task(self._post_forever(), name="edge-pva-image")
        log.info("pvAccess live image %s (at most %.3g Hz)", self.name, 1.0 / self.period)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
            self._server = None

    def post_newest(self) -> bool:
        """Post the newest preview if it is newer than the last one posted; True if it posted."""
        latest = self.view.latest_preview_frame()
        if latest is None or latest is self._last:
            return False
        self._last = latest
        pixels, info = latest
        self.posted += 1
        attributes = {
            "FrameNumber": int(info.get("frame") or 0),
            "RunUid": str(info.get("run_uid") or ""),
            **self._size(),
        }
        received = info.get("received_at")
        value = self._nt.wrap(np.ascontiguousarray(pixels), attrib=attributes, timestamp=received)
        value["uniqueId"] = self.posted
        if isinstance(received, int | float):  # the frame's time, as areaDetector's plugin fills it (was 0)
            seconds = int(received)
            value["dataTimeStamp.secondsPastEpoch"] = seconds
            value["dataTimeStamp.nanoseconds"] = min(int((received - seconds) * 1e9), 999_999_999)
        rows, columns = np.shape(pixels)[:2]
        value["dimension"] = self._dimensions(int(rows), int(columns))
        self._pv.post(value)
        return True

    def _empty_value(self) -> Any:
        """The image before the first frame: 0 x 0, ``uniqueId`` 0, the detector's size in its attributes
        and its dimensions' ``fullSize`` (they read 0: an outside probe)."""
        empty = self._nt.wrap(
            np.zeros((0, 0), np.uint16), attrib={"FrameNumber": 0, "RunUid": "", **self._size()}
        )
        empty["uniqueId"] = 0
        empty["dimension"] = self._dimensions(0, 0)
        return empty

    def _dimensions(self, rows: int, columns: int) -> list[dict[str, Any]]:
        """The preview's dimensions, x first: it is every n-th pixel of the frame, and each dimension says
        so (``fullSize`` the detector's, ``binning`` n), as a binned areaDetector array does (it said 512 of
        512, binning 1, for a 1024^2 detector)."""
        height, width = int(self.view.frame_format.height), int(self.view.frame_format.width)
        step = preview_step(height, width)
        return [
            {"size": columns, "offset": 0, "fullSize": width, "binning": step, "reverse": False},
            {"size": rows, "offset": 0, "fullSize": height, "binning": step, "reverse": False},
        ]

    def _size(self) -> dict[str, int]:
        """The detector's size as NDAttributes (also on the empty image before the first frame)."""
        return {
            "DetectorHeight": int(self.view.frame_format.height),
            "DetectorWidth": int(self.view.frame_format.width),
        }

    async def _post_forever(self) -> None:
        while True:
            try:
                self.post_newest()
            except asyncio.CancelledError:
                raise
            except Exception:  # a view must not die of one bad frame
                log.exception("posting %s failed", self.name)
            await asyncio.sleep(self.period)
