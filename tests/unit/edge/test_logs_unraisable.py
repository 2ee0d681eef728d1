"""An exception Python cannot raise (in a destructor) is one log line, not a traceback on stderr."""

from __future__ import annotations

import gc
import io

from edge.logs import configure


class _Broken:
    def __del__(self) -> None:
        raise OSError(28, "No space left on device")


def test_an_exception_in_a_destructor_is_one_log_line() -> None:
    stream = io.StringIO()
    setup = configure("INFO", "text", stream)
    try:
        _Broken()  # dropped at once: its __del__ raises
        gc.collect()
        setup.handler.flush()
        text = stream.getvalue()
    finally:
        setup.close()
    lines = [line for line in text.splitlines() if "Exception ignored" in line]
    assert len(lines) == 1 and "OSError" in lines[0] and "No space left" in lines[0], text
    assert "Traceback" not in text, text
