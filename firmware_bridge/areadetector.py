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
