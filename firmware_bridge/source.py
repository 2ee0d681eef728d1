"""The contract between a frame source (a socket reader) and where its frames go (the appliance's ring).

A source never allocates frame memory: it asks the sink for a slot, receives straight into it, and
publishes it with a header. Everything a source cannot deliver it reports with ``lost`` and a reason.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

FLAG_COMPLETE = 0
FLAG_INCOMPLETE = 1
FLAG_CORRUPT = 2
# the slot holds the frame as the detector sent it, a bitshuffle-LZ4 chunk (HDF5 filter 32008, header
# included) already checked by the source, not pixels; stored as it is (Stream V2 pass-through)
FLAG_CHUNK = 1 << 16
#: a stop waits this long for a reader thread to end: a frame in hand may wait for a ring slot while the
#: pipeline drains the ring (up to the appliance's STOP_GRACE_SECONDS, 60)
READER_JOIN_SECONDS = 75.0
FLAG_STATE_MASK = 0xFFFF  # the frame-state part of ``flags`` (complete/incomplete/corrupt)


#: Series-config keys the receiving side sets (a series resumed after a restart; the sink's own records
#: of the run). A detector's header never sets them: ``detector_config`` moves any it sends aside.
RESERVED_CONFIG_KEYS = frozenset(
    {
        "resumed_after_restart",
        "resumed_after_pause",
        "start_rejected",
        "first_frame",
        "resumes_run",
        "capture_file",
        "reduction",
        "reduction_mask",
        "upstream_forward",
        "store_blanks",
        "header_fields_ignored",
        "header_fields_truncated",
        "detector_run_uid",
        "format",
        "stream2",
        "header_reserved",
    }
)


def detector_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A detector's series config with the reserved keys moved under ``header_reserved`` (kept, as sent,
    never acted on): a header saying ``"resumed_after_restart": true`` must not make a run resumed.
    Returns the config and the names moved."""
    moved = sorted(key for key in config if key in RESERVED_CONFIG_KEYS)
    if not moved:
        return config, []
    kept = {key: value for key, value in config.items() if key not in RESERVED_CONFIG_KEYS}
    kept["header_reserved"] = {key: config[key] for key in moved}
    return kept, moved


@dataclass
class FrameHeader:
    """What a source knows about a frame it publishes."""

    frame: int
    height: int
    width: int
    dtype: str
    timestamp_ns: int = 0
    flags: int = FLAG_COMPLETE
    packets_expected: int = 0
    packets_received: int = 0
    image_key: int = 0  # NXtomo: 0 projection (every frame outside tomography), 1 flat, 2 dark
    angle_deg: float = math.nan  # rotation angle of a tomography frame; NaN when unknown
    nbytes: int = 0  # bytes in the slot when it holds a chunk (FLAG_CHUNK); 0: the pixels' size
    # an incomplete frame's pixels that never arrived (bool, the frame's shape), 0 in the slot: the sink
    # keeps it for the reduction (not in the ring's header)
    missing: Any = field(default=None, compare=False, repr=False)


class SlotLike(Protocol):
    @property
    def buffer(self) -> memoryview: ...


class FrameSink(Protocol):
    """Where a source puts frames; implemented by the appliance's shared-memory ring."""

    def claim(self, nbytes: int) -> SlotLike | None:
        """A writable slot of at least ``nbytes``; None when the frame must be dropped (full, stopping)."""

    def publish(self, slot: SlotLike, header: FrameHeader) -> None:
        """Hand a filled slot on."""

    def abandon(self, slot: SlotLike) -> None:
        """Give back a claimed slot whose contents turned out to be unusable."""

    def series_start(self, series: int, config: dict[str, Any], **arrays: Any) -> str | None:
        """A new series (run) begins; ``config`` describes it. Returns why it is refused, or None.

        The frames of a refused series are dropped by the source and recorded as lost with the reason.
        ``config`` is JSON-able; arrays the series carries come as keywords, only when it has them:
        ``pixel_mask``, the detector's mask of the stored channel (nonzero = bad; Stream V2). A sink may
        also set an int attribute ``resumed_length`` here: the length of a series opened from its images
        (``resumed_after_restart``), as the run it continues recorded it (a source reads it right after).
        """

    def series_length(self, series: int, frames_expected: int) -> None:
        """The open series' length, learnt after it began: its start came after its first images (the
        run goes on; the source accounts its frames against ``frames_expected`` from now on)."""

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        """The series ended: ``success``, or ``fail`` when the detector vanished mid-series; ``why``, when
        given, says what ended it (kept with the run)."""

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        """Frames ``first..last`` (inclusive) will never be published; says why."""


Checkpoint = Callable[[], None]


class Spawner(Protocol):
    """Starts a thread running ``work(checkpoint)``; ``checkpoint()`` is called once per loop.

    The appliance passes a supervising spawner (restarts after an unexpected error, reports thread
    states); `plain_spawn` is the default for a source used on its own.
    """

    def __call__(self, name: str, work: Callable[[Checkpoint], None]) -> threading.Thread: ...


def _no_checkpoint() -> None:
    return None


def plain_spawn(name: str, work: Callable[[Checkpoint], None]) -> threading.Thread:
    """A daemon thread running ``work`` once, with a checkpoint that does nothing."""
    thread = threading.Thread(target=work, args=(_no_checkpoint,), name=name, daemon=True)
    thread.start()
    return thread


class FrameSource(Protocol):
    """Every detector source (ZMQ stream reader, UDP reader) implements this."""

    def start(self, spawn: Spawner = plain_spawn) -> None:
        """Start the reader thread through ``spawn`` (concurrency is passed in)."""

    def stop(self) -> None: ...

    def counters(self) -> dict[str, Any]: ...

    @property
    def series_open(self) -> bool: ...

    def end_series(self, reason: str) -> None:
        """End the open series from outside (the detector vanished); missing frames become losses."""
