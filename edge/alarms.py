"""Alarms: what an operator must see now, each tied to a run or to a condition, and who acknowledged it.

:func:`current_alarms` derives the alarms from one status document (the view's ``status()``), so an
alarm exists exactly while its condition holds: a storage alarm while retention reports one, a loss
alarm while the run it belongs to is the run on screen (a clean new run after a faulty one shows none;
the faulty run keeps its losses in its own row of the runs table). Every alarm has a stable ``id``
(``run:<uid>:lost``, ``condition:storage``, ``thread:<name>``...), a ``scope`` (``run``, ``condition``
or ``daemon``: since this daemon started) and a ``severity`` (``major`` or ``minor``).

:class:`AlarmBook` is the only state: when each active alarm was first seen and whether someone
acknowledged it (through the token-protected ``POST /api/alarms/{id}/ack``). An acknowledgement lasts
while the alarm does; once the condition clears the alarm and its acknowledgement are forgotten, so the
same condition coming back is a new alarm that needs a new acknowledgement.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge.errors import NotFound

#: a mode's kernels loading this long raise ``condition:mode_warming:MODE`` (cached ones load in ~1-2 s)
WARMING_ALARM_SECONDS = 5.0


UUID_HEAD = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-")


def short_uid(uid: str | None) -> str:
    """A run's short name: a UUID's first 8 characters; a name the detector gave, whole up to 16
    characters, else its head and tail (two runs "beamtime-2026-...-crystal-042" and "...-043" were both
    "beamtime", an outside probe). The dashboard's ``shortUid`` follows the same rule."""
    if not uid:
        return "?"
    if UUID_HEAD.match(uid) or len(uid) <= 8:
        return uid[:8]
    return uid if len(uid) <= 16 else f"{uid[:8]}…{uid[-6:]}"


def _alarm(alarm_id: str, scope: str, severity: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": alarm_id,
        "source": alarm_id,
        "scope": scope,
        "severity": severity,
        "message": message,
        **extra,
    }


