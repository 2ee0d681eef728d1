"""Prometheus exposition of the appliance's status, the way Prometheus expects it.

One custom collector reads ``status()`` (the read-only view's one status dict) on every scrape and turns
it into metric families with ``prometheus_client``: what only grows is a counter (``_total``), what goes
up and down is a gauge, every family has HELP text, and what varies along one axis is one family with a
label: ``consumer`` (upstream consumers), ``reason`` (why frames were dropped or refused), ``stage`` (the
appliance's threads, and the point a frame count is taken at), ``state`` (ledger and thread states).
Nothing is counted here: every value is one the status dict already holds (CONVENTIONS 8).

A counter or gauge that a component adds to its counters later still appears (as a counter in the
sections that hold counters, a gauge elsewhere) with a generic HELP line, rather than silently not.
Stage latencies are not exposed: the pipeline reports only its cumulative busy time
(``edge_pipeline_busy_seconds_total``), not a latency distribution a histogram could be built from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

Status = Callable[[], dict[str, Any]]
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily)

PREFIX = "edge_"

#: Keys of the receiver, pipeline, forwarder, ring and retention sections that go up and down; every
#: other number there only grows (the components keep them in ``collections.Counter``s).
GAUGE_KEYS = {
    "ring": {"slots", "slot_bytes", "fill", "free", "max_fill"},
    # the open series' number, seconds since its last message, that alarm's limit, a series the stream
    # connection dropped during: values of now, not counts (absent, no sample, when null)
    "receiver": {"rcvbuf_bytes", "series", "seconds_silent", "silent_alarm_seconds", "dropped_in_series"},
    "pipeline": {"queued"},
    "upstream": {"ledger_refusing"},  # 1 while the appliance's ledger refuses its writes (disk full)
    "retention": {
        "capacity_bytes",
        "headroom_bytes",
        "refuse_at_bytes",
        "store_bytes",
        "unverified_bytes",
        "local_bytes",
        "verified_bytes",
        "disk_free_bytes",
        "disk_percent",
        "full_in_seconds",
        "accepting_runs",
    },
}

HELP = {
    "uptime_seconds": "Seconds since the appliance started.",
    "stopping": "1 while the appliance is shutting down.",
    "run_info": "The run being acquired now (absent between runs).",
    "recovery_files": "Files crash recovery found at start, by what it did with them.",
    "recovery_runs_failed": "Runs crash recovery closed as failed at start.",
    "recovery_frames_lost": "Frames crash recovery recorded as lost at start.",
    "stage_state": "1 for the state each stage's thread is in (stage = the thread).",
    "stage_restarts_total": "Times each stage's thread was restarted after a failure.",
    "frames_total": "Frames counted at each stage, each in its own scope: received (by this daemon"
    " process since it started), stored and delivered (verified upstream) (the ledger: every run ever).",
    "frames_lost": "Frames recorded as lost in the ledger, every reason; goes down when a series resumed"
    " after a restart takes back frames the restart recorded lost.",
    "frames_incomplete_total": "Frames stored incomplete (missing packets), as the ledger records them.",
    "frames_vetoed_total": "Frames a mode dropped by its stated policy (blanks with store.blanks = drop): not"
    " losses. Ended runs from the ledger, the open run live.",
    "loss_records": "Loss records in the ledger (one may cover many frames).",
    "receiver_frames_dropped_total": "Frames the receiver dropped, by reason.",
    "receiver_rejected_total": "Messages or packets the decoder rejected, by reason.",
    "ring_info": "The shared-memory frame ring's name and its full-ring policy.",
    "ring_slots": "Slots in the frame ring.",
    "ring_slot_bytes": "Bytes per ring slot.",
    "ring_fill": "Ring slots holding frames not yet released.",
    "ring_free": "Ring slots free now.",
    "ring_max_fill": "The most ring slots ever in use at once (high-water mark).",
    "ring_claimed_total": "Ring slots claimed by the receiver.",
    "ring_published_total": "Ring slots published to the pipeline.",
    "ring_released_total": "Ring slots released after the pipeline handed their frame on.",
    "ring_dropped_total": "Frames dropped because the ring was full (count-and-drop policy).",
    "ring_full_waits_total": "Times the receiver waited for a free slot (block policy).",
    "pipeline_backend_info": "The kernel backend in use and the ones it fell back from.",
    "pipeline_busy_seconds_total": "Seconds the pipeline thread spent on frames.",
    "pipeline_queued": "Frames reduced and waiting for the writer.",
    "store_files_closed_total": "HDF5 files closed by the store.",
    "store_disk_full": "1 while the store's disk is full (frames become disk_full losses, runs are refused).",
    "store_ledger_writes_held": "Ledger records a full disk refused, held in memory until space returns.",
    "ledger_files": "Files in the ledger, by state.",
    "ledger_chunks": "Upstream chunks in the ledger, by state.",
    "ledger_frames": "Frames in the ledger, by the state of their file.",
    "ledger_bytes_pending": "Bytes stored but not yet verified upstream.",
    "upstream_consumer_chunks_acked_total": "Chunks each consumer acknowledged (ledger).",
    "upstream_consumer_last_chunk_acked": "Sequence number of the last chunk each consumer acknowledged.",
    "upstream_consumer_credit": "Chunks each connected consumer has granted and not yet received.",
    "upstream_consumer_in_flight": "Chunks sent to each consumer and not yet acknowledged.",
    "upstream_consumer_connected": "1 if the consumer was heard from within three heartbeats.",
    "upstream_consumer_seconds_since_seen": "Seconds since the consumer was last heard from.",
    "upstream_consumer_connects_total": "Times each consumer connected.",
    "upstream_consumer_chunks_refused_total": "Chunks each consumer refused (nack) since the daemon started.",
    "retention_alarm": "1 while retention raises an alarm, labelled with it.",
    "disk_total_bytes": "Size of the store's file system.",
    "disk_used_bytes": "Bytes used on the store's file system.",
    "disk_free_bytes": "Bytes free on the store's file system.",
    "disk_percent": "Percent of the store's file system in use.",
    "detector_enabled": "1 when the appliance controls a detector.",
}


def _name(*parts: str) -> str:
    return PREFIX + "_".join(re.sub(r"[^a-zA-Z0-9_]", "_", part) for part in parts if part)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class _Families:
    """Families by name, so samples of one name gather in one family of one type."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}
        self._labels: dict[str, tuple[str, ...]] = {}

    def _family(self, kind: type[F], name: str, labels: Iterable[str], help_text: str | None) -> F:
        family = self._families.get(name)
        if family is None:
            key = name[len(PREFIX) :]
            documentation = (
                help_text or HELP.get(key) or f"{key.replace('_', ' ')}, as the appliance status reports it."
            )
            created = kind(name, documentation, labels=list(labels))
            self._families[name] = created
            self._labels[name] = tuple(labels)
            return created
        if not isinstance(family, kind) or self._labels[name] != tuple(labels):
            raise ValueError(f"metric {name} reported twice, as {type(family).__name__} and {kind.__name__}")
        return family

    def counter(self, name: str, value: Any, help_text: str | None = None, **labels: str) -> None:
        number = _number(value)
        if number is None:
            return
        base = name.removesuffix("_total")
        family = self._family(CounterMetricFamily, base + "_total", labels, help_text)
        family.add_metric(list(labels.values()), number)

    def gauge(self, name: str, value: Any, help_text: str | None = None, **labels: str) -> None:
        number = _number(value)
        if number is None:
            return
        family = self._family(GaugeMetricFamily, name, labels, help_text)
        family.add_metric(list(labels.values()), number)

    def info(self, name: str, values: dict[str, str], help_text: str | None = None) -> None:
        family = self._family(InfoMetricFamily, name, values, help_text)
        family.add_metric([], {k: str(v) for k, v in values.items()})

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


