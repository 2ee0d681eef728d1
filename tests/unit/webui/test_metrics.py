"""/metrics as Prometheus expects it: parsed by prometheus_client's own parser, typed, documented, labelled.

The status dict is shaped as ``ApplianceView.status()`` returns it during a run with two upstream
consumers, frames dropped for a reason, decoder rejections and a retention alarm.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edge.config import load_settings
from webui import create_app
from webui.metrics import collect_status


def _status() -> dict[str, Any]:
    return {
        "appliance": {
            "uptime_seconds": 12.5,
            "stopping": False,
            "run_uid": "run-1",
            "recovery": {"quarantined": [], "salvaged": ["a.h5"], "runs_failed": [], "frames_lost": 0},
            "threads": {
                "reader": {"state": "running", "restarts": 0},
                "pipeline": {"state": "running", "restarts": 1},
                "forwarder": {"state": "stopped", "restarts": 0},
            },
            "api_connections_closed": {"over_limit": 2, "header_timeout": 5},
        },
        "frames": {
            "received": 100,
            "stored": 90,
            "delivered": 80,
            "lost": 4,
            "incomplete": 1,
            "loss_records": 2,
        },
        "receiver": {
            "endpoint": "tcp://127.0.0.1:5560",
            "messages": 300,
            "frames_received": 100,
            "bytes_received": 409600,
            "frames_dropped_ring_full": 3,
            "frames_dropped_undecodable": 1,
            "frames_gap": 2,
            "codec": {"parts": 400, "bytes": 409700, "errors": 5},
            "errors": {"bad_header": 4, "size_mismatch": 1},
            "series": {"series": 1},
        },
        "ring": {
            "name": "edge-ring-x",
            "slots": 64,
            "slot_bytes": 4096,
            "policy": "block",
            "fill": 3,
            "free": 61,
            "max_fill": 9,
            "claimed": 100,
            "published": 100,
            "released": 97,
            "dropped": 0,
            "full_waits": 7,
        },
        "pipeline": {
            "backend": "numba",
            "backend_degraded_from": ["gpu"],
            "busy_seconds": 1.25,
            "run": "run-1",
            "queued": 2,
            "frames_processed": 95,
            "runs_opened": 1,
        },
        "store": {
            "path": "/data",
            "files_closed": 3,
            "disk_full": {"full": True, "reason": "the store's disk is full"},
            "ledger_writes_held": 7,
        },
        "ledger": {
            "files": {"stored": 1, "verified": 2},
            "chunks": {"stored": 4, "verified": 8},
            "frames_by_state": {"stored": 30, "verified": 60},
            "frames_stored": 90,
            "frames_verified": 60,
            "bytes_pending": 1234,
            "frames_lost": 4,
            "frames_incomplete": 1,
            "loss_records": 2,
            "consumers": [
                {"consumer": "hpc-a", "chunks_acked": 8, "last_chunk_acked": 7},
                {"consumer": "hpc-b", "chunks_acked": 5, "last_chunk_acked": 4},
            ],
        },
        "upstream": {
            "endpoint": "tcp://0.0.0.0:5570",
            "chunks_acked": 13,
            "send_failures": 0,
            "consumers": [
                {
                    "consumer": "hpc-a",
                    "credit": 4,
                    "in_flight": 1,
                    "connects": 2,
                    "seconds_since_seen": 0.5,
                    "connected": True,
                },
                {
                    "consumer": "hpc-b",
                    "credit": 0,
                    "in_flight": 0,
                    "connects": 1,
                    "seconds_since_seen": 30.0,
                    "connected": False,
                },
            ],
        },
        "retention": {
            "capacity_bytes": 10**12,
            "headroom_bytes": 1 << 26,
            "store_bytes": 5000,
            "unverified_bytes": 1234,
            "verified_bytes": 3766,
            "disk_free_bytes": 10**11,
            "disk_percent": 90.0,
            "full_in_seconds": None,
            "alarm": "unverified data under pressure",
            "accepting_runs": False,
            "files_purged": 6,
        },
        "disk": {"total": 10**12, "used": 9 * 10**11, "free": 10**11, "percent": 90.0},
        "detector": {"enabled": False},
    }


class View:
    def status(self) -> dict[str, Any]:
        return _status()


def _scrape() -> tuple[str, dict[str, Any]]:
    response = TestClient(create_app(load_settings(), View())).get("/metrics")  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    return response.text, families


def _samples(family: Any) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_metrics_parse_typed_and_documented() -> None:
    text, families = _scrape()
    assert families, "no metric families"
    counters = [f for f in families.values() if f.type == "counter"]
    gauges = [f for f in families.values() if f.type == "gauge"]
    assert len(counters) > 10 and len(gauges) > 10
    for family in counters:
        assert all(s.name == f"{family.name}_total" for s in family.samples), family.name
    for family in families.values():
        assert family.documentation.strip(), f"{family.name} has no HELP"
        assert f"# HELP {family.name}" in text
    # what goes up and down is never a counter, what only grows is never a gauge
    assert families["edge_ring_fill"].type == "gauge"
    assert families["edge_ring_released"].type == "counter"
    assert families["edge_pipeline_busy_seconds"].type == "counter"
    assert families["edge_pipeline_queued"].type == "gauge"
    assert families["edge_ledger_files"].type == "gauge"
    assert families["edge_retention_files_purged"].type == "counter"


def test_families_and_labels() -> None:
    _, families = _scrape()
    assert _samples(families["edge_frames"]) == {
        (("stage", "received"),): 100,
        (("stage", "stored"),): 90,
        (("stage", "delivered"),): 80,
    }
    assert _samples(families["edge_frames_lost"]) == {(): 4}
    # it goes down when a resumed series takes back frames a restart recorded lost: no counter
    assert families["edge_frames_lost"].type == "gauge"
    assert families["edge_loss_records"].type == "gauge"  # (so is a record count: the hand-over deletes)
    assert _samples(families["edge_receiver_frames_dropped"]) == {
        (("reason", "ring_full"),): 3,
        (("reason", "undecodable"),): 1,
    }
    assert _samples(families["edge_receiver_rejected"]) == {
        (("reason", "bad_header"),): 4,
        (("reason", "size_mismatch"),): 1,
    }
    # per-consumer upstream figures, from the ledger (acks) and the forwarder (live state)
    assert _samples(families["edge_upstream_consumer_chunks_acked"]) == {
        (("consumer", "hpc-a"),): 8,
        (("consumer", "hpc-b"),): 5,
    }
    assert _samples(families["edge_upstream_chunks_acked"]) == {(): 13}  # the forwarder's own total
    assert _samples(families["edge_upstream_consumer_connected"]) == {
        (("consumer", "hpc-a"),): 1,
        (("consumer", "hpc-b"),): 0,
    }
    for name in ("credit", "in_flight", "seconds_since_seen"):
        assert {k[0][1] for k in _samples(families[f"edge_upstream_consumer_{name}"])} == {"hpc-a", "hpc-b"}
    assert _samples(families["edge_upstream_consumer_connects"])[(("consumer", "hpc-a"),)] == 2
    # stages: the appliance's threads
    assert _samples(families["edge_stage_state"])[(("stage", "pipeline"), ("state", "running"))] == 1
    assert _samples(families["edge_stage_restarts"])[(("stage", "pipeline"),)] == 1
    assert _samples(families["edge_api_connections_closed"]) == {
        (("reason", "over_limit"),): 2,
        (("reason", "header_timeout"),): 5,
    }
    assert _samples(families["edge_ledger_files"]) == {(("state", "stored"),): 1, (("state", "verified"),): 2}
    assert _samples(families["edge_retention_alarm"]) == {(("alarm", "unverified data under pressure"),): 1}
    assert families["edge_ring_info"].type == "gauge"  # info families are gauges named _info in text
    assert _samples(families["edge_ring_info"]) == {(("name", "edge-ring-x"), ("policy", "block")): 1}
    assert _samples(families["edge_pipeline_backend_info"]) == {
        (("backend", "numba"), ("degraded_from", "gpu")): 1
    }
    assert _samples(families["edge_run_info"]) == {(("run_uid", "run-1"),): 1}
    assert _samples(families["edge_disk_free_bytes"]) == {(): 1e11}
    assert "edge_retention_full_in_seconds" not in families  # None: no forecast, no sample
    assert _samples(families["edge_store_disk_full"]) == {(): 1}
    assert _samples(families["edge_store_ledger_writes_held"]) == {(): 7}


def test_sparse_status_and_new_sections() -> None:
    """A bare status (nothing received yet) and a section added later both still give valid families."""
    families = collect_status(
        {"frames": {"received": 0}, "newsection": {"things": 3, "label": "x"}, "ok": True}
    )
    names = {f.name: f for f in families}
    assert names["edge_frames"].type == "counter"
    assert names["edge_newsection_things"].type == "gauge"
    assert names["edge_ok"].samples[0].value == 1


def test_the_receivers_values_of_now_are_gauges() -> None:
    """The open series, the seconds since the detector's last message and the like go down as well as up:
    exported as counters they read as counter resets (they were, until 2026-12-03)."""
    receiver = {"series": 5, "seconds_silent": 3.2, "silent_alarm_seconds": 60.0, "dropped_in_series": 5}
    families = {f.name: f for f in collect_status({"receiver": {**receiver, "frames_received": 10}})}
    for key, value in receiver.items():
        assert families[f"edge_receiver_{key}"].type == "gauge", key
        assert families[f"edge_receiver_{key}"].samples[0].value == value
    assert families["edge_receiver_frames_received"].type == "counter"
    # null (no series open): no sample at all
    families = {f.name: f for f in collect_status({"receiver": {"series": None, "seconds_silent": None}})}
    assert "edge_receiver_series" not in families and "edge_receiver_seconds_silent" not in families


def test_a_ledger_refusing_and_a_consumer_held_back_are_gauges() -> None:
    """Both go back to 0: as counters they would read as counter resets."""
    upstream = {
        "ledger_refusing": True,
        "chunks_sent": 3,
        "consumers": [{"consumer": "hpc", "held_back": True, "connects": 1, "chunks_refused": 9}],
    }
    families = {f.name: f for f in collect_status({"upstream": upstream})}
    assert families["edge_upstream_ledger_refusing"].type == "gauge"
    assert families["edge_upstream_ledger_refusing"].samples[0].value == 1
    held = families["edge_upstream_consumer_held_back"]
    assert (
        held.type == "gauge" and held.samples[0].value == 1 and held.samples[0].labels == {"consumer": "hpc"}
    )
