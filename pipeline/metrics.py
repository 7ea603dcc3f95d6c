"""Prometheus metrics of the worker and the sink (one HTTP endpoint per process, 127.0.0.1).

Names are the ones docs/OPERATIONS.md explains; the Grafana dashboard in
deploy/grafana/ reads them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from pipeline.core.engine import Outcome
from pipeline.core.model import FLAGS

EVENTS = Counter("cdrpipe_events", "Messages processed from the input topics", ["topic"])
MISROUTED = Counter(
    "cdrpipe_misrouted",
    "Input messages that arrived off their call's canonical (murmur2) partition and were"
    " forwarded to it, by source topic",
    ["topic"],
)
DLQ = Counter("cdrpipe_dlq", "Messages dead-lettered, by reason kind", ["reason"])
CDRS = Counter("cdrpipe_cdrs", "CDR versions emitted to cdr.records")
TIMEOUTS = Counter("cdrpipe_timeouts", "Calls closed as timed out")
ORPHANS = Counter("cdrpipe_orphans", "Orphan messages dead-lettered")
UNRATED = Counter("cdrpipe_unrated", "CDR versions emitted without a rate")
FLAGGED = Counter(
    "cdrpipe_flagged",
    "CDR versions emitted with a flag (account_mismatch, unknown_trunk, unknown_did, no_rate)",
    ["flag"],
)
for _flag in FLAGS:  # every flag is exported from the start, at 0 until it happens
    FLAGGED.labels(_flag)
del _flag
OPEN_CALLS = Gauge("cdrpipe_open_calls", "Calls waiting for an event in this worker")
ASSIGNED = Gauge("cdrpipe_assigned_partitions", "Input partitions owned (after recovery)")
STATE_RECOVERED = Counter(
    "cdrpipe_state_recovered",
    "Changelog records applied to local state stores, by how (from a checkpoint, or a rebuild)",
    ["how"],
)
RESENT = Counter("cdrpipe_resent", "CDRs and dead letters sent again after a recovery")
EMIT_LATENCY = Histogram(
    "cdrpipe_cdr_emit_latency_seconds",
    "Wall time from the gateway timestamp of a call's last event to the CDR's emission",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
SINK_BATCH = Histogram(
    "cdrpipe_sink_batch_rows",
    "CDRs per store insert",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
)
SINK_INSERT = Histogram(
    "cdrpipe_sink_insert_seconds",
    "Duration of one store insert",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
SINK_FAILURES = Counter("cdrpipe_sink_failures", "Store inserts that failed and were retried")
LAG = Gauge("cdrpipe_consumer_lag", "Messages not yet consumed by this process", ["topic"])


def serve(port: int | None) -> None:
    """Expose /metrics on 127.0.0.1:`port` (nothing when `port` is None)."""
    if port is not None:
        start_http_server(port, addr="127.0.0.1")


def record_outcome(topic: str, outcome: Outcome) -> None:
    """Count one processed message and what it produced."""
    EVENTS.labels(topic).inc()
    record_products(outcome)


def record_products(outcome: Outcome) -> None:
    now = datetime.now(UTC)
    for cdr in outcome.cdrs:
        CDRS.inc()
        if not cdr.rated:
            UNRATED.inc()
        if cdr.timed_out:
            TIMEOUTS.inc()
        for flag in cdr.flags:
            FLAGGED.labels(flag).inc()
        EMIT_LATENCY.observe(max(0.0, (now - cdr.end_time).total_seconds()))
    for dead in outcome.dead:
        DLQ.labels(dead.kind).inc()
        if dead.kind == "orphan":
            ORPHANS.inc()
