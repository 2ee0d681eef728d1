"""A run uid names the run's files and directories, here and upstream: one from the detector that is not a
plain file name (``../x``, ``a/b``, empty-looking, over-long) is replaced by a fresh uid, the detector's kept
in the run's config, so no file is ever written outside the store and nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.ledger import Ledger
from edge.recorder import RUN_UID, RunRecorder


@pytest.mark.parametrize(
    "given",
    [
        "../escape",
        "a/b",
        "..",
        ".hidden",
        "x" * 129,
        "with space",
        "tab\there",
        "nul\x00",
        "back\\slash",
        "é",
    ],
)
def test_a_run_uid_that_is_not_a_file_name_is_replaced_and_kept_in_the_config(
    tmp_path: Path, given: str
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20)
    uid = recorder.open_run(given, series=1, frames_expected=3, config={"shape": [4, 4]})
    assert uid != given and RUN_UID.fullmatch(uid)
    assert json.loads(ledger.run(uid)["config"])["detector_run_uid"] == given[:1024]
    assert recorder.counts["run_uids_replaced"] == 1
    ledger.close()


def test_a_huge_run_uid_is_not_copied_into_the_run_record(tmp_path: Path) -> None:
    """5 MB of uid: the record keeps its first 1024 characters, its size and digest, and the run's own uid."""
    import hashlib

    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20)
    given = "u" * 5_000_000
    uid = recorder.open_run(given, series=1, frames_expected=3, config={"shape": [4, 4], "run_uid": given})
    text = ledger.run(uid)["config"]
    assert len(text) < 4096
    config = json.loads(text)
    assert config["run_uid"] == uid and config["detector_run_uid"] == given[:1024]
    assert config["detector_run_uid_bytes"] == 5_000_000
    assert config["detector_run_uid_sha256"] == hashlib.sha256(given.encode()).hexdigest()
    ledger.close()


@pytest.mark.parametrize("given", ["0b6f4c1e-8a8e-4b53-9f0e-1c2d3e4f5a6b", "run-a", "scan_0042.r2", "A"])
def test_a_plain_run_uid_is_taken_as_it_comes(tmp_path: Path, given: str) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorder = RunRecorder(ledger, tmp_path / "store", chunk_bytes=1 << 20)
    assert recorder.open_run(given, series=1, frames_expected=None, config={}) == given
    assert "detector_run_uid" not in json.loads(ledger.run(given)["config"])
    ledger.close()


def test_a_run_whose_start_was_rejected_says_so_among_the_header_notes() -> None:
    from edge.where import header_notes

    (note,) = header_notes({"start_rejected": "bad_dtype: type=int16"})
    assert (
        note
        == "its series start was rejected (bad_dtype: type=int16): the run has none of the start's metadata"
    )
    assert header_notes({}) == []
    # a run opened from its images, which carried the series' uid (Stream V2): no "was not a file name"
    (note,) = header_notes({"resumed_after_restart": True, "detector_run_uid": "abc-7"})
    assert note == "the detector's uid of the series, 'abc-7', came with its images (the run's own differs)"
