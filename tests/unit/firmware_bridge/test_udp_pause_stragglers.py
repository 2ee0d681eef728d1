"""What the UDP reader makes of the first packets after a silence ended a run (an outside sender, from
docs/wire-formats.md): a straggler of the run before, or its last frame sent again, no longer makes the
next run a new acquisition that records the run before's frames lost (each frame two dispositions); a
sender that really starts again at 0 still gets a new acquisition; and the counters stay whole.

Then frame numbers an outside sender's probe (round 2) found misread: two stray frame numbers that
confirmed each other, a short acquisition followed at once by one from 0, a byte-identical replay of old
frames, and an old run's tail interleaved with the next one's frame 0. A frame's packets share its
``timestamp_ns``: a packet of a finished frame with another timestamp is another exposure under the
same number (a detector numbering from 0 again), never a copy.

The reader runs on a loopback socket with a sink that records each run's frames and losses."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from firmware_bridge.source import FrameHeader
from firmware_bridge.udp_codec import DetectorGeometry, packetize_frame
from firmware_bridge.udp_reader import UdpSource, load_paused_timestamps

GEOMETRY = DetectorGeometry(module_rows=4, module_cols=8, grid_rows=1, grid_cols=2, payload_bytes=16)
IDLE = 0.3


class RunSink:
    """Each run's config, frames and losses (first, last, reason), in order."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.ended = 0
        self.lock = threading.Lock()

    def claim(self, nbytes: int) -> Any:
        class Slot:
            buffer = memoryview(bytearray(nbytes))

        return Slot()

    def publish(self, slot: Any, header: FrameHeader) -> None:
        with self.lock:
            self.runs[-1]["frames"].append(header.frame)

    def abandon(self, slot: Any) -> None:
        pass

    def series_start(self, series: int, config: dict[str, Any]) -> None:
        with self.lock:
            self.runs.append({"config": config, "frames": [], "losses": [], "details": []})

    def series_length(self, series: int, frames_expected: int) -> None:
        pass

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        with self.lock:
            self.ended += 1

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        with self.lock:
            self.runs[-1]["losses"].append((first, last, reason))
            self.runs[-1]["details"].append(detail)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.01)


