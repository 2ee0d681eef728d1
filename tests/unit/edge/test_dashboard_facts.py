"""Facts the dashboard shows, each computed in one place: alarms and their acknowledgements, the upstream
outlook (one ETA, stalled, lag), resends counted apart from sends, scoped counters, and the HPC-side copy
of a file in the where-is-my-data report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.alarms import AlarmBook, current_alarms
from edge.counter_scopes import CounterScopes
from edge.durable import file_checksums
from edge.errors import NotFound
from edge.ledger import Ledger
from edge.upstream import protocol as p
from edge.upstream.outlook import eta_seconds, upstream_outlook
from edge.upstream.session import ForwarderSession
from edge.where import PRODUCTS_IN_REDUCED, render, where_report


def status_with_run(run_uid: str, lost: int, **extra: Any) -> dict[str, Any]:
    return {
        "counts": {"run": {"run_uid": run_uid, "frames_lost": lost, "loss_records": 1 if lost else 0}},
        **extra,
    }


def test_a_loss_alarm_belongs_to_its_run_and_goes_with_it() -> None:
    faulty = current_alarms(status_with_run("aaaaaaaa-1", 80))
    assert [(a["id"], a["scope"], a["severity"]) for a in faulty] == [("run:aaaaaaaa-1:lost", "run", "major")]
    assert faulty[0]["message"].startswith("Run aaaaaaaa-1: 80 frames lost (1 loss record);")
    assert current_alarms(status_with_run("bbbbbbbb-2", 0)) == []  # the next, clean run: nothing stale


def test_two_runs_a_detector_named_alike_have_different_short_names() -> None:
    """Every run name was cut to 8 characters: two runs "beamtime-2026-...-crystal-042" and "...-043"
    were both "beamtime" in the alarms, the runs table and the captions (an outside probe)."""
    from edge.alarms import short_uid

    uuid = "5f0c2d3e-1b2a-4c3d-8e9f-0123456789ab"
    assert short_uid(uuid) == "5f0c2d3e"  # a UUID: its head, as before
    assert short_uid("scan-17") == "scan-17" and short_uid("sixteen-chars-ok") == "sixteen-chars-ok"
    a = short_uid("beamtime-2026-mx-ligand-soak-series-A-crystal-042")
    b = short_uid("beamtime-2026-mx-ligand-soak-series-B-crystal-043")
    assert (a, b) == ("beamtime…al-042", "beamtime…al-043")
    lost = current_alarms(status_with_run("beamtime-2026-mx-ligand-soak-series-A-crystal-042", 11))
    assert lost[0]["message"].startswith("Run beamtime…al-042: 11 frames lost")


def test_a_mode_whose_kernels_load_for_long_raises_an_alarm_saying_why_frames_wait() -> None:
    """An outside dashboard probe: the first serial run of an install stalled 77 s (numba compiling the
    peak finder), the ring full, the page still showing the last powder product and nothing saying
    why. A warm-up running 5 s or more is an alarm naming the mode and the wait; a quick one is none."""

    def status(*warming: tuple[str, float]) -> dict[str, Any]:
        return {"pipeline": {"warming": [{"mode": m, "seconds": s} for m, s in warming]}}

    assert current_alarms(status(("serial", 1.5))) == []  # cached kernels: no alarm
    (alarm,) = current_alarms(status(("serial", 23.0)))
    assert alarm["id"] == "condition:mode_warming:serial" and alarm["severity"] == "minor"
    assert alarm["message"].startswith("Preparing serial mode: its kernels are loading (23 s so far;")
    assert current_alarms(status()) == []
    # a run in the mode reduced frames meanwhile: the alarm says the run has its kernels, not that frames
    # wait (two outside probes read it as the run's, after the run had ended)
    busy = {"pipeline": {"warming": [{"mode": "serial", "seconds": 40.0, "frames_reduced": 800}]}}
    (alarm,) = current_alarms(busy)
    assert alarm["id"] == "condition:mode_warming:serial"
    assert alarm["message"].startswith("serial mode runs: 800 frames reduced with the kernels"), alarm
    assert "Preparing" not in alarm["message"] and "still load in the background" in alarm["message"]


def test_the_warming_alarm_names_the_mode_whose_kernels_load_next() -> None:
    """An outside probe: after a change to tomo, the alarm named serial (still compiling) for 86 s, the
    operator waiting on tomo with nothing saying tomo was next."""
    status = {"pipeline": {"warming": [{"mode": "serial", "seconds": 40.0}], "warming_next": "tomo"}}
    (alarm,) = [a for a in current_alarms(status) if a["id"].startswith("condition:mode_warming")]
    assert "tomo mode's kernels (the next run's) load after these" in alarm["message"]

    stalled = {"upstream_outlook": {"state": "stalled", "reason": "no consumer connected: hpc must pull"}}
    storage = {"retention": {"alarm": "store full of unverified data", "accepting_runs": False}}
    assert [a["id"] for a in current_alarms({**stalled, **storage})] == [
        "condition:storage",
        "condition:upstream",
    ]
    assert (
        current_alarms({"upstream_outlook": {"state": "delivering"}, "retention": {"accepting_runs": True}})
        == []
    )
    threads = {"appliance": {"threads": {"forwarder": {"state": "dead", "errors": 3, "last_error": "boom"}}}}
    (alarm,) = current_alarms(threads)
    assert alarm["source"] == "thread:forwarder" and alarm["severity"] == "major"
    full = {
        "store": {"disk_full": {"full": True, "reason": "the store's disk is full"}, "ledger_writes_held": 3}
    }
    (alarm,) = current_alarms(full)
    assert alarm["id"] == "condition:disk_full" and "3 ledger record(s) held in memory" in alarm["message"]
    assert "recorded lost (disk_full)" in alarm["message"]
    # writing held for room: the detector is held back, nothing lost (it read "recorded lost": a probe)
    held = {**full, "retention": {"accepting_runs": True, "writing_held": True}}
    (alarm,) = (a for a in current_alarms(held) if a["id"] == "condition:disk_full")
    assert "writing waits for room and the detector is held back" in alarm["message"]
    assert "recorded lost" not in alarm["message"]
    # a start waiting for the last daemon's held records takes no frames: none recorded lost (a probe)
    waiting = {**full, "appliance": {"recovery_waits_for_held_records": 3}}
    alarms = {a["id"]: a["message"] for a in current_alarms(waiting)}
    assert "daemon:recovery_waits" in alarms and "recorded lost" not in alarms["condition:disk_full"]
    assert "no frames are taken" in alarms["condition:disk_full"]
    assert current_alarms({"store": {"disk_full": {"full": False}, "ledger_writes_held": 0}}) == []


def test_acknowledgement_lasts_while_the_alarm_does() -> None:
    clock = iter(range(100, 200)).__next__
    book = AlarmBook(clock=lambda: float(clock()))
    alarms = current_alarms(status_with_run("aaaaaaaa-1", 80))
    (first,) = book.annotate(alarms)
    assert first["acknowledged"] is False and first["since"] == 100.0
    with pytest.raises(NotFound):
        book.acknowledge("run:someone-else:lost")
    assert book.acknowledge(first["id"], by="tester")["ack"]["by"] == "tester"
    (again,) = book.annotate(alarms)
    assert again["acknowledged"] is True and again["since"] == 100.0
    assert book.annotate([]) == []  # the condition cleared: forgotten
    (back,) = book.annotate(alarms)  # the same condition again is a new alarm, not acknowledged
    assert back["acknowledged"] is False and back["since"] > 100.0


class OutlookLedger:
    required_consumers = ("hpc",)

    def __init__(self, rate: float, oldest: float | None) -> None:
        self.rate, self.oldest = rate, oldest

    def verified_rate(self, window: float, now: float) -> float:
        return self.rate

    def oldest_unverified_at(self) -> float | None:
        return self.oldest


def consumers(connected: bool) -> dict[str, Any]:
    return {"consumers": [{"consumer": "hpc", "connected": connected}], "bytes_sent": 10, "bytes_resent": 4}


def test_one_eta_stalled_without_a_consumer_and_lag_as_age() -> None:
    assert eta_seconds(0, 0.0) == 0.0 and eta_seconds(100, 0.0) is None and eta_seconds(100, 10.0) == 10.0
    assert eta_seconds(100, 10.0, connected=False) is None
    out = upstream_outlook(OutlookLedger(1e6, 1000.0), 5_000_000, consumers(False), now=1600.0)
    assert out["state"] == "stalled" and out["eta_seconds"] is None
    assert out["lag_seconds"] == 600.0 and out["bytes_resent"] == 4
    out = upstream_outlook(OutlookLedger(1e6, 1000.0), 5_000_000, consumers(True), now=1600.0)
    assert (out["state"], out["eta_seconds"]) == ("delivering", 5.0)
    out = upstream_outlook(OutlookLedger(0.0, None), 0, consumers(False), now=1600.0)
    assert (out["state"], out["eta_seconds"], out["lag_seconds"]) == ("up to date", 0.0, 0.0)


def test_the_rate_after_a_reconnect_is_measured_since_it() -> None:
    """An outside probe: the pull client back after 66 s away, "delivering, ETA 237 s" for a backlog
    verified within 10 s: the 120 s window's rate counted the outage's silence."""
    from edge.upstream.outlook import MIN_RATE_WINDOW_SECONDS, RATE_WINDOW_SECONDS, rate_window

    class Windowed(OutlookLedger):
        def verified_rate(self, window: float, now: float) -> float:
            self.asked = window
            return 12e6 / window  # 12 MB verified since the reconnect, 8 s ago

    back = {"consumers": [{"consumer": "hpc", "connected": True, "connected_seconds": 8.0}]}
    assert rate_window(["hpc"], back) == MIN_RATE_WINDOW_SECONDS
    ledger = Windowed(0.0, 1000.0)
    out = upstream_outlook(ledger, 6_000_000, back, now=1600.0)
    assert ledger.asked == 10.0 and out["rate_window_seconds"] == 10.0 and out["eta_seconds"] == 5.0
    settled = {"consumers": [{"consumer": "hpc", "connected": True, "connected_seconds": 500.0}]}
    assert rate_window(["hpc"], settled) == RATE_WINDOW_SECONDS
    away = {"consumers": [{"consumer": "hpc", "connected": False, "connected_seconds": 8.0}]}
    assert rate_window(["hpc"], away) == RATE_WINDOW_SECONDS
    assert rate_window(["hpc"], consumers(True)) == RATE_WINDOW_SECONDS  # (a view without the field)


def test_a_stall_for_a_required_consumer_away_says_others_are_connected() -> None:
    """An outside probe: "no consumer connected: pullA must pull" beside two consumers pulling."""
    from edge.upstream.outlook import stall

    class Two(OutlookLedger):
        required_consumers = ("hpc", "tape")

    out = upstream_outlook(Two(1e6, 1000.0), 5_000_000, consumers(True), now=1600.0)
    assert out["reason"].startswith("a required consumer not connected: tape must pull"), out["reason"]
    assert stall(["hpc", "tape"], consumers(True)) == "a required consumer not connected: tape must pull"
    alone = upstream_outlook(Two(1e6, 1000.0), 5_000_000, consumers(False), now=1600.0)
    assert alone["reason"].startswith("no consumer connected: hpc, tape must pull"), alone["reason"]
    # a key the appliance refused: said beside it (an outside probe found it in a counter and the log only)
    refused = {**consumers(False), "curve_handshakes_refused": 3}
    assert stall(["hpc"], refused) == (
        "no consumer connected: hpc must pull (handshakes since start: 3 of a key not admitted"
        " (upstream.curve_clients_dir; the log names it))"
    )
    # a client holding another server key, or none: its handshakes fail without a key refused (an
    # outside probe's wrong server key showed in a counter only)
    failed = {**consumers(False), "handshakes_failed": 50, "curve_handshakes_without_curve": 2}
    said = stall(["hpc"], failed)
    assert said is not None and said.startswith(
        "no consumer connected: hpc must pull (handshakes since start:"
    )
    assert "2 without CurveZMQ keys" in said and "50 failed otherwise" in said, said
    assert "curve_server_file" in said, said


def test_a_consumer_refusing_everything_is_a_stall_that_says_why() -> None:
    """Connected but refusing (its disk is full): stalled once nothing is verified in the window, with
    its own words; a refusal long ago, or refusals while files still get verified, are not a stall."""
    refusing = consumers(True)
    refusing["consumers"][0] |= {
        "last_refusal": "cannot write it here: No space left",
        "seconds_since_refusal": 4.0,
    }
    out = upstream_outlook(OutlookLedger(0.0, 1000.0), 5_000_000, refusing, now=1600.0)
    assert (out["state"], out["eta_seconds"], out["refusing"]) == ("stalled", None, ["hpc"])
    assert "No space left" in out["reason"]
    assert (
        upstream_outlook(OutlookLedger(1e6, 1000.0), 5_000_000, refusing, now=1600.0)["state"] == "delivering"
    )
    refusing["consumers"][0]["seconds_since_refusal"] = 400.0
    out = upstream_outlook(OutlookLedger(0.0, 1000.0), 5_000_000, refusing, now=1600.0)
    assert (out["state"], out["refusing"]) == ("waiting", [])


def test_up_to_date_with_files_kept_local_does_not_say_every_stored_file_went() -> None:
    """An outside probe (upstream.forward = reduced): "every stored file is verified upstream" beside
    20 MB of data files that never go upstream."""
    out = upstream_outlook(OutlookLedger(0.0, None), 0, consumers(True), now=1600.0, local_bytes=19_900_000)
    assert out["state"] == "up to date" and "every stored file" not in out["reason"]
    assert "19,900,000 bytes kept local" in out["reason"]


def test_a_held_back_consumer_stays_a_stall_through_a_long_pause() -> None:
    """An outside probe: the outlook went from stalled to "delivering" (files verified earlier in the
    window) 30 s into a hold-back pause, the consumer still refusing everything."""
    held = {
        "consumer": "hpc",
        "connected": True,
        "held_back": True,
        "refused_in_a_row": 12,
        "last_refusal": "No space left on device",
        "seconds_since_refusal": 45.0,
    }
    out = upstream_outlook(OutlookLedger(1e6, 1000.0), 5_000_000, {"consumers": [held]}, now=1600.0)
    assert out["state"] == "stalled" and out["refusing"] == ["hpc"] and out["eta_seconds"] is None
    assert "No space left on device" in out["reason"]


def test_a_consumer_refusing_chunk_after_chunk_is_a_stall_before_it_is_held_back() -> None:
    """An outside probe: a full HPC disk's first six refusals (not yet the eight that hold the consumer
    back) left `edge where` saying "ETA 30 s", the rate of files verified earlier in the window, and no
    reason. Refusals in a row with none taken since are a stall there and in the outlook; one refusal
    (a bit flipped on the way, resent at once) is not."""
    from edge.upstream.outlook import stall

    refusing = consumers(True)
    refusing["consumers"][0] |= {
        "last_refusal": "cannot write it here: No space left on device",
        "seconds_since_refusal": 2.0,
        "refused_in_a_row": 6,
    }
    out = upstream_outlook(OutlookLedger(1e6, 1000.0), 5_000_000, refusing, now=1600.0)
    assert (out["state"], out["eta_seconds"]) == ("stalled", None)
    assert "No space left on device" in (stall(["hpc"], refusing) or "")
    refusing["consumers"][0]["refused_in_a_row"] = 1
    out = upstream_outlook(OutlookLedger(1e6, 1000.0), 5_000_000, refusing, now=1600.0)
    assert out["state"] == "delivering" and stall(["hpc"], refusing) is None


def _a_file_verified_now(ledger: Ledger, tmp_path: Path) -> None:
    """Another run's file, verified by hpc just now: the appliance has a verified rate to go by."""
    other = tmp_path / "other.h5"
    other.write_bytes(b"y" * 4096)
    size, digest, chunks = file_checksums(other, 1024)
    ledger.run_started("run-0", 9, 0, "{}")
    ledger.file_stored("run-0", other.name, other, size, digest, (0, 0, 0), chunks)
    (verified,) = ledger.files("run-0")
    assert ledger.file_verified("hpc", verified["id"], size, digest, "/hpc/other.h5")


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    ledger.run_started("run-1", 1, 3, "{}")
    path = tmp_path / "run-1_00000.h5"
    path.write_bytes(bytes(range(256)) * 12)
    size, digest, chunks = file_checksums(path, 1024)
    ledger.file_stored("run-1", path.name, path, size, digest, (0, 2, 3), chunks)
    yield ledger
    ledger.close()


