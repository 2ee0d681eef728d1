"""The REST API of an appliance in this process: ``GET /api/product`` names the run its product belongs to,
during the run and after it ended (a tomography run's reconstruction, say, is fetched once the run is
over: it must still say which run it is); ``PUT /api/reduction`` checks rows and boxes against the
detector's frame, as the PVs do; vetoed blanks are counted in every scope; a reduction change racing a
series start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgeprocs import in_process_appliance, wait_for
from fastapi.testclient import TestClient

from firmware_bridge.stream_codec import encode_image, encode_series_end, encode_series_start
from webui import create_app

SHAPE = (32, 32)


def test_the_product_names_its_run_after_the_run_ended(tmp_path: Path) -> None:
    with in_process_appliance(tmp_path, SHAPE, 'api.token="s3cret"') as (appliance, push, settings):
        http = TestClient(create_app(settings, appliance.view, reduction=appliance.reduction))
        assert http.get("/api/product").status_code == 404  # no run since the daemon started
        auth = {"Authorization": "Bearer s3cret"}
        outside = http.put("/api/reduction", json={"tomo": {"slices": [SHAPE[0]]}}, headers=auth)
        assert outside.status_code == 400 and "reduction.tomo.slices row 32" in outside.json()["detail"]
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="product-run", frames_expected=3))
        for frame in range(3):
            data = np.full(SHAPE, frame + 1, np.uint16).tobytes()
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", data))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.ledger.run("product-run")["ended_at"], 30, "the run's end")
        product = http.get("/api/product").json()
        assert product["mode"] == "powder" and product["powder"]["intensity"]
        assert product["run_uid"] == "product-run"
        # each bin says how many of the frame's pixels it holds, so a reader tells a bin no pixel fell
        # in (intensity 0, never measured) from a measured 0
        # a small detector's live image is every pixel (it was every 8th: 4 x 4 of a 32 x 32 frame, where
        # a single bright spot or a thin ring could vanish)
        preview = http.get("/api/preview").json()
        assert (preview["height"], preview["width"]) == SHAPE
        profile = http.get("/api/profile").json()
        for live in (profile, product["powder"]):
            assert len(live["count"]) == len(live["intensity"]) == len(live["radial"])
            assert sum(live["count"]) == SHAPE[0] * SHAPE[1] and min(live["count"]) >= 0


def test_vetoed_blanks_are_counted_while_the_run_is_open_and_after_it_ended(tmp_path: Path) -> None:
    """Serial mode dropping blanks (``store.blanks = drop``): ``/api/status`` counts them as vetoed in
    every scope, as they go (the ledger learns a run's count only when it ends), never as losses."""
    blanks = ('reduction.mode="serial"', 'store.blanks="drop"')
    with in_process_appliance(tmp_path, SHAPE, *blanks) as (appliance, push, settings):
        http = TestClient(create_app(settings, appliance.view))

        def counts() -> dict[str, dict[str, int]]:
            status = http.get("/api/status").json()
            return {**status["counts"], "frames": status["frames"]}

        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="blanks", frames_expected=4))
        flat = np.full(SHAPE, 7, np.uint16).tobytes()  # no peak: every frame a blank
        for frame in range(4):
            push.send_multipart(encode_image(1, frame, SHAPE, "uint16", flat))
        live = wait_for(lambda: (c := counts())["run"].get("frames_vetoed") == 4 and c, 30, "4 vetoed, live")
        assert live["run"]["active"] and live["run"]["run_uid"] == "blanks"
        assert live["daemon"]["frames_vetoed"] == live["all_time"]["frames_vetoed"] == 4
        assert live["frames"]["vetoed"] == 4 and live["run"]["frames_lost"] == 0
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.ledger.run("blanks")["ended_at"], 30, "the run's end")
        ended = counts()  # now the ledger's count, not counted twice
        assert not ended["run"]["active"] and ended["run"]["frames_vetoed"] == 4
        assert ended["all_time"]["frames_vetoed"] == ended["frames"]["vetoed"] == 4
        assert ended["run"]["frames_lost"] == ended["run"]["frames_stored"] == 0
        assert live["run"]["frames_received"] == ended["run"]["frames_received"] == 4  # the receiver's
        assert "edge_frames_vetoed_total 4.0" in http.get("/metrics").text


