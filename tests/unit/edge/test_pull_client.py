"""The pull client's file handling without its socket: chunks written and hashed as they come (no
re-read of the file when they came in order), a file read back only when they did not, and every
acknowledgement given only after the bytes are fsynced."""

from __future__ import annotations

from pathlib import Path

import xxhash
import zmq

from edge.store import checksum_bytes
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


def test_in_order_chunks_are_hashed_as_they_come(tmp_path: Path) -> None:
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    replies = _deliver(client, _chunks())
    assert [type(r) for r in replies] == [p.Ack] * 3
    assert client.stats["fsyncs"] == 1  # one fsync for the batch, before the acknowledgements went out
    whole = xxhash.xxh3_128_hexdigest(DATA)
    (verified,) = client._handle(p.encode(p.FileComplete(7, "run-1", "run-1_00000.h5", len(DATA), whole)))
    assert isinstance(verified, p.FileVerified) and verified.checksum == whole and verified.size == len(DATA)
    assert client.stats["checksums_incremental"] == 1 and client.stats["checksums_reread"] == 0
    assert (tmp_path / "run-1" / "run-1_00000.h5").read_bytes() == DATA


def test_out_of_order_chunks_are_read_back(tmp_path: Path) -> None:
    client = PullClient("tcp://127.0.0.1:1", "hpc", tmp_path, 4, zmq.Context.instance())
    first, second, third = _chunks()
    _deliver(client, [first, third, second])
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
