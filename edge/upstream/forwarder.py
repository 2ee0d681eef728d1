"""The appliance's side of the upstream protocol: a ROUTER that serves stored chunks to named consumers.

Each consumer (one HPC pull client, or several) keeps its own cursor in the ledger: whatever it has not
acknowledged is sent again after a reconnect or a timeout. Sending is paced by the credit the client
grants. A file becomes ``verified`` once every consumer the policy requires returns its checksum.

All of that is decided by :class:`~edge.upstream.session.ForwarderSession`, which never touches a
socket; this module is the thin binding that owns the ZeroMQ ROUTER and a thread, feeds the session what
arrives with the time, and sends what it returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.diskguard import DiskGuard, is_no_space
from edge.ledger import Ledger
from edge.upstream import protocol as p
from edge.upstream.curve import serve_securely
from edge.upstream.session import HEARTBEAT_SECONDS, ConsumerState, ForwarderSession, Outgoing
from firmware_bridge.source import Checkpoint, Spawner, plain_spawn

#: the largest message part a consumer may send (ZeroMQ MAXMSGSIZE on the forwarder's socket)
MAX_INBOUND_BYTES = p.MAX_HEADER_BYTES + 1024

log = logging.getLogger(__name__)

__all__ = ["HEARTBEAT_SECONDS", "ConsumerState", "Forwarder"]


LEDGER_FULL_PAUSE = 1.0  # seconds nothing is sent after the ledger refused to record (disk full)
LEDGER_FULL_MAX_PAUSE = 30.0  # ... doubling while the refusals go on, up to this


class Forwarder:
    """Serves the ledger's stored chunks over a ZeroMQ ROUTER socket, in its own thread."""

    def __init__(
        self,
        endpoint: str,
        ledger: Ledger,
        context: zmq.Context,
        resend_seconds: float = 10.0,
        appliance_id: str = "edge",
        corrupt: float = 0.0,
        seed: int = 0,
        curve: tuple[Path, Path] | None = None,
        clock: Callable[[], float] = time.monotonic,
        disk: DiskGuard | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.disk = disk  # its ledger reserve is given up for the consumers' confirmations
        self.ledger = ledger
        self.context = context
        self.curve = curve  # (secret key file, allowed clients dir) to require CurveZMQ
        self.session = ForwarderSession(
            ledger,
            resend_seconds=resend_seconds,
            appliance_id=appliance_id,
            corrupt=corrupt,
            seed=seed,
        )
        self._clock = clock
        self._auth: Any = None
        self._monitor: zmq.Socket | None = None  # the socket's handshake failures (over CURVE only)
        # when a failed handshake of each kind ("plain": a client without CurveZMQ; "failed": any other)
        # may be logged again: one kind's line never takes the other's minute
        self._handshake_logged: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: zmq.Socket | None = None
        self._lock = threading.Lock()  # the session is driven by the thread and read by counters()
        self._full_logged = 0.0  # when a refused ledger write may be logged again
        self._full_at: float | None = None  # when the ledger last refused a write (disk full)
        self._pause_until = 0.0  # no chunk goes out before: the ledger could not record the last answers
        self._full_pause = LEDGER_FULL_PAUSE  # the pause after the last refusal (doubling while they go on)
        self.bound_endpoint: str | None = None

    @property
    def stats(self) -> Any:
        return self.session.stats

    @property
    def consumers(self) -> dict[str, ConsumerState]:
        return self.session.consumers

    def start(self, spawn: Spawner = plain_spawn) -> None:
        """Bind now (so a busy port fails the start, loudly) and serve on a thread started by ``spawn``."""
        sock = self.context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.router_mandatory = True
        # a consumer sends headers only (hello, credit, acks, file_verified: at most MAX_HEADER_BYTES):
        # a larger part is never buffered, libzmq drops that connection and the consumer reconnects
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
        if self.curve is not None:
            self._auth = serve_securely(self.context, sock, *self.curve)
            # a client that does not speak CurveZMQ at all (no keys) fails the handshake before the key
            # check: seen only on the socket's monitor (an outside probe found no trace of it)
            self._monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            )
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as error:
            self._close_monitor(sock)
            sock.close(0)
            raise OSError(f"cannot serve upstream on {self.endpoint}: {error}") from error
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._thread = spawn("forwarder", lambda checkpoint: self._run(sock, checkpoint))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:  # closed here, not by the thread, which may be restarted on it
            self._close_monitor(self._sock)
            self._sock.close(0)
            self._sock = None
        if self._auth is not None:
            self._auth.stop()

    def counters(self) -> dict[str, Any]:
        with self._lock:
            stats = {k: int(v) for k, v in self.session.stats.items()}
            consumers = self.session.consumer_states(self._clock())
            unreadable = self.session.unreadable_files(self._clock())
        return {
            "endpoint": self.bound_endpoint,
            **stats,
            "ledger_refusing": self.ledger_refusing(),
            # over CURVE: handshakes of keys not admitted (the client sees only silence)
            "curve_handshakes_refused": self._auth.keyring.refused if self._auth is not None else 0,
            # over CURVE: connections of a client without keys (no CurveZMQ at all), and other failed
            # handshakes, seen on the socket's monitor
            "curve_handshakes_without_curve": stats.get("curve_handshakes_without_curve", 0),
            "handshakes_failed": stats.get("handshakes_failed", 0),
            "consumers": consumers,
            "unreadable_files": unreadable,
        }

    def _close_monitor(self, sock: zmq.Socket) -> None:
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None

    def _handshakes_failed(self) -> None:
        """Count (and log, once a minute) the handshakes the monitor saw fail: a client without CurveZMQ
        keys retries every few seconds, each one refused."""
        monitor = self._monitor
        while monitor is not None:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            value = int(event.get("value") or 0)
            protocol = event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            plain = protocol and value == getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", -1)
            stats = self.session.stats
            kind = "plain" if plain else "failed"
            stats["curve_handshakes_without_curve" if plain else "handshakes_failed"] += 1
            if self._clock() >= self._handshake_logged.get(kind, 0.0):
                self._handshake_logged[kind] = self._clock() + 60.0
                if plain:
                    why = (
                        "the client does not speak CurveZMQ (no keys given to it: pull.curve_secret_file,"
                        " pull.curve_server_file)"
                    )
                elif protocol:
                    why = f"ZeroMQ protocol error 0x{value:x}"
                else:  # (the connection went away during it: a client that gave up, or the one above)
                    why = (
                        f"the connection ended during it ({os.strerror(value) if value else 'no detail'}):"
                        " a client without CurveZMQ keys, one whose pull.curve_server_file is not this"
                        " appliance's public key, or one that gave up"
                    )
                log.warning(
                    "upstream: a connection to %s failed its handshake: %s (%d such so far; logged once a"
                    " minute; ZeroMQ names no client address)",
                    event.get("endpoint", b"?").decode("ascii", "replace"),
                    why,
                    stats["curve_handshakes_without_curve" if plain else "handshakes_failed"],
                )

    # -- the loop ---------------------------------------------------------------------------------------
    def _run(self, sock: zmq.Socket, checkpoint: Checkpoint) -> None:
        try:
            while not self._stop.is_set():
                checkpoint()
                self._handshakes_failed()
                if sock.poll(50):
                    while True:
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        # over CURVE, the consumer name the sender's key speaks for (`curve.KeyRing`)
                        user = parts[-1].get("User-Id") if self.curve is not None else None
                        frames = [part.bytes for part in parts]
                        replies: list[Outgoing] = []
                        with self._lock, self._ledger_full():
                            replies = self.session.receive(
                                frames[0], frames[1:], self._clock(), key_name=user
                            )
                        self._send(sock, replies)
                outgoing: list[Outgoing] = []
                with self._lock, self._ledger_full():
                    if not self._paused():
                        outgoing = self.session.tick(self._clock())
                    else:  # heartbeats go on: a silent appliance had pull clients reconnect every 6 s
                        outgoing = self.session.heartbeats(self._clock())
                self._send(sock, outgoing)
        except Exception:  # a bug: counted, and raised to the spawner (which restarts the loop)
            self.session.stats["forwarder_crashes"] += 1
            raise

    def _paused(self) -> bool:
        """Whether sending waits after the ledger refused a write; the pause ends at once when the disk
        guard sees the space back (an outside probe: delivery stalled 20 s after the disk had room,
        the pause having grown to 30 s)."""
        if self._clock() >= self._pause_until:
            return False
        if self.disk is not None and not self.disk.check():
            self._pause_until = self._clock()
            self._full_at = None
            return False
        return True

    @contextmanager
    def _ledger_full(self) -> Iterator[None]:
        """A ledger write the full disk refused (an acknowledgement, say) is not the end of the loop: it
        is counted, and what it would have recorded happens again (the chunk is resent, the file's
        completion asked for again) once there is space.

        These are the writes that free the disk (a file the consumers confirmed may be purged), so the
        ledger's reserve is given up for them, as for a loss record; and nothing is sent for
        ``LEDGER_FULL_PAUSE`` seconds (the consumer's answers could not be recorded: the chunks went out
        again at once, a loop of 1 GB/s with nothing ever verified, an outside probe)."""
        try:
            yield
        except Exception as error:
            if not is_no_space(error):
                raise
            self.session.stats["ledger_writes_refused_disk_full"] += 1
            now = self._clock()
            # refused again soon after the last pause: twice as long (up to LEDGER_FULL_MAX_PAUSE), so a
            # disk that stays full (no reserve left to give) costs a burst of chunks every half minute,
            # not every second (26 MB/s, an outside probe with no reserve and no headroom)
            again = self._full_at is not None and now - self._full_at < 2 * self._full_pause + 1.0
            self._full_pause = (
                min(2 * self._full_pause, LEDGER_FULL_MAX_PAUSE) if again else LEDGER_FULL_PAUSE
            )
            self._full_at = now
            self._pause_until = now + self._full_pause
            released = self.disk is not None and self.disk.note_error(error) and self.disk.release_reserve()
            if released:
                self.session.stats["ledger_reserve_released"] += 1
            if self._clock() >= self._full_logged:
                self._full_logged = self._clock() + 60.0
                log.error(
                    "upstream: the ledger cannot record (disk full): %s; %s",
                    error,
                    "its reserve is given up for the consumers' confirmations (they let files be purged)"
                    if released
                    else "asked again when there is space",
                )

    def ledger_refusing(self) -> bool:
        """Whether the ledger refused a write of the upstream side in the last 10 s (or two pauses, when
        they have grown: its disk is full, the consumers' acknowledgements cannot be recorded)."""
        full_at = self._full_at
        if self.disk is not None and not self.disk.full:  # space is back (it stayed true a minute after)
            return False
        return full_at is not None and self._clock() - full_at < max(
            10 * LEDGER_FULL_PAUSE, 2 * self._full_pause
        )

    def _send(self, sock: zmq.Socket, outgoing: list[Outgoing]) -> None:
        """Send in order; after one peer's send fails, give back the rest of its messages unsent."""
        failed: set[bytes] = set()
        for item in outgoing:
            attempted = item.identity not in failed
            if attempted:
                frames = p.encode(item.message, item.payload)
                try:
                    # copy=False: the chunk goes out from its mapping (parts under 64 kB are copied)
                    sock.send_multipart([item.identity, *frames], zmq.NOBLOCK, copy=False)
                    continue
                except zmq.ZMQError as error:  # peer gone (router_mandatory) or its queue full
                    log.debug("send to %r failed: %s", item.identity, error)
                    failed.add(item.identity)
            with self._lock:
                self.session.undeliverable(item, attempted)
