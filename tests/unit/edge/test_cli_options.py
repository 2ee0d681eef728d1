"""The command line's own rules, through the real ``edge`` entry point in a subprocess."""

from __future__ import annotations

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
