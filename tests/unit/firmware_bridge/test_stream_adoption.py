"""Images of a series the reader never saw start (the daemon restarted mid-series) open a resumed run;
an image of a series that already ended is a loss record. Never only a counter (issue 12, hole 2).
Messages are built from docs/wire-formats.md by the helpers of test_stream_frame_bounds."""

from __future__ import annotations

import threading

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_stream_frame_bounds import SHAPE, Sink, header, image, part

from firmware_bridge.zmq_reader import ZmqStreamSource


class _Counting(Sink):
    """Tells when the first loss record arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.got = threading.Event()

    def lost(self, first: int, last: int, reason: str, detail: str = "") -> None:
        super().lost(first, last, reason, detail)
        self.got.set()


def _run(
    messages: list[list[bytes]], sink: Sink, done: threading.Event, max_frame_jump: int = 100
) -> ZmqStreamSource:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    reader = ZmqStreamSource(f"tcp://127.0.0.1:{port}", sink, context, max_frame_jump=max_frame_jump)
    reader.start()
    try:
        for message in messages:
            push.send_multipart(message)
        assert done.wait(10)
    finally:
        reader.stop()
        push.close(0)
        context.term()
    return reader


def test_images_without_their_series_start_open_a_resumed_run() -> None:
    sink = Sink()
    end = [part({"htype": "dseries_end-1.0", "series": 7})]
    reader = _run([image(7, 500), image(7, 501), image(7, 503), end], sink, sink.ended)
    (config,) = sink.configs
    assert config["resumed_after_restart"] is True and config["first_frame"] == 500
    assert config["frames_expected"] is None and config["shape"] == [SHAPE[1], SHAPE[0]]
    assert sink.frames == [500, 501, 503]  # 500 is far beyond max_frame_jump of 0: numbered from 500
    assert sink.losses == [(502, 502, "frame_number_gap")]  # nothing before 500: the old run's
    counters = reader.counters()
    assert counters["series_adopted"] == 1 and counters.get("frames_outside_series", 0) == 0


def test_a_damaged_image_first_after_a_restart_begins_the_resumed_run_with_its_reason() -> None:
    """An outside technician's probe: a restart, then the series' frame 130 damaged (bad_size) and 131
    good: the resumed run began at 131, so the interrupted run kept 130 as ``receiver_stopped`` although
    the daemon had received it and said why it was rejected. The run now begins with the damaged images
    right before its first good one, each a loss with its own reason; an older damaged image (not next
    to it) stays the interrupted run's."""
    sink = Sink()
    end = [part({"htype": "dseries_end-1.0", "series": 7})]
    messages = [image(7, 100, size=2), image(7, 129, size=2), image(7, 130, size=2), image(7, 131)]
    reader = _run([*messages, image(7, 132), end], sink, sink.ended)
    (config,) = sink.configs
    assert config["resumed_after_restart"] is True and config["first_frame"] == 129
    assert sink.frames == [131, 132]
    assert sink.losses == [(129, 129, "stream_bad_size"), (130, 130, "stream_bad_size")]
    assert reader.counters()["series_adopted"] == 1


def test_a_straggler_after_its_series_ended_is_a_loss_record() -> None:
    sink = _Counting()
    end = [part({"htype": "dseries_end-1.0", "series": 3})]
    reader = _run([header(3, 2), image(3, 0), image(3, 1), end, image(3, 2)], sink, sink.got)
    assert sink.frames == [0, 1]
    assert sink.losses == [(2, 2, "frame_outside_series")]
    assert len(sink.configs) == 1  # no new run for a straggler
    assert reader.counters()["frames_outside_series"] == 1


