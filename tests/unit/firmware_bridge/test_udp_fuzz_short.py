"""A short run of the UDP codec fuzzer (``tests/fuzz/fuzz_udp_codec.py``) as an ordinary test."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

FUZZ_TARGET = Path(__file__).parents[2] / "fuzz" / "fuzz_udp_codec.py"


def _load_fuzz_target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_udp_codec", FUZZ_TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [0, 1])
def test_short_fuzz_campaign_finds_nothing(seed: int) -> None:
    assert _load_fuzz_target().run_fuzz(2000, seed=seed) == 2000


def test_fuzz_cli_runs() -> None:
    assert _load_fuzz_target().main(["--runs", "200", "--seed", "5"]) == 0
