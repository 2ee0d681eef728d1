"""The camera and file-writer setpoints kept across a daemon restart, as areaDetector's autosave keeps them.

`edge.pv_table.AUTOSAVED` names them (``NumImages``, ``AcquirePeriod``, ``AcquireTime``, ``ImageMode``,
``TriggerMode``, ``FrameType``, the ``HDF1:`` file settings, ...: every read/write setpoint that
configures the next acquisition or the writer; not the actions such as ``Acquire`` or ``HDF1:Capture``,
the counters, nor ``Mode`` and the ``Reduction:`` parameters, which ``reduction.json`` keeps). The IOC
saves their accepted values in ``STORE/setpoints.json`` (written whole, then renamed into place) after
each accepted put, and restores them when it builds its records, before `iocInit` lets a client in. A
saved value the current checks refuse (a limit narrowed, a ``FilePath`` outside ``store.roots`` now) is
logged, naming the PV and why, and that PV starts at its default; a file that cannot be read is logged
and every PV starts at its default. Nothing here imports softioc.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge.pv_table import PvSpec

__all__ = ["AUTOSAVE_NAME", "SetpointAutosave"]

log = logging.getLogger(__name__)

AUTOSAVE_NAME = "setpoints.json"  # in the store's directory, beside the ledger and reduction.json


def _type_refusal(spec: PvSpec, value: Any) -> str | None:
    """Why a JSON value is not of ``spec``'s type (the IOC's own checks then judge its value)."""
    if spec.kind in ("boolOut", "mbbOut", "longOut"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{value!r} is not an integer"
    if spec.kind == "aOut":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"{value!r} is not a number"
    if spec.kind in ("stringOut", "longStringOut"):
        return None if isinstance(value, str) else f"{value!r} is not text"
    return f"a {spec.kind} record is not restored"


class SetpointAutosave:
    """Saves and restores the setpoints ``specs`` in the JSON file ``path`` (None: nothing is kept)."""

    def __init__(self, path: Path | None, specs: Iterable[PvSpec]) -> None:
        self.path = path
        self._specs = {spec.name: spec for spec in specs}
        self._saved: dict[str, Any] | None = None  # what the file holds now (no rewrite when unchanged)

    def restore(self, refusal: Callable[[PvSpec, Any], str | None]) -> dict[str, Any]:
        """The saved values ``refusal`` (the IOC's put checks: why a value is refused, or None) accepts,
        by PV name. Every other saved value is logged with its reason and left out (its PV starts at its
        default); an unreadable file is logged and gives nothing. Never raises."""
        if self.path is None:
            return {}
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning(
                "setpoints saved in %s cannot be read (%s): every setpoint starts at its default",
                self.path,
                error,
            )
            return {}
        values = saved.get("values") if isinstance(saved, dict) else None
        if not isinstance(values, dict):
            log.warning(
                'setpoints saved in %s are not in the form this edge writes ({"values": {PV: value}}):'
                " every setpoint starts at its default",
                self.path,
            )
            return {}
        restored: dict[str, Any] = {}
        refused: list[str] = []
        for name, value in values.items():
            spec = self._specs.get(name)
            if spec is None:
                log.info("setpoint %s saved in %s is not one this edge keeps: ignored", name, self.path)
                continue
            try:
                reason = _type_refusal(spec, value) or refusal(spec, value)
            except Exception as error:  # a check that fails refuses the value; the daemon starts
                reason = f"cannot check it ({type(error).__name__}: {error})"
            if reason is not None:
                shown = ascii(value)
                shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
                refused.append(f"{name} = {shown} ({str(reason)[:200]})")
                continue
            restored[name] = value
        if refused:  # one line naming every one (a line each was cut short by the repeated-line summary)
            log.warning(
                "%d setpoints saved in %s are refused, each starts at its default: %s",
                len(refused),
                self.path,
                "; ".join(refused),
            )
        if restored:
            log.info(
                "restored %d setpoints saved before the restart (%s in %s)",
                len(restored),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_number(saved.get("saved_at")))),
                self.path,
            )
        self._saved = dict(values)
        return restored

    def save(self, values: dict[str, Any]) -> None:
        """Keep ``values`` (every autosaved setpoint's accepted value) across a restart: written whole to
        a ``.part`` file, synced, then renamed over the last (a crash leaves the old file or the new one).
        A failure (a full disk) is logged; the values still apply."""
        if self.path is None:
            return
        kept = {name: value for name, value in values.items() if name in self._specs}
        if kept == self._saved:
            return
        part = self.path.with_name(self.path.name + ".part")
        try:
            with open(part, "w", encoding="utf-8") as handle:
                json.dump({"saved_at": time.time(), "values": kept}, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(part, self.path)
        except (OSError, ValueError, TypeError) as error:
            log.warning("cannot save the setpoints in %s (%s): not kept across a restart", self.path, error)
            with contextlib.suppress(OSError):
                part.unlink()
            return
        self._saved = kept


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
