"""The pull client's file handling without its socket: chunks written as they come, every file read
back from the disk before it is confirmed (what is confirmed is what this side holds), and every
acknowledgement given only after the bytes are fsynced."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash
import zmq

from edge.durable import checksum_bytes
from edge.upstream import protocol as p
from edge.upstream.pull import PullClient

DATA = bytes(range(256)) * 40  # 10240 bytes, three chunks


def _chunks() -> list[p.Chunk]:
    out = []
    for index, offset in enumerate(range(0, len(DATA), 4096)):
        piece = DATA[offset : offset + 4096]
        out.append(
            p.Chunk(
                index + 1,
                7,
                "run-1",
                "run-1_00000.h5",
                len(DATA),
                index,
                3,
                offset,
                len(piece),
                checksum_bytes(piece),
            )
        )
    return out


def _deliver(client: PullClient, chunks: list[p.Chunk]) -> list[p.Message]:
    replies = []
    for chunk in chunks:
        replies += client._handle(p.encode(chunk, DATA[chunk.offset : chunk.offset + chunk.length]))
    client._sync()
    return replies


def test_in_order_chunks_are_written_and_the_file_read_back_before_it_is_confirmed(
    tmp_path: Path, resident_bytes: Callable[[Path], int]
) -> None:
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    replies = _deliver(client, _chunks())
    assert [type(r) for r in replies] == [p.Ack] * 3
    assert client.stats["fsyncs"] == 1  # one fsync for the batch, before the acknowledgements went out
    whole = xxhash.xxh3_128_hexdigest(DATA)
    (verified,) = client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole)))
    assert isinstance(verified, p.FileVerified) and verified.checksum == whole and verified.size == len(DATA)
    assert client.stats["checksums_reread"] == 1
    final = tmp_path / "run-1" / "run-1_00000.h5"
    assert resident_bytes(final) == 0  # confirmed and durable: its pages went back to the kernel
    assert final.read_bytes() == DATA


def test_a_file_confirmed_again_is_counted_apart_from_the_files_verified(tmp_path: Path) -> None:
    """The appliance repeats ``file_complete`` until it hears ``file_verified``: a repeat for a file that
    is already final here is answered from a fresh read, and counted as verified again, not as one more
    file verified (the progress line said 2 files for 1)."""
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    _deliver(client, _chunks())
    whole = xxhash.xxh3_128_hexdigest(DATA)
    complete = p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole))
    (first,) = client._handle(complete)
    (again,) = client._handle(complete)
    assert isinstance(again, p.FileVerified) and again.checksum == first.checksum == whole
    assert client.stats["files_verified"] == 1 and client.stats["files_verified_again"] == 1
    assert client.stats["checksums_reread"] == 2
    stream = io.StringIO()
    client._print_progress(stream)
    assert "1 files verified, 1 verified again," in stream.getvalue()


def test_out_of_order_chunks_are_read_back(tmp_path: Path) -> None:
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    first, second, third = _chunks()
    _deliver(client, [first, third, second])
    whole = xxhash.xxh3_128_hexdigest(DATA)
    (verified,) = client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole)))
    assert verified.checksum == whole and client.stats["checksums_reread"] == 1


def test_bytes_that_could_not_be_fsynced_are_refused_and_the_file_is_checked_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync that fails (EIO: a failing disk; fsync cannot be made to fail for real here) turns the
    batch's acknowledgements into refusals, and the file's running checksum is no longer trusted:
    the completion reads it back."""
    import edge.upstream.pull as pull

    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    first, second, third = _chunks()
    replies = [
        r for c in (first, second) for r in client._handle(p.encode(c, DATA[c.offset : c.offset + c.length]))
    ]

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(pull.os, "fsync", failing)
        assert client._sync() is False
    assert [type(pull._unsynced(r)) for r in replies] == [p.Nack, p.Nack]
    assert client.stats["write_errors"] >= 1  # the file, and the new directory entries
    _deliver(client, [first, second, third])  # sent again, and durable this time
    whole = xxhash.xxh3_128_hexdigest(DATA)
    (verified,) = client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole)))
    assert verified.checksum == whole and client.stats["checksums_reread"] == 1


