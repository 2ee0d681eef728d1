"""areaDetector's enumerations, shared by the camera client, the simulated camera and the appliance IOC."""

from __future__ import annotations

#: ``DetectorState_RBV`` values, in areaDetector's order (ADDriver.h ``ADStatus_t``).
DETECTOR_STATES: tuple[str, ...] = (
    "Idle",
    "Acquire",
    "Readout",
    "Correct",
    "Saving",
    "Aborting",
    "Error",
    "Waiting",
    "Initializing",
    "Disconnected",
    "Aborted",
)
IMAGE_MODES: tuple[str, ...] = ("Single", "Multiple", "Continuous")
TRIGGER_MODES: tuple[str, ...] = ("Internal", "External")
#: ``FrameType`` values (ADDriver's first three): the image key of the frames taken while it is set
#: (NXtomo image_key 0, 2, 1: see docs/pvs.md)
FRAME_TYPES: tuple[str, ...] = ("Normal", "Background", "FlatField")
DISABLE_ENABLE: tuple[str, ...] = ("Disable", "Enable")
#: ``ShutterMode``, ``ShutterControl`` and ``ShutterStatus_RBV`` values
SHUTTER_MODES: tuple[str, ...] = ("None", "EPICS PV", "Detector output")
CLOSE_OPEN: tuple[str, ...] = ("Close", "Open")
CLOSED_OPEN: tuple[str, ...] = ("Closed", "Open")
