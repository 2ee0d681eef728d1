"""Where is my data? One run's files: local path, checksum, state, who confirmed them, what is pending.

``edge where RUN`` (a run uid or a unique prefix of one) reads the ledger directly, so it answers even
when the daemon is down; ``GET /api/runs/{run_uid}`` returns the same report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edge.errors import NotFound
from edge.ledger import Ledger

RATE_WINDOW_SECONDS = 120.0


def resolve_run(ledger: Ledger, text: str) -> str:
    """The run uid ``text`` names: itself, or the one run whose uid starts with it."""
    uids = [row["run_uid"] for row in ledger.runs()]
    if text in uids:
        return text
    matches = [uid for uid in uids if uid.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(f"no run {text!r} in the ledger ({len(uids)} runs known)")
    raise NotFound(f"{text!r} matches {len(matches)} runs; give more of the uid")


def where_report(ledger: Ledger, run_uid: str, now: float | None = None) -> dict[str, Any]:
    """Everything a scientist needs to find one run's data, and how far it has got."""
    now = time.time() if now is None else now
    run = ledger.run(run_uid)
    files = ledger.files(run_uid)
    acks = ledger.file_acks(run_uid)
    chunk_acks = ledger.chunk_ack_counts(run_uid)
    consumers = list(ledger.required_consumers)
    pending = 0
    rows = []
    for f in files:
        on_disk = f["state"] != "purged" and Path(f["path"]).exists()
        confirmed = {consumer: acks.get((f["id"], consumer)) for consumer in consumers}
        if f["state"] in ("stored", "forwarded"):
            pending += f["size"]
        rows.append(
            {
                "name": f["name"],
                "path": f["path"],
                "on_local_disk": on_disk,
                "size": f["size"],
                "checksum": f"xxh3-128:{f['checksum']}",
                "frames": [f["first_frame"], f["last_frame"]] if f["n_frames"] else None,
                "n_frames": f["n_frames"],
                "state": f["state"],
                "verified_by": {c: t for c, t in confirmed.items() if t is not None},
                "chunks_acked": chunk_acks.get(f["id"], {}),
                "purged_at": f.get("purged_at"),
            }
        )
    rate = ledger.verified_rate(RATE_WINDOW_SECONDS, now)
    losses = ledger.losses(run_uid)
    return {
        "run_uid": run_uid,
        "exit_status": run["exit_status"],
        "started_at": run["started_at"],
        "ended_at": run["ended_at"],
        "frames_expected": run["frames_expected"],
        **ledger.run_totals(run_uid),
        "required_consumers": consumers,
        "bytes_pending": pending,
        "upstream_rate_bytes_per_s": round(rate, 1),
        "eta_seconds": (round(pending / rate, 1) if rate > 0 else None) if pending else 0.0,
        "files": rows,
        "losses": losses,
        "config": run["config"],
    }


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [
        f"run {report['run_uid']}  exit status: {report['exit_status'] or 'running'}",
        f"  frames: {report['frames_stored']} stored, {report['frames_delivered']} delivered upstream, "
        f"{report['frames_lost']} lost (expected {report['frames_expected'] or 'unknown'})",
        f"  upstream: needs {', '.join(report['required_consumers'])}; "
        f"{report['bytes_pending']} bytes pending"
        + (f", ETA {report['eta_seconds']:.0f} s" if report["eta_seconds"] else ""),
    ]
    for f in report["files"]:
        where = f["path"] if f["on_local_disk"] else f"(purged locally) {f['path']}"
        confirmed = ", ".join(sorted(f["verified_by"])) or "nobody yet"
        lines.append(f"  {f['state']:<9} {where}")
        lines.append(
            f"            {f['size']} bytes, {f['checksum']}, frames {f['frames']}, confirmed by {confirmed}"
        )
    for loss in report["losses"]:
        kind = "incomplete" if loss["partial"] else "LOST"
        lines.append(
            f"  {kind} frames {loss['first_frame']}..{loss['last_frame']}: "
            f"{loss['reason']} {loss['detail']}".rstrip()
        )
    return "\n".join(lines)
