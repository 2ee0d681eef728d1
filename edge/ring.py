"""A ring of pre-allocated frame slots in named shared memory, between the receiver and the pipeline.

The segment holds a control block (sequence counters, readable by other processes such as a live
viewer), one header per slot and the slot data. One writer thread claims and publishes slots in order;
one reader thread takes them in order and releases them only once they are persisted, so a slot is
never reused before its frame is safe. When the ring is full the ``block`` policy makes the writer
wait (which backpressures a ZeroMQ stream); ``count-and-drop`` refuses the claim and the caller records
the loss.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from firmware_bridge.source import FrameHeader

log = logging.getLogger(__name__)

KIND_EMPTY, KIND_FRAME, KIND_CONTROL = 0, 1, 2

HEADER_DTYPE = np.dtype(
    [
        ("seq", "<u8"),
        ("kind", "<u4"),
        ("flags", "<u4"),
        ("frame", "<u8"),
        ("timestamp_ns", "<u8"),
        ("nbytes", "<u8"),
        ("height", "<u4"),
        ("width", "<u4"),
        ("dtype", "S8"),
        ("packets_expected", "<u4"),
        ("packets_received", "<u4"),
        ("image_key", "<i4"),
        ("angle", "<f8"),
    ]
)
_CONTROL_FIELDS = ("claimed", "published", "read", "released", "slots", "slot_bytes", "dropped", "waits")
_ALIGN = 4096


@dataclass
class Slot:
    """One claimed slot: its sequence number, its data buffer and (once published) its header."""

    seq: int
    index: int
    buffer: memoryview
    header: np.void

    def array(self) -> np.ndarray:
        """The slot's frame as an array of the published shape and dtype (a view, no copy)."""
        height, width, dtype = self.header.item()[6:9]  # one conversion, not a lookup per field
        count = height * width
        return np.frombuffer(self.buffer, dtype=np.dtype(dtype.decode()), count=count).reshape(height, width)

    @property
    def payload(self) -> bytes:
        return bytes(self.buffer[: int(self.header["nbytes"])])


RING_PREFIX = "edge-ring-"
_SHM_DIR = "/dev/shm"


#: (a clean stop) a claim waiting for a slot gives up when the consumer released none for this long and
#: is not busy getting ready (`FrameRing.stop`): e.g. a pipeline held by a full disk
STOP_STALL_SECONDS = 5.0
STALE_AFTER_SECONDS = 10.0  # a segment changed more recently than this is never taken for a dead one's


def _mapped_shm_names() -> set[str] | None:
    """Names of the /dev/shm segments some process maps or holds open now (a ring's daemon, a live
    viewer, a daemon between making its ring and mapping it), from every /proc/PID/maps and /proc/PID/fd
    this user may read; None where there is no /proc to read."""
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return None
    names: set[str] = set()
    prefix = f"{_SHM_DIR}/"
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    at = line.find(prefix)
                    if at >= 0:
                        names.add(line[at + len(prefix) :].split(" (deleted)")[0].strip())
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):  # closed meanwhile
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        names.add(target[len(prefix) :].split(" (deleted)")[0].strip())
        except OSError:  # gone meanwhile, or another user's (its segments are not ours to remove)
            continue
    return names


def sweep_stale_rings(
    names: tuple[str, ...] = (), min_age: float = STALE_AFTER_SECONDS
) -> tuple[list[str], int]:
    """Remove the rings no process maps any more: a daemon killed (kill -9, a power cut of the process)
    leaves its segment in /dev/shm, and each restart added one until the shared memory was full. Takes
    the default-named ones (``edge-ring-...``) and ``names`` (a ``ring.name`` set in the settings, which
    a restart after a kill could otherwise not make again). Returns the names removed and their bytes.

    Another daemon may be making its ring at the same moment (an outside probe: four daemons started at
    once, one found its ring deleted and crashed at its stop): /dev/shm is listed before the segments in
    use are collected (a ring made after the listing is not a candidate; one made before it is mapped or
    open by then), a segment held open counts as in use, and one changed in the last ``min_age`` seconds
    is left alone."""
    try:
        present = os.listdir(_SHM_DIR)
    except OSError:
        return [], 0
    candidates = [name for name in present if name.startswith(RING_PREFIX) or name in names]
    if not candidates:
        return [], 0
    mapped = _mapped_shm_names()
    if mapped is None:
        return [], 0
    removed, freed = [], 0
    now = time.time()
    for name in candidates:
        if name in mapped:
            continue
        path = os.path.join(_SHM_DIR, name)
        try:
            stat = os.stat(path)
            if now - max(stat.st_mtime, stat.st_ctime) < min_age:
                continue
            size = stat.st_blocks * 512
            os.unlink(path)
        except OSError:  # another user's, or removed meanwhile
            continue
        removed.append(name)
        freed += size
    return removed, freed