def test_hostile_offsets_and_sizes_are_refused_before_they_touch_the_disk(tmp_path: Path) -> None:
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    piece = DATA[:4096]
    for offset, size in ((-1, len(DATA)), (2**62, len(DATA)), (0, 2**62), (8000, 9000)):
        chunk = p.Chunk(
            9, 7, "run-1", "run-1_00000.h5", size, 0, 3, offset, len(piece), checksum_bytes(piece)
        )
        (reply,) = client._handle(p.encode(chunk, piece))
        assert isinstance(reply, p.Nack), (offset, size)
    assert client.stats["chunks_rejected"] == 4 and not list(tmp_path.rglob("*.part"))
    for run_uid, name in (("run-1", "a" * 256), ("r" * 300, "f.h5"), ("run-1", "../f.h5"), ("..", "f.h5")):
        chunk = p.Chunk(9, 7, run_uid, name, 4096, 0, 1, 0, len(piece), checksum_bytes(piece))
        (reply,) = client._handle(p.encode(chunk, piece))
        assert isinstance(reply, p.Nack), (run_uid, name)
    assert client.stats["chunks_rejected"] == 8 and client.stats["write_errors"] == 0
    assert not list(tmp_path.rglob("*.part"))


def test_an_empty_file_is_made_here_and_verified(tmp_path: Path) -> None:
    """A 0-byte file has no chunks: its completion alone makes it (it was asked for again forever)."""
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    empty = xxhash.xxh3_128_hexdigest(b"")
    (verified,) = client._handle(p.encode(p.FileComplete(9, "run-1", "empty.jsonl", 0, empty)))
    assert verified == p.FileVerified(9, 0, empty, str((tmp_path / "run-1" / "empty.jsonl").absolute()))
    assert (tmp_path / "run-1" / "empty.jsonl").read_bytes() == b""


def test_an_appliance_with_another_checksum_stops_the_client_saying_why(tmp_path: Path) -> None:
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    assert client._handle(p.encode(p.Welcome("edge", "xxh3-128"))) == [] and client.fatal is None
    client._handle(p.encode(p.Welcome("edge", "md5")))
    assert client.stop_event.is_set() and "md5" in str(client.fatal)


def test_a_client_whose_name_another_took_over_stops_saying_why(tmp_path: Path) -> None:
    """Two clients under one name took it from each other every 6 s of silence, each receiving part of
    the run's files (an outside probe found a run split between two directories): the one told that
    another connection took its name over stops (``edge pull`` exits 2), the other gets everything."""
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    client._handle(p.encode(p.Error("chunk 7: unknown file")))  # any other error: logged, goes on
    assert client.fatal is None and not client.stop_event.is_set()
    client._handle(p.encode(p.Error(f"consumer hpc {p.TAKEN_OVER}")))
    assert client.stop_event.is_set() and "pull.consumer" in str(client.fatal)


@contextlib.contextmanager
def _client_of_a_router(tmp_path: Path) -> Iterator[tuple[zmq.Socket, PullClient]]:
    """A ROUTER standing in for the appliance, and a pull client running against it (stopped at the end)."""
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = PullClient(f"tcp://127.0.0.1:{port}", "hpc", tmp_path, 4, context)
    thread = threading.Thread(target=client.run)
    thread.start()
    try:
        yield router, client
    finally:
        client.stop_event.set()
        thread.join(10)
        router.close(0)


def test_an_idle_client_says_it_is_there(tmp_path: Path) -> None:
    """Heartbeats from the client while nothing comes, so the appliance sees it connected."""
    with _client_of_a_router(tmp_path) as (router, _client):
        kinds = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and kinds.count("heartbeat") < 2:
            if router.poll(500):
                identity, *frames = router.recv_multipart()
                message, _ = p.decode(frames)
                kinds.append(message.type)
                if message.type == "hello":
                    router.send_multipart([identity, *p.encode(p.Welcome("edge", "xxh3-128"))])
        assert kinds[0] == "hello" and kinds.count("heartbeat") >= 2, kinds


