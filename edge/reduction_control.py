"""The reduction mode and its per-run parameters, changeable between runs (config, `Mode` PV, REST).

The settings give the starting values; `ReductionControl.update` changes them for the next run. A change
while a run is open is refused with the reason (the run keeps the parameters it started with); a bad
value is refused naming the key and the allowed range. Each run records the parameters it ran with.

Changes are kept across a restart, as areaDetector's autosave keeps PV values: each accepted change is
saved (``STORE/reduction.json``) with a digest of the settings it started from, and a daemon started
on the same settings restores them. A daemon started on other settings (its config file's
``[reduction]`` edited since) takes the new settings, and says that it did not restore the changes.
The IOC's camera and writer setpoints are kept beside it (`edge.setpoint_autosave`, ``setpoints.json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config import MODES, ReductionSettings, describe_validation_error
from edge.errors import ConfigError, Refused

log = logging.getLogger(__name__)

#: what may change between runs; the rest of ``reduction.*`` (backend, bins, geometry files) needs a restart
RUN_PARAMETERS = ("mode", "cake_bins", "roi", "serial", "tomo")
AUTOSAVE_NAME = "reduction.json"  # in the store's directory, beside the ledger


def _run_parameters(settings: ReductionSettings) -> dict[str, Any]:
    """The run parameters of ``settings`` as JSON."""
    current = settings.model_dump(mode="json")
    return {key: current[key] for key in RUN_PARAMETERS}


#: reduction settings that say how a run is computed, not what it gives: not compared by `settings_changed`
HOW_COMPUTED = ("backend", "frame_threads", "analysis_threads")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested JSON object as {dotted name: value}."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def settings_changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """The reduction settings (JSON, as a run records them) that differ between ``before`` and ``after``,
    but for the mode (said apart) and `HOW_COMPUTED`: {dotted name: [before, after]}, sorted; a name one
    side lacks reads None there (a setting added since)."""
    old, new = _flat(before), _flat(after)
    skip = {"mode", *HOW_COMPUTED}
    return {
        name: [old.get(name), new.get(name)]
        for name in sorted(set(old) | set(new))
        if name.split(".")[0] not in skip and old.get(name) != new.get(name)
    }


def _digest(settings: ReductionSettings) -> str:
    """A digest of the run parameters ``settings`` give: which starting values a saved change was made
    from."""
    text = json.dumps(_run_parameters(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ReductionControl:
    """Holds the reduction parameters the next run will use."""

    def __init__(
        self,
        settings: ReductionSettings,
        open_run: Callable[[], str | None],
        on_change: Callable[[ReductionSettings], None] | None = None,
        frame_shape: tuple[int, int] | None = None,
        autosave: Path | None = None,
    ) -> None:
        self._current = settings
        self._open_run = open_run
        self._on_change = on_change  # told each accepted change (the daemon loads the new kernels then)
        self._frame_shape = frame_shape  # (rows, columns): ROI boxes and tomo rows must lie inside it
        # the settings file's own boxes and rows too: a bad one is a failed start, not a run of raw frames
        self._check_frame(settings, {"roi": settings.roi, "tomo": settings.tomo})
        self._lock = threading.Lock()
        self.changes = 0
        self._autosave = autosave  # where accepted changes are kept across a restart (None: not kept)
        self._origin = _digest(settings)  # the starting values they were made from
        self.restored: dict[str, Any] | None = None  # the parameters restored at start, if any
        if autosave is not None:
            self._restore(autosave, settings)

    def _restore(self, path: Path, settings: ReductionSettings) -> None:
        """Take back the changes saved before a restart, when they were made from these settings."""
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            log.warning("reduction changes saved in %s cannot be read (%s): not restored", path, error)
            return
        if not isinstance(saved, dict) or not isinstance(saved.get("parameters"), dict):
            log.warning(
                "reduction changes saved in %s are not in the form this edge writes: not restored", path
            )
            return
        if saved.get("from_settings") != self._origin:
            log.warning(
                "the reduction settings changed since the changes saved in %s (made over REST or EPICS"
                " before the restart): the new settings apply, the saved changes are not restored (and"
                " removed: they never come back)",
                path,
            )
            with contextlib.suppress(OSError):
                path.unlink()
            return
        merged = {**settings.model_dump(), **saved["parameters"]}
        try:
            candidate = ReductionSettings.model_validate(merged)
            self._check_frame(candidate, saved["parameters"])
        except (ValidationError, ConfigError) as error:
            log.warning("reduction changes saved in %s are not valid here (%s): not restored", path, error)
            return
        self._current = candidate
        self.restored = self.parameters()
        # each restored parameter named (an outside probe read "mode serial" alone, its min_peaks and
        # min_snr restored too)
        changed = settings_changed(settings.model_dump(mode="json"), candidate.model_dump(mode="json"))
        log.info(
            "restored the reduction changes made before the restart (saved %s in %s): mode %s%s",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(saved.get("saved_at") or 0))),
            path,
            candidate.mode,
            "".join(f", {name} {new!r} (the settings' {old!r})" for name, (old, new) in changed.items()),
        )

    def _save(self, settings: ReductionSettings) -> None:
        """Keep ``settings``' run parameters across a restart (written whole, then renamed into place)."""
        if self._autosave is None:
            return
        record = {
            "from_settings": self._origin,
            "saved_at": time.time(),
            "parameters": _run_parameters(settings),
        }
        part = self._autosave.with_name(self._autosave.name + ".part")
        try:
            with open(part, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(part, self._autosave)
        except OSError as error:  # (a full disk) the change applies; it is not kept across a restart
            log.warning(
                "cannot save the reduction change in %s (%s): not kept across a restart",
                self._autosave,
                error,
            )
            with contextlib.suppress(OSError):
                part.unlink()

    def current(self) -> ReductionSettings:
        with self._lock:
            return self._current

    def parameters(self) -> dict[str, Any]:
        """The per-run parameters as JSON (what ``GET /api/reduction`` returns)."""
        return _run_parameters(self.current())

    def check_mode(self, mode: str) -> str | None:
        """Why ``mode`` cannot be set now, or None."""
        if mode not in MODES:
            return f"reduction mode {mode!r} is not one of {', '.join(MODES)}"
        run = self._open_run()
        if run is not None:
            return f"run {run} is open: the reduction mode changes between runs"
        return None

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (a subset of RUN_PARAMETERS; ``serial``/``tomo`` may be partial) for the
        next run; returns the new parameters. Raises Refused during a run, ConfigError on a bad value."""
        if not isinstance(changes, dict):
            raise ConfigError("reduction changes must be an object of parameter: value")
        unknown = sorted(set(changes) - set(RUN_PARAMETERS))
        if unknown:
            key = unknown[0]
            if key not in ReductionSettings.model_fields:  # not a reduction setting at all
                raise ConfigError(
                    f"{json.dumps(key[:80])} is no reduction parameter;"
                    f" these can change: {', '.join(RUN_PARAMETERS)}"
                )
            raise ConfigError(
                f"reduction.{key} cannot change while the daemon runs; these can: {', '.join(RUN_PARAMETERS)}"
            )
        with self._lock:
            run = self._open_run()
            if run is not None:
                raise Refused(f"run {run} is open: reduction parameters change between runs")
            merged = self._current.model_dump()
            for key, value in changes.items():
                if key in ("serial", "tomo") and isinstance(value, dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            try:
                candidate = ReductionSettings.model_validate(merged)
            except ValidationError as error:
                raise ConfigError(describe_validation_error(error, prefix="reduction")) from None
            self._check_frame(candidate, changes)
            self._current = candidate
            self.changes += 1
            changed = self._current
            self._save(changed)
        if self._on_change is not None:
            self._on_change(changed)
        return self.parameters()

    def _check_frame(self, candidate: ReductionSettings, changes: dict[str, Any]) -> None:
        """Refuse ROI boxes and tomography rows being set outside the frame, as the PVs do (a row outside
        it would make the run fall back to raw frames, a box outside it would be cut silently)."""
        if self._frame_shape is None:
            return
        height, width = self._frame_shape
        if "roi" in changes:
            for r0, r1, c0, c1 in candidate.roi:
                if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
                    raise ConfigError(
                        f"reduction.roi box [{r0}, {r1}, {c0}, {c1}] is not inside the {height}x{width} frame"
                        f" (0 <= row0 < row1 <= {height}, 0 <= col0 < col1 <= {width})"
                    )
        if "tomo" in changes:
            bad = [row for row in candidate.tomo.slices if not 0 <= row < height]
            if bad:
                raise ConfigError(f"reduction.tomo.slices row {bad[0]} is not in 0..{height - 1}")