def thread_alarms(threads: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A thread that is dead or restarting (major), or that recovered from errors (minor)."""
    out = []
    for name, thread in threads.items():
        state = thread.get("state")
        if state in ("dead", "restarting"):
            errors = thread.get("errors", 0)
            message = f"thread {name} {state} after {errors} error(s): {thread.get('last_error', '')}"
            out.append(_alarm(f"thread:{name}", "condition", "major", message))
        elif thread.get("errors"):
            message = (
                f"thread {name} restarted {thread.get('restarts', 0)} time(s); last error:"
                f" {thread.get('last_error', '')}"
            )
            out.append(_alarm(f"thread:{name}", "condition", "minor", message))
    return out


def current_alarms(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every alarm the status document implies, worst first (without acknowledgement state)."""
    out: list[dict[str, Any]] = []
    appliance = status.get("appliance") or {}
    out += thread_alarms(appliance.get("threads") or {})

    disk_full = (status.get("store") or {}).get("disk_full") or {}
    if disk_full.get("full"):
        if (status.get("retention") or {}).get("writing_held"):  # (it read "recorded lost" while the
            # appliance held the detector back and lost nothing: an outside chaos probe)
            doing = "writing waits for room and the detector is held back"
        elif appliance.get("recovery_waits_for_held_records"):  # no reader: nothing taken, nothing lost
            doing = "no frames are taken until the last daemon's held records are written"
        else:
            doing = "frames that cannot be written are recorded lost (disk_full)"
        message = f"Disk full: {disk_full.get('reason', '')}; {doing}, new runs refused"
        held = int((status.get("store") or {}).get("ledger_writes_held") or 0)
        if held:
            message += f"; {held:,} ledger record(s) held in memory until space returns"
        out.append(_alarm("condition:disk_full", "condition", "major", message))
    gone = (status.get("store") or {}).get("ledger_gone")
    if gone:
        out.append(
            _alarm(
                "condition:ledger",
                "condition",
                "major",
                f"The ledger {(status.get('store') or {}).get('ledger_path')} was {gone} under the running"
                " daemon: its records (runs, files, losses) go on into the file it opened, which edge where"
                " and the next start cannot see. At its stop the daemon writes them beside it as"
                " NAME.open-copy: put that in the ledger's place before the next start",
            )
        )
    restored = int((status.get("store") or {}).get("ledger_restored") or 0)
    if restored and not gone:
        out.append(
            _alarm(
                "condition:ledger_restored",
                "condition",
                "minor",
                f"The ledger was deleted under the running daemon and written back from the copy it had"
                f" open ({restored} time(s) since it started): every record kept. Find out what deleted it",
            )
        )
    queued = (status.get("pipeline") or {}).get("warming_next")
    for warming in (status.get("pipeline") or {}).get("warming") or ():
        seconds = float(warming.get("seconds") or 0)
        if seconds < WARMING_ALARM_SECONDS:
            continue
        reduced = int(warming.get("frames_reduced") or 0)
        if reduced:
            # not "Preparing": the mode runs (an outside probe read "Preparing serial mode: ... its kernels
            # ready; the rest are still loading" as contradicting itself, after its run had ended)
            message = (
                f"{warming.get('mode')} mode runs: {reduced:,} frames reduced with the kernels they needed;"
                f" kernels for other frames still load in the background ({seconds:.0f} s so far): a frame"
                " with missing pixels would wait for them, held in the ring (none lost)"
            )
        else:
            message = (
                f"Preparing {warming.get('mode')} mode: its kernels are loading ({seconds:.0f} s so far;"
                " compiled on this install's first use of the mode, which takes tens of seconds, minutes"
                " on a busy machine). A run in this mode that starts meanwhile may wait for the ones it"
                " needs, its frames held in the ring (none lost)"
            )
        if queued and queued != warming.get("mode"):
            message += (
                f"; {queued} mode's kernels (the next run's) load after these: a run in {queued} mode waits"
                " meanwhile, its frames held in the ring (numba compiles one mode at a time)"
            )
        out.append(_alarm(f"condition:mode_warming:{warming.get('mode')}", "condition", "minor", message))
    refused = appliance.get("reload_refused")
    if refused:
        error = str(refused.get("error"))
        # an empty file is refused on reload only (being written?): a restart would start on every
        # default, not refuse it (the alarm said it would: an outside probe)
        after = (
            "a restart would start on every default (other ports, another store): write the file, then reload"
            if "holds no settings" in error
            else "a restart would refuse the same settings: correct them, then reload"
        )
        out.append(
            _alarm(
                "condition:settings",
                "condition",
                "minor",
                f"Reload refused (SIGHUP): {error}; the daemon runs on the settings it had, and {after}",
            )
        )
    retention = status.get("retention") or {}
    if retention.get("alarm"):
        out.append(_alarm("condition:storage", "condition", "major", f"Storage alarm: {retention['alarm']}"))
    elif retention.get("accepting_runs") is False and not disk_full.get("full"):  # (said by disk_full)
        out.append(_alarm("condition:storage", "condition", "major", "The store refuses new runs"))

    detector = status.get("detector") or {}
    if detector.get("enabled") and (
        detector.get("connected") is False or detector.get("state") == "Disconnected"
    ):
        prefix = f" ({detector['prefix']})" if detector.get("prefix") else ""
        out.append(
            _alarm(
                "condition:detector",
                "condition",
                "major",
                f"Detector disconnected{prefix}: no frames can arrive",
            )
        )

    without = detector.get("last_without_frames") if detector.get("enabled") else None
    if without:
        when = time.strftime("%H:%M:%S", time.localtime(float(without.get("at") or 0)))
        out.append(
            _alarm(
                "condition:acquire_without_frames",
                "condition",
                "major",
                (
                    f"A capture closed at {when}: the camera took {without.get('frames_taken')} frame(s)"
                    if without.get("capture")
                    else f"An Acquire at {when}: the detector"
                    + (" (aborted) was armed for" if without.get("aborted") else " took its")
                    + f" {without.get('frames_armed')} frame(s)"
                )
                + " and no series came on the stream: they are in no run (stream.endpoint not the"
                " detector's, or its"
                " link down?). Should the detector send them later, they are stored as a run of their own;"
                " cleared when an Acquire's or a capture's frames come",
            )
        )

    run = (status.get("counts") or {}).get("run") or {}
    uid = run.get("run_uid")
    if uid and int(run.get("frames_lost") or 0) > 0:
        records = int(run.get("loss_records") or 0)
        message = (
            f"Run {short_uid(uid)}: {run['frames_lost']:,} frames lost ({records:,} loss"
            f" record{'' if records == 1 else 's'}); open the run below for the ranges and reasons"
        )
        out.append(_alarm(f"run:{uid}:lost", "run", "major", message, run_uid=uid))
    failed = (status.get("pipeline") or {}).get("mode_failed") or {}
    if uid and failed.get("run_uid") == uid:
        message = (
            f"Run {short_uid(uid)}: mode {failed.get('mode')} could not start ({failed.get('error')}): its"
            " frames are stored raw, without the mode's products"
        )
        out.append(_alarm(f"run:{uid}:mode", "run", "major", message, run_uid=uid))
    if uid and int(run.get("frames_incomplete") or 0) > 0:
        count = run["frames_incomplete"]
        message = f"Run {short_uid(uid)}: {count:,} frames incomplete (kept, missing pixels flagged)"
        out.append(_alarm(f"run:{uid}:incomplete", "run", "minor", message, run_uid=uid))

    calibration = appliance.get("calibration_refused_at_next_start")
    if calibration:  # (`edge.appliance.CalibrationWatch`)
        out.append(
            _alarm(
                "condition:calibration",
                "condition",
                "major",
                f"The calibration files on disk would refuse the next start: {calibration}. This daemon goes"
                " on with the copies it loaded at its start; fix or restore the files before a restart",
            )
        )

    waits = int(appliance.get("recovery_waits_for_held_records") or 0)
    if waits:  # (`edge.appliance.Appliance.waiting_for_held`)
        out.append(
            _alarm(
                "daemon:recovery_waits",
                "daemon",
                "major",
                f"The disk is full and {waits} ledger record(s) the last daemon held back cannot be written:"
                " this daemon takes no frames and refuses runs until they are and its recovery has run."
                " Make room on the store's disk",
            )
        )
    recovery = appliance.get("recovery") or {}
    parts = []
    if recovery.get("runs_failed"):
        failed = ", ".join(short_uid(u) for u in recovery["runs_failed"])
        parts.append(f"{len(recovery['runs_failed'])} run(s) marked failed ({failed})")
    if recovery.get("salvaged"):
        parts.append(f"{len(recovery['salvaged'])} closed file(s) salvaged")
    if recovery.get("quarantined"):
        parts.append(f"{len(recovery['quarantined'])} half-written file(s) quarantined")
    went_on = recovery.get("continuations_lost") or {}
    if went_on:  # (`edge.recovery._continuations_unrecorded`)
        parts.append(
            f"{len(went_on)} run(s) whose series went on after a restart in a run the daemon died before"
            f" recording ({', '.join(short_uid(u) for u in went_on)})"
        )
    lost = int(recovery.get("frames_lost") or 0)
    if lost > 0:
        parts.append(f"{lost:,} frames recorded lost (daemon_crash): open the failed run(s) below")
    earlier = recovery.get("earlier_runs_failed") or []
    if earlier:  # a start killed before its own recovery's alarm was seen (an outside probe)
        before = int(recovery.get("earlier_frames_lost") or 0)
        at = recovery.get("earlier_failed_at")
        when = (
            f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(float(at)))} UTC"
            if isinstance(at, (int, float)) and math.isfinite(at)
            else ""
        )
        parts.append(
            f"{len(earlier)} run(s) failed{when} by an earlier start that ended within a minute of its"
            f" recovery ({', '.join(short_uid(u) for u in earlier)}; {before:,} frames recorded lost)"
        )
        lost += before
    if parts:
        # frames lost to the crash are as grave as a run's losses (an outside probe: 64 frames lost read
        # "minor" beside another run's 5 lost, "major")
        severity = "major" if lost > 0 else "minor"
        out.append(
            _alarm("daemon:recovery", "daemon", severity, f"Recovered after a crash: {'; '.join(parts)}")
        )

    outlook = status.get("upstream_outlook") or {}
    if outlook.get("state") == "stalled":
        out.append(
            _alarm(
                "condition:upstream", "condition", "minor", f"Upstream stalled: {outlook.get('reason', '')}"
            )
        )

    unreadable = (status.get("upstream") or {}).get("unreadable_files") or []
    if unreadable:
        first = unreadable[0]
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        message = (
            f"Upstream cannot send {len(unreadable)} stored file(s) not yet verified: {first.get('path')}"
            f" ({first.get('error')}){more}. Restore the file(s) from a copy: they are tried again every"
            " minute, never purged while unverified; every other file is sent meanwhile"
        )
        out.append(_alarm("condition:upstream_unreadable", "condition", "major", message))

    receiver = status.get("receiver") or {}
    silent, limit = receiver.get("seconds_silent"), receiver.get("silent_alarm_seconds")
    if silent is not None and limit is not None and silent >= limit:
        message = (
            f"Series {receiver.get('series')} is open but the detector has sent nothing for {silent:.0f} s:"
            " it may have stopped without ending the series (its run stays open until the series ends or"
            " the next one starts)"
        )
        out.append(_alarm("condition:stream_silent", "condition", "minor", message))
    if receiver.get("dropped_in_series") is not None:
        message = (
            f"The detector's stream connection dropped during series {receiver['dropped_in_series']}"
            f" ({receiver.get('connections_dropped_in_series', 0)} time(s) since the daemon started): the"
            " frames in flight are recorded lost; the receiver reconnects by itself when the detector is back"
        )
        out.append(_alarm("condition:stream_dropped", "condition", "minor", message))
    errors = dict(receiver.get("errors") or {})
    # multipart messages the Stream V2 reader drops before its decoder sees them are rejected messages
    # too: a sender of the JSON multipart format sends nothing else, so they are often all there is
    multipart = int(receiver.get("messages_multipart_rejected") or 0)
    if multipart:
        errors["multipart"] = multipart
    if errors:
        text = ", ".join(f"{k} {v}" for k, v in errors.items())
        if multipart:
            text += " (multipart: a JSON-format sender into this Stream V2 receiver? check stream.format)"
        elif errors.get("malformed_json"):  # the other way round: CBOR is no JSON (an outside probe)
            text += (
                " (malformed_json: a Stream V2 (CBOR) sender into this JSON receiver? check stream.format)"
            )
        out.append(_alarm("condition:receiver", "condition", "minor", f"Receiver errors: {text}"))
    if appliance.get("stopping"):
        out.append(_alarm("condition:stopping", "condition", "minor", "The appliance is stopping"))
    out.sort(key=lambda a: a["severity"] != "major")  # stable: major first, each kind in the order above
    return out