def _section(f: _Families, section: str, values: dict[str, Any], skip: Iterable[str] = ()) -> None:
    """Numbers of one flat section: gauges where GAUGE_KEYS says so, counters otherwise."""
    gauges = GAUGE_KEYS.get(section, set())
    for key, value in values.items():
        if key in skip or isinstance(value, dict | list):
            continue
        if key in gauges:
            f.gauge(_name(section, key), value)
        else:
            f.counter(_name(section, key + "_total"), value)


def _appliance(f: _Families, status: dict[str, Any]) -> None:
    appliance = status.get("appliance", {})
    f.gauge(_name("uptime_seconds"), appliance.get("uptime_seconds"))
    f.gauge(_name("stopping"), appliance.get("stopping"))
    if appliance.get("run_uid"):
        f.info(_name("run"), {"run_uid": str(appliance["run_uid"])})
    recovery = appliance.get("recovery") or {}
    for what in ("quarantined", "salvaged"):
        if isinstance(recovery.get(what), list):
            f.gauge(_name("recovery_files"), len(recovery[what]), outcome=what)
    if isinstance(recovery.get("runs_failed"), list):
        f.gauge(_name("recovery_runs_failed"), len(recovery["runs_failed"]))
    f.gauge(_name("recovery_frames_lost"), recovery.get("frames_lost"))
    for reason, value in (appliance.get("api_connections_closed") or {}).items():
        # connections the API's guard closed (over its limit, or no request headers in time)
        f.counter(_name("api_connections_closed_total"), value, reason=str(reason))
    for kind, codes in (appliance.get("api_requests_refused") or {}).items():
        for status_code, value in (codes or {}).items():  # API requests answered 4xx
            f.counter(_name("api_requests_refused_total"), value, kind=str(kind), status=str(status_code))
    for stage, thread in (appliance.get("threads") or {}).items():
        state = str(thread.get("state"))
        f.gauge(_name("stage_state"), 1, stage=stage, state=state)
        f.counter(_name("stage_restarts_total"), thread.get("restarts"), stage=stage)