def test_images_of_a_series_out_of_range_are_lost_outside_any_run() -> None:
    """A clean-room sender's probe: after a start whose ``series`` is out of range (-3, 2**63), its three
    images were only counted (``bad_field``), never recorded: the codec rejected the series before it read
    the frame. Each is now recorded lost (``stream_bad_field``) outside any run when the next start comes,
    as docs/wire-formats.md says."""
    sink = Sink()
    bad = [
        [part({"htype": "dheader-1.0", "series": -3, "header_detail": "basic"}), header(-3, 3)[1]],
        *(image(-3, n) for n in range(3)),
        [part({"htype": "dseries_end-1.0", "series": -3})],
    ]
    good = [header(4, 1), image(4, 0), [part({"htype": "dseries_end-1.0", "series": 4})]]
    reader = _run([*bad, *good], sink, sink.ended)
    assert sorted(sink.losses) == [(n, n, "stream_bad_field") for n in range(3)]
    assert sink.frames == [0] and len(sink.configs) == 1  # series 4's frame 0, in its own run
    assert reader.counters()["frames_outside_series"] == 3


def test_a_start_after_the_images_of_a_run_opened_without_one_continues_that_run() -> None:
    """A clean-room sender's probe: after a dropped connection, images 0 and 1 of a series opened a run
    of their own (no start seen); its start, coming next, opened a second run in which frames 0 and 1
    were gaps: stored in one run, lost in another. It is now a late start: the run goes on."""

    class _Gone(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.ends = 0

        def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
            self.ends += 1
            super().series_end(series, exit_status)

    sink = _Gone()
    end = [part({"htype": "dseries_end-1.0", "series": 8})]
    bad_start = [part({"htype": "dheader-1.0", "series": -1, "header_detail": "basic"}), header(-1, 3)[1]]
    reader = _run([bad_start, image(8, 0), image(8, 1), header(8, 3), image(8, 2), end], sink, sink.ended)
    assert len(sink.configs) == 1 and sink.configs[0]["start_rejected"]
    assert sink.frames == [0, 1, 2] and sink.losses == [] and sink.ends == 1
    assert sink.lengths == [3]  # the start's frames_expected, recorded with the run
    assert reader.counters()["starts_after_images"] == 1


def test_two_rejected_starts_in_a_row_keep_each_series_rejected_images_apart() -> None:
    """A clean-room sender's probe: series 50's start rejected and its image 0 rejected (bad size), then
    series 51's start rejected and its good images 0 and 1. Series 50's held rejection went into series
    51's run: its frame 0 became a loss with series 50's reason, and the good image 0 was dropped as its
    "duplicate". Now series 50's rejection is recorded outside any run when series 51's start comes, and
    series 51's run stores both its images."""
    sink = Sink()

    def bad_start(series: int) -> list[bytes]:  # a pixel type the codec refuses
        config = {"htype": "dconfig-edge-1.0", "shape": [SHAPE[1], SHAPE[0]], "type": "int64"}
        return [part({"htype": "dheader-1.0", "series": series, "header_detail": "basic"}), part(config)]

    end = [part({"htype": "dseries_end-1.0", "series": 51})]
    messages = [bad_start(50), image(50, 0, size=2), bad_start(51), image(51, 0), image(51, 1), end]
    reader = _run(messages, sink, sink.ended)
    assert len(sink.configs) == 1 and sink.configs[0]["start_rejected"]
    assert sink.frames == [0, 1], (sink.frames, sink.losses)
    assert sink.losses == [(0, 0, "stream_bad_size")]  # series 50's, outside any run
    counters = reader.counters()
    assert counters["frames_outside_series"] == 1 and counters.get("frames_duplicate", 0) == 0


def test_frames_beyond_expected_counts_only_the_images_taken() -> None:
    """docs/api.md: ``frames_beyond_expected`` counts images at or beyond the announced length that are
    stored all the same. A clean-room sender's probe: rejected ones beyond it were counted too."""
    sink = Sink()
    end = [part({"htype": "dseries_end-1.0", "series": 9})]
    messages = [header(9, 2), image(9, 0), image(9, 1), image(9, 2), image(9, 3, size=2), end]
    reader = _run(messages, sink, sink.ended)
    assert sink.frames == [0, 1, 2] and sink.losses == [(3, 3, "stream_bad_size")]
    assert reader.counters()["frames_beyond_expected"] == 1


def test_a_start_too_damaged_to_name_its_kind_makes_a_run_without_its_start() -> None:
    """A start whose first part is not JSON cannot say it was a start: its series' images from frame 0
    are a run that says it has no start (``start_rejected``), not one "resumed after a restart" that
    links to no run (the daemon never restarted)."""
    sink = Sink()
    end = [part({"htype": "dseries_end-1.0", "series": 9})]
    damaged = [b'{"htype": "dheader-1.0", "series": 9, "header_det', header(9, 2)[1]]
    reader = _run([damaged, image(9, 0), image(9, 1), end], sink, sink.ended)
    (config,) = sink.configs
    assert config.get("start_rejected") and not config.get("resumed_after_restart"), config
    assert sink.frames == [0, 1] and sink.losses == []
    assert reader.counters()["series_start_unreadable"] == 1


def test_a_resumed_series_whose_length_the_sink_knows_accounts_for_its_tail() -> None:
    """An outside chaos probe: a series resumed after a restart had no length of its own (it saw no
    header), so a frame missing at its end had no disposition. The sink tells the length the run it
    continues recorded (``resumed_length``); the reader accounts the tail as a start's length would."""

    class _Knowing(Sink):
        resumed_length = 6

    sink = _Knowing()
    end = [part({"htype": "dseries_end-1.0", "series": 7})]
    _run([image(7, 3), image(7, 4), end], sink, sink.ended)
    assert sink.frames == [3, 4]
    assert sink.losses == [(5, 5, "missing_at_series_end")]


class _TwoEnds(Sink):
    """Tells when the second series ends."""

    def __init__(self) -> None:
        super().__init__()
        self.ends = 0
        self.second_end = threading.Event()

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        self.ends += 1
        if self.ends == 2:
            self.second_end.set()


def test_a_stray_of_an_ended_series_after_a_damaged_image_does_not_split_the_open_series() -> None:
    """An outside sender's probe: series 4 (2 frames) ends; series 5 (8 frames) sends 0-2, frame 3 with
    a first part that is not JSON, 4-5, then a late copy of series 4's frame 1, then 6-7 and its end.
    The damaged message let images of another series through (it may have been a start), and the stray
    took over: three runs, series 5's frames both stored and lost, series 4's frame 1 stored twice. The
    open series had sent images since the damaged message, so it was not a start: the stray is only
    ``wrong_series``, and series 5 is one run with frame 3 its only loss."""
    end4, end5 = ([part({"htype": "dseries_end-1.0", "series": s})] for s in (4, 5))
    damaged = [b'{"htype": "dimage-1.0", "series": 5, "fra', *image(5, 3)[1:]]
    series5 = [header(5, 8), *(image(5, n) for n in range(3)), damaged, image(5, 4), image(5, 5)]
    messages = [header(4, 2), image(4, 0), image(4, 1), end4, *series5, image(4, 1), image(5, 6), image(5, 7)]
    sink = _TwoEnds()
    reader = _run([*messages, end5], sink, sink.second_end)
    assert len(sink.configs) == 2  # series 4 and series 5: no third run
    assert sink.frames == [0, 1, 0, 1, 2, 4, 5, 6, 7]
    assert sink.losses == [(3, 3, "stream_unreadable_message")]  # the damaged image, not "never arrived"
    counters = reader.counters()
    assert counters["images_wrong_series"] == 1 and counters.get("series_ended_by_rejected_start", 0) == 0


def test_a_stray_of_an_ended_series_right_after_a_damaged_message_is_not_a_new_series() -> None:
    """As above, but the stray comes straight after the damaged message: an image of a series that ended
    here is never the next series (its start, unreadable, would name a new one): counted only."""
    sink = _TwoEnds()
    end4, end5 = ([part({"htype": "dseries_end-1.0", "series": s})] for s in (4, 5))
    damaged = [b'{"htype": "dimage-1.0", "series": 5, "fra', *image(5, 2)[1:]]
    messages = [header(4, 2), image(4, 0), image(4, 1), end4, header(5, 4), image(5, 0), image(5, 1)]
    reader = _run([*messages, damaged, image(4, 1), image(5, 3), end5], sink, sink.second_end)
    assert len(sink.configs) == 2 and sink.frames == [0, 1, 0, 1, 3]
    assert sink.losses == [(2, 2, "stream_unreadable_message")]
    assert reader.counters()["images_wrong_series"] == 1


def test_a_rejected_start_then_good_images_then_a_stray_end_split_nothing() -> None:
    """An outside chaos probe: during series 5, a start of series 77 without its config part (rejected),
    good images of series 5, then an end of series 99. The rejected start was remembered while series 5
    went on, so the stray end "showed the detector moved on": series 5 ended fail, its frames after the
    end recorded lost (series_restarted) and stored again in a new run that recorded the first ones lost,
    1000 frames "lost" of 1000 stored. An image of the open series after a rejected start shows that
    start was not the detector moving on: the end ends nothing, one run, nothing lost."""
    sink = Sink()
    rejected = [part({"htype": "dheader-1.0", "series": 77, "header_detail": "basic"})]  # no config part
    end99, end5 = ([part({"htype": "dseries_end-1.0", "series": s})] for s in (99, 5))
    messages = [
        header(5, 10),
        *(image(5, n) for n in range(3)),
        rejected,
        *(image(5, n) for n in range(3, 6)),
    ]
    reader = _run([*messages, end99, *(image(5, n) for n in range(6, 10)), end5], sink, sink.ended)
    assert len(sink.configs) == 1 and sink.frames == list(range(10)) and sink.losses == []
    counters = reader.counters()
    assert counters["ends_wrong_series"] == 1 and counters.get("series_ended_by_rejected_start", 0) == 0


def test_a_rejected_start_then_its_own_end_ends_the_rejected_series_not_the_open_one() -> None:
    """An outside probe (round 5): during series 106, a start of series 906 without its config part
    (rejected), at once the end of series 906, then 106's frames 5..9 and its end. The end was taken for
    "the detector moved on": 106 ended fail (5..9 series_restarted) and its later frames opened a run of
    their own that recorded 0..4 lost, every frame stored once and lost once. The end of the rejected
    start's own series ends that series, whose images never came; the open series goes on, one run."""
    sink = Sink()
    rejected = [part({"htype": "dheader-1.0", "series": 906, "header_detail": "basic"})]  # no config part
    end906, end106 = ([part({"htype": "dseries_end-1.0", "series": s})] for s in (906, 106))
    messages = [header(106, 10), *(image(106, n) for n in range(5)), rejected, end906]
    reader = _run([*messages, *(image(106, n) for n in range(5, 10)), end106], sink, sink.ended)
    assert len(sink.configs) == 1 and sink.frames == list(range(10)) and sink.losses == []
    counters = reader.counters()
    assert counters["rejected_series_ended"] == 1 and counters.get("series_ended_by_rejected_start", 0) == 0


class _Ends(Sink):
    """Keeps each series end (series, exit status); tells when series ``last`` ends."""

    def __init__(self, last: int) -> None:
        super().__init__()
        self.last = last
        self.ends: list[tuple[int, str]] = []
        self.done = threading.Event()

    def series_end(self, series: int, exit_status: str = "success", why: str = "") -> None:
        self.ends.append((series, exit_status))
        if series == self.last:
            self.done.set()


def _end(series: int) -> list[bytes]:
    return [part({"htype": "dseries_end-1.0", "series": series})]


GARBLED = [b"\x00 not a message"]  # too damaged to say what it was


def test_the_end_of_a_stray_series_after_a_damaged_message_does_not_end_the_open_one() -> None:
    """An outside sender's probe: series 1 (5 frames), image 0, a damaged message, image 1 (series 1
    went on: the damaged message was no start), a stray image of series 2 and its end, images 2-4 and
    series 1's end. Series 2's end ended series 1 ``fail``, its frames 2-4 lost and then taken for a
    resumed run. It ends nothing now: counted as ``ends_wrong_series``."""
    sink = _Ends(last=1)
    messages = [header(1, 5), image(1, 0), GARBLED, image(1, 1), image(2, 0), _end(2)]
    reader = _run([*messages, *(image(1, n) for n in range(2, 5)), _end(1)], sink, sink.done)
    assert sink.ends == [(1, "success")] and len(sink.configs) == 1
    assert sink.frames == [0, 1, 2, 3, 4] and sink.losses == []
    counters = reader.counters()
    assert counters["ends_wrong_series"] == 1 and counters["images_wrong_series"] == 1


def test_a_late_end_of_a_series_that_ended_here_does_not_end_the_next_one() -> None:
    """Series 1 is cut by series 3's images after a damaged message (its start, perhaps); a late end of
    series 1 then came: it ended series 3's run, whose frames 1-2 opened a third. It ends nothing."""
    sink = _Ends(last=3)
    messages = [header(1, 4), image(1, 0), image(1, 1), GARBLED, image(3, 0), _end(1), image(3, 1)]
    reader = _run([*messages, image(3, 2), _end(3)], sink, sink.done)
    assert sink.ends == [(1, "fail"), (3, "success")] and len(sink.configs) == 2
    assert sink.frames == [0, 1, 0, 1, 2] and sink.losses == [(2, 3, "series_restarted")]
    assert reader.counters()["ends_wrong_series"] == 1


def test_a_late_end_after_a_rejected_start_does_not_end_the_rejected_series_run() -> None:
    """As above, series 3's start rejected (a pixel type the codec refuses) instead of damaged."""
    sink = _Ends(last=3)
    config = {"htype": "dconfig-edge-1.0", "shape": [SHAPE[1], SHAPE[0]], "type": "int64"}
    bad_start = [part({"htype": "dheader-1.0", "series": 3, "header_detail": "basic"}), part(config)]
    messages = [header(1, 4), image(1, 0), image(1, 1), bad_start, image(3, 0), _end(1), image(3, 1)]
    reader = _run([*messages, image(3, 2), _end(3)], sink, sink.done)
    assert sink.ends == [(1, "fail"), (3, "success")] and len(sink.configs) == 2
    assert sink.configs[1]["start_rejected"]
    assert sink.frames == [0, 1, 0, 1, 2] and sink.losses == [(2, 3, "series_restarted")]
    assert reader.counters()["ends_wrong_series"] == 1


def test_only_the_first_image_after_a_damaged_message_may_end_the_open_series() -> None:
    """A stray of a series that ended here comes first after the damaged message: the message was not
    the next series' start, so a later image of a new series is a stray too (it ended series 1)."""
    sink = _Ends(last=1)
    first = [header(9, 2), image(9, 0), image(9, 1), _end(9)]
    messages = [*first, header(1, 4), image(1, 0), GARBLED, image(9, 1), image(2, 0)]
    reader = _run([*messages, *(image(1, n) for n in range(1, 4)), _end(1)], sink, sink.done)
    assert sink.ends == [(9, "success"), (1, "success")] and len(sink.configs) == 2
    assert sink.frames == [0, 1, 0, 1, 2, 3] and sink.losses == []
    assert reader.counters()["images_wrong_series"] == 2


@st.composite
def _clean_series_with_noise(draw: st.DrawFn) -> tuple[list[list[bytes]], list[int], list[int]]:
    """Whole series (start, images, end) one after another, with noise put in anywhere: messages too
    damaged to say what they were, late copies of images of series that have ended, and late ends of
    them. (series ids, their lengths, the messages.)"""
    lengths = draw(st.lists(st.integers(2, 4), min_size=2, max_size=4))
    ids = [10 + 3 * k for k in range(len(lengths))]
    messages: list[tuple[list[bytes], int | None]] = []  # (message, the series it ends)
    for series, n in zip(ids, lengths, strict=True):
        messages += [(header(series, n), None), *((image(series, f), None) for f in range(n))]
        messages.append((_end(series), series))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(messages)))
        ended = [(i, series) for i, (_m, series) in enumerate(messages[:at]) if series is not None]
        kinds = ["garbled"] + (["late image", "late end"] if ended else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "garbled":
            noise = GARBLED
        else:
            series = draw(st.sampled_from([s for _i, s in ended]))
            noise = _end(series) if kind == "late end" else image(series, draw(st.integers(0, 1)))
        messages.insert(at, (noise, None))
    return [m for m, _s in messages], ids, lengths


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_clean_series_with_noise())
def test_noise_between_and_inside_whole_series_changes_no_series(
    case: tuple[list[list[bytes]], list[int], list[int]],
) -> None:
    """Every series is sent whole; garbled messages, late images and late ends of series that ended come
    in between, anywhere. None of them is a start or the open series' own end: each series is one run
    that stores all its frames once and ends ``success``, with no loss record."""
    messages, ids, lengths = case
    sink = _Ends(last=ids[-1])
    _run(messages, sink, sink.done)
    assert sink.ends == [(series, "success") for series in ids], sink.ends
    assert sink.frames == [f for n in lengths for f in range(n)], sink.frames
    assert sink.losses == [] and len(sink.configs) == len(ids)


