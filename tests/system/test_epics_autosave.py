"""System test: the camera and writer setpoints a client put come back after a daemon restart (autosave).

Real processes, as in ``test_epics_control.py`` (whose `Stack` this reuses): ``edge sim --ioc`` and
``edge run`` with its IOC; this process puts values with pyepics, kills the daemon (SIGKILL, then a clean
SIGTERM), starts it again on the same store and reads the readbacks back, as areaDetector's autosave
would show them.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from edgeprocs import wait_for
from test_epics_control import Stack

pytestmark = pytest.mark.timeout(240)

#: setpoint: (value put, what its _RBV reads back)
PUTS: dict[str, tuple[Any, Any]] = {
    "NumImages": (2000, 2000),
    "AcquirePeriod": (0.01, 0.01),
    "AcquireTime": (0.004, 0.004),
    "ImageMode": (2, "Continuous"),
    "TriggerMode": (1, "External"),
    "FrameType": (2, "FlatField"),
    "HDF1:NumCapture": (150, 150),
    "HDF1:FileName": ("scan_0007", "scan_0007"),
    "HDF1:FileTemplate": ("%s%s_%3.3d.h5", "%s%s_%3.3d.h5"),
    "HDF1:FileNumber": (42, 42),
    "HDF1:AutoIncrement": (1, "Yes"),
    "HDF1:MinCallbackTime": (0.25, 0.25),
}


def _read(stack: Stack, name: str) -> Any:
    import epics

    pv = epics.get_pv(stack.prefix + name)
    assert pv.wait_for_connection(timeout=10), name
    return pv.get(timeout=5, as_string=isinstance(PUTS.get(name.removesuffix("_RBV"), (0, 0))[1], str))


def _shown(stack: Stack) -> dict[str, Any]:
    return {name: _read(stack, f"{name}_RBV") for name in PUTS}


def _expected(values: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    return {
        name: pytest.approx(shown) if isinstance(shown, float) else shown
        for name, (_, shown) in values.items()
    }


def test_setpoints_put_before_a_restart_are_the_readbacks_after_it(idle_stack: Stack) -> None:
    import epics

    stack = idle_stack
    defaults = _shown(stack)
    assert defaults["NumImages"] == 1 and defaults["AcquirePeriod"] == pytest.approx(0.05)
    for name, (value, _) in PUTS.items():
        assert epics.caput(stack.prefix + name, value, wait=True, timeout=10) == 1, name
    assert _shown(stack) == _expected(PUTS)
    saved = json.loads((stack.tmp_path / "store" / "setpoints.json").read_text())
    assert saved["values"]["NumImages"] == 2000 and "Acquire" not in saved["values"]

    # kill -9: nothing is flushed at exit, the file written at each put is what comes back
    stack.kill("daemon", signal.SIGKILL)
    stack.start_daemon()
    wait_for(lambda: _shown(stack) == _expected(PUTS), 10, f"the restored readbacks\n{stack.log('daemon')}")
    assert _read(stack, "NumImages") == 2000  # the setpoint itself too, as autosave restores it
    assert _read(stack, "AcquirePeriod") == pytest.approx(0.01)

    # a clean restart keeps a value put after the last restart
    assert epics.caput(stack.prefix + "NumImages", 35, wait=True, timeout=10) == 1
    stack.kill("daemon", signal.SIGTERM)
    stack.start_daemon()
    after = {**PUTS, "NumImages": (35, 35), "HDF1:NumCapture": (35, 35)}  # (NumCapture follows NumImages)
    wait_for(lambda: _shown(stack) == _expected(after), 10, f"the restored readbacks\n{stack.log('daemon')}")
