"""The upstream session without a socket: messages in, messages out, the time passed in.

Outages, credit, resends, reconnects and bad peers are driven by calling the session with frames and
times; no sleeps, no threads. The ledger is the real one, on a temporary directory, holding one real file
cut into chunks, so what the session reads, sends and records is what the appliance would.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from edge.alarms import current_alarms
from edge.durable import checksum_bytes, file_checksums
from edge.ledger import Ledger
from edge.upstream import protocol as p
from edge.upstream.outlook import upstream_outlook
from edge.upstream.session import (
    MAX_CREDIT,
    MAX_HOLD_BACK_SECONDS,
    REFUSING_IN_A_ROW,
    ForwarderSession,
    Outgoing,
)

RESEND = 10.0
PEER = b"peer-1"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """A ledger holding one 3-chunk file of run ``run``."""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    ledger.run_started("run", 1, 3, "{}")
    path = tmp_path / "run_00000.h5"
    path.write_bytes(bytes(range(256)) * 12)  # 3072 bytes -> chunks of 1024
    size, digest, chunks = file_checksums(path, 1024)
    ledger.file_stored("run", path.name, path, size, digest, (0, 2, 3), chunks)
    yield ledger
    ledger.close()


def frames(message: p.Message) -> list[bytes]:
    return [bytes(f) for f in p.encode(message)]


def chunks(out: list[Outgoing]) -> list[p.Chunk]:
    return [o.message for o in out if isinstance(o.message, p.Chunk)]


def connect(session: ForwarderSession, credit: int, now: float = 0.0, peer: bytes = PEER) -> None:
    (welcome,) = session.receive(peer, frames(p.Hello("hpc", credit)), now)
    assert welcome.identity == peer and isinstance(welcome.message, p.Welcome)


def ack(session: ForwarderSession, chunk: p.Chunk, now: float, peer: bytes = PEER) -> None:
    assert session.receive(peer, frames(p.Ack(chunk.chunk_id, chunk.checksum)), now) == []


def acked_in_ledger(ledger: Ledger, consumer: str) -> None:
    """Every chunk ``consumer`` has not acknowledged, acknowledged in the ledger (as its session would)."""
    for chunk in ledger.pending_chunks(consumer, (), 10_000):
        assert ledger.chunk_acked(consumer, chunk["id"], chunk["checksum"])


def _store_file(ledger: Ledger, tmp_path: Path, n: int, chunks_of_1024: int, kind: str = "data") -> int:
    """Store file ``n`` of run ``run``: ``chunks_of_1024`` chunks of 1024 bytes, of this ``kind``."""
    path = tmp_path / f"run_{n:05d}.h5"
    path.write_bytes(bytes([n]) * 1024 * chunks_of_1024)
    size, digest, parts = file_checksums(path, 1024)
    return ledger.file_stored("run", path.name, path, size, digest, (n, n, 1), parts, kind)


class _VerifiedEarlier:
    """What the outlook reads from a ledger whose files were verified earlier in the rate window."""

    required_consumers = ("hpc",)

    def verified_rate(self, window: float, now: float) -> float:
        return 1e6

    def oldest_unverified_at(self) -> float | None:
        return 0.0


def test_chunks_are_paced_by_credit_and_acks_return_it(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    connect(session, credit=2)
    first = session.tick(0.0)
    sent = chunks(first)
    assert [c.index for c in sent] == [0, 1]  # two credits, two chunks, oldest first
    assert all(o.identity == PEER for o in first)
    for out in first:
        if isinstance(out.message, p.Chunk):
            assert out.payload is not None and checksum_bytes(out.payload) == out.message.checksum
    assert chunks(session.tick(0.1)) == []  # no credit left: nothing more, and nothing twice
    ack(session, sent[0], 0.2)
    (third,) = chunks(session.tick(0.3))
    assert third.index == 2
    assert session.consumer_states(0.3)[0]["in_flight"] == 2
    assert session.stats["chunks_acked"] == 1


def test_a_credit_message_widens_the_window(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    connect(session, credit=1)
    assert len(chunks(session.tick(0.0))) == 1
    session.receive(PEER, frames(p.Credit(5)), 0.1)
    assert len(chunks(session.tick(0.2))) == 2  # only two chunks are left to send


def test_an_unanswered_chunk_is_sent_again_after_resend_seconds_only(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    connect(session, credit=1)
    (chunk,) = chunks(session.tick(0.0))
    assert chunks(session.tick(RESEND - 0.01)) == []  # the consumer is away, but not for long yet
    (again,) = chunks(session.tick(RESEND + 0.01))
    assert again == chunk
    assert session.stats["chunks_timed_out"] == 1


def test_an_outage_and_a_reconnect_resume_after_the_last_acknowledgement(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    connect(session, credit=3)
    sent = chunks(session.tick(0.0))
    ack(session, sent[0], 0.1)  # then the consumer dies with two chunks in flight
    assert session.consumer_states(5.0)[0]["connected"] is True
    assert session.consumer_states(60.0)[0]["connected"] is False
    connect(session, credit=3, now=60.0, peer=b"peer-2")  # the same consumer, a new connection
    resent = session.tick(60.0)
    assert [c.index for c in chunks(resent)] == [1, 2]  # not chunk 0: it was acknowledged
    assert {o.identity for o in resent} == {b"peer-2"}
    assert session.stats["consumer_reconnects"] == 1
    assert session.consumer_states(60.0)[0]["connects"] == 2
    # the dead connection's late acknowledgement is not the new consumer's
    assert session.receive(PEER, frames(p.Ack(sent[1].chunk_id, sent[1].checksum)), 60.1) == []
    assert session.stats["messages_from_unknown_peer"] == 1


def test_a_nack_returns_the_credit_and_the_chunk_is_sent_again(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    connect(session, credit=1)
    (chunk,) = chunks(session.tick(0.0))
    session.receive(PEER, frames(p.Nack(chunk.chunk_id, "checksum mismatch")), 0.1)
    (again,) = chunks(session.tick(0.2))
    assert again.chunk_id == chunk.chunk_id
    assert session.stats["chunks_nacked"] == 1
    (state,) = session.consumer_states(0.5)
    assert state["chunks_refused"] == 1 and state["last_refusal"] == "checksum mismatch"
    assert state["seconds_since_refusal"] == 0.4


def test_a_nack_of_a_chunk_not_in_flight_is_counted_apart_and_refuses_nothing(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe: a peer's ``nack`` for a chunk id never sent to it counted as a refusal (the
    dashboard showed it as the consumer's last refusal) and logged a warning each, a flood for a peer
    that sends many. It is counted apart and logged once in 1000; nothing changes."""
    session = ForwarderSession(ledger)
    connect(session, credit=1)
    (chunk,) = chunks(session.tick(0.0))
    with caplog.at_level("INFO", logger="edge.upstream.session"):
        for n in range(2000):
            session.receive(PEER, frames(p.Nack(chunk.chunk_id + 1000 + n, "never sent")), 0.1)
        ack(session, chunk, 0.2)
        session.receive(PEER, frames(p.Nack(chunk.chunk_id, "late")), 0.3)  # already acknowledged
    assert session.stats["nacks_not_in_flight"] == 2001 and session.stats["chunks_nacked"] == 0
    (state,) = session.consumer_states(0.5)
    assert state["chunks_refused"] == 0 and state["last_refusal"] is None, state
    assert state["credit"] == 1 and state["in_flight"] == 0
    assert len([r for r in caplog.records if "not in flight" in r.getMessage()]) == 3  # 1st, 1001st, 2001st