def test_images_of_an_unreadable_series_during_a_series_take_none_of_its_frames() -> None:
    """An outside sender's probe: during series 401 (frame 0 stored), a start of series -1 (rejected),
    its images 0 and 1 and its end, then 401's frames 1..3. The image "frame 1" of series -1 was recorded
    as 401's frame 1 lost (``stream_bad_field``), and 401's real frame 1 dropped as its "duplicate". An
    image whose series cannot be read is no frame of the open series: 401's frames are all stored."""
    sink = Sink()
    stray = [
        [part({"htype": "dheader-1.0", "series": -1, "header_detail": "basic"}), header(-1, 2)[1]],
        image(-1, 0),
        image(-1, 1),
        [part({"htype": "dseries_end-1.0", "series": -1})],
    ]
    end = [part({"htype": "dseries_end-1.0", "series": 401})]
    reader = _run(
        [header(401, 4), image(401, 0), *stray, *(image(401, n) for n in (1, 2, 3)), end], sink, sink.ended
    )
    assert len(sink.configs) == 1 and sink.frames == [0, 1, 2, 3] and sink.losses == []
    assert reader.counters().get("frames_duplicate", 0) == 0


def test_an_image_of_the_open_series_whose_series_field_is_damaged_leaves_an_unreadable_gap() -> None:
    """The other side of the rule above: when the damaged image was the open series' own frame (its
    ``series`` unreadable), that frame never comes again and is recorded lost as a gap after an
    unreadable message, not taken twice."""
    sink = Sink()
    end = [part({"htype": "dseries_end-1.0", "series": 5})]
    damaged = image(5, 1)
    damaged[0] = damaged[0].replace(b'"series": 5', b'"series": "5"').replace(b'"series":5', b'"series":"5"')
    reader = _run([header(5, 3), image(5, 0), damaged, image(5, 2), end], sink, sink.ended)
    assert sink.frames == [0, 2]
    assert sink.losses == [(1, 1, "stream_unreadable_message")]
    assert reader.counters()["messages_rejected"] == 1