def frames(message: p.Message) -> list[bytes]:
    return [bytes(f) for f in p.encode(message)]


def test_resends_are_not_counted_as_sending(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, resend_seconds=10.0)
    session.receive(b"peer", frames(p.Hello("hpc", 3)), 0.0)
    sent = [o.message for o in session.tick(0.0) if isinstance(o.message, p.Chunk)]
    assert len(sent) == 3 and session.stats["bytes_sent"] == 3072
    resent = [o.message for o in session.tick(10.5) if isinstance(o.message, p.Chunk)]  # unanswered
    assert len(resent) == 3
    assert session.stats["bytes_sent"] == 3072 and session.stats["bytes_resent"] == 3072
    assert session.stats["chunks_sent"] == 3 and session.stats["chunks_resent"] == 3


def test_where_shows_the_hpc_side_copy_and_a_summary_first(ledger: Ledger) -> None:
    (row,) = ledger.files("run-1")
    assert ledger.file_verified(
        "hpc", row["id"], row["size"], row["checksum"], "/hpc/out/run-1/run-1_00000.h5"
    )
    assert ledger.oldest_unverified_at() is None
    report = where_report(ledger, "run-1")
    (entry,) = report["files"]
    assert entry["upstream_copies"] == {"hpc": "/hpc/out/run-1/run-1_00000.h5"}
    here = Path(entry["path"]).parent  # spelled out too, as the upstream folder is
    assert report["summary"].startswith(
        f"1 file(s): 1 on the appliance ({here}), 1 verified upstream (/hpc/out/run-1)"
    )
    text = render(report).splitlines()
    assert text[1].strip() == report["summary"]
    assert any(line.strip() == "upstream copy (hpc): /hpc/out/run-1/run-1_00000.h5" for line in text)