def test_an_undeliverable_chunk_gives_its_credit_back_and_waits_for_the_consumer(ledger: Ledger) -> None:
    reads: list[int] = []

    def read(path: str, offset: int, length: int) -> bytes:
        reads.append(offset)
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    session = ForwarderSession(ledger, read_chunk=read)
    connect(session, credit=1)
    (out,) = [o for o in session.tick(0.0) if isinstance(o.message, p.Chunk)]
    session.undeliverable(out)  # the socket refused it (peer gone, queue full)
    assert session.consumer_states(0.0)[0] | {"seconds_since_seen": 0} == {
        "consumer": "hpc",
        "credit": 1,
        "in_flight": 0,
        "connects": 1,
        "connected_seconds": 0.0,
        "flowing_seconds": 0.0,
        "seconds_since_seen": 0,
        "connected": False,  # heard from just now, but a send to it failed since
        "unreachable": True,
        "chunks_refused": 0,
        "last_refusal": None,
        "seconds_since_refusal": None,
        "seconds_unanswered": None,
        "refused_in_a_row": 0,
        "held_back": False,
        "held_back_seconds": 0.0,
    }
    # counters only grow (Prometheus counters; an outside probe saw them go down): the attempt stays
    # counted, and the chunk tried again counts as resent
    assert session.stats["chunks_sent"] == 1 and session.stats["send_failures"] == 1
    # an outage: nothing is read from disk or sent again (not even heartbeats, which would fail too),
    # tick after tick, until the consumer speaks
    for k in range(1, 100):
        assert session.tick(0.05 * k) == []
    assert len(reads) == 1
    assert session.receive(PEER, frames(p.Heartbeat()), 5.0) == []
    assert [c.chunk_id for c in chunks(session.tick(5.0))] == [out.message.chunk_id]
    assert len(reads) == 2
    assert session.stats["chunks_sent"] == session.stats["chunks_resent"] == 1