def test_a_stray_image_far_ahead_then_a_valid_series_keeps_the_series_whole() -> None:
    """An outside sender: after a series ended, one image of series 701 at frame 3,000,000, then a valid
    start of 701 and its frames 0..2. The stray opened a run "resumed after restart" from 3,000,000, the
    start was taken as late, frames 0..2 went into that run below its first frame and 3..2,999,999 were
    recorded lost; the start's run uid was never a run. The start is the series' (a series begins at frame
    0): the stray's run ends, and the series is a run of its own with nothing lost."""
    sink = _Ends(701)
    end = [part({"htype": "dseries_end-1.0", "series": 701})]
    messages = [image(701, 3_000_000), header(701, 3), *(image(701, n) for n in range(3)), end]
    done = threading.Event()
    sink.series_end = lambda series, exit_status="success", why="": (  # type: ignore[method-assign]
        sink.ends.append((series, exit_status)),
        len(sink.ends) == 2 and done.set(),
    )
    reader = _run(messages, sink, done, max_frame_jump=1_000_000)
    assert len(sink.configs) == 2 and sink.configs[1].get("resumed_after_restart") is None
    assert sink.frames == [3_000_000, 0, 1, 2]
    assert sink.losses == [] and sink.ends == [(701, "fail"), (701, "success")]
    assert reader.counters()["starts_after_far_images"] == 1