class AlarmBook:
    """When each active alarm was first seen, and its acknowledgement; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._first_seen: dict[str, float] = {}
        self._acks: dict[str, dict[str, Any]] = {}
        self._active: set[str] = set()

    def annotate(self, alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``alarms`` with ``since`` and ``acknowledged`` (plus who and when); forgets cleared alarms."""
        now = self._clock()
        ids = {a["id"] for a in alarms}
        with self._lock:
            for gone in set(self._first_seen) - ids:
                self._first_seen.pop(gone, None)
                self._acks.pop(gone, None)
            self._active = ids
            out = []
            for alarm in alarms:
                since = self._first_seen.setdefault(alarm["id"], now)
                ack = self._acks.get(alarm["id"])
                out.append(
                    {
                        **alarm,
                        "since": since,
                        "acknowledged": ack is not None,
                        **({"ack": ack} if ack else {}),
                    }
                )
        return out

    def acknowledge(self, alarm_id: str, by: str = "api") -> dict[str, Any]:
        """Mark the active alarm ``alarm_id`` acknowledged; NotFound when no such alarm is active."""
        with self._lock:
            if alarm_id not in self._active:
                raise NotFound(f"no active alarm {alarm_id!r} (it may have cleared)")
            ack = self._acks.setdefault(alarm_id, {"at": self._clock(), "by": by})
        return {"id": alarm_id, "acknowledged": True, "ack": ack}
