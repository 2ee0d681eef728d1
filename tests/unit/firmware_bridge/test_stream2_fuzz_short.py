"""A short run of the Stream V2 codec fuzz target (the long one is ``make fuzz``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

FUZZ = Path(__file__).parents[2] / "fuzz" / "fuzz_stream2_codec.py"
spec = importlib.util.spec_from_file_location("fuzz_stream2_codec", FUZZ)
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)


def test_short_fuzz_campaigns() -> None:
    for seed in range(3):
        assert fuzz.run(1000, seed) > 50  # images that got as far as their chunks being decoded