def test_an_image_far_out_of_range_after_a_rejected_start_opens_no_run() -> None:
    """An outside sender (after a reconnect, as after a rejected start): an image at frame 3,000,000,
    then a valid start and frames 0..2. The image was dropped and counted out of range, yet it opened a
    run numbered from 0 that the start then joined as "late": the series' uid was lost. Dropped, it opens
    nothing: the start's run is the series' own."""
    sink = Sink()
    rejected = [part({"htype": "dheader-1.0", "series": 711, "header_detail": "basic"})]  # no config part
    end = [part({"htype": "dseries_end-1.0", "series": 711})]
    messages = [rejected, image(711, 3_000_000), header(711, 3), *(image(711, n) for n in range(3)), end]
    reader = _run(messages, sink, sink.ended)
    (config,) = sink.configs
    assert not config.get("start_rejected") and sink.frames == [0, 1, 2] and sink.losses == []
    counters = reader.counters()
    assert counters["frame_number_out_of_range"] == 1 and counters.get("series_without_start", 0) == 0


@pytest.mark.parametrize("stray", [64, 900_000])
def test_a_stray_image_far_ahead_after_a_rejected_start_then_a_valid_series_keeps_the_series_whole(
    stray: int,
) -> None:
    """An outside sender, after a reconnect (as after a rejected start): one image of series 721 at frame
    900,000 (within max_frame_jump), or at 64, the first frame the docs call far, then a valid start of 721 and its frames 0..2. The stray opened a run
    numbered from 0, so the start counted as its late start: frames 0..2 were dropped as late and the
    start's run never was. As after any stray far ahead, the start is the series' own."""
    sink = _Ends(721)
    rejected = [part({"htype": "dheader-1.0", "series": 721, "header_detail": "basic"})]  # no config part
    end = [part({"htype": "dseries_end-1.0", "series": 721})]
    messages = [rejected, image(721, stray), header(721, 3), *(image(721, n) for n in range(3)), end]
    done = threading.Event()
    sink.series_end = lambda series, exit_status="success", why="": (  # type: ignore[method-assign]
        sink.ends.append((series, exit_status)),
        len(sink.ends) == 2 and done.set(),
    )
    reader = _run(messages, sink, done, max_frame_jump=1_000_000)
    assert len(sink.configs) == 2 and sink.configs[0].get("start_rejected")
    assert not sink.configs[1].get("start_rejected")
    assert sink.frames == [stray, 0, 1, 2] and sink.ends == [(721, "fail"), (721, "success")]
    counters = reader.counters()
    assert counters["starts_after_far_images"] == 1 and counters.get("starts_after_images", 0) == 0