def _frames(f: _Families, status: dict[str, Any]) -> None:
    frames = status.get("frames", {})
    for stage in ("received", "stored", "delivered"):
        f.counter(_name("frames_total"), frames.get(stage), stage=stage)
    # a gauge: frames a restart recorded lost (the rest of a series it stopped) are taken out again when
    # the series resumes and sends them (an outside probe's "counter" fell 259 -> 160: a reset to rate())
    f.gauge(_name("frames_lost"), frames.get("lost"))
    f.counter(_name("frames_incomplete_total"), frames.get("incomplete"))
    f.counter(_name("frames_vetoed_total"), frames.get("vetoed"))
    # a gauge too: a resumed series' hand-over deletes the record a restart wrote for its frames
    f.gauge(_name("loss_records"), frames.get("loss_records"))


def _receiver(f: _Families, receiver: dict[str, Any]) -> None:
    dropped = {k: v for k, v in receiver.items() if k.startswith("frames_dropped_")}
    for key, value in dropped.items():
        f.counter(_name("receiver_frames_dropped_total"), value, reason=key.removeprefix("frames_dropped_"))
    _section(f, "receiver", receiver, skip=dropped)
    for key, value in (receiver.get("codec") or {}).items():
        f.counter(_name("receiver_codec", key + "_total"), value)
    for key, value in (receiver.get("assembler") or {}).items():
        f.counter(_name("receiver_assembler", key + "_total"), value)
    for reason, value in (receiver.get("errors") or {}).items():
        f.counter(_name("receiver_rejected_total"), value, reason=str(reason))


def _ledger(f: _Families, ledger: dict[str, Any]) -> None:
    for key, family in (
        ("files", "ledger_files"),
        ("chunks", "ledger_chunks"),
        ("frames_by_state", "ledger_frames"),
    ):
        for state, value in (ledger.get(key) or {}).items():
            f.gauge(_name(family), value, state=str(state))
    f.gauge(_name("ledger_bytes_pending"), ledger.get("bytes_pending"))
    for consumer in ledger.get("consumers") or []:
        name = str(consumer.get("consumer"))
        f.counter(_name("upstream_consumer_chunks_acked_total"), consumer.get("chunks_acked"), consumer=name)
        f.gauge(_name("upstream_consumer_last_chunk_acked"), consumer.get("last_chunk_acked"), consumer=name)


