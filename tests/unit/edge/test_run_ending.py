"""How a run ends, as its ledger row and its Bluesky documents say: a series the detector ended well but of
which every frame was lost ends ``fail``, and the documents name the pixel type the files hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.documents import run_documents
from edge.ledger import Ledger
from edge.recorder import RunRecorder


def _recorder(tmp_path: Path) -> tuple[Ledger, RunRecorder]:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    return ledger, RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20)


def _stop(tmp_path: Path, run_uid: str) -> dict[str, object]:
    lines = (tmp_path / "store" / run_uid / f"{run_uid}.documents.jsonl").read_text().splitlines()
    name, doc = json.loads(lines[-1])
    assert name == "stop"
    return doc  # type: ignore[no-any-return]


def test_a_series_ended_well_whose_every_frame_was_lost_ends_fail(tmp_path: Path) -> None:
    ledger, recorder = _recorder(tmp_path)
    uid = recorder.open_run(
        "all-lost", series=1, frames_expected=4, config={"shape": [4, 4], "type": "uint16"}
    )
    recorder.loss(uid, 0, 3, "pipeline_error", "ValueError('x')")
    recorder.close_run(uid, frames_stored=0, exit_status="success")
    assert ledger.run(uid)["exit_status"] == "fail"
    assert recorder.counts["runs_failed_all_lost"] == 1
    stop = _stop(tmp_path, uid)
    assert stop["exit_status"] == "fail" and stop["reason"] == "pipeline_error"
    ledger.close()


@pytest.mark.parametrize(
    ("stored", "vetoed", "losses", "status", "expected"),
    [
        (0, 0, [], "success", "success"),  # an empty series lost nothing
        (1, 0, [(1, 3)], "success", "success"),  # some frames kept: the losses are in the reason
        (0, 4, [], "success", "success"),  # every frame vetoed by policy is not a failure
        (0, 0, [(0, 3)], "abort", "abort"),  # the detector's own ending is kept
    ],
)
def test_other_endings_are_kept(
    tmp_path: Path, stored: int, vetoed: int, losses: list[tuple[int, int]], status: str, expected: str
) -> None:
    ledger, recorder = _recorder(tmp_path)
    uid = recorder.open_run("r", series=1, frames_expected=4, config={"shape": [4, 4]})
    for first, last in losses:
        recorder.loss(uid, first, last, "pipeline_error")
    recorder.close_run(uid, frames_stored=stored, exit_status=status, frames_vetoed=vetoed)
    assert ledger.run(uid)["exit_status"] == expected
    assert recorder.counts["runs_failed_all_lost"] == 0
    ledger.close()


@pytest.mark.parametrize(
    ("pixel_type", "expected"),
    [
        ("uint16", "<u2"),
        ("uint32", "<u4"),
        ("float32", "<f4"),
        ("int8", "|i1"),
        (None, "<u2"),
        ("nonsense", "<u2"),
    ],
)
def test_the_descriptor_names_the_pixel_type_of_the_run(pixel_type: str | None, expected: str) -> None:
    run = {"run_uid": "r", "started_at": 1.0, "config": json.dumps({"shape": [4, 2], "type": pixel_type})}
    docs = dict(run_documents(run, [], [], (2, 4), "success"))
    image = docs["descriptor"]["data_keys"]["image"]
    assert image["dtype_numpy"] == expected and image["shape"] == [2, 4]
