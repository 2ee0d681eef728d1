"""Bluesky event-model documents for a run, so Bluesky/Tiled users can ingest what edge wrote.

Each run gets ``RUN_UID.documents.jsonl`` next to its HDF5 files: one ``[name, document]`` pair per
line (RunStart, Descriptor, StreamResource and StreamDatum per file, RunStop with ``exit_status``),
written when the run ends (or, after a crash, when the daemon restarts) and forwarded upstream like
any other file. Document uids are derived from the run uid, so rewriting them gives the same uids.

A run whose account changes after its documents were written (a series resumed after a restart adds
the interrupted run's ``daemon_restart`` losses) gets a new revision, ``RUN_UID.documents.rN.jsonl``
(N = 2, 3, ...), forwarded like the first (a file that went upstream is never rewritten). The highest
revision is the run's account: its RunStop's ``edge_accounting`` says ``revision``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

_NAMESPACE = uuid.UUID("6f1f4a52-6d2c-4a53-9c1e-2f8e0c8b7a10")


def _uid(run_uid: str, *parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join([run_uid, *map(str, parts)])))


def run_documents(
    run: dict[str, Any],
    files: list[dict[str, Any]],
    losses: list[dict[str, Any]],
    shape: tuple[int, int] | None,
    exit_status: str,
    revision: int = 1,
) -> list[tuple[str, dict[str, Any]]]:
    """The run's documents, from its ledger rows (``revision``: see the module docstring)."""
    run_uid = run["run_uid"]
    config = json.loads(run.get("config") or "{}")
    start_uid = _uid(run_uid, "start")
    descriptor_uid = _uid(run_uid, "descriptor")
    height, width = shape or (0, 0)
    try:  # the pixel type the run's files hold ("type" of its header), as NumPy writes it
        dtype_numpy = np.dtype(str(config.get("type") or "uint16")).str
    except (TypeError, ValueError):
        dtype_numpy = np.dtype(np.uint16).str
    docs: list[tuple[str, dict[str, Any]]] = [
        (
            "start",
            {
                "uid": start_uid,
                "time": run["started_at"],
                "edge_run_uid": run_uid,
                "scan_id": run.get("series") or 0,
                "detectors": ["edge"],
                "frames_expected": run.get("frames_expected"),
                "detector_config": config,
            },
        ),
        (
            "descriptor",
            {
                "uid": descriptor_uid,
                "run_start": start_uid,
                "time": run["started_at"],
                "name": "primary",
                "data_keys": {
                    "image": {
                        "source": "edge",
                        "dtype": "array",
                        "dtype_numpy": dtype_numpy,
                        "shape": [height, width],
                        "external": "STREAM:",
                    }
                },
                "object_keys": {"edge": ["image"]},
            },
        ),
    ]
    seq = 1
    for row in files:
        if not row["name"].endswith(".h5"):
            continue
        resource_uid = _uid(run_uid, "resource", row["name"])
        docs.append(
            (
                "stream_resource",
                {
                    "uid": resource_uid,
                    "run_start": start_uid,
                    "data_key": "image",
                    "mimetype": "application/x-hdf5",
                    "uri": f"file://localhost{row['path']}",
                    "parameters": {"dataset": "/entry/data/data", "chunk_shape": [1, height, width]},
                },
            )
        )
        count = int(row["n_frames"])
        docs.append(
            (
                "stream_datum",
                {
                    "uid": _uid(run_uid, "datum", row["name"]),
                    "stream_resource": resource_uid,
                    "descriptor": descriptor_uid,
                    "indices": {"start": 0, "stop": count},
                    "seq_nums": {"start": seq, "stop": seq + count},
                },
            )
        )
        seq += count
    lost = [r for r in losses if not r.get("partial") and not r.get("not_acquired")]
    never = [r for r in losses if r.get("not_acquired")]  # an aborted run's frames the detector never took
    reason = "; ".join(sorted({r["reason"] for r in lost + never}))
    try:  # what ended it, as its reader saw it (the next series' start before its end, say)
        ended = json.loads(run.get("config") or "{}").get("ended_because")
    except (ValueError, AttributeError):
        ended = None
    if isinstance(ended, str) and ended:
        reason = f"{ended}; {reason}" if reason else ended
    continuation = _continuation(run)
    docs.append(
        (
            "stop",
            {
                "uid": _uid(run_uid, "stop"),
                "run_start": start_uid,
                "time": run.get("ended_at") or run["started_at"],
                "exit_status": exit_status,
                "reason": reason,
                "num_events": {"primary": seq - 1},
                # every frame's fate, so sent = stored + vetoed + lost holds from the upstream copy alone
                "edge_accounting": {
                    "revision": revision,
                    "mode": run.get("mode"),
                    "frames_stored": seq - 1,
                    "frames_vetoed": int(run.get("frames_vetoed") or 0),
                    "frames_lost": sum(int(r["last_frame"]) - int(r["first_frame"]) + 1 for r in lost),
                    "frames_not_acquired": sum(
                        int(r["last_frame"]) - int(r["first_frame"]) + 1 for r in never
                    ),
                    "losses": [
                        [r["first_frame"], r["last_frame"], r["reason"], r.get("detail", "")] for r in losses
                    ],
                    **continuation,
                },
            },
        )
    )
    return docs


def _continuation(run: dict[str, Any]) -> dict[str, int]:
    """A series cut by a daemon restart (or a UDP acquisition by a pause), in the accounts of its two
    runs: the interrupted run's series went on at ``continued_at_frame`` in a run resumed after the
    restart (whose RunStart's ``resumes_run`` names this run), so of its ``frames_expected`` it accounts
    for the frames before that one only (``frames_continued``: the rest, the resumed run's); a resumed
    run accounts for its series' frames from ``resumed_at_frame`` on (those before are the interrupted
    run's)."""
    try:
        config = json.loads(run.get("config") or "{}")
    except ValueError:
        return {}
    if not isinstance(config, dict):
        return {}
    out: dict[str, int] = {}
    went_on = config.get("continued_at_frame")
    if isinstance(went_on, int) and not isinstance(went_on, bool):
        out["continued_at_frame"] = went_on
        expected = run.get("frames_expected")
        if isinstance(expected, int) and expected > went_on:
            out["frames_continued"] = expected - went_on
    first = config.get("first_frame")
    resumed = config.get("resumed_after_restart") or config.get("resumed_after_pause")
    if resumed and isinstance(first, int) and not isinstance(first, bool):
        out["resumed_at_frame"] = first
    return out


def documents_name(run_uid: str, revision: int = 1) -> str:
    """The file name of a run's documents, revision 1 or a later one."""
    return f"{run_uid}.documents.jsonl" if revision <= 1 else f"{run_uid}.documents.r{revision}.jsonl"


def write_documents(
    directory: Path, run_uid: str, docs: list[tuple[str, dict[str, Any]]], revision: int = 1
) -> Path:
    """Write the documents file atomically (``.part``, fsync, rename) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / documents_name(run_uid, revision)
    part = final.with_name(final.name + ".part")
    with open(part, "w") as handle:
        for name, doc in docs:
            handle.write(json.dumps([name, doc], sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, final)
    return final