def _upstream(f: _Families, upstream: dict[str, Any]) -> None:
    _section(f, "upstream", upstream)
    if isinstance(upstream.get("unreadable_files"), list):
        f.gauge(_name("upstream_unreadable_files"), len(upstream["unreadable_files"]))
    for consumer in upstream.get("consumers") or []:
        name = str(consumer.get("consumer"))
        for key in ("credit", "in_flight", "connected", "seconds_since_seen", "held_back"):
            f.gauge(_name("upstream_consumer", key), consumer.get(key), consumer=name)
        f.counter(_name("upstream_consumer_connects_total"), consumer.get("connects"), consumer=name)
        f.counter(
            _name("upstream_consumer_chunks_refused_total"), consumer.get("chunks_refused"), consumer=name
        )


KNOWN_SECTIONS = {
    "appliance",
    "frames",
    "receiver",
    "ring",
    "pipeline",
    "store",
    "ledger",
    "upstream",
    "retention",
    "disk",
    "detector",
}


def _generic_gauges(f: _Families, prefix: str, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _generic_gauges(f, f"{prefix}_{key}", value)
        else:
            f.gauge(_name(prefix, str(key)), value)


def collect_status(status: dict[str, Any]) -> list[Metric]:
    """Every metric family the status dict gives; pure, so a test can pass any dict."""
    f = _Families()
    _appliance(f, status)
    _frames(f, status)
    _receiver(f, status.get("receiver") or {})
    ring = dict(status.get("ring") or {})
    if "policy" in ring:
        f.info(_name("ring"), {k: str(ring[k]) for k in ("name", "policy") if ring.get(k) is not None})
    _section(f, "ring", ring)
    pipeline = status.get("pipeline") or {}
    if "backend" in pipeline:
        degraded = ",".join(pipeline.get("backend_degraded_from") or [])
        f.info(_name("pipeline_backend"), {"backend": str(pipeline["backend"]), "degraded_from": degraded})
    _section(f, "pipeline", pipeline)
    store = status.get("store") or {}
    f.counter(_name("store_files_closed_total"), store.get("files_closed"))
    f.gauge(_name("store_disk_full"), int(bool((store.get("disk_full") or {}).get("full"))))
    f.gauge(_name("store_ledger_writes_held"), store.get("ledger_writes_held"))
    _ledger(f, status.get("ledger") or {})
    _upstream(f, status.get("upstream") or {})
    retention = dict(status.get("retention") or {})
    alarm = retention.pop("alarm", None)
    if alarm:
        f.gauge(_name("retention_alarm"), 1, alarm=str(alarm))
    else:
        f.gauge(_name("retention_alarm"), 0, alarm="")
    _section(f, "retention", retention)
    for key, value in (status.get("disk") or {}).items():
        f.gauge(_name("disk", key if key == "percent" else f"{key}_bytes"), value)
    _generic_gauges(f, "detector", status.get("detector") or {})
    for key, value in status.items():  # a section added later still shows, as gauges
        if key not in KNOWN_SECTIONS:
            _generic_gauges(f, key, value if isinstance(value, dict) else {"": value})
    return list(f)


class StatusCollector(Collector):
    """A prometheus_client collector that reads the status dict at every scrape."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        return collect_status(self._status())


def status_registry(status: Status) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding only the status collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return registry


def add_metrics_route(app: FastAPI, status: Status) -> None:
    """Serve ``/metrics`` on ``app`` in Prometheus text format, read from ``status()`` at each scrape."""
    registry = status_registry(status)

    @app.get("/metrics", responses={200: {"content": {"text/plain": {}}}})  # documented as served
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