def test_a_part_larger_than_any_chunk_drops_the_connection_and_the_client_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No part larger than the largest chunk is buffered (ZeroMQ's MAXMSGSIZE, 256 MiB; 1 MiB here).
    libzmq drops that connection and never reconnects after such a drop: the client's silence check
    does, with a new Hello, and the oversized part is never handled."""
    monkeypatch.setattr(p, "MAX_CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr("edge.upstream.pull.SILENCE_SECONDS", 1.0)
    with _client_of_a_router(tmp_path) as (router, client):
        hellos = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and hellos < 2:
            if router.poll(200):
                identity, *frames = router.recv_multipart()
                message, _ = p.decode(frames)
                if message.type == "hello":
                    hellos += 1
                    # a chunk header with a 2 MiB payload: over the limit, never delivered
                    chunk = p.Chunk(1, 7, "run-1", "big.h5", 2 << 20, 0, 1, 0, 2 << 20, "x" * 32)
                    router.send_multipart([identity, *p.encode(chunk, b"\0" * (2 << 20))])
        assert hellos == 2  # the first connection dropped; the client came back on its own
        assert client.stats["sessions"] >= 2 and client.stats["reconnects"] >= 1
        assert client.stats["chunks_rejected"] == 0 and client.stats["chunks_written"] == 0


def test_an_appliance_that_never_answers_is_named_with_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A session with no answer at all (no daemon there, or over CURVE a key the appliance refuses: it
    gets only silence) is counted and logged with the endpoint and what to check; silence after answers
    is the plain 'silent' line."""
    monkeypatch.setattr("edge.upstream.pull.SILENCE_SECONDS", 1.0)
    with (
        caplog.at_level(logging.WARNING, "edge.upstream.pull"),
        _client_of_a_router(tmp_path) as (router, client),
    ):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.stats["sessions_unanswered"] < 2:
            if router.poll(200):
                router.recv_multipart()  # heard, never answered
        assert client.stats["sessions_unanswered"] >= 2
        assert client.stats["reconnects"] >= 2
    unanswered = [r.getMessage() for r in caplog.records if "no answer from" in r.getMessage()]
    assert unanswered and client.endpoint in unanswered[0] and "upstream.endpoint" in unanswered[0]
    assert "require CurveZMQ" in unanswered[0]  # (a client without keys: the appliance may need them)
    assert not any("appliance silent" in r.getMessage() for r in caplog.records)


def _refused_pull(output: Path) -> subprocess.CompletedProcess[str]:
    """``edge pull`` into ``output`` run to its end (one that is refused ends at once)."""
    return subprocess.run(
        [sys.executable, "-m", "edge", "pull", "--set", f'pull.output="{output}"'],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[3],
    )


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_output_that_cannot_be_used_is_a_clear_refusal_not_a_traceback(tmp_path: Path, kind: str) -> None:
    """``pull.output`` that is a file, or inside one: ``edge pull`` exits 2 with the setting and the
    error, before it connects (it used to die on a traceback)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    output = blocker if kind == "a file" else blocker / "upstream"
    result = _refused_pull(output)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot use pull.output = '{output}'" in result.stderr


def test_an_output_not_usable_yet_is_waited_for_not_refused(tmp_path: Path) -> None:
    """An outside probe: ``pull.output`` on a mount that was read-only at the start made ``edge pull``
    exit 2, which its systemd unit (RestartPreventExitStatus=2) never restarts, though a write that fails
    later on is waited out. A directory it may not create (sysfs: EPERM, or EROFS where /sys is mounted
    read-only) is such an output: the client says why, waits for it, and a SIGTERM ends the wait (0)."""
    output = "/sys/edge-pull-output-not-ready"
    pull = subprocess.Popen(
        [sys.executable, "-m", "edge", "pull", "--set", f'pull.output="{output}"'],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[3],
    )
    try:
        line = pull.stderr.readline()  # type: ignore[union-attr]
        assert f"cannot use pull.output = '{output}' yet" in line and "waiting for it" in line, line
        time.sleep(1.0)
        assert pull.poll() is None, "edge pull gave up on an output that may yet come"
        pull.terminate()
        assert pull.wait(30) == 0
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
        pull.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("came", ["in order", "out of order"])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_part_file_damaged_here_after_its_chunks_were_written_is_not_confirmed(
    tmp_path: Path, damage: str, came: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe (SIGSTOP, damage the ``.part``, SIGCONT): the client confirmed the checksum of
    the bytes it had received, the appliance took that as the file being safe upstream and retention
    purged the only good copy. The client must confirm what its disk holds, and its log names the bytes
    that changed here (the chunks it wrote, checked again)."""
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    first, second, third = _chunks()
    _deliver(client, [first, second] if came == "in order" else [second, first])
    part = tmp_path / "run-1" / "run-1_00000.h5.part"
    if damage == "flip":
        with open(part, "r+b") as handle:
            handle.seek(100)
            handle.write(bytes(16))
    else:
        os.truncate(part, 0)  # the next chunk is written at its offset: zeros before it
    _deliver(client, [third])
    whole = xxhash.xxh3_128_hexdigest(DATA)
    with caplog.at_level("WARNING", logger="edge.upstream.pull"):
        (verified,) = client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole)))
    assert isinstance(verified, p.FileVerified) and verified.checksum != whole  # a mismatch: sent again
    assert client.stats["files_damaged_here"] == 1 and client.stats["files_verified"] == 0
    changed = (
        "changed here: bytes 0-4095)" if damage == "flip" else "changed here: bytes 0-4095, bytes 4096-8191)"
    )
    assert changed in caplog.text, caplog.text
    assert not part.exists() and not (tmp_path / "run-1" / "run-1_00000.h5").exists()
    _deliver(client, _chunks())  # the appliance resends every chunk: now the file is whole
    (verified,) = client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole)))
    assert verified.checksum == whole and (tmp_path / "run-1" / "run-1_00000.h5").read_bytes() == DATA