class Sender:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def packets(self, frame: int) -> list[bytes]:
        return packetize_frame(GEOMETRY, frame, np.full(GEOMETRY.raw_shape, frame % 60000, np.uint16))

    def send(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            self.sock.sendto(datagram, ("127.0.0.1", self.port))
            time.sleep(0.0005)  # loopback keeps them all at this pace

    def frames(self, numbers: range) -> None:
        for n in numbers:
            self.send(self.packets(n))


@pytest.fixture
def reader() -> Any:
    sources: list[UdpSource] = []
    senders: list[Sender] = []

    def make(frames_per_run: int = 0) -> tuple[UdpSource, RunSink, Sender]:
        sink = RunSink()
        source = UdpSource(
            "127.0.0.1",
            0,
            GEOMETRY,
            sink,
            frames_per_run=frames_per_run,
            idle_seconds=IDLE,
            max_frame_jump=1_000_000,
        )
        sources.append(source)
        source.start()
        senders.append(Sender(source.address[1]))
        return source, sink, senders[-1]

    yield make
    for source in sources:
        source.stop()
    for sender in senders:
        sender.sock.close()


def _dispositions(sink: RunSink) -> dict[int, list[str]]:
    """Every frame number -> the dispositions the runs gave it (stored, or a loss reason). A run that
    continues one after a pause takes over that run's ``series_end`` records from its first frame on
    (the appliance's writer does: ``continue_after_pause``)."""
    out: dict[int, list[str]] = {}
    for n, run in enumerate(sink.runs):
        after = sink.runs[n + 1]["config"] if n + 1 < len(sink.runs) else {}
        handed = after["first_frame"] if after.get("resumed_after_pause") else None
        for frame in run["frames"]:
            out.setdefault(frame, []).append("stored")
        for first, last, reason in run["losses"]:
            if reason == "incomplete_frame":
                continue  # a partial loss of a stored frame
            if handed is not None and reason == "series_end":
                last = min(last, handed - 1)
            for frame in range(first, last + 1):
                out.setdefault(frame, []).append(reason)
    return out


def _identity(source: UdpSource) -> None:
    c = source.counters()["assembler"]
    taken = c["packets_accepted"] + c["packets_duplicate"] + c["packets_late"] + c["packets_rejected"]
    assert c["packets_received"] == taken + c["packets_held"], c
    assert c["packets_accepted"] + c["packets_missing"] == GEOMETRY.packets_per_frame * (
        c["frames_complete"] + c["frames_incomplete"] + c["frames_lost"]
    ), c


@pytest.mark.parametrize("first", ["straggler", "last frame again"])
def test_a_straggler_first_after_a_pause_leaves_the_acquisition_going_on(reader: Any, first: str) -> None:
    """Frames 0..19, a pause, then one old packet (of frame 5, or the last frame sent again), then
    20..29. Before: a new run from 0 that recorded 0..19 lost (the first run had stored them) and stored
    frame 5 (or 19) a second time."""
    source, sink, send = reader(frames_per_run=30)
    send.frames(range(20))
    _wait(lambda: sink.ended == 1, "the pause ended the first run")
    send.send(send.packets(5)[:1] if first == "straggler" else send.packets(19))
    send.frames(range(20, 30))
    _wait(lambda: sink.ended == 2, "the second run ended")
    frames = _dispositions(sink)
    assert frames == {n: ["stored"] for n in range(30)}, frames
    second = sink.runs[1]["config"]
    assert second["resumed_after_pause"] is True and second["first_frame"] == 20
    counters = source.counters()
    assert counters["packets_straggling"] == len(
        send.packets(5)[:1] if first == "straggler" else send.packets(19)
    )
    _identity(source)


def test_a_sender_that_starts_again_at_0_after_a_pause_is_a_new_acquisition(reader: Any) -> None:
    source, sink, send = reader()
    send.frames(range(20))
    _wait(lambda: sink.ended == 1, "the pause ended the first run")
    send.frames(range(10))
    _wait(lambda: sink.ended == 2, "the second run ended")
    assert [run["frames"] for run in sink.runs] == [list(range(20)), list(range(10))]
    assert "resumed_after_pause" not in sink.runs[1]["config"] and sink.runs[1]["losses"] == []
    _identity(source)


def test_a_one_frame_acquisition_at_0_after_a_pause_is_stored_when_silence_comes_again(reader: Any) -> None:
    """Acquisitions of one frame each, all numbered 0: the second one's frame is held (it may have been
    the first's sent again), and silence settles it: a whole frame, a new acquisition."""
    source, sink, send = reader()
    send.frames(range(1))
    _wait(lambda: sink.ended == 1, "the pause ended the first run")
    send.frames(range(1))
    _wait(lambda: sink.ended == 2, "the second run ended")
    assert [run["frames"] for run in sink.runs] == [[0], [0]]
    _identity(source)


def test_a_lone_straggler_packet_that_silence_follows_opens_no_run(reader: Any) -> None:
    source, sink, send = reader()
    send.frames(range(10))
    _wait(lambda: sink.ended == 1, "the pause ended the first run")
    send.send(send.packets(9)[:1])
    time.sleep(3 * IDLE)
    assert len(sink.runs) == 1 and source.counters()["packets_straggling"] == 1
    _identity(source)


def test_frames_beyond_the_armed_ones_after_a_pause_never_make_the_run_before_lost(reader: Any) -> None:
    """``frames_per_run`` 30, frames 0..29, a pause, then 30..35 (a detector whose numbers go on): a new
    acquisition, but not one that counts from 0 (it recorded 0..29 lost, stored in the run before). It
    is armed for 30 frames from its first: 36..59 never came (``series_end``)."""
    source, sink, send = reader(frames_per_run=30)
    send.frames(range(30))
    _wait(lambda: sink.ended == 1, "the pause ended the first run")
    send.frames(range(30, 36))
    _wait(lambda: sink.ended == 2, "the second run ended")
    frames = _dispositions(sink)
    want = {n: ["stored"] for n in range(36)} | {n: ["series_end"] for n in range(36, 60)}
    assert frames == want, frames
    _identity(source)


def test_the_tail_handed_over_after_a_pause_leaves_the_packet_counters_whole(reader: Any) -> None:
    source, sink, send = reader(frames_per_run=30)
    send.frames(range(20))
    _wait(lambda: sink.ended == 1, "the pause ended the first run")
    send.frames(range(20, 30))
    _wait(lambda: sink.ended == 2, "the second run ended")
    assert source.counters()["frames_handed_over"] == 10
    _identity(source)


@pytest.mark.parametrize("first", [30, 300], ids=["within-history", "beyond-history"])
def test_a_sender_that_starts_again_at_0_without_a_pause_is_a_new_acquisition(
    reader: Any, first: int
) -> None:
    """An outside sender: frames 0..29, then at once 0..39 (a new acquisition, no silence between): the
    second acquisition's frames were taken for copies of the first's, counted as duplicate packets and
    dropped, with no run and no loss record."""
    source, sink, send = reader()
    send.frames(range(first))
    send.frames(range(40))
    _wait(lambda: sink.ended == 2, "both runs ended")
    assert [run["frames"] for run in sink.runs] == [list(range(first)), list(range(40))]
    assert [run["losses"] for run in sink.runs] == [[], []]
    assert source.counters()["series_numbers_restarted"] == 1
    assert source.counters()["assembler"]["packets_duplicate"] == 0
    _identity(source)


PPF = GEOMETRY.packets_per_frame


def _packets(frame: int, acquisition: int) -> list[bytes]:
    """Frame ``frame`` of acquisition ``acquisition``: its exposure's timestamp (1 ms apart, each
    acquisition an hour after the one before) and pixels that say which acquisition it is."""
    timestamp = (acquisition * 3600 + 1) * 10**9 + frame * 10**6
    pixels = np.full(GEOMETRY.raw_shape, (1000 * acquisition + frame) % 65536, np.uint16)
    return packetize_frame(GEOMETRY, frame, pixels, timestamp)


def _send(send: Sender, frames: range, acquisition: int) -> None:
    for n in frames:
        send.send(_packets(n, acquisition))


def _ended(sink: RunSink, runs: int) -> None:
    _wait(lambda: sink.ended == runs, f"{runs} run(s) ended")


def test_two_stray_frame_numbers_close_together_do_not_confirm_each_other(reader: Any) -> None:
    """Frames 0..50, one packet each of frames 10000 and 10010, then 51..60: the strays confirmed each
    other (within 64 frames), frames 51..9996 were declared lost, the stray frames stored, and the real
    frames 51..60 taken for a new acquisition. A jump is confirmed by a packet of its frame or of the
    next few (``frame_timeout_frames``) only."""
    source, sink, send = reader()
    _send(send, range(51), 1)
    send.send([_packets(10000, 1)[3], _packets(10010, 1)[5]])
    _send(send, range(51, 61), 1)
    _ended(sink, 1)
    assert len(sink.runs) == 1
    assert sink.runs[0]["frames"] == list(range(61)) and sink.runs[0]["losses"] == []
    counters = source.counters()["assembler"]
    assert counters["packets_rejected_frame_number_unconfirmed"] == 2
    _identity(source)


def test_a_real_jump_under_loss_takes_the_packets_it_passed_on_its_way(reader: Any) -> None:
    """The detector jumps from frame 9 to 100 and loses frames 101..109 but one packet of 105: 100's
    first packet is held, 105's too (not close enough to confirm), 100's next packet confirms the
    jump, and the packet of 105 is taken with it (never late): 100 and 110.. stored, 105 incomplete."""
    source, sink, send = reader()
    _send(send, range(10), 1)
    jump = _packets(100, 1)
    send.send([jump[0], _packets(105, 1)[2], *jump[1:]])
    _send(send, range(110, 115), 1)
    _ended(sink, 1)
    (run,) = sink.runs
    assert run["frames"] == [*range(10), 100, 105, *range(110, 115)]
    losses = run["losses"]
    assert (105, 105, "incomplete_frame") in losses
    # said per frame: consecutive frames missing as many packets are merged into one record by the ledger
    (detail,) = [d for loss, d in zip(losses, run["details"], strict=True) if loss[2] == "incomplete_frame"]
    assert detail.startswith("each frame 7 of 8 packets missing;"), detail
    lost = sorted(
        n for first, last, reason in losses if reason != "incomplete_frame" for n in range(first, last + 1)
    )
    assert lost == [*range(10, 100), *range(101, 105), *range(106, 110)]  # (in adjacent ranges)
    assert {reason for _first, _last, reason in losses} == {"frame_number_jump", "incomplete_frame"}
    _identity(source)


def test_a_short_acquisition_followed_at_once_by_one_from_0_is_two_runs(reader: Any) -> None:
    """Frames 0..3, then at once 0..9 of the next acquisition: its frames 0..3 were dropped as
    duplicates of the first's (too close to its newest frame to look like numbers starting again) and
    4..9 appended to the first run, with no loss record. Their timestamps are not the first's."""
    source, sink, send = reader()
    _send(send, range(4), 1)
    _send(send, range(10), 2)
    _ended(sink, 2)
    assert [run["frames"] for run in sink.runs] == [list(range(4)), list(range(10))]
    assert [run["losses"] for run in sink.runs] == [[], []]
    counters = source.counters()
    assert counters["series_numbers_restarted"] == 1 and counters["assembler"]["packets_duplicate"] == 0
    _identity(source)


def test_an_acquisition_of_one_frame_followed_at_once_by_one_from_0(reader: Any) -> None:
    _source, sink, send = reader()
    _send(send, range(1), 1)
    _send(send, range(6), 2)
    _ended(sink, 2)
    assert [run["frames"] for run in sink.runs] == [[0], list(range(6))]
    assert [run["losses"] for run in sink.runs] == [[], []]


def test_a_byte_identical_replay_of_old_frames_is_copies_not_a_new_acquisition(reader: Any) -> None:
    """Frames 0..19, then frames 3 and 4 sent again byte for byte, then 20..29: the replay was taken for
    a detector numbering from 0 again (the run split, frames 3 and 4 stored twice). Same timestamps:
    copies, counted as duplicate packets."""
    source, sink, send = reader()
    _send(send, range(20), 1)
    _send(send, range(3, 5), 1)
    _send(send, range(20, 30), 1)
    _ended(sink, 1)
    (run,) = sink.runs
    assert run["frames"] == list(range(30)) and run["losses"] == []
    counters = source.counters()
    assert counters["assembler"]["packets_duplicate"] == 2 * PPF
    assert counters.get("series_numbers_restarted", 0) == 0
    _identity(source)


def test_an_old_runs_tail_interleaved_with_the_next_ones_frame_0(reader: Any) -> None:
    """Frames 0..8, then frame 9's packets and the next acquisition's frame 0's in turn, then its 1..5:
    the new frame 0's packets were dropped as duplicates (each packet of the old tail started the count
    of old numbers again) and it was stored incomplete. Now it is whole, in the second run."""
    source, sink, send = reader()
    _send(send, range(9), 1)
    tail, first = _packets(9, 1), _packets(0, 2)
    send.send([packet for pair in zip(tail, first, strict=True) for packet in pair])
    _send(send, range(1, 6), 2)
    _ended(sink, 2)
    assert [run["frames"] for run in sink.runs] == [list(range(10)), list(range(6))]
    assert [run["losses"] for run in sink.runs] == [[], []]
    _identity(source)


def test_the_continued_runs_log_line_says_how_long_the_silence_was_and_what_it_took_over(
    reader: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe: "after N s of silence" counted from the run's end (idle_seconds after the
    last packet), and the run before's log line of 10 frames lost as series_end was not taken back
    when 6 of them came after the pause."""
    source, sink, send = reader(frames_per_run=16)
    pause = IDLE + 0.4
    with caplog.at_level("WARNING", logger="firmware_bridge.udp_reader"):
        send.frames(range(6))
        _wait(lambda: sink.ended == 1, "the silence ends the first run")
        time.sleep(pause - IDLE)
        send.frames(range(6, 16))
        _wait(lambda: sink.ended == 2, "the second run ended")
    (line,) = [r.getMessage() for r in caplog.records if "s of silence" in r.getMessage()]
    seconds = float(line.split(" after ")[1].split(" s of silence")[0])
    assert seconds >= pause - 0.05, line  # at least the pause itself (the sleeps make it no shorter)
    assert "the 10 frame(s) from 6 on that the last one recorded lost as series_end are this run's" in line
    _identity(source)


def test_a_jump_confirmed_by_the_first_packets_after_a_pause_continues_the_run(reader: Any) -> None:
    """An outside probe (round 3): frames 0..19, a pause, one packet of frame 30, then frames 31..39.
    Frame 31 confirmed the jump and took frame 30 in with it; the run was then begun at the newest frame
    (31) with 30 accepted below it: the reader thread died (ValueError), every later frame was lost
    outside any run. The run continues from its lowest frame, 30."""
    source, sink, send = reader()
    _send(send, range(20), 1)
    _wait(lambda: sink.ended == 1, "the silence ends the first run")
    send.send(_packets(30, 1)[:1])
    _send(send, range(31, 40), 1)
    _ended(sink, 2)
    first, second = sink.runs
    assert second["config"]["resumed_after_pause"] is True and second["config"]["first_frame"] == 30
    assert sorted(second["frames"]) == list(range(30, 40))  # (complete frames may overtake 30)
    assert [loss[2] for loss in second["losses"]] == ["incomplete_frame"]  # frame 30: 1 packet of 8
    assert first["frames"] == list(range(20))  # (20..29: the run before's, written by the appliance)
    assert not source.counters().get("reader_crashes")
    _identity(source)


def test_frames_past_the_armed_number_after_a_pause_are_not_lost_twice(reader: Any) -> None:
    """An outside probe: ``frames_per_run = 40``, frames 0..19, a pause, frames 40..44: the first run
    recorded 20..39 lost (series_end) and the second, begun at 20, recorded them again
    (frame_number_jump): 40 lost in the status, 20 real."""
    _source, sink, send = reader(frames_per_run=40)
    _send(send, range(20), 1)
    _wait(lambda: sink.ended == 1, "the silence ends the first run")
    _send(send, range(40, 45), 1)
    _ended(sink, 2)
    first, second = sink.runs
    assert first["losses"] == [(20, 39, "series_end")]
    # (armed for 40 from its own first frame: its tail never came)
    assert second["frames"] == list(range(40, 45)) and second["losses"] == [(45, 79, "series_end")]
    assert second["config"]["first_frame"] == 40


def test_an_acquisition_far_beyond_the_last_after_a_pause_is_a_run_counted_from_its_first_frame(
    reader: Any,
) -> None:
    """An outside probe (UDP, round 4): frames 0..9, frames 2 000 000..2 000 019 (beyond
    udp.max_frame_jump: rejected, as documented), a silence, frames 2 000 020..2 000 039. The silence
    ended the run, yet every later packet was rejected (the next run's first frame was bounded from the
    last run's, forever): a detector whose counter never resets, idle for a million frame periods, lost
    every later acquisition with no run and no loss record. After the silence the far frames are a new
    acquisition whose numbers go on (once a second packet confirmed the jump: one stray packet still
    opens nothing), counted from its first frame: no frame lost in between, the run before untouched."""
    source, sink, send = reader()
    _send(send, range(10), 1)
    far = 2_000_000
    _send(send, range(far, far + 20), 1)  # the same run: beyond the bound, rejected
    _wait(lambda: sink.ended == 1, "the silence ends the first run")
    stray = packetize_frame(GEOMETRY, 2**63 - 5, np.zeros(GEOMETRY.raw_shape, np.uint16), 12345)
    send.send(stray[:1])  # one stray packet alone: nothing
    _send(send, range(far + 20, far + 40), 1)
    _ended(sink, 2)
    first, second = sink.runs
    assert first["frames"] == list(range(10)) and first["losses"] == []
    assert second["frames"] == list(range(far + 20, far + 40)) and second["losses"] == []
    assert second["config"]["first_frame"] == far + 20 and not second["config"].get("resumed_after_pause")
    assert not source.counters().get("reader_crashes")


def test_a_packet_held_as_early_is_taken_without_making_the_frames_before_it_late(reader: Any) -> None:
    """An outside probe: frames 0..10, frame 15's first packet early, 11..14, the rest of 15, 16..20.
    Frame 11's first packet brought 15 within reach; taken at once it finalised frame 11 with one
    packet, its other 7 counted late. It is taken once it finalises no frame still arriving."""
    source, sink, send = reader()
    _send(send, range(11), 1)
    early = _packets(15, 1)
    send.send(early[:1])
    _send(send, range(11, 15), 1)
    send.send(early[1:])
    _send(send, range(16, 21), 1)
    _ended(sink, 1)
    (run,) = sink.runs
    assert run["frames"] == list(range(21)) and run["losses"] == []
    assert source.counters()["assembler"]["packets_late"] == 0
    _identity(source)


def test_a_stray_jump_held_before_any_run_is_rejected_at_the_silence(reader: Any) -> None:
    """An outside probe: a lone packet of frame 5000 before any run stayed in ``packets_held`` for
    good, never counted as rejected (nor in the receiver's alarm). The silence rejects it."""
    source, sink, send = reader()
    send.send(_packets(5000, 1)[:1])
    _wait(lambda: source.counters()["assembler"]["packets_rejected_frame_number_unconfirmed"] == 1, "reject")
    _send(send, range(3), 1)
    _ended(sink, 1)
    counters = source.counters()["assembler"]
    assert counters["packets_held"] == 0 and sink.runs[0]["frames"] == [0, 1, 2]
    _identity(source)


def _pixels(frame: int, acquisition: int) -> int:
    return 1000 * acquisition + frame


class PixelSink(RunSink):
    """Also keeps each frame's pixel values (set(...) of a frame holding one acquisition's packets)."""

    def publish(self, slot: Any, header: FrameHeader) -> None:
        pixels = np.frombuffer(slot.buffer, np.uint16, header.height * header.width)
        values = {int(v) for v in np.unique(pixels)} - {0}  # (gap pixels and missing packets are 0)
        with self.lock:
            self.runs[-1]["frames"].append(header.frame)
            self.runs[-1].setdefault("values", []).append(values)


@pytest.mark.parametrize("last", [2, 11])
def test_an_old_tail_after_the_numbers_started_again_is_a_straggler_not_a_frame(
    reader: Any, last: int
) -> None:
    """An outside probe (round 3): A's frames up to ``last - 1``, then A's frame ``last`` interleaved
    with B's frame 0, then B's 1..9. B's frame 0 started the new run before A's last packet of frame
    ``last`` came; that packet then opened a phantom frame in B's run (11: stored with A's pixels, 10
    recorded lost) or filled B's own frame 2 (stored "complete" with A's pixels). It is A's straggler
    now (its timestamp is A's frame's)."""
    source, _sink, send = reader()
    sink = PixelSink()
    source.sink = sink
    _send(send, range(last), 1)
    tail, first = _packets(last, 1), _packets(0, 2)
    send.send([packet for pair in zip(first, tail, strict=True) for packet in pair])
    _send(send, range(1, 10), 2)
    _ended(sink, 2)
    a_run, b_run = sink.runs
    assert b_run["frames"] == list(range(10)) and b_run["losses"] == []
    assert all(values == {_pixels(n, 2)} for n, values in zip(b_run["frames"], b_run["values"], strict=True))
    assert a_run["frames"] == list(range(last + 1))  # (its last frame may lack the packet that came late)
    _identity(source)


def test_packets_of_another_exposure_never_fill_a_frame_still_pending(reader: Any) -> None:
    """An outside probe: A's frame 0 without its last packet, then B's frames 0..4 (a new acquisition):
    one run, its frame 0 "complete" with 7 of A's packets and 1 of B's. B's packets carry another
    timestamp: not frame 0's packets, but a new acquisition's."""
    source, _sink, send = reader()
    sink = PixelSink()
    source.sink = sink
    send.send(_packets(0, 1)[:-1])
    _send(send, range(5), 2)
    _ended(sink, 2)
    a_run, b_run = sink.runs
    assert a_run["frames"] == [0] and [loss[2] for loss in a_run["losses"]] == ["incomplete_frame"]
    assert b_run["frames"] == list(range(5)) and b_run["losses"] == []
    assert all(values == {_pixels(n, 2)} for n, values in zip(b_run["frames"], b_run["values"], strict=True))
    _identity(source)


def test_a_held_stray_exposed_before_the_newest_frame_is_never_taken(reader: Any) -> None:
    """An outside probe: one damaged packet of frame 100 (timestamp 5) while the run is at frame 50,
    then frames 51..120: the stray was held, taken as early when the run reached it, and frame 100 was
    stored "complete" with its payload. Exposed before the newest frame, it is rejected."""
    source, _sink, send = reader()
    sink = PixelSink()
    source.sink = sink
    _send(send, range(51), 1)
    stray = packetize_frame(GEOMETRY, 100, np.full(GEOMETRY.raw_shape, 7, np.uint16), 5)[0]
    send.send([stray])
    _send(send, range(51, 121), 1)
    _ended(sink, 1)
    (run,) = sink.runs
    assert run["frames"] == list(range(121)) and run["losses"] == []
    assert run["values"][100] == {_pixels(100, 1)}
    assert source.counters()["assembler"]["packets_rejected_frame_number_unconfirmed"] == 1
    _identity(source)


def test_a_byte_identical_copy_of_the_last_frames_after_a_pause_is_no_new_acquisition(reader: Any) -> None:
    """An outside sender's probe: frames 0..19, a pause, frames 18 and 19 sent again byte for byte.
    Two whole frames held made a new acquisition of them: a run recording 0..17 lost, 18 and 19 stored
    twice. Their timestamps are the frames' own: stragglers of the run before, counted late. Frames
    20..29 then continue it."""
    source, sink, send = reader()
    _send(send, range(20), 1)
    _ended(sink, 1)
    _send(send, range(18, 20), 1)
    # a silence again: the copies held are settled (counted late)
    _wait(lambda: source.counters().get("packets_straggling") == 2 * PPF, "the copies counted")
    assert len(sink.runs) == 1
    _send(send, range(20, 30), 1)
    _ended(sink, 2)
    frames = _dispositions(sink)
    assert frames == {n: ["stored"] for n in range(30)}, frames
    assert sink.runs[1]["config"]["resumed_after_pause"] is True
    _identity(source)


def test_straggler_packets_after_a_pause_then_a_new_acquisition_from_0(reader: Any) -> None:
    """Frames 0..19, a pause, three late packets of frame 19, then a new acquisition's 0..9: the late
    packets were taken into the new run (frame 19 of it), which recorded 0..18 lost. Now they are the
    run before's stragglers and the new run holds 0..9 alone."""
    source, sink, send = reader()
    _send(send, range(20), 1)
    _ended(sink, 1)
    send.send(_packets(19, 1)[:3])
    _send(send, range(10), 2)
    _ended(sink, 2)
    assert [run["frames"] for run in sink.runs] == [list(range(20)), list(range(10))]
    assert [run["losses"] for run in sink.runs] == [[], []]
    assert source.counters()["packets_straggling"] == 3
    _identity(source)


def _restarted_clock(frame: int, acquisition: int) -> list[bytes]:
    """Frame ``frame`` of an acquisition whose detector clock starts again at each arm: the same
    timestamps in every acquisition, pixels that say which one it is."""
    pixels = np.full(GEOMETRY.raw_shape, (1000 * acquisition + frame) % 65536, np.uint16)
    return packetize_frame(GEOMETRY, frame, pixels, 1000 + frame * 10**6)


def test_a_new_acquisition_that_repeats_every_timestamp_of_the_one_before_is_a_new_run(reader: Any) -> None:
    """An outside sender's probe: 20 frames, a pause, then 20 new frames from 0 with the same timestamps
    (a detector clock that starts again at arm): all 160 packets were counted late, no run, no record.
    Four whole frames of repeated timestamps are a new acquisition; two are still copies (above)."""
    source, sink, send = reader()
    for n in range(20):
        send.send(_restarted_clock(n, 1))
    _ended(sink, 1)
    for n in range(20):
        send.send(_restarted_clock(n, 2))
    _ended(sink, 2)
    assert [run["frames"] for run in sink.runs] == [list(range(20)), list(range(20))]
    assert [run["losses"] for run in sink.runs] == [[], []]
    assert source.counters()["acquisitions_with_repeated_timestamps"] == 1
    assert source.counters().get("packets_straggling", 0) == 0
    _identity(source)


def test_a_resend_of_the_last_six_frames_with_their_timestamps_is_no_new_acquisition(reader: Any) -> None:
    """Four whole frames of repeated timestamps make a new acquisition only from frame 0 (a clock and
    numbers that start again): the run before's last six frames sent again are copies, counted late."""
    source, sink, send = reader()
    _send(send, range(20), 1)
    _ended(sink, 1)
    _send(send, range(14, 20), 1)
    _wait(lambda: source.counters().get("packets_straggling") == 6 * PPF, "the copies counted")
    assert len(sink.runs) == 1 and source.counters().get("acquisitions_with_repeated_timestamps", 0) == 0
    _identity(source)


def test_late_copies_among_a_restarted_clocks_frames_stay_the_run_befores(reader: Any) -> None:
    """An outside probe: a restarted clock's frames 0..5 with copies of the run before's frames 18 and
    19 among them (after 1 and after 3): the copies were stored in the new run, which split into three
    runs with 37 frames recorded lost that were never sent. A frame far ahead of the new acquisition that
    repeats the run before's timestamp is that run's late copy."""
    source, sink, send = reader()
    for n in range(20):
        send.send(_restarted_clock(n, 1))
    _ended(sink, 1)
    for n, acquisition in ((0, 2), (1, 2), (18, 1), (2, 2), (3, 2), (19, 1), (4, 2), (5, 2)):
        send.send(_restarted_clock(n, acquisition))
    _ended(sink, 2)
    assert [run["frames"] for run in sink.runs] == [list(range(20)), list(range(6))]
    assert [run["losses"] for run in sink.runs] == [[], []]
    assert source.counters()["assembler"]["packets_late"] == 2 * PPF
    _identity(source)


def test_a_second_sender_s_packets_are_rejected_not_stored_in_the_detector_s_run(reader: Any) -> None:
    """An outside sender's probe: during the detector's frames 5..9, a second socket sent frames
    105..109. They were stored in the detector's run, its own frames 6..9 dropped as late and recorded
    lost as never arrived, and its next frames opened a run of "numbers restarted". A module's packets
    come from the sender that first sent them in the acquisition; another's are counted and dropped."""
    source, sink, send = reader(frames_per_run=20)
    stray = Sender(send.port)
    try:
        send.frames(range(5))
        for n in range(5, 10):
            stray.send(stray.packets(100 + n))
            send.send(send.packets(n))
        send.frames(range(10, 20))
        _wait(lambda: sink.ended == 1, "the run ended")
    finally:
        stray.sock.close()
    assert len(sink.runs) == 1 and _dispositions(sink) == {n: ["stored"] for n in range(20)}, sink.runs
    counters = source.counters()
    assert counters["packets_other_source"] == 5 * GEOMETRY.packets_per_frame  # its 5 frames, every packet
    assert counters["errors"]["other_source"] == counters["packets_other_source"]
    assert counters.get("series_numbers_restarted", 0) == 0
    _identity(source)
    # once the acquisition is over, another sender may be the detector (re-armed on another port)
    stray = Sender(send.port)
    try:
        stray.frames(range(5))
        _wait(lambda: sink.ended == 2, "the second sender's run ended")
    finally:
        stray.sock.close()
    assert sink.runs[1]["frames"] == list(range(5))


def test_a_sender_that_moves_to_another_port_mid_acquisition_takes_its_modules_over(reader: Any) -> None:
    """Another outside probe: a sender whose socket moved to a new port mid-acquisition had every later
    packet dropped as another source's, and the run never ended (its packets kept coming). An owner
    silent on its modules for ``idle_seconds`` gives them up: the frames sent meanwhile are lost with a
    reason, the rest stored, each frame once."""
    source, sink, send = reader(frames_per_run=160)
    moved = Sender(send.port)
    try:
        send.frames(range(10))
        moved.frames(range(10, 160))  # 150 frames, ~0.6 s: past IDLE (0.3 s) of the old port's silence
        _wait(lambda: sink.ended == 1, "the run ended")
    finally:
        moved.sock.close()
    assert len(sink.runs) == 1, sink.runs
    frames = _dispositions(sink)
    assert set(frames) == set(range(160)) and all(len(d) == 1 for d in frames.values()), frames
    stored = [n for n, d in frames.items() if d == ["stored"]]
    assert stored[:10] == list(range(10)) and stored[-1] == 159  # the moved sender's later frames kept
    counters = source.counters()
    assert counters["module_sources_changed"] == GEOMETRY.grid_rows * GEOMETRY.grid_cols
    assert counters["packets_other_source"] > 0
    _identity(source)


def test_late_copies_from_the_old_port_never_keep_the_next_acquisition_s_sender_out(reader: Any) -> None:
    """An outside sender's probe: after a run ended at a silence, copies of its last two frames came from
    its port, then at once the detector's next acquisition from another port: the copies had claimed
    the modules, so the whole acquisition was dropped as another source's, in no run and no record. A
    module claimed while no run is open (packets held, or copies of the run before) is taken over by the
    next sender; once a run opens its sender holds it."""
    source, sink, send = reader(frames_per_run=20)
    other = Sender(send.port)
    try:
        _send(send, range(20), 1)
        _ended(sink, 1)
        _send(send, range(18, 20), 1)  # byte-identical copies, from the old port
        _send(other, range(20), 2)  # the next acquisition, from a new one, at once
        _ended(sink, 2)
    finally:
        other.sock.close()
    assert [run["frames"] for run in sink.runs] == [list(range(20)), list(range(20))], sink.runs
    assert all(run["losses"] == [] for run in sink.runs), sink.runs
    counters = source.counters()
    assert counters.get("packets_other_source", 0) == 0, counters
    assert counters["packets_straggling"] == 2 * GEOMETRY.packets_per_frame, counters
    _identity(source)


def test_late_copies_from_the_old_port_never_keep_a_module_of_the_acquisition_going_on(reader: Any) -> None:
    """The next outside probe: copies of the last two frames from the old port after a pause, then the
    detector going on counting (10..19) from a new port: the resumed run opened at the new port's first
    packet, but the copies had claimed the other module, and every frame of the run was incomplete (that
    module's packets dropped as another source's). A packet claims its module only when the assembler
    takes it, which a copy of the run before's frame never is."""
    source, sink, send = reader(frames_per_run=20)
    other = Sender(send.port)
    try:
        _send(send, range(10), 1)
        _ended(sink, 1)
        _send(send, range(8, 10), 1)
        _send(other, range(10, 20), 1)
        _ended(sink, 2)
    finally:
        other.sock.close()
    resumed = sink.runs[1]
    assert resumed["config"].get("resumed_after_pause") and resumed["frames"] == list(range(10, 20)), resumed
    assert not [loss for loss in resumed["losses"] if loss[2] == "incomplete_frame"], resumed["losses"]
    assert _dispositions(sink) == {n: ["stored"] for n in range(20)}
    counters = source.counters()
    assert counters.get("packets_other_source", 0) == 0, counters
    _identity(source)


def test_a_stray_racing_the_detector_s_first_packets_after_a_pause_is_not_taken(reader: Any) -> None:
    """An outside sender's probe: after a pause, the detector's and a stray's frame 0 packet by packet
    (both held: frames at or below the run before's last), then the detector's 1..19: the stray's frame
    was stored as the new acquisition's, the detector's run split in two. The first sender of a held
    packet holds its module, as in a run."""
    source, _sink, send = reader(frames_per_run=20)
    sink = PixelSink()
    source.sink = sink
    stray = Sender(send.port)
    try:
        _send(send, range(20), 1)
        _ended(sink, 1)
        for ours, theirs in zip(_packets(0, 2), _packets(0, 7), strict=True):
            send.send([ours])
            stray.send([theirs])
        _send(send, range(1, 20), 2)
        _ended(sink, 2)
    finally:
        stray.sock.close()
    assert len(sink.runs) == 2, [run["frames"] for run in sink.runs]
    second = sink.runs[1]
    assert second["frames"] == list(range(20)) and second["losses"] == [], second
    assert all(values == {2000 + n} for n, values in enumerate(second["values"])), second["values"]
    counters = source.counters()
    assert counters["packets_other_source"] == GEOMETRY.packets_per_frame, counters
    assert counters.get("series_numbers_restarted", 0) == 0
    _identity(source)


def test_a_straggler_far_ahead_of_the_new_acquisition_is_late_not_held(reader: Any) -> None:
    """An outside sender: A's frames 0..9, at once B's 0..1 (the numbers start again, no pause), then one
    packet of A's frame 9 (A's timestamp) and B's 2..7. The packet was far ahead of B's frames, so it
    was held as a jump to confirm, then rejected unconfirmed (the receiver's alarm raised). Its timestamp
    is A's frame 9's: A's straggler, counted late, as the docs say."""
    source, _sink, send = reader()
    sink = PixelSink()
    source.sink = sink
    _send(send, range(10), 1)
    _send(send, range(2), 2)
    send.send(_packets(9, 1)[:1])
    _send(send, range(2, 8), 2)
    _ended(sink, 2)
    a_run, b_run = sink.runs
    assert a_run["frames"] == list(range(10)) and b_run["frames"] == list(range(8))
    assert b_run["losses"] == []
    counters = source.counters()["assembler"]
    assert counters["packets_late"] == 1 and counters["packets_rejected"] == 0, counters
    _identity(source)


def test_an_acquisition_beyond_the_armed_number_after_a_pause_invents_no_losses(reader: Any) -> None:
    """An outside probe, ``frames_per_run`` 10: frames 0..9, a pause, 14..17, a pause, 30..38 (a detector
    whose numbers go on). Each run after a pause began at the run before's last frame + 1 and recorded
    the numbers between (10..13, 18..29) lost, though no packet of them was ever sent: a major alarm for
    nothing. Each counts from its own first frame, armed for 10 frames from there: the tails that never
    came (18..23 of 14..23, 39 of 30..39) are ``series_end``, the numbers between acquisitions nothing."""
    _source, sink, send = reader(frames_per_run=10)
    _send(send, range(10), 1)
    _ended(sink, 1)
    _send(send, range(14, 18), 2)
    _ended(sink, 2)
    _send(send, range(30, 39), 3)
    _ended(sink, 3)
    first, second, third = sink.runs
    assert first["losses"] == [], sink.runs
    assert second["losses"] == [(18, 23, "series_end")] and third["losses"] == [(39, 39, "series_end")]
    assert (second["config"]["first_frame"], third["config"]["first_frame"]) == (14, 30)
    assert (second["frames"], third["frames"]) == (list(range(14, 18)), list(range(30, 39)))


def test_a_new_acquisition_without_a_clock_right_after_one_with_timestamps_is_a_new_run(reader: Any) -> None:
    """An outside sender: frames 0..19 with real timestamps, then at once frames 0..49 with
    ``timestamp_ns`` 0 (a detector switched to a mode without its clock; the doc allows 0). The second
    acquisition's frames 0..19 were taken for copies (a 0 was not compared with a frame's timestamp),
    counted as duplicate packets and dropped, and its frames 20..49 stored in the first run: two
    datasets in one file, no record. A copy carries its frame's timestamp: a 0 under a frame whose
    timestamp is set is another exposure."""
    source, sink, send = reader()
    _send(send, range(20), 1)
    for n in range(50):  # (pixels apart from the first acquisition's, timestamps 0)
        send.send(packetize_frame(GEOMETRY, n, np.full(GEOMETRY.raw_shape, 30000 + n, np.uint16)))
    _ended(sink, 2)
    assert [run["frames"] for run in sink.runs] == [list(range(20)), list(range(50))]
    assert [run["losses"] for run in sink.runs] == [[], []]
    assert source.counters()["series_numbers_restarted"] == 1
    assert source.counters()["assembler"]["packets_duplicate"] == 0
    _identity(source)


def test_an_acquisition_whose_numbers_go_on_is_armed_from_its_own_first_frame(reader: Any) -> None:
    """An outside sender, ``udp.frames_per_run`` 10: frames 0..3, a pause, 6..9 (the same acquisition
    going on), a pause, then 50..54: a new acquisition whose numbers go on. Armed for 10 from frame 50,
    its frames 55..59 never came, and nothing recorded them (the run's account said 10 frames, 5 held).
    They are its ``series_end`` records; it says where it was armed from (``armed_from``); and a pause in
    it, then 55..59, goes on in the same acquisition (its frames handed over, none twice)."""
    source, sink, send = reader(frames_per_run=10)
    _send(send, range(4), 1)
    _ended(sink, 1)
    _send(send, range(6, 10), 1)
    _ended(sink, 2)
    _send(send, range(50, 53), 2)
    _ended(sink, 3)
    _send(send, range(53, 55), 2)
    _ended(sink, 4)
    runs = sink.runs
    assert [run["frames"] for run in runs] == [[0, 1, 2, 3], [6, 7, 8, 9], [50, 51, 52], [53, 54]]
    assert runs[2]["config"]["first_frame"] == 50 and runs[2]["config"]["armed_from"] == 50
    assert runs[3]["config"]["resumed_after_pause"] and runs[3]["config"]["armed_from"] == 50
    assert (53, 59, "series_end") in runs[2]["losses"]  # handed over to the run going on (the recorder)
    assert runs[3]["losses"] == [(55, 59, "series_end")]
    assert source.counters().get("frames_beyond_armed", 0) == 0
    assert source.counters()["frames_handed_over"] == 4 + 7  # 6..9, then 53..59
    _identity(source)


@pytest.mark.parametrize("kept", [True, False], ids=["timestamps kept", "file lost"])
def test_a_resend_of_the_last_frames_after_a_restart_in_the_pause_is_no_new_acquisition(
    tmp_path: Any, kept: bool
) -> None:
    """An outside probe: a daemon restarted during the pause forgot the run before's timestamps, so its
    last 3 frames sent again, byte for byte, opened a run of their own (stored twice, frames 0..296
    recorded lost that were never sent). The run a silence ends keeps its last frames' timestamps beside
    the ledger (`UDP_PAUSE_FILE`); the restarted reader is given them back, and the copies are late. A
    file that is gone leaves the old rule (silence again with a whole frame held: a new acquisition)."""
    from firmware_bridge.udp_reader import UDP_PAUSE_FILE, load_paused_timestamps

    pause_file = tmp_path / UDP_PAUSE_FILE
    sink = RunSink()
    first = UdpSource("127.0.0.1", 0, GEOMETRY, sink, idle_seconds=IDLE, pause_file=pause_file)
    first.start()
    send = Sender(first.address[1])
    try:
        _send(send, range(20), 1)
        _ended(sink, 1)
    finally:
        first.stop()
        send.sock.close()
    run_uid = sink.runs[0]["config"]["run_uid"]
    if not kept:
        pause_file.unlink()
    stamps = load_paused_timestamps(pause_file, run_uid)
    assert len(stamps) == (20 if kept else 0)
    after = RunSink()
    second = UdpSource(
        "127.0.0.1", 0, GEOMETRY, after, idle_seconds=IDLE, paused_above=19, paused_timestamps=stamps
    )
    second.start()
    send = Sender(second.address[1])
    try:
        _send(send, range(17, 20), 1)
        if kept:
            _wait(lambda: second.counters().get("packets_straggling") == 3 * PPF, "the copies counted late")
            time.sleep(3 * IDLE)  # and silence again: still no run
            assert after.runs == []
        else:
            _wait(lambda: len(after.runs) == 1 and after.ended == 1, "a run of the copies (the old rule)")
    finally:
        second.stop()
        send.sock.close()
    assert load_paused_timestamps(pause_file, "another-run") == {}


@pytest.mark.parametrize(
    "content",
    [
        None,
        b"",
        b"\xff" * 100,
        b'{"run_uid": "r1", "timestamps": {"29": "abc", "28": null}}',
        b'{"run_uid": "r1", "timestamps": {"29": NaN}}',
        b'{"run_uid": "r1", "timestamps": {"1180591620717411303424": 5}}',
        b'{"run_uid": "r1", "timestamps": [1, 2]}',
        b'{"run_uid": "another", "timestamps": {"29": 5}}',
        b" " * (2 << 20),
    ],
    ids=["missing", "empty", "binary", "wrong types", "NaN", "huge frame", "a list", "another run", "2 MiB"],
)
def test_a_pause_file_that_cannot_serve_gives_no_timestamps_and_says_so(
    tmp_path: Any, content: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe: a missing, emptied or hostile ``udp.paused`` was passed by without a word (the
    copies of the paused run's last frames then open a run of their own, by the numbers-only rule)."""
    from firmware_bridge.udp_reader import UDP_PAUSE_FILE, load_paused_timestamps

    path = tmp_path / UDP_PAUSE_FILE
    if content is not None:
        path.write_bytes(content)
    with caplog.at_level("WARNING", logger="firmware_bridge.udp_reader"):
        assert load_paused_timestamps(path, "r1") == {}
    assert any("told by their numbers only" in r.getMessage() for r in caplog.records), caplog.records
    path.write_text('{"run_uid": "r1", "timestamps": {"29": 5, "28": 4}}')
    assert load_paused_timestamps(path, "r1") == {29: 5, 28: 4}


def test_links_given_after_construction_make_the_first_run_a_continuation() -> None:
    """A daemon whose start waited for its predecessor's held ledger records learns the run a restart
    cut only after its recovery: `link_earlier` before `start` makes the first frames above that run's
    last one a continuation of it, as the constructor's arguments do; after `start` it is refused."""
    sink = RunSink()
    source = UdpSource("127.0.0.1", 0, GEOMETRY, sink, idle_seconds=IDLE, max_frame_jump=1_000_000)
    sender = Sender(source.address[1])
    try:
        source.link_earlier(
            resume_above=9,
            paused_above=None,
            series_before=4,
            armed_last_before=None,
            length_before=None,
            paused_timestamps=None,
        )
        source.start()
        sender.frames(range(12, 16))
        _wait(lambda: sink.ended == 1, "the run ended by the silence")
        (run,) = sink.runs
        assert run["config"].get("resumed_after_restart") and run["config"]["first_frame"] == 12, run[
            "config"
        ]
        assert run["frames"] == [12, 13, 14, 15]
        with pytest.raises(RuntimeError):
            source.link_earlier(None, None, 0, None, None, None)
    finally:
        source.stop()
        sender.sock.close()


def test_a_copy_of_a_crashed_runs_last_frames_after_the_restart_is_no_new_acquisition(tmp_path: Any) -> None:
    """An outside probe: every armed frame came, the daemon was killed 0.3 s later (the run still open),
    and after the restart a byte-identical copy of its last frames opened a new acquisition from 0 (its
    frames 0..15 recorded lost twice, 16..19 lost and stored): the restart knew the numbers of the cut
    run but not its timestamps. The open run's are kept at each short quiet, and the restart is given
    them: the copy is counted late, no run opens."""
    pause_file = tmp_path / "udp.paused"

    def packets(frame: int) -> list[bytes]:
        data = np.full(GEOMETRY.raw_shape, frame, np.uint16)
        return packetize_frame(GEOMETRY, frame, data, timestamp_ns=1_000_000 + frame)

    sink = RunSink()
    first = UdpSource("127.0.0.1", 0, GEOMETRY, sink, idle_seconds=30.0, pause_file=pause_file)
    sender = Sender(first.address[1])
    second = None
    try:
        first.start()
        for frame in range(20):
            sender.send(packets(frame))
        _wait(lambda: len(sink.runs) == 1 and len(sink.runs[0]["frames"]) >= 16, "the run's frames")
        run_uid = sink.runs[0]["config"]["run_uid"]
        _wait(lambda: load_paused_timestamps(pause_file, run_uid).get(19) == 1_000_019, "the kept timestamps")
        assert sink.ended == 0  # (still open: the 'crash' comes now)
        first.stop()
        again = RunSink()
        second = UdpSource(
            "127.0.0.1",
            0,
            GEOMETRY,
            again,
            idle_seconds=IDLE,
            resume_above=19,
            paused_timestamps=load_paused_timestamps(pause_file, run_uid),
        )
        second.start()
        sender.port = second.address[1]
        for frame in range(16, 20):
            sender.send(packets(frame))
        time.sleep(3 * IDLE)
        assert again.runs == [], again.runs
        assert second.stats["packets_straggling"] == 4 * GEOMETRY.packets_per_frame
    finally:
        first.stop()
        if second is not None:
            second.stop()
        sender.sock.close()