def test_where_lists_the_run_s_quarantined_files(ledger: Ledger, tmp_path: Path) -> None:
    """A file a crash left half-written is set aside in STORE/quarantine/RUN/ and is no file in the
    ledger: an outside chaos probe found `edge where` and the API never named it (only the recovery
    report of the one start that moved it, gone after the next restart)."""
    assert where_report(ledger, "run-1", store=tmp_path)["quarantined"] == []
    part = tmp_path / "quarantine" / "run-1" / "run-1_00003.h5.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1234)
    report = where_report(ledger, "run-1", store=tmp_path)
    assert report["quarantined"] == [{"path": str(part), "size": 1234}]
    assert any(
        line.strip().startswith(f"quarantined {part}  (1234 bytes") and "frames are loss records" in line
        for line in render(report).splitlines()
    )
    # the run's documents cut while being written hold no frames (an outside probe read "its frames are
    # loss records" for them too)
    docs = part.with_name("run-1.documents.r2.jsonl.part")
    docs.write_bytes(b"{")
    lines = [
        line
        for line in render(where_report(ledger, "run-1", store=tmp_path)).splitlines()
        if str(docs) in line
    ]
    assert len(lines) == 1 and "no frames in it" in lines[0] and "loss records" not in lines[0], lines


def test_where_gives_no_eta_without_a_daemon_and_a_resumed_run_its_series_length(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An outside chaos probe: after the daemon was stopped `edge where` still said "ETA 1 s" (the rate of
    the last 120 s of a daemon now gone), and a run resumed after a restart said "expected unknown"
    though its series had announced 600 frames (recorded with the run it continues)."""
    import json
    import time

    (row,) = ledger.files("run-1")
    _a_file_verified_now(ledger, tmp_path)  # a rate
    now = time.time()
    assert where_report(ledger, "run-1", now=now)["eta_seconds"]  # a daemon: a figure
    report = where_report(ledger, "run-1", now=now, daemon_running=False)
    assert report["bytes_pending"] == row["size"] and report["eta_seconds"] is None
    assert "(no daemon running: sent once one starts)" in render(report)
    ledger.run_started("run-interrupted", 5, 600, "{}")
    config = {"resumed_after_restart": True, "first_frame": 181, "resumes_run": "run-interrupted"}
    ledger.run_started("run-resumed", 5, None, json.dumps(config))
    resumed = where_report(ledger, "run-resumed")
    assert resumed["series_frames_expected"] == 600
    assert "(its series: 600 frames, 181..599 here)" in render(resumed)
    # and its frames line no longer says "expected unknown" (an outside tomography probe)
    assert "lost (expected frames 181..599 of its series' 600)" in render(resumed)


def test_counter_scopes_subtract_what_the_ledger_held_at_start() -> None:
    scopes = CounterScopes({"frames_stored": 100, "frames_lost": 7, "frames_verified": 90}, started_at=5.0)
    now = {
        "frames_stored": 130,
        "frames_lost": 7,
        "frames_verified": 95,
        "frames_incomplete": 0,
        "loss_records": 1,
    }
    out = scopes.scopes(now, 31, "run-2", True, {"frames_stored": 30, "frames_lost": 0})
    assert out["daemon"]["frames_stored"] == 30 and out["daemon"]["frames_lost"] == 0
    assert out["daemon"]["frames_received"] == 31 and out["daemon"]["since"] == 5.0
    assert out["all_time"]["frames_lost"] == 7 and out["all_time"]["frames_delivered"] == 95
    assert out["run"] == {
        "run_uid": "run-2",
        "active": True,
        "frames_stored": 30,
        "frames_delivered": 0,
        "frames_lost": 0,
        "frames_incomplete": 0,
        "loss_records": 0,
        "frames_vetoed": 0,
    }


def test_vetoed_frames_are_scoped_live_while_the_run_is_open_and_from_the_ledger_once_it_ended() -> None:
    """Blanks a mode dropped reach the ledger when their run ends; until then they are the pipeline's."""
    scopes = CounterScopes({"frames_stored": 10, "frames_vetoed": 4}, started_at=5.0)
    ledger = {"frames_stored": 30, "frames_vetoed": 4}  # 4 from an earlier run
    open_run = scopes.scopes(ledger, 40, "run-2", True, {"frames_stored": 20}, 6, 6)
    assert open_run["run"]["frames_vetoed"] == 6  # counted as they are dropped, not at the end
    assert open_run["daemon"]["frames_vetoed"] == 6
    assert open_run["all_time"]["frames_vetoed"] == 10
    ledger["frames_vetoed"] = 10  # the run ended: its 6 are in the ledger now, and not counted twice
    ended = scopes.scopes(ledger, 40, "run-2", False, {"frames_stored": 20, "frames_vetoed": 6}, 6, None)
    assert ended["run"]["frames_vetoed"] == 6 and ended["all_time"]["frames_vetoed"] == 10
    assert ended["run"]["frames_lost"] == 0  # a vetoed frame is never a loss


def test_where_escapes_control_characters_in_a_stored_upstream_path(ledger: Ledger) -> None:
    """A path a consumer reported before the protocol refused such paths (a ledger of an older version)
    is printed with its newline and ANSI escape shown as escapes, never as a forged line or colour."""
    (row,) = ledger.files("run-1")
    forged = "/hpc/x\n  verified  /FAKE/LINE \x1b[31mRED\x1b[0m"
    assert ledger.file_verified("hpc", row["id"], row["size"], row["checksum"], forged)
    report = where_report(ledger, "run-1")
    text = render(report)
    assert "\x1b" not in text and "\n  verified  /FAKE" not in text
    assert "/hpc/x\\n  verified  /FAKE/LINE \\x1b[31mRED\\x1b[0m" in text
    assert "\n" not in report["summary"]


def test_where_says_which_file_holds_the_mode_s_products(tmp_path: Path) -> None:
    """An outside tomography probe asked where the slices are: the reduced file's row says what it holds
    and where in it (the API's ``holds``, printed after its path by ``edge where``)."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("t-1", 1, 3, "{}", "tomo")
        for name, kind in (("t-1_00000.h5", "data"), ("t-1_reduced_00000.nxs", "reduced")):
            path = tmp_path / name
            path.write_bytes(b"x")
            ledger.file_stored("t-1", name, path, 1, "0" * 32, (0, 2, 3), [], kind=kind)
        report = where_report(ledger, "t-1")
    finally:
        ledger.close()
    holds = {f["name"]: f["holds"] for f in report["files"]}
    assert holds == {"t-1_00000.h5": None, "t-1_reduced_00000.nxs": PRODUCTS_IN_REDUCED["tomo"]}
    assert "t-1_reduced_00000.nxs  (slices: /entry/reconstruction" in render(report)


def test_a_run_is_found_by_a_prefix_in_any_case_and_an_ambiguous_one_lists_the_runs(tmp_path: Path) -> None:
    """An outside first-time user: an uppercase prefix of a real uid said "no run", and an ambiguous
    prefix did not say which runs it matched."""
    from edge.where import resolve_run

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        for uid in ("6a3644a8-0001", "6a3644a8-0002", "b7c1"):
            ledger.run_started(uid, 1, None, "{}")
        assert resolve_run(ledger, "B7") == "b7c1"
        with pytest.raises(NotFound, match=r"matches 2 runs \(6a3644a8-0001, 6a3644a8-0002\)"):
            resolve_run(ledger, "6A3644A8")
        for empty in ("", "  "):  # every uid starts with "": it "matched 3 runs" (an outside probe)
            with pytest.raises(NotFound, match="no run uid given"):
                resolve_run(ledger, empty)
    finally:
        ledger.close()


def test_a_consumer_that_heartbeats_but_answers_no_chunk_is_a_stall_that_says_so() -> None:
    """An outside hostile consumer: connected, heartbeating, acknowledging nothing for minutes: the
    state stayed "waiting" with no alarm while the lag grew."""
    wedged = consumers(True)
    wedged["consumers"][0]["seconds_unanswered"] = 144.0
    out = upstream_outlook(OutlookLedger(0.0, 1000.0), 5_000_000, wedged, now=1600.0)
    assert (out["state"], out["unanswering"]) == ("stalled", ["hpc"])
    assert "acknowledging nothing sent to it (hpc for 144 s)" in out["reason"]
    wedged["consumers"][0]["seconds_unanswered"] = 20.0  # answers are only a little late: waiting
    assert upstream_outlook(OutlookLedger(0.0, 1000.0), 5_000_000, wedged, now=1600.0)["state"] == "waiting"


def _tomo_run_with_a_file(ledger: Ledger, directory: Path, uid: str, expected: int, frames: int) -> None:
    """A tomography run of ``expected`` frames with one data file of its first ``frames``."""
    ledger.run_started(uid, 1, expected, "{}", "tomo")
    path = directory / f"{uid}_00000.h5"
    path.write_bytes(b"x")
    ledger.file_stored(uid, path.name, path, 1, "0" * 32, (0, frames - 1, frames), [])


def test_a_tomography_run_that_ended_without_slices_says_why_and_where_to_look(tmp_path: Path) -> None:
    """An outside probe: a scan cut by a crash and never resumed had no reconstruction anywhere, and
    `edge where` said nothing about it."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        _tomo_run_with_a_file(ledger, tmp_path, "t-2", 40, 10)
        assert where_report(ledger, "t-2")["products_note"] is None  # still running: not yet
        ledger.run_ended("t-2", "fail", 10)
        report = where_report(ledger, "t-2")
    finally:
        ledger.close()
    assert report["products_note"].startswith("no slices: the scan ended fail before its reconstruction")
    assert "  products: no slices" in render(report)


def test_a_tomography_note_never_points_at_a_run_without_slices(tmp_path: Path) -> None:
    """An outside probe: the note sent the reader to the run continuing the scan, which held no slices
    (it was cut again, or reduced in another mode)."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("t-3", 1, 40, "{}", "tomo")
        ledger.run_ended("t-3", "fail", 0)
        ledger.run_started(
            "t-4", 1, 40, json.dumps({"resumed_after_restart": True, "resumes_run": "t-3"}), "serial"
        )
        ledger.run_ended("t-4", "fail", 0)
        report = where_report(ledger, "t-3")
    finally:
        ledger.close()
    assert report["continued_by"] == ["t-4"]
    assert report["products_note"].startswith("no slices: the scan went on in run t-4, but no run")


def test_where_marks_a_stored_file_gone_from_the_disk_as_missing_not_purged(ledger: Ledger) -> None:
    """An outside HPC-side probe: a stored file deleted by hand was shown "(purged locally)", as if the
    retention policy had retired it after its verification; it was never sent and cannot be."""
    (row,) = ledger.files("run-1")
    Path(row["path"]).unlink()
    (entry,) = where_report(ledger, "run-1")["files"]
    assert entry["on_local_disk"] is False and entry["missing_locally"] is True
    text = render(where_report(ledger, "run-1"))
    assert f"(MISSING from the local disk, not purged) {row['path']}" in text
    assert "purged locally" not in text


def test_where_gives_no_eta_for_a_pending_file_missing_or_changed_on_the_local_disk(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An outside probe: with one pending file deleted and another truncated by hand, `edge where` said
    "ETA 11 s" for data that arrives only once restored (the status's outlook had none), and showed the
    truncated file as a plain stored one. Both now read as what they are, and there is no ETA."""
    import time

    (row,) = ledger.files("run-1")
    _a_file_verified_now(ledger, tmp_path)  # a rate
    now = time.time()
    report = where_report(ledger, "run-1", now=now)
    assert report["eta_seconds"] is not None and report["files_unreadable_locally"] == 0
    path = Path(row["path"])
    with open(path, "r+b") as handle:  # truncated by hand
        handle.truncate(1000)
    report = where_report(ledger, "run-1", now=now)
    (entry,) = report["files"]
    assert entry["changed_locally"] == f"1000 bytes on the disk, {row['size']} when stored", entry
    assert report["eta_seconds"] is None and report["files_unreadable_locally"] == 1
    text = render(report)
    assert "(CHANGED on the local disk since stored: 1000 bytes on the disk" in text
    assert "no ETA: 1 pending file(s) missing or changed" in text and "ETA 0" not in text
    path.write_bytes(bytes(range(256)) * 12)  # restored, yet the daemon read it as changed: said too
    report = where_report(ledger, "run-1", now=now, unreadable={str(path): "checksum mismatch"})
    assert report["files"][0]["changed_locally"] == "checksum mismatch" and report["eta_seconds"] is None
    # restored since the daemon found it gone (it tries again once a minute): there, as stored
    report = where_report(ledger, "run-1", now=now, unreadable={str(path): "[Errno 2] No such file"})
    assert report["files"][0]["changed_locally"] is None and report["eta_seconds"] is not None
    path.unlink()
    report = where_report(ledger, "run-1", now=now)
    assert report["files"][0]["missing_locally"] and report["eta_seconds"] is None


def test_where_names_the_required_consumers_copy_before_an_optional_mirrors(ledger: Ledger) -> None:
    (row,) = ledger.files("run-1")
    # the mirror's copy alone does not verify it: "0 verified upstream (/aaa/mirror)" named a folder for
    # a count of 0 (an outside probe)
    assert ledger.file_verified("a-mirror", row["id"], row["size"], row["checksum"], "/aaa/mirror/x.h5")
    assert "0 verified upstream, 1 pending" in where_report(ledger, "run-1")["summary"]
    for consumer, path in (("a-mirror", "/aaa/mirror/run-1_00000.h5"), ("hpc", "/hpc/out/run-1_00000.h5")):
        assert ledger.file_verified(consumer, row["id"], row["size"], row["checksum"], path)
    assert "verified upstream (/hpc/out, /aaa/mirror)" in where_report(ledger, "run-1")["summary"]


def test_where_names_an_optional_mirrors_folder_only_when_it_holds_every_verified_file(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An outside probe: a mirror holding a run's documents file alone was named in the summary beside
    the folder of its 5 files verified upstream, as if they were there too."""
    path = tmp_path / "run-1_00001.h5"
    path.write_bytes(bytes(range(256)) * 4)
    size, digest, chunks = file_checksums(path, 1024)
    ledger.file_stored("run-1", path.name, path, size, digest, (3, 3, 1), chunks)
    first, second = ledger.files("run-1")
    for row in (first, second):
        assert ledger.file_verified("hpc", row["id"], row["size"], row["checksum"], f"/hpc/out/{row['name']}")
    assert ledger.file_verified("a-mirror", first["id"], first["size"], first["checksum"], "/aaa/mirror/x.h5")
    assert "2 verified upstream (/hpc/out), " in where_report(ledger, "run-1")["summary"]
    assert ledger.file_verified(
        "a-mirror", second["id"], second["size"], second["checksum"], "/aaa/mirror/y.h5"
    )
    assert "2 verified upstream (/hpc/out, /aaa/mirror), " in where_report(ledger, "run-1")["summary"]


def test_a_run_id_that_is_not_utf8_is_no_run_not_a_crash(ledger: Ledger) -> None:
    """`edge where $'\\xff\\xfe'`: the shell's bytes reach Python as surrogates, which SQLite cannot take
    (an outside probe: a UnicodeEncodeError traceback)."""
    from edge.errors import NotFound
    from edge.where import resolve_run

    with pytest.raises(NotFound, match="a run uid is text"):
        resolve_run(ledger, "\udcff\udcfe")


def test_a_huge_run_id_is_quoted_cut_short(ledger: Ledger) -> None:
    """An outside probe: `edge where` with a 100 000-character id printed it back whole."""
    from edge.errors import NotFound
    from edge.where import resolve_run

    with pytest.raises(NotFound) as error:
        resolve_run(ledger, "x" * 100_000)
    message = str(error.value)
    assert len(message) < 300 and "(100000 characters)" in message, message[:400]


def test_json_the_receiver_cannot_read_suggests_the_other_stream_format() -> None:
    """A Stream V2 sender into the default JSON receiver: the alarm said "malformed_json 22" only (an
    outside probe); the other way round it already named stream.format."""
    (alarm,) = current_alarms({"receiver": {"errors": {"malformed_json": 22}}})
    assert alarm["message"].startswith("Receiver errors: malformed_json 22 (malformed_json: a Stream V2")
    assert "check stream.format" in alarm["message"]


def test_a_tomography_run_without_slices_that_ended_well_or_stored_nothing_says_so(tmp_path: Path) -> None:
    """Outside probes: a scan that ended success with no projection carrying an angle (a Stream V2
    sender) was told it "ended success before its reconstruction was written, and was not resumed"; a
    refused run with nothing stored was told its frames were in its data files."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        _tomo_run_with_a_file(ledger, tmp_path, "t-5", 20, 20)
        ledger.run_ended("t-5", "success", 20)
        ledger.run_started("t-6", 2, 20, "{}", "tomo")
        ledger.run_ended("t-6", "abort", 0)
        ended_well, refused = where_report(ledger, "t-5"), where_report(ledger, "t-6")
    finally:
        ledger.close()
    assert ended_well["products_note"].startswith("no slices: the scan ended with no projection the")
    assert "none carried a rotation angle" in ended_well["products_note"]
    # nor only the angles: a scan of darks and flats alone had its missing angles blamed (an outside probe)
    assert "no projection came (image_key 0; darks and flats only)" in ended_well["products_note"]
    # the carrier named as it was (an outside probe's JSON-stream run read "Stream V2 and UDP carry none")
    assert "the JSON stream's images sent none" in ended_well["products_note"]
    assert refused["products_note"] == "no slices: no frame of this run was stored (its losses say why)"


def test_frames_a_crash_lost_are_a_major_alarm() -> None:
    """An outside dashboard probe: a run failed by a kill -9 with 64 frames lost raised only the minor
    recovery alarm, while another run's 5 lost frames had raised a major one. A recovery that recorded
    frames lost is major; one that only tidied up (a file salvaged) stays minor."""
    lost = {"appliance": {"recovery": {"runs_failed": ["ea6bbbc7-0000"], "frames_lost": 64}}}
    (alarm,) = current_alarms(lost)
    assert alarm["id"] == "daemon:recovery" and alarm["severity"] == "major"
    assert "64 frames recorded lost" in alarm["message"]
    tidy = {"appliance": {"recovery": {"salvaged": ["a_00001.h5"], "frames_lost": 0}}}
    (alarm,) = current_alarms(tidy)
    assert alarm["severity"] == "minor"


def test_a_verified_file_gone_from_the_disk_is_upstream_not_missing(ledger: Ledger) -> None:
    """An outside probe polled `edge where` while retention purged: the file it had just deleted, not
    yet recorded purged, read "MISSING from the local disk" for a moment. Verified, it is upstream."""
    (row,) = ledger.files("run-1")
    for chunk in ledger.pending_chunks("hpc", [], 4096):
        ledger.chunks_sent([chunk["id"]])
        assert ledger.chunk_acked("hpc", chunk["id"], chunk["checksum"])
    assert ledger.file_verified("hpc", row["id"], row["size"], row["checksum"])
    Path(row["path"]).unlink()  # retention's delete, before it records the purge
    (entry,) = where_report(ledger, "run-1")["files"]
    assert entry["state"] == "verified" and entry["missing_locally"] is False
    text = render(where_report(ledger, "run-1"))
    assert f"(not on the local disk; verified upstream) {row['path']}" in text and "MISSING" not in text


def test_the_summary_says_how_many_files_a_required_consumer_holds_when_not_all() -> None:
    """An outside probe: hpc confirmed 23 files (7 purged then), mirror was required since and holds 16,
    tape was required last and holds none; the summary read "23 verified upstream (up_hpc/RUN,
    up_mirror/RUN)", as if every required consumer held the run."""
    from edge.where import summary_line

    def entry(n: int) -> dict:
        copies = {"hpc": f"/up_hpc/RUN/f{n}.h5"}
        if n >= 7:
            copies["mirror"] = f"/up_mirror/RUN/f{n}.h5"
        return {
            "state": "purged",
            "on_local_disk": False,
            "path": f"/store/RUN/f{n}.h5",
            "upstream_copies": copies,
            "verified_by": {},
        }

    report = {"files": [entry(n) for n in range(23)], "required_consumers": ["hpc", "mirror", "tape"]}
    said = summary_line(report)
    assert "23 verified upstream (/up_hpc/RUN, /up_mirror/RUN: 16 of them)" in said, said
    assert "(tape: none of them, required since they were confirmed)" in said, said
    report["required_consumers"] = ["hpc"]  # an optional mirror holding some: not named, as before
    assert "23 verified upstream (/up_hpc/RUN), 0 pending" in summary_line(report)


def test_where_names_the_calibration_files_a_run_used_with_their_checksums(ledger: Ledger) -> None:
    """An outside powder probe: `edge where` named no .poni or mask of a normal run, and --json gave the
    paths without checksums, so two runs of the same paths and other contents read alike."""
    report = where_report(ledger, "run-1")
    report["reduction"] = {"poni_file": "/cal/cur.poni", "mask_file": "/cal/mask.npy", "dark_file": None}
    report["calibration_sha256"] = {"poni": "a" * 64, "mask": "b" * 64}
    text = render(report)
    assert (
        f"  calibration: poni /cal/cur.poni (sha256 {'a' * 64}); mask /cal/mask.npy (sha256 {'b' * 64})"
        in text
    )
    report["reduction"] = {}
    assert "calibration:" not in render(report)