@pytest.mark.parametrize("removed", ["between chunks", "after the last chunk"])
def test_a_part_removed_here_while_it_is_written_comes_again(
    tmp_path: Path, removed: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An outside probe removed a ``.part`` on the HPC side (a scratch cleaner) while ``edge pull`` wrote
    it: the client kept its descriptor, wrote every resent chunk into the removed file, answered each
    ``file_complete`` "no file", and the file never came. Now the file comes again, into a new .part."""
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    first, second, third = _chunks()
    part = tmp_path / "run-1" / "run-1_00000.h5.part"
    final = tmp_path / "run-1" / "run-1_00000.h5"
    whole = xxhash.xxh3_128_hexdigest(DATA)
    complete = p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole))
    with caplog.at_level("WARNING", logger="edge.upstream.pull"):
        if removed == "between chunks":
            _deliver(client, [first, second])
            part.unlink()
            _deliver(client, [third])
        else:
            _deliver(client, [first, second, third])
            part.unlink()
        (answer,) = client._handle(complete)
    assert isinstance(answer, p.FileVerified) and answer.checksum != whole  # not confirmed: sent again
    assert client.stats["parts_removed_here"] == 1
    assert "removed on this side while it was being written" in caplog.text
    _deliver(client, _chunks())  # the appliance resends every chunk
    (verified,) = client._handle(complete)
    assert verified.checksum == whole and final.read_bytes() == DATA
    stream = io.StringIO()
    client._print_progress(stream)
    assert "1 partial files removed here" in stream.getvalue()


def test_a_file_that_came_wrong_is_logged_on_this_side_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A chaos probe: a mismatch (here a ``.part`` damaged between two sessions, so no running checksum
    says whether the bytes came right) was counted on the client without a line in its log; only the
    appliance said it was resending."""
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    _deliver(client, _chunks())
    part = tmp_path / "run-1" / "run-1_00000.h5.part"
    os.close(client._parts.pop(part).fd)  # as after a restart: the .part is all this side knows
    with open(part, "r+b") as handle:
        handle.seek(10)
        handle.write(bytes(8))
    whole = xxhash.xxh3_128_hexdigest(DATA)
    with caplog.at_level("WARNING", logger="edge.upstream.pull"):
        (verified,) = client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole)))
    assert verified.checksum != whole and client.stats["files_mismatched"] == 1
    assert any("not confirmed, fetching it again" in r.getMessage() for r in caplog.records), caplog.text


