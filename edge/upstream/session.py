"""The appliance's side of the upstream protocol as a state machine: messages in, messages out, no socket.

:class:`ForwarderSession` holds every named consumer's credit, the chunks it has in flight and the file
completions it was sent, and decides what to send next. It is driven by three calls, each given the
time: :meth:`~ForwarderSession.receive` (a peer's frames arrived), :meth:`~ForwarderSession.tick` (the
socket was idle or drained: expire, resend, pace by credit, heartbeat) and
:meth:`~ForwarderSession.undeliverable` (the socket could not take a message: give its credit back).
Each returns the :class:`Outgoing` messages for the socket binding (``forwarder.py``) to send, in order.
The cursors themselves live in the ledger, so a consumer that reconnects resumes after its last
acknowledgement; outages, credit and resends are tested by passing messages and times
(``tests/unit/edge/test_forwarder_session.py``).
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.diskguard import is_no_space
from edge.durable import CHECKSUM, checksum_bytes, drop_cached
from edge.errors import NotFound, RemoteProtocolError
from edge.upstream import protocol as p

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
_MAX_ID = (1 << 63) - 1  # chunk and file ids are SQLite INTEGERs
#: chunks one consumer may have outstanding (credit + in flight), whatever credit it grants: 4096 x
#: ``store.chunk_bytes`` is plenty, and the in-flight list stays well inside SQLite's query limits
MAX_CREDIT = 1 << 12
#: bytes of chunks on their way to one consumer at most, whatever its credit: a peer that grants the
#: most credit and reads nothing pins what was sent to it in the appliance's socket queue (4096 chunks
#: of 4 MiB: 16 GiB); the rest of its credit waits until chunks are answered or time out
MAX_IN_FLIGHT_BYTES = 256 << 20
#: seconds a chunk that could not be read (or no longer matches its checksum) waits before it is read again
UNREADABLE_RETRY_SECONDS = 60.0
#: refusals in a row (no chunk acknowledged between them) after which the consumer is refusing
#: everything (its disk is full, its output is gone): it is sent one chunk at a time, after a pause that
#: starts at ``resend_seconds`` and doubles at each refusal, up to ``MAX_HOLD_BACK_SECONDS``, until it
#: takes one. Before this, a full disk on the HPC side had the whole backlog read from the local disk and
#: sent again every ``resend_seconds`` (6 MB/s for a 19 MB backlog)
REFUSING_IN_A_ROW = 8
#: the kinds of file sent to a consumer refusing everything, unless it refused them too: a run's reduced
#: files and documents (its frame table and account: small, and what proves it upstream)
PROOF_KINDS = ("reduced", "documents")
MAX_HOLD_BACK_SECONDS = 60.0
MAX_FILES_HELD = 4096  # files one consumer's refusals hold back at once (each a line of SQL's NOT IN)
#: chunks set aside at most (the ledger's query lists them; SQLite takes 32766 parameters)
MAX_SET_ASIDE = 8192
#: files named in ``unreadable_files`` at most (the status lists each; beyond, only counted)
MAX_UNREADABLE_FILES = 32
#: consumers remembered at most: beyond, the one silent longest that the policy does not require, with
#: nothing in flight, is forgotten (peers saying hello under ever new names grew the status for good)
MAX_CONSUMERS = 64
#: while nothing happens (no message, nothing expired) the ledger is asked for new chunks and completed
#: files at most this often: an idle forwarder ran two queries every 50 ms tick
LEDGER_POLL_SECONDS = 0.25


class ChunkLedger(Protocol):
    """What the session asks of the ledger (``edge.ledger.Ledger`` implements it)."""

    def pending_chunks(
        self,
        consumer: str,
        exclude: Iterable[int],
        limit: int,
        exclude_files: Iterable[int] = (),
        kinds: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]: ...

    def chunks_sent(self, chunk_ids: Sequence[int]) -> None: ...

    def chunk_acked(self, consumer: str, chunk_id: int, checksum: str) -> bool | None: ...

    def file_state(self, file_id: int) -> str | None: ...

    def unbacked_confirmation(
        self, consumer: str, file_id: int, size: int, checksum: str
    ) -> tuple[int, int] | None: ...

    def files_ready_to_verify(self, consumer: str) -> list[dict[str, Any]]: ...

    def file_verified(
        self, consumer: str, file_id: int, size: int, checksum: str, stored_path: str = ""
    ) -> bool | None: ...

    def verified_path(self, file_id: int) -> str | None: ...

    def consumer_refusing(
        self, consumer: str, refused_in_a_row: int, hold_back: float, files: Iterable[int], last_refusal: str
    ) -> None: ...

    def consumer_takes_again(self, consumer: str) -> None: ...

    def consumer_refusals(self, consumer: str) -> dict[str, Any] | None: ...


def read_range(path: str, offset: int, length: int) -> bytes | memoryview:
    """``length`` bytes of the file at ``path`` from ``offset`` (how a chunk's bytes are read).

    The range is mapped, not copied: the chunk is hashed and handed to ZeroMQ (sent without a copy)
    straight from the page cache. A range past the end of the file gives the bytes that are there.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        if length <= 0 or offset + length > size or offset < 0:
            return os.pread(fd, max(length, 0), max(offset, 0))
        mapped = mmap.mmap(fd, offset + length - start, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=start)
    finally:
        os.close(fd)
    # the mapping lives as long as this view (and ZeroMQ's reference to it while it sends)
    return memoryview(mapped)[offset - start :]


_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


@dataclass(frozen=True)
class Outgoing:
    """One message for the socket binding to send to the peer ``identity``."""

    identity: bytes
    message: p.Message
    payload: bytes | memoryview | None = None


@dataclass
class ConsumerState:
    """One named consumer as the session sees it: its peer identity, credit and what is outstanding."""

    name: str
    identity: bytes
    credit: int
    last_seen: float
    in_flight: dict[int, float] = field(default_factory=dict)  # chunk id -> when sent
    sizes: dict[int, int] = field(default_factory=dict)  # chunk id -> bytes, for those sent (pruned)
    completes_sent: dict[int, float] = field(default_factory=dict)  # file id -> when sent
    connects: int = 1
    connected_at: float = 0.0  # when it said hello on this connection
    #: when it began taking chunks: its hello, or its first chunk taken after refusing everything (the
    #: outlook's rate window starts there: the pause it was held back is no rate of the link)
    flowing_at: float = 0.0
    #: a send to it failed (peer gone, or its queue full): nothing more is read and sent to it until it is
    #: heard from again (an HPC outage would otherwise re-read chunks from disk every tick)
    unreachable: bool = False
    held: dict[int, float] = field(default_factory=dict)  # chunk id -> not resent before (nacked again)
    #: file id -> (no chunk of it is sent before, the pause that gave): a file two or more of whose chunks
    #: it refused (none of them taken since) waits, each refusal twice as long (at most
    #: MAX_HOLD_BACK_SECONDS), while its other files go on: one file too big for its disk must not hold
    #: back the smaller ones that fit
    files_held: dict[int, tuple[float, float]] = field(default_factory=dict)
    file_refusals: dict[int, set[int]] = field(default_factory=dict)  # file id -> its chunks refused
    chunk_files: dict[int, int] = field(default_factory=dict)  # chunk id -> file id, for those in flight
    nacks: Counter[int] = field(default_factory=Counter)  # chunk id -> times rejected
    refusals: int = 0  # nacks from it since the daemon started
    last_refusal: str = ""  # the reason of the newest one (its own words, cut to 200 characters)
    last_refusal_at: float | None = None
    #: since when it owes an answer: chunks were sent to it and none was acknowledged or refused since
    #: (None: it owes nothing). A consumer that heartbeats but answers no chunk stalls delivery unseen
    unanswered_since: float | None = None
    refused_in_a_row: int = 0  # refusals since it last acknowledged a chunk
    hold_back: float = 0.0  # seconds of the pause before its next chunk, once it refuses everything
    held_back_until: float = 0.0  # no chunk goes to it before (see ``REFUSING_IN_A_ROW``)

    @property
    def refusing_everything(self) -> bool:
        return self.refused_in_a_row >= REFUSING_IN_A_ROW


#: the parts of a consumer's state that outlive its connection (a reconnect under the same name)
_REFUSAL_STATE = (
    "held",
    "nacks",
    "refusals",
    "last_refusal",
    "last_refusal_at",
    "refused_in_a_row",
    "hold_back",
    "held_back_until",
    "files_held",
    "file_refusals",
)


class ForwarderSession:
    """Upstream protocol state of the appliance (the ROUTER end), for any number of named consumers.

    A chunk costs one credit when it is handed out and returns it when acknowledged, rejected (Nack),
    undeliverable, or not acknowledged within ``resend_seconds`` (then it is sent again). A
    ``FileComplete`` is repeated every ``resend_seconds`` until the consumer answers. The ledger is asked
    for work on every tick after a message or an expiry, otherwise at most every ``poll_seconds`` (new
    files are registered by another thread). ``corrupt`` is fault injection: the probability that a
    chunk's bytes are damaged after their checksum is taken.
    """

    def __init__(
        self,
        ledger: ChunkLedger,
        *,
        resend_seconds: float = 10.0,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        appliance_id: str = "edge",
        corrupt: float = 0.0,
        seed: int = 0,
        read_chunk: Callable[[str, int, int], bytes | memoryview] = read_range,
        poll_seconds: float = LEDGER_POLL_SECONDS,
        settled: Callable[[str], object] = drop_cached,
    ) -> None:
        if resend_seconds <= 0 or heartbeat_seconds <= 0:
            raise ValueError("resend_seconds and heartbeat_seconds must be > 0")
        self.ledger = ledger
        self.resend_seconds = resend_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.appliance_id = appliance_id
        self.corrupt = corrupt
        self._rng = random.Random(seed)
        self._read_chunk = read_chunk
        self._settled = settled  # given each file's path once every required consumer confirmed it
        self.poll_seconds = poll_seconds
        self._changed = True  # something happened since the ledger was last asked for work
        # chunk id -> when to read it again: a chunk that could not be read or no longer matches its
        # checksum (a file damaged or gone on the local disk) is set aside a while, so that it does not
        # take the consumer's whole credit on every look and starve every file after it
        self._unreadable: dict[int, float] = {}
        # path -> what the operator must see about it: the error, since when, and when last tried; kept
        # until one of its chunks is read and matches again (the alarm names the file meanwhile)
        self._unreadable_files: dict[str, dict[str, Any]] = {}
        self._asked_at: float | None = None
        self.stats: Counter[str] = Counter()
        self.consumers: dict[str, ConsumerState] = {}
        self._by_identity: dict[bytes, str] = {}
        self._last_heartbeat: float | None = None
        # consumer -> chunk id -> times sent, until acknowledged: a second send is a resend, counted apart
        # (chunks_resent, bytes_resent) so a rate from bytes_sent never counts data going round again
        self._sends: dict[str, dict[int, int]] = {}

    # -- input ------------------------------------------------------------------------------------------
    def receive(
        self, identity: bytes, frames: list[bytes], now: float, key_name: str | None = None
    ) -> list[Outgoing]:
        """A peer sent ``frames``; returns the replies (a Welcome, or an Error for a malformed message).

        ``key_name``: over CURVE, the one consumer name the peer's key speaks for (None: no CURVE)."""
        self.stats["messages_received"] += 1
        try:
            message, _payload = p.decode(frames)
        except RemoteProtocolError as error:
            self.stats["protocol_errors"] += 1
            reason = p.printable(str(error))  # the error may quote the peer's input
            log.warning("bad upstream message: %s", reason)
            return [Outgoing(identity, p.Error(reason))]
        if isinstance(message, p.Hello):
            self._changed = True
            return self._hello(identity, message, now, key_name)
        name = self._by_identity.get(identity)
        consumer = self.consumers.get(name) if name else None
        if consumer is None:
            self.stats["messages_from_unknown_peer"] += 1
            return []
        consumer.last_seen = now
        consumer.unreachable = False
        self._changed = True
        ident = getattr(message, "chunk_id", getattr(message, "file_id", 0))
        if not 0 <= ident <= _MAX_ID:  # no such chunk or file; beyond SQLite's INTEGER besides
            self.stats["unknown_ids"] += 1
            return []
        if isinstance(message, p.Ack):
            in_flight = consumer.in_flight.pop(message.chunk_id, None) is not None
            if in_flight:
                consumer.credit += 1
            recorded = self.ledger.chunk_acked(consumer.name, message.chunk_id, message.checksum)
            if recorded is False:  # not recorded: the chunk goes again, counted as a resend
                self.stats["acks_rejected"] += 1
                if in_flight:  # it holds other bytes than ours: a refusal of what was sent, as a nack
                    self._refused(
                        consumer,
                        message.chunk_id,
                        now,
                        "acknowledged with a checksum that is not the chunk's",
                    )
                return []
            consumer.unanswered_since = now if consumer.in_flight else None
            if recorded:  # (an acknowledgement repeated changes nothing and is not counted again)
                self.stats["chunks_acked"] += 1
            self._sends.get(consumer.name, {}).pop(message.chunk_id, None)  # its next send is a first
            consumer.held.pop(message.chunk_id, None)
            consumer.nacks.pop(message.chunk_id, None)
            taken = consumer.chunk_files.get(message.chunk_id)
            if (
                consumer.refusing_everything
                and consumer.file_refusals
                and taken not in consumer.file_refusals
            ):
                # a file it never refused, taken while it refuses the others (the small may fit on a disk
                # the big no longer do): they are held back still, but tried now, one chunk, as space may
                # be back (it is taken: all go at once, below; refused: the pauses grow on)
                consumer.held_back_until = min(consumer.held_back_until, now)
                consumer.files_held = {
                    f: (min(until, now), pause) for f, (until, pause) in consumer.files_held.items()
                }
                return []
            # several files refused: the consumer's trouble (its disk full), not one file's (too big)
            several_refused = len(consumer.file_refusals) > 1
            if taken is not None:  # it takes that file's chunks again
                consumer.files_held.pop(taken, None)
                consumer.file_refusals.pop(taken, None)
            if consumer.refusing_everything:
                log.info(
                    "consumer %s takes chunks again, after %d refusals in a row",
                    consumer.name,
                    consumer.refused_in_a_row,
                )
                self._remember(consumer, refusing=False)
                consumer.flowing_at = now
            if consumer.refusing_everything and several_refused:
                # what refused every file (its disk full) is gone: the files and chunks it held back go
                # now, not after their own pauses (an outside probe: the first file refused arrived a
                # minute after those stored since, the outlook saying "delivering"). Refusals of one
                # file only are that file's: it keeps its pause (one too big for the consumer)
                consumer.files_held.clear()
                consumer.file_refusals.clear()
                consumer.held.clear()
            consumer.refused_in_a_row, consumer.hold_back, consumer.held_back_until = 0, 0.0, 0.0
        elif isinstance(message, p.Nack):
            if consumer.in_flight.pop(message.chunk_id, None) is None:
                # nothing of it pending (never sent to this consumer, acknowledged already, or timed out
                # and answered late): not a refusal of anything, and not a log line each (a peer's flood)
                self.stats["nacks_not_in_flight"] += 1
                if self.stats["nacks_not_in_flight"] % 1000 == 1:
                    log.info(
                        "consumer %s rejected chunk %d, which is not in flight to it (%d such so far): %s",
                        consumer.name,
                        message.chunk_id,
                        self.stats["nacks_not_in_flight"],
                        p.printable(message.reason),
                    )
                return []
            consumer.credit += 1
            self.stats["chunks_nacked"] += 1
            # shown in the log and the dashboard: escaped
            self._refused(consumer, message.chunk_id, now, p.printable(message.reason))
        elif isinstance(message, p.Credit):
            room = MAX_CREDIT - len(consumer.in_flight)  # credit and chunks in flight together
            consumer.credit = max(consumer.credit, min(consumer.credit + max(0, message.n), room))
        elif isinstance(message, p.FileVerified):
            problem = p.stored_path_problem(message.stored_path)
            if problem is not None:
                # it would be recorded and printed raw by `edge where` (a forged line, a terminal escape):
                # the file stays unconfirmed by this consumer, and its file_complete is repeated as if
                # unanswered, so a fixed client can confirm it
                self.stats["bad_stored_paths"] += 1
                log.warning(
                    "consumer %s confirmed file %d with a stored_path refused (%s): %r",
                    consumer.name,
                    message.file_id,
                    problem,
                    message.stored_path[:200],
                )
                return [Outgoing(identity, p.Error(problem))]
            unbacked = self.ledger.unbacked_confirmation(
                consumer.name, message.file_id, message.size, message.checksum
            )
            if unbacked is not None:
                # a matching confirmation from a consumer that has not acknowledged every chunk of the file
                # cannot come from one holding it (an outside probe confirmed 3 files with the checksums the
                # read API serves, one chunk received: they were purged, their data nowhere; another
                # confirmed verified and purged files, then made required). Refused; nothing is recorded,
                # and a file still here keeps going to the consumer
                acked, chunks = unbacked
                self.stats["confirmations_before_chunks"] += 1
                log.warning(
                    "consumer %s confirmed file %d having acknowledged %d of its %d chunks: refused",
                    consumer.name,
                    message.file_id,
                    acked,
                    chunks,
                )
                why = (
                    f"file_verified for file {message.file_id} whose chunks {consumer.name} has not all"
                    f" acknowledged ({acked} of {chunks}): confirm a file after its file_complete"
                )
                return [Outgoing(identity, p.Error(why))]
            consumer.completes_sent.pop(message.file_id, None)
            try:
                matches = self.ledger.file_verified(
                    consumer.name, message.file_id, message.size, message.checksum, message.stored_path
                )
            except NotFound:
                self.stats["unknown_ids"] += 1
                return []
            if matches:
                self.stats["files_verified"] += 1
                path = self.ledger.verified_path(message.file_id)
                if path is not None:  # the forwarder is done reading it: its pages go back to the kernel
                    self._settled(path)
            elif matches is None:  # it confirmed this file before: that stands, nothing is resent
                self.stats["confirmations_contradicted"] += 1
                log.warning(
                    "consumer %s confirmed file %d earlier and now sends another checksum or size: its"
                    " first confirmation stands",
                    consumer.name,
                    message.file_id,
                )
            else:
                self.stats["files_mismatched"] += 1
                if self.ledger.file_state(message.file_id) == "purged":  # nothing left here to send
                    log.warning(
                        "consumer %s holds a different file %d, which was purged here after the required"
                        " consumers verified it: it cannot be sent again",
                        consumer.name,
                        message.file_id,
                    )
                else:
                    log.warning(
                        "consumer %s holds a different file %d: resending it", consumer.name, message.file_id
                    )
        elif not isinstance(message, p.Heartbeat):
            self.stats["unexpected_messages"] += 1
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Expire unanswered chunks, hand out chunks and file completions as credit allows, heartbeat."""
        out: list[Outgoing] = []
        for consumer in list(self.consumers.values()):
            if self._expire(consumer, now):
                self._changed = True
        asked = self._asked_at
        if self._changed or asked is None or not 0 <= now - asked < self.poll_seconds:
            self._changed, self._asked_at = False, now
            for consumer in list(self.consumers.values()):
                out += self._chunks(consumer, now)
                out += self._completes(consumer, now)
                if not consumer.in_flight:  # its timed-out chunks went nowhere again: it owes no answer
                    consumer.unanswered_since = None
        return out + self.heartbeats(now)

    def heartbeats(self, now: float) -> list[Outgoing]:
        """A heartbeat to each reachable consumer when one is due (`tick` sends them; while sending is
        paused, the forwarder asks for them alone)."""
        if self._last_heartbeat is not None and now - self._last_heartbeat < self.heartbeat_seconds:
            return []
        self._last_heartbeat = now
        # not to a consumer whose last send failed: it speaks first when it is back (no failed send every
        # 2 s for every consumer that went away)
        return [Outgoing(c.identity, p.Heartbeat()) for c in self.consumers.values() if not c.unreachable]

    def undeliverable(self, outgoing: Outgoing, attempted: bool = True) -> None:
        """The socket could not take ``outgoing`` (peer gone, its queue full): undo what sending it cost.
        ``attempted`` False: it was never tried, its consumer's send having failed before it in the same
        look (counted in ``sends_withdrawn``, not as a failure: a full queue is one failure, however
        many messages were waiting behind it; an outside probe saw 3596 "failures" for one)."""
        self.stats["send_failures" if attempted else "sends_withdrawn"] += 1
        self._changed = True
        name = self._by_identity.get(outgoing.identity)
        consumer = self.consumers.get(name) if name else None
        if consumer is None:
            return
        consumer.unreachable = True
        message = outgoing.message
        # the counters of what was sent stay as they are (they only ever grow: Prometheus counters): a
        # chunk tried again counts as resent, a completion as sent again (docs/upstream.md section 12)
        if isinstance(message, p.Chunk):
            if consumer.in_flight.pop(message.chunk_id, None) is not None:
                consumer.credit += 1
            if not consumer.in_flight:  # it never got it: it owes no answer for it
                consumer.unanswered_since = None
        elif isinstance(message, p.FileComplete):
            consumer.completes_sent.pop(message.file_id, None)

    # -- views ------------------------------------------------------------------------------------------
    def consumer_states(self, now: float) -> list[dict[str, Any]]:
        """Each consumer's credit, chunks in flight, whether it was heard from recently, and the chunks
        it refused (with the newest refusal's reason: a consumer whose disk is full says so here)."""
        return [
            {
                "consumer": c.name,
                "credit": c.credit,
                "in_flight": len(c.in_flight),
                "connects": c.connects,
                "connected_seconds": round(now - c.connected_at, 3),
                "flowing_seconds": round(now - c.flowing_at, 3),
                "seconds_since_seen": round(now - c.last_seen, 3),
                # (a send that failed since says otherwise: an outside probe saw connected and unreachable
                # both true, the consumer's connection dropped by ZeroMQ for an oversized part)
                "connected": now - c.last_seen < 3 * self.heartbeat_seconds and not c.unreachable,
                "unreachable": c.unreachable,
                "chunks_refused": c.refusals,
                "last_refusal": c.last_refusal or None,
                "seconds_since_refusal": None
                if c.last_refusal_at is None
                else round(now - c.last_refusal_at, 3),
                "seconds_unanswered": None
                if c.unanswered_since is None
                else round(now - c.unanswered_since, 3),
                "refused_in_a_row": c.refused_in_a_row,
                # it refuses everything: sent one chunk at a time, the next after this many seconds
                "held_back": c.refusing_everything,
                "held_back_seconds": round(max(0.0, c.held_back_until - now), 3),
            }
            for c in self.consumers.values()
        ]

    def unreadable_files(self, now: float) -> list[dict[str, Any]]:
        """The stored files, not yet verified, that cannot be sent as they are on the local disk (gone,
        unreadable, or changed since their checksum was taken), each with its error, oldest first."""
        return [
            {
                "path": path,
                "error": info["error"],
                "seconds_since": round(now - info["since"], 3),
                "seconds_since_tried": round(now - info["last_tried"], 3),
            }
            for path, info in self._unreadable_files.items()
        ]

    # -- steps ------------------------------------------------------------------------------------------
    def _hello(
        self, identity: bytes, hello: p.Hello, now: float, key_name: str | None = None
    ) -> list[Outgoing]:
        if not p.CONSUMER_NAME.fullmatch(hello.consumer):
            self.stats["bad_consumer_names"] += 1
            return [Outgoing(identity, p.Error("consumer name: 1 to 64 of A-Z a-z 0-9 _ . -"))]
        if key_name is not None and hello.consumer != key_name:
            # (whatever name this connection already speaks for, it keeps)
            self.stats["names_refused_by_key"] += 1
            log.warning(
                "a client with the CURVE key of %r said hello as %r: refused", key_name, hello.consumer
            )
            return [
                Outgoing(
                    identity, p.Error(f"consumer {hello.consumer}: this key speaks for {key_name!r} only")
                )
            ]
        out: list[Outgoing] = []
        old = self.consumers.get(hello.consumer)
        if old is not None:  # a reconnect: what was in flight to the old peer is sent again
            self._by_identity.pop(old.identity, None)
            self.stats["consumer_reconnects"] += 1
            if old.identity != identity and now - old.last_seen < 3 * self.heartbeat_seconds:
                # another connection, and the old one was alive: two clients use one name; tell it
                self.stats["consumer_taken_over"] += 1
                log.warning("consumer %s: a second connection took the name over", hello.consumer)
                out.append(Outgoing(old.identity, p.Error(f"consumer {hello.consumer} {p.TAKEN_OVER}")))
        credit = min(max(1, hello.credit), MAX_CREDIT)
        state = ConsumerState(
            hello.consumer, identity, credit, last_seen=now, connected_at=now, flowing_at=now
        )
        state.connects = (old.connects + 1) if old else 1
        if old is not None:
            # what it refused stays with the name: a client restarted while held back (its disk still
            # full) waits out the pause it was given, and its refusals count on (a counter never goes down)
            for kept in _REFUSAL_STATE:
                setattr(state, kept, getattr(old, kept))
        else:
            self._recall(state, now)
        self.consumers[hello.consumer] = state
        self._by_identity[identity] = hello.consumer
        self._forget_silent(now)
        if credit == hello.credit:
            log.info("consumer %s connected (credit %d)", hello.consumer, credit)
        else:  # the credit it asked for comes from the network: any size, so its digits are cut
            asked = str(hello.credit)
            if len(asked) > 24:
                asked = f"{asked[:20]}... ({len(asked.lstrip('-'))} digits)"
            log.info("consumer %s connected (credit %d; it asked for %s)", hello.consumer, credit, asked)
        return [Outgoing(identity, p.Welcome(self.appliance_id, CHECKSUM)), *out]

    def _remember(self, consumer: ConsumerState, refusing: bool) -> None:
        """Keep in the ledger whether a consumer refuses everything (and what), so that a restarted daemon
        holds it back still and sends the runs' reduced files and documents first, not the big data files
        that could take the last of its space. A ledger that cannot record it (its disk full too) costs
        only that: counted in ``refusals_not_kept``, logged once."""
        try:
            if refusing:
                self.ledger.consumer_refusing(
                    consumer.name,
                    consumer.refused_in_a_row,
                    consumer.hold_back,
                    consumer.file_refusals.keys(),
                    consumer.last_refusal,
                )
            else:
                self.ledger.consumer_takes_again(consumer.name)
        except sqlite3.Error as error:
            self.stats["refusals_not_kept"] += 1
            if self.stats["refusals_not_kept"] == 1:
                log.warning("cannot keep consumer %s's refusals in the ledger: %s", consumer.name, error)

    def _recall(self, consumer: ConsumerState, now: float) -> None:
        """A consumer first heard from since the daemon started, which refused everything when last heard
        from: it is held back still (its pause over: one chunk of what it refused goes, after the runs'
        reduced files and documents it did not refuse). Its first chunk taken ends that, as ever."""
        try:
            kept = self.ledger.consumer_refusals(consumer.name)
        except sqlite3.Error as error:
            log.warning("cannot read consumer %s's refusals from the ledger: %s", consumer.name, error)
            return
        if kept is None:
            return
        consumer.refused_in_a_row = max(REFUSING_IN_A_ROW, int(kept["refused_in_a_row"]))
        consumer.hold_back = max(0.0, min(float(kept["hold_back"]), MAX_HOLD_BACK_SECONDS))
        consumer.held_back_until = now
        consumer.file_refusals = {int(f): set() for f in kept["files"][-MAX_FILES_HELD:]}
        consumer.last_refusal = str(kept["last_refusal"])
        consumer.last_refusal_at = now - max(0.0, time.time() - float(kept["at"]))
        log.warning(
            "consumer %s refused every chunk when last heard from (%d in a row, the newest: %s): it is held"
            " back still, the runs' reduced files and documents first, until it takes a chunk",
            consumer.name,
            consumer.refused_in_a_row,
            consumer.last_refusal,
        )

    def _next_pause(self, pause: float) -> float:
        """The pause after one of ``pause`` seconds (0: none yet) was met by another refusal: from
        ``resend_seconds``, doubling, at most ``MAX_HOLD_BACK_SECONDS`` (or ``resend_seconds``)."""
        if pause == 0:
            return self.resend_seconds
        return min(2 * pause, max(MAX_HOLD_BACK_SECONDS, self.resend_seconds))

    def _refused(self, consumer: ConsumerState, chunk_id: int, now: float, reason: str) -> None:
        """The consumer refused chunk ``chunk_id``, in flight to it (its credit back already): the first
        refusal of a chunk has it resent at once (a bit flipped on the way); a chunk refused again waits
        resend_seconds each time (a consumer that cannot take it is not flooded), and a consumer that
        refuses ``REFUSING_IN_A_ROW`` chunks in a row is sent one at a time, after growing pauses."""
        consumer.nacks[chunk_id] += 1
        if consumer.nacks[chunk_id] > 1:
            consumer.held[chunk_id] = now + self.resend_seconds
        file_id = consumer.chunk_files.get(chunk_id)
        if file_id is not None:
            refused = consumer.file_refusals.setdefault(file_id, set())
            refused.add(chunk_id)
            if len(refused) > 1:  # another chunk of it refused: the file, not a bit flipped on the way
                pause = self._next_pause(consumer.files_held.get(file_id, (0.0, 0.0))[1])
                consumer.files_held[file_id] = (now + pause, pause)
            for kept in (consumer.files_held, consumer.file_refusals):  # the oldest forgotten first
                while len(kept) > MAX_FILES_HELD:
                    del kept[next(iter(kept))]
        consumer.unanswered_since = now if consumer.in_flight else None  # an answer, if a refusal
        consumer.refusals += 1
        consumer.last_refusal, consumer.last_refusal_at = reason, now
        consumer.refused_in_a_row += 1
        if consumer.refusing_everything and now >= consumer.held_back_until:
            # a refusal of a chunk sent after the last pause (or the one that makes it everything): the
            # next pause is longer; refusals of chunks sent before the pause began change nothing
            first = consumer.hold_back == 0
            consumer.hold_back = self._next_pause(consumer.hold_back)
            consumer.held_back_until = now + consumer.hold_back
            self.stats["consumer_hold_backs"] += 1
            self._remember(consumer, refusing=True)
            if first:
                log.warning(
                    "consumer %s refused %d chunks in a row (the newest: %s): it is sent one chunk at a"
                    " time, after a pause of %.0f s doubling at each refusal (at most %.0f s), until it"
                    " takes one",
                    consumer.name,
                    consumer.refused_in_a_row,
                    reason,
                    consumer.hold_back,
                    max(MAX_HOLD_BACK_SECONDS, self.resend_seconds),
                )
            return
        if consumer.refusing_everything:  # held back already: one line per refusal is a flood
            self._remember(consumer, refusing=True)  # (its count as a restart will find it)
            return
        log.warning("consumer %s rejected chunk %d: %s", consumer.name, chunk_id, reason)

    def _forget_silent(self, now: float) -> None:
        """Keep at most `MAX_CONSUMERS` consumers: forget those silent longest (not connected, nothing in
        flight, not required by ``upstream.required_consumers``), counted in ``consumers_forgotten``."""
        required = set(getattr(self.ledger, "required_consumers", ()))
        while len(self.consumers) > MAX_CONSUMERS:
            idle = [
                c
                for c in self.consumers.values()
                if c.name not in required
                and not c.in_flight
                and now - c.last_seen >= 3 * self.heartbeat_seconds
            ]
            if not idle:
                return
            oldest = min(idle, key=lambda c: c.last_seen)
            del self.consumers[oldest.name]
            self._by_identity.pop(oldest.identity, None)
            self._sends.pop(oldest.name, None)
            self.stats["consumers_forgotten"] += 1

    def _expire(self, consumer: ConsumerState, now: float) -> bool:
        """Give back the credit of chunks unanswered for ``resend_seconds``; True if there were any."""
        expired = False
        for chunk_id, sent in list(consumer.in_flight.items()):
            if now - sent > self.resend_seconds:
                del consumer.in_flight[chunk_id]
                consumer.credit += 1
                self.stats["chunks_timed_out"] += 1
                expired = True
        return expired

    def _set_aside(self, chunk_id: int, path: str, error: str, now: float) -> None:
        """A chunk that cannot be sent as it is on disk: tried again after ``UNREADABLE_RETRY_SECONDS``
        (at most ``MAX_SET_ASIDE`` at a time, the oldest tried again first), the next ones sent meanwhile.
        Its file is named in ``unreadable_files`` until every chunk of it set aside is read and matches
        again (any chunk of it matching took it off the list: a file changed past its first chunk was
        named for a moment, then not for a minute, its run given an ETA meanwhile: an outside probe)."""
        self._unreadable[chunk_id] = now + UNREADABLE_RETRY_SECONDS
        known = self._unreadable_files.get(path)
        if known is not None:
            known.update(error=error[:200], last_tried=now)
            known["chunks"].add(chunk_id)
        elif len(self._unreadable_files) < MAX_UNREADABLE_FILES:
            self._unreadable_files[path] = {
                "error": error[:200],
                "since": now,
                "last_tried": now,
                "chunks": {chunk_id},
            }
        else:
            self.stats["unreadable_files_unnamed"] += 1
        while len(self._unreadable) > MAX_SET_ASIDE:
            del self._unreadable[next(iter(self._unreadable))]
        self.stats["chunks_set_aside"] += 1
        self._changed = True  # the next look asks past it

    def _chunks(self, consumer: ConsumerState, now: float) -> list[Outgoing]:
        if consumer.credit <= 0 or consumer.unreachable:
            return []
        for chunk_id, until in list(consumer.held.items()):
            if now >= until:
                del consumer.held[chunk_id]
        out: list[Outgoing] = []
        consumer.sizes = {c: consumer.sizes[c] for c in consumer.in_flight if c in consumer.sizes}
        consumer.chunk_files = {c: f for c, f in consumer.chunk_files.items() if c in consumer.in_flight}
        held_files = [f for f, (until, _pause) in consumer.files_held.items() if until > now]
        room = MAX_IN_FLIGHT_BYTES - sum(consumer.sizes.values())
        self._unreadable = {c: until for c, until in self._unreadable.items() if until > now}
        skip = [*consumer.in_flight, *consumer.held, *self._unreadable]
        if consumer.refusing_everything:
            # a run's reduced files and documents it never refused go meanwhile (small, and what proves the
            # run's account upstream: an outside probe saw them wait a minute behind the big data files a
            # full disk refused); the rest, one chunk after each pause, to see whether it takes them now
            refused = consumer.file_refusals.keys() | set(held_files)
            probing = any(consumer.chunk_files.get(c) in consumer.file_refusals for c in consumer.in_flight)
            rows = self.ledger.pending_chunks(
                consumer.name, skip, consumer.credit, sorted(refused), kinds=PROOF_KINDS
            )
            if not rows and now >= consumer.held_back_until and not probing:
                rows = self.ledger.pending_chunks(consumer.name, skip, 1, held_files)
        else:
            rows = self.ledger.pending_chunks(consumer.name, skip, consumer.credit, held_files)
        for row in rows:
            if int(row["length"]) > room and (consumer.in_flight or out):
                self.stats["sends_held_in_flight_bytes"] += 1  # its credit waits for answers
                break
            room -= int(row["length"])
            try:
                payload = self._read_chunk(row["path"], row["offset"], row["length"])
            except OSError as error:
                self.stats["chunk_read_errors"] += 1
                log.error("cannot read chunk %d of %s: %s", row["id"], row["path"], error)
                self._set_aside(int(row["id"]), str(row["path"]), p.printable(str(error)), now)
                continue
            if checksum_bytes(payload) != row["checksum"]:
                self.stats["local_checksum_mismatches"] += 1
                log.error("local file %s changed on disk (chunk %d)", row["path"], row["id"])
                self._set_aside(int(row["id"]), str(row["path"]), "changed on disk since it was stored", now)
                continue
            named = self._unreadable_files.get(str(row["path"]))
            if named is not None:  # readable again (restored) once every chunk set aside is
                named["chunks"].discard(int(row["id"]))
                if not named["chunks"]:
                    del self._unreadable_files[str(row["path"])]
            message = p.Chunk(
                chunk_id=row["id"],
                file_id=row["file_id"],
                run_uid=row["run_uid"],
                file_name=row["name"],
                file_size=row["file_size"],
                index=row["idx"],
                file_chunks=row["file_chunks"],
                offset=row["offset"],
                length=row["length"],
                checksum=row["checksum"],
            )
            if self.corrupt and self._rng.random() < self.corrupt:
                damaged = bytearray(payload)
                damaged[self._rng.randrange(len(damaged))] ^= 0xFF
                payload = bytes(damaged)
                self.stats["chunks_corrupted_injected"] += 1
            consumer.in_flight[message.chunk_id] = now
            consumer.sizes[message.chunk_id] = message.length
            consumer.chunk_files[message.chunk_id] = message.file_id
            if consumer.unanswered_since is None:
                consumer.unanswered_since = now
            consumer.credit -= 1
            sends = self._sends.setdefault(consumer.name, {})
            sends[message.chunk_id] = sends.get(message.chunk_id, 0) + 1
            kind = "sent" if sends[message.chunk_id] == 1 else "resent"
            self.stats[f"chunks_{kind}"] += 1
            self.stats[f"bytes_{kind}"] += message.length
            out.append(Outgoing(consumer.identity, message, payload))
        try:
            self.ledger.chunks_sent([o.message.chunk_id for o in out if isinstance(o.message, p.Chunk)])
        except sqlite3.OperationalError as error:  # their mark "forwarded" waits; they go out all the same
            if not is_no_space(error):
                raise
            self.stats["ledger_writes_refused_disk_full"] += 1
        return out

    def _completes(self, consumer: ConsumerState, now: float) -> list[Outgoing]:
        if consumer.unreachable:
            return []
        out: list[Outgoing] = []
        for row in self.ledger.files_ready_to_verify(consumer.name):
            sent = consumer.completes_sent.get(row["id"])
            if sent is not None and now - sent < self.resend_seconds:
                continue
            message = p.FileComplete(row["id"], row["run_uid"], row["name"], row["size"], row["checksum"])
            consumer.completes_sent[message.file_id] = now
            self.stats["file_completes_sent"] += 1
            out.append(Outgoing(consumer.identity, message))
        return out
