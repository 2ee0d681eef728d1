"""``edge pull``: the HPC-side client that pulls reduced data from an appliance and confirms it.

It grants credit, writes every chunk at its offset into ``OUTPUT/run_uid/NAME.part``, fsyncs, and only
then acknowledges: the chunks of everything received at once are written, each file touched is fsynced
once, and then their acknowledgements go out (never an ack for bytes not yet durable). When the
appliance says a file is complete, the client reads the whole file back from its disk, checks its size
and checksum, renames it to its final name and confirms: what is confirmed is what this side holds, so
the appliance never deletes its copy on the word of a file damaged or truncated here after its chunks were
written. Every chunk was checked against its checksum when it came, so a file whose chunks all came in
this session and cover it was received right: a mismatch then is damage here (``files_damaged_here``),
and the client names the ranges that changed by checking them again against their chunks'
checksums. Writes are idempotent, so a chunk sent twice (after a crash or a reconnect) changes nothing:
every frame lands exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import zmq

from edge.durable import CHECKSUM, checksum_bytes, drop_cached, file_checksums, fsync_dir
from edge.errors import ConfigError, RemoteProtocolError
from edge.upstream import protocol as p
from edge.upstream.curve import connect_securely

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 40  # a file the appliance offers is never larger than this (1 TiB)
MAX_BATCH = 64  # messages taken at once before their chunks are fsynced and acknowledged
MAX_OPEN_PARTS = 16
SILENCE_SECONDS = 6.0  # reconnect when the appliance has said nothing (not even a heartbeat) this long
#: counters shown on the progress line once they are not 0 (each is also logged when it counts)
TROUBLES = (
    ("files_mismatched", "files mismatched"),
    ("files_damaged_here", "damaged here"),
    ("parts_removed_here", "partial files removed here"),
    ("write_errors", "write errors"),
    ("protocol_errors", "protocol errors"),
    ("errors_from_appliance", "errors from the appliance"),
    ("sends_dropped", "sends dropped"),
    ("reconnects", "reconnects"),
    ("sessions_unanswered", "sessions unanswered"),
)
KEY_RETRY_SECONDS = 5.0  # a key file that cannot be read at a reconnect: read again after this
HEARTBEAT_SECONDS = 2.0  # said to the appliance at least this often, so an idle client reads "connected"
PART_SWEEP_SECONDS = 600.0  # how often partial files are looked over for ones the appliance stopped sending


def _safe_part(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise RemoteProtocolError(f"unsafe path component {name!r}")
    if len(os.fsencode(name)) > 255:  # no file system here takes a longer name
        raise RemoteProtocolError(f"path component of {len(os.fsencode(name))} bytes; at most 255")
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
        part_expiry_seconds: float = 86_400.0,
    ) -> None:
        self.curve = curve  # (this consumer's key pair file, the appliance's public key file)
        self.part_expiry_seconds = part_expiry_seconds  # 0: partial files are never removed here
        self.endpoint = endpoint
        self.consumer = consumer
        self.output = output
        self.credit = credit
        self.context = context
        self.stats: Counter[str] = Counter()
        self.stop_event = threading.Event()
        self._parts: dict[Path, _PartFile] = {}  # open .part files: descriptor and running checksum
        self._dirty: set[Path] = set()  # written since their last fsync
        self._new_dirs: set[Path] = set()  # directories with a new .part entry, fsynced before any ack
        self.fatal: str | None = None  # why the client stopped on its own (the appliance it cannot serve)

    def counters(self) -> dict[str, Any]:
        return {k: int(v) for k, v in self.stats.items()}

    def run(self, progress: TextIO | None = None) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        while not self.stop_event.is_set():
            self._session(progress)

    def expire_parts(self, now: float | None = None) -> int:
        """Remove partial files (``RUN/NAME.part``) no chunk has reached for ``part_expiry_seconds``:
        files the appliance no longer offers this consumer (an optional one that fell behind while the
        required consumers confirmed them, or a file purged since). Counted (``parts_expired``) and
        logged. A file still offered is not lost by it: its ``file_complete`` finds no file here and the
        appliance sends it again whole. Returns how many were removed."""
        if self.part_expiry_seconds <= 0:
            return 0
        now = time.time() if now is None else now
        removed = 0
        for part in self.output.glob("*/*.part"):
            if part in self._parts:  # open: chunks are coming
                continue
            try:
                idle = now - part.stat().st_mtime
                if idle < self.part_expiry_seconds:
                    continue
                part.unlink()
            except OSError:  # gone meanwhile, or not ours to remove: looked at again next time
                continue
            removed += 1
            self.stats["parts_expired"] += 1
            log.warning(
                "removed %s: no chunk of it came for %s (pull.part_expiry_seconds); the appliance no"
                " longer offers it to consumer %s (confirmed by the required consumers first, or purged)",
                part,
                f"{idle / 3600:.1f} h" if idle >= 3600 else f"{idle:.0f} s",
                self.consumer,
            )
        return removed

    def _session(self, progress: TextIO | None) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        # no part larger than a chunk can be (with room for CURVE's framing): a larger one is never
        # buffered, libzmq drops the connection (for good: it does not reconnect after a protocol error),
        # and the silence check below reconnects
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_CHUNK_BYTES + p.MAX_HEADER_BYTES)
        if self.curve is not None:
            try:  # (its key files are read again at each connection: a rotation takes effect)
                connect_securely(sock, *self.curve)
            except ConfigError as error:
                # a key file made bad while the client runs (emptied, cut short mid-write): said, counted,
                # and tried again, never a traceback (the start checked them: an outside probe's client
                # died at the next reconnect)
                sock.close(0)
                self.stats["key_files_unreadable"] += 1
                log.error("%s; trying again in %g s", error, KEY_RETRY_SECONDS)
                self.stop_event.wait(KEY_RETRY_SECONDS)
                return
        sock.connect(self.endpoint)
        self.stats["sessions"] += 1  # before the Hello: whoever sees the Hello sees it counted
        self._send(sock, p.Hello(self.consumer, self.credit))
        last_heard = last_said = time.monotonic()
        heard = False  # anything from the appliance in this session
        last_progress = 0.0
        swept = -PART_SWEEP_SECONDS
        try:
            while not self.stop_event.is_set():
                if time.monotonic() - swept >= PART_SWEEP_SECONDS:
                    swept = time.monotonic()
                    self.expire_parts()
                if sock.poll(200):
                    replies: list[p.Message] = []
                    for _ in range(MAX_BATCH):  # everything already here, then one fsync per file
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        # the payload is used where ZeroMQ received it (hashed and written, not copied)
                        replies += self._handle([parts[0].bytes, *(part.buffer for part in parts[1:])])
                    last_heard, heard = time.monotonic(), True
                    if not self._sync():  # acknowledgements only for what is durable
                        replies = [_unsynced(reply) for reply in replies]
                    for reply in replies:
                        self._send(sock, reply)
                        last_said = time.monotonic()
                elif time.monotonic() - last_heard > SILENCE_SECONDS:
                    self.stats["reconnects"] += 1
                    if heard:
                        log.warning("appliance silent for %.0f s; reconnecting", SILENCE_SECONDS)
                    else:  # not one answer: a wrong endpoint, no daemon, or a key the other side refuses
                        self.stats["sessions_unanswered"] += 1
                        log.warning(
                            "no answer from %s in %.0f s (%d sessions unanswered); reconnecting. Is the"
                            " daemon running with upstream.endpoint there%s?",
                            self.endpoint,
                            SILENCE_SECONDS,
                            self.stats["sessions_unanswered"],
                            ", and does it require CurveZMQ (upstream.curve_secret_file set there: this"
                            " client then needs pull.curve_secret_file and pull.curve_server_file)"
                            if self.curve is None
                            else ", does it use CurveZMQ at all (upstream.curve_secret_file set there: an"
                            " appliance without it never answers a client with keys), is the server key the"
                            " appliance's, and is this client's public key among the keys it admits (a"
                            " refused key gets no answer, by CurveZMQ's design)",
                        )
                    return
                if time.monotonic() - last_said >= HEARTBEAT_SECONDS:
                    self._send(sock, p.Heartbeat())
                    last_said = time.monotonic()
                if progress is not None and time.monotonic() - last_progress > 1.0:
                    last_progress = time.monotonic()
                    self._print_progress(progress)
        finally:
            sock.close(0)
            self._sync()
            self._close_parts()

    def _count(self, key: str) -> bool:
        """Count one ``key``; True for the first and every 100th (the ones worth a log line)."""
        self.stats[key] += 1
        return self.stats[key] == 1 or self.stats[key] % 100 == 0

    def _write_error(self, what: str, error: OSError) -> None:
        """A write on this side failed (a full disk, a lost mount, no permission): counted and logged
        (the first, then every 100th); the client goes on, and nothing is acknowledged that is not durable."""
        if self._count("write_errors"):
            log.error(
                "cannot write %s (%s); %d write errors so far: nothing unwritten is acknowledged, the "
                "appliance keeps its copy and sends it again",
                what,
                error.strerror or error,
                self.stats["write_errors"],
            )

    def _send(self, sock: zmq.Socket[bytes], message: p.Message) -> None:
        """Send without blocking: a socket with no way to the appliance (a refused CURVE handshake drops
        the connection) would block a plain send for ever, deaf to SIGINT. What cannot go is counted; the
        appliance resends an unacknowledged chunk, and the silence check reconnects (a new Hello)."""
        try:
            sock.send_multipart(p.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            if self._count("sends_dropped"):
                log.warning(
                    "no way to the appliance at %s (%d messages not sent so far): is it up, and %s?",
                    self.endpoint,
                    self.stats["sends_dropped"],
                    "does it require CurveZMQ (this client has no keys)"
                    if self.curve is None
                    else "does it accept this client's key",
                )

    def _sync(self) -> bool:
        """fsync what was written since the last call; False when something could not be made durable."""
        durable = True
        failed: set[Path] = set()
        for directory in self._new_dirs:  # the new .part names first: an acked chunk's file must survive
            try:
                fsync_dir(directory)
            except OSError as error:
                self._write_error(str(directory), error)
                failed.add(directory)  # tried again next time
                durable = False
        self._new_dirs = failed
        for path in self._dirty:
            part = self._parts.get(path)
            if part is None:
                continue
            try:
                os.fsync(part.fd)
            except OSError as error:
                # after a failed fsync the kernel may have dropped the pages: the chunks written no longer
                # say where a mismatch came from
                part.traced = False
                self._write_error(str(path), error)
                durable = False
            self.stats["fsyncs"] += 1
        self._dirty.clear()
        return durable

    def _close_parts(self) -> None:
        for part in self._parts.values():
            os.close(part.fd)
        self._parts.clear()

    def _part(self, path: Path, size: int) -> _PartFile:
        part = self._parts.get(path)
        if part is not None and os.fstat(part.fd).st_nlink == 0:
            self._removed_here(path)  # written on, its chunks went nowhere: a new .part takes the rest
            part = None
        if part is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fresh = os.fstat(fd).st_size == 0
            if fresh and size > 0:
                try:  # the whole file's space now: a file that cannot fit is refused at its first chunk
                    os.posix_fallocate(fd, 0, size)
                except OSError:  # (space for half of several files would let none of them finish)
                    os.close(fd)
                    path.unlink(missing_ok=True)
                    raise
            if fresh:
                self._new_dirs.add(path.parent)
            elif os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            part = _PartFile(fd, traced=fresh)  # what an earlier session wrote is not traced here
            self._parts[path] = part
            if len(self._parts) > MAX_OPEN_PARTS:  # bounded: the oldest is synced and closed
                oldest = next(iter(self._parts))
                os.fsync(self._parts[oldest].fd)
                os.close(self._parts.pop(oldest).fd)
                self._dirty.discard(oldest)
        return part

    def _removed_here(self, path: Path) -> None:
        """``path``'s open ``.part`` was removed on this side (a scratch cleaner, an operator): its open
        descriptor is let go, so the file comes again into a new one. Kept, it took every resent chunk
        into the removed file, answered each ``file_complete`` "no file", and the file never came (an
        outside probe: resent 124 times in 70 s, with the files after it waiting)."""
        state = self._parts.pop(path)
        self._dirty.discard(path)
        with contextlib.suppress(OSError):
            os.close(state.fd)
        self.stats["parts_removed_here"] += 1
        log.warning("%s was removed on this side while it was being written: the file comes again", path)

    def _print_progress(self, stream: TextIO) -> None:
        s = self.stats
        line = (
            f"pull {self.consumer}: {s['files_verified']} files verified"
            + (f", {s['files_verified_again']} verified again" if s["files_verified_again"] else "")
            + f", {s['chunks_written']} chunks, "
            f"{s['bytes_written'] / 1e6:.1f} MB, {s['chunks_rejected']} rejected"
        )
        troubles = [f"{s[key]} {words}" for key, words in TROUBLES if s[key]]
        if troubles:
            line += ", " + ", ".join(troubles) + " (see the log)"
        end = "\r" if stream.isatty() else "\n"
        stream.write(line + end)
        stream.flush()

    def summary(self) -> str:
        """Every counter, for the line ``edge pull`` prints when it stops."""
        counted = ", ".join(f"{key} {value}" for key, value in sorted(self.counters().items()))
        return f"pull {self.consumer}: stopped; {counted or 'nothing counted'}"

    def _handle(self, frames: list[bytes | memoryview]) -> list[p.Message]:
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
        if isinstance(message, p.Welcome) and message.checksum != CHECKSUM:
            # its checksums could never be matched here: say so and stop, rather than reject forever
            self.fatal = f"the appliance checksums with {message.checksum!r}; this client knows {CHECKSUM!r}"
            log.error("%s", self.fatal)
            self.stop_event.set()
        if isinstance(message, p.Error):
            self.stats["errors_from_appliance"] += 1
            log.error("appliance says: %s", p.printable(message.reason))
            if message.reason.endswith(p.TAKEN_OVER):
                # another client runs under this name: going on, each would take the name back from the
                # other after 6 s of silence, and the run's files would be split between the two
                self.fatal = (
                    f"another client took consumer name {self.consumer!r} over: two clients under one name"
                    " split the appliance's files between them, so this one stops (give each client its own"
                    " name, pull.consumer)"
                )
                log.error("%s", self.fatal)
                self.stop_event.set()
        return []

    def _paths(self, run_uid: str, name: str) -> tuple[Path, Path]:
        directory = self.output / _safe_part(run_uid)
        final = directory / _safe_part(name)
        return final, final.with_name(final.name + ".part")

    def _chunk(self, chunk: p.Chunk, payload: bytes | memoryview | None) -> p.Message:
        if payload is None or len(payload) != chunk.length or checksum_bytes(payload) != chunk.checksum:
            self.stats["chunks_rejected"] += 1
            return p.Nack(chunk.chunk_id, "checksum or length mismatch")
        if not 0 <= chunk.offset <= chunk.offset + chunk.length <= chunk.file_size <= MAX_FILE_BYTES:
            self.stats["chunks_rejected"] += 1  # numbers from the peer are bounded before they touch a disk
            return p.Nack(chunk.chunk_id, f"offset {chunk.offset} / size {chunk.file_size} out of range")
        try:
            final, part = self._paths(chunk.run_uid, chunk.file_name)
        except RemoteProtocolError as error:
            self.stats["chunks_rejected"] += 1
            return p.Nack(chunk.chunk_id, str(error))
        if final.exists() and not part.exists():
            self.stats["chunks_duplicate"] += 1  # already complete here; just confirm again
            return p.Ack(chunk.chunk_id, chunk.checksum)
        try:
            if not part.parent.is_dir():  # the run's directory is new: its own entry is made durable too
                part.parent.mkdir(parents=True, exist_ok=True)
                self._new_dirs.add(part.parent.parent)
            state = self._part(part, chunk.file_size)
            view = memoryview(payload)
            written = 0
            while written < len(view):  # a short write goes on
                n = os.pwrite(state.fd, view[written:], chunk.offset + written)
                if n <= 0:
                    raise OSError(f"nothing written to {part} at {chunk.offset + written}")
                written += n
        except OSError as error:  # the appliance resends a refused chunk (after a while, the second time)
            self._write_error(str(part), error)
            return p.Nack(chunk.chunk_id, f"cannot write it here: {error.strerror or error}"[:200])
        state.written[chunk.offset] = (len(payload), chunk.checksum)
        self._dirty.add(part)
        self.stats["chunks_written"] += 1
        self.stats["bytes_written"] += len(payload)
        return p.Ack(chunk.chunk_id, chunk.checksum)

    def _complete(self, message: p.FileComplete) -> p.Message | None:
        try:
            final, part = self._paths(message.run_uid, message.file_name)
        except RemoteProtocolError:
            self.stats["protocol_errors"] += 1
            return None
        try:
            return self._completed(message, final, part)
        except OSError as error:  # no answer: the appliance repeats its file_complete until one comes
            self._write_error(str(final), error)
            return None

    def _completed(self, message: p.FileComplete, final: Path, part: Path) -> p.Message:
        path = part if part.exists() else final
        if not path.exists() and message.size == 0:  # an empty file has no chunks: it is made here
            final.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(final, os.O_WRONLY | os.O_CREAT, 0o644))
            fsync_dir(final.parent)
            path = final
        if not path.exists():
            self.stats["completes_for_missing_files"] += 1
            if part in self._parts:  # its .part was removed here after its last chunk
                self._removed_here(part)
            return p.FileVerified(message.file_id, 0, "")
        state = self._parts.pop(part, None)
        if state is not None:
            self._dirty.discard(part)
            try:
                os.fsync(state.fd)
            finally:  # a failed fsync leaves no running checksum behind: the next answer reads the file
                os.close(state.fd)
        # every byte of the file came in a chunk this session checked and wrote (each chunk's checksum is
        # the appliance's own for its range): the bytes as they came were right
        came_right = state is not None and path == part and state.covers(message.size)
        size, digest, _ = file_checksums(path)  # what this side holds is confirmed
        self.stats["checksums_reread"] += 1
        matches = size == message.size and digest == message.checksum
        if not matches and came_right:  # the file changed here since its chunks were written
            self.stats["files_damaged_here"] += 1
            log.warning(
                "%s: the bytes received were right, the file on this disk is not (%d bytes, checksum %s;"
                " changed here: %s): changed or truncated here after it was written; fetching it again",
                path,
                size,
                digest,
                _changed_ranges(path, state.written),
            )
        if matches:
            if path == part:
                os.replace(part, final)
                fsync_dir(final.parent)
                self.stats["files_verified"] += 1
                log.info("verified %s (%d bytes)", final, size)
            else:  # confirmed before (the appliance did not get that answer, or this client restarted)
                self.stats["files_verified_again"] += 1
                log.info("verified %s again (%d bytes)", final, size)
            drop_cached(final)  # durable and confirmed: not read here again (a no-op on tmpfs)
        else:
            self.stats["files_mismatched"] += 1
            if not came_right:  # (damage here after a right transfer was logged above)
                log.warning(
                    "%s: holds %d bytes, checksum %s; the appliance's file is %d bytes, %s: not confirmed,"
                    " fetching it again",
                    path,
                    size,
                    digest,
                    message.size,
                    message.checksum,
                )
            path.unlink(missing_ok=True)  # start the file over; the appliance resends every chunk
        # where the file is on this side, absolute (the appliance shows it in `edge where` and its run view)
        return p.FileVerified(message.file_id, size, digest, str(final.absolute()) if final.exists() else "")


def _unsynced(reply: p.Message) -> p.Message:
    """An acknowledgement of bytes that could not be made durable becomes a refusal (sent again)."""
    if isinstance(reply, p.Ack):
        return p.Nack(reply.chunk_id, "written but not durable here (fsync failed)")
    return reply


class _PartFile:
    """An open ``.part`` file and the chunks this session wrote into it, each checked against its checksum
    when it came (a diagnosis only: the file is read back before it is confirmed)."""

    def __init__(self, fd: int, traced: bool) -> None:
        self.fd = fd
        self.traced = traced  # every byte in the file was written by this session (it began empty)
        self.written: dict[int, tuple[int, str]] = {}  # offset: (length, checksum) of each chunk written

    def covers(self, size: int) -> bool:
        """Whether the chunks written cover ``[0, size)`` exactly, with nothing else in the file."""
        if not self.traced:
            return False
        end = 0
        for offset, (length, _) in sorted(self.written.items()):
            if offset > end:
                return False  # a gap: bytes no chunk wrote
            end = max(end, offset + length)
        return end == size


def _changed_ranges(path: Path, written: dict[int, tuple[int, str]], limit: int = 3) -> str:
    """The byte ranges of ``path`` that no longer hold the chunk written there (the first ``limit``)."""
    changed = []
    try:
        with open(path, "rb") as handle:
            for offset, (length, checksum) in sorted(written.items()):
                if checksum_bytes(os.pread(handle.fileno(), length, offset)) != checksum:
                    changed.append(f"bytes {offset}-{offset + length - 1}")
    except OSError as error:
        return f"cannot read it again ({error.strerror or error})"
    if not changed:
        return "no chunk's bytes; its size"
    more = f" and {len(changed) - limit} more chunks" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def main_loop(client: PullClient) -> None:
    """Run until SIGINT/SIGTERM (the CLI installs handlers that set ``client.stop_event``), then print
    every counter."""
    try:
        client.run(progress=sys.stderr)
    finally:
        print(client.summary(), file=sys.stderr, flush=True)
