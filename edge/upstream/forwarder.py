"""The appliance's side of the upstream protocol: a ROUTER that serves stored chunks to named consumers.

Each consumer (one HPC pull client, or several) keeps its own cursor in the ledger: whatever it has not
acknowledged is sent again after a reconnect or a timeout. Sending is paced by the credit the client
grants. A file becomes ``verified`` once every consumer the policy requires returns its checksum.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from edge.errors import RemoteProtocolError
from edge.ledger import Ledger
from edge.store import CHECKSUM, checksum_bytes
from edge.upstream import protocol as p
from edge.upstream.curve import serve_securely

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0


@dataclass
class ConsumerState:
    name: str
    identity: bytes
    credit: int
    in_flight: dict[int, float] = field(default_factory=dict)
    completes_sent: dict[int, float] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    connects: int = 1


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
    ) -> None:
        self.endpoint = endpoint
        self.ledger = ledger
        self.context = context
        self.resend_seconds = resend_seconds
        self.appliance_id = appliance_id
        self.curve = curve  # (secret key file, allowed clients dir) to require CurveZMQ
        self._auth: Any = None
        self.corrupt = corrupt  # fault injection: flip one byte of a chunk after its checksum is taken
        self._rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.consumers: dict[str, ConsumerState] = {}
        self._by_identity: dict[bytes, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.bound_endpoint: str | None = None

    def start(self) -> None:
        """Bind now (so a busy port fails the start, loudly) and serve on a thread."""
        sock = self.context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.router_mandatory = True
        if self.curve is not None:
            self._auth = serve_securely(self.context, sock, *self.curve)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as error:
            sock.close(0)
            raise OSError(f"cannot serve upstream on {self.endpoint}: {error}") from error
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="upstream-forwarder", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._auth is not None:
            self._auth.stop()

    def counters(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            consumers = [
                {
                    "consumer": c.name,
                    "credit": c.credit,
                    "in_flight": len(c.in_flight),
                    "connects": c.connects,
                    "seconds_since_seen": round(now - c.last_seen, 3),
                    "connected": now - c.last_seen < 3 * HEARTBEAT_SECONDS,
                }
                for c in self.consumers.values()
            ]
        return {
            "endpoint": self.bound_endpoint,
            **{k: int(v) for k, v in self.stats.items()},
            "consumers": consumers,
        }

    # -- the loop ---------------------------------------------------------------------------------------
    def _run(self, sock: zmq.Socket) -> None:
        last_heartbeat = 0.0
        try:
            while not self._stop.is_set():
                if sock.poll(50):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(sock, frames)
                now = time.monotonic()
                for consumer in list(self.consumers.values()):
                    self._expire(consumer, now)
                    self._send_chunks(sock, consumer)
                    self._send_completes(sock, consumer, now)
                if now - last_heartbeat >= HEARTBEAT_SECONDS:
                    last_heartbeat = now
                    for consumer in list(self.consumers.values()):
                        self._send(sock, consumer, p.Heartbeat())
        except Exception:  # pragma: no cover - a bug: log it, count it, stop serving
            log.exception("upstream forwarder stopped by an unexpected error")
            self.stats["forwarder_crashes"] += 1
        finally:
            sock.close(0)

    def _send(
        self, sock: zmq.Socket, consumer: ConsumerState, message: p.Message, payload: bytes | None = None
    ) -> bool:
        try:
            sock.send_multipart([consumer.identity, *p.encode(message, payload)], zmq.NOBLOCK)
        except zmq.ZMQError as error:  # peer gone (router_mandatory) or its queue full
            self.stats["send_failures"] += 1
            log.debug("send to %s failed: %s", consumer.name, error)
            return False
        return True

    def _on_message(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        self.stats["messages_received"] += 1
        try:
            message, _payload = p.decode(body)
        except RemoteProtocolError as error:
            self.stats["protocol_errors"] += 1
            log.warning("bad upstream message: %s", error)
            try:
                sock.send_multipart([identity, *p.encode(p.Error(str(error)))], zmq.NOBLOCK)
            except zmq.ZMQError:
                self.stats["send_failures"] += 1
            return
        if isinstance(message, p.Hello):
            self._hello(sock, identity, message)
            return
        name = self._by_identity.get(identity)
        consumer = self.consumers.get(name) if name else None
        if consumer is None:
            self.stats["messages_from_unknown_peer"] += 1
            return
        consumer.last_seen = time.monotonic()
        if isinstance(message, p.Ack):
            sent = consumer.in_flight.pop(message.chunk_id, None)
            consumer.credit += 1 if sent is not None else 0
            if self.ledger.chunk_acked(consumer.name, message.chunk_id, message.checksum):
                self.stats["chunks_acked"] += 1
            else:
                self.stats["acks_rejected"] += 1
        elif isinstance(message, p.Nack):
            if consumer.in_flight.pop(message.chunk_id, None) is not None:
                consumer.credit += 1
            self.stats["chunks_nacked"] += 1
            log.warning("consumer %s rejected chunk %d: %s", consumer.name, message.chunk_id, message.reason)
        elif isinstance(message, p.Credit):
            consumer.credit += max(0, message.n)
        elif isinstance(message, p.FileVerified):
            consumer.completes_sent.pop(message.file_id, None)
            if self.ledger.file_verified(consumer.name, message.file_id, message.size, message.checksum):
                self.stats["files_verified"] += 1
            else:
                self.stats["files_mismatched"] += 1
                log.warning(
                    "consumer %s holds a different file %d: resending it", consumer.name, message.file_id
                )
        elif isinstance(message, p.Heartbeat):
            pass
        else:
            self.stats["unexpected_messages"] += 1

    def _hello(self, sock: zmq.Socket, identity: bytes, hello: p.Hello) -> None:
        with self._lock:
            old = self.consumers.get(hello.consumer)
            if old is not None:
                self._by_identity.pop(old.identity, None)
                self.stats["consumer_reconnects"] += 1
            state = ConsumerState(hello.consumer, identity, max(1, hello.credit))
            state.connects = (old.connects + 1) if old else 1
            self.consumers[hello.consumer] = state
            self._by_identity[identity] = hello.consumer
        log.info("consumer %s connected (credit %d)", hello.consumer, hello.credit)
        self._send(sock, state, p.Welcome(self.appliance_id, CHECKSUM))

    def _expire(self, consumer: ConsumerState, now: float) -> None:
        for chunk_id, sent in list(consumer.in_flight.items()):
            if now - sent > self.resend_seconds:
                del consumer.in_flight[chunk_id]
                consumer.credit += 1
                self.stats["chunks_timed_out"] += 1

    def _send_chunks(self, sock: zmq.Socket, consumer: ConsumerState) -> None:
        if consumer.credit <= 0:
            return
        rows = self.ledger.pending_chunks(consumer.name, consumer.in_flight, consumer.credit)
        sent: list[int] = []
        for row in rows:
            try:
                payload = _read_range(row["path"], row["offset"], row["length"])
            except OSError as error:
                self.stats["chunk_read_errors"] += 1
                log.error("cannot read chunk %d of %s: %s", row["id"], row["path"], error)
                continue
            if checksum_bytes(payload) != row["checksum"]:
                self.stats["local_checksum_mismatches"] += 1
                log.error("local file %s changed on disk (chunk %d)", row["path"], row["id"])
                continue
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
            if not self._send(sock, consumer, message, payload):
                break
            consumer.in_flight[row["id"]] = time.monotonic()
            consumer.credit -= 1
            sent.append(row["id"])
            self.stats["chunks_sent"] += 1
            self.stats["bytes_sent"] += row["length"]
        self.ledger.chunks_sent(sent)

    def _send_completes(self, sock: zmq.Socket, consumer: ConsumerState, now: float) -> None:
        for row in self.ledger.files_ready_to_verify(consumer.name):
            sent = consumer.completes_sent.get(row["id"])
            if sent is not None and now - sent < self.resend_seconds:
                continue
            message = p.FileComplete(row["id"], row["run_uid"], row["name"], row["size"], row["checksum"])
            if self._send(sock, consumer, message):
                consumer.completes_sent[row["id"]] = now
                self.stats["file_completes_sent"] += 1


def _read_range(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
