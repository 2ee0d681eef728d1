"""The demo's one status line: its rates are taken over the last 10 s, so frames delivered a file at a
time read as the steady rate they are, not 0/s between files and a burst when one is verified."""

from __future__ import annotations

import io
import re

from edge.demo import StatusLine


def _status(received: int, delivered: int) -> dict[str, object]:
    frames = {"received": received, "stored": delivered, "delivered": delivered, "lost": 0}
    return {"frames": frames, "ring": {"fill": 0}}


def test_rates_over_ten_seconds_show_per_file_delivery_as_its_steady_rate() -> None:
    out = io.StringIO()  # not a terminal: a line every 5 s
    line = StatusLine(out)
    for tick in range(61):  # 30 s at 20 frames/s; files of 100 frames verified as each fills
        now = tick * 0.5
        received = tick * 10
        line.update(_status(received, received // 100 * 100), now)
    rates = [re.findall(r"\(([\d.]+)/s\)", text) for text in out.getvalue().splitlines()]
    settled = [(float(r), float(d)) for r, d in rates[2:]]  # from 10 s on: a full window
    assert settled and all(r == 20.0 for r, _ in settled), settled
    assert all(10.0 <= d <= 30.0 for _, d in settled), settled  # never 0, never a 200/s burst


def test_the_line_counts_this_daemon_s_frames_only() -> None:
    """An outside first-time user: on a kept demo-data the line read "received 68 ... stored 1706
    delivered 1706", this daemon's received beside every earlier demo's stored (the ledger's)."""
    status = _status(68, 1706)
    status["counts"] = {
        "daemon": {"frames_received": 68, "frames_stored": 60, "frames_delivered": 50, "frames_lost": 1}
    }
    text = StatusLine.text(status, None)
    assert "received 68 " in text and "stored 60 " in text and "delivered 50 " in text and "lost 1 " in text


def test_the_summary_as_lines_shows_json_values_not_python_ones() -> None:
    """An outside docs probe: after Ctrl-C the summary read ``hit_rate: None`` and
    ``backend_degraded_from: ['gpu']``, not the values ``--json`` gives."""
    from edge.demo import summary_lines

    lines = summary_lines(
        {"hit_rate": None, "backend_degraded_from": ["gpu"], "sim": {"stopped_early": True}, "store": "/x"}
    )
    assert [line.strip() for line in lines] == [
        "hit_rate: null",
        'backend_degraded_from: ["gpu"]',
        'sim: {"stopped_early": true}',
        "store: /x",
    ]
