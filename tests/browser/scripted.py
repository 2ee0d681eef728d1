"""A scripted appliance behind the real web app, for browser tests of states a live demo rarely reaches.

:class:`ScriptedView` answers like ``edge.view.ApplianceView``: the test sets the facts (frames, runs,
retention, upstream), and the view derives what the real one derives with the real code: alarms
(``edge.alarms``, with a real :class:`~edge.alarms.AlarmBook` for acknowledgements) and the upstream
outlook (``edge.upstream.outlook``, from a stand-in ledger with the verified rate and the oldest
unverified file the test sets). :func:`serve` runs ``webui.create_app`` under uvicorn on a loopback
port in a thread of the test process.
"""

from __future__ import annotations

import base64
import copy
import gc
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from edgeprocs import free_port, wait_for

from edge.alarms import AlarmBook, current_alarms
from edge.config import load_settings
from edge.errors import ConfigError, NotFound, Refused
from edge.upstream.outlook import upstream_outlook
from webui import create_app

STORE = "/data/edge/store"
HPC = "/gpfs/beamline/p11/2026/commissioning/edge-pull/raw"
FAULTY = "0b5e7c2a-6f1d-4c1e-9a57-3d2f8e1c4b90"
CLEAN = "7d41c9e0-2b3a-4f5e-8c6d-1a2b3c4d5e6f"


def run_files(run_uid: str, n: int, verified: int) -> list[dict[str, Any]]:
    """``n`` files of a run, the first ``verified`` of them verified upstream (with their HPC copy)."""
    out = []
    for i in range(n):
        name = f"{run_uid}_{i:05d}.h5"
        done = i < verified
        out.append(
            {
                "name": name,
                "path": f"{STORE}/{run_uid}/{name}",
                "on_local_disk": True,
                "size": 104_857_600,
                "checksum": "xxh3-128:0123456789abcdef0123456789abcdef",
                "frames": [i * 100, i * 100 + 99],
                "n_frames": 100,
                "state": "verified" if done else "stored",
                "verified_by": {"hpc": 1_790_000_000.0 + i} if done else {},
                "upstream_copies": {"hpc": f"{HPC}/{run_uid}/{name}"} if done else {},
                "chunks_acked": {"hpc": 25} if done else {},
                "purged_at": None,
            }
        )
    return out


@dataclass
class ScriptedRun:
    run_uid: str
    started_at: float
    ended_at: float | None
    exit_status: str | None
    files: list[dict[str, Any]]
    losses: list[dict[str, Any]]
    mode: str = "powder"
    vetoed: int = 0  # blanks dropped by policy (serial, store.blanks = drop)
    header_notes: list[str] = field(default_factory=list)  # edge.where.header_notes of the run's config
    also_named: list[str] = field(default_factory=list)  # other runs its detector's uid names (where report)
    resumes_run: str | None = None  # resumed after a daemon restart: the run it continues
    resumed_at_frame: int | None = None
    continued_by: list[str] = field(default_factory=list)  # runs that continue its series after a restart

    def totals(self) -> dict[str, Any]:
        lost = sum(r["last_frame"] - r["first_frame"] + 1 for r in self.losses if not r["partial"])
        incomplete = sum(r["last_frame"] - r["first_frame"] + 1 for r in self.losses if r["partial"])
        return {
            "frames_stored": sum(f["n_frames"] for f in self.files),
            "frames_delivered": sum(f["n_frames"] for f in self.files if f["verified_by"]),
            "frames_lost": lost,
            "frames_incomplete": incomplete,
            "loss_records": len(self.losses),
            "frames_vetoed": self.vetoed,
        }


class _Ledger:
    """What the upstream outlook reads from a ledger, set by the test."""

    required_consumers = ("hpc",)

    def __init__(self) -> None:
        self.rate = 0.0
        self.oldest: float | None = None

    def verified_rate(self, window: float, now: float) -> float:
        return self.rate

    def oldest_unverified_at(self) -> float | None:
        return self.oldest


