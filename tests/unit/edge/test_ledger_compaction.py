"""A purged file's chunk rows and their acknowledgements (a row per 4 MiB per consumer, millions a day)
are replaced by their counts in the file's row, so the ledger of an appliance that runs for months stops
growing with the bytes it has moved; `edge where` and the totals read the same as before the purge, and
a ledger from an older edge, which kept them, is compacted in batches by the retention thread."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

from edge.config import RetentionSettings
from edge.ledger import Ledger
from edge.retention import COMPACT_BATCH, Retention
from edge.where import where_report

CHUNKS = 5


def _store(ledger: Ledger, tmp_path: Path, n: int, n_chunks: int = CHUNKS) -> int:
    chunks = [(k * 10, 10, f"c{n}-{k}") for k in range(n_chunks)]
    return ledger.file_stored(
        "run", f"f{n}.h5", tmp_path / f"f{n}.h5", 10 * n_chunks, f"x{n}", (n, n, 1), chunks
    )


def _deliver(ledger: Ledger, consumers: tuple[str, ...]) -> None:
    """Every pending chunk sent, acknowledged and verified by each consumer."""
    for consumer in consumers:
        pending = ledger.pending_chunks(consumer, [], 4096)
        ledger.chunks_sent([row["id"] for row in pending])
        for row in pending:
            assert ledger.chunk_acked(consumer, row["id"], row["checksum"])
        for row in ledger.files_ready_to_verify(consumer):
            assert ledger.file_verified(consumer, row["id"], row["size"], row["checksum"])


def _rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


def test_a_purged_files_chunk_rows_become_counts_and_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, required_consumers=("hpc", "tape"))
    ledger.run_started("run", 1, None, "{}")
    ids = [_store(ledger, tmp_path, n) for n in range(3)]
    first_chunks = [row[0] for row in _rows(path, "SELECT id FROM chunks WHERE file_id=?", (ids[0],))]
    # a consumer the policy does not wait for acknowledges part of the first file
    for chunk_id in first_chunks[:2]:
        assert ledger.chunk_acked(
            "mirror", chunk_id, _rows(path, "SELECT checksum FROM chunks WHERE id=?", (chunk_id,))[0][0]
        )
    _deliver(ledger, ("hpc", "tape"))
    before_where = where_report(ledger, "run")["files"]
    before_consumers = ledger.summary()["consumers"]

    ledger.file_purged(ids[0])

    assert _rows(path, "SELECT COUNT(*) FROM chunks WHERE file_id=?", (ids[0],)) == [(0,)]
    marks = ",".join("?" * len(first_chunks))
    assert _rows(
        path, f"SELECT COUNT(*) FROM chunk_acks WHERE chunk_id IN ({marks})", tuple(first_chunks)
    ) == [(0,)]
    (record,) = _rows(path, "SELECT chunk_record FROM files WHERE id=?", (ids[0],))[0]
    last = max(first_chunks)
    assert json.loads(str(record)) == {
        "chunks": CHUNKS,
        "acked": {"hpc": [CHUNKS, last], "tape": [CHUNKS, last], "mirror": [2, first_chunks[1]]},
    }
    # the other files keep their rows; the views read as before the purge
    assert _rows(path, "SELECT COUNT(*) FROM chunks")[0] == (2 * CHUNKS,)
    after_where = where_report(ledger, "run")["files"]
    assert [f["chunks_acked"] for f in after_where] == [f["chunks_acked"] for f in before_where]
    assert after_where[0]["chunks_acked"] == {"hpc": CHUNKS, "tape": CHUNKS, "mirror": 2}
    assert after_where[0]["state"] == "purged" and after_where[0]["verified_by"].keys() == {"hpc", "tape"}
    assert ledger.summary()["consumers"] == before_consumers
    assert ledger.run_totals("run")["frames_delivered"] == 3
    # late repeats about the purged file change nothing
    assert ledger.chunk_acked("mirror", first_chunks[3], "c0-3") is False
    assert ledger.file_verified("hpc", ids[0], 10 * CHUNKS, "x0") is True
    assert ledger.files("run")[0]["state"] == "purged"
    ledger.close()


def test_a_retired_local_file_drops_its_chunk_rows_too(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.run_started("run", 1, None, "{}")
    file_id = ledger.file_stored(
        "run", "f.h5", tmp_path / "f.h5", 20, "x", (0, 1, 2), [(0, 10, "a"), (10, 10, "b")], local=True
    )
    ledger.file_retired(file_id)
    assert _rows(path, "SELECT COUNT(*) FROM chunks")[0] == (0,)
    assert json.loads(str(_rows(path, "SELECT chunk_record FROM files")[0][0])) == {"chunks": 2, "acked": {}}
    ledger.close()


def test_the_ledger_stops_growing_once_files_are_purged(tmp_path: Path) -> None:
    """Rounds of files stored, delivered and purged: after the first, the ledger's file on disk grows
    only by the file rows (SQLite reuses the pages the chunk and acknowledgement rows left); before, it
    grew by all of them, 20 chunk and 20 acknowledgement rows per file here."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.run_started("run", 1, None, "{}")
    pages = []
    n = 0
    for _round in range(3):
        for _ in range(100):
            _store(ledger, tmp_path, n, n_chunks=20)
            n += 1
        _deliver(ledger, ("hpc",))
        for row in ledger.purgeable_files():
            ledger.file_purged(row["id"])
        assert _rows(path, "SELECT COUNT(*) FROM chunks")[0] == (0,)
        assert _rows(path, "SELECT COUNT(*) FROM chunk_acks")[0] == (0,)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages.append(db.execute("PRAGMA page_count").fetchone()[0])
    assert ledger.summary()["consumers"][0]["chunks_acked"] == n * 20
    growth = [b - a for a, b in itertools.pairwise(pages)]
    assert max(growth) * 4 < pages[0], (pages, growth)
    ledger.close()


def test_an_older_ledgers_purged_chunk_rows_are_compacted_by_retention(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.run_started("run", 1, None, "{}")
    count = COMPACT_BATCH + 6
    ids = [_store(ledger, tmp_path, n) for n in range(count)]
    _deliver(ledger, ("hpc",))
    acked_before = ledger.summary()["consumers"]
    with sqlite3.connect(path) as db:  # purged as edge 0.x did: the rows marked, kept
        db.execute("UPDATE files SET state='purged', purged_at=1 WHERE id != ?", (ids[-1],))
        db.execute("UPDATE chunks SET state='purged' WHERE file_id != ?", (ids[-1],))
    assert ledger.chunk_ack_counts("run")[ids[0]] == {"hpc": CHUNKS}  # read from the rows still there
    retention = Retention(ledger, tmp_path, RetentionSettings(quota_bytes=10**9))
    retention.run_pass()
    assert retention.stats["files_compacted"] == COMPACT_BATCH
    retention.run_pass()
    assert retention.stats["files_compacted"] == count - 1
    retention.run_pass()  # nothing left: no more asking
    assert retention.stats["files_compacted"] == count - 1
    assert _rows(path, "SELECT COUNT(DISTINCT file_id) FROM chunks")[0] == (1,)  # the one not purged
    counts = ledger.chunk_ack_counts("run")
    assert all(counts[file_id] == {"hpc": CHUNKS} for file_id in ids)
    assert ledger.summary()["consumers"] == acked_before
    ledger.close()