def test_a_file_is_completed_repeatedly_until_verified(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    connect(session, credit=8)
    for chunk in chunks(session.tick(0.0)):
        ack(session, chunk, 0.1)
    completes = [o.message for o in session.tick(0.2) if isinstance(o.message, p.FileComplete)]
    assert len(completes) == 1
    complete = completes[0]
    assert not [o for o in session.tick(1.0) if isinstance(o.message, p.FileComplete)]
    assert [o for o in session.tick(0.2 + RESEND) if isinstance(o.message, p.FileComplete)]
    session.receive(PEER, frames(p.FileVerified(complete.file_id, complete.size, complete.checksum)), 11.0)
    assert session.stats["files_verified"] == 1
    assert ledger.files()[0]["state"] == "verified"
    assert session.tick(30.0) == [Outgoing(PEER, p.Heartbeat())]  # nothing left but the heartbeat


def _all_acked(ledger: Ledger) -> tuple[ForwarderSession, p.FileComplete]:
    """A session whose consumer acknowledged every chunk of the file, and the file_complete it got."""
    session = ForwarderSession(ledger)
    connect(session, credit=8)
    for chunk in chunks(session.tick(0.0)):
        ack(session, chunk, 0.1)
    (complete,) = [o.message for o in session.tick(0.2) if isinstance(o.message, p.FileComplete)]
    assert isinstance(complete, p.FileComplete)
    return session, complete


def test_a_mismatched_file_is_sent_again_from_its_first_chunk(ledger: Ledger) -> None:
    session, complete = _all_acked(ledger)
    session.receive(PEER, frames(p.FileVerified(complete.file_id, complete.size, "not-it")), 0.3)
    assert session.stats["files_mismatched"] == 1
    assert [c.index for c in chunks(session.tick(0.4))] == [0, 1, 2]


def test_a_confirmation_before_every_chunk_was_acknowledged_is_refused(ledger: Ledger) -> None:
    """An outside probe received one chunk, then confirmed the files with the size and checksum the read
    API serves: they were verified and purged, their data nowhere. A consumer that has not acknowledged
    every chunk of a file cannot hold it: its confirmation is refused with an error, the file stays
    unconfirmed, and once its chunks are acknowledged the file_complete comes and a confirmation counts."""
    session = ForwarderSession(ledger)
    connect(session, credit=1)
    (first,) = chunks(session.tick(0.0))
    ack(session, first, 0.1)
    (file_row,) = ledger.files()
    confirm = frames(p.FileVerified(file_row["id"], file_row["size"], file_row["checksum"], "/nowhere/f.h5"))
    (reply,) = session.receive(PEER, confirm, 0.2)
    assert isinstance(reply.message, p.Error) and "(1 of 3)" in reply.message.reason
    assert session.stats["confirmations_before_chunks"] == 1 and session.stats["files_verified"] == 0
    assert ledger.file_state(file_row["id"]) == "forwarded"
    unbacked = ledger.unbacked_confirmation("hpc", file_row["id"], file_row["size"], file_row["checksum"])
    assert unbacked == (1, 3)
    for _ in range(2):  # the rest of its chunks, then its file_complete
        for chunk in chunks(session.tick(0.3)):
            ack(session, chunk, 0.3)
    assert [o.message for o in session.tick(0.4) if isinstance(o.message, p.FileComplete)]
    assert session.receive(PEER, confirm, 0.5) == []
    assert session.stats["files_verified"] == 1 and ledger.file_state(file_row["id"]) == "verified"


@pytest.mark.parametrize("purged", [False, True])
def test_a_confirmation_of_a_verified_or_purged_file_by_a_consumer_without_its_chunks_is_refused(
    ledger: Ledger, purged: bool
) -> None:
    """An outside probe: a consumer that never received a byte confirmed files the required consumers had
    verified (or that were purged since) with the read API's checksums; `edge where` showed its copies,
    and once it was made required the files were purged on its word. Refused, nothing recorded."""
    session, complete = _all_acked(ledger)
    confirm = frames(p.FileVerified(complete.file_id, complete.size, complete.checksum, "/hpc/f.h5"))
    assert session.receive(PEER, confirm, 0.3) == []
    if purged:
        ledger.file_purged(complete.file_id)
    assert ledger.file_state(complete.file_id) == ("purged" if purged else "verified")
    (welcome,) = session.receive(b"peer-m", frames(p.Hello("mirror", 1)), 0.4)
    assert isinstance(welcome.message, p.Welcome)
    fake = frames(p.FileVerified(complete.file_id, complete.size, complete.checksum, "/fake/f.h5"))
    (reply,) = session.receive(b"peer-m", fake, 0.5)
    assert isinstance(reply.message, p.Error) and "(0 of 3)" in reply.message.reason
    assert session.stats["confirmations_before_chunks"] == 1
    run_uid = ledger.files()[0]["run_uid"]
    assert "mirror" not in ledger.chunk_ack_counts(run_uid).get(complete.file_id, {})
    assert ledger.unbacked_confirmation("mirror", complete.file_id, complete.size, complete.checksum) == (
        0,
        3,
    )
    # the consumer that holds it may confirm it again (a repeat answer): never refused
    assert session.receive(PEER, confirm, 0.6) == [] and session.stats["confirmations_before_chunks"] == 1


def test_a_repeated_mismatch_answer_is_a_mismatch_not_a_confirmation_before_the_chunks(
    ledger: Ledger,
) -> None:
    """A client answers every file_complete (section 4.5 item 6), a queued repeat too: its second "I hold
    no copy" after the first dropped its acknowledgements is one more mismatch, never refused as a
    confirmation before the chunks (an outside probe's honest client got an error for it)."""
    session, complete = _all_acked(ledger)
    none = frames(p.FileVerified(complete.file_id, 0, "", ""))
    assert session.receive(PEER, none, 0.3) == [] and session.receive(PEER, none, 0.35) == []
    assert session.stats["files_mismatched"] == 2 and session.stats["confirmations_before_chunks"] == 0


def test_a_mismatch_after_a_confirmation_changes_nothing(ledger: Ledger) -> None:
    """A consumer that confirmed a file and later sends another checksum for it neither erases its
    acknowledgements (kept in the file's record after a purge) nor gets the file again."""
    session, complete = _all_acked(ledger)
    session.receive(PEER, frames(p.FileVerified(complete.file_id, complete.size, complete.checksum)), 0.3)
    before = ledger.chunk_ack_counts(ledger.files()[0]["run_uid"])
    session.receive(PEER, frames(p.FileVerified(complete.file_id, complete.size, "not-it")), 0.4)
    assert session.stats["confirmations_contradicted"] == 1 and session.stats["files_mismatched"] == 0
    assert ledger.chunk_ack_counts(ledger.files()[0]["run_uid"]) == before
    assert ledger.files()[0]["state"] == "verified"
    assert chunks(session.tick(0.5)) == []


def test_heartbeats_go_to_every_consumer_every_interval(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, heartbeat_seconds=2.0)
    connect(session, credit=0)  # a Hello's credit is at least 1
    beats = [t for t in (0.0, 0.5, 1.9, 2.0, 3.0, 4.1) if Outgoing(PEER, p.Heartbeat()) in session.tick(t)]
    assert beats == [0.0, 2.0, 4.1]


def test_bad_and_hostile_messages_are_answered_or_counted_never_raised(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    (error,) = session.receive(PEER, [b"not json"], 0.0)
    assert isinstance(error.message, p.Error) and error.identity == PEER
    assert session.receive(PEER, frames(p.Credit(3)), 0.0) == []  # before Hello: unknown peer
    connect(session, credit=1)
    for hostile in (
        p.FileVerified(10**6, 1, "x"),  # a file the ledger never had
        p.FileVerified(2**64 - 1, 1, "x"),  # beyond SQLite's INTEGER
        p.Ack(2**63, "x"),
        p.Nack(-1, "x"),
        p.Welcome("me", "xxh3"),  # a message only the appliance sends
    ):
        assert session.receive(PEER, frames(hostile), 0.1) == []
    assert session.stats["protocol_errors"] == 1
    assert session.stats["messages_from_unknown_peer"] == 1
    assert session.stats["unknown_ids"] == 4
    assert session.stats["unexpected_messages"] == 1
    assert len(chunks(session.tick(0.2))) == 1  # and the session still serves


def test_corruption_in_transit_is_injected_after_the_checksum(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, corrupt=1.0, seed=3)
    connect(session, credit=3)
    out = [o for o in session.tick(0.0) if isinstance(o.message, p.Chunk)]
    assert len(out) == 3 and session.stats["chunks_corrupted_injected"] == 3
    for item in out:
        assert item.payload is not None and isinstance(item.message, p.Chunk)
        assert checksum_bytes(item.payload) != item.message.checksum  # what the pull client detects


def test_a_chunk_changed_on_disk_is_not_sent(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "run_00000.h5").write_bytes(bytes(3072))  # same size, other bytes
    session = ForwarderSession(ledger)
    connect(session, credit=3)
    assert chunks(session.tick(0.0)) == []
    assert session.stats["local_checksum_mismatches"] == 3


def test_wire_frames_round_trip_through_the_session(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, appliance_id="edge-7")
    (welcome,) = session.receive(
        PEER, [json.dumps({"v": p.VERSION, "type": "hello", "consumer": "hpc", "credit": 1}).encode()], 0.0
    )
    assert welcome.message == p.Welcome("edge-7", "xxh3-128")


def test_credit_from_the_peer_is_capped(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    connect(session, credit=2**70)  # beyond SQLite's LIMIT, were it passed on
    assert session.consumer_states(0.0)[0]["credit"] == MAX_CREDIT
    session.receive(PEER, frames(p.Credit(2**70)), 0.0)
    assert session.consumer_states(0.0)[0]["credit"] == MAX_CREDIT
    assert len(chunks(session.tick(0.1))) == 3


def test_credit_and_chunks_in_flight_together_stay_under_the_cap(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    connect(session, credit=MAX_CREDIT)
    assert len(chunks(session.tick(0.0))) == 3  # three in flight, unacknowledged
    session.receive(PEER, frames(p.Credit(MAX_CREDIT)), 0.1)
    state = session.consumer_states(0.1)[0]
    assert state["credit"] + state["in_flight"] == MAX_CREDIT


def test_a_chunk_rejected_again_waits_before_it_is_resent(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    connect(session, credit=1)
    (chunk,) = chunks(session.tick(0.0))
    session.receive(PEER, frames(p.Nack(chunk.chunk_id, "checksum mismatch")), 0.1)
    (again,) = chunks(session.tick(0.2))  # the first rejection: sent again at once
    assert again.chunk_id == chunk.chunk_id
    session.receive(PEER, frames(p.Nack(chunk.chunk_id, "x" * 10_000)), 0.3)  # a long reason: logged cut
    # rejected twice: the next chunk goes instead, this one waits resend_seconds
    (other,) = chunks(session.tick(0.4))
    assert other.chunk_id != chunk.chunk_id
    ack(session, other, 0.5)
    (third,) = chunks(session.tick(0.6))
    assert third.chunk_id not in (chunk.chunk_id, other.chunk_id)
    ack(session, third, 0.7)
    assert not chunks(session.tick(0.8))  # only the held chunk is left: it waits
    assert [c.chunk_id for c in chunks(session.tick(0.4 + RESEND))] == [chunk.chunk_id]


@pytest.fixture
def backlog(tmp_path: Path) -> Ledger:
    """A ledger holding 40 one-chunk files of run ``run``: a backlog."""
    ledger = Ledger(tmp_path / "backlog.sqlite", required_consumers=("hpc",))
    ledger.run_started("run", 1, 40, "{}")
    for n in range(40):
        path = tmp_path / f"run_{n:05d}.h5"
        path.write_bytes(bytes([n]) * 1024)
        size, digest, parts = file_checksums(path, 1024)
        ledger.file_stored("run", path.name, path, size, digest, (n, n + 1, 1), parts)
    yield ledger
    ledger.close()


def test_a_consumer_that_refuses_everything_is_sent_one_chunk_after_growing_pauses(
    backlog: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe: with the HPC side's disk full, every chunk of a 19 MB backlog was read and sent
    again every resend_seconds (6 MB/s), the client logging a write error for each. After
    REFUSING_IN_A_ROW refusals with nothing taken, one chunk goes at a time, the pauses doubling; the
    first chunk it takes ends that."""
    session = ForwarderSession(backlog, resend_seconds=RESEND)
    connect(session, credit=16)
    now, sent = 0.0, 0
    caplog.set_level(logging.INFO, logger="edge.upstream.session")
    for _ in range(3):  # every chunk sent is refused: "No space left on device"
        for chunk in chunks(session.tick(now)):
            sent += 1
            session.receive(
                PEER, frames(p.Nack(chunk.chunk_id, "write failed: No space left on device")), now
            )
        now += 0.01
    state = session.consumer_states(now)[0]
    assert state["held_back"] and state["refused_in_a_row"] == sent >= REFUSING_IN_A_ROW
    assert state["held_back_seconds"] == pytest.approx(RESEND, abs=0.1)
    assert sum("refused" in r.message and "one chunk at a time" in r.message for r in caplog.records) == 1
    caplog.clear()
    # held back: nothing at all until the pause is over, then one chunk, and each refusal doubles it
    pauses = []
    for _ in range(6):
        start = now
        while not (out := chunks(session.tick(now))):
            now += 0.5
            assert now - start <= MAX_HOLD_BACK_SECONDS + 1
        pauses.append(now - start)
        assert len(out) == 1
        assert chunks(session.tick(now + 0.1)) == []  # not another while that one is unanswered
        session.receive(PEER, frames(p.Nack(out[0].chunk_id, "No space left on device")), now + 0.2)
        now += 0.2
    assert pauses[1:] == pytest.approx([20.0, 40.0, 60.0, 60.0, 60.0], abs=0.6)
    assert not caplog.records  # refusals while held back are no line each
    before = session.stats["chunks_sent"] + session.stats["chunks_resent"]
    # the outlook says stalled at once, though files were verified earlier in the rate window
    view = session.consumer_states(now)

    outlook = upstream_outlook(_VerifiedEarlier(), 1 << 20, {"consumers": view}, now)
    assert outlook["state"] == "stalled" and "No space left on device" in outlook["reason"]
    # a restarted client (its disk still full) is not a fresh start: it waits out its pause, and its
    # refusals count on (a re-probe: a restart brought a fresh burst of 8 and a 1 s pause again)
    refused = session.consumer_states(now)[0]["chunks_refused"]
    assert session.consumer_states(now)[0]["held_back_seconds"] > 50
    answers = session.receive(b"peer-2", frames(p.Hello("hpc", 16)), now)  # (the old one told: taken over)
    assert any(isinstance(o.message, p.Welcome) for o in answers)
    again = session.consumer_states(now)[0]
    assert again["held_back"] and again["chunks_refused"] == refused
    assert not chunks(session.tick(now + 1.0)) and not chunks(session.tick(now + 30.0))
    # space again: the probe chunk is taken, and the whole credit goes out at once
    while not (out := chunks(session.tick(now))):
        now += 0.5
    ack(session, out[0], now, peer=b"peer-2")
    assert len(chunks(session.tick(now + 0.01))) == 16
    assert session.consumer_states(now)[0]["held_back"] is False
    assert any("takes chunks again" in r.message for r in caplog.records)
    assert session.stats["chunks_sent"] + session.stats["chunks_resent"] == before + 17


def _one_tick_on_a_full_disk(
    session: ForwarderSession, now: float, too_big: set[int], taken: set[int]
) -> int:
    """One tick's chunks answered by a consumer whose disk has no room for the files ``too_big`` (refused)
    and takes the others (their files added to ``taken``); returns how many were refused."""
    refused = 0
    for chunk in chunks(session.tick(now)):
        if chunk.file_id in too_big:
            refused += 1
            session.receive(PEER, frames(p.Nack(chunk.chunk_id, "No space left on device")), now)
        else:
            ack(session, chunk, now)
            taken.add(chunk.file_id)
    return refused


def test_a_file_too_big_for_the_consumer_does_not_hold_back_the_files_that_fit(tmp_path: Path) -> None:
    """An outside probe (re-probe of the hold-back): a 6.8 MB file first in line on a 4 MiB disk, every
    chunk of it refused (its space is taken at its first chunk), and the smaller files behind it never
    went: the credit went to its chunks, then, held back, the one chunk after each pause was its first
    chunk again. A file two of whose chunks are refused now waits (pauses doubling) while the others go."""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    ledger.run_started("run", 1, 40, "{}")
    big = tmp_path / "run_00000.h5"
    big.write_bytes(bytes(range(256)) * 4 * 30)  # 30 chunks of 1024
    size, digest, parts = file_checksums(big, 1024)
    big_id = ledger.file_stored("run", big.name, big, size, digest, (0, 29, 30), parts)
    for n in range(1, 4):
        small = tmp_path / f"run_{n:05d}.h5"
        small.write_bytes(bytes([n]) * 1024)
        size, digest, parts = file_checksums(small, 1024)
        ledger.file_stored("run", small.name, small, size, digest, (29 + n, 29 + n, 1), parts)
    session = ForwarderSession(ledger, resend_seconds=1.0)
    connect(session, credit=16)
    now, big_sends, taken = 0.0, 0, set()
    while now < 30.0 and len(taken) < 3:
        big_sends += _one_tick_on_a_full_disk(session, now, {big_id}, taken)
        now += 0.25
    assert len(taken) == 3, f"the files that fit never went ({big_sends} sends of the big one)"
    assert now < 20.0
    # and the big one is not sent over and over meanwhile: its first burst, then one pause after another
    assert big_sends <= 16 + 8, big_sends
    ledger.close()


def test_once_a_consumer_that_refused_everything_takes_a_chunk_its_held_files_go_at_once(
    tmp_path: Path,
) -> None:
    """An outside probe: the HPC side's disk full, then freed: the files met by the refusals (several of
    their chunks refused, so held with pauses doubling to 60 s) arrived a minute after the file stored
    since, while the outlook said "delivering". The consumer taking a chunk again after refusing
    every file ends each one's pause: what held them is gone. (Refusals of one file only keep it
    held: the test above, a file too big for the consumer.)"""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    ledger.run_started("run", 1, 2, "{}")

    def store(n: int) -> int:
        path = tmp_path / f"run_{n:05d}.h5"
        path.write_bytes(bytes([n]) * 1024 * 8)  # 8 chunks of 1024
        size, digest, parts = file_checksums(path, 1024)
        return ledger.file_stored("run", path.name, path, size, digest, (n, n, 1), parts)

    refused_file = store(0)
    other_refused = store(1)
    session = ForwarderSession(ledger, resend_seconds=1.0)
    connect(session, credit=16)
    now = 0.0
    while now < 61.0:  # the disk is full: every chunk refused, the file held (60 s), the consumer too
        for chunk in chunks(session.tick(now)):
            session.receive(PEER, frames(p.Nack(chunk.chunk_id, "No space left on device")), now)
        now += 0.5
    assert session.consumer_states(now)[0]["held_back"]
    store(2)  # space again, and a new file: its chunk goes first, at the end of the consumer's pause
    acked: dict[int, set[int]] = {}
    first_taken = None
    while now < 400.0 and sum(map(len, acked.values())) < 24:
        for chunk in chunks(session.tick(now)):
            ack(session, chunk, now)
            acked.setdefault(chunk.file_id, set()).add(chunk.chunk_id)
            first_taken = now if first_taken is None else first_taken
        now += 0.5
    assert len(acked.get(refused_file, ())) == len(acked.get(other_refused, ())) == 8
    assert first_taken is not None
    assert now - first_taken <= 3.0, f"the refused files went {now - first_taken:.1f} s after the first chunk"
    ledger.close()


def _held_back_by_two_big_files(
    tmp_path: Path, until: float
) -> tuple[Ledger, Any, set[int], ForwarderSession, float]:
    """Two data files of 8 chunks stored, a consumer (credit 16) whose full disk refuses every chunk
    until ``until`` (seconds of the session's clock): it is held back. Returns the ledger, a function
    storing more files (`_store_file`'s), the two files' ids, the session and the time reached."""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    ledger.run_started("run", 1, 2, "{}")
    store = partial(_store_file, ledger, tmp_path)
    big = {store(0, 8), store(1, 8)}
    session = ForwarderSession(ledger, resend_seconds=1.0)
    connect(session, credit=16)
    now = 0.0
    while now < until:
        for chunk in chunks(session.tick(now)):
            session.receive(PEER, frames(p.Nack(chunk.chunk_id, "No space left on device")), now)
        now += 0.5
    assert session.consumer_states(now)[0]["held_back"]
    return ledger, store, big, session, now


def test_files_a_consumer_refusing_everything_never_refused_go_while_the_refused_wait(tmp_path: Path) -> None:
    """An outside probe: the HPC side's disk full, two big data files refused over and over (the consumer
    held back, one chunk at a time); the run's reduced file and documents, stored after and small enough
    to fit, waited with them for over a minute, their probe chunk always a big file's. A run's reduced
    files and documents it never refused now go at once; the data files stay held back (tried once after
    each one taken, not flooded; a data file never tried waits with them)."""
    ledger, store, big, session, now = _held_back_by_two_big_files(tmp_path, 30.0)
    small = {store(2, 1, "reduced"), store(3, 1, "documents")}  # the run's proof: they fit
    store(4, 8)  # a data file never tried: it waits with the refused ones (one chunk after each pause)
    taken, started, big_sends = set(), now, 0
    while now < started + 5.0:
        big_sends += _one_tick_on_a_full_disk(session, now, big, taken)
        now += 0.5
    assert small <= taken, "the run's reduced file and documents waited with the refused ones"
    assert big_sends + len(taken - small) <= 2, big_sends  # a try after each taken, not the whole credit
    state = session.consumer_states(now)[0]
    assert state["held_back"] and state["held_back_seconds"] > 1.0
    ledger.close()


def test_a_restarted_daemon_holds_back_a_consumer_that_refused_everything_proof_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart forgot that the HPC side refused everything (its disk full): the fresh session sent the
    oldest files first, the big data files' chunks on its whole credit, which could take the last of the
    consumer's space before the runs' reduced files and documents. The ledger keeps that it refuses
    everything; a restarted daemon holds it back still and sends the proof it never refused first."""
    ledger, store, big, session, now = _held_back_by_two_big_files(tmp_path, 10.0)
    state = session.consumer_states(now)[0]
    assert state["held_back"]
    # the ledger has its count as it is (one short after a restart: a re-probe)
    assert ledger.consumer_refusals("hpc")["refused_in_a_row"] == state["refused_in_a_row"]
    small = {store(2, 1, "reduced"), store(3, 1, "documents")}
    # the daemon restarts (a new session on the same ledger); the consumer connects again
    caplog.set_level(logging.WARNING, logger="edge.upstream.session")
    restarted = ForwarderSession(ledger, resend_seconds=1.0)
    connect(restarted, credit=16, now=100.0, peer=b"peer-2")
    state = restarted.consumer_states(100.0)[0]
    assert state["held_back"] and state["last_refusal"] == "No space left on device"
    assert any("when last heard from" in r.message for r in caplog.records)
    first = chunks(restarted.tick(100.0))
    assert {c.file_id for c in first} == small, [c.file_id for c in first]
    view = restarted.consumer_states(100.0)

    assert upstream_outlook(_VerifiedEarlier(), 1 << 20, {"consumers": view}, 100.0)["state"] == "stalled"
    for chunk in first:
        ack(restarted, chunk, 100.1, peer=b"peer-2")
    (probe,) = chunks(restarted.tick(100.2))  # then one chunk of what it refused, to see if there is room
    assert probe.file_id in big
    ack(restarted, probe, 100.3, peer=b"peer-2")  # room again: that ends it, here and in the ledger
    assert len(chunks(restarted.tick(100.4))) == 15
    # its rate window starts at that chunk, not at its hello (held back, "ETA 244 s": an outside probe)
    state = restarted.consumer_states(105.3)[0]
    assert state["flowing_seconds"] == pytest.approx(5.0) and state["connected_seconds"] == pytest.approx(5.3)
    assert ledger.consumer_refusals("hpc") is None
    again = ForwarderSession(ledger, resend_seconds=1.0)
    connect(again, credit=4, now=200.0, peer=b"peer-3")
    assert not again.consumer_states(200.0)[0]["held_back"]
    ledger.close()


def test_a_consumer_name_outside_the_rules_is_refused(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    for name in ("", "a/b", "x" * 65, "hpc\n"):
        (reply,) = session.receive(PEER, frames(p.Hello(name, 4)), 0.0)
        assert isinstance(reply.message, p.Error) and "consumer name" in reply.message.reason
    assert session.consumers == {} and session.stats["bad_consumer_names"] == 4
    assert not chunks(session.tick(0.1))


def test_a_second_connection_with_a_live_consumers_name_is_reported_to_the_first(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    connect(session, credit=1, now=0.0, peer=b"first")
    out = session.receive(b"second", frames(p.Hello("hpc", 1)), 1.0)
    assert [(o.identity, type(o.message)) for o in out] == [(b"second", p.Welcome), (b"first", p.Error)]
    assert "taken over" in out[1].message.reason and session.stats["consumer_taken_over"] == 1
    # a reconnect after the old connection went quiet is an ordinary reconnect, told to nobody
    out = session.receive(b"third", frames(p.Hello("hpc", 1)), 100.0)
    assert [(o.identity, type(o.message)) for o in out] == [(b"third", p.Welcome)]


def test_a_file_every_required_consumer_confirmed_is_settled_once(tmp_path: Path) -> None:
    """The session hands a file's path to ``settled`` (which drops its pages from the page cache) when
    the last required consumer confirms it, not before: the others still read it."""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc", "tape"))
    ledger.run_started("run", 1, 3, "{}")
    path = tmp_path / "run_00000.h5"
    path.write_bytes(bytes(range(256)) * 4)
    size, digest, cut = file_checksums(path, 1024)
    file_id = ledger.file_stored("run", path.name, path, size, digest, (0, 0, 1), cut)
    settled: list[str] = []
    session = ForwarderSession(ledger, settled=settled.append)
    for name, peer in (("hpc", b"peer-h"), ("tape", b"peer-t")):
        session.receive(peer, frames(p.Hello(name, 4)), 0.0)
    confirm = frames(p.FileVerified(file_id, size, digest))
    for name in ("hpc", "tape"):
        acked_in_ledger(ledger, name)
    session.receive(b"peer-h", confirm, 1.0)
    assert settled == []  # tape has not confirmed it: it may still read the file
    session.receive(b"peer-t", confirm, 2.0)
    assert settled == [str(path)]
    ledger.close()


@pytest.mark.parametrize(
    ("stored_path", "reason"),
    [
        ("run/run_00000.h5", "not an absolute path"),
        ("/hpc/run_00000.h5\nrun_00001.h5  verified", "control characters"),
        ("/hpc/\x1b[2J\x1b[31mrun_00000.h5", "control characters"),
        ("/hpc/\x9b2Jrun_00000.h5", "control characters"),
        ("/" + "a" * 5000, "at most 4096"),
    ],
)
def test_a_confirmation_with_a_stored_path_that_is_not_a_clean_absolute_path_is_refused(
    ledger: Ledger, stored_path: str, reason: str
) -> None:
    """`edge where` prints stored_path as it was recorded: a newline or a terminal escape from the network
    is refused with an error, the file stays unconfirmed (nothing is purged) and is asked for again."""
    session, complete = _all_acked(ledger)
    bad = p.FileVerified(complete.file_id, complete.size, complete.checksum, stored_path)
    (reply,) = session.receive(PEER, frames(bad), 0.3)
    assert reply.identity == PEER and isinstance(reply.message, p.Error)
    assert reason in reply.message.reason and len(reply.message.reason) <= 200
    assert session.stats["bad_stored_paths"] == 1 and session.stats["files_verified"] == 0
    assert ledger.files()[0]["state"] != "verified"
    assert ledger.file_acks("run") == {} and ledger.file_copies("run") == {}
    # unanswered as far as the appliance is concerned: file_complete comes again after resend_seconds
    assert not [o for o in session.tick(1.0) if isinstance(o.message, p.FileComplete)]
    assert [o for o in session.tick(0.2 + RESEND + 0.1) if isinstance(o.message, p.FileComplete)]
    good = p.FileVerified(complete.file_id, complete.size, complete.checksum, "/hpc/run/run_00000.h5")
    assert session.receive(PEER, frames(good), 11.0) == []
    assert ledger.files()[0]["state"] == "verified"


def test_the_hello_log_line_shows_the_credit_used_and_a_bounded_request(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    session = ForwarderSession(ledger)
    with caplog.at_level(logging.INFO, logger="edge.upstream.session"):
        connect(session, credit=8)
        connect(session, credit=10**40, now=100.0, peer=b"peer-2")  # the last one went quiet
        connect(session, credit=-(10**4000), now=200.0, peer=b"peer-3")
    lines = [r.getMessage() for r in caplog.records if "connected" in r.getMessage()]
    assert lines[0] == "consumer hpc connected (credit 8)"
    assert (
        lines[1]
        == f"consumer hpc connected (credit {MAX_CREDIT}; it asked for 10000000000000000000... (41 digits))"
    )
    assert lines[2].startswith("consumer hpc connected (credit 1; it asked for -1000")
    assert lines[2].endswith("... (4001 digits))") and len(lines[2]) < 100


def test_a_nack_reason_is_logged_and_shown_escaped(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    """An outside probe forged a CRITICAL line in the daemon's log with a newline in a nack's reason."""
    session = ForwarderSession(ledger)
    connect(session, credit=1)
    (out,) = chunks(session.tick(0.0))
    reason = "x\n2026-12-04 23:59:59,000 CRITICAL edge.appliance: FORGED\x1b[31m"
    session.receive(PEER, frames(p.Nack(out.chunk_id, reason)), 0.1)
    (state,) = session.consumer_states(0.2)
    assert "\n" not in state["last_refusal"] and "\x1b" not in state["last_refusal"]
    assert "\\x0a2026-12-04" in state["last_refusal"]
    assert not [r for r in caplog.records if "\n" in r.getMessage() or "\x1b" in r.getMessage()]


def test_how_long_a_consumer_has_answered_nothing_sent_to_it(ledger: Ledger) -> None:
    session = ForwarderSession(ledger)
    connect(session, credit=1)
    assert session.consumer_states(0.0)[0]["seconds_unanswered"] is None  # nothing sent yet
    (out,) = chunks(session.tick(0.0))
    assert session.consumer_states(70.0)[0]["seconds_unanswered"] == 70.0
    session.receive(PEER, frames(p.Ack(out.chunk_id, out.checksum)), 71.0)
    assert session.consumer_states(72.0)[0]["seconds_unanswered"] is None  # answered, nothing owed


def test_what_is_on_its_way_to_one_consumer_is_bounded_in_bytes_whatever_its_credit(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside hostile consumer: peers granting the most credit and reading nothing pinned every
    chunk sent to them in the appliance's memory (4096 chunks of 4 MiB each). Here the bound is 2 KiB."""
    import edge.upstream.session as session_module

    monkeypatch.setattr(session_module, "MAX_IN_FLIGHT_BYTES", 2048)
    session = ForwarderSession(ledger)
    connect(session, credit=8)
    first = chunks(session.tick(0.0))
    assert len(first) == 2 and session.stats["sends_held_in_flight_bytes"] == 1  # 2 x 1024: the bound
    assert chunks(session.tick(0.1)) == []
    session.receive(PEER, frames(p.Ack(first[0].chunk_id, first[0].checksum)), 0.2)
    assert len(chunks(session.tick(0.3))) == 1  # room for one more


def test_consumers_under_ever_new_names_are_not_remembered_for_ever(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside hostile consumer said hello under 300 names: all 300 stayed in the status until the
    daemon restarted. Beyond a bound, the one silent longest (not required, nothing in flight) goes."""
    import edge.upstream.session as session_module

    monkeypatch.setattr(session_module, "MAX_CONSUMERS", 4)
    session = ForwarderSession(ledger)
    connect(session, credit=1, now=0.0)  # "hpc", required
    for k in range(10):
        session.receive(f"peer-{k}".encode(), frames(p.Hello(f"x{k}", 1)), 100.0 + 10 * k)
    names = {state["consumer"] for state in session.consumer_states(300.0)}
    assert "hpc" in names and len(names) == 4 and {"x8", "x9"} <= names
    assert session.stats["consumers_forgotten"] == 7


def test_a_file_gone_from_the_disk_does_not_starve_the_files_after_it(ledger: Ledger, tmp_path: Path) -> None:
    """An outside HPC-side probe: one stored file deleted (or truncated) locally; its chunks came first
    on every look and took the whole credit, so no chunk of any other file was ever sent (0 chunks in
    30 s). They are set aside a while now and the next file goes out."""
    later = tmp_path / "run_00001.h5"
    later.write_bytes(bytes(range(200)) * 10)  # 2000 bytes -> 2 chunks
    size, digest, parts = file_checksums(later, 1024)
    ledger.file_stored("run", later.name, later, size, digest, (3, 4, 2), parts)
    (tmp_path / "run_00000.h5").unlink()
    session = ForwarderSession(ledger)
    connect(session, credit=3)
    sent: list[p.Chunk] = []
    for now in (0.0, 0.1, 0.2):
        sent += chunks(session.tick(now))
    assert [c.file_name for c in sent] == [later.name, later.name]
    assert session.stats["chunk_read_errors"] == 3 and session.stats["chunks_set_aside"] == 3
    session.tick(61.0)  # tried again after a minute: still gone, still counted
    assert session.stats["chunk_read_errors"] == 6
    # and named, for the operator: the status lists it, the alarm says it, the outlook gives no ETA
    (gone,) = session.unreadable_files(62.0)
    assert gone["path"] == str(tmp_path / "run_00000.h5") and "No such file" in gone["error"]
    assert gone["seconds_since"] == 62.0 and gone["seconds_since_tried"] == 1.0
    status = {"upstream": {"unreadable_files": session.unreadable_files(62.0)}}
    (alarm,) = current_alarms(status)
    assert alarm["id"] == "condition:upstream_unreadable" and alarm["severity"] == "major"
    assert "run_00000.h5" in alarm["message"] and "No such file" in alarm["message"]
    for chunk in sent:  # the file after it arrived
        ack(session, chunk, 61.9)
    forwarder = {"consumers": session.consumer_states(62.0), **status["upstream"]}
    outlook = upstream_outlook(ledger, 3072, forwarder, 62.0)
    assert outlook["eta_seconds"] is None and "run_00000.h5" in outlook["reason"]
    assert outlook["unreadable_files"] == 1
    # restored from a copy: sent on its next try, and no longer named
    (tmp_path / "run_00000.h5").write_bytes(bytes(range(256)) * 12)
    restored = chunks(session.tick(122.0))
    assert {c.file_name for c in restored} == {"run_00000.h5"}
    assert session.unreadable_files(122.0) == []


def test_an_ack_with_a_wrong_checksum_is_a_refusal_held_back_when_repeated(ledger: Ledger) -> None:
    """A consumer that acknowledges other bytes than ours refuses the chunk: it is resent at once the first
    time, then only every resend_seconds (not round and round as fast as the peer answers), and its
    status says it refuses, with nothing owed once nothing is in flight."""
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    connect(session, credit=1)
    (chunk,) = chunks(session.tick(0.0))
    wrong = p.Ack(chunk.chunk_id, "0" * len(chunk.checksum))
    assert session.receive(PEER, frames(wrong), 0.1) == []
    (again,) = chunks(session.tick(0.2))  # the first: sent again at once
    assert again.chunk_id == chunk.chunk_id
    session.receive(PEER, frames(wrong), 0.3)
    (other,) = chunks(session.tick(0.4))  # refused twice: the next chunk goes, this one waits
    assert other.chunk_id != chunk.chunk_id
    ack(session, other, 0.5)
    (third,) = chunks(session.tick(0.6))
    ack(session, third, 0.7)
    assert not chunks(session.tick(0.8)) and not chunks(session.tick(5.0))
    (state,) = session.consumer_states(5.0)
    assert state["chunks_refused"] == 2 and "checksum" in state["last_refusal"]
    assert state["in_flight"] == 0 and state["seconds_unanswered"] is None
    assert session.stats["acks_rejected"] == 2 and session.stats["chunks_acked"] == 2
    assert [c.chunk_id for c in chunks(session.tick(0.3 + RESEND + 0.1))] == [chunk.chunk_id]


def test_an_acknowledgement_repeated_is_counted_once(ledger: Ledger) -> None:
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    connect(session, credit=1)
    (chunk,) = chunks(session.tick(0.0))
    ack(session, chunk, 0.1)
    ack(session, chunk, 0.2)  # a duplicate (a client that answered twice): recorded once, counted once
    assert session.stats["chunks_acked"] == 1
    assert session.consumer_states(0.3)[0]["chunks_refused"] == 0
    assert ledger.summary()["consumers"] == [
        {"consumer": "hpc", "chunks_acked": 1, "last_chunk_acked": chunk.chunk_id}
    ]


def test_an_acknowledgement_of_a_local_only_file_is_not_recorded(ledger: Ledger, tmp_path: Path) -> None:
    """A file kept local (``upstream.forward``) is never sent: an ack of its chunks is forged or stray."""
    path = tmp_path / "run_local.h5"
    path.write_bytes(b"x" * 1024)
    size, digest, local_chunks = file_checksums(path, 1024)
    ledger.file_stored("run", path.name, path, size, digest, (0, 0, 0), local_chunks, local=True)
    row = ledger._rows(
        "SELECT c.id, c.checksum FROM chunks c JOIN files f ON f.id=c.file_id WHERE f.state='local'"
    )
    (local_chunk,) = row
    assert ledger.chunk_acked("hpc", local_chunk["id"], local_chunk["checksum"]) is False
    session = ForwarderSession(ledger)
    connect(session, credit=1)
    session.receive(PEER, frames(p.Ack(local_chunk["id"], local_chunk["checksum"])), 0.1)
    assert session.stats["acks_rejected"] == 1 and session.stats["chunks_acked"] == 0


def test_a_mismatch_of_a_purged_file_does_not_say_it_is_resent(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer the policy does not require (a mirror) that holds another copy of a file purged here
    after the required consumers verified it: the log said "resending it"; nothing is left to send."""
    session, complete = _all_acked(ledger)
    session.receive(PEER, frames(p.FileVerified(complete.file_id, complete.size, complete.checksum)), 0.3)
    ledger.file_purged(complete.file_id)
    session.receive(b"mirror", frames(p.Hello("mirror", 1)), 0.4)
    with caplog.at_level(logging.WARNING):
        session.receive(b"mirror", frames(p.FileVerified(complete.file_id, complete.size, "not-it")), 0.5)
    assert session.stats["files_mismatched"] == 1
    assert "cannot be sent again" in caplog.text and "resending" not in caplog.text
    assert chunks(session.tick(0.6)) == []


def test_one_failed_send_is_one_failure_and_the_messages_behind_it_are_withdrawn(ledger: Ledger) -> None:
    """An outside client probe: a consumer whose queue filled showed 3596 send failures for one look (each
    message handed out behind the failed one counted as failing, though never tried)."""
    import zmq

    from edge.upstream.forwarder import Forwarder

    context = zmq.Context()
    forwarder = Forwarder("tcp://127.0.0.1:0", ledger, context)
    sock = context.socket(zmq.ROUTER)
    sock.router_mandatory = True  # as the forwarder's: a send to a peer not connected fails at once
    sock.linger = 0
    try:
        connect(forwarder.session, credit=3)  # a peer that is not on this socket: every send fails
        out = forwarder.session.tick(0.0)
        assert len(chunks(out)) == 3
        forwarder._send(sock, out)
        stats = forwarder.session.stats
        assert stats["send_failures"] == 1 and stats["sends_withdrawn"] == len(out) - 1
        (state,) = forwarder.session.consumer_states(0.1)
        assert state["unreachable"] and state["in_flight"] == 0 and state["credit"] == 3
    finally:
        sock.close(0)
        context.term()


def test_a_consumer_whose_timed_out_chunks_need_no_resend_owes_nothing(tmp_path: Path) -> None:
    """Chunks unanswered past resend_seconds go back to the consumer's credit; when nothing is left to
    send it (the file was confirmed by the required consumers meanwhile) it owes no answer: its
    ``seconds_unanswered`` kept growing (an outside probe), which for a required consumer reads as an
    HPC client that stopped answering. One still silent as its chunks go again keeps its clock."""
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    ledger.run_started("run", 1, 3, "{}")
    path = tmp_path / "run_00000.h5"
    path.write_bytes(bytes(range(256)) * 12)
    size, digest, cut = file_checksums(path, 1024)
    file_id = ledger.file_stored("run", path.name, path, size, digest, (0, 2, 3), cut)
    session = ForwarderSession(ledger, resend_seconds=RESEND)
    session.receive(b"peer-e", frames(p.Hello("evil", 3)), 0.0)
    session.receive(b"peer-h", frames(p.Hello("hpc", 1)), 0.0)
    sent = chunks(session.tick(0.0))
    assert {o.chunk_id for o in sent} and len(sent) == 4  # three to evil, one to hpc

    def unanswered(name: str, now: float) -> float | None:
        return next(c for c in session.consumer_states(now) if c["consumer"] == name)["seconds_unanswered"]

    resent = chunks(session.tick(RESEND + 1))  # both silent: everything goes again, their clocks run on
    assert len(resent) == 4 and unanswered("hpc", RESEND + 2) == RESEND + 2
    assert unanswered("evil", RESEND + 2) == RESEND + 2
    acked_in_ledger(ledger, "hpc")  # (through another connection of hpc's, say)
    session.receive(b"peer-h", frames(p.FileVerified(file_id, size, digest)), RESEND + 3)
    assert chunks(session.tick(2 * RESEND + 2)) == []  # expired again: nothing left to send either
    assert unanswered("evil", 2 * RESEND + 3) is None
    ledger.close()


def test_a_file_changed_past_its_first_chunk_stays_named_until_that_chunk_matches_again(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An outside probe changed a few bytes in the middle of a stored file: its changed chunk was set
    aside and the file named, but the next chunk of it, unchanged, took the file off the list for the
    minute until the changed one was tried again (its run given an ETA, no alarm, meanwhile)."""
    path = tmp_path / "run_00000.h5"
    original = path.read_bytes()
    changed = bytearray(original)
    changed[1024 + 10] ^= 0xFF  # in the second of its three chunks
    path.write_bytes(bytes(changed))
    session = ForwarderSession(ledger)
    connect(session, credit=3)
    sent = chunks(session.tick(0.0))
    assert [c.index for c in sent] == [0, 2]  # the changed one set aside, the others sent
    assert session.stats["local_checksum_mismatches"] == 1
    for chunk in sent:
        ack(session, chunk, 0.5)
    (named,) = session.unreadable_files(1.0)
    assert named["path"] == str(path) and "changed on disk" in named["error"]
    path.write_bytes(original)  # restored: named until the chunk set aside is tried again and matches
    assert len(session.unreadable_files(30.0)) == 1
    assert [c.index for c in chunks(session.tick(61.0))] == [1]
    assert session.unreadable_files(61.0) == []