def test_a_mode_change_as_a_series_starts_is_refused_or_taken_by_that_run(tmp_path: Path) -> None:
    """A ``PUT /api/reduction`` that lands while a series start is taking the reduction parameters: it
    must not be accepted "for the next run" after the starting run read the old ones (that run would
    then not reduce as the answer said). The change is made exactly in that moment here, from inside
    the read of the parameters."""
    from edge.errors import Refused

    with in_process_appliance(tmp_path, SHAPE) as (appliance, push, _settings):
        read = appliance.sink.reduction
        outcome: list[str] = []

        def read_then_change() -> dict[str, object]:
            taken = read()  # what the starting run takes...
            try:  # ...and a change arriving right after
                appliance.reduction.update({"mode": "serial"})
                outcome.append("accepted")
            except Refused as refused:
                outcome.append(f"refused: {refused}")
            return taken

        appliance.sink.reduction = read_then_change  # before any series
        push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid="racing", frames_expected=1))
        push.send_multipart(encode_image(1, 0, SHAPE, "uint16", np.ones(SHAPE, np.uint16).tobytes()))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.ledger.run("racing")["ended_at"], 30, "the run's end")
        assert outcome == ["refused: run racing is open: reduction parameters change between runs"]
        assert appliance.ledger.run("racing")["mode"] == appliance.reduction.current().mode == "powder"


def test_a_run_whose_mode_cannot_start_raises_an_alarm(tmp_path: Path) -> None:
    """A series of another shape than the settings' with a tomography row outside it: the run is stored
    raw. An outside probe found such a run (then with serial min_pixels above max_pixels) said so only in
    the log and a counter: the operator asked for a mode and got none of its products, no alarm."""
    with in_process_appliance(tmp_path, SHAPE, 'reduction.mode="tomo"', "reduction.tomo.slices=[30]") as (
        appliance,
        push,
        settings,
    ):
        http = TestClient(create_app(settings, appliance.view))
        small = (16, 16)
        push.send_multipart(encode_series_start(1, small, "uint16", run_uid="rawrun", frames_expected=2))
        for frame in range(2):
            push.send_multipart(encode_image(1, frame, small, "uint16", np.ones(small, np.uint16).tobytes()))
        push.send_multipart(encode_series_end(1))
        wait_for(lambda: appliance.ledger.run("rawrun")["ended_at"], 30, "the run's end")
        alarms = {a["id"]: a for a in http.get("/api/alarms").json()}
        alarm = alarms["run:rawrun:mode"]
        assert alarm["severity"] == "major" and "mode tomo could not start" in alarm["message"]
        assert "stored raw" in alarm["message"] and "30" in alarm["message"]
        assert http.get("/api/status").json()["pipeline"]["mode_failed"]["run_uid"] == "rawrun"
        # and the run's own record says so, after the alarm has gone with the next run (an outside
        # probe's run read "success", its mode's, and nothing else: no products, no reason)
        report = http.get("/api/runs/rawrun").json()["where"]
        assert report["products_note"].startswith("mode tomo could not start: "), report["products_note"]
        assert report["products_note"].endswith("raw frames only")


def test_a_calibration_file_changed_on_disk_is_in_the_runs_record(tmp_path: Path) -> None:
    """An outside probe: a mask file written over between runs was named (with 16-digit checksums) only
    in the next run's reduced file; its `where` report and `edge where --json` said nothing."""
    import hashlib

    mask = tmp_path / "mask.npy"
    np.save(mask, np.zeros(SHAPE, bool))
    loaded = hashlib.sha256(mask.read_bytes()).hexdigest()
    with in_process_appliance(tmp_path, SHAPE, f'reduction.mask_file="{mask}"') as (
        appliance,
        push,
        settings,
    ):
        http = TestClient(create_app(settings, appliance.view))

        def run(uid: str) -> dict[str, object]:
            push.send_multipart(encode_series_start(1, SHAPE, "uint16", run_uid=uid, frames_expected=1))
            push.send_multipart(encode_image(1, 0, SHAPE, "uint16", np.ones(SHAPE, np.uint16).tobytes()))
            push.send_multipart(encode_series_end(1))
            wait_for(lambda: appliance.ledger.run(uid)["ended_at"], 30, f"run {uid}'s end")
            return http.get(f"/api/runs/{uid}").json()["where"]

        assert run("before")["calibration_files_changed"] is None
        edited = np.zeros(SHAPE, bool)
        edited[0, 0] = True
        np.save(mask, edited)
        report = run("after")
    now = hashlib.sha256(mask.read_bytes()).hexdigest()
    assert report["calibration_files_changed"] == f"mask {mask}: now sha256 {now}, loaded sha256 {loaded}"