def _shm_free() -> int | None:
    """Bytes free in /dev/shm (where POSIX shared memory lives on Linux), or None where there is none."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class FrameRing:
    """Single-producer, single-consumer ring over shared memory; see the module docstring."""

    def __init__(self, slots: int, slot_bytes: int, policy: str = "block", name: str | None = None) -> None:
        if policy not in ("block", "count-and-drop"):
            raise ValueError(f"ring policy {policy!r}: use 'block' or 'count-and-drop'")
        self.policy = policy
        self.slots = slots
        self.slot_bytes = -(-slot_bytes // _ALIGN) * _ALIGN
        control_bytes = _ALIGN
        header_bytes = -(-slots * HEADER_DTYPE.itemsize // _ALIGN) * _ALIGN
        total = control_bytes + header_bytes + slots * self.slot_bytes
        self.name = name or f"{RING_PREFIX}{uuid.uuid4().hex[:12]}"
        self._shm = shared_memory.SharedMemory(name=self.name, create=True, size=total)
        self._reserve(total)
        buf = self._shm.buf
        self._control = np.ndarray((len(_CONTROL_FIELDS),), dtype="<i8", buffer=buf[:control_bytes])
        self._control[:] = 0
        self._control[4] = slots
        self._control[5] = self.slot_bytes
        self._headers = np.ndarray(
            (slots,), dtype=HEADER_DTYPE, buffer=buf[control_bytes : control_bytes + header_bytes]
        )
        data_start = control_bytes + header_bytes
        self._data_start = data_start
        self._data = [
            buf[data_start + i * self.slot_bytes : data_start + (i + 1) * self.slot_bytes]
            for i in range(slots)
        ]
        self._cond = threading.Condition()
        self._stopping = False
        self._stop_until = 0.0  # (`stop`) until when a claim may wait on for a slot
        self._stop_busy: Callable[[], bool] | None = None
        self._released_at = 0.0  # (monotonic) when the consumer last released a slot
        self._busy_at = 0.0  # (stopping) when the consumer was last seen busy getting ready, or the stop
        self.wait_seconds = 0.0  # the time claims spent waiting for a free slot, all told
        self._claimed = self._published = self._read = self._released = 0
        self.max_fill = 0

    def _reserve(self, total: int) -> None:
        """Give the segment its memory now. Shared memory (tmpfs) is handed out page by page as it is
        first written: a ring larger than what /dev/shm has free was made without a word, and the
        process died of SIGBUS once the frames reached past it (an outside probe: a 128 GiB ring on a
        256 MiB /dev/shm, killed at frame 128). Raises OSError(ENOSPC) saying so, the segment removed."""
        fd = getattr(self._shm, "_fd", -1)
        if fd < 0 or not hasattr(os, "posix_fallocate"):
            return
        free = _shm_free()
        try:
            if free is not None and total > free:  # said at once (tmpfs would fill up to its limit first)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.posix_fallocate(fd, 0, total)
        except OSError as error:
            self._shm.close()
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()
            if error.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise
            raise OSError(
                errno.ENOSPC,
                f"a ring of {total:,} bytes does not fit in the shared memory"
                + ("" if free is None else f" ({free:,} bytes free in /dev/shm)"),
            ) from error

    def slot_memory(self) -> np.ndarray:
        """Every slot's data, one contiguous uint8 view (page-aligned): what the GPU path page-locks."""
        return np.ndarray(
            (self.slots * self.slot_bytes,), dtype=np.uint8, buffer=self._shm.buf, offset=self._data_start
        )

    # -- producer -------------------------------------------------------------------------------------
    def claim(self, nbytes: int, timeout: float | None = None, wait: bool = False) -> Slot | None:
        """Next free slot, in order. Blocks while full under ``block``, or with ``wait`` under any policy
        (a control record, never dropped: not counted as a dropped frame); None when dropping (counted)
        or stopping."""
        if nbytes > self.slot_bytes:
            raise ValueError(f"frame of {nbytes} bytes does not fit a {self.slot_bytes}-byte slot")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            waited = False
            began = 0.0  # (read only once the ring is full: no clock read per frame)
            try:
                while self._claimed - self._released >= self.slots:
                    if (self._stopping and not self._waits_on_at_stop()) or (
                        self.policy == "count-and-drop" and not wait
                    ):
                        if not wait:
                            self._control[6] += 1  # a frame dropped
                        return None
                    if not waited:
                        self._control[7] += 1
                        waited = True
                        began = time.monotonic()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
            finally:
                if waited:
                    self.wait_seconds += time.monotonic() - began
            seq = self._claimed  # (stopping, a free slot is still taken: the frame in hand is stored)
            self._claimed += 1
            self._control[0] = self._claimed
            self.max_fill = max(self.max_fill, self._claimed - self._released)
        index = seq % self.slots
        return Slot(seq, index, self._data[index], self._headers[index])

    def publish(self, slot: Slot, header: FrameHeader, nbytes: int | None = None) -> None:
        """Make a filled frame slot visible to the reader."""
        nbytes = header.height * header.width * np.dtype(header.dtype).itemsize if nbytes is None else nbytes
        # one assignment of the whole record (HEADER_DTYPE's order): a tenth of the cost of field by field
        self._headers[slot.index] = (
            slot.seq,
            KIND_FRAME,
            header.flags,
            header.frame,
            header.timestamp_ns,
            nbytes,
            header.height,
            header.width,
            header.dtype.encode(),
            header.packets_expected,
            header.packets_received,
            header.image_key,
            header.angle_deg,
        )
        self._commit(slot)

    def publish_control(self, slot: Slot, payload: bytes) -> None:
        """Publish an in-band control record (series start/end) so it stays ordered with the frames."""
        slot.buffer[: len(payload)] = payload
        h = self._headers[slot.index]
        h["seq"] = slot.seq
        h["kind"] = KIND_CONTROL
        h["nbytes"] = len(payload)
        self._commit(slot)

    def abandon(self, slot: Slot) -> None:
        """Publish the slot as empty: the reader skips it and releases it in order."""
        h = self._headers[slot.index]
        h["seq"] = slot.seq
        h["kind"] = KIND_EMPTY
        h["nbytes"] = 0
        self._commit(slot)

    def _commit(self, slot: Slot) -> None:
        with self._cond:
            if slot.seq != self._published:
                raise RuntimeError(f"slot {slot.seq} published out of order (expected {self._published})")
            self._published += 1
            self._control[1] = self._published
            self._cond.notify_all()

    # -- consumer -------------------------------------------------------------------------------------
    def next_ready(self, timeout: float = 0.1) -> Slot | None:
        """The oldest published slot not yet taken, or None after ``timeout`` seconds."""
        with self._cond:
            if self._read >= self._published and not self._cond.wait_for(
                lambda: self._read < self._published, timeout
            ):
                return None
            seq = self._read
            self._read += 1
            self._control[2] = self._read
        index = seq % self.slots
        return Slot(seq, index, self._data[index], self._headers[index])

    def release(self, slot: Slot) -> None:
        """The slot's contents are persisted: the writer may reuse it."""
        with self._cond:
            if slot.seq != self._released:
                raise RuntimeError(f"slot {slot.seq} released out of order (expected {self._released})")
            self._released += 1
            self._control[3] = self._released
            self._released_at = time.monotonic()
            self._cond.notify_all()

    # -- lifecycle and views --------------------------------------------------------------------------
    def stop(self, grace: float = 0.0, busy: Callable[[], bool] | None = None) -> None:
        """Wake every waiter: a claim waiting for a free slot, or finding none from now on, returns None
        (a frame the daemon was stopping for). A claim that finds a free slot still takes it: the frame
        a reader received before it stopped is stored, not recorded lost (an outside probe's SIGTERM).

        With ``grace`` (a clean stop under ``block``), a claim that finds the ring full waits on for the
        consumer to empty it, up to ``grace`` seconds after this call, as long as the consumer moves: a
        slot released, ``busy()`` true (it is getting ready: the pipeline loading a mode's kernels) or
        the stop itself, in the last ``STOP_STALL_SECONDS``. Without it, frames the reader already held
        when a SIGTERM came while the kernels loaded were lost as ``shutdown`` (an outside probe; the
        ring's own frames were then stored all the same)."""
        with self._cond:
            self._stopping = True
            self._stop_until = time.monotonic() + max(0.0, grace)
            self._busy_at = time.monotonic()  # the stall is counted from here at the earliest
            self._stop_busy = busy
            self._cond.notify_all()

    def _waits_on_at_stop(self) -> bool:
        """(Stopping, the ring full) whether a claim waits on for a slot: see `stop`."""
        now = time.monotonic()
        if now >= self._stop_until:
            return False
        busy = self._stop_busy
        if busy is not None and busy():
            self._busy_at = now  # (its first frame after that may take a while: no stall before it)
            return True
        return now - max(self._released_at, self._busy_at) < STOP_STALL_SECONDS

    @property
    def stopping(self) -> bool:
        """True once `stop` was called: claims that find the ring full return None from then on."""
        return self._stopping

    def caught_up(self) -> bool:
        """True when the reader has taken every published slot."""
        with self._cond:
            return self._read >= self._published

    def drained(self) -> bool:
        with self._cond:
            return self._released == self._claimed

    def counters(self) -> dict[str, Any]:
        with self._cond:
            fill = self._claimed - self._released
            return {
                "name": self.name,
                "slots": self.slots,
                "slot_bytes": self.slot_bytes,
                "policy": self.policy,
                "fill": fill,
                "free": self.slots - fill,
                "max_fill": self.max_fill,
                "claimed": self._claimed,
                "published": self._published,
                "released": self._released,
                "dropped": int(self._control[6]),
                "full_waits": int(self._control[7]),
            }

    def close(self) -> None:
        """Drop every view and unlink the segment."""
        self.stop()
        del self._data, self._headers, self._control
        # a slot view may still be held somewhere; then the mapping goes with the process
        with contextlib.suppress(BufferError):
            self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:  # removed by someone else (its memory stayed ours while mapped)
            log.warning("ring %s was already removed from /dev/shm by another process", self.name)
