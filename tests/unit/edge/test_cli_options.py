"""The command line's own rules, through the real ``edge`` entry point in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_second_config_file_is_refused_not_silently_put_in_place_of_the_first(tmp_path: Path) -> None:
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("[api]\nport = 18080\n")
    second.write_text("[log]\nlevel = 'DEBUG'\n")
    done = subprocess.run(
        [sys.executable, "-m", "edge", "where", "--config", str(first), "--config", str(second)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--config given twice" in done.stderr and "a.toml" in done.stderr and "b.toml" in done.stderr


def test_where_json_for_a_run_it_cannot_find_is_still_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An outside probe: ``edge where MISSING --json`` printed plain text, which a script parsing its
    stdout could not read. With --json the refusal is one JSON object too (the message also on stderr)."""
    from edge.ledger import Ledger

    Ledger(tmp_path / "ledger.sqlite").close()  # (an empty ledger)
    argv = [sys.executable, "-m", "edge", "where", "no-such-run", "--json"]
    done = subprocess.run(
        [*argv, "--set", f'store.path="{tmp_path}"', "--set", f'ledger.path="{tmp_path / "ledger.sqlite"}"'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    answer = json.loads(done.stdout)
    assert answer["run_uid"] is None and answer["asked"] == "no-such-run"
    assert answer["error"].startswith("no run 'no-such-run' in the ledger") and "no run" in done.stderr


def test_where_on_a_store_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    """An outside probe: ``store.path`` naming a regular file was "no ledger at FILE/ledger.sqlite (set
    store.path)", as if it were only empty."""
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    done = subprocess.run(
        [sys.executable, "-m", "edge", "where", "x", "--set", f'store.path="{afile}"'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"{afile} is a file, not a directory" in done.stderr, done.stderr


def test_sim_json_with_a_malformed_poni_file_is_one_json_refusal(tmp_path: Path) -> None:
    """An outside probe: ``edge sim --json`` with a PONI file gone bad printed a traceback and no JSON
    (the simulator reads it to draw its rings), where README promises one object with ``error``."""
    poni = tmp_path / "bad.poni"
    poni.write_text(
        "poni_version: 2\nDetector: Detector\n"
        'Detector_config: {"pixel1": 7.5e-05, "pixel2": 7.5e-05, "max_shape": [64, 64]}\n'
        "Distance: 0.1\nPoni1: 0.01\nPoni2: bad\nRot1: 0\nRot2: 0\nRot3: 0\nWavelength: 1e-10\n"
    )
    settings = ["--set", f'reduction.poni_file="{poni}"', "--set", 'sim.endpoint="tcp://127.0.0.1:1"']
    done = subprocess.run(
        [sys.executable, "-m", "edge", "sim", "--frames", "1", "--json", *settings],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    answer = json.loads(done.stdout)
    assert answer["run_uid"] is None and answer["frames_sent"] is None
    assert "Poni2" in answer["error"] and "bad.poni" in answer["error"], answer