def test_a_rejected_start_s_rejected_images_and_its_end_open_no_run() -> None:
    """An outside sender: a start of series 455 the codec rejects, two images whose data part is a byte
    short of their size, then the end of 455. The JSON reader opened a run from the first image's header
    before its data part was found short (the Stream V2 reader, reading whole messages, opened none):
    a run of nothing but two losses. The end of the rejected series ends it; its images are recorded
    lost outside any run, and no run is opened."""
    sink = _Counting()
    rejected = [part({"htype": "dheader-1.0", "series": 455, "header_detail": "basic"})]  # no config part
    short = []
    for n in range(2):
        message = image(455, n)
        message[2] = message[2][:-1]
        short.append(message)
    end = [part({"htype": "dseries_end-1.0", "series": 455})]
    good = [header(456, 1), image(456, 0), [part({"htype": "dseries_end-1.0", "series": 456})]]
    reader = _run([rejected, *short, end, *good], sink, sink.ended)
    (config,) = sink.configs  # series 456's only
    assert not config.get("start_rejected") and sink.frames == [0]
    assert sorted(sink.losses) == [(0, 0, "stream_bad_size"), (1, 1, "stream_bad_size")]
    counters = reader.counters()
    assert counters["rejected_series_ended"] == 1 and counters.get("series_without_start", 0) == 0
    assert counters["frames_outside_series"] == 2


