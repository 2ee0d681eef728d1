"""Where is my data? One run's files: local path, checksum, state, who confirmed them, what is pending.

``edge where RUN`` (a run uid, a unique prefix of one, or the uid the detector gave a run recorded under
a fresh one) reads the ledger directly, so it answers even when the daemon is down, and names the other
runs the detector's uid names; ``GET /api/runs/{run_uid}`` returns the same report.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edge.errors import NotFound
from edge.ledger import Ledger, is_retired, run_config
from edge.upstream.outlook import RATE_WINDOW_SECONDS, eta_seconds


def _quoted(text: str, limit: int = 120) -> str:
    """``text`` as an error message quotes it: repr, cut to ``limit`` characters (an outside probe's
    100 000-character id came back whole)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def runs_beginning(ledger: Ledger, run_uid: str) -> list[str]:
    """The other runs whose uid begins with ``run_uid`` (a whole uid that is also a prefix of theirs)."""
    return [uid for uid in ledger.run_uids_beginning(run_uid, limit=1000) if uid != run_uid]


def resolve_run(ledger: Ledger, text: str) -> str:
    """The run uid ``text`` names: itself, or the one run whose uid starts with it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes a terminal passed that are not UTF-8 (as surrogates): no uid is
        raise NotFound(f"no run {_quoted(text)} in the ledger: a run uid is text (UTF-8)") from None
    if not text.strip():  # (every uid starts with "": it "matched" every run)
        raise NotFound("no run uid given: give a run uid, or its first characters (edge where RUN)")
    # (looked up in the ledger's index of uids, not by reading every run: the answer slowed down with
    # each run the ledger kept, an outside probe's 1,476 runs)
    matches = ledger.run_uids_beginning(text)
    if text in matches:
        return text
    if not matches:  # a UUID copied in capitals (as some tools print them): the same run
        matches = ledger.run_uids_beginning_folded(text)
    if len(matches) == 1:
        return matches[0]
    if matches:
        many = len(matches) > 10  # (11 looked up: more than 10 are said as such)
        shown = ", ".join(matches[:10]) + (", ..." if many else "")
        count = "more than 10" if many else str(len(matches))
        raise NotFound(f"{_quoted(text)} matches {count} runs ({shown}); give more of the uid")
    renamed = ledger.runs_named_by_detector(text)  # the detector's uid, recorded under a fresh one
    if len(renamed) == 1:
        return renamed[0]
    if renamed:
        raise NotFound(
            f"the detector's run uid {_quoted(text)} names {len(renamed)} runs: {', '.join(renamed)}"
        )
    raise NotFound(f"no run {_quoted(text)} in the ledger ({ledger.run_count()} runs known)")


def also_named(ledger: Ledger, run_uid: str, config: Any) -> tuple[str, list[str]]:
    """For the where report: the uid the detector gave this run, and the other runs it names (recorded
    under fresh uids, as it was not a file name or already a run's); index lookups, cheap enough for a
    page that refreshes."""
    own = run_config(config).get("detector_run_uid")
    named = str(own) if own else run_uid
    others = [uid for uid in ledger.runs_named_by_detector(named) if uid != run_uid]
    if named != run_uid:  # a replaced uid: the run that has it, if one does
        with contextlib.suppress(NotFound):
            others.insert(0, ledger.run(named)["run_uid"])
    return named, others


#: where a run's reduced file (``RUN_reduced_NNNNN.nxs``) keeps its mode's products: for files a ledger
#: recorded before it kept what each holds (``files.holds``, schema 5)
PRODUCTS_IN_REDUCED = {
    "powder": "profiles: /entry/reduced (a cake: /entry_2d/reduced)",
    "serial": "peak tables: /entry/result_1; frame table: /entry/frames",
    "tomo": "slices: /entry/reconstruction (sinograms beside them)",
}


def _why_local(f: dict[str, Any], forward: str, mode: str | None) -> str | None:
    """Why a file never goes (or went) upstream, or None for one that does."""
    kind = f.get("kind") or "data"
    if f["state"] == "local" and forward == "hits" and mode != "serial":
        # hits forwards the raw frames of serial's hits only (an outside probe's powder run under hits
        # delivered nothing, and nothing said its mode was why)
        return (
            f"upstream.forward = hits forwards only serial mode's hits; this run is {mode}: its {kind}"
            " files stay on the appliance"
        )
    if f["state"] == "local":
        return f"upstream.forward = {forward}: {kind} files stay on the appliance"
    if is_retired(f):  # purged without ever being sent: it went nowhere (a probe read it as delivered)
        return (
            f"upstream.forward = {forward}: never sent upstream; retired from the appliance by"
            " retention.unforwarded"
        )
    return None


def _holds(f: dict[str, Any], mode: str | None) -> str | None:
    """What a reduced file holds and where in it, for the scientist asking "where are my slices?"
    (None for data files): as read from the file when it was written (``files.holds``); for a file
    recorded before the ledger kept that, what its run's mode puts in reduced files."""
    if (f.get("kind") or "data") != "reduced" or not str(f["name"]).endswith(".nxs"):
        return None
    if f.get("holds"):
        return str(f["holds"])
    return PRODUCTS_IN_REDUCED.get(str(mode))


def _state(exit_status: str | None, held_end: str | None, daemon_running: bool) -> str:
    """The run's state for the report: its exit status once the ledger has it; a held end's status; else
    running (a daemon serves the ledger) or interrupted (none does: recovery ends it at the next start)."""
    if exit_status:
        return exit_status
    if held_end is not None:
        return f"{held_end} (ended; the disk is full: the ledger records it when space returns)"
    return "running" if daemon_running else "interrupted"


def _changed_locally(f: dict[str, Any], unreadable: dict[str, str]) -> str | None:
    """Why a file on the local disk, not yet verified, is not as stored (None: as far as known, it is):
    its size now against the ledger's, or what the daemon's forwarder found reading it."""
    if f["state"] not in ("stored", "forwarded"):
        return None
    try:
        size = os.stat(f["path"]).st_size
    except OSError as error:
        return f"cannot be read: {error.strerror or error}"
    if size != f["size"]:
        return f"{size} bytes on the disk, {f['size']} when stored"
    said = unreadable.get(str(f["path"]))
    if said is not None and "No such file" in said:  # restored since the daemon last tried it (once a
        return None  # minute): it is there now, as stored (it read "CHANGED ... No such file": a probe)
    return said


def where_report(
    ledger: Ledger,
    run_uid: str,
    now: float | None = None,
    daemon_running: bool = True,
    store: Path | None = None,
    held_end: str | None = None,
    stalled: str | None = None,
    window: float = RATE_WINDOW_SECONDS,
    unreadable: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything a scientist needs to find one run's data, and how far it has got.

    ``unreadable``: path -> why, the stored files the daemon's forwarder found it cannot send as they are
    on the local disk (unreadable, or changed since their checksum was taken; the upstream outlook's
    ``unreadable_files``).

    ``daemon_running`` (`edge.daemon_lock.daemon_running`) says whether a daemon serves the ledger now:
    a run without an end is ``running`` while one does, ``interrupted`` (its daemon died; recovery ends
    it at the next start) when none does. ``store`` (default: the ledger's directory) is where the
    files a crash or a full disk left half-written are quarantined (``STORE/quarantine/RUN/``).
    ``held_end``: the exit status of the run's end record a full disk holds back in the daemon
    (`RunRecorder.held_end`): the run has ended though the ledger does not say so yet.
    """
    now = time.time() if now is None else now
    run = ledger.run(run_uid)
    files = ledger.files(run_uid)
    acks = ledger.file_acks(run_uid)
    chunk_acks = ledger.chunk_ack_counts(run_uid)
    copies = ledger.file_copies(run_uid)
    consumers = list(ledger.required_consumers)
    config = run_config(run.get("config"))
    forward = config.get("upstream_forward", "all")
    pending = 0
    cannot_arrive = 0  # pending files that cannot be sent as they are on the local disk
    rows = []
    for f in files:
        on_disk = f["state"] != "purged" and Path(f["path"]).exists()
        changed = _changed_locally(f, unreadable or {}) if on_disk else None
        confirmed = {consumer: acks.get((f["id"], consumer)) for consumer in consumers}
        if f["state"] in ("stored", "forwarded"):
            pending += f["size"]
            # deleted or changed by hand: it arrives only once restored (an outside probe read "ETA 11 s"
            # of a run whose one pending file was gone, and a truncated file as a plain "stored" one)
            cannot_arrive += not on_disk or changed is not None
        rows.append(
            {
                "name": f["name"],
                "path": f["path"],
                "on_local_disk": on_disk,
                # deleted or moved by hand (or its disk gone): not purged, yet not there to send or read
                # (a verified file not on the disk is upstream already: retention deletes it a moment
                # before it records the purge, and `edge where` called it MISSING then, a probe)
                "missing_locally": f["state"] not in ("purged", "verified") and not on_disk,
                # on the disk, not yet verified, and not as stored: why (its size; the daemon's read)
                "changed_locally": changed,
                "size": f["size"],
                "checksum": f"xxh3-128:{f['checksum']}",
                "frames": [f["first_frame"], f["last_frame"]] if f["n_frames"] else None,
                "n_frames": f["n_frames"],
                "state": f["state"],
                "kind": f.get("kind") or "data",
                "local_only": f["state"] == "local" or is_retired(f),
                "why_local": _why_local(f, forward, run.get("mode")),
                "retired_unforwarded": is_retired(f),
                "verified_by": {c: t for c, t in confirmed.items() if t is not None},
                "upstream_copies": {c: path for (fid, c), path in copies.items() if fid == f["id"]},
                "holds": _holds(f, run.get("mode")),
                "chunks_acked": chunk_acks.get(f["id"], {}),
                "purged_at": f.get("purged_at"),
            }
        )
    rate = ledger.verified_rate(window, now)  # (the daemon's `outlook.rate_window`: one ETA everywhere)
    losses = ledger.losses(run_uid)
    report: dict[str, Any] = {
        "run_uid": run_uid,
        "exit_status": run["exit_status"],
        # what ended it, as its reader saw it (a run ended fail by the next series' start), else None
        "ended_because": config.get("ended_because"),
        "state": _state(run["exit_status"], held_end, daemon_running),
        # the exit status of the run's end that a full disk holds back in the daemon (None: none held)
        "held_end": held_end,
        "started_at": run["started_at"],
        "ended_at": run["ended_at"],
        "frames_expected": run["frames_expected"],
        "mode": run.get("mode"),
        "reduction": config.get("reduction"),
        "upstream_forward": forward,
        **ledger.run_totals(run_uid),
        "required_consumers": consumers,
        "bytes_pending": pending,
        "upstream_rate_bytes_per_s": round(rate, 1),
        "rate_window_seconds": window,
        # no daemon, nothing sent: no time to arrival (the rate is the last 120 s of a daemon now gone);
        # nor while delivery is stalled (``stalled``: why, the daemon's `outlook.stall`)
        "eta_seconds": eta_seconds(pending, rate)
        if not pending or (daemon_running and stalled is None and not cannot_arrive)
        else None,
        # pending files that cannot be sent until restored (missing, or changed since stored): no ETA
        "files_unreadable_locally": cannot_arrive,
        "upstream_stalled": stalled if pending else None,
        "daemon_running": daemon_running,
        "files": rows,
        "quarantined": quarantined(Path(ledger.path).parent if store is None else store, run_uid),
        # the run's half-written files in its store directory (``RUN/*.part``) when no daemon is writing
        # them: open when its daemon died (an outside probe read "0 lost, 0 pending" of a run whose 160
        # frames were in such a file, or in none, with the daemon down), or one that could neither be
        # finished nor set aside (a directory made immutable); the next start sets them aside
        "half_written": (
            half_written(Path(ledger.path).parent if store is None else store, run_uid)
            if not (run["exit_status"] is None and daemon_running)
            else []
        ),
        "capture_left": capture_left(run_config(run.get("config")), run["ended_at"] is not None),
        "losses": losses,
        "header_notes": header_notes(config),
        # calibration files whose bytes were not those the daemon loaded (and used) any more: named with
        # both sha256s (an outside probe found it only in the run's reduced file)
        "calibration_files_changed": config.get("calibration_files_changed") or None,
        # the sha256 of each calibration file the run's daemon loaded (runs recorded before: None)
        "calibration_sha256": config.get("calibration_sha256") or None,
        "config": run["config"],
    }
    # the uid the detector gave the run, and the other runs it names (recorded under fresh uids)
    report["detector_uid"], report["detector_uid_also_names"] = also_named(ledger, run_uid, run["config"])
    # each of those runs' continuations after a restart, so the whole chain is named here (a first-day
    # probe had to ask `edge where` of the other run to find where its series went on)
    report["also_named_continued_by"] = {
        other: ledger.runs_resuming(other) for other in report["detector_uid_also_names"] or ()
    }
    # a series cut by a daemon restart, or a UDP acquisition going on after a pause: the run this one
    # continues, and the runs that continue this one
    paused = bool(config.get("resumed_after_pause"))
    resumed = paused or bool(config.get("resumed_after_restart"))
    report["resumes_run"] = (config.get("resumes_run") or None) if resumed else None
    report["resumed_at_frame"] = config.get("first_frame") if resumed else None
    report["resumed_after"] = ("pause" if paused else "restart") if resumed else None
    # its series' length, as the interrupted run recorded it (the resumed run saw no series header)
    report["series_frames_expected"] = run["frames_expected"]
    if report["resumes_run"] and run["frames_expected"] is None:
        with contextlib.suppress(Exception):  # a run since deleted from the ledger: unknown
            report["series_frames_expected"] = ledger.run(report["resumes_run"])["frames_expected"]
    report["continued_by"] = ledger.runs_resuming(run_uid)
    report["continued_at_frame"] = _continued_at(ledger, report["continued_by"])
    report["frames_continued"], report["frames_this_run"] = _split_account(
        report, _whole(config.get("armed_from")) or 0, _whole(run.get("frames_seen"))
    )
    report["summary"] = summary_line(report)
    later = _runs_with_slices(ledger, report.get("continued_by") or [])
    report["products_note"] = products_note(report, bool(run["ended_at"]), later)
    return report


def _runs_with_slices(ledger: Ledger, runs: list[str], limit: int = 64) -> list[str]:
    """Of the runs that continue a scan (and those continuing them in turn), those whose reduced files
    hold slices."""
    found: list[str] = []
    seen: set[str] = set()
    queue = list(runs)
    while queue and len(seen) < limit:
        uid = queue.pop(0)
        if uid in seen:
            continue
        seen.add(uid)
        with contextlib.suppress(Exception):  # a run since deleted from the ledger
            files = ledger.files(uid)
            if any("slices" in str(f.get("holds") or "") for f in files if f.get("kind") == "reduced"):
                found.append(uid)
            queue.extend(ledger.runs_resuming(uid))
    return found


def products_note(report: dict[str, Any], ended: bool, later_with_slices: list[str]) -> str | None:
    """For a tomography run that ended without slices in any of its files, why and where to look (an
    outside probe: a scan cut by a crash and never resumed had no reconstruction, and nothing said so).
    ``later_with_slices``: the runs continuing its scan whose files hold slices."""
    config = run_config(report.get("config"))
    not_started = config.get("mode_not_started")
    if isinstance(not_started, str) and not_started:  # any mode: its frames are stored raw, no products
        return not_started
    if report.get("mode") != "tomo" or not ended:
        return None
    if any("slices" in str(f.get("holds") or "") for f in report["files"] if f.get("kind") == "reduced"):
        centre = config.get("centre_not_estimated")
        return centre if isinstance(centre, str) and centre else None
    if later_with_slices:
        return (
            f"no slices in this run's files: the scan goes on in run {later_with_slices[0]}, whose last"
            " reduced file holds them"
        )
    if report.get("continued_by"):
        return (
            f"no slices: the scan went on in run {report['continued_by'][0]}, but no run continuing it"
            " holds slices (cut again, or reduced in another mode); its frames are in the data files"
            " (NXtomo, and /exchange for dxchange): reconstruct them from there"
        )
    if not report.get("frames_stored"):  # (a refused run: "its frames are in its data files" it had none)
        return "no slices: no frame of this run was stored (its losses say why)"
    if report.get("exit_status") == "success":  # it ended well: nothing the reconstruction could take
        # the carrier said as it was (an outside probe's JSON-stream run read "Stream V2 and UDP carry none")
        config = run_config(report.get("config"))
        carrier = (
            "UDP carries none"
            if config.get("transport") == "udp"
            else "Stream V2 carries none"
            if config.get("format") == "stream2"
            else "the JSON stream's images sent none"
        )
        return (
            "no slices: the scan ended with no projection the reconstruction could take: no projection"
            " came (image_key 0; darks and flats only), or none carried a rotation angle"
            f" ({carrier}, docs/wire-formats.md, and reduction.tomo.angle_start and angle_step gave"
            " none); its frames' image_key and rotation_angle, in its data files (NXtomo), say which:"
            " reconstruct them from there with the angles"
        )
    return (
        f"no slices: the scan ended {report.get('exit_status') or 'unknown'} before its reconstruction was"
        " written, and was not resumed; its frames are in its data files (NXtomo, and /exchange for"
        " dxchange): reconstruct them from there"
    )


def capture_left(config: dict[str, Any], run_ended: bool) -> dict[str, Any] | None:
    """A capture's ``NAME.h5.part`` a crash left where it was (outside the store's run directories,
    where recovery does not look): the only copy of the frames written to it before the crash, which
    the ledger records lost. None when there is none (or the run is still open: it is being written)."""
    target = config.get("capture_file")
    if not target or not run_ended:
        return None
    part = Path(f"{target}.part")
    try:
        return {"path": str(part), "size": part.stat().st_size}
    except (OSError, ValueError):
        return None


def half_written(store: Path, run_uid: str) -> list[dict[str, Any]]:
    """The ``.part`` files in the run's store directory (half-written files of a run whose daemon died),
    with their sizes."""
    out = []
    try:
        found = sorted((store / run_uid).glob("*.part"))
    except OSError:
        return []
    for path in found:
        try:
            out.append({"path": str(path), "size": path.stat().st_size})
        except OSError:
            continue
    return out


def quarantined(store: Path, run_uid: str) -> list[dict[str, Any]]:
    """The run's half-written files set aside after a crash or on a full disk (never forwarded or
    purged; their frames are loss records), with their sizes: in the ledger they are no file at all."""
    directory = store / "quarantine" / run_uid
    try:
        found = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError:  # none (the usual case), or unreadable
        return []
    out = []
    for path in found:
        try:
            out.append({"path": str(path), "size": path.stat().st_size})
        except OSError:  # removed meanwhile (by hand, as the README says to once done)
            continue
    return out


def header_notes(config: dict[str, Any]) -> list[str]:
    """What the detector's series header said that the run's files or record do not carry as sent: a
    scientist reading the files should know (each is in the run's config too)."""
    notes = []
    if config.get("start_rejected"):
        why = str(config["start_rejected"])[:160]
        notes.append(f"its series start was rejected ({why}): the run has none of the start's metadata")
    if config.get("detector_run_uid") and config.get("detector_run_uid_refused"):
        why = str(config["detector_run_uid_refused"])[:80]
        notes.append(f"run uid {str(config['detector_run_uid'])[:80]!r} from the detector was {why}")
    elif config.get("detector_run_uid") and (
        config.get("resumed_after_restart") or config.get("start_rejected")
    ):
        # opened from its images (Stream V2's carry the series' uid): the run has a uid of its own
        uid = str(config["detector_run_uid"])[:80]
        notes.append(
            f"the detector's uid of the series, {uid!r}, came with its images (the run's own differs)"
        )
    elif config.get("detector_run_uid") and config.get("capture_file"):
        # a capture's run is named at its Capture 1, before its first series came (an outside probe read
        # "was not a file name" of an ordinary UUID)
        uid = str(config["detector_run_uid"])[:80]
        notes.append(
            f"the detector's uid of its first series, {uid!r}: the capture's run was named at its"
            " Capture 1 (edge where finds it by either)"
        )
    elif config.get("detector_run_uid"):
        notes.append(
            f"run uid {str(config['detector_run_uid'])[:80]!r} from the detector was not a file name"
        )
    for text in config.get("header_fields_ignored") or ():
        notes.append(f"left out of the files: {text}")
    for path in config.get("header_fields_truncated") or ():
        notes.append(f"too large for the run record, kept as its size and sha256: {path}")
    reserved = config.get("header_reserved")
    if isinstance(reserved, dict) and reserved:
        notes.append(f"fields only the receiver sets, kept aside: {', '.join(sorted(reserved))}")
    return notes


def summary_line(report: dict[str, Any]) -> str:
    """One line before the file list: how many files are where, locally and upstream."""
    files = report["files"]
    local = sum(1 for f in files if f["on_local_disk"])
    # verified: confirmed by every required consumer (the file's state), not by any one of them
    upstream = sum(
        1 for f in files if f["state"] in ("verified", "purged") and not f.get("retired_unforwarded")
    )
    # the copies of the consumers the policy requires first (an optional mirror's come after)
    required = set(report.get("required_consumers") or ())
    verified = [f for f in files if f["state"] in ("verified", "purged") and not f.get("retired_unforwarded")]
    # an optional mirror's folders only when it holds a copy of every verified file (an outside probe: a
    # mirror holding one run's documents file alone was named beside the folder of its 5 verified files)
    copies = Counter(consumer for f in verified for consumer in f.get("upstream_copies", {}))
    dirs = sorted(  # (of the verified files: a copy only some required consumers confirmed is pending)
        {
            (consumer not in required, _printable(Path(path).parent), consumer)
            for f in verified
            for consumer, path in f.get("upstream_copies", {}).items()
            if consumer in required or copies[consumer] == len(verified)
        }
    )
    # a required consumer's folder holding some of them only says how many (an outside probe read a
    # mirror's folder beside "23 verified upstream", 16 of them there, required after 7 were purged)
    named = [d if copies[c] == len(verified) else f"{d}: {copies[c]} of them" for _, d, c in dirs]
    named = list(dict.fromkeys(named))
    where_up = f" ({', '.join(named[:2])}{', ...' if len(named) > 2 else ''})" if named else ""
    # and a required consumer holding none of them (required since they were purged here) is named too
    holds_none = sorted(c for c in required if verified and copies[c] == 0)
    if holds_none:
        where_up += f" ({', '.join(holds_none)}: none of them, required since they were confirmed)"
    # the local folders too, spelled out (the file table shortens paths: an outside probe could not read
    # where the run's files are on the appliance without hovering)
    here = list(dict.fromkeys(_printable(Path(str(f["path"])).parent) for f in files if f["on_local_disk"]))
    where_here = f" ({', '.join(here[:2])}{', ...' if len(here) > 2 else ''})" if here else ""
    waiting = [f for f in files if f["state"] in ("stored", "forwarded")]
    partly = sum(1 for f in waiting if f["verified_by"])
    some = f" ({partly} confirmed by some required consumers, not yet all)" if partly else ""
    lost = report.get("frames_lost", 0)
    # retired unforwarded: on neither side any more (an outside probe's summary counted it nowhere and
    # said "0 lost" of the raw frames of 18 hits that no longer existed anywhere)
    retired = sum(1 for f in files if f.get("retired_unforwarded"))
    gone = f", {retired} retired unforwarded (on neither side now)" if retired else ""
    return (
        f"{len(files)} file(s): {local} on the appliance{where_here}, {upstream} verified upstream"
        f"{where_up}, {len(waiting)} pending{some}{gone}; {lost} frame(s) lost"
    )


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [
        f"run {report['run_uid']}  exit status: {report.get('state') or report['exit_status'] or 'running'}"
        + (f" ({report['ended_because']})" if report.get("ended_because") else ""),
        f"  {report.get('summary') or summary_line(report)}",
        f"  mode: {report.get('mode') or 'unknown'}; upstream.forward = {report.get('upstream_forward')}",
        f"  frames: {report['frames_stored']} stored, {report.get('frames_vetoed', 0)} vetoed by the mode's"
        f" policy, {report['frames_delivered']} delivered upstream, "
        f"{report['frames_lost']} lost ({_expected_text(report)})"
        + (
            f", {report['frames_not_acquired']} not acquired (aborted)"
            if report.get("frames_not_acquired")
            else ""
        ),
        f"  upstream: needs {', '.join(report['required_consumers'])}"
        + (
            " (the default: give edge where the daemon's settings file)"
            if report.get("consumers_default")
            else " (as the running daemon requires)"
            if report.get("consumers_from_daemon")
            else ""
        )
        + f"; {report['bytes_pending']} bytes pending"
        + (f", ETA {report['eta_seconds']:.0f} s" if report["eta_seconds"] else "")
        + (f" (stalled: {report['upstream_stalled']})" if report.get("upstream_stalled") else "")
        + (
            f" (no ETA: {report['files_unreadable_locally']} pending file(s) missing or changed on the local"
            " disk arrive only once restored)"
            if report.get("files_unreadable_locally")
            else ""
        )
        + (
            " (no daemon running: sent once one starts)"
            if report["bytes_pending"] and report.get("daemon_running") is False
            else ""
        ),
    ]
    resumed = _resumed_line(report)
    if resumed:
        lines.insert(1, resumed)
    if report.get("products_note"):
        lines.append(f"  products: {report['products_note']}")
    calibration = _calibration_line(report)
    if calibration:
        lines.append(f"  calibration: {calibration}")
    if report.get("calibration_files_changed"):
        changed = report["calibration_files_changed"]
        lines.append(f"  calibration files changed on disk (the loaded copies used): {changed}")
    for later in report.get("continued_by") or ():
        lines.insert(1, f"  its series continues in run {later}")
    for f in report["files"]:
        if f["on_local_disk"]:
            where = f["path"]
        elif f.get("retired_unforwarded"):
            where = f"(retired locally, never sent upstream) {f['path']}"
        elif f["state"] == "purged":
            where = f"(purged locally) {f['path']}"
        elif f["state"] == "verified":  # upstream already: being purged (or deleted by hand)
            where = f"(not on the local disk; verified upstream) {f['path']}"
        else:  # not purged, and not there: deleted or moved by hand, it cannot be sent or read
            where = f"(MISSING from the local disk, not purged) {f['path']}"
        if f.get("changed_locally"):
            where = f"(CHANGED on the local disk since stored: {f['changed_locally']}) {where}"
        # a file never forwarded waits for no confirmation (an outside probe read "nobody yet" as one due)
        never = f["state"] == "local" or f.get("retired_unforwarded")
        nobody = "nobody (never sent upstream)" if never else "nobody yet"
        confirmed = ", ".join(sorted(f["verified_by"])) or nobody
        lines.append(
            f"  {f['state']:<9} {where}"
            + (f"  [{f['why_local']}]" if f.get("why_local") else "")
            + (f"  ({f['holds']})" if f.get("holds") else "")
        )
        lines.append(
            f"            {f['size']} bytes, {f['checksum']}, {_frames_text(f['frames'], f.get('n_frames'))},"
            f" confirmed by {confirmed}"
        )
        for consumer, copy in sorted(f.get("upstream_copies", {}).items()):
            lines.append(f"            upstream copy ({consumer}): {_printable(copy)}")
    if report.get("state") == "interrupted":
        # with the daemon down nothing has accounted the frames after those stored yet (no loss record
        # before recovery): "0 lost" read as all safe, an outside probe
        why = (
            "the daemon's recovery waits for disk space (the last daemon's held records are written first)"
            if report.get("daemon_running")
            else "no daemon serves this ledger"
        )
        lines.insert(
            1,
            f"  INTERRUPTED: {why}; this run's frames after those stored are in no record until its"
            " recovery runs (it records them lost, or a resumed series takes them back)",
        )
    for item in report.get("half_written") or ():
        lines.append(
            f"  half-written {_printable(item['path'])}  ({item['size']} bytes: open at a crash, or not"
            " finished; no file in the ledger, its frames loss records (or to be, at the daemon's next"
            " start, which sets it aside); kept for inspection, never forwarded; README: h5clear)"
        )
    for item in report.get("quarantined") or ():
        if str(item["path"]).endswith((".h5.part", ".nxs.part")):
            what = "its frames are loss records; kept for inspection, never forwarded; README: h5clear"
        else:  # (the run's documents, say, cut while being written: an outside probe read "frames" there)
            what = (
                "no frames in it, the run's record does not rest on it; kept for inspection, never forwarded"
            )
        lines.append(
            f"  quarantined {item['path']}  ({item['size']} bytes, half-written at a crash or on a full"
            f" disk: {what})"
        )
    left = report.get("capture_left")
    if left:  # (an outside probe: `edge where` said the frames were lost and never named this copy)
        lines.append(
            f"  left at a crash {_printable(left['path'])}  ({left['size']} bytes, the capture's file"
            " open when the daemon died: the only copy of frames recorded lost; never forwarded;"
            " README: h5clear)"
        )
    for note in report.get("header_notes") or ():
        lines.append(f"  detector header: {note}")
    for other in report.get("detector_uid_also_names") or ():
        went_on = (report.get("also_named_continued_by") or {}).get(other) or []
        tail = f" (its series went on in run {', '.join(went_on)})" if went_on else ""
        lines.append(f"  the detector's run uid {report['detector_uid']!r} also names run {other}{tail}")
    for loss in report["losses"]:
        kind = "incomplete" if loss["partial"] else "not acquired" if loss.get("not_acquired") else "LOST"
        lines.append(
            f"  {kind} frames {loss['first_frame']}..{loss['last_frame']}: "
            f"{loss['reason']} {loss['detail']}".rstrip()
        )
    return "\n".join(lines)


def _calibration_line(report: dict[str, Any]) -> str:
    """The calibration files the run was reduced with, each with its sha256 when recorded (two runs of
    the same paths and other contents read alike: an outside probe), or "" when it named none."""
    reduction = report.get("reduction") if isinstance(report.get("reduction"), dict) else {}
    digests = report.get("calibration_sha256") if isinstance(report.get("calibration_sha256"), dict) else {}
    named = []
    for key in ("poni", "mask", "dark", "flat"):
        path = reduction.get(f"{key}_file")
        if path:
            digest = digests.get(key)
            named.append(f"{key} {_printable(path)}" + (f" (sha256 {digest})" if digest else ""))
    return "; ".join(named)


def _resumed_line(report: dict[str, Any]) -> str:
    """The line saying a run was resumed after a restart, and which run it continues (else "")."""
    if report.get("resumed_at_frame") is None:
        return ""
    previous = report.get("resumes_run") or "unknown (no interrupted run of its series)"
    after = "a pause" if report.get("resumed_after") == "pause" else "restart"
    line = f"  resumed after {after} at frame {report['resumed_at_frame']}: continues run {previous}"
    total = report.get("series_frames_expected")
    if total is not None:
        line += f" (its series: {total} frames, {report['resumed_at_frame']}..{int(total) - 1} here)"
    return line


def _printable(text: object) -> str:
    """``text`` with its control characters escaped: a consumer's stored path came from the network (a
    ledger older than the protocol's check may hold a newline or an ANSI escape in one)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _continued_at(ledger: Any, later: list[str]) -> int | None:
    """The frame of the series at which the first run continuing it began (None: none, or unknown)."""
    for run_uid in later[:1]:
        with contextlib.suppress(Exception):  # (a run since deleted from the ledger: unknown)
            first = run_config(ledger.run(run_uid)["config"]).get("first_frame")
            return int(first) if isinstance(first, int) and not isinstance(first, bool) else None
    return None


def _expected_text(report: dict[str, Any]) -> str:
    """How many frames the run was to account for: a run that continues another from frame F accounts
    for its series' frames from F on only (the frames before are the earlier run's)."""
    first = report.get("resumed_at_frame")
    # a run resumed after a restart saw no series header: its series' length is the interrupted run's
    expected = report["frames_expected"] or (report.get("series_frames_expected") if first else None)
    if not expected:
        if run_config(report.get("config")).get("capture_file"):
            # a capture's run: as many as its client captured (Capture 0 ends it), across its series
            # (an outside probe read "expected unknown" beside "LOST frames 65..199")
            return "expected: as many as the capture took, across its series (Capture 0 ends it)"
        return "expected unknown"
    went_on = report.get("continued_at_frame")
    tail = ""
    if went_on is not None and report.get("continued_by") and int(went_on) < int(expected):
        # its series went on in another run after a restart: those frames are that run's (an outside
        # probe read "110 stored, 0 lost (expected 600)" as 490 frames unaccounted for)
        tail = f"; frames {went_on}..{int(expected) - 1} went on in run {report['continued_by'][0]}"
    if first:
        return f"expected frames {first}..{int(expected) - 1} of its series' {expected}{tail}"
    return f"expected {expected}{tail}"


def _whole(value: Any) -> int | None:
    """``value`` when it is a whole number (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _split_account(
    report: dict[str, Any], armed_from: int = 0, seen: int | None = None
) -> tuple[int | None, int | None]:
    """A series split by a restart (or a pause) between runs: the frames of it that went on in the run
    continuing this one (``frames_continued``), and the frames this run accounts for
    (``frames_this_run``: its series' length, less those, less the frames before ``resumed_at_frame``,
    the earlier run's), so stored + vetoed + lost + not acquired = ``frames_this_run`` for every run
    (an outside probe's script read 334 of 900 and 566 of 900 for the two halves). None: unknown.

    The series' frames are ``armed_from`` .. ``armed_from + length - 1`` (a UDP acquisition whose numbers
    went on from an earlier one's is armed from its own first frame), and reach the highest frame the run
    received (``seen``) when the detector sent more than it was armed for (an outside probe: 13 frames
    stored of 10 armed, and the account said 10)."""
    resumed = report.get("resumed_at_frame")
    first = armed_from if resumed is None else int(resumed)
    expected = report.get("frames_expected") or (report.get("series_frames_expected") if resumed else None)
    if not isinstance(expected, int) or expected <= 0:
        return None, None
    end = armed_from + expected
    if seen is not None and seen >= end:
        end = seen + 1
    went_on = report.get("continued_at_frame")
    continued = (
        max(0, end - int(went_on))
        if went_on is not None and report.get("continued_by") and int(went_on) < end
        else 0
    )
    return continued, max(0, end - continued - first)


def _frames_text(frames: list[int] | None, count: int | None = None) -> str:
    """A file's frames as a line of ``edge where`` shows them: ``frames 0..99``, with their count when
    the span holds others too (``18 frames, 7..55``: serial's hits among blanks), or none (a file of
    products or documents holds no frames of the detector's)."""
    if frames is None:
        return "no frames"
    if count is not None and count != frames[1] - frames[0] + 1:
        return f"{count} frames, {frames[0]}..{frames[1]}"
    return f"frames {frames[0]}..{frames[1]}"
