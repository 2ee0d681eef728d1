"""A series resumed after a restart: the interrupted run's account changes after its documents were
written, so it gets a second revision of them (the first one may already be upstream; it is never
rewritten). Real ledger (SQLite) and recorder on a temporary store; no daemon."""

from __future__ import annotations

import json
from pathlib import Path

from edge.documents import documents_name
from edge.ledger import Ledger
from edge.recorder import RunRecorder
from edge.recovery import resume_interrupted


def _stop(path: Path) -> dict:
    return next(doc for name, doc in map(json.loads, path.read_text().splitlines()) if name == "stop")


def test_a_resumed_series_gives_the_interrupted_run_a_second_revision_of_its_documents(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-a", series=7, frames_expected=None, config={"shape": [4, 4]})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..29")
    recorder.register_file(run_uid, data, (0, 29, 30))
    recorder.close_run(run_uid, 30, "abort")  # a daemon stopped mid-series ends its run abort
    first = tmp_path / run_uid / documents_name(run_uid)
    assert _stop(first)["edge_accounting"] == {
        "revision": 1,
        "mode": None,
        "frames_stored": 30,
        "frames_vetoed": 0,
        "frames_lost": 0,
        "losses": [],
    }
    written = first.read_bytes()

    link = resume_interrupted(recorder, {}, series=7, first_frame=50)  # frames 30..49 came while it was down

    assert link == {"resumes_run": run_uid}
    assert first.read_bytes() == written  # never rewritten
    second = tmp_path / run_uid / documents_name(run_uid, 2)
    account = _stop(second)["edge_accounting"]
    assert account["revision"] == 2 and account["frames_stored"] == 30 and account["frames_lost"] == 20
    assert [loss[:3] for loss in account["losses"]] == [[30, 49, "daemon_restart"]]
    kinds = [(f["name"], f["kind"]) for f in ledger.files(run_uid)]
    assert kinds[-2:] == [(first.name, "documents"), (second.name, "documents")]  # both forwarded


def test_a_series_resumed_where_it_stopped_changes_no_account(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path, chunk_bytes=1 << 20)
    run_uid = recorder.open_run("run-b", series=3, frames_expected=None, config={})
    data = tmp_path / run_uid / f"{run_uid}_00000.h5"
    data.parent.mkdir()
    data.write_bytes(b"frames 0..9")
    recorder.register_file(run_uid, data, (0, 9, 10))
    recorder.close_run(run_uid, 10, "fail")
    resume_interrupted(recorder, {"runs_failed": [run_uid]}, series=3, first_frame=10)
    assert sorted(p.name for p in (tmp_path / run_uid).glob("*.documents*.jsonl")) == [
        documents_name(run_uid)
    ]