BASE_STATUS: dict[str, Any] = {
    "appliance": {"uptime_seconds": 120.0, "stopping": False, "run_uid": None, "recovery": {}, "threads": {}},
    "receiver": {"endpoint": "tcp://127.0.0.1:5560", "messages": 1240, "series_started": 2, "errors": {}},
    "ring": {"slots": 64, "fill": 3, "max_fill": 12, "policy": "block", "dropped": 0, "full_waits": 0},
    "pipeline": {"backend": "numba", "backend_degraded_from": [], "frames_processed": 0},
    "store": {"path": STORE, "files_closed": 12},
    "ledger": {"bytes_pending": 0, "consumers": [{"consumer": "hpc", "chunks_acked": 10}]},
    "upstream": {
        "bytes_sent": 1_000_000,
        "bytes_resent": 0,
        "files_verified": 11,
        "consumers": [
            {"consumer": "hpc", "credit": 8, "in_flight": 0, "seconds_since_seen": 0.1, "connected": True}
        ],
    },
    "retention": {
        "capacity_bytes": 10_000_000_000,
        "store_bytes": 2_000_000_000,
        "unverified_bytes": 0,
        "verified_bytes": 2_000_000_000,
        "full_in_seconds": None,
        "alarm": None,
        "accepting_runs": True,
    },
    "disk": {"total": 20_000_000_000, "used": 9_000_000_000, "free": 11_000_000_000, "percent": 45.0},
    "detector": {"enabled": True, "prefix": "SIM:cam1:", "connected": True, "state": "Idle"},
}


class ScriptedView:
    """An appliance view whose facts the test sets; derived facts come from the real modules."""

    def __init__(self) -> None:
        self.base = copy.deepcopy(BASE_STATUS)
        self.runs_: dict[str, ScriptedRun] = {}
        self.current: str | None = None  # the run being acquired
        self.finishing = False  # the shown run open with its series over (frames still being written)
        self.shown: str | None = None  # "this run": the current one, else the last
        self.received = 0
        self.ledger = _Ledger()
        self.alarm_book = AlarmBook()
        self.preview: dict[str, Any] | None = None
        self.profile: dict[str, Any] | None = None
        self.product_doc: dict[str, Any] | None = None  # GET /api/product (the modes' schema)
        self.reduction: dict[str, Any] = {"mode": "powder"}
        self.started_at = time.time() - 120.0  # the scripted daemon has been up two minutes
        self._lock = threading.Lock()

    # -- what the test does -----------------------------------------------------------------------------
    def add_run(self, run: ScriptedRun, current: bool = False) -> None:
        with self._lock:
            self.runs_[run.run_uid] = run
            self.shown = run.run_uid
            self.current = run.run_uid if current else None

    def new_frame(self, frame: int, run_uid: str | None = None, incomplete: bool = False) -> None:
        """A new frame arrives: the live image and the receiver's counter move."""
        with self._lock:
            self.received += 1
            pixels = bytes((x * 8 + y * 4 + frame) % 256 for y in range(32) for x in range(64))
            self.preview = {
                "frame": frame,
                "run_uid": run_uid or self.current,
                "flags": 1 if incomplete else 0,
                "detector_timestamp_ns": frame * 10_000_000,
                "received_at": time.time(),
                "scale": "log1p",
                "counts_top": 1234.0,
                "incomplete": incomplete,
                "detector_height": 256,
                "detector_width": 512,
                "height": 32,
                "width": 64,
                "pixels_b64": base64.b64encode(pixels).decode(),
            }

    # -- the view's interface ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            doc = copy.deepcopy(self.base)
            doc["server_time"] = time.time()
            doc["appliance"]["uptime_seconds"] = doc["server_time"] - self.started_at
            doc["appliance"]["run_uid"] = self.current
            # a profile or a product means this daemon has reduced frames (the page asks for them then)
            made = self.profile is not None or self.product_doc is not None
            doc["pipeline"]["frames_processed"] = max(
                doc["pipeline"]["frames_processed"], self.received, int(made)
            )
            all_runs = [r.totals() for r in self.runs_.values()]
            summed = {
                k: sum(t[k] for t in all_runs)
                for k in (
                    "frames_stored",
                    "frames_delivered",
                    "frames_lost",
                    "frames_incomplete",
                    "loss_records",
                    "frames_vetoed",
                )
            }
            doc["frames"] = {
                "received": self.received,
                "stored": summed["frames_stored"],
                "delivered": summed["frames_delivered"],
                "lost": summed["frames_lost"],
                "incomplete": summed["frames_incomplete"],
                "vetoed": summed["frames_vetoed"],
                "loss_records": summed["loss_records"],
            }
            shown = self.runs_.get(self.shown) if self.shown else None
            doc["counts"] = {
                "run": {
                    "run_uid": self.shown,
                    "active": self.current is not None or self.finishing,
                    **(shown.totals() if shown else {}),
                },
                "daemon": {"since": time.time() - 120, "frames_received": self.received, **summed},
                "all_time": summed,
            }
            doc["upstream_outlook"] = upstream_outlook(
                self.ledger, doc["ledger"]["bytes_pending"], doc["upstream"], time.time()
            )
        doc["alarms"] = self.alarm_book.annotate(current_alarms(doc))
        return doc

    def alarms(self) -> list[dict[str, Any]]:
        return list(self.status()["alarms"])

    def runs(self) -> list[dict[str, Any]]:
        return [{"run_uid": r.run_uid, "started_at": r.started_at} for r in self.runs_.values()]

    def newest_runs(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self.runs(), key=lambda row: row.get("started_at") or 0.0, reverse=True)[:limit]

    def run(self, run_uid: str) -> dict[str, Any]:
        run = self.runs_.get(run_uid)
        if run is None:
            raise NotFound(f"no run {run_uid!r} in the ledger")
        pending = sum(f["size"] for f in run.files if not f["verified_by"])
        where = {
            "run_uid": run.run_uid,
            "exit_status": run.exit_status,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "frames_expected": None,
            **run.totals(),
            "required_consumers": ["hpc"],
            "bytes_pending": pending,
            "eta_seconds": None,
            "files": run.files,
            "losses": run.losses,
            "header_notes": run.header_notes,
            "detector_uid": run.run_uid,
            "detector_uid_also_names": run.also_named,
            "resumes_run": run.resumes_run,
            "resumed_at_frame": run.resumed_at_frame,
            "continued_by": run.continued_by,
            "config": {"reduction": {"mode": run.mode}},
            "summary": f"{len(run.files)} file(s): {len(run.files)} on the appliance ({STORE}/{run.run_uid}), "
            f"{sum(1 for f in run.files if f['verified_by'])} verified upstream ({HPC}/{run.run_uid}), "
            f"{sum(1 for f in run.files if not f['verified_by'])} pending; {run.totals()['frames_lost']} frame(s) lost",
        }
        return {
            "run_uid": run.run_uid,
            "exit_status": run.exit_status,
            "started_at": run.started_at,
            "where": where,
        }

    def latest_profile(self) -> dict[str, Any] | None:
        return self.profile

    def latest_preview(self) -> dict[str, Any] | None:
        return self.preview

    def product(self) -> dict[str, Any] | None:
        if self.product_doc is None and self.profile is not None:  # a powder run's, as the daemon has it
            return {
                "mode": "powder",
                "run_uid": self.shown,
                "powder": self.profile,
                "serial": None,
                "tomo": None,
            }
        return self.product_doc