def test_a_partial_file_no_chunk_reached_for_a_day_is_removed_and_counted(tmp_path: Path) -> None:
    """An optional consumer's ``.part`` of a file the appliance stopped offering (the required consumers
    confirmed it first) is removed after ``part_expiry_seconds`` without a chunk; a recent one and one
    open for writing stay; with 0 none is ever removed."""
    client = PullClient("tcp://127.0.0.1:1", "mirror", tmp_path, 4, zmq.Context.instance(), None, 3600)
    run = tmp_path / "run-1"
    run.mkdir()
    stale, fresh, final = run / "a.h5.part", run / "b.h5.part", run / "c.h5"
    for path in (stale, fresh, final):
        path.write_bytes(b"x")
    day_ago = time.time() - 86_400
    os.utime(stale, (day_ago, day_ago))
    os.utime(final, (day_ago, day_ago))
    _deliver(client, _chunks()[:1])  # run-1_00000.h5.part, open: chunks are coming
    open_part = run / "run-1_00000.h5.part"
    os.utime(open_part, (day_ago, day_ago))
    assert client.expire_parts() == 1
    assert not stale.exists() and fresh.exists() and final.exists() and open_part.exists()
    assert client.counters()["parts_expired"] == 1
    client.part_expiry_seconds = 0
    assert client.expire_parts(time.time() + 10 * 86_400) == 0 and fresh.exists()


def test_the_progress_line_shows_what_went_wrong_and_the_last_line_every_counter(tmp_path: Path) -> None:
    """An outside probe: ``edge pull`` showed files, chunks and bytes only; a client that had thrown away
    damaged files or could not reach the appliance said nothing of it on its terminal, and printed no
    counters when it stopped."""
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    _deliver(client, _chunks())
    client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), "0" * 32)))  # mismatch
    client._handle([b"not json"])
    stream = io.StringIO()
    client._print_progress(stream)
    line = stream.getvalue()
    assert "0 files verified" in line and "1 files mismatched" in line and "1 protocol errors" in line, line
    assert "write errors" not in line  # only what happened
    summary = client.summary()
    assert summary.startswith("pull hpc: stopped; ")
    for key, value in client.counters().items():
        assert f"{key} {value}" in summary
    assert "checksums_reread 1" in summary and "chunks_written 3" in summary


def test_edge_pull_prints_every_counter_when_it_stops_and_keeps_its_directory_to_itself(
    tmp_path: Path,
) -> None:
    """SIGTERM: ``edge pull`` stops cleanly (exit 0) and its last line on stderr holds its counters. A
    second ``edge pull`` on the same output directory while it runs is refused (an outside probe: two
    consumers writing one directory overwrote each other's ``.part`` files)."""
    import signal
    import socket

    with socket.socket() as probe:  # a port nothing listens on: the client keeps trying until stopped
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "pull",
            "--set",
            f'pull.output="{tmp_path}"',
            "--set",
            f'pull.endpoint="tcp://127.0.0.1:{port}"',
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[3],
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("pull: consumer ")
        assert proc.stderr.readline().startswith("pull hpc: 0 files verified")  # its first progress line
        second = _refused_pull(tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another edge pull (pid {proc.pid})" in second.stderr, second.stderr
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert rest.strip().splitlines()[-1].startswith("pull hpc: stopped; "), rest
    assert "sessions 1" in rest, rest


def test_edge_pull_loads_nothing_of_the_appliance_s_kernels(tmp_path: Path) -> None:
    """`edge pull` (the HPC side) imported the appliance and numba on its way in: under its systemd
    unit's MemoryDenyWriteExecute=yes numba cannot allocate executable memory and the client died at
    every start (an outside probe). It loads no JIT compiler now."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['edge', 'pull', '--set', 'pull.output=\"/proc/edge-no-such-output\"']\n"
        "try:\n"
        "    runpy.run_module('edge', run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    assert done.code == 2, done.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite', 'kernels'))\n"
        "print('LOADED', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert "cannot use pull.output" in out.stderr, out.stderr
    assert "LOADED []" in out.stdout, out.stdout
