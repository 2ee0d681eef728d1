"""``WarmUps``: kernel loads asked for between runs, one at a time, the newest of those waiting next."""

from __future__ import annotations

import threading
import time

from edge.config import ReductionSettings
from edge.pipeline import WarmUps


def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_changes_asked_for_during_a_load_wait_and_only_the_newest_loads() -> None:
    started: list[str] = []
    running: list[int] = []
    release = threading.Event()

    def load(params: ReductionSettings) -> None:
        running.append(1)
        assert len(running) == 1, "two loads at once"
        started.append(params.mode)
        release.wait(10)
        running.pop()

    warm = WarmUps(load)
    warm.request(ReductionSettings(mode="powder"))
    _until(lambda: started == ["powder"])
    for _ in range(30):  # an outside probe's 30 PUTs: 30 loads ran at once
        warm.request(ReductionSettings(mode="serial"))
    warm.request(ReductionSettings(mode="tomo"))
    assert warm.busy and warm.queued_mode == "tomo"  # (what the warming alarm names as next)
    release.set()
    _until(lambda: started == ["powder", "tomo"] and not warm._running)
    assert not warm.busy and warm.queued_mode is None
    assert (warm.loads, warm.coalesced) == (2, 30)
    warm.request(ReductionSettings(mode="tomo"))  # the thread ended: a later change starts another
    _until(lambda: len(started) == 3 and not warm._running)
    assert started[-1] == "tomo"


def test_the_same_settings_again_right_after_their_load_are_not_loaded_twice() -> None:
    started: list[str] = []
    release = threading.Event()

    def load(params: ReductionSettings) -> None:
        started.append(params.mode)
        release.wait(10)

    warm = WarmUps(load)
    warm.request(ReductionSettings(mode="serial"))
    _until(lambda: started == ["serial"])
    warm.request(ReductionSettings(mode="serial"))
    release.set()
    _until(lambda: not warm._running)
    assert started == ["serial"] and warm.coalesced == 1


def test_a_failed_load_lets_the_next_change_load() -> None:
    calls: list[str] = []

    def load(params: ReductionSettings) -> None:
        calls.append(params.mode)
        if len(calls) == 1:
            raise RuntimeError("boom")

    warm = WarmUps(load)
    warm.request(ReductionSettings(mode="serial"))
    _until(lambda: not warm._running)
    warm.request(ReductionSettings(mode="powder"))
    _until(lambda: calls == ["serial", "powder"])
