"""An ophyd-async device for the appliance: the detector's areaDetector driver plus the appliance's ``HDF1:``.

The appliance stands where areaDetector's HDF5 plugin would: the detector's own driver (``cam1:``) takes
the frames, the appliance receives, reduces and stores them. `EdgeDetector` is ophyd-async's stock
``AreaDetector`` made of the stock ``adcore.ADBaseIO`` driver, the stock ``ADWriterFactory.hdf`` writer on
the appliance's ``HDF1:`` (Stream mode: one capture spans every point of a scan, one file), and a few of
the appliance's own readbacks as configuration (run uid, reduction mode, frames lost). Nothing here is
needed by the daemon: it is the optional ``bluesky`` extra (``pip install edge[bluesky]``); without it,
using the class raises with the install hint. See ``docs/bluesky.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EdgeDetector", "EdgeStatusIO"]

try:
    from ophyd_async.core import DetectorTriggerLogic, PathProvider, SignalR, StrictEnum
    from ophyd_async.epics import adcore
    from ophyd_async.epics.core import EpicsDevice, PvSuffix
except ImportError as error:  # the optional extra is missing: fail when used, not when imported
    _missing = error

    def __getattr__(name: str) -> Any:
        if name in __all__:
            raise NotImplementedError(
                f"edge.bluesky.{name} needs ophyd-async: pip install 'edge[bluesky]'"
            ) from _missing
        raise AttributeError(name)

else:
    from dataclasses import dataclass
    from typing import Annotated as A

    from edge.config import MODES

    class EdgeMode(StrictEnum):
        """The appliance's reduction modes (``Mode_RBV``)."""

        RAW = MODES[0]
        POWDER = MODES[1]
        SERIAL = MODES[2]
        TOMO = MODES[3]

    class EdgeStatusIO(EpicsDevice):
        """The appliance's own readbacks a scan records with its data."""

        run_uid: A[SignalR[str], PvSuffix("RunUid_RBV")]
        mode: A[SignalR[EdgeMode], PvSuffix("Mode_RBV")]
        lost_frames: A[SignalR[int], PvSuffix("LostFrames_RBV")]
        vetoed_frames: A[SignalR[int], PvSuffix("VetoedFrames_RBV")]  # blanks dropped by policy, not lost
        hits: A[SignalR[int], PvSuffix("Reduction:Hits_RBV")]  # serial: the newest run's
        hit_rate: A[SignalR[float], PvSuffix("Reduction:HitRate_RBV")]  # serial: %, the newest run's
        slices_done: A[SignalR[int], PvSuffix("Reduction:SlicesDone_RBV")]  # tomo: the newest run's
        status_message: A[SignalR[str], PvSuffix("StatusMessage_RBV")]

    @dataclass
    class EdgeTriggerLogic(DetectorTriggerLogic):
        """Internal triggering of an areaDetector driver: ``NumImages`` frames per point."""

        driver: adcore.ADBaseIO

        async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
            await adcore.prepare_exposures(self.driver, num, livetime, deadtime)

        async def default_trigger_info(self) -> Any:
            return await adcore.trigger_info_from_num_images(self.driver)

    class EdgeDetector(adcore.AreaDetector[adcore.ADBaseIO]):
        """A detector whose frames the appliance stores: ``bp.count([EdgeDetector(...)], num=10)``.

        Parameters
        ----------
        detector_prefix:
            The detector IOC's prefix (``"BL:DET:"``); its driver is ``detector_prefix + driver_suffix``.
        appliance_prefix:
            The appliance IOC's prefix (``epics.prefix``, e.g. ``"EDGE:"``); its writer is ``HDF1:``.
        path_provider:
            Where the files go: a directory inside the appliance's ``store.roots``, as the appliance
            sees it.
        """

        def __init__(
            self,
            detector_prefix: str,
            appliance_prefix: str,
            path_provider: PathProvider,
            *,
            driver_suffix: str = "cam1:",
            name: str = "",
        ) -> None:
            driver = adcore.ADBaseIO(detector_prefix + driver_suffix)
            self.appliance = EdgeStatusIO(appliance_prefix)
            super().__init__(
                driver,
                appliance_prefix,
                adcore.ADWriterFactory.hdf(path_provider, writer_suffix="HDF1:"),
                acquire_logic=adcore.ADAcquireLogic(driver),
                trigger_logic=EdgeTriggerLogic(driver),
                config_sigs=(self.appliance.run_uid, self.appliance.mode),
                name=name,
            )
