"""The shared-memory frame ring: ordering, backpressure, drop policy, and no reuse before release."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from multiprocessing import shared_memory

import numpy as np
import pytest

from edge.ring import KIND_CONTROL, KIND_EMPTY, KIND_FRAME, FrameRing
from firmware_bridge.source import FrameHeader


@pytest.fixture
def ring():
    ring = FrameRing(slots=4, slot_bytes=64, policy="block")
    yield ring
    ring.close()


def put(ring: FrameRing, number: int) -> None:
    slot = ring.claim(8)
    assert slot is not None
    np.frombuffer(slot.buffer, np.uint16, count=4)[:] = number
    ring.publish(slot, FrameHeader(frame=number, height=2, width=2, dtype="uint16"))


def test_frames_come_out_in_order_with_headers(ring: FrameRing) -> None:
    for n in range(3):
        put(ring, n)
    for n in range(3):
        slot = ring.next_ready(0.1)
        assert slot is not None and int(slot.header["kind"]) == KIND_FRAME
        assert int(slot.header["frame"]) == n
        assert np.array_equal(slot.array(), np.full((2, 2), n, np.uint16))
        ring.release(slot)
    assert ring.next_ready(0.01) is None
    assert ring.drained()


def test_full_ring_blocks_the_writer_until_a_slot_is_released(ring: FrameRing) -> None:
    for n in range(4):
        put(ring, n)
    assert ring.claim(8, timeout=0.05) is None  # full: nothing is overwritten
    first = ring.next_ready(0.1)
    assert first is not None
    assert ring.claim(8, timeout=0.05) is None  # taken but not yet persisted: still not reusable
    writer_done = threading.Event()

    def writer() -> None:
        put(ring, 4)
        writer_done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert not writer_done.wait(0.1)
    assert np.array_equal(first.array(), np.zeros((2, 2), np.uint16))  # slot 0 intact while blocked
    ring.release(first)
    assert writer_done.wait(5)
    thread.join()
    counters = ring.counters()
    assert counters["full_waits"] >= 1 and counters["dropped"] == 0 and counters["max_fill"] == 4


def test_count_and_drop_refuses_and_counts() -> None:
    ring = FrameRing(slots=2, slot_bytes=64, policy="count-and-drop")
    try:
        put(ring, 0)
        put(ring, 1)
        assert ring.claim(8) is None
        assert ring.counters()["dropped"] == 1
    finally:
        ring.close()


def test_a_control_record_waits_for_a_slot_without_counting_a_drop() -> None:
    """An outside probe: under count-and-drop, a control record (a series start or end) that found the
    ring full was retried, each failed claim counted as a dropped frame: ``ring.dropped`` read one more
    than the frames dropped (99 against 98 ``ring_full`` losses)."""
    ring = FrameRing(slots=2, slot_bytes=64, policy="count-and-drop")
    try:
        put(ring, 0)
        put(ring, 1)
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(ring.claim(16, wait=True)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # waiting, not dropped
        slot = ring.next_ready(0.1)
        assert slot is not None
        ring.release(slot)
        waiter.join(5)
        assert got and got[0] is not None
        assert ring.counters()["dropped"] == 0
    finally:
        ring.close()


def test_control_and_abandoned_slots_keep_order(ring: FrameRing) -> None:
    slot = ring.claim(16)
    ring.publish_control(slot, b'{"event":"x"}')
    slot = ring.claim(8)
    ring.abandon(slot)
    put(ring, 7)
    kinds = []
    for _ in range(3):
        slot = ring.next_ready(0.1)
        kinds.append(int(slot.header["kind"]))
        ring.release(slot)
    assert kinds == [KIND_CONTROL, KIND_EMPTY, KIND_FRAME]


def test_segment_is_visible_to_other_processes_by_name(ring: FrameRing) -> None:
    put(ring, 5)
    view = shared_memory.SharedMemory(name=ring.name)
    try:
        control = np.ndarray((8,), dtype="<i8", buffer=view.buf[:64])
        assert control[0] == 1 and control[4] == 4  # claimed, slots
        del control
    finally:
        view.close()


def test_oversized_frame_is_refused(ring: FrameRing) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        ring.claim(ring.slot_bytes + 1)


def test_slot_memory_is_every_slot_in_one_page_aligned_view(ring: FrameRing) -> None:
    """What the GPU path page-locks: one view over every slot's data, in slot order, so a frame in a
    slot is inside the locked pages."""
    memory = ring.slot_memory()
    assert memory.nbytes == ring.slots * ring.slot_bytes and memory.ctypes.data % 4096 == 0
    for n in range(ring.slots):
        put(ring, 100 + n)
    for n in range(ring.slots):
        slot = ring.next_ready(0.1)
        assert slot is not None
        start = slot.index * ring.slot_bytes
        assert np.array_equal(memory[start : start + 8].view(np.uint16), np.full(4, 100 + n, np.uint16))
        ring.release(slot)
    del memory


def test_a_ring_larger_than_the_shared_memory_is_refused_at_once_and_leaves_nothing() -> None:
    """An outside probe: ring.slots = 65536 of 2 MiB frames on a 256 MiB /dev/shm was made without a
    word (tmpfs hands out pages as they are written) and the daemon died of SIGBUS at frame 128."""
    import os

    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    slots = 1024
    with pytest.raises(OSError, match="does not fit in the shared memory") as raised:
        FrameRing(slots, free // slots + (1 << 20), name="edge-ring-test-too-big")
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(FileNotFoundError):  # nothing left behind
        shared_memory.SharedMemory(name="edge-ring-test-too-big")
    ring = FrameRing(4, 4096)  # one that fits has its memory reserved: every page is there to write
    try:
        assert os.fstat(ring._shm._fd).st_blocks * 512 >= 4 * 4096
    finally:
        ring.close()


def test_rings_no_process_maps_are_swept_and_live_ones_kept() -> None:
    """A daemon killed with kill -9 leaves its ring in /dev/shm; every restart added one until the shared
    memory was full (and a fixed ring.name could not be made again at all)."""
    from edge.ring import sweep_stale_rings

    dead = shared_memory.SharedMemory(name="edge-ring-stale-probe", create=True, size=8192)
    dead.buf[:4] = b"ring"
    dead.close()  # unmapped, never unlinked: what a killed process leaves
    fixed = shared_memory.SharedMemory(name="beamline-ring-stale", create=True, size=4096)
    fixed.close()
    live = FrameRing(4, 4096)
    other = shared_memory.SharedMemory(name="not-a-ring-of-ours", create=True, size=4096)
    other.close()
    try:
        removed, freed = sweep_stale_rings(("beamline-ring-stale",), min_age=0)
        assert {"edge-ring-stale-probe", "beamline-ring-stale"} <= set(removed) and freed >= 4096
        assert live.name not in removed and "not-a-ring-of-ours" not in removed
        shared_memory.SharedMemory(name=live.name).close()  # still there
        shared_memory.SharedMemory(name="not-a-ring-of-ours").close()
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name="edge-ring-stale-probe")
    finally:
        live.close()
        shared_memory.SharedMemory(name="not-a-ring-of-ours").unlink()


def test_a_ring_just_made_or_held_open_is_never_swept() -> None:
    """An outside probe: four daemons started at once; one's sweep listed the others' rings as
    unmapped in the moment between their making and mapping, removed one, and that daemon crashed at its
    stop (FileNotFoundError from shm_unlink)."""
    from edge.ring import sweep_stale_rings

    young = shared_memory.SharedMemory(name="edge-ring-young-probe", create=True, size=4096)
    young.close()  # unmapped, but made just now: another daemon between shm_open and mmap, say
    held = os.open("/dev/shm/edge-ring-held-probe", os.O_CREAT | os.O_RDWR, 0o600)  # open, not mapped
    try:
        removed, _freed = sweep_stale_rings()
        assert "edge-ring-young-probe" not in removed
        removed, _freed = sweep_stale_rings(min_age=0)
        assert "edge-ring-held-probe" not in removed and "edge-ring-young-probe" in removed
    finally:
        os.close(held)
        os.unlink("/dev/shm/edge-ring-held-probe")
        with contextlib.suppress(FileNotFoundError):
            shared_memory.SharedMemory(name="edge-ring-young-probe").unlink()


def test_a_ring_removed_by_someone_else_closes_without_an_error(caplog: pytest.LogCaptureFixture) -> None:
    ring = FrameRing(4, 4096)
    os.unlink(f"/dev/shm/{ring.name}")
    ring.close()
    assert "already removed" in caplog.text


def test_stopping_a_frame_in_hand_still_takes_a_free_slot_and_a_waiting_one_gives_up(ring: FrameRing) -> None:
    """An outside probe's SIGTERM mid-series: the frame the reader had just received was recorded lost
    (``shutdown``) although the ring had room; only a claim that finds the ring full gives up."""
    put(ring, 0)
    ring.stop()
    put(ring, 1)  # room: stored like any frame before the stop
    put(ring, 2)
    put(ring, 3)
    assert ring.claim(8) is None  # full: a waiter gives up at once while stopping
    waiting = FrameRing(slots=2, slot_bytes=64, policy="block")
    try:
        for n in range(2):
            put(waiting, n)
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(waiting.claim(8)))
        thread.start()
        thread.join(0.2)
        assert thread.is_alive()  # blocked on the full ring
        waiting.stop()
        thread.join(2)
        assert not thread.is_alive() and result == [None]
    finally:
        waiting.close()
    assert [int(ring.next_ready(0.1).header["frame"]) for _ in range(4)] == [0, 1, 2, 3]  # type: ignore[union-attr]
