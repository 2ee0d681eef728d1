"""Frame counters with an explicit scope: this run, since the daemon started, all time.

A bare "80 frames lost" does not say whether it is this run's problem or last week's. The ledger's
running totals are all-time; :class:`CounterScopes` keeps the totals it saw when the daemon started and
subtracts them ("since daemon start"), and a run's own figures come from the ledger's ``run_totals``
(computed there and nowhere else). Received frames exist only since the daemon started (the receiver's
counter); the ledger does not keep them. Vetoed frames (blanks a mode dropped by its stated policy, never
losses) reach the ledger when their run ends: until then the open run's come from the pipeline, which
also counts them since the daemon started.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_LEDGER_FIGURES = {
    "frames_stored": "frames_stored",
    "frames_delivered": "frames_verified",
    "frames_lost": "frames_lost",
    "frames_incomplete": "frames_incomplete",
    "loss_records": "loss_records",
}


def _figures(summary: Mapping[str, Any]) -> dict[str, int]:
    return {name: int(summary.get(key, 0) or 0) for name, key in _LEDGER_FIGURES.items()}


class CounterScopes:
    """Scoped counters from the ledger summary at start (``baseline``) and now."""

    def __init__(self, baseline: Mapping[str, Any], started_at: float) -> None:
        self._baseline = _figures(baseline)
        self.started_at = started_at

    def scopes(
        self,
        summary: Mapping[str, Any],
        frames_received: int,
        run_uid: str | None,
        run_active: bool,
        run_totals: Mapping[str, Any] | None,
        vetoed_since_start: int = 0,
        run_vetoed_live: int | None = None,
    ) -> dict[str, Any]:
        """``{"run": ..., "daemon": ..., "all_time": ...}``; ``run`` is the current run, else the last one.
        ``run_vetoed_live``: the open run's vetoed frames so far (None once it has ended: the ledger's)."""
        now = _figures(summary)
        daemon = {name: max(0, now[name] - self._baseline[name]) for name in now}
        open_run = int(run_vetoed_live or 0)
        now["frames_vetoed"] = int(summary.get("frames_vetoed", 0) or 0) + open_run
        daemon["frames_vetoed"] = int(vetoed_since_start)
        run: dict[str, Any] = {"run_uid": run_uid, "active": run_active}
        if run_totals is not None:
            run.update({name: int(run_totals.get(name, 0) or 0) for name in _LEDGER_FIGURES})
            run["frames_vetoed"] = (
                open_run if run_vetoed_live is not None else int(run_totals.get("frames_vetoed", 0) or 0)
            )
        return {
            "run": run,
            "daemon": {"since": self.started_at, "frames_received": int(frames_received), **daemon},
            "all_time": now,
        }