def test_the_first_raw_image_of_a_series_seen_without_its_start_is_stored_bit_exact() -> None:
    """With no series open the first image is read whole before it opens a run (above): its raw pixels
    reach the ring as they came."""
    sink = Sink()
    pixels: dict[int, bytes] = {}
    sink.publish = lambda slot, header: (  # type: ignore[method-assign]
        sink.frames.append(header.frame),
        pixels.__setitem__(header.frame, bytes(slot.buffer)),
    )
    end = [part({"htype": "dseries_end-1.0", "series": 9})]
    _run([image(9, 40), image(9, 41), end], sink, sink.ended)
    assert sink.frames == [40, 41]
    assert pixels == {n: image(9, n)[2] for n in (40, 41)}  # (the first read whole, the next in place)


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_series_seen_far_beyond_frame_0_is_resumed_only_if_one_of_its_runs_was_cut(
    interrupted: bool,
) -> None:
    """An outside sender: one stray image at frame 5,000,000 (no earlier run of its series) opened a run
    "resumed after restart" that recorded frames 0..4,999,999 lost. Beyond ``max_frame_jump`` with no run
    of the series cut by a restart (the sink says), the image is dropped and counted out of range; a
    series a restart did cut is resumed from such a frame as before."""
    sink = Sink()
    sink.series_interrupted = lambda series: interrupted  # type: ignore[attr-defined]
    end = [part({"htype": "dseries_end-1.0", "series": 2})]
    good = [header(2, 2), image(2, 0), image(2, 1), end]
    messages = [image(2, 5_000_000), *good] if not interrupted else [image(2, 5_000_000), end]
    reader = _run(messages, sink, sink.ended)
    counters = reader.counters()
    if interrupted:
        assert sink.configs[0]["resumed_after_restart"] is True and sink.frames == [5_000_000]
        assert counters.get("frame_number_out_of_range", 0) == 0
    else:
        assert len(sink.configs) == 1 and not sink.configs[0].get("resumed_after_restart")
        assert sink.frames == [0, 1] and sink.losses == []
        assert counters["frame_number_out_of_range"] == 1


