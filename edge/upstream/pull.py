"""``edge pull``: the HPC-side client that pulls reduced data from an appliance and confirms it.

It grants credit, writes every chunk at its offset into ``OUTPUT/run_uid/NAME.part``, fsyncs, and only
then acknowledges. When the appliance says a file is complete, the client checks the whole file's size
and checksum, renames it to its final name and confirms. Writes are idempotent, so a chunk sent twice
(after a crash or a reconnect) changes nothing: every frame lands exactly once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import xxhash
import zmq

from edge.errors import RemoteProtocolError
from edge.store import checksum_bytes, fsync_dir
from edge.upstream import protocol as p
from edge.upstream.curve import connect_securely

log = logging.getLogger(__name__)

SILENCE_SECONDS = 6.0  # reconnect when the appliance has said nothing (not even a heartbeat) this long


def _safe_part(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise RemoteProtocolError(f"unsafe path component {name!r}")
    return name


class PullClient:
    """Pulls from one appliance as one named consumer until stopped."""

    def __init__(
        self,
        endpoint: str,
        consumer: str,
        output: Path,
        credit: int,
        context: zmq.Context,
        curve: tuple[Path, Path] | None = None,
    ) -> None:
        self.curve = curve  # (this consumer's key pair file, the appliance's public key file)
        self.endpoint = endpoint
        self.consumer = consumer
        self.output = output
        self.credit = credit
        self.context = context
        self.stats: Counter[str] = Counter()
        self.stop_event = threading.Event()

    def counters(self) -> dict[str, Any]:
        return {k: int(v) for k, v in self.stats.items()}

    def run(self, progress: TextIO | None = None) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        while not self.stop_event.is_set():
            self._session(progress)

    def _session(self, progress: TextIO | None) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        if self.curve is not None:
            connect_securely(sock, *self.curve)
        sock.connect(self.endpoint)
        sock.send_multipart(p.encode(p.Hello(self.consumer, self.credit)))
        self.stats["sessions"] += 1
        last_heard = time.monotonic()
        last_progress = 0.0
        try:
            while not self.stop_event.is_set():
                if sock.poll(200):
                    frames = sock.recv_multipart()
                    last_heard = time.monotonic()
                    for reply in self._handle(frames):
                        sock.send_multipart(p.encode(reply))
                elif time.monotonic() - last_heard > SILENCE_SECONDS:
                    self.stats["reconnects"] += 1
                    log.warning("appliance silent for %.0f s; reconnecting", SILENCE_SECONDS)
                    return
                if progress is not None and time.monotonic() - last_progress > 1.0:
                    last_progress = time.monotonic()
                    self._print_progress(progress)
        finally:
            sock.close(0)

    def _print_progress(self, stream: TextIO) -> None:
        s = self.stats
        line = (
            f"pull {self.consumer}: {s['files_verified']} files verified, {s['chunks_written']} chunks, "
            f"{s['bytes_written'] / 1e6:.1f} MB, {s['chunks_rejected']} rejected"
        )
        end = "\r" if stream.isatty() else "\n"
        stream.write(line + end)
        stream.flush()

    def _handle(self, frames: list[bytes]) -> list[p.Message]:
        try:
            message, payload = p.decode(frames)
        except RemoteProtocolError as error:
            self.stats["protocol_errors"] += 1
            log.warning("bad message from appliance: %s", error)
            return []
        if isinstance(message, p.Chunk):
            return [self._chunk(message, payload)]
        if isinstance(message, p.FileComplete):
            reply = self._complete(message)
            return [reply] if reply else []
        if isinstance(message, p.Error):
            self.stats["errors_from_appliance"] += 1
            log.error("appliance says: %s", message.reason)
        return []

    def _paths(self, run_uid: str, name: str) -> tuple[Path, Path]:
        directory = self.output / _safe_part(run_uid)
        final = directory / _safe_part(name)
        return final, final.with_name(final.name + ".part")

    def _chunk(self, chunk: p.Chunk, payload: bytes | None) -> p.Message:
        if payload is None or len(payload) != chunk.length or checksum_bytes(payload) != chunk.checksum:
            self.stats["chunks_rejected"] += 1
            return p.Nack(chunk.chunk_id, "checksum or length mismatch")
        try:
            final, part = self._paths(chunk.run_uid, chunk.file_name)
        except RemoteProtocolError as error:
            self.stats["chunks_rejected"] += 1
            return p.Nack(chunk.chunk_id, str(error))
        if final.exists() and not part.exists():
            self.stats["chunks_duplicate"] += 1  # already complete here; just confirm again
            return p.Ack(chunk.chunk_id, chunk.checksum)
        part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < chunk.file_size:
                os.ftruncate(fd, chunk.file_size)
            os.pwrite(fd, payload, chunk.offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stats["chunks_written"] += 1
        self.stats["bytes_written"] += len(payload)
        return p.Ack(chunk.chunk_id, chunk.checksum)

    def _complete(self, message: p.FileComplete) -> p.Message | None:
        try:
            final, part = self._paths(message.run_uid, message.file_name)
        except RemoteProtocolError:
            self.stats["protocol_errors"] += 1
            return None
        path = part if part.exists() else final
        if not path.exists():
            self.stats["completes_for_missing_files"] += 1
            return p.FileVerified(message.file_id, 0, "")
        size, digest = _whole_checksum(path)
        if size == message.size and digest == message.checksum:
            if path == part:
                os.replace(part, final)
                fsync_dir(final.parent)
            self.stats["files_verified"] += 1
            log.info("verified %s (%d bytes)", final, size)
        else:
            self.stats["files_mismatched"] += 1
            path.unlink(missing_ok=True)  # start the file over; the appliance resends every chunk
        return p.FileVerified(message.file_id, size, digest, str(final) if final.exists() else "")


def _whole_checksum(path: Path) -> tuple[int, str]:
    digest = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def main_loop(client: PullClient) -> None:
    """Run until SIGINT/SIGTERM (the CLI installs handlers that set ``client.stop_event``)."""
    client.run(progress=sys.stderr)