class ScriptedReduction:
    """The next run's reduction as ``edge.reduction_control`` answers it: refused while a run is open."""

    def __init__(self, view: ScriptedView) -> None:
        self.view = view

    def parameters(self) -> dict[str, Any]:
        return dict(self.view.reduction)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        if changes.get("mode") not in ("raw", "powder", "serial", "tomo"):
            raise ConfigError(
                f"reduction mode {changes.get('mode')!r} is not one of raw, powder, serial, tomo"
            )
        if self.view.current is not None:
            raise Refused(f"run {self.view.current} is open: the reduction mode changes between runs")
        self.view.reduction.update(changes)
        return dict(self.view.reduction)


@contextmanager
def serve(
    view: Any, token: str | None = None, port: int | None = None
) -> Iterator[tuple[str, uvicorn.Server]]:
    """The real web app around ``view`` on a loopback port (``port``, else a free one); yields its URL
    and the server."""
    overrides = [] if token is None else [f'api.token="{token}"']
    port = port or free_port()
    app = create_app(load_settings(overrides=overrides), view, reduction=ScriptedReduction(view))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,  # the page's event stream would otherwise hold the shutdown
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 15, "the web app to listen")
        yield f"http://127.0.0.1:{port}/", server
    finally:
        app.state.live_feed.close()  # the page's event stream ends, so its connection closes cleanly
        time.sleep(0.2)
        server.should_exit = True
        thread.join(15)
        # a connection the page opened in the last moments (it restarts its event stream at once) is
        # cancelled by the shutdown, not closed: its socket is collected here, where its ResourceWarning
        # belongs, not inside whichever test runs next (pytest reports it there as that test's error)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
