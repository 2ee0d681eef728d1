"""The read-only view of a running appliance: what the web API, the IOC, metrics and the watchdog read.

None of them holds the appliance or reaches into a stage: they are handed this view, which asks each
stage for its counters and the ledger for its totals (each fact computed once, in the part that owns
it). Nothing here changes state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from edge.alarms import AlarmBook, current_alarms
from edge.config import Settings
from edge.counter_scopes import CounterScopes
from edge.errors import NotFound
from edge.frame_format import FrameFormat, preview_image
from edge.http_guard import REFUSED, requests_refused
from edge.ledger import Ledger
from edge.upstream.outlook import rate_window, stall, upstream_outlook
from edge.where import resolve_run, run_config, where_report
from kernels import Geometry

log = logging.getLogger(__name__)

#: how long a mode's kernels loading (their first compile) holds the ring's frames back on purpose, not
#: a stall for the watchdog (a first compile takes tens of seconds, minutes on a busy machine)
WARMING_HOLD_SECONDS = 600.0


class _Counted(Protocol):
    def counters(self) -> dict[str, Any]: ...


class _Preview(Protocol):
    preview: tuple[np.ndarray, dict[str, Any]] | None
    run_uid: str | None


class _Profiled(Protocol):
    latest_profile: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None

    def counters(self) -> dict[str, Any]: ...


@dataclass
class ApplianceParts:
    """What the view reads from; built by the appliance, never handed to the view's readers."""

    settings: Settings
    frame_format: FrameFormat
    geometry: Geometry
    backend_name: str
    ledger: Ledger
    source: Any
    ring: _Counted
    pipeline: _Profiled
    forwarder: _Counted
    retention: Any
    recorder: Any
    sink: _Preview
    recovery: dict[str, Any]
    # the last daemon's held ledger records the recovery waits for (`Appliance.waiting_for_held`; 0: none)
    recovery_waits: Callable[[], int]
    threads: Callable[[], dict[str, dict[str, Any]]]
    stopping: Callable[[], bool]
    kernels_loading: Callable[[], bool] = lambda: False  # the next run's kernels load (`WarmUps.busy`)
    kernels_queued: Callable[[], str | None] = lambda: None  # a mode whose load waits (`WarmUps.queued_mode`)
    # the last SIGHUP's reload, refused (bad settings): when and why; None once a reload succeeds
    reload_refused: Callable[[], dict[str, Any] | None] = lambda: None
    # why the calibration files on disk would refuse the next start (`CalibrationWatch`); None: they load
    calibration_problem: Callable[[], str | None] = lambda: None