def test_a_late_start_names_the_run_by_its_run_uid() -> None:
    """An outside sender: images 0 and 1 before their start (run_uid s6-uid): the run went on under a
    fresh uid and s6-uid was findable nowhere. The late start's uid goes to the sink (`series_named`)."""
    sink = Sink()
    named: list[tuple[int, str]] = []
    sink.series_named = lambda series, uid: named.append((series, uid))  # type: ignore[attr-defined]
    end = [part({"htype": "dseries_end-1.0", "series": 21})]
    start = header(21, 3)  # run_uid "bounds"
    reader = _run([image(21, 0), image(21, 1), start, image(21, 2), end], sink, sink.ended)
    assert named == [(21, "bounds")] and sink.lengths == [3] and sink.frames == [0, 1, 2]
    assert reader.counters()["starts_after_images"] == 1


def test_strays_far_ahead_ask_the_ledger_once_per_series() -> None:
    """Each stray image far ahead asked the sink (a scan of the ledger's runs) on the receiving thread:
    a flood of them is asked about once per series."""
    sink = Sink()
    asked: list[int] = []
    sink.series_interrupted = lambda series: asked.append(series) or False  # type: ignore[attr-defined]
    end = [part({"htype": "dseries_end-1.0", "series": 3})]
    strays = [image(2, 5_000_000 + n) for n in range(50)]
    reader = _run([*strays, header(3, 1), image(3, 0), end], sink, sink.ended)
    assert asked == [2] and reader.counters()["frame_number_out_of_range"] == 50
