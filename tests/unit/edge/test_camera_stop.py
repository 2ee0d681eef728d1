"""Whether a series that ended short was stopped at the camera (its untaken frames not acquired) or lost
frames (a loss record): the camera's DetectorState_RBV and NumImagesCounter_RBV decide, and anything
they do not prove stays a loss."""

from __future__ import annotations

from typing import Any

import pytest

import edge.appliance as appliance
from edge.appliance import RingSink


def sink(state: str, taken: int | None) -> RingSink:
    s = RingSink(ring=None, recorder=None, refusal=lambda: None)  # type: ignore[arg-type]
    s.watch_detector(lambda: state, lambda: taken)
    return s


@pytest.mark.parametrize(
    ("state", "taken", "first_missing", "stopped"),
    [
        ("Aborted", None, 20, True),  # the driver says so
        ("Aborting", 3, 20, True),
        ("Idle", 20, 20, True),  # stopped short: it took frames 0..19, and all of them came
        ("Idle", 600, 20, False),  # it took all 600 and 580 went missing on the way: a loss
        ("Idle", 25, 20, False),  # it took 25, only 20 came: not proven, a loss
        ("Idle", None, 20, False),  # a camera without NumImagesCounter_RBV: a loss
        ("Error", 20, 20, False),
        ("Disconnected", 20, 20, False),
    ],
)
def test_a_camera_stop_is_told_from_lost_frames(
    state: str, taken: int | None, first_missing: int, stopped: bool
) -> None:
    assert sink(state, taken)._aborted_at_the_camera(first_missing) is stopped


def test_a_camera_still_acquiring_is_waited_for_then_taken_for_a_loss(monkeypatch: Any) -> None:
    monkeypatch.setattr(appliance, "ABORT_STATE_SECONDS", 0.05)
    assert sink("Acquire", 20)._aborted_at_the_camera(20) is False
    states = iter(["Acquire", "Acquire", "Idle"])  # the state's monitor comes after the stream's end
    s = RingSink(ring=None, recorder=None, refusal=lambda: None)  # type: ignore[arg-type]
    s.watch_detector(lambda: next(states, "Idle"), lambda: 20)
    monkeypatch.setattr(appliance, "ABORT_STATE_SECONDS", 5.0)
    assert s._aborted_at_the_camera(20) is True


def test_the_reduction_is_the_armed_run_s_from_acquire_1_on() -> None:
    """A control-room probe: a Mode put between the appliance's Acquire 1 and its series' start was
    taken, and the run Acquire had started ran in the new mode. From Acquire 1 on, the mode and the
    parameters belong to that run."""
    from edge.config import ReductionSettings
    from edge.errors import Refused
    from edge.reduction_control import ReductionControl

    s = RingSink(ring=None, recorder=None, refusal=lambda: None)  # type: ignore[arg-type]
    control = ReductionControl(ReductionSettings(), open_run=s.run_or_opening)
    assert control.update({"mode": "serial"})["mode"] == "serial"  # between runs: taken
    s.set_armed(True)
    with pytest.raises(Refused, match="armed by Acquire 1"):
        control.update({"mode": "powder"})
    s.set_armed(False)  # that acquisition is over
    assert control.update({"mode": "powder"})["mode"] == "powder"