class ApplianceView:
    """Read-only answers about one appliance (status, runs, previews, liveness)."""

    def __init__(self, parts: ApplianceParts) -> None:
        self._p = parts
        self.started_at = time.time()
        self._preview_doc: tuple[object, dict[str, Any]] | None = None  # the last preview, as sent
        self._gone_logged: str | None = None  # why the ledger file is gone, as last logged
        self._detector: Callable[[], dict[str, Any]] | None = None
        self.alarm_book = AlarmBook()  # acknowledgements (POST /api/alarms/{id}/ack); the view only reads it
        self._scopes = CounterScopes(parts.ledger.summary(), self.started_at)

    # -- facts fixed at start -------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._p.settings

    @property
    def frame_format(self) -> FrameFormat:
        return self._p.frame_format

    @property
    def geometry(self) -> Geometry:
        return self._p.geometry

    @property
    def backend_name(self) -> str:
        return self._p.backend_name

    def store_path(self) -> Path:
        return self._p.settings.store.path

    def attach_detector(self, view: Callable[[], dict[str, Any]]) -> None:
        """The appliance IOC reports the detector it drives through this (for ``status``)."""
        self._detector = view

    # -- live state -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        p = self._p
        ledger = p.ledger.summary()
        receiver = p.source.counters()
        disk = psutil.disk_usage(str(p.settings.store.path))
        upstream = p.forwarder.counters()
        # the run's vetoed count before the daemon's: a blank is counted in the daemon's first, so read
        # in this order the run's never exceeds the daemon's (a frame vetoed between the two reads)
        run_vetoed = p.pipeline.run_vetoed()
        pipeline = p.pipeline.counters()
        recorded = p.recorder.counters()
        counts = self._counts(ledger, receiver, int(pipeline.get("frames_vetoed", 0)), run_vetoed)
        doc: dict[str, Any] = {
            "server_time": time.time(),
            "appliance": {
                "uptime_seconds": round(time.time() - self.started_at, 3),
                "stopping": p.stopping(),
                "run_uid": p.sink.run_uid,
                "recovery": p.recovery,
                "recovery_waits_for_held_records": p.recovery_waits(),
                "reload_refused": p.reload_refused(),
                "calibration_refused_at_next_start": p.calibration_problem(),
                "threads": p.threads(),
                "api_connections_closed": {
                    kind: int(REFUSED[kind]) for kind in ("over_limit", "header_timeout")
                },
                "api_event_streams_refused": int(REFUSED["event_streams"]),
                "api_requests_refused": requests_refused(),
            },
            "frames": {
                "received": receiver.get("frames_received", 0),
                "stored": ledger["frames_stored"],
                "delivered": ledger["frames_verified"],
                "lost": ledger["frames_lost"],
                "incomplete": ledger["frames_incomplete"],
                "vetoed": counts["all_time"]["frames_vetoed"],
                "loss_records": ledger["loss_records"],
            },
            "receiver": receiver,
            "ring": p.ring.counters(),
            # a mode whose kernels load after those loading now (one load at a time): the warming alarm
            # names it, not only the mode loading (an outside probe waited on tomo under a serial alarm)
            "pipeline": {**pipeline, "warming_next": p.kernels_queued()},
            "store": {
                "path": str(p.settings.store.path),
                **{
                    key: int(recorded.get(key, 0))
                    for key in (
                        "files_closed",
                        "run_uids_replaced",
                        "runs_failed_all_lost",
                        "header_fields_ignored",
                        "header_fields_truncated",
                        "ledger_writes_not_journaled",
                    )
                },
                "disk_full": p.recorder.disk.status() if p.recorder.disk is not None else {"full": False},
                "ledger_writes_held": p.recorder.held(),  # records a full disk refused, made when it clears
                "ledger_path": str(p.ledger.path),
                "ledger_gone": self._ledger_gone(),
                "ledger_restored": p.ledger.restored,
            },
            "ledger": ledger,
            "upstream": upstream,
            "upstream_outlook": upstream_outlook(
                p.ledger,
                ledger["bytes_pending"],
                upstream,
                time.time(),
                local_bytes=int(p.ledger.store_usage().get("local", 0)),
            ),
            "retention": self._retention_status(),
            "disk": {"total": disk.total, "used": disk.used, "free": disk.free, "percent": disk.percent},
            "detector": self.detector_status(),
            "counts": counts,
        }
        doc["alarms"] = self.alarm_book.annotate(current_alarms(doc))
        return doc

    def _counts(
        self,
        ledger: dict[str, Any],
        receiver: dict[str, Any],
        vetoed_since_start: int,
        run_vetoed: tuple[str | None, int],
    ) -> dict[str, Any]:
        """Frame counters scoped to this run (the current one, else the last), the daemon, all time."""
        run_uid = self._p.sink.run_uid or self._p.ledger.newest_run()  # the open run, else the last one
        totals = active = None
        if run_uid is not None:
            try:
                active = self._p.ledger.run(run_uid).get("ended_at") is None
                if active and self._p.sink.run_uid is None and self._p.recovery_waits():
                    active = False  # a run the last daemon's crash cut, its recovery waiting for space
                totals = self._p.ledger.run_totals(run_uid)
            except NotFound:  # not in the ledger yet
                pass
        received = int(receiver.get("frames_received", 0) or 0)
        vetoed_run, vetoed = run_vetoed
        live = vetoed if active and vetoed_run == run_uid else None  # a run's own count once it has ended
        scopes = self._scopes
        counts = scopes.scopes(ledger, received, run_uid, bool(active), totals, vetoed_since_start, live)
        run_received = self._p.sink.received_in(run_uid)
        if run_received is not None:  # counted by this daemon's receiver since the run opened
            counts["run"]["frames_received"] = run_received
        return counts

    def alarms(self) -> list[dict[str, Any]]:
        """Conditions an operator must see now (each clears when its condition clears; edge/alarms.py)."""
        return list(self.status()["alarms"])

    def detector_status(self) -> dict[str, Any]:
        view = self._detector
        if view is None:
            return {"enabled": False}
        return {"enabled": True, **view()}

    def liveness(self) -> dict[str, Any]:
        """For the service watchdog: work waiting, a counter that grows with progress, thread states.

        Waiting that a restart cannot cure is not a stall: upstream chunks count as pending only while a
        consumer is connected (an HPC outage), and frames the pipeline holds back on purpose (the store
        full of unverified data, or a full disk: alarms say so) are reported as ``held_back``, not
        pending. What remains pending with no progress is a wedged data plane, which a restart fixes.
        """
        p = self._p
        self._ledger_gone()  # (a deleted ledger written back also where nothing asks for the status)
        ring = p.ring.counters()
        pipeline = p.pipeline.counters()
        ledger = p.ledger.summary()
        upstream = p.forwarder.counters()
        connected = [str(c.get("consumer")) for c in upstream.get("consumers", []) if c.get("connected")]
        chunks = ledger.get("chunks", {})
        # chunks count only while a connected consumer owes a confirmation: those another required
        # consumer, away, has yet to take wait for it (an outside probe: the watchdog withheld, the idle
        # appliance called stalled, while `tape` was down and `hpc` had confirmed everything)
        owed = bool(connected) and bool(p.ledger.consumers_owing(connected))
        upstream_pending = int(chunks.get("stored", 0)) + int(chunks.get("forwarded", 0)) if owed else 0
        acked = sum(int(c.get("chunks_acked") or 0) for c in ledger.get("consumers", []))
        held_back = self.held_back()
        frames_pending = int(ring.get("fill", 0)) + int(pipeline.get("queued", 0))
        return {
            "pending": (0 if held_back else frames_pending) + upstream_pending,
            "progress": int(ring.get("released", 0)) + acked,
            "threads": p.threads(),
            "held_back": held_back,
        }

    def _retention_status(self) -> dict[str, Any]:
        """Retention's status, ``accepting_runs`` and ``refusal`` as the appliance refuses a run: for a
        full disk too (it read true while every series was refused for the full disk, and the documented
        alert on ``edge_retention_accepting_runs == 0`` stayed silent: an outside probe)."""
        p = self._p
        status = p.retention.status()
        disk = p.recorder.disk
        refusal = (disk.refusal() if disk is not None else None) or status.get("alarm")
        status["refusal"] = refusal
        status["accepting_runs"] = bool(status.get("accepting_runs")) and refusal is None
        return status

    def _ledger_gone(self) -> str | None:
        """`Ledger.gone` once a deleted ledger was written back (`Ledger.restore_if_deleted`), logged
        once when it begins (an error: the records go where nothing reads them)."""
        self._p.ledger.restore_if_deleted()
        gone = self._p.ledger.gone()
        if gone != self._gone_logged:
            self._gone_logged = gone
            if gone is not None:
                log.error(
                    "the ledger %s was %s under the running daemon: its records go on into the file it"
                    " opened, which edge where and the next start cannot see (at its stop the daemon"
                    " writes them beside it as %s.open-copy)",
                    self._p.ledger.path,
                    gone,
                    self._p.ledger.path.name,
                )
        return gone

    def held_back(self) -> str | None:
        """Why the pipeline holds frames back on purpose now (store pressure, full disk), or None."""
        p = self._p
        disk = p.recorder.disk
        if disk is not None and disk.full:
            return "the disk is full"
        warming = [
            w for w in p.pipeline.counters().get("warming") or () if w["seconds"] < WARMING_HOLD_SECONDS
        ]
        if warming:  # a run's frames wait in the ring for them (alarm condition:mode_warming says so): a
            # first compile took 74 s on a busy machine, the watchdog's 30 s after 15 s of no progress
            # (an outside probe); a load still going after WARMING_HOLD_SECONDS is a stall again
            modes = ", ".join(str(w["mode"]) for w in warming)
            return f"a mode's kernels are loading ({modes}): the frames that need them wait in the ring"
        try:
            if p.retention.under_pressure():
                return (
                    "the store is full: writing waits for room (data not yet verified upstream, or"
                    " verified files being purged)"
                )
        except Exception:  # the ledger closing at shutdown: not held back by policy
            return None
        return None

    def series_open(self) -> bool:
        """True while the source is inside a series (header seen, end not yet)."""
        return bool(self._p.source.series_open)

    def frames_received(self) -> int:
        return int(self._p.source.counters().get("frames_received", 0))

    def series_frames(self) -> tuple[int, int]:
        """(series started so far, frames received since the newest started): the detector's current or
        last acquisition, whoever started it (this appliance's Acquire, or the camera's own)."""
        sink = self._p.sink
        return int(sink.series_starts), int(sink.series_received)

    def newest_frame(self) -> int | None:
        """The detector's number of the newest frame received (None before the first)."""
        return self._p.sink.newest_frame  # type: ignore[no-any-return]

    # -- runs -----------------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        return self._p.ledger.runs()

    def newest_runs(self, limit: int) -> list[dict[str, Any]]:
        return self._p.ledger.newest_runs(limit)

    def runs_page(self, limit: int | None, offset: int) -> tuple[list[dict[str, Any]], int]:
        """At most ``limit`` runs after the first ``offset``, oldest first, and how many there are."""
        return self._p.ledger.runs(limit, offset), self._p.ledger.run_count()

    def run(self, run_uid: str) -> dict[str, Any]:
        """The ledger's run row, its files, losses and totals, and the where-is-my-data report."""
        ledger = self._p.ledger
        run_uid = resolve_run(ledger, run_uid)
        out = {
            **ledger.run(run_uid),
            "files": ledger.files(run_uid),
            "losses": ledger.losses(run_uid),
            "totals": ledger.run_totals(run_uid),
            "where": where_report(
                ledger,
                run_uid,
                store=self._p.settings.store.path,
                held_end=self._p.recorder.held_end(run_uid),
                stalled=stall(
                    list(ledger.required_consumers),
                    forwarded := self._p.forwarder.counters(),
                    ledger.consumers_owing,
                ),
                window=rate_window(ledger.required_consumers, forwarded),
                unreadable={
                    str(u["path"]): f"the daemon cannot send it: {u['error']}"
                    for u in forwarded.get("unreadable_files") or ()
                },
            ),
            # which ledger this is: `edge where` asks the API on the configured port, which another
            # appliance may hold (an outside probe: its stall and consumers were shown for this run)
            "ledger": str(self._p.settings.ledger_path.resolve()),
        }
        if out["where"]["state"] == "running" and self._p.recovery_waits():
            # a start waiting for the last daemon's held records runs no run: this one's daemon died and
            # the recovery has yet to end it (an outside probe read "running" with no reader)
            out["where"]["state"] = "interrupted"
        return out

    def kernels_loading(self) -> bool:
        """Whether the next run's kernels are loading (a mode or parameter change, or the start's load)."""
        return bool(self._p.kernels_loading())

    def run_files(self, run_uid: str) -> list[dict[str, Any]]:
        return self._p.ledger.files(run_uid)

    def capture_continued(self, run_uid: str) -> tuple[str, str] | None:
        """The capture (``HDF1:Capture``) run that ``run_uid`` is, or continues after restarts (one
        resumed run after another), with its capture's file; None: ``run_uid`` is neither, or
        unknown."""
        ledger = self._p.ledger
        for _ in range(16):  # (a chain of restarts; never a loop, whatever the ledger holds)
            try:
                config = run_config(ledger.run(run_uid).get("config"))
            except NotFound:
                return None
            if config.get("capture_file"):  # (its own: a capture cut by a kill after its last series)
                return run_uid, str(config["capture_file"])
            if not config.get("resumes_run"):
                return None
            run_uid = str(config["resumes_run"])
        return None

    def run_totals(self, run_uid: str) -> dict[str, Any] | None:
        """The run's totals once it has ended in the ledger, else None; with its ``exit_status``."""
        ledger = self._p.ledger
        run = ledger.run(run_uid)
        if run.get("ended_at") is None:
            return None
        return {**ledger.run_totals(run_uid), "exit_status": run.get("exit_status")}

    # -- products -------------------------------------------------------------------------------------
    def latest_preview(self) -> dict[str, Any] | None:
        """The newest frame received (not waiting for the pipeline), subsampled and log-scaled to 8 bits;
        ``pixels_b64`` holds them row-major, one byte each, base64-encoded (compact to send and parse)."""
        latest = self._p.sink.preview
        if latest is None:
            return None
        cached = self._preview_doc
        if cached is not None and cached[0] is latest:
            return cached[1]
        frame, info = latest
        doc = {
            **info,
            "incomplete": bool(int(info.get("flags") or 0) & 1),  # FLAG_INCOMPLETE: packets were missing
            "detector_height": self._p.frame_format.height,  # the preview is subsampled from this
            "detector_width": self._p.frame_format.width,
            **preview_image(frame),
        }
        self._preview_doc = (latest, doc)
        return doc

    def latest_preview_frame(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The newest subsampled frame and what the receiver knew of it (frame, run uid, times, flags);
        the same tuple until a newer frame replaces it."""
        return self._p.sink.preview

    def latest_preview_pixels(self) -> np.ndarray | None:
        """The newest subsampled frame itself (for the IOC's image PV)."""
        latest = self._p.sink.preview
        return None if latest is None else latest[0]

    def product(self) -> dict[str, Any] | None:
        """The newest run's live mode product (None before the first run)."""
        return self._p.pipeline.product()  # type: ignore[attr-defined]

    def product_tally(self) -> dict[str, Any] | None:
        """The newest run's mode, uid and running figures (frames; hits, vetoed, hit_rate in serial;
        projections, darks, flats, slices_done in tomo); None before the first run."""
        return self._p.pipeline.product_tally()  # type: ignore[attr-defined,no-any-return]

    def progress(self) -> tuple[Any, ...]:
        """Changes while the appliance still works on frames: frames received, and the pipeline's
        frames processed and mode warm-ups running (`Pipeline.progress`)."""
        return (self.frames_received(), *self._p.pipeline.progress())  # type: ignore[attr-defined]

    def frames_in_flight(self) -> int:
        """Frames (and run starts and ends) the receiver has claimed ring slots for that the pipeline has
        not yet written and released: a frame waiting for a kernel's first compile is one of them."""
        return int(self._p.ring.counters().get("fill", 0))

    def writer_run(self) -> tuple[str | None, int]:
        """The run the pipeline is writing now (None between runs) and its frames written so far."""
        return self._p.pipeline.writing()  # type: ignore[attr-defined,no-any-return]

    def latest_profile_arrays(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """The newest 1D profile: radial axis, intensity and the count of frames processed."""
        latest = self._p.pipeline.latest_profile
        if latest is None:
            return None
        frames = int(self._p.pipeline.counters().get("frames_processed", 0))
        return latest[0], latest[1], frames

    def latest_profile(self) -> dict[str, Any] | None:
        latest = self._p.pipeline.latest_profile
        if latest is None:
            return None
        radial, profile, count = latest
        return {
            "unit": self._p.settings.reduction.unit,
            "radial": radial.tolist(),
            "intensity": profile.tolist(),
            # pixels of that frame in each bin: 0 marks a bin with no pixel (its intensity is a 0 that
            # was not measured)
            "count": None if count is None else np.asarray(count, np.int64).tolist(),
            "frames_processed": int(self._p.pipeline.counters().get("frames_processed", 0)),
        }
